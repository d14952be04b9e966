//! One segment: a `.log` file of consecutive batches starting at `base_offset`, with its
//! sparse index and, while it is the active segment, its writer.
//!
//! Lifecycle: created (or reopened) as the active segment with a [`SegmentWriter`];
//! sealed when the log rolls (flushed, truncated to its logical size, index written);
//! deleted whole by retention or truncation. Only the owning shard touches it.

use std::cell::{Cell, Ref, RefCell, RefMut};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::file::{self, DirectFile, ReadBytes};

/// How much of a deleted segment's file is freed at a time.
pub(crate) const SHRINK_STEP_BYTES: u64 = 8 << 20;

/// The pause between two shrink steps when one retention pass deleted at most
/// [`SHRINK_PACED_BYTES`]: 128 MiB takes about 0.3 s to free.
pub(crate) const SHRINK_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Up to this much deleted by one pass is freed at the full [`SHRINK_PAUSE`] by default
/// ([`DEFAULT_FREE_WITHIN`]).
pub(crate) const SHRINK_PACED_BYTES: u64 = 128 << 20;

/// How long freeing a pass's deletion takes by default: 128 MiB at [`SHRINK_PAUSE`].
pub(crate) const DEFAULT_FREE_WITHIN: std::time::Duration =
    SHRINK_PAUSE.saturating_mul((SHRINK_PACED_BYTES / SHRINK_STEP_BYTES) as u32);

/// The pause between shrink steps that frees `deleted_bytes` within `free_within`, and
/// never slower than [`SHRINK_PAUSE`] per step. A pass that deleted more frees it with
/// shorter pauses: with a fixed pause a log freed at most 400 MB/s, less than one
/// partition can take in, and retention fell behind until the disk was full (1.6 GB/s
/// into eight partitions, `docs/BENCHMARKS.md`). Spreading the freeing over the time
/// until the next pass, rather than doing it at once, keeps its cost (a core's share at
/// that rate) from stalling the shard in bursts.
pub(crate) fn shrink_pause(
    deleted_bytes: u64,
    free_within: std::time::Duration,
) -> std::time::Duration {
    let steps = deleted_bytes.div_ceil(SHRINK_STEP_BYTES).max(1);
    (free_within / u32::try_from(steps).unwrap_or(u32::MAX)).min(SHRINK_PAUSE)
}
use super::index::{SegmentIndex, SegmentSummary};
use super::writer::{LogWriting, SegmentWriter, WriterLimits};

/// File name of a segment's `extension` file: the base offset in 20 digits.
pub(crate) fn segment_path(dir: &Path, base_offset: u64, extension: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}.{extension}"))
}

/// Mutable bookkeeping of a segment.
#[derive(Debug, Clone)]
pub(crate) struct SegmentState {
    /// Logical size: bytes of valid batches (the file may be larger).
    pub size: u64,
    pub next_offset: u64,
    pub max_timestamp: i64,
    pub index: SegmentIndex,
}

#[derive(Debug)]
pub(crate) struct Segment {
    pub base_offset: u64,
    pub file: DirectFile,
    dir: PathBuf,
    pub created_ms: i64,
    state: RefCell<SegmentState>,
    writer: RefCell<Option<SegmentWriter>>,
    /// Retention removed it: its file is shrinking or gone.
    deleted: Cell<bool>,
}

impl Segment {
    /// Creates an empty segment file.
    pub(crate) async fn create(dir: &Path, base_offset: u64, created_ms: i64) -> io::Result<Self> {
        let path = segment_path(dir, base_offset, "log");
        let file = DirectFile::open(&path, true).await?;
        file.truncate(0).await?;
        Ok(Self::empty(dir, base_offset, file, created_ms))
    }

    /// An empty segment in an already open, empty file (a spare the log created ahead;
    /// its name is the log's business).
    pub(crate) fn empty(dir: &Path, base_offset: u64, file: DirectFile, created_ms: i64) -> Self {
        Self::new(
            dir,
            base_offset,
            file,
            created_ms,
            SegmentState {
                size: 0,
                next_offset: base_offset,
                max_timestamp: i64::MIN,
                index: SegmentIndex::new(),
            },
        )
    }

