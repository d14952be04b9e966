//! The producer's durable outbox: records sent while the broker is down are queued in a
//! local file, survive a restart of the producer, and are published in order once the
//! broker is back, each exactly once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

mod common;

use flumen::EmbeddedBroker;
use flumen_client::{Acks, Client, Producer, ProducerConfig, Record};

fn config(broker: &EmbeddedBroker, outbox: &std::path::Path) -> ProducerConfig {
    let mut config = ProducerConfig::new(broker.bootstrap().to_string());
    config.acks = Acks::All;
    config.outbox = Some(outbox.to_path_buf());
    config.delivery_timeout = Duration::from_millis(300);
    config.max_block = Duration::from_millis(300);
    config.retry_backoff = Duration::from_millis(10);
    config.retry_backoff_max = Duration::from_millis(50);
    config
}

fn record(index: u32) -> Record {
    Record::new("t", index.to_string()).with_key(format!("key-{}", index % 8))
}

/// Each partition's records as indexes, in offset order.
fn stored(broker: &EmbeddedBroker) -> HashMap<u32, Vec<u32>> {
    common::stored_indexes(broker.bootstrap(), "t", 4)
}

#[tokio::test(flavor = "current_thread")]
async fn records_sent_while_the_broker_is_down_are_published_in_order_after_a_producer_restart() {
    let mut broker = EmbeddedBroker::start_with(|config| config.shards = 2).unwrap();
    Client::connect(broker.bootstrap())
        .unwrap()
        .create_topic("t", 4, &[])
        .unwrap();
    let outbox = tempfile::tempdir().unwrap();

    let producer = Producer::start(config(&broker, outbox.path()));
    for index in 0..200 {
        let delivered = producer.send(record(index)).await.await.unwrap();
        assert!(!delivered.queued_in_outbox && delivered.offset.is_some());
    }

    broker.shutdown().unwrap();
    let mut queued = Vec::new();
    for index in 200..500 {
        queued.push(producer.send(record(index)).await);
    }
    for delivery in queued {
        let delivered = delivery.await.expect("queued, not failed");
        assert!(delivered.queued_in_outbox, "{delivered:?}");
        assert_eq!(delivered.offset, None);
    }
    assert_eq!(producer.metrics().records_outboxed, 300);
    assert!(producer.metrics().outbox_pending_bytes > 0);
    producer.close().await;

    // A new producer (as after a process restart) finds the outbox; the broker returns.
    broker.restart().unwrap();
    let producer = Producer::start(config(&broker, outbox.path()));
    let mut later = Vec::new();
    for index in 500..600 {
        later.push(producer.send(record(index)).await);
    }
    for delivery in later {
        // Queued behind the outbox (order per partition), or sent if it already drained.
        delivery.await.expect("delivered or queued");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        producer.flush().await;
        if producer.metrics().outbox_pending_bytes == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the outbox never drained: {:?}",
            producer.metrics()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    producer.close().await;

    let partitions = stored(&broker);
    let mut copies = vec![0u32; 600];
    for indexes in partitions.values() {
        for &index in indexes {
            copies[index as usize] += 1;
        }
        // Same key, same partition, and in send order.
        let mut last_by_key: HashMap<u32, u32> = HashMap::new();
        for &index in indexes {
            if let Some(previous) = last_by_key.insert(index % 8, index) {
                assert!(
                    previous < index,
                    "{previous} stored before {index}: {indexes:?}"
                );
            }
        }
    }
    let wrong: Vec<(usize, u32)> = copies
        .iter()
        .enumerate()
        .filter(|(_, &count)| count != 1)
        .map(|(index, &count)| (index, count))
        .take(5)
        .collect();
    assert!(
        wrong.is_empty(),
        "records not stored exactly once: {wrong:?}"
    );
    // Published records left the outbox.
    let log = std::fs::metadata(outbox.path().join("outbox.log")).unwrap();
    assert_eq!(log.len(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_fresh_producer_queues_records_when_the_broker_was_never_reachable() {
    let mut broker = EmbeddedBroker::start().unwrap();
    Client::connect(broker.bootstrap())
        .unwrap()
        .create_topic("t", 4, &[])
        .unwrap();
    broker.shutdown().unwrap();
    let outbox = tempfile::tempdir().unwrap();
    let producer = Producer::start(config(&broker, outbox.path()));
    let delivered = producer.send(record(3)).await.await.unwrap();
    assert!(delivered.queued_in_outbox);
    assert_eq!(
        delivered.partition, None,
        "no metadata yet: partitioned when published"
    );
    broker.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while producer.metrics().outbox_pending_bytes > 0 {
        assert!(Instant::now() < deadline, "the outbox never drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let partitions = stored(&broker);
    let all: Vec<u32> = partitions.values().flatten().copied().collect();
    assert_eq!(all, vec![3]);
    let expected = flumen_client::partition_for_key(b"key-3", 4);
    assert_eq!(partitions[&expected], vec![3], "published by key hash");
}

#[tokio::test(flavor = "current_thread")]
async fn records_the_broker_refuses_for_good_do_not_hold_the_outbox() {
    let mut broker = EmbeddedBroker::start().unwrap();
    Client::connect(broker.bootstrap())
        .unwrap()
        .create_topic("t", 4, &[])
        .unwrap();
    let outbox = tempfile::tempdir().unwrap();
    let producer = Producer::start(config(&broker, outbox.path()));
    producer.send(record(0)).await.await.unwrap();
    broker.shutdown().unwrap();
    for index in 1..=10 {
        let delivered = producer.send(record(index)).await.await.unwrap();
        assert!(delivered.queued_in_outbox);
    }
    // The broker comes back without the topic (this test's task does not yield between
    // the two steps, so the producer cannot publish in between).
    broker.restart().unwrap();
    Client::connect(broker.bootstrap())
        .unwrap()
        .delete_topic("t")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while producer.metrics().outbox_pending_bytes > 0 {
        assert!(
            Instant::now() < deadline,
            "the outbox is stuck: {:?}",
            producer.metrics()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        producer.metrics().records_failed,
        10,
        "{:?}",
        producer.metrics()
    );
    // The producer keeps working for other topics.
    Client::connect(broker.bootstrap())
        .unwrap()
        .create_topic("u", 1, &[])
        .unwrap();
    let delivered = producer
        .send(Record::new("u", "after"))
        .await
        .await
        .unwrap();
    assert_eq!(delivered.offset, Some(0));
}
