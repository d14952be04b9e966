//! Crash-recovery torture: append and flush on real files, "crash" (drop the log without
//! closing it, abandoning in-flight writes), damage the files the way crashes and bad
//! disks do, reopen, and check what recovery kept.
//!
//! For every seed it asserts that every batch flushed before the damage point is present
//! and intact, offsets are dense, nothing damaged is returned, nothing panics, and the
//! log accepts appends again afterwards. Retention runs now and then (recycling deleted
//! segments as spares), spares are made ahead of rolls, and flushes leave rolled
//! segments' seals pending, as the broker's background work does.

mod common;

use std::path::{Path, PathBuf};

use common::*;

const SEEDS: u64 = 64;

/// Small segments and a retention limit of about two of them, so a run rolls, seals,
/// deletes and recycles.
fn config() -> flumen::storage::LogConfig {
    flumen::storage::LogConfig {
        retention_bytes: Some(384 << 10),
        ..small_config()
    }
}

/// SplitMix64: a tiny deterministic generator, so a failing seed replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

/// What was appended: per batch its base offset and the tags of its records.
#[derive(Debug, Clone)]
struct Appended {
    base_offset: u64,
    tags: Vec<(u64, u64)>,
}

struct Written {
    batches: Vec<Appended>,
    flushed_next_offset: u64,
}

fn write_and_crash(dir: PathBuf, seed: u64) -> Written {
    let (sender, receiver) = std::sync::mpsc::sync_channel(1);
    run_on_shard(move || async move {
        let mut rng = Rng(seed);
        let (log, _) = open_uncached(&dir, config()).await;
        let mut batches = Vec::new();
        let mut flushed_next_offset = 0;
        let count = 20 + rng.below(100);
        for tag in 0..count {
            if rng.below(10) == 0 {
                let epoch = log.leader_epoch().unwrap_or(0) + 1 + rng.below(3) as u32;
                log.assign_leader_epoch(epoch).await.unwrap();
            }
            let records = 1 + rng.below(8) as usize;
            let value_bytes = 16 + rng.below(3000) as usize;
            let info = log
                .append(batch(tag, records, value_bytes, tag as i64))
                .await
                .unwrap();
            batches.push(Appended {
                base_offset: info.base_offset,
                tags: (0..records as u64).map(|index| (tag, index)).collect(),
            });
            if rng.below(4) == 0 {
                flushed_next_offset = log.flush().await.unwrap();
            }
            // The broker's background work, at random moments.
            match rng.below(12) {
                0 => {
                    log.apply_retention().await.unwrap();
                }
                1 | 2 => log.prepare_spare().await.unwrap(),
                3 => log.finish_pending_seal().await.unwrap(),
                _ => {}
            }
        }
        // Crash: the log is dropped without close; unflushed writes may or may not land.
        drop(log);
        sender
            .send(Written {
                batches,
                flushed_next_offset,
            })
            .unwrap();
    });
    receiver.recv().unwrap()
}

fn files_with_extension(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == extension))
        .collect();
    files.sort();
    files
}

/// Damages the files; returns the position in the last segment from which data may be
/// damaged (`u64::MAX` if the last segment's data is untouched).
fn damage(dir: &Path, rng: &mut Rng) -> (u64, String) {
    let last = files_with_extension(dir, "log").pop().unwrap();
    let data_end = batch_layout(&last)
        .last()
        .map_or(0, |(_, position, len)| position + len);
    let file_len = std::fs::metadata(&last).unwrap().len();
    let mut bytes = std::fs::read(&last).unwrap();
    let position = rng.below(data_end.max(1) + 1);
    let kind = rng.below(5);
    let description;
    match kind {
        0 => {
            bytes.truncate(position as usize);
            description = format!("truncated at {position}");
        }
        1 => {
            for byte in &mut bytes[position as usize..] {
                *byte = 0;
            }
            description = format!("zeroed from {position}");
        }
        2 => {
            let flips = 1 + rng.below(3);
            let mut first = u64::MAX;
            for _ in 0..flips {
                let at = rng.below(data_end.max(1));
                if (at as usize) < bytes.len() {
                    bytes[at as usize] ^= 1 << rng.below(8);
                    first = first.min(at);
                }
            }
            description = format!("{flips} bit flips from {first}");
            std::fs::write(&last, &bytes).unwrap();
            return (first, description);
        }
        3 => {
            let mut indexes = files_with_extension(dir, "index");
            indexes.extend(files_with_extension(dir, "timeindex"));
            if !indexes.is_empty() {
                let victim = indexes.remove(rng.below(indexes.len() as u64) as usize);
                std::fs::remove_file(&victim).unwrap();
                return (u64::MAX, format!("deleted {}", victim.display()));
            }
            return (u64::MAX, "no index to delete".into());
        }
        _ => {
            let len = 1 + rng.below(200) as usize;
            let end = (position as usize + len).min(bytes.len());
            for byte in &mut bytes[position as usize..end] {
                *byte = rng.next() as u8;
            }
            description = format!("garbage at {position}..{end}");
        }
    }
    let _ = file_len;
    std::fs::write(&last, &bytes).unwrap();
    (position, description)
}

fn check_recovery(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let written = write_and_crash(dir.path().to_path_buf(), seed);
    let last = files_with_extension(dir.path(), "log").pop().unwrap();
    let layout = batch_layout(&last);
    let mut rng = Rng(seed ^ 0xDEAD_BEEF);
    let (damage_position, description) = damage(dir.path(), &mut rng);
    // Batches wholly before the damage (all of them in earlier segments) that were flushed
    // must survive.
    let first_damaged_offset = layout
        .iter()
        .find(|(_, position, len)| position + len > damage_position)
        .map_or(u64::MAX, |(base, _, _)| *base);
    let required_next = written.flushed_next_offset.min(first_damaged_offset);
    let expected = written.batches.clone();
    let context = format!("seed {seed}: {description}");
    let dir_path = dir.path().to_path_buf();
    run_on_shard(move || async move {
        let (log, report) = open_uncached(&dir_path, config()).await;
        assert!(
            log.next_offset() >= required_next,
            "{context}: lost flushed data: next offset {} < {required_next}; {report:?}",
            log.next_offset()
        );
        let mut next = log.log_start_offset();
        for stored in read_all(&log).await {
            let header = stored.header();
            assert_eq!(header.base_offset, next, "{context}: offsets are dense");
            let appended = expected
                .iter()
                .find(|batch| batch.base_offset == header.base_offset)
                .unwrap_or_else(|| panic!("{context}: batch at {next} was never appended"));
            assert_eq!(tags(&stored), appended.tags, "{context}: batch content");
            next = header.next_offset();
        }
        assert_eq!(next, log.next_offset(), "{context}");
        // The recovered log takes appends and survives another crash.
        let info = log.append(batch(9_999, 2, 100, 0)).await.unwrap();
        assert_eq!(info.base_offset, next);
        log.flush().await.unwrap();
        drop(log);
        let (log, report) = open_uncached(&dir_path, config()).await;
        assert_eq!(report.bytes_cut, 0, "{context}: second recovery is clean");
        assert_eq!(log.next_offset(), next + 2, "{context}");
    });
}

#[test]
fn recovery_keeps_every_flushed_batch_before_the_damage_and_nothing_damaged() {
    for seed in 0..SEEDS {
        check_recovery(seed);
    }
}
