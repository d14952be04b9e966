//! The topic catalog and its file.
//!
//! File format (`topics.meta`, UTF-8 text, replaced atomically): a first line
//! `flumen-topics v1`, then one line per topic
//! `topic <name> <partitions> <internal 0|1> [<key>=<value> ...]`, then a last line
//! `crc <8 hex digits>`: the CRC-32 of everything before that line. Names and values
//! contain no whitespace (both are validated), so the format needs no quoting.

use std::collections::BTreeMap;
use std::path::Path;

use crate::partition::{ConfigError, TopicConfig};
use crate::storage::{read_small_file, write_file_atomically, StorageError};

/// The catalog's file name in the data directory.
pub const CATALOG_FILE: &str = "topics.meta";
const HEADER: &str = "flumen-topics v1";
/// Most partitions one topic may have.
pub const PARTITIONS_MAX: u32 = 10_000;
/// Prefix of internal topic names, reserved for the broker.
pub const INTERNAL_PREFIX: &str = "__";

/// One topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicEntry {
    /// Name.
    pub name: String,
    /// Partition count.
    pub partitions: u32,
    /// Configuration overrides.
    pub config: TopicConfig,
    /// Created by the broker for its own use (`__consumer_offsets`).
    pub internal: bool,
}

/// Why a catalog change or load failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A topic with this name exists.
    #[error("topic {0} already exists")]
    TopicExists(String),
    /// No such topic.
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    /// The name is not a valid topic name.
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// The name is reserved for internal topics.
    #[error("topic name {0} is reserved for internal topics")]
    ReservedName(String),
    /// The partition count is out of range.
    #[error("invalid partition count {0}: must be 1..={PARTITIONS_MAX}")]
    InvalidPartitions(u32),
    /// Only a replication factor of 1 exists on a single broker.
    #[error("invalid replication factor {0}: this broker has no replicas yet, use 1")]
    InvalidReplicationFactor(u16),
    /// A configuration entry is invalid.
    #[error(transparent)]
    InvalidConfig(#[from] ConfigError),
    /// The catalog file could not be read or written.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The catalog file is damaged.
    #[error("damaged catalog file {path}: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// Checks a topic name: 1–249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), CatalogError> {
    let invalid = |reason| CatalogError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() || name.len() > 249 {
        return Err(invalid("must be 1 to 249 characters"));
    }
    if name.starts_with('.') {
        return Err(invalid(
            "must not start with '.' (reserved for the broker's own directories)",
        ));
    }
    if name.ends_with(".meta") || name.ends_with(".tmp") {
        return Err(invalid(
            "must not end in .meta or .tmp (reserved for the broker's files)",
        ));
    }
    if !name
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
    {
        return Err(invalid(
            "may only contain ASCII letters, digits, '.', '_' and '-'",
        ));
    }
    Ok(())
}

/// Every topic of the broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    topics: BTreeMap<String, TopicEntry>,
}

impl Catalog {
    /// The topic named `name`.
    pub fn topic(&self, name: &str) -> Option<&TopicEntry> {
        self.topics.get(name)
    }

    /// All topics, by name.
    pub fn topics(&self) -> impl Iterator<Item = &TopicEntry> {
        self.topics.values()
    }

