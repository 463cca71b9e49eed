//! The agent ↔ worker wire protocol: length-prefixed binary frames on a Unix stream socket.
//! The format is specified in `runtime/PROTOCOL.md`; this module is its only implementation.
//!
//! Decoding never panics and never allocates more than the frame's declared length, which is
//! itself refused above the configured maximum before anything is allocated. Tensor data is not
//! copied out of a received frame: decoded tensors hold slices of the frame's [`Bytes`].
//! Large tensors may instead live in the worker's shared tensor arena ([`crate::shm`]): the
//! frame then carries their offset, placed by the sender ([`Message::encode_placing`]) and
//! resolved by the receiver ([`Message::decode_resolving`]).

use bytes::Bytes;

use crate::device::Placement;
use crate::shm::{Region, ShmError};
use crate::tensor::{DataType, ModelSignature, Tensor, byte_len};

/// Version sent in `Hello`; a peer refuses any other. 2: `Hello` carries the placement.
/// 3: tensors may live in the shared tensor arena; requests carry a reply region.
pub const PROTOCOL_VERSION: u16 = 3;
/// Default hard limit on a frame (everything after the length prefix): 64 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;
/// Bytes in the length prefix.
pub const LENGTH_PREFIX: usize = 4;
/// Kind byte + request id: the smallest valid frame body.
pub const HEADER_BYTES: usize = 1 + 8;
/// Most dimensions a tensor may have on the wire.
pub const MAX_RANK: usize = 32;

/// Frame kinds (the byte after the length prefix).
pub mod kind {
    pub const HELLO: u8 = 1;
    pub const INFER_REQUEST: u8 = 2;
    pub const INFER_RESPONSE: u8 = 3;
    pub const ERROR: u8 = 4;
    pub const SHUTDOWN: u8 = 5;
}

/// Why a request failed, as the worker classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The engine refused the input (wrong name, datatype, shape, size): the caller's fault.
    InvalidInput,
    /// The engine failed while running a valid input.
    EngineFailure,
    /// Anything else: a malformed frame, a worker bug, a failed start.
    Internal,
}

impl ErrorClass {
    pub fn code(self) -> u8 {
        match self {
            ErrorClass::InvalidInput => 1,
            ErrorClass::EngineFailure => 2,
            ErrorClass::Internal => 3,
        }
    }

    pub fn from_code(code: u8) -> Option<ErrorClass> {
        match code {
            1 => Some(ErrorClass::InvalidInput),
            2 => Some(ErrorClass::EngineFailure),
            3 => Some(ErrorClass::Internal),
            _ => None,
        }
    }
}

/// The JSON part of `Hello`.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HelloJson {
    signature: ModelSignature,
    placement: Placement,
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Worker → agent, first frame: protocol version, the model's signature and where the
    /// engine runs it. Request id 0.
    Hello {
        version: u16,
        signature: ModelSignature,
        placement: Placement,
    },
    /// Agent → worker: run the model. `outputs` empty means every output. `reply`: where in
    /// the tensor arena the worker may put large outputs (none: all inline).
    InferRequest {
        id: u64,
        outputs: Vec<String>,
        tensors: Vec<Tensor>,
        reply: Option<Region>,
    },
    /// Worker → agent: the outputs of request `id`.
    InferResponse { id: u64, tensors: Vec<Tensor> },
    /// Worker → agent: request `id` failed (id 0: the worker itself failed, e.g. at start).
    Error {
        id: u64,
        class: ErrorClass,
        message: String,
    },
    /// Agent → worker: finish the requests already received, then exit. Request id 0.
    Shutdown,
}

/// A frame that cannot be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge { size: usize, limit: usize },
    #[error("frame of {0} bytes is shorter than the {HEADER_BYTES}-byte header")]
    FrameTooShort(usize),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The frame's body does not parse. `id` is the request id when the header was readable.
    #[error("malformed frame (request {id}): {reason}")]
    Malformed { id: u64, reason: String },
    #[error("cannot encode: {0}")]
    Encode(String),
}

impl Message {
    /// The request id carried in the frame header.
    pub fn id(&self) -> u64 {
        match self {
            Message::InferRequest { id, .. }
            | Message::InferResponse { id, .. }
            | Message::Error { id, .. } => *id,
            Message::Hello { .. } | Message::Shutdown => 0,
        }
    }

