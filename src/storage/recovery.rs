//! Opening a log after a clean shutdown or a crash.
//!
//! The algorithm (see `docs/STORAGE.md` for the full story):
//! 1. List the `*.log` files; remove leftover `*.tmp` files of interrupted atomic writes.
//! 2. Read `partition.meta`. Its checkpoint names a segment and a position up to which the
//!    log was durable and checked. Without a readable checkpoint, nothing is trusted.
//! 3. Segments before the checkpoint segment are trusted: their index files are loaded if
//!    their CRC is good and the size they record equals the file size; otherwise the
//!    segment is scanned to rebuild them.
//! 4. The checkpoint segment is scanned from the checkpoint position, and every later
//!    segment from its start. Scanning checks every batch's header, CRC, padding and
//!    offset continuity (see `scan.rs`) and stops at the first invalid byte.
//! 5. At the first cut, the segment file is truncated there and all later segments are
//!    deleted: offsets must stay dense, and bytes after a cut were never acknowledged as
//!    durable (a durable batch is never followed by a torn one in an earlier position).
//!    Unless the next segment starts exactly where the cut one now ends: then the bytes
//!    cut lay past the segment's end (in a recycled file, the batches of its earlier
//!    use), nothing is missing, the later segments stay, and nothing is reported cut.

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use super::config::LogConfig;
use super::error::context;
use super::file;
use super::index::SegmentIndex;
use super::log::RecoveryReport;
use super::meta::{Checkpoint, EpochEntry, PartitionMeta};
use super::scan::{scan_segment, ScanStart};
use super::segment::{Segment, SegmentState};
use super::{Result, StorageError};

