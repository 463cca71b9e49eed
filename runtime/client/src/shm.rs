//! The tensor arena: one shared-memory region per worker process, through which large tensors
//! cross between the agent and the worker instead of through the socket.
//!
//! Why: on the socket a tensor is copied into the frame, into the kernel, out of the kernel,
//! and the same again for the outputs; with the arena the agent writes an input once, the
//! worker's engine reads it in place, and an output is written once by the worker and copied
//! out once by the agent (`large_tensors` bench).
//!
//! How (see `PROTOCOL.md`, "Shared tensor arena"):
//! - The agent creates an anonymous memfd of the configured size, seals it against shrinking
//!   and growing (so the worker can never make the agent's mapping fault), maps it, and hands
//!   the descriptor to the worker over the socket (`SCM_RIGHTS`) before the first frame. The
//!   worker checks size and seals, maps it before entering its sandbox and closes the
//!   descriptor. No other process ever gets it: each worker has its own arena.
//! - For each request the agent reserves one [`Slot`]: the large inputs, then a reply region
//!   where the worker may put large outputs. A tensor in the arena travels in the frame as its
//!   offset; everything else (small tensors, what does not fit) travels inline as before.
//! - A slot is released only once the worker has answered that request (or the connection is
//!   gone) — also when the caller gave up on it — so the worker never writes into a range the
//!   agent has reused. The agent copies outputs out with bounds checks against that request's
//!   reply region and treats them as untrusted bytes; the worker's views of its inputs end
//!   before it answers.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use memmap2::MmapRaw;
use nix::fcntl::{FcntlArg, SealFlag, fcntl};

use crate::sys;

/// Tensors smaller than this travel inline in the frame: below it a slot costs more than the
/// copies it saves.
pub const SHARED_MIN_BYTES: usize = 16 << 10;
/// The reply region of a slot is at least this large, so that a request with small inputs and
/// large outputs (an embedding, a segmentation mask) still gets its outputs through the arena.
pub const REPLY_MIN_BYTES: usize = 1 << 20;
/// Offsets in the arena are multiples of this (cache line, and any element type's alignment).
pub const ALIGN: usize = 64;
/// The seals an arena must carry.
fn required_seals() -> SealFlag {
    SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL
}

/// Why the arena cannot be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    #[error("tensor arena: {0}")]
    Setup(String),
    #[error("tensor arena: {0}")]
    Transfer(String),
}

fn setup(what: &str, e: impl std::fmt::Display) -> ShmError {
    ShmError::Setup(format!("{what}: {e}"))
}

fn align_up(n: usize) -> Option<usize> {
    n.checked_add(ALIGN - 1).map(|n| n & !(ALIGN - 1))
}

/// A mapped arena (both sides).
pub struct Mapping {
    map: MmapRaw,
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("len", &self.map.len())
            .finish()
    }
}

