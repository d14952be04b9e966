//! Integration tests of the storage log on real files through io_uring.

mod common;

use std::rc::Rc;

use common::*;
use flumen::shard::ManualClock;
use flumen::storage::{LogConfig, StorageError};

#[test]
fn appended_batches_read_back_from_cache_disk_and_after_reopen() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let clock = Rc::new(ManualClock::new(1_000));
        let (log, report) = open(dir.path(), small_config(), clock.clone()).await;
        assert_eq!(report.next_offset, 0);
        let mut expected = Vec::new();
        for tag in 0..300u64 {
            let records = 1 + (tag as usize % 7);
            let info = log
                .append(batch(
                    tag,
                    records,
                    50 + (tag as usize * 37) % 900,
                    1_000 + tag as i64,
                ))
                .await
                .unwrap();
            assert_eq!(info.last_offset - info.base_offset + 1, records as u64);
            for index in 0..records {
                expected.push((tag, index as u64));
            }
        }
        assert!(log.segment_count() > 1, "small segments roll");
        let read: Vec<_> = read_all(&log).await.iter().flat_map(tags).collect();
        assert_eq!(read, expected);
        let durable = log.flush().await.unwrap();
        assert_eq!(durable, log.next_offset());
        log.close().await.unwrap();

        let (log, report) = open_uncached(dir.path(), small_config()).await;
        assert_eq!(report.bytes_cut, 0);
        assert_eq!(
            report.batches_scanned, 0,
            "a clean close leaves nothing to scan"
        );
        assert_eq!(log.next_offset(), expected.len() as u64);
        let batches = read_all(&log).await;
        assert!(batches.iter().all(|batch| !batch.from_cache()));
        let read: Vec<_> = batches.iter().flat_map(tags).collect();
        assert_eq!(read, expected);
        // Random access by offset lands on the batch containing it.
        for offset in [0, 1, 17, 500, expected.len() as u64 - 1] {
            let first = log.read(offset, 1).await.unwrap();
            assert_eq!(first.len(), 1);
            let header = first[0].header();
            assert!(header.base_offset <= offset && offset <= header.last_offset());
        }
        log.close().await.unwrap();
    });
}

#[test]
fn reads_at_the_tail_hit_the_cache_and_older_reads_miss() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let clock: Rc<dyn flumen::shard::Clock> = Rc::new(ManualClock::new(0));
        let cache = flumen::storage::TailCache::new(64 << 10);
        let (log, _) = flumen::storage::Log::open(dir.path(), small_config(), clock, cache)
            .await
            .unwrap();
        for tag in 0..100 {
            log.append(batch(tag, 4, 1000, 0)).await.unwrap();
        }
        let tail = log.read(log.next_offset() - 1, 1 << 20).await.unwrap();
        assert!(tail[0].from_cache());
        let old = log.read(0, 1 << 20).await.unwrap();
        assert!(!old[0].from_cache());
        let stats = log.cache_stats();
        assert_eq!((stats.hits, stats.misses), (1, 1));
        assert!(stats.cached_bytes <= 64 << 10);
        assert_eq!(tags(&old[0])[0], (0, 0));
    });
}

/// `read` returns a first batch larger than `max_bytes` whole; `read_bounded`, for a
/// response that holds other batches already, only if it is within the room given for
/// it, and then only what fits, from the disk and from the tail cache alike.
#[test]
fn a_large_first_batch_is_returned_whole_even_beyond_max_bytes() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        for cache_bytes in [0, 1 << 20] {
            let dir = dir.path().join(cache_bytes.to_string());
            let clock: Rc<dyn flumen::shard::Clock> = Rc::new(ManualClock::new(0));
            let cache = flumen::storage::TailCache::new(cache_bytes);
            let (log, _) = flumen::storage::Log::open(&dir, small_config(), clock, cache)
                .await
                .unwrap();
            log.append(batch(1, 10, 5000, 0)).await.unwrap();
            log.append(batch(2, 1, 10, 0)).await.unwrap();
            let read = log.read(3, 100).await.unwrap();
            assert_eq!(read.len(), 1);
            assert_eq!(read[0].header().record_count, 10);
            assert_eq!(read[0].from_cache(), cache_bytes > 0);
            let large = read[0].as_bytes().len();
            assert!(log
                .read_bounded(3, 100, large - 1)
                .await
                .unwrap()
                .is_empty());
            let within = log.read_bounded(3, 100, large).await.unwrap();
            assert_eq!(within.len(), 1, "the first within its room, the second not");
            assert_eq!(log.read_bounded(3, large, 0).await.unwrap().len(), 1);
            assert_eq!(log.read_bounded(3, 1 << 20, 0).await.unwrap().len(), 2);
            assert_eq!(log.read_bounded(10, 4096, 0).await.unwrap().len(), 1);
            assert!(log.read(11, 100).await.unwrap().is_empty());
            assert!(matches!(
                log.read(12, 100).await,
                Err(StorageError::OffsetOutOfRange { .. })
            ));
            log.close().await.unwrap();
        }
    });
}

#[test]
fn invalid_batches_are_rejected_and_nothing_is_written() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open_uncached(dir.path(), small_config()).await;
        log.append(batch(1, 2, 100, 0)).await.unwrap();
        let size = log.size_bytes();

        let mut bad_crc = batch(2, 2, 100, 0);
        let last = bad_crc.len() - 40;
        bad_crc[last] ^= 0xff;
        assert!(matches!(
            log.append(bad_crc).await,
            Err(StorageError::InvalidBatch(_))
        ));

        let mut bad_magic = batch(3, 2, 100, 0);
        bad_magic[16] = 77;
        assert!(matches!(
            log.append(bad_magic).await,
            Err(StorageError::InvalidBatch(_))
        ));

        let garbage = bytes::BytesMut::from(&[0xabu8; 256][..]);
        assert!(log.append(garbage).await.is_err());

        let too_big = batch(4, 1, 70 << 10, 0);
        assert!(matches!(
            log.append(too_big).await,
            Err(StorageError::BatchTooLarge { .. })
        ));

        assert_eq!(log.next_offset(), 2);
        assert_eq!(log.size_bytes(), size);
        log.append(batch(5, 1, 100, 0)).await.unwrap();
        let read: Vec<_> = read_all(&log).await.iter().flat_map(tags).collect();
        assert_eq!(read, vec![(1, 0), (1, 1), (5, 0)]);
    });
}

