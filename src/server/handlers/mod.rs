//! One handler per API. Each decodes its control archive (validated with bytecheck at
//! this trust boundary), does the work through [`ShardState`], and encodes its response.
//! Internal errors become wire codes only in `server/errors.rs`.

mod alter_configs;
mod api_versions;
mod create_topics;
mod delete_topics;
mod describe_configs;
mod fetch;
mod init_producer_id;
mod list_offsets;
mod membership;
mod metadata;
mod offset_commit;
mod offset_fetch;
mod produce;

use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use flumen_protocol::wire::messages::{ArchivedConfigEntry, Outcome as WireOutcome};
use flumen_protocol::wire::{encode_control, ApiKey, ControlMessage, ErrorCode};

use super::errors::WireError;
use super::state::ShardState;
use crate::shard::{BudgetPermit, LocalBudget};
use crate::storage::StoredBatch;

/// Bytes of a response's data section, written to the socket as they are.
pub(crate) enum DataPart {
    Stored(StoredBatch),
    Copied(Bytes),
}

impl DataPart {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            DataPart::Stored(batch) => batch.as_bytes(),
            DataPart::Copied(bytes) => bytes,
        }
    }
}

/// A response ready to be framed.
pub(crate) struct Response {
    pub error_code: ErrorCode,
    pub control: Vec<u8>,
    pub data: Vec<DataPart>,
    /// Response bytes reserved from the connection's budget; released once written.
    pub permit: Option<BudgetPermit>,
}

impl Response {
    fn ok(control: Vec<u8>) -> Self {
        Self {
            error_code: ErrorCode::None,
            control,
            data: Vec::new(),
            permit: None,
        }
    }

    /// A frame-level error: no control part.
    pub fn error(code: ErrorCode) -> Self {
        Self {
            error_code: code,
            control: Vec::new(),
            data: Vec::new(),
            permit: None,
        }
    }
}

/// Owned `(key, value)` pairs from a request's archived configuration entries.
fn config_pairs(entries: &[ArchivedConfigEntry]) -> Vec<(String, String)> {
    entries
        .iter()
        .map(|entry| {
            (
                entry.key.as_str().to_owned(),
                entry.value.as_str().to_owned(),
            )
        })
        .collect()
}

/// Encodes a response body.
fn encode<T: ControlMessage>(value: &T) -> Vec<u8> {
    encode_control(value).to_vec()
}

fn outcome(result: Result<(), &WireError>) -> WireOutcome {
    match result {
        Ok(()) => WireOutcome::ok(),
        Err((code, message)) => WireOutcome::error(*code, message.clone()),
    }
}

/// Runs one request. `None` means no response is sent (acks=0).
pub(crate) async fn dispatch(
    state: &Rc<ShardState>,
    api: ApiKey,
    control: &[u8],
    data: BytesMut,
    budget: &Rc<LocalBudget>,
) -> Option<Response> {
    let result = match api {
        ApiKey::ApiVersions => Ok(Some(api_versions::handle())),
        ApiKey::Metadata => metadata::handle(state, control).map(Some),
        ApiKey::CreateTopics => create_topics::handle(state, control).await.map(Some),
        ApiKey::DeleteTopics => delete_topics::handle(state, control).await.map(Some),
        ApiKey::DescribeConfigs => describe_configs::handle(state, control).map(Some),
        ApiKey::AlterConfigs => alter_configs::handle(state, control).await.map(Some),
        ApiKey::Produce => produce::handle(state, control, data).await,
        ApiKey::Fetch => fetch::handle(state, control, budget).await.map(Some),
        ApiKey::ListOffsets => list_offsets::handle(state, control).await.map(Some),
        ApiKey::InitProducerId => init_producer_id::handle(state, control).await.map(Some),
        ApiKey::OffsetCommit => offset_commit::handle(state, control).await.map(Some),
        ApiKey::OffsetFetch => offset_fetch::handle(state, control).await.map(Some),
        ApiKey::ListGroups => offset_fetch::list_groups(state, control).await.map(Some),
        ApiKey::DeleteGroups => offset_fetch::delete_groups(state, control).await.map(Some),
        ApiKey::JoinGroup => membership::join(state, control).await.map(Some),
        ApiKey::SyncGroup => membership::sync(state, control).await.map(Some),
        ApiKey::Heartbeat => membership::heartbeat(state, control).await.map(Some),
        ApiKey::LeaveGroup => membership::leave(state, control).await.map(Some),
        ApiKey::DescribeGroups => membership::describe(state, control).await.map(Some),
    };
    match result {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(?api, %error, "malformed request");
            Some(Response::error(ErrorCode::MalformedRequest))
        }
    }
}
