//! Recovery scanning: walk a segment's batches from a trusted position, check each one,
//! and find where the valid log ends.
//!
//! A batch is accepted only if its header decodes, its CRC matches, its padding is zero,
//! its base offset continues the previous batch exactly, and its leader epoch is the one
//! the epoch history says was in force at its offset (the epoch is outside the CRC). The scan stops at the first
//! position that is
//! - all zeros (the normal end: preallocated or never-written space), or
//! - a valid batch from before the segment's base offset (the normal end of a segment in
//!   a recycled file, followed by the batches of the file's earlier use), or
//! - anything else that is not an acceptable batch: a torn write (the batch runs past the
//!   end of the file), a zero-filled or garbled block, a flipped bit, an offset that does
//!   not continue the log.
//!
//! In the second case the bytes from that position on are cut, and the outcome says how
//! many non-zero bytes were discarded and why.

use std::io;

use flumen_protocol::record::{BatchHeader, BatchView, BATCH_ALIGNMENT_BYTES, BATCH_HEADER_BYTES};

use super::config::{LogConfig, IO_ALIGNMENT_BYTES};
use super::file::{DirectFile, ReadBytes};
use super::index::SegmentIndex;
use super::meta::EpochEntry;

/// Where a scan starts: a position known to be a batch boundary and the log state there.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScanStart {
    pub position: u64,
    pub next_offset: u64,
    pub max_timestamp: i64,
}

/// What a scan found.
#[derive(Debug, Clone)]
pub(crate) struct ScanOutcome {
    /// Logical end of the valid data.
    pub end_position: u64,
    pub next_offset: u64,
    pub max_timestamp: i64,
    pub batches: u64,
    /// Every change of leader epoch seen between consecutive batches (and the first
    /// batch's epoch), for rebuilding a lost epoch history.
    pub epochs_seen: Vec<EpochEntry>,
    /// Set when invalid data (not just zeros) followed the valid data.
    pub cut: Option<Cut>,
}

/// Invalid data found after the valid prefix of a segment.
#[derive(Debug, Clone)]
pub(crate) struct Cut {
    pub position: u64,
    pub discarded_bytes: u64,
    pub reason: String,
}

/// Scans `file` from `start`, adding index entries for every accepted batch.
pub(crate) async fn scan_segment(
    file: &DirectFile,
    base_offset: u64,
    start: ScanStart,
    index: &mut SegmentIndex,
    config: &LogConfig,
    epochs: Option<&[EpochEntry]>,
) -> io::Result<ScanOutcome> {
    let (index_interval_bytes, chunk_bytes) =
        (config.index_interval_bytes, config.read_chunk_bytes);
    let file_size = file.size().await?;
    let mut outcome = ScanOutcome {
        end_position: start.position,
        next_offset: start.next_offset,
        max_timestamp: start.max_timestamp,
        batches: 0,
        epochs_seen: Vec::new(),
        cut: None,
    };
    let mut chunk = Chunk::default();
    let mut position = start.position;
    loop {
        if position + BATCH_HEADER_BYTES as u64 > file_size {
            if position < file_size {
                outcome.cut = cut_here(file, position, file_size, "torn batch header").await?;
            }
            break;
        }
        let header_bytes = chunk
            .bytes(file, position, BATCH_HEADER_BYTES, chunk_bytes)
            .await?;
        if header_bytes.iter().all(|&byte| byte == 0) {
            // Zeros where a header should be: the end of written data, unless something
            // non-zero follows (then a block was zero-filled in the middle of the log).
            outcome.cut = cut_here(file, position, file_size, "zero-filled block").await?;
            if outcome.cut.is_some()
                && earlier_use_follows(file, position, file_size, base_offset, config).await?
            {
                outcome.cut = None;
            }
            break;
        }
        let header = match BatchHeader::decode(&header_bytes) {
            Ok(header) => header,
            Err(error) => {
                outcome.cut = cut_here(file, position, file_size, &error.to_string()).await?;
                break;
            }
        };
        let padded = header.padded_length() as u64;
        if position + padded > file_size {
            outcome.cut = cut_here(file, position, file_size, "torn batch").await?;
            break;
        }
        let batch = chunk
            .bytes(file, position, padded as usize, chunk_bytes)
            .await?;
        let problem = match BatchView::validate_header_and_crc(&batch) {
            Err(error) => Some(error.to_string()),
            // A whole batch from before this segment: the file is a recycled one and its
            // earlier use's batches follow the end of this one's (see `Log`'s
            // `recycle_as_spare`). The normal end, like zeros.
            Ok(_) if header.base_offset < base_offset => break,
            Ok(_) if header.base_offset != outcome.next_offset => Some(format!(
                "batch offset {} does not continue the log at {}",
                header.base_offset, outcome.next_offset
            )),
            // The leader epoch is outside the CRC (the broker assigns it), so check it
            // against the epoch history instead: it must be the epoch in force.
            Ok(_)
                if epochs
                    .and_then(|epochs| epoch_at(epochs, header.base_offset))
                    .is_some_and(|epoch| epoch != header.partition_leader_epoch) =>
            {
                Some(format!(
                    "batch epoch {} is not the epoch in force at offset {}",
                    header.partition_leader_epoch, header.base_offset
                ))
            }
            Ok(_) => None,
        };
        if let Some(reason) = problem {
            outcome.cut = cut_here(file, position, file_size, &reason).await?;
            break;
        }
        let relative_offset =
            u32::try_from(header.base_offset - base_offset).expect("segment offsets fit u32");
        index.on_append(
            relative_offset,
            position,
            padded,
            header.max_timestamp,
            index_interval_bytes,
        );
        if outcome.epochs_seen.last().map(|entry| entry.epoch)
            != Some(header.partition_leader_epoch)
        {
            outcome.epochs_seen.push(EpochEntry {
                epoch: header.partition_leader_epoch,
                start_offset: header.base_offset,
            });
        }
        outcome.next_offset = header.next_offset();
        outcome.max_timestamp = outcome.max_timestamp.max(header.max_timestamp);
        outcome.batches += 1;
        position += padded;
        outcome.end_position = position;
        if outcome.batches.is_multiple_of(1024) {
            crate::shard::yield_now().await;
        }
    }
    Ok(outcome)
}