#[test]
fn segments_roll_by_age_and_retention_deletes_by_size_and_time() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let clock = Rc::new(ManualClock::new(10_000));
        let config = LogConfig {
            segment_age_ms_max: Some(1_000),
            retention_bytes: Some(600 << 10),
            retention_ms: Some(60_000),
            ..small_config()
        };
        let (log, _) = open(dir.path(), config, clock.clone()).await;
        log.append(batch(0, 1, 100, 10_000)).await.unwrap();
        clock.advance(1_000);
        log.append(batch(1, 1, 100, 11_000)).await.unwrap();
        assert_eq!(log.segment_base_offsets(), vec![0, 1], "rolled by age");

        for tag in 2..200 {
            log.append(batch(tag, 4, 2000, 11_000)).await.unwrap();
        }
        let before = log.size_bytes();
        assert!(before > 1 << 20);
        let report = log.apply_retention().await.unwrap();
        assert!(report.segments_deleted > 0);
        // Whole segments go while the rest still holds retention_bytes.
        assert!(log.size_bytes() >= 600 << 10);
        assert!(log.size_bytes() < (600 << 10) + (256 << 10));
        let start = log.log_start_offset();
        assert_eq!(start, report.log_start_offset);
        assert_eq!(start, log.segment_base_offsets()[0]);
        assert!(matches!(
            log.read(0, 100).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        assert_eq!(
            log.read(start, 100).await.unwrap()[0].header().base_offset,
            start
        );

        // Time: everything but the active segment is older than the retention window.
        clock.advance(120_000);
        log.append(batch(999, 1, 10, clock_now(&clock)))
            .await
            .unwrap();
        log.apply_retention().await.unwrap();
        assert_eq!(log.segment_count(), 1);
        assert_eq!(log.log_start_offset(), log.segment_base_offsets()[0]);
        let remaining: Vec<_> = read_all(&log).await.iter().flat_map(tags).collect();
        assert_eq!(remaining, vec![(999, 0)]);
        log.close().await.unwrap();
        let (log, _) = open(dir.path(), small_config(), clock).await;
        assert_eq!(
            read_all(&log)
                .await
                .iter()
                .flat_map(tags)
                .collect::<Vec<_>>(),
            vec![(999, 0)]
        );
    });
}

/// The files this process holds open that were removed from `dir`, with their sizes
/// (`/proc/self/fd` links to a removed file end in " (deleted)"; `metadata` through the
/// link still reaches it).
fn removed_but_open(dir: &std::path::Path) -> Vec<(String, u64)> {
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| {
            let link = entry.ok()?.path();
            let target = std::fs::read_link(&link)
                .ok()?
                .to_string_lossy()
                .into_owned();
            let removed = target.starts_with(&prefix) && target.ends_with(" (deleted)");
            removed.then(|| {
                (
                    target,
                    std::fs::metadata(&link).map_or(0, |meta| meta.len()),
                )
            })
        })
        .collect()
}

/// Retention removes the segments' names at once and frees their blocks after, in the
/// background and in steps: the pass returns with the removed files still open and most
/// of their blocks still held, and the space is given back (the files closed) soon after.
#[test]
fn retention_frees_deleted_segments_in_the_background() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let clock = Rc::new(ManualClock::new(10_000));
        // 20 MiB segments: freeing one takes three 8 MiB steps. (Recycling would keep
        // one of them as the next spare: `retention_recycles_*` below.)
        let config = LogConfig {
            segment_bytes_max: 20 << 20,
            retention_bytes: Some(20 << 20),
            recycle_segments: false,
            ..small_config()
        };
        let (log, _) = open(dir.path(), config, clock.clone()).await;
        for tag in 0..1_100 {
            log.append(batch(tag, 4, 15_000, 10_000)).await.unwrap();
        }
        assert!(log.segment_count() >= 3, "{:?}", log.segment_base_offsets());
        let report = log
            .apply_retention_freeing_within(std::time::Duration::from_millis(200))
            .await
            .unwrap();
        assert!(report.segments_deleted >= 1, "{report:?}");
        let removed = removed_but_open(dir.path());
        assert_eq!(removed.len(), report.segments_deleted, "{removed:?}");
        let left: u64 = removed.iter().map(|(_, size)| size).sum();
        assert!(left >= 16 << 20, "not freed inline: {removed:?}");
        // Freed and closed by the background task (well within the deadline: a pass's
        // deletion is paced over 200 ms here).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !removed_but_open(dir.path()).is_empty() {
            assert!(std::time::Instant::now() < deadline, "still open");
            flumen::shard::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(log.log_start_offset(), report.log_start_offset);
        log.close().await.unwrap();
    });
}

fn inode(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

/// A log with 1 MiB segments and 2 MiB retention, filled to four segments (60 KiB
/// batches, tags from 0), and the inodes of its segment files by base offset.
async fn recycling_log(
    dir: &std::path::Path,
) -> (flumen::storage::Log, u64, Vec<(u64, u64)>, LogConfig) {
    let config = LogConfig {
        segment_bytes_max: 1 << 20,
        retention_bytes: Some(2 << 20),
        ..small_config()
    };
    assert!(config.recycle_segments, "the default");
    let (log, _) = open_uncached(dir, config.clone()).await;
    let mut tag = 0;
    append_until(&log, &mut tag, |log| log.segment_count() == 4).await;
    log.flush().await.unwrap();
    log.finish_pending_seal().await.unwrap();
    let inodes = log
        .segment_base_offsets()
        .into_iter()
        .map(|base| (base, inode(&dir.join(format!("{base:020}.log")))))
        .collect();
    (log, tag, inodes, config)
}

/// Appends 60 KiB batches tagged from `tag` on until `done` holds.
async fn append_until(
    log: &flumen::storage::Log,
    tag: &mut u64,
    done: impl Fn(&flumen::storage::Log) -> bool,
) {
    while !done(log) {
        log.append(batch(*tag, 4, 15_000, 10_000)).await.unwrap();
        *tag += 1;
    }
}

/// Appends small batches (4 records of 2,000 bytes) tagged from `tag` on until the log
/// has `segments` segments.
async fn append_to_segments(log: &flumen::storage::Log, tag: &mut u64, segments: usize) {
    while log.segment_count() < segments {
        log.append(batch(*tag, 4, 2000, 0)).await.unwrap();
        *tag += 1;
    }
}

/// A [`recycling_log`] whose retention recycled a segment, switched to 256 KiB segments
/// and rolled twice: the recycled 1 MiB file became a segment and was rolled away from
/// at 256 KiB, its seal pending, with most of its old batches after its end. Returns the
/// log, the first tag it holds, the next tag, the 1 MiB and the 256 KiB configurations.
async fn recycled_segment_rolled_away_from(
    dir: &std::path::Path,
) -> (flumen::storage::Log, u64, u64, LogConfig, LogConfig) {
    let (log, mut tag, _, config) = recycling_log(dir).await;
    assert!(log.apply_retention().await.unwrap().bytes_recycled > 0);
    let start_tag = log.log_start_offset() / 4;
    let small = LogConfig {
        segment_bytes_max: 256 << 10,
        ..config.clone()
    };
    log.reconfigure(small.clone()).unwrap();
    let before = log.segment_count();
    append_until(&log, &mut tag, |log| log.segment_count() == before + 2).await;
    assert!(log.has_pending_seal());
    (log, start_tag, tag, config, small)
}

/// Every batch from the log start on, in order and with the tags appended: nothing of a
/// recycled file's earlier batches shows.
async fn assert_reads_tags(log: &flumen::storage::Log, tags_from: u64, tags_to: u64) {
    let read: Vec<u64> = read_all(log)
        .await
        .iter()
        .map(|batch| tags(batch)[0].0)
        .collect();
    let expected: Vec<u64> = (tags_from..tags_to).collect();
    assert_eq!(read, expected);
}

/// Retention keeps the newest segment it deleted as the next roll's spare: the next
/// segment is that same file (same inode), overwritten from its start; reads and a
/// reopen after a crash see only the new batches, and none of the old ones that still
/// follow them in the file.
#[test]
fn retention_recycles_a_deleted_segment_as_the_next_segment() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (log, mut tag, inodes, config) = recycling_log(dir.path()).await;
        let report = log.apply_retention().await.unwrap();
        assert!(report.segments_deleted >= 1, "{report:?}");
        let (newest_deleted, recycled_inode) = inodes[report.segments_deleted - 1];
        let spare = dir.path().join(flumen::storage::SPARE_FILE);
        assert_eq!(inode(&spare), recycled_inode, "{report:?}");
        assert!(
            report.bytes_recycled > 0 && report.bytes_recycled <= report.bytes_deleted,
            "{report:?}"
        );
        assert!(!dir
            .path()
            .join(format!("{newest_deleted:020}.log"))
            .exists());
        let start_tag = log.log_start_offset() / 4;
        // Fill the active segment until a roll takes the spare, then half the next one.
        let rolled_at = log.segment_count();
        append_until(&log, &mut tag, |log| log.segment_count() > rolled_at).await;
        let new_base = log.active_segment_base();
        for _ in 0..8 {
            log.append(batch(tag, 4, 15_000, 10_000)).await.unwrap();
            tag += 1;
        }
        // The flush syncs the data; the seal that renames the spare has not run.
        log.flush().await.unwrap();
        assert!(log.has_pending_seal());
        assert_eq!(
            inode(&spare),
            recycled_inode,
            "the spare became the segment"
        );
        let new_path = dir.path().join(format!("{new_base:020}.log"));
        assert!(!new_path.exists(), "named by the seal");
        assert!(
            std::fs::metadata(&spare).unwrap().len() > 8 * 60_000,
            "the earlier batches still follow the new ones in the file"
        );
        assert_reads_tags(&log, start_tag, tag).await;
        // A crash (no close): recovery names the spare, stops at the old batches in it
        // and cuts nothing.
        drop(log);
        let (log, report) = open_uncached(dir.path(), config).await;
        assert_eq!(report.bytes_cut, 0, "{report:?}");
        assert!(report.cuts.is_empty(), "{report:?}");
        assert_eq!(log.next_offset(), tag * 4);
        assert_eq!(
            inode(&new_path),
            recycled_inode,
            "the spare became the segment"
        );
        assert_reads_tags(&log, start_tag, tag).await;
        log.close().await.unwrap();
    });
}

