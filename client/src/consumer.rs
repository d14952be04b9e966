//! The consumer, on tokio, in partition-assignment mode: the application names the
//! partitions ([`Consumer::assign`]) and reads them with [`Consumer::poll`]; it can move
//! ([`Consumer::seek`]), ask where it is ([`Consumer::position`]) and stop and restart
//! fetching a partition ([`Consumer::pause`], [`Consumer::resume`]). Consumer groups and
//! committed offsets build on this.
//!
//! Prefetching: each assigned, unpaused partition has a background fetch task with its
//! own connection to the partition's shard. It long-polls the broker and hands what it
//! read to the consumer over a bounded channel, then fetches the next chunk while the
//! application processes the current one. Memory is bounded: at most
//! `(2 × partitions + PREFETCH_CHANNEL_CHUNKS) × fetch_max_bytes` of fetched data is held
//! (per partition one chunk buffered and one waiting in its task, plus the channel).
//!
//! Records are zero-copy: [`ConsumerRecords`] keeps the fetched response frames and
//! [`ConsumerRecordView`] reads keys, values and headers in place. Each batch is
//! validated (CRC and archive) when it arrives; iterating checks its archive again (not
//! its CRC: the bytes have not changed), which keeps the code free of unchecked access at
//! the cost of a second pass over the records' headers, already in cache.
//!
//! Positions: a partition's position is the offset of the next record `poll` returns.
//! A newly assigned partition starts at its group's committed position (with a
//! `group_id`), else where `auto_offset_reset` says (earliest or latest); with
//! [`OffsetReset::None`] it has no position until [`Consumer::seek`], and `poll` fails
//! with [`ConsumeError::NoPosition`]. A fetch outside the log (data removed by
//! retention, or a seek past the end) resets the same way.
//!
//! Groups: with a `group_id`, [`Consumer::subscribe`] (or `subscribe_pattern`) makes the
//! consumer a member that shares the topics' partitions with the group's other members
//! (see [`crate::membership`]); commits follow [`CommitMode`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flumen_protocol::record::RecordView;
use flumen_protocol::wire::messages::{EARLIEST_TIMESTAMP, LATEST_TIMESTAMP};
use flumen_protocol::wire::ErrorCode;
use std::collections::BTreeSet;
use std::sync::Mutex;

use tokio::sync::{mpsc, oneshot};

use crate::membership::{lock, CommitMode, Heartbeater, Member, RebalanceListener, Shared};
#[cfg(feature = "glommio")]
use crate::runtime::Glommio;
use crate::runtime::{Calls, Connection, Runtime, Tokio};
use crate::{ClientError, Fetched};

/// Fetched chunks the prefetch channel holds beyond one per partition.
pub const PREFETCH_CHANNEL_CHUNKS: usize = 16;

/// With `fetch_max_wait` 0, the pause after a fetch that found nothing.
const EMPTY_FETCH_PAUSE: Duration = Duration::from_millis(1);

/// Runs `$call` on the consumer's admin connection, waiting at most `$limit` for the
/// answer; a connection that failed or did not answer is dropped (the next call
/// reconnects).
macro_rules! admin_call {
    ($consumer:ident, $limit:expr, |$admin:ident| $call:expr) => {{
        let limit = $limit;
        let $admin = $consumer.admin().await?;
        let answered = crate::runtime::timeout::<R, _>(limit, $call).await;
        $consumer
            .keep_admin(answered.unwrap_or_else(|| Err(crate::producer::worker::timed_out(limit))))
    }};
}

/// A topic and partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
}

impl TopicPartition {
    /// `topic`-`partition`.
    pub fn new(topic: impl Into<String>, partition: u32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}-{}", self.topic, self.partition)
    }
}

/// Where a partition without a valid position starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    /// At the log start.
    Earliest,
    /// At the log end: only records produced from now on.
    Latest,
    /// Nowhere: `poll` fails until the application seeks.
    None,
}

/// Where to move a partition's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekTo {
    /// The first record still in the log.
    Beginning,
    /// The log end (the next record produced).
    End,
    /// An offset.
    Offset(u64),
    /// The first record with a timestamp at or after this time (ms since the epoch); the
    /// log end if there is none.
    Timestamp(i64),
}

/// Consumer settings.
///
/// ```
/// use std::time::Duration;
/// use flumen_client::{ConsumerConfig, OffsetReset};
///
/// let mut config = ConsumerConfig::new("127.0.0.1:9292");
/// config.auto_offset_reset = OffsetReset::Latest;
/// config.max_poll_records = 1_000;
/// config.fetch_max_wait = Duration::from_millis(100);
/// ```
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// A broker address.
    pub bootstrap: String,
    /// Bytes fetched per partition per request (at least one batch comes back).
    pub fetch_max_bytes: u32,
    /// How long the broker holds a fetch open when there is no new data.
    pub fetch_max_wait: Duration,
    /// Most records one `poll` returns.
    pub max_poll_records: usize,
    /// Where partitions without a valid position start.
    pub auto_offset_reset: OffsetReset,
    /// The consumer group whose committed positions assigned partitions start from, and
    /// that [`Consumer::commit_sync`] commits to. `None`: positions are not stored.
    pub group_id: Option<String>,
    /// When positions are committed without being asked (group members and assigned
    /// consumers with a `group_id`).
    pub commit_mode: CommitMode,
    /// Group members: removed if the coordinator hears nothing for this long.
    pub session_timeout: Duration,
    /// Group members: how often the background task heartbeats.
    pub heartbeat_interval: Duration,
    /// Group members: longest time between polls before the member is presumed stuck
    /// and leaves (also how long a rebalance waits for it to rejoin).
    pub max_poll_interval: Duration,
    /// Group members: assignors, preferred first (see [`crate::assignor::ASSIGNORS`]).
    pub assignors: Vec<String>,
    /// Pattern subscriptions: how often the topic list is checked for new matches.
    pub pattern_refresh: Duration,
    /// First pause before a fetch task reconnects; doubles up to `retry_backoff_max`.
    pub retry_backoff: Duration,
    /// Longest pause before a reconnect.
    pub retry_backoff_max: Duration,
    /// How long the broker may take to answer a request (beyond `fetch_max_wait` for a
    /// fetch, and the rebalance for a join) before the connection is dropped and the
    /// request tried again or failed.
    pub request_timeout: Duration,
}

