//! Partitions: a topic's partition is its [`Log`] plus what the layers above need to serve
//! it: its name and number, its topic configuration, and a notification when data
//! arrives (for long-polling fetches).
//!
//! Ownership: a [`Partition`] lives on the shard that owns it
//! ([`crate::shard::shard_for_partition`]) and is only touched there.
//!
//! Durability of a produce (`acks`): `acks=0` and `acks=1` return once the batches are
//! appended; `acks=all` returns once they are flushed (on a single node, "every in-sync
//! replica" is this one). This is checked before the result is returned.
//!
//! Idempotent produce: batches stamped with a producer id are checked against the
//! partition's [`ProducerStates`] under the partition's produce lock, so a retried batch
//! is answered with its original offsets instead of being appended twice (see
//! [`producers`]).

pub mod producers;
pub(crate) mod topic_config;

pub use producers::{ProducerStates, SequenceCheck, SequenceError};
pub use topic_config::{ConfigError, TopicConfig, TOPIC_CONFIG_KEYS};

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;
use flumen_protocol::record::first_batch_length;

use crate::shard::{with_deadline, Clock, LocalMutex, Notify};
use crate::storage::{
    read_small_file, remove_file, write_file_atomically, Log, LogConfig, RecoveryReport,
    StorageError, StoredBatch, TailCache, ValidatedBatch,
};

/// How many replicas must have a batch before a produce is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// No answer at all.
    None,
    /// Answered once the leader appended.
    Leader,
    /// Answered once every in-sync replica has it and it is flushed.
    All,
}

impl Acks {
    /// From the wire value: 0, 1 or -1.
    pub fn from_wire(acks: i8) -> Option<Self> {
        match acks {
            0 => Some(Self::None),
            1 => Some(Self::Leader),
            -1 => Some(Self::All),
            _ => None,
        }
    }
}

/// The offsets a produce appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the first record.
    pub base_offset: u64,
    /// Offset of the last record.
    pub last_offset: u64,
}

/// What a produce did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Produced {
    /// The offsets of the request's batches.
    pub appended: Appended,
    /// Every batch was a retry of one already appended: nothing new was written and
    /// `appended` holds the offsets they got the first time.
    pub duplicate: bool,
}

/// Why a produce failed.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The log refused or failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// An idempotent batch was out of sequence or fenced.
    #[error(transparent)]
    Sequence(#[from] SequenceError),
    /// acks=all, and the topic wants more in-sync replicas than the partition has.
    #[error("acks=all needs {required} in-sync replicas (min.insync.replicas); the partition has {in_sync}")]
    NotEnoughReplicas {
        /// `min.insync.replicas`.
        required: u32,
        /// The replicas in sync: on one broker, 1.
        in_sync: u32,
    },
}

/// Replicas in sync with each partition's leader: without replication, the leader alone.
const IN_SYNC_REPLICAS: u32 = 1;

/// Producer-state snapshots kept per partition.
const SNAPSHOTS_KEPT: usize = 2;

/// One partition of a topic, on its owning shard.
pub struct Partition {
    topic: Rc<str>,
    index: u32,
    log: Log,
    config: RefCell<TopicConfig>,
    /// The topic's `min.insync.replicas`, read once per configuration rather than on
    /// every acks=all produce.
    min_insync_replicas: Cell<u32>,
    appended: Notify,
    producers: RefCell<ProducerStates>,
    /// Serialises sequence check, append and state update of produces.
    produce_lock: LocalMutex,
    /// Active segment when producer state was last snapshotted.
    snapshot_segment: Cell<u64>,
    /// The producer-state snapshot the last roll asked for, written by
    /// [`Partition::write_due_snapshot`] off the produce path.
    snapshot_due: RefCell<Option<(String, Vec<u8>)>>,
    /// Held while a snapshot is written, so close never races a background write.
    snapshot_lock: LocalMutex,
    /// The broker's background work on this partition is running (one turn at a time).
    background_busy: Cell<bool>,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "Partition({}-{})", self.topic, self.index)
    }
}

/// The directory of a partition: `<data_dir>/<topic>/<partition>`.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: u32) -> PathBuf {
    data_dir.join(topic).join(partition.to_string())
}

