//! The producer's background task: it owns the accumulator, the routes and the outbox,
//! and keeps up to `max_in_flight_per_shard` produce requests in flight per broker shard
//! while it goes on accumulating.
//!
//! Ordering: ready batches join their shard's queue in the order they were closed. A
//! request (a *sortie*) takes the shard's oldest queued batch of each partition that has
//! none in flight, up to `request_bytes_max`, as Kafka's sender drains every ready
//! partition of a broker into one request: at low rates one frame carries many
//! partitions' small batches, so the broker is woken once for all of them. A shard has up
//! to `max_in_flight_per_shard` sorties out at once, each on its own connection, and each
//! retries its batches until every one is acknowledged, refused, or out of time
//! ([`Pilot::fly`], a spawned task that owns the connection meanwhile; each batch is
//! reported as it lands). A partition has at most one batch in flight, and its next is
//! the oldest queued: so batches of a partition reach the broker in order, and a retry
//! is always of the partition's latest batch, which the broker's idempotence state
//! recognises. Different partitions and shards proceed in parallel.
//!
//! A new producer id (the broker lost this producer's state) starts every partition's
//! sequences over: the batch that found out and every queued batch are stamped again, in
//! order. A batch of another partition still in flight under the old id that is refused
//! too starts its own partition over again, ahead of that partition's queued batches.
//!
//! Outbox: while it holds records, a batch whose turn comes is queued in it instead of
//! sent, so nothing overtakes what is waiting there.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flumen_protocol::record::BatchView;
use flumen_protocol::wire::ErrorCode;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::{Command, Counters, Delivery, ProduceError, ProducerConfig, Record, Reply};
use crate::accumulator::{Accumulator, AppendError, ReadyBatch};
use crate::fast_hash::{FastMap, FastSet};
use crate::operation::{ProduceBatches, ProducePart};
use crate::outbox::Outbox;
use crate::runtime::{timeout, Calls, Connection, Runtime};
use crate::{Acks, ClientError};

/// The runtimes' timers fire on millisecond ticks: a linger shorter than this is also
/// checked whenever a record arrives for the partition.
const TIMER_RESOLUTION: std::time::Duration = std::time::Duration::from_millis(1);

/// Commands handled in one pass of the worker's loop before it looks at its timers and
/// landings again.
const COMMANDS_PER_PASS: usize = 256;

/// Batches of each partition dispatched and not yet resolved (queued or in flight).
type Unresolved = FastMap<String, FastMap<u32, usize>>;

/// Whether a partition may have its open batch closed and sent: nothing of it is queued
/// or in flight. Until then records keep joining the open batch.
fn sendable(unresolved: &Unresolved, topic: &str, partition: u32) -> bool {
    unresolved
        .get(topic)
        .and_then(|partitions| partitions.get(&partition))
        .is_none_or(|&count| count == 0)
}

/// Where each topic's partitions lead, from Metadata.
#[derive(Default)]
struct Routes {
    /// Leader shard of each partition, by topic.
    partitions: FastMap<String, Vec<u32>>,
}

/// The records waiting for their batch's outcome, by id. Ids are handed out in order and
/// each is taken once, so a deque starting at the oldest id still waiting serves as the
/// map: no hashing (removing from a hash map of the in-flight records was 6 % of the
/// load generator's core), and the front is dropped as it completes. An id that never
/// waited (its record failed first) leaves an empty slot.
#[derive(Default)]
struct WaitingRecords {
    first_id: u64,
    slots: VecDeque<Option<Waiting>>,
}

impl WaitingRecords {
    /// Adds the record with `id`, which must be later than every id added before.
    fn insert(&mut self, id: u64, waiting: Waiting) {
        if self.slots.is_empty() {
            self.first_id = id;
        }
        let index = (id - self.first_id) as usize;
        assert!(index >= self.slots.len(), "waiting ids are added in order");
        self.slots.resize_with(index, || None);
        self.slots.push_back(Some(waiting));
    }

    /// Takes the record with `id`, if it waits.
    fn remove(&mut self, id: u64) -> Option<Waiting> {
        let index = usize::try_from(id.checked_sub(self.first_id)?).ok()?;
        let taken = self.slots.get_mut(index)?.take();
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.first_id += 1;
        }
        taken
    }
}

/// A record waiting for its batch's outcome.
struct Waiting {
    partition: u32,
    reply: Reply,
    /// Buffer bytes the record holds: its permits were taken from the room semaphore and
    /// are given back, a batch's at once, when it is resolved (one release per batch, not
    /// one per record).
    room_bytes: u32,
}

/// A batch on its way, with the time it must be acknowledged by.
pub(crate) struct Flight {
    batch: ReadyBatch,
    deadline: Instant,
    /// The producer id and epoch the batch carries.
    stamped: Option<(i64, i16)>,
}

/// How a flight ended.
pub(crate) enum Landed {
    Acked(u64),
    Failed(ProduceError),
    /// The partition lost this producer's state: take a new producer id and resend.
    NewProducerId(String),
}

/// What a sortie reports to the worker, in this order: each batch as it lands, then the
/// end of the sortie.
pub(crate) enum Report<R: Runtime> {
    /// A batch's outcome: its partition may send its next batch.
    Landed {
        shard: u32,
        flight: Flight,
        landed: Landed,
    },
    /// Every batch of the sortie landed: its slot and its connection are free.
    Done {
        shard: u32,
        client: Option<R::Connection>,
    },
}

