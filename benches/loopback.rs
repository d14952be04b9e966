//! End-to-end produce and consume throughput over loopback TCP, through the public
//! client, against a broker started separately (see `scripts/bench-loopback.sh`, which
//! pins the broker to one core, this load to another, and measures iperf3 in the same
//! run).
//!
//! `FLUMEN_BENCH_BOOTSTRAP` (default `127.0.0.1:19092`) names the broker;
//! `FLUMEN_BENCH_SECONDS` (default 10) the produce duration per ack mode;
//! `FLUMEN_BENCH_CONNECTIONS` (default 4) the concurrent connections, each on its own
//! thread. Batches are 1,000 records of 1 KiB (about 1 MiB), built once before timing.
//! `FLUMEN_BENCH_ONLY=producer` runs only the `Producer` mode (for profiling).
//! Prints `name=value` lines.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flumen_client::{Acks, Client};
use flumen_protocol::record::BatchBuilder;

const PARTITIONS: u32 = 8;
const RECORDS_PER_BATCH: usize = 1_000;
const RECORD_BYTES: usize = 1_024;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::args().any(|arg| arg == "accumulator") {
        accumulator_throughput();
        return;
    }
    if !std::env::args().any(|arg| arg == "run") {
        // `cargo bench` / `cargo test --benches` without a broker: nothing to do.
        eprintln!("usage: loopback run|accumulator (see scripts/bench-loopback.sh)");
        return;
    }
    let bootstrap: String = env_or("FLUMEN_BENCH_BOOTSTRAP", "127.0.0.1:19092".to_owned());
    let seconds: u64 = env_or("FLUMEN_BENCH_SECONDS", 10);
    let connections: u32 = env_or("FLUMEN_BENCH_CONNECTIONS", 4);
    let topic = format!("loopback-{}", std::process::id());
    Client::connect(&bootstrap)
        .and_then(|mut client| client.create_topic(&topic, PARTITIONS, &[]))
        .expect("broker reachable and topic created");
    if std::env::var("FLUMEN_BENCH_ONLY").is_ok_and(|only| only == "producer") {
        let (bytes, elapsed) = producer(&bootstrap, &topic, seconds);
        println!("producer_acks1_MiBps={:.1}", mib_per_second(bytes, elapsed));
        return;
    }
    let batch = build_batch();
    for (name, acks) in [("acks1", Acks::Leader), ("acksall", Acks::All)] {
        let (bytes, elapsed) = produce(&bootstrap, &topic, &batch, acks, connections, seconds);
        println!("produce_{name}_MiBps={:.1}", mib_per_second(bytes, elapsed));
    }
    let (bytes, elapsed) = consume(&bootstrap, &topic, connections);
    println!("consume_MiBps={:.1}", mib_per_second(bytes, elapsed));
    println!("consume_bytes={bytes}");
    let (bytes, elapsed) = producer(&bootstrap, &topic, seconds);
    println!("producer_acks1_MiBps={:.1}", mib_per_second(bytes, elapsed));
}

/// The tokio `Producer` (batching, linger, routing) sending 1 KiB records for `seconds`.
fn producer(bootstrap: &str, topic: &str, seconds: u64) -> (u64, Duration) {
    use flumen_client::{Producer, ProducerConfig, Record};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut config = ProducerConfig::new(bootstrap);
        config.acks = Acks::Leader;
        config.batching.batch_size_bytes = 1 << 20;
        let producer = Producer::start(config);
        let value = vec![b'x'; RECORD_BYTES];
        let start = Instant::now();
        let mut sent = 0u64;
        let mut pending = std::collections::VecDeque::new();
        while start.elapsed() < Duration::from_secs(seconds) {
            for _ in 0..1_000 {
                let record = Record {
                    topic: topic.to_owned(),
                    value: Some(value.clone()),
                    ..Record::default()
                };
                pending.push_back(producer.send(record).await);
                sent += RECORD_BYTES as u64;
            }
            // Bound the records in flight by awaiting the oldest deliveries.
            while pending.len() > 64_000 {
                pending.pop_front().unwrap().await.unwrap();
            }
        }
        for delivery in pending {
            delivery.await.unwrap();
        }
        (sent, start.elapsed())
    })
}