    fn kind(&self) -> u8 {
        match self {
            Message::Hello { .. } => kind::HELLO,
            Message::InferRequest { .. } => kind::INFER_REQUEST,
            Message::InferResponse { .. } => kind::INFER_RESPONSE,
            Message::Error { .. } => kind::ERROR,
            Message::Shutdown => kind::SHUTDOWN,
        }
    }

    /// Encodes the whole frame, length prefix included, every tensor inline. Refuses a frame
    /// whose body would exceed `max_frame_bytes`, and counts or names too long for their
    /// fields.
    pub fn encode(&self, max_frame_bytes: usize) -> Result<Vec<u8>, ProtocolError> {
        self.encode_placing(max_frame_bytes, &mut |_| None)
    }

    /// [`Message::encode`], offering each tensor's bytes to `place` first: `Some(offset)` means
    /// `place` wrote them into the tensor arena at that offset and the frame carries only the
    /// offset; `None` sends them inline.
    pub fn encode_placing(
        &self,
        max_frame_bytes: usize,
        place: &mut dyn FnMut(&[u8]) -> Option<u64>,
    ) -> Result<Vec<u8>, ProtocolError> {
        // Small to start: `put_tensors` reserves what the tensors need.
        let mut out = Vec::with_capacity(LENGTH_PREFIX + HEADER_BYTES + 64);
        out.extend_from_slice(&[0; LENGTH_PREFIX]);
        out.push(self.kind());
        out.extend_from_slice(&self.id().to_le_bytes());
        match self {
            Message::Hello {
                version,
                signature,
                placement,
            } => {
                out.extend_from_slice(&version.to_le_bytes());
                let json = serde_json::to_vec(&HelloJson {
                    signature: signature.clone(),
                    placement: placement.clone(),
                })
                .map_err(|e| ProtocolError::Encode(e.to_string()))?;
                out.extend_from_slice(&json);
            }
            Message::InferRequest {
                outputs,
                tensors,
                reply,
                ..
            } => {
                put_count(&mut out, outputs.len(), "outputs")?;
                for name in outputs {
                    put_name(&mut out, name)?;
                }
                let reply = reply.unwrap_or(Region { offset: 0, len: 0 });
                out.extend_from_slice(&reply.offset.to_le_bytes());
                out.extend_from_slice(&reply.len.to_le_bytes());
                put_tensors(&mut out, tensors, place)?;
            }
            Message::InferResponse { tensors, .. } => put_tensors(&mut out, tensors, place)?,
            Message::Error { class, message, .. } => {
                out.push(class.code());
                out.extend_from_slice(message.as_bytes());
            }
            Message::Shutdown => {}
        }
        let body = out.len() - LENGTH_PREFIX;
        if body > max_frame_bytes {
            return Err(ProtocolError::FrameTooLarge {
                size: body,
                limit: max_frame_bytes,
            });
        }
        let len = u32::try_from(body).map_err(|_| ProtocolError::FrameTooLarge {
            size: body,
            limit: u32::MAX as usize,
        })?;
        out[..LENGTH_PREFIX].copy_from_slice(&len.to_le_bytes());
        Ok(out)
    }

    /// Decodes one frame body (everything after the length prefix) on a connection without a
    /// tensor arena: a tensor placed in one is malformed.
    pub fn decode(body: Bytes) -> Result<Message, ProtocolError> {
        Self::decode_resolving(body, &mut |_, _| {
            Err(ArenaRefusal::NoArena("this connection has no tensor arena"))
        })
    }

