//! The per-shard tail cache: recent batches kept in memory so consumers that keep up
//! never touch the disk.
//!
//! With direct I/O there is no page cache, so without this every fetch at the tail would
//! be a device read. Each shard has one cache with one byte budget, shared by all the
//! logs on the shard, so memory scales with the shard, not with the number of partitions.
//!
//! Entries are the appended batches themselves (reference-counted `Bytes`, not copies).
//! Eviction is first-in first-out across the whole shard, so for every log the cached
//! batches are a contiguous suffix of its log: a read at or after the oldest cached
//! offset of a log is served from memory, a read before it goes to disk.
//!
//! Ownership: one per shard, shared by `Rc` between the shard's logs; never crosses
//! threads.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use bytes::Bytes;

/// Identifies a log's entries in the cache.
pub type CacheKey = u64;

/// Hit, miss and size counters of a [`TailCache`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Reads served from memory.
    pub hits: u64,
    /// Reads that had to go to disk.
    pub misses: u64,
    /// Batches evicted to stay within the budget.
    pub evictions: u64,
    /// Bytes currently cached.
    pub cached_bytes: u64,
    /// Batches currently cached.
    pub cached_batches: u64,
}

/// A bounded cache of the most recently appended batches of every log on one shard.
#[derive(Debug)]
pub struct TailCache {
    inner: RefCell<Inner>,
}

#[derive(Debug)]
struct Inner {
    budget_bytes: u64,
    next_key: CacheKey,
    logs: HashMap<CacheKey, VecDeque<CachedBatch>>,
    order: VecDeque<(CacheKey, u64)>,
    stats: CacheStats,
}

/// One cached batch.
#[derive(Debug, Clone)]
pub(crate) struct CachedBatch {
    pub base_offset: u64,
    pub next_offset: u64,
    pub bytes: Bytes,
}

impl TailCache {
    /// A cache holding at most `budget_bytes` of batches (0 disables caching).
    pub fn new(budget_bytes: u64) -> Rc<Self> {
        Rc::new(Self {
            inner: RefCell::new(Inner {
                budget_bytes,
                next_key: 0,
                logs: HashMap::new(),
                order: VecDeque::new(),
                stats: CacheStats::default(),
            }),
        })
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        self.inner.borrow().stats
    }

    pub(crate) fn register(&self) -> CacheKey {
        let mut inner = self.inner.borrow_mut();
        let key = inner.next_key;
        inner.next_key += 1;
        inner.logs.insert(key, VecDeque::new());
        key
    }

    pub(crate) fn unregister(&self, key: CacheKey) {
        let mut inner = self.inner.borrow_mut();
        if let Some(batches) = inner.logs.remove(&key) {
            inner.forget(&batches);
        }
    }

    /// Adds a batch just appended to the log `key`; it must continue the cached suffix.
    pub(crate) fn insert(&self, key: CacheKey, batch: CachedBatch) {
        let mut inner = self.inner.borrow_mut();
        let size = batch.bytes.len() as u64;
        if size > inner.budget_bytes {
            // Too big to cache: drop the log's suffix so it stays contiguous.
            let stale = inner
                .logs
                .get_mut(&key)
                .map(std::mem::take)
                .unwrap_or_default();
            inner.forget(&stale);
            return;
        }
        let Some(batches) = inner.logs.get_mut(&key) else {
            return;
        };
        if let Some(last) = batches.back() {
            assert_eq!(
                last.next_offset, batch.base_offset,
                "cache suffix must be contiguous"
            );
        }
        let base_offset = batch.base_offset;
        batches.push_back(batch);
        inner.order.push_back((key, base_offset));
        inner.stats.cached_bytes += size;
        inner.stats.cached_batches += 1;
        inner.evict_to_budget();
    }

    /// Cached batches starting with the one containing `offset`, up to `max_bytes`, the
    /// first even beyond it if it is at most `first_batch_max` long. `None` if `offset`
    /// is older than the cached suffix.
    pub(crate) fn read(
        &self,
        key: CacheKey,
        offset: u64,
        max_bytes: usize,
        first_batch_max: usize,
    ) -> Option<Vec<CachedBatch>> {
        let mut inner = self.inner.borrow_mut();
        let found = inner.logs.get(&key).and_then(|batches| {
            let first = batches.front()?;
            if offset < first.base_offset || offset >= batches.back()?.next_offset {
                return None;
            }
            let start = batches.partition_point(|batch| batch.next_offset <= offset);
            let mut taken = 0usize;
            let mut result = Vec::new();
            for batch in batches.range(start..) {
                let fits = taken + batch.bytes.len() <= max_bytes
                    || (result.is_empty() && batch.bytes.len() <= first_batch_max);
                if !fits {
                    break;
                }
                taken += batch.bytes.len();
                result.push(batch.clone());
            }
            Some(result)
        });
        match found {
            Some(_) => inner.stats.hits += 1,
            None => inner.stats.misses += 1,
        }
        found
    }

