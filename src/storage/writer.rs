//! The segment writer: turns appends into large aligned direct writes, and flushes into
//! coalesced `fdatasync`s (group commit).
//!
//! # What "appended", "written" and "flushed" mean
//!
//! - **Appended** (`end`): the bytes were copied into a staging buffer and belong to the
//!   log. Readers see them (through the tail cache, or after a write-out). Nothing is on
//!   disk yet; a crash loses them. This is where `acks=1` answers.
//! - **Written** (`written_end`): every byte below it was handed to the device by a
//!   completed `O_DIRECT` write. It survives a crash of the process but not necessarily a
//!   power loss.
//! - **Flushed** (`durable_end`): every byte below it was written and covered by a
//!   completed `fdatasync`. It survives power loss. This is where `acks=all` answers.
//!
//! Invariant: `durable_end <= written_end <= end`, checked on every transition.
//!
//! # How
//!
//! Appends copy into a staging buffer of `write_buffer_bytes`. A full buffer is submitted
//! at once as one write, in the background; up to `writes_in_flight_max` writes overlap, so
//! the device sees a deep queue while appends never wait for the disk unless the window is
//! full. [`SegmentWriter::flush`] submits the partially filled buffer rounded up to the
//! block size (the padding is zeros), keeps its last partial block as the start of the
//! next staging buffer, waits for every earlier write, and calls `fdatasync`. The next
//! write of that block rewrites it with more data; it is issued only after the previous
//! write of the same block completed, so the newer contents always land last.
//!
//! Beyond its own window, a writer may borrow buffers from its shard's shared write
//! window ([`set_shared_write_window`]) when they are free, and gives each back when its
//! writes in flight and its staging buffer fit its own window again. A device that stalls for a while
//! then holds up appends only once the shard's window is used up, while a shard with
//! many partitions keeps a bound on the memory its writes hold.
//!
//! Concurrent `flush` calls coalesce: while one `fdatasync` runs, later callers wait and
//! are all covered by the next single round, which flushes everything appended so far.
//! Before leading a round, a flusher lets the tasks already ready on the shard run once,
//! so those released by the previous round can append and join it.
//!
//! Space is reserved ahead of the write position with `fallocate`, so a full disk is
//! discovered by `reserve`, before an append is accepted, rather than by a background
//! write after it was acknowledged. The reservation is topped up in the background before
//! the appends reach it, so they do not wait for `fallocate` (on ext4 it waits for the
//! journal, tens of milliseconds while a sync commits it, and for as long as the device
//! stalls); an append waits only when it outruns the reservation. How far ahead is kept
//! follows the partition's pace ([`LogWriting`]): [`RESERVE_AHEAD_TIME`] of its appends,
//! at least one `preallocate_bytes` step and at most [`RESERVE_AHEAD_MAX`], and never
//! past the most a segment can hold.
//!
//! Ownership: one writer per active segment, owned by the shard that owns the partition.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::config::IO_ALIGNMENT_BYTES;
use super::file::{AlignedBuffer, DirectFile};
use crate::shard::{spawn_detached, yield_to_ready_tasks, BudgetPermit, LocalBudget, Notify};

thread_local! {
    /// This shard's shared write window: bytes of writes its segments may have in flight
    /// beyond their own `writes_in_flight_max` windows.
    static SHARED_WINDOW: RefCell<Option<Rc<LocalBudget>>> = const { RefCell::new(None) };
}

/// Bytes of the calling shard's shared write window free now (`None`: it has none).
#[cfg(test)]
pub(crate) fn shared_write_window_available() -> Option<usize> {
    SHARED_WINDOW.with(|window| window.borrow().as_ref().map(|window| window.available()))
}

/// Sets the calling shard's shared write window to `bytes` (0: none). Writers created
/// on this thread afterwards borrow from it.
pub fn set_shared_write_window(bytes: usize) {
    SHARED_WINDOW
        .with(|window| *window.borrow_mut() = (bytes > 0).then(|| LocalBudget::new(bytes)));
}

/// Limits for one writer, taken from the log configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriterLimits {
    pub buffer_bytes: usize,
    pub in_flight_max: usize,
    pub preallocate_bytes: u64,
    /// The most file a segment can need (its size limit, block-aligned): space is not
    /// reserved in the background past it.
    pub reserve_end_max: u64,
}

