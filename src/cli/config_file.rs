//! `flumen.toml`: every broker option, all optional; command-line flags win.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::server::BrokerConfig;

/// The configuration file's contents. Field names match `docs/OPERATIONS.md`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConfigFile {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub shard_port_base: Option<u16>,
    pub advertised_host: Option<String>,
    pub broker_id: Option<u32>,
    pub shards: Option<usize>,
    pub io_memory_bytes: Option<usize>,
    pub cache_bytes_per_shard: Option<u64>,
    pub frame_bytes_max: Option<usize>,
    pub connections_max_per_shard: Option<usize>,
    pub in_flight_bytes_per_connection: Option<usize>,
    pub in_flight_requests_per_connection: Option<usize>,
    pub retention_check_interval_ms: Option<u64>,
    pub write_out_interval_ms: Option<u64>,
    pub flush_interval_ms: Option<u64>,
    pub flush_bytes: Option<u64>,
    pub write_window_bytes_per_shard: Option<usize>,
    pub stall_warn_ms: Option<u64>,
    pub offsets_topic_partitions: Option<u32>,
    pub offsets_retention_ms: Option<u64>,
    pub group_initial_rebalance_delay_ms: Option<u32>,
    pub group_session_timeout_min_ms: Option<u32>,
    pub group_session_timeout_max_ms: Option<u32>,
    pub log: Option<LogDefaults>,
}

/// Defaults for every partition's log.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogDefaults {
    pub segment_bytes: Option<u64>,
    pub segment_ms: Option<i64>,
    pub retention_bytes: Option<i64>,
    pub retention_ms: Option<i64>,
    pub max_message_bytes: Option<usize>,
    pub index_interval_bytes: Option<u64>,
    pub write_buffer_bytes: Option<usize>,
    pub writes_in_flight_max: Option<usize>,
    pub preallocate_bytes: Option<u64>,
    pub recycle_segments: Option<bool>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        toml::from_str(&text).map_err(|error| format!("invalid {}: {error}", path.display()))
    }

    /// Applies the file's settings to `config`; a value out of its range is an error.
    pub fn apply(self, config: &mut BrokerConfig) -> Result<(), String> {
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(value) = self.$field { config.$field = value; })* };
        }
        set!(
            data_dir,
            listen,
            shard_port_base,
            broker_id,
            shards,
            io_memory_bytes
        );
        set!(
            cache_bytes_per_shard,
            frame_bytes_max,
            connections_max_per_shard
        );
        set!(
            in_flight_bytes_per_connection,
            in_flight_requests_per_connection
        );
        set!(
            retention_check_interval_ms,
            write_out_interval_ms,
            flush_interval_ms,
            flush_bytes,
            write_window_bytes_per_shard,
            stall_warn_ms
        );
        if let Some(partitions) = self.offsets_topic_partitions {
            config.offsets_topic_partitions = partitions;
        }
        set!(offsets_retention_ms);
        set!(
            group_initial_rebalance_delay_ms,
            group_session_timeout_min_ms,
            group_session_timeout_max_ms
        );
        if self.advertised_host.is_some() {
            config.advertised_host = self.advertised_host;
        }
        if let Some(log) = self.log {
            log.apply(&mut config.log)?;
        }
        Ok(())
    }

    /// The effective configuration, as a file.
    pub fn from_config(config: &BrokerConfig) -> Self {
        let log = &config.log;
        Self {
            data_dir: Some(config.data_dir.clone()),
            listen: Some(config.listen),
            shard_port_base: Some(config.shard_port_base),
            advertised_host: config.advertised_host.clone(),
            broker_id: Some(config.broker_id),
            shards: Some(config.shards),
            io_memory_bytes: Some(config.io_memory_bytes),
            cache_bytes_per_shard: Some(config.cache_bytes_per_shard),
            frame_bytes_max: Some(config.frame_bytes_max),
            connections_max_per_shard: Some(config.connections_max_per_shard),
            in_flight_bytes_per_connection: Some(config.in_flight_bytes_per_connection),
            in_flight_requests_per_connection: Some(config.in_flight_requests_per_connection),
            retention_check_interval_ms: Some(config.retention_check_interval_ms),
            write_out_interval_ms: Some(config.write_out_interval_ms),
            flush_interval_ms: Some(config.flush_interval_ms),
            flush_bytes: Some(config.flush_bytes),
            write_window_bytes_per_shard: Some(config.write_window_bytes_per_shard),
            stall_warn_ms: Some(config.stall_warn_ms),
            offsets_topic_partitions: Some(config.offsets_topic_partitions),
            offsets_retention_ms: Some(config.offsets_retention_ms),
            group_initial_rebalance_delay_ms: Some(config.group_initial_rebalance_delay_ms),
            group_session_timeout_min_ms: Some(config.group_session_timeout_min_ms),
            group_session_timeout_max_ms: Some(config.group_session_timeout_max_ms),
            log: Some(LogDefaults {
                segment_bytes: Some(log.segment_bytes_max),
                segment_ms: Some(log.segment_age_ms_max.unwrap_or(-1)),
                retention_bytes: Some(log.retention_bytes.map_or(-1, |bytes| bytes as i64)),
                retention_ms: Some(log.retention_ms.unwrap_or(-1)),
                max_message_bytes: Some(log.batch_bytes_max),
                index_interval_bytes: Some(log.index_interval_bytes),
                write_buffer_bytes: Some(log.write_buffer_bytes),
                writes_in_flight_max: Some(log.writes_in_flight_max),
                preallocate_bytes: Some(log.preallocate_bytes),
                recycle_segments: Some(log.recycle_segments),
            }),
        }
    }
}

