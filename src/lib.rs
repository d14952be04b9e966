//! # Flumen
//!
//! A persistent, partitioned event-streaming broker in the model of Apache Kafka, built
//! shard-per-core on io_uring: every partition belongs to exactly one core, which owns
//! its log, cache and state; shards share nothing and talk by message passing.
//!
//! The crate is layered bottom-up; a module only imports the ones below it (enforced by
//! `tests/tidy.rs`):
//!
//! 1. [`shard`] — the executor pool (one pinned glommio executor per core, a bounded
//!    mesh between them), partition placement, shard-local synchronisation, the clock.
//! 2. [`storage`] — segment files on direct I/O, indexes, the per-partition [`storage::Log`],
//!    recovery, retention and the per-shard tail cache. It knows nothing of networks,
//!    replication or groups.
//! 3. [`partition`] and [`cluster`] — a partition (log, topic configuration, append
//!    notification) and the topic catalog.
//! 4. [`group`] — consumer groups: committed offsets in `__consumer_offsets`.
//! 5. [`server`] — the broker: listeners, connections, one handler per API.
//! 6. [`EmbeddedBroker`] (an in-process broker for tests) and [`cli`], the `flumen`
//!    command line.
//!
//! `docs/ARCHITECTURE.md` is the map of the code.

pub mod cli;
mod embedded;

pub use embedded::EmbeddedBroker;
pub mod cluster;
pub mod group;
pub mod partition;
pub mod server;
pub mod shard;
pub mod storage;
