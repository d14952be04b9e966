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
    assert_eq!(
        code(commit(&mut a, &member_a, 1)),
        ErrorCode::RebalanceInProgress
    );
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
