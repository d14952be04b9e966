//! The per-partition log: an ordered set of segments, of which the last is active.
//!
//! Ownership: a [`Log`] belongs to the shard that owns its partition; it is `!Send` and
//! shares the shard's [`TailCache`]. Appends are serialised by an async lock (offsets are
//! assigned in append order); reads and flushes run concurrently with appends.
//!
//! Durability contract (see `writer.rs` for the byte-level meaning):
//! - [`Log::append`] returns once the batch is part of the log: offsets assigned, bytes
//!   staged for writing, visible to readers. It never waits for `fdatasync`.
//! - [`Log::flush`] returns once every batch appended before the call is on disk and
//!   covered by `fdatasync`; it returns the offset below which everything is durable.
//!   Concurrent flushes share one `fdatasync` (group commit).
//! - After a crash, [`Log::open`] restores every flushed batch and cuts the log at the
//!   first batch that fails validation; nothing that failed validation is ever served.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use flumen_protocol::record::{
    patch_base_offset, patch_partition_leader_epoch, BatchHeader, BatchView, BuiltBatch,
};

use super::cache::{CacheKey, CachedBatch, TailCache};
use super::config::{LogConfig, IO_ALIGNMENT_BYTES};
use super::error::context;
use super::file::{self, ReadBytes};
use super::meta::{Checkpoint, EpochEntry, PartitionMeta};
use super::readahead::{ReadAhead, Source};
use super::recovery::{list_segments, read_meta, recover};
use super::segment::{segment_path, shrink_pause, Segment, SegmentState, DEFAULT_FREE_WITHIN};
use super::writer::{LogWriting, WriterLimits};
use super::{Result, StorageError};
use crate::shard::{spawn_detached, Clock, LocalMutex};

const META_FILE: &str = "partition.meta";
/// Bytes read to learn the length of the first batch of a read.
const HEADER_PEEK_BYTES: usize = 4096;
/// Largest single direct read serving one `read` call.
const READ_BYTES_MAX: usize = 16 << 20;

/// Where an appended batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the batch's first record.
    pub base_offset: u64,
    /// Offset of the batch's last record.
    pub last_offset: u64,
}

/// A batch that passed full validation (header, CRC, padding, records) and may be
/// appended without checking it again.
#[derive(Debug)]
pub struct ValidatedBatch {
    bytes: BytesMut,
    header: BatchHeader,
}

impl ValidatedBatch {
    /// Validates `bytes`: exactly one padded batch.
    pub fn new(bytes: BytesMut) -> Result<Self> {
        let header = *BatchView::validate(&bytes)?.header();
        Ok(Self { bytes, header })
    }

    /// The batch header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// Length including padding.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: a batch has a header.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// A batch returned by a read: validated, with offsets assigned, read in place.
#[derive(Debug, Clone)]
pub struct StoredBatch {
    header: BatchHeader,
    bytes: StoredBytes,
}

#[derive(Debug, Clone)]
enum StoredBytes {
    Memory(Bytes),
    Disk(ReadBytes),
}

impl StoredBatch {
    /// The batch header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The batch bytes, padding included, exactly as appended.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.bytes {
            StoredBytes::Memory(bytes) => bytes,
            StoredBytes::Disk(bytes) => bytes,
        }
    }

    /// Whether this batch came from the tail cache.
    pub fn from_cache(&self) -> bool {
        matches!(self.bytes, StoredBytes::Memory(_))
    }
}

/// What recovery found when the log was opened.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Segments in the log after recovery.
    pub segments: usize,
    /// Batches checked by scanning.
    pub batches_scanned: u64,
    /// Index files rebuilt because they were missing or damaged.
    pub indexes_rebuilt: usize,
    /// Non-zero bytes discarded because they did not form valid batches.
    pub bytes_cut: u64,
    /// One line per cut: file, position, reason.
    pub cuts: Vec<String>,
    /// First offset in the log.
    pub log_start_offset: u64,
    /// Offset the next batch will get.
    pub next_offset: u64,
    /// Leader epochs found in scanned batch headers; the history when `partition.meta`
    /// was lost.
    pub epochs_seen: Vec<EpochEntry>,
}

/// What one retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Segments deleted.
    pub segments_deleted: usize,
    /// Bytes deleted.
    pub bytes_deleted: u64,
    /// Of those, the bytes of the segment kept as the next roll's spare (its file is
    /// overwritten rather than freed; `LogConfig::recycle_segments`).
    pub bytes_recycled: u64,
    /// The log start offset afterwards.
    pub log_start_offset: u64,
}

/// The outcome of reading one segment.
struct SegmentRead {
    batches: Vec<StoredBatch>,
    /// Position after the last batch examined.
    end_position: u64,
    /// How much to read ahead: the span of this read, at least one read window.
    window_bytes: usize,
}

/// The state recovery hands to [`Log::assemble`].
struct Recovered {
    segments: BTreeMap<u64, Rc<Segment>>,
    epochs: Vec<EpochEntry>,
    checkpoint: Checkpoint,
}

/// A segment a roll moved away from whose seal (write-out, `fdatasync`, index files,
/// truncation of its reserved space) has not run yet.
struct PendingSeal {
    segment: Rc<Segment>,
    /// The checkpoint once it is sealed: the start of the segment after it.
    checkpoint: Checkpoint,
    /// The segment after it, when it is the spare still under [`SPARE_FILE`]: the seal
    /// gives its file the segment's name.
    names_spare: Option<Rc<Segment>>,
    /// The directory entry of the segment after it is durable: always for a spare
    /// (synced when it was made or recycled); for a file the roll created, once a flush
    /// or the seal has synced the directory.
    next_named_durably: bool,
}

/// The file a log creates ahead of a roll, in the background, so that the roll takes it
/// instead of creating a file while appends wait (15 to 40 ms on ext4 under load,
/// measured). It keeps this name until the seal of the segment before it renames it.
pub const SPARE_FILE: &str = "next.log.spare";

/// How long a log waits after a failed spare creation before it tries again, in ms.
pub const SPARE_RETRY_MS: i64 = 10_000;

/// One partition's log. See the module documentation.
pub struct Log {
    dir: PathBuf,
    config: RefCell<LogConfig>,
    clock: Rc<dyn Clock>,
    cache: Rc<TailCache>,
    cache_key: CacheKey,
    append_lock: LocalMutex,
    /// Serialises `partition.meta` writes, some of which (after retention) happen
    /// without the append lock.
    meta_lock: LocalMutex,
    /// One retention pass at a time (its file removals run without the append lock).
    retention_lock: LocalMutex,
    /// The segment the last roll left behind, until it is sealed.
    pending_seal: RefCell<Option<PendingSeal>>,
    /// One seal at a time.
    seal_lock: LocalMutex,
    /// The spare file the next roll takes ([`Log::prepare_spare`]).
    spare: RefCell<Option<file::DirectFile>>,
    /// A spare is being created.
    preparing_spare: Cell<bool>,
    /// The spare is a recycled segment (not an empty file made ahead of a roll).
    spare_recycled: Cell<bool>,
    /// A roll took the spare and its file still has the spare's name (until the seal
    /// renames it): no new spare may be created under that name meanwhile.
    spare_taken: Cell<bool>,
    /// After a failed spare creation (a full disk), none is tried before this log-clock
    /// time.
    spare_retry_ms: Cell<i64>,
    /// What the writers of its segments share: sync count, append pace.
    writing: Rc<LogWriting>,
    read_ahead: ReadAhead,
    state: RefCell<LogState>,
}

struct LogState {
    segments: BTreeMap<u64, Rc<Segment>>,
    log_start_offset: u64,
    next_offset: u64,
    durable_offset: u64,
    epochs: Vec<EpochEntry>,
    checkpoint: Checkpoint,
    closed: bool,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.borrow();
        formatter
            .debug_struct("Log")
            .field("dir", &self.dir)
            .field("log_start_offset", &state.log_start_offset)
            .field("next_offset", &state.next_offset)
            .field("segments", &state.segments.len())
            .finish()
    }
}