impl Partition {
    /// Opens (creating if needed) a partition's log, running recovery.
    pub async fn open(
        data_dir: &Path,
        topic: Rc<str>,
        index: u32,
        config: TopicConfig,
        defaults: &LogConfig,
        clock: Rc<dyn Clock>,
        cache: Rc<TailCache>,
    ) -> Result<(Self, RecoveryReport), StorageError> {
        let dir = partition_dir(data_dir, &topic, index);
        let (log, report) = Log::open(&dir, config.log_config(defaults), clock, cache).await?;
        let producers = load_producer_states(&log).await?;
        let partition = Self {
            topic,
            index,
            snapshot_segment: Cell::new(log.active_segment_base()),
            log,
            min_insync_replicas: Cell::new(config.min_insync_replicas()),
            config: RefCell::new(config),
            appended: Notify::new(),
            producers: RefCell::new(producers),
            produce_lock: LocalMutex::new(),
            snapshot_due: RefCell::new(None),
            snapshot_lock: LocalMutex::new(),
            background_busy: Cell::new(false),
        };
        Ok((partition, report))
    }

    /// Number of idempotent producers this partition remembers.
    pub fn producer_count(&self) -> usize {
        self.producers.borrow().len()
    }

    /// The topic name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition number.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The log.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Offset up to which consumers may read (on a single node, the log end).
    pub fn high_watermark(&self) -> u64 {
        self.log.next_offset()
    }

    /// The topic configuration in force.
    pub fn topic_config(&self) -> TopicConfig {
        self.config.borrow().clone()
    }

    /// Applies new topic configuration.
    pub fn reconfigure(
        &self,
        config: TopicConfig,
        defaults: &LogConfig,
    ) -> Result<(), StorageError> {
        self.log.reconfigure(config.log_config(defaults))?;
        self.min_insync_replicas.set(config.min_insync_replicas());
        *self.config.borrow_mut() = config;
        Ok(())
    }

    /// Appends `batches` (one or more whole, padded batches back to back). All are
    /// validated before any is appended, so an invalid batch appends nothing. Batches of
    /// idempotent producers are checked against their sequence first: a retry of an
    /// appended batch is not appended again (the result says so and carries the
    /// original offsets); one out of sequence fails the produce from that batch on.
    pub async fn produce(
        &self,
        mut batches: BytesMut,
        acks: Acks,
    ) -> Result<Produced, ProduceError> {
        if acks == Acks::All {
            let required = self.min_insync_replicas.get();
            if required > IN_SYNC_REPLICAS {
                // As Kafka: refused before anything is appended.
                return Err(ProduceError::NotEnoughReplicas {
                    required,
                    in_sync: IN_SYNC_REPLICAS,
                });
            }
        }
        let mut validated = Vec::new();
        while !batches.is_empty() {
            let length = first_batch_length(&batches).map_err(StorageError::from)?;
            validated.push(ValidatedBatch::new(batches.split_to(length))?);
        }
        if validated.is_empty() {
            let empty = flumen_protocol::record::BatchError::Empty;
            return Err(StorageError::InvalidBatch(empty).into());
        }
        let mut range: Option<Appended> = None;
        let mut duplicate = true;
        let guard = self.produce_lock.lock().await;
        // Closed while this waited for the lock (a deleted topic, a shutdown): a retry
        // answered as a duplicate would otherwise reach the closed log's segments.
        if self.log.is_closed() {
            return Err(StorageError::Closed(self.log.dir().to_path_buf()).into());
        }
        for batch in validated {
            let header = *batch.header();
            let check = self.producers.borrow().check(&header)?;
            let (base_offset, last_offset) = match check {
                SequenceCheck::Duplicate {
                    base_offset,
                    last_offset,
                } => (base_offset, last_offset),
                SequenceCheck::Append => {
                    duplicate = false;
                    let info = self.log.append_validated(batch).await?;
                    self.producers
                        .borrow_mut()
                        .record(&header, info.base_offset);
                    (info.base_offset, info.last_offset)
                }
            };
            range = Some(Appended {
                base_offset: range.map_or(base_offset, |range| range.base_offset),
                last_offset,
            });
        }
        self.snapshot_if_rolled();
        drop(guard);
        let appended = range.expect("at least one batch");
        if !duplicate {
            self.appended.notify_all();
        }
        if acks == Acks::All {
            // Also for duplicates: the first attempt may not be on disk yet.
            let durable = self.log.flush().await?;
            assert!(
                durable > appended.last_offset,
                "acks=all answered before the flush"
            );
        }
        Ok(Produced {
            appended,
            duplicate,
        })
    }

