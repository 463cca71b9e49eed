//! The worker side of the agent ↔ worker socket.
//!
//! Threads: `concurrency` threads take turns as the reader (leader/follower): the thread
//! holding the reader lock reads one frame, lets go of the lock and runs that request itself,
//! while the next free thread reads the next frame. A request is never handed from a reader
//! thread to an executor thread (a wake-up and a context switch per request), and no more than
//! `concurrency` requests are read before one is answered, so a flood back-pressures the
//! socket rather than growing memory. Responses are written under one writer mutex, so frames
//! never interleave. `Shutdown` or end of stream stops the reading; requests already read are
//! still answered (when the peer is still there) before [`serve`] returns.
//!
//! With a tensor arena ([`warden_runtime_client::shm`]), a request's large inputs are read in place
//! (the engine decodes straight from the arena) and large outputs are written into the request's
//! reply region when they fit, by ONNX Runtime's engine as it collects them (one copy from its
//! buffer; candle's outputs are copied when the answer is encoded). The views of a request's inputs
//! are dropped before it is answered: once answered, the agent may reuse that range.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::engine::{Engine, EngineError};
use warden_runtime_client::protocol::{
    ArenaRefusal, ErrorClass, Message, PROTOCOL_VERSION, ProtocolError, ReadError, read_frame,
};
use warden_runtime_client::shm::{Mapping, Region, ReplyWriter};
use warden_runtime_client::tensor::Tensor;

/// Why [`serve`] stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
}

/// How the serving loop ended normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The agent sent `Shutdown`.
    Shutdown,
    /// The agent closed the socket (it is gone).
    EndOfStream,
}

struct Job {
    id: u64,
    outputs: Vec<String>,
    tensors: Vec<Tensor>,
    reply: Option<Region>,
}

/// What every executor thread shares.
struct Context {
    engine: Arc<Engine>,
    writer: Mutex<UnixStream>,
    arena: Option<Arc<Mapping>>,
    max_frame_bytes: usize,
    poll_window: Duration,
}

/// Writes one message as a whole frame under the writer lock.
pub fn send(
    writer: &Mutex<UnixStream>,
    message: &Message,
    max_frame_bytes: usize,
) -> Result<(), ServeError> {
    send_placing(writer, message, max_frame_bytes, &mut |_| None)
}

/// [`send`], offering tensors to `place` (the reply region) first.
fn send_placing(
    writer: &Mutex<UnixStream>,
    message: &Message,
    max_frame_bytes: usize,
    place: &mut dyn FnMut(&[u8]) -> Option<u64>,
) -> Result<(), ServeError> {
    let frame = message.encode_placing(max_frame_bytes, place)?;
    let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
    w.write_all(&frame)?;
    Ok(())
}

/// How [`serve`] runs.
pub struct ServeOptions {
    pub concurrency: usize,
    pub max_frame_bytes: usize,
    /// See [`poll_briefly`].
    pub poll_window: Duration,
    /// The tensor arena the agent shared, if any.
    pub arena: Option<Arc<Mapping>>,
}

/// Sends `Hello`, then serves requests until `Shutdown` or end of stream.
pub fn serve(
    stream: UnixStream,
    engine: Arc<Engine>,
    options: ServeOptions,
) -> Result<StopReason, ServeError> {
    let reader = stream.try_clone()?;
    let max_frame_bytes = options.max_frame_bytes;
    let context = Arc::new(Context {
        engine,
        writer: Mutex::new(stream),
        arena: options.arena,
        max_frame_bytes,
        poll_window: options.poll_window,
    });
    let engine = &context.engine;
    send(
        &context.writer,
        &Message::Hello {
            version: PROTOCOL_VERSION,
            signature: engine.signature().clone(),
            placement: engine.placement().clone(),
        },
        max_frame_bytes,
    )?;
    let reader = Arc::new(Mutex::new(Reader {
        stream: reader,
        stopped: None,
    }));
    let concurrency = options.concurrency.max(1);
    let mut threads = Vec::with_capacity(concurrency);
    for n in 0..concurrency {
        let (reader, context) = (Arc::clone(&reader), Arc::clone(&context));
        let handle = std::thread::Builder::new()
            .name(format!("executor-{n}"))
            .spawn(move || take_turns(&reader, &context))?;
        threads.push(handle);
    }
    for handle in threads {
        if handle.join().is_err() {
            tracing::error!("an executor thread panicked");
        }
    }
    let mut r = reader.lock().unwrap_or_else(|p| p.into_inner());
    r.stopped.take().unwrap_or(Ok(StopReason::EndOfStream))
}

/// The socket's read side and, once reading has stopped, why (every thread then finishes).
struct Reader {
    stream: UnixStream,
    stopped: Option<Result<StopReason, ServeError>>,
}

/// One thread's life: read a request while holding the reader lock, run it without the lock.
fn take_turns(reader: &Mutex<Reader>, context: &Context) {
    loop {
        let job = {
            let mut r = reader.lock().unwrap_or_else(|p| p.into_inner());
            if r.stopped.is_some() {
                return;
            }
            poll_briefly(&r.stream, context.poll_window);
            match next_job(&mut r.stream, context) {
                Ok(job) => job,
                Err(stop) => {
                    r.stopped = Some(stop);
                    return;
                }
            }
        };
        execute(job, context);
    }
}

