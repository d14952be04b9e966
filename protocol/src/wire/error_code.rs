//! Error codes: stable numbers shared by every API. A retired code is never reused.

/// An error code carried in responses. `None` (0) means success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// Success.
    None = 0,
    /// An error the broker did not expect; see the message and the broker log.
    Unknown = 1,
    /// The frame or its control part could not be decoded.
    MalformedRequest = 2,
    /// The API key is not known.
    UnsupportedApi = 3,
    /// The API version is not supported.
    UnsupportedVersion = 4,
    /// The frame is larger than the broker accepts.
    FrameTooLarge = 5,
    /// The topic does not exist.
    UnknownTopic = 6,
    /// The partition does not exist in the topic.
    UnknownPartition = 7,
    /// A topic with this name exists already.
    TopicAlreadyExists = 8,
    /// The topic name is not valid.
    InvalidTopicName = 9,
    /// The name is reserved for internal topics.
    ReservedTopicName = 10,
    /// A configuration key or value is invalid.
    InvalidConfig = 11,
    /// The partition count is invalid.
    InvalidPartitions = 12,
    /// The replication factor is invalid.
    InvalidReplicationFactor = 13,
    /// A batch failed validation (CRC, archive, header).
    CorruptBatch = 14,
    /// A batch is larger than the topic's `max.message.bytes`.
    BatchTooLarge = 15,
    /// The acks value is not 0, 1 or -1 (all).
    InvalidAcks = 16,
    /// The requested offset is outside the log.
    OffsetOutOfRange = 17,
    /// The broker's disk is full; nothing was written.
    DiskFull = 18,
    /// A storage error; the partition may be offline.
    StorageError = 19,
    /// Data read from disk failed validation and was not served.
    CorruptStoredData = 20,
    /// The request timed out.
    RequestTimedOut = 21,
    /// The broker is shutting down.
    BrokerShuttingDown = 22,
    /// Too many connections or requests; retry later.
    Throttled = 23,
    /// Fewer in-sync replicas than `min.insync.replicas`.
    NotEnoughReplicas = 24,
    /// The request is invalid for a reason the message explains.
    InvalidRequest = 25,
    /// An idempotent producer sent a batch the partition already has (a retry of a batch
    /// whose acknowledgement was lost). Nothing was appended; the response carries the
    /// offsets the batch got the first time, so the producer treats it as delivered.
    DuplicateSequence = 26,
    /// An idempotent producer's batch does not follow the last one the partition has from
    /// it: a gap (batches lost) or a sequence older than the partition remembers.
    OutOfOrderSequence = 27,
    /// The producer's epoch is older than one the partition has seen: a newer instance
    /// with the same producer id fenced this one.
    InvalidProducerEpoch = 28,
    /// The partition has no state for this producer id and the batch does not start a
    /// sequence; get a new producer id.
    UnknownProducerId = 29,
    /// The group id is empty or too long (at most 255 bytes).
    InvalidGroupId = 30,
    /// The member's generation is not the group's current one (a stale member).
    IllegalGeneration = 31,
    /// The member id is not a member of the group.
    UnknownMemberId = 32,
    /// The offset metadata is longer than 4,096 bytes.
    OffsetMetadataTooLarge = 33,
    /// The group has active members: the operation needs an empty group.
    NonEmptyGroup = 34,
    /// The broker knows no such group.
    GroupIdNotFound = 35,
    /// The group is rebalancing: rejoin (JoinGroup) before syncing or committing.
    RebalanceInProgress = 36,
    /// The member's protocol type or protocols do not match the group's.
    InconsistentGroupProtocol = 37,
    /// A session or rebalance timeout is outside the broker's limits.
    InvalidSessionTimeout = 38,
    /// The group has as many members as the broker allows; a new member cannot join.
    GroupMaxSizeReached = 39,
}

impl ErrorCode {
    const ALL: [ErrorCode; 40] = [
        ErrorCode::None,
        ErrorCode::Unknown,
        ErrorCode::MalformedRequest,
        ErrorCode::UnsupportedApi,
        ErrorCode::UnsupportedVersion,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnknownTopic,
        ErrorCode::UnknownPartition,
        ErrorCode::TopicAlreadyExists,
        ErrorCode::InvalidTopicName,
        ErrorCode::ReservedTopicName,
        ErrorCode::InvalidConfig,
        ErrorCode::InvalidPartitions,
        ErrorCode::InvalidReplicationFactor,
        ErrorCode::CorruptBatch,
        ErrorCode::BatchTooLarge,
        ErrorCode::InvalidAcks,
        ErrorCode::OffsetOutOfRange,
        ErrorCode::DiskFull,
        ErrorCode::StorageError,
        ErrorCode::CorruptStoredData,
        ErrorCode::RequestTimedOut,
        ErrorCode::BrokerShuttingDown,
        ErrorCode::Throttled,
        ErrorCode::NotEnoughReplicas,
        ErrorCode::InvalidRequest,
        ErrorCode::DuplicateSequence,
        ErrorCode::OutOfOrderSequence,
        ErrorCode::InvalidProducerEpoch,
        ErrorCode::UnknownProducerId,
        ErrorCode::InvalidGroupId,
        ErrorCode::IllegalGeneration,
        ErrorCode::UnknownMemberId,
        ErrorCode::OffsetMetadataTooLarge,
        ErrorCode::NonEmptyGroup,
        ErrorCode::GroupIdNotFound,
        ErrorCode::RebalanceInProgress,
        ErrorCode::InconsistentGroupProtocol,
        ErrorCode::InvalidSessionTimeout,
        ErrorCode::GroupMaxSizeReached,
    ];

    /// The code with this number; unknown numbers (from a newer broker) map to `Unknown`.
    pub fn from_u16(code: u16) -> Self {
        Self::ALL
            .get(usize::from(code))
            .copied()
            .unwrap_or(ErrorCode::Unknown)
    }

    /// The wire number.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// Whether a client may retry the same request and expect it to succeed later.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::RequestTimedOut
                | ErrorCode::BrokerShuttingDown
                | ErrorCode::Throttled
                | ErrorCode::NotEnoughReplicas
                | ErrorCode::DiskFull
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_dense() {
        for (number, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(code.as_u16() as usize, number);
            assert_eq!(ErrorCode::from_u16(number as u16), *code);
        }
        assert_eq!(ErrorCode::from_u16(60_000), ErrorCode::Unknown);
    }
}
