//! `flumen-loadgen`: drives a Flumen broker through the public client and reports
//! throughput and tail latency per ack mode, side by side.
//!
//! Scenarios (`--scenario`):
//! - `produce-consume` (default): producers and consumers on the same topics for
//!   `--warmup` then `--duration`, once per ack mode of `--acks`. Closed loop (as fast
//!   as the producer's buffer takes records) unless `--rate` sets an open-loop target,
//!   where latency counts from each send's intended time (see [`schedule`]).
//! - `drain`: build a backlog of `--backlog` bytes, then time consumers reading it all
//!   back from the beginning.
//! - `idle`: the broker's resident memory per idle partition and per idle connection.
//!
//! Output: a live progress line, a table, and optionally `--json` (versioned schema,
//! see [`report`]), `--plot` (SVG or HTML) and `--hdr-log` (HdrHistogram interval
//! logs). `--embedded` runs an in-process broker, so one command benchmarks a fresh
//! machine; `--broker-cpus` and `--cpus` pin it and the load.

mod interrupt;
mod plot;
mod report;
mod run;
mod schedule;
mod stats;
mod workload;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use flumen::EmbeddedBroker;
use flumen_client::accumulator::AccumulatorConfig;
use flumen_client::Acks;
use serde::Serialize;

use report::{Broker, Machine, Report, FSYNC_POLICY, SCHEMA_VERSION};
use run::{ModeResult, Plan};
use workload::{KeyChooser, KeyDistribution, SizeDistribution};

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Scenario {
    /// Producers and consumers together, once per ack mode.
    ProduceConsume,
    /// Build a backlog, then time reading it back.
    Drain,
    /// Broker memory per idle partition and per idle connection.
    Idle,
}

