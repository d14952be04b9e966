//! The broker's configuration: every option with its default, checked as a whole.

use std::net::SocketAddr;
use std::path::PathBuf;

use flumen_protocol::wire::FRAME_BYTES_MAX_DEFAULT;

use crate::storage::LogConfig;

/// Everything a broker needs to start. `docs/OPERATIONS.md` lists every option.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Where partitions and metadata live.
    pub data_dir: PathBuf,
    /// The shared address every shard accepts on (SO_REUSEPORT).
    pub listen: SocketAddr,
    /// Shard `i` also listens on `shard_port_base + i`; 0 picks ports automatically.
    pub shard_port_base: u16,
    /// Host announced to clients in Metadata (default: the listen address's IP).
    pub advertised_host: Option<String>,
    /// This broker's id.
    pub broker_id: u32,
    /// Number of shards; default: one per CPU the process may run on.
    pub shards: usize,
    /// Locked io_uring buffer memory per shard.
    pub io_memory_bytes: usize,
    /// Tail cache budget per shard.
    pub cache_bytes_per_shard: u64,
    /// Largest frame accepted.
    pub frame_bytes_max: usize,
    /// Connections accepted per shard; more are closed at once.
    pub connections_max_per_shard: usize,
    /// Request bytes a connection may have in flight before the broker stops reading it.
    pub in_flight_bytes_per_connection: usize,
    /// Requests a connection may have in flight.
    pub in_flight_requests_per_connection: usize,
    /// Defaults for every partition's log (topic configs override them).
    pub log: LogConfig,
    /// How often retention runs, in milliseconds.
    pub retention_check_interval_ms: u64,
    /// How often appended bytes still in a staging buffer are handed to the device
    /// (written, not synced), in milliseconds: the bound on how long acks=1 data stays
    /// only in memory.
    pub write_out_interval_ms: u64,
    /// Longest time appended bytes go without `fdatasync` when no acks=all produce
    /// syncs them, in milliseconds (0: never, as before): the bound on how long acks=0/1
    /// data can be lost to a power failure, and what keeps every sync (a segment seal
    /// among them) short on disks that hold writes in a large volatile cache.
    pub flush_interval_ms: u64,
    /// A partition with this many appended bytes not yet synced is synced at once
    /// (checked every 100 ms or `flush_interval_ms`, whichever is shorter).
    pub flush_bytes: u64,
    /// Bytes of writes a shard's partitions may have in flight beyond each one's own
    /// `writes_in_flight_max` window, lent to those that need more (0: none): appends
    /// wait for a slow disk only once it is used up.
    pub write_window_bytes_per_shard: usize,
    /// A shard held up this long (a task that does not yield, a blocking call, the CPU
    /// taken away), or a disk operation that keeps its caller waiting this long, is
    /// logged with where the time went, in milliseconds (0: never).
    pub stall_warn_ms: u64,
    /// Partitions of `__consumer_offsets` when the broker creates it (changing it later
    /// has no effect: the topic keeps its partitions).
    pub offsets_topic_partitions: u32,
    /// How long superseded commits stay in `__consumer_offsets` (its `retention.ms` when
    /// the broker creates it); live positions are written again before they would go.
    pub offsets_retention_ms: u64,
    /// How long an empty group's first rebalance waits for more members to join, in ms.
    pub group_initial_rebalance_delay_ms: u32,
    /// Shortest session timeout a group member may ask for, in ms.
    pub group_session_timeout_min_ms: u32,
    /// Longest session timeout a group member may ask for, in ms.
    pub group_session_timeout_max_ms: u32,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("flumen-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 9292)),
            shard_port_base: 0,
            advertised_host: None,
            broker_id: 0,
            shards: crate::shard::available_cpus().len().max(1),
            io_memory_bytes: 1 << 20,
            cache_bytes_per_shard: 256 << 20,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            connections_max_per_shard: 10_000,
            in_flight_bytes_per_connection: 64 << 20,
            in_flight_requests_per_connection: 64,
            log: LogConfig::default(),
            retention_check_interval_ms: 60_000,
            write_out_interval_ms: 10,
            flush_interval_ms: 1_000,
            flush_bytes: 4 << 20,
            write_window_bytes_per_shard: 128 << 20,
            stall_warn_ms: 50,
            offsets_topic_partitions: crate::group::OFFSETS_PARTITIONS_DEFAULT,
            offsets_retention_ms: 7 * 24 * 3_600_000,
            group_initial_rebalance_delay_ms: 3_000,
            group_session_timeout_min_ms: 1_000,
            group_session_timeout_max_ms: 300_000,
        }
    }
}

impl BrokerConfig {
    /// The port of shard 0, the others' following it: `shard_port_base`, else the
    /// shared port + 1; `None` when both are 0 (ephemeral ports).
    pub(crate) fn first_shard_port(&self) -> Option<u64> {
        match (self.shard_port_base, self.listen.port()) {
            (0, 0) => None,
            (0, port) => Some(u64::from(port) + 1),
            (base, _) => Some(u64::from(base)),
        }
    }

