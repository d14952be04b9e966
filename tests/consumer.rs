//! The consumer against an embedded broker: assignment, prefetching polls, positions,
//! seek (beginning, end, offset, timestamp), pause/resume, offset reset, errors, and the
//! blocking facade.

use std::collections::HashMap;
use std::time::Duration;

use flumen::EmbeddedBroker;
use flumen_client::{
    Acks, BlockingConsumer, BlockingProducer, Client, ConsumeError, Consumer, ConsumerConfig,
    ConsumerRecord, OffsetReset, Producer, ProducerConfig, Record, SeekTo, TopicPartition,
};

const POLL: Duration = Duration::from_secs(10);

fn setup(partitions: u32) -> EmbeddedBroker {
    let broker = EmbeddedBroker::start_with(|config| config.shards = 2).unwrap();
    Client::connect(broker.bootstrap())
        .unwrap()
        .create_topic("t", partitions, &[])
        .unwrap();
    broker
}

async fn produce(broker: &EmbeddedBroker, records: impl IntoIterator<Item = Record>) {
    let mut config = ProducerConfig::new(broker.bootstrap().to_string());
    config.acks = Acks::All;
    let producer = Producer::start(config);
    let mut deliveries = Vec::new();
    for record in records {
        deliveries.push(producer.send(record).await);
    }
    for delivery in deliveries {
        delivery.await.expect("delivered");
    }
}

/// Polls until `count` records arrived (bounded by the poll timeout each time).
async fn poll_exactly(consumer: &mut Consumer, count: usize) -> Vec<ConsumerRecord> {
    let mut received = Vec::new();
    while received.len() < count {
        let records = consumer.poll(POLL).await.unwrap();
        assert!(
            !records.is_empty(),
            "no records within {POLL:?}; have {}",
            received.len()
        );
        received.extend(records.iter().map(|record| record.to_owned()));
    }
    assert_eq!(received.len(), count, "no more than was produced");
    received
}

