//! CreateTopics: each topic is validated and created by shard 0, which owns the catalog,
//! and is open on every shard before the answer is sent.

use std::rc::Rc;

use flumen_protocol::wire::messages::{CreateTopicsRequest, CreateTopicsResponse, TopicOutcome};
use flumen_protocol::wire::{decode_control, FrameError};

use super::{config_pairs, encode, outcome, Response};
use crate::server::mesh::CatalogChange;
use crate::server::state::ShardState;

pub(super) async fn handle(state: &Rc<ShardState>, control: &[u8]) -> Result<Response, FrameError> {
    let request = decode_control::<CreateTopicsRequest>(control)?;
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics.iter() {
        let change = CatalogChange::Create {
            name: topic.name.as_str().to_owned(),
            partitions: topic.partitions.to_native(),
            replication_factor: topic.replication_factor.to_native(),
            configs: config_pairs(&topic.configs),
            validate_only: request.validate_only,
        };
        let result = state.change_catalog(change).await;
        if result.is_ok() && !request.validate_only {
            tracing::info!(
                topic = topic.name.as_str(),
                partitions = topic.partitions.to_native(),
                "topic created"
            );
        }
        results.push(TopicOutcome {
            name: topic.name.as_str().to_owned(),
            outcome: outcome(result.as_ref().map(|_| ())),
        });
    }
    Ok(Response::ok(encode(&CreateTopicsResponse {
        topics: results,
    })))
}
