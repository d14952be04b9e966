//! The sparse offset and time index of one segment.
//!
//! One entry every `index_interval_bytes` of log: `(relative offset, position,
//! max timestamp before position)`. A read by offset starts at the last entry at or below
//! the offset; a read by time starts at the last entry whose preceding batches are all
//! older than the time asked for. Both then scan forward over a few KiB at most.
//!
//! In memory the index is a plain vector. It is written to disk as two files when its
//! segment is sealed or the log closes cleanly, and trusted on open only if its CRC and
//! the segment size it records still match; otherwise it is rebuilt by scanning the
//! segment (it is derived data, never the source of truth).
//!
//! File format (both files, little-endian): a 48-byte header — magic (`FLIX` for
//! `.index`, `FLTX` for `.timeindex`), version `u16` = 1, entry size `u16`, entry count
//! `u32`, CRC-32 `u32` of everything after the CRC field, segment logical size `u64`, the
//! segment's next offset `u64`, its max timestamp `i64`, 8 reserved bytes — then the
//! entries: `.index` holds `(relative_offset u32, position u32)`, `.timeindex` holds
//! `(timestamp i64, relative_offset u32, position u32)`.

const HEADER_BYTES: usize = 48;
const VERSION: u16 = 1;
const OFFSET_MAGIC: [u8; 4] = *b"FLIX";
const TIME_MAGIC: [u8; 4] = *b"FLTX";
const OFFSET_ENTRY_BYTES: usize = 8;
const TIME_ENTRY_BYTES: usize = 16;

/// One sparse index point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    /// Offset of the batch at `position`, minus the segment's base offset.
    pub relative_offset: u32,
    /// Byte position of a batch start in the segment.
    pub position: u32,
    /// Largest timestamp of all batches before `position` (`i64::MIN` if none).
    pub max_timestamp_before: i64,
}

/// What the index files record about their segment besides the entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentSummary {
    pub size_bytes: u64,
    pub next_offset: u64,
    pub max_timestamp: i64,
}

/// The in-memory sparse index of one segment.
#[derive(Debug, Default, Clone)]
pub(crate) struct SegmentIndex {
    entries: Vec<IndexEntry>,
    bytes_since_entry: u64,
    max_timestamp: i64,
}

impl SegmentIndex {
    pub(crate) fn new() -> Self {
        Self {
            entries: Vec::new(),
            bytes_since_entry: 0,
            max_timestamp: i64::MIN,
        }
    }

    /// Records a batch appended at `position`.
    pub(crate) fn on_append(
        &mut self,
        relative_offset: u32,
        position: u64,
        padded_length: u64,
        max_timestamp: i64,
        interval_bytes: u64,
    ) {
        if position > 0 && self.bytes_since_entry >= interval_bytes {
            let position = u32::try_from(position).expect("segment positions fit u32");
            debug_assert!(self
                .entries
                .last()
                .is_none_or(|last| last.position < position));
            self.entries.push(IndexEntry {
                relative_offset,
                position,
                max_timestamp_before: self.max_timestamp,
            });
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += padded_length;
        self.max_timestamp = self.max_timestamp.max(max_timestamp);
    }

    /// The last entry at or below `relative_offset`.
    pub(crate) fn entry_for_offset(&self, relative_offset: u32) -> Option<IndexEntry> {
        let after = self
            .entries
            .partition_point(|entry| entry.relative_offset <= relative_offset);
        after.checked_sub(1).map(|index| self.entries[index])
    }

    /// Position to start scanning from for `relative_offset`.
    pub(crate) fn position_for_offset(&self, relative_offset: u32) -> u64 {
        self.entry_for_offset(relative_offset)
            .map_or(0, |entry| u64::from(entry.position))
    }

    /// Position to start scanning from for the first batch with a timestamp `>= timestamp`.
    pub(crate) fn position_for_timestamp(&self, timestamp: i64) -> u64 {
        let after = self
            .entries
            .partition_point(|entry| entry.max_timestamp_before < timestamp);
        after
            .checked_sub(1)
            .map_or(0, |index| u64::from(self.entries[index].position))
    }

    /// Forgets entries at or beyond `position` (after a truncation), leaving the index as if
    /// only the batches before it had been appended, except that `max_timestamp` must be
    /// supplied by the caller, who knows the remaining batches.
    pub(crate) fn truncate_to(&mut self, position: u64, max_timestamp: i64, last_entry_bytes: u64) {
        self.entries
            .retain(|entry| u64::from(entry.position) < position);
        self.max_timestamp = max_timestamp;
        self.bytes_since_entry = last_entry_bytes;
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Encodes the `.index` and `.timeindex` files.
    pub(crate) fn encode(&self, summary: SegmentSummary) -> (Vec<u8>, Vec<u8>) {
        let mut offsets = header(
            OFFSET_MAGIC,
            OFFSET_ENTRY_BYTES,
            self.entries.len(),
            summary,
        );
        let mut times = header(TIME_MAGIC, TIME_ENTRY_BYTES, self.entries.len(), summary);
        for entry in &self.entries {
            offsets.extend_from_slice(&entry.relative_offset.to_le_bytes());
            offsets.extend_from_slice(&entry.position.to_le_bytes());
            times.extend_from_slice(&entry.max_timestamp_before.to_le_bytes());
            times.extend_from_slice(&entry.relative_offset.to_le_bytes());
            times.extend_from_slice(&entry.position.to_le_bytes());
        }
        seal_crc(&mut offsets);
        seal_crc(&mut times);
        (offsets, times)
    }

    /// Decodes and cross-checks both files; `Err` says why they cannot be trusted.
    pub(crate) fn decode(
        offsets: &[u8],
        times: &[u8],
    ) -> Result<(Self, SegmentSummary), &'static str> {
        let (offset_count, summary) = check_header(offsets, OFFSET_MAGIC, OFFSET_ENTRY_BYTES)?;
        let (time_count, time_summary) = check_header(times, TIME_MAGIC, TIME_ENTRY_BYTES)?;
        if offset_count != time_count || summary != time_summary {
            return Err("offset and time index disagree");
        }
        let mut entries = Vec::with_capacity(offset_count);
        for index in 0..offset_count {
            let offset_entry = &offsets[HEADER_BYTES + index * OFFSET_ENTRY_BYTES..];
            let time_entry = &times[HEADER_BYTES + index * TIME_ENTRY_BYTES..];
            let entry = IndexEntry {
                relative_offset: read_u32(offset_entry, 0),
                position: read_u32(offset_entry, 4),
                max_timestamp_before: read_u64(time_entry, 0) as i64,
            };
            if read_u32(time_entry, 8) != entry.relative_offset
                || read_u32(time_entry, 12) != entry.position
            {
                return Err("offset and time index entries disagree");
            }
            if let Some(previous) = entries.last() {
                let previous: &IndexEntry = previous;
                if entry.position <= previous.position
                    || entry.relative_offset <= previous.relative_offset
                    || entry.max_timestamp_before < previous.max_timestamp_before
                {
                    return Err("index entries are not increasing");
                }
            }
            if u64::from(entry.position) >= summary.size_bytes {
                return Err("index entry beyond the segment end");
            }
            entries.push(entry);
        }
        let index = Self {
            bytes_since_entry: summary.size_bytes
                - entries
                    .last()
                    .map_or(0, |entry: &IndexEntry| u64::from(entry.position)),
            max_timestamp: summary.max_timestamp,
            entries,
        };
        Ok((index, summary))
    }
}

fn header(magic: [u8; 4], entry_bytes: usize, count: usize, summary: SegmentSummary) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_BYTES + entry_bytes * count);
    bytes.extend_from_slice(&magic);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&(entry_bytes as u16).to_le_bytes());
    bytes.extend_from_slice(&(count as u32).to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    bytes.extend_from_slice(&summary.size_bytes.to_le_bytes());
    bytes.extend_from_slice(&summary.next_offset.to_le_bytes());
    bytes.extend_from_slice(&summary.max_timestamp.to_le_bytes());
    bytes.extend_from_slice(&[0u8; 8]);
    debug_assert_eq!(bytes.len(), HEADER_BYTES);
    bytes
}

