//! The tokio transport: the same operations over a tokio `TcpStream`, for services that
//! run on tokio (what most Rust services use). One request at a time per connection.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

use crate::operation::{Operation, Session};
use crate::{client_methods, Result};

/// An async connection to one broker, on tokio.
///
/// Cancel safety: a call dropped before it completes (a timeout, `select!`) leaves the
/// connection refusing further requests (they fail at once); reconnect.
///
/// ```no_run
/// # async fn example() -> flumen_client::Result<()> {
/// let mut client = flumen_client::AsyncClient::connect("127.0.0.1:9292").await?;
/// client.create_topic("orders", 4, &[]).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct AsyncClient {
    stream: TcpStream,
    session: Session,
}

impl AsyncClient {
    /// Connects to `address`.
    pub async fn connect(address: impl ToSocketAddrs) -> Result<Self> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            session: Session::new(format!("flumen-client-{}", std::process::id())),
        })
    }

    /// Runs one operation: sends its request, waits for and interprets the response.
    pub async fn run<O: Operation>(&mut self, operation: O) -> Result<O::Output> {
        let (correlation_id, prefix) = self.session.begin(&operation)?;
        let (head, rest) = crate::operation::coalesce(prefix, operation.data());
        self.stream.write_all(&head).await?;
        for part in rest {
            self.stream.write_all(part).await?;
        }
        self.stream.flush().await?;
        if !operation.expects_response() {
            return self.session.finish_without_response(&operation);
        }
        let mut length = [0u8; 4];
        self.stream.read_exact(&mut length).await?;
        let mut frame = self.session.response_buffer(length)?;
        self.stream
            .read_exact(&mut frame.as_mut_slice()[4..])
            .await?;
        self.session.finish(operation, correlation_id, frame)
    }

    /// Accepts responses up to `bytes` (default 64 MiB, the broker's default frame limit).
    pub fn set_frame_bytes_max(&mut self, bytes: usize) {
        self.session.set_frame_bytes_max(bytes);
    }

    client_methods!([pub] [async] [.await]);
}