/// One batch's outcome from one attempt: final, or a reason to retry it.
type Attempted = Result<Landed, String>;

/// What a flight needs to know; cheap to clone into a task.
pub(crate) struct Pilot<R: Runtime> {
    runtime: std::marker::PhantomData<fn() -> R>,
    bootstrap: String,
    acks: Acks,
    request_timeout: Duration,
    retry_backoff: Duration,
    retry_backoff_max: Duration,
    counters: Arc<Counters>,
}

impl<R: Runtime> Clone for Pilot<R> {
    fn clone(&self) -> Self {
        Self {
            runtime: std::marker::PhantomData,
            bootstrap: self.bootstrap.clone(),
            acks: self.acks,
            request_timeout: self.request_timeout,
            retry_backoff: self.retry_backoff,
            retry_backoff_max: self.retry_backoff_max,
            counters: Arc::clone(&self.counters),
        }
    }
}

impl<R: Runtime> Pilot<R> {
    /// The pause before retry `attempt` (0-based): doubling from `retry_backoff` up to
    /// `retry_backoff_max`.
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.min(16);
        self.retry_backoff
            .saturating_mul(factor)
            .min(self.retry_backoff_max)
    }

    /// Sends the sortie's batches in one request, reconnecting and retrying those not
    /// yet landed with backoff, until each is acknowledged, refused, or past its
    /// deadline. Landed batches go to `reports` as they land, or, without `reports`, are
    /// returned at the end.
    pub(crate) async fn fly(
        &self,
        shard: u32,
        client: &mut Option<R::Connection>,
        mut flights: Vec<Flight>,
        reports: Option<&mpsc::Sender<Report<R>>>,
    ) -> Vec<(Flight, Landed)> {
        let mut ended = Vec::new();
        let mut attempt = 0;
        // Batches per request: the whole sortie, or one at a time once the broker found
        // the request too large for its frame limit (each batch fits on its own).
        let mut per_request = flights.len().max(1);
        while !flights.is_empty() {
            let pause = self.backoff(attempt);
            let mut retrying = Vec::new();
            let mut rest = std::mem::take(&mut flights);
            while !rest.is_empty() {
                let later = rest.split_off(per_request.min(rest.len()));
                let sent = std::mem::replace(&mut rest, later);
                let Some(outcomes) = self.attempt(client, &sent).await else {
                    per_request = 1;
                    rest = sent.into_iter().chain(rest).collect();
                    continue;
                };
                for (flight, outcome) in sent.into_iter().zip(outcomes) {
                    let landed = match outcome {
                        Ok(landed) => landed,
                        Err(reason) if Instant::now() + pause >= flight.deadline => {
                            Landed::Failed(ProduceError::TimedOut(reason))
                        }
                        Err(_) => {
                            retrying.push(flight);
                            continue;
                        }
                    };
                    match reports {
                        // The worker only goes away with the producer.
                        Some(reports) => {
                            let report = Report::Landed {
                                shard,
                                flight,
                                landed,
                            };
                            let _ = reports.send(report).await;
                        }
                        None => ended.push((flight, landed)),
                    }
                }
            }
            if retrying.is_empty() {
                break;
            }
            Counters::add(&self.counters.retries, retrying.len() as u64);
            R::sleep(pause).await;
            flights = retrying;
            attempt += 1;
        }
        ended
    }

    /// Flies a sortie, reporting each landing and then its end to the worker.
    pub(crate) async fn fly_and_report(
        self,
        shard: u32,
        mut client: Option<R::Connection>,
        flights: Vec<Flight>,
        reports: mpsc::Sender<Report<R>>,
    ) {
        self.fly(shard, &mut client, flights, Some(&reports)).await;
        let _ = reports.send(Report::Done { shard, client }).await;
    }

    /// One attempt at every flight in one request: each flight's outcome, in order; or
    /// `None` if the broker refused the request of several batches as larger than its
    /// frame limit (each may still fit alone).
    async fn attempt(
        &self,
        client: &mut Option<R::Connection>,
        flights: &[Flight],
    ) -> Option<Vec<Attempted>> {
        let limit = self.request_timeout;
        let result = timeout::<R, _>(limit, async {
            if client.is_none() {
                let first = &flights[0].batch;
                let leader = crate::routing::connect_leader::<R>(
                    &self.bootstrap,
                    &first.topic,
                    first.partition,
                );
                *client = Some(leader.await?);
            }
            let connection = client.as_mut().expect("connected above");
            let parts: Vec<ProducePart<'_>> = flights
                .iter()
                .map(|flight| ProducePart {
                    topic: &flight.batch.topic,
                    partition: flight.batch.partition,
                    batches: flight.batch.batch.as_bytes(),
                })
                .collect();
            connection.run(ProduceBatches::new(&parts, self.acks)).await
        })
        .await;
        let whole = |reason: String| flights.iter().map(|_| Err(reason.clone())).collect();
        let outcomes = match result {
            Some(Ok(results)) => results
                .into_iter()
                .map(|result| {
                    let code = ErrorCode::from_u16(result.outcome.error_code);
                    let message = result.outcome.message.unwrap_or_default();
                    self.judge(client, code, message, result.base_offset)
                })
                .collect(),
            // The whole request was refused (malformed, too large): the broker closes the
            // connection after such an answer.
            Some(Err(ClientError::Broker { code, message })) => {
                *client = None;
                if code == ErrorCode::FrameTooLarge && flights.len() > 1 {
                    return None;
                }
                flights
                    .iter()
                    .map(|_| self.judge(client, code, message.clone(), 0))
                    .collect()
            }
            Some(Err(error)) => {
                *client = None;
                whole(error.to_string())
            }
            None => {
                // The request may still be in flight: drop the connection.
                *client = None;
                whole(format!("no answer within {limit:?}"))
            }
        };
        Some(outcomes)
    }

    /// What a partition's answer means for its batch.
    fn judge(
        &self,
        client: &mut Option<R::Connection>,
        code: ErrorCode,
        message: String,
        base_offset: u64,
    ) -> Attempted {
        let reason = format!("{code:?}: {message}");
        match code {
            ErrorCode::None => Ok(Landed::Acked(base_offset)),
            // A retry the partition already has: delivered, at its original offsets.
            ErrorCode::DuplicateSequence => {
                Counters::add(&self.counters.duplicates_detected, 1);
                Ok(Landed::Acked(base_offset))
            }
            ErrorCode::OutOfOrderSequence | ErrorCode::UnknownProducerId => {
                Ok(Landed::NewProducerId(reason))
            }
            // The partition may have moved: reconnect through Metadata.
            ErrorCode::UnknownPartition => {
                *client = None;
                Err(reason)
            }
            ErrorCode::UnknownTopic => {
                *client = None;
                Ok(Landed::Failed(ProduceError::Broker { code, message }))
            }
            code if code.is_retriable() => Err(reason),
            code => Ok(Landed::Failed(ProduceError::Broker { code, message })),
        }
    }
}