/// Throughput and tail latency of a Flumen broker across ack modes.
#[derive(Debug, Clone, Parser, Serialize)]
#[command(name = "flumen-loadgen", version, about)]
pub struct Args {
    /// What to measure.
    #[arg(long, value_enum, default_value = "produce-consume")]
    scenario: Scenario,
    /// Broker address (ignored with --embedded).
    #[arg(long, default_value = "127.0.0.1:9292")]
    bootstrap: String,
    /// Start an in-process broker and load it (its data is deleted at the end).
    #[arg(long)]
    embedded: bool,
    /// With --embedded: where the broker's temporary data directory goes (default: the
    /// system temporary directory). Put it on the disk you want to measure.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// With --embedded: CPUs to pin the broker's shards to, e.g. `0` or `0-3`; one
    /// shard per CPU unless --broker-shards says otherwise.
    #[arg(long)]
    broker_cpus: Option<String>,
    /// With --embedded: number of broker shards (default: one per --broker-cpus, else 1).
    #[arg(long)]
    broker_shards: Option<usize>,
    /// CPUs to pin the load (producers, consumers) to, e.g. `1`.
    #[arg(long)]
    cpus: Option<String>,
    /// Threads running the load (1: everything on one thread).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Topic name prefix; each ack mode gets its own topics.
    #[arg(long, default_value = "loadgen")]
    topic: String,
    /// Topics per ack mode (producers spread records over them).
    #[arg(long, default_value_t = 1)]
    topics: u32,
    /// Partitions per topic.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// A config of the topics the run creates, `KEY=VALUE` (repeatable), e.g.
    /// `retention.bytes=268435456` to keep long runs within the disk. With --embedded,
    /// `retention.bytes` and `segment.bytes` default to what fits in the data
    /// directory's free space.
    #[arg(long = "topic-config", value_name = "KEY=VALUE")]
    topic_configs: Vec<String>,
    /// Keep the topics each run creates (by default they are deleted when the run of
    /// their ack mode ends, so runs do not fill the broker's disk).
    #[arg(long)]
    keep_topics: bool,
    /// Producers (each its own client and connections).
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Consumers, sharing the partitions evenly (0: produce only).
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Value size in bytes: `N`, `uniform:MIN-MAX` or `normal:MEAN,STDDEV`.
    #[arg(long, default_value = "1024")]
    message_size: String,
    /// Distinct keys (0: keyless records, spread by the sticky partitioner).
    #[arg(long, default_value_t = 0)]
    keys: u64,
    /// How keys are drawn: `uniform`, `zipf` or `zipf:EXPONENT`.
    #[arg(long, default_value = "uniform")]
    key_distribution: String,
    /// Producer batch size in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    batch_size: usize,
    /// Producer linger in milliseconds; fractions (`0.25`) close batches at the first
    /// record after the linger, finer than the runtime's 1 ms timer.
    #[arg(long, default_value_t = 5.0, value_parser = parse_linger_ms)]
    linger_ms: f64,
    /// Bytes of records each producer may hold unacknowledged (`4MiB`, `32MB`); a send
    /// waits for room beyond it. Default: 32 batches, at least 32 MiB. In a max-rate
    /// (closed-loop) run this sets how deep the queue runs, and so the latencies.
    #[arg(long)]
    buffer_memory: Option<String>,
    /// Produce requests each producer keeps in flight per broker shard (each carries the
    /// ready batches of partitions with none in flight).
    #[arg(long, default_value_t = 5)]
    max_in_flight: usize,
    /// Ack modes to run, comma-separated: 0, 1, all [default: 0,1,all; the drain
    /// scenario runs one mode, default 1].
    #[arg(long)]
    acks: Option<String>,
    /// Open loop at this rate over all producers: records a second (`50000`, `50k`) or
    /// bytes of values a second (`100MB/s`, `1GiB/s`). Without it: max rate, closed loop.
    #[arg(long)]
    rate: Option<String>,
    /// Measured time per ack mode, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Time per ack mode before measuring starts, in seconds.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Drain scenario: bytes of values to build up before reading (`4GB`, `512MiB`).
    #[arg(long, default_value = "1GB")]
    backlog: String,
    /// Idle scenario: partitions to create.
    #[arg(long, default_value_t = 10_000)]
    idle_partitions: u32,
    /// Idle scenario: connections to open.
    #[arg(long, default_value_t = 1_000)]
    idle_connections: u32,
    /// Idle scenario against a broker elsewhere on this machine: its process id.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Seconds consumers wait for missing records after producers stop.
    #[arg(long, default_value_t = 10.0)]
    drain_grace: f64,
    /// Seed of the workload's random choices (sizes, keys).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the full report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw latency percentile curves and throughput to this SVG (or .html) file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write HdrHistogram interval logs (one interval a second) into this directory.
    #[arg(long)]
    hdr_log: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

/// The `config` part of the report: every flag, and what they came to.
#[derive(Debug, Serialize)]
struct Config<'a> {
    mode: &'static str,
    target_rate_msgs_per_s: Option<f64>,
    compression: &'static str,
    client_version: &'static str,
    /// The producers' buffer, in effect (`--buffer-memory` or its default).
    buffer_memory_bytes: usize,
    /// The configs the run's topics were created with: `--topic-config` and, with
    /// --embedded, the retention defaults sized to the free space.
    topic_configs_in_effect: Vec<String>,
    #[serde(flatten)]
    flags: &'a Args,
}

/// A linger in milliseconds: finite, not negative, at most an hour.
fn parse_linger_ms(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(ms) if ms.is_finite() && (0.0..=3_600_000.0).contains(&ms) => Ok(ms),
        _ => Err(format!(
            "not a linger in milliseconds (0 to 3600000): {text}"
        )),
    }
}

/// The ack modes of `--acks`, or of the scenario's default: one for the drain.
fn ack_modes(args: &Args) -> Result<Vec<(String, Acks)>, String> {
    let drain = args.scenario == Scenario::Drain;
    let default = if drain { "1" } else { "0,1,all" };
    let modes = parse_acks(args.acks.as_deref().unwrap_or(default))?;
    if drain && modes.len() > 1 {
        return Err("the drain scenario runs one ack mode: --acks 0, 1 or all".into());
    }
    Ok(modes)
}

fn parse_acks(list: &str) -> Result<Vec<(String, Acks)>, String> {
    list.split(',')
        .map(|mode| match mode.trim() {
            "0" => Ok(("0".to_owned(), Acks::None)),
            "1" => Ok(("1".to_owned(), Acks::Leader)),
            "all" | "-1" => Ok(("all".to_owned(), Acks::All)),
            other => Err(format!("--acks takes 0, 1 and all, not {other:?}")),
        })
        .collect()
}

