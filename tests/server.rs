//! The broker over real sockets: topics, produce and fetch across shards, restarts, and
//! bad input, with the blocking client.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

use flumen::server::{run_broker, BrokerConfig, BrokerHandle};
use flumen_client::{Acks, Client, ClientError};
use flumen_protocol::record::BatchBuilder;
use flumen_protocol::wire::messages::{EARLIEST_TIMESTAMP, LATEST_TIMESTAMP};
use flumen_protocol::wire::{ErrorCode, BATCH_BYTES_MAX};

/// A small broker's configuration: two shards, any port, `data_dir`.
fn config(data_dir: &Path) -> BrokerConfig {
    BrokerConfig {
        data_dir: data_dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        shards: 2,
        io_memory_bytes: 512 << 10,
        cache_bytes_per_shard: 8 << 20,
        ..BrokerConfig::default()
    }
}

fn start(data_dir: &Path) -> BrokerHandle {
    run_broker(config(data_dir)).expect("broker starts")
}

fn batch(values: &[&str]) -> Vec<u8> {
    let mut builder = BatchBuilder::new(0);
    for (index, value) in values.iter().enumerate() {
        let key = format!("key-{index}");
        builder.push(
            1_000 + index as i64,
            Some(key.as_bytes()),
            Some(value.as_bytes()),
            &[],
        );
    }
    builder.build().unwrap().as_bytes().to_vec()
}

fn values(client: &mut Client, topic: &str, partition: u32) -> Vec<String> {
    let mut offset = 0;
    let mut seen = Vec::new();
    loop {
        let fetched = client.fetch(topic, partition, offset, 1 << 20, 0).unwrap();
        let batches = fetched.batches().unwrap();
        if batches.is_empty() {
            return seen;
        }
        for batch in batches {
            for record in batch.records() {
                assert_eq!(record.offset(), offset, "offsets are dense");
                seen.push(String::from_utf8(record.value().unwrap().to_vec()).unwrap());
                offset += 1;
            }
        }
    }
}

fn code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> ErrorCode {
    broker_code(result.unwrap_err())
}

fn broker_code(error: ClientError) -> ErrorCode {
    match error {
        ClientError::Broker { code, .. } => code,
        other => panic!("expected a broker error, got {other}"),
    }
}

#[test]
fn topics_produce_and_fetch_across_shards_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    let address = broker.summary().listen;
    let mut client = Client::connect(address).unwrap();
    client
        .create_topic("orders", 4, &[("retention.ms", "3600000")])
        .unwrap();

    let metadata = client.metadata(Some(&["orders"])).unwrap();
    assert_eq!(metadata.brokers[0].shards.len(), 2);
    let leaders: Vec<u32> = metadata.topics[0]
        .partitions
        .iter()
        .map(|p| p.leader_shard)
        .collect();
    assert!(
        leaders.contains(&0) && leaders.contains(&1),
        "partitions on both shards"
    );

    for partition in 0..4u32 {
        for round in 0..3 {
            let value = format!("p{partition}-r{round}");
            let acks = if round == 0 { Acks::All } else { Acks::Leader };
            let result = client
                .produce("orders", partition, &[&batch(&[&value, &value])], acks)
                .unwrap();
            assert_eq!(result.base_offset, round * 2);
        }
    }
    // Straight to the owning shard's own port: same answers.
    let shard_port = metadata.brokers[0].shards[leaders[0] as usize].port;
    let mut direct = Client::connect(("127.0.0.1", shard_port)).unwrap();
    assert_eq!(values(&mut direct, "orders", 0).len(), 6);
    for partition in 0..4u32 {
        let seen = values(&mut client, "orders", partition);
        let expected: Vec<String> = (0..3)
            .flat_map(|round| vec![format!("p{partition}-r{round}"); 2])
            .collect();
        assert_eq!(seen, expected);
        let latest = client
            .list_offsets("orders", partition, LATEST_TIMESTAMP)
            .unwrap();
        assert_eq!((latest.offset, latest.log_end_offset), (6, 6));
        assert!(latest.size_bytes > 0);
        assert_eq!(
            client
                .list_offsets("orders", partition, EARLIEST_TIMESTAMP)
                .unwrap()
                .offset,
            0
        );
    }
    drop(client);
    drop(direct);
    broker.shutdown();
    broker.join().unwrap();

    let broker = start(dir.path());
    // The topic's 4 and those of the broker's own __consumer_offsets.
    let internal = flumen::group::OFFSETS_PARTITIONS_DEFAULT as usize;
    assert_eq!(broker.summary().partitions, 4 + internal);
    let mut client = Client::connect(broker.summary().listen).unwrap();
    assert_eq!(
        values(&mut client, "orders", 3).len(),
        6,
        "data survives a restart"
    );
    let configs = client.describe_configs("orders").unwrap();
    let retention = configs
        .iter()
        .find(|config| config.key == "retention.ms")
        .unwrap();
    assert_eq!(
        (retention.value.as_str(), retention.is_default),
        ("3600000", false)
    );
    client
        .alter_configs("orders", &[("retention.ms", "")])
        .unwrap();
    let configs = client.describe_configs("orders").unwrap();
    assert!(
        configs
            .iter()
            .find(|config| config.key == "retention.ms")
            .unwrap()
            .is_default
    );
    client.delete_topic("orders").unwrap();
    assert!(
        !dir.path().join("orders").exists(),
        "partition directories are deleted"
    );
    let metadata = client.metadata(Some(&["orders"])).unwrap();
    assert_eq!(
        ErrorCode::from_u16(metadata.topics[0].outcome.error_code),
        ErrorCode::UnknownTopic
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        match entry.file_type().unwrap().is_dir() {
            true => copy_dir(&entry.path(), &target),
            false => drop(std::fs::copy(entry.path(), &target).unwrap()),
        }
    }
}

