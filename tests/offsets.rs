//! Committed offsets in `__consumer_offsets`: commit and fetch through a real broker,
//! positions that survive restarts (rebuilt by replaying the topic), clear errors for bad
//! commits, and a consumer that resumes where its group committed.

use std::time::Duration;

use flumen::EmbeddedBroker;
use flumen_client::{
    Acks, Client, ClientError, ConsumeError, Consumer, ConsumerConfig, Producer, ProducerConfig,
    Record, TopicPartition,
};
use flumen_protocol::record::BatchBuilder;
use flumen_protocol::wire::ErrorCode;

fn broker() -> EmbeddedBroker {
    let broker = EmbeddedBroker::start_with(|config| config.shards = 2).unwrap();
    let mut client = Client::connect(broker.bootstrap()).unwrap();
    client.create_topic("orders", 3, &[]).unwrap();
    client.create_topic("payments", 1, &[]).unwrap();
    broker
}

fn code(result: &flumen_client::Result<()>) -> ErrorCode {
    match result {
        Ok(()) => ErrorCode::None,
        Err(ClientError::Broker { code, .. }) => *code,
        Err(other) => panic!("not a broker error: {other}"),
    }
}

/// `(topic, partition, offset, metadata)` of every position `group` committed.
fn positions(client: &mut Client, group: &str) -> Vec<(String, u32, Option<u64>, Option<String>)> {
    client
        .fetch_offsets(group, None)
        .unwrap()
        .into_iter()
        .flat_map(|topic| {
            let name = topic.name.clone();
            topic.partitions.into_iter().map(move |partition| {
                (
                    name.clone(),
                    partition.partition,
                    partition.offset,
                    partition.metadata,
                )
            })
        })
        .collect()
}

#[test]
fn committed_positions_round_trip_and_survive_restarts() {
    let mut broker = broker();
    let mut client = Client::connect(broker.bootstrap()).unwrap();
    let outcomes = client
        .commit_offsets(
            "billing",
            &[
                ("orders", 0, 10, Some("host-a")),
                ("orders", 2, 7, None),
                ("payments", 0, 3, None),
            ],
        )
        .unwrap();
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    // A later commit of the same position wins; other groups are separate.
    client
        .commit_offsets("billing", &[("orders", 0, 15, None)])
        .unwrap();
    client
        .commit_offsets("audit", &[("orders", 1, 1, None)])
        .unwrap();

    let expected = vec![
        ("orders".to_owned(), 0, Some(15), None),
        ("orders".to_owned(), 2, Some(7), None),
        ("payments".to_owned(), 0, Some(3), None),
    ];
    assert_eq!(positions(&mut client, "billing"), expected);
    let asked = client
        .fetch_offsets("billing", Some(&[("orders", &[1, 2])]))
        .unwrap();
    assert_eq!(asked[0].partitions[0].offset, None, "never committed");
    assert_eq!(asked[0].partitions[1].offset, Some(7));
    assert!(asked[0].partitions[1].commit_timestamp > 0);
    assert_eq!(client.list_groups().unwrap(), vec!["audit", "billing"]);
    assert!(positions(&mut client, "nobody").is_empty());

    // Restart: the positions come back by replaying __consumer_offsets.
    broker.restart().unwrap();
    let mut client = Client::connect(broker.bootstrap()).unwrap();
    assert_eq!(positions(&mut client, "billing"), expected);
    assert_eq!(client.list_groups().unwrap(), vec!["audit", "billing"]);
    // The offsets topic is the broker's: listed, but not writable by clients.
    let metadata = client.metadata(Some(&["__consumer_offsets"])).unwrap();
    assert_eq!(metadata.topics[0].partitions.len(), 16);
    let mut batch = BatchBuilder::new(0);
    batch.push(0, None, Some(b"forged"), &[]);
    let forged = client.produce(
        "__consumer_offsets",
        0,
        &[batch.build().unwrap().as_bytes()],
        Acks::All,
    );
    assert!(matches!(
        forged,
        Err(ClientError::Broker {
            code: ErrorCode::ReservedTopicName,
            ..
        })
    ));
    // Nor can its configuration be changed (a retention would delete live positions).
    let altered = client.alter_configs("__consumer_offsets", &[("retention.ms", "1000")]);
    assert!(matches!(
        altered,
        Err(ClientError::Broker {
            code: ErrorCode::ReservedTopicName,
            ..
        })
    ));
}

