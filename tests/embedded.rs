//! The embedded broker: one line to start, usable at once, gone without a trace on drop.

use flumen::EmbeddedBroker;
use flumen_client::{Acks, Client};
use flumen_protocol::record::BatchBuilder;

#[test]
fn an_embedded_broker_serves_at_once_and_cleans_up_on_drop() {
    let broker = EmbeddedBroker::start().unwrap();
    let data_dir = broker.data_dir().to_path_buf();
    let mut client = Client::connect(broker.bootstrap()).unwrap();
    client.create_topic("t", 2, &[]).unwrap();
    let mut builder = BatchBuilder::new(0);
    builder.push(5, Some(b"k"), Some(b"v"), &[]);
    let batch = builder.build().unwrap();
    let result = client
        .produce("t", 1, &[batch.as_bytes()], Acks::All)
        .unwrap();
    let fetched = client
        .fetch("t", 1, result.base_offset, 1 << 20, 0)
        .unwrap();
    assert_eq!(
        fetched.batches().unwrap()[0]
            .records()
            .next()
            .unwrap()
            .value(),
        Some(&b"v"[..])
    );
    assert!(data_dir.join("t").exists());

    // Two embedded brokers side by side do not interfere.
    let other = EmbeddedBroker::start().unwrap();
    assert_ne!(other.bootstrap(), broker.bootstrap());
    drop(other);

    drop(client);
    drop(broker);
    assert!(!data_dir.exists(), "the data directory is removed on drop");
}