/// The base offsets of the segment files in `dir`, ascending.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let entries =
        std::fs::read_dir(dir).map_err(|error| StorageError::io("listing", dir, error))?;
    let mut bases = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| StorageError::io("listing", dir, error))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        if let Some(stem) = name.strip_suffix(".log") {
            match stem.parse::<u64>() {
                Ok(base) if stem.len() == 20 => bases.push(base),
                _ => tracing::warn!(file = %entry.path().display(), "ignoring unexpected file"),
            }
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// The partition metadata, or `None` if it is missing or unreadable (then nothing is
/// trusted and every segment is scanned).
pub(crate) async fn read_meta(dir: &Path) -> Result<Option<PartitionMeta>> {
    let path = dir.join("partition.meta");
    let bytes = file::read_small_file(&path)
        .await
        .map_err(|error| StorageError::io("reading", &path, error))?;
    Ok(bytes.and_then(|bytes| match PartitionMeta::decode(&bytes) {
        Ok(meta) => Some(meta),
        Err(reason) => {
            tracing::warn!(path = %path.display(), reason, "ignoring damaged partition.meta");
            None
        }
    }))
}

/// Opens, checks and (where needed) repairs every segment. Returns the segments, the
/// report, and the checkpoint in force.
pub(crate) async fn recover(
    dir: &Path,
    config: &LogConfig,
    bases: &[u64],
    meta: Option<&PartitionMeta>,
    now_ms: i64,
) -> Result<(BTreeMap<u64, Rc<Segment>>, RecoveryReport, Checkpoint)> {
    let mut report = RecoveryReport::default();
    let mut segments = BTreeMap::new();
    let checkpoint = meta
        .map(|meta| meta.checkpoint)
        .filter(|checkpoint| bases.contains(&checkpoint.segment_base));
    // Without partition.meta the epoch history is rebuilt from the batch headers (every
    // segment is scanned then, as there is no checkpoint either).
    let epochs = meta.map(|meta| &meta.epochs[..]);
    let mut previous_next_offset = None;
    for (number, &base) in bases.iter().enumerate() {
        // A segment after the checkpoint that does not start where the previous one ends
        // follows lost bytes: its predecessor was rolled away from but not yet sealed
        // when the crash came, and lost its tail. Nothing after a hole was ever durable
        // (a flush syncs the earlier segment first), and offsets must stay dense, so the
        // log ends at the hole.
        let after_checkpoint = checkpoint.is_none_or(|checkpoint| base > checkpoint.segment_base);
        if let Some(previous) = previous_next_offset.filter(|&previous| previous != base) {
            if after_checkpoint {
                for &later in &bases[number..] {
                    remove_segment_files(dir, later).await?;
                    report.cuts.push(format!(
                        "deleted segment {later:020}.log after a hole (offsets {previous} to {base})"
                    ));
                }
                break;
            }
        }
        let last = number + 1 == bases.len();
        let (segment, opened, tail_cut) = open_segment(
            dir,
            config,
            base,
            checkpoint,
            previous_next_offset,
            now_ms,
            epochs,
            last,
            &mut report,
        )
        .await?;
        if opened == Opened::RebuiltIndex {
            segment
                .persist_index()
                .await
                .map_err(|error| StorageError::io("writing index of", segment.path(), error))?;
        }
        let trusted = checkpoint.is_some_and(|checkpoint| base < checkpoint.segment_base);
        // A cut segment that the next one continues exactly lost nothing of its log: the
        // bytes cut lay past its end (a torn write after it, or the batches of a deleted
        // segment whose file it recycled). The later segments stay, and the bytes are not
        // reported as cut: they were never part of the log.
        let opened = match opened {
            Opened::CutTail if bases.get(number + 1) == Some(&segment.next_offset()) => {
                if let Some(cut) = &tail_cut {
                    tracing::debug!(cut = %cut.line, "dropped bytes past a segment's end");
                }
                Opened::Intact
            }
            opened => {
                if let Some(cut) = tail_cut {
                    report.bytes_cut += cut.bytes;
                    report.cuts.push(cut.line);
                }
                opened
            }
        };
        if opened == Opened::Intact && !trusted && number + 1 < bases.len() {
            // A scanned segment with later ones was rolled away from and not sealed
            // before the crash: seal it now, so it is durable before the checkpoint moves
            // past it and trusted (not rescanned) by the next open.
            segment
                .finish_files()
                .await
                .map_err(|error| StorageError::io("sealing", segment.path(), error))?;
        }
        if opened == Opened::DamagedBeforeCheckpoint {
            // Durable data after this segment is kept; reads of the damaged range fail
            // with `Corrupt` instead of serving it.
            if let Some(&next_base) = bases.get(number + 1) {
                segment.state_mut().next_offset = next_base;
            }
        }
        previous_next_offset = Some(segment.next_offset());
        segments.insert(base, Rc::new(segment));
        if opened == Opened::CutTail {
            for &later in &bases[number + 1..] {
                remove_segment_files(dir, later).await?;
                report
                    .cuts
                    .push(format!("deleted segment {later:020}.log after the cut"));
            }
            break;
        }
    }
    if segments.is_empty() {
        let start = meta.map_or(0, |meta| meta.checkpoint.next_offset);
        let segment = Segment::create(dir, start, now_ms)
            .await
            .map_err(|error| StorageError::io("creating first segment in", dir, error))?;
        file::sync_dir(dir)
            .await
            .map_err(|error| StorageError::io("syncing", dir, error))?;
        segments.insert(start, Rc::new(segment));
    }
    let last = segments.values().next_back().expect("one segment");
    let checkpoint = Checkpoint {
        segment_base: last.base_offset,
        position: last.size(),
        next_offset: last.next_offset(),
        max_timestamp: last.state().max_timestamp,
    };
    Ok((segments, report, checkpoint))
}

/// The invalid tail cut off a segment: its non-zero bytes, and the report's line.
struct TailCut {
    bytes: u64,
    line: String,
}

/// How a segment came out of recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opened {
    /// Its index and summary were trusted, or its scan found only valid data.
    Intact,
    /// A trusted segment whose index had to be rebuilt by scanning.
    RebuiltIndex,
    /// A segment at or after the checkpoint whose invalid tail was cut.
    CutTail,
    /// A segment before the checkpoint (durable, later segments exist) with invalid data.
    DamagedBeforeCheckpoint,
}

