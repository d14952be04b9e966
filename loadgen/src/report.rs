//! The report: a human table and a versioned JSON document (`--json`), whose schema is
//! documented in `docs/BENCHMARKS.md` ("The JSON report").
//!
//! Schema version 1. Top level: `schema_version`, `machine` (`cpu_model`, `cores`,
//! `load_cpus`, `kernel`, `memory_bytes`, `disk`), `broker` (`embedded`, `bootstrap`, `version`,
//! `shards`, `cpus`, `fsync_policy`, `write_out_interval_ms`, `flush_interval_ms`),
//! `config` (every flag,
//! plus `mode`, `target_rate_msgs_per_s` and `topic_configs_in_effect`), `runs` (one per
//! ack mode, in the order run), `backlog_drain` and `idle` (`null` unless that scenario
//! ran), and `interrupted` (stopped by a signal: the runs cover the time that ran, and
//! modes not reached are missing). Each run: `acks`
//! (`"0"`, `"1"`, `"all"`), `messages`, `producer` and `consumer` (`msgs_per_s`,
//! `mb_per_s`; `consumer` is `null` without consumers), `publish_latency_us` and
//! `end_to_end_latency_us` (`p50 p90 p99 p999 p9999 max`, microseconds;
//! end-to-end is `null` without consumers), `send_slip_us` (open loop only),
//! `hiccups_us` (the load CPU's own stalls: a 1 ms sleep's extra delay), `errors`,
//! `retries`, `unconsumed`, and `time_series` (one [`Point`] per second, warm-up
//! included and marked). Fields may be added in a version; none is removed or changes
//! meaning without a new `schema_version`.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::stats::{Point, Tally};

/// The JSON schema version.
pub const SCHEMA_VERSION: u32 = 1;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
}

impl Percentiles {
    /// The percentiles of `histogram`, or `None` when it is empty.
    pub fn of(histogram: &Histogram<u64>) -> Option<Self> {
        (!histogram.is_empty()).then(|| Self {
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            p9999: histogram.value_at_quantile(0.9999),
            max: histogram.max(),
        })
    }

    fn zero() -> Self {
        Self {
            p50: 0,
            p90: 0,
            p99: 0,
            p999: 0,
            p9999: 0,
            max: 0,
        }
    }
}

/// Throughput of one side.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Throughput {
    pub msgs_per_s: f64,
    pub mb_per_s: f64,
}

impl Throughput {
    /// `messages` records of `bytes` in all over `seconds`.
    pub fn of(messages: u64, bytes: u64, seconds: f64) -> Self {
        let seconds = seconds.max(1e-9);
        Self {
            msgs_per_s: messages as f64 / seconds,
            mb_per_s: bytes as f64 / seconds / 1e6,
        }
    }
}

/// One ack mode's figures.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AckRun {
    pub acks: String,
    /// Records acknowledged whose send fell in the measured period.
    pub messages: u64,
    pub producer: Throughput,
    pub consumer: Option<Throughput>,
    pub publish_latency_us: Percentiles,
    pub end_to_end_latency_us: Option<Percentiles>,
    /// Open loop: how far sends went out behind their intended times.
    pub send_slip_us: Option<Percentiles>,
    /// How much longer than asked a 1 ms sleep on the load's CPUs took during the
    /// measured period: the stalls of the machine itself, which every latency above
    /// includes (`null` where no meter ran).
    pub hiccups_us: Option<Percentiles>,
    pub errors: u64,
    pub retries: u64,
    /// Records produced in the whole run (warm-up included) that consumers had not read
    /// when the run ended (0 without consumers): a broker losing acknowledged records
    /// shows here.
    pub unconsumed: u64,
    pub time_series: Vec<Point>,
}

impl AckRun {
    /// The figures of `total`, measured over `seconds`.
    ///
    /// In open loop the records counted are those meant to be sent in the measured
    /// period, a number the schedule fixes; a broker that fell behind acknowledged them
    /// over a longer time, and the producer's throughput is over that time, so it never
    /// shows more than was achieved.
    pub fn new(acks: &str, total: &Tally, seconds: f64, consumers: bool, open_loop: bool) -> Self {
        let producer_seconds = match total.acknowledged {
            Some((first, last)) if open_loop => seconds.max((last - first).as_secs_f64()),
            _ => seconds,
        };
        Self {
            acks: acks.to_owned(),
            messages: total.produced,
            producer: Throughput::of(total.produced, total.produced_bytes, producer_seconds),
            consumer: consumers
                .then(|| Throughput::of(total.consumed, total.consumed_bytes, seconds)),
            publish_latency_us: Percentiles::of(&total.publish).unwrap_or_else(Percentiles::zero),
            end_to_end_latency_us: consumers
                .then(|| Percentiles::of(&total.end_to_end).unwrap_or_else(Percentiles::zero)),
            send_slip_us: open_loop
                .then(|| Percentiles::of(&total.slip).unwrap_or_else(Percentiles::zero)),
            hiccups_us: Percentiles::of(&total.hiccups),
            errors: total.errors,
            retries: 0,
            unconsumed: 0,
            time_series: Vec::new(),
        }
    }
}

