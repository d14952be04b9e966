//! Partition placement: which shard owns a partition.
//!
//! Placement is a pure function of the topic name, the partition number and the number of
//! shards, so every shard (and every client, given the shard count) computes the same
//! answer without asking anyone. A topic's partitions go round-robin over the shards,
//! starting at a shard chosen by a stable hash of the topic name, so the partitions of
//! one topic are spread evenly and different topics do not all start on shard 0.
//!
//! Changing the shard count moves partitions between shards. Their data stays where it
//! is on disk (one directory per partition); only the owning core changes.

/// The shard that owns `partition` of `topic` on a broker with `shards` shards.
pub fn shard_for_partition(topic: &str, partition: u32, shards: u32) -> u32 {
    assert!(shards > 0, "a broker has at least one shard");
    let start = fnv1a_64(topic.as_bytes()) % u64::from(shards);
    ((start + u64::from(partition)) % u64::from(shards)) as u32
}

/// FNV-1a, 64 bits: tiny, stable across versions and platforms (unlike `DefaultHasher`).
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topics_partitions_spread_evenly_and_placement_is_stable() {
        for shards in 1..=8u32 {
            for topic in ["orders", "payments", "a", "__consumer_offsets"] {
                let mut counts = vec![0u32; shards as usize];
                for partition in 0..(shards * 3 + 1) {
                    counts[shard_for_partition(topic, partition, shards) as usize] += 1;
                }
                let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
                assert!(max - min <= 1, "{topic} on {shards} shards: {counts:?}");
            }
        }
        // Pinned values: placement must not change between versions.
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            shard_for_partition("orders", 0, 2),
            shard_for_partition("orders", 2, 2)
        );
    }

    #[test]
    fn different_topics_start_on_different_shards() {
        let starts: std::collections::HashSet<u32> = (0..64)
            .map(|index| shard_for_partition(&format!("topic-{index}"), 0, 4))
            .collect();
        assert_eq!(starts.len(), 4);
    }
}
