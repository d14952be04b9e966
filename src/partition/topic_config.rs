//! Topic configuration: the keys a topic may override, their validation, and how they
//! map onto a partition's [`LogConfig`].
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `retention.ms` | delete segments older than this; `-1` keeps them forever | broker default (7 days) |
//! | `retention.bytes` | delete oldest segments while the partition is larger; `-1` unlimited | `-1` |
//! | `segment.bytes` | roll segments at this size (1 MiB – 4 GiB) | 1 GiB |
//! | `segment.ms` | roll segments at this age | 7 days |
//! | `max.message.bytes` | largest batch accepted (≤ `segment.bytes`) | 4 MiB |
//! | `min.insync.replicas` | replicas that must have a batch for `acks=all` (at most the replication factor, checked by the catalog) | 1 |
//! | `cleanup.policy` | `delete` (compaction is not supported yet) | `delete` |

use std::collections::BTreeMap;

use flumen_protocol::wire::BATCH_BYTES_MAX;

use crate::storage::LogConfig;

/// Every key a topic may set, in display order.
pub const TOPIC_CONFIG_KEYS: [&str; 7] = [
    "cleanup.policy",
    "max.message.bytes",
    "min.insync.replicas",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.ms",
];

/// A topic's overrides of the broker defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicConfig {
    overrides: BTreeMap<String, String>,
}

/// Why a configuration entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config {key}={value}: {reason}")]
pub struct ConfigError {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// Why.
    pub reason: String,
}

impl TopicConfig {
    /// Overrides from `(key, value)` pairs, each validated; the result is also checked as
    /// a whole.
    pub fn from_entries<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        for (key, value) in entries {
            config.set(key, value)?;
        }
        config.check_consistency()?;
        Ok(config)
    }

    /// Sets one key (an empty value removes the override).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        if value.is_empty() {
            if !TOPIC_CONFIG_KEYS.contains(&key) {
                return Err(error(key, value, "unknown key"));
            }
            self.overrides.remove(key);
            return Ok(());
        }
        validate(key, value)?;
        self.overrides.insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    /// Applies changes as one unit: all or none.
    pub fn with_changes<'a>(
        &self,
        changes: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ConfigError> {
        let mut changed = self.clone();
        for (key, value) in changes {
            changed.set(key, value)?;
        }
        changed.check_consistency()?;
        Ok(changed)
    }

    fn check_consistency(&self) -> Result<(), ConfigError> {
        let config = self.log_config(&LogConfig::default());
        if (config.batch_bytes_max as u64) > config.segment_bytes_max {
            let value = config.batch_bytes_max.to_string();
            return Err(error(
                "max.message.bytes",
                &value,
                "must not exceed segment.bytes",
            ));
        }
        Ok(())
    }

    /// The overrides, sorted by key.
    pub fn overrides(&self) -> impl Iterator<Item = (&str, &str)> {
        self.overrides
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
    }

    /// The log configuration: `defaults` with this topic's overrides applied.
    pub fn log_config(&self, defaults: &LogConfig) -> LogConfig {
        let mut config = defaults.clone();
        for (key, value) in &self.overrides {
            let number = value.parse::<i64>().ok();
            match (key.as_str(), number) {
                ("retention.ms", Some(ms)) => config.retention_ms = (ms >= 0).then_some(ms),
                ("retention.bytes", Some(bytes)) => {
                    config.retention_bytes = (bytes >= 0).then_some(bytes as u64)
                }
                ("segment.bytes", Some(bytes)) => config.segment_bytes_max = bytes as u64,
                ("segment.ms", Some(ms)) => config.segment_age_ms_max = Some(ms),
                ("max.message.bytes", Some(bytes)) => config.batch_bytes_max = bytes as usize,
                _ => {}
            }
        }
        // Staging must hold the largest batch in the in-flight window (see LogConfig).
        let buffers = config.batch_bytes_max.div_ceil(config.write_buffer_bytes) + 2;
        config.writes_in_flight_max = config.writes_in_flight_max.max(buffers);
        config
    }

    /// `min.insync.replicas`.
    pub fn min_insync_replicas(&self) -> u32 {
        self.overrides
            .get("min.insync.replicas")
            .and_then(|value| value.parse().ok())
            .unwrap_or(1)
    }

    /// Every key with its effective value and whether it is the default.
    pub fn describe(&self, defaults: &LogConfig) -> Vec<(&'static str, String, bool)> {
        let effective = self.log_config(defaults);
        TOPIC_CONFIG_KEYS
            .iter()
            .map(|&key| {
                let value = match key {
                    "cleanup.policy" => "delete".to_owned(),
                    "max.message.bytes" => effective.batch_bytes_max.to_string(),
                    "min.insync.replicas" => self.min_insync_replicas().to_string(),
                    "retention.bytes" => optional(effective.retention_bytes.map(|v| v as i64)),
                    "retention.ms" => optional(effective.retention_ms),
                    "segment.bytes" => effective.segment_bytes_max.to_string(),
                    _ => optional(effective.segment_age_ms_max),
                };
                (key, value, !self.overrides.contains_key(key))
            })
            .collect()
    }
}

