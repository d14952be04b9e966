//! Per-log configuration: every limit the storage layer enforces, named in one place.

use super::StorageError;

/// Alignment of every direct-I/O write and of staging buffers. Devices with larger
/// logical blocks are rejected at open (see [`super::file::DirectFile::alignment`]).
pub const IO_ALIGNMENT_BYTES: u64 = 4096;

/// Configuration of one partition's log. Topic configs map onto it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll to a new segment when the active one would grow beyond this (`segment.bytes`).
    pub segment_bytes_max: u64,
    /// Roll to a new segment when the active one is older than this (`segment.ms`).
    pub segment_age_ms_max: Option<i64>,
    /// Delete the oldest segments while the log is larger than this (`retention.bytes`).
    pub retention_bytes: Option<u64>,
    /// Delete segments whose newest record is older than this (`retention.ms`).
    pub retention_ms: Option<i64>,
    /// Largest batch accepted by `append` (`max.message.bytes`).
    pub batch_bytes_max: usize,
    /// Bytes between two sparse index entries.
    pub index_interval_bytes: u64,
    /// Size of each write staging buffer; one full buffer is one write.
    pub write_buffer_bytes: usize,
    /// Writes one segment may have in flight before appends wait.
    pub writes_in_flight_max: usize,
    /// Space reserved ahead of the write position with `fallocate`, so writes inside a
    /// segment never discover a full disk after the append was accepted.
    pub preallocate_bytes: u64,
    /// Size of each direct read when scanning or serving a cache miss.
    pub read_chunk_bytes: usize,
    /// Retention keeps a deleted segment's file as the next roll's spare instead of
    /// freeing it, so the next segment overwrites written blocks: no unwritten extents to
    /// convert at each write and `fdatasync`, nothing to free (see `docs/STORAGE.md`,
    /// "Segment recycling"). The deleted bytes stay in the spare until overwritten.
    pub recycle_segments: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes_max: 1 << 30,
            segment_age_ms_max: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            batch_bytes_max: 4 << 20,
            index_interval_bytes: 16 << 10,
            write_buffer_bytes: 1 << 20,
            writes_in_flight_max: 8,
            preallocate_bytes: 4 << 20,
            read_chunk_bytes: 1 << 20,
            recycle_segments: true,
        }
    }
}

impl LogConfig {
    /// Checks the relationships between limits.
    pub fn validate(&self) -> Result<(), StorageError> {
        let fail = |why: String| Err(StorageError::InvalidConfig(why));
        let align = IO_ALIGNMENT_BYTES as usize;
        if self.write_buffer_bytes == 0 || !self.write_buffer_bytes.is_multiple_of(align) {
            return fail(format!(
                "write_buffer_bytes must be a positive multiple of {align}"
            ));
        }
        if self.read_chunk_bytes == 0 || !self.read_chunk_bytes.is_multiple_of(align) {
            return fail(format!(
                "read_chunk_bytes must be a positive multiple of {align}"
            ));
        }
        if self.segment_bytes_max > u64::from(u32::MAX) {
            return fail("segment_bytes_max must fit the index's 32-bit positions".into());
        }
        if (self.segment_bytes_max as usize) < self.batch_bytes_max {
            return fail("segment_bytes_max must hold at least one largest batch".into());
        }
        // One append fills at most this many staging buffers; they must all fit the window
        // alongside one partial-block flush write.
        let buffers_per_batch = self.batch_bytes_max.div_ceil(self.write_buffer_bytes) + 1;
        if self.writes_in_flight_max < buffers_per_batch + 1 {
            return fail(format!(
                "writes_in_flight_max must be at least {} for batch_bytes_max {}",
                buffers_per_batch + 1,
                self.batch_bytes_max
            ));
        }
        if !self.preallocate_bytes.is_multiple_of(IO_ALIGNMENT_BYTES) {
            return fail(format!("preallocate_bytes must be a multiple of {align}"));
        }
        if self.index_interval_bytes == 0 {
            return fail("index_interval_bytes must be positive".into());
        }
        Ok(())
    }
}
