//! The fixed 64-byte batch header, its attribute bits and the in-place patch helpers.

use super::BatchError;

/// Size of the fixed batch header.
pub const BATCH_HEADER_BYTES: usize = 64;
/// Every batch starts at a multiple of this and is padded to a multiple of it.
pub const BATCH_ALIGNMENT_BYTES: usize = 16;
/// The magic byte of this batch format.
pub const MAGIC: u8 = 1;
/// The CRC covers bytes from this offset to `batch_length`.
pub const CRC_COVERED_FROM: usize = 24;
/// The largest `batch_length` any batch may declare (a hard format limit; brokers and
/// clients configure smaller ones).
pub const BATCH_LENGTH_MAX_BYTES: usize = 256 << 20;

const _: () = assert!(std::mem::size_of::<BatchHeader>() == BATCH_HEADER_BYTES);
const _: () = assert!(BATCH_HEADER_BYTES.is_multiple_of(BATCH_ALIGNMENT_BYTES));
const _: () = assert!(BATCH_LENGTH_MAX_BYTES <= u32::MAX as usize);

const OFFSET_BASE_OFFSET: usize = 0;
const OFFSET_BATCH_LENGTH: usize = 8;
const OFFSET_LEADER_EPOCH: usize = 12;
const OFFSET_MAGIC: usize = 16;
const OFFSET_RESERVED: usize = 17;
const OFFSET_CRC: usize = 20;
const OFFSET_ATTRIBUTES: usize = 24;
const OFFSET_PRODUCER_EPOCH: usize = 26;
const OFFSET_LAST_OFFSET_DELTA: usize = 28;
const OFFSET_FIRST_TIMESTAMP: usize = 32;
const OFFSET_MAX_TIMESTAMP: usize = 40;
const OFFSET_PRODUCER_ID: usize = 48;
const OFFSET_BASE_SEQUENCE: usize = 56;
const OFFSET_RECORD_COUNT: usize = 60;
const _: () = assert!(OFFSET_CRC + 4 == CRC_COVERED_FROM && OFFSET_ATTRIBUTES == CRC_COVERED_FROM);

/// Bytes a batch of `batch_length` occupies once padded to [`BATCH_ALIGNMENT_BYTES`].
pub const fn padded_length(batch_length: usize) -> usize {
    (batch_length + BATCH_ALIGNMENT_BYTES - 1) & !(BATCH_ALIGNMENT_BYTES - 1)
}

/// The decoded batch header.
///
/// The struct mirrors the on-disk layout (`#[repr(C)]`, 64 bytes, checked at compile time)
/// but is always read and written field by field in little-endian order, so it is correct
/// on any host and needs no alignment.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchHeader {
    /// Offset of the first record; assigned by the broker on append.
    pub base_offset: u64,
    /// Length of header plus body in bytes, padding excluded.
    pub batch_length: u32,
    /// Leader epoch of the partition when the batch was appended; assigned by the broker.
    pub partition_leader_epoch: u32,
    /// Format version, [`MAGIC`].
    pub magic: u8,
    /// Reserved, always zero.
    pub reserved: [u8; 3],
    /// CRC-32 of bytes `24..batch_length`.
    pub crc: u32,
    /// Compression, timestamp type and body format bits.
    pub attributes: Attributes,
    /// Producer epoch for idempotence, or -1.
    pub producer_epoch: i16,
    /// Offset delta of the last record (`record_count - 1`).
    pub last_offset_delta: u32,
    /// Timestamp of the first record, milliseconds since the Unix epoch.
    pub first_timestamp: i64,
    /// Largest record timestamp in the batch.
    pub max_timestamp: i64,
    /// Producer id for idempotence, or -1.
    pub producer_id: i64,
    /// Sequence number of the first record for idempotence, or -1.
    pub base_sequence: i32,
    /// Number of records in the batch.
    pub record_count: u32,
}

