//! DescribeConfigs: every configuration key of a topic with its effective value.

use std::rc::Rc;

use flumen_protocol::wire::messages::{
    ConfigValue, DescribeConfigsRequest, DescribeConfigsResponse, Outcome, TopicConfigs,
};
use flumen_protocol::wire::{decode_control, ErrorCode, FrameError};

use super::{encode, Response};
use crate::server::state::ShardState;

pub(super) fn handle(state: &Rc<ShardState>, control: &[u8]) -> Result<Response, FrameError> {
    let request = decode_control::<DescribeConfigsRequest>(control)?;
    let catalog = state.catalog();
    let topics = request
        .topics
        .iter()
        .map(|name| match catalog.topic(name.as_str()) {
            None => TopicConfigs {
                name: name.as_str().to_owned(),
                outcome: Outcome::error(
                    ErrorCode::UnknownTopic,
                    format!("unknown topic {}", name.as_str()),
                ),
                configs: Vec::new(),
            },
            Some(topic) => TopicConfigs {
                name: topic.name.clone(),
                outcome: Outcome::ok(),
                configs: topic
                    .config
                    .describe(&state.config.log)
                    .into_iter()
                    .map(|(key, value, is_default)| ConfigValue {
                        key: key.to_owned(),
                        value,
                        is_default,
                    })
                    .collect(),
            },
        })
        .collect();
    Ok(Response::ok(encode(&DescribeConfigsResponse { topics })))
}
