//! CreateTopics (key 2).

use super::Outcome;

/// A configuration entry.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct ConfigEntry {
    /// Key, such as `retention.ms`.
    pub key: String,
    /// Value as text.
    pub value: String,
}

/// One topic to create.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct NewTopic {
    /// Name: 1–249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
    pub name: String,
    /// Number of partitions, at least 1.
    pub partitions: u32,
    /// Replicas per partition (1 on a single broker).
    pub replication_factor: u16,
    /// Configuration overrides.
    pub configs: Vec<ConfigEntry>,
}

/// The request.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct CreateTopicsRequest {
    /// Topics to create.
    pub topics: Vec<NewTopic>,
    /// Check only; create nothing.
    pub validate_only: bool,
}

/// Per-topic result.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct TopicOutcome {
    /// Topic name.
    pub name: String,
    /// What happened.
    pub outcome: Outcome,
}

/// The response.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct CreateTopicsResponse {
    /// One result per requested topic, in request order.
    pub topics: Vec<TopicOutcome>,
}
