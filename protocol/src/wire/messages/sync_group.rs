//! SyncGroup (key 15): after a JoinGroup, the leader sends every member's assignment and
//! each member gets its own. A member other than the leader waits until the leader's
//! assignment arrived.

use super::Outcome;

/// One member's assignment (opaque to the broker).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct MemberAssignment {
    /// The member.
    pub member_id: String,
    /// Its assignment.
    pub assignment: Vec<u8>,
}

/// The request.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct SyncGroupRequest {
    /// The group.
    pub group_id: String,
    /// The generation JoinGroup returned.
    pub generation_id: i32,
    /// The member.
    pub member_id: String,
    /// From the leader: every member's assignment; from the others: empty.
    pub assignments: Vec<MemberAssignment>,
}

/// The response.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct SyncGroupResponse {
    /// What happened.
    pub outcome: Outcome,
    /// This member's assignment.
    pub assignment: Vec<u8>,
}
