//! Idempotent-producer state of one partition: for each producer id, its epoch and the
//! last [`BATCHES_REMEMBERED`] batches it appended (sequence range and offsets).
//!
//! A batch with `producer_id >= 0` is checked before it is appended:
//! - a retry of a remembered batch (same epoch, same sequence range) is a duplicate: it is
//!   not appended and the producer gets the offsets it got the first time;
//! - otherwise its `base_sequence` must follow the producer's last one (sequences wrap
//!   from `i32::MAX` to 0), or be 0 for a new producer or a new epoch; anything else is
//!   out of order (a gap, or a sequence older than what is remembered);
//! - an epoch older than the producer's current one is fenced.
//!
//! The state is rebuilt on open from a snapshot plus the batches after it: snapshots are
//! written at each segment roll and at clean close as `<offset>.producers` (the state
//! after every batch below `offset`), the newest two are kept, and recovery loads the
//! newest one not past the log end (a crash can cut the tail a snapshot already covered)
//! and replays the log from there. Without a usable snapshot the whole log is replayed.
//!
//! Bounded: at most [`PRODUCERS_MAX`] producers per partition; beyond that the one that
//! wrote least recently is forgotten (its next batch then needs a new producer id).
//!
//! Snapshot format (little-endian): magic `FLPS`, version `u16` = 1, 2 reserved bytes,
//! CRC-32 `u32` of everything after it; covered offset `u64`, producer count `u32`,
//! 4 reserved bytes; per producer: id `i64`, last offset `u64`, epoch `i16`, batch count
//! `u8`, 5 reserved bytes, then per batch: first sequence `i32`, last sequence `i32`,
//! base offset `u64`, last offset `u64`.

use std::collections::{HashMap, VecDeque};

use flumen_protocol::record::BatchHeader;

/// Batches remembered per producer for duplicate detection (Kafka's
/// `max.in.flight.requests.per.connection` limit for idempotence).
pub const BATCHES_REMEMBERED: usize = 5;

/// Producers remembered per partition.
pub const PRODUCERS_MAX: usize = 10_000;

const MAGIC: [u8; 4] = *b"FLPS";
const VERSION: u16 = 1;
const FIXED_BYTES: usize = 28;
const PRODUCER_BYTES: usize = 24;
const BATCH_BYTES: usize = 24;

/// One appended batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchMeta {
    first_sequence: i32,
    last_sequence: i32,
    base_offset: u64,
    last_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<BatchMeta>,
    last_offset: u64,
}

/// What to do with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Append it (and then [`ProducerStates::record`] it).
    Append,
    /// A retry of a batch already appended at these offsets: do not append it again.
    Duplicate {
        /// Offset of its first record.
        base_offset: u64,
        /// Offset of its last record.
        last_offset: u64,
    },
}

/// Why an idempotent batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    /// The sequence does not follow the producer's last batch.
    #[error("producer {producer_id}: expected sequence {expected}, got {got}")]
    OutOfOrder {
        /// The producer.
        producer_id: i64,
        /// The sequence the partition expected.
        expected: i32,
        /// The batch's sequence.
        got: i32,
    },
    /// A newer epoch of this producer id has written here.
    #[error("producer {producer_id}: epoch {epoch} is fenced by epoch {current}")]
    Fenced {
        /// The producer.
        producer_id: i64,
        /// The batch's epoch.
        epoch: i16,
        /// The partition's current epoch for it.
        current: i16,
    },
    /// No state for this producer and the batch does not start at sequence 0.
    #[error(
        "producer {producer_id} is unknown here and its batch starts at sequence {sequence}, not 0"
    )]
    UnknownProducer {
        /// The producer.
        producer_id: i64,
        /// The batch's sequence.
        sequence: i32,
    },
}

/// The sequence after `sequence`, wrapping like Kafka's.
fn next_sequence(sequence: i32) -> i32 {
    if sequence == i32::MAX {
        0
    } else {
        sequence + 1
    }
}

/// The last sequence of a batch: `base + count - 1`, wrapping at `i32::MAX`.
fn last_sequence(header: &BatchHeader) -> i32 {
    let span = i64::from(header.record_count.max(1)) - 1;
    ((i64::from(header.base_sequence) + span) % (i64::from(i32::MAX) + 1)) as i32
}

/// The producer state of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
}

