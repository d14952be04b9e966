//! JoinGroup (key 14): join a consumer group, or rejoin it for a rebalance.
//!
//! The coordinator holds the answer until the rebalance completes: every known member
//! has rejoined (or missed its rebalance timeout and was removed). Then the generation
//! goes up, one protocol (assignor) supported by every member is chosen, and one member,
//! the leader, gets every member's metadata to compute the assignment it sends with
//! SyncGroup. A member joining with an empty id gets one.

use super::Outcome;

/// One assignment protocol the member supports, with its metadata (for consumers: the
/// subscribed topics and, for sticky assignors, the partitions it owns).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct GroupProtocol {
    /// The protocol's name (the assignor, e.g. `range`).
    pub name: String,
    /// Opaque to the broker.
    pub metadata: Vec<u8>,
}

/// The request.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct JoinGroupRequest {
    /// The group.
    pub group_id: String,
    /// The member's id; empty to join as a new member.
    pub member_id: String,
    /// Removed if not heard from for this long (heartbeats, joins, syncs).
    pub session_timeout_ms: u32,
    /// How long the coordinator waits for members to rejoin during a rebalance.
    pub rebalance_timeout_ms: u32,
    /// The kind of group, `consumer` for consumers; all members must agree.
    pub protocol_type: String,
    /// The protocols the member supports, preferred first.
    pub protocols: Vec<GroupProtocol>,
}

/// One member, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct JoinedMember {
    /// The member.
    pub member_id: String,
    /// Its metadata for the chosen protocol.
    pub metadata: Vec<u8>,
}

/// The response.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct JoinGroupResponse {
    /// What happened.
    pub outcome: Outcome,
    /// The new generation.
    pub generation_id: i32,
    /// The chosen protocol.
    pub protocol_name: String,
    /// The leader's member id.
    pub leader: String,
    /// This member's id (assigned if it joined with an empty one).
    pub member_id: String,
    /// Every member with its metadata, for the leader only; empty for the others.
    pub members: Vec<JoinedMember>,
}
