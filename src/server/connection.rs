//! One client connection: read frames, run requests concurrently, write responses in
//! request order.
//!
//! Pipelining: the reader keeps reading while earlier requests run, up to
//! `in_flight_requests_per_connection` requests and `in_flight_bytes_per_connection`
//! request bytes; beyond that it stops reading the socket (backpressure) until the
//! writer has sent responses. The writer awaits requests strictly in arrival order.
//!
//! A response up to 4 KiB (a produce acknowledgement, most control answers) goes out in
//! one `send`: header and data are copied into one buffer. Larger ones (fetches) are sent
//! in parts rather than copied.
//!
//! Bad input: a frame over the limit is answered `FrameTooLarge` and the connection is
//! closed (the stream cannot be resynchronised without reading the frame); a malformed
//! frame, an unknown API or version is answered with an error and the connection goes on.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::{Buf, BytesMut};
use flumen_protocol::wire::{
    frame_length, ErrorCode, FrameError, RequestFrame, ResponseFrame, ResponseHeader,
    REQUEST_HEADER_BYTES,
};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use glommio::net::TcpStream;

use super::handlers::{dispatch, Response};
use super::state::ShardState;
use crate::shard::{spawn, until, LocalBudget, Notify, Task};

/// Responses up to this size are copied into one buffer and sent with one call.
const COALESCED_RESPONSE_BYTES: usize = 4 << 10;

/// A request whose response is pending or ready.
struct Entry {
    correlation_id: u32,
    response: Task<Option<Response>>,
    frame_bytes: usize,
    close_after: bool,
}

/// The in-order queue between reader and writer.
#[derive(Default)]
struct Pipeline {
    entries: RefCell<VecDeque<Entry>>,
    in_flight_bytes: Cell<usize>,
    reading_done: Cell<bool>,
    writing_failed: Cell<bool>,
    changed: Notify,
}

/// Serves `stream` until the client leaves, a fatal frame error, or shutdown.
pub(crate) async fn serve(state: Rc<ShardState>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let (reader, writer) = futures_lite::io::split(stream);
    let pipeline = Rc::new(Pipeline::default());
    let budget = LocalBudget::new(state.config.in_flight_bytes_per_connection);
    let writing = spawn(write_loop(Rc::clone(&pipeline), writer));
    if let Err(reason) = read_loop(&state, reader, &pipeline, &budget).await {
        tracing::debug!(%peer, reason, "connection closed");
    }
    pipeline.reading_done.set(true);
    pipeline.changed.notify_all();
    writing.await;
}

async fn read_loop(
    state: &Rc<ShardState>,
    mut reader: ReadHalf<TcpStream>,
    pipeline: &Rc<Pipeline>,
    budget: &Rc<LocalBudget>,
) -> Result<(), &'static str> {
    loop {
        wait_for_room(state, pipeline).await;
        if state.shutting_down.get() || pipeline.writing_failed.get() {
            return Ok(());
        }
        let mut prefix = [0u8; 4];
        match until(reader.read_exact(&mut prefix), state.shutdown.listen()).await {
            None => return Ok(()),
            Some(Err(_)) => return Err("client went away"),
            Some(Ok(())) => {}
        }
        let length = match frame_length(prefix, state.config.frame_bytes_max) {
            Ok(length) => length,
            Err(error) => return reject_frame(state, &mut reader, pipeline, prefix, &error).await,
        };
        let mut frame = aligned_buffer(length);
        frame[..4].copy_from_slice(&prefix);
        match until(reader.read_exact(&mut frame[4..]), state.shutdown.listen()).await {
            None => return Ok(()),
            Some(Err(_)) => return Err("client disconnected mid-request"),
            Some(Ok(())) => {}
        }
        push_request(state, pipeline, frame, budget);
    }
}

async fn wait_for_room(state: &ShardState, pipeline: &Pipeline) {
    loop {
        let listener = pipeline.changed.listen();
        let full = pipeline.entries.borrow().len()
            >= state.config.in_flight_requests_per_connection
            || pipeline.in_flight_bytes.get() >= state.config.in_flight_bytes_per_connection;
        if !full {
            return;
        }
        listener.await;
    }
}

/// Answers a frame that cannot be read (too large, bad length) and ends the connection.
async fn reject_frame(
    state: &ShardState,
    reader: &mut ReadHalf<TcpStream>,
    pipeline: &Rc<Pipeline>,
    prefix: [u8; 4],
    error: &FrameError,
) -> Result<(), &'static str> {
    tracing::warn!(%error, "rejecting frame");
    if !matches!(error, FrameError::TooLarge { .. }) {
        // A length too short or unaligned: the header cannot be trusted to be there, and
        // reading it could swallow the next frame. Close without an answer.
        return Err("unreadable frame length");
    }
    let mut header = [0u8; REQUEST_HEADER_BYTES];
    header[..4].copy_from_slice(&prefix);
    // A client that never sends the rest does not hold up a shutdown.
    match until(reader.read_exact(&mut header[4..]), state.shutdown.listen()).await {
        None => return Ok(()),
        Some(Err(_)) => return Err("client went away"),
        Some(Ok(())) => {}
    }
    let correlation_id = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    let code = ErrorCode::FrameTooLarge;
    enqueue(
        pipeline,
        correlation_id,
        ready(Some(Response::error(code))),
        0,
        true,
    );
    Err("unreadable frame")
}

