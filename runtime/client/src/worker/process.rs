//! One worker process and the connection to it (the supervised [`super::Worker`] holds the
//! current one and replaces it when it dies).
//!
//! Concurrency: any number of [`Process::infer`] calls may be in flight on the one socket. Each
//! call takes a fresh request id, registers a oneshot sender under that id, and sends its
//! encoded frame through the [`Outbox`]: written at once with one non-blocking `write` when
//! nothing is queued, else (or for what the socket did not take) handed to a **writer task**
//! that writes in order. Sending never awaits, so a caller cancelled at any point cannot leave
//! half a frame behind. A **reader task**
//! decodes frames and completes the waiting call by id. When the socket breaks (the worker
//! exited, was killed, or sent something undecodable) the connection is marked closed, every
//! waiting call is completed with [`WorkerError::Unavailable`] at once, and the `closed` watch
//! fires (the supervisor waits on it); later calls fail the same way without touching the
//! socket.
//!
//! Tensor arena ([`crate::shm`]): the process gets its own arena at start. A call reserves a
//! slot, writes its large inputs there and names its reply region in the request. The slot is
//! kept under the request's id until the worker's answer to that id has been read (outputs
//! copied out, checked against the reply region) or the connection is finished — not released
//! when the caller gives up, since the worker may still be reading or writing it.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};

use super::error::{Reply, WorkerError, unavailable};
use super::options::WorkerOptions;
use crate::device::Placement;
use crate::protocol::{ErrorClass, Message, PROTOCOL_VERSION, ReadError, read_frame_async};
use crate::shm::{Arena, Slot};
use crate::tensor::{ModelSignature, Tensor};

/// In-flight calls, and whether the connection is finished.
struct Pending {
    closed: Option<String>,
    waiting: HashMap<u64, oneshot::Sender<Reply>>,
    /// Arena slots of requests the worker has not answered yet (cancelled ones included).
    slots: HashMap<u64, Slot>,
}

/// State shared with the reader and writer tasks (which do not hold the child process, so
/// dropping the last [`Worker`] clone kills it).
struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the writer task when the connection is finished, so it closes our side of the
    /// socket and a still-running worker sees end of stream and exits.
    finished: tokio::sync::Notify,
    /// Becomes `true` once, when the connection is finished.
    closed: watch::Sender<bool>,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            pending: Mutex::new(Pending {
                closed: None,
                waiting: HashMap::new(),
                slots: HashMap::new(),
            }),
            finished: tokio::sync::Notify::new(),
            closed: watch::channel(false).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the connection finished and fails every waiting call. The first reason sticks.
    fn close(&self, reason: &str) {
        let (waiting, slots) = {
            let mut p = self.lock();
            if p.closed.is_none() {
                p.closed = Some(reason.to_string());
            }
            (std::mem::take(&mut p.waiting), std::mem::take(&mut p.slots))
        };
        // No request is sent on a finished connection, so these ranges are not reused while
        // a worker that is still running could write them.
        drop(slots);
        for (_, tx) in waiting {
            let _ = tx.send(Err(unavailable(reason)));
        }
        self.finished.notify_one();
        self.closed.send_replace(true);
    }

    fn closed(&self) -> Option<String> {
        self.lock().closed.clone()
    }

    fn complete(&self, id: u64, reply: Reply) {
        let tx = self.lock().waiting.remove(&id);
        match tx {
            Some(tx) => {
                let _ = tx.send(reply);
            }
            None => tracing::debug!(id, "reply for a request nobody waits for"),
        }
    }
}

struct Inner {
    signature: ModelSignature,
    placement: Placement,
    shared: Arc<Shared>,
    outbox: Outbox,
    next_id: AtomicU64,
    max_frame_bytes: usize,
    child: Mutex<Child>,
    arena: Option<Arc<Arena>>,
}

/// A running worker process. The process is killed when this is dropped.
pub(super) struct Process {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("pid", &self.pid())
            .field("alive", &self.is_alive())
            .finish_non_exhaustive()
    }
}

/// Removes a call's pending entry if the call is dropped before its reply arrives.
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.lock().waiting.remove(&self.id);
    }
}

