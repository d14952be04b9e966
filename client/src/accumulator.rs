//! The producer's record accumulator, free of I/O: records are grouped per partition into
//! batches that are sent when full (`batch_size_bytes`) or old enough (`linger`), within a
//! bounded total buffer (`buffer_memory_bytes`).
//!
//! Partitioning follows Kafka's default partitioner: an explicit partition wins; a keyed
//! record goes to `murmur2(key) % partitions`; keyless records stick to one partition per
//! topic until that partition's batch is sent, then move to the next (sticky
//! partitioning: full batches instead of one record per partition).
//!
//! Idempotence: once [`Accumulator::set_producer`] gave it a producer id, every batch is
//! stamped when it is closed with the id, epoch and the partition's next sequence
//! number, so batches of a partition must be delivered in the order they are closed.
//!
//! The caller owns time (`now`), I/O and delivery; the accumulator only says which batches
//! are ready and which record ids each carries.

use crate::fast_hash::{ByName, FastMap};
use std::collections::hash_map::Entry;
use std::time::{Duration, Instant};

use flumen_protocol::record::{BatchBuilder, BuiltBatch, BATCH_LENGTH_MAX_BYTES};

use crate::partition_for_key;

/// Accumulator limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccumulatorConfig {
    /// A batch is sent once its payload reaches this many bytes.
    pub batch_size_bytes: usize,
    /// A batch is sent at the latest this long after its first record, once its
    /// partition has no earlier batch on its way.
    pub linger: Duration,
    /// Payload bytes buffered across all batches not yet delivered.
    pub buffer_memory_bytes: usize,
}

impl AccumulatorConfig {
    /// Checks the limits: a batch holds at most `batch_size_bytes` plus one record, and a
    /// record at most the whole buffer, which must stay far inside the batch format's
    /// limit so building a batch cannot fail.
    pub fn validate(&self) -> Result<(), String> {
        if self.batch_size_bytes == 0 || self.buffer_memory_bytes == 0 {
            return Err("batch_size_bytes and buffer_memory_bytes must be positive".into());
        }
        if self.batch_size_bytes + self.buffer_memory_bytes > BATCH_LENGTH_MAX_BYTES / 2 {
            return Err(format!(
                "batch_size_bytes + buffer_memory_bytes must not exceed {} bytes",
                BATCH_LENGTH_MAX_BYTES / 2
            ));
        }
        Ok(())
    }
}

impl Default for AccumulatorConfig {
    fn default() -> Self {
        Self {
            batch_size_bytes: 256 << 10,
            linger: Duration::from_millis(5),
            buffer_memory_bytes: 32 << 20,
        }
    }
}

/// A record borrowed for one send ([`crate::Producer::send_ref`],
/// [`crate::Producer::send_ref_with`]) or one append to the [`Accumulator`]:
/// its key, value and headers are copied into their batch before the send returns, so
/// the caller may reuse its buffers at once, and nothing is allocated per record. (A
/// record of a topic the producer has not seen yet is copied once more, to wait for
/// the topic's metadata.)
///
/// ```
/// use flumen_client::RecordRef;
///
/// let mut value = *b"reading: 21.5 C";
/// let record = RecordRef::new("readings", &value).with_key(b"sensor-7");
/// assert_eq!(record.key, Some(&b"sensor-7"[..]));
/// value[9..13].copy_from_slice(b"22.0"); // once sent, the buffer is the caller's again
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Explicit partition; `None` lets the partitioner choose (key hash or sticky).
    pub partition: Option<u32>,
    /// Key.
    pub key: Option<&'a [u8]>,
    /// Value (`None`: a tombstone).
    pub value: Option<&'a [u8]>,
    /// Headers.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// Timestamp in ms since the epoch; `None` means now.
    pub timestamp_ms: Option<i64>,
}

impl<'a> RecordRef<'a> {
    /// A record with a value and nothing else.
    pub fn new(topic: &'a str, value: &'a [u8]) -> Self {
        Self {
            topic,
            partition: None,
            key: None,
            value: Some(value),
            headers: &[],
            timestamp_ms: None,
        }
    }

    /// With a key (records with the same key go to the same partition).
    pub fn with_key(mut self, key: &'a [u8]) -> Self {
        self.key = Some(key);
        self
    }

    /// To an explicit partition.
    pub fn with_partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// With headers.
    pub fn with_headers(mut self, headers: &'a [(&'a str, &'a [u8])]) -> Self {
        self.headers = headers;
        self
    }

