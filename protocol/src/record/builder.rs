//! Building a batch: the producer side of the format.

use rkyv::rancor::Fallible;
use rkyv::ser::sharing::Share;
use rkyv::util::AlignedVec;
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::with::{ArchiveWith, Map, SerializeWith};
use rkyv::Place;

use super::header::{
    padded_length, Attributes, BatchHeader, BodyFormat, Compression, TimestampType,
    BATCH_ALIGNMENT_BYTES, BATCH_HEADER_BYTES, BATCH_LENGTH_MAX_BYTES, CRC_COVERED_FROM, MAGIC,
};
use super::{ArchivedHeader, ArchivedRecord, BatchError, Header};

/// Collects records and encodes them as one batch.
///
/// Keys and values are copied once, as they are pushed, into the buffer that becomes the
/// batch: an rkyv archive lays out its records' bytes before the array of records, so
/// the body can grow in place. [`BatchBuilder::finish`] then writes the records' array
/// (pointing at those bytes) and the root, the header and the CRC. The archive is
/// exactly the one of a `Vec<Record>`, and a batch reads the same whichever way it was
/// built. Offsets in the result start at 0; the broker assigns the real base offset on
/// append.
///
/// ```
/// use flumen_protocol::record::{BatchBuilder, BatchView};
///
/// let mut builder = BatchBuilder::new(1_700_000_000_000);
/// builder.push(1_700_000_000_000, Some(b"key"), Some(b"hello"), &[("trace", b"abc")]);
/// let batch = builder.build().unwrap();
/// let view = BatchView::validate(batch.as_bytes()).unwrap();
/// let record = view.records().next().unwrap();
/// assert_eq!(record.value(), Some(&b"hello"[..]));
/// ```
#[derive(Debug)]
pub struct BatchBuilder {
    first_timestamp: i64,
    max_timestamp: i64,
    /// The batch so far: a header's room, then every key and value pushed.
    bytes: AlignedVec<BATCH_ALIGNMENT_BYTES>,
    records: Vec<StagedRecord>,
    payload_bytes: usize,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
}

/// An encoded batch: header, body and padding in one 16-byte-aligned buffer.
#[derive(Debug, Clone)]
pub struct BuiltBatch {
    bytes: AlignedVec<BATCH_ALIGNMENT_BYTES>,
}

impl BuiltBatch {
    /// Copies `bytes` into a new 16-byte-aligned buffer, so records can be read in place
    /// from bytes that arrived unaligned. The bytes are not validated.
    pub fn copy_from(bytes: &[u8]) -> Self {
        let mut aligned = AlignedVec::<BATCH_ALIGNMENT_BYTES>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        Self { bytes: aligned }
    }

    /// The batch bytes, padding included (`len` is a multiple of 16).
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// Mutable access, for tests that corrupt batches and for header patching.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        self.bytes.as_mut_slice()
    }

    /// Length in bytes, padding included.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Re-stamps the idempotent-producer fields and recomputes the CRC (a producer that
    /// got a new producer id must resend a built batch under it).
    pub fn set_producer(&mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) {
        let bytes = self.bytes.as_mut_slice();
        let mut header = BatchHeader::decode(bytes).expect("a built batch has a valid header");
        header.producer_id = producer_id;
        header.producer_epoch = producer_epoch;
        header.base_sequence = base_sequence;
        header.encode(bytes);
        header.crc = crc32fast::hash(&bytes[CRC_COVERED_FROM..header.batch_length as usize]);
        header.encode(bytes);
    }

    /// Always false: a batch has at least a header.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Where a key or value already lies in the builder's buffer.
#[derive(Debug, Clone, Copy)]
struct Span {
    position: usize,
    length: usize,
}

/// Archives a [`Span`] as the `ArchivedVec<T>` of the elements already written there:
/// nothing is copied at serialisation, the resolver just points at them.
struct Prewritten<T>(std::marker::PhantomData<T>);