/// A crash between a deletion's catalog write and the removal of the topic's files
/// leaves them behind; a new topic of the same name must start empty, not recover them.
#[test]
fn a_new_topic_does_not_inherit_files_left_by_a_deleted_one_of_the_same_name() {
    let dir = tempfile::tempdir().unwrap();
    let saved = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    let mut client = Client::connect(broker.summary().listen).unwrap();
    client.create_topic("orders", 1, &[]).unwrap();
    client
        .produce("orders", 0, &[&batch(&["old", "old"])], Acks::All)
        .unwrap();
    copy_dir(&dir.path().join("orders"), saved.path());
    client.delete_topic("orders").unwrap();
    // The files come back as a crash would have left them.
    copy_dir(saved.path(), &dir.path().join("orders"));

    client.create_topic("orders", 1, &[]).unwrap();
    assert_eq!(values(&mut client, "orders", 0), Vec::<String>::new());
    client
        .produce("orders", 0, &[&batch(&["new"])], Acks::All)
        .unwrap();
    assert_eq!(values(&mut client, "orders", 0), vec!["new".to_string()]);
    let trash: Vec<_> = std::fs::read_dir(dir.path().join(".trash"))
        .unwrap()
        .collect();
    assert!(trash.is_empty(), "{trash:?}");
}

