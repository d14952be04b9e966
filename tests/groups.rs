//! Group membership against a real broker: join, sync, heartbeat, leave, rebalances with
//! generations, a zombie member's commit refused, session expiry, describe, and bad
//! input. Members are blocking clients on their own threads (a join blocks until the
//! rebalance completes).

use std::thread;
use std::time::{Duration, Instant};

use flumen::EmbeddedBroker;
use flumen_client::operation::{Heartbeat, JoinGroup, LeaveGroup, OffsetCommit, SyncGroup};
use flumen_client::{Client, ClientError, JoinGroupResponse};
use flumen_protocol::wire::ErrorCode;

fn broker() -> EmbeddedBroker {
    let broker = EmbeddedBroker::start_with(|config| {
        config.shards = 2;
        config.group_initial_rebalance_delay_ms = 0;
        config.group_session_timeout_min_ms = 100;
    })
    .unwrap();
    Client::connect(broker.bootstrap())
        .unwrap()
        .create_topic("orders", 2, &[])
        .unwrap();
    broker
}

fn join(client: &mut Client, member: &str, session_ms: u32) -> JoinGroupResponse {
    client
        .run(JoinGroup {
            group_id: "g",
            member_id: member,
            session_timeout_ms: session_ms,
            rebalance_timeout_ms: 10_000,
            protocol_type: "consumer",
            protocols: &[("range", b"orders")],
        })
        .unwrap()
}

fn code<T: std::fmt::Debug>(result: flumen_client::Result<T>) -> ErrorCode {
    match result {
        Err(ClientError::Broker { code, .. }) => code,
        other => panic!("expected a broker error, got {other:?}"),
    }
}

fn commit(client: &mut Client, member: &str, generation: i32) -> flumen_client::Result<()> {
    let mut outcomes = client.run(OffsetCommit {
        group_id: "g",
        generation_id: generation,
        member_id: member,
        positions: &[("orders", 0, 5, None)],
    })?;
    outcomes.remove(0)
}

