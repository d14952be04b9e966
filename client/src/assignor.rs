//! Partition assignors: how a group's leader divides the subscribed topics' partitions
//! among the members. Pure functions of the members' subscriptions (and, for the sticky
//! one, what each owns now) and the topics' partition counts, so every leader computes
//! the same answer.
//!
//! - `range`: per topic, contiguous ranges of partitions over the members subscribed to
//!   it (sorted by id), the first `partitions % members` getting one more.
//! - `roundrobin`: every subscribed partition, sorted, dealt to the members in turn
//!   (skipping members not subscribed to its topic).
//! - `cooperative-sticky`: balanced counts, and members keep what they own unless the
//!   balance needs it elsewhere. A partition that must move is left unassigned in this
//!   rebalance: its owner revokes it (committing its position first) and rejoins, and
//!   the follow-up rebalance gives it to its new member, so two members never read it at
//!   once and nobody else stops.
//!
//! Wire formats (UTF-8, so DescribeGroups output is readable): a member's metadata is
//! `topics=a,b;owned=a:0,b:3`; an assignment is `a:0,a:1,b:3`. Malformed metadata counts
//! as subscribing to nothing.

use std::collections::{BTreeMap, BTreeSet};

use crate::TopicPartition;

/// The assignors this client implements, by protocol name.
pub const ASSIGNORS: [&str; 3] = ["range", "roundrobin", "cooperative-sticky"];

/// Whether an assignor moves partitions incrementally (no stop-the-world revocation).
pub fn is_cooperative(assignor: &str) -> bool {
    assignor == "cooperative-sticky"
}

/// What a member asks for and holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    /// Subscribed topics.
    pub topics: BTreeSet<String>,
    /// Partitions it owns now (for the sticky assignor).
    pub owned: Vec<TopicPartition>,
}

impl Subscription {
    /// The member metadata sent with JoinGroup.
    pub fn encode(&self) -> Vec<u8> {
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        format!(
            "topics={};owned={}",
            topics.join(","),
            encode_partitions(&self.owned)
        )
        .into_bytes()
    }

    /// Parses member metadata; `None` if malformed.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (topics, owned) = text.split_once(';')?;
        let topics = topics.strip_prefix("topics=")?;
        let owned = owned.strip_prefix("owned=")?;
        Some(Self {
            topics: topics
                .split(',')
                .filter(|topic| !topic.is_empty())
                .map(str::to_owned)
                .collect(),
            owned: decode_partitions(owned.as_bytes())?,
        })
    }
}

/// An assignment's wire form.
pub fn encode_partitions(partitions: &[TopicPartition]) -> String {
    let parts: Vec<String> = partitions
        .iter()
        .map(|partition| format!("{}:{}", partition.topic, partition.partition))
        .collect();
    parts.join(",")
}

/// Parses an assignment; `None` if malformed.
pub fn decode_partitions(bytes: &[u8]) -> Option<Vec<TopicPartition>> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.split(',')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (topic, partition) = part.rsplit_once(':')?;
            Some(TopicPartition::new(topic, partition.parse().ok()?))
        })
        .collect()
}

/// Divides the partitions of the subscribed topics (`partitions`: topic → count) among
/// `members` (id → subscription) with `assignor`. Every member gets an entry.
pub fn assign(
    assignor: &str,
    members: &BTreeMap<String, Subscription>,
    partitions: &BTreeMap<String, u32>,
) -> BTreeMap<String, Vec<TopicPartition>> {
    let mut assignment: BTreeMap<String, Vec<TopicPartition>> =
        members.keys().map(|id| (id.clone(), Vec::new())).collect();
    match assignor {
        "roundrobin" => round_robin(members, partitions, &mut assignment),
        "cooperative-sticky" => sticky(members, partitions, &mut assignment),
        _ => range(members, partitions, &mut assignment),
    }
    for owned in assignment.values_mut() {
        owned.sort();
    }
    assignment
}

