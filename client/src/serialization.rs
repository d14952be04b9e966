//! Typed values: the "object → bytes" step before a send and "bytes → object" after a
//! poll. The client moves bytes; a [`Serializer`] / [`Deserializer`] pair converts.
//! Built in: [`Utf8`] (strings) and, with the `json` feature, [`Json`] (any serde type).
//!
//! ```
//! use flumen_client::serialization::{Deserializer, Serializer, Utf8};
//!
//! let bytes = Utf8.serialize("héllo").unwrap();
//! let back: String = Utf8.deserialize(&bytes).unwrap();
//! assert_eq!(back, "héllo");
//! ```

/// Why a value could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum SerializationError {
    /// The bytes are not UTF-8.
    #[error("not UTF-8: {0}")]
    Utf8(#[from] std::str::Utf8Error),
    /// JSON encoding or decoding failed.
    #[cfg(feature = "json")]
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Turns a `T` into bytes.
pub trait Serializer<T: ?Sized> {
    /// The bytes for `value`.
    fn serialize(&self, value: &T) -> Result<Vec<u8>, SerializationError>;
}

/// Turns bytes into a `T`.
pub trait Deserializer<T> {
    /// The value `bytes` encode.
    fn deserialize(&self, bytes: &[u8]) -> Result<T, SerializationError>;
}

/// Strings as UTF-8 bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Utf8;

impl Serializer<str> for Utf8 {
    fn serialize(&self, value: &str) -> Result<Vec<u8>, SerializationError> {
        Ok(value.as_bytes().to_vec())
    }
}

impl Deserializer<String> for Utf8 {
    fn deserialize(&self, bytes: &[u8]) -> Result<String, SerializationError> {
        Ok(std::str::from_utf8(bytes)?.to_owned())
    }
}

/// Any serde type as JSON (feature `json`).
///
/// ```
/// # #[cfg(feature = "json")] {
/// use flumen_client::serialization::{Deserializer, Json, Serializer};
///
/// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
/// struct Order { id: u64, amount_cents: i64 }
///
/// let bytes = Json.serialize(&Order { id: 7, amount_cents: 1250 }).unwrap();
/// assert_eq!(bytes, br#"{"id":7,"amount_cents":1250}"#);
/// let order: Order = Json.deserialize(&bytes).unwrap();
/// assert_eq!(order.id, 7);
/// # }
/// ```
#[cfg(feature = "json")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

#[cfg(feature = "json")]
impl<T: serde::Serialize + ?Sized> Serializer<T> for Json {
    fn serialize(&self, value: &T) -> Result<Vec<u8>, SerializationError> {
        Ok(serde_json::to_vec(value)?)
    }
}

#[cfg(feature = "json")]
impl<T: serde::de::DeserializeOwned> Deserializer<T> for Json {
    fn deserialize(&self, bytes: &[u8]) -> Result<T, SerializationError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}
