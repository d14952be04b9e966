//! The client's protocol logic, free of I/O ("sans-io"): each [`Operation`] knows its
//! request and how to turn the response into a result; an [`Encoder`] frames requests
//! and checks responses. Transports (blocking, tokio) only move bytes, so every runtime
//! shares exactly this code.

use flumen_protocol::wire::messages::*;
use flumen_protocol::wire::{
    decode_owned, encode_control, ApiKey, ControlMessage, DataRange, Deserialize, ErrorCode,
    FrameBuffer, RequestFrame, RequestHeader, ResponseFrame,
};

use crate::{Acks, ClientError, Fetched, Result};

/// One request/response exchange with a broker.
pub trait Operation {
    /// The request body.
    type Request: ControlMessage;
    /// The response body.
    type Response: ControlMessage<Archived: Deserialize<Self::Response>>;
    /// What the caller gets.
    type Output;
    /// The API called.
    const API: ApiKey;

    /// The request body.
    fn request(&self) -> Self::Request;

    /// Batches sent in the data section (whole, padded batches).
    fn data(&self) -> &[&[u8]] {
        &[]
    }

    /// Whether the broker answers (acks=0 produce does not).
    fn expects_response(&self) -> bool {
        true
    }

    /// The result without a response (for operations that expect none).
    fn output_without_response(&self) -> Result<Self::Output> {
        Err(ClientError::Protocol(
            "this operation expects a response".into(),
        ))
    }

    /// The result, from the decoded response and its frame.
    fn output(
        self,
        response: Self::Response,
        frame: FrameBuffer,
        data_start: usize,
    ) -> Result<Self::Output>;
}

/// Requests up to this many bytes are written to the socket with one call: with
/// `TCP_NODELAY`, each write is its own segment and its own wake-up of the broker, which
/// on loopback costs the sender more than copying a small request once.
pub const COALESCED_REQUEST_BYTES: usize = 64 << 10;

/// What to write for a request: the head (the frame's prefix, with the data section
/// appended when the whole frame is at most [`COALESCED_REQUEST_BYTES`]) and the data
/// parts still to write after it.
pub fn coalesce<'o>(mut prefix: Vec<u8>, data: &'o [&'o [u8]]) -> (Vec<u8>, &'o [&'o [u8]]) {
    let data_bytes: usize = data.iter().map(|part| part.len()).sum();
    if prefix.len() + data_bytes > COALESCED_REQUEST_BYTES {
        return (prefix, data);
    }
    prefix.reserve_exact(data_bytes);
    for part in data {
        prefix.extend_from_slice(part);
    }
    (prefix, &[])
}

/// Frames requests with increasing correlation ids and checks the responses.
#[derive(Debug)]
pub struct Encoder {
    client_id: String,
    next_correlation_id: u32,
}

impl Encoder {
    /// An encoder that names itself `client_id` to the broker.
    pub fn new(client_id: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            next_correlation_id: 0,
        }
    }

    /// The frame's bytes before the data section, and the request's correlation id.
    pub fn encode<O: Operation>(&mut self, operation: &O) -> (u32, Vec<u8>) {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let header = RequestHeader {
            api_key: O::API as u16,
            api_version: 0,
            correlation_id,
        };
        let control = encode_control(&operation.request());
        let data_length = operation.data().iter().map(|part| part.len()).sum();
        let prefix = RequestFrame::encode_prefix(header, &self.client_id, &control, data_length);
        (correlation_id, prefix)
    }
}

/// One connection's protocol state, shared by every transport: correlation ids, the
/// response size limit, and whether an exchange was interrupted half-way (then the
/// stream holds part of an old exchange and the connection must not be reused).
#[derive(Debug)]
pub struct Session {
    encoder: Encoder,
    frame_bytes_max: usize,
    interrupted: bool,
}

impl Session {
    /// A session that names itself `client_id`.
    pub fn new(client_id: impl Into<String>) -> Self {
        Self {
            encoder: Encoder::new(client_id),
            frame_bytes_max: flumen_protocol::wire::RESPONSE_FRAME_BYTES_MAX_DEFAULT,
            interrupted: false,
        }
    }

    /// Accepts responses up to `bytes`.
    pub fn set_frame_bytes_max(&mut self, bytes: usize) {
        self.frame_bytes_max = bytes;
    }

    /// Whether an exchange began and never finished (its future was dropped half-way):
    /// the connection cannot be used again.
    pub fn is_interrupted(&self) -> bool {
        self.interrupted
    }