    /// With a timestamp (ms since the epoch) instead of the send time.
    pub fn with_timestamp(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }
}

/// Why a record was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The buffer is full; retry once batches are delivered.
    #[error("producer buffer full: {buffered_bytes} of {limit_bytes} bytes in use")]
    BufferFull {
        /// Bytes buffered.
        buffered_bytes: usize,
        /// The limit.
        limit_bytes: usize,
    },
    /// The record alone is larger than the whole buffer.
    #[error("record of {record_bytes} bytes exceeds the producer buffer of {limit_bytes}")]
    RecordTooLarge {
        /// Record size.
        record_bytes: usize,
        /// The limit.
        limit_bytes: usize,
    },
    /// The record's timestamp is before the Unix epoch.
    #[error(
        "timestamp {timestamp_ms} is negative: timestamps are milliseconds since the Unix epoch"
    )]
    InvalidTimestamp {
        /// The record's timestamp.
        timestamp_ms: i64,
    },
    /// The explicit partition does not exist.
    #[error("partition {partition} does not exist (topic has {partitions})")]
    InvalidPartition {
        /// Asked for.
        partition: u32,
        /// Existing.
        partitions: u32,
    },
}

/// Refuses a timestamp before the epoch, as Kafka's brokers do: the batch format stores
/// each record's timestamp as a distance from the first record's, which two timestamps
/// far apart on both sides of zero would overflow.
pub(crate) fn check_timestamp(timestamp_ms: Option<i64>) -> Result<(), AppendError> {
    match timestamp_ms {
        Some(timestamp_ms) if timestamp_ms < 0 => {
            Err(AppendError::InvalidTimestamp { timestamp_ms })
        }
        _ => Ok(()),
    }
}

/// A batch ready to send.
#[derive(Debug)]
pub struct ReadyBatch {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// The encoded batch.
    pub batch: BuiltBatch,
    /// The caller's ids of the records, in offset order.
    pub record_ids: Vec<u64>,
    /// Payload bytes counted against the buffer; give them back with
    /// [`Accumulator::release`] once the batch is delivered or failed.
    pub payload_bytes: usize,
    /// When its first record was appended (a delivery timeout counts from there).
    pub first_append: Instant,
}

impl ReadyBatch {
    /// Records in the batch.
    pub fn record_count(&self) -> usize {
        self.record_ids.len()
    }
}

struct OpenBatch {
    builder: BatchBuilder,
    record_ids: Vec<u64>,
    first_append: Instant,
    /// Buffer bytes charged for the records (what `release` gives back).
    charged_bytes: usize,
}

/// Groups records into per-partition batches.
pub struct Accumulator {
    config: AccumulatorConfig,
    /// Every topic appended to, by name (looked up by `&str`, no allocation): one lookup
    /// per record finds its open batches, sticky partition and sequences.
    topics: ByName<TopicBatches>,
    buffered_bytes: usize,
    producer: Option<(i64, i16)>,
    /// Open batches, all partitions together.
    open_batches: usize,
}

/// What the accumulator keeps for one topic.
#[derive(Default)]
struct TopicBatches {
    /// Open batches by partition.
    open: FastMap<u32, OpenBatch>,
    /// Where keyless records go (sticky partitioning).
    sticky: u32,
    /// Each partition's next base sequence.
    sequences: FastMap<u32, i32>,
    /// Per partition, the encoded size and record count of its last batch: the next
    /// one's buffers are sized from them.
    last_sizes: FastMap<u32, (usize, usize)>,
}

impl TopicBatches {
    /// The partition's next base sequence, advanced past `records` (wrapping like Kafka).
    fn next_sequence(&mut self, partition: u32, records: usize) -> i32 {
        let slot = self.sequences.entry(partition).or_insert(0);
        let sequence = *slot;
        *slot = ((i64::from(sequence) + records as i64) % (i64::from(i32::MAX) + 1)) as i32;
        sequence
    }
}

/// The partition a record goes to, given its topic's partition count and sticky
/// partition.
fn choose_partition(
    record: &RecordRef<'_>,
    partitions: u32,
    sticky: u32,
) -> Result<u32, AppendError> {
    match (record.partition, record.key) {
        (Some(partition), _) if partition >= partitions => Err(AppendError::InvalidPartition {
            partition,
            partitions,
        }),
        (Some(partition), _) => Ok(partition),
        (None, Some(key)) => Ok(partition_for_key(key, partitions)),
        (None, None) if partitions == 0 => Err(AppendError::InvalidPartition {
            partition: 0,
            partitions,
        }),
        (None, None) => Ok(sticky % partitions),
    }
}

