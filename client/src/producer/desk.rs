//! Where records are appended: the accumulator, the records waiting for their batches'
//! outcomes and the buffer's bound, shared by the producer's handles and its worker.
//!
//! `send` appends a record itself, under the desk's lock, when the worker already knows
//! the record's topic: the key and value are copied into their batch at once, and the
//! worker hears from the handle only when a batch closes or a new one opens (its linger
//! timer must know), not once per record. A record of a topic the worker does not know
//! yet goes to the worker over the command channel, which fetches the metadata first;
//! while records of a topic are on that way, a send of that topic waits until the
//! worker has appended them (or takes the same way, if the topic is still unknown), so
//! none overtakes another.
//! Producers with an outbox send every record through the worker: it batches the
//! outbox's records in the same accumulator, and nothing may join it meanwhile.
//!
//! Ordering: a batch is counted as unresolved from the moment it is closed, whoever
//! closed it, and a partition's open batch is not closed by the linger while an earlier
//! one is unresolved. So a batch a handle closed but the worker has not dispatched yet
//! still holds its partition's next batch back.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;

use super::Reply;
use crate::accumulator::{Accumulator, AccumulatorConfig, AppendError, ReadyBatch, RecordRef};
use crate::fast_hash::{ByName, FastMap};

/// Batches of each partition closed and not yet resolved (ready, queued or in flight).
pub(crate) type Unresolved = FastMap<String, FastMap<u32, usize>>;

/// Whether a partition may have its open batch closed by the linger: nothing of it is
/// unresolved. Until then records keep joining the open batch.
pub(crate) fn sendable(unresolved: &Unresolved, topic: &str, partition: u32) -> bool {
    unresolved
        .get(topic)
        .and_then(|partitions| partitions.get(&partition))
        .is_none_or(|&count| count == 0)
}

/// The state shared by the handles and the worker (see the module docs).
pub(crate) struct Desk {
    state: Mutex<DeskState>,
    /// Rung when a handle closed a batch or opened one: the worker dispatches it, or
    /// arms the linger timer.
    pub(crate) bell: Notify,
    /// Rung when the worker gives buffer room back, for sends waiting for room.
    pub(crate) room: Notify,
}

impl std::fmt::Debug for Desk {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        formatter
            .debug_struct("Desk")
            .field("buffered_bytes", &state.accumulator.buffered_bytes())
            .field("handed", &state.handed)
            .field("closed", &state.closed)
            .finish_non_exhaustive()
    }
}

impl Desk {
    pub(crate) fn new(config: AccumulatorConfig, direct: bool) -> Self {
        Self {
            state: Mutex::new(DeskState {
                accumulator: Accumulator::new(config),
                waiting: WaitingRecords::default(),
                unresolved: Unresolved::default(),
                known: ByName::default(),
                direct,
                closed: false,
                handed: 0,
                handed_bytes: 0,
                handed_topics: FastMap::default(),
                next_id: 0,
                ready: Vec::new(),
                touched: Vec::new(),
                short_linger: config.linger < super::worker::TIMER_RESOLUTION,
                buffer_bytes: config.buffer_memory_bytes,
                clock: (Instant::now(), super::now_ms()),
            }),
            bell: Notify::new(),
            room: Notify::new(),
        }
    }

    /// The state, locked. No task panics while holding it (nothing in it calls out).
    pub(crate) fn lock(&self) -> MutexGuard<'_, DeskState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub(crate) struct DeskState {
    pub(crate) accumulator: Accumulator,
    pub(crate) waiting: WaitingRecords,
    pub(crate) unresolved: Unresolved,
    /// Partition counts of the topics `send` may append to itself: the worker has their
    /// leaders (and, when idempotent, a producer id).
    pub(crate) known: ByName<u32>,
    /// False: every record goes through the worker (a producer with an outbox).
    pub(crate) direct: bool,
    /// The producer is closing: sends fail with `Closed`.
    pub(crate) closed: bool,
    /// Records handed to the worker and not appended yet, their buffer bytes, and how
    /// many of each topic.
    handed: usize,
    handed_bytes: usize,
    handed_topics: FastMap<String, usize>,
    next_id: u64,
    /// Batches closed by sends, oldest first, for the worker to dispatch.
    pub(crate) ready: Vec<ReadyBatch>,
    /// Partitions whose linger (shorter than the timer's tick) is checked as records
    /// arrive: the worker closes their batches once the linger has passed.
    pub(crate) touched: Vec<(String, u32)>,
    short_linger: bool,
    buffer_bytes: usize,
    /// A monotonic instant and the wall-clock time (ms since the epoch) read together:
    /// a record's timestamp is derived from the instant its send read, one clock read
    /// per record instead of two. The worker reads them again on every pass, so the
    /// wall clock's adjustments are followed.
    clock: (Instant, i64),
}

