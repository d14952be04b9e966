//! Finding partition leaders through Metadata: the shard that leads a partition, and a
//! connection to it, on any [`Runtime`].

use flumen_protocol::wire::messages::MetadataResponse;
use flumen_protocol::wire::ErrorCode;

use crate::runtime::{Calls, Runtime};
use crate::ClientError;

async fn metadata<R: Runtime>(
    bootstrap: &str,
    topic: &str,
) -> Result<MetadataResponse, ClientError> {
    let mut client = crate::runtime::connect::<R>(bootstrap).await?;
    let metadata = client.metadata(Some(&[topic])).await?;
    let found = metadata
        .topics
        .first()
        .ok_or_else(|| ClientError::Protocol("empty metadata".into()))?;
    crate::operation::check(&found.outcome)?;
    // Partitioning divides by the count: a topic without partitions is a broker's error.
    if found.partitions.is_empty() {
        return Err(ClientError::Protocol(format!(
            "metadata lists no partitions for {topic}"
        )));
    }
    Ok(metadata)
}

/// The leader shard of each of the topic's partitions.
pub(crate) async fn leaders<R: Runtime>(
    bootstrap: &str,
    topic: &str,
) -> Result<Vec<u32>, ClientError> {
    let metadata = metadata::<R>(bootstrap, topic).await?;
    Ok(metadata.topics[0]
        .partitions
        .iter()
        .map(|partition| partition.leader_shard)
        .collect())
}

/// A connection to the shard leading `topic`-`partition`.
pub(crate) async fn connect_leader<R: Runtime>(
    bootstrap: &str,
    topic: &str,
    partition: u32,
) -> Result<R::Connection, ClientError> {
    let metadata = metadata::<R>(bootstrap, topic).await?;
    let found = &metadata.topics[0];
    let leader = found
        .partitions
        .get(partition as usize)
        .map(|found| found.leader_shard)
        .ok_or_else(|| ClientError::Broker {
            code: ErrorCode::UnknownPartition,
            message: format!("{topic} has {} partitions", found.partitions.len()),
        })?;
    let broker = metadata
        .brokers
        .first()
        .ok_or_else(|| ClientError::Protocol("no broker in metadata".into()))?;
    let port = broker
        .shards
        .get(leader as usize)
        .map(|shard| shard.port)
        .ok_or_else(|| ClientError::Protocol("unknown shard".into()))?;
    R::connect(&broker.host, port).await
}
