//! The glommio transport: the same operations over a glommio `TcpStream`, for code that
//! already runs on a glommio executor (the load generator): no thread hop, and the
//! connection lives on the caller's core. Not `Send`, like everything on glommio.

use flumen_protocol::wire::{frame_length, FrameBuffer, FRAME_BYTES_MAX_DEFAULT};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::operation::{decode, Encoder, Operation};
use crate::{client_methods, ClientError, Result};

/// A connection to one broker from inside a glommio executor.
#[derive(Debug)]
pub struct GlommioClient {
    stream: TcpStream,
    encoder: Encoder,
    frame_bytes_max: usize,
    /// As for the other transports: an interrupted exchange poisons the connection.
    interrupted: bool,
}

impl GlommioClient {
    /// Connects to `address`.
    pub async fn connect(address: std::net::SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(address)
            .await
            .map_err(std::io::Error::from)?;
        stream.set_nodelay(true).map_err(std::io::Error::from)?;
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

    client_methods!([async] [.await]);
}