#[allow(clippy::too_many_arguments)]
async fn open_segment(
    dir: &Path,
    config: &LogConfig,
    base: u64,
    checkpoint: Option<Checkpoint>,
    previous_next_offset: Option<u64>,
    now_ms: i64,
    epochs: Option<&[EpochEntry]>,
    last: bool,
    report: &mut RecoveryReport,
) -> Result<(Segment, Opened, Option<TailCut>)> {
    let file = Segment::open_file(dir, base)
        .await
        .map_err(|error| StorageError::io("opening", dir, error))?;
    let path = file.path().to_path_buf();
    let file_size = file.size().await.map_err(context("sizing", &path))?;
    let loaded = Segment::load_index(dir, base, file_size)
        .await
        .map_err(context("reading index of", &path))?;
    if let Some(previous) = previous_next_offset {
        if previous != base {
            tracing::warn!(
                segment = base,
                previous,
                "segment does not continue the previous one"
            );
        }
    }
    let trusted = checkpoint.is_some_and(|checkpoint| base < checkpoint.segment_base);
    let (mut index, start) = match (&loaded, trusted, checkpoint) {
        (Ok((index, summary)), true, _) if summary.size_bytes == file_size => {
            let state = SegmentState {
                size: summary.size_bytes,
                next_offset: summary.next_offset,
                max_timestamp: summary.max_timestamp,
                index: index.clone(),
            };
            let created_ms = created_ms(&file.path(), now_ms);
            return Ok((
                Segment::new(dir, base, file, created_ms, state),
                Opened::Intact,
                None,
            ));
        }
        (Ok((index, summary)), false, Some(checkpoint))
            if checkpoint.segment_base == base
                && summary.size_bytes == checkpoint.position
                && summary.next_offset == checkpoint.next_offset
                && checkpoint.position <= file_size =>
        {
            let index = index.clone();
            let start = ScanStart {
                position: checkpoint.position,
                next_offset: checkpoint.next_offset,
                max_timestamp: checkpoint.max_timestamp,
            };
            (index, start)
        }
        _ => {
            if loaded.is_err() || trusted {
                report.indexes_rebuilt += 1;
            }
            let start = ScanStart {
                position: 0,
                next_offset: base,
                max_timestamp: i64::MIN,
            };
            (SegmentIndex::new(), start)
        }
    };
    let outcome = scan_segment(&file, base, start, &mut index, config, epochs)
        .await
        .map_err(context("scanning", &path))?;
    report.batches_scanned += outcome.batches;
    for seen in &outcome.epochs_seen {
        if seen.epoch > 0
            && report
                .epochs_seen
                .last()
                .is_none_or(|last| last.epoch < seen.epoch)
        {
            report.epochs_seen.push(*seen);
        }
    }
    if let (Some(cut), true) = (&outcome.cut, trusted) {
        tracing::error!(path = %path.display(), position = cut.position, reason = %cut.reason,
            "damaged data in a durable segment; reads of it will fail");
        report.cuts.push(format!(
            "{}: damaged at {}: {}",
            path.display(),
            cut.position,
            cut.reason
        ));
        let state = SegmentState {
            size: file_size,
            next_offset: outcome.next_offset,
            max_timestamp: outcome.max_timestamp,
            index,
        };
        let segment = Segment::new(dir, base, file, created_ms(&path, now_ms), state);
        return Ok((segment, Opened::DamagedBeforeCheckpoint, None));
    }
    let opened = match (&outcome.cut, trusted) {
        (Some(_), _) => Opened::CutTail,
        (None, true) => Opened::RebuiltIndex,
        (None, false) => Opened::Intact,
    };
    let tail_cut = outcome.cut.as_ref().map(|cut| TailCut {
        bytes: cut.discarded_bytes,
        line: format!(
            "{}: cut {} bytes at position {}: {}",
            file.path().display(),
            cut.discarded_bytes,
            cut.position,
            cut.reason
        ),
    });
    // Invalid data is cut. So is whatever follows the end of the segment appends
    // continue in (a recycled file's earlier batches, and this one's own that did not
    // reach the disk in order): left there, a later crash could find batches written
    // before this one that happen to continue the offsets of what is written over them.
    let cut_at = match &outcome.cut {
        Some(cut) => Some(cut.position),
        None if last && outcome.end_position < file_size => Some(outcome.end_position),
        None => None,
    };
    if let Some(position) = cut_at {
        file.truncate(position)
            .await
            .map_err(context("truncating", &path))?;
        file.fdatasync().await.map_err(context("syncing", &path))?;
    }
    let state = SegmentState {
        size: outcome.end_position,
        next_offset: outcome.next_offset,
        max_timestamp: outcome.max_timestamp,
        index,
    };
    let created_ms = created_ms(&path, now_ms);
    Ok((
        Segment::new(dir, base, file, created_ms, state),
        opened,
        tail_cut,
    ))
}

/// When the segment file was created (its birth time), so segment age survives restarts;
/// `now_ms` where the filesystem does not record it.
fn created_ms(path: &Path, now_ms: i64) -> i64 {
    std::fs::metadata(path)
        .and_then(|metadata| metadata.created())
        .ok()
        .and_then(|created| created.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(now_ms, |since| (since.as_millis() as i64).min(now_ms))
}

async fn remove_segment_files(dir: &Path, base: u64) -> Result<()> {
    for extension in ["log", "index", "timeindex"] {
        let path = super::segment::segment_path(dir, base, extension);
        file::remove_file(&path)
            .await
            .map_err(|error| StorageError::io("deleting", path, error))?;
    }
    Ok(())
}
