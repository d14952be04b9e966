//! `flumen consume`: print records from one or all partitions, from the beginning, an
//! offset, a time, or the end; stop after `--max-messages`, or after `--timeout-ms`
//! without new data, or follow the log. Reads with the client's consumer (prefetching
//! fetches per partition).
//!
//! With `--group G` it joins the consumer group G, subscribed to the topic: the group's
//! members share its partitions (run several to share the work; one that dies is
//! replaced after its session timeout). It starts where the group committed (where it
//! never committed: at the end, or the beginning with `--from-beginning`), commits the
//! position after each record it printed, once per poll, and leaves the group when it
//! stops.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant, UNIX_EPOCH};

use clap::Args;
use flumen_client::{
    BlockingConsumer, Client, ConsumerConfig, OffsetReset, SeekTo, TopicPartition,
};

use super::format::Format;

/// Longest single poll; a `--timeout-ms` is checked between polls.
const POLL_MAX: Duration = Duration::from_millis(500);

#[derive(Debug, Args)]
pub(super) struct ConsumeArgs {
    /// Topic to read.
    topic: String,
    /// Start at the first record still in the log.
    #[arg(long, conflicts_with_all = ["offset", "from_time"])]
    from_beginning: bool,
    /// Start at this offset (in every partition read).
    #[arg(long, conflicts_with = "from_time")]
    offset: Option<u64>,
    /// Start at the first record at or after this time (RFC 3339 in UTC,
    /// e.g. 2026-11-25T12:00:00Z).
    #[arg(long)]
    from_time: Option<String>,
    /// Read only this partition (default: all).
    #[arg(long)]
    partition: Option<u32>,
    /// Stop after this many records.
    #[arg(long)]
    max_messages: Option<u64>,
    /// Stop after this long without new records (default: follow forever).
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Read as a member of this consumer group (partitions shared with its other
    /// members; start at its committed positions, commit as it goes).
    #[arg(long, conflicts_with_all = ["partition", "offset", "from_time"])]
    group: Option<String>,
    /// With --group: how long the group waits for this member after it stops
    /// heartbeating (a killed process) before giving its partitions to others.
    #[arg(long, default_value_t = 10_000)]
    session_timeout_ms: u64,
    /// Output format with kcat's tokens: %t %p %o %k %s %T %h, \n, \t.
    #[arg(long, default_value = r"%s\n")]
    format: String,
}

/// The partition count of `topic`, through `client` (connected to `bootstrap`); a clear
/// error for an unknown topic.
pub(super) fn topic_partitions(
    mut client: Client,
    bootstrap: &str,
    topic: &str,
) -> Result<u32, String> {
    let metadata = client
        .metadata(Some(&[topic]))
        .map_err(|error| format!("cannot read metadata from {bootstrap}: {error}"))?;
    metadata
        .topics
        .first()
        .filter(|found| found.outcome.error_code == 0)
        .map(|found| found.partitions.len() as u32)
        .ok_or_else(|| format!("unknown topic {topic}"))
}

pub(super) fn run(bootstrap: &str, args: ConsumeArgs) -> Result<ExitCode, String> {
    let format = Format::parse(&args.format)?;
    let count = topic_partitions(super::connect(bootstrap)?, bootstrap, &args.topic)?;
    let partitions: Vec<TopicPartition> = match args.partition {
        Some(partition) if partition >= count => {
            return Err(format!(
                "invalid partition {partition}: {} has {count}",
                args.topic
            ));
        }
        Some(partition) => vec![TopicPartition::new(&args.topic, partition)],
        None => (0..count)
            .map(|partition| TopicPartition::new(&args.topic, partition))
            .collect(),
    };
    let start = start(&args)?;
    let mut config = ConsumerConfig::new(bootstrap);
    config.group_id = args.group.clone();
    // Commits what was printed, itself (a --max-messages stop may leave records unread).
    config.commit_mode = flumen_client::CommitMode::Manual;
    config.session_timeout = Duration::from_millis(args.session_timeout_ms);
    config.heartbeat_interval = config.session_timeout / 3;
    config.auto_offset_reset = if args.from_beginning {
        OffsetReset::Earliest
    } else {
        OffsetReset::Latest
    };
    let consumer = BlockingConsumer::new(config)
        .map_err(|error| format!("cannot start the consumer: {error}"))?;
    let failed =
        |error: flumen_client::ConsumeError| format!("reading {} failed: {error}", args.topic);
    match &args.group {
        Some(_) => consumer
            .subscribe(&[args.topic.as_str()], flumen_client::NoListener)
            .map_err(failed)?,
        None => {
            consumer.assign(&partitions).map_err(failed)?;
            for partition in &partitions {
                consumer.seek(partition, start).map_err(failed)?;
            }
        }
    }
    let stop = |consumer: &BlockingConsumer| {
        if args.group.is_some() {
            consumer.unsubscribe();
        }
        Ok(ExitCode::SUCCESS)
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut printed = 0u64;
    let mut last_data = Instant::now();
    let idle_limit = args.timeout_ms.map(Duration::from_millis);
    loop {
        let wait = idle_limit.map_or(POLL_MAX, |limit| {
            limit.saturating_sub(last_data.elapsed()).min(POLL_MAX)
        });
        let records = consumer.poll(wait).map_err(failed)?;
        let mut buffer = Vec::new();
        let mut done: Vec<(TopicPartition, u64)> = Vec::new();
        for record in records.iter() {
            if args.max_messages.is_some_and(|max| printed >= max) {
                break;
            }
            format.render(
                &mut buffer,
                record.topic(),
                record.partition(),
                &record.record(),
            );
            printed += 1;
            let next = record.offset() + 1;
            match done
                .iter_mut()
                .find(|(partition, _)| partition.partition == record.partition())
            {
                Some((_, position)) => *position = next,
                None => done.push((
                    TopicPartition::new(record.topic(), record.partition()),
                    next,
                )),
            }
        }
        out.write_all(&buffer)
            .and_then(|()| out.flush())
            .map_err(|error| error.to_string())?;
        // Commit only what was printed (a --max-messages stop may leave records unread).
        if args.group.is_some() {
            match consumer.commit_offsets(&done) {
                // A rebalance took the partitions: their new owner reads from the last
                // committed position (at least once).
                Err(error) if error.is_rebalance() => {}
                other => other.map_err(failed)?,
            }
        }
        if args.max_messages.is_some_and(|max| printed >= max) {
            return stop(&consumer);
        }
        if !records.is_empty() {
            last_data = Instant::now();
        } else if idle_limit.is_some_and(|limit| last_data.elapsed() >= limit) {
            return stop(&consumer);
        }
    }
}

/// Where every partition read starts.
fn start(args: &ConsumeArgs) -> Result<SeekTo, String> {
    if let Some(offset) = args.offset {
        return Ok(SeekTo::Offset(offset));
    }
    Ok(match (&args.from_time, args.from_beginning) {
        (Some(time), _) => {
            let time = humantime::parse_rfc3339_weak(time)
                .map_err(|error| format!("invalid --from-time {time:?}: {error}"))?;
            SeekTo::Timestamp(
                time.duration_since(UNIX_EPOCH)
                    .map_or(0, |since| since.as_millis() as i64),
            )
        }
        (None, true) => SeekTo::Beginning,
        (None, false) => SeekTo::End,
    })
}
