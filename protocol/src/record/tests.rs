use super::*;
use proptest::prelude::*;

fn sample(records: usize) -> BuiltBatch {
    let mut builder = BatchBuilder::new(1_000);
    for index in 0..records {
        let key = format!("key-{index}");
        let value = vec![index as u8; index * 3];
        builder.push(
            1_000 + index as i64,
            Some(key.as_bytes()),
            Some(&value),
            &[("h", b"v")],
        );
    }
    builder.build().unwrap()
}

fn recrc(bytes: &mut [u8]) {
    // Read the length directly: the header may be deliberately impossible.
    let length = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let crc = crc32fast::hash(&bytes[CRC_COVERED_FROM..length.min(bytes.len())]);
    bytes[20..24].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn round_trip_reads_every_field_in_place() {
    let batch = sample(5);
    assert_eq!(batch.len() % BATCH_ALIGNMENT_BYTES, 0);
    let view = BatchView::validate(batch.as_bytes()).unwrap();
    assert_eq!(view.header().record_count, 5);
    assert_eq!(view.header().max_timestamp, 1_004);
    let records: Vec<_> = view.records().collect();
    assert_eq!(records.len(), 5);
    for (index, record) in records.iter().enumerate() {
        assert_eq!(record.offset(), index as u64);
        assert_eq!(record.timestamp_ms(), 1_000 + index as i64);
        assert_eq!(record.key(), Some(format!("key-{index}").as_bytes()));
        assert_eq!(record.value(), Some(&vec![index as u8; index * 3][..]));
        assert_eq!(record.headers().collect::<Vec<_>>(), vec![("h", &b"v"[..])]);
        // Zero-copy: the value lives inside the batch buffer.
        let range = batch.as_bytes().as_ptr_range();
        assert!(range.contains(&record.key().unwrap().as_ptr()));
    }
}

#[test]
fn patching_broker_fields_keeps_the_crc_valid() {
    let mut batch = sample(3);
    patch_base_offset(batch.as_bytes_mut(), 41);
    patch_partition_leader_epoch(batch.as_bytes_mut(), 7);
    let view = BatchView::validate(batch.as_bytes()).unwrap();
    assert_eq!(view.header().base_offset, 41);
    assert_eq!(view.header().partition_leader_epoch, 7);
    assert_eq!(view.header().last_offset(), 43);
    assert_eq!(view.records().last().unwrap().offset(), 43);
}

#[test]
fn restamping_the_producer_fields_recomputes_the_crc() {
    let mut batch = sample(3);
    batch.set_producer(12, 3, 40);
    let view = BatchView::validate(batch.as_bytes()).unwrap();
    let header = view.header();
    assert_eq!(
        (
            header.producer_id,
            header.producer_epoch,
            header.base_sequence
        ),
        (12, 3, 40)
    );
    assert_eq!(view.records().count(), 3);
}

#[test]
fn every_flipped_bit_in_the_covered_range_is_caught() {
    let batch = sample(2);
    let length = BatchHeader::decode(batch.as_bytes()).unwrap().batch_length as usize;
    for byte in 16..batch.len() {
        let mut damaged = batch.clone();
        damaged.as_bytes_mut()[byte] ^= 0x10;
        let result = BatchView::validate(damaged.as_bytes());
        assert!(
            result.is_err(),
            "flip at byte {byte} of {length} went unnoticed"
        );
    }
}

#[test]
fn crc_mismatch_is_reported_as_such() {
    let mut batch = sample(2);
    let last = batch.len() - 20;
    batch.as_bytes_mut()[last] ^= 1;
    assert!(matches!(
        BatchView::validate(batch.as_bytes()),
        Err(BatchError::CrcMismatch { .. })
    ));
}

#[test]
fn unknown_body_format_and_codec_are_rejected_not_misread() {
    for (attributes, expected) in [
        (
            Attributes::new(
                Compression::None,
                TimestampType::CreateTime,
                BodyFormat::KafkaV2,
            )
            .0,
            BatchError::UnsupportedBodyFormat(1),
        ),
        (0x0500, BatchError::UnsupportedBodyFormat(5)),
        (
            Compression::Zstd as u16,
            BatchError::UnsupportedCompression(4),
        ),
        (0x0007, BatchError::UnsupportedCompression(7)),
    ] {
        let mut batch = sample(2);
        batch.as_bytes_mut()[24..26].copy_from_slice(&attributes.to_le_bytes());
        recrc(batch.as_bytes_mut());
        assert_eq!(BatchView::validate(batch.as_bytes()).unwrap_err(), expected);
    }
}

#[test]
fn impossible_headers_are_rejected() {
    let cases: Vec<(usize, Vec<u8>)> = vec![
        (16, vec![9]),                              // magic
        (17, vec![1]),                              // reserved
        (8, 10u32.to_le_bytes().to_vec()),          // shorter than the header
        (8, u32::MAX.to_le_bytes().to_vec()),       // beyond the format limit
        (60, 0u32.to_le_bytes().to_vec()),          // no records
        (28, 9u32.to_le_bytes().to_vec()),          // last_offset_delta disagrees
        (24, 0x1000u16.to_le_bytes().to_vec()),     // unknown attribute bit
        (40, 0i64.to_le_bytes().to_vec()),          // max_timestamp < first_timestamp
        (0, (u64::MAX - 1).to_le_bytes().to_vec()), // no offset after the last record
    ];
    for (at, bytes) in cases {
        let mut batch = sample(2);
        batch.as_bytes_mut()[at..at + bytes.len()].copy_from_slice(&bytes);
        if at >= CRC_COVERED_FROM {
            recrc(batch.as_bytes_mut());
        }
        assert!(
            BatchView::validate(batch.as_bytes()).is_err(),
            "field at {at} set to {bytes:?} was accepted"
        );
    }
}

#[test]
fn records_that_disagree_with_the_header_are_rejected() {
    let mut batch = sample(3);
    // Claim a later max timestamp than the records carry; re-CRC so only the body check can
    // catch it.
    batch.as_bytes_mut()[40..48].copy_from_slice(&5_000i64.to_le_bytes());
    recrc(batch.as_bytes_mut());
    assert!(matches!(
        BatchView::validate(batch.as_bytes()),
        Err(BatchError::RecordsDisagree(_))
    ));
}

#[test]
fn garbage_body_with_valid_crc_fails_bytecheck() {
    let mut batch = sample(3);
    let length = BatchHeader::decode(batch.as_bytes()).unwrap().batch_length as usize;
    for byte in &mut batch.as_bytes_mut()[length - 8..length] {
        *byte = 0xff;
    }
    recrc(batch.as_bytes_mut());
    assert!(matches!(
        BatchView::validate(batch.as_bytes()),
        Err(BatchError::InvalidArchive(_))
    ));
}

#[test]
fn truncated_and_trailing_bytes_are_rejected() {
    let batch = sample(2);
    let bytes = batch.as_bytes();
    assert!(matches!(
        BatchView::validate(&bytes[..40]),
        Err(BatchError::Truncated { .. })
    ));
    assert!(matches!(
        BatchView::validate(&bytes[..bytes.len() - 16]),
        Err(BatchError::Truncated { .. })
    ));
    let mut longer = rkyv::util::AlignedVec::<16>::new();
    longer.extend_from_slice(bytes);
    longer.extend_from_slice(&[0; 16]);
    assert!(BatchView::validate(&longer).is_err());
}

#[test]
fn nonzero_padding_is_rejected() {
    let mut batch = sample(1);
    let header = BatchHeader::decode(batch.as_bytes()).unwrap();
    if header.padded_length() > header.batch_length as usize {
        let last = batch.len() - 1;
        batch.as_bytes_mut()[last] = 1;
        assert!(BatchView::validate(batch.as_bytes()).is_err());
    }
}

#[test]
fn unaligned_bytes_are_validated_through_a_scratch_copy() {
    let batch = sample(4);
    let mut shifted = vec![0u8; batch.len() + 1];
    shifted[1..].copy_from_slice(batch.as_bytes());
    let view = BatchView::validate(&shifted[1..]).unwrap();
    assert_eq!(view.header().record_count, 4);
    shifted[40] ^= 1;
    assert!(BatchView::validate(&shifted[1..]).is_err());
}

#[test]
fn records_older_than_the_builder_default_still_build_a_valid_batch() {
    let mut builder = BatchBuilder::new(10_000);
    builder.push(5_000, None, Some(b"a"), &[]);
    builder.push(4_000, None, Some(b"b"), &[]);
    let batch = builder.build().unwrap();
    let view = BatchView::validate(batch.as_bytes()).unwrap();
    assert_eq!(view.header().first_timestamp, 5_000);
    assert_eq!(view.header().max_timestamp, 5_000);
    let timestamps: Vec<i64> = view.records().map(|record| record.timestamp_ms()).collect();
    assert_eq!(timestamps, vec![5_000, 4_000]);
}

#[test]
fn an_empty_builder_refuses_to_build() {
    assert_eq!(BatchBuilder::new(0).build().unwrap_err(), BatchError::Empty);
}

proptest! {
    #[test]
    fn any_records_round_trip(
        records in proptest::collection::vec(
            (0i64..10_000,
             proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
             proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
             proptest::collection::vec(("[a-z]{0,20}", proptest::collection::vec(any::<u8>(), 0..8)), 0..3)),
            1..30),
        capacity in (0usize..4096, 0usize..40),
    ) {
        let mut builder = BatchBuilder::new(500);
        // Sized ahead or not, the same bytes.
        let mut sized = BatchBuilder::with_capacity(500, capacity.0, capacity.1);
        for (timestamp, key, value, headers) in &records {
            let headers: Vec<(&str, &[u8])> =
                headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
            builder.push(500 + timestamp, key.as_deref(), value.as_deref(), &headers);
            sized.push(500 + timestamp, key.as_deref(), value.as_deref(), &headers);
        }
        let batch = builder.build().unwrap();
        // The body is byte for byte rkyv's own archive of the same `Vec<Record>`, though
        // the builder writes keys and values as they are pushed.
        let first = 500 + records[0].0;
        let owned: Vec<Record> = records
            .iter()
            .enumerate()
            .map(|(index, (timestamp, key, value, headers))| Record {
                offset_delta: index as u32,
                timestamp_delta: 500 + timestamp - first,
                key: key.clone(),
                value: value.clone(),
                headers: headers
                    .iter()
                    .map(|(k, v)| Header { key: k.clone(), value: v.clone() })
                    .collect(),
            })
            .collect();
        let mut expected = rkyv::util::AlignedVec::<16>::new();
        expected.extend_from_slice(&[0u8; BATCH_HEADER_BYTES]);
        let expected = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(&owned, expected).unwrap();
        let header = BatchHeader::decode(batch.as_bytes()).unwrap();
        let body = &batch.as_bytes()[BATCH_HEADER_BYTES..header.batch_length as usize];
        prop_assert_eq!(body, &expected[BATCH_HEADER_BYTES..]);
        let finished = builder.finish().unwrap();
        prop_assert_eq!(finished.as_bytes(), batch.as_bytes());
        let sized = sized.finish().unwrap();
        prop_assert_eq!(sized.as_bytes(), batch.as_bytes());
        let view = BatchView::validate(batch.as_bytes()).unwrap();
        prop_assert_eq!(view.records().len(), records.len());
        for (record, (timestamp, key, value, headers)) in view.records().zip(&records) {
            prop_assert_eq!(record.timestamp_ms(), 500 + timestamp);
            prop_assert_eq!(record.key(), key.as_deref());
            prop_assert_eq!(record.value(), value.as_deref());
            let read: Vec<(String, Vec<u8>)> =
                record.headers().map(|(k, v)| (k.to_owned(), v.to_vec())).collect();
            prop_assert_eq!(&read, headers);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(&bytes);
        let _ = BatchView::validate(&aligned);
    }
}
