//! The connection to one worker process: calls waiting for their answers by request id,
//! frames written in order without ever leaving half of one behind (the [`Outbox`] and its
//! writer task), the reader task that completes calls, and the handshake.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot, watch};

use super::error::{Reply, WorkerError, unavailable};
use crate::device::Placement;
use crate::protocol::{
    ArenaRefusal, ErrorClass, Message, PROTOCOL_VERSION, ReadError, read_frame_async,
};
use crate::shm::Slot;
use crate::tensor::ModelSignature;

/// In-flight calls, and whether the connection is finished.
pub(super) struct Pending {
    pub(super) closed: Option<String>,
    pub(super) waiting: HashMap<u64, oneshot::Sender<Reply>>,
    /// Arena slots of requests the worker has not answered yet (cancelled ones included).
    pub(super) slots: HashMap<u64, Slot>,
}

/// State shared with the reader and writer tasks (which do not hold the child process, so
/// dropping the last [`Worker`](super::Worker) clone kills it).
pub(super) struct Shared {
    pub(super) pending: Mutex<Pending>,
    /// Wakes the writer task when the connection is finished, so it closes our side of the
    /// socket and a still-running worker sees end of stream and exits.
    pub(super) finished: tokio::sync::Notify,
    /// Becomes `true` once, when the connection is finished.
    pub(super) closed: watch::Sender<bool>,
}

impl Shared {
    pub(super) fn new() -> Shared {
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

    pub(super) fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the connection finished and fails every waiting call. The first reason sticks.
    pub(super) fn close(&self, reason: &str) {
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

    pub(super) fn closed(&self) -> Option<String> {
        self.lock().closed.clone()
    }

    pub(super) fn complete(&self, id: u64, reply: Reply) {
        let tx = self.lock().waiting.remove(&id);
        match tx {
            Some(tx) => {
                let _ = tx.send(reply);
            }
            None => tracing::debug!(id, "reply for a request nobody waits for"),
        }
    }
}

/// Checks the first frame: a `Hello` of our protocol version.
pub(super) fn handshake(
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
pub(super) struct Outbox {
    socket: Arc<OwnedWriteHalf>,
    /// Frames (or frames' rests) handed to the writer task and not yet fully written. Direct
    /// writes happen only at 0, under this lock, so bytes of two frames never interleave.
    queued: Arc<Mutex<usize>>,
    queue: mpsc::UnboundedSender<Queued>,
}

/// A frame for the writer task, from `offset` on.
pub(super) struct Queued {
    frame: Vec<u8>,
    offset: usize,
}

impl Outbox {
    /// The outbox of `socket`, and its writer task.
    pub(super) fn start(socket: OwnedWriteHalf, shared: Arc<Shared>) -> Outbox {
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
    pub(super) fn send(&self, frame: Vec<u8>) -> Result<(), ()> {
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

pub(super) async fn write_loop(
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
pub(super) fn frame_id(body: &[u8]) -> Option<u64> {
    let id: [u8; 8] = body
        .get(1..crate::protocol::HEADER_BYTES)?
        .try_into()
        .ok()?;
    Some(u64::from_le_bytes(id))
}

/// Reads the worker's frames until the connection ends. `arena`: whether requests may hold
/// arena slots (without one there is nothing to look up per answer).
pub(super) async fn read_loop(
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
            Some(slot) => Ok(slot.take_output(offset, len)?),
            None => Err(ArenaRefusal::NoArena("the request has no reply region")),
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
