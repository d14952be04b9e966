//! The producer, on tokio: `send` returns a delivery future at once; records are batched
//! per partition by the [`Accumulator`] (size and linger), sent to each partition's own
//! shard, and retried with exponential backoff on connection loss and retriable errors
//! until `delivery_timeout`.
//!
//! `send` copies the record into its partition's batch itself, at the [`desk::Desk`] it
//! shares with one background task that owns the connections, sends the closed batches
//! and resolves their records; handles are cheap clones (`Send + Sync`). A record of a
//! topic not seen yet goes to the background task first, for the topic's metadata.
//! Buffered records are bounded in bytes (`batching.buffer_memory_bytes`): `send` waits
//! up to `max_block` for room, then fails with [`ProduceError::BufferFull`].
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

pub(crate) mod desk;
pub(crate) mod worker;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flumen_protocol::wire::ErrorCode;
use tokio::sync::{mpsc, oneshot};

pub use crate::accumulator::RecordRef;
use crate::accumulator::{record_size, AccumulatorConfig, AppendError};
#[cfg(feature = "glommio")]
use crate::runtime::Glommio;
use crate::runtime::{Runtime, Tokio};
use crate::Acks;
use desk::{Desk, Direct};
use worker::Worker;

/// Producer settings.
///
/// ```
/// use std::time::Duration;
/// use flumen_client::{Acks, ProducerConfig};
///
/// let mut config = ProducerConfig::new("127.0.0.1:9292");
/// config.acks = Acks::Leader;
/// config.batching.linger = Duration::from_millis(20);
/// config.batching.batch_size_bytes = 1 << 20;
/// config.outbox = Some("/var/lib/orders/outbox".into());
/// assert!(config.idempotence, "on by default");
/// ```
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
    /// Produce requests in flight to one broker shard at once, each on its own
    /// connection. A request carries the oldest ready batch of every partition of the
    /// shard that has none in flight (up to `request_bytes_max`): a partition never has
    /// two batches in flight, so its batches land in order whatever fails. More than one
    /// request lets the shard cover several partitions' batches with one `fdatasync`
    /// (acks=all) and keeps one slow partition from holding up the others. 0 counts as 1.
    pub max_in_flight_per_shard: usize,
    /// How many bytes of batches one produce request gathers from a shard's ready
    /// partitions; a request always takes at least one batch. Small batches of many
    /// partitions then cost the broker one request instead of one each.
    pub request_bytes_max: usize,
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
    /// Defaults for `bootstrap`: acks=all, idempotent, 5 requests in flight per shard of up
    /// to 1 MiB each, 5 ms linger, 32 MiB buffer, 2 min delivery timeout, 60 s max block, 30 s request timeout,
    /// backoff 100 ms to 1 s.
    pub fn new(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            acks: Acks::All,
            batching: AccumulatorConfig::default(),
            idempotence: true,
            max_in_flight_per_shard: 5,
            request_bytes_max: 1 << 20,
            delivery_timeout: Duration::from_secs(120),
            max_block: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(1),
            outbox: None,
        }
    }
}

/// A record to send: bytes in (see [`crate::serialization`] for typed values).
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

    /// The record borrowed, with its headers as `headers` ([`Record::header_refs`]).
    pub(crate) fn borrowed<'a>(&'a self, headers: &'a [(&'a str, &'a [u8])]) -> RecordRef<'a> {
        RecordRef {
            topic: &self.topic,
            partition: self.partition,
            key: self.key.as_deref(),
            value: self.value.as_deref(),
            headers,
            timestamp_ms: self.timestamp_ms,
        }
    }

    fn header_refs(&self) -> Vec<(&str, &[u8])> {
        self.headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_slice()))
            .collect()
    }
}

