//! The server: listeners, connections, and one handler per API.
//!
//! Every shard accepts connections on the broker's shared port (SO_REUSEPORT spreads them
//! over the shards) and on a port of its own, announced in Metadata. A connection is
//! served entirely by the shard that accepted it; a request for a partition owned by
//! another shard is forwarded over the mesh (see `mesh.rs`). Internal errors become wire
//! error codes only in `errors.rs`.

mod broker;
mod config;
mod connection;
mod errors;
mod handlers;
mod mesh;
mod state;

pub use broker::{
    run_broker, run_broker_with_stop, shards_within_memlock, BrokerHandle, StartupError,
    StartupSummary,
};
pub use config::BrokerConfig;
