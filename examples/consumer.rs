//! Reading a topic with the consumer: `cargo run --example consumer -- [BOOTSTRAP] [TOPIC]`.
//! Without an address it starts an in-process broker and fills `events` first. Reads every
//! partition from the beginning and stops after two seconds without new records.

use std::time::Duration;

use flumen::EmbeddedBroker;
use flumen_client::{
    Client, Consumer, ConsumerConfig, Producer, ProducerConfig, Record, SeekTo, TopicPartition,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (bootstrap, topic, _embedded) = match args.next() {
        Some(address) => (
            address,
            args.next().unwrap_or_else(|| "events".into()),
            None,
        ),
        None => {
            let broker = EmbeddedBroker::start()?;
            let bootstrap = broker.bootstrap().to_string();
            Client::connect(bootstrap.as_str())?.create_topic("events", 2, &[])?;
            let producer = Producer::start(ProducerConfig::new(bootstrap.clone()));
            for index in 0..100 {
                producer
                    .send_and_forget(Record::new("events", format!("event {index}")))
                    .await?;
            }
            producer.close().await;
            (bootstrap, "events".to_owned(), Some(broker))
        }
    };
    let partitions = Client::connect(bootstrap.as_str())?
        .metadata(Some(&[topic.as_str()]))?
        .topics
        .first()
        .map_or(0, |found| found.partitions.len() as u32);
    let assigned: Vec<TopicPartition> = (0..partitions)
        .map(|partition| TopicPartition::new(topic.as_str(), partition))
        .collect();

    let mut consumer = Consumer::new(ConsumerConfig::new(bootstrap));
    consumer.assign(&assigned).await?;
    for partition in &assigned {
        consumer.seek(partition, SeekTo::Beginning).await?;
    }
    let mut total = 0;
    loop {
        let records = consumer.poll(Duration::from_secs(2)).await?;
        if records.is_empty() {
            break;
        }
        for record in records.iter() {
            println!(
                "{}-{}@{}: {}",
                record.topic(),
                record.partition(),
                record.offset(),
                String::from_utf8_lossy(record.value().unwrap_or_default())
            );
        }
        total += records.len();
    }
    for partition in &assigned {
        println!("{partition}: position {:?}", consumer.position(partition)?);
    }
    println!("{total} records");
    Ok(())
}
