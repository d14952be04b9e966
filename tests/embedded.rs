//! The embedded broker: one line to start, usable at once, gone without a trace on drop.

use flumen::EmbeddedBroker;
use flumen_client::{Acks, Client};
use flumen_protocol::record::BatchBuilder;

#[test]
fn an_embedded_broker_serves_at_once_and_cleans_up_on_drop() {
    let broker = EmbeddedBroker::start().unwrap();
    let data_dir = broker.data_dir().to_path_buf();
    let mut client = Client::connect(broker.bootstrap()).unwrap();
    client.create_topic("t", 2, &[]).unwrap();
    let mut builder = BatchBuilder::new(0);
    builder.push(5, Some(b"k"), Some(b"v"), &[]);
    let batch = builder.build().unwrap();
    let result = client
        .produce("t", 1, &[batch.as_bytes()], Acks::All)
        .unwrap();
    let fetched = client
        .fetch("t", 1, result.base_offset, 1 << 20, 0)
        .unwrap();
    assert_eq!(
        fetched.batches().unwrap()[0]
            .records()
            .next()
            .unwrap()
            .value(),
        Some(&b"v"[..])
    );
    assert!(data_dir.join("t").exists());

    // Two embedded brokers side by side do not interfere.
    let other = EmbeddedBroker::start().unwrap();
    assert_ne!(other.bootstrap(), broker.bootstrap());
    drop(other);

    drop(client);
    drop(broker);
    assert!(!data_dir.exists(), "the data directory is removed on drop");
}

/// A roll leaves the old segment's seal to the broker's background task: with only
/// acks=1 produces (no flush ever asked for) and the periodic sync off, the rolled
/// segment is still sealed soon after: its reserved space dropped, its index written.
#[test]
fn the_broker_seals_rolled_segments_in_the_background() {
    let broker = EmbeddedBroker::start_with(|config| config.flush_interval_ms = 0).unwrap();
    let mut client = Client::connect(broker.bootstrap()).unwrap();
    client
        .create_topic("t", 1, &[("segment.bytes", "4194304")])
        .unwrap();
    let value = vec![7u8; 1000];
    for tag in 0..60i64 {
        let mut builder = BatchBuilder::new(tag);
        for _ in 0..100 {
            builder.push(tag, None, Some(&value), &[]);
        }
        let batch = builder.build().unwrap();
        client
            .produce("t", 0, &[batch.as_bytes()], Acks::Leader)
            .unwrap();
    }
    let partition = broker.data_dir().join("t").join("0");
    let first = partition.join(format!("{:020}.log", 0));
    let index = partition.join(format!("{:020}.index", 0));
    let sealed = || {
        std::fs::metadata(&first).unwrap().len() <= 4 << 20
            && std::fs::metadata(&index).is_ok_and(|index| index.len() > 64)
    };
    assert!(
        eventually(sealed),
        "the first segment is still unsealed: {} bytes, index {:?}",
        std::fs::metadata(&first).unwrap().len(),
        std::fs::metadata(&index).map(|index| index.len())
    );
}

/// Waits (bounded, 30 s; not a timing assertion) for `condition`, polling from the test
/// thread while the broker works; returns its last answer.
fn eventually(condition: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !condition() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    condition()
}

#[test]
fn the_broker_makes_the_next_segment_file_ahead_and_the_roll_takes_it() {
    let broker = EmbeddedBroker::start_with(|config| config.flush_interval_ms = 0).unwrap();
    let mut client = Client::connect(broker.bootstrap()).unwrap();
    client
        .create_topic("t", 1, &[("segment.bytes", "4194304")])
        .unwrap();
    let value = vec![7u8; 1000];
    let mut produce = |batches: std::ops::Range<i64>| {
        for tag in batches {
            let mut builder = BatchBuilder::new(tag);
            for _ in 0..100 {
                builder.push(tag, None, Some(&value), &[]);
            }
            let batch = builder.build().unwrap();
            client
                .produce("t", 0, &[batch.as_bytes()], Acks::Leader)
                .unwrap();
        }
    };
    let partition = broker.data_dir().join("t").join("0");
    let spare = partition.join(flumen::storage::SPARE_FILE);
    let segments = || {
        std::fs::read_dir(&partition)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "log"))
            .count()
    };
    // About 3 MB: past half the segment, short of its end.
    produce(0..30);
    assert!(
        eventually(|| spare.exists()),
        "a half-full segment gets a spare"
    );
    assert_eq!(segments(), 1);
    // Past the end: the roll takes the spare, and the seal gives it its segment name.
    produce(30..50);
    assert!(
        eventually(|| !spare.exists() && segments() == 2),
        "the spare became the second segment: spare {}, {} segments",
        spare.exists(),
        segments()
    );
}
