//! The producer, on tokio: `send` returns a delivery future at once; records are batched
//! per partition by the [`Accumulator`] (size and linger), sent to each partition's own
//! shard, and retried with backoff on connection loss and retriable errors until
//! `delivery_timeout`.
//!
//! One background task owns the accumulator and the connections; handles are cheap
//! clones (`Send + Sync`) that talk to it over a bounded channel, so a producer faster
//! than the broker waits in `send` instead of buffering without limit.
//!
//! Delivery is at least once: a batch whose acknowledgement was lost is sent again.
//! Idempotent sends (producer ids and sequence numbers, so retries cannot duplicate) are
//! the next step.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flumen_protocol::wire::ErrorCode;
use tokio::sync::{mpsc, oneshot};

use crate::accumulator::{Accumulator, AccumulatorConfig, AppendError, OutgoingRecord, ReadyBatch};
use crate::{Acks, AsyncClient, ClientError};

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// A broker address.
    pub bootstrap: String,
    /// Acknowledgement mode.
    pub acks: Acks,
    /// Batching limits.
    pub batching: AccumulatorConfig,
    /// How long a record may take from `send` to acknowledgement, retries included.
    pub delivery_timeout: Duration,
    /// Pause between retries of a batch.
    pub retry_backoff: Duration,
    /// `send` calls queued for the background task before `send` waits.
    pub queue_capacity: usize,
}

impl ProducerConfig {
    /// Defaults for `bootstrap`: acks=all, 5 ms linger, 2 min delivery timeout.
    pub fn new(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            acks: Acks::All,
            batching: AccumulatorConfig::default(),
            delivery_timeout: Duration::from_secs(120),
            retry_backoff: Duration::from_millis(100),
            queue_capacity: 10_000,
        }
    }
}

