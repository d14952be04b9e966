//! OffsetCommit: checks each position (topic, partition, metadata size) here, then has
//! the group's coordinator shard append the valid ones durably in one batch.

use std::rc::Rc;

use flumen_protocol::wire::messages::{
    OffsetCommitPartitionResult, OffsetCommitRequest, OffsetCommitResponse,
    OffsetCommitTopicResult, Outcome,
};
use flumen_protocol::wire::{decode_control, ErrorCode, FrameError};

use super::{encode, Response};
use crate::group::{validate_group_id, CommitEntry, METADATA_BYTES_MAX};
use crate::server::errors::{from_group, WireError};
use crate::server::mesh::{GroupOp, GroupReply};
use crate::server::state::ShardState;

pub(super) async fn handle(state: &Rc<ShardState>, control: &[u8]) -> Result<Response, FrameError> {
    let request = decode_control::<OffsetCommitRequest>(control)?;
    let group = request.group_id.as_str().to_owned();
    let group_error = validate_group_id(&group)
        .err()
        .map(|error| from_group(&error));
    let catalog = state.catalog();
    let mut topics = Vec::with_capacity(request.topics.len());
    let mut entries = Vec::new();
    // (topic index, partition index) of each entry sent to the coordinator.
    let mut sent = Vec::new();
    for (topic_index, topic) in request.topics.iter().enumerate() {
        let name = topic.name.as_str();
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for (partition_index, position) in topic.partitions.iter().enumerate() {
            let partition = position.partition.to_native();
            let metadata = position
                .metadata
                .as_ref()
                .map(|text| text.as_str().to_owned());
            let refusal: Option<WireError> = if let Some(error) = &group_error {
                Some(error.clone())
            } else if let Some(entry) = catalog.topic(name) {
                if partition >= entry.partitions {
                    let message = format!("{name} has {} partitions", entry.partitions);
                    Some((ErrorCode::UnknownPartition, message))
                } else if metadata
                    .as_ref()
                    .is_some_and(|text| text.len() > METADATA_BYTES_MAX)
                {
                    let message = format!("metadata over {METADATA_BYTES_MAX} bytes");
                    Some((ErrorCode::OffsetMetadataTooLarge, message))
                } else {
                    None
                }
            } else {
                Some((ErrorCode::UnknownTopic, format!("unknown topic {name}")))
            };
            let outcome = match refusal {
                Some((code, message)) => Outcome::error(code, message),
                None => {
                    entries.push(CommitEntry {
                        topic: name.to_owned(),
                        partition,
                        offset: position.offset.to_native(),
                        metadata,
                    });
                    sent.push((topic_index, partition_index));
                    Outcome::ok()
                }
            };
            partitions.push(OffsetCommitPartitionResult { partition, outcome });
        }
        topics.push(OffsetCommitTopicResult {
            name: name.to_owned(),
            partitions,
        });
    }
    if !entries.is_empty() {
        let (coordinator, _) = state.coordinator_of(&group);
        let op = GroupOp::Commit {
            group,
            generation: request.generation_id.to_native(),
            member: request.member_id.as_str().to_owned(),
            entries,
        };
        if let GroupReply::Committed(Err((code, message))) = state.group_op(coordinator, op).await {
            for (topic_index, partition_index) in sent {
                topics[topic_index].partitions[partition_index].outcome =
                    Outcome::error(code, message.clone());
            }
        }
    }
    Ok(Response::ok(encode(&OffsetCommitResponse { topics })))
}