/// How much of a partition's appends the space reserved ahead of them covers: a device
/// that stalls, and every `fallocate` with it, holds up its appends only after this long
/// (if the shard's write window lasts that long too).
pub(crate) const RESERVE_AHEAD_TIME: Duration = Duration::from_millis(250);
/// The most space reserved ahead of a partition's appends (a top-up reserves up to
/// twice the lead, so at most twice this is held beyond the data until the seal).
pub(crate) const RESERVE_AHEAD_MAX: u64 = 64 << 20;
/// How often a partition's append rate is measured.
const PACE_INTERVAL: Duration = Duration::from_millis(100);

/// What a partition's successive segment writers share: the count of `fdatasync`s the
/// log reports, and the pace of its appends, which sets how far ahead of them space is
/// reserved. An append only adds to a count; the pace is measured when space is
/// reserved, once per lead of appends, so no append reads the clock for it.
#[derive(Debug, Default)]
pub(crate) struct LogWriting {
    pub(crate) syncs: Cell<u64>,
    /// The first write or sync that failed, of any of the log's segments: the log
    /// refuses appends from then on (it is poisoned until reopened).
    failure: RefCell<Option<String>>,
    /// Bytes appended since the log was opened.
    appended: Cell<u64>,
    pace: Cell<Pace>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Pace {
    /// When the rate was last measured, and the bytes appended then.
    mark: Option<(Instant, u64)>,
    /// Bytes a second, smoothed over the last few measurements.
    bytes_per_s: u64,
}

impl LogWriting {
    /// The first failure of any of the log's segment writers.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    /// Counts `len` bytes appended.
    fn appended(&self, len: usize) {
        self.appended.set(self.appended.get() + len as u64);
    }

    /// Measures the appends' rate at `now`, if [`PACE_INTERVAL`] passed since the last
    /// time: each measurement moves the pace halfway to the rate since then, so an idle
    /// partition's lead shrinks at its next reservation.
    fn measure(&self, now: Instant) {
        let mut pace = self.pace.get();
        let appended = self.appended.get();
        match pace.mark {
            Some((at, before)) if now.saturating_duration_since(at) >= PACE_INTERVAL => {
                let seconds = now.duration_since(at).as_secs_f64();
                let rate = ((appended - before) as f64 / seconds) as u64;
                pace.bytes_per_s = pace.bytes_per_s / 2 + rate / 2;
                pace.mark = Some((now, appended));
            }
            Some(_) => {}
            None => pace.mark = Some((now, appended)),
        }
        self.pace.set(pace);
    }

