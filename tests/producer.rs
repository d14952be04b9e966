//! The tokio producer against an embedded broker: batching, key partitioning, delivery
//! futures, flush, typed errors and the delivery timeout.

use std::collections::HashMap;
use std::time::Duration;

use flumen::EmbeddedBroker;
use flumen_client::accumulator::{AccumulatorConfig, AppendError};
use flumen_client::{Acks, Client, ProduceError, Producer, ProducerConfig, Record};
use flumen_protocol::wire::ErrorCode;

fn record(topic: &str, key: String, value: String) -> Record {
    Record {
        topic: topic.to_owned(),
        key: Some(key.into_bytes()),
        value: Some(value.into_bytes()),
        ..Record::default()
    }
}

/// An embedded broker with one topic, and an admin client connected to it.
fn broker_with_topic(topic: &str, partitions: u32) -> (EmbeddedBroker, Client) {
    let broker = EmbeddedBroker::start().unwrap();
    let mut admin = Client::connect(broker.bootstrap()).unwrap();
    admin.create_topic(topic, partitions, &[]).unwrap();
    (broker, admin)
}

/// A producer whose batches wait for `flush` (or for filling up): what a request carries
/// is then up to the test, not to timing.
fn flushed_only(broker: &EmbeddedBroker) -> ProducerConfig {
    let mut config = ProducerConfig::new(broker.bootstrap().to_string());
    config.batching.linger = Duration::from_secs(3600);
    config
}