impl Process {
    /// Spawns the worker with one end of a fresh socket pair as its stdin, and waits for its
    /// `Hello` (protocol version and model signature) within `startup_timeout`.
    pub(super) async fn start(opts: &WorkerOptions) -> Result<Process, WorkerError> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| unavailable(format!("cannot create the socket pair: {e}")))?;
        let mut child = {
            // The command (and with it our copy of the worker's end) is dropped right after
            // spawning: otherwise the worker's death would never show as end of stream.
            let mut cmd = Command::new(&opts.worker_binary);
            cmd.args(opts.args())
                .env_clear()
                .envs(opts.env())
                .stdin(Stdio::from(OwnedFd::from(theirs)))
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            cmd.spawn().map_err(|e| {
                unavailable(format!(
                    "cannot start {}: {e}",
                    opts.worker_binary.display()
                ))
            })?
        };
        let pid = child.id();
        // The arena goes first on the socket, before the worker reads anything else.
        let arena = match opts.shared_memory_bytes {
            0 => None,
            len => match crate::shm::share(&ours, len) {
                Ok(arena) => Some(arena),
                Err(e) => {
                    let _ = child.start_kill();
                    return Err(unavailable(e.to_string()));
                }
            },
        };

        ours.set_nonblocking(true)
            .map_err(|e| unavailable(format!("socket: {e}")))?;
        let stream = tokio::net::UnixStream::from_std(ours)
            .map_err(|e| unavailable(format!("socket: {e}")))?;
        let (mut read_half, write_half) = stream.into_split();

        let hello = tokio::time::timeout(
            opts.startup_timeout,
            read_frame_async(&mut read_half, opts.max_frame_bytes),
        )
        .await;
        let (signature, placement) = match hello {
            Err(_) => {
                let _ = child.start_kill();
                return Err(unavailable(format!(
                    "worker (pid {pid:?}) sent no Hello within {:?}",
                    opts.startup_timeout
                )));
            }
            Ok(frame) => match handshake(frame) {
                Ok(hello) => hello,
                Err(e) => {
                    let _ = child.start_kill();
                    let status = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
                    return Err(match (e, status) {
                        (WorkerError::Unavailable { reason }, Ok(Ok(status))) => {
                            unavailable(format!("{reason} (worker {status})"))
                        }
                        (e, _) => e,
                    });
                }
            },
        };
        tracing::info!(
            ?pid,
            model = %opts.model_file.display(),
            device = %placement.device,
            provider = %placement.provider,
            "worker started"
        );

        let shared = Arc::new(Shared::new());
        let outbox = Outbox::start(write_half, Arc::clone(&shared));
        tokio::spawn(read_loop(
            read_half,
            Arc::clone(&shared),
            opts.max_frame_bytes,
            arena.is_some(),
        ));
        if let Some(arena) = &arena {
            tracing::debug!(?pid, bytes = arena.free_bytes(), "tensor arena shared");
        }
        Ok(Process {
            inner: Arc::new(Inner {
                signature,
                placement,
                shared,
                outbox,
                next_id: AtomicU64::new(1),
                max_frame_bytes: opts.max_frame_bytes,
                child: Mutex::new(child),
                arena,
            }),
        })
    }

    /// The model's signature, as the worker's engine read it from the model.
    pub(super) fn signature(&self) -> &ModelSignature {
        &self.inner.signature
    }

    /// Where the worker's engine runs the model.
    pub(super) fn placement(&self) -> &Placement {
        &self.inner.placement
    }

    /// Runs the model on `inputs`; `outputs` selects outputs by name (empty: all). Fails with
    /// `Unavailable` promptly, never hangs, when the worker dies before answering.
    pub(super) async fn infer(
        &self,
        inputs: Vec<Tensor>,
        outputs: Vec<String>,
    ) -> Result<Vec<Tensor>, WorkerError> {
        let shared = &self.inner.shared;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut slot = self
            .inner
            .arena
            .as_ref()
            .and_then(|arena| arena.reserve(inputs.iter().map(|t| t.data.len())));
        let frame = Message::InferRequest {
            id,
            outputs,
            reply: slot.as_ref().map(Slot::reply_region),
            tensors: inputs,
        }
        .encode_placing(self.inner.max_frame_bytes, &mut |data| {
            slot.as_mut().and_then(|s| s.place(data))
        })
        .map_err(|e| WorkerError::Protocol {
            message: e.to_string(),
        })?;

        let (tx, rx) = oneshot::channel();
        {
            let mut p = shared.lock();
            if let Some(reason) = &p.closed {
                return Err(unavailable(reason.clone()));
            }
            p.waiting.insert(id, tx);
            if let Some(slot) = slot {
                p.slots.insert(id, slot);
            }
        }
        let _guard = PendingGuard { shared, id };
        if self.inner.outbox.send(frame).is_err() {
            return Err(unavailable(
                shared
                    .closed()
                    .unwrap_or_else(|| "worker connection closed".into()),
            ));
        }
        match rx.await {
            Ok(reply) => reply,
            Err(_) => Err(unavailable(
                shared
                    .closed()
                    .unwrap_or_else(|| "worker connection closed".into()),
            )),
        }
    }

    /// Asks the worker to finish the requests it has and exit; kills it if it has not exited
    /// after `grace`. Later calls fail with `Unavailable`.
    pub(super) async fn shutdown_with_grace(&self, grace: Duration) {
        if let Ok(frame) = Message::Shutdown.encode(self.inner.max_frame_bytes) {
            let _ = self.inner.outbox.send(frame);
        }
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let exited = self.lock_child().try_wait();
            match exited {
                Ok(Some(status)) => {
                    tracing::info!(%status, "worker exited");
                    break;
                }
                Ok(None) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(None) | Err(_) => {
                    tracing::warn!("worker did not exit within {grace:?}; killing it");
                    let _ = self.lock_child().start_kill();
                    // Reap it so it leaves no zombie; SIGKILL cannot be ignored.
                    for _ in 0..200 {
                        if !matches!(self.lock_child().try_wait(), Ok(None)) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    break;
                }
            }
        }
        self.inner.shared.close("worker shut down");
    }

    /// Whether the worker process is running and its connection usable.
    pub(super) fn is_alive(&self) -> bool {
        self.inner.shared.closed().is_none() && matches!(self.lock_child().try_wait(), Ok(None))
    }

    /// The worker's process id while it has not been reaped.
    pub(super) fn pid(&self) -> Option<u32> {
        self.lock_child().id()
    }

    /// A watch that turns `true` when the connection is finished (the process died, was
    /// killed, or broke the protocol). Holds nothing that keeps the process alive.
    pub(super) fn closed(&self) -> watch::Receiver<bool> {
        self.inner.shared.closed.subscribe()
    }

    /// Kills the process now (the watchdog's answer to a hung request); its connection then
    /// finishes and every call in flight fails with `Unavailable`.
    pub(super) fn kill(&self) {
        let _ = self.lock_child().start_kill();
    }

    /// Waits up to `grace` for the process to exit (killing it after that) and describes how
    /// it ended.
    pub(super) async fn reap(&self, grace: Duration) -> String {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let state = self.lock_child().try_wait();
            match state {
                Ok(Some(status)) => return describe(status),
                Ok(None) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(None) => {
                    let _ = self.lock_child().start_kill();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => return format!("cannot collect its status: {e}"),
            }
        }
    }

    fn lock_child(&self) -> MutexGuard<'_, Child> {
        self.inner.child.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// "exit status 2", "killed by SIGKILL", the way an operator reads it. The sandbox's outer
