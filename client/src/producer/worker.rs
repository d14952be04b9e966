//! The producer's background task: it owns the routes and the outbox, dispatches the
//! batches closed at the [`Desk`] (by sends, by their linger, by a flush), and keeps up
//! to `max_in_flight_per_shard` produce requests in flight per broker shard while sends
//! go on appending.
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
use tokio::sync::mpsc;

use super::desk::{Desk, Waiting};
use super::{Command, Counters, Delivery, ProduceError, ProducerConfig, Record, Reply};
use crate::accumulator::{AppendError, ReadyBatch};
use crate::fast_hash::{FastMap, FastSet};
use crate::operation::{ProduceBatches, ProducePart};
use crate::outbox::Outbox;
use crate::runtime::{timeout, Calls, Connection, Runtime};
use crate::{Acks, ClientError};

/// The runtimes' timers fire on millisecond ticks: a linger shorter than this is also
/// checked whenever a record arrives for the partition.
pub(crate) const TIMER_RESOLUTION: std::time::Duration = std::time::Duration::from_millis(1);

/// Commands handled in one pass of the worker's loop before it looks at its timers and
/// landings again.
const COMMANDS_PER_PASS: usize = 256;

/// Where each topic's partitions lead, from Metadata.
#[derive(Default)]
struct Routes {
    /// Leader shard of each partition, by topic.
    partitions: FastMap<String, Vec<u32>>,
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
    /// The accumulator, the waiting records and the buffer's bound, shared with `send`.
    desk: Arc<Desk>,
    pilot: Pilot<R>,
    routes: Routes,
    /// Ids of outbox records in batches (no send waits for them): counted down from the
    /// top, apart from the sends' ids.
    outbox_ids: u64,
    counters: Arc<Counters>,
    /// Ready batches per shard, oldest first, not yet in flight.
    queues: HashMap<u32, VecDeque<Flight>>,
    /// Partitions with a batch in flight.
    busy: FastSet<(String, u32)>,
    /// Sorties in flight per shard.
    flying: HashMap<u32, usize>,
    /// Shards whose queue or slots changed since their last launch.
    launching: Vec<u32>,
    /// Replies of a resolved batch, taken from the desk to be sent outside its lock.
    replies: Vec<(usize, Waiting)>,
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
    /// The topic whose metadata (or producer id) could not be had within `max_block`,
    /// when, and why: records of it handled soon after fail the same way at once
    /// rather than each waiting `max_block` in turn.
    unprepared: Option<(String, Instant, String)>,
}

