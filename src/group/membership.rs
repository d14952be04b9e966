//! Group membership: who is in a group, in which generation, and with what assignment
//! (Kafka's classic, eager rebalance protocol).
//!
//! States: `Empty` (no members) → `PreparingRebalance` (waiting for members to join or
//! rejoin) → `CompletingRebalance` (generation raised, leader chosen, waiting for the
//! leader's assignment) → `Stable`. A join, a leave, or a member missing its session
//! timeout sends the group back to `PreparingRebalance`; every member must then rejoin
//! (its heartbeats answer `RebalanceInProgress`). A rebalance completes once every
//! member rejoined, or when the longest rebalance timeout of the members passed (those
//! that did not rejoin are removed). The first rebalance of an empty group waits
//! `initial_rebalance_delay` so that members starting together land in one generation.
//!
//! Everything here is synchronous state; the coordinator wakes waiting joins and syncs
//! when it changes, and a timer calls [`Membership::tick`].

use std::collections::BTreeMap;

/// Where a group is in its rebalance cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No members.
    Empty,
    /// Waiting for members to join or rejoin.
    PreparingRebalance,
    /// Waiting for the leader's assignment.
    CompletingRebalance,
    /// Every member has its assignment.
    Stable,
}

impl Phase {
    /// The name DescribeGroups shows.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Empty => "Empty",
            Phase::PreparingRebalance => "PreparingRebalance",
            Phase::CompletingRebalance => "CompletingRebalance",
            Phase::Stable => "Stable",
        }
    }
}

/// Why a membership request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipError {
    /// Not a member (never was, left, or expired).
    UnknownMember,
    /// Not the current generation.
    IllegalGeneration,
    /// The group is rebalancing: rejoin.
    RebalanceInProgress,
    /// The protocol type or protocols do not match the group's.
    InconsistentProtocol,
    /// A timeout outside the limits.
    InvalidSessionTimeout,
    /// The group has [`GROUP_MEMBERS_MAX`] members (no new one joins), or its members'
    /// metadata would pass [`GROUP_METADATA_BYTES_MAX`].
    GroupFull,
    /// More than [`PROTOCOLS_MAX`] protocols, or more than
    /// [`MEMBER_METADATA_BYTES_MAX`] of protocol names and metadata.
    TooMuchMetadata,
}

/// Most members a group has (a new member beyond it is refused).
pub const GROUP_MEMBERS_MAX: usize = 1_000;
/// Most protocols one member offers.
pub const PROTOCOLS_MAX: usize = 16;
/// Most bytes of protocol names and metadata one member offers. (A cooperative
/// consumer's metadata lists the partitions it owns: thousands fit.)
pub const MEMBER_METADATA_BYTES_MAX: usize = 1 << 20;
/// Most bytes of metadata of all a group's members together, each counted by its
/// largest protocol: the leader's join answer carries one protocol's metadata of every
/// member, and stays well within the default 64 MiB frame.
pub const GROUP_METADATA_BYTES_MAX: usize = 16 << 20;

/// The most metadata `protocols` put in a leader's join answer.
fn largest_metadata(protocols: &[(String, Vec<u8>)]) -> usize {
    protocols
        .iter()
        .map(|(_, metadata)| metadata.len())
        .max()
        .unwrap_or(0)
}

/// A join request's member-side data.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// Empty for a new member.
    pub member_id: String,
    /// Session timeout.
    pub session_timeout_ms: u32,
    /// Rebalance timeout.
    pub rebalance_timeout_ms: u32,
    /// Protocol type.
    pub protocol_type: String,
    /// `(name, metadata)`, preferred first.
    pub protocols: Vec<(String, Vec<u8>)>,
}

/// What a completed join returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinAnswer {
    /// The new generation.
    pub generation: i32,
    /// The chosen protocol.
    pub protocol: String,
    /// The leader.
    pub leader: String,
    /// This member.
    pub member_id: String,
    /// Every member's metadata, for the leader only.
    pub members: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone)]
