//! Sequential read-ahead for one log: while a consumer processes one read, the next
//! window of the same segment is already being read from the device.
//!
//! Direct I/O has no kernel read-ahead, so without this a consumer catching up from disk
//! keeps one request in flight and waits a full device round trip per read. After a disk
//! read that ends at position `P` with next offset `N`, the log starts reading the same
//! number of bytes from `P`; a later read at exactly offset `N` takes those bytes instead
//! of issuing its own I/O. At most one window is held per log (bounded by the read size
//! limit), and it is dropped when the log is truncated or loses segments.
//!
//! Ownership: one per log, on the log's shard.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;

use super::file::{DirectFile, ReadBytes};
use crate::shard::{spawn_detached, Notify};

/// Bytes read ahead of a consumer, or still being read.
#[derive(Debug, Default)]
pub(crate) struct ReadAhead {
    pending: RefCell<Option<Pending>>,
}

#[derive(Debug)]
struct Pending {
    segment_base: u64,
    position: u64,
    next_offset: u64,
    slot: Rc<Slot>,
}

#[derive(Debug, Default)]
struct Slot {
    result: RefCell<Option<io::Result<ReadBytes>>>,
    done: Notify,
}

impl ReadAhead {
    /// Starts reading `len` bytes at `position` of the segment `segment_base`, where the
    /// batch with offset `next_offset` begins. Replaces any earlier window.
    pub(crate) fn start(
        &self,
        file: &DirectFile,
        segment_base: u64,
        position: u64,
        next_offset: u64,
        len: usize,
    ) {
        let slot = Rc::new(Slot::default());
        *self.pending.borrow_mut() = Some(Pending {
            segment_base,
            position,
            next_offset,
            slot: Rc::clone(&slot),
        });
        let file = file.clone();
        spawn_detached(async move {
            let result = file.read_at(position, len).await;
            *slot.result.borrow_mut() = Some(result);
            slot.done.notify_all();
        });
    }

    /// If the window read ahead starts at `offset` in segment `segment_base`, waits for it
    /// and returns its position and bytes. Any other window is dropped.
    pub(crate) async fn take(
        &self,
        segment_base: u64,
        offset: u64,
    ) -> Option<(u64, io::Result<ReadBytes>)> {
        let pending = self.pending.borrow_mut().take()?;
        if pending.segment_base != segment_base || pending.next_offset != offset {
            return None;
        }
        loop {
            let listener = pending.slot.done.listen();
            if let Some(result) = pending.slot.result.borrow_mut().take() {
                return Some((pending.position, result));
            }
            listener.await;
        }
    }

    /// Forgets any window (the bytes under it may change).
    pub(crate) fn clear(&self) {
        self.pending.borrow_mut().take();
    }
}
