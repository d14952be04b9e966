//! Metadata: this broker, its shard endpoints, and the requested topics with the shard
//! that leads each partition.

use std::rc::Rc;

use flumen_protocol::wire::messages::{
    BrokerMetadata, MetadataRequest, MetadataResponse, Outcome, PartitionMetadata, ShardEndpoint,
    TopicMetadata,
};
use flumen_protocol::wire::{decode_control, ErrorCode, FrameError};

use super::{encode, Response};
use crate::server::state::ShardState;

pub(super) fn handle(state: &Rc<ShardState>, control: &[u8]) -> Result<Response, FrameError> {
    let request = decode_control::<MetadataRequest>(control)?;
    let catalog = state.catalog();
    let names: Vec<String> = match request.topics.as_ref() {
        Some(topics) => topics.iter().map(|name| name.as_str().to_owned()).collect(),
        None => catalog.topics().map(|topic| topic.name.clone()).collect(),
    };
    let topics = names
        .into_iter()
        .map(|name| match catalog.topic(&name) {
            None => TopicMetadata {
                outcome: Outcome::error(ErrorCode::UnknownTopic, format!("unknown topic {name}")),
                name,
                internal: false,
                partitions: Vec::new(),
            },
            Some(topic) => TopicMetadata {
                name: name.clone(),
                outcome: Outcome::ok(),
                internal: topic.internal,
                partitions: (0..topic.partitions)
                    .map(|partition| PartitionMetadata {
                        partition,
                        outcome: Outcome::ok(),
                        leader_broker: state.config.broker_id,
                        leader_shard: state.owner(&name, partition),
                        leader_epoch: 0,
                        replicas: vec![state.config.broker_id],
                        in_sync_replicas: vec![state.config.broker_id],
                    })
                    .collect(),
            },
        })
        .collect();
    let broker = BrokerMetadata {
        broker_id: state.config.broker_id,
        host: state.config.advertised_host(),
        port: state.shared_port,
        shards: state
            .shard_ports
            .iter()
            .enumerate()
            .map(|(shard, port)| ShardEndpoint {
                shard: shard as u32,
                port: *port,
            })
            .collect(),
    };
    Ok(Response::ok(encode(&MetadataResponse {
        brokers: vec![broker],
        topics,
    })))
}