struct Member {
    protocols: Vec<(String, Vec<u8>)>,
    session_timeout_ms: u32,
    rebalance_timeout_ms: u32,
    last_seen_ms: i64,
    /// Joined in the current rebalance.
    joined: bool,
    assignment: Vec<u8>,
}

/// Limits on members' timeouts, and the first rebalance's delay.
#[derive(Debug, Clone, Copy)]
pub struct MembershipLimits {
    /// Shortest session timeout accepted.
    pub session_timeout_min_ms: u32,
    /// Longest session timeout accepted.
    pub session_timeout_max_ms: u32,
    /// How long an empty group's first rebalance waits for more members.
    pub initial_rebalance_delay_ms: u32,
}

impl Default for MembershipLimits {
    fn default() -> Self {
        Self {
            session_timeout_min_ms: 1_000,
            session_timeout_max_ms: 300_000,
            initial_rebalance_delay_ms: 3_000,
        }
    }
}

/// One group's membership.
#[derive(Debug, Clone)]
pub struct Membership {
    phase: Phase,
    generation: i32,
    protocol_type: String,
    protocol: String,
    leader: String,
    members: BTreeMap<String, Member>,
    /// In `PreparingRebalance`: complete at the latest then.
    rebalance_deadline_ms: i64,
    /// In `PreparingRebalance`: when it began.
    rebalance_started_ms: i64,
    /// In the first rebalance of an empty group: complete no sooner than then.
    not_before_ms: i64,
    /// The answer of the last completed rebalance, kept so that a join waiting for it
    /// still gets it if another rebalance begins before the waiter wakes up.
    completed: Option<Completed>,
}

/// A completed rebalance, as its joins are answered.
#[derive(Debug, Clone)]
struct Completed {
    generation: i32,
    protocol: String,
    leader: String,
    members: Vec<(String, Vec<u8>)>,
}

impl Default for Membership {
    fn default() -> Self {
        Self {
            phase: Phase::Empty,
            generation: 0,
            protocol_type: String::new(),
            protocol: String::new(),
            leader: String::new(),
            members: BTreeMap::new(),
            rebalance_deadline_ms: 0,
            rebalance_started_ms: 0,
            not_before_ms: 0,
            completed: None,
        }
    }
}

impl Membership {
    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The current generation.
    pub fn generation(&self) -> i32 {
        self.generation
    }

    /// The chosen protocol (empty before the first completed rebalance).
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// Whether the group has members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// `(member, metadata for the chosen protocol, assignment)` of every member.
    pub fn members(&self) -> Vec<(String, Vec<u8>, Vec<u8>)> {
        self.members
            .iter()
            .map(|(id, member)| {
                let metadata = metadata_for(member, &self.protocol);
                (id.clone(), metadata, member.assignment.clone())
            })
            .collect()
    }

