//! A fast hasher for the producer's hot maps: keys are topic names the application chose
//! and ids the producer handed out, never input from the network, so the flooding
//! resistance of the default SipHash buys nothing there, and SipHash showed up at 3 to
//! 5 % of the load generator's core (five lookups per record).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// FNV-1a over bytes (topic names), Fibonacci hashing for integers.
#[derive(Default)]
pub(crate) struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        if self.0 == 0 {
            self.0 = 0xcbf2_9ce4_8422_2325;
        }
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u32(&mut self, value: u32) {
        self.write_u64(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0 ^ value).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A `HashMap` with [`FastHasher`].
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// A `HashSet` with [`FastHasher`].
#[cfg(feature = "tokio")]
pub(crate) type FastSet<K> = HashSet<K, BuildHasherDefault<FastHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_differ_hash_apart_and_equal_keys_alike() {
        let mut map: FastMap<(String, u32), u32> = FastMap::default();
        for topic in ["orders", "payments", "orders-retry", "o"] {
            for partition in 0..64 {
                map.insert((topic.to_owned(), partition), partition);
            }
        }
        assert_eq!(map.len(), 4 * 64);
        assert_eq!(map.get(&("orders-retry".to_owned(), 17)), Some(&17));
        let hash = |key: &(String, u32)| {
            let mut hasher = FastHasher::default();
            std::hash::Hash::hash(key, &mut hasher);
            hasher.finish()
        };
        assert_eq!(hash(&("a".into(), 1)), hash(&("a".into(), 1)));
        assert_ne!(hash(&("a".into(), 1)), hash(&("a".into(), 2)));
        assert_ne!(hash(&("ab".into(), 1)), hash(&("ba".into(), 1)));
    }
}
