//! `flumen-loadgen`: drives a broker with the public client and reports throughput and
//! publish latency per ack mode, side by side.
//!
//! This first version runs the **max-rate** (closed-loop) producer workload: for each ack
//! mode of `--acks`, `--producers` producers send `--message-size` records as fast as the
//! producer's buffer lets them, for `--warmup` then `--duration`. Publish latency is the
//! time from `send` to the delivery's outcome, recorded in an HdrHistogram with
//! microsecond resolution (warm-up excluded). A collector per producer awaits deliveries
//! in send order, so a delivery that completes behind an earlier one is recorded when
//! that one completes (at most the earlier one's latency later).
//!
//! Not yet built: the open-loop (rate-paced) mode, consumers and end-to-end latency,
//! keyed and variable-size workloads, the time series, plots and `scripts/bench.sh`.
//! The JSON report already has its final shape: absent figures are `null`.

mod report;

use std::time::{Duration, Instant};

use clap::Parser;
use flumen::EmbeddedBroker;
use flumen_client::accumulator::AccumulatorConfig;
use flumen_client::{Acks, Client, Producer, ProducerConfig, Record};
use hdrhistogram::Histogram;

use report::{AckRun, Report};

/// Throughput and tail latency of a Flumen broker across ack modes.
#[derive(Debug, Clone, Parser)]
#[command(name = "flumen-loadgen", version, about)]
pub struct Args {
    /// Broker address (ignored with --embedded).
    #[arg(long, default_value = "127.0.0.1:9292")]
    bootstrap: String,
    /// Start an in-process broker (temporary data directory) and load it.
    #[arg(long)]
    embedded: bool,
    /// Topic name prefix; each ack mode gets its own topic.
    #[arg(long, default_value = "loadgen")]
    topic: String,
    /// Partitions per topic.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Producers (each its own client and connections).
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Record value size in bytes.
    #[arg(long, default_value_t = 1024)]
    message_size: usize,
    /// Producer batch size in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    batch_size: usize,
    /// Producer linger in milliseconds.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// Ack modes to run, comma-separated: 0, 1, all.
    #[arg(long, default_value = "1,all")]
    acks: String,
    /// Measured time per ack mode, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Time per ack mode before measuring starts, in seconds.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Also write the full report as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
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

/// What one producer measured.
struct Measured {
    histogram: Histogram<u64>,
    messages: u64,
    errors: u64,
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 10 minutes, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// One producer's closed loop: sends until the end, measuring after the warm-up.
async fn produce(
    producer: Producer,
    topic: String,
    value: Vec<u8>,
    measure_from: Instant,
    until: Instant,
) -> Measured {
    let (sent, mut received) =
        tokio::sync::mpsc::channel::<(Instant, flumen_client::DeliveryFuture)>(100_000);
    let collector = tokio::spawn(async move {
        let mut measured = Measured {
            histogram: new_histogram(),
            messages: 0,
            errors: 0,
        };
        while let Some((started, delivery)) = received.recv().await {
            let outcome = delivery.await;
            if started < measure_from {
                continue;
            }
            match outcome {
                Ok(_) => {
                    let micros = started.elapsed().as_micros().max(1) as u64;
                    measured.histogram.saturating_record(micros);
                    measured.messages += 1;
                }
                Err(_) => measured.errors += 1,
            }
        }
        measured
    });
    while Instant::now() < until {
        let record = Record::new(topic.as_str(), value.clone());
        let started = Instant::now();
        let delivery = producer.send(record).await;
        if sent.send((started, delivery)).await.is_err() {
            break;
        }
    }
    drop(sent);
    collector.await.expect("the collector does not panic")
}

async fn run_mode(args: &Args, bootstrap: &str, name: &str, acks: Acks) -> Result<AckRun, String> {
    let topic = format!("{}-acks{}-{}", args.topic, name, std::process::id());
    Client::connect(bootstrap)
        .and_then(|mut client| client.create_topic(&topic, args.partitions, &[]))
        .map_err(|error| format!("cannot create {topic} on {bootstrap}: {error}"))?;
    let mut config = ProducerConfig::new(bootstrap);
    config.acks = acks;
    config.batching = AccumulatorConfig {
        batch_size_bytes: args.batch_size,
        linger: Duration::from_millis(args.linger_ms),
        buffer_memory_bytes: (args.batch_size * 32).max(32 << 20),
    };
    config
        .batching
        .validate()
        .map_err(|reason| format!("invalid batching: {reason}"))?;
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let until = measure_from + Duration::from_secs_f64(args.duration);
    let value = vec![b'x'; args.message_size];
    let mut tasks = Vec::new();
    let mut producers = Vec::new();
    for _ in 0..args.producers {
        let producer = Producer::start(config.clone());
        producers.push(producer.clone());
        tasks.push(tokio::spawn(produce(
            producer,
            topic.clone(),
            value.clone(),
            measure_from,
            until,
        )));
    }
    let mut histogram = new_histogram();
    let (mut messages, mut errors) = (0, 0);
    for task in tasks {
        let measured = task.await.map_err(|error| error.to_string())?;
        histogram
            .add(&measured.histogram)
            .map_err(|error| error.to_string())?;
        messages += measured.messages;
        errors += measured.errors;
    }
    let mut retries = 0;
    for producer in producers {
        retries += producer.metrics().retries;
        producer.close().await;
    }
    let seconds = args.duration;
    Ok(AckRun::new(
        name,
        messages,
        (messages as f64) * args.message_size as f64,
        seconds,
        &histogram,
        errors,
        retries,
    ))
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let modes = parse_acks(&args.acks)?;
    if args.producers == 0 || args.duration <= 0.0 || args.warmup < 0.0 {
        return Err("--producers and --duration must be positive, --warmup not negative".into());
    }
    let embedded = if args.embedded {
        Some(
            EmbeddedBroker::start()
                .map_err(|error| format!("cannot start the embedded broker: {error}"))?,
        )
    } else {
        None
    };
    let bootstrap = match &embedded {
        Some(broker) => broker.bootstrap().to_string(),
        None => args.bootstrap.clone(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| error.to_string())?;
    let mut runs = Vec::new();
    for (name, acks) in modes {
        eprintln!(
            "acks={name}: {}s warm-up, {}s measured ...",
            args.warmup, args.duration
        );
        runs.push(runtime.block_on(run_mode(args, &bootstrap, &name, acks))?);
    }
    let report = Report::new(args, args.embedded, runs);
    print!("{}", report.table());
    if let Some(path) = &args.json {
        std::fs::write(path, report.json())
            .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
    }
    drop(embedded);
    Ok(())
}