fn optional(value: Option<i64>) -> String {
    value.map_or("-1".to_owned(), |value| value.to_string())
}

fn error(key: &str, value: &str, reason: &str) -> ConfigError {
    ConfigError {
        key: key.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Checks one entry on its own (also the broker's `[log]` defaults for these keys).
pub(crate) fn validate(key: &str, value: &str) -> Result<(), ConfigError> {
    let number = || {
        value
            .parse::<i64>()
            .map_err(|_| error(key, value, "not an integer"))
    };
    let in_range = |low: i64, high: i64| -> Result<(), ConfigError> {
        let parsed = number()?;
        if parsed < low || parsed > high {
            return Err(error(
                key,
                value,
                &format!("must be between {low} and {high}"),
            ));
        }
        Ok(())
    };
    match key {
        "retention.ms" | "retention.bytes" => in_range(-1, i64::MAX),
        "segment.bytes" => in_range(1 << 20, i64::from(u32::MAX)),
        "segment.ms" => in_range(1, i64::MAX),
        "max.message.bytes" => in_range(1024, BATCH_BYTES_MAX as i64),
        "min.insync.replicas" => in_range(1, 255),
        "cleanup.policy" if value == "delete" => Ok(()),
        "cleanup.policy" if value == "compact" => {
            Err(error(key, value, "compaction is not supported yet"))
        }
        "cleanup.policy" => Err(error(key, value, "must be delete")),
        _ => Err(error(key, value, "unknown key")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_map_onto_the_log_config() {
        let config = TopicConfig::from_entries([
            ("retention.ms", "60000"),
            ("retention.bytes", "-1"),
            ("segment.bytes", "2097152"),
            ("max.message.bytes", "1048576"),
        ])
        .unwrap();
        let log = config.log_config(&LogConfig::default());
        assert_eq!(log.retention_ms, Some(60_000));
        assert_eq!(log.retention_bytes, None);
        assert_eq!(log.segment_bytes_max, 2 << 20);
        assert_eq!(log.batch_bytes_max, 1 << 20);
        log.validate().unwrap();
        let described = config.describe(&LogConfig::default());
        assert!(described.contains(&("retention.ms", "60000".into(), false)));
        assert!(described.contains(&("cleanup.policy", "delete".into(), true)));
    }

    #[test]
    fn bad_entries_are_refused_with_a_reason() {
        for (key, value) in [
            ("retention.ms", "soon"),
            ("segment.bytes", "10"),
            ("cleanup.policy", "compact"),
            ("min.insync.replicas", "0"),
            ("colour", "blue"),
        ] {
            let error = TopicConfig::from_entries([(key, value)]).unwrap_err();
            assert_eq!(error.key, key);
        }
        let too_big = TopicConfig::from_entries([
            ("segment.bytes", "1048576"),
            ("max.message.bytes", "4194304"),
        ]);
        assert!(too_big.is_err());
    }

    #[test]
    fn changes_apply_all_or_nothing_and_empty_values_reset() {
        let config = TopicConfig::from_entries([("retention.ms", "1000")]).unwrap();
        assert!(config
            .with_changes([("retention.ms", "5"), ("bad", "1")])
            .is_err());
        let reset = config.with_changes([("retention.ms", "")]).unwrap();
        assert_eq!(reset.overrides().count(), 0);
    }
}