/// Which way a send goes.
pub(crate) enum Direct {
    /// Appended by the send itself, with the topic's partition count.
    Append(u32),
    /// Appended by the send once the worker has appended its topic's handed records.
    AfterHanded,
    /// Handed to the worker (a topic it does not know yet, or a producer with an
    /// outbox).
    HandOver,
}

/// What became of an append, for the appender to tell the worker.
pub(crate) struct Appended {
    /// A batch closed or opened, or a partition to check: the worker should look.
    pub(crate) ring: bool,
}

impl DeskState {
    /// The id the next record appended gets: every record appended so far has a lower
    /// one.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Reads the clocks the timestamps are derived from again.
    pub(crate) fn set_clock(&mut self) {
        self.clock = (Instant::now(), super::now_ms());
    }

    /// The wall-clock time (ms since the epoch) at `now`.
    pub(crate) fn now_ms(&self, now: Instant) -> i64 {
        let (base, base_ms) = self.clock;
        match now.checked_duration_since(base) {
            Some(since) => base_ms + since.as_millis() as i64,
            None => base_ms - base.duration_since(now).as_millis() as i64,
        }
    }

    /// Whether `size` more bytes fit in the buffer now.
    pub(crate) fn has_room(&self, size: usize) -> bool {
        self.accumulator.buffered_bytes() + self.handed_bytes + size <= self.buffer_bytes
    }

    /// Which way a send of `topic` goes.
    pub(crate) fn direct(&self, topic: &str) -> Direct {
        let Some(&partitions) = self.known.get(topic).filter(|_| self.direct) else {
            return Direct::HandOver;
        };
        if self.handed > 0 && self.handed_topics.contains_key(topic) {
            return Direct::AfterHanded;
        }
        Direct::Append(partitions)
    }

    /// Counts a record handed to the worker, with its reserved room.
    pub(crate) fn hand(&mut self, topic: &str, size: usize) {
        self.handed += 1;
        self.handed_bytes += size;
        match self.handed_topics.get_mut(topic) {
            Some(count) => *count += 1,
            None => {
                self.handed_topics.insert(topic.to_owned(), 1);
            }
        }
    }

    /// A handed record reached the worker's append (or failed): its room is the
    /// accumulator's to count from now on.
    pub(crate) fn unhand(&mut self, topic: &str, size: usize) {
        self.handed -= 1;
        self.handed_bytes -= size;
        if let Some(count) = self.handed_topics.get_mut(topic) {
            *count -= 1;
            if *count == 0 {
                self.handed_topics.remove(topic);
            }
        }
    }

    /// Appends a record to its partition's batch and keeps its reply until the batch is
    /// resolved; a batch it fills joins `ready`. On failure the reply comes back.
    pub(crate) fn append(
        &mut self,
        record: &RecordRef<'_>,
        partitions: u32,
        reply: Reply,
        now: Option<Instant>,
    ) -> Result<Appended, (Reply, AppendError)> {
        let id = self.next_id;
        let opened_before = self.accumulator.open_batches();
        let now = || now.unwrap_or_else(Instant::now);
        // Its room was reserved by its send (`has_room`), whether it appends itself or
        // was handed to the worker: an outbox drain going past the limit meanwhile must
        // not fail it.
        let appended = self
            .accumulator
            .append_checked(record, partitions, id, now, false);
        let (partition, full) = match appended {
            Ok(appended) => appended,
            Err(error) => return Err((reply, error)),
        };
        self.next_id += 1;
        self.waiting.insert(id, Waiting { partition, reply });
        let mut ring = self.accumulator.open_batches() > opened_before;
        match full {
            Some(batch) => {
                self.closed_batch(&batch);
                self.ready.push(batch);
                ring = true;
            }
            // A linger shorter than the timer's millisecond ends with the first record
            // after it rather than on the next tick. The worker takes every touched
            // partition when it wakes, so only the first touch since then rings, and a
            // run of records to one partition (sticky partitioning) is noted once.
            None if self.short_linger => {
                let noted = self
                    .touched
                    .last()
                    .is_some_and(|(topic, last)| *last == partition && topic == record.topic);
                if !noted {
                    ring |= self.touched.is_empty();
                    self.touched.push((record.topic.to_owned(), partition));
                }
            }
            None => {}
        }
        Ok(Appended { ring })
    }

    /// Counts a batch just closed as unresolved.
    pub(crate) fn closed_batch(&mut self, batch: &ReadyBatch) {
        *self
            .unresolved
            .entry(batch.topic.clone())
            .or_default()
            .entry(batch.partition)
            .or_default() += 1;
    }

    /// A batch resolved: its partition may close its next one.
    pub(crate) fn resolved_batch(&mut self, batch: &ReadyBatch) {
        if let Some(partitions) = self.unresolved.get_mut(&batch.topic) {
            if let Some(count) = partitions.get_mut(&batch.partition) {
                *count -= 1;
                if *count == 0 {
                    partitions.remove(&batch.partition);
                }
            }
        }
    }