#[tokio::test(flavor = "current_thread")]
async fn ten_thousand_keyed_records_are_delivered_in_order_per_partition() {
    let broker = EmbeddedBroker::start_with(|config| config.shards = 2).unwrap();
    Client::connect(broker.bootstrap())
        .unwrap()
        .create_topic("events", 4, &[])
        .unwrap();
    let producer = Producer::start(ProducerConfig::new(broker.bootstrap().to_string()));
    let mut deliveries = Vec::new();
    for index in 0..10_000u32 {
        let key = format!("key-{}", index % 100);
        deliveries.push((
            key.clone(),
            index,
            producer
                .send(record("events", key, index.to_string()))
                .await,
        ));
    }
    let mut partition_of_key = HashMap::new();
    let mut offsets: HashMap<u32, Vec<u64>> = HashMap::new();
    let mut by_position = HashMap::new();
    for (key, index, delivery) in deliveries {
        let delivered = delivery.await.expect("delivered");
        let partition = *partition_of_key
            .entry(key)
            .or_insert(delivered.partition.unwrap());
        assert_eq!(
            Some(partition),
            delivered.partition,
            "same key, same partition"
        );
        let offset = delivered.offset.expect("acks=all reports offsets");
        offsets.entry(partition).or_default().push(offset);
        by_position.insert((partition, offset), index);
    }
    for (partition, mut list) in offsets {
        let count = list.len();
        list.sort_unstable();
        assert_eq!(
            list,
            (0..count as u64).collect::<Vec<_>>(),
            "dense offsets in {partition}"
        );
    }
    // What the broker stored at each reported offset is the record sent, and a
    // partition's records are in the order they were sent: the first ones went through
    // the producer's worker while it fetched the topic's metadata, the rest were appended
    // by `send` itself, and none overtook another.
    let mut client = Client::connect(broker.bootstrap()).unwrap();
    for partition in 0..4 {
        let mut offset = 0;
        let mut last_index = None;
        loop {
            let fetched = client
                .fetch("events", partition, offset, 1 << 20, 0)
                .unwrap();
            let batches = fetched.batches().unwrap();
            if batches.is_empty() {
                break;
            }
            for batch in batches {
                for stored in batch.records() {
                    let index = by_position[&(partition, stored.offset())];
                    assert_eq!(stored.value().unwrap(), index.to_string().as_bytes());
                    assert!(
                        last_index < Some(index),
                        "partition {partition}: {index} after {last_index:?}"
                    );
                    last_index = Some(index);
                    offset = stored.offset() + 1;
                }
            }
        }
    }
    producer.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn flush_sends_lingering_records_and_errors_are_typed() {
    let (broker, _admin) = broker_with_topic("t", 1);
    let mut config = flushed_only(&broker);
    config.acks = Acks::Leader;
    config.delivery_timeout = Duration::from_millis(500);
    let producer = Producer::start(config);
    let delivery = producer.send(record("t", "k".into(), "v".into())).await;
    producer.flush().await;
    assert_eq!(delivery.await.unwrap().offset, Some(0));

    let unknown = producer
        .send(record("missing", "k".into(), "v".into()))
        .await;
    assert!(matches!(
        unknown.await,
        Err(ProduceError::Broker {
            code: ErrorCode::UnknownTopic,
            ..
        })
    ));
    let invalid = Record {
        partition: Some(9),
        ..record("t", "k".into(), "v".into())
    };
    assert!(matches!(
        producer.send(invalid).await.await,
        Err(ProduceError::Rejected(_))
    ));

    // With the broker gone, a send fails clearly once the delivery timeout has passed.
    broker.stop().unwrap();
    let lost = producer.send(record("t", "k".into(), "late".into())).await;
    producer.flush().await;
    assert!(matches!(lost.await, Err(ProduceError::TimedOut(_))));
}

/// A timestamp before the epoch is refused at the send, as Kafka's brokers refuse it;
/// timestamps as far apart as the format allows share a batch and come back as sent.
#[tokio::test(flavor = "current_thread")]
async fn negative_timestamps_are_refused_and_extreme_ones_round_trip() {
    let (broker, mut admin) = broker_with_topic("times", 1);
    let producer = Producer::start(flushed_only(&broker));
    let stamped =
        |timestamp_ms| record("times", "k".into(), "v".into()).with_timestamp(timestamp_ms);
    let refused = producer.send(stamped(-5)).await;
    producer.flush().await;
    let refused = refused.await;
    assert!(
        matches!(
            refused,
            Err(ProduceError::Rejected(AppendError::InvalidTimestamp {
                timestamp_ms: -5
            }))
        ),
        "{refused:?}"
    );
    let timestamps = [0, i64::MAX, 1, i64::MAX - 1];
    let mut deliveries = Vec::new();
    for timestamp in timestamps {
        deliveries.push(producer.send(stamped(timestamp)).await);
    }
    producer.flush().await;
    for delivery in deliveries {
        delivery.await.expect("delivered");
    }
    let fetched = admin.fetch("times", 0, 0, 1 << 20, 0).unwrap();
    let batches = fetched.batches().unwrap();
    assert_eq!(batches.len(), 1, "one batch");
    let read: Vec<i64> = batches[0]
        .records()
        .map(|record| record.timestamp_ms())
        .collect();
    assert_eq!(read, timestamps);
    assert_eq!(batches[0].header().max_timestamp, i64::MAX);
}

/// Eight partitions' batches made ready together (by a flush) go out as one produce
/// request, and each lands in its own partition; with `request_bytes_max` below one
/// batch, each batch is a request of its own.
#[tokio::test(flavor = "current_thread")]
async fn ready_batches_of_a_shard_share_one_request() {
    let broker = EmbeddedBroker::start_with(|config| config.shards = 1).unwrap();
    let mut admin = Client::connect(broker.bootstrap()).unwrap();
    admin.create_topic("wide", 8, &[]).unwrap();
    for request_bytes_max in [1 << 20, 1] {
        let mut config = flushed_only(&broker);
        config.request_bytes_max = request_bytes_max;
        let producer = Producer::start(config);
        let mut deliveries = Vec::new();
        for partition in 0..8u32 {
            for index in 0..3 {
                let value = format!("{request_bytes_max}/{partition}/{index}");
                let record = Record {
                    partition: Some(partition),
                    ..record("wide", "k".into(), value.clone())
                };
                deliveries.push((partition, value, producer.send(record).await));
            }
        }
        producer.flush().await;
        let metrics = producer.metrics();
        assert_eq!(metrics.batches_delivered, 8);
        let expected_requests = if request_bytes_max == 1 { 8 } else { 1 };
        assert_eq!(
            metrics.requests_sent, expected_requests,
            "requests for 8 ready batches with request_bytes_max {request_bytes_max}"
        );
        for (partition, value, delivery) in deliveries {
            let delivered = delivery.await.expect("delivered");
            assert_eq!(delivered.partition, Some(partition));
            let offset = delivered.offset.expect("acks=all reports offsets");
            let fetched = admin.fetch("wide", partition, offset, 1 << 20, 0).unwrap();
            let batches = fetched.batches().unwrap();
            let stored = batches
                .iter()
                .flat_map(|batch| batch.records())
                .find(|stored| stored.offset() == offset)
                .and_then(|stored| stored.value().map(<[u8]>::to_vec));
            assert_eq!(
                stored.as_deref(),
                Some(value.as_bytes()),
                "partition {partition}"
            );
        }
    }
}

/// `send_with` calls its callback exactly once per record, and `send_tagged` and
/// `send_ref_tagged` their handler once per tag: with the record's offset when
/// delivered (in send order within a partition), at once with the reason when the record
/// cannot be queued, and with `Closed` once the producer is gone.
#[tokio::test(flavor = "current_thread")]
async fn callbacks_and_handlers_report_every_outcome_once() {
    use std::sync::{Arc, Mutex};

    let (broker, _admin) = broker_with_topic("calls", 1);
    let mut config = ProducerConfig::new(broker.bootstrap().to_string());
    config.batching = AccumulatorConfig {
        buffer_memory_bytes: 64 << 10,
        ..AccumulatorConfig::default()
    };
    let producer = Producer::start(config);
    type DeliveryOutcome = Result<flumen_client::Delivery, ProduceError>;
    /// A record's index, and its offset or why it has none.
    type Noted = (u32, Result<Option<u64>, String>);
    /// Every outcome, with the index of its record.
    #[derive(Default)]
    struct Outcomes(Mutex<Vec<Noted>>);
    impl Outcomes {
        fn note(&self, index: u32, outcome: DeliveryOutcome) {
            let outcome = outcome
                .map(|delivery| delivery.offset)
                .map_err(|error| format!("{error:?}"));
            self.0.lock().unwrap().push((index, outcome));
        }
    }
    impl flumen_client::DeliveryHandler for Outcomes {
        fn delivered(&self, tag: u64, outcome: DeliveryOutcome) {
            self.note(u32::try_from(tag).unwrap(), outcome)
        }
    }
    let outcomes = Arc::new(Outcomes::default());
    let handler = &outcomes;
    let callback = |index: u32| {
        let outcomes = Arc::clone(&outcomes);
        move |outcome: DeliveryOutcome| outcomes.note(index, outcome)
    };
    for index in 0..1_000u32 {
        let value = index.to_string();
        match index % 3 {
            0 => {
                producer
                    .send_with(record("calls", "k".into(), value), callback(index))
                    .await
            }
            1 => {
                let record = record("calls", "k".into(), value);
                producer.send_tagged(record, handler, index.into()).await
            }
            _ => {
                let record =
                    flumen_client::RecordRef::new("calls", value.as_bytes()).with_key(b"k");
                producer
                    .send_ref_tagged(&record, handler, index.into())
                    .await
            }
        }
    }
    // Larger than the whole buffer: refused before it is queued.
    let huge = record("calls", "k".into(), "x".repeat(128 << 10));
    producer.send_tagged(huge, handler, 1_000).await;
    producer.flush().await;
    {
        let outcomes = outcomes.0.lock().unwrap();
        assert_eq!(outcomes.len(), 1_001, "one outcome per record");
        assert!(
            matches!(&outcomes[0], (1_000, Err(reason)) if reason.contains("RecordTooLarge")),
            "the refused record is reported first, at once: {:?}",
            outcomes[0]
        );
        let mut delivered: Vec<(u32, u64)> = outcomes[1..]
            .iter()
            .map(|(index, outcome)| (*index, outcome.clone().unwrap().expect("an offset")))
            .collect();
        delivered.sort_unstable();
        let offsets: Vec<u64> = delivered.iter().map(|(_, offset)| *offset).collect();
        assert_eq!(
            offsets,
            (0..1_000).collect::<Vec<u64>>(),
            "send order is offset order"
        );
    }
    let closed = producer.clone();
    producer.close().await;
    closed
        .send_with(record("calls", "k".into(), "late".into()), callback(1_001))
        .await;
    closed
        .send_tagged(record("calls", "k".into(), "late".into()), handler, 1_002)
        .await;
    let outcomes = outcomes.0.lock().unwrap();
    assert_eq!(outcomes.len(), 1_003);
    for index in [1_001, 1_002] {
        assert!(
            matches!(&outcomes[index as usize], (got, Err(reason)) if *got == index && reason.contains("Closed")),
            "{:?}",
            outcomes[index as usize]
        );
    }
}

/// A borrowed record is copied before its send returns: one buffer rewritten for every
/// record still stores each record's own bytes, whether the send appended it itself or
/// handed it to the worker (the first ones, while the topic's metadata was fetched);
/// each is stamped with the time of its append, and its delivery says when it was
/// acknowledged.
#[tokio::test(flavor = "current_thread")]
async fn borrowed_records_are_copied_before_the_send_returns() {
    use flumen_client::RecordRef;

    let (broker, mut admin) = broker_with_topic("borrowed", 2);
    let producer = Producer::start(ProducerConfig::new(broker.bootstrap().to_string()));
    let mut value = [0u8; 32];
    let mut key = Vec::new();
    let mut deliveries = Vec::new();
    let wall_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let (sent_from, sent_from_ms) = (std::time::Instant::now(), wall_ms());
    for index in 0..2_000u32 {
        value.fill(b'a' + (index % 26) as u8);
        value[..4].copy_from_slice(&index.to_le_bytes());
        key.clear();
        key.extend_from_slice(format!("key-{}", index % 7).as_bytes());
        let headers = [("index", &value[..4])];
        let record = RecordRef::new("borrowed", &value)
            .with_key(&key)
            .with_headers(&headers);
        let delivery = if index % 2 == 0 {
            producer.send_ref(&record).await
        } else {
            let (sender, receiver) = tokio::sync::oneshot::channel();
            producer
                .send_ref_with(&record, move |outcome| {
                    let _ = sender.send(outcome);
                })
                .await;
            let delivery = async move { receiver.await.expect("the callback runs") };
            deliveries.push((index, Box::pin(delivery) as DeliveryBox));
            continue;
        };
        deliveries.push((index, Box::pin(delivery)));
    }
    let mut at = HashMap::new();
    for (index, delivery) in deliveries {
        let delivered = delivery.await.expect("delivered");
        // When the producer learned the outcome: after the sends began, before now.
        assert!(delivered.acknowledged_at >= sent_from);
        assert!(delivered.acknowledged_at <= std::time::Instant::now());
        at.insert(
            (delivered.partition.unwrap(), delivered.offset.unwrap()),
            index,
        );
    }
    producer.close().await;
    let sent_until_ms = wall_ms();
    let mut seen = 0;
    for partition in 0..2 {
        let fetched = admin.fetch("borrowed", partition, 0, 4 << 20, 0).unwrap();
        for batch in fetched.batches().unwrap() {
            for stored in batch.records() {
                let index = at[&(partition, stored.offset())];
                let value = stored.value().unwrap();
                assert_eq!(&value[..4], &index.to_le_bytes());
                assert!(value[4..]
                    .iter()
                    .all(|&byte| byte == b'a' + (index % 26) as u8));
                let expected_key = format!("key-{}", index % 7);
                assert_eq!(stored.key(), Some(expected_key.as_bytes()));
                let headers: Vec<(&str, &[u8])> = stored.headers().collect();
                assert_eq!(headers, vec![("index", &index.to_le_bytes()[..])]);
                // Records without a timestamp are stamped with the time they were
                // appended, by the send or (handed over) by the worker.
                let stamped = stored.timestamp_ms();
                assert!(
                    (sent_from_ms..=sent_until_ms).contains(&stamped),
                    "{stamped} outside {sent_from_ms}..={sent_until_ms}"
                );
                seen += 1;
            }
        }
    }
    assert_eq!(seen, 2_000);
}

/// A delivery awaited either way: a `DeliveryFuture` or a callback's outcome.
type DeliveryBox = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<flumen_client::Delivery, ProduceError>>>,
>;

/// A request gathering several partitions' batches can be larger than the broker's
/// frame limit though each batch fits: the broker refuses the frame, and the producer
/// sends the same batches one per request instead of failing them.
#[tokio::test(flavor = "current_thread")]
async fn batches_that_fit_alone_are_delivered_when_together_they_exceed_the_frame_limit() {
    let broker = EmbeddedBroker::start_with(|config| {
        config.shards = 1;
        config.frame_bytes_max = 128 << 10;
        config.log.batch_bytes_max = 64 << 10;
    })
    .unwrap();
    Client::connect(broker.bootstrap())
        .unwrap()
        .create_topic("framed", 5, &[])
        .unwrap();
    let mut config = flushed_only(&broker);
    config.batching.batch_size_bytes = 48 << 10;
    let producer = Producer::start(config);
    let mut deliveries = Vec::new();
    for partition in 0..5u32 {
        for index in 0..3 {
            let value = format!("{partition}/{index}/{}", "x".repeat(10 << 10));
            let record = Record {
                partition: Some(partition),
                ..record("framed", "k".into(), value)
            };
            deliveries.push(producer.send(record).await);
        }
    }
    // Five batches of about 30 KiB in one request: over the 128 KiB frame limit.
    producer.flush().await;
    for delivery in deliveries {
        delivery.await.expect("each batch fits a frame on its own");
    }
    let metrics = producer.metrics();
    assert_eq!((metrics.batches_delivered, metrics.records_failed), (5, 0));
    assert_eq!(
        metrics.requests_sent, 1,
        "one sortie, split after the refusal"
    );
}

/// `flush` waits for the records sent before it, not for those other tasks keep sending
/// meanwhile: it returns while a sender never stops, and those earlier records have
/// their outcomes when it does.
#[tokio::test(flavor = "current_thread")]
async fn flush_returns_while_other_tasks_keep_sending() {
    let (broker, _client) = broker_with_topic("t", 4);
    let mut config = ProducerConfig::new(broker.bootstrap().to_string());
    config.batching.batch_size_bytes = 4 << 10;
    // A small buffer: little is queued ahead of the records a flush waits for.
    config.batching.buffer_memory_bytes = 64 << 10;
    let producer = Producer::start(config);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (producer, stop) = (producer.clone(), std::sync::Arc::clone(&stop));
        tokio::spawn(async move {
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                producer
                    .send_with(record("t", sent.to_string(), "v".repeat(200)), |_| {})
                    .await;
                sent += 1;
            }
            sent
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        let mut before = Vec::new();
        for index in 0..10 {
            before.push(
                producer
                    .send(record("t", format!("b{index}"), "x".into()))
                    .await,
            );
        }
        tokio::time::timeout(Duration::from_secs(30), producer.flush())
            .await
            .expect("flush returned while the sender kept sending");
        for delivery in before {
            let delivered = futures_lite::future::poll_once(delivery)
                .await
                .expect("an outcome by the time flush returned");
            delivered.expect("delivered");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(sender.await.unwrap() > 0);
    producer.close().await;
}

/// A delivery callback that panics does not stop the producer: every other record's
/// callback still runs, and later sends are delivered.
#[tokio::test(flavor = "current_thread")]
async fn a_panicking_callback_does_not_stop_the_producer() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    let (broker, _admin) = broker_with_topic("calls", 1);
    let producer = Producer::start(ProducerConfig::new(broker.bootstrap().to_string()));
    let called = Arc::new(AtomicU32::new(0));
    for index in 0..100u32 {
        let called = Arc::clone(&called);
        let record = record("calls", "k".into(), index.to_string());
        producer
            .send_with(record, move |outcome| {
                assert!(index != 50, "a callback that panics");
                outcome.unwrap();
                called.fetch_add(1, Ordering::Relaxed);
            })
            .await;
    }
    tokio::time::timeout(Duration::from_secs(30), producer.flush())
        .await
        .expect("the producer still answers");
    assert_eq!(called.load(Ordering::Relaxed), 99);
    let later = producer
        .send(record("calls", "k".into(), "later".into()))
        .await;
    assert_eq!(later.await.unwrap().offset, Some(100));
    producer.close().await;
}

/// Records of a topic whose metadata cannot be had (the broker is unreachable) fail
/// together once `max_block` ran out for the first, not each after a `max_block` of
/// its own: twenty records take about one `max_block`, not twenty.
#[tokio::test(flavor = "current_thread")]
async fn records_of_an_unreachable_topic_fail_together_after_one_max_block() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = ProducerConfig::new(format!("127.0.0.1:{port}"));
    config.max_block = Duration::from_secs(1);
    let producer = Producer::start(config);
    let started = std::time::Instant::now();
    let mut deliveries = Vec::new();
    for index in 0..20 {
        deliveries.push(
            producer
                .send(record("nowhere", index.to_string(), "v".into()))
                .await,
        );
    }
    for delivery in deliveries {
        assert!(matches!(delivery.await, Err(ProduceError::TimedOut(_))));
    }
    // Twenty max_blocks would be 20 s; one, and some slack for a slow machine, far less.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    producer.close().await;
}