#[test]
fn bad_requests_get_clear_errors_and_the_broker_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    let address = broker.summary().listen;
    let mut client = Client::connect(address).unwrap();
    client.create_topic("t", 2, &[]).unwrap();

    assert_eq!(
        code(client.create_topic("t", 1, &[])),
        ErrorCode::TopicAlreadyExists
    );
    assert_eq!(
        code(client.create_topic("bad name", 1, &[])),
        ErrorCode::InvalidTopicName
    );
    assert_eq!(
        code(client.create_topic("__consumer_offsets", 1, &[])),
        ErrorCode::ReservedTopicName
    );
    assert_eq!(
        code(client.create_topic("x", 0, &[])),
        ErrorCode::InvalidPartitions
    );
    assert_eq!(
        code(client.create_topic("y", 1, &[("retention.ms", "soon")])),
        ErrorCode::InvalidConfig
    );
    let too_big = [
        ("max.message.bytes", "67108864"),
        ("segment.bytes", "134217728"),
    ];
    assert_eq!(
        code(client.create_topic("z", 1, &too_big)),
        ErrorCode::InvalidConfig
    );
    assert_eq!(
        code(client.alter_configs("t", &too_big)),
        ErrorCode::InvalidConfig
    );
    assert_eq!(
        code(client.produce("nope", 0, &[&batch(&["v"])], Acks::Leader)),
        ErrorCode::UnknownTopic
    );
    assert_eq!(
        code(client.produce("t", 9, &[&batch(&["v"])], Acks::Leader)),
        ErrorCode::UnknownPartition
    );
    assert_eq!(
        code(client.fetch("t", 0, 99, 1024, 0)),
        ErrorCode::OffsetOutOfRange
    );
    let mut corrupt = batch(&["v"]);
    let last = corrupt.len() - 20;
    corrupt[last] ^= 0xff;
    assert_eq!(
        code(client.produce("t", 0, &[&corrupt], Acks::All)),
        ErrorCode::CorruptBatch
    );

    // Garbage bytes that form a valid-length frame: an error response, same connection.
    let mut raw = TcpStream::connect(address).unwrap();
    let mut garbage = vec![0xA5u8; 64];
    garbage[..4].copy_from_slice(&60u32.to_le_bytes());
    garbage[8..12].copy_from_slice(&7u32.to_le_bytes());
    raw.write_all(&garbage).unwrap();
    let mut response = [0u8; 32];
    raw.read_exact(&mut response).unwrap();
    assert_eq!(u32::from_le_bytes(response[4..8].try_into().unwrap()), 7);
    assert_ne!(
        u16::from_le_bytes([response[8], response[9]]),
        0,
        "an error code"
    );
    // A frame over the limit: answered FrameTooLarge, then the connection is closed.
    let mut huge = vec![0u8; 32];
    huge[..4].copy_from_slice(&(1u32 << 30).to_le_bytes());
    raw.write_all(&huge).unwrap();
    raw.read_exact(&mut response).unwrap();
    let too_large = u16::from_le_bytes([response[8], response[9]]);
    assert_eq!(ErrorCode::from_u16(too_large), ErrorCode::FrameTooLarge);
    assert_eq!(raw.read(&mut response).unwrap_or(0), 0, "connection closed");
    // A client that disconnects mid-frame.
    let mut partial = TcpStream::connect(address).unwrap();
    partial.write_all(&128u32.to_le_bytes()).unwrap();
    partial.write_all(&[1, 2, 3]).unwrap();
    drop(partial);

    // Everything above left the broker serving.
    let result = client
        .produce("t", 1, &[&batch(&["after"])], Acks::All)
        .unwrap();
    assert_eq!(result.base_offset, 0);
    assert_eq!(values(&mut client, "t", 1), vec!["after".to_owned()]);
}

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[test]
fn a_consumer_that_stops_reading_holds_bounded_broker_memory() {
    let dir = tempfile::tempdir().unwrap();
    let config = BrokerConfig {
        shards: 1,
        cache_bytes_per_shard: 0, // every fetch reads from disk into fresh buffers
        ..config(dir.path())
    };
    let broker = run_broker(config).unwrap();
    let address = broker.summary().listen;
    let mut client = Client::connect(address).unwrap();
    client.create_topic("big", 1, &[]).unwrap();
    let value = "x".repeat(1024);
    let values: Vec<&str> = vec![value.as_str(); 1000];
    let batch = batch(&values);
    for _ in 0..40 {
        client.produce("big", 0, &[&batch], Acks::Leader).unwrap();
    }
    client.fetch("big", 0, 0, 1024, 0).unwrap();
    let before = resident_bytes();

    // 200 pipelined fetches of 32 MiB each that are never read: 6 GiB if each response
    // were materialised; the connection's budget allows 64 MiB.
    let mut greedy = TcpStream::connect(address).unwrap();
    let request = flumen_protocol::wire::messages::FetchRequest {
        max_wait_ms: 0,
        min_bytes: 1,
        max_bytes: 32 << 20,
        topics: vec![flumen_protocol::wire::messages::FetchTopic {
            name: "big".into(),
            partitions: vec![flumen_protocol::wire::messages::FetchPartition {
                partition: 0,
                fetch_offset: 0,
                partition_max_bytes: 32 << 20,
            }],
        }],
    };
    let control = flumen_protocol::wire::encode_control(&request);
    for correlation_id in 0..200 {
        let header = flumen_protocol::wire::RequestHeader {
            api_key: flumen_protocol::wire::ApiKey::Fetch as u16,
            api_version: 0,
            correlation_id,
        };
        let frame = flumen_protocol::wire::RequestFrame::encode(header, "greedy", &control, &[]);
        if greedy.write_all(&frame).is_err() {
            break;
        }
        if correlation_id == 100 {
            break; // enough to exceed every limit; the broker may have stopped reading
        }
    }
    let mut peak = before;
    for _ in 0..50 {
        let fetched = client.fetch("big", 0, 0, 1 << 20, 0).unwrap();
        assert!(
            !fetched.batches().unwrap().is_empty(),
            "other clients are still served"
        );
        peak = peak.max(resident_bytes());
    }
    let growth = peak.saturating_sub(before);
    assert!(growth < 512 << 20, "broker memory grew by {growth} bytes");
    drop(greedy);
}