    /// [`Message::decode`], with `resolve(offset, len)` giving the bytes of a tensor placed in
    /// the tensor arena (its error makes the frame malformed).
    pub fn decode_resolving(
        body: Bytes,
        resolve: &mut dyn FnMut(u64, usize) -> Result<Bytes, ArenaRefusal>,
    ) -> Result<Message, ProtocolError> {
        if body.len() < HEADER_BYTES {
            return Err(ProtocolError::FrameTooShort(body.len()));
        }
        let kind = body[0];
        let mut id_bytes = [0u8; 8];
        id_bytes.copy_from_slice(&body[1..HEADER_BYTES]);
        let id = u64::from_le_bytes(id_bytes);
        let mut r = Reader {
            buf: body.slice(HEADER_BYTES..),
            pos: 0,
            id,
            resolve,
        };
        let message = match kind {
            kind::HELLO => {
                let version = r.u16()?;
                let json = r.rest();
                let hello: HelloJson = serde_json::from_slice(&json)
                    .map_err(|e| r.malformed(format!("Hello JSON: {e}")))?;
                Message::Hello {
                    version,
                    signature: hello.signature,
                    placement: hello.placement,
                }
            }
            kind::INFER_REQUEST => {
                let n = r.u16()? as usize;
                // Each name needs at least its 2-byte length: never reserve beyond what is there.
                let mut outputs = Vec::with_capacity(n.min(r.remaining() / 2));
                for _ in 0..n {
                    outputs.push(r.name()?);
                }
                let reply = match (r.u64()?, r.u64()?) {
                    (_, 0) => None,
                    (offset, len) => Some(Region { offset, len }),
                };
                let tensors = r.tensors()?;
                r.end()?;
                Message::InferRequest {
                    id,
                    outputs,
                    tensors,
                    reply,
                }
            }
            kind::INFER_RESPONSE => {
                let tensors = r.tensors()?;
                r.end()?;
                Message::InferResponse { id, tensors }
            }
            kind::ERROR => {
                let code = r.u8()?;
                let class = ErrorClass::from_code(code)
                    .ok_or_else(|| r.malformed(format!("unknown error class {code}")))?;
                let message = String::from_utf8_lossy(&r.rest()).into_owned();
                Message::Error { id, class, message }
            }
            kind::SHUTDOWN => {
                r.end()?;
                Message::Shutdown
            }
            other => return Err(ProtocolError::UnknownKind(other)),
        };
        Ok(message)
    }
}

fn put_count(out: &mut Vec<u8>, n: usize, what: &str) -> Result<(), ProtocolError> {
    let n = u16::try_from(n)
        .map_err(|_| ProtocolError::Encode(format!("{n} {what}: at most 65535")))?;
    out.extend_from_slice(&n.to_le_bytes());
    Ok(())
}

fn put_name(out: &mut Vec<u8>, name: &str) -> Result<(), ProtocolError> {
    let n = u16::try_from(name.len())
        .map_err(|_| ProtocolError::Encode("name longer than 65535 bytes".into()))?;
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    Ok(())
}

/// How a tensor's bytes travel: inline in the frame, or in the tensor arena at an offset.
mod storage {
    pub const INLINE: u8 = 0;
    pub const SHARED: u8 = 1;
}

fn put_tensors(
    out: &mut Vec<u8>,
    tensors: &[Tensor],
    place: &mut dyn FnMut(&[u8]) -> Option<u64>,
) -> Result<(), ProtocolError> {
    put_count(out, tensors.len(), "tensors")?;
    for t in tensors {
        if t.shape.len() > MAX_RANK {
            return Err(ProtocolError::Encode(format!(
                "tensor {:?} has rank {}, at most {MAX_RANK}",
                t.name,
                t.shape.len()
            )));
        }
        if byte_len(t.dtype, &t.shape) != Some(t.data.len()) {
            return Err(ProtocolError::Encode(format!(
                "tensor {:?}: {} bytes do not match {} shape {:?}",
                t.name,
                t.data.len(),
                t.dtype,
                t.shape
            )));
        }
    }
    // Placed first, so that the frame reserves room for exactly the bytes it carries inline
    // (a tensor in the arena costs the frame its offset only).
    let placed: Vec<Option<u64>> = tensors.iter().map(|t| place(&t.data)).collect();
    let room = tensors
        .iter()
        .zip(&placed)
        .map(|(t, at)| {
            let data = if at.is_some() { 8 } else { t.data.len() };
            2 + t.name.len() + 2 + 8 * t.shape.len() + 8 + 1 + data
        })
        .fold(0usize, usize::saturating_add);
    out.reserve(room);
    for (t, at) in tensors.iter().zip(placed) {
        put_name(out, &t.name)?;
        out.push(t.dtype.code());
        out.push(t.shape.len() as u8);
        for &d in &t.shape {
            out.extend_from_slice(&(d as u64).to_le_bytes());
        }
        out.extend_from_slice(&(t.data.len() as u64).to_le_bytes());
        match at {
            Some(offset) => {
                out.push(storage::SHARED);
                out.extend_from_slice(&offset.to_le_bytes());
            }
            None => {
                out.push(storage::INLINE);
                out.extend_from_slice(&t.data);
            }
        }
    }
    Ok(())
}

