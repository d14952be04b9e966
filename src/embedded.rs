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
        let data_dir = tempfile::Builder::new()
            .prefix("flumen-embedded-")
            .tempdir()
            .map_err(|error| StartupError::DataDirNotWritable {
                path: std::env::temp_dir(),
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
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.shard_port_base = 0;
        let handle = run_broker(config.clone())?;
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
        self.handle = Some(run_broker(self.config.clone())?);
        Ok(())
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

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        // The broker must be down before its data directory is removed.
        let _ = self.shut_down();
    }
}