/// An empty spare made ahead of the next roll (`prepare_spare`) gives way to a recycled
/// segment: retention replaces it, and its file is freed (closed with no name left).
#[test]
fn a_recycled_segment_replaces_an_empty_spare() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (log, mut tag, inodes, _) = recycling_log(dir.path()).await;
        append_until(&log, &mut tag, |log| log.wants_spare()).await;
        log.prepare_spare().await.unwrap();
        let spare = dir.path().join(flumen::storage::SPARE_FILE);
        assert!(!holds_data(&spare), "an empty, preallocated spare");
        let report = log.apply_retention().await.unwrap();
        assert!(report.bytes_recycled > 0, "{report:?}");
        let (_, recycled_inode) = inodes[report.segments_deleted - 1];
        assert_eq!(inode(&spare), recycled_inode);
        assert!(holds_data(&spare));
        assert!(
            removed_but_open(dir.path()).is_empty(),
            "the empty spare was closed: {:?}",
            removed_but_open(dir.path())
        );
        // The next roll takes the recycled file.
        let (rolled_at, start_tag) = (log.segment_count(), log.log_start_offset() / 4);
        append_until(&log, &mut tag, |log| log.segment_count() > rolled_at).await;
        log.finish_pending_seal().await.unwrap();
        let active = log.active_segment_base();
        assert_eq!(
            inode(&dir.path().join(format!("{active:020}.log"))),
            recycled_inode
        );
        assert_reads_tags(&log, start_tag, tag).await;
        log.close().await.unwrap();
    });
}

/// A roll while retention is turning a deleted segment into the spare (after its rename
/// replaced the empty spare's name, before the pass is done) does not take the empty
/// spare, whose file no longer has a name: its batches would go to a file the seal
/// cannot name, and the seal would name the recycled file instead. Every batch reads
/// back, before and after a reopen, and later rolls and seals work.
#[test]
fn a_roll_during_recycling_does_not_take_the_spare_being_replaced() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (log, mut tag, _, config) = recycling_log(dir.path()).await;
        append_until(&log, &mut tag, |log| log.wants_spare()).await;
        log.prepare_spare().await.unwrap();
        let spare = dir.path().join(flumen::storage::SPARE_FILE);
        let empty = inode(&spare);
        let retention_done = std::cell::Cell::new(false);
        let retention = async {
            let report = log.apply_retention().await;
            retention_done.set(true);
            report
        };
        let roll_once_renamed = async {
            // Once the rename has replaced the spare's name, before the pass ends (or,
            // should the pass end first, after it: the roll then comes too late for
            // the race, and the test checks only that everything reads back).
            while !retention_done.get()
                && std::fs::metadata(&spare).map_or(true, |meta| {
                    use std::os::unix::fs::MetadataExt;
                    meta.ino() == empty
                })
            {
                flumen::shard::sleep(std::time::Duration::from_micros(100)).await;
            }
            log.roll().await.unwrap();
            let mut tag = tag;
            for _ in 0..4 {
                log.append(batch(tag, 4, 15_000, 10_000)).await.unwrap();
                tag += 1;
            }
            tag
        };
        let (report, next_tag) = futures_lite::future::zip(retention, roll_once_renamed).await;
        tag = next_tag;
        let report = report.unwrap();
        assert!(report.bytes_recycled > 0, "{report:?}");
        let start_tag = log.log_start_offset() / 4;
        assert_reads_tags(&log, start_tag, tag).await;
        // The next roll takes the recycled spare, and its seal names it.
        let active = log.active_segment_base();
        append_until(&log, &mut tag, |log| log.active_segment_base() != active).await;
        log.finish_pending_seal().await.unwrap();
        log.flush().await.unwrap();
        assert_reads_tags(&log, start_tag, tag).await;
        log.close().await.unwrap();
        let (log, report) = open_uncached(dir.path(), config).await;
        assert_eq!(report.bytes_cut, 0, "{report:?}");
        assert_reads_tags(&log, start_tag, tag).await;
        log.close().await.unwrap();
    });
}

/// A spare that is already a recycled segment stays: a second pass before the next roll
/// frees what it deletes.
#[test]
fn a_recycled_spare_is_kept_by_the_next_pass() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (log, tag, _, config) = recycling_log(dir.path()).await;
        assert!(log.apply_retention().await.unwrap().bytes_recycled > 0);
        let spare = dir.path().join(flumen::storage::SPARE_FILE);
        let recycled_inode = inode(&spare);
        log.reconfigure(LogConfig {
            retention_bytes: Some(1),
            ..config
        })
        .unwrap();
        let report = log.apply_retention().await.unwrap();
        assert!(report.segments_deleted >= 1, "{report:?}");
        assert_eq!(report.bytes_recycled, 0, "{report:?}");
        assert_eq!(inode(&spare), recycled_inode);
        assert_reads_tags(&log, log.log_start_offset() / 4, tag).await;
        log.close().await.unwrap();
    });
}