impl BatchHeader {
    /// Decodes and sanity-checks a header from the first [`BATCH_HEADER_BYTES`] of `bytes`.
    ///
    /// Checks everything the header alone can prove: the magic, the reserved bytes, known
    /// attribute bits, a length that can hold the header and fits the format limit, and
    /// counts that agree with each other. It does not check the CRC or the body.
    pub fn decode(bytes: &[u8]) -> Result<Self, BatchError> {
        if bytes.len() < BATCH_HEADER_BYTES {
            return Err(BatchError::Truncated {
                needed_bytes: BATCH_HEADER_BYTES,
                available_bytes: bytes.len(),
            });
        }
        let header = Self {
            base_offset: read_u64(bytes, OFFSET_BASE_OFFSET),
            batch_length: read_u32(bytes, OFFSET_BATCH_LENGTH),
            partition_leader_epoch: read_u32(bytes, OFFSET_LEADER_EPOCH),
            magic: bytes[OFFSET_MAGIC],
            reserved: [
                bytes[OFFSET_RESERVED],
                bytes[OFFSET_RESERVED + 1],
                bytes[OFFSET_RESERVED + 2],
            ],
            crc: read_u32(bytes, OFFSET_CRC),
            attributes: Attributes(u16::from_le_bytes([
                bytes[OFFSET_ATTRIBUTES],
                bytes[OFFSET_ATTRIBUTES + 1],
            ])),
            producer_epoch: i16::from_le_bytes([
                bytes[OFFSET_PRODUCER_EPOCH],
                bytes[OFFSET_PRODUCER_EPOCH + 1],
            ]),
            last_offset_delta: read_u32(bytes, OFFSET_LAST_OFFSET_DELTA),
            first_timestamp: read_u64(bytes, OFFSET_FIRST_TIMESTAMP) as i64,
            max_timestamp: read_u64(bytes, OFFSET_MAX_TIMESTAMP) as i64,
            producer_id: read_u64(bytes, OFFSET_PRODUCER_ID) as i64,
            base_sequence: read_u32(bytes, OFFSET_BASE_SEQUENCE) as i32,
            record_count: read_u32(bytes, OFFSET_RECORD_COUNT),
        };
        header.check()?;
        Ok(header)
    }

    fn check(&self) -> Result<(), BatchError> {
        if self.magic != MAGIC {
            return Err(BatchError::UnknownMagic(self.magic));
        }
        if self.reserved != [0; 3] {
            return Err(BatchError::ImpossibleHeader("reserved bytes are not zero"));
        }
        let length = self.batch_length as usize;
        if length < BATCH_HEADER_BYTES {
            return Err(BatchError::ImpossibleHeader(
                "batch_length is shorter than the header",
            ));
        }
        if length > BATCH_LENGTH_MAX_BYTES {
            return Err(BatchError::TooLarge {
                length_bytes: length,
                limit_bytes: BATCH_LENGTH_MAX_BYTES,
            });
        }
        if self.attributes.0 & !Attributes::KNOWN_BITS != 0 {
            return Err(BatchError::ImpossibleHeader(
                "unknown attribute bits are set",
            ));
        }
        if self.record_count == 0 {
            return Err(BatchError::ImpossibleHeader("record_count is zero"));
        }
        if self.last_offset_delta != self.record_count - 1 {
            return Err(BatchError::ImpossibleHeader(
                "last_offset_delta is not record_count - 1",
            ));
        }
        // The next offset (one past the last record) must exist too.
        if self
            .base_offset
            .checked_add(u64::from(self.last_offset_delta))
            .and_then(|last| last.checked_add(1))
            .is_none()
        {
            return Err(BatchError::ImpossibleHeader("offsets overflow"));
        }
        if self.max_timestamp < self.first_timestamp {
            return Err(BatchError::ImpossibleHeader(
                "max_timestamp is before first_timestamp",
            ));
        }
        Ok(())
    }

    /// Writes the header into the first [`BATCH_HEADER_BYTES`] of `out`.
    pub fn encode(&self, out: &mut [u8]) {
        assert!(out.len() >= BATCH_HEADER_BYTES);
        out[OFFSET_BASE_OFFSET..][..8].copy_from_slice(&self.base_offset.to_le_bytes());
        out[OFFSET_BATCH_LENGTH..][..4].copy_from_slice(&self.batch_length.to_le_bytes());
        out[OFFSET_LEADER_EPOCH..][..4].copy_from_slice(&self.partition_leader_epoch.to_le_bytes());
        out[OFFSET_MAGIC] = self.magic;
        out[OFFSET_RESERVED..][..3].copy_from_slice(&self.reserved);
        out[OFFSET_CRC..][..4].copy_from_slice(&self.crc.to_le_bytes());
        out[OFFSET_ATTRIBUTES..][..2].copy_from_slice(&self.attributes.0.to_le_bytes());
        out[OFFSET_PRODUCER_EPOCH..][..2].copy_from_slice(&self.producer_epoch.to_le_bytes());
        out[OFFSET_LAST_OFFSET_DELTA..][..4].copy_from_slice(&self.last_offset_delta.to_le_bytes());
        out[OFFSET_FIRST_TIMESTAMP..][..8].copy_from_slice(&self.first_timestamp.to_le_bytes());
        out[OFFSET_MAX_TIMESTAMP..][..8].copy_from_slice(&self.max_timestamp.to_le_bytes());
        out[OFFSET_PRODUCER_ID..][..8].copy_from_slice(&self.producer_id.to_le_bytes());
        out[OFFSET_BASE_SEQUENCE..][..4].copy_from_slice(&self.base_sequence.to_le_bytes());
        out[OFFSET_RECORD_COUNT..][..4].copy_from_slice(&self.record_count.to_le_bytes());
    }

    /// Offset of the last record in the batch.
    pub fn last_offset(&self) -> u64 {
        self.base_offset + u64::from(self.last_offset_delta)
    }