impl Log {
    /// Opens the log in `dir` (created if missing), running recovery.
    pub async fn open(
        dir: &Path,
        config: LogConfig,
        clock: Rc<dyn Clock>,
        cache: Rc<TailCache>,
    ) -> Result<(Self, RecoveryReport)> {
        config.validate()?;
        std::fs::create_dir_all(dir).map_err(|error| StorageError::io("creating", dir, error))?;
        adopt_spare(dir).await?;
        let bases = list_segments(dir)?;
        let meta = read_meta(dir).await?;
        let now = clock.now_ms();
        let (segments, report, checkpoint) =
            recover(dir, &config, &bases, meta.as_ref(), now).await?;
        let recovered = Recovered {
            segments,
            epochs: match meta {
                Some(meta) => meta.epochs,
                None => report.epochs_seen.clone(),
            },
            checkpoint,
        };
        let log = Self::assemble(dir, config, clock, cache, recovered);
        let report = log.finish_open(report).await?;
        Ok((log, report))
    }

    fn assemble(
        dir: &Path,
        config: LogConfig,
        clock: Rc<dyn Clock>,
        cache: Rc<TailCache>,
        recovered: Recovered,
    ) -> Self {
        let Recovered {
            segments,
            mut epochs,
            checkpoint,
        } = recovered;
        let log_start_offset = *segments.keys().next().expect("at least one segment");
        let next_offset = segments
            .values()
            .next_back()
            .expect("one segment")
            .next_offset();
        epochs.retain(|entry| entry.start_offset <= next_offset);
        let cache_key = cache.register();
        Self {
            dir: dir.to_path_buf(),
            config: RefCell::new(config),
            clock,
            cache,
            cache_key,
            append_lock: LocalMutex::new(),
            meta_lock: LocalMutex::new(),
            retention_lock: LocalMutex::new(),
            pending_seal: RefCell::new(None),
            seal_lock: LocalMutex::new(),
            spare: RefCell::new(None),
            preparing_spare: Cell::new(false),
            spare_recycled: Cell::new(false),
            spare_taken: Cell::new(false),
            spare_retry_ms: Cell::new(i64::MIN),
            writing: Rc::default(),
            read_ahead: ReadAhead::default(),
            state: RefCell::new(LogState {
                segments,
                log_start_offset,
                next_offset,
                durable_offset: next_offset,
                epochs,
                checkpoint,
                closed: false,
            }),
        }
    }

    /// Activates the last segment, makes the recovered state durable and records it.
    async fn finish_open(&self, mut report: RecoveryReport) -> Result<RecoveryReport> {
        let active = self.active_segment();
        let writer = active
            .activate(self.writer_limits(), Rc::clone(&self.writing))
            .await
            .map_err(|error| StorageError::io("activating", active.path(), error))?;
        active
            .file
            .fdatasync()
            .await
            .map_err(|error| StorageError::io("syncing", active.path(), error))?;
        debug_assert_eq!(writer.end(), active.size());
        let checkpoint = Checkpoint {
            segment_base: active.base_offset,
            position: active.size(),
            next_offset: active.next_offset(),
            max_timestamp: active.state().max_timestamp,
        };
        self.state.borrow_mut().checkpoint = checkpoint;
        // The checkpoint segment's index must describe exactly the checkpoint position, so
        // the next recovery can trust it and scan only what follows.
        active
            .persist_index()
            .await
            .map_err(|error| StorageError::io("writing index of", active.path(), error))?;
        self.write_meta().await?;
        let state = self.state.borrow();
        report.segments = state.segments.len();
        report.log_start_offset = state.log_start_offset;
        report.next_offset = state.next_offset;
        if report.bytes_cut > 0 {
            tracing::warn!(dir = %self.dir.display(), bytes_cut = report.bytes_cut,
                cuts = ?report.cuts, "recovery cut invalid data");
        }
        Ok(report)
    }

    fn writer_limits(&self) -> WriterLimits {
        WriterLimits {
            buffer_bytes: self.config().write_buffer_bytes,
            in_flight_max: self.config().writes_in_flight_max,
            preallocate_bytes: self.config().preallocate_bytes,
            reserve_end_max: super::writer::align_up(self.config().segment_bytes_max),
        }
    }

    fn active_segment(&self) -> Rc<Segment> {
        let state = self.state.borrow();
        Rc::clone(
            state
                .segments
                .values()
                .next_back()
                .expect("a log has a segment"),
        )
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration in force.
    pub fn config(&self) -> std::cell::Ref<'_, LogConfig> {
        self.config.borrow()
    }

    /// Replaces the configuration (a topic's configs changed). Limits apply from the next
    /// append, roll or retention pass; existing segments are not rewritten.
    pub fn reconfigure(&self, config: LogConfig) -> Result<()> {
        config.validate()?;
        *self.config.borrow_mut() = config;
        if let Some(writer) = self.active_segment().writer() {
            writer.set_limits(self.writer_limits());
        }
        Ok(())
    }

    /// First offset still in the log.
    pub fn log_start_offset(&self) -> u64 {
        self.state.borrow().log_start_offset
    }

    /// Offset the next appended record will get.
    pub fn next_offset(&self) -> u64 {
        self.state.borrow().next_offset
    }

    /// Every offset below this is known to be durable.
    pub fn durable_offset(&self) -> u64 {
        self.state.borrow().durable_offset
    }

    /// Total logical bytes in all segments.
    pub fn size_bytes(&self) -> u64 {
        self.state
            .borrow()
            .segments
            .values()
            .map(|segment| segment.size())
            .sum()
    }

    /// `fdatasync` calls made for appended data since the log was opened; with group
    /// commit this grows slower than the number of flush calls.
    pub fn fdatasync_count(&self) -> u64 {
        self.writing.syncs.get()
    }

    /// Tail cache counters of this log's shard.
    pub fn cache_stats(&self) -> crate::storage::CacheStats {
        self.cache.stats()
    }

