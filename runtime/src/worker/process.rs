//! One worker process and the connection to it (the supervised [`super::Worker`] holds the
//! current one and replaces it when it dies).
//!
//! Concurrency: any number of [`Process::infer`] calls may be in flight on the one socket. Each
//! call takes a fresh request id, registers a oneshot sender under that id, and queues its
//! encoded frame to a **writer task** (the only writer of the socket; a channel rather than a
//! lock, so a caller cancelled mid-write cannot leave half a frame behind). A **reader task**
//! decodes frames and completes the waiting call by id. When the socket breaks (the worker
//! exited, was killed, or sent something undecodable) the connection is marked closed, every
//! waiting call is completed with [`WorkerError::Unavailable`] at once, and the `closed` watch
//! fires (the supervisor waits on it); later calls fail the same way without touching the
//! socket.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};

use super::{WorkerError, WorkerOptions, unavailable};
use crate::device::Placement;
use crate::protocol::{ErrorClass, Message, PROTOCOL_VERSION, ReadError, read_frame_async};
use crate::tensor::{ModelSignature, Tensor};

/// Frames queued for the writer task before `infer` waits.
const WRITE_QUEUE: usize = 256;

type Reply = Result<Vec<Tensor>, WorkerError>;

/// In-flight calls, and whether the connection is finished.
struct Pending {
    closed: Option<String>,
    waiting: HashMap<u64, oneshot::Sender<Reply>>,
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
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the connection finished and fails every waiting call. The first reason sticks.
    fn close(&self, reason: &str) {
        let waiting = {
            let mut p = self.lock();
            if p.closed.is_none() {
                p.closed = Some(reason.to_string());
            }
            std::mem::take(&mut p.waiting)
        };
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
    frames: mpsc::Sender<Vec<u8>>,
    next_id: AtomicU64,
    max_frame_bytes: usize,
    child: Mutex<Child>,
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

        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                closed: None,
                waiting: HashMap::new(),
            }),
            finished: tokio::sync::Notify::new(),
            closed: watch::channel(false).0,
        });
        let (frames, queue) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(write_loop(write_half, queue, Arc::clone(&shared)));
        tokio::spawn(read_loop(
            read_half,
            Arc::clone(&shared),
            opts.max_frame_bytes,
        ));
        Ok(Process {
            inner: Arc::new(Inner {
                signature,
                placement,
                shared,
                frames,
                next_id: AtomicU64::new(1),
                max_frame_bytes: opts.max_frame_bytes,
                child: Mutex::new(child),
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
        let frame = Message::InferRequest {
            id,
            outputs,
            tensors: inputs,
        }
        .encode(self.inner.max_frame_bytes)
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
        }
        let _guard = PendingGuard { shared, id };
        if self.inner.frames.send(frame).await.is_err() {
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
            let _ = self.inner.frames.send(frame).await;
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

async fn write_loop(
    mut socket: OwnedWriteHalf,
    mut queue: mpsc::Receiver<Vec<u8>>,
    shared: Arc<Shared>,
) {
    loop {
        let frame = tokio::select! {
            frame = queue.recv() => frame,
            () = shared.finished.notified() => None,
        };
        // `None`: every handle is gone, or the connection is finished.
        let Some(frame) = frame else { break };
        if let Err(e) = socket.write_all(&frame).await {
            tracing::warn!(error = %e, "cannot write to the worker");
            shared.close(&format!("cannot write to the worker: {e}"));
            return;
        }
    }
    // Close our side so the worker sees end of stream.
    let _ = socket.shutdown().await;
}

async fn read_loop(mut socket: OwnedReadHalf, shared: Arc<Shared>, max_frame_bytes: usize) {
    let reason = loop {
        let body = match read_frame_async(&mut socket, max_frame_bytes).await {
            Ok(Some(body)) => body,
            Ok(None) => break "worker closed the connection (exited or killed)".to_string(),
            Err(ReadError::Io(e)) => break format!("worker connection broken: {e}"),
            Err(ReadError::Protocol(e)) => break format!("worker broke the protocol: {e}"),
        };
        match Message::decode(body) {
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
}