/// A record to send; bytes in (serialise before).
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// Topic.
    pub topic: String,
    /// Explicit partition; `None` lets the partitioner choose (key hash or sticky).
    pub partition: Option<u32>,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Timestamp in ms since the epoch; `None` means now.
    pub timestamp_ms: Option<i64>,
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Partition.
    pub partition: u32,
    /// Offset; `None` with acks=0, where the broker does not answer.
    pub offset: Option<u64>,
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
    /// The record could not be accepted (buffer, size, partition).
    #[error(transparent)]
    Rejected(#[from] AppendError),
    /// Not acknowledged within `delivery_timeout`; the last failure is given.
    #[error("not delivered within the delivery timeout; last error: {0}")]
    TimedOut(String),
    /// The producer was closed.
    #[error("the producer is closed")]
    Closed,
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

enum Command {
    Send(Record, oneshot::Sender<Result<Delivery, ProduceError>>),
    Flush(oneshot::Sender<()>),
}

/// A handle to the producer; clone it freely.
#[derive(Debug, Clone)]
pub struct Producer {
    commands: mpsc::Sender<Command>,
}

impl Producer {
    /// Starts the producer's background task on the current tokio runtime.
    pub fn start(config: ProducerConfig) -> Self {
        let (commands, receiver) = mpsc::channel(config.queue_capacity.max(1));
        tokio::spawn(Worker::new(config).run(receiver));
        Self { commands }
    }

    /// Queues a record; the returned future resolves once it is acknowledged or failed.
    pub async fn send(&self, record: Record) -> DeliveryFuture {
        let (reply, delivery) = oneshot::channel();
        if let Err(mpsc::error::SendError(Command::Send(_, reply))) =
            self.commands.send(Command::Send(record, reply)).await
        {
            let _ = reply.send(Err(ProduceError::Closed));
        }
        DeliveryFuture(delivery)
    }

    /// Sends everything queued so far and waits until each record has an outcome.
    pub async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.commands.send(Command::Flush(done)).await.is_ok() {
            let _ = flushed.await;
        }
    }

    /// Delivers what is buffered, then stops the background task once every handle is
    /// gone.
    pub async fn close(self) {
        self.flush().await;
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

struct Worker {
    config: ProducerConfig,
    accumulator: Accumulator,
    replies: HashMap<u64, (u32, oneshot::Sender<Result<Delivery, ProduceError>>)>,
    routes: Routes,
    next_id: u64,
}

impl Worker {
    fn new(config: ProducerConfig) -> Self {
        Self {
            accumulator: Accumulator::new(config.batching),
            config,
            replies: HashMap::new(),
            routes: Routes::default(),
            next_id: 0,
        }
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            let deadline = self.accumulator.next_deadline();
            let sleep = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Send(record, reply)) => self.append(record, reply).await,
                    Some(Command::Flush(done)) => {
                        self.send_all().await;
                        let _ = done.send(());
                    }
                    None => {
                        self.send_all().await;
                        return;
                    }
                },
                () = sleep => {
                    let partitions = self.partition_counts();
                    for batch in self.accumulator.expired(Instant::now(), |topic| partitions.get(topic).copied().unwrap_or(1)) {
                        self.deliver(batch).await;
                    }
                }
            }
        }
    }

    fn partition_counts(&self) -> HashMap<String, u32> {
        self.routes
            .partitions
            .iter()
            .map(|(topic, shards)| (topic.clone(), shards.len() as u32))
            .collect()
    }

    async fn append(
        &mut self,
        record: Record,
        reply: oneshot::Sender<Result<Delivery, ProduceError>>,
    ) {
        let partitions = match self.partitions_of(&record.topic).await {
            Ok(count) => count,
            Err(error) => {
                let _ = reply.send(Err(error));
                return;
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        let headers: Vec<(&str, &[u8])> = record
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_slice()))
            .collect();
        let outgoing = OutgoingRecord {
            topic: &record.topic,
            partition: record.partition,
            key: record.key.as_deref(),
            value: record.value.as_deref(),
            headers: &headers,
            timestamp_ms: record.timestamp_ms.unwrap_or_else(now_ms),
        };
        let mut result = self
            .accumulator
            .append(&outgoing, partitions, id, Instant::now());
        if matches!(result, Err(AppendError::BufferFull { .. })) {
            // Make room by sending what is buffered, then try once more.
            self.send_all().await;
            result = self
                .accumulator
                .append(&outgoing, partitions, id, Instant::now());
        }
        match result {
            Ok((partition, ready)) => {
                self.replies.insert(id, (partition, reply));
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

    /// The topic's partition count, from Metadata (cached).
    async fn partitions_of(&mut self, topic: &str) -> Result<u32, ProduceError> {
        if let Some(shards) = self.routes.partitions.get(topic) {
            return Ok(shards.len() as u32);
        }
        self.refresh(topic).await.map_err(|error| match error {
            ClientError::Broker { code, message } => ProduceError::Broker { code, message },
            other => ProduceError::TimedOut(other.to_string()),
        })?;
        Ok(self.routes.partitions.get(topic).map_or(0, Vec::len) as u32)
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

    /// Sends one batch until acknowledged, failed, or out of time; resolves its records.
    async fn deliver(&mut self, batch: ReadyBatch) {
        let deadline = Instant::now() + self.config.delivery_timeout;
        let acknowledged = self.config.acks != Acks::None;
        let outcome = loop {
            match self.send_once(&batch).await {
                Ok(base_offset) => break Ok(base_offset),
                Err(ClientError::Broker { code, message }) if !code.is_retriable() => {
                    break Err(ProduceError::Broker { code, message })
                }
                Err(error) => {
                    if Instant::now() + self.config.retry_backoff >= deadline {
                        break Err(ProduceError::TimedOut(error.to_string()));
                    }
                    // The connection or the route may be stale: start over.
                    self.routes.clients.clear();
                    self.routes.partitions.remove(&batch.topic);
                    tokio::time::sleep(self.config.retry_backoff).await;
                }
            }
        };
        self.accumulator.release(batch.payload_bytes);
        for (index, id) in batch.record_ids.iter().enumerate() {
            if let Some((partition, reply)) = self.replies.remove(id) {
                let result = outcome.clone().map(|base_offset| Delivery {
                    partition,
                    offset: acknowledged.then_some(base_offset + index as u64),
                });
                let _ = reply.send(result);
            }
        }
    }

    async fn send_once(&mut self, batch: &ReadyBatch) -> Result<u64, ClientError> {
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
        Ok(result.base_offset)
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}
