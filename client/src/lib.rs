//! # flumen-client
//!
//! A client for Flumen's native protocol: topic administration, an idempotent
//! [`Producer`] (batching, retries, optional durable outbox), a prefetching [`Consumer`],
//! blocking versions of both, and typed values ([`serialization`]). With default
//! features it needs no io_uring, so it runs wherever a microservice runs (containers
//! whose seccomp profile blocks io_uring included): `cargo tree -p flumen-client -e
//! normal` shows no glommio. The guide is `docs/CLIENT.md`.
//!
//! The protocol logic is free of I/O ([`operation`], and the producer's batching and
//! sequence numbers in [`accumulator`]): each API exchange is an
//! [`operation::Operation`], and thin transports only move bytes:
//! - [`Client`], blocking over `std::net` (the `flumen` command line's admin commands);
//! - [`AsyncClient`], on tokio (feature `tokio`, on by default), `Send + Sync`-friendly
//!   for services;
//! - `GlommioClient` (feature `glommio`, needs io_uring), for code already on a glommio
//!   executor: shard-aware connections without a cross-thread hop.
//!
//! The [`Producer`] and [`Consumer`] are written once over a [`runtime::Runtime`]: on
//! tokio by default, on glommio as `GlommioProducer` / `GlommioConsumer` (feature
//! `glommio`), and for code that is not async as [`BlockingProducer`] /
//! [`BlockingConsumer`], which run the tokio ones on a private runtime thread.
//!
//! ```no_run
//! use flumen_client::{Acks, Client};
//! use flumen_protocol::record::BatchBuilder;
//!
//! let mut client = Client::connect("127.0.0.1:9292")?;
//! client.create_topic("orders", 4, &[])?;
//! let mut batch = BatchBuilder::new(0);
//! batch.push(1_700_000_000_000, Some(b"key"), Some(b"value"), &[]);
//! let written = client.produce("orders", 0, &[batch.build()?.as_bytes()], Acks::All)?;
//! let fetched = client.fetch("orders", 0, written.base_offset, 1 << 20, 0)?;
//! for batch in fetched.batches()? {
//!     for record in batch.records() {
//!         println!("{} {:?}", record.offset(), record.value());
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod accumulator;
#[cfg(feature = "tokio")]
pub mod assignor;
mod blocking;
#[cfg(feature = "tokio")]
pub mod consumer;
mod fast_hash;
#[cfg(feature = "glommio")]
mod glommio_client;
#[cfg(feature = "tokio")]
pub mod membership;
pub mod operation;
#[cfg(feature = "tokio")]
pub mod outbox;
mod partitioner;
#[cfg(feature = "tokio")]
pub mod producer;
#[cfg(feature = "tokio")]
pub mod recovery;
#[cfg(feature = "tokio")]
mod routing;
#[cfg(feature = "tokio")]
pub mod runtime;
pub mod serialization;
#[cfg(feature = "tokio")]
mod sync_facade;
#[cfg(feature = "tokio")]
mod tokio_client;

pub use blocking::Client;
#[cfg(feature = "tokio")]
pub use consumer::{
    ConsumeError, Consumer, ConsumerConfig, ConsumerRecord, ConsumerRecordView, ConsumerRecords,
    OffsetReset, SeekTo, TopicPartition,
};
pub use flumen_protocol::wire::messages::{
    ConfigValue, DescribedGroup, DescribedMember, FetchPartitionResult, JoinGroupResponse,
    ListOffsetsPartitionResult, MetadataResponse, OffsetFetchPartition, OffsetFetchTopicResult,
    ProducePartitionResult, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP,
};
#[cfg(feature = "glommio")]
pub use glommio_client::GlommioClient;
#[cfg(feature = "tokio")]
pub use membership::{CommitMode, NoListener, RebalanceListener};
pub use partitioner::{murmur2, partition_for_key};
#[cfg(feature = "tokio")]
pub use producer::{
    Delivery, DeliveryFuture, DeliveryHandler, ProduceError, Producer, ProducerConfig,
    ProducerMetrics, Record, RecordRef,
};
#[cfg(feature = "tokio")]
pub use sync_facade::{BlockingConsumer, BlockingDelivery, BlockingProducer};
#[cfg(feature = "tokio")]
pub use tokio_client::AsyncClient;
#[cfg(feature = "glommio")]
pub use {consumer::GlommioConsumer, producer::GlommioProducer};