    /// Base offset of the active (last) segment.
    pub fn active_segment_base(&self) -> u64 {
        self.active_segment().base_offset
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.state.borrow().segments.len()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_base_offsets(&self) -> Vec<u64> {
        self.state.borrow().segments.keys().copied().collect()
    }

    /// Whether [`Log::close`] ran (nothing may write into its directory any more).
    pub fn is_closed(&self) -> bool {
        self.state.borrow().closed
    }

    fn check_open(&self) -> Result<()> {
        if self.state.borrow().closed {
            return Err(StorageError::Closed(self.dir.clone()));
        }
        Ok(())
    }

    /// A segment writer's failed `operation`: the writer's first failure if it is poisoned
    /// (a later error only repeats it), else this error.
    fn writer_error(
        &self,
        writer: &super::writer::SegmentWriter,
        operation: &'static str,
        segment: &Segment,
        error: std::io::Error,
    ) -> StorageError {
        match writer.failure() {
            Some(cause) => self.poisoned(cause),
            None => StorageError::io(operation, segment.path(), error),
        }
    }

    fn poisoned(&self, cause: String) -> StorageError {
        StorageError::Poisoned {
            path: self.dir.clone(),
            cause,
        }
    }

    /// Validates `batch` (header, CRC, records), assigns its offsets and leader epoch, and
    /// appends it. Invalid or oversized batches are rejected with nothing written; a full
    /// disk is reported before anything changes.
    pub async fn append(&self, batch: BytesMut) -> Result<AppendInfo> {
        self.append_validated(ValidatedBatch::new(batch)?).await
    }

    /// Appends a batch validated by [`ValidatedBatch::new`] (callers that validate a group
    /// of batches before appending any of them). Oversized batches are rejected.
    pub async fn append_validated(&self, batch: ValidatedBatch) -> Result<AppendInfo> {
        let ValidatedBatch {
            bytes: mut batch,
            header,
        } = batch;
        if batch.len() > self.config().batch_bytes_max {
            return Err(StorageError::BatchTooLarge {
                length_bytes: batch.len(),
                limit_bytes: self.config().batch_bytes_max,
            });
        }
        let _guard = self.append_lock.lock().await;
        self.check_open()?;
        let segment = self
            .segment_for_append(batch.len(), header.record_count)
            .await?;
        let writer = segment.writer().expect("the active segment has a writer");
        // A failed write or sync of any segment (the active one, or the one the last
        // roll left, not sealed yet) poisons the log: acknowledging more appends would
        // hide that earlier ones may not be on disk. The writers record it in the
        // log's shared `LogWriting`.
        if let Some(cause) = self.writing.failure() {
            return Err(self.poisoned(cause));
        }
        writer
            .reserve(batch.len())
            .await
            .map_err(|error| self.writer_error(&writer, "reserving space in", &segment, error))?;
        // From here to the end nothing awaits: offset assignment and staging are atomic.
        let (base_offset, epoch) = {
            let state = self.state.borrow();
            (
                state.next_offset,
                state.epochs.last().map_or(0, |entry| entry.epoch),
            )
        };
        patch_base_offset(&mut batch, base_offset);
        patch_partition_leader_epoch(&mut batch, epoch);
        let position = writer.append(&batch);
        let padded = batch.len() as u64;
        let last_offset = base_offset + u64::from(header.last_offset_delta);
        {
            let mut segment_state = segment.state_mut();
            assert_eq!(
                segment_state.size, position,
                "segment size tracks the writer"
            );
            segment_state.index.on_append(
                (base_offset - segment.base_offset) as u32,
                position,
                padded,
                header.max_timestamp,
                self.config().index_interval_bytes,
            );
            segment_state.size += padded;
            segment_state.next_offset = last_offset + 1;
            segment_state.max_timestamp = segment_state.max_timestamp.max(header.max_timestamp);
        }
        self.state.borrow_mut().next_offset = last_offset + 1;
        self.cache.insert(
            self.cache_key,
            CachedBatch {
                base_offset,
                next_offset: last_offset + 1,
                bytes: batch.freeze(),
            },
        );
        Ok(AppendInfo {
            base_offset,
            last_offset,
        })
    }

    /// The active segment, rolled first if this batch must not go into the current one.
    async fn segment_for_append(&self, len: usize, record_count: u32) -> Result<Rc<Segment>> {
        let active = self.active_segment();
        let now = self.clock.now_ms();
        let (size, next_offset) = (active.size(), active.next_offset());
        let too_big = size > 0 && size + len as u64 > self.config().segment_bytes_max;
        let too_old = size > 0
            && self
                .config()
                .segment_age_ms_max
                .is_some_and(|age| now - active.created_ms >= age);
        let offsets_full =
            next_offset - active.base_offset + u64::from(record_count) > u64::from(u32::MAX);
        if too_big || too_old || offsets_full || active.writer().is_none() {
            return self.roll_locked(now).await;
        }
        Ok(active)
    }

    /// Seals the active segment and starts a new one at the next offset. Forces a roll even
    /// if the active segment is not full (it must not be empty).
    pub async fn roll(&self) -> Result<()> {
        let _guard = self.append_lock.lock().await;
        self.check_open()?;
        if self.active_segment().size() > 0 {
            self.roll_locked(self.clock.now_ms()).await?;
            self.finish_pending_seal().await?;
        }
        Ok(())
    }

    async fn roll_locked(&self, now: i64) -> Result<Rc<Segment>> {
        let active = self.active_segment();
        if active.writer().is_some() && active.size() == 0 {
            return Ok(active);
        }
        // At most one segment waits for its seal: a roll before the previous seal
        // finished (a segment filled faster than a sync) waits for it.
        self.finish_pending_seal().await?;
        if let (Some(writer), true) = (active.writer(), active.size() > 0) {
            return self.roll_deferring_seal(active, writer, now).await;
        }
        active
            .seal()
            .await
            .map_err(|error| StorageError::io("sealing", active.path(), error))?;
        let next_offset = self.next_offset();
        let segment = if active.size() == 0 {
            self.activate(&active).await?;
            active
        } else {
            self.start_segment(next_offset, now).await?
        };
        file::sync_dir(&self.dir)
            .await
            .map_err(|error| StorageError::io("syncing", &self.dir, error))?;
        {
            let mut state = self.state.borrow_mut();
            state
                .segments
                .insert(segment.base_offset, Rc::clone(&segment));
            state.checkpoint = Checkpoint {
                segment_base: segment.base_offset,
                position: 0,
                next_offset,
                max_timestamp: i64::MIN,
            };
            state.durable_offset = state.durable_offset.max(next_offset);
        }
        self.write_meta().await?;
        Ok(segment)
    }

    /// The usual roll, of a full active segment: starts the next segment at once and
    /// leaves the sealed segment's syncs to [`Log::finish_pending_seal`], so appends never
    /// wait on them (on a disk with a large volatile cache, syncing a segment after 128 MiB
    /// of unsynced writes held appends for up to two seconds). Until the seal, the
    /// checkpoint and the durable offset stay where they were; a flush syncs its data.
    async fn roll_deferring_seal(
        &self,
        active: Rc<Segment>,
        writer: super::writer::SegmentWriter,
        now: i64,
    ) -> Result<Rc<Segment>> {
        if let Some(cause) = writer.failure() {
            return Err(self.poisoned(cause));
        }
        let next_offset = self.next_offset();
        // Not while retention is turning a deleted segment into the spare: its rename
        // may already have replaced this spare's name, and the seal renames by name.
        let spare = match self.preparing_spare.get() {
            true => None,
            false => self.spare.borrow_mut().take(),
        };
        let renames_spare = spare.is_some();
        let segment = match spare {
            Some(file) => {
                // From here until the seal renames it, the file holds the spare's name.
                self.spare_taken.set(true);
                let segment = Rc::new(Segment::empty(&self.dir, next_offset, file, now));
                if let Err(error) = self.activate(&segment).await {
                    // Unused: the next spare may reuse the name (and the file).
                    self.spare_taken.set(false);
                    return Err(error);
                }
                segment
            }
            None => self.start_segment(next_offset, now).await?,
        };
        // The old segment's bytes are on the device (not synced) before any of the next
        // segment's: a process crash then never leaves a later segment after a hole. The
        // next segment's writes wait for them, not the roll, so appends go on while the
        // device is slow.
        segment
            .writer()
            .expect("a started segment has a writer")
            .write_after(&writer);
        self.state
            .borrow_mut()
            .segments
            .insert(segment.base_offset, Rc::clone(&segment));
        *self.pending_seal.borrow_mut() = Some(PendingSeal {
            segment: active,
            checkpoint: Checkpoint {
                segment_base: segment.base_offset,
                position: 0,
                next_offset,
                max_timestamp: i64::MIN,
            },
            names_spare: renames_spare.then(|| Rc::clone(&segment)),
            next_named_durably: renames_spare,
        });
        Ok(segment)
    }

    /// Whether [`Log::prepare_spare`] has work: the active segment is at least half full,
    /// no spare exists or is being made, and the last roll's spare has its name.
    pub fn wants_spare(&self) -> bool {
        let half = self.config().segment_bytes_max / 2;
        self.spare.borrow().is_none()
            && !self.preparing_spare.get()
            && !self.spare_taken.get()
            && self.clock.now_ms() >= self.spare_retry_ms.get()
            && self.pending_seal.borrow().is_none()
            && !self.state.borrow().closed
            && self.active_segment().size() >= half
    }

    /// Creates the spare file the next roll takes, with as much space reserved as its
    /// writer will want reserved ahead (one `preallocate_bytes` step, more for a fast
    /// partition), if [`Log::wants_spare`]. The broker calls this in the background. A
    /// failure (a full disk) only means the next roll creates its file itself: the file
    /// is removed, so it holds no space, and no spare is tried for
    /// [`SPARE_RETRY_MS`].
    pub async fn prepare_spare(&self) -> Result<()> {
        if !self.wants_spare() {
            return Ok(());
        }
        self.preparing_spare.set(true);
        let path = self.dir.join(SPARE_FILE);
        let step = self.config().preallocate_bytes;
        let reserve = match step {
            0 => 0,
            step => self
                .writing
                .reserve_ahead(step)
                .min(self.writer_limits().reserve_end_max),
        };
        let created = async {
            let file = file::DirectFile::open(&path, true).await?;
            file.truncate(0).await?;
            if reserve > 0 {
                match file.preallocate(reserve).await {
                    Err(error) if error.raw_os_error() != Some(libc::EOPNOTSUPP) => {
                        return Err(error)
                    }
                    _ => {}
                }
            }
            Ok(file)
        }
        .await;
        // Its name durable before a roll takes it: a flush after the roll then needs no
        // directory sync for the data it syncs in it.
        let created = match created {
            Ok(file) => file::sync_dir(&self.dir).await.map(|()| file),
            Err(error) => Err(error),
        };
        self.preparing_spare.set(false);
        let file = match created {
            Ok(file) => file,
            Err(error) => {
                self.spare_retry_ms
                    .set(self.clock.now_ms().saturating_add(SPARE_RETRY_MS));
                // Whatever the failed fallocate grabbed goes back to the appends.
                let _ = file::remove_file(&path).await;
                return Err(StorageError::io("creating", &path, error));
            }
        };
        if self.state.borrow().closed {
            // Closed meanwhile: its directory may belong to a new log by now.
            let _ = file.close().await;
            return Ok(());
        }
        *self.spare.borrow_mut() = Some(file);
        self.spare_recycled.set(false);
        Ok(())
    }

    /// Creates the segment starting at `next_offset` and gives it a writer (nothing synced).
    async fn start_segment(&self, next_offset: u64, now: i64) -> Result<Rc<Segment>> {
        let created = Segment::create(&self.dir, next_offset, now)
            .await
            .map_err(|error| {
                StorageError::io(
                    "creating",
                    segment_path(&self.dir, next_offset, "log"),
                    error,
                )
            })?;
        let segment = Rc::new(created);
        self.activate(&segment).await?;
        Ok(segment)
    }

    async fn activate(&self, segment: &Segment) -> Result<()> {
        segment
            .activate(self.writer_limits(), Rc::clone(&self.writing))
            .await
            .map(drop)
            .map_err(|error| StorageError::io("activating", segment.path(), error))
    }

    /// Whether a rolled segment still waits for its seal (the broker seals it in the
    /// background soon after the roll).
    pub fn has_pending_seal(&self) -> bool {
        self.pending_seal.borrow().is_some()
    }

    /// Seals the segment the last roll left behind, if any: writes out and syncs it,
    /// writes its index files, drops its reserved space, syncs the directory (making the
    /// new segment's file durable) and moves the checkpoint past it. Appends and flushes
    /// never wait for this; rolls, retention, truncation and close do. A failure leaves
    /// the seal pending, to be retried by the next call.
    pub async fn finish_pending_seal(&self) -> Result<()> {
        // No lock when nothing is pending. (A seal in progress keeps its segment pending
        // until its syncs are done.)
        if self.pending_seal.borrow().is_none() {
            return self.check_open();
        }
        let _guard = self.seal_lock.lock().await;
        // A closed log sealed everything it could; never write into a directory that may
        // belong to a new log by now.
        self.check_open()?;
        let Some((segment, checkpoint, names_spare)) =
            self.pending_seal.borrow().as_ref().map(|pending| {
                let segment = Rc::clone(&pending.segment);
                (segment, pending.checkpoint, pending.names_spare.clone())
            })
        else {
            return Ok(());
        };
        segment
            .seal()
            .await
            .map_err(|error| StorageError::io("sealing", segment.path(), error))?;
        if let Some(next) = names_spare {
            let from = next.file.path();
            next.file
                .rename(&next.path())
                .await
                .map_err(|error| StorageError::io("renaming", &from, error))?;
            if let Some(pending) = self.pending_seal.borrow_mut().as_mut() {
                pending.names_spare = None;
            }
            self.spare_taken.set(false);
        }
        file::sync_dir(&self.dir)
            .await
            .map_err(|error| StorageError::io("syncing", &self.dir, error))?;
        {
            let mut state = self.state.borrow_mut();
            if state.checkpoint.segment_base < checkpoint.segment_base {
                state.checkpoint = checkpoint;
            }
            state.durable_offset = state.durable_offset.max(checkpoint.next_offset);
        }
        *self.pending_seal.borrow_mut() = None;
        self.write_meta().await
    }

    /// Hands every appended byte to the device (no `fdatasync`, no waiting). The broker
    /// calls this every few milliseconds, so acks=1 data reaches the disk's queue soon
    /// after it is appended even when a partition receives too little to fill a staging
    /// buffer.
    pub fn submit_staged(&self) {
        if let Some(writer) = self.active_segment().writer() {
            writer.submit_staged();
        }
    }

    /// Bytes appended to the active segment and not yet covered by an `fdatasync` (the
    /// broker's background flush syncs a partition when this grows or ages).
    pub fn unsynced_bytes(&self) -> u64 {
        self.active_segment()
            .writer()
            .map_or(0, |writer| writer.unsynced_bytes())
    }

    /// Makes every batch appended before the call durable; returns the offset below which
    /// everything is durable. Concurrent calls share `fdatasync`s.
    ///
    /// After a roll, this syncs the rolled segment's data and, if the roll created the
    /// new segment's file, the directory, and leaves the rest of the seal (index files,
    /// truncation, the spare's rename, `partition.meta`) to [`Log::finish_pending_seal`]:
    /// a seal is several journal commits, and every acks=all answer after a roll waited
    /// for them (`docs/BENCHMARKS.md`). Recovery finds the synced batches either way: it
    /// scans an unsealed segment that has later ones, and takes back a spare holding
    /// data (`docs/STORAGE.md`, sections 3 and 8).
    pub async fn flush(&self) -> Result<u64> {
        self.check_open()?;
        // Taken together, before any wait: the batches below `target` lie in these two
        // segments, whatever rolls happen while this flush waits.
        let target = self.next_offset();
        let active = self.active_segment();
        let rolled_from = self
            .pending_seal
            .borrow()
            .as_ref()
            .map(|pending| (Rc::clone(&pending.segment), pending.next_named_durably));
        // Everything before the active segment first: durable means every earlier byte.
        if let Some((rolled, next_named_durably)) = rolled_from {
            self.sync_segment(&rolled).await?;
            if !next_named_durably {
                file::sync_dir(&self.dir)
                    .await
                    .map_err(|error| StorageError::io("syncing", &self.dir, error))?;
                if let Some(pending) = self.pending_seal.borrow_mut().as_mut() {
                    if Rc::ptr_eq(&pending.segment, &rolled) {
                        pending.next_named_durably = true;
                    }
                }
            }
        }
        self.sync_segment(&active).await?;
        let mut state = self.state.borrow_mut();
        state.durable_offset = state.durable_offset.max(target);
        Ok(state.durable_offset)
    }

    /// Syncs what was appended to `segment` so far. One without a writer was sealed,
    /// which synced all of it.
    async fn sync_segment(&self, segment: &Segment) -> Result<()> {
        if let Some(writer) = segment.writer() {
            writer
                .flush()
                .await
                .map_err(|error| self.writer_error(&writer, "flushing", segment, error))?;
        }
        Ok(())
    }

    /// Reads batches starting with the one that contains `offset`, up to about `max_bytes`
    /// (always at least one batch, so a consumer can make progress past a large batch).
    /// Returns nothing at the end of the log.
    pub async fn read(&self, offset: u64, max_bytes: usize) -> Result<Vec<StoredBatch>> {
        self.read_bounded(offset, max_bytes, usize::MAX).await
    }

    /// [`Self::read`] whose first batch goes beyond `max_bytes` only if it is at most
    /// `first_batch_max` long, else nothing is returned: for a response that already
    /// holds other batches and has only so much room left. A batch that is not taken is
    /// not read beyond its header, and the read-ahead does not move past it.
    pub async fn read_bounded(
        &self,
        offset: u64,
        max_bytes: usize,
        first_batch_max: usize,
    ) -> Result<Vec<StoredBatch>> {
        self.check_open()?;
        let (log_start_offset, next_offset) = {
            let state = self.state.borrow();
            (state.log_start_offset, state.next_offset)
        };
        if offset < log_start_offset || offset > next_offset {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start_offset,
                next_offset,
            });
        }
        if offset == next_offset {
            return Ok(Vec::new());
        }
        if let Some(cached) = self
            .cache
            .read(self.cache_key, offset, max_bytes, first_batch_max)
        {
            return Ok(cached
                .into_iter()
                .map(|batch| StoredBatch {
                    header: BatchHeader::decode(&batch.bytes).expect("cached batches are valid"),
                    bytes: StoredBytes::Memory(batch.bytes),
                })
                .collect());
        }
        let mut segment = self.segment_containing(offset);
        while let Some(current) = segment {
            let position = {
                let state = current.state();
                if offset >= state.next_offset {
                    None
                } else {
                    let relative = offset.saturating_sub(current.base_offset) as u32;
                    Some(state.index.position_for_offset(relative))
                }
            };
            if let Some(position) = position {
                return self
                    .read_sequential(&current, position, offset, max_bytes, first_batch_max)
                    .await;
            }
            segment = self.segment_after(current.base_offset);
        }
        Ok(Vec::new())
    }

    fn segment_containing(&self, offset: u64) -> Option<Rc<Segment>> {
        let state = self.state.borrow();
        state
            .segments
            .range(..=offset)
            .next_back()
            .map(|(_, segment)| Rc::clone(segment))
    }

    fn segment_after(&self, base_offset: u64) -> Option<Rc<Segment>> {
        let state = self.state.borrow();
        state
            .segments
            .range(base_offset + 1..)
            .next()
            .map(|(_, segment)| Rc::clone(segment))
    }

    /// A consumer read: served from the windows read ahead when the previous read ended
    /// exactly at `offset`, and feeding the read-ahead with where this one ended.
    async fn read_sequential(
        &self,
        segment: &Segment,
        index_position: u64,
        offset: u64,
        max_bytes: usize,
        first_batch_max: usize,
    ) -> Result<Vec<StoredBatch>> {
        // Read ahead only what is on the device: never force the staging buffer out.
        let limit = segment.writer().map_or(segment.size(), |writer| {
            writer.written_end().min(segment.size())
        });
        let source = Source {
            file: &segment.file,
            segment_base: segment.base_offset,
            limit,
        };
        let chunk = self.read_ahead.chunk_for(&source, offset).await;
        let position = chunk
            .as_ref()
            .map_or(index_position, |(position, _)| *position);
        let read = self
            .read_segment(segment, position, offset, max_bytes, first_batch_max, chunk)
            .await?;
        if let Some(last) = read.batches.last() {
            let next_offset = last.header().next_offset();
            self.read_ahead
                .after_read(&source, read.end_position, next_offset, read.window_bytes);
        }
        Ok(read.batches)
    }

    /// Reads from `position` in `segment`, skipping batches before `offset`, starting
    /// with the bytes of `chunk` if given; the first batch from `offset` on even beyond
    /// `max_bytes` if it is at most `first_batch_max` long.
    async fn read_segment(
        &self,
        segment: &Segment,
        mut position: u64,
        offset: u64,
        max_bytes: usize,
        first_batch_max: usize,
        mut chunk: Option<(u64, ReadBytes)>,
    ) -> Result<SegmentRead> {
        let end = segment.size();
        let mut batches = Vec::new();
        let mut taken = 0usize;
        let window = max_bytes
            .min(READ_BYTES_MAX)
            .max(self.config().read_chunk_bytes);
        let start_position = position;
        while position < end {
            if !batches.is_empty() && taken >= max_bytes {
                break;
            }
            let header = self
                .batch_header_at(segment, &mut chunk, position, end)
                .await?;
            let padded = header.padded_length();
            let before_offset = header.next_offset() <= offset;
            let fits =
                taken + padded <= max_bytes || (batches.is_empty() && padded <= first_batch_max);
            if !before_offset && !fits {
                break;
            }
            let (chunk_start, bytes) = match &chunk {
                Some((start, bytes)) if position + padded as u64 <= start + bytes.len() as u64 => {
                    (*start, bytes.clone())
                }
                _ => {
                    // One read for this batch and the ones that fit in `max_bytes` after it.
                    let want = padded.max(window).min((end - position) as usize);
                    let bytes = self.read_bytes(segment, position, want).await?;
                    chunk = Some((position, bytes.clone()));
                    (position, bytes)
                }
            };
            let slice = bytes
                .slice((position - chunk_start) as usize, padded)
                .ok_or_else(|| self.corrupt(segment, position, "batch runs past the data read"))?;
            if let Err(error) = BatchView::validate_header_and_crc(&slice) {
                return Err(self.corrupt(segment, position, &error.to_string()));
            }
            position += padded as u64;
            if before_offset {
                continue;
            }
            taken += padded;
            batches.push(StoredBatch {
                header,
                bytes: StoredBytes::Disk(slice),
            });
        }
        Ok(SegmentRead {
            batches,
            end_position: position,
            // The next read will likely span as much as this one did.
            window_bytes: window.max((position - start_position) as usize),
        })
    }

    async fn batch_header_at(
        &self,
        segment: &Segment,
        chunk: &mut Option<(u64, ReadBytes)>,
        position: u64,
        end: u64,
    ) -> Result<BatchHeader> {
        let header_bytes = flumen_protocol::record::BATCH_HEADER_BYTES;
        let in_chunk = chunk.as_ref().and_then(|(start, bytes)| {
            let offset = position.checked_sub(*start)? as usize;
            bytes.slice(offset, header_bytes)
        });
        let bytes = match in_chunk {
            Some(bytes) => bytes,
            None => {
                // A small read: the header says how much the real read must cover.
                let want = HEADER_PEEK_BYTES.min((end - position) as usize);
                let bytes = self
                    .read_bytes(segment, position, want.max(header_bytes))
                    .await?;
                *chunk = Some((position, bytes.clone()));
                bytes
            }
        };
        let header = BatchHeader::decode(&bytes)
            .map_err(|error| self.corrupt(segment, position, &error.to_string()))?;
        if position + header.padded_length() as u64 > end {
            return Err(self.corrupt(segment, position, "batch runs past the segment end"));
        }
        Ok(header)
    }

    async fn read_bytes(&self, segment: &Segment, position: u64, len: usize) -> Result<ReadBytes> {
        let bytes = segment
            .read(position, len)
            .await
            .map_err(|error| StorageError::io("reading", segment.path(), error))?;
        if bytes.len() < len && segment.is_deleted() {
            // Retention removed the segment while this read was in it: the data is gone,
            // as it would be for a read that came a moment later.
            return Err(StorageError::OffsetOutOfRange {
                offset: segment.base_offset,
                log_start_offset: self.log_start_offset(),
                next_offset: self.next_offset(),
            });
        }
        if bytes.len() < len {
            return Err(self.corrupt(segment, position, "segment file is shorter than its log"));
        }
        Ok(bytes)
    }

    fn corrupt(&self, segment: &Segment, position: u64, reason: &str) -> StorageError {
        tracing::error!(path = %segment.path().display(), position, reason, "corrupt batch on read");
        StorageError::Corrupt {
            path: segment.path().to_path_buf(),
            position,
            reason: reason.to_owned(),
        }
    }

    /// Offset of the first record whose timestamp is `>= timestamp_ms`, or `None` if every
    /// record is older.
    pub async fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<u64>> {
        self.check_open()?;
        let segments: Vec<Rc<Segment>> = self.state.borrow().segments.values().cloned().collect();
        for segment in segments {
            let (position, first_offset) = {
                let state = segment.state();
                if state.max_timestamp < timestamp_ms || state.size == 0 {
                    continue;
                }
                (
                    state.index.position_for_timestamp(timestamp_ms),
                    segment.base_offset,
                )
            };
            let batches = self
                .read_segment(
                    &segment,
                    position,
                    first_offset,
                    self.scan_window_bytes(),
                    usize::MAX,
                    None,
                )
                .await?;
            for batch in batches.batches {
                if batch.header().max_timestamp < timestamp_ms {
                    continue;
                }
                return Ok(Some(first_record_at_or_after(&batch, timestamp_ms)?));
            }
        }
        Ok(None)
    }
}

