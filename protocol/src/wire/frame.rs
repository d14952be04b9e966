//! Frames: the length prefix, the request and response headers, and the 16-byte-aligned
//! control and data sections. See the module documentation of [`super`] for the layout.

use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;

use super::{ApiKey, ErrorCode};

/// Sections of a frame start at multiples of this, relative to the frame start.
pub const FRAME_ALIGNMENT_BYTES: usize = 16;
/// Fixed size of a request header, length prefix included.
pub const REQUEST_HEADER_BYTES: usize = 32;
/// Fixed size of a response header, length prefix included.
pub const RESPONSE_HEADER_BYTES: usize = 32;
/// Default largest request frame a broker accepts.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 64 << 20;
/// Largest record batch a topic can be configured to accept (its `max.message.bytes`).
pub const BATCH_BYTES_MAX: usize = 64 << 20;
/// Default largest response a client accepts. A fetch returns the first batch it finds
/// whole, so the largest batch a topic can accept must fit, with room for the rest of
/// the response: up to 10,000 partitions' results and their error messages.
pub const RESPONSE_FRAME_BYTES_MAX_DEFAULT: usize = BATCH_BYTES_MAX + (4 << 20);
/// Largest client id.
pub const CLIENT_ID_BYTES_MAX: usize = 255;

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame declares more bytes than the limit.
    #[error("frame of {length_bytes} bytes exceeds the limit of {limit_bytes}")]
    TooLarge {
        /// Declared length.
        length_bytes: usize,
        /// The limit.
        limit_bytes: usize,
    },
    /// The frame is shorter than its header or its sections.
    #[error("frame truncated: {0}")]
    Truncated(&'static str),
    /// A header field is invalid.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// The frame buffer is not 16-byte aligned, so the control part cannot be read in place.
    #[error("frame buffer is not 16-byte aligned")]
    Misaligned,
    /// The control archive failed validation.
    #[error("invalid control archive: {0}")]
    InvalidControl(String),
}

const fn padded(length: usize) -> usize {
    (length + FRAME_ALIGNMENT_BYTES - 1) & !(FRAME_ALIGNMENT_BYTES - 1)
}

fn read_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// The total frame size (prefix included) announced by the first four bytes, checked
/// against `limit_bytes`. Call it as soon as four bytes have arrived.
pub fn frame_length(prefix: [u8; 4], limit_bytes: usize) -> Result<usize, FrameError> {
    let length = u32::from_le_bytes(prefix) as usize + 4;
    if length > limit_bytes {
        return Err(FrameError::TooLarge {
            length_bytes: length,
            limit_bytes,
        });
    }
    if length < REQUEST_HEADER_BYTES.min(RESPONSE_HEADER_BYTES) {
        return Err(FrameError::Truncated("shorter than a header"));
    }
    if !length.is_multiple_of(FRAME_ALIGNMENT_BYTES) {
        return Err(FrameError::Malformed(
            "frame length is not a multiple of 16",
        ));
    }
    Ok(length)
}

/// A zeroed, 16-byte-aligned buffer to receive a frame into, so its sections can be read
/// in place.
#[derive(Debug, Clone, Default)]
pub struct FrameBuffer {
    bytes: AlignedVec<FRAME_ALIGNMENT_BYTES>,
}

impl FrameBuffer {
    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> Self {
        let mut bytes = AlignedVec::<FRAME_ALIGNMENT_BYTES>::with_capacity(len);
        bytes.resize(len, 0);
        Self { bytes }
    }

    /// An empty buffer with room for `len` bytes, for a reader that fills it without
    /// zeroing it first ([`FrameBuffer::unfilled`], [`FrameBuffer::assume_filled`]).
    pub fn with_capacity(len: usize) -> Self {
        Self {
            bytes: AlignedVec::<FRAME_ALIGNMENT_BYTES>::with_capacity(len),
        }
    }