pub(crate) struct Worker<R: Runtime> {
    config: ProducerConfig,
    /// The time read once per burst of commands (monotonic, and wall-clock ms for
    /// record timestamps): a burst is handled within well under a millisecond, and
    /// reading the clock per record was a measurable share of the producer's core.
    clock: (Instant, i64),
    /// The buffer's room, shared with `send`.
    room: Arc<Semaphore>,
    pilot: Pilot<R>,
    accumulator: Accumulator,
    waiting: WaitingRecords,
    routes: Routes,
    next_id: u64,
    counters: Arc<Counters>,
    /// Ready batches per shard, oldest first, not yet in flight.
    queues: HashMap<u32, VecDeque<Flight>>,
    /// Partitions with a batch in flight.
    busy: FastSet<(String, u32)>,
    /// Sorties in flight per shard.
    flying: HashMap<u32, usize>,
    /// Shards whose queue or slots changed since their last launch.
    launching: Vec<u32>,
    /// Batches dispatched and not yet resolved, per partition.
    unresolved: Unresolved,
    /// Partitions whose open batch may have become sendable since the last check.
    touched: Vec<(String, u32)>,
    /// Connections not in use, per shard.
    idle: HashMap<u32, Vec<R::Connection>>,
    /// Sorties in flight report here.
    landings: mpsc::Sender<Report<R>>,
    landed: mpsc::Receiver<Report<R>>,
    /// Sorties in flight.
    in_flight: usize,
    /// When the outbox is next drained.
    next_drain: Instant,
    outbox: Option<Outbox>,
    /// Outbox batches being published, with their sequence numbers.
    outbox_chunk: VecDeque<ReadyBatch>,
    /// Outbox position after the chunk.
    outbox_chunk_end: u64,
    /// The last outbox failure, reported with the next send that needs the outbox.
    outbox_error: Option<String>,
}

impl<R: Runtime> Worker<R> {
    pub(super) fn new(
        config: ProducerConfig,
        room: Arc<Semaphore>,
        counters: Arc<Counters>,
    ) -> Self {
        // Reports come from sorties holding their shard's slots; a full channel only makes
        // a sortie wait to report.
        let (landings, landed) = mpsc::channel(1024);
        let pilot = Pilot {
            runtime: std::marker::PhantomData,
            bootstrap: config.bootstrap.clone(),
            acks: config.acks,
            request_timeout: config.request_timeout,
            retry_backoff: config.retry_backoff,
            retry_backoff_max: config.retry_backoff_max,
            counters: Arc::clone(&counters),
        };
        Self {
            accumulator: Accumulator::new(config.batching),
            clock: (Instant::now(), super::now_ms()),
            config,
            room,
            pilot,
            waiting: WaitingRecords::default(),
            routes: Routes::default(),
            next_id: 0,
            counters,
            queues: HashMap::new(),
            busy: FastSet::default(),
            flying: HashMap::new(),
            launching: Vec::new(),
            unresolved: Unresolved::default(),
            touched: Vec::new(),
            idle: HashMap::new(),
            landings,
            landed,
            in_flight: 0,
            next_drain: Instant::now(),
            outbox: None,
            outbox_chunk: VecDeque::new(),
            outbox_chunk_end: 0,
            outbox_error: None,
        }
    }