/// The leader epoch in force at `offset`: the latest entry starting at or before it; 0 if
/// no epoch was ever assigned; `None` below the first entry, where retention may have
/// trimmed the history and the epoch is unknown.
pub(crate) fn epoch_at(epochs: &[EpochEntry], offset: u64) -> Option<u32> {
    if epochs.is_empty() {
        return Some(0);
    }
    let after = epochs.partition_point(|entry| entry.start_offset <= offset);
    after.checked_sub(1).map(|index| epochs[index].epoch)
}

/// Whether the zeros at `position` are the normal end of a segment in a recycled file:
/// zeros to the end of their block (the writer's padding of its last write), and past
/// it, within two largest batches, a whole valid batch from before `base_offset`: the
/// file's earlier use, whose batch cut by the block boundary is the bytes before it.
/// Only asked when non-zero bytes follow the zeros (after a crash).
async fn earlier_use_follows(
    file: &DirectFile,
    position: u64,
    file_size: u64,
    base_offset: u64,
    config: &LogConfig,
) -> io::Result<bool> {
    let block_start = position - position % IO_ALIGNMENT_BYTES;
    let block = file
        .read_at(block_start, IO_ALIGNMENT_BYTES as usize)
        .await?;
    if block[(position - block_start) as usize..]
        .iter()
        .any(|&byte| byte != 0)
    {
        return Ok(false);
    }
    let after = block_start + IO_ALIGNMENT_BYTES;
    let window = (2 * config.batch_bytes_max as u64).min(file_size.saturating_sub(after));
    let bytes = file.read_at(after, window as usize).await?;
    let mut at = 0;
    while at + BATCH_HEADER_BYTES <= bytes.len() {
        let earlier = BatchHeader::decode(&bytes[at..]).is_ok_and(|header| {
            header.base_offset < base_offset
                && bytes
                    .get(at..at + header.padded_length())
                    .is_some_and(|batch| BatchView::validate_header_and_crc(batch).is_ok())
        });
        if earlier {
            return Ok(true);
        }
        at += BATCH_ALIGNMENT_BYTES;
    }
    Ok(false)
}

/// Reports a cut at `position` if any non-zero byte lies at or after it.
async fn cut_here(
    file: &DirectFile,
    position: u64,
    file_size: u64,
    reason: &str,
) -> io::Result<Option<Cut>> {
    let last_nonzero = last_nonzero_byte(file, position, file_size).await?;
    Ok(last_nonzero.map(|last| Cut {
        position,
        discarded_bytes: last + 1 - position,
        reason: reason.to_owned(),
    }))
}

async fn last_nonzero_byte(
    file: &DirectFile,
    from: u64,
    file_size: u64,
) -> io::Result<Option<u64>> {
    const STEP: u64 = 1 << 20;
    let mut last = None;
    let mut position = from - from % IO_ALIGNMENT_BYTES;
    while position < file_size {
        let bytes = file.read_at(position, STEP as usize).await?;
        if bytes.is_empty() {
            break;
        }
        if let Some(index) = bytes.iter().rposition(|&byte| byte != 0) {
            let absolute = position + index as u64;
            if absolute >= from {
                last = Some(absolute);
            }
        }
        position += bytes.len() as u64;
    }
    Ok(last)
}

/// A window of file bytes kept between lookups, so a scan reads each chunk once.
#[derive(Default)]
struct Chunk {
    start: u64,
    bytes: Option<ReadBytes>,
}

impl Chunk {
    async fn bytes(
        &mut self,
        file: &DirectFile,
        position: u64,
        len: usize,
        chunk_bytes: usize,
    ) -> io::Result<ReadBytes> {
        let covered = self.bytes.as_ref().is_some_and(|bytes| {
            position >= self.start && position + len as u64 <= self.start + bytes.len() as u64
        });
        if !covered {
            let start = position - position % IO_ALIGNMENT_BYTES;
            let want = ((position - start) as usize + len).max(chunk_bytes);
            let want = want.div_ceil(IO_ALIGNMENT_BYTES as usize) * IO_ALIGNMENT_BYTES as usize;
            self.bytes = Some(file.read_at(start, want).await?);
            self.start = start;
        }
        let bytes = self.bytes.as_ref().expect("chunk loaded");
        let offset = (position - self.start) as usize;
        bytes.slice(offset, len).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("short read at {position}"),
            )
        })
    }
}