#[test]
fn members_rebalance_through_generations_and_a_zombie_cannot_commit() {
    let broker = broker();
    let address = broker.bootstrap();
    let mut a = Client::connect(address).unwrap();
    let first = join(&mut a, "", 30_000);
    assert_eq!(first.generation_id, 1);
    assert_eq!(first.leader, first.member_id, "alone, a leads");
    let member_a = first.member_id.clone();
    let assignment = a
        .run(SyncGroup {
            group_id: "g",
            generation_id: 1,
            member_id: &member_a,
            assignments: &[(&member_a, b"0,1")],
        })
        .unwrap();
    assert_eq!(assignment, b"0,1");

    // b joins; a learns of the rebalance from its heartbeat and rejoins.
    let joining = thread::spawn(move || {
        let mut b = Client::connect(address).unwrap();
        let answer = join(&mut b, "", 30_000);
        (b, answer)
    });
    let rebalancing = loop {
        let beat = a.run(Heartbeat {
            group_id: "g",
            generation_id: 1,
            member_id: &member_a,
        });
        if beat.is_err() {
            break beat;
        }
        thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(code(rebalancing), ErrorCode::RebalanceInProgress);
    // While members rejoin, the old generation may still commit what it gives up.
    commit(&mut a, &member_a, 1).unwrap();
    let second = join(&mut a, &member_a, 30_000);
    let (mut b, b_answer) = joining.join().unwrap();
    assert_eq!((second.generation_id, b_answer.generation_id), (2, 2));
    assert_eq!(second.leader, member_a, "the leader stays");
    assert_eq!(second.members.len(), 2, "the leader sees both members");
    assert!(b_answer.members.is_empty());
    let member_b = b_answer.member_id.clone();

    // b's sync waits for the leader's assignment.
    let syncing = {
        let member_b = member_b.clone();
        thread::spawn(move || {
            b.run(SyncGroup {
                group_id: "g",
                generation_id: 2,
                member_id: &member_b,
                assignments: &[],
            })
            .map(|assignment| (b, assignment))
        })
    };
    a.run(SyncGroup {
        group_id: "g",
        generation_id: 2,
        member_id: &member_a,
        assignments: &[(&member_a, b"0"), (&member_b, b"1")],
    })
    .unwrap();
    let (mut b, assignment) = syncing.join().unwrap().unwrap();
    assert_eq!(assignment, b"1");

    // Commits: the current generation's members may; a zombie of generation 1 may not,
    // nor may an outsider while the group has members.
    commit(&mut b, &member_b, 2).unwrap();
    assert_eq!(
        code(commit(&mut a, &member_a, 1)),
        ErrorCode::IllegalGeneration
    );
    assert_eq!(code(commit(&mut a, "", -1)), ErrorCode::UnknownMemberId);
    assert_eq!(code(a.delete_group("g")), ErrorCode::NonEmptyGroup);

    let described = a.describe_group("g").unwrap();
    assert_eq!(
        (described.state.as_str(), described.generation_id),
        ("Stable", 2)
    );
    assert_eq!(described.protocol, "range");
    let mut assignments: Vec<Vec<u8>> = described
        .members
        .iter()
        .map(|member| member.assignment.clone())
        .collect();
    assignments.sort();
    assert_eq!(assignments, vec![b"0".to_vec(), b"1".to_vec()]);

    // b leaves: a rebalances alone into generation 3.
    b.run(LeaveGroup {
        group_id: "g",
        member_id: &member_b,
    })
    .unwrap();
    let alone = join(&mut a, &member_a, 300);
    assert_eq!((alone.generation_id, alone.members.len()), (3, 1));

    // a stops heartbeating: its 300 ms session expires and the group empties.
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.describe_group("g").unwrap().state != "Empty" {
        assert!(Instant::now() < deadline, "the member never expired");
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        code(a.run(Heartbeat {
            group_id: "g",
            generation_id: 3,
            member_id: &member_a,
        })),
        ErrorCode::UnknownMemberId
    );
    // Positions survive the members, and commits outside membership work again.
    commit(&mut a, "", -1).unwrap();
    assert_eq!(
        a.fetch_offsets("g", None).unwrap()[0].partitions[0].offset,
        Some(5)
    );
}

#[test]
fn bad_membership_requests_get_clear_errors() {
    let broker = broker();
    let mut client = Client::connect(broker.bootstrap()).unwrap();
    let short = client.run(JoinGroup {
        group_id: "g",
        member_id: "",
        session_timeout_ms: 10,
        rebalance_timeout_ms: 1_000,
        protocol_type: "consumer",
        protocols: &[("range", b"")],
    });
    assert_eq!(code(short), ErrorCode::InvalidSessionTimeout);
    let member = join(&mut client, "", 30_000).member_id;
    let other_type = client.run(JoinGroup {
        group_id: "g",
        member_id: "",
        session_timeout_ms: 30_000,
        rebalance_timeout_ms: 1_000,
        protocol_type: "connect",
        protocols: &[("range", b"")],
    });
    assert_eq!(code(other_type), ErrorCode::InconsistentGroupProtocol);
    let ghost = client.run(Heartbeat {
        group_id: "g",
        generation_id: 1,
        member_id: "ghost",
    });
    assert_eq!(code(ghost), ErrorCode::UnknownMemberId);
    let stale = client.run(Heartbeat {
        group_id: "g",
        generation_id: 7,
        member_id: &member,
    });
    assert_eq!(code(stale), ErrorCode::IllegalGeneration);
    assert_eq!(
        code(client.describe_group("nobody")),
        ErrorCode::GroupIdNotFound
    );
    let empty_id = client.run(LeaveGroup {
        group_id: "",
        member_id: &member,
    });
    assert_eq!(code(empty_id), ErrorCode::InvalidGroupId);
}

/// What a subscribed consumer task saw.
#[derive(Default)]
struct Seen {
    records: std::collections::HashMap<(u32, u64), u32>,
}

fn assignments(client: &mut Client) -> (String, Vec<Vec<flumen_client::TopicPartition>>) {
    // Unknown until the first member joined.
    let Ok(described) = client.describe_group("subscribers") else {
        return (String::new(), Vec::new());
    };
    let owned = described
        .members
        .iter()
        .map(|member| flumen_client::assignor::decode_partitions(&member.assignment).unwrap())
        .collect();
    (described.state, owned)
}

/// Waits until the broker shows `members` stable members sharing all 12 partitions,
/// each exactly once.
fn wait_for_balance(client: &mut Client, members: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (state, owned) = assignments(client);
        let all: std::collections::BTreeSet<_> = owned.iter().flatten().collect();
        let listed: usize = owned.iter().map(Vec::len).sum();
        if state == "Stable" && owned.len() == members && all.len() == 12 && listed == 12 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no balance of {members} members: {state} {owned:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn subscribed_consumers_share_partitions_through_joins_and_a_crash_cooperatively() {
    share_partitions_through_joins_and_a_crash("cooperative-sticky").await;
}

#[tokio::test(flavor = "current_thread")]
async fn subscribed_consumers_share_partitions_through_joins_and_a_crash_eagerly() {
    share_partitions_through_joins_and_a_crash("range").await;
}

/// Three members share 12 partitions, a fourth joins, one crashes (stops without
/// leaving): after each step every partition has exactly one owner, and in the end every
/// record was read, duplicates limited to what was not yet committed.
async fn share_partitions_through_joins_and_a_crash(assignor: &'static str) {
    use flumen_client::{
        CommitMode, Consumer, ConsumerConfig, NoListener, Producer, ProducerConfig, Record,
    };
    use std::sync::{Arc, Mutex};

    let broker = broker();
    let address = broker.bootstrap();
    let mut admin = Client::connect(address).unwrap();
    admin.create_topic("events", 12, &[]).unwrap();
    let producer = Producer::start(ProducerConfig::new(address.to_string()));
    let produce = |range: std::ops::Range<u32>| {
        let producer = producer.clone();
        async move {
            let mut deliveries = Vec::new();
            for index in range {
                let record = Record::new("events", index.to_string()).with_partition(index % 12);
                deliveries.push(producer.send(record).await);
            }
            for delivery in deliveries {
                delivery.await.unwrap();
            }
        }
    };
    produce(0..1_200).await;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let start = |name: &'static str| {
        let seen = Arc::clone(&seen);
        let mut config = ConsumerConfig::new(address.to_string());
        config.group_id = Some("subscribers".into());
        config.commit_mode = CommitMode::AfterPoll;
        config.session_timeout = Duration::from_millis(1_000);
        config.heartbeat_interval = Duration::from_millis(200);
        config.max_poll_records = 50;
        config.assignors = vec![assignor.into()];
        tokio::spawn(async move {
            let mut consumer = Consumer::new(config);
            consumer.subscribe(&["events"], NoListener).await.unwrap();
            loop {
                let records = consumer
                    .poll(Duration::from_millis(100))
                    .await
                    .unwrap_or_else(|error| panic!("{name}: {error}"));
                let mut seen = seen.lock().unwrap();
                for record in records.iter() {
                    *seen
                        .records
                        .entry((record.partition(), record.offset()))
                        .or_default() += 1;
                }
            }
        })
    };
    let consumers = [start("a"), start("b"), start("c")];
    let mut admin_thread = Client::connect(address).unwrap();
    let balanced = tokio::task::spawn_blocking(move || {
        wait_for_balance(&mut admin_thread, 3);
        admin_thread
    });
    let mut admin_thread = balanced.await.unwrap();

    let fourth = start("d");
    admin_thread = tokio::task::spawn_blocking(move || {
        wait_for_balance(&mut admin_thread, 4);
        admin_thread
    })
    .await
    .unwrap();

    // "Crash" one member: its task stops without leaving; its session expires.
    consumers[0].abort();
    produce(1_200..2_400).await;
    admin_thread = tokio::task::spawn_blocking(move || {
        wait_for_balance(&mut admin_thread, 3);
        admin_thread
    })
    .await
    .unwrap();

    // Every record read at least once; duplicates only from positions not yet committed.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let count = seen.lock().unwrap().records.len();
        if count == 2_400 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {count} of 2,400 records read"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let duplicates: u32 = seen
        .lock()
        .unwrap()
        .records
        .values()
        .map(|copies| copies - 1)
        .sum();
    assert!(
        duplicates <= 12 * 50,
        "{duplicates} duplicates: more than uncommitted polls can explain"
    );
    for task in consumers.iter().skip(1).chain([&fourth]) {
        task.abort();
    }
    drop(admin_thread);
    admin.list_groups().unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_pattern_subscription_picks_up_topics_created_later() {
    use flumen_client::{Consumer, ConsumerConfig, NoListener, Producer, ProducerConfig, Record};

    let broker = broker();
    let address = broker.bootstrap();
    let mut admin = Client::connect(address).unwrap();
    admin.create_topic("metrics.cpu", 2, &[]).unwrap();
    admin.create_topic("other", 1, &[]).unwrap();
    let producer = Producer::start(ProducerConfig::new(address.to_string()));
    for topic in ["metrics.cpu", "other"] {
        producer
            .send(Record::new(topic, "before"))
            .await
            .await
            .unwrap();
    }
    let mut config = ConsumerConfig::new(address.to_string());
    config.group_id = Some("dashboards".into());
    config.pattern_refresh = Duration::from_millis(100);
    let mut consumer = Consumer::new(config);
    consumer
        .subscribe_pattern("metrics.*", NoListener)
        .await
        .unwrap();

    let mut topics_seen = std::collections::BTreeSet::new();
    let mut created = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !topics_seen.contains("metrics.disk") {
        assert!(Instant::now() < deadline, "saw only {topics_seen:?}");
        for record in consumer
            .poll(Duration::from_millis(100))
            .await
            .unwrap()
            .iter()
        {
            topics_seen.insert(record.topic().to_owned());
        }
        if topics_seen.contains("metrics.cpu") && !created {
            // A matching topic created while the member runs joins its subscription.
            admin.create_topic("metrics.disk", 1, &[]).unwrap();
            producer
                .send(Record::new("metrics.disk", "new"))
                .await
                .await
                .unwrap();
            created = true;
        }
    }
    assert!(!topics_seen.contains("other"), "{topics_seen:?}");
    consumer.unsubscribe().await;
    assert_eq!(
        admin.describe_group("dashboards").unwrap().members.len(),
        0,
        "left the group"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_member_with_malformed_metadata_gets_nothing_and_breaks_nothing() {
    use flumen_client::{Consumer, ConsumerConfig, NoListener};

    let broker = broker();
    let address = broker.bootstrap();
    let mut config = ConsumerConfig::new(address.to_string());
    config.group_id = Some("mixed".into());
    config.heartbeat_interval = Duration::from_millis(100);
    let mut consumer = Consumer::new(config);
    consumer.subscribe(&["orders"], NoListener).await.unwrap();
    consumer.poll(Duration::from_millis(10)).await.unwrap();

    // A member speaking the protocol with garbage metadata joins from another thread.
    let garbage = tokio::task::spawn_blocking(move || {
        let mut client = Client::connect(address).unwrap();
        let joined = client
            .run(JoinGroup {
                group_id: "mixed",
                member_id: "",
                session_timeout_ms: 30_000,
                rebalance_timeout_ms: 30_000,
                protocol_type: "consumer",
                protocols: &[("range", b"\xff\x00not metadata")],
            })
            .unwrap();
        let assignment = client
            .run(SyncGroup {
                group_id: "mixed",
                generation_id: joined.generation_id,
                member_id: &joined.member_id,
                assignments: &[],
            })
            .unwrap();
        (client, joined.member_id, assignment)
    });
    // The real consumer learns of the rebalance from its heartbeat and leads it.
    let (mut client, garbage_member, assignment) = loop {
        consumer.poll(Duration::from_millis(20)).await.unwrap();
        if garbage.is_finished() {
            break garbage.await.unwrap();
        }
    };
    assert!(
        assignment.is_empty(),
        "malformed metadata subscribes to nothing"
    );
    consumer.poll(Duration::from_millis(10)).await.unwrap();
    let described = client.describe_group("mixed").unwrap();
    assert_eq!(described.members.len(), 2);
    for member in &described.members {
        let owned = flumen_client::assignor::decode_partitions(&member.assignment).unwrap();
        let expected = if member.member_id == garbage_member {
            0
        } else {
            2
        };
        assert_eq!(owned.len(), expected, "{}", member.member_id);
    }
}

/// A poll cancelled while its JoinGroup was held by the broker (here by the initial
/// rebalance delay) does not make the consumer's next call fail: the half-used
/// connection is replaced.
#[tokio::test(flavor = "current_thread")]
async fn a_poll_cancelled_during_its_join_leaves_the_consumer_usable() {
    use flumen_client::{Consumer, ConsumerConfig, NoListener, TopicPartition};

    let broker = EmbeddedBroker::start_with(|config| {
        config.group_initial_rebalance_delay_ms = 3_000;
    })
    .unwrap();
    Client::connect(broker.bootstrap())
        .unwrap()
        .create_topic("orders", 1, &[])
        .unwrap();
    let mut config = ConsumerConfig::new(broker.bootstrap().to_string());
    config.group_id = Some("cancelled".into());
    let mut consumer = Consumer::new(config);
    consumer.subscribe(&["orders"], NoListener).await.unwrap();
    let cancelled = tokio::time::timeout(
        Duration::from_millis(200),
        consumer.poll(Duration::from_secs(5)),
    )
    .await;
    assert!(cancelled.is_err(), "the join was still held: {cancelled:?}");
    let committed = consumer
        .committed(&[TopicPartition::new("orders", 0)])
        .await
        .unwrap();
    assert_eq!(committed, vec![None]);
}