/// Why a tensor placed in the tensor arena cannot be read: the frame is then malformed.
#[derive(Debug, thiserror::Error)]
pub enum ArenaRefusal {
    /// This connection (or this request) has no arena, or no reply region in it.
    #[error("tensor in shared memory, but {0}")]
    NoArena(&'static str),
    /// An offset this machine cannot address.
    #[error("offset {0} is not addressable")]
    Offset(u64),
    /// The arena refused the range.
    #[error(transparent)]
    Shm(#[from] ShmError),
}

/// A bounds-checked cursor over a frame body.
struct Reader<'r> {
    buf: Bytes,
    pos: usize,
    id: u64,
    resolve: &'r mut dyn FnMut(u64, usize) -> Result<Bytes, ArenaRefusal>,
}

impl Reader<'_> {
    fn malformed(&self, reason: impl Into<String>) -> ProtocolError {
        ProtocolError::Malformed {
            id: self.id,
            reason: reason.into(),
        }
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize) -> Result<Bytes, ProtocolError> {
        if n > self.remaining() {
            return Err(self.malformed(format!(
                "needs {n} more bytes at offset {}, only {} left",
                self.pos + HEADER_BYTES,
                self.remaining()
            )));
        }
        let out = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let b = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&b);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, ProtocolError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn rest(&mut self) -> Bytes {
        let out = self.buf.slice(self.pos.min(self.buf.len())..);
        self.pos = self.buf.len();
        out
    }

    fn end(&self) -> Result<(), ProtocolError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(self.malformed(format!("{n} trailing bytes"))),
        }
    }

    fn name(&mut self) -> Result<String, ProtocolError> {
        let n = self.u16()? as usize;
        let raw = self.take(n)?;
        String::from_utf8(raw.to_vec()).map_err(|_| self.malformed("name is not UTF-8"))
    }

    fn tensors(&mut self) -> Result<Vec<Tensor>, ProtocolError> {
        let n = self.u16()? as usize;
        // A tensor needs at least 2 (name) + 1 (dtype) + 1 (rank) + 8 (byte length) + 1
        // (storage) bytes.
        let mut tensors = Vec::with_capacity(n.min(self.remaining() / 13));
        for _ in 0..n {
            tensors.push(self.tensor()?);
        }
        Ok(tensors)
    }

    fn tensor(&mut self) -> Result<Tensor, ProtocolError> {
        let name = self.name()?;
        let code = self.u8()?;
        let dtype = DataType::from_code(code)
            .ok_or_else(|| self.malformed(format!("tensor {name:?}: unknown dtype code {code}")))?;
        let rank = self.u8()? as usize;
        if rank > MAX_RANK {
            return Err(self.malformed(format!("tensor {name:?}: rank {rank} exceeds {MAX_RANK}")));
        }
        let mut shape = Vec::with_capacity(rank);
        for _ in 0..rank {
            let d = self.u64()?;
            shape.push(
                usize::try_from(d)
                    .map_err(|_| self.malformed(format!("tensor {name:?}: dimension {d}")))?,
            );
        }
        let len = self.u64()?;
        let expected = byte_len(dtype, &shape);
        if expected.map(|e| e as u64) != Some(len) {
            return Err(self.malformed(format!(
                "tensor {name:?}: {dtype} shape {shape:?} needs {} bytes, frame says {len}",
                expected.map_or_else(|| "too many".to_string(), |e| e.to_string())
            )));
        }
        let len = usize::try_from(len).map_err(|_| self.malformed("length"))?;
        let data = match self.u8()? {
            storage::INLINE => self.take(len)?,
            storage::SHARED => {
                let offset = self.u64()?;
                (self.resolve)(offset, len)
                    .map_err(|e| self.malformed(format!("tensor {name:?}: {e}")))?
            }
            other => {
                return Err(self.malformed(format!("tensor {name:?}: unknown storage {other}")));
            }
        };
        Tensor::new(name, dtype, shape, data).map_err(|e| self.malformed(e.to_string()))
    }
}

/// Checks a frame length prefix against the limit; returns the body length.
pub fn check_length(
    prefix: [u8; LENGTH_PREFIX],
    max_frame_bytes: usize,
) -> Result<usize, ProtocolError> {
    let size = u32::from_le_bytes(prefix) as usize;
    if size > max_frame_bytes {
        return Err(ProtocolError::FrameTooLarge {
            size,
            limit: max_frame_bytes,
        });
    }
    if size < HEADER_BYTES {
        return Err(ProtocolError::FrameTooShort(size));
    }
    Ok(size)
}

