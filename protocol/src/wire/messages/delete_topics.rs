//! DeleteTopics (key 3).

use super::TopicOutcome;

/// The request.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct DeleteTopicsRequest {
    /// Topics to delete.
    pub names: Vec<String>,
}

/// The response.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct DeleteTopicsResponse {
    /// One result per requested topic, in request order.
    pub topics: Vec<TopicOutcome>,
}