/// When recycling fails (here the spare's name is taken by a directory, so the rename
/// fails), the deleted segments are removed and freed as without recycling, and the log
/// goes on.
#[test]
fn a_failed_recycling_deletes_the_segment_as_usual() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (log, mut tag, inodes, _) = recycling_log(dir.path()).await;
        let spare = dir.path().join(flumen::storage::SPARE_FILE);
        std::fs::create_dir(&spare).unwrap();
        std::fs::write(spare.join("in-the-way"), b"x").unwrap();
        let report = log.apply_retention().await.unwrap();
        assert!(report.segments_deleted >= 1, "{report:?}");
        assert_eq!(report.bytes_recycled, 0, "{report:?}");
        for (base, _) in &inodes[..report.segments_deleted] {
            assert!(!dir.path().join(format!("{base:020}.log")).exists());
        }
        let (start_tag, rolled_at) = (log.log_start_offset() / 4, log.segment_count());
        append_until(&log, &mut tag, |log| log.segment_count() > rolled_at).await;
        log.flush().await.unwrap();
        assert_reads_tags(&log, start_tag, tag).await;
        std::fs::remove_dir_all(&spare).unwrap();
        log.close().await.unwrap();
    });
}

/// A pass that deletes several segments removes their names oldest first and recycles
/// the newest in its turn; when an older one's removal fails, nothing is recycled (its
/// rename's directory sync would make the newer names' removal durable without it), the
/// pass reports the failure, and the rest are removed as usual.
#[test]
fn a_failed_removal_of_an_older_segment_stops_recycling() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, inodes, config) = recycling_log(dir.path()).await;
        log.reconfigure(LogConfig {
            retention_bytes: Some(1 << 20),
            ..config
        })
        .unwrap();
        // The oldest segment's index cannot be removed: a directory with a file in it.
        let (oldest, _) = inodes[0];
        let index = dir.path().join(format!("{oldest:020}.index"));
        std::fs::remove_file(&index).unwrap();
        std::fs::create_dir(&index).unwrap();
        std::fs::write(index.join("in-the-way"), b"x").unwrap();
        assert!(log.apply_retention().await.is_err());
        assert!(log.log_start_offset() > inodes[1].0, "two or more deleted");
        assert!(
            !dir.path().join(flumen::storage::SPARE_FILE).exists(),
            "nothing recycled"
        );
        for (base, _) in &inodes[1..] {
            if *base < log.log_start_offset() {
                assert!(!dir.path().join(format!("{base:020}.log")).exists());
            }
        }
        std::fs::remove_dir_all(&index).unwrap();
        log.close().await.unwrap();
    });
}

/// A recycled spare that no roll took yet holds only a deleted segment's batches: after
/// a crash it is removed, not taken back as a segment.
#[test]
fn an_unused_recycled_spare_is_not_recovered_as_a_segment() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (log, tag, _, config) = recycling_log(dir.path()).await;
        let report = log.apply_retention().await.unwrap();
        assert!(report.bytes_recycled > 0, "{report:?}");
        let spare = dir.path().join(flumen::storage::SPARE_FILE);
        assert!(spare.exists());
        let (bases, start) = (log.segment_base_offsets(), log.log_start_offset());
        drop(log);
        let (log, _) = open_uncached(dir.path(), config).await;
        assert!(!spare.exists(), "removed");
        assert_eq!(log.segment_base_offsets(), bases);
        assert_eq!(log.log_start_offset(), start);
        assert_reads_tags(&log, start / 4, tag).await;
        log.close().await.unwrap();
    });
}

/// A crash after a recycled segment was rolled away from but before its seal truncated
/// the old batches after its end: recovery ends the segment where its own batches end
/// and keeps the segment after it, which continues its offsets exactly; even when the
/// bytes after its end cannot be told from damage (here: overwritten with garbage), which
/// are then dropped, and not reported as a cut: no offset of the log was lost.
#[test]
fn a_crash_before_the_seal_of_a_recycled_segment_keeps_the_next_segment() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (log, start_tag, mut tag, _, small) =
            recycled_segment_rolled_away_from(dir.path()).await;
        log.append(batch(tag, 4, 15_000, 10_000)).await.unwrap();
        tag += 1;
        // Reading from disk writes everything out (no sync: the seal stays pending).
        assert_reads_tags(&log, start_tag, tag).await;
        assert!(log.has_pending_seal());
        let bases = log.segment_base_offsets();
        drop(log);
        let (log, report) = open_uncached(dir.path(), small.clone()).await;
        assert!(report.cuts.is_empty(), "{report:?}");
        assert_eq!(log.segment_base_offsets(), bases);
        assert_eq!(log.next_offset(), tag * 4);
        assert_reads_tags(&log, start_tag, tag).await;
        drop(log);
        // The same crash, with garbage after the recycled segment's 256 KiB.
        let again = dir.path().join("again");
        let (log, start_tag, tag, config, _) = recycled_segment_rolled_away_from(&again).await;
        assert_reads_tags(&log, start_tag, tag).await;
        let bases = log.segment_base_offsets();
        let recycled = bases[bases.len() - 2];
        drop(log);
        let path = again.join(format!("{recycled:020}.log"));
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 512 << 10, "the earlier batches follow");
        bytes[256 << 10..].fill(0xab);
        std::fs::write(&path, bytes).unwrap();
        let (log, report) = open_uncached(&again, config).await;
        assert!(report.cuts.is_empty(), "past the end: no cut {report:?}");
        assert_eq!(report.bytes_cut, 0);
        assert!(
            std::fs::metadata(&path).unwrap().len() <= 256 << 10,
            "the bytes past its end were dropped and the segment sealed"
        );
        assert_eq!(log.segment_base_offsets(), bases);
        assert_eq!(log.next_offset(), tag * 4);
        assert_reads_tags(&log, start_tag, tag).await;
        log.close().await.unwrap();
    });
}

fn clock_now(clock: &ManualClock) -> i64 {
    use flumen::shard::Clock;
    clock.now_ms()
}

#[test]
fn offsets_are_found_by_timestamp() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open_uncached(dir.path(), small_config()).await;
        for tag in 0..200u64 {
            // Three records per batch with timestamps 10*tag, 10*tag+1, 10*tag+2.
            let mut builder = flumen_protocol::record::BatchBuilder::new(10 * tag as i64);
            for index in 0..3 {
                builder.push(10 * tag as i64 + index, None, Some(b"v"), &[]);
            }
            log.append(bytes::BytesMut::from(builder.build().unwrap().as_bytes()))
                .await
                .unwrap();
        }
        assert_eq!(log.offset_for_timestamp(0).await.unwrap(), Some(0));
        assert_eq!(log.offset_for_timestamp(1001).await.unwrap(), Some(301));
        assert_eq!(log.offset_for_timestamp(1005).await.unwrap(), Some(303));
        assert_eq!(log.offset_for_timestamp(1992).await.unwrap(), Some(599));
        assert_eq!(log.offset_for_timestamp(5000).await.unwrap(), None);
    });
}