fn numbered(partition: u32, range: std::ops::Range<u32>) -> Vec<Record> {
    range
        .map(|index| {
            Record::new("t", index.to_string())
                .with_partition(partition)
                .with_key(format!("k{index}"))
                .with_header("n", index.to_le_bytes().to_vec())
                .with_timestamp(1_000_000 + i64::from(index))
        })
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn assigned_partitions_are_read_in_order_with_bounded_polls() {
    let broker = setup(3);
    produce(
        &broker,
        (0..3).flat_map(|partition| numbered(partition, 0..700)),
    )
    .await;
    let mut config = ConsumerConfig::new(broker.bootstrap().to_string());
    config.max_poll_records = 100;
    config.fetch_max_bytes = 8 << 10;
    let mut consumer = Consumer::new(config);
    let assigned = [TopicPartition::new("t", 0), TopicPartition::new("t", 2)];
    consumer.assign(&assigned).await.unwrap();
    assert_eq!(consumer.assignment(), assigned.to_vec());

    let mut received: HashMap<u32, Vec<ConsumerRecord>> = HashMap::new();
    let mut total = 0;
    while total < 1_400 {
        let records = consumer.poll(POLL).await.unwrap();
        assert!(!records.is_empty(), "stalled at {total}");
        assert!(records.len() <= 100, "max_poll_records holds");
        total += records.len();
        for record in records.iter() {
            received
                .entry(record.partition())
                .or_default()
                .push(record.to_owned());
        }
    }
    assert_eq!(total, 1_400);
    assert!(!received.contains_key(&1), "partition 1 is not assigned");
    for partition in [0, 2] {
        let records = &received[&partition];
        for (index, record) in records.iter().enumerate() {
            assert_eq!(record.offset, index as u64);
            assert_eq!(record.value.as_deref(), Some(index.to_string().as_bytes()));
            assert_eq!(record.key.as_deref(), Some(format!("k{index}").as_bytes()));
            assert_eq!(record.timestamp_ms, 1_000_000 + index as i64);
            assert_eq!(
                record.headers,
                vec![("n".to_owned(), (index as u32).to_le_bytes().to_vec())]
            );
        }
        let position = consumer
            .position(&TopicPartition::new("t", partition))
            .unwrap();
        assert_eq!(position, Some(700));
    }
    // Nothing more: an empty poll after the timeout, not an error.
    let empty = consumer.poll(Duration::from_millis(50)).await.unwrap();
    assert!(empty.is_empty());
    assert!(matches!(
        consumer.position(&TopicPartition::new("t", 1)),
        Err(ConsumeError::NotAssigned(_))
    ));
}

#[tokio::test(flavor = "current_thread")]
async fn seek_moves_the_position_and_pause_stops_a_partition() {
    let broker = setup(2);
    produce(
        &broker,
        numbered(0, 0..50).into_iter().chain(numbered(1, 0..50)),
    )
    .await;
    let p0 = TopicPartition::new("t", 0);
    let p1 = TopicPartition::new("t", 1);
    let mut consumer = Consumer::new(ConsumerConfig::new(broker.bootstrap().to_string()));
    consumer.assign(std::slice::from_ref(&p0)).await.unwrap();

    let all = poll_exactly(&mut consumer, 50).await;
    assert_eq!(all[0].offset, 0);

    consumer.seek(&p0, SeekTo::Offset(42)).await.unwrap();
    let tail = poll_exactly(&mut consumer, 8).await;
    assert_eq!(tail.first().map(|record| record.offset), Some(42));

    consumer
        .seek(&p0, SeekTo::Timestamp(1_000_000 + 30))
        .await
        .unwrap();
    assert_eq!(consumer.position(&p0).unwrap(), Some(30));
    assert_eq!(poll_exactly(&mut consumer, 20).await[0].offset, 30);

    consumer.seek(&p0, SeekTo::Beginning).await.unwrap();
    assert_eq!(consumer.position(&p0).unwrap(), Some(0));
    consumer.seek(&p0, SeekTo::End).await.unwrap();
    assert_eq!(consumer.position(&p0).unwrap(), Some(50));
    assert!(consumer
        .poll(Duration::from_millis(50))
        .await
        .unwrap()
        .is_empty());

    // Records produced after a seek to the end arrive (long poll wakes up).
    produce(&broker, numbered(0, 50..51)).await;
    assert_eq!(poll_exactly(&mut consumer, 1).await[0].offset, 50);

    // Pause: only the other partition is served; resume picks up where it stopped.
    consumer.assign(&[p0.clone(), p1.clone()]).await.unwrap();
    assert_eq!(
        consumer.position(&p0).unwrap(),
        Some(51),
        "kept partitions keep positions"
    );
    consumer.pause(std::slice::from_ref(&p1)).unwrap();
    assert_eq!(consumer.paused(), vec![p1.clone()]);
    produce(&broker, numbered(0, 51..53)).await;
    let while_paused = poll_exactly(&mut consumer, 2).await;
    assert!(while_paused.iter().all(|record| record.partition == 0));
    consumer.resume(std::slice::from_ref(&p1)).unwrap();
    let resumed = poll_exactly(&mut consumer, 50).await;
    assert!(resumed.iter().all(|record| record.partition == 1));
    assert_eq!(resumed[0].offset, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn offset_reset_policies_and_bad_input() {
    let broker = setup(1);
    produce(&broker, numbered(0, 0..10)).await;
    let p0 = TopicPartition::new("t", 0);

    let mut latest = ConsumerConfig::new(broker.bootstrap().to_string());
    latest.auto_offset_reset = OffsetReset::Latest;
    let mut consumer = Consumer::new(latest);
    consumer.assign(std::slice::from_ref(&p0)).await.unwrap();
    assert_eq!(consumer.position(&p0).unwrap(), Some(10));

    let mut none = ConsumerConfig::new(broker.bootstrap().to_string());
    none.auto_offset_reset = OffsetReset::None;
    let mut strict = Consumer::new(none);
    strict.assign(std::slice::from_ref(&p0)).await.unwrap();
    assert!(matches!(
        strict.poll(POLL).await,
        Err(ConsumeError::NoPosition(_))
    ));
    // Past the end: out of range, reported because the policy is None.
    strict.seek(&p0, SeekTo::Offset(1_000)).await.unwrap();
    assert!(matches!(
        strict.poll(POLL).await,
        Err(ConsumeError::OffsetOutOfRange { offset: 1_000, .. })
    ));
    strict.seek(&p0, SeekTo::Offset(5)).await.unwrap();
    assert_eq!(poll_exactly(&mut strict, 5).await[0].offset, 5);

    // With Earliest, an out-of-range position resets to the log start.
    let mut earliest = Consumer::new(ConsumerConfig::new(broker.bootstrap().to_string()));
    earliest.assign(std::slice::from_ref(&p0)).await.unwrap();
    earliest.seek(&p0, SeekTo::Offset(1_000)).await.unwrap();
    assert_eq!(poll_exactly(&mut earliest, 10).await[0].offset, 0);

    let unknown = earliest.assign(&[TopicPartition::new("missing", 0)]).await;
    assert!(
        matches!(unknown, Err(ConsumeError::Client(_))),
        "{unknown:?}"
    );
    let outside = earliest.assign(&[TopicPartition::new("t", 7)]).await;
    assert!(
        matches!(outside, Err(ConsumeError::Client(_))),
        "{outside:?}"
    );
    assert!(matches!(
        earliest
            .seek(&TopicPartition::new("other", 0), SeekTo::Beginning)
            .await,
        Err(ConsumeError::NotAssigned(_))
    ));
}

/// Chunks prefetched for an earlier assignment of a partition, still in the channel when
/// it is assigned again, are not taken for the new assignment's: the records come back
/// whole and in order from the new position.
#[tokio::test(flavor = "current_thread")]
async fn a_partition_assigned_again_ignores_what_its_earlier_assignment_prefetched() {
    let broker = setup(1);
    produce(&broker, numbered(0, 0..3_000)).await;
    let p0 = TopicPartition::new("t", 0);
    let mut config = ConsumerConfig::new(broker.bootstrap().to_string());
    config.max_poll_records = 100;
    config.fetch_max_bytes = 4 << 10;
    let mut consumer = Consumer::new(config);
    consumer.assign(std::slice::from_ref(&p0)).await.unwrap();
    assert_eq!(poll_exactly(&mut consumer, 100).await[99].offset, 99);
    // Let the fetch task fill the channel, then take the partition away and back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    consumer.assign(&[]).await.unwrap();
    consumer.assign(std::slice::from_ref(&p0)).await.unwrap();
    assert_eq!(consumer.position(&p0).unwrap(), Some(0), "Earliest again");
    let mut offsets = Vec::new();
    while offsets.len() < 3_000 {
        let records = consumer.poll(POLL).await.unwrap();
        assert!(!records.is_empty(), "stalled at {}", offsets.len());
        assert_eq!(records.len(), records.iter().count(), "counted as returned");
        offsets.extend(records.iter().map(|record| record.offset()));
    }
    assert_eq!(offsets, (0..3_000).collect::<Vec<u64>>());
}

/// A position that went out of range while its reset could not be read (the topic was
/// gone) is reset by a later poll, and the partition is fetched again.
#[tokio::test(flavor = "current_thread")]
async fn a_failed_offset_reset_is_retried_by_the_next_poll() {
    let broker = setup(1);
    produce(&broker, numbered(0, 0..10)).await;
    let p0 = TopicPartition::new("t", 0);
    let mut consumer = Consumer::new(ConsumerConfig::new(broker.bootstrap().to_string()));
    consumer.assign(std::slice::from_ref(&p0)).await.unwrap();
    assert_eq!(poll_exactly(&mut consumer, 10).await.len(), 10);
    // Out of range; then the topic goes, so resetting (or fetching) fails.
    consumer.seek(&p0, SeekTo::Offset(1_000)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut admin = Client::connect(broker.bootstrap()).unwrap();
    admin.delete_topic("t").unwrap();
    let failed = consumer.poll(POLL).await;
    assert!(failed.is_err(), "{failed:?}");
    admin.create_topic("t", 1, &[]).unwrap();
    produce(&broker, numbered(0, 0..10)).await;
    let mut read = Vec::new();
    for _ in 0..60 {
        match consumer.poll(Duration::from_secs(1)).await {
            Ok(records) => read.extend(records.iter().map(|record| record.offset())),
            Err(error) => eprintln!("retrying after: {error}"),
        }
        if read.len() >= 10 {
            break;
        }
    }
    assert_eq!(read, (0..10).collect::<Vec<u64>>());
}

#[test]
fn the_blocking_facade_produces_and_consumes_from_plain_threads() {
    let broker = setup(2);
    let producer =
        BlockingProducer::start(ProducerConfig::new(broker.bootstrap().to_string())).unwrap();
    let threads: Vec<_> = (0..2)
        .map(|partition| {
            let producer = producer.clone();
            std::thread::spawn(move || {
                for delivery in numbered(partition, 0..200)
                    .into_iter()
                    .map(|record| producer.send(record))
                    .collect::<Vec<_>>()
                {
                    assert_eq!(delivery.wait().unwrap().partition, Some(partition));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    producer
        .send_and_forget(Record::new("t", "forgotten").with_partition(0))
        .unwrap();
    producer.flush();

    let consumer =
        BlockingConsumer::new(ConsumerConfig::new(broker.bootstrap().to_string())).unwrap();
    consumer
        .assign(&[TopicPartition::new("t", 0), TopicPartition::new("t", 1)])
        .unwrap();
    let mut count = 0;
    while count < 401 {
        let records = consumer.poll(POLL).unwrap();
        assert!(!records.is_empty(), "stalled at {count}");
        count += records.len();
    }
    assert_eq!(count, 401);
    assert_eq!(
        consumer.position(&TopicPartition::new("t", 0)).unwrap(),
        Some(201)
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_large_backlog_is_held_to_about_one_fetch_per_partition() {
    let broker = setup(2);
    let value = "x".repeat(1_000);
    // Batches well under the fetch size, so a fetch is about fetch_max_bytes.
    let mut config = ProducerConfig::new(broker.bootstrap().to_string());
    config.batching.batch_size_bytes = 16 << 10;
    let producer = Producer::start(config);
    let mut deliveries = Vec::new();
    for index in 0..4_000u32 {
        let record = Record::new("t", value.clone()).with_partition(index % 2);
        deliveries.push(producer.send(record).await);
    }
    for delivery in deliveries {
        delivery.await.unwrap();
    }
    let mut config = ConsumerConfig::new(broker.bootstrap().to_string());
    config.fetch_max_bytes = 64 << 10;
    config.max_poll_records = 1;
    let mut consumer = Consumer::new(config);
    consumer
        .assign(&[TopicPartition::new("t", 0), TopicPartition::new("t", 1)])
        .await
        .unwrap();
    // Let the fetch tasks fill everything they may while nobody polls.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut read = 0;
    while read < 4_000 {
        read += consumer.poll(POLL).await.unwrap().len();
        // One chunk per partition, plus the one a waiting poll may take: never the backlog.
        // (A response can exceed fetch_max_bytes by its framing.)
        assert!(
            consumer.buffered_bytes() <= 3 * (64 << 10) + 3 * 4096,
            "{} bytes buffered after {read} records",
            consumer.buffered_bytes()
        );
    }
}

/// A broker that takes the connection and never answers (a half-open connection, a
/// hung process) fails the consumer's request after `request_timeout`, instead of
/// leaving it waiting for good.
#[tokio::test(flavor = "current_thread")]
async fn a_broker_that_never_answers_is_a_timeout_not_a_hang() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming() {
            held.push(stream);
        }
    });
    let mut config = ConsumerConfig::new(address.to_string());
    config.request_timeout = Duration::from_millis(200);
    let mut consumer = Consumer::new(config);
    // A bound far above the timeout: what is checked is that it ends at all.
    let assigned = tokio::time::timeout(
        Duration::from_secs(30),
        consumer.assign(&[TopicPartition::new("t", 0)]),
    )
    .await
    .expect("the request timed out rather than waiting for good");
    let error = assigned.unwrap_err().to_string();
    assert!(error.contains("no answer within"), "{error}");
}

/// A partition whose position cannot be found (its topic was deleted while it was out
/// of range) does not hold up the others: their records keep coming, and the error is
/// reported only by polls with nothing else to return.
#[tokio::test(flavor = "current_thread")]
async fn a_partition_that_cannot_be_reset_does_not_block_the_others() {
    let broker = setup(1);
    let mut admin = Client::connect(broker.bootstrap()).unwrap();
    admin.create_topic("other", 1, &[]).unwrap();
    produce(&broker, numbered(0, 0..10)).await;
    let t0 = TopicPartition::new("t", 0);
    let other = TopicPartition::new("other", 0);
    let mut consumer = Consumer::new(ConsumerConfig::new(broker.bootstrap().to_string()));
    consumer.assign(&[t0.clone(), other.clone()]).await.unwrap();
    assert_eq!(poll_exactly(&mut consumer, 10).await.len(), 10);
    consumer.seek(&t0, SeekTo::Offset(1_000)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    admin.delete_topic("t").unwrap();
    let records: Vec<Record> = (0..20)
        .map(|index| Record::new("other", index.to_string()).with_partition(0))
        .collect();
    produce(&broker, records).await;
    let (mut read, mut errors) = (0, 0);
    for _ in 0..100 {
        match consumer.poll(Duration::from_secs(1)).await {
            Ok(records) => {
                assert!(records.iter().all(|record| record.topic() == "other"));
                read += records.len();
            }
            Err(_) => errors += 1,
        }
        if read == 20 {
            break;
        }
    }
    assert_eq!(
        read, 20,
        "the other partition's records came ({errors} errors)"
    );
}

/// Partitions assigned together with one whose position cannot be found (its topic does
/// not exist) are read all the same: the assignment reports the failure, and the
/// others' positions are found whatever order they are tried in.
#[tokio::test(flavor = "current_thread")]
async fn a_partition_without_a_position_does_not_hold_up_those_assigned_with_it() {
    let broker = setup(8);
    produce(
        &broker,
        (0..8).flat_map(|partition| numbered(partition, 0..5)),
    )
    .await;
    let mut partitions = vec![TopicPartition::new("missing", 0)];
    partitions.extend((0..8).map(|partition| TopicPartition::new("t", partition)));
    let mut consumer = Consumer::new(ConsumerConfig::new(broker.bootstrap().to_string()));
    let assigned = consumer.assign(&partitions).await;
    assert!(
        matches!(assigned, Err(ConsumeError::Client(_))),
        "{assigned:?}"
    );
    let mut read = 0;
    for _ in 0..100 {
        if let Ok(records) = consumer.poll(Duration::from_secs(1)).await {
            assert!(records.iter().all(|record| record.topic() == "t"));
            read += records.len();
        }
        if read == 40 {
            break;
        }
    }
    assert_eq!(read, 40, "every partition of t was read");
}
