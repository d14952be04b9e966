//! `flumen group`: list, describe (committed positions, log end, lag), reset-offsets,
//! delete.

use std::process::ExitCode;
use std::time::UNIX_EPOCH;

use clap::{ArgGroup, Subcommand};
use flumen_client::Client;
use flumen_protocol::wire::messages::{EARLIEST_TIMESTAMP, LATEST_TIMESTAMP};

use super::connect;

#[derive(Debug, Subcommand)]
pub(super) enum GroupCommand {
    /// List consumer groups.
    List,
    /// Show a group's committed positions, each partition's log end, and the lag.
    Describe {
        /// The group.
        group: String,
    },
    /// Move a group's committed positions on one topic.
    #[command(group(ArgGroup::new("to").required(true).args(["to_earliest", "to_latest", "to_offset", "to_time"])))]
    ResetOffsets {
        /// The group.
        group: String,
        /// The topic whose positions move.
        #[arg(long)]
        topic: String,
        /// Only this partition (default: all of the topic's).
        #[arg(long)]
        partition: Option<u32>,
        /// To the first record still in the log.
        #[arg(long)]
        to_earliest: bool,
        /// To the log end (skip everything not yet read).
        #[arg(long)]
        to_latest: bool,
        /// To this offset (clamped to the log's bounds).
        #[arg(long)]
        to_offset: Option<u64>,
        /// To the first record at or after this time (RFC 3339, e.g. 2026-11-25T12:00:00Z).
        #[arg(long)]
        to_time: Option<String>,
        /// Print the new positions without committing them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete a group and its committed positions.
    Delete {
        /// The group.
        group: String,
    },
}

pub(super) fn run(bootstrap: &str, command: GroupCommand) -> Result<ExitCode, String> {
    let mut client = connect(bootstrap)?;
    let failed = |error: flumen_client::ClientError| error.to_string();
    match command {
        GroupCommand::List => {
            for group in client.list_groups().map_err(failed)? {
                println!("{group}");
            }
        }
        GroupCommand::Describe { group } => describe(&mut client, &group)?,
        GroupCommand::ResetOffsets {
            group,
            topic,
            partition,
            to_earliest,
            to_latest,
            to_offset,
            to_time,
            dry_run,
        } => {
            let target = match (to_earliest, to_latest, to_offset, to_time) {
                (true, ..) => Target::Timestamp(EARLIEST_TIMESTAMP),
                (_, true, ..) => Target::Timestamp(LATEST_TIMESTAMP),
                (_, _, Some(offset), _) => Target::Offset(offset),
                (_, _, _, Some(time)) => {
                    let time = humantime::parse_rfc3339_weak(&time)
                        .map_err(|error| format!("invalid --to-time {time:?}: {error}"))?;
                    let millis = time
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |since| since.as_millis() as i64);
                    Target::Timestamp(millis)
                }
                _ => unreachable!("clap requires one target"),
            };
            reset(&mut client, &group, &topic, partition, target, dry_run)?;
        }
        GroupCommand::Delete { group } => {
            client.delete_group(&group).map_err(failed)?;
            eprintln!("deleted group {group}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The group's members, from DescribeGroups (none for a group known only by positions).
fn members(
    client: &mut Client,
    group: &str,
) -> Result<Option<flumen_client::DescribedGroup>, String> {
    match client.describe_group(group) {
        Ok(described) => Ok(Some(described)),
        Err(flumen_client::ClientError::Broker {
            code: flumen_protocol::wire::ErrorCode::GroupIdNotFound,
            ..
        }) => Ok(None),
        Err(error) => Err(error.to_string()),
    }
}

fn describe(client: &mut Client, group: &str) -> Result<(), String> {
    let positions = client
        .fetch_offsets(group, None)
        .map_err(|error| error.to_string())?;
    let described = members(client, group)?;
    if positions.is_empty()
        && described
            .as_ref()
            .is_none_or(|found| found.members.is_empty())
    {
        return Err(format!(
            "group {group} has no committed positions and no members"
        ));
    }
    match &described {
        Some(found) => {
            println!(
                "group {group}: {} ({} members, generation {}, protocol {})",
                found.state,
                found.members.len(),
                found.generation_id,
                if found.protocol.is_empty() {
                    "-"
                } else {
                    &found.protocol
                }
            );
            for member in &found.members {
                println!(
                    "  member {}: {}",
                    member.member_id,
                    String::from_utf8_lossy(&member.assignment)
                );
            }
        }
        None => println!("group {group}: Empty (0 members)"),
    }
    println!(
        "{:<24} {:>9} {:>12} {:>12} {:>10}  METADATA",
        "TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG"
    );
    for topic in positions {
        for position in topic.partitions {
            let end = client
                .list_offsets(&topic.name, position.partition, LATEST_TIMESTAMP)
                .map(|result| result.log_end_offset)
                .map_err(|error| format!("{}-{}: {error}", topic.name, position.partition))?;
            let committed = position.offset.unwrap_or(0);
            println!(
                "{:<24} {:>9} {:>12} {:>12} {:>10}  {}",
                topic.name,
                position.partition,
                committed,
                end,
                end.saturating_sub(committed),
                position.metadata.unwrap_or_default()
            );
        }
    }
    Ok(())
}

enum Target {
    Timestamp(i64),
    Offset(u64),
}

fn reset(
    client: &mut Client,
    group: &str,
    topic: &str,
    partition: Option<u32>,
    target: Target,
    dry_run: bool,
) -> Result<(), String> {
    if let Some(found) = members(client, group)?.filter(|found| !found.members.is_empty()) {
        return Err(format!(
            "group {group} has {} active members; stop its consumers before resetting",
            found.members.len()
        ));
    }
    let metadata = client
        .metadata(Some(&[topic]))
        .map_err(|error| error.to_string())?;
    let count = metadata
        .topics
        .first()
        .filter(|found| found.outcome.error_code == 0)
        .map(|found| found.partitions.len() as u32)
        .ok_or_else(|| format!("unknown topic {topic}"))?;
    let partitions: Vec<u32> = match partition {
        Some(partition) if partition >= count => {
            return Err(format!(
                "invalid partition {partition}: {topic} has {count}"
            ))
        }
        Some(partition) => vec![partition],
        None => (0..count).collect(),
    };
    let old = client
        .fetch_offsets(group, Some(&[(topic, &partitions)]))
        .map_err(|error| error.to_string())?;
    let mut moves = Vec::with_capacity(partitions.len());
    for (index, &number) in partitions.iter().enumerate() {
        let bounds = client
            .list_offsets(topic, number, EARLIEST_TIMESTAMP)
            .map_err(|error| error.to_string())?;
        let new = match target {
            Target::Offset(offset) => offset.clamp(bounds.log_start_offset, bounds.log_end_offset),
            Target::Timestamp(timestamp) => {
                client
                    .list_offsets(topic, number, timestamp)
                    .map_err(|error| error.to_string())?
                    .offset
            }
        };
        let previous = old
            .first()
            .and_then(|found| found.partitions.get(index))
            .and_then(|position| position.offset);
        moves.push((number, previous, new));
    }
    println!(
        "{:<24} {:>9} {:>12} {:>12}",
        "TOPIC", "PARTITION", "OLD", "NEW"
    );
    for (number, previous, new) in &moves {
        let previous = previous.map_or_else(|| "-".to_owned(), |offset| offset.to_string());
        println!("{topic:<24} {number:>9} {previous:>12} {new:>12}");
    }
    if dry_run {
        eprintln!("dry run: nothing committed");
        return Ok(());
    }
    let positions: Vec<(&str, u32, u64, Option<&str>)> = moves
        .iter()
        .map(|(number, _, new)| (topic, *number, *new, None))
        .collect();
    let outcomes = client
        .commit_offsets(group, &positions)
        .map_err(|error| error.to_string())?;
    for ((number, _, _), outcome) in moves.iter().zip(outcomes) {
        outcome.map_err(|error| format!("{topic}-{number}: {error}"))?;
    }
    eprintln!("committed {} positions for group {group}", moves.len());
    Ok(())
}