impl Accumulator {
    /// An empty accumulator. Panics on a configuration [`AccumulatorConfig::validate`]
    /// rejects (a programming error).
    pub fn new(config: AccumulatorConfig) -> Self {
        if let Err(reason) = config.validate() {
            panic!("invalid accumulator configuration: {reason}");
        }
        Self {
            config,
            topics: ByName::default(),
            buffered_bytes: 0,
            producer: None,
            open_batches: 0,
        }
    }

    /// Stamps batches closed from now on with this producer id and epoch, sequences
    /// starting at 0 in every partition.
    pub fn set_producer(&mut self, producer_id: i64, producer_epoch: i16) {
        self.producer = Some((producer_id, producer_epoch));
        for topic in self.topics.values_mut() {
            topic.sequences.clear();
        }
    }

    /// The producer id and epoch batches are stamped with.
    pub fn producer(&self) -> Option<(i64, i16)> {
        self.producer
    }

    /// Stamps an already closed batch again with the current producer and its
    /// partition's next sequence (after [`Accumulator::set_producer`] replaced the
    /// producer id the batch was built with).
    pub fn restamp(&mut self, batch: &mut ReadyBatch) {
        if let Some((producer_id, epoch)) = self.producer {
            let records = batch.record_count();
            let sequence = self
                .topic_mut(&batch.topic)
                .next_sequence(batch.partition, records);
            batch.batch.set_producer(producer_id, epoch, sequence);
        }
    }

    /// Starts the partition's sequences over at 0 (its batches are about to be stamped
    /// again, in order, under a producer id the broker has seen nothing from for it).
    pub fn restart_sequence(&mut self, topic: &str, partition: u32) {
        if let Some(topic) = self.topics.get_mut(topic) {
            topic.sequences.remove(&partition);
        }
    }

    /// The topic's state, created on first use.
    fn topic_mut(&mut self, topic: &str) -> &mut TopicBatches {
        self.topics.get_or_insert_with(topic, TopicBatches::default)
    }

    /// Batches open (taking records), all partitions together.
    pub fn open_batches(&self) -> usize {
        self.open_batches
    }

    /// Payload bytes buffered and not yet released.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    /// The partition a record goes to, given the topic's partition count.
    pub fn choose_partition(
        &self,
        record: &RecordRef<'_>,
        partitions: u32,
    ) -> Result<u32, AppendError> {
        let sticky = self
            .topics
            .get(record.topic)
            .map_or(0, |topic| topic.sticky);
        choose_partition(record, partitions, sticky)
    }

    /// Adds a record (with the caller's `id`) to its partition's batch. Returns the
    /// partition and, if the batch became full, that batch.
    pub fn append(
        &mut self,
        record: &RecordRef<'_>,
        partitions: u32,
        id: u64,
        now: Instant,
    ) -> Result<(u32, Option<ReadyBatch>), AppendError> {
        self.append_at(record, partitions, id, || now)
    }

    /// [`Accumulator::append`] with the time read only if the record opens a batch (its
    /// linger counts from then).
    pub fn append_at(
        &mut self,
        record: &RecordRef<'_>,
        partitions: u32,
        id: u64,
        now: impl FnOnce() -> Instant,
    ) -> Result<(u32, Option<ReadyBatch>), AppendError> {
        self.append_checked(record, partitions, id, now, true)
    }