    /// Reads the clock for the commands handled next.
    fn tick(&mut self) {
        self.clock = (Instant::now(), super::now_ms());
    }

    fn idempotent(&self) -> bool {
        self.config.idempotence && self.config.acks != Acks::None
    }

    fn outbox_holds_records(&self) -> bool {
        self.outbox
            .as_ref()
            .is_some_and(|outbox| !outbox.is_empty())
    }

    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        if let Some(dir) = self.config.outbox.clone() {
            match Outbox::open(&dir) {
                Ok(outbox) => self.outbox = Some(outbox),
                Err(error) => {
                    self.outbox_error = Some(format!(
                        "cannot open the outbox in {}: {error}",
                        dir.display()
                    ))
                }
            }
        }
        loop {
            self.publish_gauges();
            let deadline = {
                let unresolved = &self.unresolved;
                self.accumulator
                    .next_deadline(|topic, partition| sendable(unresolved, topic, partition))
            };
            let sleep = async move {
                match deadline {
                    Some(deadline) => {
                        R::sleep(deadline.saturating_duration_since(Instant::now())).await
                    }
                    None => std::future::pending().await,
                }
            };
            let draining = self.outbox_holds_records();
            let next_drain = self.next_drain;
            let drain_due =
                async move { R::sleep(next_drain.saturating_duration_since(Instant::now())).await };
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else {
                        self.settle().await;
                        return;
                    };
                    self.tick();
                    if !self.handle(command, &mut commands).await {
                        return;
                    }
                    // The rest of a burst in the same pass: one round of timers and
                    // checks per burst rather than per record.
                    for _ in 1..COMMANDS_PER_PASS {
                        let Ok(command) = commands.try_recv() else {
                            break;
                        };
                        if !self.handle(command, &mut commands).await {
                            return;
                        }
                    }
                    self.send_touched();
                    self.launch_pending();
                }
                Some(report) = self.landed.recv(), if self.in_flight > 0 => {
                    self.land(report).await;
                    while let Ok(report) = self.landed.try_recv() {
                        self.land(report).await;
                    }
                    self.send_touched();
                    self.launch_pending();
                }
                () = drain_due, if draining => {
                    self.drain_outbox().await;
                    self.next_drain = Instant::now() + self.config.retry_backoff_max;
                }
                () = sleep => {
                    let routes = &self.routes.partitions;
                    let unresolved = &self.unresolved;
                    let expired = self.accumulator.expired(
                        Instant::now(),
                        |topic| routes.get(topic).map_or(1, |leaders| leaders.len() as u32),
                        |topic, partition| sendable(unresolved, topic, partition),
                    );
                    for batch in expired {
                        self.dispatch(batch);
                    }
                    self.launch_pending();
                }
            }
        }
    }

    /// Handles one command; false once the producer is closed.
    async fn handle(&mut self, command: Command, commands: &mut mpsc::Receiver<Command>) -> bool {
        match command {
            Command::Send(record, reply, room) => self.append(record, reply, room).await,
            Command::Flush(done) => {
                self.settle().await;
                self.tick();
                let _ = done.send(());
            }
            Command::Close(done) => {
                commands.close();
                while let Some(command) = commands.recv().await {
                    self.tick();
                    match command {
                        Command::Send(record, reply, room) => {
                            self.append(record, reply, room).await
                        }
                        Command::Flush(done) | Command::Close(done) => drop(done),
                    }
                }
                self.settle().await;
                drop(self.outbox.take());
                let _ = done.send(());
                return false;
            }
        }
        true
    }

    /// Sends the open batches of the partitions that took records or had a batch
    /// resolved since the last check, where the linger has passed and the partition has
    /// nothing on its way. (Lingers passing with time are the timer's.)
    fn send_touched(&mut self) {
        if self.touched.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        for (topic, partition) in touched.drain(..) {
            if !sendable(&self.unresolved, &topic, partition) {
                continue;
            }
            let partitions = self
                .routes
                .partitions
                .get(&topic)
                .map_or(1, |leaders| leaders.len() as u32);
            if let Some(batch) = self
                .accumulator
                .close_if_expired(&topic, partition, now, partitions)
            {
                self.dispatch(batch);
            }
        }
        self.touched = touched;
    }

    fn publish_gauges(&self) {
        let pending = self.outbox.as_ref().map_or(0, Outbox::pending_bytes);
        self.counters
            .outbox_pending_bytes
            .store(pending, Ordering::Relaxed);
    }

    fn partition_counts(&self) -> HashMap<String, u32> {
        self.routes
            .partitions
            .iter()
            .map(|(topic, shards)| (topic.clone(), shards.len() as u32))
            .collect()
    }

    async fn append(&mut self, record: Record, reply: Reply, room: OwnedSemaphorePermit) {
        // A known topic needs no await (the common case, once per record).
        let known = self.routes.partitions.get(&record.topic).map(Vec::len);
        let ready = known.filter(|_| !self.idempotent() || self.accumulator.producer().is_some());
        let prepared = match ready {
            Some(count) => Ok(count as u32),
            None => {
                let prepared = self.prepare(&record.topic).await;
                self.tick();
                prepared
            }
        };
        let partitions = match prepared {
            Ok(count) => count,
            Err(ProduceError::TimedOut(reason)) if self.outbox.is_some() => {
                let outbox = self.outbox.as_mut().expect("checked");
                let result = match outbox.append(std::slice::from_ref(&record)) {
                    Ok(()) => {
                        Counters::add(&self.counters.records_outboxed, 1);
                        Ok(Delivery {
                            partition: record.partition,
                            offset: None,
                            queued_in_outbox: true,
                        })
                    }
                    Err(error) => Err(ProduceError::TimedOut(format!(
                        "{reason}; and the outbox failed: {error}"
                    ))),
                };
                reply.send(result);
                return;
            }
            Err(error) => {
                Counters::add(&self.counters.records_failed, 1);
                reply.send(Err(error));
                return;
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        let headers = record.header_refs();
        let (now, now_ms) = self.clock;
        let outgoing = record.outgoing_at(&headers, record.timestamp_ms.unwrap_or(now_ms));
        let mut result = self.accumulator.append(&outgoing, partitions, id, now);
        if matches!(result, Err(AppendError::BufferFull { .. })) {
            // Cannot happen while `send` reserves room first; kept as a backstop.
            self.settle().await;
            self.tick();
            result = self
                .accumulator
                .append(&outgoing, partitions, id, self.clock.0);
        }
        match result {
            Ok((partition, ready)) => {
                let room_bytes = room.num_permits() as u32;
                room.forget();
                let waiting = Waiting {
                    partition,
                    reply,
                    room_bytes,
                };
                self.waiting.insert(id, waiting);
                match ready {
                    Some(batch) => self.dispatch(batch),
                    // Checked at the end of the burst: due at once with no linger, and a
                    // linger shorter than the timer's millisecond ends with the first
                    // record after it rather than on the next tick.
                    None if self.config.batching.linger < TIMER_RESOLUTION => {
                        self.touched.push((record.topic, partition))
                    }
                    None => {}
                }
            }
            Err(error) => {
                Counters::add(&self.counters.records_failed, 1);
                reply.send(Err(ProduceError::Rejected(error)));
            }
        }
    }

    /// Sends every open batch and waits until everything sent has an outcome.
    async fn settle(&mut self) {
        let partitions = self.partition_counts();
        for batch in self
            .accumulator
            .drain(|topic| partitions.get(topic).copied().unwrap_or(1))
        {
            self.dispatch(batch);
        }
        self.launch_pending();
        while self.in_flight > 0 {
            let report = self.landed.recv().await.expect("the worker holds a sender");
            self.land(report).await;
            self.launch_pending();
        }
    }

    /// Queues a ready batch behind its shard's earlier batches; [`Self::launch_pending`]
    /// sends it, once every batch made ready in the same pass has joined it.
    fn dispatch(&mut self, batch: ReadyBatch) {
        let shard = self
            .routes
            .partitions
            .get(&batch.topic)
            .and_then(|leaders| leaders.get(batch.partition as usize))
            .copied()
            .unwrap_or(0);
        // Counted from the batch's first record, the closest to its `send`.
        let deadline = batch.first_append + self.config.delivery_timeout;
        let stamped = self.accumulator.producer();
        *self
            .unresolved
            .entry(batch.topic.clone())
            .or_default()
            .entry(batch.partition)
            .or_default() += 1;
        let flight = Flight {
            batch,
            deadline,
            stamped,
        };
        self.queues.entry(shard).or_default().push_back(flight);
        self.launching.push(shard);
    }

    /// Launches what the shards marked since the last call can send.
    fn launch_pending(&mut self) {
        if self.launching.is_empty() {
            return;
        }
        let mut shards = std::mem::take(&mut self.launching);
        shards.sort_unstable();
        shards.dedup();
        for &shard in &shards {
            self.launch(shard);
        }
        shards.clear();
        self.launching = shards;
    }

    /// Starts sorties of the shard's queued batches while it has free slots: each takes
    /// the oldest queued batch of every partition with none in flight, up to
    /// `request_bytes_max` (at least one batch).
    fn launch(&mut self, shard: u32) {
        let slots = self.config.max_in_flight_per_shard.max(1);
        while self.flying.get(&shard).copied().unwrap_or(0) < slots {
            let mut sortie = self.gather(shard);
            if sortie.is_empty() {
                return;
            }
            if self.outbox_holds_records() {
                for flight in sortie {
                    let queued = Err(ProduceError::TimedOut("queued behind the outbox".into()));
                    self.finish(flight.batch, queued);
                }
                continue;
            }
            for flight in &sortie {
                self.busy
                    .insert((flight.batch.topic.clone(), flight.batch.partition));
            }
            // One topic's partitions adjacent: one `ProduceTopic` each.
            sortie.sort_by(|a, b| a.batch.topic.cmp(&b.batch.topic));
            let client = self.idle.get_mut(&shard).and_then(Vec::pop);
            let pilot = self.pilot.clone();
            Counters::add(&self.counters.requests_sent, 1);
            R::spawn_flight(pilot, shard, client, sortie, self.landings.clone());
            self.in_flight += 1;
            *self.flying.entry(shard).or_default() += 1;
        }
    }

    /// Takes the next sortie's batches out of the shard's queue, oldest first.
    fn gather(&mut self, shard: u32) -> Vec<Flight> {
        let Some(queue) = self.queues.get_mut(&shard) else {
            return Vec::new();
        };
        let bytes_max = self.config.request_bytes_max;
        let mut sortie: Vec<Flight> = Vec::new();
        let mut taken: FastSet<(&str, u32)> = FastSet::default();
        let mut bytes = 0;
        let mut chosen = Vec::new();
        for (index, flight) in queue.iter().enumerate() {
            let batch = &flight.batch;
            let key = (batch.topic.as_str(), batch.partition);
            // A partition with a batch in flight (or already in this sortie): so is
            // every later one of it queued behind.
            if taken.contains(&key) || self.busy.contains(&(batch.topic.clone(), batch.partition)) {
                continue;
            }
            let size = batch.batch.as_bytes().len();
            if !chosen.is_empty() && bytes + size > bytes_max {
                break;
            }
            taken.insert(key);
            chosen.push(index);
            bytes += size;
        }
        drop(taken);
        for index in chosen.into_iter().rev() {
            sortie.push(queue.remove(index).expect("indexed above"));
        }
        sortie.reverse();
        sortie
    }

    /// Stamps a batch with the current producer id and its partition's next sequence.
    fn restamp(&mut self, flight: &mut Flight) {
        self.accumulator.restamp(&mut flight.batch);
        flight.stamped = self.accumulator.producer();
    }

    /// Handles a sortie's report: a batch's landing, or the sortie's end (its slot and
    /// connection free). The shard is marked for [`Self::launch_pending`].
    async fn land(&mut self, report: Report<R>) {
        let (shard, mut flight, landed) = match report {
            Report::Landed {
                shard,
                flight,
                landed,
            } => (shard, flight, landed),
            Report::Done { shard, client } => {
                self.in_flight -= 1;
                if let Some(count) = self.flying.get_mut(&shard) {
                    *count -= 1;
                }
                if let Some(client) = client {
                    self.idle.entry(shard).or_default().push(client);
                }
                self.launching.push(shard);
                return;
            }
        };
        let key = (flight.batch.topic.clone(), flight.batch.partition);
        self.busy.remove(&key);
        self.touched.push(key);
        match landed {
            Landed::Acked(base_offset) => self.finish(flight.batch, Ok(base_offset)),
            Landed::Failed(error) => self.finish(flight.batch, Err(error)),
            Landed::NewProducerId(reason) => {
                if Instant::now() >= flight.deadline {
                    Counters::add(&self.counters.producer_id_resets, 1);
                    self.finish(flight.batch, Err(ProduceError::TimedOut(reason)));
                } else if flight.stamped == self.accumulator.producer() {
                    // Every batch of this producer after the reset is stamped anew; the
                    // failed one goes first again.
                    Counters::add(&self.counters.producer_id_resets, 1);
                    if self.new_producer_id().await.is_ok() {
                        self.restamp(&mut flight);
                        let mut queues = std::mem::take(&mut self.queues);
                        for queued in queues.values_mut().flatten() {
                            self.restamp(queued);
                        }
                        self.queues = queues;
                    }
                    self.queues.entry(shard).or_default().push_front(flight);
                } else {
                    // Stamped before a reset another batch already made: its partition's
                    // queued batches took the new id first, so the partition starts over
                    // with this batch ahead of them (none of them was sent).
                    let (topic, partition) = (flight.batch.topic.clone(), flight.batch.partition);
                    self.accumulator.restart_sequence(&topic, partition);
                    self.restamp(&mut flight);
                    let mut queue = self.queues.remove(&shard).unwrap_or_default();
                    for queued in &mut queue {
                        if queued.batch.topic == topic && queued.batch.partition == partition {
                            self.restamp(queued);
                        }
                    }
                    queue.push_front(flight);
                    self.queues.insert(shard, queue);
                }
            }
        }
        self.launching.push(shard);
    }

    /// Resolves a batch's records: delivered, queued in the outbox, or failed.
    fn finish(&mut self, batch: ReadyBatch, outcome: Result<u64, ProduceError>) {
        if let Some(partitions) = self.unresolved.get_mut(&batch.topic) {
            if let Some(count) = partitions.get_mut(&batch.partition) {
                *count -= 1;
                if *count == 0 {
                    partitions.remove(&batch.partition);
                }
            }
        }
        let acknowledged = self.config.acks != Acks::None;
        self.accumulator.release(batch.payload_bytes);
        let records = batch.record_count() as u64;
        let outcome = match outcome {
            Err(ProduceError::TimedOut(reason)) if self.outbox.is_some() => {
                match self.queue_in_outbox(&batch) {
                    Ok(()) => Ok(None),
                    Err(error) => Err(ProduceError::TimedOut(format!(
                        "{reason}; and the outbox failed: {error}"
                    ))),
                }
            }
            Err(ProduceError::TimedOut(reason)) if self.outbox_error.is_some() => {
                let problem = self.outbox_error.as_deref().unwrap_or_default();
                Err(ProduceError::TimedOut(format!(
                    "{reason}; outbox: {problem}"
                )))
            }
            other => other.map(Some),
        };
        match &outcome {
            Ok(Some(_)) => {
                Counters::add(&self.counters.batches_delivered, 1);
                Counters::add(&self.counters.records_delivered, records);
            }
            Ok(None) => Counters::add(&self.counters.records_outboxed, records),
            Err(_) => Counters::add(&self.counters.records_failed, records),
        }
        let mut room_bytes = 0usize;
        for (index, id) in batch.record_ids.iter().enumerate() {
            if let Some(waiting) = self.waiting.remove(*id) {
                room_bytes += waiting.room_bytes as usize;
                let result = outcome.clone().map(|base_offset| Delivery {
                    partition: Some(waiting.partition),
                    offset: base_offset
                        .filter(|_| acknowledged)
                        .map(|base_offset| base_offset + index as u64),
                    queued_in_outbox: base_offset.is_none(),
                });
                waiting.reply.send(result);
            }
        }
        self.room.add_permits(room_bytes);
    }

    /// Makes sure the topic's metadata (and, when idempotent, a producer id) is known,
    /// retrying for up to `max_block`; returns the topic's partition count.
    async fn prepare(&mut self, topic: &str) -> Result<u32, ProduceError> {
        if let Some(leaders) = self.routes.partitions.get(topic) {
            if !self.idempotent() || self.accumulator.producer().is_some() {
                return Ok(leaders.len() as u32);
            }
        }
        let deadline = Instant::now() + self.config.max_block;
        let mut attempt = 0;
        loop {
            let limit = self.config.request_timeout;
            let result = timeout::<R, _>(limit, self.try_prepare(topic)).await;
            let error = match result {
                Some(Ok(partitions)) => return Ok(partitions),
                Some(Err(ClientError::Broker { code, message })) if !code.is_retriable() => {
                    return Err(ProduceError::Broker { code, message })
                }
                Some(Err(error)) => error.to_string(),
                None => format!("no answer within {limit:?}"),
            };
            let pause = self.pilot.backoff(attempt);
            if Instant::now() + pause >= deadline {
                return Err(ProduceError::TimedOut(format!(
                    "no metadata for {topic} within max_block: {error}"
                )));
            }
            R::sleep(pause).await;
            attempt += 1;
        }
    }

    async fn try_prepare(&mut self, topic: &str) -> Result<u32, ClientError> {
        if self.idempotent() && self.accumulator.producer().is_none() {
            self.new_producer_id().await?;
        }
        if !self.routes.partitions.contains_key(topic) {
            let leaders = crate::routing::leaders::<R>(&self.config.bootstrap, topic).await?;
            self.routes.partitions.insert(topic.to_owned(), leaders);
        }
        Ok(self.routes.partitions.get(topic).map_or(0, Vec::len) as u32)
    }

    async fn new_producer_id(&mut self) -> Result<(), ClientError> {
        let mut client = crate::runtime::connect::<R>(&self.config.bootstrap).await?;
        let (producer_id, epoch) = client.init_producer_id().await?;
        self.accumulator.set_producer(producer_id, epoch);
        Ok(())
    }

    /// Appends a batch's records to the outbox, each with the partition it was given.
    fn queue_in_outbox(&mut self, batch: &ReadyBatch) -> std::io::Result<()> {
        let outbox = self.outbox.as_mut().expect("checked by the caller");
        let view = BatchView::validate(batch.batch.as_bytes())
            .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error))?;
        let records: Vec<Record> = view
            .records()
            .map(|record| Record {
                topic: batch.topic.clone(),
                partition: Some(batch.partition),
                key: record.key().map(<[u8]>::to_vec),
                value: record.value().map(<[u8]>::to_vec),
                headers: record
                    .headers()
                    .map(|(name, value)| (name.to_owned(), value.to_vec()))
                    .collect(),
                timestamp_ms: Some(record.timestamp_ms()),
            })
            .collect();
        outbox.append(&records)
    }

    /// Publishes the outbox in order, one chunk at a time, while the broker answers.
    /// A chunk's batches keep their sequence numbers until they are acknowledged, so a
    /// retry after a lost acknowledgement is still recognised as a duplicate.
    async fn drain_outbox(&mut self) {
        // Batches sent or open before now queue in the outbox first (order).
        self.settle().await;
        loop {
            if self.outbox_chunk.is_empty() && !self.read_outbox_chunk().await {
                return;
            }
            while let Some(batch) = self.outbox_chunk.pop_front() {
                // Short: while the broker is still away, sends keep being served.
                let flight = Flight {
                    batch,
                    deadline: Instant::now() + self.config.retry_backoff_max,
                    stamped: self.accumulator.producer(),
                };
                let mut client = self.idle.get_mut(&u32::MAX).and_then(Vec::pop);
                let landings = self
                    .pilot
                    .fly(u32::MAX, &mut client, vec![flight], None)
                    .await;
                if let Some(client) = client {
                    self.idle.entry(u32::MAX).or_default().push(client);
                }
                let (flight, landed) = landings
                    .into_iter()
                    .next()
                    .expect("a sortie without reports ends each batch");
                let mut batch = flight.batch;
                match landed {
                    Landed::Acked(_) => {
                        self.accumulator.release(batch.payload_bytes);
                        let records = batch.record_count() as u64;
                        Counters::add(&self.counters.records_delivered, records);
                        Counters::add(&self.counters.batches_delivered, 1);
                    }
                    Landed::NewProducerId(_) => {
                        Counters::add(&self.counters.producer_id_resets, 1);
                        if self.new_producer_id().await.is_ok() {
                            self.accumulator.restamp(&mut batch);
                            for queued in &mut self.outbox_chunk {
                                self.accumulator.restamp(queued);
                            }
                        }
                        self.outbox_chunk.push_front(batch);
                        return;
                    }
                    Landed::Failed(ProduceError::TimedOut(_)) => {
                        // Still unreachable: try again on the next tick.
                        self.outbox_chunk.push_front(batch);
                        return;
                    }
                    Landed::Failed(error) => {
                        // Refused for good (topic deleted, batch too large): these
                        // records can never be published; count them and go on, so one
                        // bad batch does not hold the outbox forever.
                        self.accumulator.release(batch.payload_bytes);
                        let records = batch.record_count() as u64;
                        Counters::add(&self.counters.records_failed, records);
                        self.outbox_error = Some(format!("outbox records refused: {error}"));
                    }
                }
            }
            let end = self.outbox_chunk_end;
            if let Some(Err(error)) = self.outbox.as_mut().map(|outbox| outbox.commit(end)) {
                self.outbox_error = Some(error.to_string());
                return;
            }
        }
    }

    /// Reads the next outbox chunk into batches; false if there is nothing (or no way)
    /// to publish now.
    async fn read_outbox_chunk(&mut self) -> bool {
        let Some(outbox) = self.outbox.as_mut() else {
            return false;
        };
        if outbox.is_empty() {
            return false;
        }
        // About a few batches, and well inside the buffer so batching them cannot fail.
        let batching = self.config.batching;
        let chunk_bytes = (batching.batch_size_bytes * 4).min(batching.buffer_memory_bytes / 2);
        let entries = match outbox.read(chunk_bytes) {
            Ok(entries) => entries,
            Err(error) => {
                self.outbox_error = Some(error.to_string());
                return false;
            }
        };
        let mut end = None;
        for entry in entries {
            let partitions = match self.prepare(&entry.record.topic).await {
                Ok(partitions) => partitions,
                Err(ProduceError::TimedOut(_)) => {
                    // Not reachable yet: what was batched is read again next time.
                    let counts = self.partition_counts();
                    for batch in self
                        .accumulator
                        .drain(|topic| counts.get(topic).copied().unwrap_or(1))
                    {
                        self.accumulator.release(batch.payload_bytes);
                    }
                    self.outbox_chunk.clear();
                    return false;
                }
                Err(error) => {
                    // The topic is gone (or refused): this record cannot be published.
                    self.outbox_error = Some(format!("dropping an outbox record: {error}"));
                    Counters::add(&self.counters.records_failed, 1);
                    end = Some(entry.end);
                    continue;
                }
            };
            let headers = entry.record.header_refs();
            let outgoing = entry.record.outgoing(&headers);
            // Outbox records have no reply waiting: ids no send uses.
            let id = u64::MAX - self.next_id;
            self.next_id += 1;
            match self
                .accumulator
                .append(&outgoing, partitions, id, Instant::now())
            {
                Ok((_, Some(full))) => self.outbox_chunk.push_back(full),
                Ok((_, None)) => {}
                // No room: this entry and the rest wait for the next chunk.
                Err(AppendError::BufferFull { .. }) => break,
                Err(error) => {
                    // The topic shrank below the record's partition, or the record no
                    // longer fits: it cannot be published; count it and move on.
                    self.outbox_error = Some(format!("dropping an outbox record: {error}"));
                    Counters::add(&self.counters.records_failed, 1);
                }
            }
            end = Some(entry.end);
        }
        let Some(end) = end else {
            return false;
        };
        let counts = self.partition_counts();
        let rest = self
            .accumulator
            .drain(|topic| counts.get(topic).copied().unwrap_or(1));
        self.outbox_chunk.extend(rest);
        self.outbox_chunk_end = end;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(partition: u32) -> Waiting {
        Waiting {
            partition,
            reply: Reply::future(tokio::sync::oneshot::channel().0),
            room_bytes: 1,
        }
    }

    #[test]
    fn waiting_records_are_taken_once_in_any_order_and_the_front_is_dropped() {
        let mut records = WaitingRecords::default();
        records.insert(10, waiting(0));
        records.insert(11, waiting(1));
        // Id 12 failed before it waited: an empty slot.
        records.insert(13, waiting(3));
        assert_eq!(records.remove(11).map(|w| w.partition), Some(1));
        assert!(records.remove(11).is_none(), "taken once");
        assert!(records.remove(12).is_none());
        assert_eq!(records.slots.len(), 4, "the front still waits");
        assert_eq!(records.remove(10).map(|w| w.partition), Some(0));
        assert_eq!((records.first_id, records.slots.len()), (13, 1));
        assert!(
            records.remove(u64::MAX - 3).is_none(),
            "outbox ids never wait"
        );
        assert!(records.remove(9).is_none());
        assert_eq!(records.remove(13).map(|w| w.partition), Some(3));
        assert!(records.slots.is_empty());
        // Empty, it starts again at the next id.
        records.insert(20, waiting(5));
        assert_eq!(records.remove(20).map(|w| w.partition), Some(5));
    }
}