/// The offset of the first record in `batch` with a timestamp `>= timestamp_ms`.
fn first_record_at_or_after(batch: &StoredBatch, timestamp_ms: i64) -> Result<u64> {
    // Rare operation: copy the one batch into an aligned buffer and fully validate it.
    let aligned = BuiltBatch::copy_from(batch.as_bytes());
    let view = BatchView::validate(aligned.as_bytes())?;
    let found = view
        .records()
        .find(|record| record.timestamp_ms() >= timestamp_ms)
        .map(|record| record.offset());
    Ok(found.unwrap_or(batch.header().base_offset))
}

impl Log {
    /// Deletes whole segments, oldest first, while the log exceeds `retention_bytes` or a
    /// segment's newest record is older than `retention_ms`. The active segment is never
    /// deleted. Advances the log start offset.
    ///
    /// Only choosing the segments and dropping them from the log's state holds the append
    /// lock; removing their files and writing `partition.meta` (which syncs the
    /// directory) happen after, so appends never wait on those syncs.
    pub async fn apply_retention(&self) -> Result<RetentionReport> {
        self.apply_retention_freeing_within(DEFAULT_FREE_WITHIN)
            .await
    }

    /// [`Log::apply_retention`], freeing the deleted segments' space within `free_within`
    /// (the broker spreads it over half the time until its next pass).
    pub async fn apply_retention_freeing_within(
        &self,
        free_within: std::time::Duration,
    ) -> Result<RetentionReport> {
        let pass = self.retention_lock.lock().await;
        // Seal the last roll's segment first. A segment still being sealed is kept (and
        // nothing is recycled, which frees nothing): a seal that fails for want of space
        // must not stop retention from freeing it. The seal is retried later.
        let sealed = match self.finish_pending_seal().await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(dir = %self.dir.display(), %error, "retention goes on without sealing the last rolled segment");
                false
            }
        };
        let (report, deleted) = self.drop_expired_segments().await?;
        if deleted.is_empty() {
            return Ok(report);
        }
        // No sync here: the deletion becomes durable with the next `partition.meta` write
        // (the next seal, epoch change or close), which also syncs the directory. A crash
        // before that brings back the deleted segments and the older epoch history, which
        // is harmless: they are whole, and retention deletes them again. Syncing at every
        // deletion cost each partition two journal commits, which on a disk with a large
        // volatile cache held up writes for as long as the cache took to persist.
        //
        // Names go oldest first, and the segment recycled takes its turn in that order:
        // the directory sync of its rename then makes the older removals durable with it.
        // A power loss must not bring an older one back without it (a gap in the offsets
        // before the checkpoint, where recovery trusts what it finds), so after a failed
        // removal nothing is recycled.
        let mut deleted = deleted;
        let mut report = report;
        let recycle = deleted
            .iter()
            .rposition(|segment| Rc::strong_count(segment) == 1)
            .filter(|_| sealed);
        let mut recycled = None;
        let mut first_error = None;
        for (position, segment) in deleted.iter().enumerate() {
            if Some(position) == recycle && first_error.is_none() {
                if let Some(size) = self.recycle_as_spare(segment).await {
                    report.bytes_recycled = size;
                    recycled = Some(position);
                    continue;
                }
            }
            if let Err(error) = segment.remove_files().await {
                first_error.get_or_insert(StorageError::io("deleting", segment.path(), error));
            }
        }
        // The spare has its own handle on the file: this one closes with the segment.
        if let Some(position) = recycled {
            deleted.remove(position);
        }
        // The names are gone: `close` (which waits for this lock) and a topic created
        // again at the same path can no longer meet them. The blocks go after, gently,
        // in the background: the shard's retention pass goes on to its other partitions
        // meanwhile, and a pass that deleted more frees it faster.
        drop(pass);
        let pause = shrink_pause(report.bytes_deleted - report.bytes_recycled, free_within);
        spawn_detached(async move {
            for segment in &deleted {
                if let Err(error) = segment.release_space(pause).await {
                    tracing::error!(path = %segment.path().display(), %error, "cannot free a deleted segment's space");
                }
            }
        });
        if let Some(error) = first_error {
            return Err(error);
        }
        tracing::info!(dir = %self.dir.display(), ?report, "retention deleted segments");
        Ok(report)
    }

    /// Makes `segment`, deleted by a retention pass and read by nothing any more (the
    /// pass's newest such), the spare the next roll takes, if recycling is on, no spare
    /// is being made or still holds the spare's name, and the spare, if any, is an empty
    /// one made ahead of the roll (it is replaced, and its file freed). Returns the
    /// recycled segment's size; `None` leaves it to be deleted as usual.
    ///
    /// Its file keeps its written blocks, so the next segment overwrites them instead of
    /// writing into `fallocate`d (unwritten) extents that ext4 converts, with a journal
    /// update, at each write's completion and `fdatasync`; and retention has nothing to
    /// free. The old batches stay after the new segment's end until overwritten: reads
    /// stop at the logical end, recovery at the first batch that does not continue the
    /// offsets, and [`adopt_spare`] never takes an unused recycled spare for a segment.
    /// The rename (and the index files' removal) is synced to the directory before the
    /// file becomes the spare.
    async fn recycle_as_spare(&self, segment: &Segment) -> Option<u64> {
        if !self.config().recycle_segments
            || (self.spare.borrow().is_some() && self.spare_recycled.get())
            || self.preparing_spare.get()
            || self.spare_taken.get()
            || self.state.borrow().closed
        {
            return None;
        }
        self.preparing_spare.set(true);
        let path = self.dir.join(SPARE_FILE);
        let recycled = async {
            segment.remove_index().await?;
            // Replaces an empty spare, whose open handle then holds its only link.
            segment.file.rename(&path).await?;
            // Durable before anything overwrites the file: after a power loss the
            // directory could otherwise still name it as the deleted segment (with its
            // index files), holding new batches where that segment's were.
            let synced = file::sync_dir(&self.dir).await;
            let opened = match synced {
                Ok(()) => file::DirectFile::open(&path, false).await,
                Err(error) => Err(error),
            };
            match opened {
                Ok(spare) => Ok(spare),
                Err(error) => {
                    // Named as the spare but unusable: unnamed, it is freed below.
                    let _ = file::remove_file(&path).await;
                    Err(error)
                }
            }
        }
        .await;
        self.preparing_spare.set(false);
        match recycled {
            Ok(spare) => {
                let size = segment.size();
                // The retention pass holds its lock, so `close` has not run meanwhile.
                let replaced = self.spare.borrow_mut().replace(spare);
                self.spare_recycled.set(true);
                if let Some(empty) = replaced {
                    // Unnamed by the rename: closing it frees its reserved blocks.
                    let _ = empty.close().await;
                }
                tracing::debug!(dir = %self.dir.display(), segment = segment.base_offset, "recycled a deleted segment as the spare");
                Some(size)
            }
            Err(error) => {
                tracing::warn!(path = %segment.path().display(), %error, "cannot recycle a deleted segment; freeing it");
                if self.spare.borrow().is_some() && !path.exists() {
                    // The rename replaced the empty spare's name before the failure: a
                    // roll must not take a file its seal cannot rename.
                    let empty = self.spare.borrow_mut().take();
                    if let Some(empty) = empty {
                        let _ = empty.close().await;
                    }
                }
                None
            }
        }
    }

    /// Whether size-based retention would delete the oldest segment now: the log is
    /// over `retention_bytes` without it, and it is neither the active segment nor still
    /// being sealed. Cheap (no lock, no I/O). The broker runs a retention pass when this
    /// holds right after a roll's seal, so a log stays within a segment of its limit
    /// whatever the interval of the periodic pass, each pass deletes about one segment,
    /// and that one is recycled (a pass that came later would find the spare slot taken
    /// by the empty file made ahead of the next roll, and free what it deleted).
    pub fn over_retention_bytes(&self) -> bool {
        self.deletable_oldest()
            .is_some_and(|(oldest, total)| self.over_size(&oldest, total))
    }

    /// The oldest segment, if retention may delete it (the log has another, and it is
    /// not still being sealed, which like the active segment stays), and the log's size.
    fn deletable_oldest(&self) -> Option<(Rc<Segment>, u64)> {
        let sealing = self
            .pending_seal
            .borrow()
            .as_ref()
            .map(|pending| pending.segment.base_offset);
        let state = self.state.borrow();
        let total: u64 = state.segments.values().map(|segment| segment.size()).sum();
        (state.segments.len() > 1)
            .then(|| Rc::clone(state.segments.values().next().expect("non-empty")))
            .filter(|oldest| Some(oldest.base_offset) != sealing)
            .map(|oldest| (oldest, total))
    }

    /// Whether the log of `total` bytes is still at least `retention_bytes` without
    /// `oldest`.
    fn over_size(&self, oldest: &Segment, total: u64) -> bool {
        self.config()
            .retention_bytes
            .is_some_and(|limit| total - oldest.size() >= limit)
    }

    /// Under the append lock, drops the segments retention removes from the log's state
    /// and advances the log start; returns them for their files to be removed.
    async fn drop_expired_segments(&self) -> Result<(RetentionReport, Vec<Rc<Segment>>)> {
        let _guard = self.append_lock.lock().await;
        self.check_open()?;
        let now = self.clock.now_ms();
        let mut report = RetentionReport::default();
        let mut deleted = Vec::new();
        while let Some((oldest, total)) = self.deletable_oldest() {
            let over_size = self.over_size(&oldest, total);
            let expired = self
                .config()
                .retention_ms
                .is_some_and(|limit| oldest.state().max_timestamp < now - limit);
            if !over_size && !expired {
                break;
            }
            report.segments_deleted += 1;
            report.bytes_deleted += oldest.size();
            self.forget_oldest(&oldest);
            deleted.push(oldest);
        }
        report.log_start_offset = self.log_start_offset();
        Ok((report, deleted))
    }

    /// Drops the oldest segment from the log's state (its files stay until removed).
    fn forget_oldest(&self, oldest: &Segment) {
        let new_start = {
            let mut state = self.state.borrow_mut();
            state.segments.remove(&oldest.base_offset);
            let new_start = *state
                .segments
                .keys()
                .next()
                .expect("the active segment remains");
            state.log_start_offset = new_start;
            // Kafka's truncate-from-start: the epoch in force at the new start begins there.
            let in_force = state
                .epochs
                .iter()
                .rposition(|entry| entry.start_offset <= new_start);
            if let Some(index) = in_force {
                state.epochs.drain(..index);
                state.epochs[0].start_offset = new_start;
            }
            new_start
        };
        self.cache.remove_before(self.cache_key, new_start);
        self.read_ahead.clear();
    }

    /// Removes every batch that contains an offset `>= offset`, so the log ends at or
    /// below `offset` (a batch is never split). Used by replication when a follower's log
    /// diverged from the leader's. Truncated data never reappears, even after a crash.
    pub async fn truncate_to(&self, offset: u64) -> Result<u64> {
        let _guard = self.append_lock.lock().await;
        self.check_open()?;
        let (log_start_offset, next_offset) = (self.log_start_offset(), self.next_offset());
        if offset >= next_offset {
            return Ok(next_offset);
        }
        if offset < log_start_offset {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start_offset,
                next_offset,
            });
        }
        self.flush().await?;
        // Seal a rolled segment first: the seal of one the cut drops would rename a
        // spare it no longer has.
        self.finish_pending_seal().await?;
        self.read_ahead.clear();
        let target = self
            .segment_containing(offset)
            .expect("offset is in the log");
        self.drop_segments_after(target.base_offset).await?;
        let cut = self.find_cut(&target, offset).await?;
        self.cut_segment(&target, cut).await?;
        let new_next = self.next_offset();
        self.cache.truncate_from(self.cache_key, new_next);
        {
            let mut state = self.state.borrow_mut();
            state.epochs.retain(|entry| entry.start_offset < new_next);
            state.durable_offset = new_next;
        }
        self.write_meta().await?;
        tracing::info!(dir = %self.dir.display(), offset, new_next, "log truncated");
        Ok(new_next)
    }

    async fn drop_segments_after(&self, base_offset: u64) -> Result<()> {
        loop {
            let last = self.active_segment();
            if last.base_offset <= base_offset {
                return Ok(());
            }
            self.state.borrow_mut().segments.remove(&last.base_offset);
            last.deactivate().await;
            last.remove_files()
                .await
                .map_err(|error| StorageError::io("deleting", last.path(), error))?;
        }
    }

    /// The position of the first batch that ends after `offset`, and the segment state at
    /// that position.
    async fn find_cut(&self, segment: &Segment, offset: u64) -> Result<SegmentState> {
        let (entry, mut index) = {
            let state = segment.state();
            let relative = (offset - segment.base_offset) as u32;
            (state.index.entry_for_offset(relative), state.index.clone())
        };
        let (start, start_offset, max_before) =
            entry.map_or((0, segment.base_offset, i64::MIN), |entry| {
                (
                    u64::from(entry.position),
                    segment.base_offset + u64::from(entry.relative_offset),
                    entry.max_timestamp_before,
                )
            });
        // Rebuild the index from the entry before the cut by scanning forward; the batch
        // containing `offset` lies within one index interval plus one batch of the entry.
        index.truncate_to(start, max_before, 0);
        let mut state = SegmentState {
            size: start,
            next_offset: start_offset,
            max_timestamp: max_before,
            index,
        };
        let window = self.scan_window_bytes();
        let batches = self
            .read_segment(segment, start, start_offset, window, usize::MAX, None)
            .await?;
        for batch in batches.batches {
            let header = batch.header();
            if header.next_offset() > offset {
                break;
            }
            let padded = header.padded_length() as u64;
            state.index.on_append(
                (header.base_offset - segment.base_offset) as u32,
                state.size,
                padded,
                header.max_timestamp,
                self.config().index_interval_bytes,
            );
            state.size += padded;
            state.next_offset = header.next_offset();
            state.max_timestamp = state.max_timestamp.max(header.max_timestamp);
        }
        Ok(state)
    }

    /// Bytes after a sparse index entry within which the batch sought is sure to start.
    fn scan_window_bytes(&self) -> usize {
        self.config().index_interval_bytes as usize + self.config().batch_bytes_max
    }

    /// Shrinks `segment` to `cut` on disk and in memory and makes it the active segment.
    async fn cut_segment(&self, segment: &Rc<Segment>, cut: SegmentState) -> Result<()> {
        segment.deactivate().await;
        segment
            .remove_index()
            .await
            .map_err(context("deleting index of", &segment.path()))?;
        segment
            .file
            .truncate(cut.size)
            .await
            .map_err(context("truncating", &segment.path()))?;
        segment
            .file
            .fdatasync()
            .await
            .map_err(context("syncing", &segment.path()))?;
        let next_offset = cut.next_offset;
        *segment.state_mut() = cut;
        segment
            .activate(self.writer_limits(), Rc::clone(&self.writing))
            .await
            .map_err(context("activating", &segment.path()))?;
        let mut state = self.state.borrow_mut();
        state.next_offset = next_offset;
        state.checkpoint = Checkpoint {
            segment_base: segment.base_offset,
            position: segment.size(),
            next_offset,
            max_timestamp: segment.state().max_timestamp,
        };
        Ok(())
    }

    /// Starts leader epoch `epoch` at the current end of the log. Batches appended from
    /// now on carry it. Persisted before returning.
    pub async fn assign_leader_epoch(&self, epoch: u32) -> Result<()> {
        let _guard = self.append_lock.lock().await;
        self.check_open()?;
        let previous = self.epoch_history();
        {
            let mut state = self.state.borrow_mut();
            let start_offset = state.next_offset;
            match state.epochs.last() {
                Some(last) if epoch < last.epoch => {
                    return Err(StorageError::StaleEpoch {
                        requested: epoch,
                        current: last.epoch,
                    })
                }
                Some(last) if epoch == last.epoch => return Ok(()),
                _ => {}
            }
            if state
                .epochs
                .last()
                .is_some_and(|last| last.start_offset == start_offset)
            {
                // The previous epoch wrote nothing; it is superseded.
                state.epochs.pop();
            }
            state.epochs.push(EpochEntry {
                epoch,
                start_offset,
            });
        }
        if let Err(error) = self.write_meta().await {
            // Never stamp batches with an epoch the disk does not know.
            self.state.borrow_mut().epochs = previous;
            return Err(error);
        }
        Ok(())
    }

    /// The latest leader epoch, if one was assigned.
    pub fn leader_epoch(&self) -> Option<u32> {
        self.state.borrow().epochs.last().map(|entry| entry.epoch)
    }

    /// The leader-epoch history, oldest first.
    pub fn epoch_history(&self) -> Vec<EpochEntry> {
        self.state.borrow().epochs.clone()
    }

    /// For a follower at `epoch`: the largest epoch `<= epoch` this log knows and the offset
    /// where it ended (the start of the next epoch, or the log end for the latest), as in
    /// Kafka's OffsetsForLeaderEpoch. `None` if `epoch` is older than every known epoch.
    pub fn epoch_end_offset(&self, epoch: u32) -> Option<(u32, u64)> {
        let state = self.state.borrow();
        let index = state
            .epochs
            .iter()
            .rposition(|entry| entry.epoch <= epoch)?;
        let end = state
            .epochs
            .get(index + 1)
            .map_or(state.next_offset, |next| next.start_offset);
        Some((state.epochs[index].epoch, end))
    }

    /// Flushes, writes the active segment's index and a checkpoint at the log end, and
    /// releases the files. The next open trusts everything and scans nothing.
    pub async fn close(&self) -> Result<()> {
        // A retention pass removing files by name finishes first.
        let _retention = self.retention_lock.lock().await;
        let _guard = self.append_lock.lock().await;
        if self.state.borrow().closed {
            return Ok(());
        }
        self.flush().await?;
        self.finish_pending_seal().await?;
        let active = self.active_segment();
        active
            .seal()
            .await
            .map_err(context("sealing", &active.path()))?;
        // The index files' names, before the checkpoint moves past them.
        file::sync_dir(&self.dir)
            .await
            .map_err(context("syncing", &self.dir))?;
        {
            let mut state = self.state.borrow_mut();
            state.checkpoint = Checkpoint {
                segment_base: active.base_offset,
                position: active.size(),
                next_offset: active.next_offset(),
                max_timestamp: active.state().max_timestamp,
            };
        }
        self.write_meta().await?;
        self.read_ahead.clear();
        let segments = {
            let mut state = self.state.borrow_mut();
            state.closed = true;
            std::mem::take(&mut state.segments)
        };
        let spare = self.spare.borrow_mut().take();
        if let Some(spare) = spare {
            // Everything is sealed by now: an unused spare left behind is only removed by
            // the next open, so a failure here is not the close's.
            let path = self.dir.join(SPARE_FILE);
            let removed = match spare.close().await {
                Ok(()) => file::remove_file(&path).await,
                Err(error) => Err(error),
            };
            if let Err(error) = removed {
                tracing::warn!(path = %path.display(), %error, "cannot remove the unused spare");
            }
        }
        self.cache.unregister(self.cache_key);
        drop(active);
        for (_, segment) in segments {
            if let Ok(segment) = Rc::try_unwrap(segment) {
                let path = segment.path().to_path_buf();
                segment
                    .file
                    .close()
                    .await
                    .map_err(|error| StorageError::io("closing", path, error))?;
            }
        }
        Ok(())
    }

    async fn write_meta(&self) -> Result<()> {
        let _guard = self.meta_lock.lock().await;
        let meta = {
            let state = self.state.borrow();
            PartitionMeta {
                checkpoint: state.checkpoint,
                epochs: state.epochs.clone(),
            }
        };
        let path = self.dir.join(META_FILE);
        file::write_file_atomically(&path, &meta.encode())
            .await
            .map_err(|error| StorageError::io("writing", path, error))
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.cache.unregister(self.cache_key);
    }
}