    /// [`Accumulator::append_at`]; with `check_room` false, for a record whose buffer
    /// room its sender already reserved (the producer counts room across the
    /// accumulator and the records on their way to it): no `BufferFull` for it.
    pub(crate) fn append_checked(
        &mut self,
        record: &RecordRef<'_>,
        partitions: u32,
        id: u64,
        now: impl FnOnce() -> Instant,
        check_room: bool,
    ) -> Result<(u32, Option<ReadyBatch>), AppendError> {
        let size = record_size(record);
        if size > self.config.buffer_memory_bytes {
            return Err(AppendError::RecordTooLarge {
                record_bytes: size,
                limit_bytes: self.config.buffer_memory_bytes,
            });
        }
        check_timestamp(record.timestamp_ms)?;
        if check_room && self.buffered_bytes + size > self.config.buffer_memory_bytes {
            return Err(AppendError::BufferFull {
                buffered_bytes: self.buffered_bytes,
                limit_bytes: self.config.buffer_memory_bytes,
            });
        }
        // A record without a timestamp is stamped with the time of its append.
        let timestamp_ms = record.timestamp_ms.unwrap_or_else(crate::producer::now_ms);
        let batch_size_bytes = self.config.batch_size_bytes;
        let topic = self
            .topics
            .get_or_insert_with(record.topic, TopicBatches::default);
        let partition = choose_partition(record, partitions, topic.sticky)?;
        let open = match topic.open.entry(partition) {
            Entry::Occupied(open) => open.into_mut(),
            Entry::Vacant(slot) => {
                // Room for as much as the partition's last batch held, and an eighth
                // more, within twice the batch size.
                let (bytes, records) =
                    topic
                        .last_sizes
                        .get(&partition)
                        .map_or((0, 0), |&(bytes, records)| {
                            let bytes = (bytes + bytes / 8).min(2 * batch_size_bytes);
                            (bytes, records + records / 8)
                        });
                self.open_batches += 1;
                slot.insert(OpenBatch {
                    builder: BatchBuilder::with_capacity(timestamp_ms, bytes, records),
                    record_ids: Vec::with_capacity(records),
                    first_append: now(),
                    charged_bytes: 0,
                })
            }
        };
        self.buffered_bytes += size;
        open.builder
            .push(timestamp_ms, record.key, record.value, record.headers);
        open.record_ids.push(id);
        open.charged_bytes += size;
        if open.charged_bytes < batch_size_bytes {
            return Ok((partition, None));
        }
        Ok((partition, self.close(record.topic, partition, partitions)))
    }

    /// `(topic, partition)` of every open batch matching `due`.
    fn open_keys(&self, due: impl Fn(&str, u32, &OpenBatch) -> bool) -> Vec<(String, u32)> {
        self.topics
            .iter()
            .flat_map(|(topic, batches)| {
                batches
                    .open
                    .iter()
                    .filter(|(partition, open)| due(topic, **partition, open))
                    .map(|(partition, _)| (topic.to_owned(), *partition))
            })
            .collect()
    }

    /// Batches whose linger has expired at `now`, of the partitions `sendable` accepts
    /// (the producer leaves a partition's batch open while an earlier one is still on its
    /// way, so records keep joining it: batches grow with load even with no linger).
    pub fn expired(
        &mut self,
        now: Instant,
        partitions_of: impl Fn(&str) -> u32,
        sendable: impl Fn(&str, u32) -> bool,
    ) -> Vec<ReadyBatch> {
        let linger = self.config.linger;
        let due = self.open_keys(|topic, partition, open| {
            now.duration_since(open.first_append) >= linger && sendable(topic, partition)
        });
        due.into_iter()
            .filter_map(|(topic, partition)| {
                let partitions = partitions_of(&topic);
                self.close(&topic, partition, partitions)
            })
            .collect()
    }

    /// The partition's open batch, closed, if its linger has expired at `now`.
    pub fn close_if_expired(
        &mut self,
        topic: &str,
        partition: u32,
        now: Instant,
        partitions: u32,
    ) -> Option<ReadyBatch> {
        let open = self.topics.get(topic)?.open.get(&partition)?;
        if now.duration_since(open.first_append) < self.config.linger {
            return None;
        }
        self.close(topic, partition, partitions)
    }

    /// Every open batch, for a flush or close.
    pub fn drain(&mut self, partitions_of: impl Fn(&str) -> u32) -> Vec<ReadyBatch> {
        let keys = self.open_keys(|_, _, _| true);
        keys.into_iter()
            .filter_map(|(topic, partition)| {
                let partitions = partitions_of(&topic);
                self.close(&topic, partition, partitions)
            })
            .collect()
    }

    /// When the earliest linger of the partitions `sendable` accepts expires.
    pub fn next_deadline(&self, sendable: impl Fn(&str, u32) -> bool) -> Option<Instant> {
        self.topics
            .iter()
            .flat_map(|(topic, batches)| {
                batches
                    .open
                    .iter()
                    .filter(|(partition, _)| sendable(topic, **partition))
                    .map(|(_, open)| open.first_append + self.config.linger)
            })
            .min()
    }

    /// Gives back a delivered (or failed) batch's buffer space.
    pub fn release(&mut self, payload_bytes: usize) {
        assert!(
            payload_bytes <= self.buffered_bytes,
            "released more than was buffered"
        );
        self.buffered_bytes -= payload_bytes;
    }