#[test]
fn truncation_removes_whole_batches_durably() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open_uncached(dir.path(), small_config()).await;
        for tag in 0..200 {
            log.append(batch(tag, 5, 1500, 0)).await.unwrap();
        }
        log.flush().await.unwrap();
        assert!(log.segment_count() > 2);
        // Offset 502 is inside batch 100 (offsets 500..=504): the whole batch goes.
        assert_eq!(log.truncate_to(502).await.unwrap(), 500);
        assert_eq!(log.next_offset(), 500);
        log.append(batch(7777, 2, 10, 0)).await.unwrap();
        log.flush().await.unwrap();
        let read: Vec<_> = read_all(&log).await.iter().flat_map(tags).collect();
        assert_eq!(read.len(), 502);
        assert_eq!(read[499], (99, 4));
        assert_eq!(read[500], (7777, 0));
        drop(log); // crash: no clean close

        let (log, report) = open_uncached(dir.path(), small_config()).await;
        assert_eq!(report.bytes_cut, 0);
        assert_eq!(log.next_offset(), 502);
        let read: Vec<_> = read_all(&log).await.iter().flat_map(tags).collect();
        assert_eq!(read[500], (7777, 0));
        assert!(log.truncate_to(0).await.is_ok());
        assert_eq!(log.next_offset(), 0);
        assert!(read_all(&log).await.is_empty());
    });
}

#[test]
fn leader_epochs_are_recorded_persisted_and_truncated() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open_uncached(dir.path(), small_config()).await;
        log.assign_leader_epoch(1).await.unwrap();
        log.append(batch(1, 10, 10, 0)).await.unwrap();
        log.assign_leader_epoch(3).await.unwrap();
        log.append(batch(2, 10, 10, 0)).await.unwrap();
        assert!(matches!(
            log.assign_leader_epoch(2).await,
            Err(StorageError::StaleEpoch { .. })
        ));
        let stored = log.read(15, 100).await.unwrap();
        assert_eq!(stored[0].header().partition_leader_epoch, 3);
        assert_eq!(log.epoch_end_offset(1), Some((1, 10)));
        assert_eq!(log.epoch_end_offset(2), Some((1, 10)));
        assert_eq!(log.epoch_end_offset(3), Some((3, 20)));
        assert_eq!(log.epoch_end_offset(0), None);
        log.flush().await.unwrap();
        drop(log);

        let (log, _) = open_uncached(dir.path(), small_config()).await;
        assert_eq!(log.leader_epoch(), Some(3));
        assert_eq!(log.epoch_history().len(), 2);
        log.truncate_to(10).await.unwrap();
        assert_eq!(log.leader_epoch(), Some(1));
        assert_eq!(log.epoch_end_offset(3), Some((1, 10)));
    });
}

#[test]
fn concurrent_flushes_share_fdatasyncs() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open_uncached(dir.path(), small_config()).await;
        let log = Rc::new(log);
        let mut tasks = Vec::new();
        for task in 0..8u64 {
            let log = Rc::clone(&log);
            tasks.push(glommio::spawn_local(async move {
                for round in 0..25u64 {
                    let info = log
                        .append(batch(task * 1000 + round, 1, 4000, 0))
                        .await
                        .unwrap();
                    let durable = log.flush().await.unwrap();
                    assert!(
                        durable > info.last_offset,
                        "flush covers the caller's batch"
                    );
                }
            }));
        }
        for task in tasks {
            task.await;
        }
        let syncs = log.fdatasync_count();
        eprintln!("200 flushes took {syncs} fdatasyncs");
        assert!(syncs > 0);
        assert!(
            syncs <= 100,
            "200 flush calls took {syncs} fdatasyncs: no group commit"
        );
        assert_eq!(read_all(&log).await.len(), 200);
    });
}

#[test]
fn sequential_reads_never_see_bytes_replaced_by_truncation() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_bytes_max: 8 << 20,
            ..small_config()
        };
        let (log, _) = open_uncached(dir.path(), config).await;
        for tag in 0..400 {
            log.append(batch(tag, 2, 3000, 0)).await.unwrap();
        }
        log.flush().await.unwrap();
        // Read the first half sequentially so windows are read ahead past offset 400.
        let mut offset = 0;
        while offset < 400 {
            let read = log.read(offset, 16 << 10).await.unwrap();
            offset = read.last().unwrap().header().next_offset();
        }
        log.truncate_to(offset).await.unwrap();
        for tag in 1_000..1_100 {
            log.append(batch(tag, 2, 3000, 0)).await.unwrap();
        }
        log.flush().await.unwrap();
        let read = log.read(offset, 16 << 10).await.unwrap();
        assert_eq!(
            tags(&read[0])[0],
            (1_000, 0),
            "served a window from before truncation"
        );
        let mut seen = Vec::new();
        while offset < log.next_offset() {
            let read = log.read(offset, 16 << 10).await.unwrap();
            offset = read.last().unwrap().header().next_offset();
            seen.extend(read.iter().flat_map(tags));
        }
        assert_eq!(seen.len(), 200);
        assert!(seen.iter().all(|(tag, _)| *tag >= 1_000));
    });
}

#[test]
fn staged_bytes_reach_the_file_without_a_flush_once_submitted() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open_uncached(dir.path(), small_config()).await;
        log.append(batch(1, 1, 100, 0)).await.unwrap();
        let segment = dir.path().join(format!("{:020}.log", 0));
        assert!(
            !holds_data(&segment),
            "a small append stays staged in memory"
        );
        log.submit_staged();
        assert!(
            wait_for(|| holds_data(&segment)).await,
            "submitted bytes reach the file without fdatasync"
        );
        log.submit_staged(); // nothing new: no write
        log.append(batch(2, 1, 100, 0)).await.unwrap();
        log.flush().await.unwrap();
        let read: Vec<_> = read_all(&log).await.iter().flat_map(tags).collect();
        assert_eq!(read, vec![(1, 0), (2, 0)]);
    });
}

/// `segment.bytes` raised while a segment is active: the segment grows past its old
/// limit with space still reserved ahead of its appends, not one `fallocate` per append
/// for exactly what each needs (the writer kept the limit it was activated with).
#[test]
fn a_raised_segment_limit_reaches_the_active_segment() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let config = small_config();
        let (log, _) = open_uncached(dir.path(), config.clone()).await;
        let mut tag = 0;
        while log.size_bytes() < config.segment_bytes_max - (32 << 10) {
            tag += 1;
            log.append(batch(tag, 1, 10_000, 0)).await.unwrap();
        }
        log.reconfigure(LogConfig {
            segment_bytes_max: 4 * config.segment_bytes_max,
            ..config.clone()
        })
        .unwrap();
        while log.size_bytes() < 2 * config.segment_bytes_max {
            tag += 1;
            log.append(batch(tag, 1, 10_000, 0)).await.unwrap();
        }
        log.flush().await.unwrap();
        assert_eq!(log.segment_count(), 1, "grew past the old limit");
        let file = std::fs::metadata(dir.path().join(format!("{:020}.log", 0))).unwrap();
        let end = log.size_bytes().next_multiple_of(4096);
        assert!(
            file.len() > end,
            "space reserved beyond the data: file {} bytes, data {end}",
            file.len()
        );
        log.close().await.unwrap();
    });
}

