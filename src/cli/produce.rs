//! `flumen produce`: one record per line of standard input, sent with the client's
//! idempotent producer (batched per partition, retried, in order per partition).
//!
//! Every record's delivery is awaited; the summary on standard error says how many were
//! acknowledged and at which offsets, and the exit status is non-zero if any failed.

use std::collections::{BTreeMap, VecDeque};
use std::io::BufRead;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use flumen_client::{Acks, BlockingDelivery, BlockingProducer, ProducerConfig, Record};

use super::{connect, key_value};
use crate::cli::consume::topic_partitions;

/// Deliveries awaited at most at once (bounds memory for long inputs).
const PENDING_MAX: usize = 100_000;

#[derive(Debug, Args)]
pub(super) struct ProduceArgs {
    /// Topic to write to.
    topic: String,
    /// 0 (no acknowledgement), 1 (leader appended) or all (on disk).
    #[arg(long, default_value = "all")]
    acks: String,
    /// Write every record to this partition (default: by key hash, or sticky).
    #[arg(long)]
    partition: Option<u32>,
    /// Split each line at the first SEP into key and value.
    #[arg(long)]
    key_separator: Option<String>,
    /// A header for every record, name=value (repeatable).
    #[arg(long = "header", value_parser = key_value)]
    headers: Vec<(String, String)>,
    /// Give up on a record not acknowledged within this long (retries included).
    #[arg(long, default_value_t = 30_000)]
    delivery_timeout_ms: u64,
}

#[derive(Default)]
struct Summary {
    acknowledged: u64,
    failed: u64,
    bytes: u64,
    ranges: BTreeMap<u32, (u64, u64)>,
    first_error: Option<String>,
}

impl Summary {
    fn wait(&mut self, delivery: BlockingDelivery, bytes: u64) {
        match delivery.wait() {
            Ok(delivered) => {
                self.acknowledged += 1;
                self.bytes += bytes;
                if let (Some(partition), Some(offset)) = (delivered.partition, delivered.offset) {
                    let range = self.ranges.entry(partition).or_insert((offset, offset));
                    range.0 = range.0.min(offset);
                    range.1 = range.1.max(offset);
                }
            }
            Err(error) => {
                self.failed += 1;
                self.first_error.get_or_insert_with(|| error.to_string());
            }
        }
    }
}

pub(super) fn run(bootstrap: &str, args: ProduceArgs) -> Result<ExitCode, String> {
    let acks = match args.acks.as_str() {
        "0" => Acks::None,
        "1" => Acks::Leader,
        "all" | "-1" => Acks::All,
        other => return Err(format!("--acks must be 0, 1 or all, not {other}")),
    };
    // Fail fast, with a clear line, on an unreachable broker or an unknown topic.
    let partitions = topic_partitions(connect(bootstrap)?, bootstrap, &args.topic)?;
    if let Some(partition) = args.partition.filter(|&partition| partition >= partitions) {
        return Err(format!(
            "invalid partition {partition}: {} has {partitions}",
            args.topic
        ));
    }
    let mut config = ProducerConfig::new(bootstrap);
    config.acks = acks;
    config.delivery_timeout = Duration::from_millis(args.delivery_timeout_ms);
    config.max_block = config.delivery_timeout;
    let producer = BlockingProducer::start(config)
        .map_err(|error| format!("cannot start the producer: {error}"))?;
    let mut summary = Summary::default();
    let mut pending = VecDeque::new();
    // Lines are bytes, not text: any value, UTF-8 or not, is sent as it is.
    let mut input = std::io::stdin().lock();
    let mut line = Vec::new();
    let mut read_error = None;
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) => {
                // What was read so far is still sent and summed up below.
                read_error = Some(format!("cannot read standard input: {error}"));
                break;
            }
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        let bytes = line.len() as u64;
        let split = args.key_separator.as_deref().and_then(|separator| {
            let separator = separator.as_bytes();
            (!separator.is_empty())
                .then(|| {
                    line.windows(separator.len())
                        .position(|window| window == separator)
                })
                .flatten()
                .map(|at| (&line[..at], &line[at + separator.len()..]))
        });
        let mut record = match split {
            Some((key, value)) => Record::new(&args.topic, value).with_key(key),
            None => Record::new(&args.topic, line.as_slice()),
        };
        record.partition = args.partition;
        for (name, value) in &args.headers {
            record = record.with_header(name.as_str(), value.as_bytes());
        }
        pending.push_back((producer.send(record), bytes));
        if pending.len() >= PENDING_MAX {
            let (delivery, bytes) = pending.pop_front().expect("not empty");
            summary.wait(delivery, bytes);
        }
    }
    for (delivery, bytes) in pending {
        summary.wait(delivery, bytes);
    }
    let noun = if summary.acknowledged == 1 {
        "record"
    } else {
        "records"
    };
    eprintln!(
        "acknowledged {} {noun} ({} bytes), failed {}",
        summary.acknowledged, summary.bytes, summary.failed
    );
    for (partition, (first, last)) in &summary.ranges {
        eprintln!("  partition {partition}: offsets {first}..={last}");
    }
    match (read_error, summary.first_error) {
        (Some(error), _) => Err(error),
        (None, None) => Ok(ExitCode::SUCCESS),
        (None, Some(error)) => Err(format!("sending to {} failed: {error}", args.topic)),
    }
}