#[test]
fn a_long_poll_fetch_answers_when_data_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    let address = broker.summary().listen;
    let mut client = Client::connect(address).unwrap();
    client.create_topic("poll", 2, &[]).unwrap();
    let max_wait_ms = 60_000;
    let waiting = std::thread::spawn(move || {
        let mut consumer = Client::connect(address).unwrap();
        let started = std::time::Instant::now();
        let fetched = consumer.fetch("poll", 1, 0, 1 << 20, max_wait_ms).unwrap();
        let values: Vec<Vec<u8>> = fetched.batches().unwrap()[0]
            .records()
            .map(|record| record.value().unwrap().to_vec())
            .collect();
        (values, started.elapsed())
    });
    std::thread::sleep(std::time::Duration::from_millis(200)); // let the fetch start waiting
    client
        .produce("poll", 1, &[&batch(&["wake up"])], Acks::Leader)
        .unwrap();
    let (values, elapsed) = waiting.join().unwrap();
    assert_eq!(
        values,
        vec![b"wake up".to_vec()],
        "the waiting fetch returns the new record"
    );
    assert!(
        elapsed < std::time::Duration::from_millis(u64::from(max_wait_ms)),
        "woken, not timed out"
    );
}

/// A roll that takes a partition over `retention.bytes` is followed by a retention pass
/// at once, not at the next periodic check (an hour away here): the log start moves up
/// to keep about the limit while the producer writes.
#[test]
fn size_retention_follows_each_roll_without_waiting_for_the_periodic_check() {
    let dir = tempfile::tempdir().unwrap();
    let config = BrokerConfig {
        shards: 1,
        retention_check_interval_ms: 3_600_000,
        ..config(dir.path())
    };
    let broker = run_broker(config).expect("broker starts");
    let mut client = Client::connect(broker.summary().listen).unwrap();
    let configs = [
        ("segment.bytes", "1048576"),
        ("retention.bytes", "2097152"),
        ("max.message.bytes", "65536"),
    ];
    client.create_topic("sized", 1, &configs).unwrap();
    let value = "v".repeat(8_000);
    // 12 MB in 32 KB batches (31 to a segment): twelve rolls.
    for _ in 0..384 {
        let batch = batch(&[value.as_str(); 4]);
        client.produce("sized", 0, &[&batch], Acks::All).unwrap();
    }
    let offsets = |client: &mut Client| {
        let at = |client: &mut Client, time| client.list_offsets("sized", 0, time).unwrap().offset;
        (at(client, EARLIEST_TIMESTAMP), at(client, LATEST_TIMESTAMP))
    };
    // At most the 2 MiB kept, the segment over it, the active one and one being sealed.
    let kept = |(start, end): (u64, u64)| end - start <= 4 * 31 * 4;
    // The passes run in the background right after each roll's seal: wait (bounded)
    // for the last one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !kept(offsets(&mut client)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (start, end) = offsets(&mut client);
    assert_eq!(end, 384 * 4);
    assert!(
        start > 0 && kept((start, end)),
        "log start {start}, end {end}"
    );
    drop(broker);
}