impl ConsumerConfig {
    /// Defaults for `bootstrap`: 1 MiB fetches, 500 ms long poll, 500 records per poll,
    /// start at the earliest offset.
    pub fn new(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            fetch_max_bytes: 1 << 20,
            fetch_max_wait: Duration::from_millis(500),
            max_poll_records: 500,
            auto_offset_reset: OffsetReset::Earliest,
            group_id: None,
            commit_mode: CommitMode::Auto(Duration::from_secs(5)),
            session_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(3),
            max_poll_interval: Duration::from_secs(300),
            assignors: vec!["range".into(), "cooperative-sticky".into()],
            pattern_refresh: Duration::from_secs(5),
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(1),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// What can go wrong consuming.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// Talking to the broker failed (or it refused).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The partition has no position and `auto_offset_reset` is `None`.
    #[error("{0} has no position; seek first (auto_offset_reset is None)")]
    NoPosition(TopicPartition),
    /// The position is outside the log and `auto_offset_reset` is `None`.
    #[error("offset {offset} of {partition} is outside the log")]
    OffsetOutOfRange {
        /// The partition.
        partition: TopicPartition,
        /// The position that is no longer (or not yet) in the log.
        offset: u64,
    },
    /// The partition is not assigned to this consumer.
    #[error("{0} is not assigned to this consumer")]
    NotAssigned(TopicPartition),
    /// Committing needs a `group_id`.
    #[error("no group_id is configured: nothing to commit to")]
    NoGroup,
    /// The broker refused a position of a commit.
    #[error("committing {partition}: {code:?}: {message}")]
    CommitFailed {
        /// The partition.
        partition: TopicPartition,
        /// The broker's code.
        code: ErrorCode,
        /// The broker's message.
        message: String,
    },
    /// The broker refused fetching the partition (unknown topic or partition, storage
    /// error); the consumer keeps trying.
    #[error("fetching {partition}: {code:?}: {message}")]
    Fetch {
        /// The partition.
        partition: TopicPartition,
        /// The broker's code.
        code: ErrorCode,
        /// The broker's message.
        message: String,
    },
    /// What the broker sent for the partition failed the client's checks (a batch's
    /// CRC or format, a malformed response); the consumer keeps trying.
    #[error("fetching {partition}: {message}")]
    Damaged {
        /// The partition.
        partition: TopicPartition,
        /// What failed.
        message: String,
    },
}

impl ConsumeError {
    /// Whether a commit was refused because the group rebalanced (or this member left
    /// it): the partitions' next owner continues from the last accepted commit, so the
    /// records since are read again (at least once).
    pub fn is_rebalance(&self) -> bool {
        matches!(
            self,
            ConsumeError::CommitFailed {
                code: ErrorCode::RebalanceInProgress
                    | ErrorCode::IllegalGeneration
                    | ErrorCode::UnknownMemberId,
                ..
            }
        )
    }
}

/// A fetched response and the offset after its last record.
pub(crate) struct Chunk {
    fetched: Arc<Fetched>,
    next_offset: u64,
    /// Size of the response frame.
    bytes: usize,
}

/// What a fetch task reports.
pub(crate) struct Event {
    partition: TopicPartition,
    generation: u64,
    kind: EventKind,
}

pub(crate) enum EventKind {
    Fetched(Chunk),
    OutOfRange(u64),
    Refused(ErrorCode, String),
    Damaged(String),
}

struct Assigned {
    position: Option<u64>,
    paused: bool,
    /// A fresh number whenever the fetch task is replaced (and for every assignment),
    /// so the results of an earlier task, still in the channel, are dropped: also those
    /// of a task of an earlier assignment of the same partition.
    generation: u64,
    /// Dropping it stops the fetch task.
    task: Option<oneshot::Sender<()>>,
    buffered: VecDeque<Chunk>,
    /// The position is still to be found (and no fetch task runs meanwhile): `poll`
    /// tries until it succeeds.
    pending: Option<Pending>,
}

/// How a partition's position is still to be found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// Newly assigned to a group member: the group's committed offset, else
    /// `auto_offset_reset`.
    Start,
    /// Out of range: where `auto_offset_reset` says.
    Reset,
}

/// Fetch task generations, unique in the process.
static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn fresh_generation() -> u64 {
    GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Assigned {
    fn new(position: Option<u64>) -> Self {
        Self {
            position,
            paused: false,
            generation: fresh_generation(),
            task: None,
            buffered: VecDeque::new(),
            pending: None,
        }
    }

    fn stop(&mut self) {
        drop(self.task.take());
        self.buffered.clear();
        self.generation = fresh_generation();
    }
}

/// A consumer of assigned partitions. On tokio (the default, `Consumer`) it is `Send`;
/// use it from one task at a time. [`GlommioConsumer`] runs on a glommio executor.
///
/// ```no_run
/// use std::time::Duration;
/// use flumen_client::{Consumer, ConsumerConfig, TopicPartition};
///
/// # async fn example() -> Result<(), flumen_client::ConsumeError> {
/// let mut consumer = Consumer::new(ConsumerConfig::new("127.0.0.1:9292"));
/// consumer.assign(&[TopicPartition::new("orders", 0)]).await?;
/// let records = consumer.poll(Duration::from_secs(1)).await?;
/// for record in records.iter() {
///     println!("{}@{}: {:?}", record.partition(), record.offset(), record.value());
/// }
/// # Ok(())
/// # }
/// ```
pub struct Consumer<R: Runtime = Tokio> {
    config: ConsumerConfig,
    assigned: HashMap<TopicPartition, Assigned>,
    events: mpsc::Receiver<Event>,
    sender: mpsc::Sender<Event>,
    admin: Option<R::Connection>,
    /// Rotates which partition `poll` serves first, for fairness.
    rotation: usize,
    /// After a failure to find pending positions, when to try again.
    pending_retry_at: Instant,
    /// In subscribe mode: the group membership.
    member: Option<Member>,
    /// When the commit mode last committed.
    last_commit: Instant,
    /// `commit_async` requests, sent at the start of the next `poll` (or `unsubscribe`).
    pending_commits: Vec<PendingCommit>,
}

/// A `commit_async` request.
type PendingCommit = (
    Vec<(TopicPartition, u64)>,
    Box<dyn FnOnce(Result<(), ConsumeError>) + Send>,
);

/// The consumer on a glommio executor (feature `glommio`): its fetch tasks and
/// connections stay on the executor that created it. Same API as [`Consumer`], created
/// with [`GlommioConsumer::new_local`].
#[cfg(feature = "glommio")]
pub type GlommioConsumer = Consumer<Glommio>;

impl<R: Runtime> std::fmt::Debug for Consumer<R> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Consumer")
            .field("bootstrap", &self.config.bootstrap)
            .field("assigned", &self.assignment())
            .finish()
    }
}

impl<R: Runtime> Drop for Consumer<R> {
    fn drop(&mut self) {
        for assigned in self.assigned.values_mut() {
            assigned.stop();
        }
    }
}

