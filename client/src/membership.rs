//! Subscribe mode: the consumer as a member of its group. [`crate::Consumer::subscribe`]
//! starts it; each `poll` then keeps the membership current: it rejoins when the
//! coordinator asks (a rebalance), computes the assignment when it leads, and tells the
//! application's [`RebalanceListener`] what it gained, gave up or lost.
//!
//! A background heartbeat task keeps the member's session alive between polls. If the
//! application does not poll for `max_poll_interval`, the task leaves the group (the
//! member is presumed stuck, as in Kafka) and the next poll reports the partitions lost
//! and joins again.
//!
//! Eager assignors (`range`, `roundrobin`) revoke everything before a rebalance; the
//! `cooperative-sticky` assignor revokes only what moves (see [`crate::assignor`]).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flumen_protocol::wire::ErrorCode;
use tokio::sync::oneshot;

use crate::operation::{Heartbeat, LeaveGroup};
use crate::runtime::{Connection, Runtime};
use crate::{ClientError, TopicPartition};

/// Told of partition changes during rebalances. Called from `poll` (or `unsubscribe`), on the
/// application's task.
pub trait RebalanceListener: Send {
    /// Partitions newly assigned to this member (positions are set; reading starts).
    fn on_assigned(&mut self, _partitions: &[TopicPartition]) {}
    /// Partitions this member gives up in an orderly rebalance; with automatic commits
    /// their positions were committed just before.
    fn on_revoked(&mut self, _partitions: &[TopicPartition]) {}
    /// Partitions this member lost without a chance to commit (its session expired or
    /// it left for exceeding `max_poll_interval`); another member may already read them.
    fn on_lost(&mut self, _partitions: &[TopicPartition]) {}
}

/// A listener that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoListener;

#[cfg(test)]
mod tests {
    use super::matches_pattern;

    #[test]
    fn glob_patterns_match_topic_names() {
        assert!(matches_pattern("orders.*", "orders.eu"));
        assert!(matches_pattern("orders.*", "orders."));
        assert!(!matches_pattern("orders.*", "orders"));
        assert!(matches_pattern("*-events", "billing-events"));
        assert!(matches_pattern("log-??", "log-01"));
        assert!(!matches_pattern("log-??", "log-1"));
        assert!(matches_pattern("*", "anything"));
        assert!(
            !matches_pattern("*", "__consumer_offsets"),
            "internal topics never match"
        );
    }
}

impl RebalanceListener for NoListener {}

/// When the consumer commits its positions by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitMode {
    /// Only when the application calls `commit_sync`, `commit_offsets` or
    /// `commit_record`.
    Manual,
    /// At the start of each `poll`: what the previous poll returned counts as processed
    /// (batch commits, the default of most frameworks).
    AfterPoll,
    /// After each record handed to [`crate::Consumer::poll_each`]'s handler returns.
    AfterRecord,
    /// At most this often, from `poll` (Kafka's `enable.auto.commit`).
    Auto(Duration),
}

/// Membership state the heartbeat task shares with the consumer.
#[derive(Debug)]
pub(crate) struct Shared {
    pub member_id: String,
    pub generation: i32,
    /// Joined and synced: heartbeats are due.
    pub active: bool,
    /// The coordinator asked for a rejoin.
    pub rejoin: bool,
    /// The membership was lost (expired, or left for a slow poll).
    pub lost: bool,
    pub last_poll: Instant,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Self {
            member_id: String::new(),
            generation: -1,
            active: false,
            rejoin: true,
            lost: false,
            last_poll: Instant::now(),
        }
    }
}

