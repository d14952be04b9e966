//! OffsetFetch (key 11): a group's committed positions, and ListGroups (key 12): the
//! groups a broker knows.

use super::Outcome;

/// One topic's partitions to look up.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct OffsetFetchTopic {
    /// Topic name.
    pub name: String,
    /// Partitions.
    pub partitions: Vec<u32>,
}

/// The request.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct OffsetFetchRequest {
    /// The group.
    pub group_id: String,
    /// Partitions to look up; `None`: every partition the group has committed.
    pub topics: Option<Vec<OffsetFetchTopic>>,
}

/// One partition's committed position.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct OffsetFetchPartition {
    /// Partition number.
    pub partition: u32,
    /// The committed offset; `None` if the group never committed one here.
    pub offset: Option<u64>,
    /// The metadata stored with it.
    pub metadata: Option<String>,
    /// When it was committed (ms since the epoch; 0 if none).
    pub commit_timestamp: i64,
    /// What happened.
    pub outcome: Outcome,
}

/// One topic's positions.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct OffsetFetchTopicResult {
    /// Topic name.
    pub name: String,
    /// Partitions, in request order (sorted when all were asked for).
    pub partitions: Vec<OffsetFetchPartition>,
}

/// The response.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct OffsetFetchResponse {
    /// A group-level error (an invalid group id).
    pub outcome: Outcome,
    /// Topics, in request order (sorted when all were asked for).
    pub topics: Vec<OffsetFetchTopicResult>,
}

/// ListGroups request.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct ListGroupsRequest {}

/// ListGroups response.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct ListGroupsResponse {
    /// Every group with committed offsets or members, sorted.
    pub groups: Vec<String>,
}
