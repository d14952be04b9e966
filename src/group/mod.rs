//! Consumer groups: committed offsets, kept in the internal topic `__consumer_offsets`.
//!
//! A group belongs to one partition of that topic (a stable hash of the group id), and so
//! to the shard that owns that partition: its coordinator. The coordinator appends every
//! commit to the partition (durably: the commit is answered after `fdatasync`), keeps the
//! latest position per group, topic and partition in memory for OffsetFetch, and rebuilds
//! that cache on start by replaying the partition.
//!
//! Order: a position's newest commit is the one with the highest log offset, so commits
//! that race for the same position end as they are in the log, whatever order their
//! flushes complete in.
//!
//! Membership (join, sync, heartbeats, generations) is not built yet: commits are taken
//! from applications that assign partitions themselves (`generation_id` -1, no member id);
//! a commit that names a member or a generation is refused as unknown.

mod records;

pub use records::{Committed, OffsetKey};

use std::cell::RefCell;
use std::collections::BTreeMap;

use bytes::BytesMut;
use flumen_protocol::record::{BatchBuilder, BatchView, BuiltBatch};

use crate::partition::{Acks, Partition, ProduceError};
use crate::shard::fnv1a_64;
use crate::storage::StorageError;

/// The internal topic holding committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Its partition count when the broker creates it.
pub const OFFSETS_PARTITIONS_DEFAULT: u32 = 16;
/// Longest group id, in bytes.
pub const GROUP_ID_BYTES_MAX: usize = 255;
/// Longest metadata stored with an offset, in bytes.
pub const METADATA_BYTES_MAX: usize = 4_096;

/// The partition of [`OFFSETS_TOPIC`] (of `partitions`) that holds `group`.
pub fn offsets_partition(group: &str, partitions: u32) -> u32 {
    (fnv1a_64(group.as_bytes()) % u64::from(partitions.max(1))) as u32
}

/// Why a group operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// The group id is empty or longer than [`GROUP_ID_BYTES_MAX`].
    #[error("invalid group id {0:?}: 1 to 255 bytes")]
    InvalidGroupId(String),
    /// The member is not a member of the group.
    #[error("{member} is not a member of group {group}")]
    UnknownMember {
        /// The group.
        group: String,
        /// The member named.
        member: String,
    },
    /// The generation is not the group's current one.
    #[error("generation {generation} is not the current generation of group {group}")]
    IllegalGeneration {
        /// The group.
        group: String,
        /// The generation named.
        generation: i32,
    },
    /// The group has no committed positions (and no members) here.
    #[error("unknown group {0}")]
    UnknownGroup(String),
    /// Appending the commit failed.
    #[error(transparent)]
    Append(#[from] ProduceError),
}

/// One position to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitEntry {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// The offset to resume from.
    pub offset: u64,
    /// Free text stored with it.
    pub metadata: Option<String>,
}

/// A committed position and the log offset of the record that set it.
#[derive(Debug, Clone)]
struct Versioned {
    committed: Committed,
    version: u64,
}

/// One group's positions, by topic and partition.
type Positions = BTreeMap<(String, u32), Versioned>;

/// The groups whose offsets partitions this shard owns.
#[derive(Debug, Default)]
pub struct Coordinator {
    groups: RefCell<BTreeMap<String, Positions>>,
}

/// Checks a group id.
pub fn validate_group_id(group: &str) -> Result<(), GroupError> {
    if group.is_empty() || group.len() > GROUP_ID_BYTES_MAX {
        return Err(GroupError::InvalidGroupId(group.to_owned()));
    }
    Ok(())
}

impl Coordinator {
    /// An empty coordinator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replays one partition of the offsets topic into the cache. Returns the number of
    /// commit records read.
    pub async fn load(&self, partition: &Partition) -> Result<u64, StorageError> {
        let mut offset = partition.log().log_start_offset();
        let end = partition.high_watermark();
        let mut records = 0;
        while offset < end {
            let batches = partition.fetch(offset, 1 << 20).await?;
            if batches.is_empty() {
                break;
            }
            for stored in batches {
                // Read records in place from an aligned copy (stored bytes may not be).
                let aligned = BuiltBatch::copy_from(stored.as_bytes());
                let view = BatchView::validate(aligned.as_bytes())?;
                for record in view.records() {
                    if record.offset() < offset {
                        continue;
                    }
                    records += 1;
                    let Some(key) = record.key().and_then(OffsetKey::decode) else {
                        continue;
                    };
                    let value = record.value().and_then(Committed::decode);
                    self.apply(key, value, record.offset());
                }
                offset = offset.max(view.header().next_offset());
            }
        }
        Ok(records)
    }

