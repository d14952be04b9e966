//! Sequential read-ahead for one log: double-buffered windows of a segment, so a consumer
//! reading from disk never waits for a device round trip per read.
//!
//! Direct I/O bypasses the kernel's read-ahead, so without this a consumer catching up
//! from disk keeps one small request in flight. Here, once a disk read ends at position
//! `P` (the start of the batch with offset `N`), the log reads a large window from `P` in
//! the background. When a read at exactly offset `N` arrives, it is served from that
//! window's memory, and the window after it, starting at the last whole batch inside the
//! first, is requested at once: one window is always in flight while the other is
//! consumed, and each window is large enough for the device to split it into several
//! concurrent requests.
//!
//! Bounds: at most two windows of at most [`WINDOW_BYTES_MAX`] per log. Any read that is
//! not the continuation of the previous one drops them, as do truncation and retention.
//!
//! Ownership: one per log, on the log's shard.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;

use flumen_protocol::record::{BatchHeader, BATCH_HEADER_BYTES};

use super::file::{DirectFile, ReadBytes};
use crate::shard::{spawn_detached, Notify};

/// Smallest window read ahead.
pub(crate) const WINDOW_BYTES_MIN: usize = 4 << 20;
/// Largest window read ahead.
pub(crate) const WINDOW_BYTES_MAX: usize = 16 << 20;

/// Where the previous read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    segment_base: u64,
    position: u64,
    next_offset: u64,
}

/// A window that has arrived, usable up to its last whole batch.
#[derive(Debug)]
struct Loaded {
    start: u64,
    bytes: ReadBytes,
    /// Position after the last whole batch in `bytes`, and the offset that starts there.
    boundary: u64,
    boundary_offset: u64,
}

/// A window still being read.
#[derive(Debug)]
struct Pending {
    start: u64,
    start_offset: u64,
    slot: Rc<Slot>,
}

#[derive(Debug, Default)]
struct Slot {
    result: RefCell<Option<io::Result<ReadBytes>>>,
    done: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    cursor: Option<Cursor>,
    window_bytes: usize,
    current: Option<Loaded>,
    next: Option<Pending>,
}

/// The read-ahead state of one log.
#[derive(Debug, Default)]
pub(crate) struct ReadAhead {
    inner: RefCell<Inner>,
}

/// The segment a read is served from, and how far its data may be read.
pub(crate) struct Source<'a> {
    pub file: &'a DirectFile,
    pub segment_base: u64,
    /// End of the bytes that are on the device and belong to the log.
    pub limit: u64,
}

impl ReadAhead {
    /// Bytes already read from the position where the batch at `offset` starts, if the
    /// previous read ended exactly there. Waits for a window still in flight.
    pub(crate) async fn chunk_for(
        &self,
        source: &Source<'_>,
        offset: u64,
    ) -> Option<(u64, ReadBytes)> {
        let position = {
            let mut inner = self.inner.borrow_mut();
            let continues = inner.cursor.is_some_and(|cursor| {
                cursor.segment_base == source.segment_base && cursor.next_offset == offset
            });
            if !continues {
                *inner = Inner::default();
                return None;
            }
            inner.cursor.expect("checked").position
        };
        loop {
            if let Some(chunk) = self.slice_of_current(position) {
                return Some(chunk);
            }
            let pending = {
                let mut inner = self.inner.borrow_mut();
                match inner.next.take() {
                    Some(pending) if pending.start == position => pending,
                    _ => return None,
                }
            };
            let bytes = wait(&pending.slot).await.ok()?;
            let loaded = load(pending.start, pending.start_offset, bytes);
            let more = loaded.boundary > loaded.start && loaded.boundary < source.limit;
            let (boundary, boundary_offset) = (loaded.boundary, loaded.boundary_offset);
            self.inner.borrow_mut().current = Some(loaded);
            if more {
                self.request(source, boundary, boundary_offset);
            } else if boundary == pending.start {
                return None;
            }
        }
    }

    fn slice_of_current(&self, position: u64) -> Option<(u64, ReadBytes)> {
        let inner = self.inner.borrow();
        let current = inner.current.as_ref()?;
        if position < current.start || position >= current.boundary {
            return None;
        }
        let offset = (position - current.start) as usize;
        let len = (current.boundary - position) as usize;
        current
            .bytes
            .slice(offset, len)
            .map(|bytes| (position, bytes))
    }

    /// Records where a read ended; starts the first window of a sequential run.
    pub(crate) fn after_read(
        &self,
        source: &Source<'_>,
        end_position: u64,
        next_offset: u64,
        span_bytes: usize,
    ) {
        let start_run = {
            let mut inner = self.inner.borrow_mut();
            inner.cursor = Some(Cursor {
                segment_base: source.segment_base,
                position: end_position,
                next_offset,
            });
            inner.window_bytes = (span_bytes * 4).clamp(WINDOW_BYTES_MIN, WINDOW_BYTES_MAX);
            if inner
                .current
                .as_ref()
                .is_some_and(|current| end_position > current.boundary)
            {
                inner.current = None;
            }
            inner.current.is_none() && inner.next.is_none() && end_position < source.limit
        };
        if start_run {
            self.request(source, end_position, next_offset);
        }
    }

    fn request(&self, source: &Source<'_>, start: u64, start_offset: u64) {
        let len = {
            let inner = self.inner.borrow();
            (inner.window_bytes as u64).min(source.limit - start) as usize
        };
        let slot = Rc::new(Slot::default());
        self.inner.borrow_mut().next = Some(Pending {
            start,
            start_offset,
            slot: Rc::clone(&slot),
        });
        let file = source.file.clone();
        spawn_detached(async move {
            let result = file.read_at(start, len).await;
            *slot.result.borrow_mut() = Some(result);
            slot.done.notify_all();
        });
    }

    /// Forgets everything (the bytes under the windows may change).
    pub(crate) fn clear(&self) {
        *self.inner.borrow_mut() = Inner::default();
    }
}

async fn wait(slot: &Slot) -> io::Result<ReadBytes> {
    loop {
        let listener = slot.done.listen();
        if let Some(result) = slot.result.borrow_mut().take() {
            return result;
        }
        listener.await;
    }
}

/// Finds the last whole batch in a window by walking its headers. A header that does not
/// decode ends the usable part; the read path reports it when it gets there.
fn load(start: u64, start_offset: u64, bytes: ReadBytes) -> Loaded {
    let mut position = 0usize;
    let mut next_offset = start_offset;
    while position + BATCH_HEADER_BYTES <= bytes.len() {
        let Ok(header) = BatchHeader::decode(&bytes[position..]) else {
            break;
        };
        if position + header.padded_length() > bytes.len() {
            break;
        }
        position += header.padded_length();
        next_offset = header.next_offset();
    }
    Loaded {
        start,
        boundary: start + position as u64,
        boundary_offset: next_offset,
        bytes,
    }
}