/// Relays `from` to `to` in `chunk`-byte writes, pausing now and then, so the other side
/// reads each frame in many pieces and often finds its socket empty mid-frame.
fn trickle(mut from: TcpStream, mut to: TcpStream, chunk: usize) {
    let mut buffer = vec![0u8; 64 << 10];
    let mut writes = 0u64;
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        for piece in buffer[..read].chunks(chunk) {
            if to.write_all(piece).is_err() {
                return;
            }
            writes += 1;
            if writes.is_multiple_of(64) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// Frames that reach the broker a few hundred bytes at a time, with pauses mid-frame
/// (a slow or congested client), are read whole, in order, whatever the socket holds
/// each time the broker reads it.
#[test]
fn frames_arriving_in_small_pieces_are_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_address = proxy.local_addr().unwrap();
    let broker_address = broker.summary().listen;
    let relay = std::thread::spawn(move || {
        let (client_side, _) = proxy.accept().unwrap();
        let broker_side = TcpStream::connect(broker_address).unwrap();
        client_side.set_nodelay(true).unwrap();
        broker_side.set_nodelay(true).unwrap();
        let (from_client, to_client) = (client_side.try_clone().unwrap(), client_side);
        let (to_broker, from_broker) = (broker_side.try_clone().unwrap(), broker_side);
        let upstream = std::thread::spawn(move || trickle(from_client, to_broker, 300));
        trickle(from_broker, to_client, 64 << 10);
        upstream.join().unwrap();
    });

    let mut client = Client::connect(proxy_address).unwrap();
    client.create_topic("slow", 1, &[]).unwrap();
    let value = "v".repeat(1000);
    let mut expected = Vec::new();
    for round in 0..3 {
        let values: Vec<String> = (0..200).map(|i| format!("{round}-{i}-{value}")).collect();
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        let result = client
            .produce("slow", 0, &[&batch(&refs)], Acks::All)
            .unwrap();
        assert_eq!(result.base_offset, round * 200);
        expected.extend(values);
    }
    assert_eq!(values(&mut client, "slow", 0), expected);
    drop(client);
    relay.join().unwrap();
}

/// A request as given (`request`, and `data` for its data section), answered with the
/// whole response: for checking what the broker puts in a response.
struct Raw<'a, Q> {
    request: Q,
    data: &'a [&'a [u8]],
}

/// The operation of [`Raw`] requests of one API.
macro_rules! raw_operation {
    ($request:ident, $response:ident, $api:ident) => {
        impl flumen_client::operation::Operation
            for Raw<'_, flumen_protocol::wire::messages::$request>
        {
            type Request = flumen_protocol::wire::messages::$request;
            type Response = flumen_protocol::wire::messages::$response;
            type Output = flumen_protocol::wire::messages::$response;
            const API: flumen_protocol::wire::ApiKey = flumen_protocol::wire::ApiKey::$api;

            fn request(&self) -> Self::Request {
                self.request.clone()
            }

            fn data(&self) -> &[&[u8]] {
                self.data
            }

            fn output(
                self,
                response: Self::Response,
                _: flumen_protocol::wire::FrameBuffer,
                _: usize,
            ) -> flumen_client::Result<Self::Output> {
                Ok(response)
            }
        }
    };
}

raw_operation!(FetchRequest, FetchResponse, Fetch);
raw_operation!(ProduceRequest, ProduceResponse, Produce);

fn fetch_of(
    partitions: &[(u32, u32)],
    max_bytes: u32,
) -> Raw<'static, flumen_protocol::wire::messages::FetchRequest> {
    let request = flumen_protocol::wire::messages::FetchRequest {
        max_wait_ms: 0,
        min_bytes: 1,
        max_bytes,
        topics: vec![flumen_protocol::wire::messages::FetchTopic {
            name: "t".into(),
            partitions: partitions
                .iter()
                .map(|&(partition, partition_max_bytes)| {
                    flumen_protocol::wire::messages::FetchPartition {
                        partition,
                        fetch_offset: 0,
                        partition_max_bytes,
                    }
                })
                .collect(),
        }],
    };
    Raw { request, data: &[] }
}