impl From<&RecordRef<'_>> for Record {
    /// An owned copy.
    fn from(record: &RecordRef<'_>) -> Self {
        Self {
            topic: record.topic.to_owned(),
            partition: record.partition,
            key: record.key.map(<[u8]>::to_vec),
            value: record.value.map(<[u8]>::to_vec),
            headers: record
                .headers
                .iter()
                .map(|(name, value)| ((*name).to_owned(), value.to_vec()))
                .collect(),
            timestamp_ms: record.timestamp_ms,
        }
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
    /// When the producer learned the outcome (the clock is read once per batch): a
    /// record's publish latency is this minus the time it was sent, with no clock read
    /// per record.
    pub acknowledged_at: Instant,
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

/// Receives the outcomes of records sent with [`Producer::send_tagged`] or
/// [`Producer::send_ref_tagged`], each with the tag it was sent with: one handler for
/// many records, so a send allocates nothing for its outcome (a callback is boxed per
/// record, a [`DeliveryFuture`] is a channel per record). librdkafka's delivery report
/// callback and per-message opaque work the same way.
///
/// It runs on the producer's background task, once per record, whatever happens to
/// it (a producer dropped with records unsent reports them `Closed`); it should return
/// quickly. A panic in it is caught and reported by the panic hook.
pub trait DeliveryHandler: Send + Sync + 'static {
    /// The outcome of the record sent with `tag`.
    fn delivered(&self, tag: u64, outcome: Result<Delivery, ProduceError>);
}

/// Where a record's outcome goes: its [`DeliveryFuture`], the callback given to
/// [`Producer::send_with`], or a [`DeliveryHandler`] with the record's tag. A reply
/// dropped unsent (the producer went away) reports `Closed`, so a callback or handler
/// runs exactly once whatever happens.
pub(crate) struct Reply(Option<ReplyTo>);

enum ReplyTo {
    Future(oneshot::Sender<Result<Delivery, ProduceError>>),
    Callback(Box<dyn FnOnce(Result<Delivery, ProduceError>) + Send>),
    Tagged(Arc<dyn DeliveryHandler>, u64),
}

impl Reply {
    pub(crate) fn future(sender: oneshot::Sender<Result<Delivery, ProduceError>>) -> Self {
        Self(Some(ReplyTo::Future(sender)))
    }

    fn callback(callback: Box<dyn FnOnce(Result<Delivery, ProduceError>) + Send>) -> Self {
        Self(Some(ReplyTo::Callback(callback)))
    }

    fn tagged<H: DeliveryHandler>(handler: &Arc<H>, tag: u64) -> Self {
        Self(Some(ReplyTo::Tagged(Arc::clone(handler) as Arc<_>, tag)))
    }

    /// Hands the outcome over (a dropped future is not an error: nobody asked).
    pub(crate) fn send(mut self, outcome: Result<Delivery, ProduceError>) {
        match self.0.take() {
            Some(ReplyTo::Future(sender)) => {
                let _ = sender.send(outcome);
            }
            Some(ReplyTo::Callback(callback)) => call(move || callback(outcome)),
            Some(ReplyTo::Tagged(handler, tag)) => call(move || handler.delivered(tag, outcome)),
            None => {}
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        match self.0.take() {
            Some(ReplyTo::Callback(callback)) => call(move || callback(Err(ProduceError::Closed))),
            Some(ReplyTo::Tagged(handler, tag)) => {
                call(move || handler.delivered(tag, Err(ProduceError::Closed)))
            }
            Some(ReplyTo::Future(_)) | None => {}
        }
    }
}

/// Runs a delivery callback or handler. One that panics does not take the producer's
/// background task (and every other record's outcome) with it: the panic is caught
/// here, after the panic hook has reported it.
fn call(deliver: impl FnOnce()) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(deliver));
}

/// Counters of a producer since it started (see [`Producer::metrics`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProducerMetrics {
    /// Records acknowledged (or sent, with acks=0).
    pub records_delivered: u64,
    /// Records that failed.
    pub records_failed: u64,
    /// Batches acknowledged.
    pub batches_delivered: u64,
    /// Produce requests started (retries not counted): each carries the ready batches
    /// of several partitions of one shard when it can, so at low rates this stays well
    /// below `batches_delivered`.
    pub requests_sent: u64,
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
    requests_sent: AtomicU64,
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
            requests_sent: read(&self.requests_sent),
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

impl Future for DeliveryFuture {
    type Output = Result<Delivery, ProduceError>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(context)
            .map(|result| result.unwrap_or(Err(ProduceError::Closed)))
    }
}