    /// Appends `bytes`.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    /// The bytes after the filled ones, up to `len` bytes in all (room is made if
    /// needed), not initialised: a reader writes into them, then
    /// [`FrameBuffer::assume_filled`] counts what it wrote. Receiving a 1 MiB fetch
    /// response into zeroed memory cost a `memset` per response.
    pub fn unfilled(&mut self, len: usize) -> &mut [std::mem::MaybeUninit<u8>] {
        let filled = self.bytes.len();
        let wanted = len.saturating_sub(filled);
        self.bytes.reserve(wanted);
        // SAFETY: `reserve` made room for `wanted` bytes after the `filled` ones in the
        // one allocation `as_mut_ptr` points to; `MaybeUninit<u8>` has no validity
        // requirement, and the slice borrows `self` mutably, so nothing else reads or
        // moves the buffer while it lives.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.bytes
                    .as_mut_ptr()
                    .add(filled)
                    .cast::<std::mem::MaybeUninit<u8>>(),
                wanted,
            )
        }
    }

    /// Counts `count` more bytes as filled.
    ///
    /// # Safety
    /// The first `count` bytes of the last [`FrameBuffer::unfilled`] slice were written
    /// (initialised), and `count` is at most its length.
    pub unsafe fn assume_filled(&mut self, count: usize) {
        let len = self.bytes.len() + count;
        debug_assert!(len <= self.bytes.capacity());
        // SAFETY: the caller wrote these `count` bytes, inside the capacity.
        unsafe { self.bytes.set_len(len) };
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.bytes.as_mut_slice()
    }
}

/// Where a run of batches lies inside a frame's data section.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct DataRange {
    /// Byte offset from the start of the data section (a multiple of 16).
    pub offset: u32,
    /// Length in bytes (a multiple of 16).
    pub length: u32,
}

impl ArchivedDataRange {
    /// The bytes of `data` this range names, if it lies inside and is aligned.
    pub fn slice<'a>(&self, data: &'a [u8]) -> Option<&'a [u8]> {
        let offset = self.offset.to_native() as usize;
        let length = self.length.to_native() as usize;
        if !offset.is_multiple_of(FRAME_ALIGNMENT_BYTES)
            || !length.is_multiple_of(FRAME_ALIGNMENT_BYTES)
        {
            return None;
        }
        data.get(offset..offset.checked_add(length)?)
    }
}

/// The fixed fields of a request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// The API called (raw, so unknown keys can be answered).
    pub api_key: u16,
    /// Its version.
    pub api_version: u16,
    /// Echoed in the response.
    pub correlation_id: u32,
}

/// A decoded request frame, borrowing its bytes.
#[derive(Debug, Clone, Copy)]
pub struct RequestFrame<'a> {
    /// The header.
    pub header: RequestHeader,
    /// Who is calling, for logs and quotas.
    pub client_id: &'a str,
    /// The rkyv archive of the API's request.
    pub control: &'a [u8],
    /// Batches, for Produce.
    pub data: &'a [u8],
}

impl<'a> RequestFrame<'a> {
    /// Decodes a whole request frame (length prefix included). `frame` should be 16-byte
    /// aligned so the control archive can be read in place.
    pub fn decode(frame: &'a [u8]) -> Result<Self, FrameError> {
        if frame.len() < REQUEST_HEADER_BYTES {
            return Err(FrameError::Truncated("shorter than a request header"));
        }
        if read_u32(frame, 0) as usize + 4 != frame.len() {
            return Err(FrameError::Malformed(
                "length prefix disagrees with the frame",
            ));
        }
        if read_u16(frame, 14) != 0 || frame[24..32].iter().any(|&byte| byte != 0) {
            return Err(FrameError::Malformed("reserved header bytes are not zero"));
        }
        let header = RequestHeader {
            api_key: read_u16(frame, 4),
            api_version: read_u16(frame, 6),
            correlation_id: read_u32(frame, 8),
        };
        let client_id_length = usize::from(read_u16(frame, 12));
        if client_id_length > CLIENT_ID_BYTES_MAX {
            return Err(FrameError::Malformed("client id too long"));
        }
        let (control, data) = sections(
            frame,
            REQUEST_HEADER_BYTES + padded(client_id_length),
            read_u32(frame, 16) as usize,
            read_u32(frame, 20) as usize,
        )?;
        let client_id = std::str::from_utf8(&frame[32..32 + client_id_length])
            .map_err(|_| FrameError::Malformed("client id is not UTF-8"))?;
        Ok(Self {
            header,
            client_id,
            control,
            data,
        })
    }

    /// Encodes a request frame; `data` is copied after the control part.
    pub fn encode(
        header: RequestHeader,
        client_id: &str,
        control: &[u8],
        data: &[&[u8]],
    ) -> Vec<u8> {
        let mut frame = Self::encode_prefix(header, client_id, control, data_length(data));
        for part in data {
            frame.extend_from_slice(part);
        }
        frame
    }

