//! The consumer error handler against a real broker: retries with backoff, a retry topic
//! with a delay, and a dead-letter topic with headers naming where a record came from.

use std::collections::HashMap;
use std::time::Duration;

use flumen::EmbeddedBroker;
use flumen_client::recovery::{
    Backoff, ErrorHandler, Exhausted, Handled, ProcessError, RecoveryConfig, ATTEMPTS, ERROR,
    NOT_BEFORE, ORIGINAL_OFFSET, ORIGINAL_PARTITION, ORIGINAL_TOPIC,
};
use flumen_client::{
    Client, Consumer, ConsumerConfig, ConsumerRecord, Producer, ProducerConfig, Record,
    TopicPartition,
};

async fn setup() -> (EmbeddedBroker, Producer) {
    let broker = EmbeddedBroker::start().unwrap();
    let mut client = Client::connect(broker.bootstrap()).unwrap();
    client.create_topic("orders", 2, &[]).unwrap();
    client.create_topic("orders.retry", 1, &[]).unwrap();
    client.create_topic("orders.dlt", 1, &[]).unwrap();
    let producer = Producer::start(ProducerConfig::new(broker.bootstrap().to_string()));
    for index in 0..40u32 {
        let record = Record::new("orders", index.to_string())
            .with_partition(index % 2)
            .with_header("trace", b"t".to_vec());
        producer.send(record).await.await.unwrap();
    }
    (broker, producer)
}

async fn read_all(broker: &EmbeddedBroker, topic: &str, count: usize) -> Vec<ConsumerRecord> {
    let mut consumer = Consumer::new(ConsumerConfig::new(broker.bootstrap().to_string()));
    consumer
        .assign(&[TopicPartition::new(topic, 0)])
        .await
        .unwrap();
    let mut records = Vec::new();
    while records.len() < count {
        let polled = consumer.poll(Duration::from_secs(10)).await.unwrap();
        assert!(
            !polled.is_empty(),
            "only {} of {count} in {topic}",
            records.len()
        );
        records.extend(polled.iter().map(|record| record.to_owned()));
    }
    records
}

fn header<'a>(record: &'a ConsumerRecord, name: &str) -> &'a str {
    let value = record
        .headers
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value);
    std::str::from_utf8(value.unwrap_or_else(|| panic!("no {name} header"))).unwrap()
}

