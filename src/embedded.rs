//! An in-process broker for integration tests: one line to start, an ephemeral port and
//! a temporary data directory, everything cleaned up on drop — what users put in their
//! tests instead of a real cluster.
//!
//! ```no_run
//! use flumen::EmbeddedBroker;
//!
//! let broker = EmbeddedBroker::start()?;
//! let mut client = flumen_client::Client::connect(broker.bootstrap())?;
//! client.create_topic("orders", 1, &[])?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::net::SocketAddr;
use std::path::Path;

use crate::server::{run_broker, BrokerConfig, BrokerHandle, StartupError};

/// A broker running inside this process. Stops and deletes its data when dropped.
pub struct EmbeddedBroker {
    handle: Option<BrokerHandle>,
    bootstrap: SocketAddr,
    data_dir: tempfile::TempDir,
    config: BrokerConfig,
}

impl EmbeddedBroker {
    /// Starts a one-shard broker on `127.0.0.1` with an ephemeral port and a fresh
    /// temporary data directory.
    pub fn start() -> Result<Self, StartupError> {
        Self::start_with(|_| {})
    }

    /// Like [`EmbeddedBroker::start`], letting `configure` adjust the configuration (data
    /// directory and address are chosen here and override any change to them).
    pub fn start_with(configure: impl FnOnce(&mut BrokerConfig)) -> Result<Self, StartupError> {
        Self::start_in(&std::env::temp_dir(), configure)
    }

    /// Like [`EmbeddedBroker::start_with`], with the temporary data directory created
    /// inside `parent` (a benchmark on a chosen disk, say); it is still deleted on drop.
    pub fn start_in(
        parent: &Path,
        configure: impl FnOnce(&mut BrokerConfig),
    ) -> Result<Self, StartupError> {
        let data_dir = tempfile::Builder::new()
            .prefix("flumen-embedded-")
            .tempdir_in(parent)
            .map_err(|error| StartupError::DataDirNotWritable {
                path: parent.to_path_buf(),
                reason: error.to_string(),
            })?;
        let mut config = BrokerConfig {
            shards: 1,
            io_memory_bytes: 512 << 10,
            cache_bytes_per_shard: 64 << 20,
            ..BrokerConfig::default()
        };
        configure(&mut config);
        config.data_dir = data_dir.path().to_path_buf();
        config.shard_port_base = 0;
        // A free port below the kernel's ephemeral range: a client retrying a connection
        // while the broker is stopped can then never be given this port as its own
        // local port (a loopback self-connection), which would keep `restart` from
        // binding it again.
        let mut attempt = 0;
        let handle = loop {
            config.listen = SocketAddr::from(([127, 0, 0, 1], stable_port(attempt)));
            match run_broker(config.clone()) {
                Ok(handle) => break handle,
                Err(error) if port_taken(&error) && attempt < 20 => attempt += 1,
                Err(error) => return Err(error),
            }
        };
        let bootstrap = handle.summary().listen;
        config.listen = bootstrap;
        Ok(Self {
            handle: Some(handle),
            bootstrap,
            data_dir,
            config,
        })
    }

    /// Stops the broker gracefully but keeps its data, so [`EmbeddedBroker::restart`]
    /// can bring it back: for tests of what clients do while the broker is down.
    pub fn shutdown(&mut self) -> std::io::Result<()> {
        self.shut_down()
    }

    /// Starts the broker again (stopping it first if it runs) on the same data
    /// directory and bootstrap address; shard ports may change, as after a real restart.
    pub fn restart(&mut self) -> Result<(), StartupError> {
        let _ = self.shut_down();
        // The stopped broker's io_uring rings are torn down asynchronously by the kernel,
        // and its listening socket with them: the port can stay taken for a moment.
        // Retry (bounded) while it does.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match run_broker(self.config.clone()) {
                Ok(handle) => {
                    self.handle = Some(handle);
                    return Ok(());
                }
                Err(error) if port_taken(&error) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The address clients connect to.
    pub fn bootstrap(&self) -> SocketAddr {
        self.bootstrap
    }

    /// The temporary data directory (deleted on drop).
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// Stops the broker gracefully (flushing every partition) and deletes its data.
    pub fn stop(mut self) -> std::io::Result<()> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> std::io::Result<()> {
        match self.handle.take() {
            Some(handle) => {
                handle.shutdown();
                handle.join()
            }
            None => Ok(()),
        }
    }
}

/// A free port below the ephemeral range (`ip_local_port_range`), chosen from a
/// different start for every call; 0 (any port) if none is found.
fn stable_port(attempt: u32) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if low <= 12_000 {
        return 0;
    }
    let span = low - 10_000;
    let seed = std::process::id()
        .wrapping_mul(2_654_435_761)
        .wrapping_add(CALLS.fetch_add(1, Ordering::Relaxed).wrapping_mul(7_919))
        .wrapping_add(attempt.wrapping_mul(104_729));
    for step in 0..200u32 {
        let port = 10_000 + (seed.wrapping_add(step.wrapping_mul(7_919))) % span;
        let port = port as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    0
}

/// Whether a start failed only because a listening port is still taken.
fn port_taken(error: &StartupError) -> bool {
    match error {
        StartupError::PortInUse { .. } | StartupError::Listen { .. } => true,
        StartupError::Shard(message) => message.contains("Address already in use"),
        _ => false,
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        // The broker must be down before its data directory is removed.
        let _ = self.shut_down();
    }
}
