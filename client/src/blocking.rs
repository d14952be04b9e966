//! The blocking transport: one `std::net` connection, one request at a time.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::operation::{Operation, Session};
use crate::{client_methods, Result};

/// A blocking connection to one broker (its shared port or a shard's own port): topic
/// administration and raw produce/fetch of whole batches.
///
/// ```no_run
/// use flumen_client::Client;
///
/// let mut client = Client::connect("127.0.0.1:9292")?;
/// client.create_topic("orders", 4, &[("retention.ms", "86400000")])?;
/// let end = client.list_offsets("orders", 0, flumen_client::LATEST_TIMESTAMP)?;
/// println!("partition 0 ends at {}", end.log_end_offset);
/// # Ok::<(), flumen_client::ClientError>(())
/// ```
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    session: Session,
}

impl Client {
    /// Connects to `address`.
    pub fn connect(address: impl ToSocketAddrs) -> Result<Self> {
        let stream = TcpStream::connect(address)?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            session: Session::new(format!("flumen-client-{}", std::process::id())),
        })
    }

    /// Fails reads that take longer than `timeout` (none by default). A timed-out request
    /// leaves the connection unusable: reconnect.
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        self.stream.set_read_timeout(timeout)?;
        Ok(())
    }

    /// Accepts responses up to `bytes` (default 68 MiB: the largest batch a topic can
    /// accept, 64 MiB, which a fetch returns whole, and room for the rest).
    pub fn set_frame_bytes_max(&mut self, bytes: usize) {
        self.session.set_frame_bytes_max(bytes);
    }

    /// Runs one operation: sends its request, waits for and interprets the response.
    pub fn run<O: Operation>(&mut self, operation: O) -> Result<O::Output> {
        let (correlation_id, prefix) = self.session.begin(&operation)?;
        let (head, rest) = crate::operation::coalesce(prefix, operation.data());
        self.stream.write_all(&head)?;
        for part in rest {
            self.stream.write_all(part)?;
        }
        self.stream.flush()?;
        if !operation.expects_response() {
            return self.session.finish_without_response(&operation);
        }
        let mut length = [0u8; 4];
        self.stream.read_exact(&mut length)?;
        let mut frame = self.session.response_buffer(length)?;
        self.stream.read_exact(&mut frame.as_mut_slice()[4..])?;
        self.session.finish(operation, correlation_id, frame)
    }

    client_methods!([pub] [] []);
}
