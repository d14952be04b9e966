//! Fetch (key 7): read batches from partitions, with long polling.
//!
//! The broker answers when at least `min_bytes` are available across the partitions or
//! `max_wait_ms` has passed. A partition returns at most `partition_max_bytes` and the
//! response at most `max_bytes`, except that the first batch of the first partition with
//! data is always returned whole, so a consumer can make progress past a large batch.
//! Batches come back exactly as stored, in the response's data section.

use super::Outcome;
use crate::wire::DataRange;

/// One partition to read.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct FetchPartition {
    /// Partition number.
    pub partition: u32,
    /// First offset wanted.
    pub fetch_offset: u64,
    /// Byte limit for this partition.
    pub partition_max_bytes: u32,
}

/// One topic's partitions.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct FetchTopic {
    /// Topic name.
    pub name: String,
    /// Partitions to read.
    pub partitions: Vec<FetchPartition>,
}

/// The request.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct FetchRequest {
    /// Longest time to wait for `min_bytes`.
    pub max_wait_ms: u32,
    /// Bytes to wait for.
    pub min_bytes: u32,
    /// Byte limit for the whole response.
    pub max_bytes: u32,
    /// Topics to read.
    pub topics: Vec<FetchTopic>,
}

/// One partition's result.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct FetchPartitionResult {
    /// Partition number.
    pub partition: u32,
    /// What happened.
    pub outcome: Outcome,
    /// Offset up to which records are readable by consumers.
    pub high_watermark: u64,
    /// First offset still in the log.
    pub log_start_offset: u64,
    /// Batches returned, in the data section.
    pub batches: DataRange,
}

/// One topic's results.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct FetchTopicResult {
    /// Topic name.
    pub name: String,
    /// Results in request order.
    pub partitions: Vec<FetchPartitionResult>,
}

/// The response.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct FetchResponse {
    /// Results in request order.
    pub topics: Vec<FetchTopicResult>,
}