fn value(record: &ConsumerRecord) -> u32 {
    std::str::from_utf8(record.value.as_deref().unwrap())
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn failing_records_end_in_the_dead_letter_topic_and_the_rest_is_processed_once() {
    let (broker, producer) = setup().await;
    let handler = ErrorHandler::new(
        RecoveryConfig {
            max_attempts: 3,
            backoff: Backoff::Exponential {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(4),
            },
            exhausted: Exhausted::DeadLetter,
            dead_letter_topic: "orders.dlt".into(),
            max_total_attempts: 3,
        },
        producer,
    );
    let mut config = ConsumerConfig::new(broker.bootstrap().to_string());
    config.group_id = Some("billing".into());
    let mut consumer = Consumer::new(config);
    consumer
        .assign(&[
            TopicPartition::new("orders", 0),
            TopicPartition::new("orders", 1),
        ])
        .await
        .unwrap();
    let mut processed: HashMap<u32, u32> = HashMap::new();
    let mut attempts: HashMap<u32, u32> = HashMap::new();
    let mut handled = 0;
    while handled < 40 {
        let records = consumer.poll(Duration::from_secs(10)).await.unwrap();
        assert!(!records.is_empty());
        for record in records.iter() {
            let index: u32 = std::str::from_utf8(record.value().unwrap())
                .unwrap()
                .parse()
                .unwrap();
            let outcome = handler
                .handle(&record, |_| {
                    *attempts.entry(index).or_default() += 1;
                    let result = match index % 10 {
                        3 => Err(ProcessError::Retriable("flaky dependency".into())),
                        7 => Err(ProcessError::Fatal("cannot parse".into())),
                        _ => {
                            *processed.entry(index).or_default() += 1;
                            Ok(())
                        }
                    };
                    std::future::ready(result)
                })
                .await
                .unwrap();
            let expected = match index % 10 {
                3 | 7 => Handled::SentToDeadLetter,
                _ => Handled::Processed { attempts: 1 },
            };
            assert_eq!(outcome, expected, "record {index}");
            handled += 1;
        }
        consumer.commit_sync().await.unwrap();
    }
    assert_eq!(processed.len(), 32);
    assert!(
        processed.values().all(|&count| count == 1),
        "processed once each"
    );
    assert!((0..40)
        .filter(|index| index % 10 == 3)
        .all(|index| attempts[&index] == 3));
    assert!((0..40)
        .filter(|index| index % 10 == 7)
        .all(|index| attempts[&index] == 1));

    let mut dead = read_all(&broker, "orders.dlt", 8).await;
    dead.sort_by_key(value);
    let values: Vec<u32> = dead.iter().map(value).collect();
    assert_eq!(values, vec![3, 7, 13, 17, 23, 27, 33, 37]);
    for record in &dead {
        let index = value(record);
        assert_eq!(header(record, ORIGINAL_TOPIC), "orders");
        assert_eq!(header(record, ORIGINAL_PARTITION), (index % 2).to_string());
        assert_eq!(header(record, ORIGINAL_OFFSET), (index / 2).to_string());
        let (error, tries) = if index % 10 == 3 {
            ("flaky dependency", "3")
        } else {
            ("cannot parse", "1")
        };
        assert_eq!(
            (header(record, ERROR), header(record, ATTEMPTS)),
            (error, tries)
        );
        assert_eq!(
            header(record, "trace"),
            "t",
            "the application's headers are kept"
        );
    }
    // The group committed past the bad records: nothing is read again.
    let committed = consumer
        .committed(&[
            TopicPartition::new("orders", 0),
            TopicPartition::new("orders", 1),
        ])
        .await
        .unwrap();
    assert_eq!(committed, vec![Some(20), Some(20)]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_retry_topic_delays_records_and_gives_up_after_the_total_attempts() {
    let (broker, producer) = setup().await;
    let handler = ErrorHandler::new(
        RecoveryConfig {
            max_attempts: 2,
            backoff: Backoff::Fixed(Duration::from_millis(1)),
            exhausted: Exhausted::RetryTopic {
                topic: "orders.retry".into(),
                delay: Duration::from_millis(50),
            },
            dead_letter_topic: "orders.dlt".into(),
            max_total_attempts: 4,
        },
        producer,
    );
    let mut attempts: HashMap<u32, u32> = HashMap::new();
    let mut process = |record: &flumen_client::ConsumerRecordView<'_>| {
        let index: u32 = std::str::from_utf8(record.value().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        let tries = attempts.entry(index).or_default();
        *tries += 1;
        // 5 works on its third attempt overall (the first in the retry topic); 9 never.
        let result = match index {
            5 if *tries < 3 => Err(ProcessError::Retriable("not yet".into())),
            9 => Err(ProcessError::Retriable("never".into())),
            _ => Ok(()),
        };
        std::future::ready(result)
    };
    let mut main = Consumer::new(ConsumerConfig::new(broker.bootstrap().to_string()));
    main.assign(&[
        TopicPartition::new("orders", 0),
        TopicPartition::new("orders", 1),
    ])
    .await
    .unwrap();
    let mut outcomes = HashMap::new();
    while outcomes.len() < 40 {
        for record in main.poll(Duration::from_secs(10)).await.unwrap().iter() {
            let outcome = handler.handle(&record, &mut process).await.unwrap();
            outcomes.insert(record.value().unwrap().to_vec(), outcome);
        }
    }
    assert_eq!(outcomes[&b"5".to_vec()], Handled::SentToRetry);
    assert_eq!(outcomes[&b"9".to_vec()], Handled::SentToRetry);

    let retried = read_all(&broker, "orders.retry", 2).await;
    assert!(retried
        .iter()
        .all(|record| header(record, NOT_BEFORE).parse::<i64>().is_ok()));
    let mut retry_consumer = Consumer::new(ConsumerConfig::new(broker.bootstrap().to_string()));
    retry_consumer
        .assign(&[TopicPartition::new("orders.retry", 0)])
        .await
        .unwrap();
    let mut second = Vec::new();
    while second.len() < 2 {
        for record in retry_consumer
            .poll(Duration::from_secs(10))
            .await
            .unwrap()
            .iter()
        {
            second.push(handler.handle(&record, &mut process).await.unwrap());
        }
    }
    assert_eq!(
        second,
        vec![
            Handled::Processed { attempts: 1 },
            Handled::SentToDeadLetter
        ]
    );
    let dead = read_all(&broker, "orders.dlt", 1).await;
    assert_eq!(value(&dead[0]), 9);
    assert_eq!(
        header(&dead[0], ATTEMPTS),
        "4",
        "attempts count across rounds"
    );
    assert_eq!(
        header(&dead[0], ORIGINAL_TOPIC),
        "orders",
        "the first topic, not the retry topic"
    );
}
