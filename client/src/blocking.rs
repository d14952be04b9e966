//! The blocking transport: one `std::net` connection, one request at a time.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use flumen_protocol::wire::{frame_length, FrameBuffer, FRAME_BYTES_MAX_DEFAULT};

use crate::operation::{decode, Encoder, Operation};
use crate::{client_methods, ClientError, Result};

/// A blocking connection to one broker (its shared port or a shard's own port).
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    encoder: Encoder,
    frame_bytes_max: usize,
    /// Set while a request is in progress: if the call is interrupted (a timeout, a
    /// cancelled future, an unreadable response), the stream holds part of an exchange
    /// and every later call would misread it, so the connection refuses further use.
    interrupted: bool,
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
            interrupted: false,
        })
    }

    /// Fails reads that take longer than `timeout` (none by default).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        self.stream.set_read_timeout(timeout)?;
        Ok(())
    }

    /// Runs one operation: sends its request, waits for and interprets the response.
    pub fn run<O: Operation>(&mut self, operation: O) -> Result<O::Output> {
        if self.interrupted {
            return Err(ClientError::Protocol(
                "an earlier request on this connection was interrupted; reconnect".into(),
            ));
        }
        self.interrupted = true;
        let (correlation_id, prefix) = self.encoder.encode(&operation);
        self.stream.write_all(&prefix)?;
        for part in operation.data() {
            self.stream.write_all(part)?;
        }
        self.stream.flush()?;
        if !operation.expects_response() {
            self.interrupted = false;
            return operation.output_without_response();
        }
        let mut length = [0u8; 4];
        self.stream.read_exact(&mut length)?;
        let mut frame = FrameBuffer::zeroed(frame_length(length, self.frame_bytes_max)?);
        frame.as_mut_slice()[..4].copy_from_slice(&length);
        self.stream.read_exact(&mut frame.as_mut_slice()[4..])?;
        self.interrupted = false;
        decode(operation, correlation_id, frame)
    }

    /// Accepts responses up to `bytes` (default 64 MiB, the broker's default frame limit).
    pub fn set_frame_bytes_max(&mut self, bytes: usize) {
        self.frame_bytes_max = bytes;
    }

    client_methods!([] []);
}
