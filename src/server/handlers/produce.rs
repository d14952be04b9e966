//! Produce: appends each partition's batches on its owning shard, all partitions
//! concurrently, and answers in request order (nothing for acks=0).
//!
//! Batches are split out of the request buffer without copying: each partition gets a
//! `BytesMut` view of its range, which the log patches in place, keeps in the tail cache
//! and copies once into its write staging buffer. A view keeps the whole request buffer
//! alive as long as the cache holds it, so when the batches to append are under half of
//! the frame (refused partitions, a large control part) each gets a copy of its own and
//! the frame is freed: the cache's budget then bounds the memory it holds.

use std::rc::Rc;

use bytes::BytesMut;
use flumen_protocol::wire::messages::{
    Outcome, ProducePartitionResult, ProduceRequest, ProduceResponse, ProduceTopicResult,
};
use flumen_protocol::wire::{decode_control, ErrorCode, FrameError};

use super::{encode, Response};
use crate::partition::Acks;
use crate::server::errors::WireError;
use crate::server::mesh::{PartitionOp, ProduceResult};
use crate::server::state::{Outcome as ShardOutcome, ShardState};
use crate::shard::{spawn, Task};

/// One partition of the request.
struct Job {
    topic: usize,
    name: String,
    partition: u32,
    offset: u32,
    length: u32,
    batches: Result<BytesMut, WireError>,
}

enum Pending {
    Running(Task<ShardOutcome>),
    Failed(WireError),
}

pub(super) async fn handle(
    state: &Rc<ShardState>,
    control: &[u8],
    data: BytesMut,
) -> Result<Option<Response>, FrameError> {
    let request = decode_control::<ProduceRequest>(control)?;
    let acks = Acks::from_wire(request.acks);
    let mut jobs = Vec::new();
    for (topic_index, topic) in request.topics.iter().enumerate() {
        for partition in topic.partitions.iter() {
            jobs.push(Job {
                topic: topic_index,
                name: topic.name.as_str().to_owned(),
                partition: partition.partition.to_native(),
                offset: partition.batches.offset.to_native(),
                length: partition.batches.length.to_native(),
                batches: Err((ErrorCode::InvalidRequest, String::new())),
            });
        }
    }
    let frame_bytes = control.len() + data.len();
    split_data(&mut jobs, data);
    let admitted: Vec<Result<(Acks, BytesMut), WireError>> =
        jobs.iter_mut().map(|job| admit(state, job, acks)).collect();
    let appending: usize = admitted
        .iter()
        .filter_map(|admitted| admitted.as_ref().ok())
        .map(|(_, batches)| batches.len())
        .sum();
    let copy = appending.saturating_mul(2) < frame_bytes;
    let pending: Vec<Pending> = jobs
        .iter()
        .zip(admitted)
        .map(|(job, admitted)| match admitted {
            Err(error) => Pending::Failed(error),
            Ok((acks, batches)) => {
                let batches = match copy {
                    true => copied(&batches),
                    false => batches,
                };
                start(state, job, acks, batches)
            }
        })
        .collect();
    let mut topics: Vec<ProduceTopicResult> = request
        .topics
        .iter()
        .map(|topic| ProduceTopicResult {
            name: topic.name.as_str().to_owned(),
            partitions: Vec::new(),
        })
        .collect();
    for (job, pending) in jobs.iter().zip(pending) {
        let result = match pending {
            Pending::Failed(error) => Err(error),
            Pending::Running(task) => match task.await {
                ShardOutcome::Produced(result) => result,
                _ => unreachable!("produce ops answer Produced"),
            },
        };
        topics[job.topic]
            .partitions
            .push(partition_result(job.partition, result));
    }
    if acks == Some(Acks::None) {
        return Ok(None);
    }
    Ok(Some(Response::ok(encode(&ProduceResponse { topics }))))
}

/// Gives each job its batches: ranges sorted by offset must not overlap and must lie in
/// `data`; the buffer is split, never copied.
fn split_data(jobs: &mut [Job], mut data: BytesMut) {
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&index| jobs[index].offset);
    let mut consumed = 0usize;
    for index in order {
        let (offset, length) = (jobs[index].offset as usize, jobs[index].length as usize);
        let invalid = |why: &str| Err((ErrorCode::InvalidRequest, why.to_owned()));
        jobs[index].batches = if offset % 16 != 0 || length % 16 != 0 {
            invalid("batch range is not 16-byte aligned")
        } else if offset < consumed {
            invalid("batch ranges overlap")
        } else if offset + length > consumed + data.len() {
            invalid("batch range lies outside the data section")
        } else if length == 0 {
            invalid("no batches for this partition")
        } else {
            let _ = data.split_to(offset - consumed);
            consumed = offset + length;
            Ok(data.split_to(length))
        };
    }
}

/// The job's acks and batches, if it may be appended: valid acks, a topic clients may
/// write, a partition it has, and a valid range.
fn admit(
    state: &Rc<ShardState>,
    job: &mut Job,
    acks: Option<Acks>,
) -> Result<(Acks, BytesMut), WireError> {
    let Some(acks) = acks else {
        return Err((ErrorCode::InvalidAcks, "acks must be 0, 1 or -1".into()));
    };
    let catalog = state.catalog();
    let Some(topic) = catalog.topic(&job.name) else {
        return Err((
            ErrorCode::UnknownTopic,
            format!("unknown topic {}", job.name),
        ));
    };
    if topic.internal {
        let message = format!("{} is written by the broker only", job.name);
        return Err((ErrorCode::ReservedTopicName, message));
    }
    if job.partition >= topic.partitions {
        let message = format!("{} has {} partitions", job.name, topic.partitions);
        return Err((ErrorCode::UnknownPartition, message));
    }
    let batches = std::mem::replace(&mut job.batches, Ok(BytesMut::new()))?;
    Ok((acks, batches))
}

/// A 16-byte-aligned copy of `batches` (the alignment the frame gave them).
fn copied(batches: &[u8]) -> BytesMut {
    let mut copy = crate::server::connection::aligned_buffer(batches.len());
    copy.copy_from_slice(batches);
    copy
}

fn start(state: &Rc<ShardState>, job: &Job, acks: Acks, batches: BytesMut) -> Pending {
    let (state, name, partition) = (Rc::clone(state), job.name.clone(), job.partition);
    Pending::Running(spawn(async move {
        let op = PartitionOp::Produce { acks, batches };
        state.partition_op(&name, partition, op).await
    }))
}

fn partition_result(
    partition: u32,
    result: Result<ProduceResult, WireError>,
) -> ProducePartitionResult {
    match result {
        Ok(produced) => ProducePartitionResult {
            partition,
            outcome: if produced.duplicate {
                let message = "already appended; these are its original offsets";
                Outcome::error(ErrorCode::DuplicateSequence, message)
            } else {
                Outcome::ok()
            },
            base_offset: produced.base_offset,
            last_offset: produced.last_offset,
            log_start_offset: produced.log_start_offset,
        },
        Err((code, message)) => ProducePartitionResult {
            partition,
            outcome: Outcome::error(code, message),
            base_offset: 0,
            last_offset: 0,
            log_start_offset: 0,
        },
    }
}