/// `4GB`, `512MiB`, `1000`: bytes.
fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 4GB, 512MiB)"))?;
    let scale = match unit.trim() {
        "" | "B" => 1.0,
        "k" | "kB" | "KB" => 1e3,
        "KiB" => 1024.0,
        "M" | "MB" => 1e6,
        "MiB" => 1048576.0,
        "G" | "GB" => 1e9,
        "GiB" => 1073741824.0,
        other => return Err(format!("unknown size unit {other:?} in {text:?}")),
    };
    Ok((number * scale) as u64)
}

/// `--rate`: records a second (`50000`, `50k`, `1.5M`) or value bytes a second
/// (`100MB/s`), turned into records a second at the mean value size.
fn parse_rate(text: &str, mean_size: f64) -> Result<f64, String> {
    let rate = match text.strip_suffix("/s") {
        Some(bytes) => parse_bytes(bytes)? as f64 / mean_size,
        None => match text.strip_suffix(['k', 'K']) {
            Some(thousands) => thousands.parse::<f64>().map(|n| n * 1e3),
            None => match text.strip_suffix('M') {
                Some(millions) => millions.parse::<f64>().map(|n| n * 1e6),
                None => text.parse::<f64>(),
            },
        }
        .map_err(|_| {
            format!("--rate takes records a second (50000, 50k) or bytes (100MB/s), not {text:?}")
        })?,
    };
    if rate > 0.0 && rate.is_finite() {
        Ok(rate)
    } else {
        Err("--rate must be positive".into())
    }
}

/// `0`, `0-3`, `0,2,4-5`: CPU numbers.
fn parse_cpus(text: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in text.split(',') {
        let number = |n: &str| {
            n.trim()
                .parse::<usize>()
                .map_err(|_| format!("{text:?} is not a CPU list (e.g. 0, 0-3, 0,2)"))
        };
        match part.split_once('-') {
            Some((first, last)) => cpus.extend(number(first)?..=number(last)?),
            None => cpus.push(number(part)?),
        }
    }
    if cpus.is_empty() || cpus.iter().any(|&cpu| cpu >= libc::CPU_SETSIZE as usize) {
        return Err(format!("{text:?} is not a CPU list"));
    }
    Ok(cpus)
}

