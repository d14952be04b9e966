//! Produce (key 6): append batches to partitions.
//!
//! `acks` is 0 (no response is sent), 1 (answered once the leader appended) or -1 (all:
//! answered once every in-sync replica has the batches and they are `fdatasync`ed).
//! Each partition's batches are one [`DataRange`] of the request's data section, which
//! holds whole, 16-byte-aligned batches back to back.

use super::Outcome;
use crate::wire::DataRange;

/// One partition's batches.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct ProducePartition {
    /// Partition number.
    pub partition: u32,
    /// Its batches in the data section.
    pub batches: DataRange,
}

/// One topic's partitions.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct ProduceTopic {
    /// Topic name.
    pub name: String,
    /// Partitions to append to.
    pub partitions: Vec<ProducePartition>,
}

/// The request.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct ProduceRequest {
    /// 0, 1 or -1 (all).
    pub acks: i8,
    /// How long the broker may wait for acks=all before answering `RequestTimedOut`.
    pub timeout_ms: u32,
    /// Topics to append to.
    pub topics: Vec<ProduceTopic>,
}

/// One partition's result.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct ProducePartitionResult {
    /// Partition number.
    pub partition: u32,
    /// What happened; on error nothing of this partition's batches was appended after the
    /// first failing batch.
    pub outcome: Outcome,
    /// Offset of the first record appended.
    pub base_offset: u64,
    /// Offset of the last record appended.
    pub last_offset: u64,
    /// The partition's log start offset.
    pub log_start_offset: u64,
}

/// One topic's results.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct ProduceTopicResult {
    /// Topic name.
    pub name: String,
    /// Results in request order.
    pub partitions: Vec<ProducePartitionResult>,
}

/// The response (not sent for acks=0).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct ProduceResponse {
    /// Results in request order.
    pub topics: Vec<ProduceTopicResult>,
}