    /// Starts or continues a join. Returns the member's id (assigned if it was empty) and
    /// the generation the answer must be newer than.
    pub fn join(
        &mut self,
        request: JoinRequest,
        new_member_id: impl FnOnce() -> String,
        limits: &MembershipLimits,
        now_ms: i64,
    ) -> Result<(String, i32), MembershipError> {
        let timeout = request.session_timeout_ms;
        if timeout < limits.session_timeout_min_ms
            || timeout > limits.session_timeout_max_ms
            || request.rebalance_timeout_ms == 0
        {
            return Err(MembershipError::InvalidSessionTimeout);
        }
        if request.protocols.is_empty() || request.protocol_type.is_empty() {
            return Err(MembershipError::InconsistentProtocol);
        }
        let metadata_bytes: usize = request
            .protocols
            .iter()
            .map(|(name, metadata)| name.len() + metadata.len())
            .sum();
        if request.protocols.len() > PROTOCOLS_MAX || metadata_bytes > MEMBER_METADATA_BYTES_MAX {
            return Err(MembershipError::TooMuchMetadata);
        }
        let member_id = if request.member_id.is_empty() {
            if self.members.len() >= GROUP_MEMBERS_MAX {
                return Err(MembershipError::GroupFull);
            }
            new_member_id()
        } else if self.members.contains_key(&request.member_id) {
            request.member_id
        } else {
            return Err(MembershipError::UnknownMember);
        };
        let others: Vec<&Member> = self
            .members
            .iter()
            .filter(|(id, _)| **id != member_id)
            .map(|(_, member)| member)
            .collect();
        let group_metadata: usize = others
            .iter()
            .map(|member| largest_metadata(&member.protocols))
            .sum::<usize>()
            + largest_metadata(&request.protocols);
        if group_metadata > GROUP_METADATA_BYTES_MAX {
            return Err(MembershipError::GroupFull);
        }
        if !others.is_empty() {
            let shared = request.protocols.iter().any(|(name, _)| {
                others
                    .iter()
                    .all(|member| member.protocols.iter().any(|(other, _)| other == name))
            });
            if request.protocol_type != self.protocol_type || !shared {
                return Err(MembershipError::InconsistentProtocol);
            }
        }
        self.protocol_type = request.protocol_type;
        let assignment = self
            .members
            .get(&member_id)
            .map(|member| member.assignment.clone())
            .unwrap_or_default();
        let member = Member {
            protocols: request.protocols,
            session_timeout_ms: request.session_timeout_ms,
            rebalance_timeout_ms: request.rebalance_timeout_ms,
            last_seen_ms: now_ms,
            joined: true,
            assignment,
        };
        let first = self.members.is_empty();
        let unchanged_rejoin = self.phase == Phase::PreparingRebalance;
        self.members.insert(member_id.clone(), member);
        if !unchanged_rejoin {
            self.start_rebalance(now_ms);
            if let Some(member) = self.members.get_mut(&member_id) {
                member.joined = true;
            }
            if first {
                self.not_before_ms = now_ms + i64::from(limits.initial_rebalance_delay_ms);
            }
        } else {
            // A longer rebalance timeout of a new member extends the wait, but never past
            // the longest timeout counted from the rebalance's start: members joining
            // one after another (a crash-looping one) cannot hold it open for good.
            let timeout = i64::from(request.rebalance_timeout_ms);
            let latest = self.rebalance_started_ms + self.longest_rebalance_timeout_ms();
            self.rebalance_deadline_ms = self
                .rebalance_deadline_ms
                .max((now_ms + timeout).min(latest));
        }
        let generation = self.generation;
        self.try_complete(now_ms);
        Ok((member_id, generation))
    }

    /// The answer to a join made at `generation`, once the rebalance completed; `None`
    /// while it is still under way.
    pub fn join_answer(
        &self,
        member_id: &str,
        generation: i32,
    ) -> Option<Result<JoinAnswer, MembershipError>> {
        let completed = self
            .completed
            .as_ref()
            .filter(|completed| completed.generation > generation);
        let Some(completed) = completed else {
            return (!self.members.contains_key(member_id))
                .then_some(Err(MembershipError::UnknownMember));
        };
        if !completed.members.iter().any(|(id, _)| id == member_id) {
            return Some(Err(MembershipError::UnknownMember));
        }
        // If yet another rebalance began meanwhile, this answer's sync is told to rejoin.
        let members = if completed.leader == member_id {
            completed.members.clone()
        } else {
            Vec::new()
        };
        Some(Ok(JoinAnswer {
            generation: completed.generation,
            protocol: completed.protocol.clone(),
            leader: completed.leader.clone(),
            member_id: member_id.to_owned(),
            members,
        }))
    }

    fn check(
        &mut self,
        member_id: &str,
        generation: i32,
        now_ms: i64,
    ) -> Result<(), MembershipError> {
        let member = self
            .members
            .get_mut(member_id)
            .ok_or(MembershipError::UnknownMember)?;
        member.last_seen_ms = now_ms;
        if generation != self.generation {
            return Err(MembershipError::IllegalGeneration);
        }
        Ok(())
    }