pub(crate) enum Command {
    /// A record of a topic `send` could not append to itself, its reply, and the
    /// buffer room reserved for it (bytes).
    Send(Record, Reply, usize),
    Flush(oneshot::Sender<()>),
    /// Deliver what was sent before, release the outbox, stop.
    Close(oneshot::Sender<()>),
}

/// What became of a record at the desk.
enum Attempt {
    /// Appended, or failed with its reply sent.
    Done,
    /// For the worker (its topic is not known yet), its room reserved.
    HandOver(Reply),
    /// No buffer room now, or records of its topic are still with the worker.
    Wait(Reply),
}

/// A handle to the producer; clone it freely. On tokio (the default, `Producer`) it is
/// `Send + Sync`; on glommio ([`GlommioProducer`]) it stays on its executor.
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
#[derive(Debug)]
pub struct Producer<R: Runtime = Tokio> {
    commands: mpsc::Sender<Command>,
    desk: Arc<Desk>,
    buffer_bytes: usize,
    max_block: Duration,
    counters: Arc<Counters>,
    runtime: std::marker::PhantomData<fn() -> R>,
}

impl<R: Runtime> Clone for Producer<R> {
    fn clone(&self) -> Self {
        Self {
            commands: self.commands.clone(),
            desk: Arc::clone(&self.desk),
            buffer_bytes: self.buffer_bytes,
            max_block: self.max_block,
            counters: Arc::clone(&self.counters),
            runtime: std::marker::PhantomData,
        }
    }
}

/// The producer on a glommio executor (feature `glommio`): its tasks and connections stay
/// on the executor that started it. Same API as [`Producer`], started with
/// [`GlommioProducer::start_local`].
#[cfg(feature = "glommio")]
pub type GlommioProducer = Producer<Glommio>;

impl Producer<Tokio> {
    /// Starts the producer's background task on the current tokio runtime. Panics if the
    /// batching limits are invalid ([`AccumulatorConfig::validate`]).
    pub fn start(config: ProducerConfig) -> Self {
        Self::spawn(config)
    }
}

#[cfg(feature = "glommio")]
impl Producer<Glommio> {
    /// Starts the producer's background task on the current glommio executor. Panics
    /// outside one, or if the batching limits are invalid.
    pub fn start_local(config: ProducerConfig) -> Self {
        Self::spawn(config)
    }
}

