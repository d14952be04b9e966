//! InitProducerId (key 9): a producer id and epoch for idempotent produce.
//!
//! An idempotent producer stamps each batch with its producer id, epoch and a per-partition
//! sequence number (the sequence of the batch's first record; it grows by the record count
//! and wraps from `i32::MAX` to 0). The partition remembers, per producer, the last batches
//! it appended and answers a retry of one of them with `DuplicateSequence` and the
//! original offsets instead of appending it twice; a batch that skips sequences gets
//! `OutOfOrderSequence`, one from an older epoch `InvalidProducerEpoch`.
//!
//! Ids are unique for the life of the data directory: the broker persists the highest
//! block of ids it handed out before using it.

use super::Outcome;

/// The request.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct InitProducerIdRequest {
    /// Reserved for transactions; must be `None`.
    pub transactional_id: Option<String>,
}

/// The response.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct InitProducerIdResponse {
    /// What happened.
    pub outcome: Outcome,
    /// The new producer id (non-negative).
    pub producer_id: i64,
    /// Its epoch (0 for a new id).
    pub producer_epoch: i16,
}
