//! The producer, on tokio: `send` returns a delivery future at once; records are batched
//! per partition by the [`Accumulator`] (size and linger), sent to each partition's own
//! shard, and retried with exponential backoff on connection loss and retriable errors
//! until `delivery_timeout`.
//!
//! One background task owns the accumulator and the connections; handles are cheap
//! clones (`Send + Sync`) that talk to it over a channel. Buffered records are bounded
//! in bytes (`batching.buffer_memory_bytes`): `send` waits up to `max_block` for room,
//! then fails with [`ProduceError::BufferFull`].
//!
//! Idempotence (on by default, with acks 1 and all): the producer gets a producer id
//! from the broker and stamps every batch with it and a per-partition sequence number.
//! Batches of a partition are sent one at a time, in order, and retried unchanged, so a
//! retry after a lost acknowledgement is recognised by the partition and answered with
//! the original offsets: no duplicates, no reordering. If the partition lost the
//! producer's state (an acks=1 tail lost in a broker crash, or the producer evicted), it
//! answers out-of-sequence / unknown-producer; the producer then takes a new producer id
//! and resends the batch under it (what was lost stays lost: that is acks=1).
//! Without idempotence, delivery is at least once.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flumen_protocol::wire::ErrorCode;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::accumulator::{
    record_size, Accumulator, AccumulatorConfig, AppendError, OutgoingRecord, ReadyBatch,
};
use crate::outbox::Outbox;
use crate::{Acks, AsyncClient, ClientError};
use flumen_protocol::record::BatchView;

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// A broker address.
    pub bootstrap: String,
    /// Acknowledgement mode.
    pub acks: Acks,
    /// Batching limits and the buffer bound.
    pub batching: AccumulatorConfig,
    /// Idempotent delivery (producer id and sequence numbers); applies to acks 1 and all.
    pub idempotence: bool,
    /// How long a record may take from `send` to acknowledgement, retries included.
    pub delivery_timeout: Duration,
    /// How long `send` waits for buffer room, and the producer for metadata and a
    /// producer id, before failing.
    pub max_block: Duration,
    /// How long one produce request may take before the connection is dropped and the
    /// batch retried.
    pub request_timeout: Duration,
    /// First pause between retries; it doubles per attempt up to `retry_backoff_max`.
    pub retry_backoff: Duration,
    /// Longest pause between retries.
    pub retry_backoff_max: Duration,
    /// A directory for the durable outbox (see [`crate::outbox`]): records the broker
    /// could not take within `delivery_timeout` (or whose topic's metadata did not come
    /// within `max_block`) because it was unreachable are kept there and published in
    /// order once it is back; their delivery says `queued_in_outbox`. `None`: such
    /// records fail with [`ProduceError::TimedOut`].
    pub outbox: Option<std::path::PathBuf>,
}

impl ProducerConfig {
    /// Defaults for `bootstrap`: acks=all, idempotent, 5 ms linger, 32 MiB buffer, 2 min
    /// delivery timeout, 60 s max block, 30 s request timeout, backoff 100 ms to 1 s.
    pub fn new(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            acks: Acks::All,
            batching: AccumulatorConfig::default(),
            idempotence: true,
            delivery_timeout: Duration::from_secs(120),
            max_block: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(1),
            outbox: None,
        }
    }
}

/// A record to send: bytes in (see [`crate::serde`] for typed values).
///
/// ```
/// use flumen_client::Record;
///
/// let record = Record::new("orders", "order #1").with_key("customer-7").with_header("source", "web");
/// assert_eq!(record.key.as_deref(), Some(&b"customer-7"[..]));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Topic.
    pub topic: String,
    /// Explicit partition; `None` lets the partitioner choose (key hash or sticky).
    pub partition: Option<u32>,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value (`None`: a tombstone).
    pub value: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Timestamp in ms since the epoch; `None` means now.
    pub timestamp_ms: Option<i64>,
}

impl Record {
    /// A record with a value and nothing else.
    pub fn new(topic: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Self {
            topic: topic.into(),
            value: Some(value.into()),
            ..Self::default()
        }
    }

