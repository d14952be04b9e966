//! The tokio transport: the same operations over a tokio `TcpStream`, for services that
//! run on tokio (what most Rust services use). One request at a time per connection.

use std::pin::Pin;

use flumen_protocol::wire::FrameBuffer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
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
    pub(crate) session: Session,
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
        let total = self.session.response_length(length)?;
        let mut frame = FrameBuffer::with_capacity(total);
        frame.extend_from_slice(&length);
        read_into(&mut self.stream, &mut frame, total).await?;
        self.session.finish(operation, correlation_id, frame)
    }

    /// Accepts responses up to `bytes` (default 68 MiB: the largest batch a topic can
    /// accept, 64 MiB, which a fetch returns whole, and room for the rest).
    pub fn set_frame_bytes_max(&mut self, bytes: usize) {
        self.session.set_frame_bytes_max(bytes);
    }

    client_methods!([pub] [async] [.await]);
}

/// Reads from `stream` until `frame` holds `total` bytes, into its unfilled room: no
/// zeroing first (a `memset` of every fetch response, a few per cent of a consumer's
/// core at 750 MB/s).
async fn read_into(stream: &mut TcpStream, frame: &mut FrameBuffer, total: usize) -> Result<()> {
    while frame.as_slice().len() < total {
        let mut buffer = ReadBuf::uninit(frame.unfilled(total));
        std::future::poll_fn(|context| Pin::new(&mut *stream).poll_read(context, &mut buffer))
            .await?;
        let read = buffer.filled().len();
        if read == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        // SAFETY: `ReadBuf` counts as filled only bytes the read wrote, at the start of
        // the slice `unfilled` returned.
        unsafe { frame.assume_filled(read) };
    }
    Ok(())
}