/// Gives a spare file a crash left holding data back its segment name: a roll took it
/// and the seal that renames it never ran. It holds the newest segment; its first batch
/// names its base offset (recovery then checks it like any unsealed segment). A spare
/// that holds no batch, or whose name is taken, goes.
async fn adopt_spare(dir: &Path) -> Result<()> {
    let path = dir.join(SPARE_FILE);
    if !path.exists() {
        return Ok(());
    }
    // A roll's new segment starts after every existing one; a recycled spare no roll
    // took still begins with the batches of a segment retention deleted, before them.
    let newest = list_segments(dir)?.last().copied();
    let base = {
        let spare = file::DirectFile::open(&path, false)
            .await
            .map_err(|error| StorageError::io("opening", &path, error))?;
        let head = spare
            .read_at(0, IO_ALIGNMENT_BYTES as usize)
            .await
            .map_err(|error| StorageError::io("reading", &path, error))?;
        let base = BatchHeader::decode(&head)
            .ok()
            .map(|header| header.base_offset);
        let _ = spare.close().await;
        base
    };
    match base {
        Some(base)
            if newest.is_none_or(|newest| base > newest)
                && !segment_path(dir, base, "log").exists() =>
        {
            let to = segment_path(dir, base, "log");
            tracing::info!(from = %path.display(), to = %to.display(), "recovering a spare segment");
            file::rename(&path, &to)
                .await
                .map_err(|error| StorageError::io("renaming", &path, error))?;
        }
        _ => file::remove_file(&path)
            .await
            .map_err(|error| StorageError::io("removing", &path, error))?,
    }
    file::sync_dir(dir)
        .await
        .map_err(|error| StorageError::io("syncing", dir, error))
}
