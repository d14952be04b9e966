//! Idempotent produce against a real broker: producer ids, duplicate and gap detection
//! with distinct errors, fencing, and producer state across restarts (snapshot and log
//! replay). The `kill -9` case is in `cli.rs`.

use flumen::EmbeddedBroker;
use flumen_client::{Acks, Client, ClientError, LATEST_TIMESTAMP};
use flumen_protocol::record::BatchBuilder;
use flumen_protocol::wire::ErrorCode;

fn batch(producer: (i64, i16), sequence: i32, records: usize) -> Vec<u8> {
    let mut builder = BatchBuilder::new(0);
    for index in 0..records {
        builder.push(
            index as i64,
            None,
            Some(format!("r{index}").as_bytes()),
            &[],
        );
    }
    builder.producer(producer.0, producer.1, sequence);
    builder.build().unwrap().as_bytes().to_vec()
}

fn refused(result: flumen_client::Result<impl std::fmt::Debug>) -> ErrorCode {
    match result {
        Err(ClientError::Broker { code, .. }) => code,
        other => panic!("expected a broker error, got {other:?}"),
    }
}

/// Sends `batch` again to `t`-0 and checks it is answered as a duplicate stored at `base`.
fn assert_duplicate_at(client: &mut Client, batch: &[u8], base: u64) {
    let retry = client.produce("t", 0, &[batch], Acks::All).unwrap();
    assert_eq!(
        ErrorCode::from_u16(retry.outcome.error_code),
        ErrorCode::DuplicateSequence
    );
    assert_eq!(retry.base_offset, base);
}

fn log_end(client: &mut Client, topic: &str) -> u64 {
    client
        .list_offsets(topic, 0, LATEST_TIMESTAMP)
        .unwrap()
        .offset
}

#[test]
fn duplicates_gaps_fencing_and_unknown_producers_get_distinct_answers() {
    let broker = EmbeddedBroker::start().unwrap();
    let mut client = Client::connect(broker.bootstrap()).unwrap();
    client.create_topic("t", 1, &[]).unwrap();
    let producer = client.init_producer_id().unwrap();
    assert!(producer.0 >= 0 && producer.1 == 0);

    let first = client
        .produce("t", 0, &[&batch(producer, 0, 3)], Acks::All)
        .unwrap();
    assert_eq!((first.base_offset, first.last_offset), (0, 2));
    assert_eq!(
        ErrorCode::from_u16(first.outcome.error_code),
        ErrorCode::None
    );

    // The same batch again: not appended, answered with the original offsets.
    let again = client
        .produce("t", 0, &[&batch(producer, 0, 3)], Acks::All)
        .unwrap();
    assert_eq!(
        ErrorCode::from_u16(again.outcome.error_code),
        ErrorCode::DuplicateSequence
    );
    assert_eq!((again.base_offset, again.last_offset), (0, 2));
    assert_eq!(log_end(&mut client, "t"), 3);

    // A gap: sequence 3 is next, 10 is not.
    let gap = client.produce("t", 0, &[&batch(producer, 10, 1)], Acks::All);
    assert_eq!(refused(gap), ErrorCode::OutOfOrderSequence);
    let next = client
        .produce("t", 0, &[&batch(producer, 3, 2)], Acks::Leader)
        .unwrap();
    assert_eq!(next.base_offset, 3);

    // A producer id the partition never saw must start at sequence 0.
    let stranger = client.produce("t", 0, &[&batch((producer.0 + 500, 0), 7, 1)], Acks::All);
    assert_eq!(refused(stranger), ErrorCode::UnknownProducerId);

    // A newer epoch fences the older one.
    let bumped = (producer.0, 1);
    client
        .produce("t", 0, &[&batch(bumped, 0, 1)], Acks::All)
        .unwrap();
    let zombie = client.produce("t", 0, &[&batch(producer, 5, 1)], Acks::All);
    assert_eq!(refused(zombie), ErrorCode::InvalidProducerEpoch);

    assert_eq!(
        log_end(&mut client, "t"),
        6,
        "only the accepted batches were appended"
    );
    // The broker keeps serving non-idempotent produce.
    let mut plain = BatchBuilder::new(0);
    plain.push(0, None, Some(b"plain"), &[]);
    let plain = plain.build().unwrap();
    client
        .produce("t", 0, &[plain.as_bytes()], Acks::All)
        .unwrap();
    client
        .produce("t", 0, &[plain.as_bytes()], Acks::All)
        .unwrap();
    assert_eq!(log_end(&mut client, "t"), 8);
}