    /// With a key (records with the same key go to the same partition).
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// To an explicit partition.
    pub fn with_partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// With one more header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// With a timestamp (ms since the epoch) instead of the send time.
    pub fn with_timestamp(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    fn outgoing<'a>(&'a self, headers: &'a [(&'a str, &'a [u8])]) -> OutgoingRecord<'a> {
        OutgoingRecord {
            topic: &self.topic,
            partition: self.partition,
            key: self.key.as_deref(),
            value: self.value.as_deref(),
            headers,
            timestamp_ms: self.timestamp_ms.unwrap_or_else(now_ms),
        }
    }

    fn header_refs(&self) -> Vec<(&str, &[u8])> {
        self.headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_slice()))
            .collect()
    }
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Partition; `None` only for a record queued in the outbox before the producer could
    /// learn the topic's partitions (it is partitioned when published).
    pub partition: Option<u32>,
    /// Offset; `None` with acks=0, where the broker does not answer, and for records
    /// queued in the outbox.
    pub offset: Option<u64>,
    /// The broker was unreachable for `delivery_timeout`: the record is in the durable
    /// outbox and will be published in order once the broker is back.
    pub queued_in_outbox: bool,
}

/// Why a record was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProduceError {
    /// The broker refused it with a non-retriable error.
    #[error("{code:?}: {message}")]
    Broker {
        /// Error code.
        code: ErrorCode,
        /// The broker's message.
        message: String,
    },
    /// The record could not be accepted (size, partition).
    #[error(transparent)]
    Rejected(#[from] AppendError),
    /// The buffer stayed full for `max_block`: the broker is slower than the producer, or
    /// unreachable.
    #[error("producer buffer full for {waited:?} (max_block); {buffer_bytes} bytes buffered")]
    BufferFull {
        /// How long `send` waited.
        waited: Duration,
        /// The buffer bound.
        buffer_bytes: usize,
    },
    /// Not acknowledged within `delivery_timeout` (or, for metadata, `max_block`); the
    /// last failure is given.
    #[error("not delivered in time; last error: {0}")]
    TimedOut(String),
    /// The producer was closed.
    #[error("the producer is closed")]
    Closed,
}

type Reply = oneshot::Sender<Result<Delivery, ProduceError>>;

/// Counters of a producer since it started (see [`Producer::metrics`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProducerMetrics {
    /// Records acknowledged (or sent, with acks=0).
    pub records_delivered: u64,
    /// Records that failed.
    pub records_failed: u64,
    /// Batches acknowledged.
    pub batches_delivered: u64,
    /// Produce attempts retried (connection loss, timeouts, retriable errors).
    pub retries: u64,
    /// Retries the partition recognised as duplicates (idempotence at work).
    pub duplicates_detected: u64,
    /// Times the producer took a new producer id after the broker lost its state.
    pub producer_id_resets: u64,
    /// Records queued in the outbox.
    pub records_outboxed: u64,
    /// Bytes in the outbox not yet published (0 without an outbox).
    pub outbox_pending_bytes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    records_delivered: AtomicU64,
    records_failed: AtomicU64,
    batches_delivered: AtomicU64,
    retries: AtomicU64,
    duplicates_detected: AtomicU64,
    producer_id_resets: AtomicU64,
    records_outboxed: AtomicU64,
    outbox_pending_bytes: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
    }

    fn snapshot(&self) -> ProducerMetrics {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ProducerMetrics {
            records_delivered: read(&self.records_delivered),
            records_failed: read(&self.records_failed),
            batches_delivered: read(&self.batches_delivered),
            retries: read(&self.retries),
            duplicates_detected: read(&self.duplicates_detected),
            producer_id_resets: read(&self.producer_id_resets),
            records_outboxed: read(&self.records_outboxed),
            outbox_pending_bytes: read(&self.outbox_pending_bytes),
        }
    }
}

/// Resolves when the record is acknowledged or has failed.
#[derive(Debug)]
pub struct DeliveryFuture(oneshot::Receiver<Result<Delivery, ProduceError>>);

impl DeliveryFuture {
    fn failed(error: ProduceError) -> Self {
        let (reply, delivery) = oneshot::channel();
        let _ = reply.send(Err(error));
        Self(delivery)
    }
}

impl Future for DeliveryFuture {
    type Output = Result<Delivery, ProduceError>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(context)
            .map(|result| result.unwrap_or(Err(ProduceError::Closed)))
    }
}

