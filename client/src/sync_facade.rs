//! The blocking facade: [`BlockingProducer`] and [`BlockingConsumer`] run the tokio
//! producer and consumer on a private runtime thread, for code that is not async (a CLI,
//! a batch job, a thread-per-request service). Same logic, same guarantees; calls block
//! the calling thread, so they must not be made from inside a tokio runtime (tokio
//! refuses to block a runtime thread and panics).

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::{
    ConsumeError, Consumer, ConsumerConfig, ConsumerRecords, Delivery, DeliveryFuture,
    ProduceError, Producer, ProducerConfig, ProducerMetrics, Record, SeekTo, TopicPartition,
};

/// A single-threaded tokio runtime driven by its own thread until dropped.
#[derive(Debug)]
struct RuntimeThread {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RuntimeThread {
    fn start(name: &str) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let _ = runtime.block_on(stopped);
            })?;
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for RuntimeThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[derive(Debug)]
struct ProducerInner {
    producer: Producer,
    runtime: RuntimeThread,
}

impl Drop for ProducerInner {
    fn drop(&mut self) {
        // Deliver what is buffered before the runtime stops. From a plain thread so that
        // dropping inside some other tokio runtime does not panic.
        let (handle, producer) = (self.runtime.handle.clone(), self.producer.clone());
        let closer = std::thread::spawn(move || handle.block_on(producer.close()));
        let _ = closer.join();
    }
}

/// The producer for blocking code; clone it freely (`Send + Sync`). Dropping the last
/// clone delivers what is buffered.
///
/// ```no_run
/// use flumen_client::{BlockingProducer, ProducerConfig, Record};
///
/// let producer = BlockingProducer::start(ProducerConfig::new("127.0.0.1:9292"))?;
/// let delivery = producer.send(Record::new("orders", "order #1"));
/// println!("{:?}", delivery.wait()?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct BlockingProducer {
    inner: Arc<ProducerInner>,
}

/// A pending delivery of the blocking producer.
#[derive(Debug)]
pub struct BlockingDelivery {
    delivery: DeliveryFuture,
    handle: Handle,
}

impl BlockingDelivery {
    /// Blocks until the record is acknowledged or has failed.
    pub fn wait(self) -> Result<Delivery, ProduceError> {
        self.handle.block_on(self.delivery)
    }
}

impl BlockingProducer {
    /// Starts the producer on its own runtime thread.
    pub fn start(config: ProducerConfig) -> std::io::Result<Self> {
        let runtime = RuntimeThread::start("flumen-producer")?;
        let producer = {
            let _entered = runtime.handle.enter();
            Producer::start(config)
        };
        Ok(Self {
            inner: Arc::new(ProducerInner { producer, runtime }),
        })
    }

    /// Queues a record (waiting up to `max_block` for buffer room).
    pub fn send(&self, record: Record) -> BlockingDelivery {
        let handle = self.inner.runtime.handle.clone();
        let delivery = handle.block_on(self.inner.producer.send(record));
        BlockingDelivery { delivery, handle }
    }

    /// Queues a record and forgets it; fails only if it cannot be buffered.
    pub fn send_and_forget(&self, record: Record) -> Result<(), ProduceError> {
        let handle = &self.inner.runtime.handle;
        handle.block_on(self.inner.producer.send_and_forget(record))
    }

    /// Sends everything queued and waits until each record has an outcome.
    pub fn flush(&self) {
        self.inner
            .runtime
            .handle
            .block_on(self.inner.producer.flush());
    }

    /// Counters since the producer started.
    pub fn metrics(&self) -> ProducerMetrics {
        self.inner.producer.metrics()
    }

    /// Delivers (or queues in the outbox) everything sent before and stops the producer;
    /// sends through other clones fail with [`ProduceError::Closed`] afterwards.
    pub fn close(self) {
        let producer = self.inner.producer.clone();
        self.inner.runtime.handle.block_on(producer.close());
    }
}