    /// Starts an exchange: the request frame's bytes before its data section, and the
    /// correlation id. Refused if an earlier exchange never finished.
    pub fn begin<O: Operation>(&mut self, operation: &O) -> Result<(u32, Vec<u8>)> {
        if self.interrupted {
            return Err(ClientError::Protocol(
                "an earlier request on this connection was interrupted; reconnect".into(),
            ));
        }
        if operation.data().iter().any(|part| {
            !part
                .len()
                .is_multiple_of(flumen_protocol::wire::FRAME_ALIGNMENT_BYTES)
        }) {
            return Err(ClientError::Protocol(
                "a data part is not padded to 16 bytes (whole, padded batches only)".into(),
            ));
        }
        self.interrupted = true;
        Ok(self.encoder.encode(operation))
    }

    /// Ends an exchange that gets no response (acks=0).
    pub fn finish_without_response<O: Operation>(&mut self, operation: &O) -> Result<O::Output> {
        self.interrupted = false;
        operation.output_without_response()
    }

    /// The size of the response announced by `length` (its first four bytes included),
    /// checked against the frame limit.
    pub fn response_length(&self, length: [u8; 4]) -> Result<usize> {
        Ok(flumen_protocol::wire::frame_length(
            length,
            self.frame_bytes_max,
        )?)
    }

    /// A zeroed buffer for the response announced by `length` (its first four bytes
    /// included), for readers that can only write into initialised bytes.
    pub fn response_buffer(&self, length: [u8; 4]) -> Result<FrameBuffer> {
        let mut frame = FrameBuffer::zeroed(self.response_length(length)?);
        frame.as_mut_slice()[..4].copy_from_slice(&length);
        Ok(frame)
    }

    /// Ends an exchange with its complete response frame.
    pub fn finish<O: Operation>(
        &mut self,
        operation: O,
        correlation_id: u32,
        frame: FrameBuffer,
    ) -> Result<O::Output> {
        // A response to another request means the stream is out of step with the
        // requests (an answer the caller did not wait for): not usable again.
        let mut out_of_step = false;
        let output = decode_checked(operation, correlation_id, frame, &mut out_of_step);
        self.interrupted = out_of_step;
        output
    }
}

/// Checks a received frame against its request and runs the operation's interpretation.
pub fn decode<O: Operation>(
    operation: O,
    correlation_id: u32,
    frame: FrameBuffer,
) -> Result<O::Output> {
    decode_checked(operation, correlation_id, frame, &mut false)
}

/// [`decode`], setting `out_of_step` if the frame answers another request.
fn decode_checked<O: Operation>(
    operation: O,
    correlation_id: u32,
    frame: FrameBuffer,
    out_of_step: &mut bool,
) -> Result<O::Output> {
    let decoded = ResponseFrame::decode(frame.as_slice())?;
    if decoded.header.correlation_id != correlation_id {
        *out_of_step = true;
        return Err(ClientError::Protocol(format!(
            "expected correlation id {correlation_id}, got {}",
            decoded.header.correlation_id
        )));
    }
    if decoded.header.error_code != ErrorCode::None {
        return Err(ClientError::Broker {
            code: decoded.header.error_code,
            message: "the broker rejected the request".into(),
        });
    }
    let response = decode_owned::<O::Response>(decoded.control)?;
    let data_start = frame.as_slice().len() - decoded.data.len();
    operation.output(response, frame, data_start)
}

pub(crate) fn check(outcome: &Outcome) -> Result<()> {
    match ErrorCode::from_u16(outcome.error_code) {
        ErrorCode::None => Ok(()),
        code => Err(ClientError::Broker {
            code,
            message: outcome.message.clone().unwrap_or_default(),
        }),
    }
}

fn single<T>(items: Vec<T>) -> Result<T> {
    let count = items.len();
    let mut items = items.into_iter();
    match (items.next(), items.next()) {
        (Some(item), None) => Ok(item),
        _ => Err(ClientError::Protocol(format!(
            "expected one result, got {count}"
        ))),
    }
}

fn config_entries(configs: &[(&str, &str)]) -> Vec<ConfigEntry> {
    configs
        .iter()
        .map(|(key, value)| ConfigEntry {
            key: (*key).to_owned(),
            value: (*value).to_owned(),
        })
        .collect()
}

/// Metadata for some topics (`None`: all).
pub struct Metadata<'a>(pub Option<&'a [&'a str]>);

impl Operation for Metadata<'_> {
    type Request = MetadataRequest;
    type Response = MetadataResponse;
    type Output = MetadataResponse;
    const API: ApiKey = ApiKey::Metadata;

    fn request(&self) -> MetadataRequest {
        MetadataRequest {
            topics: self
                .0
                .map(|names| names.iter().map(|name| (*name).to_owned()).collect()),
        }
    }

    fn output(
        self,
        response: MetadataResponse,
        _: FrameBuffer,
        _: usize,
    ) -> Result<MetadataResponse> {
        Ok(response)
    }
}