enum Command {
    /// A record, its reply and the buffer room it holds until it is resolved.
    Send(Record, Reply, OwnedSemaphorePermit),
    Flush(oneshot::Sender<()>),
    /// Deliver what was sent before, release the outbox, stop.
    Close(oneshot::Sender<()>),
}

/// A handle to the producer; clone it freely (`Send + Sync`).
///
/// ```no_run
/// use flumen_client::{Producer, ProducerConfig, Record};
///
/// # async fn example() -> Result<(), flumen_client::ProduceError> {
/// let producer = Producer::start(ProducerConfig::new("127.0.0.1:9292"));
/// let delivery = producer.send(Record::new("orders", "order #1").with_key("customer-7")).await;
/// let landed = delivery.await?;
/// println!("partition {:?} offset {:?}", landed.partition, landed.offset);
/// producer.close().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Producer {
    commands: mpsc::UnboundedSender<Command>,
    room: Arc<Semaphore>,
    buffer_bytes: usize,
    max_block: Duration,
    counters: Arc<Counters>,
}

impl Producer {
    /// Starts the producer's background task on the current tokio runtime. Panics if the
    /// batching limits are invalid ([`AccumulatorConfig::validate`]).
    pub fn start(config: ProducerConfig) -> Self {
        let (commands, receiver) = mpsc::unbounded_channel();
        let buffer_bytes = config.batching.buffer_memory_bytes;
        let max_block = config.max_block;
        let counters = Arc::new(Counters::default());
        tokio::spawn(Worker::new(config, Arc::clone(&counters)).run(receiver));
        Self {
            commands,
            room: Arc::new(Semaphore::new(buffer_bytes)),
            buffer_bytes,
            max_block,
            counters,
        }
    }

    /// Counters since the producer started.
    pub fn metrics(&self) -> ProducerMetrics {
        self.counters.snapshot()
    }

    /// Queues a record; the returned future resolves once it is acknowledged or failed.
    /// Waits up to `max_block` for buffer room. Dropping the future does not cancel the
    /// send.
    pub async fn send(&self, record: Record) -> DeliveryFuture {
        let size = record_size(&record.outgoing(&record.header_refs()));
        if size > self.buffer_bytes {
            return DeliveryFuture::failed(ProduceError::Rejected(AppendError::RecordTooLarge {
                record_bytes: size,
                limit_bytes: self.buffer_bytes,
            }));
        }
        let acquire = Arc::clone(&self.room).acquire_many_owned(size as u32);
        let permit = match tokio::time::timeout(self.max_block, acquire).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return DeliveryFuture::failed(ProduceError::Closed),
            Err(_) => {
                return DeliveryFuture::failed(ProduceError::BufferFull {
                    waited: self.max_block,
                    buffer_bytes: self.buffer_bytes,
                })
            }
        };
        let (reply, delivery) = oneshot::channel();
        if let Err(mpsc::error::SendError(Command::Send(_, reply, _))) =
            self.commands.send(Command::Send(record, reply, permit))
        {
            let _ = reply.send(Err(ProduceError::Closed));
        }
        DeliveryFuture(delivery)
    }

    /// Fire and forget: queues the record and returns once it is buffered; its outcome is
    /// not reported. Fails only if it cannot be buffered.
    pub async fn send_and_forget(&self, record: Record) -> Result<(), ProduceError> {
        let mut delivery = self.send(record).await;
        match futures_poll_once(&mut delivery) {
            Some(Err(error)) => Err(error),
            _ => Ok(()),
        }
    }

    /// Sends everything queued so far and waits until each record has an outcome.
    pub async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.commands.send(Command::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
    }

    /// Delivers (or queues in the outbox) everything sent before, then stops the
    /// producer and releases its outbox. Sends through other clones of this handle fail
    /// with [`ProduceError::Closed`] from then on. Dropping every handle without closing
    /// also delivers what is buffered, in the background.
    pub async fn close(self) {
        let (done, closed) = oneshot::channel();
        if self.commands.send(Command::Close(done)).is_ok() {
            let _ = closed.await;
        }
    }
}

/// The future's result if it is already resolved (a record rejected at `send`).
fn futures_poll_once(delivery: &mut DeliveryFuture) -> Option<Result<Delivery, ProduceError>> {
    match delivery.0.try_recv() {
        Ok(result) => Some(result),
        Err(oneshot::error::TryRecvError::Empty) => None,
        Err(oneshot::error::TryRecvError::Closed) => Some(Err(ProduceError::Closed)),
    }
}