    pub(crate) fn new(
        dir: &Path,
        base_offset: u64,
        file: DirectFile,
        created_ms: i64,
        state: SegmentState,
    ) -> Self {
        Self {
            base_offset,
            file,
            dir: dir.to_path_buf(),
            created_ms,
            state: RefCell::new(state),
            writer: RefCell::new(None),
            deleted: Cell::new(false),
        }
    }

    /// Whether retention removed this segment (a read still holding it may find its file
    /// shorter than its log).
    pub(crate) fn is_deleted(&self) -> bool {
        self.deleted.get()
    }

    /// Opens an existing segment file.
    pub(crate) async fn open_file(dir: &Path, base_offset: u64) -> io::Result<DirectFile> {
        DirectFile::open(&segment_path(dir, base_offset, "log"), false).await
    }

    /// Loads the persisted index if it exists and still matches the segment file.
    pub(crate) async fn load_index(
        dir: &Path,
        base_offset: u64,
        file_size: u64,
    ) -> io::Result<Result<(SegmentIndex, SegmentSummary), String>> {
        let offsets = file::read_small_file(&segment_path(dir, base_offset, "index")).await?;
        let times = file::read_small_file(&segment_path(dir, base_offset, "timeindex")).await?;
        let (Some(offsets), Some(times)) = (offsets, times) else {
            return Ok(Err("index file missing".into()));
        };
        match SegmentIndex::decode(&offsets, &times) {
            Err(reason) => Ok(Err(reason.into())),
            Ok((_, summary)) if summary.size_bytes > file_size => Ok(Err(
                "index describes more data than the segment holds".into(),
            )),
            Ok(loaded) => Ok(Ok(loaded)),
        }
    }

