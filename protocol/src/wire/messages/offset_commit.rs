//! OffsetCommit (key 10): store a group's consumed positions.
//!
//! The group's coordinator (the shard leading the group's partition of
//! `__consumer_offsets`) appends the offsets to that partition, durably, before
//! answering, and keeps them in memory for OffsetFetch. `offset` is the position the
//! group resumes from: the offset of the next record to read, not of the last one read.
//!
//! `generation_id` -1 with an empty `member_id` commits outside group membership
//! (partitions assigned by the application); it is refused while the group has active
//! members. Otherwise the member and generation must be the group's current ones, so a
//! member of an older generation (a zombie) cannot overwrite newer commits.

use super::Outcome;

/// One partition's position.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct OffsetCommitPartition {
    /// Partition number.
    pub partition: u32,
    /// The offset to resume from.
    pub offset: u64,
    /// Free text stored with the offset (at most 4,096 bytes).
    pub metadata: Option<String>,
}

/// One topic's positions.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct OffsetCommitTopic {
    /// Topic name.
    pub name: String,
    /// Partitions.
    pub partitions: Vec<OffsetCommitPartition>,
}

/// The request.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct OffsetCommitRequest {
    /// The group.
    pub group_id: String,
    /// The member's generation, or -1 outside membership.
    pub generation_id: i32,
    /// The member, or empty outside membership.
    pub member_id: String,
    /// Positions to store.
    pub topics: Vec<OffsetCommitTopic>,
}

/// One partition's result.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct OffsetCommitPartitionResult {
    /// Partition number.
    pub partition: u32,
    /// What happened.
    pub outcome: Outcome,
}

/// One topic's results.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct OffsetCommitTopicResult {
    /// Topic name.
    pub name: String,
    /// Results in request order.
    pub partitions: Vec<OffsetCommitPartitionResult>,
}

/// The response.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct OffsetCommitResponse {
    /// Results in request order.
    pub topics: Vec<OffsetCommitTopicResult>,
}
