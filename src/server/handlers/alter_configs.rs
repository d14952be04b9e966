//! AlterConfigs: shard 0 validates and persists the new configuration; every shard applies
//! it to its partitions before the answer is sent.

use std::rc::Rc;

use flumen_protocol::wire::messages::{AlterConfigsRequest, AlterConfigsResponse, TopicOutcome};
use flumen_protocol::wire::{decode_control, FrameError};

use super::{config_pairs, encode, outcome, Response};
use crate::server::mesh::CatalogChange;
use crate::server::state::ShardState;

pub(super) async fn handle(state: &Rc<ShardState>, control: &[u8]) -> Result<Response, FrameError> {
    let request = decode_control::<AlterConfigsRequest>(control)?;
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics.iter() {
        let change = CatalogChange::Alter {
            name: topic.name.as_str().to_owned(),
            configs: config_pairs(&topic.configs),
        };
        let result = state.change_catalog(change).await;
        results.push(TopicOutcome {
            name: topic.name.as_str().to_owned(),
            outcome: outcome(result.as_ref().map(|_| ())),
        });
    }
    Ok(Response::ok(encode(&AlterConfigsResponse {
        topics: results,
    })))
}