impl<T: rkyv::Portable> ArchiveWith<Span> for Prewritten<T> {
    type Archived = ArchivedVec<T>;
    type Resolver = VecResolver;

    fn resolve_with(span: &Span, resolver: VecResolver, out: Place<ArchivedVec<T>>) {
        ArchivedVec::resolve_from_len(span.length, resolver, out);
    }
}

impl<T: rkyv::Portable, S: Fallible + ?Sized> SerializeWith<Span, S> for Prewritten<T> {
    fn serialize_with(span: &Span, _: &mut S) -> Result<VecResolver, S::Error> {
        Ok(VecResolver::from_pos(span.position))
    }
}

/// A pushed record whose key and value are already in the buffer. It archives as an
/// [`ArchivedRecord`], field for field, so the body is a `Vec<Record>`'s archive.
#[derive(Debug, rkyv::Archive, rkyv::Serialize)]
#[rkyv(as = ArchivedRecord)]
struct StagedRecord {
    offset_delta: u32,
    timestamp_delta: i64,
    #[rkyv(with = Map<Prewritten<u8>>)]
    key: Option<Span>,
    #[rkyv(with = Map<Prewritten<u8>>)]
    value: Option<Span>,
    #[rkyv(with = Prewritten<ArchivedHeader>)]
    headers: Span,
}

impl BatchBuilder {
    /// An empty builder. `first_timestamp_ms` is a default only: the batch's first
    /// timestamp is that of the first record pushed.
    pub fn new(first_timestamp_ms: i64) -> Self {
        Self::with_capacity(first_timestamp_ms, 0, 0)
    }

    /// An empty builder with room for a batch of `bytes` encoded bytes (header
    /// included) and `records` records, so that pushing them and finishing reallocates
    /// nothing: a producer sizes a partition's next batch from its last one, and a
    /// buffer grown by doubling instead is copied about twice over.
    pub fn with_capacity(first_timestamp_ms: i64, bytes: usize, records: usize) -> Self {
        let mut buffer = AlignedVec::with_capacity(bytes.max(BATCH_HEADER_BYTES));
        buffer.extend_from_slice(&[0u8; BATCH_HEADER_BYTES]);
        Self {
            first_timestamp: first_timestamp_ms,
            max_timestamp: first_timestamp_ms,
            bytes: buffer,
            records: Vec::with_capacity(records),
            payload_bytes: 0,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
        }
    }

    /// Sets the idempotent-producer fields.
    pub fn producer(&mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
    }