    /// Bytes to keep reserved ahead of the appends: [`RESERVE_AHEAD_TIME`] of them at
    /// their recent pace, within `[step, max(step, RESERVE_AHEAD_MAX)]`, block-aligned.
    pub(crate) fn reserve_ahead(&self, step: u64) -> u64 {
        let ahead = self.pace.get().bytes_per_s * RESERVE_AHEAD_TIME.as_millis() as u64 / 1000;
        align_up(ahead.clamp(step, RESERVE_AHEAD_MAX.max(step)))
    }
}

/// Writes one segment file. Cheap to clone (shared handle).
#[derive(Debug, Clone)]
pub(crate) struct SegmentWriter {
    shared: Rc<Shared>,
}

#[derive(Debug)]
struct Shared {
    file: DirectFile,
    /// Shared with the log and the writers of its other segments.
    writing: Rc<LogWriting>,
    /// Kept up to date when the topic's configuration changes ([`SegmentWriter::set_limits`]).
    limits: Cell<WriterLimits>,
    /// The shard's shared write window, if it has one.
    shared_window: Option<Rc<LocalBudget>>,
    /// Whether the writes of the segment before this one (a roll's) are all done: this
    /// file's writes are issued only after them.
    after: RefCell<After>,
    state: RefCell<State>,
    changed: Notify,
}

#[derive(Debug)]
struct State {
    /// Buffer holding file bytes `[staging_start, end)`; `None` when that range is empty.
    staging: Option<AlignedBuffer>,
    /// Aligned file position of `staging[0]`.
    staging_start: u64,
    end: u64,
    /// Logical end covered by writes submitted so far.
    submitted_end: u64,
    written_end: u64,
    durable_end: u64,
    /// File bytes reserved by `fallocate` (or the file size).
    allocated_end: u64,
    preallocate: bool,
    /// A background `fallocate` is running.
    topping_up: bool,
    /// The last background `fallocate` failed (a full disk): none starts until an
    /// append's own succeeds, so the failure is reported to that append.
    top_up_failed: bool,
    slots: VecDeque<WriteSlot>,
    /// Buffers borrowed from the shared window: as many as the slots beyond
    /// `in_flight_max`, or more for the appends about to be submitted.
    borrowed: Vec<BudgetPermit>,
    next_slot_id: u64,
    /// Aligned end of the last submitted write, and its slot, for overlap ordering.
    last_submitted: Option<(u64, u64)>,
    failure: Option<String>,
    flushing: bool,
}

#[derive(Debug)]
struct WriteSlot {
    id: u64,
    logical_end: u64,
    done: bool,
}

fn align_down(value: u64) -> u64 {
    value - value % IO_ALIGNMENT_BYTES
}

pub(crate) fn align_up(value: u64) -> u64 {
    value.div_ceil(IO_ALIGNMENT_BYTES) * IO_ALIGNMENT_BYTES
}

impl SegmentWriter {
    /// A writer that continues the file at logical position `end`, everything below which
    /// is already on disk and durable. The partial last block is read back.
    pub(crate) async fn resume(
        file: DirectFile,
        end: u64,
        limits: WriterLimits,
        writing: Rc<LogWriting>,
    ) -> io::Result<Self> {
        assert!((limits.buffer_bytes as u64).is_multiple_of(IO_ALIGNMENT_BYTES));
        let staging_start = align_down(end);
        let staging = if end > staging_start {
            let block = file
                .read_at(staging_start, IO_ALIGNMENT_BYTES as usize)
                .await?;
            let tail = (end - staging_start) as usize;
            if block.len() < tail {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("segment is shorter than its logical end {end}"),
                ));
            }
            let mut buffer = file.alloc(IO_ALIGNMENT_BYTES as usize);
            buffer.as_bytes_mut()[..tail].copy_from_slice(&block[..tail]);
            Some(buffer)
        } else {
            None
        };
        let allocated_end = file.size().await?;
        Ok(Self {
            shared: Rc::new(Shared {
                file,
                writing,
                limits: Cell::new(limits),
                shared_window: SHARED_WINDOW.with(|window| window.borrow().clone()),
                after: RefCell::new(After::Done),
                state: RefCell::new(State {
                    staging,
                    staging_start,
                    end,
                    submitted_end: end,
                    written_end: end,
                    durable_end: end,
                    allocated_end,
                    preallocate: limits.preallocate_bytes > 0,
                    topping_up: false,
                    top_up_failed: false,
                    slots: VecDeque::new(),
                    borrowed: Vec::new(),
                    next_slot_id: 0,
                    last_submitted: None,
                    failure: None,
                    flushing: false,
                }),
                changed: Notify::new(),
            }),
        })
    }

    /// Bytes appended and not yet covered by an `fdatasync`.
    pub(crate) fn unsynced_bytes(&self) -> u64 {
        let state = self.shared.state.borrow();
        state.end - state.durable_end
    }

    /// Logical end: bytes appended so far.
    pub(crate) fn end(&self) -> u64 {
        self.shared.state.borrow().end
    }

    /// Everything below this is on the device (not necessarily synced).
    pub(crate) fn written_end(&self) -> u64 {
        self.shared.state.borrow().written_end
    }

    /// The first background failure, if any.
    pub(crate) fn failure(&self) -> Option<String> {
        self.shared.state.borrow().failure.clone()
    }

    /// Waits until `len` more bytes can be appended without exceeding the in-flight window,
    /// and reserves disk space for them. After it returns, the caller must append without
    /// awaiting in between. A full disk is reported here, before anything changes.
    pub(crate) async fn reserve(&self, len: usize) -> io::Result<()> {
        let limits = self.shared.limits.get();
        let buffers = len.div_ceil(limits.buffer_bytes) + 1;
        let step = limits.preallocate_bytes;
        loop {
            let listener = self.shared.changed.listen();
            let needed_end = {
                let mut state = self.shared.state.borrow_mut();
                if let Some(failure) = &state.failure {
                    return Err(io::Error::other(failure.clone()));
                }
                let window = limits.in_flight_max + state.borrowed.len();
                let short = (state.slots.len() + buffers).saturating_sub(window);
                // With none of its writes in flight, nothing of this writer's would ever
                // wake the wait: an append larger than its window goes ahead. (The limits
                // follow the topic's max.message.bytes; this keeps any mismatch from
                // stopping the log for good.)
                let room = short == 0
                    || self.shared.borrow_window(&mut state, short)
                    || state.slots.is_empty();
                if !room {
                    None
                } else if !state.preallocate {
                    return Ok(());
                } else {
                    Some(align_up(state.end + len as u64))
                }
            };
            let Some(needed_end) = needed_end else {
                listener.await;
                continue;
            };
            let (allocated_end, topping_up, top_up_failed) = {
                let state = self.shared.state.borrow();
                (state.allocated_end, state.topping_up, state.top_up_failed)
            };
            let end_max = limits.reserve_end_max;
            let writing = &self.shared.writing;
            if needed_end <= allocated_end {
                if allocated_end - needed_end < writing.reserve_ahead(step)
                    && allocated_end < end_max
                    && !topping_up
                    && !top_up_failed
                {
                    writing.measure(Instant::now());
                    let ahead = writing.reserve_ahead(step);
                    self.top_up((needed_end + 2 * ahead).min(end_max));
                }
                return Ok(());
            }
            if topping_up {
                // It may cover this append; if not, the next pass allocates.
                listener.await;
                continue;
            }
            writing.measure(Instant::now());
            // Only what this append needs and a step: it is waiting for it.
            let target = (needed_end + step).min(end_max).max(needed_end);
            let result = self.shared.file.preallocate(target).await;
            self.shared.allocated(target, result)?;
        }
    }

    /// The topic's configuration changed: the window, the reservation's step and its
    /// limit (`segment.bytes`) apply from the next append on. The buffer size is the
    /// broker's and stays.
    pub(crate) fn set_limits(&self, limits: WriterLimits) {
        let buffer_bytes = self.shared.limits.get().buffer_bytes;
        debug_assert_eq!(limits.buffer_bytes, buffer_bytes);
        self.shared.limits.set(WriterLimits {
            buffer_bytes,
            ..limits
        });
    }

    /// Extends the reservation to `target` in the background.
    fn top_up(&self, target: u64) {
        self.shared.state.borrow_mut().topping_up = true;
        let shared = Rc::clone(&self.shared);
        spawn_detached(async move {
            let result = shared.file.preallocate(target).await;
            shared.state.borrow_mut().topping_up = false;
            if let Err(error) = shared.allocated(target, result) {
                tracing::debug!(path = %shared.file.path().display(), %error, "background fallocate failed");
                shared.state.borrow_mut().top_up_failed = true;
            }
            shared.changed.notify_all();
        });
    }

    /// Stops reserving space and waits for a background `fallocate` to finish, so
    /// nothing extends the file after this returns (before a seal or a truncation
    /// shrinks it).
    pub(crate) async fn retire(&self) {
        self.shared.state.borrow_mut().preallocate = false;
        loop {
            let listener = self.shared.changed.listen();
            if !self.shared.state.borrow().topping_up {
                return;
            }
            listener.await;
        }
    }

    /// Appends `bytes` at the logical end, submitting every staging buffer it fills.
    /// Returns the position the bytes start at. Call right after [`Self::reserve`].
    pub(crate) fn append(&self, mut bytes: &[u8]) -> u64 {
        self.shared.writing.appended(bytes.len());
        let buffer_bytes = self.shared.limits.get().buffer_bytes;
        let position = self.end();
        while !bytes.is_empty() {
            let mut state = self.shared.state.borrow_mut();
            let used = (state.end - state.staging_start) as usize;
            let small = state
                .staging
                .as_ref()
                .is_none_or(|staging| staging.len() < buffer_bytes);
            if small {
                // An idle log keeps only its partial last block (one small buffer); the
                // full staging buffer is taken when appends resume.
                let mut full = self.shared.file.alloc(buffer_bytes);
                if let Some(partial) = state.staging.take() {
                    full.as_bytes_mut()[..used].copy_from_slice(&partial.as_bytes()[..used]);
                }
                state.staging = Some(full);
            }
            let take = bytes.len().min(buffer_bytes - used);
            let staging = state.staging.as_mut().expect("staging allocated above");
            staging.as_bytes_mut()[used..used + take].copy_from_slice(&bytes[..take]);
            state.end += take as u64;
            bytes = &bytes[take..];
            if used + take == buffer_bytes {
                let buffer = state.staging.take().expect("staging is full");
                let start = state.staging_start;
                state.staging_start += buffer_bytes as u64;
                let logical_end = state.end;
                drop(state);
                self.submit(buffer, start, logical_end);
            }
        }
        position
    }

    /// Hands the partially filled staging buffer to the device without syncing. The last
    /// partial block stays in memory as the start of the next staging buffer.
    fn submit_partial(&self) {
        let mut state = self.shared.state.borrow_mut();
        let Some(mut buffer) = state.staging.take() else {
            return;
        };
        let used = (state.end - state.staging_start) as usize;
        if used == 0 {
            state.staging = Some(buffer);
            return;
        }
        let start = state.staging_start;
        let tail = used % IO_ALIGNMENT_BYTES as usize;
        if tail > 0 {
            let block_start = used - tail;
            let mut next = self.shared.file.alloc(IO_ALIGNMENT_BYTES as usize);
            next.as_bytes_mut()[..tail]
                .copy_from_slice(&buffer.as_bytes()[block_start..block_start + tail]);
            state.staging = Some(next);
            state.staging_start = start + block_start as u64;
        } else {
            state.staging_start = state.end;
        }
        // The block padding after the data must read as zeros: recovery treats a zero
        // header as the end of the log.
        let aligned = align_up(used as u64) as usize;
        buffer.as_bytes_mut()[used..aligned].fill(0);
        buffer.trim_to(aligned);
        let logical_end = state.end;
        drop(state);
        self.submit(buffer, start, logical_end);
    }

    /// Starts a background write of `buffer` at `start`. If the previous write covers the
    /// same block, this one waits for it, so the newer block contents land last.
    fn submit(&self, buffer: AlignedBuffer, start: u64, logical_end: u64) {
        let aligned_end = start + buffer.len() as u64;
        let (id, depends_on) = {
            let mut state = self.shared.state.borrow_mut();
            let id = state.next_slot_id;
            state.next_slot_id += 1;
            let depends_on = match state.last_submitted {
                Some((previous_end, previous_id)) if previous_end > start => Some(previous_id),
                _ => None,
            };
            state.last_submitted = Some((aligned_end, id));
            state.submitted_end = logical_end;
            state.slots.push_back(WriteSlot {
                id,
                logical_end,
                done: false,
            });
            (id, depends_on)
        };
        let shared = Rc::clone(&self.shared);
        spawn_detached(async move {
            let before = shared.after_previous().await;
            if let Some(previous) = depends_on {
                shared.wait_slot_done(previous).await;
            }
            let failed = shared.state.borrow().failure.is_some();
            let result = match before {
                Err(error) => Err(io::Error::other(format!(
                    "a write of the segment before failed: {error}"
                ))),
                Ok(()) if failed => Err(io::Error::other("an earlier write failed")),
                Ok(()) => shared.file.write_all_at(buffer, start).await,
            };
            shared.complete(id, result);
        });
    }

    /// Makes this writer (of a segment just started by a roll) issue its writes only
    /// after every write of `previous`, the rolled segment's, is done, and hands
    /// `previous`'s last bytes to the device: a process that dies meanwhile never leaves
    /// this segment's bytes on disk after a hole in the one before, and the roll does not
    /// wait for the device. Call before anything is appended here.
    pub(crate) fn write_after(&self, previous: &SegmentWriter) {
        previous.submit_partial();
        *self.shared.after.borrow_mut() = After::Waiting;
        // One wait for all of this segment's writes; the previous writer (and its file)
        // is let go as soon as it is over.
        let (shared, previous) = (Rc::clone(&self.shared), previous.clone());
        spawn_detached(async move {
            let outcome = match previous.write_out(previous.end()).await {
                Ok(()) => After::Done,
                Err(error) => After::Failed(error.to_string()),
            };
            *shared.after.borrow_mut() = outcome;
            shared.changed.notify_all();
        });
    }

    /// Makes everything appended before the call durable. Concurrent calls share rounds.
    pub(crate) async fn flush(&self) -> io::Result<u64> {
        let target = self.end();
        let mut yielded = false;
        loop {
            let listener = self.shared.changed.listen();
            let another_round_running = {
                let state = self.shared.state.borrow();
                if let Some(failure) = &state.failure {
                    return Err(io::Error::other(failure.clone()));
                }
                if state.durable_end >= target {
                    return Ok(state.durable_end);
                }
                state.flushing
            };
            if another_round_running {
                listener.await;
                continue;
            }
            if !yielded {
                // Before leading a round, let the tasks that are ready (often the ones the
                // previous round just released) append first, so this round covers them.
                yielded = true;
                yield_to_ready_tasks().await;
                continue;
            }
            self.shared.state.borrow_mut().flushing = true;
            // Ends the round even if this future is dropped mid-round (a cancelled task):
            // otherwise every later flush would wait for a round that never finishes.
            let round = RoundGuard(&self.shared);
            let result = self.flush_round().await;
            drop(round);
            result?;
        }
    }

    async fn flush_round(&self) -> io::Result<()> {
        let round_target = self.end();
        self.write_out(round_target).await?;
        if let Err(error) = self.shared.file.fdatasync().await {
            // A failed fdatasync may have dropped the dirty state of the very writes it
            // was to persist, so a later one that succeeds proves nothing: never retry.
            tracing::error!(path = %self.shared.file.path().display(), %error, "fdatasync failed");
            let why = format!(
                "fdatasync of {} failed: {error}",
                self.shared.file.path().display()
            );
            self.shared.fail(&mut self.shared.state.borrow_mut(), why);
            return Err(error);
        }
        let syncs = &self.shared.writing.syncs;
        syncs.set(syncs.get() + 1);
        let mut state = self.shared.state.borrow_mut();
        assert!(
            state.written_end >= round_target,
            "fdatasync before the writes it covers"
        );
        state.durable_end = state.durable_end.max(round_target);
        Ok(())
    }

    /// Submits the staged bytes that no write covers yet, without waiting for the write.
    /// Bounds how long appended data stays only in memory.
    pub(crate) fn submit_staged(&self) {
        let pending = {
            let state = self.shared.state.borrow();
            state.submitted_end < state.end && state.failure.is_none()
        };
        if pending {
            self.submit_partial();
        }
    }

    /// Waits until every byte below `target` is written, submitting the staging buffer if
    /// it holds some of them.
    pub(crate) async fn write_out(&self, target: u64) -> io::Result<()> {
        let submitted_end = self.shared.state.borrow().submitted_end;
        if submitted_end < target {
            self.submit_partial();
        }
        loop {
            let listener = self.shared.changed.listen();
            {
                let state = self.shared.state.borrow();
                if let Some(failure) = &state.failure {
                    return Err(io::Error::other(failure.clone()));
                }
                if state.written_end >= target {
                    return Ok(());
                }
            }
            listener.await;
        }
    }
}