/// Create a topic.
pub struct CreateTopic<'a> {
    /// Name.
    pub name: &'a str,
    /// Partition count.
    pub partitions: u32,
    /// Configuration overrides.
    pub configs: &'a [(&'a str, &'a str)],
}

impl Operation for CreateTopic<'_> {
    type Request = CreateTopicsRequest;
    type Response = CreateTopicsResponse;
    type Output = ();
    const API: ApiKey = ApiKey::CreateTopics;

    fn request(&self) -> CreateTopicsRequest {
        CreateTopicsRequest {
            topics: vec![NewTopic {
                name: self.name.to_owned(),
                partitions: self.partitions,
                replication_factor: 1,
                configs: config_entries(self.configs),
            }],
            validate_only: false,
        }
    }

    fn output(self, response: CreateTopicsResponse, _: FrameBuffer, _: usize) -> Result<()> {
        check(&single(response.topics)?.outcome)
    }
}

/// Delete a topic.
pub struct DeleteTopic<'a>(pub &'a str);

impl Operation for DeleteTopic<'_> {
    type Request = DeleteTopicsRequest;
    type Response = DeleteTopicsResponse;
    type Output = ();
    const API: ApiKey = ApiKey::DeleteTopics;

    fn request(&self) -> DeleteTopicsRequest {
        DeleteTopicsRequest {
            names: vec![self.0.to_owned()],
        }
    }

    fn output(self, response: DeleteTopicsResponse, _: FrameBuffer, _: usize) -> Result<()> {
        check(&single(response.topics)?.outcome)
    }
}

/// A topic's effective configuration.
pub struct DescribeConfigs<'a>(pub &'a str);

impl Operation for DescribeConfigs<'_> {
    type Request = DescribeConfigsRequest;
    type Response = DescribeConfigsResponse;
    type Output = Vec<ConfigValue>;
    const API: ApiKey = ApiKey::DescribeConfigs;

    fn request(&self) -> DescribeConfigsRequest {
        DescribeConfigsRequest {
            topics: vec![self.0.to_owned()],
        }
    }

    fn output(
        self,
        response: DescribeConfigsResponse,
        _: FrameBuffer,
        _: usize,
    ) -> Result<Vec<ConfigValue>> {
        let topic = single(response.topics)?;
        check(&topic.outcome)?;
        Ok(topic.configs)
    }
}

/// Change a topic's configuration.
pub struct AlterConfigs<'a> {
    /// Topic name.
    pub name: &'a str,
    /// Keys to set; an empty value resets a key.
    pub configs: &'a [(&'a str, &'a str)],
}

impl Operation for AlterConfigs<'_> {
    type Request = AlterConfigsRequest;
    type Response = AlterConfigsResponse;
    type Output = ();
    const API: ApiKey = ApiKey::AlterConfigs;

    fn request(&self) -> AlterConfigsRequest {
        AlterConfigsRequest {
            topics: vec![TopicConfigChanges {
                name: self.name.to_owned(),
                configs: config_entries(self.configs),
            }],
        }
    }

    fn output(self, response: AlterConfigsResponse, _: FrameBuffer, _: usize) -> Result<()> {
        check(&single(response.topics)?.outcome)
    }
}

/// Append whole, padded batches to one partition.
pub struct Produce<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Partition.
    pub partition: u32,
    /// The batches.
    pub batches: &'a [&'a [u8]],
    /// Acknowledgement mode.
    pub acks: Acks,
}

impl Operation for Produce<'_> {
    type Request = ProduceRequest;
    type Response = ProduceResponse;
    type Output = ProducePartitionResult;
    const API: ApiKey = ApiKey::Produce;

    fn request(&self) -> ProduceRequest {
        let length: usize = self.batches.iter().map(|batch| batch.len()).sum();
        ProduceRequest {
            acks: self.acks.wire(),
            timeout_ms: 30_000,
            topics: vec![ProduceTopic {
                name: self.topic.to_owned(),
                partitions: vec![ProducePartition {
                    partition: self.partition,
                    batches: DataRange {
                        offset: 0,
                        length: length as u32,
                    },
                }],
            }],
        }
    }

    fn data(&self) -> &[&[u8]] {
        self.batches
    }

    fn expects_response(&self) -> bool {
        self.acks != Acks::None
    }

    fn output_without_response(&self) -> Result<ProducePartitionResult> {
        Ok(ProducePartitionResult {
            partition: self.partition,
            outcome: Outcome::ok(),
            base_offset: 0,
            last_offset: 0,
            log_start_offset: 0,
        })
    }

    fn output(
        self,
        response: ProduceResponse,
        _: FrameBuffer,
        _: usize,
    ) -> Result<ProducePartitionResult> {
        let result = single(single(response.topics)?.partitions)?;
        // A retried idempotent batch the partition already has: delivered, at the
        // offsets the response carries.
        if ErrorCode::from_u16(result.outcome.error_code) != ErrorCode::DuplicateSequence {
            check(&result.outcome)?;
        }
        Ok(result)
    }
}