impl Mapping {
    /// Agent side: a new sealed memfd of `len` bytes, mapped; the descriptor is for the worker.
    pub fn create(len: usize) -> Result<(Mapping, OwnedFd), ShmError> {
        use nix::sys::memfd::{MFdFlags, memfd_create};
        if len == 0 || !len.is_multiple_of(ALIGN) {
            return Err(ShmError::Setup(format!(
                "size {len} must be a positive multiple of {ALIGN}"
            )));
        }
        let fd = memfd_create(
            c"warden-tensors",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(|e| setup("memfd_create", e))?;
        let size = i64::try_from(len).map_err(|e| setup("size", e))?;
        nix::unistd::ftruncate(&fd, size).map_err(|e| setup("ftruncate", e))?;
        fcntl(&fd, FcntlArg::F_ADD_SEALS(required_seals())).map_err(|e| setup("seal", e))?;
        let map = MmapRaw::map_raw(&fd).map_err(|e| setup("mmap", e))?;
        Ok((Mapping { map }, fd))
    }

    /// Worker side: maps the descriptor the agent sent, after checking that it is a memfd of
    /// exactly `len` bytes sealed so that it cannot shrink, grow or lose its seals.
    pub fn open(fd: OwnedFd, len: usize) -> Result<Mapping, ShmError> {
        let seals = fcntl(fd.as_fd(), FcntlArg::F_GET_SEALS)
            .map_err(|e| setup("not a sealable memfd", e))?;
        let seals = SealFlag::from_bits_truncate(seals);
        if !seals.contains(required_seals()) {
            return Err(ShmError::Setup(format!(
                "descriptor is not sealed against resizing ({seals:?})"
            )));
        }
        let file = std::fs::File::from(fd);
        let actual = file.metadata().map_err(|e| setup("fstat", e))?.len();
        if actual != len as u64 {
            return Err(ShmError::Setup(format!(
                "descriptor holds {actual} bytes, expected {len}"
            )));
        }
        let map = MmapRaw::map_raw(&file).map_err(|e| setup("mmap", e))?;
        // `file` (the descriptor) closes here; the mapping stays.
        Ok(Mapping { map })
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Writes `data` at `offset`; refuses a range outside the arena.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), ShmError> {
        if sys::copy_to_shared(&self.map, offset, data) {
            Ok(())
        } else {
            Err(ShmError::Transfer(format!(
                "{} bytes at {offset} are outside the arena",
                data.len()
            )))
        }
    }

    /// Copies `len` bytes from `offset` (agent side: the worker's outputs).
    pub fn copy_out(&self, offset: usize, len: usize) -> Result<Bytes, ShmError> {
        sys::copy_from_shared(&self.map, offset, len)
            .map(Bytes::from)
            .ok_or_else(|| {
                ShmError::Transfer(format!("{len} bytes at {offset} are outside the arena"))
            })
    }

    /// A zero-copy view of `len` bytes at `offset` (worker side: a request's inputs). Drop it
    /// before answering that request.
    pub fn view(self: &Arc<Self>, offset: usize, len: usize) -> Result<Bytes, ShmError> {
        if sys::shared_view(&self.map, offset, len).is_none() {
            return Err(ShmError::Transfer(format!(
                "{len} bytes at {offset} are outside the arena"
            )));
        }
        Ok(Bytes::from_owner(View {
            mapping: Arc::clone(self),
            offset,
            len,
        }))
    }
}

/// The owner behind a worker-side view: keeps the mapping alive.
struct View {
    mapping: Arc<Mapping>,
    offset: usize,
    len: usize,
}

impl AsRef<[u8]> for View {
    fn as_ref(&self) -> &[u8] {
        // Checked when the view was made; the mapping's length never changes.
        sys::shared_view(&self.mapping.map, self.offset, self.len).unwrap_or_default()
    }
}

/// Agent side: creates an arena of `len` bytes and sends it to the worker at the other end of
/// `socket` (do this before anything else is written to it).
pub fn share(socket: &std::os::unix::net::UnixStream, len: usize) -> Result<Arc<Arena>, ShmError> {
    let (arena, fd) = Arena::create(len)?;
    send_fd(socket, &fd)?;
    Ok(arena)
}

/// Sends the arena's descriptor over the socket: one byte carrying it as `SCM_RIGHTS`.
pub fn send_fd(socket: &std::os::unix::net::UnixStream, fd: &OwnedFd) -> Result<(), ShmError> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    use std::os::fd::AsRawFd;
    let fds = [fd.as_raw_fd()];
    let iov = [std::io::IoSlice::new(&[0u8])];
    let sent = sendmsg::<()>(
        socket.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(|e| ShmError::Setup(format!("cannot send the descriptor: {e}")))?;
    if sent != 1 {
        return Err(ShmError::Setup("cannot send the descriptor".into()));
    }
    Ok(())
}

/// Receives the descriptor [`send_fd`] sent: exactly one byte and exactly one descriptor, or
/// an error (any descriptor received besides is closed).
pub fn receive_fd(socket: &std::os::unix::net::UnixStream) -> Result<OwnedFd, ShmError> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::{AsRawFd, RawFd};
    let mut byte = [0u8; 1];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let msg = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| ShmError::Setup(format!("cannot receive the descriptor: {e}")))?;
    let (bytes, truncated) = (msg.bytes, msg.flags.contains(MsgFlags::MSG_CTRUNC));
    let mut received: Vec<OwnedFd> = Vec::new();
    for cmsg in msg
        .cmsgs()
        .map_err(|e| ShmError::Setup(format!("control message: {e}")))?
    {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            received.extend(fds.into_iter().map(sys::own_received_fd));
        }
    }
    if bytes != 1 || truncated || received.len() != 1 {
        return Err(ShmError::Setup(format!(
            "expected one byte with one descriptor, got {bytes} byte(s) and {} descriptor(s){}",
            received.len(),
            if truncated { ", truncated" } else { "" }
        )));
    }
    received
        .pop()
        .ok_or_else(|| ShmError::Setup("no descriptor".into()))
}

/// First-fit allocator of arena ranges, coalescing on release.
#[derive(Debug)]
struct FreeList {
    /// Free ranges: offset → length. Never adjacent (merged on release).
    free: BTreeMap<usize, usize>,
}

