//! The glommio transport: the same operations over a glommio `TcpStream`, for code that
//! already runs on a glommio executor (the load generator): no thread hop, and the
//! connection lives on the caller's core. Not `Send`, like everything on glommio.

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::operation::{Operation, Session};
use crate::{client_methods, Result};

/// A connection to one broker from inside a glommio executor.
#[derive(Debug)]
pub struct GlommioClient {
    stream: TcpStream,
    pub(crate) session: Session,
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

    /// Accepts responses up to `bytes` (default 68 MiB: the largest batch a topic can
    /// accept, 64 MiB, which a fetch returns whole, and room for the rest).
    pub fn set_frame_bytes_max(&mut self, bytes: usize) {
        self.session.set_frame_bytes_max(bytes);
    }

    client_methods!([pub] [async] [.await]);
}