    /// A SyncGroup: the leader's assignments are stored (the group becomes `Stable`);
    /// returns the member's assignment, or `None` while the leader's has not arrived.
    pub fn sync(
        &mut self,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Vec<u8>)>,
        now_ms: i64,
    ) -> Result<Option<Vec<u8>>, MembershipError> {
        self.check(member_id, generation, now_ms)?;
        match self.phase {
            Phase::PreparingRebalance | Phase::Empty => Err(MembershipError::RebalanceInProgress),
            Phase::CompletingRebalance if self.leader == member_id => {
                let mut assignments: BTreeMap<String, Vec<u8>> = assignments.into_iter().collect();
                for (id, member) in self.members.iter_mut() {
                    member.assignment = assignments.remove(id).unwrap_or_default();
                }
                self.phase = Phase::Stable;
                Ok(Some(self.members[member_id].assignment.clone()))
            }
            Phase::CompletingRebalance => Ok(None),
            Phase::Stable => Ok(Some(self.members[member_id].assignment.clone())),
        }
    }

    /// The answer to a waiting SyncGroup: `None` while still waiting.
    pub fn sync_answer(
        &self,
        member_id: &str,
        generation: i32,
    ) -> Option<Result<Vec<u8>, MembershipError>> {
        let Some(member) = self.members.get(member_id) else {
            return Some(Err(MembershipError::UnknownMember));
        };
        if generation != self.generation || self.phase == Phase::PreparingRebalance {
            return Some(Err(MembershipError::RebalanceInProgress));
        }
        (self.phase == Phase::Stable).then(|| Ok(member.assignment.clone()))
    }

    /// A heartbeat: keeps the member's session; tells it to rejoin during a rebalance.
    pub fn heartbeat(
        &mut self,
        member_id: &str,
        generation: i32,
        now_ms: i64,
    ) -> Result<(), MembershipError> {
        self.check(member_id, generation, now_ms)?;
        if self.phase == Phase::PreparingRebalance {
            return Err(MembershipError::RebalanceInProgress);
        }
        Ok(())
    }

    /// May `member_id` of `generation` commit offsets now? Outside membership
    /// (`generation` -1, no member id) only while the group has no members.
    pub fn check_commit(&self, member_id: &str, generation: i32) -> Result<(), MembershipError> {
        if member_id.is_empty() && generation == -1 && self.members.is_empty() {
            return Ok(());
        }
        if !self.members.contains_key(member_id) {
            return Err(MembershipError::UnknownMember);
        }
        if generation != self.generation {
            return Err(MembershipError::IllegalGeneration);
        }
        // While members rejoin, the generation is still the old one and a member may
        // commit what it is about to give up; once the new generation exists but its
        // assignment is not handed out, nobody may.
        if self.phase == Phase::CompletingRebalance {
            return Err(MembershipError::RebalanceInProgress);
        }
        Ok(())
    }

    /// A member leaves; the others rebalance.
    pub fn leave(&mut self, member_id: &str, now_ms: i64) -> Result<(), MembershipError> {
        self.members
            .remove(member_id)
            .ok_or(MembershipError::UnknownMember)?;
        self.after_removal(now_ms);
        Ok(())
    }

    /// Expires members that missed their session timeout and completes a rebalance whose
    /// time has come. Returns whether anything changed.
    pub fn tick(&mut self, now_ms: i64) -> bool {
        let before = (self.phase, self.generation, self.members.len());
        let preparing = self.phase == Phase::PreparingRebalance;
        let expired: Vec<String> = self
            .members
            .iter()
            // A member waiting in a join is not expected to heartbeat.
            .filter(|(_, member)| !(preparing && member.joined))
            .filter(|(_, member)| {
                now_ms - member.last_seen_ms > i64::from(member.session_timeout_ms)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.members.remove(id);
        }
        if !expired.is_empty() {
            self.after_removal(now_ms);
        }
        self.try_complete(now_ms);
        before != (self.phase, self.generation, self.members.len())
    }

    fn after_removal(&mut self, now_ms: i64) {
        if self.members.is_empty() {
            self.phase = Phase::Empty;
            self.generation += 1;
            self.leader.clear();
            self.protocol.clear();
        } else {
            self.start_rebalance(now_ms);
        }
    }

    fn start_rebalance(&mut self, now_ms: i64) {
        if self.phase != Phase::PreparingRebalance {
            self.phase = Phase::PreparingRebalance;
            for member in self.members.values_mut() {
                member.joined = false;
            }
            self.rebalance_deadline_ms = now_ms + self.longest_rebalance_timeout_ms();
            self.rebalance_started_ms = now_ms;
        }
    }

    /// The longest rebalance timeout of the members (0 without members).
    fn longest_rebalance_timeout_ms(&self) -> i64 {
        self.members
            .values()
            .map(|member| i64::from(member.rebalance_timeout_ms))
            .max()
            .unwrap_or(0)
    }

    fn try_complete(&mut self, now_ms: i64) {
        if self.phase != Phase::PreparingRebalance || now_ms < self.not_before_ms {
            return;
        }
        let all_joined = self.members.values().all(|member| member.joined);
        if !all_joined && now_ms < self.rebalance_deadline_ms {
            return;
        }
        self.members.retain(|_, member| member.joined);
        if self.members.is_empty() {
            self.after_removal(now_ms);
            return;
        }
        self.generation += 1;
        if !self.members.contains_key(&self.leader) {
            self.leader = self.members.keys().next().cloned().unwrap_or_default();
        }
        let leader = &self.members[&self.leader];
        self.protocol = leader
            .protocols
            .iter()
            .map(|(name, _)| name)
            .find(|name| {
                self.members
                    .values()
                    .all(|member| member.protocols.iter().any(|(other, _)| other == *name))
            })
            .cloned()
            .unwrap_or_default();
        for member in self.members.values_mut() {
            member.joined = false;
            member.last_seen_ms = now_ms;
        }
        self.phase = Phase::CompletingRebalance;
        self.completed = Some(Completed {
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            members: self
                .members
                .iter()
                .map(|(id, member)| (id.clone(), metadata_for(member, &self.protocol)))
                .collect(),
        });
    }
}