/// One partition's part of a [`ProduceBatches`] request.
#[derive(Debug, Clone, Copy)]
pub struct ProducePart<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Partition.
    pub partition: u32,
    /// Its batches: whole, padded, contiguous.
    pub batches: &'a [u8],
}

/// Append batches to several partitions in one request, as the producer does for every
/// partition of a shard that has a batch ready: one frame, one wake-up of the broker,
/// one response. Parts of the same topic should be adjacent (each run of one topic
/// becomes one `ProduceTopic`); a partition may appear once. The output has one result
/// per part, in the parts' order; a partition's error is its result's `outcome`, not an
/// error of the whole call, since the other partitions' batches may have been appended.
pub struct ProduceBatches<'a> {
    parts: &'a [ProducePart<'a>],
    data: Vec<&'a [u8]>,
    acks: Acks,
}

impl<'a> ProduceBatches<'a> {
    /// The request for `parts`.
    pub fn new(parts: &'a [ProducePart<'a>], acks: Acks) -> Self {
        let data = parts.iter().map(|part| part.batches).collect();
        Self { parts, data, acks }
    }

    /// The parts' runs of one topic, in order.
    fn topic_runs(&self) -> impl Iterator<Item = &'a [ProducePart<'a>]> {
        self.parts.chunk_by(|a, b| a.topic == b.topic)
    }
}

impl Operation for ProduceBatches<'_> {
    type Request = ProduceRequest;
    type Response = ProduceResponse;
    type Output = Vec<ProducePartitionResult>;
    const API: ApiKey = ApiKey::Produce;

    fn request(&self) -> ProduceRequest {
        let mut offset = 0u32;
        let topics = self
            .topic_runs()
            .map(|run| ProduceTopic {
                name: run[0].topic.to_owned(),
                partitions: run
                    .iter()
                    .map(|part| {
                        let length = part.batches.len() as u32;
                        let batches = DataRange { offset, length };
                        offset += length;
                        ProducePartition {
                            partition: part.partition,
                            batches,
                        }
                    })
                    .collect(),
            })
            .collect();
        ProduceRequest {
            acks: self.acks.wire(),
            timeout_ms: 30_000,
            topics,
        }
    }

    fn data(&self) -> &[&[u8]] {
        &self.data
    }

    fn expects_response(&self) -> bool {
        self.acks != Acks::None
    }

    fn output_without_response(&self) -> Result<Vec<ProducePartitionResult>> {
        let ok = |part: &ProducePart<'_>| ProducePartitionResult {
            partition: part.partition,
            outcome: Outcome::ok(),
            base_offset: 0,
            last_offset: 0,
            log_start_offset: 0,
        };
        Ok(self.parts.iter().map(ok).collect())
    }

    fn output(
        self,
        response: ProduceResponse,
        _: FrameBuffer,
        _: usize,
    ) -> Result<Vec<ProducePartitionResult>> {
        // The broker answers topics and partitions in request order: check that, so a
        // result can never be credited to the wrong partition.
        let mismatch = || {
            ClientError::Protocol("produce response does not match the request's partitions".into())
        };
        let runs: Vec<_> = self.topic_runs().collect();
        if response.topics.len() != runs.len() {
            return Err(mismatch());
        }
        let mut results = Vec::with_capacity(self.parts.len());
        for (run, topic) in runs.into_iter().zip(response.topics) {
            if topic.name != run[0].topic || topic.partitions.len() != run.len() {
                return Err(mismatch());
            }
            for (part, result) in run.iter().zip(topic.partitions) {
                if result.partition != part.partition {
                    return Err(mismatch());
                }
                results.push(result);
            }
        }
        Ok(results)
    }
}

/// Store a group's positions (`generation_id` -1 and an empty `member_id` outside group
/// membership). The result has one outcome per position, in request order.
pub struct OffsetCommit<'a> {
    /// The group.
    pub group_id: &'a str,
    /// The member's generation, or -1.
    pub generation_id: i32,
    /// The member, or empty.
    pub member_id: &'a str,
    /// `(topic, partition, offset to resume from, metadata)`.
    pub positions: &'a [(&'a str, u32, u64, Option<&'a str>)],
}

