//! Request and response bodies, one file per API. Each is an rkyv archive in the control
//! section of a frame; batches travel in the data section, named by [`super::DataRange`].
//!
//! Conventions: errors are `u16` [`super::ErrorCode`] numbers with an optional message;
//! offsets are `u64`; timestamps are `i64` milliseconds since the Unix epoch.

mod alter_configs;
mod api_versions;
mod create_topics;
mod delete_groups;
mod delete_topics;
mod describe_configs;
mod fetch;
mod heartbeat;
mod init_producer_id;
mod join_group;
mod list_offsets;
mod metadata;
mod offset_commit;
mod offset_fetch;
mod produce;
mod sync_group;

pub use alter_configs::*;
pub use api_versions::*;
pub use create_topics::*;
pub use delete_groups::*;
pub use delete_topics::*;
pub use describe_configs::*;
pub use fetch::*;
pub use heartbeat::*;
pub use init_producer_id::*;
pub use join_group::*;
pub use list_offsets::*;
pub use metadata::*;
pub use offset_commit::*;
pub use offset_fetch::*;
pub use produce::*;
pub use sync_group::*;

/// A topic-level or partition-level outcome: an error code and an optional message.
#[derive(
    Debug, Clone, PartialEq, Eq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct Outcome {
    /// [`super::ErrorCode`] as a number; 0 is success.
    pub error_code: u16,
    /// Human-readable detail for errors.
    pub message: Option<String>,
}

impl Outcome {
    /// Success.
    pub fn ok() -> Self {
        Self::default()
    }

    /// An error with a message.
    pub fn error(code: super::ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error_code: code.as_u16(),
            message: Some(message.into()),
        }
    }
}