/// Marks the leading flush round finished when dropped, and wakes the flushes waiting on it.
struct RoundGuard<'a>(&'a Shared);

impl Drop for RoundGuard<'_> {
    fn drop(&mut self) {
        self.0.state.borrow_mut().flushing = false;
        self.0.changed.notify_all();
    }
}

/// Where the writes of the segment before stand, for this one's ([`SegmentWriter::write_after`]).
#[derive(Debug)]
enum After {
    /// Written out (or there was none): this segment's writes go ahead.
    Done,
    Waiting,
    Failed(String),
}

impl Shared {
    /// Waits until the segment before has written out everything, or failed.
    async fn after_previous(&self) -> io::Result<()> {
        loop {
            let listener = self.changed.listen();
            match &*self.after.borrow() {
                After::Done => return Ok(()),
                After::Failed(why) => return Err(io::Error::other(why.clone())),
                After::Waiting => {}
            }
            listener.await;
        }
    }

    /// Records this writer's first failure, and the log's if it is its first.
    fn fail(&self, state: &mut State, why: String) {
        if state.failure.is_none() {
            let mut log_failure = self.writing.failure.borrow_mut();
            if log_failure.is_none() {
                *log_failure = Some(why.clone());
            }
            state.failure = Some(why);
        }
    }