impl Operation for OffsetCommit<'_> {
    type Request = OffsetCommitRequest;
    type Response = OffsetCommitResponse;
    type Output = Vec<Result<()>>;
    const API: ApiKey = ApiKey::OffsetCommit;

    fn request(&self) -> OffsetCommitRequest {
        OffsetCommitRequest {
            group_id: self.group_id.to_owned(),
            generation_id: self.generation_id,
            member_id: self.member_id.to_owned(),
            // One topic entry per position keeps the answer in request order.
            topics: self
                .positions
                .iter()
                .map(|(topic, partition, offset, metadata)| OffsetCommitTopic {
                    name: (*topic).to_owned(),
                    partitions: vec![OffsetCommitPartition {
                        partition: *partition,
                        offset: *offset,
                        metadata: metadata.map(str::to_owned),
                    }],
                })
                .collect(),
        }
    }

    fn output(
        self,
        response: OffsetCommitResponse,
        _: FrameBuffer,
        _: usize,
    ) -> Result<Vec<Result<()>>> {
        let outcomes: Vec<Result<()>> = response
            .topics
            .iter()
            .flat_map(|topic| {
                topic
                    .partitions
                    .iter()
                    .map(|partition| check(&partition.outcome))
            })
            .collect();
        if outcomes.len() != self.positions.len() {
            return Err(ClientError::Protocol(format!(
                "{} positions committed, {} answered",
                self.positions.len(),
                outcomes.len()
            )));
        }
        Ok(outcomes)
    }
}

/// A group's committed positions: of the given partitions, or (`None`) of all.
pub struct OffsetFetch<'a> {
    /// The group.
    pub group_id: &'a str,
    /// `(topic, partitions)` to look up, or `None` for every committed one.
    pub topics: Option<&'a [(&'a str, &'a [u32])]>,
}

impl Operation for OffsetFetch<'_> {
    type Request = OffsetFetchRequest;
    type Response = OffsetFetchResponse;
    type Output = Vec<OffsetFetchTopicResult>;
    const API: ApiKey = ApiKey::OffsetFetch;

    fn request(&self) -> OffsetFetchRequest {
        OffsetFetchRequest {
            group_id: self.group_id.to_owned(),
            topics: self.topics.map(|topics| {
                topics
                    .iter()
                    .map(|(name, partitions)| OffsetFetchTopic {
                        name: (*name).to_owned(),
                        partitions: partitions.to_vec(),
                    })
                    .collect()
            }),
        }
    }

    fn output(
        self,
        response: OffsetFetchResponse,
        _: FrameBuffer,
        _: usize,
    ) -> Result<Vec<OffsetFetchTopicResult>> {
        check(&response.outcome)?;
        Ok(response.topics)
    }
}

/// Forget a group and its committed positions.
pub struct DeleteGroup<'a>(pub &'a str);

impl Operation for DeleteGroup<'_> {
    type Request = DeleteGroupsRequest;
    type Response = DeleteGroupsResponse;
    type Output = ();
    const API: ApiKey = ApiKey::DeleteGroups;

    fn request(&self) -> DeleteGroupsRequest {
        DeleteGroupsRequest {
            groups: vec![self.0.to_owned()],
        }
    }

    fn output(self, response: DeleteGroupsResponse, _: FrameBuffer, _: usize) -> Result<()> {
        check(&single(response.groups)?.outcome)
    }
}

/// Join (or rejoin) a group; the answer comes once the rebalance completed.
pub struct JoinGroup<'a> {
    /// The group.
    pub group_id: &'a str,
    /// The member's id, empty for a new member.
    pub member_id: &'a str,
    /// Session timeout.
    pub session_timeout_ms: u32,
    /// Rebalance timeout.
    pub rebalance_timeout_ms: u32,
    /// `consumer` for consumers.
    pub protocol_type: &'a str,
    /// `(protocol name, metadata)`, preferred first.
    pub protocols: &'a [(&'a str, &'a [u8])],
}

