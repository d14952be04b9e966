//! DeleteGroups (key 13): forget groups and their committed positions. A group with
//! active members cannot be deleted (`NonEmptyGroup`).

use super::Outcome;

/// The request.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct DeleteGroupsRequest {
    /// Groups to delete.
    pub groups: Vec<String>,
}

/// One group's result.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct DeletedGroup {
    /// The group.
    pub group_id: String,
    /// What happened (`GroupIdNotFound` for a group the broker does not know).
    pub outcome: Outcome,
}

/// The response.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct DeleteGroupsResponse {
    /// Results in request order.
    pub groups: Vec<DeletedGroup>,
}