/// Bytes an unprivileged writer may still use on the filesystem holding `path`.
fn free_bytes(path: &std::path::Path) -> Result<u64, String> {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{} holds a NUL byte", path.display()))?;
    // SAFETY: statvfs is plain data, filled by the call; `name` is a valid C string that
    // outlives it.
    let stats = unsafe {
        let mut stats: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(name.as_ptr(), &mut stats) != 0 {
            return Err(format!(
                "cannot read the free space of {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        stats
    };
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// The smallest segment an embedded run's default retention uses.
const MIN_FITTED_SEGMENT_BYTES: u64 = 16 << 20;

/// Longest `--duration`, `--warmup` or `--drain-grace`: a year.
const SECONDS_MAX: f64 = 365.0 * 24.0 * 3600.0;

/// Gives an embedded run's topics a `retention.bytes` and `segment.bytes`, unless the
/// flags set them, that keep `partitions` partitions within half of `free_bytes`: each
/// partition keeps at most its retention, an active segment and the space reserved
/// ahead of it. Fails if that leaves a partition less than four of the smallest segment.
fn fit_retention(
    configs: &mut Vec<(String, String)>,
    free_bytes: u64,
    partitions: u64,
) -> Result<(), String> {
    let given = |key: &str| configs.iter().any(|(name, _)| name == key);
    if given("retention.bytes") {
        return Ok(());
    }
    let share = free_bytes / 2 / partitions.max(1);
    if share < 4 * MIN_FITTED_SEGMENT_BYTES {
        return Err(format!(
            "too little free space for {partitions} partitions: {} MB, and a run needs {} MB \
             (set --topic-config retention.bytes=..., or --data-dir on a larger disk)",
            free_bytes / 1_000_000,
            partitions * 8 * MIN_FITTED_SEGMENT_BYTES / 1_000_000
        ));
    }
    let mib = |bytes: u64| bytes >> 20 << 20;
    if !given("segment.bytes") {
        let broker_default = flumen::storage::LogConfig::default().segment_bytes_max;
        let segment = mib((share / 4).min(broker_default));
        configs.push(("segment.bytes".into(), segment.to_string()));
    }
    configs.push(("retention.bytes".into(), mib(share / 2).to_string()));
    Ok(())
}

/// Restricts the calling thread (and the threads it starts later) to `cpus`.
fn pin_current_thread(cpus: &[usize]) -> Result<(), String> {
    // SAFETY: cpu_set_t is plain data; CPU_SET stays inside it (checked by parse_cpus);
    // sched_setaffinity reads `size` bytes of it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(format!(
                "cannot pin to CPUs {cpus:?}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // Before any thread starts: they all inherit the blocked signals.
    let outcome = interrupt::install().and_then(|()| run(&args));
    match outcome {
        Ok(()) if interrupt::requested() => {
            eprintln!("interrupted: the figures above cover only the time that ran");
            std::process::ExitCode::from(interrupt::EXIT_STATUS)
        }
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            match interrupt::requested() {
                true => std::process::ExitCode::from(interrupt::EXIT_STATUS),
                false => std::process::ExitCode::FAILURE,
            }
        }
    }
}

/// The checked plan of `args`.
fn plan(args: &Args) -> Result<Plan, String> {
    if args.producers == 0 || args.producers > 1_000 {
        return Err("--producers must be between 1 and 1000".into());
    }
    if args.consumers > 10_000 || args.threads == 0 || args.threads > 1_024 {
        return Err("--consumers takes at most 10000, --threads 1 to 1024".into());
    }
    if args.topics == 0 || args.partitions == 0 {
        return Err("--topics and --partitions must be positive".into());
    }
    // Seconds: a year at most, so every instant computed from them exists.
    let seconds = |value: f64| (0.0..=SECONDS_MAX).contains(&value);
    if !(seconds(args.duration) && args.duration > 0.0 && seconds(args.warmup)) {
        return Err(format!(
            "--duration must be positive and --warmup not negative, both at most {SECONDS_MAX} s"
        ));
    }
    if !seconds(args.drain_grace) {
        return Err(format!(
            "--drain-grace must be between 0 and {SECONDS_MAX} s"
        ));
    }
    if args.scenario == Scenario::Drain && args.rate.is_some() {
        return Err(
            "--rate does not apply to the drain scenario: it builds its backlog as \
                    fast as the broker takes it"
                .into(),
        );
    }
    let topic_configs = args
        .topic_configs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
            _ => Err(format!("--topic-config takes KEY=VALUE, not {pair:?}")),
        })
        .collect::<Result<Vec<_>, String>>()?;
    let sizes = SizeDistribution::parse(&args.message_size)?;
    let keys = KeyChooser::new(KeyDistribution::parse(args.keys, &args.key_distribution)?);
    let batching = AccumulatorConfig {
        batch_size_bytes: args.batch_size,
        linger: Duration::from_secs_f64(args.linger_ms / 1000.0),
        buffer_memory_bytes: match &args.buffer_memory {
            Some(text) => usize::try_from(parse_bytes(text)?)
                .map_err(|_| format!("--buffer-memory {text} is too large"))?,
            None => args.batch_size.saturating_mul(32).max(32 << 20),
        },
    };
    batching
        .validate()
        .map_err(|reason| format!("invalid batching: {reason}"))?;
    if args.max_in_flight == 0 {
        return Err("--max-in-flight must be at least 1".into());
    }
    let rate_msgs_per_s = args
        .rate
        .as_deref()
        .map(|rate| parse_rate(rate, sizes.mean()))
        .transpose()?;
    Ok(Plan {
        bootstrap: args.bootstrap.clone(),
        topic_prefix: args.topic.clone(),
        topics: args.topics,
        topic_configs,
        partitions: args.partitions,
        producers: args.producers,
        consumers: args.consumers,
        sizes,
        keys,
        batching,
        max_in_flight: args.max_in_flight,
        rate_msgs_per_s,
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.duration),
        drain_grace: Duration::from_secs_f64(args.drain_grace),
        interval_logs: args.hdr_log.is_some(),
        progress: !args.quiet,
        seed: args.seed,
        keep_topics: args.keep_topics,
    })
}