    /// Everything of a request frame but the data section, so a sender can write the
    /// batches straight from their own buffers after it. The data parts must each be a
    /// multiple of 16 bytes long and total `data_length`.
    pub fn encode_prefix(
        header: RequestHeader,
        client_id: &str,
        control: &[u8],
        data_length: usize,
    ) -> Vec<u8> {
        assert!(client_id.len() <= CLIENT_ID_BYTES_MAX, "client id too long");
        assert!(
            data_length.is_multiple_of(FRAME_ALIGNMENT_BYTES),
            "data must be padded"
        );
        let prefix_length = REQUEST_HEADER_BYTES + padded(client_id.len()) + padded(control.len());
        let frame_length = prefix_length + data_length;
        let mut frame = Vec::with_capacity(prefix_length);
        frame.extend_from_slice(&((frame_length - 4) as u32).to_le_bytes());
        frame.extend_from_slice(&header.api_key.to_le_bytes());
        frame.extend_from_slice(&header.api_version.to_le_bytes());
        frame.extend_from_slice(&header.correlation_id.to_le_bytes());
        frame.extend_from_slice(&(client_id.len() as u16).to_le_bytes());
        frame.extend_from_slice(&[0; 2]);
        frame.extend_from_slice(&(control.len() as u32).to_le_bytes());
        frame.extend_from_slice(&(data_length as u32).to_le_bytes());
        frame.extend_from_slice(&[0; 8]);
        frame.extend_from_slice(client_id.as_bytes());
        frame.resize(REQUEST_HEADER_BYTES + padded(client_id.len()), 0);
        frame.extend_from_slice(control);
        frame.resize(prefix_length, 0);
        frame
    }

    /// The API, if the key is known.
    pub fn api(&self) -> Option<ApiKey> {
        ApiKey::from_u16(self.header.api_key)
    }
}

/// A decoded response frame, borrowing its bytes.
#[derive(Debug, Clone, Copy)]
pub struct ResponseFrame<'a> {
    /// The header.
    pub header: ResponseHeader,
    /// The rkyv archive of the API's response (empty when `error_code` is set).
    pub control: &'a [u8],
    /// Batches, for Fetch.
    pub data: &'a [u8],
}

/// The fixed fields of a response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHeader {
    /// The request's correlation id.
    pub correlation_id: u32,
    /// A frame-level error (malformed request, unknown API, unsupported version); `None`
    /// when the API ran, whose own errors are in the control part.
    pub error_code: ErrorCode,
}

impl<'a> ResponseFrame<'a> {
    /// Decodes a whole response frame (length prefix included).
    pub fn decode(frame: &'a [u8]) -> Result<Self, FrameError> {
        if frame.len() < RESPONSE_HEADER_BYTES {
            return Err(FrameError::Truncated("shorter than a response header"));
        }
        if read_u32(frame, 0) as usize + 4 != frame.len() {
            return Err(FrameError::Malformed(
                "length prefix disagrees with the frame",
            ));
        }
        let header = ResponseHeader {
            correlation_id: read_u32(frame, 4),
            error_code: ErrorCode::from_u16(read_u16(frame, 8)),
        };
        let (control, data) = sections(
            frame,
            RESPONSE_HEADER_BYTES,
            read_u32(frame, 12) as usize,
            read_u32(frame, 16) as usize,
        )?;
        Ok(Self {
            header,
            control,
            data,
        })
    }

    /// Everything of a response frame but the data section (see
    /// [`RequestFrame::encode_prefix`]).
    pub fn encode_prefix(header: ResponseHeader, control: &[u8], data_length: usize) -> Vec<u8> {
        assert!(
            data_length.is_multiple_of(FRAME_ALIGNMENT_BYTES),
            "data must be padded"
        );
        let prefix_length = RESPONSE_HEADER_BYTES + padded(control.len());
        let frame_length = prefix_length + data_length;
        let mut frame = Vec::with_capacity(prefix_length);
        frame.extend_from_slice(&((frame_length - 4) as u32).to_le_bytes());
        frame.extend_from_slice(&header.correlation_id.to_le_bytes());
        frame.extend_from_slice(&header.error_code.as_u16().to_le_bytes());
        frame.extend_from_slice(&[0; 2]);
        frame.extend_from_slice(&(control.len() as u32).to_le_bytes());
        frame.extend_from_slice(&(data_length as u32).to_le_bytes());
        frame.extend_from_slice(&[0; 12]);
        frame.extend_from_slice(control);
        frame.resize(prefix_length, 0);
        frame
    }