/// The machine the run came from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    /// CPUs online on the machine.
    pub cores: usize,
    /// The CPUs the load generator could run on (its affinity: `--cpus`, `taskset`).
    pub load_cpus: Vec<usize>,
    pub kernel: String,
    pub memory_bytes: u64,
    pub disk: Disk,
}

/// The disk under the data directory (embedded) or the working directory.
#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    pub path: String,
    pub device: String,
    pub filesystem: String,
    /// `None` when the kernel does not say.
    pub rotational: Option<bool>,
    pub model: String,
}

impl Machine {
    /// This machine, with the disk holding `path`.
    pub fn here(path: &std::path::Path) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|line| line.starts_with("model name"))
            .and_then(|line| line.split_once(':'))
            .map_or_else(String::new, |(_, model)| model.trim().to_owned());
        let kernel = read_trimmed("/proc/sys/kernel/osrelease");
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find(|line| line.starts_with("MemTotal:"))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024);
        Self {
            cpu_model,
            // Not `available_parallelism`, which counts only the CPUs this process
            // is pinned to.
            cores: match cpuinfo
                .lines()
                .filter(|line| line.starts_with("processor"))
                .count()
            {
                0 => std::thread::available_parallelism().map_or(1, usize::from),
                online => online,
            },
            load_cpus: flumen::shard::available_cpus(),
            kernel,
            memory_bytes,
            disk: Disk::holding(path),
        }
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_owned()
}

impl Disk {
    /// The mount with the longest mount point that is a prefix of `path`.
    fn holding(path: &std::path::Path) -> Self {
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let (device, filesystem) = mounts
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields.len() >= 3 && path.starts_with(fields[1]))
                    .then(|| (fields[1].len(), fields[0].to_owned(), fields[2].to_owned()))
            })
            .max_by_key(|(length, _, _)| *length)
            .map(|(_, device, filesystem)| (device, filesystem))
            .unwrap_or_default();
        // /dev/nvme0n1p2 -> nvme0n1, /dev/vda1 -> vda: the block device sysfs describes.
        let name = device.trim_start_matches("/dev/");
        let block = std::fs::read_dir("/sys/block")
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|block| !block.is_empty() && name.starts_with(block.as_str()))
            .max_by_key(String::len)
            .unwrap_or_default();
        let rotational =
            match read_trimmed(&format!("/sys/block/{block}/queue/rotational")).as_str() {
                "0" => Some(false),
                "1" => Some(true),
                _ => None,
            };
        Self {
            path: path.display().to_string(),
            device,
            filesystem,
            rotational,
            model: read_trimmed(&format!("/sys/block/{block}/device/model")),
        }
    }
}

/// The broker under test.
#[derive(Debug, Clone, Serialize)]
pub struct Broker {
    pub embedded: bool,
    pub bootstrap: String,
    /// Known for the embedded broker (this build); `None` for a remote one.
    pub version: Option<String>,
    pub shards: Option<usize>,
    /// CPUs the embedded broker's shards were pinned to.
    pub cpus: Vec<usize>,
    /// When data reaches the disk for each ack mode.
    pub fsync_policy: &'static str,
    pub write_out_interval_ms: Option<u64>,
    pub flush_interval_ms: Option<u64>,
}

/// Flumen's durability contract (DESIGN.md): what each ack mode waits for.
pub const FSYNC_POLICY: &str = "acks=all: fdatasync of the partition before the ack; \
     acks=1: ack once appended to the staging buffer, written within \
     write_out_interval_ms and fdatasync'ed in the background within flush_interval_ms; \
     acks=0: no ack, same writes and syncs";

/// The backlog-drain scenario's figures.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BacklogDrain {
    pub backlog_bytes: u64,
    pub messages: u64,
    /// Producing the backlog (closed loop).
    pub build: Throughput,
    pub build_seconds: f64,
    /// Reading it all back from the beginning.
    pub drain: Throughput,
    pub drain_seconds: f64,
}