/// Starts the embedded broker on `--broker-cpus`, leaving the calling thread on the
/// CPUs it had.
fn start_embedded(args: &Args) -> Result<(EmbeddedBroker, Vec<usize>, usize), String> {
    let original = flumen::shard::available_cpus();
    let broker_cpus = args.broker_cpus.as_deref().map(parse_cpus).transpose()?;
    if let Some(cpus) = &broker_cpus {
        pin_current_thread(cpus)?;
    }
    let shards = args
        .broker_shards
        .unwrap_or_else(|| broker_cpus.as_ref().map_or(1, Vec::len));
    let parent = args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    let started = EmbeddedBroker::start_in(&parent, |config| {
        let defaults = flumen::server::BrokerConfig::default();
        config.shards = shards;
        config.io_memory_bytes = defaults.io_memory_bytes;
        config.cache_bytes_per_shard = defaults.cache_bytes_per_shard;
    })
    .map_err(|error| format!("cannot start the embedded broker: {error}"));
    let pinned_to = flumen::shard::available_cpus();
    pin_current_thread(&original)?;
    let started = started?;
    interrupt::remove_on_exit(started.data_dir().to_path_buf());
    Ok((started, pinned_to, shards))
}

fn run(args: &Args) -> Result<(), String> {
    let modes = ack_modes(args)?;
    let mut plan = plan(args)?;
    let load_cpus = args.cpus.as_deref().map(parse_cpus).transpose()?;
    let embedded = match args.embedded {
        true => Some(start_embedded(args)?),
        false => None,
    };
    if let Some(cpus) = &load_cpus {
        pin_current_thread(cpus)?;
    }
    let broker = match &embedded {
        Some((broker, cpus, shards)) => {
            plan.bootstrap = broker.bootstrap().to_string();
            Broker {
                embedded: true,
                bootstrap: plan.bootstrap.clone(),
                version: Some(env!("CARGO_PKG_VERSION").to_owned()),
                shards: Some(*shards),
                cpus: cpus.clone(),
                fsync_policy: FSYNC_POLICY,
                write_out_interval_ms: Some(
                    flumen::server::BrokerConfig::default().write_out_interval_ms,
                ),
                flush_interval_ms: Some(flumen::server::BrokerConfig::default().flush_interval_ms),
            }
        }
        None => Broker {
            embedded: false,
            bootstrap: plan.bootstrap.clone(),
            version: None,
            shards: None,
            cpus: Vec::new(),
            fsync_policy: FSYNC_POLICY,
            write_out_interval_ms: None,
            flush_interval_ms: None,
        },
    };
    let disk_path = match &embedded {
        Some((broker, _, _)) => broker.data_dir().to_path_buf(),
        None => PathBuf::from("."),
    };
    if embedded.is_some() {
        let free = free_bytes(&disk_path)?;
        match args.scenario {
            Scenario::ProduceConsume => {
                // Topics of one ack mode at a time, unless they are kept.
                let sets = if args.keep_topics { modes.len() } else { 1 };
                let partitions = u64::from(plan.topics) * u64::from(plan.partitions);
                fit_retention(&mut plan.topic_configs, free, partitions * sets as u64)
                    .map_err(|reason| format!("{reason} in {}", disk_path.display()))?;
            }
            Scenario::Drain => {
                let backlog = parse_bytes(&args.backlog)?;
                // Values plus batch and record headers, with room to spare.
                if backlog.saturating_mul(5) / 4 > free {
                    return Err(format!(
                        "--backlog {} does not fit in the {} MB free in {}",
                        args.backlog,
                        free / 1_000_000,
                        disk_path.display()
                    ));
                }
            }
            Scenario::Idle => {}
        }
    }
    let runtime = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        threads => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build(),
    }
    .map_err(|error| format!("cannot start the load runtime: {error}"))?;

    let mut results: Vec<ModeResult> = Vec::new();
    let (mut backlog_drain, mut idle) = (None, None);
    match args.scenario {
        Scenario::ProduceConsume => {
            for (label, acks) in &modes {
                if interrupt::requested() {
                    break;
                }
                if !args.quiet {
                    eprintln!(
                        "acks={label}: {}s warm-up, {}s measured",
                        args.warmup, args.duration
                    );
                }
                match runtime.block_on(run::run_mode(&plan, label, *acks)) {
                    Ok(result) => results.push(result),
                    // Stopped in its warm-up: the modes before it still get reported.
                    Err(message) if interrupt::requested() => {
                        eprintln!("acks={label}: {message}");
                        break;
                    }
                    Err(message) => return Err(message),
                }
            }
        }
        Scenario::Drain => {
            let (label, acks) = &modes[0];
            let bytes = parse_bytes(&args.backlog)?;
            if bytes == 0 {
                return Err("--backlog must be positive".into());
            }
            let (result, drain) = runtime.block_on(run::run_drain(&plan, label, *acks, bytes))?;
            results.push(result);
            backlog_drain = Some(drain);
        }
        Scenario::Idle => {
            let pid = match (args.broker_pid, args.embedded) {
                (Some(pid), _) => pid,
                (None, true) => std::process::id(),
                (None, false) => {
                    return Err("--scenario idle needs --embedded or --broker-pid".into())
                }
            };
            idle = Some(run::run_idle(
                &plan,
                pid,
                args.idle_partitions,
                args.idle_connections,
                Duration::from_secs(2),
            )?);
        }
    }

    let report = Report {
        schema_version: SCHEMA_VERSION,
        machine: Machine::here(&disk_path),
        broker,
        config: Config {
            mode: match plan.rate_msgs_per_s {
                Some(_) => "open-loop",
                None => "max-rate",
            },
            target_rate_msgs_per_s: plan.rate_msgs_per_s,
            compression: "none",
            client_version: env!("CARGO_PKG_VERSION"),
            buffer_memory_bytes: plan.batching.buffer_memory_bytes,
            topic_configs_in_effect: plan
                .topic_configs
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect(),
            // The ack modes that ran by default are named, as if given.
            flags: &Args {
                acks: Some(
                    modes
                        .iter()
                        .map(|(label, _)| label.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                ..args.clone()
            },
        },
        runs: results.iter().map(|result| result.run.clone()).collect(),
        backlog_drain,
        idle,
        interrupted: interrupt::requested(),
    };
    print!("{}", report.table());
    if let Some(path) = &args.json {
        std::fs::write(path, report.json())
            .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        let curves: Vec<plot::Curves<'_>> = results
            .iter()
            .map(|result| plot::Curves {
                label: &result.run.acks,
                publish: &result.total.publish,
                end_to_end: (result.run.end_to_end_latency_us.is_some())
                    .then_some(&result.total.end_to_end),
                series: &result.run.time_series,
            })
            .collect();
        let title = format!(
            "flumen-loadgen {}: {}, {} B values, {} × {} partitions, {} producer(s), {} consumer(s) — {}",
            report.config.mode,
            match args.scenario {
                Scenario::ProduceConsume => "produce + consume",
                Scenario::Drain => "backlog drain",
                Scenario::Idle => "idle",
            },
            args.message_size,
            args.topics,
            args.partitions,
            args.producers,
            args.consumers,
            report.machine.cpu_model
        );
        std::fs::write(path, plot::document(path, &title, &curves))
            .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
    }
    if let Some(dir) = &args.hdr_log {
        std::fs::create_dir_all(dir)
            .map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
        for result in &results {
            let logs = [
                ("publish", &result.publish_log),
                ("end-to-end", &result.end_to_end_log),
            ];
            for (kind, log) in logs {
                if log.len() == 0 || (kind == "end-to-end" && args.consumers == 0) {
                    continue;
                }
                let path = dir.join(format!("acks-{}.{kind}.hlog", result.run.acks));
                log.write(
                    &path,
                    &format!("flumen-loadgen {kind} latency, acks={}", result.run.acks),
                )
                .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
            }
        }
    }
    drop(runtime);
    drop(embedded);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_into_rates_sizes_and_cpu_lists() {
        assert_eq!(parse_rate("50000", 1024.0), Ok(50_000.0));
        assert_eq!(parse_rate("50k", 1024.0), Ok(50_000.0));
        assert_eq!(parse_rate("1.5M", 1024.0), Ok(1_500_000.0));
        assert_eq!(parse_rate("100MB/s", 1000.0), Ok(100_000.0));
        assert_eq!(parse_rate("1GiB/s", 1024.0), Ok(1_048_576.0));
        assert!(parse_rate("0", 1.0).is_err() && parse_rate("fast", 1.0).is_err());
        assert_eq!(parse_bytes("4GB"), Ok(4_000_000_000));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert!(parse_bytes("4 parsecs").is_err());
        assert_eq!(parse_cpus("0,2-4"), Ok(vec![0, 2, 3, 4]));
        assert!(parse_cpus("x").is_err() && parse_cpus("100000").is_err());
        assert_eq!(parse_acks("0, 1,all").unwrap().len(), 3);
    }

    #[test]
    fn an_embedded_run_gets_a_retention_that_fits_half_the_free_space() {
        let fitted = |configs: &[(&str, &str)], free: u64, partitions: u64| {
            let mut configs: Vec<(String, String)> = configs
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect();
            fit_retention(&mut configs, free, partitions).map(|()| configs)
        };
        let number = |configs: &[(String, String)], key: &str| {
            configs
                .iter()
                .find(|(name, _)| name == key)
                .map(|(_, value)| value.parse::<u64>().unwrap())
        };
        // 2 GiB free, 8 partitions: 128 MiB each; a quarter of it per segment, half kept.
        let small = fitted(&[], 2 << 30, 8).unwrap();
        assert_eq!(number(&small, "segment.bytes"), Some(32 << 20));
        assert_eq!(number(&small, "retention.bytes"), Some(64 << 20));
        // A large disk keeps the broker's segment size.
        let large = fitted(&[], 4 << 40, 8).unwrap();
        assert_eq!(number(&large, "segment.bytes"), Some(1 << 30));
        assert_eq!(number(&large, "retention.bytes"), Some(128 << 30));
        // What the flags set stays.
        let given = fitted(&[("retention.bytes", "1000")], 2 << 30, 8).unwrap();
        assert_eq!(given.len(), 1);
        let segment = fitted(&[("segment.bytes", "16777216")], 2 << 30, 8).unwrap();
        assert_eq!(number(&segment, "segment.bytes"), Some(16 << 20));
        assert_eq!(number(&segment, "retention.bytes"), Some(64 << 20));
        // Too little room: refused, naming the way out.
        let refused = fitted(&[], 1 << 30, 100).unwrap_err();
        assert!(refused.contains("retention.bytes"), "{refused}");
        // Given a retention, nothing is checked: the flags decide.
        assert!(fitted(&[("retention.bytes", "1000")], 0, 100).is_ok());
    }

    #[test]
    fn the_producer_buffer_defaults_to_32_batches_and_can_be_set() {
        let plan_of = |flags: &[&str]| {
            let args = Args::try_parse_from(
                std::iter::once("flumen-loadgen").chain(flags.iter().copied()),
            )
            .expect("flags parse");
            plan(&args).map(|plan| plan.batching.buffer_memory_bytes)
        };
        assert_eq!(plan_of(&[]), Ok(32 << 20));
        assert_eq!(plan_of(&["--batch-size", "2097152"]), Ok(64 << 20));
        assert_eq!(plan_of(&["--buffer-memory", "8MiB"]), Ok(8 << 20));
        assert!(plan_of(&["--buffer-memory", "0"]).is_err());
        assert!(plan_of(&["--buffer-memory", "lots"]).is_err());
    }

    #[test]
    fn scenarios_get_their_ack_modes_and_out_of_range_times_are_refused() {
        let args_of = |flags: &[&str]| {
            Args::try_parse_from(std::iter::once("flumen-loadgen").chain(flags.iter().copied()))
                .expect("flags parse")
        };
        let labels = |flags: &[&str]| {
            ack_modes(&args_of(flags)).map(|modes| {
                modes
                    .into_iter()
                    .map(|(label, _)| label)
                    .collect::<Vec<_>>()
                    .join(",")
            })
        };
        assert_eq!(labels(&[]).unwrap(), "0,1,all");
        assert_eq!(labels(&["--scenario", "drain"]).unwrap(), "1");
        assert_eq!(
            labels(&["--scenario", "drain", "--acks", "all"]).unwrap(),
            "all"
        );
        let several = labels(&["--scenario", "drain", "--acks", "1,all"]).unwrap_err();
        assert!(several.contains("one ack mode"), "{several}");
        let rate = plan(&args_of(&["--scenario", "drain", "--rate", "1000"])).map(drop);
        assert!(rate.unwrap_err().contains("--rate"));
        for flags in [
            ["--duration", "1e300"],
            ["--duration", "0"],
            ["--warmup", "1e19"],
            ["--warmup=-1", "--seed=1"],
            ["--drain-grace", "inf"],
        ] {
            assert!(plan(&args_of(&flags)).is_err(), "{flags:?} accepted");
        }
        assert!(plan(&args_of(&["--duration", "86400", "--warmup", "3600"])).is_ok());
    }
}