fn metadata_for(member: &Member, protocol: &str) -> Vec<u8> {
    member
        .protocols
        .iter()
        .find(|(name, _)| name == protocol)
        .map(|(_, metadata)| metadata.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> MembershipLimits {
        MembershipLimits {
            session_timeout_min_ms: 10,
            session_timeout_max_ms: 100_000,
            initial_rebalance_delay_ms: 0,
        }
    }

    fn request(member_id: &str, protocols: &[&str]) -> JoinRequest {
        JoinRequest {
            member_id: member_id.to_owned(),
            session_timeout_ms: 1_000,
            rebalance_timeout_ms: 5_000,
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|name| ((*name).to_owned(), name.as_bytes().to_vec()))
                .collect(),
        }
    }

    #[test]
    fn members_join_sync_and_rebalance_through_the_generations() {
        let mut group = Membership::default();
        let (a, before) = group
            .join(request("", &["range"]), || "a".into(), &limits(), 0)
            .unwrap();
        let answer = group.join_answer(&a, before).unwrap().unwrap();
        assert_eq!((answer.generation, answer.leader.as_str()), (1, "a"));
        assert_eq!(answer.members.len(), 1, "the leader sees the members");
        assert_eq!(
            group.sync(&a, 1, vec![("a".into(), b"p0".to_vec())], 1),
            Ok(Some(b"p0".to_vec()))
        );
        assert_eq!(group.phase(), Phase::Stable);

        // A second member: a rebalance; a's heartbeat says rejoin; b waits for a.
        let (b, b_before) = group
            .join(
                request("", &["range", "roundrobin"]),
                || "b".into(),
                &limits(),
                2,
            )
            .unwrap();
        assert!(group.join_answer(&b, b_before).is_none());
        assert_eq!(
            group.heartbeat(&a, 1, 3),
            Err(MembershipError::RebalanceInProgress)
        );
        assert_eq!(
            group.check_commit(&a, 1),
            Ok(()),
            "revoking members commit first"
        );
        let (_, a_before) = group
            .join(request(&a, &["range"]), || unreachable!(), &limits(), 4)
            .unwrap();
        let answer = group.join_answer(&a, a_before).unwrap().unwrap();
        assert_eq!((answer.generation, answer.protocol.as_str()), (2, "range"));
        let follower = group.join_answer(&b, b_before).unwrap().unwrap();
        assert!(
            follower.members.is_empty(),
            "only the leader sees the members"
        );
        assert_eq!(
            group.sync(&b, 2, vec![], 5),
            Ok(None),
            "b waits for the leader"
        );
        assert_eq!(
            group.check_commit(&b, 2),
            Err(MembershipError::RebalanceInProgress)
        );
        assert_eq!(
            group.sync(&a, 1, vec![], 5),
            Err(MembershipError::IllegalGeneration)
        );
        group
            .sync(
                &a,
                2,
                vec![("a".into(), b"x".to_vec()), ("b".into(), b"y".to_vec())],
                5,
            )
            .unwrap();
        assert_eq!(group.sync_answer(&b, 2), Some(Ok(b"y".to_vec())));
        assert_eq!(group.check_commit(&b, 2), Ok(()));
        assert_eq!(
            group.check_commit("", -1),
            Err(MembershipError::UnknownMember),
            "not while members exist"
        );
        assert_eq!(
            group.check_commit(&b, 1),
            Err(MembershipError::IllegalGeneration),
            "a zombie"
        );

        // b misses its session: removed, a rebalances alone.
        group.heartbeat(&a, 2, 900).unwrap();
        assert!(group.tick(1_100));
        assert_eq!(group.members().len(), 1);
        assert_eq!(group.phase(), Phase::PreparingRebalance);
        let (_, before) = group
            .join(request(&a, &["range"]), || unreachable!(), &limits(), 1_200)
            .unwrap();
        assert_eq!(
            group.join_answer(&a, before).unwrap().unwrap().generation,
            3
        );
        group.leave(&a, 1_300).unwrap();
        assert_eq!(group.phase(), Phase::Empty);
        assert_eq!(group.check_commit("", -1), Ok(()));
    }

    /// A group where `a` is stable in generation 1 and `b` joined at 10 ms, starting a
    /// rebalance: the group, `a`, `b`, and the generation `b`'s answer must pass.
    fn stable_a_then_b_joins() -> (Membership, String, String, i32) {
        let mut group = Membership::default();
        let (a, _) = group
            .join(request("", &["range"]), || "a".into(), &limits(), 0)
            .unwrap();
        group.sync(&a, 1, vec![], 0).unwrap();
        let (b, before) = group
            .join(request("", &["range"]), || "b".into(), &limits(), 10)
            .unwrap();
        (group, a, b, before)
    }

    #[test]
    fn a_member_that_does_not_rejoin_is_dropped_at_the_rebalance_deadline() {
        let (mut group, a, b, before) = stable_a_then_b_joins();
        // a never rejoins; its heartbeat keeps its session but not its place.
        assert_eq!(
            group.heartbeat(&a, 1, 3_500),
            Err(MembershipError::RebalanceInProgress)
        );
        group.tick(4_000);
        assert!(group.join_answer(&b, before).is_none());
        group.tick(5_011);
        let answer = group.join_answer(&b, before).unwrap().unwrap();
        assert_eq!((answer.leader.as_str(), answer.generation), ("b", 2));
        assert_eq!(
            group.join_answer(&a, 1),
            Some(Err(MembershipError::UnknownMember))
        );
    }

    #[test]
    fn bad_joins_are_refused() {
        let mut group = Membership::default();
        group
            .join(request("", &["range"]), || "a".into(), &limits(), 0)
            .unwrap();
        let mut short = request("", &["range"]);
        short.session_timeout_ms = 1;
        assert_eq!(
            group.join(short, || "x".into(), &limits(), 0),
            Err(MembershipError::InvalidSessionTimeout)
        );
        assert_eq!(
            group.join(request("", &["sticky"]), || "x".into(), &limits(), 0),
            Err(MembershipError::InconsistentProtocol)
        );
        assert_eq!(
            group.join(request("ghost", &["range"]), || "x".into(), &limits(), 0),
            Err(MembershipError::UnknownMember)
        );
        assert_eq!(
            group.heartbeat("ghost", 1, 0),
            Err(MembershipError::UnknownMember)
        );
        assert_eq!(group.leave("ghost", 0), Err(MembershipError::UnknownMember));
    }

    /// A group takes at most `GROUP_MEMBERS_MAX` members (one already in may rejoin),
    /// and a join at most `PROTOCOLS_MAX` protocols and `MEMBER_METADATA_BYTES_MAX` of
    /// their names and metadata.
    #[test]
    fn groups_and_their_members_metadata_are_bounded() {
        let mut group = Membership::default();
        for index in 0..GROUP_MEMBERS_MAX {
            group
                .join(
                    request("", &["range"]),
                    || format!("m{index}"),
                    &limits(),
                    0,
                )
                .unwrap();
        }
        let full = group.join(request("", &["range"]), || "one-more".into(), &limits(), 0);
        assert_eq!(full, Err(MembershipError::GroupFull));
        assert!(group
            .join(request("m7", &["range"]), || unreachable!(), &limits(), 0)
            .is_ok());

        let mut group = Membership::default();
        let names: Vec<String> = (0..=PROTOCOLS_MAX)
            .map(|index| format!("p{index}"))
            .collect();
        let many: Vec<&str> = names.iter().map(String::as_str).collect();
        let too_many = group.join(request("", &many), || "a".into(), &limits(), 0);
        assert_eq!(too_many, Err(MembershipError::TooMuchMetadata));
        let mut large = request("", &["range"]);
        large.protocols[0].1 = vec![0; MEMBER_METADATA_BYTES_MAX];
        let too_large = group.join(large, || "a".into(), &limits(), 0);
        assert_eq!(too_large, Err(MembershipError::TooMuchMetadata));
        // A cooperative member owning thousands of partitions fits, twice over.
        let mut owner = request("", &["range", "cooperative-sticky"]);
        let owned = "topics=orders;owned=".to_owned() + &"orders:1234,".repeat(10_000);
        for (_, metadata) in &mut owner.protocols {
            *metadata = owned.clone().into_bytes();
        }
        let mut members = Membership::default();
        assert!(members
            .join(owner.clone(), || "owner".into(), &limits(), 0)
            .is_ok());
        // The group's members together stay within what a join answer may carry.
        let per_member = owned.len();
        let fitting = GROUP_METADATA_BYTES_MAX / per_member;
        for index in 1..fitting {
            members
                .join(owner.clone(), || format!("m{index}"), &limits(), 0)
                .unwrap();
        }
        let over = members.join(owner, || "over".into(), &limits(), 0);
        assert_eq!(over, Err(MembershipError::GroupFull));
        assert!(group
            .join(
                request("", &many[..PROTOCOLS_MAX]),
                || "a".into(),
                &limits(),
                0
            )
            .is_ok());
    }

    /// New members joining one after another during a rebalance do not hold it open past
    /// the longest rebalance timeout counted from its start.
    #[test]
    fn joins_during_a_rebalance_cannot_push_its_deadline_back_for_good() {
        let (mut group, a, b, before) = stable_a_then_b_joins();
        // a never rejoins; a new member joins every second.
        for second in 1..5 {
            group
                .join(
                    request("", &["range"]),
                    || format!("c{second}"),
                    &limits(),
                    second * 1_000,
                )
                .unwrap();
            // a's heartbeats keep its session (they are told to rejoin).
            let _ = group.heartbeat(&a, 1, second * 1_000);
            group.tick(second * 1_000);
        }
        assert!(
            group.join_answer(&b, before).is_none(),
            "still waiting for a"
        );
        let _ = group.heartbeat(&a, 1, 5_000);
        group.tick(5_011);
        let answer = group.join_answer(&b, before).unwrap().unwrap();
        assert_eq!(answer.generation, 2);
        assert_eq!(
            group.join_answer(&a, 1),
            Some(Err(MembershipError::UnknownMember))
        );
    }
}