/// Waits up to `window` for the socket to become readable by polling it without sleeping, so
/// that a request arriving soon after the last one is read at once instead of after the
/// scheduler wakes a sleeping thread (tens of µs on a virtual machine). CPU for latency, as
/// ONNX Runtime's own spinning thread pool trades it; between polls the thread yields, so that
/// runnable threads on its core go first. 0 never polls. Whatever the outcome, the blocking
/// read that follows does the reading.
fn poll_briefly(stream: &UnixStream, window: Duration) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    if window.is_zero() {
        return;
    }
    let deadline = std::time::Instant::now() + window;
    loop {
        let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(0) if std::time::Instant::now() < deadline => std::thread::yield_now(),
            // Readable, hung up, an error, or the window is over: read (and block) now.
            _ => return,
        }
    }
}

/// Reads frames until an inference request arrives (answering bad frames on the way);
/// `Err` when reading stops: `Shutdown`, end of stream, or a framing the stream cannot recover
/// from.
fn next_job(
    reader: &mut UnixStream,
    context: &Context,
) -> Result<Job, Result<StopReason, ServeError>> {
    let (writer, max_frame_bytes) = (&context.writer, context.max_frame_bytes);
    let mut resolve = |offset: u64, len: usize| match &context.arena {
        Some(arena) => usize::try_from(offset)
            .map_err(|_| ArenaRefusal::Offset(offset))
            .and_then(|offset| Ok(arena.view(offset, len)?)),
        None => Err(ArenaRefusal::NoArena("this worker has no tensor arena")),
    };
    loop {
        let body = match read_frame(reader, max_frame_bytes) {
            Ok(Some(body)) => body,
            Ok(None) => return Err(Ok(StopReason::EndOfStream)),
            // The framing itself is broken (oversized/undersized length, truncated frame): the
            // stream cannot be resynchronised. Stop.
            Err(ReadError::Io(e)) => return Err(Err(e.into())),
            Err(ReadError::Protocol(e)) => return Err(Err(e.into())),
        };
        match Message::decode_resolving(body, &mut resolve) {
            Ok(Message::InferRequest {
                id,
                outputs,
                tensors,
                reply,
            }) => {
                return Ok(Job {
                    id,
                    outputs,
                    tensors,
                    reply,
                });
            }
            Ok(Message::Shutdown) => {
                tracing::info!("shutdown requested");
                return Err(Ok(StopReason::Shutdown));
            }
            Ok(other) => {
                let id = other.id();
                tracing::warn!(id, "unexpected frame from the agent");
                reply_error(
                    writer,
                    id,
                    ErrorClass::Internal,
                    "unexpected frame kind",
                    max_frame_bytes,
                );
            }
            // The frame was delimited correctly but its body is bad: answer and carry on.
            Err(ProtocolError::Malformed { id, reason }) => {
                tracing::warn!(id, %reason, "malformed request");
                reply_error(
                    writer,
                    id,
                    ErrorClass::Internal,
                    &format!("malformed request: {reason}"),
                    max_frame_bytes,
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "undecodable frame");
                reply_error(
                    writer,
                    0,
                    ErrorClass::Internal,
                    &e.to_string(),
                    max_frame_bytes,
                );
            }
        }
    }
}

fn reply_error(
    writer: &Mutex<UnixStream>,
    id: u64,
    class: ErrorClass,
    message: &str,
    max_frame_bytes: usize,
) {
    let m = Message::Error {
        id,
        class,
        message: message.to_string(),
    };
    if let Err(e) = send(writer, &m, max_frame_bytes) {
        tracing::warn!(id, error = %e, "cannot send an error reply");
    }
}

/// Runs one request and writes its answer.
fn execute(job: Job, context: &Context) {
    let (engine, writer, max_frame_bytes) =
        (&context.engine, &context.writer, context.max_frame_bytes);
    let Job {
        id,
        outputs,
        tensors,
        reply: region,
    } = job;
    let mut reply_writer = match (&context.arena, region) {
        (Some(arena), Some(region)) => ReplyWriter::new(arena, region),
        _ => None,
    };
    // Large outputs are copied once, from the engine's buffer straight into the reply region.
    let result = engine.run_into(&tensors, &outputs, &mut |data| {
        reply_writer.as_mut().and_then(|w| w.write(data))
    });
    // The inputs may be views of the arena: they end here, before the answer lets the agent
    // reuse their range.
    drop(tensors);
    let reply = match result {
        Ok(tensors) => Message::InferResponse { id, tensors },
        Err(e) => {
            let class = match e {
                EngineError::InvalidInput(_) => ErrorClass::InvalidInput,
                _ => ErrorClass::EngineFailure,
            };
            tracing::debug!(id, error = %e, "request failed");
            Message::Error {
                id,
                class,
                message: e.to_string(),
            }
        }
    };
    let mut place = |data: &[u8]| reply_writer.as_mut().and_then(|w| w.place(data));
    let sent = match send_placing(writer, &reply, max_frame_bytes, &mut place) {
        Err(ServeError::Protocol(e)) => {
            // Typically: the outputs exceed the frame limit. Tell the agent instead.
            tracing::warn!(id = id, error = %e, "cannot encode the response");
            send(
                writer,
                &Message::Error {
                    id,
                    class: ErrorClass::EngineFailure,
                    message: format!("cannot send the outputs: {e}"),
                },
                max_frame_bytes,
            )
        }
        other => other,
    };
    if let Err(e) = sent {
        tracing::debug!(id = id, error = %e, "cannot send the response (agent gone?)");
    }
}