impl ProducerStates {
    /// Number of producers remembered.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// Whether no producer is remembered.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Decides what to do with a batch before it is appended.
    pub fn check(&self, header: &BatchHeader) -> Result<SequenceCheck, SequenceError> {
        let producer_id = header.producer_id;
        if producer_id < 0 {
            return Ok(SequenceCheck::Append);
        }
        let (epoch, sequence) = (header.producer_epoch, header.base_sequence);
        let Some(entry) = self.producers.get(&producer_id) else {
            return if sequence == 0 {
                Ok(SequenceCheck::Append)
            } else {
                Err(SequenceError::UnknownProducer {
                    producer_id,
                    sequence,
                })
            };
        };
        if epoch < entry.epoch {
            return Err(SequenceError::Fenced {
                producer_id,
                epoch,
                current: entry.epoch,
            });
        }
        let expected = match entry.batches.back() {
            Some(last) if epoch == entry.epoch => next_sequence(last.last_sequence),
            _ => 0,
        };
        if epoch == entry.epoch {
            let last = last_sequence(header);
            if let Some(batch) = entry
                .batches
                .iter()
                .find(|batch| batch.first_sequence == sequence && batch.last_sequence == last)
            {
                return Ok(SequenceCheck::Duplicate {
                    base_offset: batch.base_offset,
                    last_offset: batch.last_offset,
                });
            }
        }
        if sequence == expected && sequence >= 0 {
            Ok(SequenceCheck::Append)
        } else {
            Err(SequenceError::OutOfOrder {
                producer_id,
                expected,
                got: sequence,
            })
        }
    }

    /// Records an appended batch (also used when replaying the log, unchecked).
    pub fn record(&mut self, header: &BatchHeader, base_offset: u64) {
        if header.producer_id < 0 {
            return;
        }
        let last_offset = base_offset + u64::from(header.last_offset_delta);
        if !self.producers.contains_key(&header.producer_id)
            && self.producers.len() >= PRODUCERS_MAX
        {
            self.evict_oldest();
        }
        let entry = self
            .producers
            .entry(header.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: header.producer_epoch,
                batches: VecDeque::new(),
                last_offset,
            });
        if header.producer_epoch != entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == BATCHES_REMEMBERED {
            entry.batches.pop_front();
        }
        entry.batches.push_back(BatchMeta {
            first_sequence: header.base_sequence,
            last_sequence: last_sequence(header),
            base_offset,
            last_offset,
        });
        entry.last_offset = last_offset;
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .producers
            .iter()
            .min_by_key(|(_, entry)| entry.last_offset)
            .map(|(id, _)| *id);
        if let Some(id) = oldest {
            self.producers.remove(&id);
        }
    }

    /// The snapshot file contents for the state after every batch below `covered`.
    pub fn encode(&self, covered: u64) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(
            FIXED_BYTES
                + self.producers.len() * (PRODUCER_BYTES + BATCHES_REMEMBERED * BATCH_BYTES),
        );
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&[0; 2]);
        bytes.extend_from_slice(&[0; 4]);
        bytes.extend_from_slice(&covered.to_le_bytes());
        bytes.extend_from_slice(&(self.producers.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        let mut ids: Vec<&i64> = self.producers.keys().collect();
        ids.sort_unstable();
        for id in ids {
            let entry = &self.producers[id];
            bytes.extend_from_slice(&id.to_le_bytes());
            bytes.extend_from_slice(&entry.last_offset.to_le_bytes());
            bytes.extend_from_slice(&entry.epoch.to_le_bytes());
            bytes.push(entry.batches.len() as u8);
            bytes.extend_from_slice(&[0; 5]);
            for batch in &entry.batches {
                bytes.extend_from_slice(&batch.first_sequence.to_le_bytes());
                bytes.extend_from_slice(&batch.last_sequence.to_le_bytes());
                bytes.extend_from_slice(&batch.base_offset.to_le_bytes());
                bytes.extend_from_slice(&batch.last_offset.to_le_bytes());
            }
        }
        let crc = crc32fast::hash(&bytes[12..]);
        bytes[8..12].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Decodes a snapshot: the state and the offset it covers up to.
    pub fn decode(bytes: &[u8]) -> Result<(Self, u64), &'static str> {
        if bytes.len() < FIXED_BYTES || bytes[..4] != MAGIC {
            return Err("not a producer snapshot");
        }
        if u16::from_le_bytes([bytes[4], bytes[5]]) != VERSION || bytes[6..8] != [0, 0] {
            return Err("unknown snapshot version");
        }
        if crc32fast::hash(&bytes[12..]) != u32::from_le_bytes(take(bytes, 8)) {
            return Err("snapshot CRC mismatch");
        }
        let covered = u64::from_le_bytes(take(bytes, 12));
        let count = u32::from_le_bytes(take(bytes, 20)) as usize;
        let mut states = Self::default();
        let mut at = FIXED_BYTES;
        for _ in 0..count {
            let fixed = bytes
                .get(at..at + PRODUCER_BYTES)
                .ok_or("snapshot truncated")?;
            let id = i64::from_le_bytes(take(fixed, 0));
            let last_offset = u64::from_le_bytes(take(fixed, 8));
            let epoch = i16::from_le_bytes(take(fixed, 16));
            let batch_count = fixed[18] as usize;
            if batch_count > BATCHES_REMEMBERED {
                return Err("too many batches for a producer");
            }
            at += PRODUCER_BYTES;
            let mut batches = VecDeque::with_capacity(batch_count);
            for _ in 0..batch_count {
                let batch = bytes
                    .get(at..at + BATCH_BYTES)
                    .ok_or("snapshot truncated")?;
                batches.push_back(BatchMeta {
                    first_sequence: i32::from_le_bytes(take(batch, 0)),
                    last_sequence: i32::from_le_bytes(take(batch, 4)),
                    base_offset: u64::from_le_bytes(take(batch, 8)),
                    last_offset: u64::from_le_bytes(take(batch, 16)),
                });
                at += BATCH_BYTES;
            }
            let entry = ProducerEntry {
                epoch,
                batches,
                last_offset,
            };
            states.producers.insert(id, entry);
        }
        if at != bytes.len() {
            return Err("trailing bytes after the snapshot");
        }
        Ok((states, covered))
    }
}

