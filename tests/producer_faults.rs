//! The producer through faults: a fault-injecting TCP proxy between producer and broker
//! (lost requests, lost acknowledgements, resets, delays), a broker restarted while
//! records are being sent, and a full buffer. With idempotence and retries every record
//! arrives exactly once and in order per partition; without idempotence the same faults
//! duplicate records (which shows the proxy really loses acknowledgements).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;

use flumen::EmbeddedBroker;
use flumen_client::accumulator::AccumulatorConfig;
use flumen_client::{Acks, Client, ProduceError, Producer, ProducerConfig, Record};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A small deterministic generator (xorshift64*), one per proxied connection.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

#[derive(Default)]
struct FaultCounts {
    lost_requests: AtomicU64,
    lost_responses: AtomicU64,
    resets: AtomicU64,
    delays: AtomicU64,
}

impl FaultCounts {
    fn total(&self) -> u64 {
        self.lost_requests.load(Ordering::Relaxed)
            + self.lost_responses.load(Ordering::Relaxed)
            + self.resets.load(Ordering::Relaxed)
    }
}

/// Listens on `listen` and forwards to `target`. On each connection, after a random
/// number (2..8) of chunks in one direction it injects one fault: the connection is
/// closed before a request reaches the broker, closed after the broker answered but
/// before the answer reaches the client, reset (RST), or the chunk is delayed.
async fn proxy(listen: SocketAddr, target: SocketAddr, seed: u64, counts: Arc<FaultCounts>) {
    let listener = TcpListener::bind(listen).await.unwrap();
    let mut connection = 0u64;
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            connection += 1;
            let rng = Rng(seed ^ (connection.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
            tokio::spawn(relay(client, target, rng, Arc::clone(&counts)));
        }
    });
}

async fn relay(client: TcpStream, target: SocketAddr, mut rng: Rng, counts: Arc<FaultCounts>) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let mut countdown = 2 + rng.below(6);
    let mut up = vec![0u8; 64 << 10];
    let mut down = vec![0u8; 64 << 10];
    loop {
        let fault = if countdown == 0 {
            countdown = 2 + rng.below(6);
            Some(rng.below(4))
        } else {
            None
        };
        tokio::select! {
            read = client_read.read(&mut up) => {
                let Ok(length @ 1..) = read else { return };
                countdown = countdown.saturating_sub(1);
                match fault {
                    Some(0) => { counts.lost_requests.fetch_add(1, Ordering::Relaxed); return; }
                    Some(1) => {
                        counts.resets.fetch_add(1, Ordering::Relaxed);
                        let client = client_read.reunite(client_write).unwrap();
                        let _ = client.set_zero_linger();
                        return;
                    }
                    Some(2) => {
                        counts.delays.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(rng.below(20))).await;
                    }
                    _ => {}
                }
                if server_write.write_all(&up[..length]).await.is_err() { return; }
            }
            read = server_read.read(&mut down) => {
                let Ok(length @ 1..) = read else { return };
                countdown = countdown.saturating_sub(1);
                if fault == Some(3) {
                    counts.lost_responses.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                if client_write.write_all(&down[..length]).await.is_err() { return; }
            }
        }
    }
}

/// A two-shard broker that advertises 127.0.0.2, with a fault proxy on 127.0.0.2 in front
/// of each of its ports (the shared one and each shard's), so every connection the
/// producer makes goes through a proxy.
async fn broker_behind_proxies(seed: u64, counts: &Arc<FaultCounts>) -> (EmbeddedBroker, String) {
    let broker = EmbeddedBroker::start_with(|config| {
        config.shards = 2;
        config.advertised_host = Some("127.0.0.2".into());
    })
    .unwrap();
    let mut client = Client::connect(broker.bootstrap()).unwrap();
    client.create_topic("t", 4, &[]).unwrap();
    let metadata = client.metadata(None).unwrap();
    let mut ports: Vec<u16> = metadata.brokers[0]
        .shards
        .iter()
        .map(|shard| shard.port)
        .collect();
    ports.push(broker.bootstrap().port());
    for (index, port) in ports.iter().enumerate() {
        let listen = SocketAddr::from(([127, 0, 0, 2], *port));
        let target = SocketAddr::from(([127, 0, 0, 1], *port));
        proxy(listen, target, seed + index as u64, Arc::clone(counts)).await;
    }
    let bootstrap = format!("127.0.0.2:{}", broker.bootstrap().port());
    (broker, bootstrap)
}

fn config(bootstrap: String) -> ProducerConfig {
    let mut config = ProducerConfig::new(bootstrap);
    config.acks = Acks::All;
    // Small batches: many requests, so many faults.
    config.batching = AccumulatorConfig {
        batch_size_bytes: 16 << 10,
        ..AccumulatorConfig::default()
    };
    config.retry_backoff = Duration::from_millis(5);
    config.retry_backoff_max = Duration::from_millis(50);
    config.request_timeout = Duration::from_secs(5);
    config
}