impl Consumer<Tokio> {
    /// A consumer with nothing assigned, on tokio; it connects when it needs to.
    pub fn new(config: ConsumerConfig) -> Self {
        Self::create(config)
    }
}

#[cfg(feature = "glommio")]
impl Consumer<Glommio> {
    /// A consumer with nothing assigned, on the current glommio executor.
    pub fn new_local(config: ConsumerConfig) -> Self {
        Self::create(config)
    }
}

impl<R: Runtime> Consumer<R> {
    fn create(config: ConsumerConfig) -> Self {
        let (sender, events) = mpsc::channel(PREFETCH_CHANNEL_CHUNKS);
        Self {
            config,
            assigned: HashMap::new(),
            events,
            sender,
            admin: None,
            rotation: 0,
            member: None,
            last_commit: Instant::now(),
            pending_retry_at: Instant::now(),
            pending_commits: Vec::new(),
        }
    }

    /// Joins the group (`group_id`) subscribed to `topics`: the group's members share
    /// the topics' partitions, and `poll` keeps this member's share current through
    /// rebalances, telling `listener`. Replaces any earlier subscription or assignment.
    pub async fn subscribe(
        &mut self,
        topics: &[&str],
        listener: impl RebalanceListener + 'static,
    ) -> Result<(), ConsumeError> {
        let group = self.config.group_id.clone().ok_or(ConsumeError::NoGroup)?;
        self.unsubscribe().await;
        self.assign(&[]).await?;
        let shared = Arc::new(Mutex::new(Shared::new()));
        let (stop, stopped) = oneshot::channel();
        R::spawn_heartbeater(
            Heartbeater {
                runtime: std::marker::PhantomData,
                bootstrap: self.config.bootstrap.clone(),
                group,
                interval: self.config.heartbeat_interval,
                max_poll_interval: self.config.max_poll_interval,
                request_timeout: self.config.request_timeout,
                shared: Arc::clone(&shared),
            },
            stopped,
        );
        self.member = Some(Member {
            topics: topics.iter().map(|topic| (*topic).to_owned()).collect(),
            pattern: None,
            last_refresh: Instant::now(),
            listener: Box::new(listener),
            shared,
            _stop_heartbeats: stop,
            owned: Vec::new(),
        });
        Ok(())
    }

    /// Like [`Consumer::subscribe`], to every topic whose name matches a glob `pattern`
    /// (`*` any characters, `?` one; internal topics never match). Topics created later
    /// join the subscription within `pattern_refresh`.
    pub async fn subscribe_pattern(
        &mut self,
        pattern: &str,
        listener: impl RebalanceListener + 'static,
    ) -> Result<(), ConsumeError> {
        let topics = self.matching_topics(pattern).await?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        self.subscribe(&names, listener).await?;
        if let Some(member) = self.member.as_mut() {
            member.pattern = Some(pattern.to_owned());
        }
        Ok(())
    }

    async fn matching_topics(&mut self, pattern: &str) -> Result<BTreeSet<String>, ConsumeError> {
        let limit = self.config.request_timeout;
        let metadata = admin_call!(self, limit, |admin| admin.metadata(None))?;
        Ok(metadata
            .topics
            .into_iter()
            .map(|topic| topic.name)
            .filter(|name| crate::membership::matches_pattern(pattern, name))
            .collect())
    }

    /// Leaves the group (committing first, unless commits are manual) and stops reading.
    /// Dropping a subscribed consumer without this leaves its session to expire.
    pub async fn unsubscribe(&mut self) {
        self.send_pending_commits().await;
        let Some(member) = self.member.as_ref() else {
            return;
        };
        let (member_id, active) = {
            let shared = lock(&member.shared);
            (shared.member_id.clone(), shared.active)
        };
        if active && self.config.commit_mode != CommitMode::Manual {
            let _ = self.commit_sync().await;
        }
        if let Some(mut member) = self.member.take() {
            let owned = std::mem::take(&mut member.owned);
            if !owned.is_empty() {
                member.listener.on_revoked(&owned);
            }
        }
        if !member_id.is_empty() {
            if let Some(group) = self.config.group_id.clone() {
                let leave = crate::operation::LeaveGroup {
                    group_id: &group,
                    member_id: &member_id,
                };
                let limit = self.config.request_timeout;
                if let Ok(admin) = self.admin().await {
                    let left = crate::runtime::timeout::<R, _>(limit, admin.run(leave)).await;
                    if !matches!(left, Some(Ok(_) | Err(ClientError::Broker { .. }))) {
                        self.admin = None;
                    }
                }
            }
        }
        let _ = self.assign(&[]).await;
    }

    /// Commits the position after `offset` of `topic`-`partition` (after each record,
    /// when the application commits record by record).
    pub async fn commit_record(
        &mut self,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<(), ConsumeError> {
        self.commit_offsets(&[(TopicPartition::new(topic, partition), offset + 1)])
            .await
    }

    /// Polls once and hands each record (owned) to `handle`, in order, awaiting it; with
    /// [`CommitMode::AfterRecord`] the position after each record is committed as soon as
    /// `handle` returns, so a crash re-reads at most the record being handled. Returns the
    /// number of records handled.
    pub async fn poll_each<F, Fut>(
        &mut self,
        timeout: Duration,
        mut handle: F,
    ) -> Result<usize, ConsumeError>
    where
        F: FnMut(ConsumerRecord) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let records: Vec<ConsumerRecord> = self
            .poll(timeout)
            .await?
            .iter()
            .map(|record| record.to_owned())
            .collect();
        let count = records.len();
        for record in records {
            let (topic, partition, offset) =
                (record.topic.clone(), record.partition, record.offset);
            handle(record).await;
            if self.config.commit_mode == CommitMode::AfterRecord {
                self.commit_record(&topic, partition, offset).await?;
            }
        }
        Ok(count)
    }

    /// Commits the current positions without waiting: the commit is sent at the start of
    /// the next `poll` (or at `unsubscribe`), and `callback` gets its outcome there, on
    /// the polling task (as Kafka's `commitAsync` callbacks run inside `poll`).
    pub fn commit_async(
        &mut self,
        callback: impl FnOnce(Result<(), ConsumeError>) + Send + 'static,
    ) {
        let positions: Vec<(TopicPartition, u64)> = self
            .assigned
            .iter()
            .filter_map(|(partition, assigned)| Some((partition.clone(), assigned.position?)))
            .collect();
        self.pending_commits.push((positions, Box::new(callback)));
    }

    /// Sends the queued `commit_async` requests, oldest first.
    async fn send_pending_commits(&mut self) {
        for (positions, callback) in std::mem::take(&mut self.pending_commits) {
            callback(self.commit_offsets(&positions).await);
        }
    }