    /// Whether the partition may have its open batch closed by the linger.
    pub(crate) fn sendable(&self, topic: &str, partition: u32) -> bool {
        sendable(&self.unresolved, topic, partition)
    }

    /// Closes every batch whose linger has passed at `now` (of partitions with nothing
    /// unresolved) into `ready`.
    pub(crate) fn close_expired(&mut self, now: Instant) {
        let known = &self.known;
        let unresolved = &self.unresolved;
        let expired = self.accumulator.expired(
            now,
            |topic| known.get(topic).copied().unwrap_or(1),
            |topic, partition| sendable(unresolved, topic, partition),
        );
        for batch in expired {
            self.closed_batch(&batch);
            self.ready.push(batch);
        }
    }

    /// Closes the touched partitions' batches whose linger has passed into `ready`.
    pub(crate) fn close_touched(&mut self, now: Instant) {
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        for (topic, partition) in touched.drain(..) {
            if !self.sendable(&topic, partition) {
                continue;
            }
            let partitions = self.known.get(&topic).copied().unwrap_or(1);
            if let Some(batch) = self
                .accumulator
                .close_if_expired(&topic, partition, now, partitions)
            {
                self.closed_batch(&batch);
                self.ready.push(batch);
            }
        }
        self.touched = touched;
    }

    /// Closes every open batch into `ready` (a flush, a close).
    pub(crate) fn close_all(&mut self) {
        let known = &self.known;
        let batches = self
            .accumulator
            .drain(|topic| known.get(topic).copied().unwrap_or(1));
        for batch in batches {
            self.closed_batch(&batch);
            self.ready.push(batch);
        }
    }

    /// When the earliest linger of a partition with nothing unresolved passes.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let unresolved = &self.unresolved;
        self.accumulator
            .next_deadline(|topic, partition| sendable(unresolved, topic, partition))
    }
}

/// The records waiting for their batch's outcome, by id. Ids are handed out in order and
/// each is taken once, so a deque starting at the oldest id still waiting serves as the
/// map: no hashing (removing from a hash map of the in-flight records was 6 % of the
/// load generator's core), and the front is dropped as it completes. An id that never
/// waited (its record failed first) leaves an empty slot.
#[derive(Default)]
pub(crate) struct WaitingRecords {
    first_id: u64,
    slots: VecDeque<Option<Waiting>>,
}

impl WaitingRecords {
    /// Whether a record with an id below `boundary` still waits.
    pub(crate) fn any_below(&self, boundary: u64) -> bool {
        !self.slots.is_empty() && self.first_id < boundary
    }

    /// Adds the record with `id`, which must be later than every id added before.
    fn insert(&mut self, id: u64, waiting: Waiting) {
        if self.slots.is_empty() {
            self.first_id = id;
        }
        let index = (id - self.first_id) as usize;
        assert!(index >= self.slots.len(), "waiting ids are added in order");
        self.slots.resize_with(index, || None);
        self.slots.push_back(Some(waiting));
    }

    /// Takes the record with `id`, if it waits.
    pub(crate) fn remove(&mut self, id: u64) -> Option<Waiting> {
        let index = usize::try_from(id.checked_sub(self.first_id)?).ok()?;
        let taken = self.slots.get_mut(index)?.take();
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.first_id += 1;
        }
        taken
    }
}

/// A record waiting for its batch's outcome.
pub(crate) struct Waiting {
    pub(crate) partition: u32,
    pub(crate) reply: Reply,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(partition: u32) -> Waiting {
        Waiting {
            partition,
            reply: Reply::future(tokio::sync::oneshot::channel().0),
        }
    }

    #[test]
    fn waiting_records_are_taken_once_in_any_order_and_the_front_is_dropped() {
        let mut records = WaitingRecords::default();
        records.insert(10, waiting(0));
        records.insert(11, waiting(1));
        // Id 12 failed before it waited: an empty slot.
        records.insert(13, waiting(3));
        assert_eq!(records.remove(11).map(|w| w.partition), Some(1));
        assert!(records.remove(11).is_none(), "taken once");
        assert!(records.remove(12).is_none());
        assert_eq!(records.slots.len(), 4, "the front still waits");
        assert_eq!(records.remove(10).map(|w| w.partition), Some(0));
        assert_eq!((records.first_id, records.slots.len()), (13, 1));
        assert!(
            records.remove(u64::MAX - 3).is_none(),
            "outbox ids never wait"
        );
        assert!(records.remove(9).is_none());
        assert_eq!(records.remove(13).map(|w| w.partition), Some(3));
        assert!(records.slots.is_empty());
        // Empty, it starts again at the next id.
        records.insert(20, waiting(5));
        assert_eq!(records.remove(20).map(|w| w.partition), Some(5));
    }
}