/// Sends `count` keyed records; returns the broker's copy of each partition, in offset
/// order, as record indexes.
async fn send_and_read_back(
    broker: &EmbeddedBroker,
    producer: &Producer,
    count: u32,
) -> HashMap<u32, Vec<u32>> {
    let mut deliveries = Vec::with_capacity(count as usize);
    for index in 0..count {
        let record = Record::new("t", index.to_string()).with_key(format!("key-{}", index % 64));
        deliveries.push(producer.send(record).await);
    }
    for (index, delivery) in deliveries.into_iter().enumerate() {
        delivery
            .await
            .unwrap_or_else(|error| panic!("record {index}: {error}"));
    }
    common::stored_indexes(broker.bootstrap(), "t", 4)
}

#[tokio::test(flavor = "current_thread")]
async fn a_hundred_thousand_sends_through_a_faulty_network_arrive_exactly_once_in_order() {
    let counts = Arc::new(FaultCounts::default());
    let (broker, bootstrap) = broker_behind_proxies(17, &counts).await;
    let mut config = config(bootstrap);
    // Requests of up to two partitions' batches: requests carrying several partitions go
    // through the faults (each partition's batch retried on its own), and there are
    // still enough requests for many faults.
    config.request_bytes_max = 32 << 10;
    let producer = Producer::start(config);
    let stored = send_and_read_back(&broker, &producer, 100_000).await;
    let metrics = producer.metrics();
    producer.close().await;
    assert_eq!(metrics.records_delivered, 100_000);
    assert!(
        metrics.retries > 0 && metrics.duplicates_detected > 0,
        "{metrics:?}"
    );

    let mut seen = vec![false; 100_000];
    for (partition, indexes) in &stored {
        for pair in indexes.windows(2) {
            assert!(
                pair[0] < pair[1],
                "partition {partition}: {} stored before {}",
                pair[0],
                pair[1]
            );
        }
        for &index in indexes {
            assert!(!seen[index as usize], "record {index} stored twice");
            seen[index as usize] = true;
        }
    }
    let missing: Vec<usize> = (0..seen.len())
        .filter(|&index| !seen[index])
        .take(5)
        .collect();
    assert!(missing.is_empty(), "records never stored: {missing:?}");
    assert!(
        counts.lost_responses.load(Ordering::Relaxed) >= 5 && counts.total() >= 20,
        "the proxy injected too few faults to mean anything: {} lost requests, {} lost responses, {} resets",
        counts.lost_requests.load(Ordering::Relaxed),
        counts.lost_responses.load(Ordering::Relaxed),
        counts.resets.load(Ordering::Relaxed),
    );
}

