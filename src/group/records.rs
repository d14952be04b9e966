//! The records of `__consumer_offsets`: one per committed position, keyed by group, topic
//! and partition, so that a later compaction by key keeps only the latest.
//!
//! Key (little-endian): version `u8` = 1, kind `u8` = 1 (an offset commit), group
//! (`u16` length + UTF-8), topic (`u16` length + UTF-8), partition `u32`.
//! Value: version `u8` = 1, offset `u64`, commit timestamp `i64` (ms), metadata flag `u8`
//! and, if set, metadata (`u16` length + UTF-8). A record without a value (a tombstone)
//! deletes the position.

/// A committed position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The offset the group resumes from.
    pub offset: u64,
    /// Free text stored with it.
    pub metadata: Option<String>,
    /// When it was committed, ms since the epoch.
    pub timestamp_ms: i64,
}

/// What a record of the offsets topic is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetKey {
    /// The group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
}

const VERSION: u8 = 1;
const KIND_OFFSET: u8 = 1;

impl OffsetKey {
    /// The record key.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(10 + self.group.len() + self.topic.len());
        bytes.extend_from_slice(&[VERSION, KIND_OFFSET]);
        put_string(&mut bytes, &self.group);
        put_string(&mut bytes, &self.topic);
        bytes.extend_from_slice(&self.partition.to_le_bytes());
        bytes
    }

    /// Decodes a record key; `None` for keys of other kinds or versions (skipped, so a
    /// newer broker's records do not stop an older one from loading).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut reader = Reader(bytes);
        if reader.take(2)? != [VERSION, KIND_OFFSET] {
            return None;
        }
        let group = reader.string()?;
        let topic = reader.string()?;
        let partition = u32::from_le_bytes(reader.take(4)?.try_into().ok()?);
        reader.0.is_empty().then_some(Self {
            group,
            topic,
            partition,
        })
    }
}

impl Committed {
    /// The record value.
    pub fn encode(&self) -> Vec<u8> {
        let metadata = self.metadata.as_deref().unwrap_or_default();
        let mut bytes = Vec::with_capacity(20 + metadata.len());
        bytes.push(VERSION);
        bytes.extend_from_slice(&self.offset.to_le_bytes());
        bytes.extend_from_slice(&self.timestamp_ms.to_le_bytes());
        match &self.metadata {
            Some(metadata) => {
                bytes.push(1);
                put_string(&mut bytes, metadata);
            }
            None => bytes.push(0),
        }
        bytes
    }

    /// Decodes a record value.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut reader = Reader(bytes);
        if reader.take(1)? != [VERSION] {
            return None;
        }
        let offset = u64::from_le_bytes(reader.take(8)?.try_into().ok()?);
        let timestamp_ms = i64::from_le_bytes(reader.take(8)?.try_into().ok()?);
        let metadata = match reader.take(1)?[0] {
            0 => None,
            _ => Some(reader.string()?),
        };
        reader.0.is_empty().then_some(Self {
            offset,
            metadata,
            timestamp_ms,
        })
    }
}

fn put_string(bytes: &mut Vec<u8>, text: &str) {
    bytes.extend_from_slice(&(text.len() as u16).to_le_bytes());
    bytes.extend_from_slice(text.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        let taken = self.0.get(..count)?;
        self.0 = &self.0[count..];
        Some(taken)
    }

    fn string(&mut self) -> Option<String> {
        let length = u16::from_le_bytes(self.take(2)?.try_into().ok()?);
        String::from_utf8(self.take(usize::from(length))?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_round_trip_and_reject_garbage() {
        let key = OffsetKey {
            group: "billing".into(),
            topic: "orders".into(),
            partition: 7,
        };
        assert_eq!(OffsetKey::decode(&key.encode()), Some(key.clone()));
        let value = Committed {
            offset: 42,
            metadata: Some("host-a".into()),
            timestamp_ms: 1_700_000_000_000,
        };
        assert_eq!(Committed::decode(&value.encode()), Some(value.clone()));
        let bare = Committed {
            metadata: None,
            ..value
        };
        assert_eq!(Committed::decode(&bare.encode()), Some(bare));
        let encoded = key.encode();
        for cut in 0..encoded.len() {
            assert_eq!(OffsetKey::decode(&encoded[..cut]), None, "cut at {cut}");
        }
        let mut other_kind = encoded.clone();
        other_kind[1] = 2;
        assert_eq!(OffsetKey::decode(&other_kind), None);
        assert_eq!(Committed::decode(&[1, 2, 3]), None);
    }
}
