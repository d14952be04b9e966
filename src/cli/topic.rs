//! `flumen topic`: create, list, describe, alter, delete.

use std::process::ExitCode;

use clap::Subcommand;
use flumen_protocol::wire::messages::LATEST_TIMESTAMP;

use super::{connect, key_value};

#[derive(Debug, Subcommand)]
pub(super) enum TopicCommand {
    /// Create a topic.
    Create {
        /// Topic name.
        name: String,
        /// Number of partitions.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Configuration override, key=value (repeatable).
        #[arg(long = "config", value_parser = key_value)]
        configs: Vec<(String, String)>,
    },
    /// List topics.
    List,
    /// Show partitions (owning shard, log start and end offsets, size) and configuration.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Change configuration (an empty value resets a key).
    Alter {
        /// Topic name.
        name: String,
        /// key=value (repeatable).
        #[arg(long = "config", value_parser = key_value, required = true)]
        configs: Vec<(String, String)>,
    },
    /// Delete a topic and its data.
    Delete {
        /// Topic name.
        name: String,
    },
}

fn pairs(configs: &[(String, String)]) -> Vec<(&str, &str)> {
    configs
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect()
}

pub(super) fn run(bootstrap: &str, command: TopicCommand) -> Result<ExitCode, String> {
    let mut client = connect(bootstrap)?;
    match command {
        TopicCommand::Create {
            name,
            partitions,
            configs,
        } => {
            client
                .create_topic(&name, partitions, &pairs(&configs))
                .map_err(|error| format!("cannot create topic {name}: {error}"))?;
            let noun = if partitions == 1 {
                "partition"
            } else {
                "partitions"
            };
            println!("created topic {name} with {partitions} {noun}");
        }
        TopicCommand::List => {
            let metadata = client.metadata(None).map_err(|error| error.to_string())?;
            for topic in metadata.topics {
                println!(
                    "{}\t{} partitions{}",
                    topic.name,
                    topic.partitions.len(),
                    if topic.internal { "\tinternal" } else { "" }
                );
            }
        }
        TopicCommand::Describe { name } => describe(&mut client, &name)?,
        TopicCommand::Alter { name, configs } => {
            client
                .alter_configs(&name, &pairs(&configs))
                .map_err(|error| format!("cannot alter topic {name}: {error}"))?;
            println!("altered topic {name}");
        }
        TopicCommand::Delete { name } => {
            client
                .delete_topic(&name)
                .map_err(|error| format!("cannot delete topic {name}: {error}"))?;
            println!("deleted topic {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(client: &mut flumen_client::Client, name: &str) -> Result<(), String> {
    let metadata = client
        .metadata(Some(&[name]))
        .map_err(|error| error.to_string())?;
    let topic = &metadata.topics[0];
    if topic.outcome.error_code != 0 {
        return Err(format!("unknown topic {name}"));
    }
    println!("topic {name}: {} partitions", topic.partitions.len());
    println!("partition\tshard\tlog_start\tlog_end\tsize_bytes");
    for partition in &topic.partitions {
        let offsets = client
            .list_offsets(name, partition.partition, LATEST_TIMESTAMP)
            .map_err(|error| error.to_string())?;
        println!(
            "{}\t{}\t{}\t{}\t{}",
            partition.partition,
            partition.leader_shard,
            offsets.log_start_offset,
            offsets.log_end_offset,
            offsets.size_bytes
        );
    }
    let configs = client
        .describe_configs(name)
        .map_err(|error| error.to_string())?;
    println!("config:");
    for config in configs {
        let source = if config.is_default {
            "default"
        } else {
            "topic"
        };
        println!("  {}={}\t({source})", config.key, config.value);
    }
    Ok(())
}
