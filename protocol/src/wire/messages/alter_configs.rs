//! AlterConfigs (key 5): set (or with an empty value, reset) topic configuration keys.

use super::{ConfigEntry, TopicOutcome};

/// Changes for one topic.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct TopicConfigChanges {
    /// Topic name.
    pub name: String,
    /// Keys to set; an empty value removes the override.
    pub configs: Vec<ConfigEntry>,
}

/// The request.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct AlterConfigsRequest {
    /// Topics to change.
    pub topics: Vec<TopicConfigChanges>,
}

/// The response.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct AlterConfigsResponse {
    /// One result per topic, in request order.
    pub topics: Vec<TopicOutcome>,
}