use flumen_protocol::record::{first_batch_length, BatchError, BatchView};
use flumen_protocol::wire::{ErrorCode, FrameBuffer, FrameError};

/// How many replicas must have a produce before the broker answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// No answer at all: fire and forget.
    None,
    /// Answered once the leader appended (not necessarily on disk).
    Leader,
    /// Answered once every in-sync replica has it on disk.
    All,
}

impl Acks {
    pub(crate) fn wire(self) -> i8 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
}

/// What can go wrong talking to a broker.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection failed.
    #[error("connection to the broker failed: {0}")]
    Io(#[from] std::io::Error),
    /// The broker sent something that is not a valid frame.
    #[error("invalid response from the broker: {0}")]
    Frame(#[from] FrameError),
    /// The broker answered with an error.
    #[error("{code:?}: {message}")]
    Broker {
        /// The error code.
        code: ErrorCode,
        /// The broker's explanation.
        message: String,
    },
    /// A batch failed validation.
    #[error("invalid batch: {0}")]
    Batch(#[from] BatchError),
    /// The response does not match the request.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// Shorthand for client results.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Batches returned by a fetch, with the partition's watermarks.
#[derive(Debug)]
pub struct Fetched {
    /// The partition's result.
    pub partition: FetchPartitionResult,
    pub(crate) frame: FrameBuffer,
    pub(crate) data_start: usize,
}

impl Fetched {
    /// The fetched batches, validated (header, CRC, records) and read in place.
    pub fn batches(&self) -> Result<Vec<BatchView<'_>>> {
        self.split(BatchView::validate)
    }

    /// The batches again, after [`Fetched::batches`] validated them: the bytes have not
    /// changed (nothing mutates a fetched frame), so the CRC is not computed twice.
    pub(crate) fn batches_again(&self) -> Result<Vec<BatchView<'_>>> {
        self.split(BatchView::revalidate_archive)
    }

    fn split<'a>(
        &'a self,
        check: impl Fn(&'a [u8]) -> Result<BatchView<'a>, flumen_protocol::record::BatchError>,
    ) -> Result<Vec<BatchView<'a>>> {
        let data = &self.frame.as_slice()[self.data_start..];
        let range = &self.partition.batches;
        // Batches start on 16-byte boundaries (section 4.1 of the protocol): one that
        // does not could not be read in place.
        if !range.offset.is_multiple_of(16) || !range.length.is_multiple_of(16) {
            return Err(ClientError::Protocol(
                "batch range not aligned to 16 bytes".into(),
            ));
        }
        let start = range.offset as usize;
        let end = start + range.length as usize;
        let mut bytes = data
            .get(start..end)
            .ok_or_else(|| ClientError::Protocol("batch range outside the data".into()))?;
        let mut batches = Vec::new();
        while !bytes.is_empty() {
            let length = first_batch_length(bytes)?;
            batches.push(check(&bytes[..length])?);
            bytes = &bytes[length..];
        }
        Ok(batches)
    }
}