/// Connections to the shards leading each partition, from Metadata.
#[derive(Default)]
struct Routes {
    host: String,
    shard_ports: Vec<u16>,
    partitions: HashMap<String, Vec<u32>>,
    clients: HashMap<u32, AsyncClient>,
}

/// A record waiting for its batch's outcome.
struct Waiting {
    partition: u32,
    reply: Reply,
    _room: OwnedSemaphorePermit,
}

struct Worker {
    config: ProducerConfig,
    accumulator: Accumulator,
    waiting: HashMap<u64, Waiting>,
    routes: Routes,
    next_id: u64,
    counters: Arc<Counters>,
    outbox: Option<Outbox>,
    /// Outbox batches being published, with their sequence numbers.
    outbox_chunk: VecDeque<ReadyBatch>,
    /// Outbox position after the chunk.
    outbox_chunk_end: u64,
    /// The last outbox failure, reported with the next send that needs the outbox.
    outbox_error: Option<String>,
}

/// How a failed attempt goes on.
enum Failure {
    /// Give up with this error.
    Fatal(ProduceError),
    /// Take a new producer id, restamp the batch and retry.
    NewProducerId(String),
    /// Retry after a pause (the connection or route may be stale).
    Retry(String),
}

impl Worker {
    fn new(config: ProducerConfig, counters: Arc<Counters>) -> Self {
        Self {
            accumulator: Accumulator::new(config.batching),
            config,
            waiting: HashMap::new(),
            routes: Routes::default(),
            next_id: 0,
            counters,
            outbox: None,
            outbox_chunk: VecDeque::new(),
            outbox_chunk_end: 0,
            outbox_error: None,
        }
    }

