//! The producer's background task: it owns the accumulator, the routes and the outbox,
//! and keeps up to `max_in_flight_per_shard` batches in flight per broker shard while it
//! goes on accumulating.
//!
//! Ordering: ready batches join their shard's queue in the order they were closed. A
//! shard sends up to `max_in_flight_per_shard` of them at once, each of a different
//! partition and on its own connection, and retries each until it is acknowledged,
//! refused, or out of time ([`Pilot::fly`], a spawned task that owns the connection
//! while the batch is in flight). A partition has at most one batch in flight, and its
//! next is the oldest queued: so batches of a partition reach the broker in order, and a
//! retry is always of the partition's latest batch, which the broker's idempotence state
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
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::{Command, Counters, Delivery, ProduceError, ProducerConfig, Record, Reply};
use crate::accumulator::{Accumulator, AppendError, ReadyBatch};
use crate::fast_hash::{FastMap, FastSet};
use crate::outbox::Outbox;
use crate::runtime::{timeout, Calls, Runtime};
use crate::{Acks, ClientError};

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
    _room: OwnedSemaphorePermit,
}

/// A batch on its way, with the time it must be acknowledged by.
pub(crate) struct Flight {
    batch: ReadyBatch,
    deadline: Instant,
    /// The producer id and epoch the batch carries.
    stamped: Option<(i64, i16)>,
}

/// How a flight ended.
enum Landed {
    Acked(u64),
    Failed(ProduceError),
    /// The partition lost this producer's state: take a new producer id and resend.
    NewProducerId(String),
}

/// A flight's end, with the connection to reuse.
pub(crate) struct Landing<R: Runtime> {
    shard: u32,
    client: Option<R::Connection>,
    flight: Flight,
    landed: Landed,
}

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

    /// Sends the batch, reconnecting and retrying with backoff, until it is acknowledged,
    /// refused, or its deadline passes.
    pub(crate) async fn fly(
        self,
        shard: u32,
        mut client: Option<R::Connection>,
        flight: Flight,
    ) -> Landing<R> {
        let mut attempt = 0;
        let landed = loop {
            let reason = match self.attempt(&mut client, &flight.batch).await {
                Ok(base_offset) => break Landed::Acked(base_offset),
                Err(Err(landed)) => break landed,
                Err(Ok(reason)) => reason,
            };
            let pause = self.backoff(attempt);
            if Instant::now() + pause >= flight.deadline {
                break Landed::Failed(ProduceError::TimedOut(reason));
            }
            Counters::add(&self.counters.retries, 1);
            R::sleep(pause).await;
            attempt += 1;
        };
        Landing {
            shard,
            client,
            flight,
            landed,
        }
    }

    /// Flies and reports the landing to the worker.
    pub(crate) async fn fly_and_report(
        self,
        shard: u32,
        client: Option<R::Connection>,
        flight: Flight,
        landings: mpsc::Sender<Landing<R>>,
    ) {
        let landing = self.fly(shard, client, flight).await;
        // The worker only goes away with the producer.
        let _ = landings.send(landing).await;
    }

    /// One attempt. On failure: `Ok(reason)` to retry, `Err(landed)` to stop.
    async fn attempt(
        &self,
        client: &mut Option<R::Connection>,
        batch: &ReadyBatch,
    ) -> Result<u64, Result<String, Landed>> {
        let limit = self.request_timeout;
        let result = timeout::<R, _>(limit, async {
            if client.is_none() {
                let leader = crate::routing::connect_leader::<R>(
                    &self.bootstrap,
                    &batch.topic,
                    batch.partition,
                );
                *client = Some(leader.await?);
            }
            let connection = client.as_mut().expect("connected above");
            let bytes = [batch.batch.as_bytes()];
            connection
                .produce(&batch.topic, batch.partition, &bytes, self.acks)
                .await
        })
        .await
        .ok_or(());
        match result {
            Ok(Ok(produced)) => {
                let code = ErrorCode::from_u16(produced.outcome.error_code);
                if code == ErrorCode::DuplicateSequence {
                    Counters::add(&self.counters.duplicates_detected, 1);
                }
                Ok(produced.base_offset)
            }
            Ok(Err(ClientError::Broker { code, message })) => {
                let reason = format!("{code:?}: {message}");
                match code {
                    ErrorCode::OutOfOrderSequence | ErrorCode::UnknownProducerId => {
                        Err(Err(Landed::NewProducerId(reason)))
                    }
                    // The partition may have moved: reconnect through Metadata.
                    ErrorCode::UnknownPartition | ErrorCode::UnknownTopic => {
                        *client = None;
                        if code == ErrorCode::UnknownTopic {
                            let error = ProduceError::Broker { code, message };
                            return Err(Err(Landed::Failed(error)));
                        }
                        Err(Ok(reason))
                    }
                    code if code.is_retriable() => Err(Ok(reason)),
                    code => Err(Err(Landed::Failed(ProduceError::Broker { code, message }))),
                }
            }
            Ok(Err(error)) => {
                *client = None;
                Err(Ok(error.to_string()))
            }
            Err(_) => {
                // The request may still be in flight: drop the connection.
                *client = None;
                Err(Ok(format!("no answer within {limit:?}")))
            }
        }
    }
}

