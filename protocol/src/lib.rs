//! # flumen-protocol
//!
//! The formats Flumen's broker and clients agree on, and nothing else: no I/O, no async
//! runtime, no glommio, no tokio. Both the broker and the client crate depend on this
//! crate, so it is kept small and a leaf of the dependency graph.
//!
//! - [`record`]: the record batch, the unit of everything Flumen stores and moves. A batch
//!   is one contiguous, 16-byte-aligned byte range that is identical on the wire and on
//!   disk: a fixed 64-byte header followed by an rkyv archive of the records. Producers
//!   build it once with [`record::BatchBuilder`]; the broker validates it once with
//!   [`record::BatchView::validate`] and afterwards only patches the broker-assigned header
//!   fields; consumers read keys and values in place.
//!
//! - [`wire`]: the native protocol: length-prefixed frames with 16-byte-aligned control
//!   (rkyv) and data (batches) sections, error codes, and one module per API.

pub mod record;
pub mod wire;
