//! An integration test the way users write one: start an in-process broker, send with
//! the producer, verify with a consumer. `cargo test --example embedded_test` runs it as
//! a test (so does `./scripts/test.sh`); `cargo run --example embedded_test` as a program.

use std::time::Duration;

use flumen::EmbeddedBroker;
use flumen_client::serialization::{Deserializer, Json, Serializer};
use flumen_client::{
    Client, Consumer, ConsumerConfig, Producer, ProducerConfig, Record, TopicPartition,
};

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Order {
    id: u32,
    customer: String,
    total_cents: i64,
}

async fn orders_round_trip() -> Result<(), Box<dyn std::error::Error>> {
    let broker = EmbeddedBroker::start()?;
    Client::connect(broker.bootstrap())?.create_topic("orders", 3, &[])?;

    let producer = Producer::start(ProducerConfig::new(broker.bootstrap().to_string()));
    let mut deliveries = Vec::new();
    for id in 0..30 {
        let order = Order {
            id,
            customer: format!("customer-{}", id % 5),
            total_cents: 1_000 + i64::from(id),
        };
        let record =
            Record::new("orders", Json.serialize(&order)?).with_key(order.customer.clone());
        deliveries.push(producer.send(record).await);
    }
    for delivery in deliveries {
        delivery.await?;
    }
    producer.close().await;

    let mut consumer = Consumer::new(ConsumerConfig::new(broker.bootstrap().to_string()));
    let partitions: Vec<TopicPartition> = (0..3)
        .map(|partition| TopicPartition::new("orders", partition))
        .collect();
    consumer.assign(&partitions).await?;
    let mut received = Vec::new();
    while received.len() < 30 {
        let records = consumer.poll(Duration::from_secs(5)).await?;
        assert!(!records.is_empty(), "records stopped arriving");
        for record in records.iter() {
            let order: Order = Json.deserialize(record.value().unwrap_or_default())?;
            // Orders of one customer share a key, so a partition, so they stay in order.
            assert_eq!(record.key(), Some(order.customer.as_bytes()));
            received.push(order);
        }
    }
    received.sort_by_key(|order| order.id);
    assert_eq!(received.len(), 30);
    assert!(received
        .iter()
        .enumerate()
        .all(|(index, order)| order.id == index as u32));
    println!("30 orders sent and read back");
    broker.stop()?;
    Ok(())
}

#[tokio::test]
async fn orders_are_read_back_as_sent() {
    orders_round_trip().await.unwrap();
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    orders_round_trip().await
}