    /// Offset one past the last record: where the next batch starts.
    pub fn next_offset(&self) -> u64 {
        self.last_offset() + 1
    }

    /// Bytes the batch occupies including padding.
    pub fn padded_length(&self) -> usize {
        padded_length(self.batch_length as usize)
    }
}

/// How many bytes the first of several batches laid back to back occupies (padding
/// included, at most `bytes.len()`), from its header alone: the step for walking a data
/// section or a segment. The batch itself is not checked; validate the slice.
pub fn first_batch_length(bytes: &[u8]) -> Result<usize, BatchError> {
    Ok(BatchHeader::decode(bytes)?.padded_length().min(bytes.len()))
}

/// Writes `base_offset` into an encoded header in place. The CRC does not cover it.
pub fn patch_base_offset(batch: &mut [u8], base_offset: u64) {
    batch[OFFSET_BASE_OFFSET..][..8].copy_from_slice(&base_offset.to_le_bytes());
}

/// Writes `partition_leader_epoch` into an encoded header in place. The CRC does not cover it.
pub fn patch_partition_leader_epoch(batch: &mut [u8], epoch: u32) {
    batch[OFFSET_LEADER_EPOCH..][..4].copy_from_slice(&epoch.to_le_bytes());
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// The `attributes` bit field.
///
/// | bits  | meaning                                                            |
/// |-------|--------------------------------------------------------------------|
/// | 0–2   | compression codec (Kafka's numbering: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd) |
/// | 3     | timestamp type (0 create time, 1 log append time)                  |
/// | 4     | transactional (reserved, must be 0)                                |
/// | 5     | control batch (reserved, must be 0)                                |
/// | 8–11  | body format (0 rkyv records, 1 Kafka RecordBatch v2 records)       |
///
/// Any other bit set makes the header impossible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attributes(pub u16);

impl Attributes {
    const COMPRESSION_MASK: u16 = 0b111;
    const TIMESTAMP_TYPE_BIT: u16 = 1 << 3;
    const BODY_FORMAT_SHIFT: u16 = 8;
    const BODY_FORMAT_MASK: u16 = 0b1111 << Self::BODY_FORMAT_SHIFT;
    const KNOWN_BITS: u16 =
        Self::COMPRESSION_MASK | Self::TIMESTAMP_TYPE_BIT | Self::BODY_FORMAT_MASK;

    /// Builds the attribute bits from their parts.
    pub fn new(compression: Compression, timestamp_type: TimestampType, body: BodyFormat) -> Self {
        let mut bits = compression as u16;
        if timestamp_type == TimestampType::LogAppendTime {
            bits |= Self::TIMESTAMP_TYPE_BIT;
        }
        bits |= (body as u16) << Self::BODY_FORMAT_SHIFT;
        Self(bits)
    }

    /// The compression codec, or an error naming the unknown codec number.
    pub fn compression(self) -> Result<Compression, BatchError> {
        let code = (self.0 & Self::COMPRESSION_MASK) as u8;
        Compression::from_code(code).ok_or(BatchError::UnsupportedCompression(code))
    }

    /// The timestamp type.
    pub fn timestamp_type(self) -> TimestampType {
        if self.0 & Self::TIMESTAMP_TYPE_BIT == 0 {
            TimestampType::CreateTime
        } else {
            TimestampType::LogAppendTime
        }
    }

    /// The body format, or an error naming the unknown format number.
    pub fn body_format(self) -> Result<BodyFormat, BatchError> {
        let code = ((self.0 & Self::BODY_FORMAT_MASK) >> Self::BODY_FORMAT_SHIFT) as u8;
        match code {
            0 => Ok(BodyFormat::Rkyv),
            1 => Ok(BodyFormat::KafkaV2),
            other => Err(BatchError::UnsupportedBodyFormat(other)),
        }
    }
}

/// Compression codec of a batch body (Kafka's numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Compression {
    /// Uncompressed body.
    None = 0,
    /// gzip (reserved for Kafka compatibility).
    Gzip = 1,
    /// snappy (reserved for Kafka compatibility).
    Snappy = 2,
    /// LZ4 frame.
    Lz4 = 3,
    /// Zstandard.
    Zstd = 4,
}

impl Compression {
    fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::None),
            1 => Some(Self::Gzip),
            2 => Some(Self::Snappy),
            3 => Some(Self::Lz4),
            4 => Some(Self::Zstd),
            _ => None,
        }
    }
}

/// Which clock the batch timestamps come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    /// Set by the producer when the record was created.
    CreateTime,
    /// Set by the broker when the batch was appended.
    LogAppendTime,
}

/// How the body after the header is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BodyFormat {
    /// An rkyv archive of `Vec<Record>`.
    Rkyv = 0,
    /// Kafka RecordBatch v2 records, stored verbatim by the Kafka listener (reserved).
    KafkaV2 = 1,
}
