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
//! Membership ([`membership`]) lives with the positions on the coordinator: members join,
//! sync and heartbeat there, and a commit must come from a current member of the
//! current generation (a zombie from an older one is refused). Applications that assign
//! partitions themselves commit outside membership (`generation_id` -1, no member id),
//! which is allowed while the group has no members. Membership is not persisted: after
//! a broker restart members rejoin (their ids are unknown, so they join anew).

pub mod membership;
mod records;

pub use membership::{JoinAnswer, JoinRequest, MembershipLimits, Phase};
pub use records::{Committed, OffsetKey};

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use membership::{Membership, MembershipError};

use bytes::BytesMut;
use flumen_protocol::record::{BatchBuilder, BatchView, BuiltBatch};

use crate::partition::{Acks, Partition, ProduceError};
use crate::shard::{fnv1a_64, with_deadline, Notify};
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
    /// The group is rebalancing: rejoin first.
    #[error("group {0} is rebalancing; rejoin")]
    RebalanceInProgress(String),
    /// The member's protocol type or protocols do not match the group's.
    #[error("the protocols do not match those of group {0}")]
    InconsistentProtocol(String),
    /// A session timeout outside the limits.
    #[error("session timeout outside {min_ms}..={max_ms} ms (or a zero rebalance timeout)")]
    InvalidSessionTimeout {
        /// Shortest accepted.
        min_ms: u32,
        /// Longest accepted.
        max_ms: u32,
    },
    /// The group has members; the operation needs an empty group.
    #[error("group {0} has active members")]
    NonEmpty(String),
    /// The group has as many members, or as much member metadata, as allowed.
    #[error("group {group} is full: at most {members} members and {metadata_bytes} bytes of their metadata")]
    GroupFull {
        /// The group.
        group: String,
        /// Most members.
        members: usize,
        /// Most metadata of all members together.
        metadata_bytes: usize,
    },
    /// A join offered too many protocols or too much protocol metadata.
    #[error("a join may offer at most {protocols} protocols and {bytes} bytes of protocol names and metadata")]
    TooMuchMetadata {
        /// Most protocols.
        protocols: usize,
        /// Most bytes.
        bytes: usize,
    },
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
    /// When the record that set it was written (its batch's timestamp), for the refresh.
    written_ms: i64,
}

/// One group's positions, by topic and partition.
type Positions = BTreeMap<(String, u32), Versioned>;

/// One group: its committed positions and its members.
#[derive(Debug, Default)]
struct GroupData {
    positions: Positions,
    membership: Membership,
}

impl GroupData {
    fn is_unused(&self) -> bool {
        self.positions.is_empty() && self.membership.is_empty()
    }
}

/// A described group.
#[derive(Debug, Clone)]
pub struct GroupDescription {
    /// Its phase.
    pub phase: Phase,
    /// Its generation.
    pub generation: i32,
    /// The chosen protocol.
    pub protocol: String,
    /// `(member, metadata, assignment)`.
    pub members: Vec<(String, Vec<u8>, Vec<u8>)>,
}

/// The groups whose offsets partitions this shard owns.
#[derive(Debug, Default)]
pub struct Coordinator {
    groups: RefCell<BTreeMap<String, GroupData>>,
    /// Wakes joins and syncs waiting for a rebalance step.
    changed: Notify,
    limits: MembershipLimits,
    members_created: Cell<u64>,
    /// Commits and deletions (shared) against refreshes (exclusive).
    gate: WriteGate,
}

/// Many writers at once, or one refresh alone.
#[derive(Debug, Default)]
struct WriteGate {
    writers: Cell<usize>,
    exclusive: Cell<bool>,
    changed: Notify,
}

/// Held by a writer or a refresh; releases on drop.
struct GateGuard<'a> {
    gate: &'a WriteGate,
    exclusive: bool,
}

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        if self.exclusive {
            self.gate.exclusive.set(false);
        } else {
            self.gate.writers.set(self.gate.writers.get() - 1);
        }
        self.gate.changed.notify_all();
    }
}

impl WriteGate {
    async fn shared(&self) -> GateGuard<'_> {
        loop {
            let listener = self.changed.listen();
            if !self.exclusive.get() {
                self.writers.set(self.writers.get() + 1);
                return GateGuard {
                    gate: self,
                    exclusive: false,
                };
            }
            listener.await;
        }
    }

    async fn exclusive(&self) -> GateGuard<'_> {
        loop {
            let listener = self.changed.listen();
            if !self.exclusive.get() {
                break;
            }
            listener.await;
        }
        self.exclusive.set(true);
        let guard = GateGuard {
            gate: self,
            exclusive: true,
        };
        loop {
            let listener = self.changed.listen();
            if self.writers.get() == 0 {
                return guard;
            }
            listener.await;
        }
    }
}

