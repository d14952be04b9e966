//! DeleteTopics: shard 0 removes the topic from the catalog; every shard closes its
//! partitions and deletes their directories before the answer is sent.

use std::rc::Rc;

use flumen_protocol::wire::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicOutcome};
use flumen_protocol::wire::{decode_control, FrameError};

use super::{encode, outcome, Response};
use crate::server::mesh::CatalogChange;
use crate::server::state::ShardState;

pub(super) async fn handle(state: &Rc<ShardState>, control: &[u8]) -> Result<Response, FrameError> {
    let request = decode_control::<DeleteTopicsRequest>(control)?;
    let mut results = Vec::with_capacity(request.names.len());
    for name in request.names.iter() {
        let change = CatalogChange::Delete {
            name: name.as_str().to_owned(),
        };
        let result = state.change_catalog(change).await;
        if result.is_ok() {
            tracing::info!(topic = name.as_str(), "topic deleted");
        }
        results.push(TopicOutcome {
            name: name.as_str().to_owned(),
            outcome: outcome(result.as_ref().map(|_| ())),
        });
    }
    Ok(Response::ok(encode(&DeleteTopicsResponse {
        topics: results,
    })))
}
