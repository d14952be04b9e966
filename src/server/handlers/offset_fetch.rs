//! OffsetFetch, ListGroups and DeleteGroups: answered from (and, for deletion, through)
//! the coordinators' in-memory positions.

use std::collections::BTreeMap;
use std::rc::Rc;

use flumen_protocol::wire::messages::{
    DeleteGroupsRequest, DeleteGroupsResponse, DeletedGroup, ListGroupsRequest, ListGroupsResponse,
    OffsetFetchPartition, OffsetFetchRequest, OffsetFetchResponse, OffsetFetchTopicResult, Outcome,
};
use flumen_protocol::wire::{decode_control, FrameError};

use super::{encode, Response};
use crate::group::{validate_group_id, Committed};
use crate::server::errors::from_group;
use crate::server::mesh::{GroupOp, GroupReply};
use crate::server::state::ShardState;

fn position(partition: u32, committed: Option<&Committed>) -> OffsetFetchPartition {
    OffsetFetchPartition {
        partition,
        offset: committed.map(|committed| committed.offset),
        metadata: committed.and_then(|committed| committed.metadata.clone()),
        commit_timestamp: committed.map_or(0, |committed| committed.timestamp_ms),
        outcome: Outcome::ok(),
    }
}

pub(super) async fn handle(state: &Rc<ShardState>, control: &[u8]) -> Result<Response, FrameError> {
    let request = decode_control::<OffsetFetchRequest>(control)?;
    let group = request.group_id.as_str().to_owned();
    if let Err(error) = validate_group_id(&group) {
        let (code, message) = from_group(&error);
        return Ok(Response::ok(encode(&OffsetFetchResponse {
            outcome: Outcome::error(code, message),
            topics: Vec::new(),
        })));
    }
    let (coordinator, _) = state.coordinator_of(&group);
    let positions = match state.group_op(coordinator, GroupOp::Fetch { group }).await {
        GroupReply::Positions(Ok(positions)) => positions,
        GroupReply::Positions(Err((code, message))) => {
            return Ok(Response::ok(encode(&OffsetFetchResponse {
                outcome: Outcome::error(code, message),
                topics: Vec::new(),
            })))
        }
        _ => unreachable!("fetch is answered with positions"),
    };
    let topics = match request.topics.as_ref() {
        Some(asked) => asked
            .iter()
            .map(|topic| {
                let name = topic.name.as_str();
                OffsetFetchTopicResult {
                    name: name.to_owned(),
                    partitions: topic
                        .partitions
                        .iter()
                        .map(|partition| {
                            let partition = partition.to_native();
                            position(partition, positions.get(&(name.to_owned(), partition)))
                        })
                        .collect(),
                }
            })
            .collect(),
        None => {
            let mut by_topic: BTreeMap<&str, Vec<OffsetFetchPartition>> = BTreeMap::new();
            for ((topic, partition), committed) in &positions {
                by_topic
                    .entry(topic)
                    .or_default()
                    .push(position(*partition, Some(committed)));
            }
            by_topic
                .into_iter()
                .map(|(name, partitions)| OffsetFetchTopicResult {
                    name: name.to_owned(),
                    partitions,
                })
                .collect()
        }
    };
    Ok(Response::ok(encode(&OffsetFetchResponse {
        outcome: Outcome::ok(),
        topics,
    })))
}

pub(super) async fn delete_groups(
    state: &Rc<ShardState>,
    control: &[u8],
) -> Result<Response, FrameError> {
    let request = decode_control::<DeleteGroupsRequest>(control)?;
    let mut groups = Vec::with_capacity(request.groups.len());
    for group in request.groups.iter() {
        let group = group.as_str().to_owned();
        let outcome = match validate_group_id(&group) {
            Err(error) => {
                let (code, message) = from_group(&error);
                Outcome::error(code, message)
            }
            Ok(()) => {
                let (coordinator, _) = state.coordinator_of(&group);
                let op = GroupOp::Delete {
                    group: group.clone(),
                };
                match state.group_op(coordinator, op).await {
                    GroupReply::Committed(Err((code, message))) => Outcome::error(code, message),
                    _ => Outcome::ok(),
                }
            }
        };
        groups.push(DeletedGroup {
            group_id: group,
            outcome,
        });
    }
    Ok(Response::ok(encode(&DeleteGroupsResponse { groups })))
}

pub(super) async fn list_groups(
    state: &Rc<ShardState>,
    control: &[u8],
) -> Result<Response, FrameError> {
    decode_control::<ListGroupsRequest>(control)?;
    let mut groups = Vec::new();
    for shard in 0..state.shards {
        if let GroupReply::Groups(found) = state.group_op(shard, GroupOp::List).await {
            groups.extend(found);
        }
    }
    groups.sort();
    groups.dedup();
    Ok(Response::ok(encode(&ListGroupsResponse { groups })))
}
