//! The runtimes the producer and consumer run on: [`Tokio`] (feature `tokio`, the
//! default) and [`Glommio`] (feature `glommio`, for code already on a glommio executor).
//!
//! The producer's and consumer's logic is written once, generic over [`Runtime`]: what a
//! runtime supplies is only a connection to a broker (one of the transports), a timer,
//! and spawning a task. Channels, semaphores and `select!` come from `tokio::sync`, which
//! runs on any executor (no tokio runtime is started on glommio).
//!
//! Spawning is done by each runtime for the concrete task (the worker, a batch in flight,
//! a fetch loop), so that on tokio the compiler checks those tasks are `Send` while on
//! glommio they need not be.

use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::consumer::Fetcher;
use crate::membership::Heartbeater;
use crate::operation::Operation;
use crate::producer::worker::{Flight, Pilot, Report, Worker};
use crate::producer::Command;
use crate::Result;

mod sealed {
    pub trait Sealed {}
}

/// An executor the producer and consumer can run on. Implemented by [`Tokio`] and
/// [`Glommio`] only.
#[allow(private_interfaces)]
pub trait Runtime: sealed::Sealed + Sized + 'static {
    /// A connection to a broker on this runtime.
    #[doc(hidden)]
    type Connection: Connection + 'static;

    /// Connects to `host:port`.
    #[doc(hidden)]
    fn connect(host: &str, port: u16) -> impl Future<Output = Result<Self::Connection>>;

    /// Resolves after `duration`.
    #[doc(hidden)]
    fn sleep(duration: Duration) -> impl Future<Output = ()>;

    /// Yields to the executor if the task has run long enough (tokio's cooperative
    /// budget, glommio's preemption), so that a task sending in a tight loop, which
    /// never waits while there is buffer room, still lets the producer's worker run.
    #[doc(hidden)]
    fn yield_if_needed() -> impl Future<Output = ()>;

    /// Runs the producer's background task.
    #[doc(hidden)]
    fn spawn_worker(worker: Worker<Self>, commands: mpsc::Receiver<Command>);

    /// Runs one sortie (a produce request with its retries); its reports are sent to
    /// `reports`.
    #[doc(hidden)]
    fn spawn_flight(
        pilot: Pilot<Self>,
        shard: u32,
        client: Option<Self::Connection>,
        flights: Vec<Flight>,
        reports: mpsc::Sender<Report<Self>>,
    );

    /// Runs a partition's fetch loop until `cancel` resolves (its sender is dropped).
    #[doc(hidden)]
    fn spawn_fetcher(fetcher: Fetcher<Self>, offset: u64, cancel: oneshot::Receiver<()>);

    /// Runs a group member's heartbeats until `cancel` resolves.
    #[doc(hidden)]
    fn spawn_heartbeater(heartbeater: Heartbeater<Self>, cancel: oneshot::Receiver<()>);
}

/// One request at a time over one connection: what the producer and consumer need of a
/// transport.
#[doc(hidden)]
pub trait Connection: Sized {
    /// Runs one operation.
    fn run<O: Operation>(&mut self, operation: O) -> impl Future<Output = Result<O::Output>>;

    /// Whether an operation was dropped half-way, leaving the connection unusable.
    fn is_interrupted(&self) -> bool;
}

/// `future`'s output, or `None` if `duration` passes first.
pub(crate) async fn timeout<R: Runtime, F: Future>(
    duration: Duration,
    future: F,
) -> Option<F::Output> {
    tokio::select! {
        output = future => Some(output),
        () = R::sleep(duration) => None,
    }
}

/// Splits `host:port` (`[v6]:port` too).
pub(crate) fn split_host_port(address: &str) -> Result<(&str, u16)> {
    let invalid = || crate::ClientError::Protocol(format!("not a host:port address: {address}"));
    let (host, port) = address.rsplit_once(':').ok_or_else(invalid)?;
    let port = port.parse().map_err(|_| invalid())?;
    let host = host
        .strip_prefix('[')
        .and_then(|host| host.strip_suffix(']'))
        .unwrap_or(host);
    Ok((host, port))
}

/// Connects to a `host:port` address.
pub(crate) async fn connect<R: Runtime>(address: &str) -> Result<R::Connection> {
    let (host, port) = split_host_port(address)?;
    R::connect(host, port).await
}

/// The tokio runtime: tasks are spawned with `tokio::spawn` on the current runtime.
#[derive(Debug, Clone, Copy)]
pub struct Tokio;

impl sealed::Sealed for Tokio {}

#[allow(private_interfaces)]
impl Runtime for Tokio {
    type Connection = crate::AsyncClient;