fn membership_error(group: &str, error: MembershipError, limits: &MembershipLimits) -> GroupError {
    let group = group.to_owned();
    match error {
        MembershipError::UnknownMember => GroupError::UnknownMember {
            group,
            member: String::new(),
        },
        MembershipError::IllegalGeneration => GroupError::IllegalGeneration {
            group,
            generation: -1,
        },
        MembershipError::RebalanceInProgress => GroupError::RebalanceInProgress(group),
        MembershipError::InconsistentProtocol => GroupError::InconsistentProtocol(group),
        MembershipError::InvalidSessionTimeout => GroupError::InvalidSessionTimeout {
            min_ms: limits.session_timeout_min_ms,
            max_ms: limits.session_timeout_max_ms,
        },
        MembershipError::GroupFull => GroupError::GroupFull {
            group,
            members: membership::GROUP_MEMBERS_MAX,
            metadata_bytes: membership::GROUP_METADATA_BYTES_MAX,
        },
        MembershipError::TooMuchMetadata => GroupError::TooMuchMetadata {
            protocols: membership::PROTOCOLS_MAX,
            bytes: membership::MEMBER_METADATA_BYTES_MAX,
        },
    }
}

/// Checks a group id.
pub fn validate_group_id(group: &str) -> Result<(), GroupError> {
    if group.is_empty() || group.len() > GROUP_ID_BYTES_MAX {
        return Err(GroupError::InvalidGroupId(group.to_owned()));
    }
    Ok(())
}

