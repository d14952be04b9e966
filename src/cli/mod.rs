//! The `flumen` command line: `broker` runs a broker; `topic`, `produce`, `consume` and
//! `group` talk to one over the network with `flumen-client`.
//!
//! Errors print one clear line and exit non-zero.

mod broker_command;
mod config_file;
mod consume;
mod format;
mod group;
mod produce;
mod topic;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Flumen: a shard-per-core event-streaming broker.
#[derive(Debug, Parser)]
#[command(name = "flumen", version, about)]
pub struct Cli {
    /// Broker address for client commands.
    #[arg(
        long,
        global = true,
        env = "FLUMEN_BOOTSTRAP",
        default_value = "127.0.0.1:9292"
    )]
    pub bootstrap: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a broker.
    Broker(broker_command::BrokerArgs),
    /// Create, list, describe, alter and delete topics.
    #[command(subcommand)]
    Topic(topic::TopicCommand),
    /// Send one record per line of standard input.
    Produce(produce::ProduceArgs),
    /// Print records.
    Consume(consume::ConsumeArgs),
    /// List, describe, reset and delete consumer groups.
    #[command(subcommand)]
    Group(group::GroupCommand),
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Broker(args) => broker_command::run(args),
        Command::Topic(command) => topic::run(&cli.bootstrap, command),
        Command::Produce(args) => produce::run(&cli.bootstrap, args),
        Command::Consume(args) => consume::run(&cli.bootstrap, args),
        Command::Group(command) => group::run(&cli.bootstrap, command),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Connects to the broker, turning a refused connection into advice.
fn connect(bootstrap: &str) -> Result<flumen_client::Client, String> {
    flumen_client::Client::connect(bootstrap).map_err(|error| {
        format!("cannot reach a broker at {bootstrap} ({error}); is one running? (--bootstrap, FLUMEN_BOOTSTRAP)")
    })
}

/// Parses `key=value`.
fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("expected key=value, got {text:?}"))
}
