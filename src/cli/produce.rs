//! `flumen produce`: one record per line of standard input, batched per partition, sent
//! to each partition's owning shard.
//!
//! Batches are sent in input order and each is acknowledged before the next is sent, so
//! with one partition and `--acks all` the acknowledged records are exactly the first N
//! lines: what the summary reports is what is safe.

use std::collections::HashMap;
use std::io::BufRead;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use flumen_client::{partition_for_key, Acks};
use flumen_protocol::record::BatchBuilder;

use super::{connect, key_value};
use crate::cli::consume::ShardClients;

/// Records per batch before it is sent.
const BATCH_RECORDS_MAX: usize = 1_000;
/// Payload bytes per batch before it is sent.
const BATCH_BYTES_MAX: usize = 1 << 20;

#[derive(Debug, Args)]
pub(super) struct ProduceArgs {
    /// Topic to write to.
    topic: String,
    /// 0 (no acknowledgement), 1 (leader appended) or all (on disk).
    #[arg(long, default_value = "all")]
    acks: String,
    /// Write every record to this partition (default: by key hash, or round-robin).
    #[arg(long)]
    partition: Option<u32>,
    /// Split each line at the first SEP into key and value.
    #[arg(long)]
    key_separator: Option<String>,
    /// A header for every record, name=value (repeatable).
    #[arg(long = "header", value_parser = key_value)]
    headers: Vec<(String, String)>,
}

#[derive(Default)]
struct Summary {
    acknowledged: u64,
    failed: u64,
    bytes: u64,
    ranges: HashMap<u32, (u64, u64)>,
}

pub(super) fn run(bootstrap: &str, args: ProduceArgs) -> Result<ExitCode, String> {
    let acks = match args.acks.as_str() {
        "0" => Acks::None,
        "1" => Acks::Leader,
        "all" | "-1" => Acks::All,
        other => return Err(format!("--acks must be 0, 1 or all, not {other}")),
    };
    let clients = ShardClients::new(connect(bootstrap)?, bootstrap, &args.topic)?;
    let partitions = clients.partitions();
    if let Some(partition) = args.partition.filter(|&partition| partition >= partitions) {
        return Err(format!(
            "invalid partition {partition}: {} has {partitions}",
            args.topic
        ));
    }
    let headers: Vec<(&str, &[u8])> = args
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_bytes()))
        .collect();
    let mut pending: HashMap<u32, (BatchBuilder, u64)> = HashMap::new();
    let mut next_keyless = 0u32;
    let mut batches = Batches {
        clients,
        topic: &args.topic,
        acks,
        summary: Summary::default(),
        failure: None,
    };
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|error| format!("cannot read standard input: {error}"))?;
        let (key, value) = match &args.key_separator {
            Some(separator) => match line.split_once(separator.as_str()) {
                Some((key, value)) => (Some(key.as_bytes()), value.as_bytes()),
                None => (None, line.as_bytes()),
            },
            None => (None, line.as_bytes()),
        };
        let partition = args.partition.unwrap_or_else(|| match key {
            Some(key) => partition_for_key(key, partitions),
            None => next_keyless % partitions,
        });
        let (builder, bytes) = pending
            .entry(partition)
            .or_insert_with(|| (BatchBuilder::new(now_ms()), 0));
        builder.push(now_ms(), key, Some(value), &headers);
        *bytes += line.len() as u64;
        if builder.record_count() >= BATCH_RECORDS_MAX || builder.payload_bytes() >= BATCH_BYTES_MAX
        {
            let (builder, bytes) = pending.remove(&partition).expect("just filled");
            next_keyless = next_keyless.wrapping_add(1);
            batches.send(partition, builder, bytes);
            if batches.failure.is_some() {
                break;
            }
        }
    }
    let mut rest: Vec<_> = pending.drain().collect();
    rest.sort_by_key(|(partition, _)| *partition);
    for (partition, (builder, bytes)) in rest {
        batches.send(partition, builder, bytes);
    }
    print_summary(&batches.summary);
    match batches.failure {
        None => Ok(ExitCode::SUCCESS),
        Some(error) => Err(error),
    }
}

/// Sends batches in order; after the first failure, only counts what was not sent.
struct Batches<'a> {
    clients: ShardClients,
    topic: &'a str,
    acks: Acks,
    summary: Summary,
    failure: Option<String>,
}

impl Batches<'_> {
    fn send(&mut self, partition: u32, builder: BatchBuilder, bytes: u64) {
        let records = builder.record_count() as u64;
        if self.failure.is_some() {
            self.summary.failed += records;
            return;
        }
        if let Err(error) = self.try_send(partition, builder) {
            self.summary.failed += records;
            self.failure = Some(format!(
                "sending to {}-{partition} failed: {error}",
                self.topic
            ));
            return;
        }
        self.summary.acknowledged += records;
        self.summary.bytes += bytes;
    }

    fn try_send(&mut self, partition: u32, builder: BatchBuilder) -> Result<(), String> {
        let batch = builder.build().map_err(|error| error.to_string())?;
        let client = self.clients.client(partition)?;
        let result = client
            .produce(self.topic, partition, &[batch.as_bytes()], self.acks)
            .map_err(|error| error.to_string())?;
        if self.acks != Acks::None {
            let range = self
                .summary
                .ranges
                .entry(partition)
                .or_insert((result.base_offset, result.last_offset));
            range.1 = result.last_offset;
        }
        Ok(())
    }
}

fn print_summary(summary: &Summary) {
    eprintln!(
        "acknowledged {} records ({} bytes), failed {}",
        summary.acknowledged, summary.bytes, summary.failed
    );
    let mut ranges: Vec<_> = summary.ranges.iter().collect();
    ranges.sort();
    for (partition, (first, last)) in ranges {
        eprintln!("  partition {partition}: offsets {first}..={last}");
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}
