//! Fetch: reads the requested partitions (each on its owning shard), and if fewer than
//! `min_bytes` came back, waits until any of them receives data or `max_wait_ms` passes,
//! then reads once more.
//!
//! Limits: each partition returns at most `partition_max_bytes` and the response at most
//! `max_bytes`, except that the first batch found is always returned whole so a consumer
//! can get past a batch larger than its limits. The partitions are read one after
//! another, each up to what the response has left, and once it is full the rest only
//! report their offsets: what a fetch holds in memory is bounded by its response, not by
//! how many partitions it names. A fetch names at most [`FETCH_PARTITIONS_MAX`]
//! partitions, each once. Batches are written to the socket from the cache's or the
//! read's buffers; nothing is copied on the owning shard.

use std::collections::HashSet;
use std::rc::Rc;
use std::time::{Duration, Instant};

use flumen_protocol::wire::messages::{
    FetchPartitionResult, FetchRequest, FetchResponse, FetchTopicResult, Outcome, LATEST_TIMESTAMP,
};
use flumen_protocol::wire::{decode_control, DataRange, ErrorCode, FrameError};

use super::{encode, DataPart, Response};
use crate::server::errors::WireError;
use crate::server::mesh::{FetchResult, PartitionOp};
use crate::server::state::{FetchedBatches, Outcome as ShardOutcome, ShardState};
use crate::shard::{spawn, until, with_deadline, LocalBudget, Notify};

/// Longest wait a fetch may ask for.
const MAX_WAIT_MS_LIMIT: u32 = 60_000;
/// Most batch bytes one fetch response carries (beyond a first batch larger than this).
const RESPONSE_BYTES_MAX: usize = 32 << 20;
/// Most partitions one fetch may name.
pub(crate) const FETCH_PARTITIONS_MAX: usize = 10_000;

struct Wanted {
    topic: usize,
    name: String,
    partition: u32,
    offset: u64,
    max_bytes: usize,
}

type PartitionFetch = Result<FetchResult<FetchedBatches>, WireError>;

pub(super) async fn handle(
    state: &Rc<ShardState>,
    control: &[u8],
    budget: &Rc<LocalBudget>,
) -> Result<Response, FrameError> {
    let request = decode_control::<FetchRequest>(control)?;
    // Reserve the response's bytes from the connection's budget before reading: a client
    // that pipelines fetches but stops reading responses holds at most the budget.
    let response_bytes = (request.max_bytes.to_native() as usize)
        .min(RESPONSE_BYTES_MAX)
        .min(budget.capacity());
    // The ticket is taken before any other await, so fetches are served in request order
    // (see `LocalBudget`): the connection writes responses in that order.
    let permit = budget.acquire(response_bytes).await;
    let response_limit = response_bytes;
    let wanted: Vec<Wanted> = request
        .topics
        .iter()
        .enumerate()
        .flat_map(|(topic_index, topic)| {
            topic.partitions.iter().map(move |partition| Wanted {
                topic: topic_index,
                name: topic.name.as_str().to_owned(),
                partition: partition.partition.to_native(),
                offset: partition.fetch_offset.to_native(),
                // No partition reads more than the whole response may carry.
                max_bytes: (partition.partition_max_bytes.to_native() as usize).min(response_limit),
            })
        })
        .collect();
    if wanted.len() > FETCH_PARTITIONS_MAX {
        return Err(FrameError::Malformed(
            "a fetch names more partitions than FETCH_PARTITIONS_MAX",
        ));
    }
    let wait_ms = request.max_wait_ms.to_native().min(MAX_WAIT_MS_LIMIT);
    let deadline = Instant::now() + Duration::from_millis(u64::from(wait_ms));
    let min_bytes = request.min_bytes.to_native() as usize;
    let mut results = read_all(state, &wanted, response_limit).await;
    let any_error = results.iter().any(Result::is_err);
    if fetched_bytes(&results) < min_bytes.max(1) && wait_ms > 0 && !any_error {
        wait_for_any(state, &wanted, deadline).await;
        results = read_all(state, &wanted, response_limit).await;
    }
    let names = request
        .topics
        .iter()
        .map(|topic| topic.name.as_str().to_owned());
    let mut response = assemble(names.collect(), &wanted, results);
    response.permit = Some(permit);
    Ok(response)
}

/// Reads `wanted` in order, each up to what `response_limit` has left; once the
/// response is full, a read keeps only the partition's offsets. A partition named a
/// second time is refused.
async fn read_all(
    state: &Rc<ShardState>,
    wanted: &[Wanted],
    response_limit: usize,
) -> Vec<PartitionFetch> {
    let mut results = Vec::with_capacity(wanted.len());
    let mut named = HashSet::with_capacity(wanted.len());
    let mut total = 0usize;
    for want in wanted {
        if !named.insert((want.name.as_str(), want.partition)) {
            results.push(Err((
                ErrorCode::InvalidRequest,
                format!(
                    "{}-{} is named twice in one fetch",
                    want.name, want.partition
                ),
            )));
            continue;
        }
        // A partition's first batch may be larger than its limit: any size until
        // something was read, then as large as the room left. The storage layer reads
        // no further than that.
        let room = response_limit.saturating_sub(total);
        let max_bytes = want.max_bytes.min(room);
        let first_batch_max = if total == 0 { usize::MAX } else { room };
        let offsets_only = total > 0 && max_bytes == 0;
        let result = read_one(state, want, max_bytes, first_batch_max, offsets_only).await;
        if let Ok(fetched) = &result {
            total += batch_bytes(&fetched.batches);
        }
        results.push(result);
    }
    results
}

