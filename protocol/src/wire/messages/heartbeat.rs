//! Heartbeat (key 16), LeaveGroup (key 17) and DescribeGroups (key 18).
//!
//! A member heartbeats to stay in its group; the answer `RebalanceInProgress` tells it to
//! rejoin. LeaveGroup removes a member at once (a rebalance follows). DescribeGroups
//! shows each group's state, members and their assignments.

use super::Outcome;

/// Heartbeat request.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct HeartbeatRequest {
    /// The group.
    pub group_id: String,
    /// The member's generation.
    pub generation_id: i32,
    /// The member.
    pub member_id: String,
}

/// Heartbeat and LeaveGroup response.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct GroupOutcome {
    /// What happened.
    pub outcome: Outcome,
}

/// LeaveGroup request.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct LeaveGroupRequest {
    /// The group.
    pub group_id: String,
    /// The member leaving.
    pub member_id: String,
}

/// DescribeGroups request.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct DescribeGroupsRequest {
    /// Groups to describe.
    pub groups: Vec<String>,
}

/// One member of a described group.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct DescribedMember {
    /// The member.
    pub member_id: String,
    /// Its metadata for the chosen protocol.
    pub metadata: Vec<u8>,
    /// Its current assignment.
    pub assignment: Vec<u8>,
}

/// One described group.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct DescribedGroup {
    /// The group.
    pub group_id: String,
    /// What happened (`GroupIdNotFound` for an unknown group).
    pub outcome: Outcome,
    /// `Empty`, `PreparingRebalance`, `CompletingRebalance` or `Stable`.
    pub state: String,
    /// The current generation.
    pub generation_id: i32,
    /// The chosen protocol (assignor), empty without members.
    pub protocol: String,
    /// The members.
    pub members: Vec<DescribedMember>,
}

/// DescribeGroups response.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct DescribeGroupsResponse {
    /// Results in request order.
    pub groups: Vec<DescribedGroup>,
}
