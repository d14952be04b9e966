//! Errors from building, decoding and validating record batches.

/// Why a byte range is not a valid record batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Fewer bytes than a header, or fewer than the header's `batch_length` says.
    #[error("batch truncated: need {needed_bytes} bytes, have {available_bytes}")]
    Truncated {
        /// Bytes the header says the batch occupies.
        needed_bytes: usize,
        /// Bytes actually available.
        available_bytes: usize,
    },
    /// The magic byte is not [`super::MAGIC`].
    #[error("unknown batch magic {0}")]
    UnknownMagic(u8),
    /// A header field holds a value that no valid batch can have.
    #[error("impossible batch header: {0}")]
    ImpossibleHeader(&'static str),
    /// The stored CRC does not match the bytes.
    #[error("batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// CRC in the header.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// The body format bits name a format this reader cannot read.
    #[error("unsupported body format {0}")]
    UnsupportedBodyFormat(u8),
    /// The compression codec bits name a codec this reader cannot decode.
    #[error("unsupported compression codec {0}")]
    UnsupportedCompression(u8),
    /// The rkyv archive failed bytecheck validation.
    #[error("invalid record archive: {0}")]
    InvalidArchive(String),
    /// The archive is well-formed but disagrees with the header.
    #[error("records disagree with header: {0}")]
    RecordsDisagree(&'static str),
    /// The batch is larger than a limit.
    #[error("batch of {length_bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    TooLarge {
        /// Size of the batch.
        length_bytes: usize,
        /// The limit it exceeds.
        limit_bytes: usize,
    },
    /// A builder was asked to finish with no records.
    #[error("a batch needs at least one record")]
    Empty,
}
