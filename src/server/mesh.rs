//! Messages between shards: a request names a partition operation or a catalog change;
//! the answer comes back over the mesh with the request's id.
//!
//! Everything here is owned data (`Send`): batches travel as `BytesMut`/`Bytes`, errors
//! as wire codes with messages. A request that lands on the wrong shard costs one hop
//! and, for fetches, one copy of the batches; clients that follow Metadata's shard
//! endpoints never pay it.

use bytes::{Bytes, BytesMut};

use std::collections::BTreeMap;

use super::errors::WireError;
use crate::cluster::Catalog;
use crate::group::{CommitEntry, Committed, GroupDescription, JoinAnswer, JoinRequest};
use crate::partition::Acks;

/// What travels on the mesh.
pub(crate) enum MeshMessage {
    /// A request from shard `from`, answered with the same `id`.
    Request {
        id: u64,
        from: u32,
        request: ShardRequest,
    },
    /// The answer to request `id`.
    Response { id: u64, response: ShardResponse },
}

/// Work for another shard.
pub(crate) enum ShardRequest {
    /// To shard 0: change the catalog (it owns the catalog file).
    ChangeCatalog(CatalogChange),
    /// From shard 0: the new catalog; open and close partitions to match.
    ApplyCatalog(Catalog),
    /// To shard 0: a new idempotent producer id.
    AllocateProducerId,
    /// To a group's coordinator (or, for `List`, to every shard).
    Group(GroupOp),
    /// An operation on a partition the receiving shard owns.
    Partition {
        topic: String,
        partition: u32,
        op: PartitionOp,
    },
}

/// A catalog change, applied by shard 0.
pub(crate) enum CatalogChange {
    Create {
        name: String,
        partitions: u32,
        replication_factor: u16,
        configs: Vec<(String, String)>,
        validate_only: bool,
    },
    Delete {
        name: String,
    },
    Alter {
        name: String,
        configs: Vec<(String, String)>,
    },
}

/// A group operation, run by the group's coordinator shard.
pub(crate) enum GroupOp {
    Commit {
        group: String,
        generation: i32,
        member: String,
        entries: Vec<CommitEntry>,
    },
    Fetch {
        group: String,
    },
    Delete {
        group: String,
    },
    Join {
        group: String,
        request: JoinRequest,
    },
    Sync {
        group: String,
        generation: i32,
        member: String,
        assignments: Vec<(String, Vec<u8>)>,
    },
    Heartbeat {
        group: String,
        generation: i32,
        member: String,
    },
    Leave {
        group: String,
        member: String,
    },
    Describe {
        group: String,
    },
    List,
}

/// A group operation's answer.
pub(crate) enum GroupReply {
    Committed(Result<(), WireError>),
    /// A group's committed positions; an error if its `__consumer_offsets` partition
    /// is not open (it failed to load), rather than an empty answer.
    Positions(Result<BTreeMap<(String, u32), Committed>, WireError>),
    Groups(Vec<String>),
    Joined(Result<JoinAnswer, WireError>),
    Synced(Result<Vec<u8>, WireError>),
    Described(Option<GroupDescription>),
}

/// An operation on one partition, run by its owning shard.
pub(crate) enum PartitionOp {
    Produce {
        acks: Acks,
        batches: BytesMut,
    },
    /// The first batch even beyond `max_bytes` if it is at most `first_batch_max` long.
    Fetch {
        offset: u64,
        max_bytes: usize,
        first_batch_max: usize,
    },
    WaitForData {
        offset: u64,
        wait_ms: u64,
    },
    ListOffset {
        timestamp: i64,
    },
}

/// Answers.
pub(crate) enum ShardResponse {
    Catalog(Result<(), WireError>),
    ProducerId(Result<i64, WireError>),
    Group(GroupReply),
    /// The catalog is applied; the partitions of new topics that could not be opened.
    Applied(Vec<(u32, String)>),
    Partition(RemoteOutcome),
}

/// A partition operation's result in owned form.
pub(crate) enum RemoteOutcome {
    Produced(Result<ProduceResult, WireError>),
    Fetched(Result<FetchResult<Vec<Bytes>>, WireError>),
    DataReady(bool),
    Offset(Result<(u64, PartitionStats), WireError>),
}

/// Where a produce landed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProduceResult {
    pub base_offset: u64,
    pub last_offset: u64,
    pub log_start_offset: u64,
    /// Every batch was a retry of one appended before (answered `DuplicateSequence`).
    pub duplicate: bool,
}

/// What a fetch found, with batches local (`StoredBatch`) or copied (`Bytes`).
pub(crate) struct FetchResult<B> {
    pub high_watermark: u64,
    pub log_start_offset: u64,
    pub batches: B,
}

/// A partition's bounds and size, returned with ListOffsets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PartitionStats {
    pub log_start_offset: u64,
    pub log_end_offset: u64,
    pub size_bytes: u64,
}