/// Errors while reading frames from a stream.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Reads one frame body from a blocking stream. `Ok(None)` on a clean end of stream (no byte
/// of a new frame read). Allocates the body only after its length passed [`check_length`].
pub fn read_frame<R: std::io::Read>(
    r: &mut R,
    max_frame_bytes: usize,
) -> Result<Option<Bytes>, ReadError> {
    let mut prefix = [0u8; LENGTH_PREFIX];
    let mut got = 0;
    while got < LENGTH_PREFIX {
        match r.read(&mut prefix[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let size = check_length(prefix, max_frame_bytes)?;
    let mut body = vec![0u8; size];
    r.read_exact(&mut body)?;
    Ok(Some(Bytes::from(body)))
}

/// Async twin of [`read_frame`].
pub async fn read_frame_async<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    max_frame_bytes: usize,
) -> Result<Option<Bytes>, ReadError> {
    use tokio::io::AsyncReadExt;
    let mut prefix = [0u8; LENGTH_PREFIX];
    let mut got = 0;
    while got < LENGTH_PREFIX {
        match r.read(&mut prefix[got..]).await? {
            0 if got == 0 => return Ok(None),
            0 => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
            n => got += n,
        }
    }
    let size = check_length(prefix, max_frame_bytes)?;
    let mut body = vec![0u8; size];
    r.read_exact(&mut body).await?;
    Ok(Some(Bytes::from(body)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::TensorSpec;

    fn sample_tensors() -> Vec<Tensor> {
        vec![
            Tensor::new(
                "input",
                DataType::Fp32,
                vec![2, 3],
                Bytes::from((0..24u8).collect::<Vec<_>>()),
            )
            .unwrap(),
            Tensor::new("flag", DataType::Bool, vec![], Bytes::from_static(&[1])).unwrap(),
            Tensor::new("empty", DataType::Int64, vec![0, 5], Bytes::new()).unwrap(),
        ]
    }

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello {
                version: PROTOCOL_VERSION,
                signature: ModelSignature {
                    inputs: vec![TensorSpec {
                        name: "input".into(),
                        datatype: DataType::Fp32,
                        shape: vec![-1, 30],
                    }],
                    outputs: vec![],
                },
                placement: Placement::cpu("CPUExecutionProvider"),
            },
            Message::InferRequest {
                id: 7,
                outputs: vec!["label".into(), "probabilities".into()],
                tensors: sample_tensors(),
                reply: None,
            },
            Message::InferRequest {
                id: u64::MAX,
                outputs: vec![],
                tensors: vec![],
                reply: Some(Region {
                    offset: 4096,
                    len: 1 << 20,
                }),
            },
            Message::InferResponse {
                id: 8,
                tensors: sample_tensors(),
            },
            Message::Error {
                id: 9,
                class: ErrorClass::InvalidInput,
                message: "bad shape ü".into(),
            },
            Message::Shutdown,
        ]
    }

    fn body(frame: &[u8]) -> Bytes {
        Bytes::copy_from_slice(&frame[LENGTH_PREFIX..])
    }

    #[test]
    fn round_trip() {
        for m in samples() {
            let frame = m.encode(DEFAULT_MAX_FRAME_BYTES).unwrap();
            let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
            assert_eq!(len, frame.len() - 4);
            let mut cursor = std::io::Cursor::new(frame.clone());
            let read = read_frame(&mut cursor, DEFAULT_MAX_FRAME_BYTES)
                .unwrap()
                .unwrap();
            assert_eq!(Message::decode(read).unwrap(), m);
            assert!(
                read_frame(&mut cursor, DEFAULT_MAX_FRAME_BYTES)
                    .unwrap()
                    .is_none()
            );
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        for m in samples() {
            let frame = m.encode(DEFAULT_MAX_FRAME_BYTES).unwrap();
            let full = body(&frame);
            for cut in 0..full.len() {
                let r = Message::decode(full.slice(..cut));
                // A Hello/Error/Shutdown cut can only fail; others must fail too, except a cut
                // that still parses as a different but valid message is impossible for
                // length-prefixed fields, so every strict prefix must be refused.
                if matches!(m, Message::Error { .. }) && cut > HEADER_BYTES {
                    // Error messages are free text to the end of the frame: a cut is valid text.
                    continue;
                }
                assert!(r.is_err(), "{m:?} cut at {cut} decoded as {r:?}");
            }
            // And truncating the stream mid-frame is an I/O error, not a hang or panic.
            for cut in 1..frame.len() {
                let mut cursor = std::io::Cursor::new(frame[..cut].to_vec());
                assert!(read_frame(&mut cursor, DEFAULT_MAX_FRAME_BYTES).is_err());
            }
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let frame = Message::InferResponse {
            id: 1,
            tensors: sample_tensors(),
        }
        .encode(DEFAULT_MAX_FRAME_BYTES)
        .unwrap();
        let mut b = frame[LENGTH_PREFIX..].to_vec();
        b.push(0);
        assert!(matches!(
            Message::decode(Bytes::from(b)),
            Err(ProtocolError::Malformed { id: 1, .. })
        ));
    }

    /// Deterministic xorshift so the fuzz cases are reproducible.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn garbage_and_mutations_never_panic() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        // Pure garbage of every small length, every kind byte.
        for len in 0..200usize {
            for _ in 0..20 {
                let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                if let Some(k) = b.first_mut() {
                    *k = (rng.next() % 7) as u8;
                }
                let _ = Message::decode(Bytes::from(b));
            }
        }
        // Bit flips and byte overwrites of valid frames.
        for m in samples() {
            let frame = m.encode(DEFAULT_MAX_FRAME_BYTES).unwrap();
            let full = frame[LENGTH_PREFIX..].to_vec();
            for _ in 0..2000 {
                let mut b = full.clone();
                for _ in 0..(1 + rng.next() % 4) {
                    let i = (rng.next() as usize) % b.len();
                    b[i] = if rng.next().is_multiple_of(2) {
                        rng.next() as u8
                    } else {
                        0xFF
                    };
                }
                if let Ok(
                    Message::InferRequest { tensors, .. } | Message::InferResponse { tensors, .. },
                ) = Message::decode(Bytes::from(b))
                {
                    for t in tensors {
                        assert_eq!(byte_len(t.dtype, &t.shape), Some(t.data.len()));
                    }
                }
            }
        }
    }

    #[test]
    fn huge_declared_sizes_are_refused_before_allocating() {
        // A length prefix over the limit: refused from the 4 bytes alone.
        let mut cursor = std::io::Cursor::new(vec![0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3]);
        assert!(matches!(
            read_frame(&mut cursor, DEFAULT_MAX_FRAME_BYTES),
            Err(ReadError::Protocol(ProtocolError::FrameTooLarge { .. }))
        ));
        let mut cursor = std::io::Cursor::new(vec![3, 0, 0, 0, 1, 2, 3]);
        assert!(matches!(
            read_frame(&mut cursor, DEFAULT_MAX_FRAME_BYTES),
            Err(ReadError::Protocol(ProtocolError::FrameTooShort(3)))
        ));
        // A frame within limits that claims 65535 tensors with huge dims and byte lengths.
        let mut b = vec![kind::INFER_RESPONSE];
        b.extend_from_slice(&5u64.to_le_bytes());
        b.extend_from_slice(&u16::MAX.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.push(b'x');
        b.push(DataType::Fp64.code());
        b.push(2);
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            Message::decode(Bytes::from(b)),
            Err(ProtocolError::Malformed { id: 5, .. })
        ));
        // Rank above the maximum.
        let mut b = vec![kind::INFER_RESPONSE];
        b.extend_from_slice(&6u64.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.push(DataType::Fp32.code());
        b.push(200);
        assert!(Message::decode(Bytes::from(b)).is_err());
        // Byte length that disagrees with the shape.
        let mut b = vec![kind::INFER_RESPONSE];
        b.extend_from_slice(&6u64.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.push(DataType::Fp32.code());
        b.push(1);
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&7u64.to_le_bytes());
        b.extend_from_slice(&[0; 7]);
        assert!(Message::decode(Bytes::from(b)).is_err());
    }

    #[test]
    fn limits_apply_on_encode_and_read() {
        let m = Message::InferRequest {
            id: 1,
            outputs: vec![],
            tensors: vec![
                Tensor::new("x", DataType::Uint8, vec![1000], Bytes::from(vec![0; 1000])).unwrap(),
            ],
            reply: None,
        };
        assert!(matches!(
            m.encode(512),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
        let frame = m.encode(DEFAULT_MAX_FRAME_BYTES).unwrap();
        let mut cursor = std::io::Cursor::new(frame);
        assert!(matches!(
            read_frame(&mut cursor, 512),
            Err(ReadError::Protocol(ProtocolError::FrameTooLarge { .. }))
        ));
        // A tensor whose public fields were set inconsistently is refused on encode.
        let bad = Message::InferResponse {
            id: 1,
            tensors: vec![Tensor {
                name: "x".into(),
                dtype: DataType::Fp32,
                shape: vec![2],
                data: Bytes::from_static(&[0; 7]),
            }],
        };
        assert!(matches!(bad.encode(1 << 20), Err(ProtocolError::Encode(_))));
    }

    #[test]
    fn tensors_placed_in_the_arena_travel_as_offsets() {
        let big = Tensor::new(
            "x",
            DataType::Uint8,
            vec![3, 1000],
            Bytes::from((0..3000).map(|i| i as u8).collect::<Vec<_>>()),
        )
        .unwrap();
        let small = sample_tensors().remove(1);
        let m = Message::InferRequest {
            id: 3,
            outputs: vec![],
            tensors: vec![small.clone(), big.clone()],
            reply: Some(Region {
                offset: 8192,
                len: 4096,
            }),
        };
        // A stand-in arena: placement writes at 64, resolution reads from there.
        let mut arena = vec![0u8; 8192];
        let frame = m
            .encode_placing(DEFAULT_MAX_FRAME_BYTES, &mut |data| {
                (data.len() >= 1000).then(|| {
                    arena[64..64 + data.len()].copy_from_slice(data);
                    64
                })
            })
            .unwrap();
        assert!(
            frame.len() < 200,
            "the big tensor's bytes are not in the frame"
        );
        let decoded = Message::decode_resolving(body(&frame), &mut |offset, len| {
            assert_eq!((offset, len), (64, 3000));
            Ok(Bytes::copy_from_slice(&arena[64..64 + len]))
        })
        .unwrap();
        assert_eq!(decoded, m);

        // Without an arena, or when the resolver refuses, the frame is malformed (with its id).
        assert!(matches!(
            Message::decode(body(&frame)),
            Err(ProtocolError::Malformed { id: 3, ref reason }) if reason.contains("no tensor arena")
        ));
        assert!(matches!(
            Message::decode_resolving(body(&frame), &mut |_, _| Err(ArenaRefusal::Offset(u64::MAX))),
            Err(ProtocolError::Malformed { id: 3, ref reason }) if reason.contains("not addressable")
        ));
        // Every truncation of a frame with an offset is refused too.
        let full = body(&frame);
        for cut in 0..full.len() {
            let r = Message::decode_resolving(full.slice(..cut), &mut |_, len| {
                Ok(Bytes::from(vec![0; len]))
            });
            assert!(r.is_err(), "cut at {cut} decoded");
        }
        // An unknown storage byte is refused.
        let mut b = body(&frame).to_vec();
        let storage_at = b.len() - 9;
        assert_eq!(b[storage_at], storage::SHARED);
        b[storage_at] = 7;
        assert!(matches!(
            Message::decode_resolving(Bytes::from(b), &mut |_, len| Ok(Bytes::from(vec![0; len]))),
            Err(ProtocolError::Malformed { ref reason, .. }) if reason.contains("unknown storage 7")
        ));
    }

    #[test]
    fn unknown_kinds_and_classes() {
        let mut b = vec![99];
        b.extend_from_slice(&1u64.to_le_bytes());
        assert_eq!(
            Message::decode(Bytes::from(b)),
            Err(ProtocolError::UnknownKind(99))
        );
        let mut b = vec![kind::ERROR];
        b.extend_from_slice(&1u64.to_le_bytes());
        b.push(42);
        assert!(matches!(
            Message::decode(Bytes::from(b)),
            Err(ProtocolError::Malformed { id: 1, .. })
        ));
    }

    #[tokio::test]
    async fn async_reader_matches_sync_reader() {
        let mut stream = Vec::new();
        for m in samples() {
            stream.extend(m.encode(DEFAULT_MAX_FRAME_BYTES).unwrap());
        }
        let mut r = &stream[..];
        for m in samples() {
            let b = read_frame_async(&mut r, DEFAULT_MAX_FRAME_BYTES)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(Message::decode(b).unwrap(), m);
        }
        assert!(
            read_frame_async(&mut r, DEFAULT_MAX_FRAME_BYTES)
                .await
                .unwrap()
                .is_none()
        );
    }
}
