//! The worker side of the agent ↔ worker socket.
//!
//! Threads: the calling thread reads frames and hands `InferRequest`s to `concurrency` executor
//! threads through a bounded queue (so a flood of requests back-pressures the socket rather
//! than growing memory); each executor runs the engine and writes its response under one
//! writer mutex, so frames never interleave. `Shutdown` or end of stream stops the reader;
//! queued requests are still answered (when the peer is still there) before [`serve`] returns.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use crate::engine::{Engine, EngineError};
use crate::protocol::{
    ErrorClass, Message, PROTOCOL_VERSION, ProtocolError, ReadError, read_frame,
};
use crate::tensor::Tensor;

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
}

/// Writes one message as a whole frame under the writer lock.
pub fn send(
    writer: &Mutex<UnixStream>,
    message: &Message,
    max_frame_bytes: usize,
) -> Result<(), ServeError> {
    let frame = message.encode(max_frame_bytes)?;
    let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
    w.write_all(&frame)?;
    Ok(())
}

/// Sends `Hello`, then serves requests until `Shutdown` or end of stream.
pub fn serve(
    stream: UnixStream,
    engine: Arc<Engine>,
    concurrency: usize,
    max_frame_bytes: usize,
) -> Result<StopReason, ServeError> {
    let mut reader = stream.try_clone()?;
    let writer = Arc::new(Mutex::new(stream));
    send(
        &writer,
        &Message::Hello {
            version: PROTOCOL_VERSION,
            signature: engine.signature().clone(),
        },
        max_frame_bytes,
    )?;

    let concurrency = concurrency.max(1);
    let (queue, jobs): (SyncSender<Job>, Receiver<Job>) = sync_channel(concurrency * 4);
    let jobs = Arc::new(Mutex::new(jobs));
    let mut executors = Vec::with_capacity(concurrency);
    for n in 0..concurrency {
        let jobs = Arc::clone(&jobs);
        let engine = Arc::clone(&engine);
        let writer = Arc::clone(&writer);
        let handle = std::thread::Builder::new()
            .name(format!("executor-{n}"))
            .spawn(move || execute(&jobs, &engine, &writer, max_frame_bytes))?;
        executors.push(handle);
    }

    let outcome = read_loop(&mut reader, &queue, &writer, max_frame_bytes);
    drop(queue);
    for handle in executors {
        if handle.join().is_err() {
            tracing::error!("an executor thread panicked");
        }
    }
    outcome
}

fn read_loop(
    reader: &mut UnixStream,
    queue: &SyncSender<Job>,
    writer: &Mutex<UnixStream>,
    max_frame_bytes: usize,
) -> Result<StopReason, ServeError> {
    loop {
        let body = match read_frame(reader, max_frame_bytes) {
            Ok(Some(body)) => body,
            Ok(None) => return Ok(StopReason::EndOfStream),
            // The framing itself is broken (oversized/undersized length, truncated frame): the
            // stream cannot be resynchronised. Stop.
            Err(ReadError::Io(e)) => return Err(e.into()),
            Err(ReadError::Protocol(e)) => return Err(e.into()),
        };
        match Message::decode(body) {
            Ok(Message::InferRequest {
                id,
                outputs,
                tensors,
            }) => {
                if queue
                    .send(Job {
                        id,
                        outputs,
                        tensors,
                    })
                    .is_err()
                {
                    return Ok(StopReason::EndOfStream);
                }
            }
            Ok(Message::Shutdown) => {
                tracing::info!("shutdown requested");
                return Ok(StopReason::Shutdown);
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

fn execute(
    jobs: &Mutex<Receiver<Job>>,
    engine: &Engine,
    writer: &Mutex<UnixStream>,
    max_frame_bytes: usize,
) {
    loop {
        let job = {
            let rx = jobs.lock().unwrap_or_else(|p| p.into_inner());
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let reply = match engine.run(&job.tensors, &job.outputs) {
            Ok(tensors) => Message::InferResponse {
                id: job.id,
                tensors,
            },
            Err(e) => {
                let class = match e {
                    EngineError::InvalidInput(_) => ErrorClass::InvalidInput,
                    _ => ErrorClass::EngineFailure,
                };
                tracing::debug!(id = job.id, error = %e, "request failed");
                Message::Error {
                    id: job.id,
                    class,
                    message: e.to_string(),
                }
            }
        };
        let sent = match send(writer, &reply, max_frame_bytes) {
            Err(ServeError::Protocol(e)) => {
                // Typically: the outputs exceed the frame limit. Tell the agent instead.
                tracing::warn!(id = job.id, error = %e, "cannot encode the response");
                send(
                    writer,
                    &Message::Error {
                        id: job.id,
                        class: ErrorClass::EngineFailure,
                        message: format!("cannot send the outputs: {e}"),
                    },
                    max_frame_bytes,
                )
            }
            other => other,
        };
        if let Err(e) = sent {
            tracing::debug!(id = job.id, error = %e, "cannot send the response (agent gone?)");
        }
    }
}
