//! `warden-runtime`: the worker process that runs one model version for the agent.
//!
//! ```text
//! warden-runtime --model FILE --sha256 HEX --onnxruntime LIB [--threads N] [--concurrency N]
//!                [--max-frame-bytes N]
//! ```
//!
//! Its channel to the agent is a Unix stream socket passed as **stdin**. The model file is read
//! once into memory and its SHA-256 compared with `--sha256` before anything is loaded from it:
//! the agent verified the signed bundle, and this closes the window in which the file could be
//! swapped between that verification and this load. Logs go to stderr, never tensor contents.
//!
//! Exit codes: 0 after `Shutdown` or when the agent closed the socket; 2 for bad arguments or
//! a refused start (the reason is also sent to the agent as an `Error` frame with id 0 when
//! the socket is usable); 1 when the connection broke.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use warden_runtime::engine::{EngineOptions, OrtEngine};
use warden_runtime::protocol::{DEFAULT_MAX_FRAME_BYTES, ErrorClass, Message};
use warden_runtime::server::{self, StopReason};

struct Args {
    model: PathBuf,
    sha256: String,
    onnxruntime: PathBuf,
    threads: usize,
    concurrency: usize,
    max_frame_bytes: usize,
}

const USAGE: &str = "usage: warden-runtime --model FILE --sha256 HEX --onnxruntime LIB \
                     [--threads N] [--concurrency N] [--max-frame-bytes N]  (stdin: the agent's socket)";

fn parse_args() -> Result<Args, String> {
    let mut model = None;
    let mut sha256 = None;
    let mut onnxruntime = None;
    let mut threads = 1usize;
    let mut concurrency = 1usize;
    let mut max_frame_bytes = DEFAULT_MAX_FRAME_BYTES;
    let mut it = std::env::args_os().skip(1);
    while let Some(flag) = it.next() {
        let flag = flag.to_string_lossy().into_owned();
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: std::ffi::OsString| {
            v.to_string_lossy()
                .parse::<usize>()
                .map_err(|_| format!("{flag}: not a number: {v:?}"))
        };
        match flag.as_str() {
            "--model" => model = Some(PathBuf::from(value()?)),
            "--sha256" => sha256 = Some(value()?.to_string_lossy().to_ascii_lowercase()),
            "--onnxruntime" => onnxruntime = Some(PathBuf::from(value()?)),
            "--threads" => threads = number(value()?)?,
            "--concurrency" => concurrency = number(value()?)?.max(1),
            "--max-frame-bytes" => max_frame_bytes = number(value()?)?,
            "--help" | "-h" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let sha256 = sha256.ok_or("--sha256 is required")?;
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("--sha256 must be 64 hex digits".into());
    }
    Ok(Args {
        model: model.ok_or("--model is required")?,
        sha256,
        onnxruntime: onnxruntime.ok_or("--onnxruntime is required")?,
        threads,
        concurrency,
        max_frame_bytes,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Everything before serving; its error is the message sent to the agent.
fn prepare(args: &Args) -> Result<OrtEngine, String> {
    let bytes = std::fs::read(&args.model)
        .map_err(|e| format!("cannot read model {}: {e}", args.model.display()))?;
    let actual = hex(&Sha256::digest(&bytes));
    if actual != args.sha256 {
        return Err(format!(
            "model sha256 mismatch: expected {}, file has {actual}; refusing to load",
            args.sha256
        ));
    }
    let engine = OrtEngine::load(
        &args.onnxruntime,
        &bytes,
        EngineOptions {
            intra_op_threads: args.threads,
            sessions: args.concurrency,
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(engine)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };

    // stdin must be a connected Unix stream socket; `peer_addr` fails (ENOTSOCK, ENOTCONN)
    // for anything else, e.g. a terminal.
    let stream = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => UnixStream::from(fd),
        Err(e) => {
            tracing::error!("cannot take stdin: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = stream.peer_addr() {
        tracing::error!("stdin is not a connected Unix socket: {e}");
        return ExitCode::from(2);
    }

    let engine = match prepare(&args) {
        Ok(engine) => engine,
        Err(message) => {
            tracing::error!(model = %args.model.display(), "{message}");
            let writer = Mutex::new(stream);
            let _ = server::send(
                &writer,
                &Message::Error {
                    id: 0,
                    class: ErrorClass::Internal,
                    message,
                },
                args.max_frame_bytes,
            );
            return ExitCode::from(2);
        }
    };
    tracing::info!(
        model = %args.model.display(),
        sha256 = %args.sha256,
        inputs = engine.signature().inputs.len(),
        outputs = engine.signature().outputs.len(),
        concurrency = args.concurrency,
        threads = args.threads,
        "model loaded"
    );

    match server::serve(
        stream,
        Arc::new(engine),
        args.concurrency,
        args.max_frame_bytes,
    ) {
        Ok(StopReason::Shutdown) => {
            tracing::info!("stopped after shutdown");
            ExitCode::SUCCESS
        }
        Ok(StopReason::EndOfStream) => {
            tracing::info!("agent closed the socket; stopping");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("connection broken: {e}");
            ExitCode::from(1)
        }
    }
}
