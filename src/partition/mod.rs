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

mod topic_config;

pub use topic_config::{ConfigError, TopicConfig, TOPIC_CONFIG_KEYS};

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;
use flumen_protocol::record::first_batch_length;

use crate::shard::{with_deadline, Clock, Notify};
use crate::storage::{
    Log, LogConfig, RecoveryReport, StorageError, StoredBatch, TailCache, ValidatedBatch,
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

/// One partition of a topic, on its owning shard.
pub struct Partition {
    topic: Rc<str>,
    index: u32,
    log: Log,
    config: RefCell<TopicConfig>,
    appended: Notify,
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
        let partition = Self {
            topic,
            index,
            log,
            config: RefCell::new(config),
            appended: Notify::new(),
        };
        Ok((partition, report))
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
        *self.config.borrow_mut() = config;
        Ok(())
    }

    /// Appends `batches` (one or more whole, padded batches back to back). All are
    /// validated before any is appended, so an invalid batch appends nothing.
    pub async fn produce(
        &self,
        mut batches: BytesMut,
        acks: Acks,
    ) -> Result<Appended, StorageError> {
        let mut validated = Vec::new();
        while !batches.is_empty() {
            let length = first_batch_length(&batches)?;
            validated.push(ValidatedBatch::new(batches.split_to(length))?);
        }
        if validated.is_empty() {
            return Err(StorageError::InvalidBatch(
                flumen_protocol::record::BatchError::Empty,
            ));
        }
        let mut appended: Option<Appended> = None;
        for batch in validated {
            let info = self.log.append_validated(batch).await?;
            let base_offset = appended.map_or(info.base_offset, |range| range.base_offset);
            appended = Some(Appended {
                base_offset,
                last_offset: info.last_offset,
            });
        }
        let appended = appended.expect("at least one batch");
        self.appended.notify_all();
        if acks == Acks::All {
            let durable = self.log.flush().await?;
            assert!(
                durable > appended.last_offset,
                "acks=all answered before the flush"
            );
        }
        Ok(appended)
    }

    /// Batches from `offset`, up to about `max_bytes` (at least one batch).
    pub async fn fetch(
        &self,
        offset: u64,
        max_bytes: usize,
    ) -> Result<Vec<StoredBatch>, StorageError> {
        self.log.read(offset, max_bytes).await
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

    /// Flushes and closes the log.
    pub async fn close(&self) -> Result<(), StorageError> {
        self.appended.notify_all();
        self.log.close().await
    }
}
