//! Publishing events with the producer: `cargo run --example producer -- [BOOTSTRAP]`.
//! Without an address it starts an in-process broker. Sends 10,000 keyed records to
//! `events` (created if missing) and prints where they landed and the producer's counters.

use std::collections::BTreeMap;

use flumen::EmbeddedBroker;
use flumen_client::{Acks, Client, ClientError, Producer, ProducerConfig, Record};
use flumen_protocol::wire::ErrorCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (bootstrap, _embedded) = match std::env::args().nth(1) {
        Some(address) => (address, None),
        None => {
            let broker = EmbeddedBroker::start()?;
            (broker.bootstrap().to_string(), Some(broker))
        }
    };
    match Client::connect(bootstrap.as_str())?.create_topic("events", 4, &[]) {
        Err(ClientError::Broker {
            code: ErrorCode::TopicAlreadyExists,
            ..
        })
        | Ok(()) => {}
        Err(error) => return Err(error.into()),
    }

    let mut config = ProducerConfig::new(bootstrap);
    config.acks = Acks::All;
    let producer = Producer::start(config);
    let mut deliveries = Vec::new();
    for index in 0..10_000 {
        let record = Record::new("events", format!("event {index}"))
            .with_key(format!("device-{}", index % 16))
            .with_header("source", "example");
        deliveries.push(producer.send(record).await);
    }
    let mut per_partition: BTreeMap<u32, u64> = BTreeMap::new();
    for delivery in deliveries {
        let delivered = delivery.await?;
        *per_partition
            .entry(delivered.partition.unwrap_or_default())
            .or_default() += 1;
    }
    for (partition, count) in per_partition {
        println!("partition {partition}: {count} records");
    }
    println!("{:?}", producer.metrics());
    producer.close().await;
    Ok(())
}