/// process reports a worker killed by signal N as exit status 128 + N.
fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    let signal = status.signal().or_else(|| {
        status
            .code()
            .filter(|c| (129..160).contains(c))
            .map(|c| c - 128)
    });
    match signal.and_then(|s| nix::sys::signal::Signal::try_from(s).ok()) {
        Some(sig) => format!("killed by {sig}"),
        None => match status.code() {
            Some(code) => format!("exit status {code}"),
            None => status.to_string(),
        },
    }
}

/// Checks the first frame: a `Hello` of our protocol version.
fn handshake(
    frame: Result<Option<bytes::Bytes>, ReadError>,
) -> Result<(ModelSignature, Placement), WorkerError> {
    let body = match frame {
        Ok(Some(body)) => body,
        Ok(None) => return Err(unavailable("worker exited before Hello (see its log)")),
        Err(ReadError::Io(e)) => return Err(unavailable(format!("worker socket: {e}"))),
        Err(ReadError::Protocol(e)) => {
            return Err(WorkerError::Protocol {
                message: format!("first frame: {e}"),
            });
        }
    };
    match Message::decode(body) {
        Ok(Message::Hello {
            version,
            signature,
            placement,
        }) if version == PROTOCOL_VERSION => Ok((signature, placement)),
        Ok(Message::Hello { version, .. }) => Err(WorkerError::Protocol {
            message: format!("worker speaks protocol {version}, agent {PROTOCOL_VERSION}"),
        }),
        Ok(Message::Error { message, .. }) => {
            Err(unavailable(format!("worker refused to start: {message}")))
        }
        Ok(other) => Err(WorkerError::Protocol {
            message: format!("expected Hello, got a frame of request {}", other.id()),
        }),
        Err(e) => Err(WorkerError::Protocol {
            message: format!("first frame: {e}"),
        }),
    }
}