    /// After a segment roll, captures the producer state (under the produce lock, so it
    /// matches the log end it names) as the snapshot due; a newer one replaces an older
    /// one still waiting.
    fn snapshot_if_rolled(&self) {
        let active = self.log.active_segment_base();
        if active == self.snapshot_segment.get() {
            return;
        }
        self.snapshot_segment.set(active);
        let covered = self.log.next_offset();
        let bytes = self.producers.borrow().encode(covered);
        *self.snapshot_due.borrow_mut() = Some((producers::snapshot_name(covered), bytes));
    }

    /// Claims the partition for one turn of background work; false while a turn runs
    /// (then the caller skips it: a slow sync must not pile up more tasks behind it).
    pub fn claim_background(&self) -> bool {
        !self.background_busy.replace(true)
    }

    /// Ends the turn [`Partition::claim_background`] began.
    pub fn release_background(&self) {
        self.background_busy.set(false);
    }

    /// Whether a roll left a producer-state snapshot to write.
    pub fn has_due_snapshot(&self) -> bool {
        self.snapshot_due.borrow().is_some()
    }

    /// Writes the snapshot the last roll captured, if any. The broker calls this in the
    /// background: producers never wait for it (its syncs took up to 60 ms under load).
    pub async fn write_due_snapshot(&self) {
        // Taken at once, so the next tick does not start a second writer for it.
        let Some((name, bytes)) = self.snapshot_due.borrow_mut().take() else {
            return;
        };
        let _guard = self.snapshot_lock.lock().await;
        if !self.log.is_closed() {
            self.write_snapshot(&name, &bytes).await;
        }
    }

    /// Writes a producer-state snapshot and removes all but the newest few. A failure is
    /// logged: snapshots only shorten recovery. Callers hold `snapshot_lock`.
    async fn write_snapshot(&self, name: &str, bytes: &[u8]) {
        let path = self.log.dir().join(name);
        if let Err(error) = write_file_atomically(&path, bytes).await {
            tracing::warn!(path = %path.display(), %error, "cannot write producer snapshot");
        }
        let mut snapshots = list_snapshots(self.log.dir());
        snapshots.sort_unstable_by(|a, b| b.cmp(a));
        for covered in snapshots.into_iter().skip(SNAPSHOTS_KEPT) {
            let old = self.log.dir().join(producers::snapshot_name(covered));
            if let Err(error) = remove_file(&old).await {
                tracing::warn!(path = %old.display(), %error, "cannot remove an old producer snapshot");
            }
        }
    }

    /// Batches from `offset`, up to about `max_bytes`, the first even beyond it if it
    /// is at most `first_batch_max` long ([`Log::read_bounded`]).
    pub async fn fetch(
        &self,
        offset: u64,
        max_bytes: usize,
        first_batch_max: usize,
    ) -> Result<Vec<StoredBatch>, StorageError> {
        self.log
            .read_bounded(offset, max_bytes, first_batch_max)
            .await
    }

    /// Waits until the log end passes `offset` or `deadline` passes. Returns whether data
    /// is available.
    pub async fn wait_for_data(&self, offset: u64, deadline: Instant) -> bool {
        loop {
            let listener = self.appended.listen();
            if self.high_watermark() > offset {
                return true;
            }
            if with_deadline(listener, deadline).await.is_none() {
                return self.high_watermark() > offset;
            }
        }
    }

    /// Flushes and closes the log, then snapshots the producer state at its end.
    pub async fn close(&self) -> Result<(), StorageError> {
        self.appended.notify_all();
        let _guard = self.produce_lock.lock().await;
        let _snapshot = self.snapshot_lock.lock().await;
        self.log.close().await?;
        // The final snapshot covers whatever one still due would have.
        self.snapshot_due.borrow_mut().take();
        let covered = self.log.next_offset();
        let bytes = self.producers.borrow().encode(covered);
        self.write_snapshot(&producers::snapshot_name(covered), &bytes)
            .await;
        Ok(())
    }
}

/// Offsets covered by the producer snapshots in `dir`.
fn list_snapshots(dir: &Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| producers::parse_snapshot_name(entry.file_name().to_str()?))
        .collect()
}