    /// Keeps the membership and the commit mode current; called by `poll`.
    async fn maintain(&mut self) -> Result<(), ConsumeError> {
        self.send_pending_commits().await;
        let due = match self.config.commit_mode {
            CommitMode::Manual | CommitMode::AfterRecord => false,
            CommitMode::AfterPoll => true,
            CommitMode::Auto(interval) => self.last_commit.elapsed() >= interval,
        };
        if due && self.config.group_id.is_some() {
            match self.commit_sync().await {
                // A rebalance began (or this member's generation is gone): rejoining
                // below settles it, even if the heartbeat has not noticed yet.
                Err(error) if error.is_rebalance() => {
                    if let Some(member) = &self.member {
                        lock(&member.shared).rejoin = true;
                    }
                }
                other => other?,
            }
            self.last_commit = Instant::now();
        }
        let refresh = self.member.as_ref().and_then(|member| {
            let due = member.last_refresh.elapsed() >= self.config.pattern_refresh;
            member.pattern.clone().filter(|_| due)
        });
        if let Some(pattern) = refresh {
            let topics = self.matching_topics(&pattern).await?;
            let member = self.member.as_mut().expect("subscribed");
            member.last_refresh = Instant::now();
            if topics != member.topics {
                member.topics = topics;
                lock(&member.shared).rejoin = true;
            }
        }
        let Some(member) = self.member.as_mut() else {
            return Ok(());
        };
        let (lost, rejoin) = {
            let mut shared = lock(&member.shared);
            shared.last_poll = Instant::now();
            (std::mem::take(&mut shared.lost), shared.rejoin)
        };
        if lost {
            let owned = std::mem::take(&mut member.owned);
            if !owned.is_empty() {
                member.listener.on_lost(&owned);
            }
            self.assign(&[]).await?;
        }
        if rejoin {
            self.rejoin().await?;
        }
        Ok(())
    }

    /// One rebalance from this member's side: join, (lead,) sync, apply.
    async fn rejoin(&mut self) -> Result<(), ConsumeError> {
        let group = self.config.group_id.clone().ok_or(ConsumeError::NoGroup)?;
        let config = self.config.clone();
        // Incremental only if whatever assignor the group picks is: all of ours are.
        let cooperative = !config.assignors.is_empty()
            && config
                .assignors
                .iter()
                .all(|assignor| crate::assignor::is_cooperative(assignor));
        if !cooperative {
            // Eager: give everything up first (committed, unless commits are manual).
            if config.commit_mode != CommitMode::Manual {
                let _ = self.commit_sync().await;
            }
            let member = self.member.as_mut().expect("subscribed");
            let owned = std::mem::take(&mut member.owned);
            if !owned.is_empty() {
                member.listener.on_revoked(&owned);
            }
            self.assign(&[]).await?;
        }
        loop {
            let member = self.member.as_ref().expect("subscribed");
            let subscription = crate::assignor::Subscription {
                topics: member.topics.clone(),
                owned: member.owned.clone(),
            };
            let member_id = lock(&member.shared).member_id.clone();
            let metadata = subscription.encode();
            let protocols: Vec<(&str, &[u8])> = config
                .assignors
                .iter()
                .map(|name| (name.as_str(), metadata.as_slice()))
                .collect();
            let join = crate::operation::JoinGroup {
                group_id: &group,
                member_id: &member_id,
                session_timeout_ms: config.session_timeout.as_millis().min(u32::MAX as u128) as u32,
                rebalance_timeout_ms: config.max_poll_interval.as_millis().min(u32::MAX as u128)
                    as u32,
                protocol_type: "consumer",
                protocols: &protocols,
            };
            // The broker holds a join until the rebalance completes.
            let limit = config
                .max_poll_interval
                .saturating_add(config.request_timeout);
            let joined = match admin_call!(self, limit, |admin| admin.run(join)) {
                Ok(joined) => joined,
                Err(error) => {
                    self.retry_join(error)?;
                    continue;
                }
            };
            // Keep the id now: if the sync is refused, the rejoin must reuse it, or the
            // group would wait for a member that never comes back.
            lock(&self.member.as_ref().expect("subscribed").shared).member_id =
                joined.member_id.clone();
            let assignments = if joined.leader == joined.member_id {
                self.lead(&joined).await?
            } else {
                Vec::new()
            };
            let pairs: Vec<(&str, &[u8])> = assignments
                .iter()
                .map(|(member, assignment)| (member.as_str(), assignment.as_slice()))
                .collect();
            let sync = crate::operation::SyncGroup {
                group_id: &group,
                generation_id: joined.generation_id,
                member_id: &joined.member_id,
                assignments: &pairs,
            };
            let limit = config
                .max_poll_interval
                .saturating_add(config.request_timeout);
            let assignment = match admin_call!(self, limit, |admin| admin.run(sync)) {
                Ok(assignment) => assignment,
                Err(error) => {
                    self.retry_join(error)?;
                    continue;
                }
            };
            let new = crate::assignor::decode_partitions(&assignment).ok_or_else(|| {
                ConsumeError::Client(ClientError::Protocol("malformed assignment".into()))
            })?;
            return self
                .apply(joined.member_id, joined.generation_id, new)
                .await;
        }
    }

    /// Whether a failed join or sync is retried: a new rebalance or a newer generation
    /// means join again; an unknown member joins again as a new one. Anything else fails.
    fn retry_join(&mut self, error: ConsumeError) -> Result<(), ConsumeError> {
        match error {
            ConsumeError::Client(ClientError::Broker {
                code: ErrorCode::RebalanceInProgress | ErrorCode::IllegalGeneration,
                ..
            }) => Ok(()),
            ConsumeError::Client(ClientError::Broker {
                code: ErrorCode::UnknownMemberId,
                ..
            }) => {
                let member = self.member.as_ref().expect("subscribed");
                lock(&member.shared).member_id.clear();
                Ok(())
            }
            other => Err(other),
        }
    }