/// The way frames go to the worker. A frame is written straight from the calling task when
/// nothing is waiting for the writer task (the common case: one non-blocking `write`, no task
/// switch); otherwise, or for the part the socket did not take, it goes to the writer task,
/// which writes in order. Both paths are synchronous for the caller, so a cancelled call can
/// never leave half a frame on the socket.
struct Outbox {
    socket: Arc<OwnedWriteHalf>,
    /// Frames (or frames' rests) handed to the writer task and not yet fully written. Direct
    /// writes happen only at 0, under this lock, so bytes of two frames never interleave.
    queued: Arc<Mutex<usize>>,
    queue: mpsc::UnboundedSender<Queued>,
}

/// A frame for the writer task, from `offset` on.
struct Queued {
    frame: Vec<u8>,
    offset: usize,
}

impl Outbox {
    /// The outbox of `socket`, and its writer task.
    fn start(socket: OwnedWriteHalf, shared: Arc<Shared>) -> Outbox {
        let socket = Arc::new(socket);
        let queued = Arc::new(Mutex::new(0));
        let (queue_tx, queue) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(
            Arc::clone(&socket),
            queue,
            Arc::clone(&queued),
            shared,
        ));
        Outbox {
            socket,
            queued,
            queue: queue_tx,
        }
    }

    /// Sends `frame`, or fails when the connection is gone.
    fn send(&self, frame: Vec<u8>) -> Result<(), ()> {
        let mut queued = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        let mut offset = 0;
        if *queued == 0 {
            loop {
                match self.socket.try_write(&frame[offset..]) {
                    Ok(n) => {
                        offset += n;
                        if offset == frame.len() {
                            return Ok(());
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // The writer task meets the same error and closes the connection.
                    Err(_) => break,
                }
            }
        }
        self.queue.send(Queued { frame, offset }).map_err(|_| ())?;
        *queued += 1;
        Ok(())
    }
}

async fn write_loop(
    socket: Arc<OwnedWriteHalf>,
    mut queue: mpsc::UnboundedReceiver<Queued>,
    queued: Arc<Mutex<usize>>,
    shared: Arc<Shared>,
) {
    loop {
        let next = tokio::select! {
            next = queue.recv() => next,
            () = shared.finished.notified() => None,
        };
        // `None`: every handle is gone, or the connection is finished.
        let Some(Queued { frame, mut offset }) = next else {
            break;
        };
        while offset < frame.len() {
            let written = match socket.writable().await {
                Ok(()) => socket.try_write(&frame[offset..]),
                Err(e) => Err(e),
            };
            match written {
                Ok(n) => offset += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot write to the worker");
                    shared.close(&format!("cannot write to the worker: {e}"));
                    return;
                }
            }
        }
        let mut queued = queued.lock().unwrap_or_else(|p| p.into_inner());
        *queued = queued.saturating_sub(1);
    }
    // Close our side so that a worker still running sees end of stream and exits.
    use std::os::fd::AsRawFd;
    let stream: &tokio::net::UnixStream = (*socket).as_ref();
    let _ = nix::sys::socket::shutdown(stream.as_raw_fd(), nix::sys::socket::Shutdown::Write);
}

/// The request id in a frame body's header.
fn frame_id(body: &[u8]) -> Option<u64> {
    let id: [u8; 8] = body
        .get(1..crate::protocol::HEADER_BYTES)?
        .try_into()
        .ok()?;
    Some(u64::from_le_bytes(id))
}