impl<R: Runtime> Worker<R> {
    pub(super) fn new(config: ProducerConfig, desk: Arc<Desk>, counters: Arc<Counters>) -> Self {
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
            config,
            desk,
            pilot,
            routes: Routes::default(),
            outbox_ids: 0,
            counters,
            queues: HashMap::new(),
            busy: FastSet::default(),
            flying: HashMap::new(),
            launching: Vec::new(),
            replies: Vec::new(),
            idle: HashMap::new(),
            landings,
            landed,
            in_flight: 0,
            next_drain: Instant::now(),
            outbox: None,
            outbox_chunk: VecDeque::new(),
            outbox_chunk_end: 0,
            outbox_error: None,
            unprepared: None,
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
        let desk = Arc::clone(&self.desk);
        loop {
            self.publish_gauges();
            let deadline = {
                let mut desk = desk.lock();
                desk.set_clock();
                desk.next_deadline()
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
                }
                () = desk.bell.notified() => {}
                Some(report) = self.landed.recv(), if self.in_flight > 0 => {
                    self.land(report).await;
                    while let Ok(report) = self.landed.try_recv() {
                        self.land(report).await;
                    }
                }
                () = drain_due, if draining => {
                    self.drain_outbox().await;
                    self.next_drain = Instant::now() + self.config.retry_backoff_max;
                }
                () = sleep => desk.lock().close_expired(Instant::now()),
            }
            self.collect();
            self.launch_pending();
        }
    }

    /// Handles one command; false once the producer is closed.
    async fn handle(&mut self, command: Command, commands: &mut mpsc::Receiver<Command>) -> bool {
        match command {
            Command::Send(record, reply, size) => self.append(record, reply, size).await,
            Command::Flush(done) => {
                // Every record sent before the flush, not those sent while it waits: a
                // flush returns even while other tasks keep sending.
                let boundary = self.desk.lock().next_id();
                self.settle_until(Some(boundary)).await;
                let _ = done.send(());
            }
            Command::Close(done) => {
                self.desk.lock().closed = true;
                commands.close();
                let mut answered_after = vec![done];
                while let Some(command) = commands.recv().await {
                    match command {
                        Command::Send(record, reply, size) => {
                            self.append(record, reply, size).await
                        }
                        // Answered once everything has its outcome, as they ask.
                        Command::Flush(done) | Command::Close(done) => answered_after.push(done),
                    }
                }
                self.settle().await;
                drop(self.outbox.take());
                for done in answered_after {
                    let _ = done.send(());
                }
                return false;
            }
        }
        true
    }

    /// Dispatches the batches closed at the desk since the last call, oldest first,
    /// after closing those of the partitions touched whose linger has passed.
    fn collect(&mut self) {
        let (ready, stamped) = {
            let mut desk = self.desk.lock();
            if !desk.touched.is_empty() {
                desk.close_touched(Instant::now());
            }
            if desk.ready.is_empty() {
                return;
            }
            (std::mem::take(&mut desk.ready), desk.accumulator.producer())
        };
        for batch in ready {
            self.dispatch(batch, stamped);
        }
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

    /// Appends a record `send` handed over (its topic was not known yet, or the
    /// producer has an outbox), once its topic's metadata is known. `size` is the
    /// buffer room `send` reserved for it.
    async fn append(&mut self, record: Record, reply: Reply, size: usize) {
        let partitions = match self.prepare(&record.topic).await {
            Ok(count) => count,
            Err(error) => {
                self.desk.lock().unhand(&record.topic, size);
                self.desk.room.notify_waiters();
                return self.fail_unappended(record, reply, error);
            }
        };
        let headers = record.header_refs();
        let mut desk = self.desk.lock();
        desk.unhand(&record.topic, size);
        // Cannot fail for room: `send` reserved it. Without a timestamp, the
        // accumulator stamps the record with the time of the append.
        let appended = desk.append(&record.borrowed(&headers), partitions, reply, None);
        drop(desk);
        // Sends waiting for this topic's handed records to be appended may go on.
        self.desk.room.notify_waiters();
        if let Err((reply, error)) = appended {
            Counters::add(&self.counters.records_failed, 1);
            reply.send(Err(ProduceError::Rejected(error)));
        }
    }

    /// A handed record whose topic could not be prepared: into the outbox if the broker
    /// is unreachable and there is one, failed otherwise.
    fn fail_unappended(&mut self, record: Record, reply: Reply, error: ProduceError) {
        match error {
            ProduceError::TimedOut(reason) if self.outbox.is_some() => {
                let outbox = self.outbox.as_mut().expect("checked");
                let result = match outbox.append(std::slice::from_ref(&record)) {
                    Ok(()) => {
                        Counters::add(&self.counters.records_outboxed, 1);
                        Ok(Delivery {
                            partition: record.partition,
                            offset: None,
                            queued_in_outbox: true,
                            acknowledged_at: Instant::now(),
                        })
                    }
                    Err(error) => Err(ProduceError::TimedOut(format!(
                        "{reason}; and the outbox failed: {error}"
                    ))),
                };
                reply.send(result);
            }
            error => {
                Counters::add(&self.counters.records_failed, 1);
                reply.send(Err(error));
            }
        }
    }

    /// Sends every open batch and waits until everything sent has an outcome.
    async fn settle(&mut self) {
        self.settle_until(None).await
    }

    /// Closes every open batch and waits until nothing is in flight, or, with a
    /// `boundary`, until no record with a lower id waits for its outcome.
    async fn settle_until(&mut self, boundary: Option<u64>) {
        self.desk.lock().close_all();
        self.collect();
        self.launch_pending();
        let waits = |worker: &Self| match boundary {
            Some(boundary) => worker.desk.lock().waiting.any_below(boundary),
            None => true,
        };
        while self.in_flight > 0 && waits(self) {
            let report = self.landed.recv().await.expect("the worker holds a sender");
            self.land(report).await;
            self.collect();
            self.launch_pending();
        }
    }

    /// Queues a ready batch behind its shard's earlier batches; [`Self::launch_pending`]
    /// sends it, once every batch made ready in the same pass has joined it. `stamped`
    /// is the producer id and epoch it was closed under.
    fn dispatch(&mut self, batch: ReadyBatch, stamped: Option<(i64, i16)>) {
        let shard = self
            .routes
            .partitions
            .get(&batch.topic)
            .and_then(|leaders| leaders.get(batch.partition as usize))
            .copied()
            .unwrap_or(0);
        // Counted from the batch's first record, the closest to its `send`.
        let deadline = batch.first_append + self.config.delivery_timeout;
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

    /// Takes a new producer id and stamps, in this order, `first`, every queued batch
    /// and the batches closed at the desk but not dispatched yet (which then join their
    /// queues) under it: all under the desk's lock, so that no send closes a batch under
    /// the new id before the older ones have their sequence numbers.
    fn adopt_producer(&mut self, producer_id: i64, epoch: i16, first: Option<&mut Flight>) {
        let desk = Arc::clone(&self.desk);
        let mut desk = desk.lock();
        desk.accumulator.set_producer(producer_id, epoch);
        let stamped = Some((producer_id, epoch));
        for flight in first.into_iter().chain(self.queues.values_mut().flatten()) {
            desk.accumulator.restamp(&mut flight.batch);
            flight.stamped = stamped;
        }
        let mut ready = std::mem::take(&mut desk.ready);
        for batch in &mut ready {
            desk.accumulator.restamp(batch);
        }
        drop(desk);
        for batch in ready {
            self.dispatch(batch, stamped);
        }
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
        // Its open batch may be sendable now.
        self.desk.lock().touched.push(key);
        match landed {
            Landed::Acked(base_offset) => self.finish(flight.batch, Ok(base_offset)),
            Landed::Failed(error) => self.finish(flight.batch, Err(error)),
            Landed::NewProducerId(reason) => {
                if Instant::now() >= flight.deadline {
                    Counters::add(&self.counters.producer_id_resets, 1);
                    self.finish(flight.batch, Err(ProduceError::TimedOut(reason)));
                } else if flight.stamped == self.desk.lock().accumulator.producer() {
                    // Every batch of this producer after the reset is stamped anew; the
                    // failed one goes first again.
                    Counters::add(&self.counters.producer_id_resets, 1);
                    match self.request_producer_id().await {
                        Ok((producer_id, epoch)) => {
                            self.adopt_producer(producer_id, epoch, Some(&mut flight))
                        }
                        // Sent again as it is, it would be refused again at once: pause.
                        Err(_) => R::sleep(self.config.retry_backoff).await,
                    }
                    self.queues.entry(shard).or_default().push_front(flight);
                } else {
                    // Stamped before a reset another batch already made: its partition's
                    // later batches took the new id first, so the partition starts over
                    // with this batch ahead of them (none of them was sent: a partition
                    // has one batch in flight).
                    let (topic, partition) = (flight.batch.topic.clone(), flight.batch.partition);
                    let desk = Arc::clone(&self.desk);
                    let mut desk = desk.lock();
                    let stamped = desk.accumulator.producer();
                    let mut ready = std::mem::take(&mut desk.ready);
                    desk.accumulator.restart_sequence(&topic, partition);
                    let of_partition =
                        |batch: &ReadyBatch| batch.topic == topic && batch.partition == partition;
                    desk.accumulator.restamp(&mut flight.batch);
                    flight.stamped = stamped;
                    let queue = self.queues.entry(shard).or_default();
                    for queued in queue
                        .iter_mut()
                        .filter(|queued| of_partition(&queued.batch))
                    {
                        desk.accumulator.restamp(&mut queued.batch);
                        queued.stamped = stamped;
                    }
                    for batch in ready.iter_mut().filter(|batch| of_partition(batch)) {
                        desk.accumulator.restamp(batch);
                    }
                    drop(desk);
                    queue.push_front(flight);
                    for batch in ready {
                        self.dispatch(batch, stamped);
                    }
                }
            }
        }
        self.launching.push(shard);
    }

    /// Gives a resolved outbox batch's buffer room back.
    fn release(&self, payload_bytes: usize) {
        self.desk.lock().accumulator.release(payload_bytes);
        self.desk.room.notify_waiters();
    }

    /// Resolves a batch's records: delivered, queued in the outbox, or failed.
    fn finish(&mut self, batch: ReadyBatch, outcome: Result<u64, ProduceError>) {
        let mut replies = std::mem::take(&mut self.replies);
        {
            let mut desk = self.desk.lock();
            desk.resolved_batch(&batch);
            desk.accumulator.release(batch.payload_bytes);
            for (index, id) in batch.record_ids.iter().enumerate() {
                if let Some(waiting) = desk.waiting.remove(*id) {
                    replies.push((index, waiting));
                }
            }
        }
        self.desk.room.notify_waiters();
        let acknowledged = self.config.acks != Acks::None;
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
        // Outside the desk's lock: a callback may send.
        let acknowledged_at = Instant::now();
        for (index, waiting) in replies.drain(..) {
            let result = outcome.clone().map(|base_offset| Delivery {
                partition: Some(waiting.partition),
                offset: base_offset
                    .filter(|_| acknowledged)
                    .map(|base_offset| base_offset + index as u64),
                queued_in_outbox: base_offset.is_none(),
                acknowledged_at,
            });
            waiting.reply.send(result);
        }
        self.replies = replies;
    }

    /// Makes sure the topic's metadata (and, when idempotent, a producer id) is known,
    /// retrying for up to `max_block`; returns the topic's partition count.
    async fn prepare(&mut self, topic: &str) -> Result<u32, ProduceError> {
        if let Some(leaders) = self.routes.partitions.get(topic) {
            if !self.idempotent() || self.desk.lock().accumulator.producer().is_some() {
                return Ok(leaders.len() as u32);
            }
        }
        if let Some((failed, at, reason)) = &self.unprepared {
            if failed == topic && at.elapsed() < self.config.retry_backoff_max {
                return Err(ProduceError::TimedOut(reason.clone()));
            }
        }
        let deadline = Instant::now() + self.config.max_block;
        let mut attempt = 0;
        loop {
            let limit = self.config.request_timeout;
            let result = timeout::<R, _>(limit, self.try_prepare(topic)).await;
            let error = match result {
                Some(Ok(partitions)) => {
                    if self
                        .unprepared
                        .as_ref()
                        .is_some_and(|(failed, _, _)| failed == topic)
                    {
                        self.unprepared = None;
                    }
                    return Ok(partitions);
                }
                Some(Err(ClientError::Broker { code, message })) if !code.is_retriable() => {
                    return Err(ProduceError::Broker { code, message })
                }
                Some(Err(error)) => error.to_string(),
                None => format!("no answer within {limit:?}"),
            };
            let pause = self.pilot.backoff(attempt);
            if Instant::now() + pause >= deadline {
                let reason = format!("no metadata for {topic} within max_block: {error}");
                self.unprepared = Some((topic.to_owned(), Instant::now(), reason.clone()));
                return Err(ProduceError::TimedOut(reason));
            }
            R::sleep(pause).await;
            attempt += 1;
        }
    }

    async fn try_prepare(&mut self, topic: &str) -> Result<u32, ClientError> {
        if self.idempotent() && self.desk.lock().accumulator.producer().is_none() {
            let (producer_id, epoch) = self.request_producer_id().await?;
            self.adopt_producer(producer_id, epoch, None);
        }
        if !self.routes.partitions.contains_key(topic) {
            let leaders = crate::routing::leaders::<R>(&self.config.bootstrap, topic).await?;
            self.routes.partitions.insert(topic.to_owned(), leaders);
        }
        let partitions = self.routes.partitions.get(topic).map_or(0, Vec::len) as u32;
        // From now on sends of this topic append themselves.
        self.desk.lock().known.insert(topic, partitions);
        Ok(partitions)
    }

    /// A new producer id and epoch from the broker (see [`Self::adopt_producer`]),
    /// within `request_timeout`: the worker waits for it.
    async fn request_producer_id(&mut self) -> Result<(i64, i16), ClientError> {
        let limit = self.config.request_timeout;
        let bootstrap = &self.config.bootstrap;
        let requested = timeout::<R, _>(limit, async {
            let mut client = crate::runtime::connect::<R>(bootstrap).await?;
            client.init_producer_id().await
        })
        .await;
        requested.unwrap_or_else(|| Err(timed_out(limit)))
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
                    stamped: self.desk.lock().accumulator.producer(),
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
                        self.release(batch.payload_bytes);
                        let records = batch.record_count() as u64;
                        Counters::add(&self.counters.records_delivered, records);
                        Counters::add(&self.counters.batches_delivered, 1);
                    }
                    Landed::NewProducerId(_) => {
                        Counters::add(&self.counters.producer_id_resets, 1);
                        match self.request_producer_id().await {
                            Ok((producer_id, epoch)) => {
                                // Nothing else is queued or closed meanwhile: the outbox
                                // is drained after a settle, and its producer's sends all
                                // go through this task.
                                let mut desk = self.desk.lock();
                                desk.accumulator.set_producer(producer_id, epoch);
                                desk.accumulator.restamp(&mut batch);
                                for queued in &mut self.outbox_chunk {
                                    desk.accumulator.restamp(queued);
                                }
                            }
                            Err(_) => R::sleep(self.config.retry_backoff).await,
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
                        self.release(batch.payload_bytes);
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
                    // Both the open batches and the full ones already taken out give
                    // their room back.
                    let counts = self.partition_counts();
                    let mut desk = self.desk.lock();
                    let open = desk
                        .accumulator
                        .drain(|topic| counts.get(topic).copied().unwrap_or(1));
                    for batch in open.into_iter().chain(self.outbox_chunk.drain(..)) {
                        desk.accumulator.release(batch.payload_bytes);
                    }
                    drop(desk);
                    self.desk.room.notify_waiters();
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
            let outgoing = entry.record.borrowed(&headers);
            // Outbox records have no reply waiting: ids no send uses.
            let id = u64::MAX - self.outbox_ids;
            self.outbox_ids += 1;
            // Only the accumulator's own bound: records handed by sends have their room
            // reserved and are appended past it if need be (`append_checked`), so the
            // drain always makes progress, holding at most one chunk more.
            let appended =
                self.desk
                    .lock()
                    .accumulator
                    .append(&outgoing, partitions, id, Instant::now());
            match appended {
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
            .desk
            .lock()
            .accumulator
            .drain(|topic| counts.get(topic).copied().unwrap_or(1));
        self.outbox_chunk.extend(rest);
        self.outbox_chunk_end = end;
        true
    }
}

/// The error of a request the broker did not answer within `limit`.
pub(crate) fn timed_out(limit: Duration) -> ClientError {
    ClientError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer within {limit:?}"),
    ))
}