#[tokio::test(flavor = "current_thread")]
async fn without_idempotence_the_same_faults_duplicate_records() {
    let counts = Arc::new(FaultCounts::default());
    let (broker, bootstrap) = broker_behind_proxies(17, &counts).await;
    let mut config = config(bootstrap);
    config.idempotence = false;
    // One batch per request: as many requests (and so faults) as batches, as many lost
    // acknowledgements as the idempotent run above sees at this size.
    config.request_bytes_max = 1;
    let producer = Producer::start(config);
    let stored = send_and_read_back(&broker, &producer, 20_000).await;
    let total: usize = stored.values().map(Vec::len).sum();
    assert!(counts.lost_responses.load(Ordering::Relaxed) > 0);
    assert!(
        total > 20_000,
        "a lost acknowledgement makes an at-least-once producer send a batch twice"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_broker_restart_while_sending_loses_and_duplicates_nothing() {
    let mut broker = EmbeddedBroker::start_with(|config| config.shards = 2).unwrap();
    Client::connect(broker.bootstrap())
        .unwrap()
        .create_topic("t", 4, &[])
        .unwrap();
    let mut config = config(broker.bootstrap().to_string());
    config.delivery_timeout = Duration::from_secs(120);
    let producer = Producer::start(config);
    let mut deliveries = Vec::new();
    for index in 0..20_000u32 {
        let record = Record::new("t", index.to_string()).with_key(format!("key-{}", index % 64));
        deliveries.push(producer.send(record).await);
        if index == 10_000 {
            // Make sure some records are acknowledged before the broker goes away.
            producer.flush().await;
            broker.shutdown().unwrap();
        }
        if index == 12_000 {
            // Restart only once the producer has met the stopped broker and retried.
            while producer.metrics().retries == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            broker.restart().unwrap();
        }
    }
    for (index, delivery) in deliveries.into_iter().enumerate() {
        delivery
            .await
            .unwrap_or_else(|error| panic!("record {index}: {error}"));
    }
    let mut seen = vec![0u32; 20_000];
    for index in common::stored_indexes(broker.bootstrap(), "t", 4)
        .into_values()
        .flatten()
    {
        seen[index as usize] += 1;
    }
    assert!(
        seen.iter().all(|&copies| copies == 1),
        "every record stored exactly once"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_buffer_fails_sends_after_max_block() {
    // A "broker" that accepts connections and never answers: nothing leaves the buffer.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = silent.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let mut config = ProducerConfig::new(address.to_string());
    config.batching.buffer_memory_bytes = 16 << 10;
    config.max_block = Duration::from_millis(200);
    config.request_timeout = Duration::from_secs(600);
    let producer = Producer::start(config);
    let mut accepted = Vec::new();
    let full = loop {
        let mut delivery = producer.send(Record::new("t", vec![0u8; 1000])).await;
        let now = std::future::poll_fn(|context| {
            std::task::Poll::Ready(std::pin::Pin::new(&mut delivery).poll(context))
        })
        .await;
        match now {
            std::task::Poll::Ready(Err(error)) => break error,
            std::task::Poll::Ready(Ok(_)) => panic!("nothing can be delivered"),
            std::task::Poll::Pending => accepted.push(delivery),
        }
        assert!(
            accepted.len() <= 16,
            "a 16 KiB buffer took more than 16 KiB"
        );
    };
    assert!(matches!(full, ProduceError::BufferFull { .. }), "{full}");
    assert!(
        accepted.len() >= 10,
        "the buffer held {} records",
        accepted.len()
    );
    // The silent broker goes away: the buffered records fail clearly, none hangs.
    holder.abort();
    for delivery in accepted {
        assert!(matches!(delivery.await, Err(ProduceError::TimedOut(_))));
    }
    let too_large = producer
        .send(Record::new("t", vec![0u8; 32 << 10]))
        .await
        .await;
    assert!(
        matches!(too_large, Err(ProduceError::Rejected(_))),
        "{too_large:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_partition_that_lost_the_producers_state_gets_a_new_producer_id_not_an_error() {
    let broker = EmbeddedBroker::start().unwrap();
    let mut admin = Client::connect(broker.bootstrap()).unwrap();
    admin.create_topic("t", 1, &[]).unwrap();
    let producer = Producer::start(config(broker.bootstrap().to_string()));
    for index in 0..10u32 {
        producer
            .send(Record::new("t", index.to_string()))
            .await
            .await
            .unwrap();
    }
    assert_eq!(producer.metrics().producer_id_resets, 0);
    // The topic is recreated: its partition knows nothing of this producer, whose next
    // batch does not start at sequence 0 (UnknownProducerId).
    admin.delete_topic("t").unwrap();
    admin.create_topic("t", 1, &[]).unwrap();
    for index in 10..20u32 {
        let delivered = producer
            .send(Record::new("t", index.to_string()))
            .await
            .await;
        assert_eq!(delivered.unwrap().offset, Some(u64::from(index - 10)));
    }
    assert!(
        producer.metrics().producer_id_resets >= 1,
        "{:?}",
        producer.metrics()
    );
    let stored = common::stored_indexes(broker.bootstrap(), "t", 1);
    assert_eq!(stored[&0], (10..20).collect::<Vec<u32>>());
}

#[tokio::test(flavor = "current_thread")]
async fn a_reset_with_batches_of_several_partitions_in_flight_keeps_each_partition_in_order() {
    let broker = EmbeddedBroker::start_with(|config| config.shards = 1).unwrap();
    let mut admin = Client::connect(broker.bootstrap()).unwrap();
    admin.create_topic("t", 4, &[]).unwrap();
    let mut config = config(broker.bootstrap().to_string());
    // Every partition of the one shard can have a batch in flight when the reset comes.
    config.max_in_flight_per_shard = 4;
    config.batching.batch_size_bytes = 1 << 10;
    let producer = Producer::start(config);
    let send_all = |range: std::ops::Range<u32>| {
        let producer = &producer;
        async move {
            let mut deliveries = Vec::new();
            for index in range {
                let record =
                    Record::new("t", index.to_string()).with_key(format!("key-{}", index % 64));
                deliveries.push(producer.send(record).await);
            }
            for delivery in deliveries {
                delivery.await.unwrap();
            }
        }
    };
    send_all(0..2_000).await;
    // Recreated, the partitions know nothing of this producer: the first batch to land
    // asks for a new producer id while the other partitions' batches are still out under
    // the old one.
    admin.delete_topic("t").unwrap();
    admin.create_topic("t", 4, &[]).unwrap();
    send_all(2_000..6_000).await;
    // One new id: the batches stamped under the old one start their partitions over
    // under the new one instead of each asking for another.
    assert_eq!(producer.metrics().producer_id_resets, 1);
    producer.close().await;
    let stored = common::stored_indexes(broker.bootstrap(), "t", 4);
    let mut all: Vec<u32> = stored.values().flatten().copied().collect();
    for (partition, indexes) in &stored {
        assert!(
            indexes.windows(2).all(|pair| pair[0] < pair[1]),
            "partition {partition} out of order"
        );
    }
    all.sort_unstable();
    assert_eq!(all, (2_000..6_000).collect::<Vec<u32>>());
}