impl FreeList {
    fn new(len: usize) -> FreeList {
        FreeList {
            free: BTreeMap::from([(0, len)]),
        }
    }

    fn take(&mut self, len: usize) -> Option<usize> {
        let (&offset, &size) = self.free.iter().find(|(_, size)| **size >= len)?;
        self.free.remove(&offset);
        if size > len {
            self.free.insert(offset + len, size - len);
        }
        Some(offset)
    }

    fn give_back(&mut self, mut offset: usize, mut len: usize) {
        if let Some((&prev, &prev_len)) = self.free.range(..offset).next_back()
            && prev + prev_len == offset
        {
            self.free.remove(&prev);
            offset = prev;
            len += prev_len;
        }
        if let Some(next_len) = self.free.remove(&(offset + len)) {
            len += next_len;
        }
        self.free.insert(offset, len);
    }
}

/// The agent's side of one worker's arena.
#[derive(Debug)]
pub struct Arena {
    mapping: Mapping,
    free: Mutex<FreeList>,
}

impl Arena {
    /// A new arena of `len` bytes (a multiple of [`ALIGN`]) and the descriptor for its worker.
    pub fn create(len: usize) -> Result<(Arc<Arena>, OwnedFd), ShmError> {
        let (mapping, fd) = Mapping::create(len)?;
        let arena = Arena {
            free: Mutex::new(FreeList::new(mapping.len())),
            mapping,
        };
        Ok((Arc::new(arena), fd))
    }

    fn free_list(&self) -> std::sync::MutexGuard<'_, FreeList> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves a slot for a request whose tensors are `input_lens` bytes long: room for the
    /// ones of at least [`SHARED_MIN_BYTES`], then a reply region as large as those (at least
    /// [`REPLY_MIN_BYTES`]). `None` when the arena has no such room now: the request then
    /// travels inline.
    pub fn reserve(self: &Arc<Self>, input_lens: impl Iterator<Item = usize>) -> Option<Slot> {
        let mut inputs = 0usize;
        for len in input_lens.filter(|&l| l >= SHARED_MIN_BYTES) {
            inputs = inputs.checked_add(align_up(len)?)?;
        }
        let reply = align_up(inputs.max(REPLY_MIN_BYTES))?;
        let len = inputs.checked_add(reply)?;
        let offset = self.free_list().take(len)?;
        Some(Slot {
            arena: Arc::clone(self),
            offset,
            len,
            inputs: Bump {
                cursor: offset,
                end: offset + inputs,
            },
        })
    }

    /// Bytes not reserved by any slot (for tests and status).
    pub fn free_bytes(&self) -> usize {
        self.free_list().free.values().sum()
    }
}

/// One request's range of the arena: its large inputs, then its reply region. Released when
/// dropped.
#[derive(Debug)]
pub struct Slot {
    arena: Arc<Arena>,
    offset: usize,
    len: usize,
    /// Where the inputs go: from `offset` to the start of the reply region.
    inputs: Bump,
}

/// Places tensors one after another in `cursor..end`, aligned; the slot's inputs on the agent's
/// side and a request's outputs on the worker's.
#[derive(Debug)]
struct Bump {
    cursor: usize,
    end: usize,
}

impl Bump {
    /// `Some(offset)` when `data` is large enough to travel through the arena and fits (it is
    /// then written there); `None`: send it inline.
    fn place(&mut self, mapping: &Mapping, data: &[u8]) -> Option<u64> {
        if data.len() < SHARED_MIN_BYTES {
            return None;
        }
        let end = self.cursor.checked_add(align_up(data.len())?)?;
        if end > self.end {
            return None;
        }
        mapping.write(self.cursor, data).ok()?;
        let at = self.cursor;
        self.cursor = end;
        Some(at as u64)
    }
}

impl Slot {
    /// Places a tensor's bytes: `Some(offset)` when it is large enough to travel through the
    /// arena (its room was reserved), `None` to send it inline.
    pub fn place(&mut self, data: &[u8]) -> Option<u64> {
        self.inputs.place(&self.arena.mapping, data)
    }

    /// The region the worker may write this request's outputs into.
    pub fn reply_region(&self) -> Region {
        Region {
            offset: self.inputs.end as u64,
            len: (self.offset + self.len - self.inputs.end) as u64,
        }
    }