    fn idempotent(&self) -> bool {
        self.config.idempotence && self.config.acks != Acks::None
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
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
        let mut drain_tick = tokio::time::interval(self.config.retry_backoff_max);
        drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.publish_gauges();
            let deadline = self.accumulator.next_deadline();
            let sleep = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Send(record, reply, room)) => self.append(record, reply, room).await,
                    Some(Command::Flush(done)) => {
                        self.send_all().await;
                        let _ = done.send(());
                    }
                    Some(Command::Close(done)) => {
                        commands.close();
                        while let Some(command) = commands.recv().await {
                            match command {
                                Command::Send(record, reply, room) => self.append(record, reply, room).await,
                                Command::Flush(done) | Command::Close(done) => drop(done),
                            }
                        }
                        self.send_all().await;
                        drop(self.outbox.take());
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        self.send_all().await;
                        return;
                    }
                },
                _ = drain_tick.tick(), if self.outbox.as_ref().is_some_and(|outbox| !outbox.is_empty()) => {
                    self.drain_outbox().await;
                }
                () = sleep => {
                    let partitions = self.partition_counts();
                    for batch in self.accumulator.expired(Instant::now(), |topic| partitions.get(topic).copied().unwrap_or(1)) {
                        self.deliver(batch).await;
                    }
                }
            }
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
            self.send_all().await;
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
                if let Some(batch) = ready {
                    self.deliver(batch).await;
                }
            }
            Err(error) => {
                let _ = reply.send(Err(ProduceError::Rejected(error)));
            }
        }
    }

    async fn send_all(&mut self) {
        let partitions = self.partition_counts();
        for batch in self
            .accumulator
            .drain(|topic| partitions.get(topic).copied().unwrap_or(1))
        {
            self.deliver(batch).await;
        }
    }

    /// Makes sure the topic's metadata (and, when idempotent, a producer id) is known,
    /// retrying for up to `max_block`; returns the topic's partition count.
    async fn prepare(&mut self, topic: &str) -> Result<u32, ProduceError> {
        let deadline = Instant::now() + self.config.max_block;
        let mut attempt = 0;
        loop {
            let timeout = self.config.request_timeout;
            let result = tokio::time::timeout(timeout, self.try_prepare(topic)).await;
            let error = match result {
                Ok(Ok(partitions)) => return Ok(partitions),
                Ok(Err(ClientError::Broker { code, message })) if !code.is_retriable() => {
                    return Err(ProduceError::Broker { code, message })
                }
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("no answer within {timeout:?}"),
            };
            let pause = self.backoff(attempt);
            if Instant::now() + pause >= deadline {
                return Err(ProduceError::TimedOut(format!(
                    "no metadata for {topic} within max_block: {error}"
                )));
            }
            tokio::time::sleep(pause).await;
            attempt += 1;
        }
    }

    async fn try_prepare(&mut self, topic: &str) -> Result<u32, ClientError> {
        if self.idempotent() && self.accumulator.producer().is_none() {
            self.new_producer_id().await?;
        }
        if !self.routes.partitions.contains_key(topic) {
            self.refresh(topic).await?;
        }
        Ok(self.routes.partitions.get(topic).map_or(0, Vec::len) as u32)
    }

    async fn new_producer_id(&mut self) -> Result<(), ClientError> {
        let mut client = AsyncClient::connect(self.config.bootstrap.as_str()).await?;
        let (producer_id, epoch) = client.init_producer_id().await?;
        self.accumulator.set_producer(producer_id, epoch);
        Ok(())
    }

    async fn refresh(&mut self, topic: &str) -> Result<(), ClientError> {
        let mut client = AsyncClient::connect(self.config.bootstrap.as_str()).await?;
        let metadata = client.metadata(Some(&[topic])).await?;
        let found = metadata.topics.into_iter().next();
        let found = found.ok_or_else(|| ClientError::Protocol("empty metadata".into()))?;
        crate::operation::check(&found.outcome)?;
        let broker = metadata.brokers.into_iter().next();
        let broker = broker.ok_or_else(|| ClientError::Protocol("no broker in metadata".into()))?;
        self.routes.host = broker.host;
        self.routes.shard_ports = broker.shards.iter().map(|shard| shard.port).collect();
        let leaders = found
            .partitions
            .iter()
            .map(|partition| partition.leader_shard)
            .collect();
        self.routes.partitions.insert(found.name, leaders);
        Ok(())
    }

    /// The pause before retry `attempt` (0-based): doubling from `retry_backoff` up to
    /// `retry_backoff_max`.
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.min(16);
        self.config
            .retry_backoff
            .saturating_mul(factor)
            .min(self.config.retry_backoff_max)
    }

    /// Sends one batch until acknowledged, failed, or out of time; resolves its records.
    async fn deliver(&mut self, mut batch: ReadyBatch) {
        let acknowledged = self.config.acks != Acks::None;
        // While the outbox holds records, later batches queue behind them (order).
        let outcome = if self
            .outbox
            .as_ref()
            .is_some_and(|outbox| !outbox.is_empty())
        {
            Err(ProduceError::TimedOut("queued behind the outbox".into()))
        } else {
            let deadline = Instant::now() + self.config.delivery_timeout;
            self.attempt_until(&mut batch, deadline).await
        };
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
            if let Some(waiting) = self.waiting.remove(id) {
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
        // Open batches were accepted after the outbox started filling: queue them too.
        self.send_all().await;
        loop {
            if self.outbox_chunk.is_empty() {
                let Some(outbox) = self.outbox.as_mut() else {
                    return;
                };
                if outbox.is_empty() {
                    return;
                }
                let entries = match outbox.read(self.config.batching.batch_size_bytes * 4) {
                    Ok(entries) => entries,
                    Err(error) => {
                        self.outbox_error = Some(error.to_string());
                        return;
                    }
                };
                let end = entries.last().map_or(0, |entry| entry.end);
                for entry in entries {
                    let Ok(partitions) = self.prepare(&entry.record.topic).await else {
                        return;
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
                        Err(error) => {
                            // The topic shrank or the record no longer fits: it cannot be
                            // published; report it and move on.
                            self.outbox_error = Some(format!("dropping an outbox record: {error}"));
                            Counters::add(&self.counters.records_failed, 1);
                        }
                    }
                }
                let counts = self.partition_counts();
                let rest = self
                    .accumulator
                    .drain(|topic| counts.get(topic).copied().unwrap_or(1));
                self.outbox_chunk.extend(rest);
                self.outbox_chunk_end = end;
            }
            while let Some(mut batch) = self.outbox_chunk.pop_front() {
                // Short: while the broker is still away, sends keep being served.
                let deadline = Instant::now() + self.config.retry_backoff_max;
                if self.attempt_until(&mut batch, deadline).await.is_err() {
                    self.outbox_chunk.push_front(batch);
                    return;
                }
                self.accumulator.release(batch.payload_bytes);
                Counters::add(
                    &self.counters.records_delivered,
                    batch.record_count() as u64,
                );
                Counters::add(&self.counters.batches_delivered, 1);
            }
            let end = self.outbox_chunk_end;
            if let Some(Err(error)) = self.outbox.as_mut().map(|outbox| outbox.commit(end)) {
                self.outbox_error = Some(error.to_string());
                return;
            }
        }
    }

    /// Sends one batch, retrying with backoff until acknowledged, refused, or `deadline`.
    async fn attempt_until(
        &mut self,
        batch: &mut ReadyBatch,
        deadline: Instant,
    ) -> Result<u64, ProduceError> {
        let mut attempt = 0;
        loop {
            let failure = match self.send_once(batch).await {
                Ok(base_offset) => return Ok(base_offset),
                Err(failure) => failure,
            };
            let reason = match failure {
                Failure::Fatal(error) => return Err(error),
                Failure::Retry(reason) => reason,
                Failure::NewProducerId(reason) => {
                    Counters::add(&self.counters.producer_id_resets, 1);
                    match self.new_producer_id().await {
                        Ok(()) => self.accumulator.restamp(batch),
                        // No producer id yet: the next attempt fails the same way.
                        Err(_) => self.routes.clients.clear(),
                    }
                    reason
                }
            };
            let pause = self.backoff(attempt);
            if Instant::now() + pause >= deadline {
                return Err(ProduceError::TimedOut(reason));
            }
            Counters::add(&self.counters.retries, 1);
            tokio::time::sleep(pause).await;
            attempt += 1;
        }
    }

    /// One attempt; on failure, how to go on.
    async fn send_once(&mut self, batch: &ReadyBatch) -> Result<u64, Failure> {
        let timeout = self.config.request_timeout;
        match tokio::time::timeout(timeout, self.produce(batch)).await {
            Ok(Ok(base_offset)) => Ok(base_offset),
            Ok(Err(ClientError::Broker { code, message })) => {
                // The route may be stale; a retry refreshes it.
                self.routes.partitions.remove(&batch.topic);
                match code {
                    ErrorCode::OutOfOrderSequence | ErrorCode::UnknownProducerId => {
                        Err(Failure::NewProducerId(format!("{code:?}: {message}")))
                    }
                    code if code.is_retriable() => {
                        Err(Failure::Retry(format!("{code:?}: {message}")))
                    }
                    code => Err(Failure::Fatal(ProduceError::Broker { code, message })),
                }
            }
            Ok(Err(error)) => {
                self.routes.clients.clear();
                self.routes.partitions.remove(&batch.topic);
                Err(Failure::Retry(error.to_string()))
            }
            Err(_) => {
                // The request may still be in flight: drop the connection.
                self.routes.clients.clear();
                Err(Failure::Retry(format!("no answer within {timeout:?}")))
            }
        }
    }

    async fn produce(&mut self, batch: &ReadyBatch) -> Result<u64, ClientError> {
        if !self.routes.partitions.contains_key(&batch.topic) {
            self.refresh(&batch.topic).await?;
        }
        let shard = self
            .routes
            .partitions
            .get(&batch.topic)
            .and_then(|leaders| leaders.get(batch.partition as usize))
            .copied()
            .ok_or_else(|| ClientError::Protocol("partition vanished".into()))?;
        if !self.routes.clients.contains_key(&shard) {
            let port = *self
                .routes
                .shard_ports
                .get(shard as usize)
                .ok_or_else(|| ClientError::Protocol("unknown shard".into()))?;
            let client = AsyncClient::connect((self.routes.host.as_str(), port)).await?;
            self.routes.clients.insert(shard, client);
        }
        let client = self.routes.clients.get_mut(&shard).expect("inserted above");
        let result = client
            .produce(
                &batch.topic,
                batch.partition,
                &[batch.batch.as_bytes()],
                self.config.acks,
            )
            .await?;
        if ErrorCode::from_u16(result.outcome.error_code) == ErrorCode::DuplicateSequence {
            Counters::add(&self.counters.duplicates_detected, 1);
        }
        Ok(result.base_offset)
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}
