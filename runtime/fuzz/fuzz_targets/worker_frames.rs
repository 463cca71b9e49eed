//! The agent ↔ worker wire protocol (`warden_runtime_client::protocol`): frame bodies from a
//! peer that may be compromised (a worker after an engine exploit, or the agent as the worker
//! sees it), the stream framing, and the tensor arena lookups a frame's offsets lead to.
//!
//! Input: one mode byte, then bytes. Mode bits 0-1 choose how tensors placed in the arena are
//! resolved: none (`Message::decode`), a worker-side view (`Mapping::view`) or an agent-side
//! copy (`Mapping::copy_out`) of a real 64 KiB memfd arena filled with a known pattern.
//! Mode bit 2: the bytes are a stream of length-prefixed frames (`read_frame`, limit from
//! bits 3-7), each body decoded; otherwise they are one frame body.
//!
//! Properties:
//! - decoding never panics; a decoded tensor's bytes are exactly what its shape and datatype
//!   need, at most rank 32; arena bytes are exactly the arena's bytes at that offset;
//! - a decoded message encodes again (`encode`), the frame's prefix is its body's length,
//!   `read_frame` returns that body and `decode` gives the same message; an `InferResponse`
//!   re-encodes to the very bytes it came from (its encoding is canonical);
//! - encoding with every tensor placed in a stand-in arena (`encode_placing`) and decoding with
//!   the matching resolver gives the same message;
//! - `read_frame` returns `None` only at a frame boundary, bodies within
//!   `[HEADER_BYTES, limit]`, never more bytes than the stream held; `check_length` agrees.
#![no_main]

use std::io::Cursor;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use warden_runtime_client::protocol::{
    ArenaRefusal, HEADER_BYTES, LENGTH_PREFIX, MAX_RANK, Message, check_length, read_frame,
};
use warden_runtime_client::shm::Mapping;
use warden_runtime_client::tensor::{Tensor, byte_len};

const ARENA: usize = 64 * 1024;
/// Large enough for anything decoded from a fuzz input, re-encoded.
const BIG: usize = 1 << 30;

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 8)) as u8
}

fn arena() -> &'static Arc<Mapping> {
    static ARENA_MAP: OnceLock<Arc<Mapping>> = OnceLock::new();
    ARENA_MAP.get_or_init(|| {
        let (m, _fd) = Mapping::create(ARENA).unwrap_or_else(|e| panic!("memfd arena: {e}"));
        let bytes: Vec<u8> = (0..ARENA).map(pattern).collect();
        m.write(0, &bytes).unwrap_or_else(|e| panic!("{e}"));
        Arc::new(m)
    })
}

fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 4 == 0 {
        decode_one(mode, Bytes::copy_from_slice(rest));
        return;
    }
    // A stream of frames.
    let limit = HEADER_BYTES + usize::from(mode >> 3) * 64;
    if let Some(prefix) = rest.first_chunk::<LENGTH_PREFIX>() {
        let declared = u32::from_le_bytes(*prefix) as usize;
        match check_length(*prefix, limit) {
            Ok(n) => assert!(n == declared && (HEADER_BYTES..=limit).contains(&n)),
            Err(_) => assert!(declared < HEADER_BYTES || declared > limit),
        }
    }
    let mut cursor = Cursor::new(rest);
    loop {
        let before = cursor.position() as usize;
        match read_frame(&mut cursor, limit) {
            Ok(Some(body)) => {
                assert!((HEADER_BYTES..=limit).contains(&body.len()));
                let after = cursor.position() as usize;
                assert_eq!(after - before, LENGTH_PREFIX + body.len());
                assert_eq!(&rest[before + LENGTH_PREFIX..after], &body[..]);
                decode_one(mode, body);
            }
            Ok(None) => {
                assert_eq!(before, rest.len(), "end of stream reported mid-stream");
                break;
            }
            Err(_) => break,
        }
    }
}

