//! One worker process and the connection to it (the supervised [`super::Worker`] holds the
//! current one and replaces it when it dies).
//!
//! Concurrency: any number of [`Process::infer`] calls may be in flight on the one socket. Each
//! call takes a fresh request id, registers a oneshot sender under that id, and sends its encoded
//! frame through the connection's outbox (`super::connection`): written at once with one
//! non-blocking `write` when nothing is queued, else (or for what the socket did not take) handed
//! to a **writer task** that writes in order. Sending never awaits, so a caller cancelled at any
//! point cannot leave half a frame behind. A **reader task** decodes frames and completes the
//! waiting call by id. When the socket breaks (the worker exited, was killed, or sent something
//! undecodable) the connection is marked closed, every waiting call is completed with
//! [`WorkerError::Unavailable`] at once, and the `closed` watch fires (the supervisor waits on it);
//! later calls fail the same way without touching the socket.
//!
//! Tensor arena ([`crate::shm`]): the process gets its own arena at start. A call reserves a
//! slot, writes its large inputs there and names its reply region in the request. The slot is
//! kept under the request's id until the worker's answer to that id has been read (outputs
//! copied out, checked against the reply region) or the connection is finished — not released
//! when the caller gives up, since the worker may still be reading or writing it.

use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};

use super::connection::{Outbox, Shared, handshake, read_loop};
use super::error::{WorkerError, unavailable};
use super::options::WorkerOptions;
use crate::device::Placement;
use crate::protocol::{Message, read_frame_async};
use crate::shm::{Arena, Slot};
use crate::tensor::{ModelSignature, Tensor};

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
