//! Storage benchmarks: the record codec and the per-partition [`Log`] on a real disk.
//!
//! The first argument picks what runs (a plain `main`, no harness):
//!
//! - `codec` (criterion): `BatchBuilder::build`, the header + CRC check and the full
//!   `BatchView::validate` of a batch of 1000 records with 1 KiB values (about 1 MiB),
//!   reported in bytes per second.
//! - `append`: ~1 MiB batches appended with no flush until a single final one.
//!   Prints `append_nofsync_MiBps`: appends plus the final flush, with the copies that
//!   stand in for batches arriving from the network made outside the timed rounds of 64.
//!   Also `append_nofsync_wall_MiBps`, the same run wall to wall with the copies (the true
//!   figure lies between the two, since writes progress while copies are made), and
//!   `append_nofsync_appends_only_MiBps`, without the final flush (whose `fdatasync` may
//!   push out most of the run when the disk has a volatile write cache).
//! - `append-fsync`: one ~1 MiB batch appended and flushed at a time. Prints
//!   `append_fsync_MiBps`, `append_fsync_fdatasyncs` and the mean latency.
//! - `group-commit`: 8 tasks each append a ~64 KiB batch and flush, in a loop. Prints
//!   `group_commit_batches_per_s`, `group_commit_fdatasyncs_per_s` and MiB/s.
//! - `read`: writes the log, closes it, reopens it with an empty tail cache and reads it
//!   from offset 0 with `max_bytes` 1 MiB. Direct I/O bypasses the page cache, so every
//!   byte comes from the device. Prints `read_cold_MiBps`.
//!
//! The I/O benchmarks run on a glommio executor pinned to CPU `FLUMEN_BENCH_CPU` (default
//! 0), in a fresh directory under `FLUMEN_BENCH_DIR` (default `./target`), and move
//! `FLUMEN_BENCH_BYTES` bytes (default 2 GiB). Each prints one `name=value` line per result.
//!
//! ```text
//! cargo bench --bench storage -- codec
//! FLUMEN_BENCH_DIR=/mnt/nvme FLUMEN_BENCH_BYTES=268435456 cargo bench --bench storage -- append
//! ```
//!
//! `scripts/bench-storage.sh` runs them all next to `fio` on the same disk.

use std::future::Future;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::str::FromStr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{Criterion, Throughput};
use flumen::shard::{Clock, SystemClock};
use flumen::storage::{Log, LogConfig, TailCache};
use flumen_protocol::record::{BatchBuilder, BatchView};
use glommio::{LocalExecutorBuilder, Placement};

/// Records per large batch: about 1 MiB per batch.
const LARGE_BATCH_RECORDS: usize = 1000;
/// Records per group-commit batch: about 64 KiB per batch.
const SMALL_BATCH_RECORDS: usize = 60;
/// Value size of every record.
const VALUE_BYTES: usize = 1024;
/// Batches copied ahead of each timed round of the `append` benchmark.
const ROUND_BATCHES: u64 = 64;
const GROUP_COMMIT_TASKS: u64 = 8;
const READ_MAX_BYTES: usize = 1 << 20;
const TAIL_CACHE_BYTES: u64 = 64 << 20;
/// Registered I/O memory of the executor; kept small to stay under `ulimit -l`.
const IO_MEMORY_BYTES: usize = 1 << 20;
const USAGE: &str = "usage: storage <codec|append|append-fsync|group-commit|read>";

fn main() {
    flumen::shard::tune_allocator();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.iter().find(|arg| !arg.starts_with('-'));
    match mode.map(String::as_str) {
        Some("codec") => bench_codec(),
        Some("append") => run_io(bench_append),
        Some("append-fsync") => run_io(bench_append_fsync),
        Some("group-commit") => run_io(bench_group_commit),
        Some("read") => run_io(bench_read),
        // `cargo bench` with no mode: the quick, disk-free part.
        None if args.iter().any(|arg| arg == "--bench") => bench_codec(),
        // `cargo test --benches` and the like: nothing to do.
        None => eprintln!("{USAGE}"),
        Some(other) => {
            eprintln!("unknown benchmark {other:?}; {USAGE}");
            std::process::exit(2);
        }
    }
}

/// A builder holding `records` records with keys and `VALUE_BYTES`-byte values.
fn filled_builder(records: usize) -> BatchBuilder {
    let now = SystemClock.now_ms();
    let mut builder = BatchBuilder::new(now);
    let value: Vec<u8> = (0..VALUE_BYTES).map(|index| index as u8).collect();
    for index in 0..records {
        let key = format!("key-{index:08}");
        builder.push(now, Some(key.as_bytes()), Some(&value), &[]);
    }
    builder
}

