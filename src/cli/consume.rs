//! `flumen consume`: print records from one or all partitions, from the beginning, an
//! offset, a time, or the end; stop after `--max-messages`, or after `--timeout-ms`
//! without new data, or follow the log.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant, UNIX_EPOCH};

use clap::Args;
use flumen_client::Client;
use flumen_protocol::wire::messages::{EARLIEST_TIMESTAMP, LATEST_TIMESTAMP};

use super::format::Format;

/// Bytes asked for per partition and fetch.
const FETCH_BYTES_MAX: u32 = 1 << 20;
/// How long one fetch waits for data when nothing arrived in the last round.
const POLL_WAIT_MS: u32 = 200;

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
    /// Output format with kcat's tokens: %t %p %o %k %s %T %h, \n, \t.
    #[arg(long, default_value = r"%s\n")]
    format: String,
}

/// Clients connected to the shard that owns each partition of one topic.
pub(super) struct ShardClients {
    host: String,
    shard_ports: Vec<u16>,
    partition_shards: Vec<u32>,
    clients: HashMap<u32, Client>,
}

impl ShardClients {
    /// Looks up `topic` through `client` (connected to `bootstrap`).
    pub fn new(mut client: Client, bootstrap: &str, topic: &str) -> Result<Self, String> {
        let metadata = client
            .metadata(Some(&[topic]))
            .map_err(|error| format!("cannot read metadata from {bootstrap}: {error}"))?;
        let Some(found) = metadata
            .topics
            .first()
            .filter(|topic| topic.outcome.error_code == 0)
        else {
            return Err(format!("unknown topic {topic}"));
        };
        let broker = metadata
            .brokers
            .first()
            .ok_or("the broker announced no address")?;
        Ok(Self {
            host: broker.host.clone(),
            shard_ports: broker.shards.iter().map(|shard| shard.port).collect(),
            partition_shards: found
                .partitions
                .iter()
                .map(|partition| partition.leader_shard)
                .collect(),
            clients: HashMap::new(),
        })
    }

    /// Number of partitions of the topic.
    pub fn partitions(&self) -> u32 {
        self.partition_shards.len() as u32
    }

    /// A client connected to the shard owning `partition`.
    pub fn client(&mut self, partition: u32) -> Result<&mut Client, String> {
        let shard = *self
            .partition_shards
            .get(partition as usize)
            .ok_or_else(|| format!("invalid partition {partition}"))?;
        if !self.clients.contains_key(&shard) {
            let port = *self
                .shard_ports
                .get(shard as usize)
                .ok_or("unknown shard")?;
            let client = Client::connect((self.host.as_str(), port)).map_err(|error| {
                format!(
                    "cannot reach shard {shard} at {}:{port}: {error}",
                    self.host
                )
            })?;
            self.clients.insert(shard, client);
        }
        Ok(self.clients.get_mut(&shard).expect("inserted"))
    }
}

pub(super) fn run(bootstrap: &str, args: ConsumeArgs) -> Result<ExitCode, String> {
    let format = Format::parse(&args.format)?;
    let mut clients = ShardClients::new(super::connect(bootstrap)?, bootstrap, &args.topic)?;
    let partitions: Vec<u32> = match args.partition {
        Some(partition) if partition >= clients.partitions() => {
            return Err(format!(
                "invalid partition {partition}: {} has {}",
                args.topic,
                clients.partitions()
            ));
        }
        Some(partition) => vec![partition],
        None => (0..clients.partitions()).collect(),
    };
    let mut positions = Vec::with_capacity(partitions.len());
    for &partition in &partitions {
        positions.push((partition, start_offset(&mut clients, &args, partition)?));
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut printed = 0u64;
    let mut last_data = Instant::now();
    let mut wait_ms = 0;
    loop {
        let mut round = 0u64;
        for (partition, offset) in positions.iter_mut() {
            let fetched = clients
                .client(*partition)?
                .fetch(&args.topic, *partition, *offset, FETCH_BYTES_MAX, wait_ms)
                .map_err(|error| {
                    format!("fetch from {}-{partition} failed: {error}", args.topic)
                })?;
            let mut buffer = Vec::new();
            for batch in fetched.batches().map_err(|error| error.to_string())? {
                for record in batch.records() {
                    if record.offset() < *offset {
                        continue;
                    }
                    if args.max_messages.is_some_and(|max| printed >= max) {
                        break;
                    }
                    format.render(&mut buffer, &args.topic, *partition, &record);
                    *offset = record.offset() + 1;
                    printed += 1;
                    round += 1;
                }
            }
            out.write_all(&buffer).map_err(|error| error.to_string())?;
        }
        out.flush().map_err(|error| error.to_string())?;
        if args.max_messages.is_some_and(|max| printed >= max) {
            return Ok(ExitCode::SUCCESS);
        }
        if round > 0 {
            last_data = Instant::now();
            wait_ms = 0;
        } else {
            wait_ms = POLL_WAIT_MS / partitions.len().max(1) as u32;
            let idle = last_data.elapsed();
            if args
                .timeout_ms
                .is_some_and(|timeout| idle >= Duration::from_millis(timeout))
            {
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

fn start_offset(
    clients: &mut ShardClients,
    args: &ConsumeArgs,
    partition: u32,
) -> Result<u64, String> {
    if let Some(offset) = args.offset {
        return Ok(offset);
    }
    let timestamp = match (&args.from_time, args.from_beginning) {
        (Some(time), _) => {
            let time = humantime::parse_rfc3339_weak(time)
                .map_err(|error| format!("invalid --from-time {time:?}: {error}"))?;
            time.duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_millis() as i64)
        }
        (None, true) => EARLIEST_TIMESTAMP,
        (None, false) => LATEST_TIMESTAMP,
    };
    clients
        .client(partition)?
        .list_offsets(&args.topic, partition, timestamp)
        .map(|result| result.offset)
        .map_err(|error| error.to_string())
}