    fn close(&mut self, topic_name: &str, partition: u32, partitions: u32) -> Option<ReadyBatch> {
        let topic = self.topics.get_mut(topic_name)?;
        let mut open = topic.open.remove(&partition)?;
        self.open_batches -= 1;
        if let Some((producer_id, epoch)) = self.producer {
            let sequence = topic.next_sequence(partition, open.record_ids.len());
            open.builder.producer(producer_id, epoch, sequence);
        }
        // Sticky partitioning: keyless records move on once this partition's batch is sent.
        if topic.sticky % partitions.max(1) == partition {
            topic.sticky = (partition + 1) % partitions.max(1);
        }
        // Cannot fail: validate() keeps every batch far inside the format's size limit,
        // and a batch has at least one record.
        let batch = open
            .builder
            .finish()
            .expect("batches stay within the format limits");
        topic
            .last_sizes
            .insert(partition, (batch.len(), open.record_ids.len()));
        Some(ReadyBatch {
            topic: topic_name.to_owned(),
            partition,
            batch,
            record_ids: open.record_ids,
            payload_bytes: open.charged_bytes,
            first_append: open.first_append,
        })
    }
}

/// Buffer space charged per record beyond its key, value and headers (framing).
pub const RECORD_OVERHEAD_BYTES: usize = 32;