/// The encoded bytes of a batch of `records` records.
fn batch_bytes(records: usize) -> Vec<u8> {
    let built = filled_builder(records).build().expect("batch builds");
    built.as_bytes().to_vec()
}

fn bench_codec() {
    let builder = filled_builder(LARGE_BATCH_RECORDS);
    let built = builder.build().expect("batch builds");
    let mut criterion = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .without_plots();
    let mut group = criterion.benchmark_group("codec");
    group.throughput(Throughput::Bytes(built.len() as u64));
    group.bench_function("build", |bench| {
        bench.iter(|| builder.build().expect("batch builds"))
    });
    group.bench_function("header_and_crc", |bench| {
        bench.iter(|| {
            let view = BatchView::validate_header_and_crc(black_box(built.as_bytes()));
            view.expect("batch is valid").header().crc
        })
    });
    group.bench_function("validate", |bench| {
        bench.iter(|| {
            let view = BatchView::validate(black_box(built.as_bytes()));
            view.expect("batch is valid").header().record_count
        })
    });
    group.finish();
    criterion.final_summary();
    println!("codec_batch_bytes={}", built.len());
}

fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not valid")),
        Err(_) => default,
    }
}

/// Runs one I/O benchmark on a pinned executor in a fresh directory, removed afterwards.
fn run_io<F, Fut>(bench: F)
where
    F: FnOnce(PathBuf, u64) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let cpu: usize = env_or("FLUMEN_BENCH_CPU", 0);
    let bytes: u64 = env_or("FLUMEN_BENCH_BYTES", 2 << 30);
    let base: PathBuf = env_or("FLUMEN_BENCH_DIR", PathBuf::from("target"));
    std::fs::create_dir_all(&base).expect("benchmark directory can be created");
    let dir = tempfile::Builder::new()
        .prefix("flumen-bench-")
        .tempdir_in(&base)
        .expect("temporary directory can be created");
    let path = dir.path().to_path_buf();
    LocalExecutorBuilder::new(Placement::Fixed(cpu))
        .io_memory(IO_MEMORY_BYTES)
        .spawn(move || bench(path, bytes))
        .expect("executor starts")
        .join()
        .expect("benchmark completes");
}

fn bench_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 1 << 30,
        batch_bytes_max: 2 << 20,
        write_buffer_bytes: 1 << 20,
        writes_in_flight_max: 8,
        preallocate_bytes: 64 << 20,
        ..LogConfig::default()
    }
}

async fn open_log(dir: &Path, cache_bytes: u64) -> Log {
    let clock: Rc<dyn Clock> = Rc::new(SystemClock);
    let (log, _) = Log::open(dir, bench_config(), clock, TailCache::new(cache_bytes))
        .await
        .expect("log opens");
    log
}

/// Whole batches of `batch_len` bytes needed to move at least `total` bytes.
fn batches_for(total: u64, batch_len: usize) -> u64 {
    total.div_ceil(batch_len as u64).max(1)
}

fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / f64::from(1 << 20) / elapsed.as_secs_f64()
}

/// Resets the executor's file I/O counters and returns what they held:
/// `(reads, bytes read, writes, bytes written)`.
fn take_file_io() -> (u64, u64, u64, u64) {
    let stats = glommio::executor().io_stats().all_rings();
    let ((reads, read), (writes, written)) = (stats.file_reads(), stats.file_writes());
    (reads, read, writes, written)
}

fn copies(template: &[u8], count: u64) -> Vec<BytesMut> {
    (0..count).map(|_| BytesMut::from(template)).collect()
}

async fn bench_append(dir: PathBuf, total: u64) {
    let log = open_log(&dir, TAIL_CACHE_BYTES).await;
    let template = batch_bytes(LARGE_BATCH_RECORDS);
    let count = batches_for(total, template.len());
    let (mut timed, mut appended) = (Duration::ZERO, 0);
    take_file_io();
    let wall = Instant::now();
    while appended < count {
        let round = copies(&template, ROUND_BATCHES.min(count - appended));
        appended += round.len() as u64;
        let start = Instant::now();
        for batch in round {
            log.append(batch).await.expect("append succeeds");
        }
        timed += start.elapsed();
    }
    let start = Instant::now();
    log.flush().await.expect("flush succeeds");
    let flush = start.elapsed();
    let bytes = count * template.len() as u64;
    println!(
        "append_nofsync_MiBps={:.1}",
        mib_per_s(bytes, timed + flush)
    );
    println!(
        "append_nofsync_wall_MiBps={:.1}",
        mib_per_s(bytes, wall.elapsed())
    );
    println!(
        "append_nofsync_appends_only_MiBps={:.1}",
        mib_per_s(bytes, timed)
    );
    println!("append_final_flush_ms={:.1}", flush.as_secs_f64() * 1e3);
    println!(
        "append_batches={count} append_batch_bytes={}",
        template.len()
    );
    let (_, _, writes, written) = take_file_io();
    println!("append_device_writes={writes} append_device_bytes_written={written}");
    log.close().await.expect("log closes");
}