    /// A copy with a new user topic, validated.
    pub fn with_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u16,
        configs: &[(String, String)],
    ) -> Result<Self, CatalogError> {
        validate_topic_name(name)?;
        if name.starts_with(INTERNAL_PREFIX) {
            return Err(CatalogError::ReservedName(name.to_owned()));
        }
        self.with_entry(name, partitions, replication_factor, configs, false)
    }

    /// A copy with an internal topic (the broker's own, such as `__consumer_offsets`).
    pub fn with_internal_topic(
        &self,
        name: &str,
        partitions: u32,
        configs: &[(String, String)],
    ) -> Result<Self, CatalogError> {
        validate_topic_name(name)?;
        self.with_entry(name, partitions, 1, configs, true)
    }

    fn with_entry(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u16,
        configs: &[(String, String)],
        internal: bool,
    ) -> Result<Self, CatalogError> {
        if self.topics.contains_key(name) {
            return Err(CatalogError::TopicExists(name.to_owned()));
        }
        if partitions == 0 || partitions > PARTITIONS_MAX {
            return Err(CatalogError::InvalidPartitions(partitions));
        }
        if replication_factor != 1 {
            return Err(CatalogError::InvalidReplicationFactor(replication_factor));
        }
        let config = TopicConfig::from_entries(
            configs
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_str())),
        )?;
        check_in_sync_replicas(&config, replication_factor)?;
        let mut catalog = self.clone();
        catalog.topics.insert(
            name.to_owned(),
            TopicEntry {
                name: name.to_owned(),
                partitions,
                config,
                internal,
            },
        );
        Ok(catalog)
    }

    /// A copy without the topic `name`. Internal topics cannot be deleted.
    pub fn without_topic(&self, name: &str) -> Result<Self, CatalogError> {
        match self.topics.get(name) {
            None => Err(CatalogError::UnknownTopic(name.to_owned())),
            Some(entry) if entry.internal => Err(CatalogError::ReservedName(name.to_owned())),
            Some(_) => {
                let mut catalog = self.clone();
                catalog.topics.remove(name);
                Ok(catalog)
            }
        }
    }

    /// A copy with the topic's configuration changed (all changes or none).
    pub fn with_config_changes(
        &self,
        name: &str,
        changes: &[(String, String)],
    ) -> Result<Self, CatalogError> {
        let entry = self
            .topics
            .get(name)
            .ok_or_else(|| CatalogError::UnknownTopic(name.to_owned()))?;
        if entry.internal {
            // The broker's own topics keep the configuration it gave them.
            return Err(CatalogError::ReservedName(name.to_owned()));
        }
        let config = entry.config.with_changes(
            changes
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_str())),
        )?;
        check_in_sync_replicas(&config, 1)?;
        let mut catalog = self.clone();
        catalog.topics.get_mut(name).expect("checked").config = config;
        Ok(catalog)
    }

    /// Reads the catalog of `data_dir`; an absent file is an empty catalog.
    pub async fn load(data_dir: &Path) -> Result<Self, CatalogError> {
        let path = data_dir.join(CATALOG_FILE);
        let bytes = read_small_file(&path)
            .await
            .map_err(|error| StorageError::io("reading", &path, error))?;
        match bytes {
            None => Ok(Self::default()),
            Some(bytes) => Self::decode(&bytes).map_err(|reason| CatalogError::Corrupt {
                path: path.display().to_string(),
                reason,
            }),
        }
    }

    /// Writes the catalog durably (atomic replace).
    pub async fn persist(&self, data_dir: &Path) -> Result<(), CatalogError> {
        let path = data_dir.join(CATALOG_FILE);
        write_file_atomically(&path, self.encode().as_bytes())
            .await
            .map_err(|error| StorageError::io("writing", &path, error))?;
        Ok(())
    }

    fn encode(&self) -> String {
        let mut text = format!("{HEADER}\n");
        for entry in self.topics.values() {
            text.push_str(&format!(
                "topic {} {} {}",
                entry.name,
                entry.partitions,
                u8::from(entry.internal)
            ));
            for (key, value) in entry.config.overrides() {
                text.push_str(&format!(" {key}={value}"));
            }
            text.push('\n');
        }
        let crc = crc32fast::hash(text.as_bytes());
        text.push_str(&format!("crc {crc:08x}\n"));
        text
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
        let body_end = text.trim_end().rfind('\n').ok_or("no crc line")? + 1;
        let (body, crc_line) = text.split_at(body_end);
        let stored = crc_line
            .trim()
            .strip_prefix("crc ")
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
            .ok_or("bad crc line")?;
        if crc32fast::hash(body.as_bytes()) != stored {
            return Err("CRC mismatch".into());
        }
        let mut lines = body.lines();
        if lines.next() != Some(HEADER) {
            return Err("unknown header".into());
        }
        let mut catalog = Self::default();
        for line in lines {
            let entry = decode_topic(line)?;
            catalog.topics.insert(entry.name.clone(), entry);
        }
        Ok(catalog)
    }
}

