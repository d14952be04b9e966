use super::messages::*;
use super::*;
use proptest::prelude::*;
use rkyv::util::AlignedVec;

fn aligned(bytes: &[u8]) -> AlignedVec<16> {
    let mut buffer = AlignedVec::<16>::new();
    buffer.extend_from_slice(bytes);
    buffer
}

fn owned<T>(archived: &T::Archived) -> T
where
    T: rkyv::Archive,
    T::Archived: rkyv::Deserialize<T, rkyv::rancor::Strategy<rkyv::de::Pool, rkyv::rancor::Error>>,
{
    rkyv::deserialize::<T, rkyv::rancor::Error>(archived).unwrap()
}

fn produce_request() -> ProduceRequest {
    ProduceRequest {
        acks: -1,
        timeout_ms: 30_000,
        topics: vec![ProduceTopic {
            name: "orders".into(),
            partitions: vec![
                ProducePartition {
                    partition: 0,
                    batches: DataRange {
                        offset: 0,
                        length: 32,
                    },
                },
                ProducePartition {
                    partition: 3,
                    batches: DataRange {
                        offset: 32,
                        length: 16,
                    },
                },
            ],
        }],
    }
}

#[test]
fn request_frames_round_trip_with_aligned_sections() {
    let control = encode_control(&produce_request());
    let data = [&[7u8; 32][..], &[9u8; 16][..]];
    let header = RequestHeader {
        api_key: ApiKey::Produce as u16,
        api_version: 0,
        correlation_id: 42,
    };
    let frame = aligned(&RequestFrame::encode(header, "cli-1", &control, &data));
    assert_eq!(frame.len() % FRAME_ALIGNMENT_BYTES, 0);
    assert_eq!(
        frame_length(frame[..4].try_into().unwrap(), 1 << 20).unwrap(),
        frame.len()
    );
    let decoded = RequestFrame::decode(&frame).unwrap();
    assert_eq!(decoded.header, header);
    assert_eq!(decoded.client_id, "cli-1");
    assert_eq!(decoded.api(), Some(ApiKey::Produce));
    assert_eq!((decoded.control.as_ptr() as usize) % 16, 0);
    assert_eq!((decoded.data.as_ptr() as usize) % 16, 0);
    let request = decode_control::<ProduceRequest>(decoded.control).unwrap();
    assert_eq!(owned::<ProduceRequest>(request), produce_request());
    let second = &request.topics[0].partitions[1].batches;
    assert_eq!(second.slice(decoded.data), Some(&[9u8; 16][..]));
}

#[test]
fn response_frames_round_trip() {
    let response = FetchResponse {
        topics: vec![FetchTopicResult {
            name: "t".into(),
            partitions: vec![FetchPartitionResult {
                partition: 1,
                outcome: Outcome::ok(),
                high_watermark: 10,
                log_start_offset: 0,
                batches: DataRange {
                    offset: 0,
                    length: 48,
                },
            }],
        }],
    };
    let control = encode_control(&response);
    let header = ResponseHeader {
        correlation_id: 7,
        error_code: ErrorCode::None,
    };
    let frame = aligned(&ResponseFrame::encode(header, &control, &[&[1u8; 48]]));
    let decoded = ResponseFrame::decode(&frame).unwrap();
    assert_eq!(decoded.header, header);
    assert_eq!(
        owned::<FetchResponse>(decode_control::<FetchResponse>(decoded.control).unwrap()),
        response
    );
    assert_eq!(decoded.data, &[1u8; 48][..]);
}

#[test]
fn every_message_type_round_trips() {
    fn check<T>(value: T)
    where
        T: std::fmt::Debug
            + PartialEq
            + rkyv::Archive
            + for<'a> rkyv::Serialize<
                rkyv::api::high::HighSerializer<
                    AlignedVec,
                    rkyv::ser::allocator::ArenaHandle<'a>,
                    rkyv::rancor::Error,
                >,
            >,
        T::Archived: for<'a> rkyv::bytecheck::CheckBytes<
                rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>,
            > + rkyv::Deserialize<T, rkyv::rancor::Strategy<rkyv::de::Pool, rkyv::rancor::Error>>,
    {
        let bytes = encode_control(&value);
        assert_eq!(owned::<T>(decode_control::<T>(&bytes).unwrap()), value);
    }
    check(ApiVersionsRequest {});
    check(ApiVersionsResponse {
        apis: vec![ApiVersionRange {
            api_key: 6,
            min_version: 0,
            max_version: 0,
        }],
        broker_version: "0.1.0".into(),
    });
    check(MetadataRequest {
        topics: Some(vec!["a".into()]),
    });
    check(MetadataResponse {
        brokers: vec![BrokerMetadata {
            broker_id: 0,
            host: "127.0.0.1".into(),
            port: 9292,
            shards: vec![ShardEndpoint {
                shard: 1,
                port: 9294,
            }],
        }],
        topics: vec![TopicMetadata {
            name: "a".into(),
            outcome: Outcome::ok(),
            internal: false,
            partitions: vec![PartitionMetadata {
                partition: 0,
                outcome: Outcome::error(ErrorCode::UnknownPartition, "x"),
                leader_broker: 0,
                leader_shard: 1,
                leader_epoch: 0,
                replicas: vec![0],
                in_sync_replicas: vec![0],
            }],
        }],
    });
    check(CreateTopicsRequest {
        topics: vec![NewTopic {
            name: "a".into(),
            partitions: 4,
            replication_factor: 1,
            configs: vec![ConfigEntry {
                key: "retention.ms".into(),
                value: "1000".into(),
            }],
        }],
        validate_only: false,
    });
    check(DeleteTopicsRequest {
        names: vec!["a".into()],
    });
    check(DescribeConfigsResponse {
        topics: vec![TopicConfigs {
            name: "a".into(),
            outcome: Outcome::ok(),
            configs: vec![ConfigValue {
                key: "k".into(),
                value: "v".into(),
                is_default: true,
            }],
        }],
    });
    check(AlterConfigsRequest {
        topics: vec![TopicConfigChanges {
            name: "a".into(),
            configs: vec![],
        }],
    });
    check(produce_request());
    check(ListOffsetsRequest {
        topics: vec![ListOffsetsTopic {
            name: "a".into(),
            partitions: vec![ListOffsetsPartition {
                partition: 0,
                timestamp: EARLIEST_TIMESTAMP,
            }],
        }],
    });
    check(InitProducerIdRequest {
        transactional_id: None,
    });
    check(InitProducerIdResponse {
        outcome: Outcome::ok(),
        producer_id: 7,
        producer_epoch: 0,
    });
}

