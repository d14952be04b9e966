//! The one place where internal errors become wire error codes.

use flumen_protocol::wire::ErrorCode;

use crate::cluster::CatalogError;
use crate::group::GroupError;
use crate::partition::{ProduceError, SequenceError};
use crate::storage::StorageError;

/// A wire error code with a message for the client.
pub(crate) type WireError = (ErrorCode, String);

pub(crate) fn from_storage(error: &StorageError) -> WireError {
    let code = match error {
        StorageError::InvalidBatch(_) => ErrorCode::CorruptBatch,
        StorageError::BatchTooLarge { .. } => ErrorCode::BatchTooLarge,
        StorageError::DiskFull { .. } => ErrorCode::DiskFull,
        StorageError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
        StorageError::Corrupt { .. } => ErrorCode::CorruptStoredData,
        StorageError::Closed(_) => ErrorCode::BrokerShuttingDown,
        StorageError::InvalidConfig(_) => ErrorCode::InvalidConfig,
        StorageError::Io { .. }
        | StorageError::Poisoned { .. }
        | StorageError::StaleEpoch { .. } => ErrorCode::StorageError,
    };
    if code == ErrorCode::StorageError || code == ErrorCode::CorruptStoredData {
        tracing::error!(%error, "storage error answered to a client");
    }
    (code, error.to_string())
}

pub(crate) fn from_produce(error: &ProduceError) -> WireError {
    match error {
        ProduceError::Storage(inner) => from_storage(inner),
        ProduceError::Sequence(inner) => {
            let code = match inner {
                SequenceError::OutOfOrder { .. } => ErrorCode::OutOfOrderSequence,
                SequenceError::Fenced { .. } => ErrorCode::InvalidProducerEpoch,
                SequenceError::UnknownProducer { .. } => ErrorCode::UnknownProducerId,
            };
            (code, inner.to_string())
        }
        ProduceError::NotEnoughReplicas { .. } => (ErrorCode::NotEnoughReplicas, error.to_string()),
    }
}

pub(crate) fn from_group(error: &GroupError) -> WireError {
    let code = match error {
        GroupError::InvalidGroupId(_) => ErrorCode::InvalidGroupId,
        GroupError::UnknownMember { .. } => ErrorCode::UnknownMemberId,
        GroupError::IllegalGeneration { .. } => ErrorCode::IllegalGeneration,
        GroupError::UnknownGroup(_) => ErrorCode::GroupIdNotFound,
        GroupError::RebalanceInProgress(_) => ErrorCode::RebalanceInProgress,
        GroupError::InconsistentProtocol(_) => ErrorCode::InconsistentGroupProtocol,
        GroupError::InvalidSessionTimeout { .. } => ErrorCode::InvalidSessionTimeout,
        GroupError::NonEmpty(_) => ErrorCode::NonEmptyGroup,
        GroupError::GroupFull { .. } => ErrorCode::GroupMaxSizeReached,
        GroupError::TooMuchMetadata { .. } => ErrorCode::InvalidRequest,
        GroupError::Append(inner) => return from_produce(inner),
    };
    (code, error.to_string())
}

pub(crate) fn from_catalog(error: &CatalogError) -> WireError {
    let code = match error {
        CatalogError::TopicExists(_) => ErrorCode::TopicAlreadyExists,
        CatalogError::UnknownTopic(_) => ErrorCode::UnknownTopic,
        CatalogError::InvalidName { .. } => ErrorCode::InvalidTopicName,
        CatalogError::ReservedName(_) => ErrorCode::ReservedTopicName,
        CatalogError::InvalidPartitions(_) => ErrorCode::InvalidPartitions,
        CatalogError::InvalidReplicationFactor(_) => ErrorCode::InvalidReplicationFactor,
        CatalogError::InvalidConfig(_) => ErrorCode::InvalidConfig,
        CatalogError::Storage(inner) => return from_storage(inner),
        CatalogError::Corrupt { .. } => ErrorCode::StorageError,
    };
    (code, error.to_string())
}