    fn connect(host: &str, port: u16) -> impl Future<Output = Result<Self::Connection>> {
        crate::AsyncClient::connect((host, port))
    }

    fn sleep(duration: Duration) -> impl Future<Output = ()> {
        tokio::time::sleep(duration)
    }

    fn yield_if_needed() -> impl Future<Output = ()> {
        tokio::task::coop::consume_budget()
    }

    fn spawn_worker(worker: Worker<Self>, commands: mpsc::Receiver<Command>) {
        tokio::spawn(worker.run(commands));
    }

    fn spawn_flight(
        pilot: Pilot<Self>,
        shard: u32,
        client: Option<Self::Connection>,
        flights: Vec<Flight>,
        reports: mpsc::Sender<Report<Self>>,
    ) {
        tokio::spawn(pilot.fly_and_report(shard, client, flights, reports));
    }

    fn spawn_fetcher(fetcher: Fetcher<Self>, offset: u64, cancel: oneshot::Receiver<()>) {
        tokio::spawn(fetcher.run_until(offset, cancel));
    }

    fn spawn_heartbeater(heartbeater: Heartbeater<Self>, cancel: oneshot::Receiver<()>) {
        tokio::spawn(heartbeater.run_until(cancel));
    }
}

impl Connection for crate::AsyncClient {
    fn run<O: Operation>(&mut self, operation: O) -> impl Future<Output = Result<O::Output>> {
        crate::AsyncClient::run(self, operation)
    }

    fn is_interrupted(&self) -> bool {
        self.session.is_interrupted()
    }
}

/// The glommio runtime: tasks are spawned on the current glommio executor (the
/// producer's and consumer's tasks stay on the caller's core). Feature `glommio`.
#[cfg(feature = "glommio")]
#[derive(Debug, Clone, Copy)]
pub struct Glommio;

#[cfg(feature = "glommio")]
impl sealed::Sealed for Glommio {}

#[cfg(feature = "glommio")]
#[allow(private_interfaces)]
impl Runtime for Glommio {
    type Connection = crate::GlommioClient;

    async fn connect(host: &str, port: u16) -> Result<Self::Connection> {
        use std::net::ToSocketAddrs;
        let mut last = None;
        for address in (host, port).to_socket_addrs()? {
            match crate::GlommioClient::connect(address).await {
                Ok(client) => return Ok(client),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| {
            crate::ClientError::Protocol(format!("{host} resolves to no address"))
        }))
    }

    async fn sleep(duration: Duration) {
        glommio::timer::sleep(duration).await;
    }

    fn yield_if_needed() -> impl Future<Output = ()> {
        glommio::yield_if_needed()
    }

    fn spawn_worker(worker: Worker<Self>, commands: mpsc::Receiver<Command>) {
        glommio::spawn_local(worker.run(commands)).detach();
    }

    fn spawn_flight(
        pilot: Pilot<Self>,
        shard: u32,
        client: Option<Self::Connection>,
        flights: Vec<Flight>,
        reports: mpsc::Sender<Report<Self>>,
    ) {
        glommio::spawn_local(pilot.fly_and_report(shard, client, flights, reports)).detach();
    }

    fn spawn_fetcher(fetcher: Fetcher<Self>, offset: u64, cancel: oneshot::Receiver<()>) {
        glommio::spawn_local(fetcher.run_until(offset, cancel)).detach();
    }

    fn spawn_heartbeater(heartbeater: Heartbeater<Self>, cancel: oneshot::Receiver<()>) {
        glommio::spawn_local(heartbeater.run_until(cancel)).detach();
    }
}

#[cfg(feature = "glommio")]
impl Connection for crate::GlommioClient {
    fn run<O: Operation>(&mut self, operation: O) -> impl Future<Output = Result<O::Output>> {
        crate::GlommioClient::run(self, operation)
    }

    fn is_interrupted(&self) -> bool {
        self.session.is_interrupted()
    }
}

/// The client calls, on any runtime's connection (the same methods the transports have;
/// the producer and consumer use some of them).
#[allow(dead_code)]
pub(crate) trait Calls: Connection {
    crate::client_methods!([] [async] [.await]);
}

impl<C: Connection> Calls for C {}

#[cfg(test)]
mod tests {
    use super::split_host_port;

    #[test]
    fn addresses_split_into_host_and_port() {
        assert_eq!(
            split_host_port("127.0.0.1:9292").unwrap(),
            ("127.0.0.1", 9292)
        );
        assert_eq!(split_host_port("[::1]:9292").unwrap(), ("::1", 9292));
        assert_eq!(
            split_host_port("broker.local:1").unwrap(),
            ("broker.local", 1)
        );
        assert!(split_host_port("no-port").is_err());
        assert!(split_host_port("host:notaport").is_err());
    }
}