    /// Sets (or with `None`, deletes) a position if `version` is newer than what is known.
    fn apply(&self, key: OffsetKey, committed: Option<Committed>, version: u64) {
        let mut groups = self.groups.borrow_mut();
        let group = groups.entry(key.group.clone()).or_default();
        let slot = (key.topic, key.partition);
        if group
            .get(&slot)
            .is_some_and(|known| known.version > version)
        {
            return;
        }
        match committed {
            Some(committed) => {
                group.insert(slot, Versioned { committed, version });
            }
            None => {
                group.remove(&slot);
            }
        }
        if group.is_empty() {
            groups.remove(&key.group);
        }
    }

    /// Commits positions of `group` durably: one batch appended to `partition` (the
    /// group's offsets partition) and flushed, then the cache updated.
    pub async fn commit(
        &self,
        partition: &Partition,
        group: &str,
        generation: i32,
        member: &str,
        entries: Vec<CommitEntry>,
        now_ms: i64,
    ) -> Result<(), GroupError> {
        validate_group_id(group)?;
        if !member.is_empty() {
            return Err(GroupError::UnknownMember {
                group: group.to_owned(),
                member: member.to_owned(),
            });
        }
        if generation != -1 {
            return Err(GroupError::IllegalGeneration {
                group: group.to_owned(),
                generation,
            });
        }
        if entries.is_empty() {
            return Ok(());
        }
        let mut builder = BatchBuilder::new(now_ms);
        let records: Vec<(OffsetKey, Committed)> = entries
            .into_iter()
            .map(|entry| {
                let key = OffsetKey {
                    group: group.to_owned(),
                    topic: entry.topic,
                    partition: entry.partition,
                };
                let committed = Committed {
                    offset: entry.offset,
                    metadata: entry.metadata,
                    timestamp_ms: now_ms,
                };
                (key, committed)
            })
            .collect();
        for (key, committed) in &records {
            builder.push(now_ms, Some(&key.encode()), Some(&committed.encode()), &[]);
        }
        let batch = builder
            .build()
            .map_err(StorageError::from)
            .map_err(ProduceError::from)?;
        let produced = partition
            .produce(BytesMut::from(batch.as_bytes()), Acks::All)
            .await?;
        let base = produced.appended.base_offset;
        for (index, (key, committed)) in records.into_iter().enumerate() {
            self.apply(key, Some(committed), base + index as u64);
        }
        Ok(())
    }

    /// Deletes `group`'s positions: tombstones appended (durably) for each, then the
    /// cache emptied.
    pub async fn delete(
        &self,
        partition: &Partition,
        group: &str,
        now_ms: i64,
    ) -> Result<(), GroupError> {
        validate_group_id(group)?;
        let keys: Vec<OffsetKey> = self
            .committed(group)
            .into_keys()
            .map(|(topic, partition)| OffsetKey {
                group: group.to_owned(),
                topic,
                partition,
            })
            .collect();
        if keys.is_empty() {
            return Err(GroupError::UnknownGroup(group.to_owned()));
        }
        let mut builder = BatchBuilder::new(now_ms);
        for key in &keys {
            builder.push(now_ms, Some(&key.encode()), None, &[]);
        }
        let batch = builder
            .build()
            .map_err(StorageError::from)
            .map_err(ProduceError::from)?;
        let produced = partition
            .produce(BytesMut::from(batch.as_bytes()), Acks::All)
            .await?;
        let base = produced.appended.base_offset;
        for (index, key) in keys.into_iter().enumerate() {
            self.apply(key, None, base + index as u64);
        }
        Ok(())
    }

    /// The committed positions of `group`, by topic and partition.
    pub fn committed(&self, group: &str) -> BTreeMap<(String, u32), Committed> {
        self.groups
            .borrow()
            .get(group)
            .map(|positions| {
                positions
                    .iter()
                    .map(|(slot, versioned)| (slot.clone(), versioned.committed.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The groups with committed positions here, sorted.
    pub fn groups(&self) -> Vec<String> {
        self.groups.borrow().keys().cloned().collect()
    }
}
