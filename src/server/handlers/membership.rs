//! JoinGroup, SyncGroup, Heartbeat, LeaveGroup and DescribeGroups: each forwarded to the
//! group's coordinator shard. A join or a follower's sync is held there until the
//! rebalance step it waits for completes.

use std::rc::Rc;

use flumen_protocol::wire::messages::{
    DescribeGroupsRequest, DescribeGroupsResponse, DescribedGroup, DescribedMember, GroupOutcome,
    HeartbeatRequest, JoinGroupRequest, JoinGroupResponse, JoinedMember, LeaveGroupRequest,
    Outcome, SyncGroupRequest, SyncGroupResponse,
};
use flumen_protocol::wire::{decode_control, ErrorCode, FrameError};

use super::{encode, Response};
use crate::group::{validate_group_id, JoinRequest};
use crate::server::errors::{from_group, WireError};
use crate::server::mesh::{GroupOp, GroupReply};
use crate::server::state::ShardState;

/// Runs `op` on `group`'s coordinator after checking the group id.
async fn on_coordinator(
    state: &ShardState,
    group: &str,
    op: GroupOp,
) -> Result<GroupReply, WireError> {
    validate_group_id(group).map_err(|error| from_group(&error))?;
    let (coordinator, _) = state.coordinator_of(group);
    Ok(state.group_op(coordinator, op).await)
}

fn outcome<T>(result: &Result<T, WireError>) -> Outcome {
    match result {
        Ok(_) => Outcome::ok(),
        Err((code, message)) => Outcome::error(*code, message.clone()),
    }
}

pub(super) async fn join(state: &Rc<ShardState>, control: &[u8]) -> Result<Response, FrameError> {
    let request = decode_control::<JoinGroupRequest>(control)?;
    let group = request.group_id.as_str().to_owned();
    let join = JoinRequest {
        member_id: request.member_id.as_str().to_owned(),
        session_timeout_ms: request.session_timeout_ms.to_native(),
        rebalance_timeout_ms: request.rebalance_timeout_ms.to_native(),
        protocol_type: request.protocol_type.as_str().to_owned(),
        protocols: request
            .protocols
            .iter()
            .map(|protocol| {
                (
                    protocol.name.as_str().to_owned(),
                    protocol.metadata.to_vec(),
                )
            })
            .collect(),
    };
    let op = GroupOp::Join {
        group: group.clone(),
        request: join,
    };
    let result = match on_coordinator(state, &group, op).await {
        Ok(GroupReply::Joined(result)) => result,
        Ok(_) => unreachable!("joins are answered with Joined"),
        Err(error) => Err(error),
    };
    let response = match &result {
        Ok(answer) => JoinGroupResponse {
            outcome: Outcome::ok(),
            generation_id: answer.generation,
            protocol_name: answer.protocol.clone(),
            leader: answer.leader.clone(),
            member_id: answer.member_id.clone(),
            members: answer
                .members
                .iter()
                .map(|(member_id, metadata)| JoinedMember {
                    member_id: member_id.clone(),
                    metadata: metadata.clone(),
                })
                .collect(),
        },
        Err(_) => JoinGroupResponse {
            outcome: outcome(&result),
            generation_id: -1,
            protocol_name: String::new(),
            leader: String::new(),
            member_id: String::new(),
            members: Vec::new(),
        },
    };
    Ok(Response::ok(encode(&response)))
}

pub(super) async fn sync(state: &Rc<ShardState>, control: &[u8]) -> Result<Response, FrameError> {
    let request = decode_control::<SyncGroupRequest>(control)?;
    let group = request.group_id.as_str().to_owned();
    let op = GroupOp::Sync {
        group: group.clone(),
        generation: request.generation_id.to_native(),
        member: request.member_id.as_str().to_owned(),
        assignments: request
            .assignments
            .iter()
            .map(|entry| {
                (
                    entry.member_id.as_str().to_owned(),
                    entry.assignment.to_vec(),
                )
            })
            .collect(),
    };
    let result = match on_coordinator(state, &group, op).await {
        Ok(GroupReply::Synced(result)) => result,
        Ok(_) => unreachable!("syncs are answered with Synced"),
        Err(error) => Err(error),
    };
    Ok(Response::ok(encode(&SyncGroupResponse {
        outcome: outcome(&result),
        assignment: result.unwrap_or_default(),
    })))
}

/// Heartbeat and LeaveGroup: a plain outcome.
async fn done(state: &ShardState, group: &str, op: GroupOp) -> Response {
    let result = match on_coordinator(state, group, op).await {
        Ok(GroupReply::Committed(result)) => result,
        Ok(_) => unreachable!("heartbeats and leaves are answered with an outcome"),
        Err(error) => Err(error),
    };
    Response::ok(encode(&GroupOutcome {
        outcome: outcome(&result),
    }))
}

pub(super) async fn heartbeat(
    state: &Rc<ShardState>,
    control: &[u8],
) -> Result<Response, FrameError> {
    let request = decode_control::<HeartbeatRequest>(control)?;
    let group = request.group_id.as_str().to_owned();
    let op = GroupOp::Heartbeat {
        group: group.clone(),
        generation: request.generation_id.to_native(),
        member: request.member_id.as_str().to_owned(),
    };
    Ok(done(state, &group, op).await)
}

pub(super) async fn leave(state: &Rc<ShardState>, control: &[u8]) -> Result<Response, FrameError> {
    let request = decode_control::<LeaveGroupRequest>(control)?;
    let group = request.group_id.as_str().to_owned();
    let op = GroupOp::Leave {
        group: group.clone(),
        member: request.member_id.as_str().to_owned(),
    };
    Ok(done(state, &group, op).await)
}

pub(super) async fn describe(
    state: &Rc<ShardState>,
    control: &[u8],
) -> Result<Response, FrameError> {
    let request = decode_control::<DescribeGroupsRequest>(control)?;
    let mut groups = Vec::with_capacity(request.groups.len());
    for group in request.groups.iter() {
        let group = group.as_str().to_owned();
        let op = GroupOp::Describe {
            group: group.clone(),
        };
        let described = match on_coordinator(state, &group, op).await {
            Ok(GroupReply::Described(Some(found))) => Ok(found),
            Ok(GroupReply::Described(None)) => {
                Err((ErrorCode::GroupIdNotFound, format!("unknown group {group}")))
            }
            Ok(_) => unreachable!("describes are answered with Described"),
            Err(error) => Err(error),
        };
        groups.push(match described {
            Ok(found) => DescribedGroup {
                group_id: group,
                outcome: Outcome::ok(),
                state: found.phase.name().to_owned(),
                generation_id: found.generation,
                protocol: found.protocol,
                members: found
                    .members
                    .into_iter()
                    .map(|(member_id, metadata, assignment)| DescribedMember {
                        member_id,
                        metadata,
                        assignment,
                    })
                    .collect(),
            },
            Err(error) => DescribedGroup {
                group_id: group,
                outcome: outcome::<()>(&Err(error)),
                state: String::new(),
                generation_id: -1,
                protocol: String::new(),
                members: Vec::new(),
            },
        });
    }
    Ok(Response::ok(encode(&DescribeGroupsResponse { groups })))
}