impl Operation for JoinGroup<'_> {
    type Request = JoinGroupRequest;
    type Response = JoinGroupResponse;
    type Output = JoinGroupResponse;
    const API: ApiKey = ApiKey::JoinGroup;

    fn request(&self) -> JoinGroupRequest {
        JoinGroupRequest {
            group_id: self.group_id.to_owned(),
            member_id: self.member_id.to_owned(),
            session_timeout_ms: self.session_timeout_ms,
            rebalance_timeout_ms: self.rebalance_timeout_ms,
            protocol_type: self.protocol_type.to_owned(),
            protocols: self
                .protocols
                .iter()
                .map(|(name, metadata)| GroupProtocol {
                    name: (*name).to_owned(),
                    metadata: metadata.to_vec(),
                })
                .collect(),
        }
    }

    fn output(
        self,
        response: JoinGroupResponse,
        _: FrameBuffer,
        _: usize,
    ) -> Result<JoinGroupResponse> {
        check(&response.outcome)?;
        Ok(response)
    }
}

/// Hand in (as leader) or fetch a member's assignment.
pub struct SyncGroup<'a> {
    /// The group.
    pub group_id: &'a str,
    /// The generation JoinGroup returned.
    pub generation_id: i32,
    /// The member.
    pub member_id: &'a str,
    /// The leader's `(member, assignment)` list; empty for the others.
    pub assignments: &'a [(&'a str, &'a [u8])],
}

impl Operation for SyncGroup<'_> {
    type Request = SyncGroupRequest;
    type Response = SyncGroupResponse;
    type Output = Vec<u8>;
    const API: ApiKey = ApiKey::SyncGroup;

    fn request(&self) -> SyncGroupRequest {
        SyncGroupRequest {
            group_id: self.group_id.to_owned(),
            generation_id: self.generation_id,
            member_id: self.member_id.to_owned(),
            assignments: self
                .assignments
                .iter()
                .map(|(member_id, assignment)| MemberAssignment {
                    member_id: (*member_id).to_owned(),
                    assignment: assignment.to_vec(),
                })
                .collect(),
        }
    }

    fn output(self, response: SyncGroupResponse, _: FrameBuffer, _: usize) -> Result<Vec<u8>> {
        check(&response.outcome)?;
        Ok(response.assignment)
    }
}

/// A member's heartbeat (`RebalanceInProgress`: rejoin).
pub struct Heartbeat<'a> {
    /// The group.
    pub group_id: &'a str,
    /// The member's generation.
    pub generation_id: i32,
    /// The member.
    pub member_id: &'a str,
}

impl Operation for Heartbeat<'_> {
    type Request = HeartbeatRequest;
    type Response = GroupOutcome;
    type Output = ();
    const API: ApiKey = ApiKey::Heartbeat;

    fn request(&self) -> HeartbeatRequest {
        HeartbeatRequest {
            group_id: self.group_id.to_owned(),
            generation_id: self.generation_id,
            member_id: self.member_id.to_owned(),
        }
    }

    fn output(self, response: GroupOutcome, _: FrameBuffer, _: usize) -> Result<()> {
        check(&response.outcome)
    }
}

/// Leave a group.
pub struct LeaveGroup<'a> {
    /// The group.
    pub group_id: &'a str,
    /// The member.
    pub member_id: &'a str,
}

impl Operation for LeaveGroup<'_> {
    type Request = LeaveGroupRequest;
    type Response = GroupOutcome;
    type Output = ();
    const API: ApiKey = ApiKey::LeaveGroup;

    fn request(&self) -> LeaveGroupRequest {
        LeaveGroupRequest {
            group_id: self.group_id.to_owned(),
            member_id: self.member_id.to_owned(),
        }
    }

    fn output(self, response: GroupOutcome, _: FrameBuffer, _: usize) -> Result<()> {
        check(&response.outcome)
    }
}

/// A group's state, generation, protocol and members.
pub struct DescribeGroup<'a>(pub &'a str);

impl Operation for DescribeGroup<'_> {
    type Request = DescribeGroupsRequest;
    type Response = DescribeGroupsResponse;
    type Output = DescribedGroup;
    const API: ApiKey = ApiKey::DescribeGroups;

    fn request(&self) -> DescribeGroupsRequest {
        DescribeGroupsRequest {
            groups: vec![self.0.to_owned()],
        }
    }

    fn output(
        self,
        response: DescribeGroupsResponse,
        _: FrameBuffer,
        _: usize,
    ) -> Result<DescribedGroup> {
        let group = single(response.groups)?;
        check(&group.outcome)?;
        Ok(group)
    }
}

/// The groups the broker knows.
pub struct ListGroups;

impl Operation for ListGroups {
    type Request = ListGroupsRequest;
    type Response = ListGroupsResponse;
    type Output = Vec<String>;
    const API: ApiKey = ApiKey::ListGroups;

    fn request(&self) -> ListGroupsRequest {
        ListGroupsRequest {}
    }