/// The convenience methods, written once: `[pub] [async] [.await]` for the async
/// transports, `[pub] [] []` for the blocking one, and `[] [async] [.await]` inside the
/// producer's and consumer's `Calls` trait (any runtime's connection).
macro_rules! client_methods {
    ([$($vis:tt)*] [$($asynchronous:tt)*] [$($wait:tt)*]) => {
        /// Brokers, shards and the given topics (all topics for `None`).
        $($vis)* $($asynchronous)* fn metadata(&mut self, topics: Option<&[&str]>) -> $crate::Result<$crate::MetadataResponse> {
            self.run($crate::operation::Metadata(topics)) $($wait)*
        }

        /// Creates a topic with `partitions` partitions and configuration overrides.
        $($vis)* $($asynchronous)* fn create_topic(&mut self, name: &str, partitions: u32, configs: &[(&str, &str)]) -> $crate::Result<()> {
            self.run($crate::operation::CreateTopic { name, partitions, configs }) $($wait)*
        }

        /// Deletes a topic and all its data.
        $($vis)* $($asynchronous)* fn delete_topic(&mut self, name: &str) -> $crate::Result<()> {
            self.run($crate::operation::DeleteTopic(name)) $($wait)*
        }

        /// A topic's effective configuration.
        $($vis)* $($asynchronous)* fn describe_configs(&mut self, name: &str) -> $crate::Result<Vec<$crate::ConfigValue>> {
            self.run($crate::operation::DescribeConfigs(name)) $($wait)*
        }

        /// Sets configuration keys of a topic (an empty value resets a key).
        $($vis)* $($asynchronous)* fn alter_configs(&mut self, name: &str, configs: &[(&str, &str)]) -> $crate::Result<()> {
            self.run($crate::operation::AlterConfigs { name, configs }) $($wait)*
        }

        /// Appends whole, padded batches to a partition. With [`Acks::None`] nothing comes
        /// back and the result's offsets are zero.
        $($vis)* $($asynchronous)* fn produce(&mut self, topic: &str, partition: u32, batches: &[&[u8]], acks: $crate::Acks) -> $crate::Result<$crate::ProducePartitionResult> {
            self.run($crate::operation::Produce { topic, partition, batches, acks }) $($wait)*
        }

        /// A new producer id and epoch for idempotent produce (stamp them and per-partition
        /// sequence numbers into batches with `BatchBuilder::producer`).
        $($vis)* $($asynchronous)* fn init_producer_id(&mut self) -> $crate::Result<(i64, i16)> {
            self.run($crate::operation::InitProducerId) $($wait)*
        }

        /// Stores `group`'s positions outside group membership: `(topic, partition, offset
        /// to resume from, metadata)`. One outcome per position, in order.
        $($vis)* $($asynchronous)* fn commit_offsets(&mut self, group: &str, positions: &[(&str, u32, u64, Option<&str>)]) -> $crate::Result<Vec<$crate::Result<()>>> {
            self.run($crate::operation::OffsetCommit { group_id: group, generation_id: -1, member_id: "", positions }) $($wait)*
        }

        /// `group`'s committed positions: of `(topic, partitions)`, or all (`None`).
        $($vis)* $($asynchronous)* fn fetch_offsets(&mut self, group: &str, topics: Option<&[(&str, &[u32])]>) -> $crate::Result<Vec<$crate::OffsetFetchTopicResult>> {
            self.run($crate::operation::OffsetFetch { group_id: group, topics }) $($wait)*
        }

        /// Forgets a group and its committed positions.
        $($vis)* $($asynchronous)* fn delete_group(&mut self, group: &str) -> $crate::Result<()> {
            self.run($crate::operation::DeleteGroup(group)) $($wait)*
        }

        /// A group's state, generation, protocol and members.
        $($vis)* $($asynchronous)* fn describe_group(&mut self, group: &str) -> $crate::Result<$crate::DescribedGroup> {
            self.run($crate::operation::DescribeGroup(group)) $($wait)*
        }

        /// The consumer groups the broker knows (with committed positions or members).
        $($vis)* $($asynchronous)* fn list_groups(&mut self) -> $crate::Result<Vec<String>> {
            self.run($crate::operation::ListGroups) $($wait)*
        }

        /// Reads from `offset`, waiting up to `max_wait_ms` for data if there is none.
        $($vis)* $($asynchronous)* fn fetch(&mut self, topic: &str, partition: u32, offset: u64, max_bytes: u32, max_wait_ms: u32) -> $crate::Result<$crate::Fetched> {
            self.run($crate::operation::Fetch { topic, partition, offset, max_bytes, max_wait_ms }) $($wait)*
        }

        /// The offset for `timestamp` (or [`LATEST_TIMESTAMP`] / [`EARLIEST_TIMESTAMP`]),
        /// with the partition's bounds and size.
        $($vis)* $($asynchronous)* fn list_offsets(&mut self, topic: &str, partition: u32, timestamp: i64) -> $crate::Result<$crate::ListOffsetsPartitionResult> {
            self.run($crate::operation::ListOffsets { topic, partition, timestamp }) $($wait)*
        }
    };
}
pub(crate) use client_methods;