    /// Drops cached batches of `key` at or after `offset` (log truncation).
    pub(crate) fn truncate_from(&self, key: CacheKey, offset: u64) {
        let mut inner = self.inner.borrow_mut();
        let mut removed = Vec::new();
        if let Some(batches) = inner.logs.get_mut(&key) {
            while batches
                .back()
                .is_some_and(|batch| batch.next_offset > offset)
            {
                removed.push(batches.pop_back().expect("checked"));
            }
        }
        inner.forget(&removed);
    }

    /// Drops cached batches of `key` that end at or before `offset` (retention).
    pub(crate) fn remove_before(&self, key: CacheKey, offset: u64) {
        let mut inner = self.inner.borrow_mut();
        let mut removed = Vec::new();
        if let Some(batches) = inner.logs.get_mut(&key) {
            while batches
                .front()
                .is_some_and(|batch| batch.next_offset <= offset)
            {
                removed.push(batches.pop_front().expect("checked"));
            }
        }
        inner.forget(&removed);
    }
}

impl Inner {
    /// Accounts for batches removed from a log outside eviction. Their `order` entries
    /// become stale and are skipped when reached.
    fn forget<'a>(&mut self, batches: impl IntoIterator<Item = &'a CachedBatch>) {
        for batch in batches {
            self.stats.cached_bytes -= batch.bytes.len() as u64;
            self.stats.cached_batches -= 1;
        }
    }

    fn evict_to_budget(&mut self) {
        while self.stats.cached_bytes > self.budget_bytes {
            let Some((key, base_offset)) = self.order.pop_front() else {
                break;
            };
            let Some(batches) = self.logs.get_mut(&key) else {
                continue;
            };
            if batches
                .front()
                .is_some_and(|batch| batch.base_offset == base_offset)
            {
                let batch = batches.pop_front().expect("checked");
                self.stats.cached_bytes -= batch.bytes.len() as u64;
                self.stats.cached_batches -= 1;
                self.stats.evictions += 1;
            }
        }
        // Stale entries (removed by truncation or retention) would otherwise accumulate.
        if self.order.len() > 2 * self.stats.cached_batches as usize + 1024 {
            let logs = &self.logs;
            self.order.retain(|(key, base_offset)| {
                logs.get(key).is_some_and(|batches| {
                    batches
                        .iter()
                        .any(|batch| batch.base_offset == *base_offset)
                })
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(base_offset: u64, len: usize) -> CachedBatch {
        CachedBatch {
            base_offset,
            next_offset: base_offset + 10,
            bytes: Bytes::from(vec![0u8; len]),
        }
    }

    #[test]
    fn keeps_a_contiguous_suffix_within_budget() {
        let cache = TailCache::new(1000);
        let a = cache.register();
        let b = cache.register();
        for index in 0..5 {
            cache.insert(a, batch(index * 10, 200));
            cache.insert(b, batch(index * 10, 100));
        }
        let stats = cache.stats();
        assert!(stats.cached_bytes <= 1000);
        assert!(stats.evictions > 0);
        assert!(cache.read(a, 0, 1 << 20, usize::MAX).is_none());
        let tail = cache.read(a, 45, 1 << 20, usize::MAX).unwrap();
        assert_eq!(tail[0].base_offset, 40);
        assert!(cache.read(b, 25, 150, usize::MAX).unwrap().len() == 1);
        assert!(
            cache.read(a, 50, 1 << 20, usize::MAX).is_none(),
            "beyond the end"
        );
        cache.truncate_from(a, 40);
        assert!(cache.read(a, 40, 1 << 20, usize::MAX).is_none());
        cache.remove_before(b, 40);
        assert!(cache.read(b, 35, 1 << 20, usize::MAX).is_none());
        assert!(cache.read(b, 40, 1 << 20, usize::MAX).is_some());
        let stats = cache.stats();
        assert_eq!(stats.hits, 3);
        assert_eq!(stats.misses, 4);
    }
}