/// A roll by an append starts the next segment at once and leaves the old one's syncs
/// for later: no index files, the checkpoint and durable offset unmoved, data readable.
/// The seal then runs on its own. A flush syncs the rolled segment's data without
/// waiting for its seal, and a crash after that flush loses nothing.
#[test]
fn a_roll_leaves_the_seal_off_the_append_path() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open_uncached(dir.path(), small_config()).await;
        let mut tag = 0;
        append_to_segments(&log, &mut tag, 2).await;
        let new_base = log.segment_base_offsets()[1];
        let index = |base: u64| std::fs::read(dir.path().join(format!("{base:020}.index")));
        assert!(
            log.has_pending_seal(),
            "the append did not wait for the seal"
        );
        // The index file written at open still describes the empty segment.
        let unsealed_index = index(0).unwrap_or_default();
        assert_eq!(log.durable_offset(), 0);
        let read: Vec<_> = read_all(&log).await.iter().flat_map(tags).collect();
        assert_eq!(
            read.len(),
            tag as usize * 4,
            "the unsealed segment serves reads"
        );

        log.finish_pending_seal().await.unwrap();
        assert!(!log.has_pending_seal());
        assert_ne!(
            index(0).unwrap(),
            unsealed_index,
            "the seal wrote the index"
        );
        assert_eq!(log.durable_offset(), new_base);
        let old_size = std::fs::metadata(dir.path().join(format!("{:020}.log", 0)))
            .unwrap()
            .len();
        assert!(
            old_size <= 256 << 10,
            "the seal dropped the reserved space: {old_size}"
        );

        // Another roll, then the flush an acks=all produce makes: it syncs both
        // segments' data and leaves the rest of the seal pending.
        append_to_segments(&log, &mut tag, 3).await;
        assert!(log.has_pending_seal());
        let rolled = log.segment_base_offsets()[1];
        let syncs = log.fdatasync_count();
        assert_eq!(log.flush().await.unwrap(), log.next_offset());
        assert!(
            log.has_pending_seal(),
            "the flush did not wait for the seal"
        );
        assert!(index(rolled).is_err(), "no index files yet");
        assert_eq!(
            log.unsynced_bytes(),
            0,
            "the flush synced the active segment"
        );
        assert!(
            log.fdatasync_count() >= syncs + 2,
            "the rolled segment and the active one were synced"
        );
        drop(log); // crash: no clean close

        let (log, report) = open_uncached(dir.path(), small_config()).await;
        assert_eq!(report.bytes_cut, 0, "{report:?}");
        assert!(
            report.batches_scanned > 0,
            "the unsealed segment was scanned"
        );
        let read: Vec<_> = read_all(&log).await.iter().flat_map(tags).collect();
        assert_eq!(read.len(), tag as usize * 4);
        assert!(index(rolled).is_ok(), "recovery sealed it");
    });
}

/// Retention does not sync: a crash right after it brings the deleted segments back
/// whole (never half), and the next pass deletes them again.
#[test]
fn a_crash_after_retention_brings_back_whole_segments_only() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            retention_bytes: Some(300 << 10),
            ..small_config()
        };
        let (log, _) = open_uncached(dir.path(), config.clone()).await;
        for tag in 0..400 {
            log.append(batch(tag, 4, 2000, 0)).await.unwrap();
        }
        log.flush().await.unwrap();
        let report = log.apply_retention().await.unwrap();
        assert!(report.segments_deleted > 0);
        let start = log.log_start_offset();
        let end = log.next_offset();
        drop(log); // crash: no clean close

        let (log, recovery) = open_uncached(dir.path(), config).await;
        assert_eq!(recovery.bytes_cut, 0);
        assert_eq!(log.next_offset(), end);
        let first = log.log_start_offset();
        assert!(first <= start, "{first} > {start}");
        // Whatever came back is whole: every offset from the log start reads back.
        let read = read_all(&log).await;
        assert_eq!(read[0].header().base_offset, first);
        let records: u64 = read
            .iter()
            .map(|batch| batch.header().record_count as u64)
            .sum();
        assert_eq!(records, end - first);
        log.apply_retention().await.unwrap();
        assert_eq!(log.log_start_offset(), start);
        log.close().await.unwrap();
    });
}

/// Appends until a roll leaves the first segment unsealed, puts one batch in the second,
/// waits until it is written, and crashes (drops the log). Returns the records appended.
async fn crash_with_a_seal_pending(dir: &std::path::Path) -> u64 {
    let (log, _) = open_uncached(dir, small_config()).await;
    let mut tag = 0;
    append_to_segments(&log, &mut tag, 2).await;
    log.append(batch(tag, 4, 2000, 0)).await.unwrap();
    assert!(log.has_pending_seal());
    log.submit_staged();
    let second = dir.join(format!("{:020}.log", log.segment_base_offsets()[1]));
    assert!(wait_for(|| holds_data(&second)).await, "the write landed");
    drop(log); // crash: the seal never ran
    (tag + 1) * 4
}

/// A crash with a seal pending loses nothing that was written: recovery finds the
/// unsealed segment, seals it, and the next open trusts it.
#[test]
fn recovery_seals_a_segment_left_unsealed_by_a_crash() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let records = crash_with_a_seal_pending(dir.path()).await;
        let (log, report) = open_uncached(dir.path(), small_config()).await;
        assert_eq!(report.bytes_cut, 0);
        assert_eq!(log.next_offset(), records);
        let read: Vec<_> = read_all(&log).await.iter().flat_map(tags).collect();
        assert_eq!(read.len() as u64, records);
        let first = dir.path().join(format!("{:020}.log", 0));
        assert!(
            std::fs::metadata(&first).unwrap().len() <= 256 << 10,
            "its reserved space was dropped"
        );
        log.close().await.unwrap();
        let (_, report) = open_uncached(dir.path(), small_config()).await;
        assert_eq!(report.batches_scanned, 0, "the sealed segment is trusted");
    });
}

/// If the unsealed segment lost its unsynced tail in the crash (here: all of it), the
/// segment after it follows a hole and goes: offsets stay dense.
#[test]
fn recovery_ends_the_log_at_a_hole_before_a_later_segment() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        crash_with_a_seal_pending(dir.path()).await;
        let first = dir.path().join(format!("{:020}.log", 0));
        let length = std::fs::metadata(&first).unwrap().len() as usize;
        std::fs::write(&first, vec![0u8; length]).unwrap();
        let (log, report) = open_uncached(dir.path(), small_config()).await;
        assert!(
            report.cuts.iter().any(|cut| cut.contains("after a hole")),
            "{:?}",
            report.cuts
        );
        assert_eq!(log.next_offset(), 0);
        assert_eq!(log.segment_base_offsets(), vec![0]);
        assert!(read_all(&log).await.is_empty());
        log.append(batch(1, 1, 10, 0)).await.unwrap();
        assert_eq!(log.flush().await.unwrap(), 1);
    });
}