#[test]
fn bad_commits_get_clear_errors_and_good_ones_in_the_same_request_land() {
    let broker = broker();
    let mut client = Client::connect(broker.bootstrap()).unwrap();
    let long = "x".repeat(5_000);
    let outcomes = client
        .commit_offsets(
            "g",
            &[
                ("orders", 1, 5, None),
                ("missing", 0, 1, None),
                ("orders", 9, 1, None),
                ("orders", 0, 1, Some(long.as_str())),
            ],
        )
        .unwrap();
    let codes: Vec<ErrorCode> = outcomes.iter().map(code).collect();
    assert_eq!(
        codes,
        vec![
            ErrorCode::None,
            ErrorCode::UnknownTopic,
            ErrorCode::UnknownPartition,
            ErrorCode::OffsetMetadataTooLarge
        ]
    );
    assert_eq!(
        positions(&mut client, "g"),
        vec![("orders".to_owned(), 1, Some(5), None)]
    );

    let invalid = client
        .commit_offsets("", &[("orders", 0, 1, None)])
        .unwrap();
    assert_eq!(code(&invalid[0]), ErrorCode::InvalidGroupId);
    let too_long = "g".repeat(256);
    assert!(matches!(
        client.fetch_offsets(&too_long, None),
        Err(ClientError::Broker {
            code: ErrorCode::InvalidGroupId,
            ..
        })
    ));
    // The group has no members: naming one, or a generation, is refused (a stale
    // generation of a real member is tested in groups.rs).
    let member = client
        .run(flumen_client::operation::OffsetCommit {
            group_id: "g",
            generation_id: 3,
            member_id: "member-1",
            positions: &[("orders", 0, 1, None)],
        })
        .unwrap();
    assert_eq!(code(&member[0]), ErrorCode::UnknownMemberId);
    let stale = client
        .run(flumen_client::operation::OffsetCommit {
            group_id: "g",
            generation_id: 3,
            member_id: "",
            positions: &[("orders", 0, 1, None)],
        })
        .unwrap();
    assert_eq!(code(&stale[0]), ErrorCode::UnknownMemberId);
    assert_eq!(
        positions(&mut client, "g").len(),
        1,
        "refused commits stored nothing"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_consumer_resumes_where_its_group_committed() {
    let broker = broker();
    let producer = Producer::start(ProducerConfig::new(broker.bootstrap().to_string()));
    let mut deliveries = Vec::new();
    for index in 0..90u32 {
        let record = Record::new("orders", index.to_string()).with_partition(index % 3);
        deliveries.push(producer.send(record).await);
    }
    for delivery in deliveries {
        delivery.await.unwrap();
    }
    producer.close().await;
    let partitions: Vec<TopicPartition> = (0..3)
        .map(|partition| TopicPartition::new("orders", partition))
        .collect();
    let mut config = ConsumerConfig::new(broker.bootstrap().to_string());
    config.group_id = Some("readers".into());
    config.max_poll_records = 20;

    let mut first = Consumer::new(config.clone());
    first.assign(&partitions).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 40 {
        let records = first.poll(Duration::from_secs(10)).await.unwrap();
        assert!(!records.is_empty());
        seen.extend(
            records
                .iter()
                .map(|record| (record.partition(), record.offset())),
        );
    }
    // An asynchronous commit is sent by the next poll, which runs its callback.
    let (done, outcome) = std::sync::mpsc::channel();
    first.commit_async(move |result| done.send(result.is_ok()).unwrap());
    assert!(outcome.try_recv().is_err(), "not sent before the next poll");
    let more = first.poll(Duration::from_millis(1)).await.unwrap();
    seen.extend(
        more.iter()
            .map(|record| (record.partition(), record.offset())),
    );
    assert_eq!(outcome.try_recv(), Ok(true));
    first.commit_sync().await.unwrap();
    let committed = first.committed(&partitions).await.unwrap();
    let expected: Vec<Option<u64>> = partitions
        .iter()
        .map(|partition| first.position(partition).unwrap())
        .collect();
    assert_eq!(committed, expected);
    drop(first);

    // A new consumer of the group starts at the committed positions: nothing twice,
    // nothing skipped.
    let mut second = Consumer::new(config);
    second.assign(&partitions).await.unwrap();
    while seen.len() < 90 {
        let records = second.poll(Duration::from_secs(10)).await.unwrap();
        assert!(!records.is_empty(), "stalled at {}", seen.len());
        seen.extend(
            records
                .iter()
                .map(|record| (record.partition(), record.offset())),
        );
    }
    seen.sort_unstable();
    let all: Vec<(u32, u64)> = (0..3)
        .flat_map(|partition| (0..30).map(move |offset| (partition, offset)))
        .collect();
    assert_eq!(seen, all);

    let mut groupless = Consumer::new(ConsumerConfig::new(broker.bootstrap().to_string()));
    groupless.assign(&partitions).await.unwrap();
    assert!(matches!(
        groupless.commit_sync().await,
        Err(ConsumeError::NoGroup)
    ));
}

#[test]
fn retention_removes_superseded_commits_but_never_a_live_position() {
    let mut broker = EmbeddedBroker::start_with(|config| {
        config.offsets_retention_ms = 2_000;
        config.retention_check_interval_ms = 100;
    })
    .unwrap();
    let mut client = Client::connect(broker.bootstrap()).unwrap();
    client.create_topic("orders", 1, &[]).unwrap();
    client
        .commit_offsets("keeper", &[("orders", 0, 42, Some("once"))])
        .unwrap();
    assert_eq!(offsets_log_start(&mut client, "keeper"), 0);
    // The first record (the commit itself) is removed by retention once a refreshed copy
    // exists in a newer segment; the position stays.
    wait_for_retention_of_first_commits(&mut client, "keeper");
    let kept = client.fetch_offsets("keeper", None).unwrap();
    assert_eq!(kept[0].partitions[0].offset, Some(42));
    assert_eq!(kept[0].partitions[0].metadata.as_deref(), Some("once"));
    // And it comes back from what is left of the log after a restart.
    broker.restart().unwrap();
    let mut client = Client::connect(broker.bootstrap()).unwrap();
    let kept = client.fetch_offsets("keeper", None).unwrap();
    assert_eq!(kept[0].partitions[0].offset, Some(42));
}

#[tokio::test(flavor = "current_thread")]
async fn after_record_commits_land_as_each_record_is_handled() {
    let broker = broker();
    let producer = Producer::start(ProducerConfig::new(broker.bootstrap().to_string()));
    for index in 0..10u32 {
        let record = Record::new("payments", index.to_string());
        producer.send(record).await.await.unwrap();
    }
    let mut config = ConsumerConfig::new(broker.bootstrap().to_string());
    config.group_id = Some("per-record".into());
    config.commit_mode = flumen_client::CommitMode::AfterRecord;
    let mut consumer = Consumer::new(config);
    consumer
        .assign(&[TopicPartition::new("payments", 0)])
        .await
        .unwrap();
    let mut observer = Client::connect(broker.bootstrap()).unwrap();
    let mut handled = 0;
    while handled < 10 {
        handled += consumer
            .poll_each(Duration::from_secs(10), |record| {
                // When a record is handed over, every earlier one is already committed.
                let committed = observer
                    .fetch_offsets("per-record", Some(&[("payments", &[0])]))
                    .unwrap()[0]
                    .partitions[0]
                    .offset;
                let expected = (record.offset > 0).then_some(record.offset);
                assert_eq!(committed, expected, "before record {}", record.offset);
                std::future::ready(())
            })
            .await
            .unwrap();
    }
    let committed = consumer
        .committed(&[TopicPartition::new("payments", 0)])
        .await
        .unwrap();
    assert_eq!(committed, vec![Some(10)]);
}

/// Committed offsets that cannot be loaded at start-up (damaged on disk) are refused as
/// a storage error, not answered as "nothing committed", which would move the group's
/// consumers to their reset policy.
#[test]
fn offsets_that_failed_to_load_are_an_error_not_an_empty_answer() {
    let mut broker = broker();
    let mut client = Client::connect(broker.bootstrap()).unwrap();
    client
        .commit_offsets("billing", &[("orders", 0, 10, None)])
        .unwrap();
    broker.shutdown().unwrap();
    // Damage a record of the one __consumer_offsets partition holding data.
    let offsets = broker.data_dir().join("__consumer_offsets");
    let segment = std::fs::read_dir(&offsets)
        .unwrap()
        .flat_map(|partition| std::fs::read_dir(partition.unwrap().path()).unwrap())
        .map(|entry| entry.unwrap().path())
        .find(|path| {
            path.extension().is_some_and(|extension| extension == "log")
                && std::fs::metadata(path).unwrap().len() > 0
        })
        .expect("a segment with the commit");
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();
    broker.restart().unwrap();
    let mut client = Client::connect(broker.bootstrap()).unwrap();
    let fetched = client.fetch_offsets("billing", None);
    assert!(
        matches!(
            fetched,
            Err(ClientError::Broker {
                code: ErrorCode::StorageError,
                ..
            })
        ),
        "{fetched:?}"
    );
}

/// Many live positions with large metadata are written again in batches that fit the
/// topic's batch limit (here 1 MiB; one batch of them, about 1.2 MB, did not), so
/// retention still keeps every one: after the first commits are gone, all come back from
/// the log at a restart.
#[test]
fn many_large_positions_are_refreshed_within_the_batch_limit() {
    let mut broker = EmbeddedBroker::start_with(|config| {
        config.offsets_retention_ms = 2_000;
        config.retention_check_interval_ms = 100;
        config.log.batch_bytes_max = 1 << 20;
    })
    .unwrap();
    let mut client = Client::connect(broker.bootstrap()).unwrap();
    client.create_topic("wide", 300, &[]).unwrap();
    let metadata = "m".repeat(4_000);
    let positions: Vec<(&str, u32, u64, Option<&str>)> = (0..300)
        .map(|partition| ("wide", partition, 7, Some(metadata.as_str())))
        .collect();
    for chunk in positions.chunks(100) {
        let outcomes = client.commit_offsets("big", chunk).unwrap();
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    }
    wait_for_retention_of_first_commits(&mut client, "big");
    broker.restart().unwrap();
    let mut client = Client::connect(broker.bootstrap()).unwrap();
    let kept = client.fetch_offsets("big", None).unwrap();
    let count: usize = kept.iter().map(|topic| topic.partitions.len()).sum();
    assert_eq!(count, 300);
    assert!(kept[0]
        .partitions
        .iter()
        .all(|partition| partition.offset == Some(7)));
}

/// Deleting a topic deletes the groups' committed positions of it (as Kafka does): a
/// topic created again with the same name starts its groups afresh, after a restart
/// too, while their positions of other topics stay.
#[test]
fn a_deleted_topic_takes_its_committed_positions_with_it() {
    let mut broker = broker();
    let mut client = Client::connect(broker.bootstrap()).unwrap();
    client
        .commit_offsets(
            "billing",
            &[("orders", 0, 10, None), ("payments", 0, 3, None)],
        )
        .unwrap();
    client.delete_topic("orders").unwrap();
    client.create_topic("orders", 3, &[]).unwrap();
    let expected = vec![("payments".to_owned(), 0, Some(3), None)];
    assert_eq!(positions(&mut client, "billing"), expected);
    broker.restart().unwrap();
    let mut client = Client::connect(broker.bootstrap()).unwrap();
    assert_eq!(positions(&mut client, "billing"), expected);
}

/// The log start of the `__consumer_offsets` partition holding `group`.
fn offsets_log_start(client: &mut Client, group: &str) -> u64 {
    let partitions = flumen::group::OFFSETS_PARTITIONS_DEFAULT;
    let index = flumen::group::offsets_partition(group, partitions);
    client
        .list_offsets(
            "__consumer_offsets",
            index,
            flumen_client::EARLIEST_TIMESTAMP,
        )
        .unwrap()
        .log_start_offset
}

/// Waits (bounded) until retention has removed the first records of the offsets
/// partition holding `group`.
fn wait_for_retention_of_first_commits(client: &mut Client, group: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while offsets_log_start(client, group) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "retention never removed the first commits"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `__consumer_offsets` keeps the retention it was created with; a broker restarted
/// with a longer `offsets_retention_ms` still writes live positions again within that
/// retention (not its own setting's), so retention never takes their only copy.
#[test]
fn live_positions_follow_the_offsets_topics_own_retention() {
    use flumen::server::{run_broker, BrokerConfig};
    let dir = tempfile::tempdir().unwrap();
    let config = |retention_ms: u64| BrokerConfig {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        shards: 1,
        offsets_retention_ms: retention_ms,
        retention_check_interval_ms: 100,
        ..BrokerConfig::default()
    };
    let broker = run_broker(config(2_000)).unwrap();
    let mut client = Client::connect(broker.summary().listen).unwrap();
    client.create_topic("orders", 1, &[]).unwrap();
    client
        .commit_offsets("keeper", &[("orders", 0, 42, None)])
        .unwrap();
    broker.shutdown();
    broker.join().unwrap();

    // Ten times longer now; the topic still deletes commits after 2 s. Another group of
    // the same offsets partition keeps committing, so its segments roll and retention
    // deletes the one with keeper's commit once that is 2 s old.
    let broker = run_broker(config(20_000)).unwrap();
    let mut client = Client::connect(broker.summary().listen).unwrap();
    let partitions = flumen::group::OFFSETS_PARTITIONS_DEFAULT;
    let index = flumen::group::offsets_partition("keeper", partitions);
    let busy = (0..)
        .map(|number| format!("busy-{number}"))
        .find(|group| flumen::group::offsets_partition(group, partitions) == index)
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut offset = 0;
    while offsets_log_start(&mut client, "keeper") == 0 {
        assert!(std::time::Instant::now() < deadline, "retention never ran");
        offset += 1;
        client
            .commit_offsets(&busy, &[("orders", 0, offset, None)])
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    broker.shutdown();
    broker.join().unwrap();
    let broker = run_broker(config(20_000)).unwrap();
    let mut client = Client::connect(broker.summary().listen).unwrap();
    let kept = client.fetch_offsets("keeper", None).unwrap();
    assert_eq!(kept[0].partitions[0].offset, Some(42));
    broker.shutdown();
    broker.join().unwrap();
}
