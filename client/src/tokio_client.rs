//! The tokio transport: the same operations over a tokio `TcpStream`, for services that
//! run on tokio (what most Rust services use). One request at a time per connection.

use flumen_protocol::wire::{frame_length, FrameBuffer, FRAME_BYTES_MAX_DEFAULT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

use crate::operation::{decode, Encoder, Operation};
use crate::{client_methods, ClientError, Result};

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
    encoder: Encoder,
    frame_bytes_max: usize,
    /// Set while a request is in progress: if the call is interrupted (a timeout, a
    /// cancelled future, an unreadable response), the stream holds part of an exchange
    /// and every later call would misread it, so the connection refuses further use.
    interrupted: bool,
}

impl AsyncClient {
    /// Connects to `address`.
    pub async fn connect(address: impl ToSocketAddrs) -> Result<Self> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            encoder: Encoder::new(format!("flumen-client-{}", std::process::id())),
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            interrupted: false,
        })
    }

    /// Runs one operation: sends its request, waits for and interprets the response.
    pub async fn run<O: Operation>(&mut self, operation: O) -> Result<O::Output> {
        if self.interrupted {
            return Err(ClientError::Protocol(
                "an earlier request on this connection was interrupted; reconnect".into(),
            ));
        }
        self.interrupted = true;
        let (correlation_id, prefix) = self.encoder.encode(&operation);
        self.stream.write_all(&prefix).await?;
        for part in operation.data() {
            self.stream.write_all(part).await?;
        }
        self.stream.flush().await?;
        if !operation.expects_response() {
            self.interrupted = false;
            return operation.output_without_response();
        }
        let mut length = [0u8; 4];
        self.stream.read_exact(&mut length).await?;
        let mut frame = FrameBuffer::zeroed(frame_length(length, self.frame_bytes_max)?);
        frame.as_mut_slice()[..4].copy_from_slice(&length);
        self.stream
            .read_exact(&mut frame.as_mut_slice()[4..])
            .await?;
        self.interrupted = false;
        decode(operation, correlation_id, frame)
    }

    /// Accepts responses up to `bytes` (default 64 MiB, the broker's default frame limit).
    pub fn set_frame_bytes_max(&mut self, bytes: usize) {
        self.frame_bytes_max = bytes;
    }

    client_methods!([async] [.await]);
}
