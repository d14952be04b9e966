//! The client's transports against a real (embedded) broker: tokio and blocking run the
//! same operations and see each other's writes.

use flumen::EmbeddedBroker;
use flumen_client::{Acks, AsyncClient, Client, ClientError, EARLIEST_TIMESTAMP};
use flumen_protocol::record::BatchBuilder;
use flumen_protocol::wire::ErrorCode;

fn batch(value: &str) -> Vec<u8> {
    let mut builder = BatchBuilder::new(0);
    builder.push(7, Some(b"k"), Some(value.as_bytes()), &[]);
    builder.build().unwrap().as_bytes().to_vec()
}

#[tokio::test(flavor = "current_thread")]
async fn the_tokio_client_produces_and_fetches() {
    let broker = EmbeddedBroker::start().unwrap();
    let mut client = AsyncClient::connect(broker.bootstrap()).await.unwrap();
    client.create_topic("async", 2, &[]).await.unwrap();
    let written = client
        .produce("async", 1, &[&batch("hello")], Acks::All)
        .await
        .unwrap();
    let fetched = client
        .fetch("async", 1, written.base_offset, 1 << 20, 0)
        .await
        .unwrap();
    let batches = fetched.batches().unwrap();
    assert_eq!(
        batches[0].records().next().unwrap().value(),
        Some(&b"hello"[..])
    );
    let earliest = client
        .list_offsets("async", 1, EARLIEST_TIMESTAMP)
        .await
        .unwrap();
    assert_eq!((earliest.offset, earliest.log_end_offset), (0, 1));
    match client
        .produce("missing", 0, &[&batch("x")], Acks::Leader)
        .await
    {
        Err(ClientError::Broker { code, .. }) => assert_eq!(code, ErrorCode::UnknownTopic),
        other => panic!("expected UnknownTopic, got {other:?}"),
    }

    // The blocking client sees what the async one wrote.
    let address = broker.bootstrap();
    let seen = tokio::task::spawn_blocking(move || {
        let mut blocking = Client::connect(address).unwrap();
        let fetched = blocking.fetch("async", 1, 0, 1 << 20, 0).unwrap();
        let value = fetched.batches().unwrap()[0]
            .records()
            .next()
            .unwrap()
            .value()
            .unwrap()
            .to_vec();
        value
    })
    .await
    .unwrap();
    assert_eq!(seen, b"hello");
}

