//! InitProducerId: shard 0 hands out a new producer id (persisted in blocks, so ids are
//! never reused by this data directory); the epoch of a new id is 0.

use std::rc::Rc;

use flumen_protocol::wire::messages::{InitProducerIdRequest, InitProducerIdResponse};
use flumen_protocol::wire::{decode_control, ErrorCode, FrameError};

use super::{encode, outcome, Response};
use crate::server::state::ShardState;

pub(super) async fn handle(state: &Rc<ShardState>, control: &[u8]) -> Result<Response, FrameError> {
    let request = decode_control::<InitProducerIdRequest>(control)?;
    let result = if request.transactional_id.is_some() {
        let message = "transactions are not supported; send no transactional id";
        Err((ErrorCode::InvalidRequest, message.to_owned()))
    } else {
        state.allocate_producer_id().await
    };
    Ok(Response::ok(encode(&InitProducerIdResponse {
        outcome: outcome(result.as_ref().map(|_| ())),
        producer_id: result.as_ref().map_or(-1, |id| *id),
        producer_epoch: if result.is_ok() { 0 } else { -1 },
    })))
}
