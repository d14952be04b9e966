//! # flumen-client
//!
//! A client for Flumen's native protocol: topic administration, produce and fetch. It
//! depends only on `flumen-protocol` and needs no io_uring, so it runs wherever a
//! microservice runs.
//!
//! This first client is blocking ([`Client`] over `std::net`); it is what the `flumen`
//! command-line tool uses. Batching producers, consumers and async transports build on
//! the same protocol types.
//!
//! ```no_run
//! use flumen_client::{Acks, Client};
//! use flumen_protocol::record::BatchBuilder;
//!
//! let mut client = Client::connect("127.0.0.1:9292")?;
//! client.create_topic("orders", 4, &[])?;
//! let mut batch = BatchBuilder::new(0);
//! batch.push(1_700_000_000_000, Some(b"key"), Some(b"value"), &[]);
//! let written = client.produce("orders", 0, &[batch.build()?.as_bytes()], Acks::All)?;
//! let fetched = client.fetch("orders", 0, written.base_offset, 1 << 20, 0)?;
//! for batch in fetched.batches()? {
//!     for record in batch.records() {
//!         println!("{} {:?}", record.offset(), record.value());
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod partitioner;

pub use partitioner::{murmur2, partition_for_key};

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use flumen_protocol::record::{BatchError, BatchHeader, BatchView};
use flumen_protocol::wire::messages::*;
use flumen_protocol::wire::{
    decode_owned, encode_control, frame_length, ApiKey, ControlMessage, ErrorCode, FrameBuffer,
    FrameError, RequestFrame, RequestHeader, ResponseFrame, FRAME_BYTES_MAX_DEFAULT,
};

/// How many replicas must have a produce before the broker answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// No answer at all: fire and forget.
    None,
    /// Answered once the leader appended (not necessarily on disk).
    Leader,
    /// Answered once every in-sync replica has it on disk.
    All,
}

impl Acks {
    fn wire(self) -> i8 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
}