#[test]
fn an_interrupted_request_makes_the_connection_refuse_further_use() {
    let broker = EmbeddedBroker::start().unwrap();
    let mut client = Client::connect(broker.bootstrap()).unwrap();
    client.create_topic("quiet", 1, &[]).unwrap();
    // A long poll on an empty partition outlasts the read timeout.
    client
        .set_timeout(Some(std::time::Duration::from_millis(100)))
        .unwrap();
    assert!(matches!(
        client.fetch("quiet", 0, 0, 1024, 5_000),
        Err(ClientError::Io(_))
    ));
    // The late response must not be taken for the next request's.
    match client.list_offsets("quiet", 0, EARLIEST_TIMESTAMP) {
        Err(ClientError::Protocol(message)) => assert!(message.contains("reconnect"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let mut fresh = Client::connect(broker.bootstrap()).unwrap();
    assert_eq!(
        fresh
            .list_offsets("quiet", 0, EARLIEST_TIMESTAMP)
            .unwrap()
            .offset,
        0
    );
}

#[test]
fn the_glommio_client_works_from_inside_an_executor() {
    let broker = EmbeddedBroker::start().unwrap();
    let address = broker.bootstrap();
    glommio::LocalExecutorBuilder::default()
        .io_memory(256 << 10)
        .spawn(move || async move {
            let mut client = flumen_client::GlommioClient::connect(address)
                .await
                .unwrap();
            client.create_topic("shard-local", 1, &[]).await.unwrap();
            let written = client
                .produce("shard-local", 0, &[&batch("on glommio")], Acks::All)
                .await
                .unwrap();
            let fetched = client
                .fetch("shard-local", 0, written.base_offset, 1 << 20, 0)
                .await
                .unwrap();
            let value = fetched.batches().unwrap()[0]
                .records()
                .next()
                .unwrap()
                .value()
                .unwrap()
                .to_vec();
            assert_eq!(value, b"on glommio");
        })
        .unwrap()
        .join()
        .unwrap();
}

/// The same producer and consumer logic on a glommio executor: idempotent keyed sends
/// across partitions of a two-shard broker, read back in order by the consumer, with no
/// tokio runtime anywhere.
#[test]
fn the_producer_and_consumer_run_on_glommio() {
    use flumen_client::{
        ConsumerConfig, GlommioConsumer, GlommioProducer, ProducerConfig, Record, TopicPartition,
    };
    let broker = EmbeddedBroker::start_with(|config| config.shards = 2).unwrap();
    let address = broker.bootstrap();
    Client::connect(address)
        .unwrap()
        .create_topic("on-glommio", 3, &[])
        .unwrap();
    glommio::LocalExecutorBuilder::default()
        .io_memory(256 << 10)
        .spawn(move || async move {
            let producer = GlommioProducer::start_local(ProducerConfig::new(address.to_string()));
            let mut deliveries = Vec::new();
            for index in 0..3_000u32 {
                let record = Record::new("on-glommio", index.to_string())
                    .with_key(format!("key-{}", index % 30));
                deliveries.push(producer.send(record).await);
            }
            let mut per_partition = [0u64; 3];
            for delivery in deliveries {
                let delivered = delivery.await.unwrap();
                let partition = delivered.partition.unwrap() as usize;
                assert_eq!(
                    delivered.offset,
                    Some(per_partition[partition]),
                    "dense offsets"
                );
                per_partition[partition] += 1;
            }
            assert_eq!(producer.metrics().records_delivered, 3_000);
            producer.close().await;

            let mut consumer = GlommioConsumer::new_local(ConsumerConfig::new(address.to_string()));
            let partitions: Vec<TopicPartition> = (0..3)
                .map(|partition| TopicPartition::new("on-glommio", partition))
                .collect();
            consumer.assign(&partitions).await.unwrap();
            let mut last_by_key = std::collections::HashMap::new();
            let mut received = 0;
            while received < 3_000 {
                let records = consumer
                    .poll(std::time::Duration::from_secs(10))
                    .await
                    .unwrap();
                assert!(!records.is_empty(), "stalled at {received}");
                for record in records.iter() {
                    let index: u32 = std::str::from_utf8(record.value().unwrap())
                        .unwrap()
                        .parse()
                        .unwrap();
                    if let Some(previous) = last_by_key.insert(index % 30, index) {
                        assert!(previous < index, "key order kept");
                    }
                    received += 1;
                }
            }
            assert_eq!(received, 3_000);
        })
        .unwrap()
        .join()
        .unwrap();
}

/// Handles that services share between tasks and threads are `Send + Sync`; the
/// consumer is `Send` (one task at a time).
#[test]
fn handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<flumen_client::Producer>();
    send_sync::<flumen_client::BlockingProducer>();
    send_sync::<flumen_client::BlockingConsumer>();
    send_sync::<flumen_client::AsyncClient>();
    send_sync::<flumen_client::Client>();
    send::<flumen_client::Consumer>();
    send::<flumen_client::DeliveryFuture>();
}

/// With default features the client needs no io_uring: glommio is not in its tree.
#[test]
fn the_default_client_does_not_depend_on_glommio() {
    let output = std::process::Command::new(env!("CARGO"))
        .args(["tree", "-p", "flumen-client", "-e", "normal", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8_lossy(&output.stdout);
    assert!(
        tree.contains("tokio"),
        "the default transport is tokio:\n{tree}"
    );
    assert!(
        !tree.contains("glommio"),
        "glommio in the default tree:\n{tree}"
    );
}