/// Buffer bytes a record costs: key, value, headers and a fixed overhead. The same cost
/// decides when a batch is full and what `release` gives back.
pub fn record_size(record: &RecordRef<'_>) -> usize {
    let headers: usize = record
        .headers
        .iter()
        .map(|(name, value)| name.len() + value.len() + 8)
        .sum();
    let payload = record.key.map_or(0, <[u8]>::len) + record.value.map_or(0, <[u8]>::len);
    payload + headers + RECORD_OVERHEAD_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;
    use flumen_protocol::record::BatchView;

    fn record<'a>(key: Option<&'a [u8]>, value: &'a [u8]) -> RecordRef<'a> {
        RecordRef {
            topic: "t",
            partition: None,
            key,
            value: Some(value),
            headers: &[],
            timestamp_ms: Some(1),
        }
    }

    fn config(batch_size_bytes: usize) -> AccumulatorConfig {
        AccumulatorConfig {
            batch_size_bytes,
            linger: Duration::from_millis(10),
            buffer_memory_bytes: 10_000,
        }
    }

    #[test]
    fn full_batches_are_ready_at_once_and_lingering_ones_on_time() {
        let mut accumulator = Accumulator::new(config(100));
        let now = Instant::now();
        let (partition, ready) = accumulator
            .append(&record(Some(b"k"), &[1; 60]), 4, 1, now)
            .unwrap();
        assert!(ready.is_none());
        let (same, ready) = accumulator
            .append(&record(Some(b"k"), &[2; 60]), 4, 2, now)
            .unwrap();
        assert_eq!(partition, same, "same key, same partition");
        let ready = ready.expect("the batch reached batch_size_bytes");
        assert_eq!(ready.record_ids, vec![1, 2]);
        let view = BatchView::validate(ready.batch.as_bytes()).unwrap();
        assert_eq!(view.records().len(), 2);

        accumulator
            .append(&record(Some(b"other"), &[3; 10]), 4, 3, now)
            .unwrap();
        assert_eq!(
            accumulator.next_deadline(|_, _| true),
            Some(now + Duration::from_millis(10))
        );
        assert!(accumulator
            .expired(now + Duration::from_millis(9), |_| 4, |_, _| true)
            .is_empty());
        let expired = accumulator.expired(now + Duration::from_millis(10), |_| 4, |_, _| true);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].record_ids, vec![3]);
        assert_eq!(accumulator.next_deadline(|_, _| true), None);
    }

    #[test]
    fn a_partition_that_cannot_send_keeps_its_batch_open_past_the_linger() {
        let mut accumulator = Accumulator::new(config(1_000));
        let now = Instant::now();
        let key = Some(&b"k"[..]);
        let (partition, _) = accumulator
            .append(&record(key, &[1; 10]), 4, 1, now)
            .unwrap();
        let blocked = |_: &str, candidate: u32| candidate != partition;
        let later = now + Duration::from_millis(50);
        assert_eq!(accumulator.next_deadline(blocked), None, "no timer for it");
        assert!(accumulator.expired(later, |_| 4, blocked).is_empty());
        // Records keep joining the open batch; once the partition can send, it goes as one.
        accumulator
            .append(&record(key, &[2; 10]), 4, 2, later)
            .unwrap();
        let ready = accumulator.expired(later, |_| 4, |_, _| true);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].record_ids, vec![1, 2]);
    }

    #[test]
    fn the_buffer_is_bounded_and_released_on_delivery() {
        let mut accumulator = Accumulator::new(config(1_000_000));
        let now = Instant::now();
        let mut appended = 0;
        let error = loop {
            match accumulator.append(&record(None, &[0; 900]), 2, appended, now) {
                Ok(_) => appended += 1,
                Err(error) => break error,
            }
        };
        assert!(matches!(error, AppendError::BufferFull { .. }));
        assert!(accumulator.buffered_bytes() <= 10_000);
        let drained = accumulator.drain(|_| 2);
        let total: usize = drained.iter().map(|batch| batch.record_ids.len()).sum();
        assert_eq!(total as u64, appended);
        for batch in drained {
            accumulator.release(batch.payload_bytes);
        }
        assert_eq!(accumulator.buffered_bytes(), 0);
        assert!(accumulator
            .append(&record(None, &[0; 900]), 2, 99, now)
            .is_ok());
        assert!(matches!(
            accumulator.append(&record(None, &[0; 20_000]), 2, 100, now),
            Err(AppendError::RecordTooLarge { .. })
        ));
        let before_epoch = RecordRef {
            timestamp_ms: Some(-1),
            ..record(None, &[0; 10])
        };
        assert_eq!(
            accumulator.append(&before_epoch, 2, 101, now).unwrap_err(),
            AppendError::InvalidTimestamp { timestamp_ms: -1 }
        );
    }

    #[test]
    fn batches_carry_consecutive_sequences_per_partition() {
        let mut accumulator = Accumulator::new(config(1_000_000));
        let now = Instant::now();
        let explicit = |partition| RecordRef {
            partition: Some(partition),
            ..record(None, b"v")
        };
        let sequences = |accumulator: &mut Accumulator| -> Vec<(u32, i64, i32)> {
            accumulator
                .drain(|_| 2)
                .into_iter()
                .map(|ready| {
                    let view = BatchView::validate(ready.batch.as_bytes()).unwrap();
                    let header = view.header();
                    (ready.partition, header.producer_id, header.base_sequence)
                })
                .collect()
        };
        accumulator.append(&explicit(0), 2, 0, now).unwrap();
        assert_eq!(
            sequences(&mut accumulator),
            vec![(0, -1, -1)],
            "not idempotent yet"
        );
        accumulator.set_producer(42, 0);
        for id in 0..3 {
            accumulator.append(&explicit(0), 2, id, now).unwrap();
        }
        accumulator.append(&explicit(1), 2, 3, now).unwrap();
        let mut first = sequences(&mut accumulator);
        first.sort();
        assert_eq!(first, vec![(0, 42, 0), (1, 42, 0)]);
        accumulator.append(&explicit(0), 2, 4, now).unwrap();
        assert_eq!(sequences(&mut accumulator), vec![(0, 42, 3)]);
        // A new producer id starts every partition over at 0; restamping re-CRCs.
        accumulator.append(&explicit(0), 2, 5, now).unwrap();
        let mut stale = accumulator.drain(|_| 2).pop().unwrap();
        accumulator.set_producer(43, 0);
        accumulator.restamp(&mut stale);
        let view = BatchView::validate(stale.batch.as_bytes()).unwrap();
        assert_eq!(
            (view.header().producer_id, view.header().base_sequence),
            (43, 0)
        );
    }

    #[test]
    fn keyless_records_stick_to_a_partition_until_its_batch_is_sent() {
        let mut accumulator = Accumulator::new(config(100));
        let now = Instant::now();
        let partitions: Vec<u32> = (0..6)
            .map(|id| {
                accumulator
                    .append(&record(None, &[0; 40]), 3, id, now)
                    .unwrap()
                    .0
            })
            .collect();
        // Two 40-byte records plus overhead reach the 100-byte batch size; then the next
        // partition.
        assert_eq!(partitions, vec![0, 0, 1, 1, 2, 2]);
        let explicit = RecordRef {
            partition: Some(5),
            ..record(None, b"v")
        };
        assert!(matches!(
            accumulator.append(&explicit, 3, 7, now),
            Err(AppendError::InvalidPartition {
                partition: 5,
                partitions: 3
            })
        ));
    }
}
