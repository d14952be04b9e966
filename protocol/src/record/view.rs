//! Validating and reading a batch without copying.

use super::header::{
    BatchHeader, BodyFormat, Compression, BATCH_ALIGNMENT_BYTES, BATCH_HEADER_BYTES,
    CRC_COVERED_FROM,
};
use super::BatchError;
use rkyv::vec::ArchivedVec;

use super::ArchivedRecord;

/// A batch whose header, CRC and (for full validation) body were checked.
///
/// The view borrows the batch bytes; records are read in place.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    header: BatchHeader,
    bytes: &'a [u8],
    records: Option<&'a ArchivedVec<ArchivedRecord>>,
}

impl<'a> BatchView<'a> {
    /// Fully validates one batch: header, CRC, padding, body format and the rkyv archive,
    /// plus the agreement of records with the header.
    ///
    /// `bytes` must hold exactly one padded batch. If it is not 16-byte aligned, the body
    /// is copied once into an aligned scratch buffer to be checked, and the returned view
    /// gives header access only ([`BatchView::records`] then yields nothing); callers on
    /// hot paths keep their buffers aligned.
    pub fn validate(bytes: &'a [u8]) -> Result<Self, BatchError> {
        let mut view = Self::validate_header_and_crc(bytes)?;
        let body = &bytes[BATCH_HEADER_BYTES..view.header.batch_length as usize];
        if (bytes.as_ptr() as usize).is_multiple_of(BATCH_ALIGNMENT_BYTES) {
            let records = check_body(body, &view.header)?;
            view.records = Some(records);
        } else {
            let mut scratch = rkyv::util::AlignedVec::<BATCH_ALIGNMENT_BYTES>::new();
            scratch.extend_from_slice(body);
            check_body(&scratch, &view.header)?;
        }
        Ok(view)
    }

    /// Checks the header and the body archive again, but not the CRC: for bytes that
    /// passed [`BatchView::validate`] and have not changed since (a consumer reading in
    /// place the batches it validated when they arrived). The archive check keeps every
    /// read checked; a second CRC pass over every byte would find nothing new.
    pub fn revalidate_archive(bytes: &'a [u8]) -> Result<Self, BatchError> {
        let header = BatchHeader::decode(bytes)?;
        let length = header.batch_length as usize;
        if bytes.len() != header.padded_length() {
            return Err(BatchError::Truncated {
                needed_bytes: header.padded_length(),
                available_bytes: bytes.len(),
            });
        }
        if !(bytes.as_ptr() as usize).is_multiple_of(BATCH_ALIGNMENT_BYTES) {
            // Nothing to read in place: the full check, copy and all.
            return Self::validate(bytes);
        }
        let records = check_body(&bytes[BATCH_HEADER_BYTES..length], &header)?;
        Ok(Self {
            header,
            bytes,
            records: Some(records),
        })
    }

    /// Checks the header, the CRC and the zero padding, but not the body archive: for
    /// bytes that passed [`BatchView::validate`] before and only need proof that they were
    /// not damaged since (a log read back from disk).
    pub fn validate_header_and_crc(bytes: &'a [u8]) -> Result<Self, BatchError> {
        let header = BatchHeader::decode(bytes)?;
        let length = header.batch_length as usize;
        let padded = header.padded_length();
        if bytes.len() < padded {
            return Err(BatchError::Truncated {
                needed_bytes: padded,
                available_bytes: bytes.len(),
            });
        }
        if bytes.len() > padded {
            return Err(BatchError::ImpossibleHeader(
                "bytes follow the batch's padding",
            ));
        }
        let computed = crc32fast::hash(&bytes[CRC_COVERED_FROM..length]);
        if computed != header.crc {
            return Err(BatchError::CrcMismatch {
                stored: header.crc,
                computed,
            });
        }
        if bytes[length..padded].iter().any(|&byte| byte != 0) {
            return Err(BatchError::ImpossibleHeader("padding is not zero"));
        }
        header.attributes.body_format()?;
        header.attributes.compression()?;
        Ok(Self {
            header,
            bytes,
            records: None,
        })
    }

    /// The decoded header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The whole batch, padding included.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The records, in offset order, read in place.
    ///
    /// Yields nothing for a view made by [`BatchView::validate_header_and_crc`] or from
    /// unaligned bytes; use [`BatchView::validate`] on aligned bytes to read records.
    pub fn records(&self) -> impl ExactSizeIterator<Item = RecordView<'a>> + '_ {
        let records: &'a [ArchivedRecord] = match self.records {
            Some(records) => records.as_slice(),
            None => &[],
        };
        let header = self.header;
        records.iter().map(move |archived| RecordView {
            archived,
            base_offset: header.base_offset,
            first_timestamp: header.first_timestamp,
        })
    }
}

/// Checks the body archive of a batch whose header and CRC are already checked.
fn check_body<'b>(
    body: &'b [u8],
    header: &BatchHeader,
) -> Result<&'b ArchivedVec<ArchivedRecord>, BatchError> {
    match header.attributes.body_format()? {
        BodyFormat::Rkyv => {}
        BodyFormat::KafkaV2 => return Err(BatchError::UnsupportedBodyFormat(1)),
    }
    match header.attributes.compression()? {
        Compression::None => {}
        other => return Err(BatchError::UnsupportedCompression(other as u8)),
    }
    let records = rkyv::access::<ArchivedVec<ArchivedRecord>, rkyv::rancor::Error>(body)
        .map_err(|error| BatchError::InvalidArchive(error.to_string()))?;
    if records.len() != header.record_count as usize {
        return Err(BatchError::RecordsDisagree(
            "record count differs from the header",
        ));
    }
    let mut max_delta = i64::MIN;
    for (index, record) in records.iter().enumerate() {
        if record.offset_delta.to_native() as usize != index {
            return Err(BatchError::RecordsDisagree(
                "offset deltas are not 0, 1, 2, ...",
            ));
        }
        max_delta = max_delta.max(record.timestamp_delta.to_native());
    }
    let max_timestamp = header.first_timestamp.checked_add(max_delta);
    if max_timestamp != Some(header.max_timestamp) {
        return Err(BatchError::RecordsDisagree(
            "max_timestamp differs from the records",
        ));
    }
    Ok(records)
}

/// One record of a validated batch, borrowed from the batch bytes.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    archived: &'a ArchivedRecord,
    base_offset: u64,
    first_timestamp: i64,
}

impl<'a> RecordView<'a> {
    /// The record's offset in its partition.
    pub fn offset(&self) -> u64 {
        self.base_offset + u64::from(self.archived.offset_delta.to_native())
    }

    /// The record's timestamp, milliseconds since the Unix epoch.
    pub fn timestamp_ms(&self) -> i64 {
        self.first_timestamp
            .wrapping_add(self.archived.timestamp_delta.to_native())
    }

    /// The key, if any.
    pub fn key(&self) -> Option<&'a [u8]> {
        self.archived.key.as_ref().map(|key| key.as_slice())
    }

    /// The value, or `None` for a tombstone.
    pub fn value(&self) -> Option<&'a [u8]> {
        self.archived.value.as_ref().map(|value| value.as_slice())
    }

    /// The headers as (name, value) pairs.
    pub fn headers(&self) -> impl ExactSizeIterator<Item = (&'a str, &'a [u8])> {
        self.archived
            .headers
            .iter()
            .map(|header| (header.key.as_str(), header.value.as_slice()))
    }
}
