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
            frame_bytes_max: flumen_protocol::wire::FRAME_BYTES_MAX_DEFAULT,
            interrupted: false,
        }
    }

    /// Accepts responses up to `bytes`.
    pub fn set_frame_bytes_max(&mut self, bytes: usize) {
        self.frame_bytes_max = bytes;
    }

    /// Starts an exchange: the request frame's bytes before its data section, and the
    /// correlation id. Refused if an earlier exchange never finished.
    pub fn begin<O: Operation>(&mut self, operation: &O) -> Result<(u32, Vec<u8>)> {
        if self.interrupted {
            return Err(ClientError::Protocol(
                "an earlier request on this connection was interrupted; reconnect".into(),
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

    /// A buffer for the response announced by `length` (its first four bytes included).
    pub fn response_buffer(&self, length: [u8; 4]) -> Result<FrameBuffer> {
        let mut frame = FrameBuffer::zeroed(flumen_protocol::wire::frame_length(
            length,
            self.frame_bytes_max,
        )?);
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
        self.interrupted = false;
        decode(operation, correlation_id, frame)
    }
}

/// Checks a received frame against its request and runs the operation's interpretation.
pub fn decode<O: Operation>(
    operation: O,
    correlation_id: u32,
    frame: FrameBuffer,
) -> Result<O::Output> {
    let decoded = ResponseFrame::decode(frame.as_slice())?;
    if decoded.header.correlation_id != correlation_id {
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
