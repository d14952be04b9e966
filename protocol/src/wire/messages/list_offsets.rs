//! ListOffsets (key 8): the earliest offset, the latest, or the first at a time.

use super::Outcome;

/// `timestamp` value asking for the latest offset (the log end).
pub const LATEST_TIMESTAMP: i64 = -1;
/// `timestamp` value asking for the earliest offset (the log start).
pub const EARLIEST_TIMESTAMP: i64 = -2;

/// One partition to look up.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct ListOffsetsPartition {
    /// Partition number.
    pub partition: u32,
    /// A time in milliseconds, or [`LATEST_TIMESTAMP`] / [`EARLIEST_TIMESTAMP`].
    pub timestamp: i64,
}

/// One topic's partitions.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct ListOffsetsTopic {
    /// Topic name.
    pub name: String,
    /// Partitions to look up.
    pub partitions: Vec<ListOffsetsPartition>,
}

/// The request.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct ListOffsetsRequest {
    /// Topics to look up.
    pub topics: Vec<ListOffsetsTopic>,
}

/// One partition's result.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct ListOffsetsPartitionResult {
    /// Partition number.
    pub partition: u32,
    /// What happened.
    pub outcome: Outcome,
    /// The offset found; for a time after every record, the log end.
    pub offset: u64,
    /// The partition's first offset.
    pub log_start_offset: u64,
    /// The partition's end: the offset the next record will get.
    pub log_end_offset: u64,
    /// Bytes the partition occupies on disk.
    pub size_bytes: u64,
}

/// One topic's results.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct ListOffsetsTopicResult {
    /// Topic name.
    pub name: String,
    /// Results in request order.
    pub partitions: Vec<ListOffsetsPartitionResult>,
}

/// The response.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct ListOffsetsResponse {
    /// Results in request order.
    pub topics: Vec<ListOffsetsTopicResult>,
}
