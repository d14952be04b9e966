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

/// Values by topic name, with the last name looked up remembered: a producer sending to
/// one topic (or a few in turn) finds its entry with one string comparison instead of
/// hashing the name for every record. Entries are never removed.
#[derive(Debug)]
pub(crate) struct ByName<T> {
    index: FastMap<String, usize>,
    entries: Vec<(String, T)>,
    last: std::cell::Cell<usize>,
}

impl<T> Default for ByName<T> {
    fn default() -> Self {
        Self {
            index: FastMap::default(),
            entries: Vec::new(),
            last: std::cell::Cell::new(0),
        }
    }
}

impl<T> ByName<T> {
    fn position(&self, name: &str) -> Option<usize> {
        let last = self.last.get();
        if self
            .entries
            .get(last)
            .is_some_and(|(entry, _)| entry == name)
        {
            return Some(last);
        }
        let position = *self.index.get(name)?;
        self.last.set(position);
        Some(position)
    }

    pub(crate) fn get(&self, name: &str) -> Option<&T> {
        self.position(name)
            .map(|position| &self.entries[position].1)
    }

    pub(crate) fn get_mut(&mut self, name: &str) -> Option<&mut T> {
        self.position(name)
            .map(move |position| &mut self.entries[position].1)
    }

    /// The entry for `name`, inserted with `make` if there is none.
    pub(crate) fn get_or_insert_with(&mut self, name: &str, make: impl FnOnce() -> T) -> &mut T {
        let position = match self.position(name) {
            Some(position) => position,
            None => self.push(name, make()),
        };
        &mut self.entries[position].1
    }

    /// Inserts or replaces the entry for `name`.
    pub(crate) fn insert(&mut self, name: &str, value: T) {
        match self.position(name) {
            Some(position) => self.entries[position].1 = value,
            None => {
                self.push(name, value);
            }
        }
    }

    fn push(&mut self, name: &str, value: T) -> usize {
        let position = self.entries.len();
        self.entries.push((name.to_owned(), value));
        self.index.insert(name.to_owned(), position);
        self.last.set(position);
        position
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.entries
            .iter()
            .map(|(name, value)| (name.as_str(), value))
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.entries.iter_mut().map(|(_, value)| value)
    }
}

/// A `HashSet` with [`FastHasher`].
#[cfg(feature = "tokio")]
pub(crate) type FastSet<K> = HashSet<K, BuildHasherDefault<FastHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_name_finds_every_entry_whichever_was_looked_up_last() {
        let mut names: ByName<u32> = ByName::default();
        assert_eq!(names.get("orders"), None);
        names.insert("orders", 1);
        names.insert("payments", 2);
        *names.get_or_insert_with("audit", || 3) += 10;
        // In turn, so the remembered entry changes at every lookup.
        for _ in 0..3 {
            for (name, value) in [("orders", 1), ("payments", 2), ("audit", 13), ("orders", 1)] {
                assert_eq!(names.get(name), Some(&value), "{name}");
            }
        }
        names.insert("payments", 20);
        *names.get_mut("orders").unwrap() += 100;
        assert_eq!(names.get("payments"), Some(&20));
        assert_eq!(names.get("orders"), Some(&101));
        assert_eq!(names.get("order"), None, "a prefix is another name");
        assert_eq!(*names.get_or_insert_with("audit", || 0), 13, "not replaced");
        let all: Vec<(&str, u32)> = names.iter().map(|(name, value)| (name, *value)).collect();
        assert_eq!(all, vec![("orders", 101), ("payments", 20), ("audit", 13)]);
    }

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