fn decode_topic(line: &str) -> Result<TopicEntry, String> {
    let mut words = line.split(' ');
    if words.next() != Some("topic") {
        return Err(format!("bad line {line:?}"));
    }
    let name = words.next().ok_or("missing name")?.to_owned();
    validate_topic_name(&name).map_err(|error| error.to_string())?;
    let partitions = words
        .next()
        .and_then(|word| word.parse().ok())
        .ok_or("bad partition count")?;
    let internal = words.next() == Some("1");
    let entries: Vec<(&str, &str)> = words
        .map(|word| word.split_once('=').ok_or("bad config entry"))
        .collect::<Result<_, _>>()?;
    let config = TopicConfig::from_entries(entries).map_err(|error| error.to_string())?;
    Ok(TopicEntry {
        name,
        partitions,
        config,
        internal,
    })
}

/// A topic cannot ask for more in-sync replicas than it has replicas: with one (the
/// only replication factor), `min.insync.replicas` above 1 would refuse every acks=all
/// produce. (A topic stored with such a value by an older broker still loads, and its
/// acks=all produces get `NotEnoughReplicas`.)
fn check_in_sync_replicas(
    config: &TopicConfig,
    replication_factor: u16,
) -> Result<(), CatalogError> {
    let required = config.min_insync_replicas();
    if required > u32::from(replication_factor) {
        return Err(CatalogError::InvalidConfig(ConfigError {
            key: "min.insync.replicas".into(),
            value: required.to_string(),
            reason: format!(
                "exceeds the replication factor {replication_factor}: acks=all could never be satisfied"
            ),
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_validated() {
        let catalog = Catalog::default();
        let configs = vec![("retention.ms".to_owned(), "1000".to_owned())];
        let catalog = catalog.with_topic("orders", 4, 1, &configs).unwrap();
        assert!(matches!(
            catalog.with_topic("orders", 1, 1, &[]),
            Err(CatalogError::TopicExists(_))
        ));
        assert!(matches!(
            catalog.with_topic("bad name", 1, 1, &[]),
            Err(CatalogError::InvalidName { .. })
        ));
        for reserved in ["..", ".trash", "topics.meta", "topics.meta.tmp"] {
            assert!(matches!(
                catalog.with_topic(reserved, 1, 1, &[]),
                Err(CatalogError::InvalidName { .. })
            ));
        }
        assert!(matches!(
            catalog.with_topic(&"x".repeat(250), 1, 1, &[]),
            Err(CatalogError::InvalidName { .. })
        ));
        assert!(matches!(
            catalog.with_topic("__consumer_offsets", 1, 1, &[]),
            Err(CatalogError::ReservedName(_))
        ));
        assert!(matches!(
            catalog.with_topic("t", 0, 1, &[]),
            Err(CatalogError::InvalidPartitions(0))
        ));
        assert!(matches!(
            catalog.with_topic("t", 1, 3, &[]),
            Err(CatalogError::InvalidReplicationFactor(3))
        ));
        let bad_config = vec![("retention.ms".to_owned(), "x".to_owned())];
        assert!(matches!(
            catalog.with_topic("t", 1, 1, &bad_config),
            Err(CatalogError::InvalidConfig(_))
        ));
        let internal = catalog
            .with_internal_topic("__consumer_offsets", 8, &[])
            .unwrap();
        assert!(matches!(
            internal.without_topic("__consumer_offsets"),
            Err(CatalogError::ReservedName(_))
        ));
        assert!(matches!(
            internal.without_topic("nope"),
            Err(CatalogError::UnknownTopic(_))
        ));
        assert_eq!(
            internal.without_topic("orders").unwrap().topics().count(),
            1
        );
    }

    #[test]
    fn the_file_format_round_trips_and_detects_damage() {
        let configs = vec![
            ("retention.ms".to_owned(), "1000".to_owned()),
            ("segment.bytes".to_owned(), "8388608".to_owned()),
        ];
        let catalog = Catalog::default()
            .with_topic("orders", 4, 1, &configs)
            .unwrap()
            .with_topic("a.b-c_d", 1, 1, &[])
            .unwrap()
            .with_internal_topic("__consumer_offsets", 8, &[])
            .unwrap();
        let text = catalog.encode();
        assert_eq!(Catalog::decode(text.as_bytes()).unwrap(), catalog);
        let damaged = text.replace("orders 4", "orders 5");
        assert!(Catalog::decode(damaged.as_bytes()).is_err());
        assert!(Catalog::decode(b"garbage").is_err());
        let changed = catalog
            .with_config_changes("orders", &[("retention.ms".into(), "".into())])
            .unwrap();
        assert_eq!(
            changed.topic("orders").unwrap().config.overrides().count(),
            1
        );
    }
}
