//! `flumen broker`: run a broker until SIGTERM or SIGINT, then shut down gracefully.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::config_file::ConfigFile;
use crate::server::{run_broker_with_stop, BrokerConfig};

#[derive(Debug, Args)]
pub(super) struct BrokerArgs {
    /// Configuration file (TOML); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory [default: ./flumen-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Shared listen address [default: 127.0.0.1:9292].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Number of shards [default: one per available CPU].
    #[arg(long)]
    shards: Option<usize>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
    /// Log level (error, warn, info, debug, trace); RUST_LOG wins if set.
    #[arg(long, default_value = "info")]
    log_level: String,
}

pub(super) fn run(args: BrokerArgs) -> Result<ExitCode, String> {
    let mut config = BrokerConfig::default();
    let mut shards_chosen = args.shards.is_some();
    if let Some(path) = &args.config {
        let file = ConfigFile::load(path)?;
        shards_chosen |= file.shards.is_some();
        file.apply(&mut config)
            .map_err(|error| format!("{}: {error}", path.display()))?;
    }
    let per_cpu = config.shards;
    if !shards_chosen {
        // One shard per CPU, as far as the locked-memory limit allows.
        config.shards = crate::server::shards_within_memlock(config.shards, config.io_memory_bytes);
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(shards) = args.shards {
        config.shards = shards;
    }
    if args.print_config {
        let text = toml::to_string(&ConfigFile::from_config(&config))
            .map_err(|error| error.to_string())?;
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    check_log_level(&args.log_level)?;
    init_logging(&args.log_level);
    if config.shards < per_cpu && !shards_chosen {
        tracing::warn!(
            shards = config.shards,
            cpus = per_cpu,
            "fewer shards than CPUs: the locked memory limit (ulimit -l) holds only this many; raise it for one shard per CPU (docs/OPERATIONS.md, section 9.1)"
        );
    }
    abort_on_panic();
    crate::shard::tune_allocator();
    // Handlers first: a signal during start-up (recovery can take a while) must shut the
    // broker down gracefully, not kill it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, std::sync::Arc::clone(&stop))
            .map_err(|error| format!("cannot install signal handlers: {error}"))?;
    }
    let broker = run_broker_with_stop(config, stop).map_err(|error| error.to_string())?;
    let summary = broker.summary().clone();
    tracing::info!(
        shards = summary.shards,
        cpus = ?summary.cpus,
        listen = %summary.listen,
        shard_ports = ?summary.shard_ports,
        data_dir = %summary.data_dir.display(),
        partitions_recovered = summary.partitions,
        bytes_cut_by_recovery = summary.bytes_cut,
        "flumen broker started"
    );
    broker.join().map_err(|error| error.to_string())?;
    tracing::info!("flumen broker stopped; every partition flushed and closed");
    Ok(ExitCode::SUCCESS)
}

/// A panic on a shard's thread would leave the rest of the broker serving without that
/// shard's partitions, and requests routed to it waiting forever. The process stops
/// instead (after the usual panic message), so that a supervisor restarts it; every
/// acknowledged write survives that as it survives `kill -9` (docs/OPERATIONS.md).
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        tracing::error!("a broker thread panicked; aborting");
        std::process::abort();
    }));
}

/// A level, or a filter naming targets (`flumen=debug,info`). A lone word that is not a
/// level would be read as a target, and quietly turn every log off.
fn check_log_level(level: &str) -> Result<(), String> {
    // (An empty string parses as a level, and is refused here.)
    let is_level = !level.is_empty()
        && level
            .parse::<tracing_subscriber::filter::LevelFilter>()
            .is_ok();
    let is_filter =
        level.contains(['=', ',']) && tracing_subscriber::EnvFilter::try_new(level).is_ok();
    if is_level || is_filter {
        return Ok(());
    }
    Err(format!(
        "--log-level {level:?}: use error, warn, info, debug, trace or off, or a filter such as flumen=debug,info"
    ))
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colours only on a terminal: a log file keeps plain text that grep can read.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .try_init();
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    /// Set in the copy of the test binary the test below starts.
    const CHILD: &str = "FLUMEN_TEST_PANIC_CHILD";

    #[test]
    fn a_mistyped_log_level_is_refused_rather_than_silencing_the_logs() {
        for good in [
            "info",
            "WARN",
            "off",
            "flumen=debug,info",
            "flumen::storage=trace",
        ] {
            assert_eq!(super::check_log_level(good), Ok(()), "{good}");
        }
        for bad in [
            "warning",
            "verbose",
            "",
            "flumen=verbose",
            "flumen=debug,info=x",
        ] {
            assert!(super::check_log_level(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// Runs in a child process: a panic on a thread other than the main one (as on a
    /// shard's) must take the whole process down, not just that thread.
    #[test]
    fn a_panic_on_any_thread_aborts_the_process() {
        if std::env::var_os(CHILD).is_some() {
            super::abort_on_panic();
            let _ = std::thread::spawn(|| panic!("a bug on a shard's thread")).join();
            println!("the process outlived the panic");
            return;
        }
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "--nocapture", "--test-threads", "1"])
            .arg("cli::broker_command::tests::a_panic_on_any_thread_aborts_the_process")
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.signal(),
            Some(libc::SIGABRT),
            "{:?}\n{stdout}\n{stderr}",
            output.status
        );
        assert!(stderr.contains("a bug on a shard's thread"), "{stderr}");
        assert!(!stdout.contains("outlived"), "{stdout}");
    }
}