    /// As leader: every member's assignment, from their subscriptions.
    async fn lead(
        &mut self,
        joined: &crate::JoinGroupResponse,
    ) -> Result<Vec<(String, Vec<u8>)>, ConsumeError> {
        let members: std::collections::BTreeMap<String, crate::assignor::Subscription> = joined
            .members
            .iter()
            .map(|member| {
                // Malformed metadata subscribes to nothing; the member gets nothing.
                let subscription =
                    crate::assignor::Subscription::decode(&member.metadata).unwrap_or_default();
                (member.member_id.clone(), subscription)
            })
            .collect();
        let topics: BTreeSet<&String> =
            members.values().flat_map(|member| &member.topics).collect();
        let mut counts = std::collections::BTreeMap::new();
        for topic in topics {
            let limit = self.config.request_timeout;
            let metadata =
                admin_call!(self, limit, |admin| admin.metadata(Some(&[topic.as_str()])))?;
            if let Some(found) = metadata
                .topics
                .first()
                .filter(|found| found.outcome.error_code == 0)
            {
                counts.insert(topic.clone(), found.partitions.len() as u32);
            }
        }
        let assignment = crate::assignor::assign(&joined.protocol_name, &members, &counts);
        Ok(assignment
            .into_iter()
            .map(|(member, partitions)| {
                (
                    member,
                    crate::assignor::encode_partitions(&partitions).into_bytes(),
                )
            })
            .collect())
    }

    /// Applies a synced assignment: revokes what left (cooperative), assigns, tells the
    /// listener, and resumes heartbeats.
    async fn apply(
        &mut self,
        member_id: String,
        generation: i32,
        new: Vec<TopicPartition>,
    ) -> Result<(), ConsumeError> {
        let owned = self.member.as_ref().expect("subscribed").owned.clone();
        let revoked: Vec<TopicPartition> = owned
            .iter()
            .filter(|partition| !new.contains(partition))
            .cloned()
            .collect();
        let added: Vec<TopicPartition> = new
            .iter()
            .filter(|partition| !owned.contains(partition))
            .cloned()
            .collect();
        {
            let member = self.member.as_ref().expect("subscribed");
            let mut shared = lock(&member.shared);
            shared.member_id = member_id;
            shared.generation = generation;
            shared.active = true;
            // Cooperative: what was revoked is assigned elsewhere in a follow-up round.
            shared.rejoin = !revoked.is_empty();
        }
        if !revoked.is_empty() {
            if self.config.commit_mode != CommitMode::Manual {
                let positions: Vec<(TopicPartition, u64)> = revoked
                    .iter()
                    .filter_map(|partition| {
                        Some((partition.clone(), self.assigned.get(partition)?.position?))
                    })
                    .collect();
                let _ = self.commit_offsets(&positions).await;
            }
            self.member
                .as_mut()
                .expect("subscribed")
                .listener
                .on_revoked(&revoked);
        }
        // The new partitions are the member's now; their positions (the group's
        // committed offsets) are found by the poll that follows, or by later ones if
        // that fails, without another rebalance, and the kept partitions' records go
        // on meanwhile.
        self.assign_pending(&new);
        let member = self.member.as_mut().expect("subscribed");
        member.owned = new;
        if !added.is_empty() {
            member.listener.on_assigned(&added);
        }
        Ok(())
    }

    /// Takes `partitions` as the assignment: partitions kept keep their positions, new
    /// ones wait for theirs ([`Pending::Start`], found by [`Self::resolve_pending`]).
    fn assign_pending(&mut self, partitions: &[TopicPartition]) {
        self.assigned.retain(|partition, assigned| {
            let keep = partitions.contains(partition);
            if !keep {
                assigned.stop();
            }
            keep
        });
        for partition in partitions {
            if !self.assigned.contains_key(partition) {
                let mut assigned = Assigned::new(None);
                assigned.pending = Some(Pending::Start);
                self.assigned.insert(partition.clone(), assigned);
            }
        }
        // A new assignment is tried at once, whatever an earlier failure's pause.
        self.pending_retry_at = Instant::now();
    }

    /// Replaces the assignment. Partitions kept keep their positions; new ones start at
    /// the group's committed position (with a `group_id`), else where
    /// `auto_offset_reset` says.
    /// A partition whose position cannot be found yet stays assigned and is tried again
    /// by later polls; the first such failure is returned.
    pub async fn assign(&mut self, partitions: &[TopicPartition]) -> Result<(), ConsumeError> {
        self.assign_pending(partitions);
        self.resolve_pending().await
    }