fn range(
    members: &BTreeMap<String, Subscription>,
    partitions: &BTreeMap<String, u32>,
    assignment: &mut BTreeMap<String, Vec<TopicPartition>>,
) {
    for (topic, &count) in partitions {
        let subscribed: Vec<&String> = members
            .iter()
            .filter(|(_, subscription)| subscription.topics.contains(topic))
            .map(|(id, _)| id)
            .collect();
        if subscribed.is_empty() {
            continue;
        }
        let (share, extra) = (
            count as usize / subscribed.len(),
            count as usize % subscribed.len(),
        );
        let mut next = 0u32;
        for (index, id) in subscribed.iter().enumerate() {
            let take = share + usize::from(index < extra);
            for partition in next..next + take as u32 {
                assignment
                    .get_mut(*id)
                    .expect("every member has an entry")
                    .push(TopicPartition::new(topic, partition));
            }
            next += take as u32;
        }
    }
}

fn all_partitions(partitions: &BTreeMap<String, u32>) -> Vec<TopicPartition> {
    partitions
        .iter()
        .flat_map(|(topic, &count)| {
            (0..count).map(move |partition| TopicPartition::new(topic, partition))
        })
        .collect()
}

fn round_robin(
    members: &BTreeMap<String, Subscription>,
    partitions: &BTreeMap<String, u32>,
    assignment: &mut BTreeMap<String, Vec<TopicPartition>>,
) {
    let ids: Vec<&String> = members.keys().collect();
    let mut turn = 0;
    for partition in all_partitions(partitions) {
        for _ in 0..ids.len() {
            let id = ids[turn % ids.len()];
            turn += 1;
            if members[id].topics.contains(&partition.topic) {
                assignment
                    .get_mut(id)
                    .expect("every member has an entry")
                    .push(partition);
                break;
            }
        }
    }
}