/// What can go wrong talking to a broker.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection failed.
    #[error("connection to the broker failed: {0}")]
    Io(#[from] std::io::Error),
    /// The broker sent something that is not a valid frame.
    #[error("invalid response from the broker: {0}")]
    Frame(#[from] FrameError),
    /// The broker answered with an error.
    #[error("{code:?}: {message}")]
    Broker {
        /// The error code.
        code: ErrorCode,
        /// The broker's explanation.
        message: String,
    },
    /// A batch failed validation.
    #[error("invalid batch: {0}")]
    Batch(#[from] BatchError),
    /// The response does not match the request.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// Shorthand for client results.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

fn check(outcome: &Outcome) -> Result<()> {
    match ErrorCode::from_u16(outcome.error_code) {
        ErrorCode::None => Ok(()),
        code => Err(ClientError::Broker {
            code,
            message: outcome.message.clone().unwrap_or_default(),
        }),
    }
}

/// Batches returned by a fetch, with the partition's watermarks.
#[derive(Debug)]
pub struct Fetched {
    /// The partition's result.
    pub partition: FetchPartitionResult,
    frame: FrameBuffer,
    data_start: usize,
}

impl Fetched {
    /// The fetched batches, validated (header, CRC, records) and read in place.
    pub fn batches(&self) -> Result<Vec<BatchView<'_>>> {
        let data = &self.frame.as_slice()[self.data_start..];
        let range = &self.partition.batches;
        let start = range.offset as usize;
        let end = start + range.length as usize;
        let mut bytes = data
            .get(start..end)
            .ok_or_else(|| ClientError::Protocol("batch range outside the data".into()))?;
        let mut batches = Vec::new();
        while !bytes.is_empty() {
            let length = BatchHeader::decode(bytes)?.padded_length().min(bytes.len());
            batches.push(BatchView::validate(&bytes[..length])?);
            bytes = &bytes[length..];
        }
        Ok(batches)
    }
}

/// A blocking connection to one broker. Requests are sent one at a time.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    client_id: String,
    next_correlation_id: u32,
    frame_bytes_max: usize,
}

impl Client {
    /// Connects to `address` (a broker's shared port or a shard's own port).
    pub fn connect(address: impl ToSocketAddrs) -> Result<Self> {
        let stream = TcpStream::connect(address)?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            client_id: format!("flumen-client-{}", std::process::id()),
            next_correlation_id: 0,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
        })
    }

    /// Fails reads that take longer than `timeout` (none by default).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        self.stream.set_read_timeout(timeout)?;
        Ok(())
    }

    fn send<Q: ControlMessage>(&mut self, api: ApiKey, request: &Q, data: &[&[u8]]) -> Result<u32> {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let header = RequestHeader {
            api_key: api as u16,
            api_version: 0,
            correlation_id,
        };
        let control = encode_control(request);
        let data_length: usize = data.iter().map(|part| part.len()).sum();
        let prefix = RequestFrame::encode_prefix(header, &self.client_id, &control, data_length);
        self.stream.write_all(&prefix)?;
        for part in data {
            self.stream.write_all(part)?;
        }
        self.stream.flush()?;
        Ok(correlation_id)
    }

    fn receive(&mut self, correlation_id: u32) -> Result<FrameBuffer> {
        let mut prefix = [0u8; 4];
        self.stream.read_exact(&mut prefix)?;
        let length = frame_length(prefix, self.frame_bytes_max)?;
        let mut frame = FrameBuffer::zeroed(length);
        frame.as_mut_slice()[..4].copy_from_slice(&prefix);
        self.stream.read_exact(&mut frame.as_mut_slice()[4..])?;
        let header = ResponseFrame::decode(frame.as_slice())?.header;
        if header.correlation_id != correlation_id {
            return Err(ClientError::Protocol(format!(
                "expected correlation id {correlation_id}, got {}",
                header.correlation_id
            )));
        }
        if header.error_code != ErrorCode::None {
            return Err(ClientError::Broker {
                code: header.error_code,
                message: "the broker rejected the request".into(),
            });
        }
        Ok(frame)
    }

    /// Sends one request and decodes its response; also returns the frame and where its
    /// data section starts.
    pub fn call<Q, R>(
        &mut self,
        api: ApiKey,
        request: &Q,
        data: &[&[u8]],
    ) -> Result<(R, FrameBuffer, usize)>
    where
        Q: ControlMessage,
        R: ControlMessage,
        R::Archived: flumen_protocol::wire::Deserialize<R>,
    {
        let correlation_id = self.send(api, request, data)?;
        let frame = self.receive(correlation_id)?;
        let decoded = ResponseFrame::decode(frame.as_slice())?;
        let response = decode_owned::<R>(decoded.control)?;
        let data_start = frame.as_slice().len() - decoded.data.len();
        Ok((response, frame, data_start))
    }

    fn request<Q, R>(&mut self, api: ApiKey, request: &Q) -> Result<R>
    where
        Q: ControlMessage,
        R: ControlMessage,
        R::Archived: flumen_protocol::wire::Deserialize<R>,
    {
        self.call(api, request, &[])
            .map(|(response, _, _)| response)
    }

    /// Brokers, shards and the given topics (all topics for `None`).
    pub fn metadata(&mut self, topics: Option<&[&str]>) -> Result<MetadataResponse> {
        let request = MetadataRequest {
            topics: topics.map(|names| names.iter().map(|name| (*name).to_owned()).collect()),
        };
        self.request(ApiKey::Metadata, &request)
    }

    /// Creates a topic with `partitions` partitions and configuration overrides.
    pub fn create_topic(
        &mut self,
        name: &str,
        partitions: u32,
        configs: &[(&str, &str)],
    ) -> Result<()> {
        let request = CreateTopicsRequest {
            topics: vec![NewTopic {
                name: name.to_owned(),
                partitions,
                replication_factor: 1,
                configs: config_entries(configs),
            }],
            validate_only: false,
        };
        let response: CreateTopicsResponse = self.request(ApiKey::CreateTopics, &request)?;
        single(&response.topics).and_then(|topic| check(&topic.outcome))
    }

    /// Deletes a topic and all its data.
    pub fn delete_topic(&mut self, name: &str) -> Result<()> {
        let request = DeleteTopicsRequest {
            names: vec![name.to_owned()],
        };
        let response: DeleteTopicsResponse = self.request(ApiKey::DeleteTopics, &request)?;
        single(&response.topics).and_then(|topic| check(&topic.outcome))
    }

    /// A topic's effective configuration.
    pub fn describe_configs(&mut self, name: &str) -> Result<Vec<ConfigValue>> {
        let request = DescribeConfigsRequest {
            topics: vec![name.to_owned()],
        };
        let response: DescribeConfigsResponse = self.request(ApiKey::DescribeConfigs, &request)?;
        let topic = single(&response.topics)?;
        check(&topic.outcome)?;
        Ok(topic.configs.clone())
    }

    /// Sets configuration keys of a topic (an empty value resets a key to its default).
    pub fn alter_configs(&mut self, name: &str, configs: &[(&str, &str)]) -> Result<()> {
        let request = AlterConfigsRequest {
            topics: vec![TopicConfigChanges {
                name: name.to_owned(),
                configs: config_entries(configs),
            }],
        };
        let response: AlterConfigsResponse = self.request(ApiKey::AlterConfigs, &request)?;
        single(&response.topics).and_then(|topic| check(&topic.outcome))
    }

    /// Appends whole, padded batches to a partition. With [`Acks::None`] nothing comes
    /// back and the result's offsets are zero.
    pub fn produce(
        &mut self,
        topic: &str,
        partition: u32,
        batches: &[&[u8]],
        acks: Acks,
    ) -> Result<ProducePartitionResult> {
        let length: usize = batches.iter().map(|batch| batch.len()).sum();
        let request = ProduceRequest {
            acks: acks.wire(),
            timeout_ms: 30_000,
            topics: vec![ProduceTopic {
                name: topic.to_owned(),
                partitions: vec![ProducePartition {
                    partition,
                    batches: flumen_protocol::wire::DataRange {
                        offset: 0,
                        length: length as u32,
                    },
                }],
            }],
        };
        if acks == Acks::None {
            self.send(ApiKey::Produce, &request, batches)?;
            return Ok(ProducePartitionResult {
                partition,
                outcome: Outcome::ok(),
                base_offset: 0,
                last_offset: 0,
                log_start_offset: 0,
            });
        }
        let (response, _, _): (ProduceResponse, _, _) =
            self.call(ApiKey::Produce, &request, batches)?;
        let topic = single(&response.topics)?;
        let result = single(&topic.partitions)?.clone();
        check(&result.outcome)?;
        Ok(result)
    }

    /// Reads from `offset`, waiting up to `max_wait_ms` for data if there is none.
    pub fn fetch(
        &mut self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> Result<Fetched> {
        let request = FetchRequest {
            max_wait_ms,
            min_bytes: 1,
            max_bytes,
            topics: vec![FetchTopic {
                name: topic.to_owned(),
                partitions: vec![FetchPartition {
                    partition,
                    fetch_offset: offset,
                    partition_max_bytes: max_bytes,
                }],
            }],
        };
        let (response, frame, data_start): (FetchResponse, _, _) =
            self.call(ApiKey::Fetch, &request, &[])?;
        let topic = single(&response.topics)?;
        let result = single(&topic.partitions)?.clone();
        check(&result.outcome)?;
        Ok(Fetched {
            partition: result,
            frame,
            data_start,
        })
    }

    /// The offset for `timestamp` (or [`LATEST_TIMESTAMP`] / [`EARLIEST_TIMESTAMP`]), with
    /// the partition's bounds and size.
    pub fn list_offsets(
        &mut self,
        topic: &str,
        partition: u32,
        timestamp: i64,
    ) -> Result<ListOffsetsPartitionResult> {
        let request = ListOffsetsRequest {
            topics: vec![ListOffsetsTopic {
                name: topic.to_owned(),
                partitions: vec![ListOffsetsPartition {
                    partition,
                    timestamp,
                }],
            }],
        };
        let response: ListOffsetsResponse = self.request(ApiKey::ListOffsets, &request)?;
        let topic = single(&response.topics)?;
        let result = single(&topic.partitions)?.clone();
        check(&result.outcome)?;
        Ok(result)
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

fn single<T>(items: &[T]) -> Result<&T> {
    match items {
        [item] => Ok(item),
        _ => Err(ClientError::Protocol(format!(
            "expected one result, got {}",
            items.len()
        ))),
    }
}