    /// The assigned partitions, sorted.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        let mut partitions: Vec<TopicPartition> = self.assigned.keys().cloned().collect();
        partitions.sort();
        partitions
    }

    /// The offset of the next record `poll` returns for `partition` (`None` before it has
    /// one, with `auto_offset_reset` = `None`).
    pub fn position(&self, partition: &TopicPartition) -> Result<Option<u64>, ConsumeError> {
        let assigned = self
            .assigned
            .get(partition)
            .ok_or_else(|| ConsumeError::NotAssigned(partition.clone()))?;
        Ok(assigned.position)
    }

    /// Moves `partition`'s position; records already fetched from the old position are
    /// dropped.
    pub async fn seek(
        &mut self,
        partition: &TopicPartition,
        to: SeekTo,
    ) -> Result<(), ConsumeError> {
        if !self.assigned.contains_key(partition) {
            return Err(ConsumeError::NotAssigned(partition.clone()));
        }
        let offset = match to {
            SeekTo::Offset(offset) => offset,
            SeekTo::Beginning => self.list_offset(partition, EARLIEST_TIMESTAMP).await?,
            SeekTo::End => self.list_offset(partition, LATEST_TIMESTAMP).await?,
            SeekTo::Timestamp(time) => self.list_offset(partition, time.max(0)).await?,
        };
        let assigned = self.assigned.get_mut(partition).expect("checked above");
        assigned.stop();
        assigned.position = Some(offset);
        assigned.pending = None;
        self.start_fetching(partition);
        Ok(())
    }

    fn assigned_mut(&mut self, partition: &TopicPartition) -> Result<&mut Assigned, ConsumeError> {
        self.assigned
            .get_mut(partition)
            .ok_or_else(|| ConsumeError::NotAssigned(partition.clone()))
    }

    /// Stops fetching these partitions (their positions stay) until [`Consumer::resume`].
    pub fn pause(&mut self, partitions: &[TopicPartition]) -> Result<(), ConsumeError> {
        for partition in partitions {
            let assigned = self.assigned_mut(partition)?;
            assigned.paused = true;
            assigned.stop();
        }
        Ok(())
    }

    /// Fetches paused partitions again, from their positions.
    pub fn resume(&mut self, partitions: &[TopicPartition]) -> Result<(), ConsumeError> {
        for partition in partitions {
            let assigned = self.assigned_mut(partition)?;
            if assigned.paused {
                assigned.paused = false;
                self.start_fetching(partition);
            }
        }
        Ok(())
    }

    /// The paused partitions, sorted.
    pub fn paused(&self) -> Vec<TopicPartition> {
        let mut paused: Vec<TopicPartition> = self
            .assigned
            .iter()
            .filter(|(_, assigned)| assigned.paused)
            .map(|(partition, _)| partition.clone())
            .collect();
        paused.sort();
        paused
    }

    /// Records from the assigned, unpaused partitions: what is already fetched, or
    /// whatever arrives within `timeout` (an empty result if nothing does). Returns at
    /// most `max_poll_records`, in offset order per partition, and advances positions
    /// past them.
    pub async fn poll(&mut self, timeout: Duration) -> Result<ConsumerRecords, ConsumeError> {
        let deadline = Instant::now() + timeout;
        self.maintain().await?;
        // A position that cannot be found yet is reported only when there is nothing
        // else to return: the other partitions' records keep flowing.
        let mut unresolved = self.resolve_pending().await.err();
        loop {
            if let Some(partition) = self.assigned.iter().find_map(|(partition, assigned)| {
                (assigned.position.is_none() && !assigned.paused && assigned.pending.is_none())
                    .then(|| partition.clone())
            }) {
                return Err(ConsumeError::NoPosition(partition));
            }
            // Take what has arrived, but hold at most about one chunk per partition here:
            // the rest waits in the bounded channel and its fetch tasks (the memory bound).
            while self.buffered_chunks() < self.assigned.len().max(1) {
                let Ok(event) = self.events.try_recv() else {
                    break;
                };
                self.handle(event).await?;
            }
            let records = self.take_buffered();
            if !records.is_empty() {
                return Ok(records);
            }
            if let Some(error) = unresolved.take() {
                return Err(error);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match crate::runtime::timeout::<R, _>(left, self.events.recv()).await {
                Some(Some(event)) => self.handle(event).await?,
                Some(None) => unreachable!("the consumer holds a sender"),
                None => return Ok(ConsumerRecords::default()),
            }
        }
    }

    /// Bytes of fetched responses held by the consumer itself, not yet fully returned by
    /// `poll` (the prefetch channel and the fetch tasks hold at most
    /// `(partitions + PREFETCH_CHANNEL_CHUNKS) × fetch_max_bytes` more).
    pub fn buffered_bytes(&self) -> usize {
        self.assigned
            .values()
            .flat_map(|assigned| &assigned.buffered)
            .map(|chunk| chunk.bytes)
            .sum()
    }

    fn buffered_chunks(&self) -> usize {
        self.assigned
            .values()
            .map(|assigned| assigned.buffered.len())
            .sum()
    }

    async fn handle(&mut self, event: Event) -> Result<(), ConsumeError> {
        let Some(assigned) = self.assigned.get_mut(&event.partition) else {
            return Ok(());
        };
        if assigned.generation != event.generation {
            return Ok(());
        }
        match event.kind {
            EventKind::Fetched(chunk) => assigned.buffered.push_back(chunk),
            EventKind::OutOfRange(offset) => {
                assigned.stop();
                if self.config.auto_offset_reset == OffsetReset::None {
                    assigned.position = None;
                    return Err(ConsumeError::OffsetOutOfRange {
                        partition: event.partition,
                        offset,
                    });
                }
                // Kept until it succeeds: a failed (or cancelled) reset is tried again
                // by a later poll rather than leaving the partition without a fetcher.
                assigned.pending = Some(Pending::Reset);
                self.resolve_pending().await?;
            }
            EventKind::Refused(code, message) => {
                return Err(ConsumeError::Fetch {
                    partition: event.partition,
                    code,
                    message,
                })
            }
            EventKind::Damaged(message) => {
                return Err(ConsumeError::Damaged {
                    partition: event.partition,
                    message,
                })
            }
        }
        Ok(())
    }

    /// Up to `max_poll_records` buffered records, partitions served in rotation.
    fn take_buffered(&mut self) -> ConsumerRecords {
        let mut partitions: Vec<TopicPartition> = self
            .assigned
            .iter()
            .filter(|(_, assigned)| !assigned.buffered.is_empty())
            .map(|(partition, _)| partition.clone())
            .collect();
        partitions.sort();
        let mut records = ConsumerRecords::default();
        let mut left = self.config.max_poll_records.max(1);
        if partitions.is_empty() {
            return records;
        }
        self.rotation = (self.rotation + 1) % partitions.len();
        partitions.rotate_left(self.rotation);
        for partition in partitions {
            let assigned = self.assigned.get_mut(&partition).expect("listed above");
            while left > 0 {
                let Some(chunk) = assigned.buffered.front() else {
                    break;
                };
                let from = assigned
                    .position
                    .expect("fetching partitions have a position");
                let available = chunk.next_offset.saturating_sub(from);
                let taken = available.min(left as u64);
                if taken > 0 {
                    records.parts.push(Part {
                        partition: partition.clone(),
                        fetched: Arc::clone(&chunk.fetched),
                        from,
                        until: from + taken,
                    });
                    records.count += taken as usize;
                    left -= taken as usize;
                    assigned.position = Some(from + taken);
                }
                if from + taken >= chunk.next_offset {
                    assigned.buffered.pop_front();
                }
            }
        }
        records
    }

    /// Finds the positions still pending (a group's committed offsets, resets), and
    /// fetches from there. After a failure it waits `retry_backoff` before trying again
    /// (the partitions stay pending meanwhile), so a lasting failure costs one request
    /// per pause, not one per poll.
    async fn resolve_pending(&mut self) -> Result<(), ConsumeError> {
        let pending: Vec<(TopicPartition, Pending)> = self
            .assigned
            .iter()
            .filter_map(|(partition, assigned)| Some((partition.clone(), assigned.pending?)))
            .collect();
        if pending.is_empty() || Instant::now() < self.pending_retry_at {
            return Ok(());
        }
        let resolved = self.find_positions(&pending).await;
        if resolved.is_err() {
            self.pending_retry_at = Instant::now() + self.config.retry_backoff;
        }
        resolved
    }

    async fn find_positions(
        &mut self,
        pending: &[(TopicPartition, Pending)],
    ) -> Result<(), ConsumeError> {
        let starting: Vec<TopicPartition> = pending
            .iter()
            .filter(|(_, pending)| *pending == Pending::Start)
            .map(|(partition, _)| partition.clone())
            .collect();
        let committed = match (&self.config.group_id, starting.is_empty()) {
            (Some(_), false) => self.committed(&starting).await?,
            _ => vec![None; starting.len()],
        };
        let committed: HashMap<&TopicPartition, Option<u64>> =
            starting.iter().zip(committed).collect();
        // One partition that fails stays pending; the others go ahead.
        let mut first_error = None;
        for (partition, _) in pending {
            let position = match committed.get(partition).copied().flatten() {
                Some(offset) => Some(offset),
                None => match self.reset_position(partition).await {
                    Ok(position) => position,
                    Err(error) => {
                        first_error.get_or_insert(error);
                        continue;
                    }
                },
            };
            if let Some(assigned) = self.assigned.get_mut(partition) {
                assigned.position = position;
                assigned.pending = None;
            }
            self.start_fetching(partition);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The position `auto_offset_reset` gives `partition`.
    async fn reset_position(
        &mut self,
        partition: &TopicPartition,
    ) -> Result<Option<u64>, ConsumeError> {
        match self.config.auto_offset_reset {
            OffsetReset::Earliest => {
                Ok(Some(self.list_offset(partition, EARLIEST_TIMESTAMP).await?))
            }
            OffsetReset::Latest => Ok(Some(self.list_offset(partition, LATEST_TIMESTAMP).await?)),
            OffsetReset::None => Ok(None),
        }
    }

    /// Commits the current position of every assigned partition that has one to the
    /// group, durably (the broker answers once it is on disk).
    pub async fn commit_sync(&mut self) -> Result<(), ConsumeError> {
        let positions: Vec<(TopicPartition, u64)> = self
            .assigned
            .iter()
            .filter_map(|(partition, assigned)| Some((partition.clone(), assigned.position?)))
            .collect();
        self.commit_offsets(&positions).await
    }

    /// Commits these positions (offsets to resume from) to the group.
    pub async fn commit_offsets(
        &mut self,
        positions: &[(TopicPartition, u64)],
    ) -> Result<(), ConsumeError> {
        let group = self.config.group_id.clone().ok_or(ConsumeError::NoGroup)?;
        if positions.is_empty() {
            return Ok(());
        }
        let wire: Vec<(&str, u32, u64, Option<&str>)> = positions
            .iter()
            .map(|(partition, offset)| {
                (partition.topic.as_str(), partition.partition, *offset, None)
            })
            .collect();
        let (generation_id, member_id) = match &self.member {
            Some(member) => {
                let shared = lock(&member.shared);
                (shared.generation, shared.member_id.clone())
            }
            None => (-1, String::new()),
        };
        let commit = crate::operation::OffsetCommit {
            group_id: &group,
            generation_id,
            member_id: &member_id,
            positions: &wire,
        };
        let limit = self.config.request_timeout;
        let outcomes = admin_call!(self, limit, |admin| admin.run(commit))?;
        for ((partition, _), outcome) in positions.iter().zip(outcomes) {
            if let Err(ClientError::Broker { code, message }) = outcome {
                return Err(ConsumeError::CommitFailed {
                    partition: partition.clone(),
                    code,
                    message,
                });
            }
        }
        Ok(())
    }

    /// The group's committed positions of `partitions` (`None` where it has none).
    pub async fn committed(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Result<Vec<Option<u64>>, ConsumeError> {
        let group = self.config.group_id.clone().ok_or(ConsumeError::NoGroup)?;
        if partitions.is_empty() {
            // Nothing to ask (`assign(&[])`): no request, which could fail for nothing.
            return Ok(Vec::new());
        }
        let mut by_topic: Vec<(&str, Vec<u32>)> = Vec::new();
        for partition in partitions {
            match by_topic
                .iter_mut()
                .find(|(topic, _)| *topic == partition.topic)
            {
                Some((_, numbers)) => numbers.push(partition.partition),
                None => by_topic.push((&partition.topic, vec![partition.partition])),
            }
        }
        let topics: Vec<(&str, &[u32])> = by_topic
            .iter()
            .map(|(topic, numbers)| (*topic, numbers.as_slice()))
            .collect();
        let fetch = crate::operation::OffsetFetch {
            group_id: &group,
            topics: Some(&topics),
        };
        let limit = self.config.request_timeout;
        let found = admin_call!(self, limit, |admin| admin.run(fetch))?;
        Ok(partitions
            .iter()
            .map(|partition| {
                found
                    .iter()
                    .filter(|topic| topic.name == partition.topic)
                    .flat_map(|topic| topic.partitions.iter())
                    .find(|position| position.partition == partition.partition)
                    .and_then(|position| position.offset)
            })
            .collect())
    }

    /// The bootstrap connection used for offsets and commits.
    async fn admin(&mut self) -> Result<&mut R::Connection, ConsumeError> {
        // A call dropped half-way (a cancelled poll) left it unusable: a new one.
        if self
            .admin
            .as_ref()
            .is_some_and(|admin| admin.is_interrupted())
        {
            self.admin = None;
        }
        if self.admin.is_none() {
            self.admin = Some(crate::runtime::connect::<R>(&self.config.bootstrap).await?);
        }
        Ok(self.admin.as_mut().expect("connected above"))
    }

    /// Passes a result on, dropping the admin connection after a transport failure.
    fn keep_admin<T>(&mut self, result: Result<T, ClientError>) -> Result<T, ConsumeError> {
        if result
            .as_ref()
            .is_err_and(|error| !matches!(error, ClientError::Broker { .. }))
        {
            self.admin = None;
        }
        Ok(result?)
    }

    async fn list_offset(
        &mut self,
        partition: &TopicPartition,
        timestamp: i64,
    ) -> Result<u64, ConsumeError> {
        let limit = self.config.request_timeout;
        let answer = admin_call!(self, limit, |admin| admin.list_offsets(
            &partition.topic,
            partition.partition,
            timestamp
        ))?;
        Ok(answer.offset)
    }

    fn start_fetching(&mut self, partition: &TopicPartition) {
        let Some(assigned) = self.assigned.get_mut(partition) else {
            return;
        };
        let Some(position) = assigned.position else {
            return;
        };
        if assigned.paused || assigned.task.is_some() || assigned.pending.is_some() {
            return;
        }
        let fetcher = Fetcher {
            runtime: std::marker::PhantomData,
            config: self.config.clone(),
            partition: partition.clone(),
            generation: assigned.generation,
            events: self.sender.clone(),
        };
        let (stop, stopped) = oneshot::channel();
        assigned.task = Some(stop);
        R::spawn_fetcher(fetcher, position, stopped);
    }
}

/// One partition's background fetch loop.
pub(crate) struct Fetcher<R: Runtime> {
    runtime: std::marker::PhantomData<fn() -> R>,
    config: ConsumerConfig,
    partition: TopicPartition,
    generation: u64,
    events: mpsc::Sender<Event>,
}

impl<R: Runtime> Fetcher<R> {
    /// Fetches from `offset` until `stopped` resolves (the consumer dropped its sender).
    pub(crate) async fn run_until(self, offset: u64, stopped: oneshot::Receiver<()>) {
        tokio::select! {
            () = self.run(offset) => {}
            _ = stopped => {}
        }
    }

    async fn run(&self, mut offset: u64) {
        let mut client: Option<R::Connection> = None;
        let mut attempt = 0u32;
        let mut reported = false;
        loop {
            if client.is_none() {
                let limit = self.config.request_timeout;
                let connected = crate::runtime::timeout::<R, _>(
                    limit,
                    crate::routing::connect_leader::<R>(
                        &self.config.bootstrap,
                        &self.partition.topic,
                        self.partition.partition,
                    ),
                )
                .await
                .unwrap_or_else(|| Err(crate::producer::worker::timed_out(limit)));
                match connected {
                    Ok(connected) => client = Some(connected),
                    Err(error) => {
                        if !self.failed(error, &mut reported).await {
                            return;
                        }
                        self.pause(&mut attempt).await;
                        continue;
                    }
                }
            }
            let connection = client.as_mut().expect("connected above");
            let max_wait_ms = self.config.fetch_max_wait.as_millis().min(u32::MAX as u128) as u32;
            // A broker that holds the fetch past its wait (a half-open connection) is
            // given up on: the connection goes and the fetch is tried again.
            let limit = self
                .config
                .fetch_max_wait
                .saturating_add(self.config.request_timeout);
            let fetched = crate::runtime::timeout::<R, _>(
                limit,
                connection.fetch(
                    &self.partition.topic,
                    self.partition.partition,
                    offset,
                    self.config.fetch_max_bytes,
                    max_wait_ms,
                ),
            )
            .await
            .unwrap_or_else(|| Err(crate::producer::worker::timed_out(limit)));
            let result = fetched.and_then(|fetched| {
                let next_offset = fetched
                    .batches()?
                    .last()
                    .map(|batch| batch.header().next_offset());
                Ok((fetched, next_offset))
            });
            match result {
                // Nothing new. Without a long poll, a pause keeps an idle partition from
                // being fetched in a busy loop.
                Ok((_, None)) if self.config.fetch_max_wait.is_zero() => {
                    R::sleep(EMPTY_FETCH_PAUSE).await
                }
                Ok((_, None)) => {}
                Ok((fetched, Some(next_offset))) => {
                    attempt = 0;
                    reported = false;
                    let chunk = Chunk {
                        bytes: fetched.frame.as_slice().len(),
                        fetched: Arc::new(fetched),
                        next_offset,
                    };
                    if !self.send(EventKind::Fetched(chunk)).await {
                        return;
                    }
                    offset = next_offset.max(offset);
                }
                Err(ClientError::Broker {
                    code: ErrorCode::OffsetOutOfRange,
                    ..
                }) => {
                    let _ = self.send(EventKind::OutOfRange(offset)).await;
                    return;
                }
                Err(error) => {
                    client = None;
                    if !self.failed(error, &mut reported).await {
                        return;
                    }
                    self.pause(&mut attempt).await;
                }
            }
        }
    }

    /// Reports a broker refusal or damaged data once per streak of failures
    /// (connection problems are retried silently). Returns false if the consumer is
    /// gone.
    async fn failed(&self, error: ClientError, reported: &mut bool) -> bool {
        match error {
            ClientError::Broker { code, message } if !*reported => {
                *reported = true;
                self.send(EventKind::Refused(code, message)).await
            }
            error @ (ClientError::Batch(_) | ClientError::Frame(_) | ClientError::Protocol(_))
                if !*reported =>
            {
                *reported = true;
                self.send(EventKind::Damaged(error.to_string())).await
            }
            _ => !self.events.is_closed(),
        }
    }

    async fn pause(&self, attempt: &mut u32) {
        let factor = 1u32 << (*attempt).min(16);
        let pause = self
            .config
            .retry_backoff
            .saturating_mul(factor)
            .min(self.config.retry_backoff_max);
        *attempt += 1;
        R::sleep(pause).await;
    }

    async fn send(&self, kind: EventKind) -> bool {
        let event = Event {
            partition: self.partition.clone(),
            generation: self.generation,
            kind,
        };
        self.events.send(event).await.is_ok()
    }
}

/// A range of one fetched response.
#[derive(Debug)]
struct Part {
    partition: TopicPartition,
    fetched: Arc<Fetched>,
    from: u64,
    until: u64,
}

/// What one `poll` returned: fetched responses and the offset range taken from each.
#[derive(Debug, Default)]
pub struct ConsumerRecords {
    parts: Vec<Part>,
    count: usize,
}

impl ConsumerRecords {
    /// Number of records.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The records, in offset order per partition, read in place.
    pub fn iter(&self) -> impl Iterator<Item = ConsumerRecordView<'_>> {
        let mut views = Vec::with_capacity(self.count);
        for part in &self.parts {
            let batches = part
                .fetched
                .batches_again()
                .expect("batches were validated on arrival and not changed since");
            for batch in batches {
                for record in batch.records() {
                    if (part.from..part.until).contains(&record.offset()) {
                        views.push(ConsumerRecordView {
                            topic: &part.partition.topic,
                            partition: part.partition.partition,
                            record,
                        });
                    }
                }
            }
        }
        views.into_iter()
    }
}

/// One consumed record, borrowed from the fetched response.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerRecordView<'a> {
    topic: &'a str,
    partition: u32,
    record: RecordView<'a>,
}

impl<'a> ConsumerRecordView<'a> {
    /// Topic.
    pub fn topic(&self) -> &'a str {
        self.topic
    }

    /// Partition.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// Offset.
    pub fn offset(&self) -> u64 {
        self.record.offset()
    }

    /// Timestamp, ms since the epoch.
    pub fn timestamp_ms(&self) -> i64 {
        self.record.timestamp_ms()
    }

    /// Key.
    pub fn key(&self) -> Option<&'a [u8]> {
        self.record.key()
    }

    /// Value (`None`: a tombstone).
    pub fn value(&self) -> Option<&'a [u8]> {
        self.record.value()
    }

    /// Headers.
    pub fn headers(&self) -> impl ExactSizeIterator<Item = (&'a str, &'a [u8])> {
        self.record.headers()
    }

    /// The record as stored in its batch.
    pub fn record(&self) -> RecordView<'a> {
        self.record
    }

    /// An owned copy.
    pub fn to_owned(&self) -> ConsumerRecord {
        ConsumerRecord {
            topic: self.topic.to_owned(),
            partition: self.partition,
            offset: self.offset(),
            timestamp_ms: self.timestamp_ms(),
            key: self.key().map(<[u8]>::to_vec),
            value: self.value().map(<[u8]>::to_vec),
            headers: self
                .headers()
                .map(|(name, value)| (name.to_owned(), value.to_vec()))
                .collect(),
        }
    }
}

/// A consumed record, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// Timestamp, ms since the epoch.
    pub timestamp_ms: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
}