/// Decodes a complete frame and starts its request.
fn push_request(
    state: &Rc<ShardState>,
    pipeline: &Rc<Pipeline>,
    mut frame: BytesMut,
    budget: &Rc<LocalBudget>,
) {
    let frame_bytes = frame.len();
    let correlation_id = u32::from_le_bytes(frame[8..12].try_into().expect("4 bytes"));
    let decoded = RequestFrame::decode(&frame).map(|request| {
        let control_start = request.control.as_ptr() as usize - frame.as_ptr() as usize;
        let data_start = frame.len() - request.data.len();
        let version_ok = request.api().is_some_and(|api| {
            let (min, max) = api.versions();
            (min..=max).contains(&request.header.api_version)
        });
        (
            request.api(),
            version_ok,
            control_start..control_start + request.control.len(),
            data_start,
        )
    });
    let response = match decoded {
        Err(error) => {
            tracing::warn!(%error, correlation_id, "malformed frame");
            ready(Some(Response::error(ErrorCode::MalformedRequest)))
        }
        Ok((None, _, _, _)) => ready(Some(Response::error(ErrorCode::UnsupportedApi))),
        Ok((Some(_), false, _, _)) => ready(Some(Response::error(ErrorCode::UnsupportedVersion))),
        Ok((Some(api), true, control, data_start)) => {
            let data = frame.split_off(data_start);
            let (state, budget) = (Rc::clone(state), Rc::clone(budget));
            spawn(async move { dispatch(&state, api, &frame[control], data, &budget).await })
        }
    };
    enqueue(pipeline, correlation_id, response, frame_bytes, false);
}

fn ready(response: Option<Response>) -> Task<Option<Response>> {
    spawn(async move { response })
}

fn enqueue(
    pipeline: &Pipeline,
    correlation_id: u32,
    response: Task<Option<Response>>,
    frame_bytes: usize,
    close_after: bool,
) {
    pipeline
        .in_flight_bytes
        .set(pipeline.in_flight_bytes.get() + frame_bytes);
    pipeline.entries.borrow_mut().push_back(Entry {
        correlation_id,
        response,
        frame_bytes,
        close_after,
    });
    pipeline.changed.notify_all();
}

async fn write_loop(pipeline: Rc<Pipeline>, mut writer: WriteHalf<TcpStream>) {
    loop {
        let listener = pipeline.changed.listen();
        let next = pipeline.entries.borrow_mut().pop_front();
        let Some(entry) = next else {
            if pipeline.reading_done.get() {
                break;
            }
            listener.await;
            continue;
        };
        let response = entry.response.await;
        let written = match response {
            Some(response) => write_response(&mut writer, entry.correlation_id, response).await,
            None => Ok(()),
        };
        pipeline
            .in_flight_bytes
            .set(pipeline.in_flight_bytes.get() - entry.frame_bytes);
        pipeline.changed.notify_all();
        if written.is_err() || entry.close_after {
            pipeline.writing_failed.set(true);
            break;
        }
    }
    let _ = writer.close().await;
}

async fn write_response(
    writer: &mut WriteHalf<TcpStream>,
    correlation_id: u32,
    response: Response,
) -> std::io::Result<()> {
    let data_length: usize = response.data.iter().map(|part| part.as_bytes().len()).sum();
    let header = ResponseHeader {
        correlation_id,
        error_code: response.error_code,
    };
    let mut prefix = ResponseFrame::encode_prefix(header, &response.control, data_length);
    if prefix.len() + data_length <= COALESCED_RESPONSE_BYTES {
        for part in &response.data {
            prefix.extend_from_slice(part.as_bytes());
        }
        writer.write_all(&prefix).await?;
    } else {
        writer.write_all(&prefix).await?;
        for part in &response.data {
            writer.write_all(part.as_bytes()).await?;
        }
    }
    writer.flush().await
}

/// A zeroed buffer of `len` bytes starting at a 16-byte-aligned address, so the frame's
/// control archive and batches can be read in place.
pub(crate) fn aligned_buffer(len: usize) -> BytesMut {
    let mut buffer = BytesMut::zeroed(len + 15);
    let misalignment = buffer.as_ptr() as usize % 16;
    let skip = (16 - misalignment) % 16;
    buffer.advance(skip);
    buffer.truncate(len);
    debug_assert_eq!(buffer.as_ptr() as usize % 16, 0);
    buffer
}