fn resolve(mode: u8, offset: u64, len: usize) -> Result<Bytes, ArenaRefusal> {
    let map = arena();
    let offset = usize::try_from(offset).map_err(|_| ArenaRefusal::Offset(offset))?;
    let got = match mode & 3 {
        1 => map.view(offset, len)?,
        2 => map.copy_out(offset, len)?,
        _ => return Err(ArenaRefusal::NoArena("no arena in this mode")),
    };
    assert_eq!(got.len(), len);
    assert!(
        offset + len <= ARENA,
        "{len} bytes at {offset} resolved outside the arena"
    );
    for (i, b) in got.iter().enumerate() {
        assert_eq!(*b, pattern(offset + i), "arena byte {}", offset + i);
    }
    Ok(got)
}

fn check_tensors(tensors: &[Tensor]) {
    for t in tensors {
        assert!(t.shape.len() <= MAX_RANK);
        assert_eq!(
            byte_len(t.dtype, &t.shape),
            Some(t.data.len()),
            "{:?}",
            t.name
        );
    }
}

fn decode_one(mode: u8, body: Bytes) {
    let decoded = if mode & 3 == 0 {
        Message::decode(body.clone())
    } else {
        Message::decode_resolving(body.clone(), &mut |offset, len| resolve(mode, offset, len))
    };
    let Ok(message) = decoded else {
        return;
    };
    match &message {
        Message::InferRequest { tensors, .. } | Message::InferResponse { tensors, .. } => {
            check_tensors(tensors)
        }
        _ => {}
    }

    // Inline re-encoding: same message back, through the stream reader.
    let frame = message
        .encode(BIG)
        .unwrap_or_else(|e| panic!("a decoded message does not encode: {e}"));
    let declared = u32::from_le_bytes(frame[..LENGTH_PREFIX].try_into().unwrap_or([0; 4]));
    assert_eq!(declared as usize, frame.len() - LENGTH_PREFIX);
    let mut cursor = Cursor::new(&frame[..]);
    let read = read_frame(&mut cursor, BIG)
        .unwrap_or_else(|e| panic!("read_frame of an encoded frame: {e}"))
        .unwrap_or_else(|| panic!("read_frame: no frame"));
    assert!(matches!(read_frame(&mut cursor, BIG), Ok(None)));
    let again = Message::decode(read.clone()).unwrap_or_else(|e| panic!("decode again: {e}"));
    assert_eq!(again, message);
    let inline_only = matches!(message, Message::InferResponse { .. });
    if inline_only && !has_shared_storage(&body) {
        assert_eq!(read, body, "an InferResponse's encoding is not canonical");
    }

    // Every tensor placed in a stand-in arena, then resolved from it.
    let mut stand_in: Vec<u8> = Vec::new();
    let placed = message
        .encode_placing(BIG, &mut |data| {
            let at = stand_in.len() as u64;
            stand_in.extend_from_slice(data);
            Some(at)
        })
        .unwrap_or_else(|e| panic!("encode_placing: {e}"));
    let back =
        Message::decode_resolving(Bytes::from(placed).slice(LENGTH_PREFIX..), &mut |o, l| {
            let at = usize::try_from(o).map_err(|_| ArenaRefusal::Offset(o))?;
            let end = at.checked_add(l).ok_or(ArenaRefusal::Offset(o))?;
            stand_in
                .get(at..end)
                .map(Bytes::copy_from_slice)
                .ok_or(ArenaRefusal::NoArena(
                    "the range is outside the stand-in arena",
                ))
        })
        .unwrap_or_else(|e| panic!("decode of a placed encoding: {e}"));
    assert_eq!(back, message);
}

/// Whether a frame body names the shared storage anywhere: re-encoding inlines those tensors,
/// so its bytes differ. (Conservative: any `InferResponse` whose tensors were all inline
/// re-encodes byte for byte.)
fn has_shared_storage(body: &Bytes) -> bool {
    // Re-decoding without an arena fails exactly when a tensor is in shared storage.
    Message::decode(body.clone()).is_err()
}