/// The consumer for blocking code. `Send`; use it from one thread at a time.
///
/// ```no_run
/// use std::time::Duration;
/// use flumen_client::{BlockingConsumer, ConsumerConfig, TopicPartition};
///
/// let consumer = BlockingConsumer::new(ConsumerConfig::new("127.0.0.1:9292"))?;
/// consumer.assign(&[TopicPartition::new("orders", 0)])?;
/// for record in consumer.poll(Duration::from_secs(1))?.iter() {
///     println!("{}: {:?}", record.offset(), record.value());
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct BlockingConsumer {
    consumer: Mutex<Option<Consumer>>,
    runtime: RuntimeThread,
}

impl Drop for BlockingConsumer {
    fn drop(&mut self) {
        // Fetch tasks are aborted on the runtime's thread context.
        let _entered = self.runtime.handle.enter();
        drop(self.lock().take());
    }
}

impl BlockingConsumer {
    /// A consumer on its own runtime thread.
    pub fn new(config: ConsumerConfig) -> std::io::Result<Self> {
        Ok(Self {
            consumer: Mutex::new(Some(Consumer::new(config))),
            runtime: RuntimeThread::start("flumen-consumer")?,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Consumer>> {
        self.consumer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn run<T>(&self, call: impl AsyncFnOnce(&mut Consumer) -> T) -> T {
        let mut guard = self.lock();
        let consumer = guard.as_mut().expect("present until drop");
        self.runtime.handle.block_on(call(consumer))
    }

    /// See [`Consumer::assign`].
    pub fn assign(&self, partitions: &[TopicPartition]) -> Result<(), ConsumeError> {
        self.run(async |consumer| consumer.assign(partitions).await)
    }

    /// See [`Consumer::poll`].
    pub fn poll(&self, timeout: Duration) -> Result<ConsumerRecords, ConsumeError> {
        self.run(async |consumer| consumer.poll(timeout).await)
    }

    /// See [`Consumer::seek`].
    pub fn seek(&self, partition: &TopicPartition, to: SeekTo) -> Result<(), ConsumeError> {
        self.run(async |consumer| consumer.seek(partition, to).await)
    }

    /// See [`Consumer::assignment`].
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.run(async |consumer| consumer.assignment())
    }

    /// See [`Consumer::paused`].
    pub fn paused(&self) -> Vec<TopicPartition> {
        self.run(async |consumer| consumer.paused())
    }

    /// See [`Consumer::subscribe`].
    pub fn subscribe(
        &self,
        topics: &[&str],
        listener: impl crate::RebalanceListener + 'static,
    ) -> Result<(), ConsumeError> {
        self.run(async |consumer| consumer.subscribe(topics, listener).await)
    }

    /// See [`Consumer::unsubscribe`].
    pub fn unsubscribe(&self) {
        self.run(async |consumer| consumer.unsubscribe().await)
    }

    /// See [`Consumer::commit_record`].
    pub fn commit_record(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<(), ConsumeError> {
        self.run(async |consumer| consumer.commit_record(topic, partition, offset).await)
    }

    /// See [`Consumer::commit_sync`].
    pub fn commit_sync(&self) -> Result<(), ConsumeError> {
        self.run(async |consumer| consumer.commit_sync().await)
    }

    /// See [`Consumer::commit_offsets`].
    pub fn commit_offsets(&self, positions: &[(TopicPartition, u64)]) -> Result<(), ConsumeError> {
        self.run(async |consumer| consumer.commit_offsets(positions).await)
    }

    /// See [`Consumer::committed`].
    pub fn committed(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<Vec<Option<u64>>, ConsumeError> {
        self.run(async |consumer| consumer.committed(partitions).await)
    }

    /// See [`Consumer::position`].
    pub fn position(&self, partition: &TopicPartition) -> Result<Option<u64>, ConsumeError> {
        self.run(async |consumer| consumer.position(partition))
    }

    /// See [`Consumer::pause`].
    pub fn pause(&self, partitions: &[TopicPartition]) -> Result<(), ConsumeError> {
        self.run(async |consumer| consumer.pause(partitions))
    }

    /// See [`Consumer::resume`].
    pub fn resume(&self, partitions: &[TopicPartition]) -> Result<(), ConsumeError> {
        self.run(async |consumer| consumer.resume(partitions))
    }
}