/// Whether `topic` matches a glob `pattern` (`*`: any run of characters, `?`: one).
/// Internal topics (`__` prefix) never match.
pub fn matches_pattern(pattern: &str, topic: &str) -> bool {
    fn matches(pattern: &[char], topic: &[char]) -> bool {
        match (pattern.first(), topic.first()) {
            (None, None) => true,
            (Some('*'), _) => {
                matches(&pattern[1..], topic)
                    || (!topic.is_empty() && matches(pattern, &topic[1..]))
            }
            (Some('?'), Some(_)) => matches(&pattern[1..], &topic[1..]),
            (Some(expected), Some(found)) if expected == found => {
                matches(&pattern[1..], &topic[1..])
            }
            _ => false,
        }
    }
    let pattern: Vec<char> = pattern.chars().collect();
    let topic_chars: Vec<char> = topic.chars().collect();
    !topic.starts_with("__") && matches(&pattern, &topic_chars)
}

/// Locks the shared state (a poisoned lock still holds valid state: plain fields).
pub(crate) fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The background task keeping a member's session.
pub(crate) struct Heartbeater<R: Runtime> {
    pub runtime: std::marker::PhantomData<fn() -> R>,
    pub bootstrap: String,
    pub group: String,
    pub interval: Duration,
    pub max_poll_interval: Duration,
    /// Longest wait for an answer; a connection that gives none is dropped.
    pub request_timeout: Duration,
    pub shared: Arc<Mutex<Shared>>,
}

impl<R: Runtime> Heartbeater<R> {
    /// Heartbeats until `stopped` resolves.
    pub(crate) async fn run_until(self, stopped: oneshot::Receiver<()>) {
        tokio::select! {
            () = self.run() => {}
            _ = stopped => {}
        }
    }

    async fn run(&self) {
        let mut client: Option<R::Connection> = None;
        loop {
            R::sleep(self.interval).await;
            let (member, generation, active, idle) = {
                let shared = lock(&self.shared);
                let idle = shared.last_poll.elapsed();
                (
                    shared.member_id.clone(),
                    shared.generation,
                    shared.active,
                    idle,
                )
            };
            if !active || member.is_empty() {
                continue;
            }
            if client.is_none() {
                client = crate::runtime::connect::<R>(&self.bootstrap).await.ok();
            }
            let Some(connection) = client.as_mut() else {
                continue;
            };
            if idle > self.max_poll_interval {
                // The application is stuck: give its partitions to others.
                let leave = LeaveGroup {
                    group_id: &self.group,
                    member_id: &member,
                };
                let left =
                    crate::runtime::timeout::<R, _>(self.request_timeout, connection.run(leave))
                        .await;
                if left.is_none() {
                    client = None;
                }
                let mut shared = lock(&self.shared);
                shared.active = false;
                shared.lost = true;
                shared.rejoin = true;
                shared.member_id.clear();
                continue;
            }
            let beat = Heartbeat {
                group_id: &self.group,
                generation_id: generation,
                member_id: &member,
            };
            let answered =
                crate::runtime::timeout::<R, _>(self.request_timeout, connection.run(beat)).await;
            let Some(answered) = answered else {
                // No answer: a new connection next time.
                client = None;
                continue;
            };
            match answered {
                Ok(()) => {}
                Err(ClientError::Broker { code, .. }) => {
                    let mut shared = lock(&self.shared);
                    if shared.generation != generation {
                        continue;
                    }
                    shared.rejoin = true;
                    if code == ErrorCode::UnknownMemberId {
                        shared.lost = true;
                        shared.active = false;
                        shared.member_id.clear();
                    }
                }
                Err(_) => client = None,
            }
        }
    }
}

/// The consumer's side of its membership.
pub(crate) struct Member {
    pub topics: BTreeSet<String>,
    /// A subscription by pattern: the topics are those matching it, checked again on
    /// every `pattern_refresh`.
    pub pattern: Option<String>,
    pub last_refresh: Instant,
    pub listener: Box<dyn RebalanceListener>,
    pub shared: Arc<Mutex<Shared>>,
    /// Dropping it stops the heartbeat task.
    pub _stop_heartbeats: oneshot::Sender<()>,
    pub owned: Vec<TopicPartition>,
}