    /// Copies an output the worker placed at `offset`, refusing anything outside this
    /// request's reply region.
    pub fn take_output(&self, offset: u64, len: usize) -> Result<Bytes, ShmError> {
        let region = self.reply_region();
        let inside = offset >= region.offset
            && offset
                .checked_add(len as u64)
                .is_some_and(|end| end <= region.offset + region.len);
        if !inside {
            return Err(ShmError::Transfer(format!(
                "output of {len} bytes at {offset} lies outside the request's reply region \
                 ({} bytes at {})",
                region.len, region.offset
            )));
        }
        self.arena.mapping.copy_out(offset as usize, len)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.arena.free_list().give_back(self.offset, self.len);
    }
}

/// A range of the arena, as a request names its reply region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub offset: u64,
    pub len: u64,
}

/// The worker's bump placement of a request's outputs into the reply region the agent gave.
pub struct ReplyWriter<'a> {
    mapping: &'a Arc<Mapping>,
    outputs: Bump,
    /// What [`ReplyWriter::write`] put there: (address of its view, length, offset).
    written: Vec<(usize, usize, u64)>,
}

impl<'a> ReplyWriter<'a> {
    /// `None` when the region does not lie inside the arena (the request is then answered
    /// inline).
    pub fn new(mapping: &'a Arc<Mapping>, region: Region) -> Option<ReplyWriter<'a>> {
        let cursor = usize::try_from(region.offset).ok()?;
        let end = cursor.checked_add(usize::try_from(region.len).ok()?)?;
        (end <= mapping.len()).then_some(ReplyWriter {
            mapping,
            outputs: Bump { cursor, end },
            written: Vec::new(),
        })
    }

    /// Writes an output into the region as the engine produces it, when it is large enough
    /// and fits, and returns a view of it there: the engine's buffer is copied once, straight
    /// into the arena, and [`ReplyWriter::place`] then sends the view's offset without a
    /// second copy. `None`: the engine keeps its own copy.
    pub fn write(&mut self, data: &[u8]) -> Option<Bytes> {
        let at = self.outputs.place(self.mapping, data)?;
        let view = self
            .mapping
            .view(usize::try_from(at).ok()?, data.len())
            .ok()?;
        self.written.push((view.as_ptr().addr(), view.len(), at));
        Some(view)
    }

    /// `Some(offset)` when `data` is large enough and fits (or is a view [`ReplyWriter::write`]
    /// already put there); `None`: send it inline.
    pub fn place(&mut self, data: &[u8]) -> Option<u64> {
        let here = (data.as_ptr().addr(), data.len());
        if let Some(&(_, _, at)) = self.written.iter().find(|w| (w.0, w.1) == here) {
            return Some(at);
        }
        self.outputs.place(self.mapping, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_list_first_fit_and_coalescing() {
        let mut f = FreeList::new(1000);
        let a = f.take(100).unwrap();
        let b = f.take(200).unwrap();
        let c = f.take(300).unwrap();
        assert_eq!((a, b, c), (0, 100, 300));
        assert!(f.take(401).is_none());
        f.give_back(b, 200);
        assert_eq!(f.take(150), Some(100), "first fit reuses the hole");
        f.give_back(100, 150);
        f.give_back(a, 100);
        f.give_back(c, 300);
        assert_eq!(f.free, BTreeMap::from([(0, 1000)]), "all merged back");
    }

    #[test]
    fn slots_place_large_inputs_and_release_on_drop() {
        let (arena, _fd) = Arena::create(8 << 20).unwrap();
        let big = vec![7u8; 100_000];
        let mut slot = arena.reserve([big.len(), 10].into_iter()).unwrap();
        assert_eq!(slot.place(&[1u8; 10]), None, "small tensors go inline");
        let at = slot.place(&big).unwrap();
        assert_eq!(
            slot.place(&big),
            None,
            "no room was reserved for a second one"
        );
        assert_eq!(arena.mapping.copy_out(at as usize, big.len()).unwrap(), big);
        let region = slot.reply_region();
        assert!(region.len as usize >= REPLY_MIN_BYTES);
        assert!(region.offset >= at + big.len() as u64);
        // Outputs are read back only from inside the reply region.
        assert!(slot.take_output(at, 16).is_err());
        assert!(
            slot.take_output(region.offset, region.len as usize + 1)
                .is_err()
        );
        assert!(slot.take_output(u64::MAX - 3, 16).is_err());
        assert!(slot.take_output(region.offset, 16).is_ok());
        assert!(arena.free_bytes() < 8 << 20);
        drop(slot);
        assert_eq!(arena.free_bytes(), 8 << 20);
    }

    #[test]
    fn a_full_arena_reserves_nothing() {
        let (arena, _fd) = Arena::create(2 << 20).unwrap();
        let first = arena.reserve([600_000usize].into_iter()).unwrap();
        assert!(arena.reserve([600_000usize].into_iter()).is_none());
        drop(first);
        assert!(arena.reserve([600_000usize].into_iter()).is_some());
    }

    #[test]
    fn the_worker_side_checks_size_and_seals() {
        let (agent, fd) = Mapping::create(1 << 20).unwrap();
        // The worker cannot resize the arena under the agent's mapping.
        assert!(nix::unistd::ftruncate(&fd, 4096).is_err());
        assert!(nix::unistd::ftruncate(&fd, 2 << 20).is_err());
        assert!(fcntl(&fd, FcntlArg::F_ADD_SEALS(SealFlag::empty())).is_err());
        let worker = Arc::new(Mapping::open(fd.try_clone().unwrap(), 1 << 20).unwrap());
        agent.write(4096, b"shared").unwrap();
        assert_eq!(&worker.view(4096, 6).unwrap()[..], b"shared");
        assert!(worker.view((1 << 20) - 2, 6).is_err());
        assert!(worker.view(usize::MAX, 2).is_err());
        assert!(agent.write((1 << 20) - 2, b"shared").is_err());

        // Wrong size, unsealed memfd, not a memfd at all: refused.
        assert!(Mapping::open(fd.try_clone().unwrap(), 2 << 20).is_err());
        let unsealed = nix::sys::memfd::memfd_create(
            c"unsealed",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC | nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING,
        )
        .unwrap();
        nix::unistd::ftruncate(&unsealed, 1 << 20).unwrap();
        let e = Mapping::open(unsealed, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("not sealed"), "{e}");
        let file: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        assert!(Mapping::open(file, 1 << 20).is_err());
    }

    #[test]
    fn the_descriptor_crosses_the_socket_alone() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (agent, fd) = Mapping::create(1 << 20).unwrap();
        send_fd(&a, &fd).unwrap();
        let got = receive_fd(&b).unwrap();
        let worker = Mapping::open(got, 1 << 20).unwrap();
        worker.write(128, b"out").unwrap();
        assert_eq!(&agent.copy_out(128, 3).unwrap()[..], b"out");

        // A plain byte without a descriptor is refused.
        use std::io::Write;
        (&a).write_all(&[0]).unwrap();
        assert!(receive_fd(&b).is_err());
    }

    /// A 4 MiB mapping (and its descriptor, kept open) and a reply region of `len` bytes at
    /// 1 MiB in it.
    fn mapping_with_region(len: u64) -> (Arc<Mapping>, OwnedFd, Region) {
        let (m, fd) = Mapping::create(4 << 20).unwrap();
        let region = Region {
            offset: 1 << 20,
            len,
        };
        (Arc::new(m), fd, region)
    }

    #[test]
    fn reply_writer_stays_in_its_region() {
        let (m, _fd, region) = mapping_with_region(100_032);
        let mut w = ReplyWriter::new(&m, region).unwrap();
        assert_eq!(w.place(&[1u8; 100]), None);
        assert_eq!(w.place(&vec![2u8; 60_000]), Some(1 << 20));
        assert_eq!(w.place(&vec![3u8; 60_000]), None, "does not fit any more");
        assert!(
            ReplyWriter::new(
                &m,
                Region {
                    offset: 4 << 20,
                    len: 1
                }
            )
            .is_none()
        );
        assert!(
            ReplyWriter::new(
                &m,
                Region {
                    offset: u64::MAX,
                    len: 2
                }
            )
            .is_none()
        );
    }

    /// An output written as the engine produced it is sent from where it lies: its offset,
    /// without a second copy or a second share of the region.
    #[test]
    fn a_written_output_is_placed_where_it_lies() {
        let (m, _fd, region) = mapping_with_region(120_064);
        let mut w = ReplyWriter::new(&m, region).unwrap();
        assert_eq!(
            w.write(&[1u8; 100]),
            None,
            "small outputs stay with the engine"
        );
        let first = vec![2u8; 60_000];
        let view = w.write(&first).unwrap();
        assert_eq!(view, first);
        assert_eq!(m.copy_out(1 << 20, first.len()).unwrap(), first);
        assert_eq!(w.place(&view), Some(1 << 20));
        assert_eq!(w.place(&view), Some(1 << 20), "as often as it is asked");
        // The same bytes elsewhere are another tensor: placed after it.
        let second = vec![2u8; 60_000];
        assert_eq!(w.place(&second), Some((1 << 20) + 60_032));
        assert_eq!(w.write(&[3u8; 20_000]), None, "the region is full");
    }
}