#[test]
fn producer_ids_are_never_reused_and_state_survives_restarts() {
    let mut broker = EmbeddedBroker::start_with(|config| config.shards = 2).unwrap();
    let mut client = Client::connect(broker.bootstrap()).unwrap();
    client.create_topic("t", 1, &[]).unwrap();
    let a = client.init_producer_id().unwrap();
    let b = client.init_producer_id().unwrap();
    assert!(b.0 > a.0);
    client
        .produce("t", 0, &[&batch(b, 0, 4)], Acks::All)
        .unwrap();
    client
        .produce("t", 0, &[&batch(b, 4, 4)], Acks::Leader)
        .unwrap();

    // Clean restart: the state comes back from the snapshot written at close.
    broker.restart().unwrap();
    let mut client = Client::connect(broker.bootstrap()).unwrap();
    let c = client.init_producer_id().unwrap();
    assert!(
        c.0 > b.0,
        "ids handed out before the restart are not reused"
    );
    assert_duplicate_at(&mut client, &batch(b, 4, 4), 4);

    // Without snapshots the state is rebuilt by replaying the log.
    broker.shutdown().unwrap();
    let partition_dir = broker.data_dir().join("t").join("0");
    let mut removed = 0;
    for entry in std::fs::read_dir(&partition_dir).unwrap() {
        let path = entry.unwrap().path();
        if path
            .extension()
            .is_some_and(|extension| extension == "producers")
        {
            std::fs::remove_file(path).unwrap();
            removed += 1;
        }
    }
    assert!(removed > 0, "a clean shutdown writes a producer snapshot");
    broker.restart().unwrap();
    let mut client = Client::connect(broker.bootstrap()).unwrap();
    assert_duplicate_at(&mut client, &batch(b, 4, 4), 4);
    let gap = client.produce("t", 0, &[&batch(b, 9, 1)], Acks::All);
    assert_eq!(refused(gap), ErrorCode::OutOfOrderSequence);
    assert_eq!(log_end(&mut client, "t"), 8);
}

#[test]
fn snapshots_are_taken_at_segment_rolls() {
    let broker = EmbeddedBroker::start().unwrap();
    let mut client = Client::connect(broker.bootstrap()).unwrap();
    let configs = [
        ("segment.bytes", "1048576"),
        ("max.message.bytes", "262144"),
    ];
    client.create_topic("rolling", 1, &configs).unwrap();
    let producer = client.init_producer_id().unwrap();
    let mut sequence = 0;
    for _ in 0..40 {
        let mut builder = BatchBuilder::new(0);
        for _ in 0..16 {
            builder.push(0, None, Some(&[7u8; 4096]), &[]);
        }
        builder.producer(producer.0, producer.1, sequence);
        let built = builder.build().unwrap();
        client
            .produce("rolling", 0, &[built.as_bytes()], Acks::Leader)
            .unwrap();
        sequence += 16;
    }
    let snapshots = || {
        std::fs::read_dir(broker.data_dir().join("rolling").join("0"))
            .unwrap()
            .filter_map(|entry| entry.ok())
            .filter(|entry| {
                entry
                    .path()
                    .extension()
                    .is_some_and(|extension| extension == "producers")
            })
            .count()
    };
    // The broker writes them in the background, within about 100 ms of a roll.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while snapshots() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let count = snapshots();
    assert!(
        (1..=2).contains(&count),
        "snapshots are written after rolls and only the newest two are kept: {count}"
    );
}