/// One fetch naming many partitions: a partition named twice is refused (the first
/// mention is served); once the response is full the others report their offsets
/// without data; a fetch naming more than the limit is refused whole, and the broker
/// keeps serving.
#[test]
fn a_fetch_is_bounded_by_its_response_not_by_the_partitions_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    let mut client = Client::connect(broker.summary().listen).unwrap();
    client.create_topic("t", 4, &[]).unwrap();
    let value = "v".repeat(1_000);
    let hundred = batch(&vec![value.as_str(); 100]);
    for partition in 0..4 {
        client
            .produce("t", partition, &[&hundred], Acks::All)
            .unwrap();
    }
    let batch_bytes = hundred.len() as u32;

    let response = client
        .run(fetch_of(
            &[(0, 1 << 20), (1, 1 << 20), (0, 1 << 20)],
            1 << 20,
        ))
        .unwrap();
    let partitions = &response.topics[0].partitions;
    assert_eq!(partitions.len(), 3);
    assert_eq!(partitions[0].batches.length, batch_bytes);
    assert_eq!(partitions[1].batches.length, batch_bytes);
    assert_eq!(
        ErrorCode::from_u16(partitions[2].outcome.error_code),
        ErrorCode::InvalidRequest,
        "{:?}",
        partitions[2]
    );

    // Room for two batches: the first two partitions fill it, the others only say where
    // their logs end.
    let response = client
        .run(fetch_of(
            &[(0, 1 << 20), (1, 1 << 20), (2, 1 << 20), (3, 1 << 20)],
            2 * batch_bytes,
        ))
        .unwrap();
    let partitions = &response.topics[0].partitions;
    for (index, partition) in partitions.iter().enumerate() {
        assert_eq!(partition.outcome.error_code, 0, "{partition:?}");
        assert_eq!(partition.high_watermark, 100);
        let expected = if index < 2 { batch_bytes } else { 0 };
        assert_eq!(partition.batches.length, expected, "partition {index}");
    }

    // A later partition still gets batches that fit after an earlier one's did not.
    client.create_topic("mixed", 3, &[]).unwrap();
    let large = batch(&vec![value.as_str(); 300]);
    let small = batch(&[value.as_str(); 10]);
    client.produce("mixed", 0, &[&hundred], Acks::All).unwrap();
    client.produce("mixed", 1, &[&large], Acks::All).unwrap();
    client.produce("mixed", 2, &[&small], Acks::All).unwrap();
    let mut mixed = fetch_of(
        &[(0, 1 << 20), (1, 1 << 20), (2, 1 << 20)],
        batch_bytes + small.len() as u32,
    );
    mixed.request.topics[0].name = "mixed".into();
    let response = client.run(mixed).unwrap();
    let lengths: Vec<u32> = response.topics[0]
        .partitions
        .iter()
        .map(|partition| partition.batches.length)
        .collect();
    assert_eq!(lengths, vec![batch_bytes, 0, small.len() as u32]);

    let too_many: Vec<(u32, u32)> = (0..10_001).map(|index| (index % 4, 1 << 20)).collect();
    let refused = client.run(fetch_of(&too_many, 1 << 20));
    assert!(refused.is_err(), "{refused:?}");
    let mut client = Client::connect(broker.summary().listen).unwrap();
    assert_eq!(values(&mut client, "t", 3).len(), 100, "still serving");
}