impl<R: Runtime> Producer<R> {
    fn spawn(config: ProducerConfig) -> Self {
        // Every handed record holds at least RECORD_OVERHEAD_BYTES of buffer room, so the
        // buffer bounds the queue; the capacity only makes that explicit.
        let capacity =
            config.batching.buffer_memory_bytes / crate::accumulator::RECORD_OVERHEAD_BYTES + 64;
        let (commands, receiver) = mpsc::channel(capacity);
        let buffer_bytes = config.batching.buffer_memory_bytes;
        let max_block = config.max_block;
        let counters = Arc::new(Counters::default());
        // A producer with an outbox batches the outbox's records in the accumulator too:
        // its sends all go through the worker.
        let desk = Arc::new(Desk::new(config.batching, config.outbox.is_none()));
        let worker = Worker::new(config, Arc::clone(&desk), Arc::clone(&counters));
        R::spawn_worker(worker, receiver);
        Self {
            commands,
            desk,
            buffer_bytes,
            max_block,
            counters,
            runtime: std::marker::PhantomData,
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
        let (reply, delivery) = oneshot::channel();
        self.queue(record, Reply::future(reply)).await;
        DeliveryFuture(delivery)
    }

    /// Queues a record and calls `callback` with its outcome, as Kafka's
    /// `send(record, callback)`: the same as [`Producer::send`] without a future per
    /// record, for callers that send many records and only count or time their outcomes.
    /// Waits up to `max_block` for buffer room. The callback runs on the producer's
    /// background task (at once if the record cannot be queued), so it must be quick and
    /// must not block; it runs for every record exactly once.
    ///
    /// ```no_run
    /// # async fn example(producer: flumen_client::Producer) {
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    ///
    /// let delivered = Arc::new(AtomicU64::new(0));
    /// let counter = Arc::clone(&delivered);
    /// let record = flumen_client::Record::new("orders", "order #1");
    /// producer
    ///     .send_with(record, move |outcome| {
    ///         if outcome.is_ok() {
    ///             counter.fetch_add(1, Ordering::Relaxed);
    ///         }
    ///     })
    ///     .await;
    /// producer.flush().await;
    /// assert_eq!(delivered.load(Ordering::Relaxed), 1);
    /// # }
    /// ```
    pub async fn send_with<F>(&self, record: Record, callback: F)
    where
        F: FnOnce(Result<Delivery, ProduceError>) + Send + 'static,
    {
        self.queue(record, Reply::callback(Box::new(callback)))
            .await;
    }

    /// [`Producer::send`] for a borrowed record: its bytes are copied into their batch
    /// before this returns, and no `Record` is allocated.
    pub async fn send_ref(&self, record: &RecordRef<'_>) -> DeliveryFuture {
        let (reply, delivery) = oneshot::channel();
        self.queue_borrowed(record, Reply::future(reply)).await;
        DeliveryFuture(delivery)
    }

    /// [`Producer::send_with`] for a borrowed record: its bytes are copied into their
    /// batch before this returns, so the caller may reuse its buffers for the next one.
    ///
    /// ```no_run
    /// # async fn example(producer: flumen_client::Producer) {
    /// use flumen_client::RecordRef;
    ///
    /// let mut value = [0u8; 64];
    /// for reading in 0..1_000u64 {
    ///     value[..8].copy_from_slice(&reading.to_le_bytes());
    ///     let record = RecordRef::new("readings", &value);
    ///     producer.send_ref_with(&record, |outcome| assert!(outcome.is_ok())).await;
    /// }
    /// producer.flush().await;
    /// # }
    /// ```
    pub async fn send_ref_with<F>(&self, record: &RecordRef<'_>, callback: F)
    where
        F: FnOnce(Result<Delivery, ProduceError>) + Send + 'static,
    {
        self.queue_borrowed(record, Reply::callback(Box::new(callback)))
            .await;
    }

    /// [`Producer::send_with`] without a callback per record: the outcome goes to
    /// `handler` with `tag`, and nothing is allocated for it (a boxed callback is an
    /// allocation per record, and at a million records a second the allocator's share
    /// of a core shows). The tag is the caller's: an index, a sequence number, a
    /// timestamp.
    ///
    /// ```no_run
    /// # async fn example(producer: flumen_client::Producer) {
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    /// use flumen_client::{Delivery, DeliveryHandler, ProduceError, Record};
    ///
    /// #[derive(Default)]
    /// struct Failures(AtomicU64);
    ///
    /// impl DeliveryHandler for Failures {
    ///     fn delivered(&self, order_id: u64, outcome: Result<Delivery, ProduceError>) {
    ///         if let Err(error) = outcome {
    ///             eprintln!("order {order_id} not published: {error}");
    ///             self.0.fetch_add(1, Ordering::Relaxed);
    ///         }
    ///     }
    /// }
    ///
    /// let failures = Arc::new(Failures::default());
    /// for order_id in 0..1_000u64 {
    ///     let record = Record::new("orders", format!("order #{order_id}"));
    ///     producer.send_tagged(record, &failures, order_id).await;
    /// }
    /// producer.flush().await;
    /// assert_eq!(failures.0.load(Ordering::Relaxed), 0);
    /// # }
    /// ```
    pub async fn send_tagged<H: DeliveryHandler>(
        &self,
        record: Record,
        handler: &Arc<H>,
        tag: u64,
    ) {
        self.queue(record, Reply::tagged(handler, tag)).await;
    }

    /// [`Producer::send_tagged`] for a borrowed record: its bytes are copied into their
    /// batch before this returns, and nothing is allocated for the record at all unless
    /// its topic's partitions are not known yet.
    pub async fn send_ref_tagged<H: DeliveryHandler>(
        &self,
        record: &RecordRef<'_>,
        handler: &Arc<H>,
        tag: u64,
    ) {
        self.queue_borrowed(record, Reply::tagged(handler, tag))
            .await;
    }

    /// Appends the record to its batch (or hands it to the worker, for a topic it does
    /// not know yet), once there is buffer room for it, or reports why not.
    async fn queue(&self, record: Record, reply: Reply) {
        let headers = record.header_refs();
        let handed = self.place(&record.borrowed(&headers), reply).await;
        if let Some((reply, size)) = handed {
            self.hand_over(record, reply, size).await;
        }
    }

    /// [`Self::queue`] for a borrowed record: copied only if it is handed over.
    async fn queue_borrowed(&self, record: &RecordRef<'_>, reply: Reply) {
        if let Some((reply, size)) = self.place(record, reply).await {
            self.hand_over(Record::from(record), reply, size).await;
        }
    }

    /// Appends the record at the desk once there is room, or fails it; returns its reply
    /// and size instead if it is for the worker (its room then reserved).
    async fn place(&self, record: &RecordRef<'_>, reply: Reply) -> Option<(Reply, usize)> {
        // A worker that is gone (its task ended) gives no room back: say so at once
        // rather than waiting `max_block` for room.
        if self.commands.is_closed() {
            reply.send(Err(ProduceError::Closed));
            return None;
        }
        if let Err(error) = crate::accumulator::check_timestamp(record.timestamp_ms) {
            reply.send(Err(ProduceError::Rejected(error)));
            return None;
        }
        // The size does not depend on the timestamp: no clock read for it.
        let size = record_size(record);
        if size > self.buffer_bytes {
            reply.send(Err(ProduceError::Rejected(AppendError::RecordTooLarge {
                record_bytes: size,
                limit_bytes: self.buffer_bytes,
            })));
            return None;
        }
        let mut reply = match self.try_append(record, size, reply) {
            Attempt::Done => {
                // A caller sending in a loop lets the worker run now and then.
                R::yield_if_needed().await;
                return None;
            }
            Attempt::HandOver(reply) => return Some((reply, size)),
            Attempt::Wait(reply) => reply,
        };
        let give_up_at = Instant::now() + self.max_block;
        loop {
            // Listening before looking again: room given back in between still wakes it.
            let room = self.desk.room.notified();
            let mut room = std::pin::pin!(room);
            room.as_mut().enable();
            match self.try_append(record, size, reply) {
                Attempt::Done => return None,
                Attempt::HandOver(unsent) => return Some((unsent, size)),
                Attempt::Wait(unsent) => reply = unsent,
            }
            let left = give_up_at.saturating_duration_since(Instant::now());
            if crate::runtime::timeout::<R, _>(left, room).await.is_none() {
                reply.send(Err(ProduceError::BufferFull {
                    waited: self.max_block,
                    buffer_bytes: self.buffer_bytes,
                }));
                return None;
            }
        }
    }

    /// Appends the record at the desk if there is room and its topic is known; a handed
    /// record has its room reserved.
    fn try_append(&self, record: &RecordRef<'_>, size: usize, reply: Reply) -> Attempt {
        let mut desk = self.desk.lock();
        if desk.closed {
            drop(desk);
            reply.send(Err(ProduceError::Closed));
            return Attempt::Done;
        }
        if !desk.has_room(size) {
            return Attempt::Wait(reply);
        }
        let partitions = match desk.direct(record.topic) {
            Direct::Append(partitions) => partitions,
            Direct::AfterHanded => return Attempt::Wait(reply),
            Direct::HandOver => {
                desk.hand(record.topic, size);
                return Attempt::HandOver(reply);
            }
        };
        // The clock is read for a timestamp the record does not carry, or for a batch it
        // opens: a caller that stamps its records saves a clock read per record.
        let (timestamp, now) = match record.timestamp_ms {
            Some(timestamp) => (timestamp, None),
            None => {
                let now = Instant::now();
                (desk.now_ms(now), Some(now))
            }
        };
        let stamped = RecordRef {
            timestamp_ms: Some(timestamp),
            ..*record
        };
        let appended = desk.append(&stamped, partitions, reply, now);
        drop(desk);
        match appended {
            Ok(appended) if appended.ring => self.desk.bell.notify_one(),
            Ok(_) => {}
            Err((reply, error)) => {
                Counters::add(&self.counters.records_failed, 1);
                reply.send(Err(ProduceError::Rejected(error)));
            }
        }
        Attempt::Done
    }

    /// Hands a record (its room reserved) to the worker. If the send is dropped before
    /// the worker has the record (a `select!` or timeout around it), the reserved room
    /// goes back, and the record's reply reports `Closed`.
    async fn hand_over(&self, record: Record, reply: Reply, size: usize) {
        let mut reserved = Reserved {
            desk: &self.desk,
            topic: Some(record.topic.clone()),
            size,
        };
        let sent = self.commands.send(Command::Send(record, reply, size)).await;
        match sent {
            Ok(()) => reserved.topic = None,
            Err(mpsc::error::SendError(Command::Send(_, reply, _))) => {
                reply.send(Err(ProduceError::Closed))
            }
            Err(_) => unreachable!("a Send command comes back"),
        }
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
        if self.commands.send(Command::Flush(done)).await.is_ok() {
            let _ = flushed.await;
        }
    }

    /// Delivers (or queues in the outbox) everything sent before, then stops the
    /// producer and releases its outbox. Sends through other clones of this handle fail
    /// with [`ProduceError::Closed`] from then on. Dropping every handle without closing
    /// also delivers what is buffered, in the background.
    pub async fn close(self) {
        let (done, closed) = oneshot::channel();
        if self.commands.send(Command::Close(done)).await.is_ok() {
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

/// Room reserved for a handed record, given back when dropped unless the worker got
/// the record (`topic` taken).
struct Reserved<'a> {
    desk: &'a Desk,
    topic: Option<String>,
    size: usize,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if let Some(topic) = self.topic.take() {
            self.desk.lock().unhand(&topic, self.size);
            self.desk.room.notify_waiters();
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Every outcome a callback was given.
    type Outcomes = Arc<Mutex<Vec<Result<Delivery, ProduceError>>>>;

    /// A callback reply that records every outcome it is given.
    fn recording() -> (Reply, Outcomes) {
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&outcomes);
        let reply = Reply::callback(Box::new(move |outcome| seen.lock().unwrap().push(outcome)));
        (reply, outcomes)
    }

    #[test]
    fn a_callback_runs_once_with_its_outcome_and_a_dropped_one_reports_closed() {
        let (reply, outcomes) = recording();
        let delivered = Delivery {
            partition: Some(3),
            offset: Some(7),
            queued_in_outbox: false,
            acknowledged_at: Instant::now(),
        };
        reply.send(Ok(delivered));
        assert_eq!(
            *outcomes.lock().unwrap(),
            vec![Ok(delivered)],
            "sent: no second call"
        );

        // Dropped unsent (the worker went away holding it): Closed, once.
        let (reply, outcomes) = recording();
        drop(reply);
        let outcomes = outcomes.lock().unwrap();
        assert!(
            matches!(outcomes.as_slice(), [Err(ProduceError::Closed)]),
            "{outcomes:?}"
        );
    }

    /// Records every (tag, outcome) it is given; panics on tag 13.
    #[derive(Default)]
    struct Tags(Mutex<Vec<(u64, Result<Delivery, ProduceError>)>>);

    impl DeliveryHandler for Tags {
        fn delivered(&self, tag: u64, outcome: Result<Delivery, ProduceError>) {
            assert_ne!(tag, 13, "a handler that panics");
            self.0.lock().unwrap().push((tag, outcome));
        }
    }

    #[test]
    fn a_handler_gets_each_tag_once_and_its_panic_is_caught() {
        let handler = Arc::new(Tags::default());
        let delivered = Delivery {
            partition: Some(0),
            offset: Some(1),
            queued_in_outbox: false,
            acknowledged_at: Instant::now(),
        };
        Reply::tagged(&handler, 7).send(Ok(delivered));
        drop(Reply::tagged(&handler, 8));
        Reply::tagged(&handler, 13).send(Ok(delivered));
        drop(Reply::tagged(&handler, 13));
        assert_eq!(
            *handler.0.lock().unwrap(),
            vec![(7, Ok(delivered)), (8, Err(ProduceError::Closed))]
        );
        assert_eq!(Arc::strong_count(&handler), 1, "no reply keeps it");
    }
}
