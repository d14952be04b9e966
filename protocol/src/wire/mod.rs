//! The native wire protocol: framing, request and response headers, error codes, and one
//! module per API.
//!
//! A connection carries length-prefixed frames. Requests may be pipelined; responses
//! come back in request order. Every frame is laid out so that both its control part (an
//! rkyv archive) and its data part (record batches, exactly as stored) start 16-byte
//! aligned relative to the frame start; a receiver that reads each frame into a 16-byte-
//! aligned buffer can read both in place. Produce and fetch never re-encode batches: the
//! control part refers to them by `(offset, length)` within the data part.
//!
//! ```text
//! request frame                          response frame
//!  0 u32 frame_length (after this field)  0 u32 frame_length
//!  4 u16 api_key                          4 u32 correlation_id
//!  6 u16 api_version                      8 u16 error_code (frame level)
//!  8 u32 correlation_id                  10 u16 reserved, 0
//! 12 u16 client_id_length                12 u32 control_length
//! 14 u16 reserved, 0                     16 u32 data_length
//! 16 u32 control_length                  20 12 reserved bytes, 0
//! 20 u32 data_length                     32 control (rkyv), padded to 16
//! 24 8 reserved bytes, 0                  … data (batches), padded to 16
//! 32 client_id (UTF-8), padded to 16
//!  … control (rkyv), padded to 16
//!  … data (batches), padded to 16
//! ```
//!
//! All integers are little-endian. `docs/PROTOCOL.md` documents every API's fields.
//! Decoding is the trust boundary: [`frame`] checks lengths and limits, and each API's
//! control archive is validated with rkyv bytecheck before it is read.

pub mod error_code;
pub mod frame;
pub mod messages;

#[cfg(test)]
mod tests;

pub use error_code::ErrorCode;
pub use frame::{
    decode_control, decode_owned, encode_control, frame_length, ControlMessage, DataRange,
    Deserialize, FrameBuffer, FrameError, RequestFrame, RequestHeader, ResponseFrame,
    ResponseHeader, BATCH_BYTES_MAX, FRAME_ALIGNMENT_BYTES, FRAME_BYTES_MAX_DEFAULT,
    REQUEST_HEADER_BYTES, RESPONSE_FRAME_BYTES_MAX_DEFAULT, RESPONSE_HEADER_BYTES,
};

/// The APIs of the native protocol. Numbers are stable and never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ApiKey {
    /// Which APIs and versions the broker supports.
    ApiVersions = 0,
    /// Brokers, shards, topics, partitions and their leaders.
    Metadata = 1,
    /// Create topics.
    CreateTopics = 2,
    /// Delete topics.
    DeleteTopics = 3,
    /// Read topic configuration.
    DescribeConfigs = 4,
    /// Change topic configuration.
    AlterConfigs = 5,
    /// Append record batches.
    Produce = 6,
    /// Read record batches.
    Fetch = 7,
    /// Find offsets: earliest, latest, or by timestamp.
    ListOffsets = 8,
    /// Get a producer id and epoch for idempotent produce.
    InitProducerId = 9,
    /// Store a consumer group's positions.
    OffsetCommit = 10,
    /// Read a consumer group's committed positions.
    OffsetFetch = 11,
    /// The consumer groups the broker knows.
    ListGroups = 12,
    /// Forget consumer groups and their positions.
    DeleteGroups = 13,
    /// Join a consumer group (or rejoin it for a rebalance).
    JoinGroup = 14,
    /// Distribute the leader's assignment.
    SyncGroup = 15,
    /// Stay in a group; learn of a rebalance.
    Heartbeat = 16,
    /// Leave a group.
    LeaveGroup = 17,
    /// Groups' state, members and assignments.
    DescribeGroups = 18,
}

impl ApiKey {
    /// Every API, in key order.
    pub const ALL: [ApiKey; 19] = [
        ApiKey::ApiVersions,
        ApiKey::Metadata,
        ApiKey::CreateTopics,
        ApiKey::DeleteTopics,
        ApiKey::DescribeConfigs,
        ApiKey::AlterConfigs,
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::ListOffsets,
        ApiKey::InitProducerId,
        ApiKey::OffsetCommit,
        ApiKey::OffsetFetch,
        ApiKey::ListGroups,
        ApiKey::DeleteGroups,
        ApiKey::JoinGroup,
        ApiKey::SyncGroup,
        ApiKey::Heartbeat,
        ApiKey::LeaveGroup,
        ApiKey::DescribeGroups,
    ];

    /// The API with this number, if any.
    pub fn from_u16(key: u16) -> Option<Self> {
        Self::ALL.get(usize::from(key)).copied()
    }

    /// The versions of this API this implementation speaks: `(min, max)`.
    pub fn versions(self) -> (u16, u16) {
        (0, 0)
    }
}