fn sticky(
    members: &BTreeMap<String, Subscription>,
    partitions: &BTreeMap<String, u32>,
    assignment: &mut BTreeMap<String, Vec<TopicPartition>>,
) {
    let eligible =
        |id: &String, partition: &TopicPartition| members[id].topics.contains(&partition.topic);
    let all = all_partitions(partitions);
    let subscribed_total = all
        .iter()
        .filter(|partition| members.keys().any(|id| eligible(id, partition)))
        .count();
    let quota = subscribed_total.div_ceil(members.len().max(1));
    let exists: BTreeSet<&TopicPartition> = all.iter().collect();
    // Keep what members own, up to the quota, first come first kept.
    let mut taken: BTreeSet<TopicPartition> = BTreeSet::new();
    for (id, subscription) in members {
        for owned in &subscription.owned {
            if !exists.contains(owned) || !eligible(id, owned) || taken.contains(owned) {
                continue;
            }
            taken.insert(owned.clone());
            let kept = assignment.get_mut(id).expect("every member has an entry");
            // Over its quota the owner must give it up first: nobody gets it this round.
            if kept.len() < quota {
                kept.push(owned.clone());
            }
        }
    }
    // Free partitions go to the least loaded eligible member; partitions still owned by
    // another member wait for the follow-up rebalance.
    for partition in all {
        if taken.contains(&partition) {
            continue;
        }
        let target = assignment
            .iter()
            .filter(|(id, _)| eligible(id, &partition))
            .min_by_key(|(id, owned)| (owned.len(), (*id).clone()))
            .map(|(id, _)| id.clone());
        if let Some(id) = target {
            assignment.get_mut(&id).expect("present").push(partition);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(member, subscribed topics, owned partitions)`.
    type Spec<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, u32)]);

    fn members(specs: &[Spec<'_>]) -> BTreeMap<String, Subscription> {
        specs
            .iter()
            .map(|(id, topics, owned)| {
                let subscription = Subscription {
                    topics: topics.iter().map(|topic| (*topic).to_owned()).collect(),
                    owned: owned
                        .iter()
                        .map(|(topic, partition)| TopicPartition::new(*topic, *partition))
                        .collect(),
                };
                ((*id).to_owned(), subscription)
            })
            .collect()
    }

    fn counts(assignment: &BTreeMap<String, Vec<TopicPartition>>) -> Vec<usize> {
        assignment.values().map(Vec::len).collect()
    }

    /// Every partition of `topics` assigned exactly once.
    fn exactly_once(assignment: &BTreeMap<String, Vec<TopicPartition>>, total: usize) {
        let all: BTreeSet<&TopicPartition> = assignment.values().flatten().collect();
        let listed: usize = assignment.values().map(Vec::len).sum();
        assert_eq!((all.len(), listed), (total, total), "{assignment:?}");
    }

    #[test]
    fn range_and_round_robin_cover_every_partition_once_and_balance() {
        let partitions: BTreeMap<String, u32> =
            [("orders".to_owned(), 12), ("audit".to_owned(), 2)].into();
        let three = members(&[
            ("a", &["orders", "audit"], &[]),
            ("b", &["orders", "audit"], &[]),
            ("c", &["orders"], &[]),
        ]);
        let range = assign("range", &three, &partitions);
        exactly_once(&range, 14);
        assert_eq!(range["a"].first(), Some(&TopicPartition::new("audit", 0)));
        assert!(
            range["c"]
                .iter()
                .all(|partition| partition.topic == "orders"),
            "c is not subscribed to audit"
        );
        let robin = assign("roundrobin", &three, &partitions);
        exactly_once(&robin, 14);
        let mut sizes = counts(&robin);
        sizes.sort();
        assert!(sizes[2] - sizes[0] <= 1, "{sizes:?}");
    }

    #[test]
    fn sticky_keeps_owned_partitions_and_holds_back_those_that_must_move() {
        let partitions: BTreeMap<String, u32> = [("orders".to_owned(), 12)].into();
        // a and b own 6 each; c joins: 2 of each must move, and only those.
        let owned_a: Vec<(&str, u32)> = (0..6).map(|partition| ("orders", partition)).collect();
        let owned_b: Vec<(&str, u32)> = (6..12).map(|partition| ("orders", partition)).collect();
        let group = members(&[
            ("a", &["orders"], &owned_a),
            ("b", &["orders"], &owned_b),
            ("c", &["orders"], &[]),
        ]);
        let first = assign("cooperative-sticky", &group, &partitions);
        assert_eq!(
            counts(&first),
            vec![4, 4, 0],
            "moving partitions wait a round"
        );
        assert!(
            first["a"].iter().all(|partition| partition.partition < 6),
            "a kept its own"
        );
        // Follow-up: a and b now own 4 each; the freed 4 go to c.
        let owned_a: Vec<(&str, u32)> =
            first["a"].iter().map(|p| ("orders", p.partition)).collect();
        let owned_b: Vec<(&str, u32)> =
            first["b"].iter().map(|p| ("orders", p.partition)).collect();
        let group = members(&[
            ("a", &["orders"], &owned_a),
            ("b", &["orders"], &owned_b),
            ("c", &["orders"], &[]),
        ]);
        let second = assign("cooperative-sticky", &group, &partitions);
        exactly_once(&second, 12);
        assert_eq!(counts(&second), vec![4, 4, 4]);
        assert_eq!(
            second["a"], first["a"],
            "nothing moved that did not have to"
        );
    }

    #[test]
    fn metadata_and_assignments_round_trip_and_garbage_is_rejected() {
        let subscription = Subscription {
            topics: ["a".to_owned(), "b".to_owned()].into(),
            owned: vec![TopicPartition::new("a", 0), TopicPartition::new("b", 3)],
        };
        assert_eq!(
            Subscription::decode(&subscription.encode()),
            Some(subscription)
        );
        assert_eq!(Subscription::decode(b"\xff\xfe"), None);
        assert_eq!(Subscription::decode(b"topics=a"), None);
        assert_eq!(Subscription::decode(b"topics=a;owned=a:x"), None);
        let partitions = vec![TopicPartition::new("t:x", 2)];
        assert_eq!(
            decode_partitions(encode_partitions(&partitions).as_bytes()),
            Some(partitions)
        );
        assert_eq!(decode_partitions(b""), Some(vec![]));
    }
}
