//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::rc::Rc;

use bytes::BytesMut;
use flumen::shard::{Clock, ManualClock};
use flumen::storage::{Log, LogConfig, RecoveryReport, StoredBatch, TailCache};
use flumen_protocol::record::{BatchBuilder, BatchView, BuiltBatch};

/// Runs `make()` to completion on a fresh glommio executor in its own thread, like a
/// shard would.
pub fn run_on_shard<F, Fut>(make: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .spawn(make)
        .expect("executor starts")
        .join()
        .expect("test body does not panic");
}

/// A batch of `records` records whose values encode `(tag, index)` and have `value_bytes`.
pub fn batch(tag: u64, records: usize, value_bytes: usize, timestamp_ms: i64) -> BytesMut {
    let mut builder = BatchBuilder::new(timestamp_ms);
    for index in 0..records {
        let mut value = vec![(tag % 251) as u8; value_bytes.max(16)];
        value[..8].copy_from_slice(&tag.to_le_bytes());
        value[8..16].copy_from_slice(&(index as u64).to_le_bytes());
        let key = format!("k{tag}-{index}");
        builder.push(
            timestamp_ms,
            Some(key.as_bytes()),
            Some(&value),
            &[("tag", b"t")],
        );
    }
    BytesMut::from(builder.build().unwrap().as_bytes())
}

/// The tag encoded by [`batch`] in every record of a stored batch (full validation).
pub fn tags(stored: &StoredBatch) -> Vec<(u64, u64)> {
    let aligned = BuiltBatch::copy_from(stored.as_bytes());
    let view = BatchView::validate(aligned.as_bytes()).expect("stored batches validate fully");
    view.records()
        .map(|record| {
            let value = record.value().unwrap();
            (
                u64::from_le_bytes(value[..8].try_into().unwrap()),
                u64::from_le_bytes(value[8..16].try_into().unwrap()),
            )
        })
        .collect()
}

/// A small configuration so tests roll segments and write indexes often.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 256 << 10,
        segment_age_ms_max: None,
        retention_bytes: None,
        retention_ms: None,
        batch_bytes_max: 64 << 10,
        index_interval_bytes: 4 << 10,
        write_buffer_bytes: 16 << 10,
        writes_in_flight_max: 8,
        preallocate_bytes: 64 << 10,
        read_chunk_bytes: 32 << 10,
        recycle_segments: true,
    }
}

pub async fn open(dir: &Path, config: LogConfig, clock: Rc<ManualClock>) -> (Log, RecoveryReport) {
    let clock: Rc<dyn Clock> = clock;
    Log::open(dir, config, clock, TailCache::new(1 << 20))
        .await
        .expect("log opens")
}

pub async fn open_uncached(dir: &Path, config: LogConfig) -> (Log, RecoveryReport) {
    let clock: Rc<dyn Clock> = Rc::new(ManualClock::new(1_000));
    Log::open(dir, config, clock, TailCache::new(0))
        .await
        .expect("log opens")
}

/// Reads the whole log from its start, returning every batch.
pub async fn read_all(log: &Log) -> Vec<StoredBatch> {
    let mut offset = log.log_start_offset();
    let mut batches = Vec::new();
    while offset < log.next_offset() {
        let read = log.read(offset, 64 << 10).await.expect("read succeeds");
        assert!(!read.is_empty(), "a read below the end returns data");
        for batch in read {
            assert!(batch.header().last_offset() >= offset);
            offset = batch.header().next_offset();
            batches.push(batch);
        }
    }
    batches
}

/// Whether the file at `path` holds any non-zero byte (a background write landed).
#[allow(dead_code)]
pub fn holds_data(path: &Path) -> bool {
    std::fs::read(path).unwrap().iter().any(|&byte| byte != 0)
}

/// Polls `condition` every millisecond, for up to 10 s, on the shard (so background
/// tasks run meanwhile); returns its last answer. A bounded wait, not a timing
/// assertion: callers assert on the answer.
#[allow(dead_code)]
pub async fn wait_for(mut condition: impl FnMut() -> bool) -> bool {
    for _ in 0..10_000 {
        if condition() {
            return true;
        }
        flumen::shard::sleep(std::time::Duration::from_millis(1)).await;
    }
    condition()
}

/// The values of `topic`'s partitions `0..partitions`, parsed as record indexes (each
/// value is the decimal index it was sent with), in offset order per partition.
pub fn stored_indexes(
    broker: std::net::SocketAddr,
    topic: &str,
    partitions: u32,
) -> std::collections::HashMap<u32, Vec<u32>> {
    let mut client = flumen_client::Client::connect(broker).unwrap();
    let mut stored = std::collections::HashMap::new();
    for partition in 0..partitions {
        let (mut indexes, mut offset) = (Vec::new(), 0);
        loop {
            let fetched = client.fetch(topic, partition, offset, 4 << 20, 0).unwrap();
            let batches = fetched.batches().unwrap();
            if batches.is_empty() {
                break;
            }
            for batch in batches {
                for record in batch.records() {
                    let value = std::str::from_utf8(record.value().unwrap()).unwrap();
                    indexes.push(value.parse().unwrap());
                    offset = record.offset() + 1;
                }
            }
        }
        stored.insert(partition, indexes);
    }
    stored
}

/// Batch positions in a segment file: (base offset, position, padded length).
pub fn batch_layout(path: &Path) -> Vec<(u64, u64, u64)> {
    let bytes = std::fs::read(path).unwrap();
    let mut layout = Vec::new();
    let mut position = 0usize;
    while let Ok(header) =
        flumen_protocol::record::BatchHeader::decode(&bytes[position.min(bytes.len())..])
    {
        let padded = header.padded_length();
        if position + padded > bytes.len() {
            break;
        }
        layout.push((header.base_offset, position as u64, padded as u64));
        position += padded;
    }
    layout
}