    fn output(self, response: ListGroupsResponse, _: FrameBuffer, _: usize) -> Result<Vec<String>> {
        Ok(response.groups)
    }
}

/// A new producer id and epoch for idempotent produce.
pub struct InitProducerId;

impl Operation for InitProducerId {
    type Request = InitProducerIdRequest;
    type Response = InitProducerIdResponse;
    type Output = (i64, i16);
    const API: ApiKey = ApiKey::InitProducerId;

    fn request(&self) -> InitProducerIdRequest {
        InitProducerIdRequest {
            transactional_id: None,
        }
    }

    fn output(
        self,
        response: InitProducerIdResponse,
        _: FrameBuffer,
        _: usize,
    ) -> Result<(i64, i16)> {
        check(&response.outcome)?;
        Ok((response.producer_id, response.producer_epoch))
    }
}

/// Read from a partition, waiting up to `max_wait_ms` for data if there is none.
pub struct Fetch<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Partition.
    pub partition: u32,
    /// First offset wanted.
    pub offset: u64,
    /// Byte limit.
    pub max_bytes: u32,
    /// Longest wait for data.
    pub max_wait_ms: u32,
}

impl Operation for Fetch<'_> {
    type Request = FetchRequest;
    type Response = FetchResponse;
    type Output = Fetched;
    const API: ApiKey = ApiKey::Fetch;

    fn request(&self) -> FetchRequest {
        FetchRequest {
            max_wait_ms: self.max_wait_ms,
            min_bytes: 1,
            max_bytes: self.max_bytes,
            topics: vec![FetchTopic {
                name: self.topic.to_owned(),
                partitions: vec![FetchPartition {
                    partition: self.partition,
                    fetch_offset: self.offset,
                    partition_max_bytes: self.max_bytes,
                }],
            }],
        }
    }

    fn output(
        self,
        response: FetchResponse,
        frame: FrameBuffer,
        data_start: usize,
    ) -> Result<Fetched> {
        let partition = single(single(response.topics)?.partitions)?;
        check(&partition.outcome)?;
        Ok(Fetched {
            partition,
            frame,
            data_start,
        })
    }
}

/// The offset for a timestamp ([`LATEST_TIMESTAMP`], [`EARLIEST_TIMESTAMP`] or a time),
/// with the partition's bounds and size.
pub struct ListOffsets<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Partition.
    pub partition: u32,
    /// Milliseconds since the epoch, or a special value.
    pub timestamp: i64,
}