/// Batches built per second through the accumulator alone (no broker, no I/O).
fn accumulator_throughput() {
    use flumen_client::accumulator::{Accumulator, AccumulatorConfig, RecordRef};
    let mut accumulator = Accumulator::new(AccumulatorConfig {
        batch_size_bytes: 1 << 20,
        ..AccumulatorConfig::default()
    });
    let value = vec![b'x'; RECORD_BYTES];
    let records = 2_000_000u64;
    let start = Instant::now();
    let mut batches = 0u64;
    for id in 0..records {
        let key = (id % 1024).to_le_bytes();
        let record = RecordRef {
            topic: "bench",
            partition: None,
            key: Some(&key),
            value: Some(&value),
            headers: &[],
            timestamp_ms: Some(id as i64),
        };
        let (_, ready) = accumulator.append(&record, 8, id, start).unwrap();
        if let Some(batch) = ready {
            batches += 1;
            accumulator.release(batch.payload_bytes);
        }
    }
    let elapsed = start.elapsed();
    println!(
        "accumulator_batches_per_s={:.0}",
        batches as f64 / elapsed.as_secs_f64()
    );
    println!(
        "accumulator_records_per_s={:.0}",
        records as f64 / elapsed.as_secs_f64()
    );
    println!(
        "accumulator_MiBps={:.1}",
        mib_per_second(records * RECORD_BYTES as u64, elapsed)
    );
}

fn build_batch() -> Vec<u8> {
    let mut builder = BatchBuilder::new(0);
    let value = vec![b'x'; RECORD_BYTES];
    for index in 0..RECORDS_PER_BATCH {
        builder.push(index as i64, None, Some(&value), &[]);
    }
    builder.build().unwrap().as_bytes().to_vec()
}

fn mib_per_second(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
}

fn produce(
    bootstrap: &str,
    topic: &str,
    batch: &[u8],
    acks: Acks,
    connections: u32,
    seconds: u64,
) -> (u64, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..connections)
        .map(|connection| {
            let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
            let (bootstrap, topic, batch) =
                (bootstrap.to_owned(), topic.to_owned(), batch.to_vec());
            std::thread::spawn(move || {
                let mut client = Client::connect(&bootstrap).unwrap();
                let mut partition = connection % PARTITIONS;
                while !stop.load(Ordering::Relaxed) {
                    client.produce(&topic, partition, &[&batch], acks).unwrap();
                    sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    partition = (partition + connections) % PARTITIONS;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    (sent.load(Ordering::Relaxed), start.elapsed())
}

fn consume(bootstrap: &str, topic: &str, connections: u32) -> (u64, Duration) {
    let start = Instant::now();
    let threads: Vec<_> = (0..connections)
        .map(|connection| {
            let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
            std::thread::spawn(move || {
                let mut client = Client::connect(&bootstrap).unwrap();
                let mut bytes = 0u64;
                for partition in (connection..PARTITIONS).step_by(connections as usize) {
                    let mut offset = 0;
                    loop {
                        let fetched = client.fetch(&topic, partition, offset, 4 << 20, 0).unwrap();
                        let length = u64::from(fetched.partition.batches.length);
                        if length == 0 {
                            break;
                        }
                        bytes += length;
                        offset = fetched
                            .batches()
                            .unwrap()
                            .last()
                            .unwrap()
                            .header()
                            .next_offset();
                    }
                }
                bytes
            })
        })
        .collect();
    let bytes = threads
        .into_iter()
        .map(|thread| thread.join().unwrap())
        .sum();
    (bytes, start.elapsed())
}