async fn read_one(
    state: &Rc<ShardState>,
    want: &Wanted,
    max_bytes: usize,
    first_batch_max: usize,
    offsets_only: bool,
) -> PartitionFetch {
    let known = state
        .catalog()
        .topic(&want.name)
        .map(|topic| topic.partitions);
    match known {
        None => Err((
            ErrorCode::UnknownTopic,
            format!("unknown topic {}", want.name),
        )),
        Some(count) if want.partition >= count => Err((
            ErrorCode::UnknownPartition,
            format!("{} has {count} partitions", want.name),
        )),
        // The response is full: only the partition's offsets, read from no batch.
        Some(_) if offsets_only => {
            let op = PartitionOp::ListOffset {
                timestamp: LATEST_TIMESTAMP,
            };
            match state.partition_op(&want.name, want.partition, op).await {
                ShardOutcome::Offset(result) => result.map(|(end, stats)| FetchResult {
                    high_watermark: end,
                    log_start_offset: stats.log_start_offset,
                    batches: FetchedBatches::Copied(Vec::new()),
                }),
                _ => unreachable!("list-offset ops answer Offset"),
            }
        }
        Some(_) => {
            let op = PartitionOp::Fetch {
                offset: want.offset,
                max_bytes,
                first_batch_max,
            };
            match state.partition_op(&want.name, want.partition, op).await {
                ShardOutcome::Fetched(result) => result,
                _ => unreachable!("fetch ops answer Fetched"),
            }
        }
    }
}

fn batch_bytes(batches: &FetchedBatches) -> usize {
    match batches {
        FetchedBatches::Stored(batches) => batches.iter().map(|b| b.as_bytes().len()).sum(),
        FetchedBatches::Copied(batches) => batches.iter().map(|b| b.len()).sum(),
    }
}

fn fetched_bytes(results: &[PartitionFetch]) -> usize {
    results
        .iter()
        .filter_map(|result| result.as_ref().ok())
        .map(|fetched| batch_bytes(&fetched.batches))
        .sum()
}

/// Waits until any partition has data past its fetch offset, or the deadline.
async fn wait_for_any(state: &Rc<ShardState>, wanted: &[Wanted], deadline: Instant) {
    let woken = Rc::new(Notify::new());
    let listener = woken.listen();
    let wait_ms = deadline
        .saturating_duration_since(Instant::now())
        .as_millis() as u64;
    let _waits: Vec<_> = wanted
        .iter()
        .map(|want| {
            let (state, woken) = (Rc::clone(state), Rc::clone(&woken));
            let (name, partition, offset) = (want.name.clone(), want.partition, want.offset);
            spawn(async move {
                let op = PartitionOp::WaitForData { offset, wait_ms };
                if let ShardOutcome::DataReady(true) =
                    state.partition_op(&name, partition, op).await
                {
                    woken.notify_all();
                }
            })
        })
        .collect();
    // Shutdown ends the wait early: the broker answers what it has and drains.
    until(with_deadline(listener, deadline), state.shutdown.listen()).await;
}

/// The response: every batch read goes in (the reads returned only what fits,
/// [`Log::read_bounded`](crate::storage::Log::read_bounded)).
fn assemble(names: Vec<String>, wanted: &[Wanted], results: Vec<PartitionFetch>) -> Response {
    let mut topics: Vec<FetchTopicResult> = names
        .into_iter()
        .map(|name| FetchTopicResult {
            name,
            partitions: Vec::new(),
        })
        .collect();
    let mut data: Vec<DataPart> = Vec::new();
    let mut total = 0usize;
    for (want, result) in wanted.iter().zip(results) {
        let start = total;
        let partition = match result {
            Err((code, message)) => error_result(want.partition, code, message),
            Ok(fetched) => {
                for part in parts(fetched.batches) {
                    total += part.as_bytes().len();
                    data.push(part);
                }
                FetchPartitionResult {
                    partition: want.partition,
                    outcome: Outcome::ok(),
                    high_watermark: fetched.high_watermark,
                    log_start_offset: fetched.log_start_offset,
                    batches: DataRange {
                        offset: start as u32,
                        length: (total - start) as u32,
                    },
                }
            }
        };
        topics[want.topic].partitions.push(partition);
    }
    let mut response = Response::ok(encode(&FetchResponse { topics }));
    response.data = data;
    response
}

fn parts(batches: FetchedBatches) -> Vec<DataPart> {
    match batches {
        FetchedBatches::Stored(batches) => batches.into_iter().map(DataPart::Stored).collect(),
        FetchedBatches::Copied(batches) => batches.into_iter().map(DataPart::Copied).collect(),
    }
}

fn error_result(partition: u32, code: ErrorCode, message: String) -> FetchPartitionResult {
    FetchPartitionResult {
        partition,
        outcome: Outcome::error(code, message),
        high_watermark: 0,
        log_start_offset: 0,
        batches: DataRange::default(),
    }
}