    /// Records an `fallocate` to `target`: the reservation grows, or a filesystem without
    /// `fallocate` turns reserving off; any other error is the caller's.
    fn allocated(&self, target: u64, result: io::Result<()>) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        match result {
            Ok(()) => {
                state.allocated_end = state.allocated_end.max(target);
                state.top_up_failed = false;
                Ok(())
            }
            Err(error) if error.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                state.preallocate = false;
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// Borrows `buffers` buffers from the shared window, all or none.
    fn borrow_window(&self, state: &mut State, buffers: usize) -> bool {
        let Some(window) = &self.shared_window else {
            return false;
        };
        let permits: Option<Vec<_>> = (0..buffers)
            .map(|_| window.try_acquire(self.limits.get().buffer_bytes))
            .collect();
        match permits {
            Some(permits) => {
                state.borrowed.extend(permits);
                true
            }
            None => false,
        }
    }

    async fn wait_slot_done(&self, id: u64) {
        loop {
            let listener = self.changed.listen();
            {
                let state = self.state.borrow();
                let pending = state.slots.iter().any(|slot| slot.id == id && !slot.done);
                if !pending || state.failure.is_some() {
                    return;
                }
            }
            listener.await;
        }
    }

    fn complete(&self, id: u64, result: io::Result<()>) {
        let mut state = self.state.borrow_mut();
        if let Err(error) = result {
            if state.failure.is_none() {
                tracing::error!(path = %self.file.path().display(), %error, "segment write failed");
            }
            let why = format!("write to {} failed: {error}", self.file.path().display());
            self.fail(&mut state, why);
        }
        if let Some(slot) = state.slots.iter_mut().find(|slot| slot.id == id) {
            slot.done = true;
        }
        while state.slots.front().is_some_and(|slot| slot.done) {
            let slot = state.slots.pop_front().expect("front exists");
            if state.failure.is_none() {
                assert!(
                    slot.logical_end >= state.written_end,
                    "writes complete out of order"
                );
                state.written_end = slot.logical_end;
            }
        }
        // Give back what the writes in flight no longer need, keeping one for the
        // staging buffer (`reserve` counts it), which a write-out may submit without
        // reserving.
        let beyond_own_window =
            (state.slots.len() + 1).saturating_sub(self.limits.get().in_flight_max);
        state.borrowed.truncate(beyond_own_window);
        assert!(state.durable_end <= state.written_end && state.written_end <= state.end);
        drop(state);
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK_LIMITS: WriterLimits = WriterLimits {
        buffer_bytes: IO_ALIGNMENT_BYTES as usize,
        in_flight_max: 2,
        preallocate_bytes: 0,
        reserve_end_max: u64::MAX,
    };

    /// A writer of one-block buffers and a window of two, over a new file at `path`,
    /// with `shared` bytes of shard window to borrow from.
    async fn block_writer(path: &std::path::Path, shared: usize) -> (DirectFile, SegmentWriter) {
        set_shared_write_window(shared);
        let file = DirectFile::open(path, true).await.unwrap();
        let writer = SegmentWriter::resume(file.clone(), 0, BLOCK_LIMITS, Rc::default())
            .await
            .unwrap();
        (file, writer)
    }

    /// The segment after a rolled one issues no write before the rolled one's writes are
    /// done: when one of those fails, nothing of the later segment reaches its file (a
    /// crash would otherwise leave its bytes after a hole), and its writer fails too.
    #[test]
    fn a_segment_writes_nothing_after_a_failed_write_of_the_one_before() {
        const BLOCK: usize = IO_ALIGNMENT_BYTES as usize;
        let dir = tempfile::tempdir().unwrap();
        let (earlier_path, later_path) = (dir.path().join("0.log"), dir.path().join("1.log"));
        std::fs::write(&earlier_path, b"").unwrap();
        crate::shard::run_for_test(async {
            set_shared_write_window(0);
            let earlier_file = DirectFile::open_read_only(&earlier_path).await.unwrap();
            // The two segments' writers share their log's, as a roll makes them.
            let writing = Rc::new(LogWriting::default());
            let earlier = SegmentWriter::resume(earlier_file, 0, BLOCK_LIMITS, Rc::clone(&writing))
                .await
                .unwrap();
            let later_file = DirectFile::open(&later_path, true).await.unwrap();
            let later = SegmentWriter::resume(later_file, 0, BLOCK_LIMITS, Rc::clone(&writing))
                .await
                .unwrap();
            earlier.reserve(BLOCK).await.unwrap();
            earlier.append(&[1; BLOCK]);
            later.write_after(&earlier);
            later.reserve(BLOCK).await.unwrap();
            later.append(&[2; BLOCK]);
            let error = later.write_out(BLOCK as u64).await.unwrap_err();
            assert!(error.to_string().contains("segment before"), "{error}");
            assert!(earlier.failure().is_some());
            assert!(later.failure().is_some());
            let log_failure = writing.failure().expect("the log is poisoned");
            assert!(
                log_failure.contains("0.log"),
                "the first failure: {log_failure}"
            );
        });
        let later_bytes = std::fs::read(&later_path).unwrap();
        assert!(
            later_bytes.iter().all(|&byte| byte == 0),
            "nothing was written"
        );
    }

    /// How far ahead space is reserved follows the pace of the appends, measured at
    /// most every [`PACE_INTERVAL`], within bounds, and shrinks once they stop.
    #[test]
    fn space_is_reserved_ahead_for_a_quarter_second_of_appends_within_bounds() {
        let writing = LogWriting::default();
        let step = 4 << 20;
        let start = Instant::now();
        let at = |millis| start + Duration::from_millis(millis);
        writing.measure(at(0));
        assert_eq!(writing.reserve_ahead(step), step, "no pace yet: one step");
        writing.appended(20 << 20);
        writing.measure(at(50));
        assert_eq!(writing.reserve_ahead(step), step, "too soon to measure");
        // 20 MiB in 100 ms: 200 MiB/s, half of it after one measurement.
        writing.measure(at(100));
        assert_eq!(writing.reserve_ahead(step), 25 << 20);
        writing.appended(20 << 20);
        writing.measure(at(200));
        assert_eq!(writing.reserve_ahead(step), (150 << 20) / 4);
        // Idle for a second: halved.
        writing.measure(at(1_200));
        assert_eq!(writing.reserve_ahead(step), (75 << 20) / 4);
        writing.appended(10 << 30);
        writing.measure(at(1_300));
        assert_eq!(writing.reserve_ahead(step), RESERVE_AHEAD_MAX);
        assert_eq!(
            writing.reserve_ahead(128 << 20),
            128 << 20,
            "never below a step"
        );
    }

    #[test]
    fn writes_beyond_the_own_window_borrow_from_the_shard_and_give_it_back() {
        const BLOCK: usize = IO_ALIGNMENT_BYTES as usize;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        crate::shard::run_for_test(async {
            let (file, writer) = block_writer(&path, 4 * BLOCK).await;
            // Nothing here yields, so no write runs: each append adds one in flight.
            // Its own window (2, one kept for the next staging buffer) holds one;
            // the shared window lends the next four.
            for fill in 1..=5u8 {
                writer.reserve(BLOCK).await.unwrap();
                writer.append(&[fill; BLOCK]);
                let lent = usize::from(fill - 1) * BLOCK;
                assert_eq!(shared_write_window_available(), Some(4 * BLOCK - lent));
            }
            // The sixth waits for the device, then proceeds.
            writer.reserve(BLOCK).await.unwrap();
            writer.append(&[6; BLOCK]);
            writer.flush().await.unwrap();
            assert_eq!(
                shared_write_window_available(),
                Some(4 * BLOCK),
                "all given back"
            );
            let bytes = file.read_at(0, 6 * BLOCK).await.unwrap();
            for (index, block) in bytes.chunks(BLOCK).enumerate() {
                assert!(block.iter().all(|&byte| usize::from(byte) == index + 1));
            }
            set_shared_write_window(0);
            assert_eq!(shared_write_window_available(), None);
            file.close().await.unwrap();
        });
    }

    /// An append larger than the writer's whole window (its topic's batch limit raised
    /// after the writer got its limits), with nothing in flight to wait for and nothing
    /// to borrow, goes ahead instead of waiting for good.
    #[test]
    fn an_append_larger_than_the_window_with_nothing_in_flight_goes_ahead() {
        const BLOCK: usize = IO_ALIGNMENT_BYTES as usize;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        crate::shard::run_for_test(async {
            let (file, writer) = block_writer(&path, 0).await;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            let reserved = crate::shard::with_deadline(writer.reserve(4 * BLOCK), deadline).await;
            reserved.expect("not left waiting").unwrap();
            writer.append(&[7; 4 * BLOCK]);
            writer.flush().await.unwrap();
            let bytes = file.read_at(0, 4 * BLOCK).await.unwrap();
            assert!(bytes.iter().all(|&byte| byte == 7));
            file.close().await.unwrap();
        });
    }
}