async fn bench_append_fsync(dir: PathBuf, total: u64) {
    let log = open_log(&dir, TAIL_CACHE_BYTES).await;
    let template = batch_bytes(LARGE_BATCH_RECORDS);
    let count = batches_for(total, template.len());
    let syncs_before = log.fdatasync_count();
    let mut timed = Duration::ZERO;
    for _ in 0..count {
        let batch = BytesMut::from(&template[..]);
        let start = Instant::now();
        log.append(batch).await.expect("append succeeds");
        log.flush().await.expect("flush succeeds");
        timed += start.elapsed();
    }
    let bytes = count * template.len() as u64;
    let syncs = log.fdatasync_count() - syncs_before;
    println!("append_fsync_MiBps={:.1}", mib_per_s(bytes, timed));
    println!("append_fsync_fdatasyncs={syncs}");
    println!(
        "append_fsync_mean_latency_us={:.0}",
        timed.as_secs_f64() * 1e6 / count as f64
    );
    println!(
        "append_fsync_batches={count} append_fsync_batch_bytes={}",
        template.len()
    );
    log.close().await.expect("log closes");
}

async fn bench_group_commit(dir: PathBuf, total: u64) {
    let log = Rc::new(open_log(&dir, TAIL_CACHE_BYTES).await);
    let template: Rc<[u8]> = batch_bytes(SMALL_BATCH_RECORDS).into();
    let per_task = batches_for(total, template.len()).div_ceil(GROUP_COMMIT_TASKS);
    let syncs_before = log.fdatasync_count();
    let start = Instant::now();
    let tasks: Vec<_> = (0..GROUP_COMMIT_TASKS)
        .map(|_| commit_loop(Rc::clone(&log), Rc::clone(&template), per_task))
        .map(glommio::spawn_local)
        .collect();
    for task in tasks {
        task.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let batches = per_task * GROUP_COMMIT_TASKS;
    let syncs = log.fdatasync_count() - syncs_before;
    let bytes = batches * template.len() as u64;
    println!("group_commit_batches_per_s={:.0}", batches as f64 / elapsed);
    println!(
        "group_commit_fdatasyncs_per_s={:.0}",
        syncs as f64 / elapsed
    );
    println!(
        "group_commit_MiBps={:.1}",
        bytes as f64 / f64::from(1 << 20) / elapsed
    );
    println!("group_commit_batches={batches} group_commit_fdatasyncs={syncs}");
    println!("group_commit_batch_bytes={}", template.len());
    log.close().await.expect("log closes");
}

/// One producer with `acks=all`: append a batch, wait until it is durable, repeat.
async fn commit_loop(log: Rc<Log>, template: Rc<[u8]>, count: u64) {
    for _ in 0..count {
        log.append(BytesMut::from(&template[..]))
            .await
            .expect("append succeeds");
        log.flush().await.expect("flush succeeds");
    }
}

async fn bench_read(dir: PathBuf, total: u64) {
    write_and_close(&dir, total).await;
    let log = open_log(&dir, 0).await;
    let (mut offset, mut bytes, mut calls) = (log.log_start_offset(), 0u64, 0u64);
    take_file_io();
    let start = Instant::now();
    while offset < log.next_offset() {
        let batches = log
            .read(offset, READ_MAX_BYTES)
            .await
            .expect("read succeeds");
        assert!(!batches.is_empty(), "a read below the end returns data");
        calls += 1;
        for batch in &batches {
            bytes += batch.as_bytes().len() as u64;
            offset = batch.header().next_offset();
        }
    }
    let elapsed = start.elapsed();
    assert_eq!(
        log.cache_stats().hits,
        0,
        "a cold read never hits the cache"
    );
    println!("read_cold_MiBps={:.1}", mib_per_s(bytes, elapsed));
    println!("read_cold_bytes={bytes} read_cold_calls={calls}");
    let (reads, read, _, _) = take_file_io();
    println!("read_cold_device_reads={reads} read_cold_device_bytes_read={read}");
    log.close().await.expect("log closes");
}

/// Fills a log in `dir` with at least `total` bytes of ~1 MiB batches and closes it.
async fn write_and_close(dir: &Path, total: u64) {
    let log = open_log(dir, 0).await;
    let template = batch_bytes(LARGE_BATCH_RECORDS);
    for _ in 0..batches_for(total, template.len()) {
        log.append(BytesMut::from(&template[..]))
            .await
            .expect("append succeeds");
    }
    log.close().await.expect("log closes");
}