impl Coordinator {
    /// An empty coordinator with these membership limits.
    pub fn new(limits: MembershipLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Runs `change` on `group`'s membership (creating the group if needed), wakes
    /// waiters, and drops the group again if it is left unused.
    fn with_membership<T>(&self, group: &str, change: impl FnOnce(&mut Membership) -> T) -> T {
        let mut groups = self.groups.borrow_mut();
        let data = groups.entry(group.to_owned()).or_default();
        let result = change(&mut data.membership);
        if data.is_unused() {
            groups.remove(group);
        }
        drop(groups);
        self.changed.notify_all();
        result
    }

    /// Waits until `answer` has one (it is asked again whenever membership changes), at
    /// most `limit`.
    async fn wait_for<T>(
        &self,
        group: &str,
        limit: Duration,
        answer: impl Fn(&Membership) -> Option<Result<T, MembershipError>>,
    ) -> Result<T, GroupError> {
        let deadline = Instant::now() + limit;
        loop {
            let listener = self.changed.listen();
            let found = self
                .groups
                .borrow()
                .get(group)
                .map_or(Some(Err(MembershipError::UnknownMember)), |data| {
                    answer(&data.membership)
                });
            if let Some(result) = found {
                return result.map_err(|error| membership_error(group, error, &self.limits));
            }
            if with_deadline(listener, deadline).await.is_none() {
                return Err(GroupError::RebalanceInProgress(group.to_owned()));
            }
        }
    }

    /// Joins (or rejoins) `group`; answers once the rebalance completed.
    pub async fn join(
        &self,
        group: &str,
        request: JoinRequest,
        now_ms: i64,
    ) -> Result<JoinAnswer, GroupError> {
        validate_group_id(group)?;
        let wait = Duration::from_millis(u64::from(request.rebalance_timeout_ms))
            + Duration::from_millis(u64::from(self.limits.initial_rebalance_delay_ms))
            + Duration::from_secs(5);
        let counter = self.members_created.get() + 1;
        let new_id = || {
            self.members_created.set(counter);
            format!("{group}-member-{counter}-{now_ms:x}")
        };
        let joined = self.with_membership(group, |membership| {
            membership.join(request, new_id, &self.limits, now_ms)
        });
        let (member, generation) =
            joined.map_err(|error| membership_error(group, error, &self.limits))?;
        self.wait_for(group, wait, |membership| {
            membership.join_answer(&member, generation)
        })
        .await
    }

    /// Syncs: the leader hands in every member's assignment; every member gets its own
    /// once the leader's arrived.
    pub async fn sync(
        &self,
        group: &str,
        generation: i32,
        member: &str,
        assignments: Vec<(String, Vec<u8>)>,
        now_ms: i64,
    ) -> Result<Vec<u8>, GroupError> {
        validate_group_id(group)?;
        let synced = self.with_membership(group, |membership| {
            membership.sync(member, generation, assignments, now_ms)
        });
        match synced.map_err(|error| membership_error(group, error, &self.limits))? {
            Some(assignment) => Ok(assignment),
            None => {
                let limit = Duration::from_millis(u64::from(self.limits.session_timeout_max_ms));
                self.wait_for(group, limit, |membership| {
                    membership.sync_answer(member, generation)
                })
                .await
            }
        }
    }

    /// A member's heartbeat.
    pub fn heartbeat(
        &self,
        group: &str,
        generation: i32,
        member: &str,
        now_ms: i64,
    ) -> Result<(), GroupError> {
        validate_group_id(group)?;
        let beat = self.with_membership(group, |membership| {
            membership.heartbeat(member, generation, now_ms)
        });
        beat.map_err(|error| membership_error(group, error, &self.limits))
    }

    /// A member leaves.
    pub fn leave(&self, group: &str, member: &str, now_ms: i64) -> Result<(), GroupError> {
        validate_group_id(group)?;
        let left = self.with_membership(group, |membership| membership.leave(member, now_ms));
        left.map_err(|error| membership_error(group, error, &self.limits))
    }

    /// Expires members and completes rebalances whose time has come.
    pub fn tick(&self, now_ms: i64) {
        let mut changed = false;
        self.groups.borrow_mut().retain(|_, data| {
            changed |= data.membership.tick(now_ms);
            !data.is_unused()
        });
        if changed {
            self.changed.notify_all();
        }
    }

    /// A group's phase, generation, protocol and members; `None` if unknown here.
    pub fn describe(&self, group: &str) -> Option<GroupDescription> {
        let groups = self.groups.borrow();
        let data = groups.get(group)?;
        let membership = &data.membership;
        Some(GroupDescription {
            phase: membership.phase(),
            generation: membership.generation(),
            protocol: membership.protocol().to_owned(),
            members: membership.members(),
        })
    }

    /// Replays one partition of the offsets topic into the cache. Returns the number of
    /// commit records read.
    pub async fn load(&self, partition: &Partition) -> Result<u64, StorageError> {
        let mut offset = partition.log().log_start_offset();
        let end = partition.high_watermark();
        let mut records = 0;
        while offset < end {
            let batches = partition.fetch(offset, 1 << 20, usize::MAX).await?;
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
                    // A value this broker cannot read (a newer format) is skipped, not
                    // taken for a deletion; a missing value is a deletion.
                    let value = match record.value() {
                        None => None,
                        Some(bytes) => match Committed::decode(bytes) {
                            Some(committed) => Some(committed),
                            None => continue,
                        },
                    };
                    self.apply(key, value, record.offset(), record.timestamp_ms());
                }
                offset = offset.max(view.header().next_offset());
            }
        }
        Ok(records)
    }

    /// Sets (or with `None`, deletes) a position if `version` is newer than what is known.
    fn apply(&self, key: OffsetKey, committed: Option<Committed>, version: u64, written_ms: i64) {
        let mut groups = self.groups.borrow_mut();
        let data = groups.entry(key.group.clone()).or_default();
        let group = &mut data.positions;
        let slot = (key.topic, key.partition);
        if group
            .get(&slot)
            .is_some_and(|known| known.version > version)
        {
            return;
        }
        match committed {
            Some(committed) => {
                let versioned = Versioned {
                    committed,
                    version,
                    written_ms,
                };
                group.insert(slot, versioned);
            }
            None => {
                group.remove(&slot);
            }
        }
        if data.is_unused() {
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
        let allowed = self.groups.borrow().get(group).map_or(
            Membership::default().check_commit(member, generation),
            |data| data.membership.check_commit(member, generation),
        );
        allowed.map_err(|error| match error {
            MembershipError::UnknownMember => GroupError::UnknownMember {
                group: group.to_owned(),
                member: member.to_owned(),
            },
            MembershipError::IllegalGeneration => GroupError::IllegalGeneration {
                group: group.to_owned(),
                generation,
            },
            other => membership_error(group, other, &self.limits),
        })?;
        if entries.is_empty() {
            return Ok(());
        }
        let records = entries
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
                (key, Some(committed))
            })
            .collect();
        self.append(partition, records, now_ms).await
    }

    /// Appends records (positions, or `None` for deletions) as one batch, durably, then
    /// applies them to the cache in log order. Refreshes wait for it.
    async fn append(
        &self,
        partition: &Partition,
        records: Vec<(OffsetKey, Option<Committed>)>,
        now_ms: i64,
    ) -> Result<(), GroupError> {
        let _writing = self.gate.shared().await;
        self.append_now(partition, records, now_ms).await
    }

    async fn append_now(
        &self,
        partition: &Partition,
        records: Vec<(OffsetKey, Option<Committed>)>,
        now_ms: i64,
    ) -> Result<(), GroupError> {
        let mut builder = BatchBuilder::new(now_ms);
        for (key, committed) in &records {
            let value = committed.as_ref().map(Committed::encode);
            builder.push(now_ms, Some(&key.encode()), value.as_deref(), &[]);
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
            self.apply(key, committed, base + index as u64, now_ms);
        }
        Ok(())
    }

    /// Writes again the positions of the groups held by offsets partition `index` (of
    /// `partitions`) whose newest record is older than `older_than_ms`, so that retention
    /// of `__consumer_offsets`, which removes superseded commits, never removes a live
    /// one. Commits wait while it runs. Returns the number of positions written.
    pub async fn refresh(
        &self,
        partition: &Partition,
        index: u32,
        partitions: u32,
        now_ms: i64,
        older_than_ms: i64,
    ) -> Result<usize, GroupError> {
        let _exclusive = self.gate.exclusive().await;
        let stale = self.positions_in(index, partitions, |_, versioned| {
            (versioned.written_ms < older_than_ms).then(|| Some(versioned.committed.clone()))
        });
        let count = stale.len();
        self.append_in_batches(partition, stale, now_ms, true)
            .await
            .map(|()| count)
    }

    /// Deletes every committed position of `topic` held by offsets partition `index` (of
    /// `partitions`): tombstones appended (durably), then forgotten. For a deleted topic,
    /// as Kafka does: a topic created again with the same name must not resume from
    /// them. Returns how many were deleted.
    pub async fn forget_topic(
        &self,
        partition: &Partition,
        index: u32,
        partitions: u32,
        topic: &str,
        now_ms: i64,
    ) -> Result<usize, GroupError> {
        let tombstones = self.positions_in(index, partitions, |(name, _), _| {
            (name == topic).then_some(None)
        });
        let count = tombstones.len();
        self.append_in_batches(partition, tombstones, now_ms, false)
            .await
            .map(|()| count)
    }

    /// The records to write for the positions of the groups held by offsets partition
    /// `index` (of `partitions`) that `select` picks: the value it gives (the position,
    /// or `None` for a tombstone) under the position's key.
    fn positions_in(
        &self,
        index: u32,
        partitions: u32,
        select: impl Fn(&(String, u32), &Versioned) -> Option<Option<Committed>>,
    ) -> Vec<(OffsetKey, Option<Committed>)> {
        let groups = self.groups.borrow();
        let mut records = Vec::new();
        for (group, data) in groups.iter() {
            if offsets_partition(group, partitions) != index {
                continue;
            }
            for (slot, versioned) in &data.positions {
                if let Some(value) = select(slot, versioned) {
                    let key = OffsetKey {
                        group: group.clone(),
                        topic: slot.0.clone(),
                        partition: slot.1,
                    };
                    records.push((key, value));
                }
            }
        }
        records
    }

    /// Appends `records` in batches within half the partition's batch limit. A batch
    /// that fails does not keep the later ones (other groups' positions) from being
    /// written; the first failure is returned. `gate_held`: the caller holds the commit
    /// gate exclusively (a refresh).
    async fn append_in_batches(
        &self,
        partition: &Partition,
        records: Vec<(OffsetKey, Option<Committed>)>,
        now_ms: i64,
        gate_held: bool,
    ) -> Result<(), GroupError> {
        let mut first_error = None;
        for chunk in within_batches(partition, records) {
            let appended = match gate_held {
                true => self.append_now(partition, chunk, now_ms).await,
                false => self.append(partition, chunk, now_ms).await,
            };
            if let Err(error) = appended {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
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
        if self
            .groups
            .borrow()
            .get(group)
            .is_some_and(|data| !data.membership.is_empty())
        {
            return Err(GroupError::NonEmpty(group.to_owned()));
        }
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
        let records = keys.into_iter().map(|key| (key, None)).collect();
        // A group with more positions than one batch takes is deleted in several; what
        // a failed one held is left, to be deleted again.
        self.append_in_batches(partition, records, now_ms, false)
            .await
    }

    /// The committed positions of `group`, by topic and partition.
    pub fn committed(&self, group: &str) -> BTreeMap<(String, u32), Committed> {
        self.groups
            .borrow()
            .get(group)
            .map(|data| {
                data.positions
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

/// `records` split into batches of at most half the partition's batch limit (at least
/// one record each), by their encoded size.
fn within_batches(
    partition: &Partition,
    records: Vec<(OffsetKey, Option<Committed>)>,
) -> Vec<Vec<(OffsetKey, Option<Committed>)>> {
    let budget = partition.log().config().batch_bytes_max / 2;
    let mut chunks: Vec<Vec<(OffsetKey, Option<Committed>)>> = Vec::new();
    let mut bytes = 0;
    for record in records {
        // Key, value and the record's own framing (generously).
        let size = record.0.encode().len()
            + record
                .1
                .as_ref()
                .map_or(0, |committed| committed.encode().len())
            + 64;
        match chunks.last_mut() {
            Some(chunk) if bytes + size <= budget => chunk.push(record),
            _ => {
                chunks.push(vec![record]);
                bytes = 0;
            }
        }
        bytes += size;
    }
    chunks
}
