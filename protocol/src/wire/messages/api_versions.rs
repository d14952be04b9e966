//! ApiVersions (key 0): which APIs and versions the broker speaks.

/// The request: empty.
#[derive(
    Debug, Clone, PartialEq, Eq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct ApiVersionsRequest {}

/// One supported API.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct ApiVersionRange {
    /// The API key.
    pub api_key: u16,
    /// Oldest supported version.
    pub min_version: u16,
    /// Newest supported version.
    pub max_version: u16,
}

/// The response.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct ApiVersionsResponse {
    /// Every supported API.
    pub apis: Vec<ApiVersionRange>,
    /// The broker's software version.
    pub broker_version: String,
}
