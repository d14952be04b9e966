//! Metadata (key 1): brokers with their shard endpoints, topics, partitions and leaders.
//!
//! Every shard of a broker listens on the broker's shared port and on a port of its own;
//! a client that sends a partition's requests to its leader shard's port is served
//! without a hop between cores.

use super::Outcome;

/// The request.
#[derive(
    Debug, Clone, PartialEq, Eq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct MetadataRequest {
    /// Topics to describe; `None` means all.
    pub topics: Option<Vec<String>>,
}

/// One shard's own endpoint.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct ShardEndpoint {
    /// Shard number within the broker.
    pub shard: u32,
    /// Port served by that shard only.
    pub port: u16,
}

/// A broker.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct BrokerMetadata {
    /// Broker id.
    pub broker_id: u32,
    /// Host clients should connect to.
    pub host: String,
    /// The shared port (any shard answers).
    pub port: u16,
    /// Per-shard ports.
    pub shards: Vec<ShardEndpoint>,
}

/// A partition and where it is led.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct PartitionMetadata {
    /// Partition number.
    pub partition: u32,
    /// Outcome for this partition.
    pub outcome: Outcome,
    /// Broker leading it.
    pub leader_broker: u32,
    /// Shard on that broker owning it.
    pub leader_shard: u32,
    /// Current leader epoch.
    pub leader_epoch: u32,
    /// Brokers holding replicas.
    pub replicas: Vec<u32>,
    /// Replicas in sync.
    pub in_sync_replicas: Vec<u32>,
}

/// A topic.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct TopicMetadata {
    /// Topic name.
    pub name: String,
    /// Outcome for this topic (`UnknownTopic` if it does not exist).
    pub outcome: Outcome,
    /// Whether it is an internal topic.
    pub internal: bool,
    /// Its partitions, by number.
    pub partitions: Vec<PartitionMetadata>,
}

/// The response.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct MetadataResponse {
    /// Brokers of the cluster.
    pub brokers: Vec<BrokerMetadata>,
    /// Topics asked for.
    pub topics: Vec<TopicMetadata>,
}
