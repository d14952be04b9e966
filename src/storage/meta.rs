//! `partition.meta`: the recovery checkpoint and the leader-epoch history of one log.
//!
//! The checkpoint names a position in a segment up to which the log was durable, indexed
//! and checked when it was written (at every segment roll and at clean close). Segments
//! before the checkpoint segment are trusted on open; the checkpoint segment is scanned
//! from the checkpoint position and later segments from their start.
//!
//! The epoch history maps each leader epoch to the first offset written in it (Kafka's
//! leader-epoch checkpoint, KIP-101/279), so a follower can find where its log diverges
//! from a new leader's.
//!
//! Format (little-endian): magic `FLPM`, version `u16` = 1, 2 reserved bytes, CRC-32 `u32`
//! of everything after it; checkpoint segment base `u64`, checkpoint position `u64`,
//! checkpoint next offset `u64`, checkpoint max timestamp `i64`; epoch count `u32`,
//! 4 reserved bytes; then per epoch `(epoch u32, 4 reserved bytes, start_offset u64)`.
//! The file is replaced atomically (write, sync, rename, sync directory).

const MAGIC: [u8; 4] = *b"FLPM";
const VERSION: u16 = 1;
const FIXED_BYTES: usize = 52;
const EPOCH_ENTRY_BYTES: usize = 16;

/// A position in the log known to be durable and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub segment_base: u64,
    pub position: u64,
    pub next_offset: u64,
    pub max_timestamp: i64,
}

/// One leader epoch and the first offset written in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    /// The leader epoch.
    pub epoch: u32,
    /// The first offset appended under it.
    pub start_offset: u64,
}

/// The decoded contents of `partition.meta`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartitionMeta {
    pub checkpoint: Checkpoint,
    pub epochs: Vec<EpochEntry>,
}

impl PartitionMeta {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(FIXED_BYTES + self.epochs.len() * EPOCH_ENTRY_BYTES);
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&[0; 2]);
        bytes.extend_from_slice(&[0; 4]);
        bytes.extend_from_slice(&self.checkpoint.segment_base.to_le_bytes());
        bytes.extend_from_slice(&self.checkpoint.position.to_le_bytes());
        bytes.extend_from_slice(&self.checkpoint.next_offset.to_le_bytes());
        bytes.extend_from_slice(&self.checkpoint.max_timestamp.to_le_bytes());
        bytes.extend_from_slice(&(self.epochs.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        debug_assert_eq!(bytes.len(), FIXED_BYTES);
        for entry in &self.epochs {
            bytes.extend_from_slice(&entry.epoch.to_le_bytes());
            bytes.extend_from_slice(&[0; 4]);
            bytes.extend_from_slice(&entry.start_offset.to_le_bytes());
        }
        let crc = crc32fast::hash(&bytes[12..]);
        bytes[8..12].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, &'static str> {
        if bytes.len() < FIXED_BYTES || bytes[0..4] != MAGIC {
            return Err("not a partition.meta file");
        }
        if u16::from_le_bytes([bytes[4], bytes[5]]) != VERSION {
            return Err("unknown partition.meta version");
        }
        if bytes[6..8] != [0, 0] {
            return Err("partition.meta reserved bytes are not zero");
        }
        if crc32fast::hash(&bytes[12..]) != read_u32(bytes, 8) {
            return Err("partition.meta CRC mismatch");
        }
        let count = read_u32(bytes, 44) as usize;
        if bytes.len() != FIXED_BYTES + count * EPOCH_ENTRY_BYTES {
            return Err("partition.meta length disagrees with its epoch count");
        }
        let epochs: Vec<EpochEntry> = (0..count)
            .map(|index| {
                let entry = &bytes[FIXED_BYTES + index * EPOCH_ENTRY_BYTES..];
                EpochEntry {
                    epoch: read_u32(entry, 0),
                    start_offset: read_u64(entry, 8),
                }
            })
            .collect();
        if epochs.windows(2).any(|pair| {
            pair[1].epoch <= pair[0].epoch || pair[1].start_offset < pair[0].start_offset
        }) {
            return Err("partition.meta epochs are not increasing");
        }
        Ok(Self {
            checkpoint: Checkpoint {
                segment_base: read_u64(bytes, 12),
                position: read_u64(bytes, 20),
                next_offset: read_u64(bytes, 28),
                max_timestamp: read_u64(bytes, 36) as i64,
            },
            epochs,
        })
    }
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

    #[test]
    fn round_trips_and_rejects_damage() {
        let meta = PartitionMeta {
            checkpoint: Checkpoint {
                segment_base: 100,
                position: 4096,
                next_offset: 150,
                max_timestamp: 77,
            },
            epochs: vec![
                EpochEntry {
                    epoch: 1,
                    start_offset: 0,
                },
                EpochEntry {
                    epoch: 3,
                    start_offset: 120,
                },
            ],
        };
        let bytes = meta.encode();
        assert_eq!(PartitionMeta::decode(&bytes).unwrap(), meta);
        for byte in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[byte] ^= 0x20;
            assert!(PartitionMeta::decode(&damaged).is_err(), "byte {byte}");
        }
    }
}
