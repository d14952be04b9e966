//! A full disk, for real: a small ext4 filesystem on a loop device.
//!
//! Needs root (CI runs as root). Without root the test says so and passes, unless
//! `FLUMEN_REQUIRE_ROOT_TESTS=1` is set, as `.ci/run` does, in which case it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use flumen::storage::{LogConfig, StorageError};

struct LoopMount {
    mount_point: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopMount {
    fn new(size_mib: u64) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|error| error.to_string())?;
        let image = dir.path().join("disk.img");
        let mount_point = dir.path().join("mnt");
        std::fs::create_dir(&mount_point).map_err(|error| error.to_string())?;
        run("truncate", &["-s", &format!("{size_mib}M"), path(&image)])?;
        run("mkfs.ext4", &["-q", "-m", "0", path(&image)])?;
        run("mount", &["-o", "loop", path(&image), path(&mount_point)])?;
        Ok(Self {
            mount_point,
            _dir: dir,
        })
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(&self.mount_point).status();
        if !unmounted.is_ok_and(|status| status.success()) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mount_point)
                .status();
        }
    }
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|error| format!("{program}: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

fn available_bytes(path: &Path) -> u64 {
    let output = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A loop filesystem of `size_mib`, or `None` (the test is skipped) without root.
fn mount_or_skip(size_mib: u64) -> Option<LoopMount> {
    match LoopMount::new(size_mib) {
        Ok(mount) => Some(mount),
        Err(reason) if std::env::var("FLUMEN_REQUIRE_ROOT_TESTS").as_deref() != Ok("1") => {
            eprintln!("skipping the disk-full test (needs root and loop devices): {reason}");
            None
        }
        Err(reason) => panic!("cannot set up the loop filesystem: {reason}"),
    }
}

#[test]
fn a_full_disk_fails_appends_cleanly_and_they_resume_once_space_is_freed() {
    let Some(mount) = mount_or_skip(48) else {
        return;
    };
    let root = mount.mount_point.clone();
    // Leave about 6 MiB free: a few segments' worth.
    let ballast = root.join("ballast");
    let fill = available_bytes(&root) - (6 << 20);
    run("fallocate", &["-l", &fill.to_string(), path(&ballast)]).unwrap();

    run_on_shard(move || async move {
        let config = LogConfig {
            segment_bytes_max: 2 << 20,
            preallocate_bytes: 512 << 10,
            ..small_config()
        };
        let dir = root.join("topic").join("0");
        // A second log, half a segment in while there is still room, wants a spare.
        let other_dir = root.join("topic").join("1");
        let other_config = LogConfig {
            segment_bytes_max: 256 << 10,
            preallocate_bytes: 512 << 10,
            ..small_config()
        };
        let (other, _) = open_uncached(&other_dir, other_config).await;
        for tag in 0..5 {
            other.append(batch(tag, 4, 8000, 0)).await.unwrap();
        }
        assert!(other.wants_spare());
        let (log, _) = open_uncached(&dir, config.clone()).await;
        let mut appended = 0u64;
        let error = loop {
            match log.append(batch(appended, 4, 8000, 0)).await {
                Ok(_) => appended += 1,
                Err(error) => break error,
            }
            if appended.is_multiple_of(8) {
                log.flush().await.unwrap();
            }
            assert!(appended < 10_000, "the disk never filled up");
        };
        assert!(
            matches!(error, StorageError::DiskFull { .. }),
            "got {error:?}"
        );
        assert!(appended > 100, "only {appended} batches fit");
        let next_offset = log.next_offset();
        assert!(
            log.append(batch(0, 4, 8000, 0)).await.is_err(),
            "still full"
        );
        assert_eq!(
            log.next_offset(),
            next_offset,
            "a failed append changes nothing"
        );
        // No spare can be made on the full disk: the attempt fails cleanly, leaves no
        // file holding what its fallocate grabbed, and is not retried at once. (The probe
        // log then goes, giving back the space its reservations held.)
        let spare = other.prepare_spare().await;
        assert!(
            matches!(spare, Err(StorageError::DiskFull { .. })),
            "got {spare:?}"
        );
        assert!(!other_dir.join(flumen::storage::SPARE_FILE).exists());
        assert!(!other.wants_spare(), "it backs off");
        drop(other);
        std::fs::remove_dir_all(&other_dir).unwrap();

        log.flush().await.unwrap();
        let read: Vec<_> = read_all(&log).await.iter().flat_map(tags).collect();
        assert_eq!(read.len() as u64, appended * 4);

        std::fs::remove_file(&ballast).unwrap();
        for tag in appended..appended + 50 {
            log.append(batch(tag, 4, 8000, 0)).await.unwrap();
        }
        log.close().await.unwrap();
        let (log, report) = open_uncached(&dir, config).await;
        assert_eq!(report.bytes_cut, 0);
        let read: Vec<_> = read_all(&log).await.iter().flat_map(tags).collect();
        assert_eq!(read.len() as u64, (appended + 50) * 4);
        assert_eq!(read.last().unwrap().0, appended + 49);
        log.close().await.unwrap();
    });
    drop(mount);
}

/// A seal that fails for want of space (the disk filled right after a roll) does not
/// stop retention: lowering the retention frees the old segments, and then the seal and
/// the appends succeed again.
#[test]
fn retention_frees_space_while_the_last_roll_cannot_be_sealed() {
    let Some(mount) = mount_or_skip(48) else {
        return;
    };
    let root = mount.mount_point.clone();
    run_on_shard(move || async move {
        let config = LogConfig {
            segment_bytes_max: 1 << 20,
            preallocate_bytes: 0,
            ..small_config()
        };
        let dir = root.join("topic").join("0");
        let (log, _) = open_uncached(&dir, config.clone()).await;
        let mut tag = 0;
        while log.segment_count() < 6 {
            log.append(batch(tag, 4, 8000, 0)).await.unwrap();
            tag += 1;
        }
        log.flush().await.unwrap();
        assert!(log.has_pending_seal(), "the last roll is not sealed yet");
        // Nothing left on the disk: most of it taken at once, the rest written until full.
        let ballast = root.join("ballast");
        let most = available_bytes(&root) - (1 << 20);
        run("fallocate", &["-l", &most.to_string(), path(&ballast)]).unwrap();
        let filler = format!("of={}", path(&root.join("filler")));
        let full = run("dd", &["if=/dev/zero", &filler, "bs=4096"]);
        assert!(full.is_err(), "dd stops at a full disk");
        assert!(
            available_bytes(&root) < 64 << 10,
            "{}",
            available_bytes(&root)
        );
        let sealed = log.finish_pending_seal().await;
        assert!(
            matches!(sealed, Err(StorageError::DiskFull { .. })),
            "got {sealed:?}"
        );
        log.reconfigure(LogConfig {
            retention_bytes: Some(2 << 20),
            ..config.clone()
        })
        .unwrap();
        let report = log.apply_retention().await.unwrap();
        assert!(report.segments_deleted >= 2, "{report:?}");
        assert_eq!(
            report.bytes_recycled, 0,
            "nothing kept: the space is needed"
        );
        // The deleted segments' blocks go back in the background.
        let freed = wait_for(|| available_bytes(&root) >= 1 << 20).await;
        assert!(freed, "{} bytes free", available_bytes(&root));
        log.finish_pending_seal().await.unwrap();
        for _ in 0..20 {
            log.append(batch(tag, 4, 8000, 0)).await.unwrap();
            tag += 1;
        }
        log.flush().await.unwrap();
        let start_tag = log.log_start_offset() / 4;
        log.close().await.unwrap();
        let (log, report) = open_uncached(&dir, config).await;
        assert_eq!(report.bytes_cut, 0);
        let read: Vec<u64> = read_all(&log)
            .await
            .iter()
            .map(|batch| tags(batch)[0].0)
            .collect();
        assert_eq!(read, (start_tag..tag).collect::<Vec<u64>>());
        log.close().await.unwrap();
    });
    drop(mount);
}