/// The idle-cost scenario's figures: resident memory of the broker process.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IdleCost {
    pub broker_pid: u32,
    pub rss_before_bytes: u64,
    pub partitions: u32,
    pub rss_after_partitions_bytes: u64,
    pub bytes_per_partition: f64,
    pub connections: u32,
    pub rss_after_connections_bytes: u64,
    pub bytes_per_connection: f64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report<C: Serialize> {
    pub schema_version: u32,
    pub machine: Machine,
    pub broker: Broker,
    pub config: C,
    pub runs: Vec<AckRun>,
    pub backlog_drain: Option<BacklogDrain>,
    pub idle: Option<IdleCost>,
    /// Stopped by a signal: the runs cover only the time that ran.
    pub interrupted: bool,
}

impl<C: Serialize> Report<C> {
    /// The table printed at the end.
    pub fn table(&self) -> String {
        let mut out = String::new();
        if !self.runs.is_empty() {
            out.push_str(&format!(
                "{:<5} {:>10} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7}\n",
                "acks", "prod/s", "MB/s", "cons/s", "MB/s", "p50", "p99", "p99.9", "p99.99",
                "max", "e2e p50", "e2e p99", "e2e p9999", "errors", "retries"
            ));
        }
        for run in &self.runs {
            let publish = &run.publish_latency_us;
            let dash = || "-".to_owned();
            let (consumed, consumed_mb) = run.consumer.as_ref().map_or((dash(), dash()), |c| {
                (format!("{:.0}", c.msgs_per_s), format!("{:.1}", c.mb_per_s))
            });
            let (e50, e99, e9999) = run
                .end_to_end_latency_us
                .as_ref()
                .map_or((dash(), dash(), dash()), |e| {
                    (e.p50.to_string(), e.p99.to_string(), e.p9999.to_string())
                });
            out.push_str(&format!(
                "{:<5} {:>10.0} {:>8.1} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7}\n",
                run.acks,
                run.producer.msgs_per_s,
                run.producer.mb_per_s,
                consumed,
                consumed_mb,
                publish.p50,
                publish.p99,
                publish.p999,
                publish.p9999,
                publish.max,
                e50,
                e99,
                e9999,
                run.errors,
                run.retries
            ));
        }
        if !self.runs.is_empty() {
            out.push_str("latencies in microseconds; MB = 10^6 bytes of values\n");
        }
        for run in &self.runs {
            if let Some(slip) = &run.send_slip_us {
                out.push_str(&format!(
                    "acks={}: sends slipped behind schedule p50 {} us, p99 {} us, max {} us\n",
                    run.acks, slip.p50, slip.p99, slip.max
                ));
            }
            if let Some(hiccups) = &run.hiccups_us {
                out.push_str(&format!(
                    "acks={}: the load CPU's hiccups (a 1 ms sleep's extra delay) p99 {} us, \
                     p99.99 {} us, max {} us\n",
                    run.acks, hiccups.p99, hiccups.p9999, hiccups.max
                ));
            }
            if run.unconsumed > 0 {
                out.push_str(&format!(
                    "acks={}: {} produced records were never consumed\n",
                    run.acks, run.unconsumed
                ));
            }
        }
        if let Some(drain) = &self.backlog_drain {
            out.push_str(&format!(
                "backlog of {:.2} GB ({} records): built at {:.1} MB/s in {:.1} s, \
                 drained at {:.1} MB/s ({:.0} msgs/s) in {:.1} s\n",
                drain.backlog_bytes as f64 / 1e9,
                drain.messages,
                drain.build.mb_per_s,
                drain.build_seconds,
                drain.drain.mb_per_s,
                drain.drain.msgs_per_s,
                drain.drain_seconds
            ));
        }
        if let Some(idle) = &self.idle {
            out.push_str(&format!(
                "broker {} RSS: {:.1} MiB idle; {} partitions +{:.1} MiB ({:.1} KiB each); \
                 {} connections +{:.1} MiB ({:.1} KiB each)\n",
                idle.broker_pid,
                idle.rss_before_bytes as f64 / 1048576.0,
                idle.partitions,
                (idle.rss_after_partitions_bytes as f64 - idle.rss_before_bytes as f64) / 1048576.0,
                idle.bytes_per_partition / 1024.0,
                idle.connections,
                (idle.rss_after_connections_bytes as f64 - idle.rss_after_partitions_bytes as f64)
                    / 1048576.0,
                idle.bytes_per_connection / 1024.0,
            ));
        }
        out
    }

    /// The JSON document.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Recorder;
    use std::time::{Duration, Instant};

