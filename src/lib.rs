//! # Flumen
//!
//! A persistent, partitioned event-streaming broker in the model of Apache Kafka, built
//! shard-per-core on io_uring: every partition belongs to exactly one core, which owns
//! its log, cache and state; shards share nothing and talk by message passing.
//!
//! The crate is layered bottom-up; a module only imports the ones below it (enforced by
//! `tests/tidy.rs`):
//!
//! 1. [`shard`] — the executor-facing primitives: spawning, shard-local synchronisation,
//!    and the clock seam.
//! 2. [`storage`] — segment files on direct I/O, indexes, the per-partition [`storage::Log`],
//!    recovery, retention and the per-shard tail cache. It knows nothing of networks,
//!    replication or groups.
//!
//! The partition, group, server and CLI layers are built on top of these.
//! `docs/ARCHITECTURE.md` is the map of the code.

pub mod cli;
pub mod cluster;
pub mod partition;
pub mod server;
pub mod shard;
pub mod storage;