impl LogDefaults {
    fn apply(self, log: &mut crate::storage::LogConfig) -> Result<(), String> {
        // The topic keys' own checks (docs/OPERATIONS.md), with -1 for "none" where the
        // setting is optional.
        let check = |key: &str, value: i64| {
            let topic_key = key.replace('_', ".");
            crate::partition::topic_config::validate(&topic_key, &value.to_string())
                .map_err(|error| format!("[log] {key} = {value}: {}", error.reason))
        };
        let optional = |key: &str, value: i64| match value {
            -1 => Ok(None),
            value => check(key, value).map(|()| Some(value)),
        };
        let whole = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        if let Some(bytes) = self.segment_bytes {
            check("segment_bytes", whole(bytes))?;
            log.segment_bytes_max = bytes;
        }
        if let Some(ms) = self.segment_ms {
            log.segment_age_ms_max = optional("segment_ms", ms)?;
        }
        if let Some(bytes) = self.retention_bytes {
            log.retention_bytes = optional("retention_bytes", bytes)?.map(|bytes| bytes as u64);
        }
        if let Some(ms) = self.retention_ms {
            log.retention_ms = optional("retention_ms", ms)?;
        }
        if let Some(bytes) = self.max_message_bytes {
            check("max_message_bytes", whole(bytes as u64))?;
            log.batch_bytes_max = bytes;
        }
        if let Some(bytes) = self.index_interval_bytes {
            log.index_interval_bytes = bytes;
        }
        if let Some(bytes) = self.write_buffer_bytes {
            log.write_buffer_bytes = bytes;
        }
        if let Some(count) = self.writes_in_flight_max {
            log.writes_in_flight_max = count;
        }
        if let Some(bytes) = self.preallocate_bytes {
            log.preallocate_bytes = bytes;
        }
        if let Some(recycle) = self.recycle_segments {
            log.recycle_segments = recycle;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(text: &str) -> Result<BrokerConfig, String> {
        let file: ConfigFile = toml::from_str(text).map_err(|error| error.to_string())?;
        let mut config = BrokerConfig::default();
        file.apply(&mut config).map(|()| config)
    }

    #[test]
    fn log_defaults_keep_the_topic_keys_ranges() {
        let config =
            applied("[log]\nretention_ms = -1\nretention_bytes = 0\nsegment_ms = 1\n").unwrap();
        assert_eq!(config.log.retention_ms, None);
        assert_eq!(config.log.retention_bytes, Some(0));
        assert_eq!(config.log.segment_age_ms_max, Some(1));
        for (text, key) in [
            ("[log]\nretention_ms = -5\n", "retention_ms"),
            ("[log]\nretention_bytes = -2\n", "retention_bytes"),
            ("[log]\nsegment_ms = 0\n", "segment_ms"),
            ("[log]\nmax_message_bytes = 100\n", "max_message_bytes"),
            ("[log]\nsegment_bytes = 4096\n", "segment_bytes"),
        ] {
            let error = applied(text).unwrap_err();
            assert!(error.contains(key), "{text}: {error}");
        }
    }
}