/// A flush whose task is cancelled while it leads a round (as the broker's tasks are at
/// shutdown) must not leave later flushes waiting for that round forever.
#[test]
fn a_flush_cancelled_mid_round_does_not_block_later_ones() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open_uncached(dir.path(), small_config()).await;
        let mut cancelled = 0;
        for tag in 0..20 {
            log.append(batch(tag, 4, 2000, 0)).await.unwrap();
            let stop = async {
                for _ in 0..3 {
                    flumen::shard::yield_to_ready_tasks().await;
                }
            };
            if flumen::shard::until(log.flush(), stop).await.is_none() {
                cancelled += 1;
            }
            let bounded = flumen::shard::until(
                log.flush(),
                flumen::shard::sleep(std::time::Duration::from_secs(10)),
            )
            .await;
            assert_eq!(
                bounded.expect("the next flush finishes").unwrap(),
                log.next_offset()
            );
        }
        assert!(cancelled > 0, "some flush was cancelled while it ran");
    });
}

#[test]
fn space_is_reserved_ahead_in_the_background_and_given_back_at_the_seal() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_bytes_max: 64 << 20,
            ..small_config()
        };
        let step = config.preallocate_bytes;
        let (log, _) = open(dir.path(), config, Rc::new(ManualClock::new(0))).await;
        let file = dir.path().join(format!("{:020}.log", 0));
        let file_len = || std::fs::metadata(&file).unwrap().len();
        for tag in 0..64 {
            log.append(batch(tag, 4, 2_000, 0)).await.unwrap();
            // The append did not wait for `fallocate`, yet a whole step is soon reserved
            // beyond the data again: the top-up ran in the background. (Reserving only
            // when an append outruns the reservation lets the room ahead fall to zero.)
            let end = log.size_bytes();
            assert!(
                wait_for(|| file_len() >= end + step).await,
                "after {end} bytes only {} are reserved",
                file_len()
            );
        }
        // Appends past the whole reservation (so the last starts a top-up), then at once a
        // roll and its seal: the seal waits for the top-up, so the reserved space is
        // dropped and stays dropped.
        for tag in 64..67 {
            log.append(batch(tag, 4, 14_000, 0)).await.unwrap();
        }
        let sealed_size = log.size_bytes();
        log.roll().await.unwrap();
        log.finish_pending_seal().await.unwrap();
        flumen::shard::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(file_len(), sealed_size);
        log.close().await.unwrap();
    });
}

/// Appends batches tagged from `tag` until the log wants a spare, and makes it. Returns
/// the next tag.
async fn fill_until_a_spare_is_made(log: &flumen::storage::Log, mut tag: u64) -> u64 {
    while !log.wants_spare() {
        log.append(batch(tag, 4, 2000, 0)).await.unwrap();
        tag += 1;
    }
    log.prepare_spare().await.unwrap();
    tag
}

/// Appends to a fresh log until its active segment is half full, prepares the spare,
/// then appends until the roll takes it. Returns the log and the records appended.
async fn roll_into_the_spare(dir: &std::path::Path) -> (flumen::storage::Log, u64) {
    let (log, _) = open_uncached(dir, small_config()).await;
    let mut tag = fill_until_a_spare_is_made(&log, 0).await;
    let spare = dir.join(flumen::storage::SPARE_FILE);
    assert!(spare.exists());
    assert!(!log.wants_spare(), "one spare at a time");
    append_to_segments(&log, &mut tag, 2).await;
    log.append(batch(tag, 4, 2000, 0)).await.unwrap();
    assert!(log.has_pending_seal());
    let second = log.segment_base_offsets()[1];
    assert!(
        !dir.join(format!("{second:020}.log")).exists(),
        "the roll took the spare: its name comes with the seal"
    );
    (log, (tag + 1) * 4)
}

#[test]
fn a_roll_takes_the_spare_and_its_seal_names_it() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (log, records) = roll_into_the_spare(dir.path()).await;
        let second = log.segment_base_offsets()[1];
        log.finish_pending_seal().await.unwrap();
        assert!(dir.path().join(format!("{second:020}.log")).exists());
        assert!(!dir.path().join(flumen::storage::SPARE_FILE).exists());
        // The next half-full segment gets a new spare; a clean close removes it unused.
        let tag = fill_until_a_spare_is_made(&log, 10_000).await;
        let total = records + (tag - 10_000) * 4;
        log.close().await.unwrap();
        assert!(!dir.path().join(flumen::storage::SPARE_FILE).exists());

        let (log, report) = open_uncached(dir.path(), small_config()).await;
        assert_eq!(
            report.batches_scanned, 0,
            "everything was sealed and trusted"
        );
        assert_eq!(log.next_offset(), total);
        assert_eq!(
            read_all(&log).await.iter().flat_map(tags).count() as u64,
            total
        );
        log.close().await.unwrap();
    });
}

/// A crash after a roll took the spare and before the seal named it: recovery gives the
/// spare its segment name back and loses nothing that was written.
#[test]
fn recovery_names_a_spare_a_crash_left_holding_data() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (log, records) = roll_into_the_spare(dir.path()).await;
        let second = log.segment_base_offsets()[1];
        log.submit_staged();
        let spare = dir.path().join(flumen::storage::SPARE_FILE);
        assert!(wait_for(|| holds_data(&spare)).await, "the write landed");
        drop(log); // crash: the seal never ran
        assert_spare_recovered(dir.path(), second, records).await;
    });
}

/// After a crash that left the spare holding the segment starting at `second`: the
/// reopened log has its name back and all `records`, and cut nothing.
async fn assert_spare_recovered(dir: &std::path::Path, second: u64, records: u64) {
    let (log, report) = open_uncached(dir, small_config()).await;
    assert_eq!(report.bytes_cut, 0, "{report:?}");
    assert!(!dir.join(flumen::storage::SPARE_FILE).exists());
    assert!(dir.join(format!("{second:020}.log")).exists());
    assert_eq!(log.next_offset(), records);
    assert_eq!(
        read_all(&log).await.iter().flat_map(tags).count() as u64,
        records
    );
    log.close().await.unwrap();
}

/// An acks=all flush after a roll onto the spare syncs the data without waiting for the
/// seal (the spare keeps its name); a crash then loses none of it.
#[test]
fn a_flush_after_a_roll_onto_the_spare_is_durable_before_the_seal() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (log, records) = roll_into_the_spare(dir.path()).await;
        let second = log.segment_base_offsets()[1];
        assert_eq!(log.flush().await.unwrap(), records);
        assert!(log.has_pending_seal(), "the flush left the seal pending");
        let spare = dir.path().join(flumen::storage::SPARE_FILE);
        assert!(spare.exists(), "not renamed yet");
        assert_eq!(log.unsynced_bytes(), 0);
        drop(log); // crash
        assert_spare_recovered(dir.path(), second, records).await;
    });
}

/// A log in `dir` rolled once, whose seal of the first segment failed: a directory
/// stands where the seal writes that segment's index file. Returns the log, the next
/// tag and that directory.
async fn rolled_with_a_failed_seal(
    dir: &std::path::Path,
) -> (flumen::storage::Log, u64, std::path::PathBuf) {
    let (log, _) = open_uncached(dir, small_config()).await;
    let mut tag = 0;
    append_to_segments(&log, &mut tag, 2).await;
    let blocker = dir.join(format!("{:020}.index.tmp", 0));
    std::fs::create_dir(&blocker).unwrap();
    assert!(log.finish_pending_seal().await.is_err());
    assert!(log.has_pending_seal());
    (log, tag, blocker)
}

