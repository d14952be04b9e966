//! DescribeConfigs (key 4): a topic's effective configuration.

use super::Outcome;

/// The request.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct DescribeConfigsRequest {
    /// Topics to describe.
    pub topics: Vec<String>,
}

/// One effective configuration value.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct ConfigValue {
    /// Key.
    pub key: String,
    /// Effective value.
    pub value: String,
    /// Whether it is the broker default rather than a topic override.
    pub is_default: bool,
}

/// One topic's configuration.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct TopicConfigs {
    /// Topic name.
    pub name: String,
    /// Outcome (`UnknownTopic`).
    pub outcome: Outcome,
    /// Every key with its effective value.
    pub configs: Vec<ConfigValue>,
}

/// The response.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct DescribeConfigsResponse {
    /// One entry per requested topic, in request order.
    pub topics: Vec<TopicConfigs>,
}