#[test]
fn bad_frames_are_rejected() {
    let control = encode_control(&ApiVersionsRequest {});
    let header = RequestHeader {
        api_key: 0,
        api_version: 0,
        correlation_id: 1,
    };
    let good = RequestFrame::encode(header, "c", &control, &[]);
    assert!(matches!(
        frame_length(good[..4].try_into().unwrap(), 16),
        Err(FrameError::TooLarge { .. })
    ));
    assert!(frame_length(3u32.to_le_bytes(), 1 << 20).is_err());
    assert!(
        frame_length(37u32.to_le_bytes(), 1 << 20).is_err(),
        "not a multiple of 16"
    );

    let mut reserved = aligned(&good);
    reserved[26] = 1;
    assert!(matches!(
        RequestFrame::decode(&reserved),
        Err(FrameError::Malformed(_))
    ));

    let truncated = aligned(&good[..good.len() - 16]);
    assert!(RequestFrame::decode(&truncated).is_err());

    let mut bad_utf8 = aligned(&good);
    bad_utf8[32] = 0xff;
    assert!(RequestFrame::decode(&bad_utf8).is_err());

    let mut lying_sections = aligned(&good);
    lying_sections[16..20].copy_from_slice(&1000u32.to_le_bytes());
    assert!(RequestFrame::decode(&lying_sections).is_err());

    let unaligned = [0u8; 64];
    let offset = if (unaligned.as_ptr() as usize).is_multiple_of(16) {
        1
    } else {
        0
    };
    assert_eq!(
        decode_control::<ApiVersionsRequest>(&unaligned[offset..offset + 16]).unwrap_err(),
        FrameError::Misaligned
    );
    let garbage = aligned(&[0xAB; 64]);
    assert!(decode_control::<ProduceRequest>(&garbage).is_err());
}

#[test]
fn data_ranges_outside_the_data_are_refused() {
    let data = [0u8; 64];
    let range = |offset, length| {
        let bytes = encode_control(&DataRange { offset, length });
        let archived = decode_control::<DataRange>(&bytes).unwrap();
        archived.slice(&data).map(<[u8]>::len)
    };
    assert_eq!(range(16, 32), Some(32));
    assert_eq!(range(48, 32), None);
    assert_eq!(range(8, 16), None, "unaligned");
    assert_eq!(range(u32::MAX - 15, 32), None, "overflow");
}

#[test]
fn api_keys_and_error_codes_are_stable() {
    assert_eq!(ApiKey::from_u16(6), Some(ApiKey::Produce));
    assert_eq!(ApiKey::from_u16(99), None);
    for (number, api) in ApiKey::ALL.iter().enumerate() {
        assert_eq!(*api as u16 as usize, number);
    }
    assert_eq!(ErrorCode::UnknownTopic.as_u16(), 6);
    assert_eq!(ErrorCode::DiskFull.as_u16(), 18);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn request_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut frame = aligned(&bytes);
        if frame.len() >= 4 {
            let length = (frame.len() - 4) as u32;
            frame[..4].copy_from_slice(&length.to_le_bytes());
        }
        if let Ok(request) = RequestFrame::decode(&frame) {
            let _ = decode_control::<ProduceRequest>(request.control);
            let _ = decode_control::<FetchRequest>(request.control);
            let _ = decode_control::<MetadataRequest>(request.control);
        }
        let _ = ResponseFrame::decode(&frame);
    }

    #[test]
    fn control_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let control = aligned(&bytes);
        let _ = decode_control::<ProduceRequest>(&control);
        let _ = decode_control::<FetchRequest>(&control);
        let _ = decode_control::<CreateTopicsRequest>(&control);
        let _ = decode_control::<ListOffsetsRequest>(&control);
        let _ = decode_control::<InitProducerIdRequest>(&control);
    }
}