/// A seal that fails (here its index file cannot be written) does not fail a flush: the
/// flush needs only the data synced. The seal stays pending and succeeds once the cause
/// is gone; a crash in between loses nothing that was flushed.
#[test]
fn a_failed_seal_does_not_fail_a_flush() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (log, mut tag, blocker) = rolled_with_a_failed_seal(dir.path()).await;
        log.append(batch(tag, 4, 2000, 0)).await.unwrap();
        tag += 1;
        assert_eq!(log.flush().await.unwrap(), tag * 4);
        assert!(log.has_pending_seal());
        std::fs::remove_dir(&blocker).unwrap();
        drop(log); // crash

        let (log, report) = open_uncached(dir.path(), small_config()).await;
        assert_eq!(report.bytes_cut, 0, "{report:?}");
        assert_eq!(log.next_offset(), tag * 4);
        let read: Vec<_> = read_all(&log).await.iter().flat_map(tags).collect();
        assert_eq!(read.len() as u64, tag * 4);
        // And without a crash, the next attempt seals it.
        let dir = tempfile::tempdir().unwrap();
        let (log, tag, blocker) = rolled_with_a_failed_seal(dir.path()).await;
        assert_eq!(log.flush().await.unwrap(), tag * 4);
        std::fs::remove_dir(&blocker).unwrap();
        log.finish_pending_seal().await.unwrap();
        assert!(!log.has_pending_seal());
        assert!(dir.path().join(format!("{:020}.index", 0)).exists());
        log.close().await.unwrap();
    });
}

/// `truncate_to` into the segment a roll onto the spare left unsealed: the seal runs
/// first (naming the spare), so the cut deletes the new segment under its own name, and
/// no later seal or recovery brings its batches back.
#[test]
fn truncating_into_a_segment_rolled_away_from_onto_the_spare() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = roll_into_the_spare(dir.path()).await;
        let second = log.segment_base_offsets()[1];
        let new_next = log.truncate_to(second / 2).await.unwrap();
        assert!(new_next <= second / 2 && new_next > 0);
        assert!(!log.has_pending_seal());
        assert_eq!(log.segment_base_offsets(), vec![0]);
        assert!(!dir.path().join(flumen::storage::SPARE_FILE).exists());
        assert!(!dir.path().join(format!("{second:020}.log")).exists());
        log.append(batch(90_000, 2, 100, 0)).await.unwrap();
        log.flush().await.unwrap();
        drop(log); // crash

        let (log, report) = open_uncached(dir.path(), small_config()).await;
        assert_eq!(report.bytes_cut, 0, "{report:?}");
        assert_eq!(log.next_offset(), new_next + 2);
        let read: Vec<_> = read_all(&log).await.iter().flat_map(tags).collect();
        assert_eq!(read.len() as u64, new_next + 2);
        assert_eq!(read.last(), Some(&(90_000, 1)));
        log.close().await.unwrap();
    });
}

/// A spare nothing was written to (a crash before any roll took it) is removed at open.
#[test]
fn an_unused_spare_is_removed_at_open() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open_uncached(dir.path(), small_config()).await;
        let tag = fill_until_a_spare_is_made(&log, 0).await;
        log.flush().await.unwrap();
        drop(log); // crash
        let spare = dir.path().join(flumen::storage::SPARE_FILE);
        assert!(spare.exists());
        let (log, report) = open_uncached(dir.path(), small_config()).await;
        assert!(!spare.exists());
        assert_eq!(log.next_offset(), tag * 4);
        assert_eq!(report.segments, 1);
        log.close().await.unwrap();
    });
}

/// The broker prepares spares from a background task that runs whenever the shard has a
/// moment, a roll's own awaits included: a spare made while a roll is taking the last
/// one would reuse its name (and truncate the file now holding the active segment).
#[test]
fn no_spare_is_made_while_a_roll_still_holds_the_last_ones_name() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open_uncached(dir.path(), small_config()).await;
        let log = Rc::new(log);
        let done = Rc::new(std::cell::Cell::new(false));
        let background = {
            let (log, done) = (Rc::clone(&log), Rc::clone(&done));
            glommio::spawn_local(async move {
                while !done.get() {
                    log.prepare_spare().await.unwrap();
                    log.finish_pending_seal().await.unwrap();
                    glommio::yield_if_needed().await;
                    flumen::shard::sleep(std::time::Duration::from_micros(50)).await;
                }
            })
        };
        let mut tag = 0;
        append_to_segments(&log, &mut tag, 12).await;
        done.set(true);
        background.await;
        let records = tag * 4;
        assert_eq!(
            read_all(&log).await.iter().flat_map(tags).count() as u64,
            records
        );
        log.close().await.unwrap();
        let log = Rc::try_unwrap(log).ok().unwrap();
        drop(log);
        let (log, report) = open_uncached(dir.path(), small_config()).await;
        assert_eq!(report.bytes_cut, 0);
        assert_eq!(log.next_offset(), records);
        assert_eq!(
            read_all(&log).await.iter().flat_map(tags).count() as u64,
            records
        );
        log.close().await.unwrap();
    });
}

/// After a crash, whatever follows the end of the segment appends continue in (here a
/// batch of an earlier segment, as a recycled file holds, then more bytes) is cut off
/// when the log is opened, so nothing written before can resurface behind later
/// appends after another crash.
#[test]
fn bytes_after_the_end_of_the_last_segment_are_cut_at_open() {
    run_on_shard(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open_uncached(dir.path(), small_config()).await;
        let mut tag = 0;
        append_to_segments(&log, &mut tag, 2).await;
        log.flush().await.unwrap();
        let bases = log.segment_base_offsets();
        let first = dir.path().join(format!("{:020}.log", bases[0]));
        let last = dir.path().join(format!("{:020}.log", bases[1]));
        let end = std::fs::metadata(&last).unwrap().len();
        drop(log); // a crash: no close

        // A whole batch from the first segment (offsets before the last's), twice, after
        // the last segment's data (which ends before any preallocated zeros).
        let earlier = std::fs::read(&first).unwrap();
        let (_, _, stale_length) = batch_layout(&first)[0];
        let stale = &earlier[..stale_length as usize];
        let logical_end = batch_layout(&last)
            .last()
            .map_or(0, |(_, position, length)| position + length);
        assert!(logical_end <= end);
        let mut file = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
        use std::io::{Seek, SeekFrom, Write};
        file.seek(SeekFrom::Start(logical_end)).unwrap();
        file.write_all(stale).unwrap();
        file.write_all(stale).unwrap();
        drop(file);
        let (log, report) = open_uncached(dir.path(), small_config()).await;
        assert_eq!(
            report.bytes_cut, 0,
            "not part of the log: nothing reported cut"
        );
        assert_eq!(log.next_offset(), tag * 4);
        assert_eq!(std::fs::metadata(&last).unwrap().len(), logical_end);
        assert_reads_tags(&log, 0, tag).await;
        log.close().await.unwrap();
    });
}