/// Requests whose appended batches are a sliver of the frame (here, a tiny batch next to
/// 4 MiB for a topic that does not exist) do not keep their frames alive through the
/// tail cache: memory stays near the cache's budget, not the frames' total.
#[test]
fn cached_batches_do_not_hold_the_rest_of_their_request() {
    use flumen_protocol::wire::messages::{ProducePartition, ProduceRequest, ProduceTopic};
    use flumen_protocol::wire::DataRange;
    let dir = tempfile::tempdir().unwrap();
    let broker = run_broker(BrokerConfig {
        shards: 1,
        ..config(dir.path())
    })
    .unwrap();
    let mut client = Client::connect(broker.summary().listen).unwrap();
    client.create_topic("t", 1, &[]).unwrap();
    let small = batch(&["tiny"]);
    let junk = 4usize << 20;
    let mut data = small.clone();
    data.resize(small.len() + junk, 0);
    let parts = [data.as_slice()];
    let request = || Raw {
        request: ProduceRequest {
            acks: 1,
            timeout_ms: 10_000,
            topics: vec![
                ProduceTopic {
                    name: "t".into(),
                    partitions: vec![ProducePartition {
                        partition: 0,
                        batches: DataRange {
                            offset: 0,
                            length: small.len() as u32,
                        },
                    }],
                },
                ProduceTopic {
                    name: "nope".into(),
                    partitions: vec![ProducePartition {
                        partition: 0,
                        batches: DataRange {
                            offset: small.len() as u32,
                            length: junk as u32,
                        },
                    }],
                },
            ],
        },
        data: &parts,
    };
    let first = client.run(request()).unwrap();
    assert_eq!(first.topics[0].partitions[0].outcome.error_code, 0);
    let before = resident_bytes();
    for _ in 0..200 {
        let response = client.run(request()).unwrap();
        assert_eq!(response.topics[0].partitions[0].outcome.error_code, 0);
        assert_eq!(
            ErrorCode::from_u16(response.topics[1].partitions[0].outcome.error_code),
            ErrorCode::UnknownTopic
        );
    }
    // 200 frames of 4 MiB would be 800 MiB held; the cache's budget is 8 MiB.
    let growth = resident_bytes().saturating_sub(before);
    assert!(growth < 200 << 20, "memory grew by {growth} bytes");
    assert_eq!(values(&mut client, "t", 0).len(), 201);
}

/// One broker has one in-sync replica: a topic cannot ask for two, at creation or
/// later, since acks=all could never be satisfied.
#[test]
fn a_topic_cannot_want_more_in_sync_replicas_than_it_has_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    let mut client = Client::connect(broker.summary().listen).unwrap();
    let created = client.create_topic("t", 1, &[("min.insync.replicas", "2")]);
    assert_eq!(code(created), ErrorCode::InvalidConfig);
    client
        .create_topic("t", 1, &[("min.insync.replicas", "1")])
        .unwrap();
    let altered = client.alter_configs("t", &[("min.insync.replicas", "2")]);
    assert_eq!(code(altered), ErrorCode::InvalidConfig);
    client
        .produce("t", 0, &[&batch(&["a"])], Acks::All)
        .unwrap();
}

/// With frames larger than 64 MiB, a topic may accept batches of up to 64 MiB, the most
/// `max.message.bytes` allows; a fetch returns such a batch whole, and the client's
/// default response limit takes it with the response around it.
#[test]
fn the_largest_batch_a_topic_can_accept_is_fetched_whole() {
    let dir = tempfile::tempdir().unwrap();
    let broker = run_broker(BrokerConfig {
        frame_bytes_max: BATCH_BYTES_MAX + (1 << 20),
        in_flight_bytes_per_connection: BATCH_BYTES_MAX + (1 << 20),
        ..config(dir.path())
    })
    .expect("broker starts");
    let mut client = Client::connect(broker.summary().listen).unwrap();
    let largest = BATCH_BYTES_MAX.to_string();
    let configs = [
        ("max.message.bytes", largest.as_str()),
        ("segment.bytes", "134217728"),
    ];
    client.create_topic("large", 1, &configs).unwrap();
    let build = |value_bytes: usize| {
        let mut builder = BatchBuilder::new(0);
        builder.push(1, None, Some(&vec![7u8; value_bytes]), &[]);
        builder.build().unwrap()
    };
    let value_bytes = BATCH_BYTES_MAX - build(0).as_bytes().len();
    let batch = build(value_bytes);
    assert!(
        (BATCH_BYTES_MAX - 16..=BATCH_BYTES_MAX).contains(&batch.as_bytes().len()),
        "{}",
        batch.as_bytes().len()
    );
    client
        .produce("large", 0, &[batch.as_bytes()], Acks::Leader)
        .unwrap();
    let fetched = client.fetch("large", 0, 0, 1 << 20, 0).unwrap();
    let batches = fetched.batches().unwrap();
    assert_eq!(batches.len(), 1);
    let record = batches[0].records().next().unwrap();
    assert_eq!(record.value().unwrap().len(), value_bytes);
}