    fn run_of(acks: &str) -> AckRun {
        let recorder = Recorder::shared();
        let start = Instant::now();
        for micros in 1..=1_000u64 {
            let mut recorder = recorder.lock().unwrap();
            let at = start + Duration::from_millis(micros);
            recorder.delivered(Duration::from_micros(micros), at, 1_000, true);
            recorder.consumed(Duration::from_micros(micros * 2), 1_000, true, true);
            recorder.slipped(Duration::from_micros(micros / 10), true);
            recorder.hiccup(Duration::from_micros(micros / 20), true);
        }
        let total = crate::stats::totals(&[recorder]);
        AckRun::new(acks, &total, 2.0, true, true)
    }

    /// The JSON has every documented field, with the documented types.
    #[test]
    fn the_json_schema_has_every_documented_field() {
        let report = Report {
            schema_version: SCHEMA_VERSION,
            machine: Machine::here(std::path::Path::new(".")),
            broker: Broker {
                embedded: true,
                bootstrap: "127.0.0.1:1".into(),
                version: Some("0.1.0".into()),
                shards: Some(1),
                cpus: vec![0],
                fsync_policy: FSYNC_POLICY,
                write_out_interval_ms: Some(10),
                flush_interval_ms: Some(1_000),
            },
            config: serde_json::json!({"mode": "max-rate"}),
            runs: vec![run_of("1"), run_of("all")],
            backlog_drain: None,
            idle: None,
            interrupted: false,
        };
        let json: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
        assert_eq!(json["schema_version"], 1);
        assert_eq!(json["interrupted"], false);
        for key in [
            "cpu_model",
            "cores",
            "load_cpus",
            "kernel",
            "memory_bytes",
            "disk",
        ] {
            assert!(json["machine"].get(key).is_some(), "machine.{key}");
        }
        for key in ["embedded", "version", "fsync_policy", "shards"] {
            assert!(json["broker"].get(key).is_some(), "broker.{key}");
        }
        assert!(json["backlog_drain"].is_null() && json["idle"].is_null());
        for run in json["runs"].as_array().unwrap() {
            for side in ["producer", "consumer"] {
                assert!(run[side]["msgs_per_s"].as_f64().unwrap() == 500.0, "{side}");
                assert!(run[side]["mb_per_s"].as_f64().unwrap() == 0.5, "{side}");
            }
            for latency in [
                "publish_latency_us",
                "end_to_end_latency_us",
                "send_slip_us",
                "hiccups_us",
            ] {
                let values: Vec<u64> = ["p50", "p90", "p99", "p999", "p9999", "max"]
                    .iter()
                    .map(|key| run[latency][*key].as_u64().unwrap())
                    .collect();
                assert!(
                    values.windows(2).all(|pair| pair[0] <= pair[1]),
                    "{latency}"
                );
            }
            assert_eq!(run["publish_latency_us"]["max"], 1_000);
            assert!(
                (1_995..=2_001).contains(&run["end_to_end_latency_us"]["max"].as_u64().unwrap())
            );
            for key in ["errors", "retries", "unconsumed", "messages"] {
                assert!(run[key].is_u64(), "{key}");
            }
            assert!(run["time_series"].is_array());
        }
        let table = report.table();
        assert_eq!(
            table
                .lines()
                .filter(|line| line.starts_with("all "))
                .count(),
            1
        );
        assert!(table.contains("slipped behind schedule"));
        assert!(table.contains("hiccups"));
    }

    /// In open loop the schedule fixes how many records the period holds; a broker that
    /// acknowledged them over 3 s instead of the period's 2 s gets the rate over 3 s.
    /// In closed loop the records counted are those the producer got to send in the
    /// period, so the period stays the divisor.
    #[test]
    fn an_open_loop_behind_schedule_reports_the_rate_it_achieved() {
        let recorder = Recorder::shared();
        let start = Instant::now();
        for index in 0..=3_000u64 {
            let at = start + Duration::from_millis(index);
            let mut recorder = recorder.lock().unwrap();
            recorder.delivered(Duration::from_micros(100), at, 1_000, true);
            // Outside the measured period: neither counted nor part of the span.
            recorder.delivered(
                Duration::from_micros(100),
                at + Duration::from_secs(9),
                1_000,
                false,
            );
        }
        let total = crate::stats::totals(&[recorder]);
        let open = AckRun::new("1", &total, 2.0, false, true);
        assert_eq!(open.messages, 3_001);
        assert!((open.producer.msgs_per_s - 3_001.0 / 3.0).abs() < 1e-6);
        let closed = AckRun::new("1", &total, 2.0, false, false);
        assert!((closed.producer.msgs_per_s - 3_001.0 / 2.0).abs() < 1e-6);
        // On schedule (acknowledged within the period): the period, not a shorter span.
        assert_eq!(run_of("1").producer.msgs_per_s, 500.0);
    }
}
