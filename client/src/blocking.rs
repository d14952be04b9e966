//! The blocking transport: one `std::net` connection, one request at a time.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use flumen_protocol::wire::{frame_length, FrameBuffer, FRAME_BYTES_MAX_DEFAULT};

use crate::operation::{decode, Encoder, Operation};
use crate::{client_methods, Result};

/// A blocking connection to one broker (its shared port or a shard's own port).
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    encoder: Encoder,
    frame_bytes_max: usize,
}

impl Client {
    /// Connects to `address`.
    pub fn connect(address: impl ToSocketAddrs) -> Result<Self> {
        let stream = TcpStream::connect(address)?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            encoder: Encoder::new(format!("flumen-client-{}", std::process::id())),
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
        })
    }

    /// Fails reads that take longer than `timeout` (none by default).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        self.stream.set_read_timeout(timeout)?;
        Ok(())
    }

    /// Runs one operation: sends its request, waits for and interprets the response.
    pub fn run<O: Operation>(&mut self, operation: O) -> Result<O::Output> {
        let (correlation_id, prefix) = self.encoder.encode(&operation);
        self.stream.write_all(&prefix)?;
        for part in operation.data() {
            self.stream.write_all(part)?;
        }
        self.stream.flush()?;
        if !operation.expects_response() {
            return operation.output_without_response();
        }
        let mut length = [0u8; 4];
        self.stream.read_exact(&mut length)?;
        let mut frame = FrameBuffer::zeroed(frame_length(length, self.frame_bytes_max)?);
        frame.as_mut_slice()[..4].copy_from_slice(&length);
        self.stream.read_exact(&mut frame.as_mut_slice()[4..])?;
        decode(operation, correlation_id, frame)
    }

    client_methods!([] []);
}
