//! ListOffsets: earliest, latest, or first offset at a time, with each partition's bounds
//! and size.

use std::rc::Rc;

use flumen_protocol::wire::messages::{
    ListOffsetsPartitionResult, ListOffsetsRequest, ListOffsetsResponse, ListOffsetsTopicResult,
    Outcome,
};
use flumen_protocol::wire::{decode_control, ErrorCode, FrameError};

use super::{encode, Response};
use crate::server::mesh::PartitionOp;
use crate::server::state::{Outcome as ShardOutcome, ShardState};

pub(super) async fn handle(state: &Rc<ShardState>, control: &[u8]) -> Result<Response, FrameError> {
    let request = decode_control::<ListOffsetsRequest>(control)?;
    let catalog = state.catalog();
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics.iter() {
        let name = topic.name.as_str();
        let count = catalog.topic(name).map(|entry| entry.partitions);
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for wanted in topic.partitions.iter() {
            let partition = wanted.partition.to_native();
            let result = match count {
                None => Err((ErrorCode::UnknownTopic, format!("unknown topic {name}"))),
                Some(count) if partition >= count => Err((
                    ErrorCode::UnknownPartition,
                    format!("{name} has {count} partitions"),
                )),
                Some(_) => {
                    let op = PartitionOp::ListOffset {
                        timestamp: wanted.timestamp.to_native(),
                    };
                    match state.partition_op(name, partition, op).await {
                        ShardOutcome::Offset(result) => result,
                        _ => unreachable!("list-offset ops answer Offset"),
                    }
                }
            };
            partitions.push(match result {
                Ok((offset, stats)) => ListOffsetsPartitionResult {
                    partition,
                    outcome: Outcome::ok(),
                    offset,
                    log_start_offset: stats.log_start_offset,
                    log_end_offset: stats.log_end_offset,
                    size_bytes: stats.size_bytes,
                },
                Err((code, message)) => ListOffsetsPartitionResult {
                    partition,
                    outcome: Outcome::error(code, message),
                    offset: 0,
                    log_start_offset: 0,
                    log_end_offset: 0,
                    size_bytes: 0,
                },
            });
        }
        topics.push(ListOffsetsTopicResult {
            name: name.to_owned(),
            partitions,
        });
    }
    Ok(Response::ok(encode(&ListOffsetsResponse { topics })))
}
