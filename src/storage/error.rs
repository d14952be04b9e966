//! The storage layer's error type.

use std::io;
use std::path::PathBuf;

use flumen_protocol::record::BatchError;

/// Everything that can go wrong in the storage layer, with the context needed to act on it.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The batch offered to `append` is not a valid batch; nothing was written.
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] BatchError),
    /// The batch is larger than the log's configured maximum; nothing was written.
    #[error("batch of {length_bytes} bytes exceeds max.message.bytes of {limit_bytes}")]
    BatchTooLarge {
        /// Size of the rejected batch.
        length_bytes: usize,
        /// The configured limit.
        limit_bytes: usize,
    },
    /// The filesystem is full; nothing was written and the log is unchanged. Appends work
    /// again once space is freed.
    #[error("disk full while {operation} {path}")]
    DiskFull {
        /// What was being done.
        operation: &'static str,
        /// The file concerned.
        path: PathBuf,
    },
    /// Any other I/O failure.
    #[error("I/O error while {operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A background write failed; the log refuses appends until it is reopened, which runs
    /// recovery. Data flushed before the failure stays readable.
    #[error("log {path} stopped accepting writes after a failed write: {cause}")]
    Poisoned {
        /// The partition directory.
        path: PathBuf,
        /// The first failure.
        cause: String,
    },
    /// Bytes read back from disk failed validation; they are never returned.
    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte position of the bad batch.
        position: u64,
        /// What was wrong.
        reason: String,
    },
    /// The requested offset is outside `[log_start_offset, next_offset]`.
    #[error("offset {offset} is out of range [{log_start_offset}, {next_offset}]")]
    OffsetOutOfRange {
        /// The requested offset.
        offset: u64,
        /// First offset still in the log.
        log_start_offset: u64,
        /// Offset the next appended record will get.
        next_offset: u64,
    },
    /// A leader epoch older than the current one was assigned.
    #[error("leader epoch {requested} is older than the current epoch {current}")]
    StaleEpoch {
        /// The epoch asked for.
        requested: u32,
        /// The log's latest epoch.
        current: u32,
    },
    /// The configuration is inconsistent.
    #[error("invalid log configuration: {0}")]
    InvalidConfig(String),
    /// The log was closed.
    #[error("log {0} is closed")]
    Closed(PathBuf),
}

impl StorageError {
    /// Classifies an I/O error, turning `ENOSPC` and `EDQUOT` into [`StorageError::DiskFull`].
    pub(crate) fn io(operation: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Self::DiskFull { operation, path },
            _ => Self::Io {
                operation,
                path,
                source,
            },
        }
    }
}

/// Shorthand for storage results.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Adds operation and path context to an I/O error: `.map_err(context("reading", path))`.
pub(crate) fn context<'a>(
    operation: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(io::Error) -> StorageError + 'a {
    move |error| StorageError::io(operation, path, error)
}