impl Operation for ListOffsets<'_> {
    type Request = ListOffsetsRequest;
    type Response = ListOffsetsResponse;
    type Output = ListOffsetsPartitionResult;
    const API: ApiKey = ApiKey::ListOffsets;

    fn request(&self) -> ListOffsetsRequest {
        ListOffsetsRequest {
            topics: vec![ListOffsetsTopic {
                name: self.topic.to_owned(),
                partitions: vec![ListOffsetsPartition {
                    partition: self.partition,
                    timestamp: self.timestamp,
                }],
            }],
        }
    }

    fn output(
        self,
        response: ListOffsetsResponse,
        _: FrameBuffer,
        _: usize,
    ) -> Result<ListOffsetsPartitionResult> {
        let result = single(single(response.topics)?.partitions)?;
        check(&result.outcome)?;
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(partition: u32, base_offset: u64) -> ProducePartitionResult {
        ProducePartitionResult {
            partition,
            outcome: Outcome::ok(),
            base_offset,
            last_offset: base_offset,
            log_start_offset: 0,
        }
    }

    fn topic(name: &str, results: Vec<ProducePartitionResult>) -> ProduceTopicResult {
        ProduceTopicResult {
            name: name.to_owned(),
            partitions: results,
        }
    }

    #[test]
    fn a_multi_partition_produce_names_each_partitions_range_of_the_data() {
        let (a0, a3, b1) = ([1u8; 16], [2u8; 32], [3u8; 48]);
        let parts = [
            ProducePart {
                topic: "a",
                partition: 0,
                batches: &a0,
            },
            ProducePart {
                topic: "a",
                partition: 3,
                batches: &a3,
            },
            ProducePart {
                topic: "b",
                partition: 1,
                batches: &b1,
            },
        ];
        let operation = ProduceBatches::new(&parts, Acks::All);
        let request = operation.request();
        assert_eq!(request.acks, Acks::All.wire());
        // (topic, [(partition, offset, length)]) per `ProduceTopic`.
        type Layout = Vec<(String, Vec<(u32, u32, u32)>)>;
        let layout: Layout = request
            .topics
            .iter()
            .map(|topic| {
                let ranges = topic
                    .partitions
                    .iter()
                    .map(|p| (p.partition, p.batches.offset, p.batches.length));
                (topic.name.clone(), ranges.collect())
            })
            .collect();
        assert_eq!(
            layout,
            vec![
                ("a".to_owned(), vec![(0, 0, 16), (3, 16, 32)]),
                ("b".to_owned(), vec![(1, 48, 48)]),
            ]
        );
        let data: Vec<u8> = operation.data().concat();
        assert_eq!(data, [&a0[..], &a3[..], &b1[..]].concat());
    }

    #[test]
    fn a_multi_partition_response_is_matched_to_the_parts_or_refused() {
        let batch = [0u8; 16];
        let parts = [
            ProducePart {
                topic: "a",
                partition: 0,
                batches: &batch,
            },
            ProducePart {
                topic: "a",
                partition: 3,
                batches: &batch,
            },
            ProducePart {
                topic: "b",
                partition: 1,
                batches: &batch,
            },
        ];
        let output = |topics| {
            let response = ProduceResponse { topics };
            ProduceBatches::new(&parts, Acks::Leader).output(response, FrameBuffer::zeroed(16), 0)
        };
        let answered = output(vec![
            topic("a", vec![result(0, 10), result(3, 20)]),
            topic("b", vec![result(1, 30)]),
        ])
        .unwrap();
        let offsets: Vec<_> = answered
            .iter()
            .map(|r| (r.partition, r.base_offset))
            .collect();
        assert_eq!(offsets, [(0, 10), (3, 20), (1, 30)]);

        let swapped = vec![
            topic("a", vec![result(3, 20), result(0, 10)]),
            topic("b", vec![result(1, 30)]),
        ];
        let short = vec![topic("a", vec![result(0, 10), result(3, 20)])];
        let renamed = vec![
            topic("a", vec![result(0, 10), result(3, 20)]),
            topic("c", vec![result(1, 30)]),
        ];
        for wrong in [swapped, short, renamed] {
            assert!(matches!(output(wrong), Err(ClientError::Protocol(_))));
        }
        // acks=0: no response; every part counts as sent.
        let unanswered = ProduceBatches::new(&parts, Acks::None);
        assert!(!unanswered.expects_response());
        assert_eq!(unanswered.output_without_response().unwrap().len(), 3);
    }

    #[test]
    fn small_requests_are_written_in_one_piece_and_large_ones_in_parts() {
        let (first, second) = (vec![1u8; 100], vec![2u8; 200]);
        let data = [&first[..], &second[..]];
        let (head, rest) = coalesce(vec![9u8; 10], &data);
        assert_eq!(head, [&[9u8; 10][..], &first, &second].concat());
        assert!(rest.is_empty());

        let large = vec![3u8; COALESCED_REQUEST_BYTES];
        let data = [&large[..]];
        let (head, rest) = coalesce(vec![9u8; 10], &data);
        assert_eq!(head, vec![9u8; 10]);
        assert_eq!(rest.len(), 1);
    }

    /// A data part that is not whole padded batches is an error, not a panic, and the
    /// session stays usable.
    #[test]
    fn unpadded_data_is_refused_before_anything_is_sent() {
        let odd = [1u8; 8];
        let parts = [ProducePart {
            topic: "a",
            partition: 0,
            batches: &odd,
        }];
        let mut session = Session::new("test");
        let refused = session.begin(&ProduceBatches::new(&parts, Acks::All));
        assert!(
            matches!(refused, Err(ClientError::Protocol(_))),
            "{refused:?}"
        );
        assert!(!session.is_interrupted());
        let list = ListOffsets {
            topic: "a",
            partition: 0,
            timestamp: 0,
        };
        assert!(session.begin(&list).is_ok());
    }

    /// A response to another request (an answer nobody waited for) leaves the session
    /// unusable: every later exchange would read the previous one's answer.
    #[test]
    fn a_response_to_another_request_ends_the_session() {
        let list = ListOffsets {
            topic: "a",
            partition: 0,
            timestamp: 0,
        };
        let mut session = Session::new("test");
        let (correlation_id, _) = session.begin(&list).unwrap();
        let header = flumen_protocol::wire::ResponseHeader {
            correlation_id: correlation_id.wrapping_sub(1),
            error_code: ErrorCode::MalformedRequest,
        };
        let bytes = flumen_protocol::wire::ResponseFrame::encode(header, &[], &[]);
        let mut frame = FrameBuffer::zeroed(bytes.len());
        frame.as_mut_slice().copy_from_slice(&bytes);
        assert!(session.finish(list, correlation_id, frame).is_err());
        assert!(session.is_interrupted());
    }
}