    /// Adds a record with its timestamp (milliseconds since the Unix epoch).
    ///
    /// # Panics
    ///
    /// If the distance from the first record's timestamp does not fit an `i64`, which
    /// takes timestamps on both sides of the epoch: producers refuse negative ones.
    pub fn push(
        &mut self,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, &[u8])],
    ) {
        let offset_delta = u32::try_from(self.records.len()).expect("record count fits u32");
        if self.records.is_empty() {
            // The header's first timestamp is the first record's, so that the maximum
            // timestamp, taken over the records, is never before it.
            self.first_timestamp = timestamp_ms;
            self.max_timestamp = timestamp_ms;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp_ms);
        self.payload_bytes += key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len);
        // In the archive's order: a record's key, value and headers, then the next's.
        let key = key.map(|key| self.stage(key));
        let value = value.map(|value| self.stage(value));
        let headers = self.stage_headers(headers);
        self.records.push(StagedRecord {
            offset_delta,
            timestamp_delta: timestamp_ms
                .checked_sub(self.first_timestamp)
                .expect("timestamps of one batch within i64 of each other"),
            key,
            value,
            headers,
        });
    }

    /// Writes the headers' archived array (and what it points to) to the end of the
    /// buffer, as rkyv lays out a `Vec<Header>`'s contents.
    fn stage_headers(&mut self, headers: &[(&str, &[u8])]) -> Span {
        if headers.is_empty() {
            // What rkyv writes for an empty slice: nothing, at a position aligned for it.
            let align = std::mem::align_of::<ArchivedHeader>();
            let padding = (align - self.bytes.len() % align) % align;
            self.bytes.extend_from_slice(&[0u8; 16][..padding]);
            return Span {
                position: self.bytes.len(),
                length: 0,
            };
        }
        let owned: Vec<Header> = headers
            .iter()
            .map(|(name, value)| Header {
                key: (*name).to_owned(),
                value: value.to_vec(),
            })
            .collect();
        let bytes = std::mem::take(&mut self.bytes);
        let (position, bytes) = rkyv::util::with_arena(|arena| {
            let mut serializer = rkyv::ser::Serializer::new(bytes, arena.acquire(), Share::new());
            let strategy = rkyv::rancor::Strategy::<_, rkyv::rancor::Error>::wrap(&mut serializer);
            let position = rkyv::SerializeUnsized::serialize_unsized(owned.as_slice(), strategy);
            (position, serializer.into_writer())
        });
        self.bytes = bytes;
        Span {
            // Writing to memory cannot fail but for allocation, which aborts.
            position: position.expect("serialising into memory does not fail"),
            length: owned.len(),
        }
    }

    /// Copies `bytes` to the end of the buffer.
    fn stage(&mut self, bytes: &[u8]) -> Span {
        let position = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        Span {
            position,
            length: bytes.len(),
        }
    }

    /// Number of records pushed so far.
    pub fn record_count(&self) -> usize {
        self.records.len()
    }

    /// Key and value bytes pushed so far: a cheap estimate of the batch size.
    pub fn payload_bytes(&self) -> usize {
        self.payload_bytes
    }

    /// Encodes the batch. Fails if it has no records or would exceed the format limit.
    pub fn build(&self) -> Result<BuiltBatch, BatchError> {
        let mut bytes = AlignedVec::with_capacity(self.bytes.len());
        bytes.extend_from_slice(&self.bytes);
        self.encode(bytes)
    }

    /// Like [`BatchBuilder::build`], without copying: the buffer the records were pushed
    /// into becomes the batch.
    pub fn finish(mut self) -> Result<BuiltBatch, BatchError> {
        let bytes = std::mem::take(&mut self.bytes);
        self.encode(bytes)
    }

    /// Appends the records' array and the root to `bytes` (the header's room and the
    /// pushed keys and values), then writes the header and the CRC.
    fn encode(&self, bytes: AlignedVec<BATCH_ALIGNMENT_BYTES>) -> Result<BuiltBatch, BatchError> {
        if self.records.is_empty() {
            return Err(BatchError::Empty);
        }
        let mut bytes =
            rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(&self.records, bytes)
                .map_err(|error| BatchError::InvalidArchive(error.to_string()))?;
        let batch_length = bytes.len();
        if batch_length > BATCH_LENGTH_MAX_BYTES {
            return Err(BatchError::TooLarge {
                length_bytes: batch_length,
                limit_bytes: BATCH_LENGTH_MAX_BYTES,
            });
        }
        bytes.resize(padded_length(batch_length), 0);
        let record_count = self.records.len() as u32;
        let mut header = BatchHeader {
            base_offset: 0,
            batch_length: batch_length as u32,
            partition_leader_epoch: 0,
            magic: MAGIC,
            reserved: [0; 3],
            crc: 0,
            attributes: Attributes::new(
                Compression::None,
                TimestampType::CreateTime,
                BodyFormat::Rkyv,
            ),
            producer_epoch: self.producer_epoch,
            last_offset_delta: record_count - 1,
            first_timestamp: self.first_timestamp,
            max_timestamp: self.max_timestamp,
            producer_id: self.producer_id,
            base_sequence: self.base_sequence,
            record_count,
        };
        header.encode(bytes.as_mut_slice());
        header.crc = crc32fast::hash(&bytes[CRC_COVERED_FROM..batch_length]);
        header.encode(bytes.as_mut_slice());
        Ok(BuiltBatch { bytes })
    }
}