/// Rebuilds producer state: the newest readable snapshot not past the log end, then the
/// batches after it. Snapshots past the log end (a crash cut the tail) are removed.
async fn load_producer_states(log: &Log) -> Result<ProducerStates, StorageError> {
    let end = log.next_offset();
    let mut snapshots = list_snapshots(log.dir());
    snapshots.sort_unstable_by(|a, b| b.cmp(a));
    let mut loaded = None;
    for covered in snapshots {
        let path = log.dir().join(producers::snapshot_name(covered));
        if covered > end {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        if loaded.is_some() {
            continue;
        }
        let bytes = read_small_file(&path)
            .await
            .map_err(|error| StorageError::io("reading", &path, error))?;
        match bytes.map(|bytes| ProducerStates::decode(&bytes)) {
            Some(Ok(state)) => loaded = Some(state),
            Some(Err(reason)) => {
                tracing::warn!(path = %path.display(), reason, "ignoring a damaged producer snapshot")
            }
            None => {}
        }
    }
    let (mut states, covered) = loaded.unwrap_or_default();
    let mut offset = covered.max(log.log_start_offset());
    while offset < end {
        let batches = log.read(offset, 1 << 20).await?;
        if batches.is_empty() {
            break;
        }
        for batch in batches {
            let header = batch.header();
            if header.base_offset >= offset {
                states.record(header, header.base_offset);
            }
            offset = offset.max(header.next_offset());
        }
    }
    Ok(states)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::SystemClock;
    use flumen_protocol::record::BatchBuilder;

    fn idempotent_batch(sequence: i32) -> BytesMut {
        let mut builder = BatchBuilder::new(0);
        builder.push(0, None, Some(b"value"), &[]);
        builder.producer(1, 0, sequence);
        BytesMut::from(builder.build().unwrap().as_bytes())
    }

    /// A retry that waited for the produce lock while the partition closed (a deleted
    /// topic, a shutdown) is refused as closed, not answered as a duplicate from the
    /// closed log.
    #[test]
    fn a_retry_after_close_is_refused_as_closed() {
        crate::shard::run_for_test(async {
            let dir = tempfile::tempdir().unwrap();
            let (partition, _) = Partition::open(
                dir.path(),
                Rc::from("t"),
                0,
                TopicConfig::default(),
                &LogConfig::default(),
                Rc::new(SystemClock),
                TailCache::new(1 << 20),
            )
            .await
            .unwrap();
            let first = partition
                .produce(idempotent_batch(0), Acks::Leader)
                .await
                .unwrap();
            assert!(!first.duplicate);
            let retry = partition
                .produce(idempotent_batch(0), Acks::Leader)
                .await
                .unwrap();
            assert!(retry.duplicate, "a retry while open is a duplicate");
            partition.close().await.unwrap();
            let after_close = partition.produce(idempotent_batch(0), Acks::All).await;
            assert!(
                matches!(
                    after_close,
                    Err(ProduceError::Storage(StorageError::Closed(_)))
                ),
                "{after_close:?}"
            );
        });
    }

    /// A topic stored with `min.insync.replicas` above the one replica a single broker
    /// has (by an older broker) refuses acks=all, appending nothing, and takes acks=1;
    /// once reconfigured to one, it takes acks=all.
    #[test]
    fn acks_all_wants_the_in_sync_replicas_the_topic_asks_for() {
        crate::shard::run_for_test(async {
            let dir = tempfile::tempdir().unwrap();
            let config = TopicConfig::from_entries([("min.insync.replicas", "2")]).unwrap();
            let (partition, _) = Partition::open(
                dir.path(),
                Rc::from("t"),
                0,
                config,
                &LogConfig::default(),
                Rc::new(SystemClock),
                TailCache::new(1 << 20),
            )
            .await
            .unwrap();
            let refused = partition.produce(idempotent_batch(0), Acks::All).await;
            assert!(
                matches!(
                    refused,
                    Err(ProduceError::NotEnoughReplicas {
                        required: 2,
                        in_sync: 1
                    })
                ),
                "{refused:?}"
            );
            assert_eq!(partition.log().next_offset(), 0, "nothing appended");
            partition
                .produce(idempotent_batch(0), Acks::Leader)
                .await
                .unwrap();
            // Lowered to one by a configuration change: acks=all is taken from then on.
            let lowered = TopicConfig::from_entries([("min.insync.replicas", "1")]).unwrap();
            partition
                .reconfigure(lowered, &LogConfig::default())
                .unwrap();
            partition
                .produce(idempotent_batch(1), Acks::All)
                .await
                .unwrap();
            partition.close().await.unwrap();
        });
    }
}