pub(crate) struct Worker<R: Runtime> {
    config: ProducerConfig,
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
    /// Batches in flight per shard.
    flying: HashMap<u32, usize>,
    /// Batches dispatched and not yet resolved, per partition.
    unresolved: Unresolved,
    /// Partitions whose open batch may have become sendable since the last check.
    touched: Vec<(String, u32)>,
    /// Connections not in use, per shard.
    idle: HashMap<u32, Vec<R::Connection>>,
    /// Batches in flight report here.
    landings: mpsc::Sender<Landing<R>>,
    landed: mpsc::Receiver<Landing<R>>,
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
    pub(super) fn new(config: ProducerConfig, counters: Arc<Counters>) -> Self {
        // A landing is sent by a flight holding one of its shard's slots.
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
            config,
            pilot,
            waiting: WaitingRecords::default(),
            routes: Routes::default(),
            next_id: 0,
            counters,
            queues: HashMap::new(),
            busy: FastSet::default(),
            flying: HashMap::new(),
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
                }
                Some(landing) = self.landed.recv(), if self.in_flight > 0 => {
                    self.land(landing).await;
                    while let Ok(landing) = self.landed.try_recv() {
                        self.land(landing).await;
                    }
                    self.send_touched();
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
                let _ = done.send(());
            }
            Command::Close(done) => {
                commands.close();
                while let Some(command) = commands.recv().await {
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
        let partitions = match self.prepare(&record.topic).await {
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
                let _ = reply.send(result);
                return;
            }
            Err(error) => {
                Counters::add(&self.counters.records_failed, 1);
                let _ = reply.send(Err(error));
                return;
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        let headers = record.header_refs();
        let outgoing = record.outgoing(&headers);
        let mut result = self
            .accumulator
            .append(&outgoing, partitions, id, Instant::now());
        if matches!(result, Err(AppendError::BufferFull { .. })) {
            // Cannot happen while `send` reserves room first; kept as a backstop.
            self.settle().await;
            result = self
                .accumulator
                .append(&outgoing, partitions, id, Instant::now());
        }
        match result {
            Ok((partition, ready)) => {
                let waiting = Waiting {
                    partition,
                    reply,
                    _room: room,
                };
                self.waiting.insert(id, waiting);
                match ready {
                    Some(batch) => self.dispatch(batch),
                    // With no linger the batch is due at once, if its partition is free.
                    None if self.config.batching.linger.is_zero() => {
                        self.touched.push((record.topic, partition))
                    }
                    None => {}
                }
            }
            Err(error) => {
                Counters::add(&self.counters.records_failed, 1);
                let _ = reply.send(Err(ProduceError::Rejected(error)));
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
        while self.in_flight > 0 {
            let landing = self.landed.recv().await.expect("the worker holds a sender");
            self.land(landing).await;
        }
    }

    /// Queues a ready batch behind its shard's earlier batches.
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
        self.launch(shard);
    }

    /// Starts the shard's oldest queued batches whose partitions have none in flight,
    /// while it has free slots.
    fn launch(&mut self, shard: u32) {
        let slots = self.config.max_in_flight_per_shard.max(1);
        let mut index = 0;
        while self.flying.get(&shard).copied().unwrap_or(0) < slots {
            let Some(queue) = self.queues.get_mut(&shard) else {
                return;
            };
            let Some(next) = queue.get(index) else {
                return;
            };
            let key = (next.batch.topic.clone(), next.batch.partition);
            if self.busy.contains(&key) {
                // Its partition's earlier batch is in flight; so is every later one's.
                index += 1;
                continue;
            }
            let flight = queue.remove(index).expect("indexed above");
            if self.outbox_holds_records() {
                let queued = Err(ProduceError::TimedOut("queued behind the outbox".into()));
                self.finish(flight.batch, queued);
                continue;
            }
            let client = self.idle.get_mut(&shard).and_then(Vec::pop);
            let pilot = self.pilot.clone();
            R::spawn_flight(pilot, shard, client, flight, self.landings.clone());
            self.in_flight += 1;
            *self.flying.entry(shard).or_default() += 1;
            self.busy.insert(key);
        }
    }

    /// Stamps a batch with the current producer id and its partition's next sequence.
    fn restamp(&mut self, flight: &mut Flight) {
        self.accumulator.restamp(&mut flight.batch);
        flight.stamped = self.accumulator.producer();
    }

    /// Handles a flight's end and starts the shard's next batch.
    async fn land(&mut self, landing: Landing<R>) {
        let Landing {
            shard,
            client,
            mut flight,
            landed,
        } = landing;
        self.in_flight -= 1;
        if let Some(count) = self.flying.get_mut(&shard) {
            *count -= 1;
        }
        let key = (flight.batch.topic.clone(), flight.batch.partition);
        self.busy.remove(&key);
        self.touched.push(key);
        if let Some(client) = client {
            self.idle.entry(shard).or_default().push(client);
        }
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
        self.launch(shard);
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
        for (index, id) in batch.record_ids.iter().enumerate() {
            if let Some(waiting) = self.waiting.remove(*id) {
                let result = outcome.clone().map(|base_offset| Delivery {
                    partition: Some(waiting.partition),
                    offset: base_offset
                        .filter(|_| acknowledged)
                        .map(|base_offset| base_offset + index as u64),
                    queued_in_outbox: base_offset.is_none(),
                });
                let _ = waiting.reply.send(result);
            }
        }
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
                let client = self.idle.get_mut(&u32::MAX).and_then(Vec::pop);
                let landing = self.pilot.clone().fly(u32::MAX, client, flight).await;
                if let Some(client) = landing.client {
                    self.idle.entry(u32::MAX).or_default().push(client);
                }
                let mut batch = landing.flight.batch;
                match landing.landed {
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
        let room = Arc::new(tokio::sync::Semaphore::new(1));
        Waiting {
            partition,
            reply: tokio::sync::oneshot::channel().0,
            _room: room.try_acquire_owned().expect("a permit"),
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