    /// Checks the options against each other.
    pub fn validate(&self) -> Result<(), String> {
        if self.offsets_retention_ms < 1_000 || self.offsets_retention_ms > i64::MAX as u64 {
            return Err("offsets_retention_ms must be between 1000 and 2^63 - 1".into());
        }
        if self.io_memory_bytes.checked_mul(self.shards).is_none() {
            return Err("io_memory_bytes times shards overflows".into());
        }
        // Shard ports: within range, and not the shared port (the listeners reuse
        // ports, so a collision would not fail; it would spread clients across shards).
        let shards = self.shards as u64;
        if let Some(first) = self.first_shard_port() {
            if first + shards - 1 > 65_535 {
                return Err(format!(
                    "the shard ports {first}..{} pass 65535: lower the port or shard_port_base",
                    first + shards - 1
                ));
            }
            let shared = u64::from(self.listen.port());
            if (first..first + shards).contains(&shared) {
                return Err(format!(
                    "the listen port {shared} is one of the shard ports {first}..{}",
                    first + shards - 1
                ));
            }
        }
        if let Some(host) = &self.advertised_host {
            let with_port = host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err();
            if host.is_empty() || host.contains(['/', ' ']) || with_port {
                return Err(format!(
                    "advertised_host {host:?} must be a host name or address, without a port"
                ));
            }
        }
        if self.group_session_timeout_min_ms > self.group_session_timeout_max_ms {
            return Err("group_session_timeout_min_ms exceeds group_session_timeout_max_ms".into());
        }
        if self.offsets_topic_partitions == 0 || self.offsets_topic_partitions > 1024 {
            return Err("offsets_topic_partitions must be between 1 and 1024".into());
        }
        if self.shards == 0 || self.shards > 1024 {
            return Err("shards must be between 1 and 1024".into());
        }
        if self.frame_bytes_max < 1 << 16 {
            return Err("frame_bytes_max must be at least 64 KiB".into());
        }
        if self.frame_bytes_max < self.log.batch_bytes_max + (64 << 10) {
            return Err("frame_bytes_max must exceed the largest batch by 64 KiB".into());
        }
        if self.write_window_bytes_per_shard != 0
            && self.write_window_bytes_per_shard < self.log.write_buffer_bytes
        {
            return Err(
                "write_window_bytes_per_shard must be 0 or at least [log] write_buffer_bytes"
                    .into(),
            );
        }
        if self.in_flight_bytes_per_connection < self.frame_bytes_max {
            return Err("in_flight_bytes_per_connection must hold one largest frame".into());
        }
        if self.in_flight_requests_per_connection == 0 || self.connections_max_per_shard == 0 {
            return Err("connection limits must be positive".into());
        }
        self.log.validate().map_err(|error| error.to_string())
    }

    /// The host announced to clients.
    pub fn advertised_host(&self) -> String {
        self.advertised_host
            .clone()
            .unwrap_or_else(|| self.listen.ip().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(BrokerConfig::default().validate(), Ok(()));
    }

    #[test]
    fn a_shared_write_window_smaller_than_one_buffer_is_refused() {
        let mut config = BrokerConfig::default();
        config.write_window_bytes_per_shard = config.log.write_buffer_bytes - 4096;
        let error = config.validate().unwrap_err();
        assert!(error.contains("write_window_bytes_per_shard"), "{error}");
        config.write_window_bytes_per_shard = 0;
        assert_eq!(config.validate(), Ok(()), "0 lends nothing");
        config.write_window_bytes_per_shard = config.log.write_buffer_bytes;
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn shard_ports_stay_in_range_and_off_the_shared_port() {
        let with = |listen: &str, base: u16, shards: usize| {
            let config = BrokerConfig {
                listen: listen.parse().unwrap(),
                shard_port_base: base,
                shards,
                ..BrokerConfig::default()
            };
            config.validate()
        };
        assert_eq!(with("127.0.0.1:9292", 0, 8), Ok(()));
        assert_eq!(with("127.0.0.1:0", 0, 8), Ok(()), "ephemeral ports");
        assert!(with("127.0.0.1:65535", 0, 1).unwrap_err().contains("65535"));
        assert!(with("127.0.0.1:9292", 65_530, 8)
            .unwrap_err()
            .contains("65535"));
        assert!(with("127.0.0.1:9292", 9_290, 4)
            .unwrap_err()
            .contains("9292"));
        assert_eq!(with("127.0.0.1:9292", 9_300, 4), Ok(()));
    }

    #[test]
    fn sizes_that_overflow_and_hosts_with_ports_are_refused() {
        let config = BrokerConfig {
            io_memory_bytes: usize::MAX / 2,
            shards: 4,
            ..BrokerConfig::default()
        };
        assert!(config.validate().unwrap_err().contains("overflows"));
        let config = BrokerConfig {
            offsets_retention_ms: u64::MAX,
            ..BrokerConfig::default()
        };
        assert!(config.validate().is_err());
        for (host, valid) in [
            ("broker-1.example", true),
            ("10.0.0.7", true),
            ("::1", true),
            ("broker-1.example:9292", false),
            ("10.0.0.7:9292", false),
            ("", false),
        ] {
            let config = BrokerConfig {
                advertised_host: Some(host.into()),
                ..BrokerConfig::default()
            };
            assert_eq!(config.validate().is_ok(), valid, "{host:?}");
        }
    }
}
