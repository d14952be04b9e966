//! Cluster metadata. Today: the topic catalog of a single broker — which topics exist,
//! their partition counts and configuration — persisted in `<data_dir>/topics.meta`.
//! Later: the controller quorum's metadata log (brokers, assignments, leaders, ISR).
//!
//! Shard 0 also hands out idempotent producer ids (`producer_ids.meta`).
//!
//! Ownership: shard 0 owns the catalog file and applies changes; every shard keeps a
//! read-only copy, replaced whenever shard 0 broadcasts a change.

mod catalog;
mod producer_ids;

pub use catalog::{validate_topic_name, Catalog, CatalogError, TopicEntry, CATALOG_FILE};
pub use producer_ids::{ProducerIdAllocator, BLOCK_SIZE, PRODUCER_IDS_FILE};
