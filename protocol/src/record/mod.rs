//! The record batch: Flumen's unit of storage and transfer.
//!
//! A batch is laid out as
//!
//! ```text
//! offset  size  field                     covered by CRC
//!      0     8  base_offset               no  (assigned by the broker)
//!      8     4  batch_length              no  (header + body, padding excluded)
//!     12     4  partition_leader_epoch    no  (assigned by the broker)
//!     16     1  magic                     no
//!     17     3  reserved, zero            no
//!     20     4  crc                       -
//!     24     2  attributes                yes
//!     26     2  producer_epoch            yes
//!     28     4  last_offset_delta         yes
//!     32     8  first_timestamp           yes
//!     40     8  max_timestamp             yes
//!     48     8  producer_id               yes
//!     56     4  base_sequence             yes
//!     60     4  record_count              yes
//!     64     …  body (rkyv archive)       yes
//!      …   0-15 zero padding to 16 bytes  no
//! ```
//!
//! All integers are little-endian. The CRC (CRC-32, `crc32fast`) covers bytes
//! `24..batch_length`, so the broker can assign `base_offset` and the leader epoch
//! without recomputing it. Every batch starts 16-byte aligned and occupies
//! [`padded_length`]`(batch_length)` bytes, so batches can follow each other in a frame or
//! a segment file and each body can be read with rkyv in place.
//!
//! The body is an rkyv archive of `Vec<Record>` (see [`ArchivedRecord`]) when the body
//! format in `attributes` is [`BodyFormat::Rkyv`]. Other body formats are reserved; code
//! that reads bodies rejects what it does not know instead of misreading it.
//!
//! Trust: [`BatchView::validate`] checks the header, the CRC and the archive (rkyv
//! bytecheck) exactly once; after that, record access is zero-copy and unchecked.
//! [`BatchView::validate_header_and_crc`] is the cheaper check for bytes that were fully
//! validated before (for example, read back from a log that only stores validated batches).

mod builder;
mod error;
mod header;
mod view;

pub use builder::{BatchBuilder, BuiltBatch};
pub use error::BatchError;
pub use header::{
    first_batch_length, padded_length, patch_base_offset, patch_partition_leader_epoch, Attributes,
    BatchHeader, BodyFormat, Compression, TimestampType, BATCH_ALIGNMENT_BYTES, BATCH_HEADER_BYTES,
    BATCH_LENGTH_MAX_BYTES, CRC_COVERED_FROM, MAGIC,
};
pub use view::{BatchView, RecordView};

/// A header attached to a record: a UTF-8 name and an opaque value.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize)]
#[rkyv(derive(Debug))]
pub struct Header {
    /// The header name.
    pub key: String,
    /// The header value.
    pub value: Vec<u8>,
}

/// One record as stored in a batch body.
///
/// Offsets and timestamps are deltas from the batch header's `base_offset` and
/// `first_timestamp`, as in Kafka's RecordBatch v2.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize)]
#[rkyv(derive(Debug))]
pub struct Record {
    /// Offset of this record minus the batch's base offset; equal to the record's index.
    pub offset_delta: u32,
    /// Timestamp of this record minus the batch's first timestamp, in milliseconds.
    pub timestamp_delta: i64,
    /// The record key, used for partitioning and (later) compaction.
    pub key: Option<Vec<u8>>,
    /// The record value; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    /// Application headers.
    pub headers: Vec<Header>,
}

#[cfg(test)]
mod tests;