    pub(crate) fn state(&self) -> Ref<'_, SegmentState> {
        self.state.borrow()
    }

    pub(crate) fn state_mut(&self) -> RefMut<'_, SegmentState> {
        self.state.borrow_mut()
    }

    pub(crate) fn size(&self) -> u64 {
        self.state.borrow().size
    }

    pub(crate) fn next_offset(&self) -> u64 {
        self.state.borrow().next_offset
    }

    /// The segment file's name (not the handle's: a segment that began as a spare file
    /// was opened under the spare's name).
    pub(crate) fn path(&self) -> PathBuf {
        segment_path(&self.dir, self.base_offset, "log")
    }

    pub(crate) fn writer(&self) -> Option<SegmentWriter> {
        self.writer.borrow().clone()
    }

    /// Makes this the active segment, appending after its current logical size.
    pub(crate) async fn activate(
        &self,
        limits: WriterLimits,
        writing: Rc<LogWriting>,
    ) -> io::Result<SegmentWriter> {
        if let Some(writer) = self.writer() {
            return Ok(writer);
        }
        let writer = SegmentWriter::resume(self.file.clone(), self.size(), limits, writing).await?;
        *self.writer.borrow_mut() = Some(writer.clone());
        Ok(writer)
    }

    /// Ends the segment's active life: flush, drop preallocated space, write the index.
    /// Idempotent. The index files' names are durable only once the caller syncs the
    /// directory, which every caller does before `partition.meta` moves the checkpoint
    /// past this segment (a seal is followed by a rename or a new segment that needs
    /// the sync anyway: one sync for all).
    pub(crate) async fn seal(&self) -> io::Result<()> {
        let Some(writer) = self.writer() else {
            return Ok(());
        };
        writer.flush().await?;
        writer.retire().await;
        self.seal_files(false).await?;
        *self.writer.borrow_mut() = None;
        Ok(())
    }

    /// Puts the files in their sealed state: index files written, reserved space dropped,
    /// synced, and the directory synced. Recovery runs it on a segment a crash left
    /// unsealed (one with no writer and later segments after it).
    pub(crate) async fn finish_files(&self) -> io::Result<()> {
        self.seal_files(true).await
    }

    async fn seal_files(&self, sync_names: bool) -> io::Result<()> {
        // The index first: if the disk is full this fails while the segment still has its
        // reserved space, so nothing changes.
        self.write_index().await?;
        self.file.truncate(self.size()).await?;
        self.file.fdatasync().await?;
        if sync_names {
            file::sync_dir(&self.dir).await?;
        }
        Ok(())
    }

    /// Drops the writer without flushing (used before truncation, after a flush), once no
    /// background `fallocate` can extend the file any more.
    pub(crate) async fn deactivate(&self) {
        let writer = self.writer.borrow_mut().take();
        if let Some(writer) = writer {
            writer.retire().await;
        }
    }

    /// Writes the `.index` and `.timeindex` files for the current state, durably (one
    /// directory sync for both).
    pub(crate) async fn persist_index(&self) -> io::Result<()> {
        self.write_index().await?;
        file::sync_dir(&self.dir).await
    }

    /// Writes the index files; their names are durable at the next directory sync.
    async fn write_index(&self) -> io::Result<()> {
        let (offsets, times) = {
            let state = self.state.borrow();
            state.index.encode(SegmentSummary {
                size_bytes: state.size,
                next_offset: state.next_offset,
                max_timestamp: state.max_timestamp,
            })
        };
        file::write_file_replacing(
            &segment_path(&self.dir, self.base_offset, "index"),
            &offsets,
        )
        .await?;
        file::write_file_replacing(
            &segment_path(&self.dir, self.base_offset, "timeindex"),
            &times,
        )
        .await
    }

    /// Removes the index files (they no longer describe the segment).
    pub(crate) async fn remove_index(&self) -> io::Result<()> {
        file::remove_file(&segment_path(&self.dir, self.base_offset, "index")).await?;
        file::remove_file(&segment_path(&self.dir, self.base_offset, "timeindex")).await
    }

    /// Removes all the segment's files (names only: the open handle keeps the blocks
    /// until it is dropped, or until [`Segment::release_space`] frees them).
    pub(crate) async fn remove_files(&self) -> io::Result<()> {
        self.deleted.set(true);
        self.remove_index().await?;
        file::remove_file(&segment_path(&self.dir, self.base_offset, "log")).await
    }

    /// Frees a removed segment's blocks through its open handle, in steps of
    /// [`SHRINK_STEP_BYTES`], `pause` apart ([`shrink_pause`]): freeing a whole segment's
    /// blocks in one go (when the last handle closes) made ext4 hold up every other
    /// partition's writes for up to a second (`docs/BENCHMARKS.md`). The file has no name
    /// any more, so a crash meanwhile leaves nothing behind.
    pub(crate) async fn release_space(&self, pause: std::time::Duration) -> io::Result<()> {
        debug_assert!(self.is_deleted(), "only removed segments shrink");
        // Its logical size: a sealed segment's file was truncated to it. (The file has
        // no name, so it is not asked: that would go by path.)
        let mut size = self.size();
        while size > SHRINK_STEP_BYTES {
            size -= SHRINK_STEP_BYTES;
            self.file.truncate(size).await?;
            if pause.is_zero() {
                crate::shard::yield_now().await;
            } else {
                crate::shard::sleep(pause).await;
            }
        }
        self.file.truncate(0).await
    }

    /// Reads `len` bytes at `position`, first writing out any of them still in memory.
    pub(crate) async fn read(&self, position: u64, len: usize) -> io::Result<ReadBytes> {
        let end = position + len as u64;
        if let Some(writer) = self.writer() {
            if writer.written_end() < end {
                writer.write_out(end).await?;
            }
        }
        self.file.read_at(position, len).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_that_deleted_more_frees_it_with_shorter_pauses_in_the_same_time() {
        let mib = 1u64 << 20;
        let default = DEFAULT_FREE_WITHIN;
        assert_eq!(default, SHRINK_PAUSE * 16);
        assert_eq!(shrink_pause(64 * mib, default), SHRINK_PAUSE);
        assert_eq!(shrink_pause(SHRINK_PACED_BYTES, default), SHRINK_PAUSE);
        assert_eq!(shrink_pause(1024 * mib, default), SHRINK_PAUSE / 8);
        // Steps times pause: the time one pass's deletion takes to free, whatever its size.
        let pacing = |deleted: u64, within| {
            shrink_pause(deleted, within) * (deleted / SHRINK_STEP_BYTES) as u32
        };
        assert_eq!(pacing(128 * mib, default), pacing(8192 * mib, default));
        let spread = std::time::Duration::from_millis(2_500);
        let spread_over = pacing(8192 * mib, spread);
        assert!(
            spread - spread_over < std::time::Duration::from_micros(1),
            "{spread_over:?}"
        );
        // Never slower than a step per SHRINK_PAUSE, however long it may take.
        assert_eq!(shrink_pause(8 * mib, spread), SHRINK_PAUSE);
        assert_eq!(shrink_pause(0, spread), SHRINK_PAUSE);
    }
}