    /// Encodes a response frame; `data` is copied after the control part.
    pub fn encode(header: ResponseHeader, control: &[u8], data: &[&[u8]]) -> Vec<u8> {
        let mut frame = Self::encode_prefix(header, control, data_length(data));
        for part in data {
            frame.extend_from_slice(part);
        }
        frame
    }
}

fn data_length(data: &[&[u8]]) -> usize {
    data.iter().map(|part| part.len()).sum()
}

/// Splits the control and data sections after `start`, checking lengths and padding.
fn sections(
    frame: &[u8],
    start: usize,
    control_length: usize,
    data_length: usize,
) -> Result<(&[u8], &[u8]), FrameError> {
    if !data_length.is_multiple_of(FRAME_ALIGNMENT_BYTES) {
        return Err(FrameError::Malformed(
            "data section is not padded to 16 bytes",
        ));
    }
    let data_start = start
        .checked_add(padded(control_length))
        .ok_or(FrameError::Malformed("control length overflows"))?;
    let end = data_start
        .checked_add(data_length)
        .ok_or(FrameError::Malformed("data length overflows"))?;
    if end != frame.len() {
        return Err(FrameError::Truncated(
            "sections disagree with the frame length",
        ));
    }
    Ok((
        &frame[start..start + control_length],
        &frame[data_start..end],
    ))
}

/// A type that can travel as a frame's control part: every request and response body.
/// (A named bound, so code that encodes messages need not name rkyv.)
pub trait ControlMessage:
    rkyv::Archive<Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>>
    + for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>
{
}

impl<T> ControlMessage for T where
    T: rkyv::Archive<Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>>
        + for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>
{
}

/// Encodes a control message as an rkyv archive.
pub fn encode_control<T: ControlMessage>(value: &T) -> AlignedVec {
    rkyv::to_bytes::<rancor::Error>(value).expect("serialising into memory cannot fail")
}

/// An archived message that can be turned back into its owned form `T`.
pub trait Deserialize<T>:
    rkyv::Deserialize<T, rancor::Strategy<rkyv::de::Pool, rancor::Error>>
{
}

impl<A, T> Deserialize<T> for A where
    A: rkyv::Deserialize<T, rancor::Strategy<rkyv::de::Pool, rancor::Error>>
{
}

/// Validates a control archive and returns an owned copy of the message (for clients,
/// which keep responses beyond the frame buffer's life).
pub fn decode_owned<T>(control: &[u8]) -> Result<T, FrameError>
where
    T: ControlMessage,
    T::Archived: Deserialize<T>,
{
    let archived = decode_control::<T>(control)?;
    rkyv::deserialize::<T, rancor::Error>(archived)
        .map_err(|error| FrameError::InvalidControl(error.to_string()))
}

/// Validates a control archive (rkyv bytecheck) and returns a view of it. The slice must
/// be 16-byte aligned, as it is inside an aligned frame buffer.
pub fn decode_control<T>(control: &[u8]) -> Result<&T::Archived, FrameError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    // An empty archive (of an empty struct) has nothing to read in place.
    if !control.is_empty() && !(control.as_ptr() as usize).is_multiple_of(FRAME_ALIGNMENT_BYTES) {
        return Err(FrameError::Misaligned);
    }
    rkyv::access::<T::Archived, rancor::Error>(control)
        .map_err(|error| FrameError::InvalidControl(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader fills the buffer in pieces, without it being zeroed first: the bytes are
    /// what was written, in order, and stay 16-byte aligned.
    #[test]
    fn a_buffer_filled_in_pieces_holds_what_was_written() {
        let mut frame = FrameBuffer::with_capacity(64);
        frame.extend_from_slice(&[1, 2, 3, 4]);
        let mut next = 5u8;
        while frame.as_slice().len() < 100 {
            let unfilled = frame.unfilled(100);
            let piece = unfilled.len().min(7);
            for byte in &mut unfilled[..piece] {
                byte.write(next);
                next = next.wrapping_add(1);
            }
            // SAFETY: the loop above wrote the first `piece` bytes.
            unsafe { frame.assume_filled(piece) };
        }
        assert!(frame.unfilled(100).is_empty());
        let expected: Vec<u8> = (1..=100).collect();
        assert_eq!(frame.as_slice(), &expected[..]);
        assert_eq!(
            frame.as_slice().as_ptr() as usize % FRAME_ALIGNMENT_BYTES,
            0
        );
    }
}