/// Reads the worker's frames until the connection ends. `arena`: whether requests may hold
/// arena slots (without one there is nothing to look up per answer).
async fn read_loop(
    mut socket: OwnedReadHalf,
    shared: Arc<Shared>,
    max_frame_bytes: usize,
    arena: bool,
) {
    let reason = loop {
        let body = match read_frame_async(&mut socket, max_frame_bytes).await {
            Ok(Some(body)) => body,
            Ok(None) => break "worker closed the connection (exited or killed)".to_string(),
            Err(ReadError::Io(e)) => break format!("worker connection broken: {e}"),
            Err(ReadError::Protocol(e)) => break format!("worker broke the protocol: {e}"),
        };
        // The arena slot of the request this frame answers: outputs may only come from its
        // reply region, and it is released once they are copied out.
        let slot = frame_id(&body)
            .filter(|_| arena)
            .and_then(|id| shared.lock().slots.remove(&id));
        let decoded = Message::decode_resolving(body, &mut |offset, len| match &slot {
            Some(slot) => slot.take_output(offset, len).map_err(|e| e.to_string()),
            None => Err("output in shared memory, but the request has no reply region".into()),
        });
        drop(slot);
        match decoded {
            Ok(Message::InferResponse { id, tensors }) => shared.complete(id, Ok(tensors)),
            Ok(Message::Error { id, class, message }) => {
                let e = match class {
                    ErrorClass::InvalidInput => WorkerError::InvalidInput { message },
                    ErrorClass::EngineFailure => WorkerError::Engine { message },
                    ErrorClass::Internal => WorkerError::Protocol { message },
                };
                if id == 0 {
                    tracing::warn!(error = %e, "worker reported an error");
                } else {
                    shared.complete(id, Err(e));
                }
            }
            Ok(other) => {
                break format!("worker sent an unexpected frame (request {})", other.id());
            }
            Err(e) => break format!("worker broke the protocol: {e}"),
        }
    };
    tracing::warn!(%reason, "worker connection finished");
    shared.close(&reason);
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    #[test]
    fn statuses_read_like_an_operator_would_say_them() {
        assert_eq!(
            super::describe(ExitStatus::from_raw(2 << 8)),
            "exit status 2"
        );
        assert_eq!(
            super::describe(ExitStatus::from_raw(9)),
            "killed by SIGKILL"
        );
        // The sandbox's outer process reports a worker killed by SIGSEGV as 128 + 11.
        assert_eq!(
            super::describe(ExitStatus::from_raw((128 + 11) << 8)),
            "killed by SIGSEGV"
        );
    }

    /// A frame the socket takes only in part leaves its rest to the writer task, which
    /// finishes it from where the socket stopped; a frame sent meanwhile follows it whole.
    /// Driven step by step on a single-threaded runtime, where the writer task runs only when
    /// the test yields.
    #[test]
    fn a_partly_written_frame_is_finished_before_the_next() {
        use super::*;
        use std::io::Read;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
            let theirs = theirs.into_std().unwrap();
            theirs.set_nonblocking(false).unwrap();
            let (_read_half, write_half) = ours.into_split();
            let shared = Arc::new(Shared::new());
            let outbox = Outbox::start(write_half, shared);
            let big: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
            outbox.send(big.clone()).unwrap();
            assert_eq!(*outbox.queued.lock().unwrap(), 1, "the socket took it all");
            // Empty the socket, then send a small frame before the writer task has run.
            let mut received = Vec::new();
            theirs.set_nonblocking(true).unwrap();
            let mut chunk = vec![0u8; 64 << 10];
            loop {
                match (&theirs).read(&mut chunk) {
                    Ok(n) => received.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
            theirs.set_nonblocking(false).unwrap();
            assert!(!received.is_empty() && received.len() < big.len());
            outbox.send(b"second".to_vec()).unwrap();
            let reader = std::thread::spawn(move || {
                let mut rest = Vec::new();
                (&theirs).read_to_end(&mut rest).unwrap();
                rest
            });
            // Let the writer task drain the queue, then close our side.
            while *outbox.queued.lock().unwrap() > 0 {
                tokio::task::yield_now().await;
            }
            drop(outbox);
            let rest = tokio::task::spawn_blocking(move || reader.join().unwrap())
                .await
                .unwrap();
            received.extend(rest);
            let mut expected = big;
            expected.extend_from_slice(b"second");
            assert!(received == expected, "frames interleaved or lost");
        });
    }
}
