//! An integration test the way users write one: start an in-process broker, send with the
//! client, read the records back. Run with `cargo run --example embedded_test`.

use flumen::EmbeddedBroker;
use flumen_client::{Acks, Client};
use flumen_protocol::record::BatchBuilder;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = EmbeddedBroker::start()?;
    let mut client = Client::connect(broker.bootstrap())?;
    client.create_topic("orders", 1, &[])?;

    let mut batch = BatchBuilder::new(0);
    batch.push(
        1_700_000_000_000,
        Some(b"order-1"),
        Some(b"{\"total\": 42}"),
        &[],
    );
    let written = client.produce("orders", 0, &[batch.build()?.as_bytes()], Acks::All)?;

    let fetched = client.fetch("orders", 0, written.base_offset, 1 << 20, 1_000)?;
    let batches = fetched.batches()?;
    let record = batches[0].records().next().expect("one record");
    assert_eq!(record.key(), Some(&b"order-1"[..]));
    println!(
        "read back offset {}: {:?}",
        record.offset(),
        std::str::from_utf8(record.value().unwrap())?
    );
    broker.stop()?;
    Ok(())
}
