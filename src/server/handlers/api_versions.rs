//! ApiVersions: the APIs and versions this broker speaks.

use flumen_protocol::wire::messages::{ApiVersionRange, ApiVersionsResponse};
use flumen_protocol::wire::ApiKey;

use super::{encode, Response};

pub(super) fn handle() -> Response {
    let apis = ApiKey::ALL
        .iter()
        .map(|api| {
            let (min_version, max_version) = api.versions();
            ApiVersionRange {
                api_key: *api as u16,
                min_version,
                max_version,
            }
        })
        .collect();
    Response::ok(encode(&ApiVersionsResponse {
        apis,
        broker_version: env!("CARGO_PKG_VERSION").to_owned(),
    }))
}