fn take<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    bytes[at..at + N].try_into().expect("length checked")
}

/// The snapshot file name for `covered`.
pub fn snapshot_name(covered: u64) -> String {
    format!("{covered:020}.producers")
}

/// The offset a snapshot file name covers, if it is one.
pub fn parse_snapshot_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".producers")?;
    (stem.len() == 20).then(|| stem.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flumen_protocol::record::BatchBuilder;

    fn header(producer_id: i64, epoch: i16, sequence: i32, records: usize) -> BatchHeader {
        let mut builder = BatchBuilder::new(0);
        for _ in 0..records {
            builder.push(0, None, Some(b"v"), &[]);
        }
        builder.producer(producer_id, epoch, sequence);
        let batch = builder.build().unwrap();
        BatchHeader::decode(batch.as_bytes()).unwrap()
    }

    #[test]
    fn duplicates_gaps_and_fencing_are_told_apart() {
        let mut states = ProducerStates::default();
        let first = header(7, 0, 0, 3);
        assert_eq!(states.check(&first), Ok(SequenceCheck::Append));
        states.record(&first, 100);
        assert_eq!(
            states.check(&first),
            Ok(SequenceCheck::Duplicate {
                base_offset: 100,
                last_offset: 102
            })
        );
        let next = header(7, 0, 3, 2);
        assert_eq!(states.check(&next), Ok(SequenceCheck::Append));
        states.record(&next, 103);
        assert_eq!(
            states.check(&header(7, 0, 9, 1)),
            Err(SequenceError::OutOfOrder {
                producer_id: 7,
                expected: 5,
                got: 9
            })
        );
        assert!(matches!(
            states.check(&header(8, 0, 4, 1)),
            Err(SequenceError::UnknownProducer { .. })
        ));
        // A new epoch starts over at 0; the old one is fenced from then on.
        let bumped = header(7, 1, 0, 1);
        assert_eq!(states.check(&bumped), Ok(SequenceCheck::Append));
        states.record(&bumped, 105);
        assert!(matches!(
            states.check(&header(7, 0, 5, 1)),
            Err(SequenceError::Fenced { current: 1, .. })
        ));
        // Non-idempotent batches are not checked.
        assert_eq!(
            states.check(&header(-1, -1, -1, 1)),
            Ok(SequenceCheck::Append)
        );
    }

    #[test]
    fn sequences_wrap_and_only_recent_batches_are_remembered() {
        let mut states = ProducerStates::default();
        let near_end = header(1, 0, 0, 1);
        states.record(&near_end, 0);
        let mut wrapping = header(1, 0, i32::MAX - 1, 3);
        wrapping.base_sequence = i32::MAX - 1;
        assert_eq!(last_sequence(&wrapping), 0);
        assert_eq!(next_sequence(i32::MAX), 0);
        for sequence in 1..=(BATCHES_REMEMBERED as i32 + 1) {
            let batch = header(1, 0, sequence, 1);
            assert_eq!(states.check(&batch), Ok(SequenceCheck::Append));
            states.record(&batch, sequence as u64);
        }
        // The first batch is forgotten: its retry is now out of order, not a duplicate.
        assert!(matches!(
            states.check(&near_end),
            Err(SequenceError::OutOfOrder { .. })
        ));
    }

    #[test]
    fn snapshots_round_trip_and_reject_damage() {
        let mut states = ProducerStates::default();
        for id in 0..4 {
            for sequence in 0..7 {
                states.record(
                    &header(id, 2, sequence * 2, 2),
                    (id * 100) as u64 + sequence as u64,
                );
            }
        }
        let bytes = states.encode(512);
        let (decoded, covered) = ProducerStates::decode(&bytes).unwrap();
        assert_eq!((decoded, covered), (states.clone(), 512));
        for index in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[index] ^= 0x10;
            assert!(ProducerStates::decode(&damaged).is_err(), "byte {index}");
        }
        assert!(ProducerStates::decode(&bytes[..bytes.len() - 8]).is_err());
        assert_eq!(parse_snapshot_name(&snapshot_name(512)), Some(512));
        assert_eq!(parse_snapshot_name("00000000000000000512.log"), None);
    }

    #[test]
    fn the_number_of_producers_is_bounded() {
        let mut states = ProducerStates::default();
        for id in 0..(PRODUCERS_MAX as i64 + 10) {
            states.record(&header(id, 0, 0, 1), id as u64);
        }
        assert_eq!(states.len(), PRODUCERS_MAX);
        assert!(
            matches!(
                states.check(&header(0, 0, 1, 1)),
                Err(SequenceError::UnknownProducer { .. })
            ),
            "the least recent producer was forgotten"
        );
    }
}
