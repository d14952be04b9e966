//! Storage: per-partition logs of record batches in direct-I/O segment files.
//!
//! Knows nothing of networks, replication or consumer groups; the layers above build on
//! [`Log`]. Each log belongs to one shard and is `!Send`; the shard's logs share one
//! [`TailCache`].
//!
//! - `file` — the direct-I/O adapter (the only code here that names glommio);
//! - `writer` — staging buffers, background writes and group-commit flushes of the
//!   active segment, and the precise meaning of "appended", "written" and "flushed";
//! - `segment`, `index` — one segment file and its sparse offset/time index;
//! - `scan`, `recovery` — validating segments after a crash and cutting invalid tails;
//! - `meta` — `partition.meta`: recovery checkpoint and leader-epoch history;
//! - `cache` — the per-shard tail cache;
//! - `log` — [`Log`]: append, flush, read, retention, truncation, epochs.
//!
//! Invariants: offsets in a log are dense and increasing; a byte that failed validation
//! is never returned by a read; an acknowledged flush survives a crash.

mod cache;
mod config;
mod error;
mod file;
mod index;
mod log;
mod meta;
mod readahead;
mod recovery;
mod scan;
mod segment;
mod writer;

pub use cache::{CacheStats, TailCache};
pub use config::{LogConfig, IO_ALIGNMENT_BYTES};
pub use error::{Result, StorageError};
pub use file::ReadBytes;
pub use log::{
    AppendInfo, Log, RecoveryReport, RetentionReport, StoredBatch, ValidatedBatch, SPARE_FILE,
};
pub use meta::EpochEntry;
pub use writer::set_shared_write_window;

/// Small metadata files written atomically (write, sync, rename, sync directory) through
/// the same direct-I/O adapter, for the layers above.
pub(crate) use file::{read_small_file, remove_file, write_file_atomically};