fn seal_crc(bytes: &mut [u8]) {
    let crc = crc32fast::hash(&bytes[16..]);
    bytes[12..16].copy_from_slice(&crc.to_le_bytes());
}

fn check_header(
    bytes: &[u8],
    magic: [u8; 4],
    entry_bytes: usize,
) -> Result<(usize, SegmentSummary), &'static str> {
    if bytes.len() < HEADER_BYTES {
        return Err("index file is shorter than its header");
    }
    if bytes[0..4] != magic {
        return Err("index file has the wrong magic");
    }
    if u16::from_le_bytes([bytes[4], bytes[5]]) != VERSION
        || usize::from(u16::from_le_bytes([bytes[6], bytes[7]])) != entry_bytes
    {
        return Err("index file has an unknown version or entry size");
    }
    let count = read_u32(bytes, 8) as usize;
    if bytes.len() != HEADER_BYTES + count * entry_bytes {
        return Err("index file length disagrees with its entry count");
    }
    if crc32fast::hash(&bytes[16..]) != read_u32(bytes, 12) {
        return Err("index file CRC mismatch");
    }
    let summary = SegmentSummary {
        size_bytes: read_u64(bytes, 16),
        next_offset: read_u64(bytes, 24),
        max_timestamp: read_u64(bytes, 32) as i64,
    };
    Ok((count, summary))
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SegmentIndex {
        let mut index = SegmentIndex::new();
        for batch in 0..100u64 {
            index.on_append(
                batch as u32 * 10,
                batch * 1024,
                1024,
                1_000 + batch as i64,
                4096,
            );
        }
        index
    }

    #[test]
    fn lookups_land_at_or_before_the_target() {
        let index = sample();
        assert_eq!(index.len(), 24);
        assert_eq!(index.position_for_offset(0), 0);
        assert_eq!(index.position_for_offset(39), 0);
        assert_eq!(index.position_for_offset(40), 4 * 1024);
        assert_eq!(index.position_for_offset(995), 96 * 1024);
        // Batch 50 has timestamp 1050; every batch before position 48 KiB is older.
        assert_eq!(index.position_for_timestamp(1_050), 48 * 1024);
        assert_eq!(index.position_for_timestamp(0), 0);
    }

    #[test]
    fn encode_decode_round_trips_and_detects_damage() {
        let index = sample();
        let summary = SegmentSummary {
            size_bytes: 100 * 1024,
            next_offset: 1_000,
            max_timestamp: 1_099,
        };
        let (offsets, times) = index.encode(summary);
        let (decoded, decoded_summary) = SegmentIndex::decode(&offsets, &times).unwrap();
        assert_eq!(decoded.entries, index.entries);
        assert_eq!(decoded_summary, summary);
        for byte in 0..offsets.len() {
            let mut damaged = offsets.clone();
            damaged[byte] ^= 0x04;
            assert!(
                SegmentIndex::decode(&damaged, &times).is_err(),
                "byte {byte}"
            );
        }
        assert!(SegmentIndex::decode(&offsets[..offsets.len() - 8], &times).is_err());
        assert!(SegmentIndex::decode(&offsets, &offsets).is_err());
    }
}
