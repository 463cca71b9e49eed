//! How a worker process comes up, shared by `warden-runtime` (which then serves) and
//! `warden-sandbox-probe` (which then probes its own sandbox), so that the probes see exactly
//! the sandbox a serving worker gets.
//!
//! ```text
//! warden-runtime --model FILE --digest SPEC [--onnxruntime LIB] [--threads N] [--concurrency N]
//!                [--max-frame-bytes N] [--sandbox JSON]
//!                [--device cpu|cuda:N|tensorrt:N] [--gpu-memory-bytes N] [--cpu-fallback]
//!                [--cuda-library-dir DIR]... [--poll-us N] [--shared-memory-bytes N]
//! ```
//!
//! Its channel to the agent is a Unix stream socket passed as **stdin**. The engine follows the
//! model file's extension ([`ModelFormat`]): `.onnx` runs on ONNX Runtime (then `--onnxruntime` is
//! required), `.safetensors` on candle. Order of start-up: read the model once and check it
//! against `--digest`, the digest the verified signature lists for it, in the signature's own
//! form ([`warden_runtime_client::model_digest`]: whole file or shards; this binds what is
//! loaded to what was signed, whatever happened to the file after verification), load the ONNX
//! Runtime library for an ONNX model — both with the
//! agent's privileges — then enter the sandbox ([`crate::sandbox::enter`], policy from
//! `--sandbox`), and only then let the engine parse the model. The model file is the only thing
//! read from disk for the model: a candle model carries its hyper-parameters in its own safetensors
//! header, so the one digest covers them. With `--shared-memory-bytes N` the worker first takes the
//! agent's tensor arena from the socket (one byte carrying a sealed memfd of N bytes,
//! [`warden_runtime_client::shm`]) and maps it, also before the sandbox. Logs go to stderr, never
//! tensor contents.
//!
//! Exit codes: 0 after `Shutdown` or when the agent closed the socket; 2 for bad arguments or
//! a refused start (the reason is also sent to the agent as an `Error` frame with id 0 when
//! the socket is usable); 1 when the connection broke; 128 + N when killed by signal N.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use crate::engine::{Engine, EngineOptions, ModelFormat};
use crate::sandbox::{self, DeviceAccess, probe};
use crate::server::{self, StopReason};
use warden_runtime_client::device::DeviceRequest;
use warden_runtime_client::model_digest::ModelDigest;
use warden_runtime_client::protocol::{DEFAULT_MAX_FRAME_BYTES, ErrorClass, Message};
use warden_runtime_client::sandbox_policy::SandboxPolicy;
use warden_runtime_client::shm;

/// What the process does once it is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Serve the model to the agent (`warden-runtime`).
    Serve,
    /// Probe the sandbox and write a JSON report to the socket (`warden-sandbox-probe`).
    Probe,
}

/// Why a worker does not start: its command line, its model file, its library, its socket.
/// The worker logs it, tells the agent when it can, and exits 2.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("{USAGE}")]
    Help,
    #[error("{flag} needs a value")]
    MissingValue { flag: String },
    #[error("{flag}: {detail}")]
    BadValue { flag: String, detail: String },
    #[error("unknown argument {0:?}")]
    UnknownArgument(String),
    #[error("{0} is required")]
    Required(&'static str),
    #[error("--digest: {0}")]
    BadDigest(warden_runtime_client::model_digest::DigestError),
    #[error("--device: {0}")]
    Device(#[from] warden_runtime_client::device::InvalidDeviceRequest),
    #[error(
        "--shared-memory-bytes {bytes} is over half the sandbox's address space limit ({limit} bytes)"
    )]
    ArenaTooLarge { bytes: usize, limit: u64 },
    #[error(transparent)]
    Format(#[from] warden_runtime_client::model_format::UnknownModelFormat),
    #[error("cannot read model {}: {source}", path.display())]
    ReadModel {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}; refusing to load")]
    DigestMismatch(warden_runtime_client::model_digest::DigestError),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error("cannot take stdin: {0}")]
    Stdin(std::io::Error),
    #[error("stdin is not a connected Unix socket: {0}")]
    NotASocket(std::io::Error),
}

struct Args {
    model: PathBuf,
    digest: ModelDigest,
    format: ModelFormat,
    onnxruntime: Option<PathBuf>,
    threads: usize,
    concurrency: usize,
    max_frame_bytes: usize,
    sandbox: SandboxPolicy,
    device: DeviceRequest,
    /// The device nodes granted inside the sandbox (a GPU worker's; a probe's test node).
    devices: DeviceAccess,
    /// Where the CUDA/cuDNN/TensorRT libraries are (`--cuda-library-dir`, repeatable).
    cuda_library_dirs: Vec<PathBuf>,
    /// How long an idle reader polls for the next request before it sleeps (`--poll-us`).
    poll_window: std::time::Duration,
    /// The size of the tensor arena the agent sends (`--shared-memory-bytes`; 0: none).
    shared_memory_bytes: usize,
    probe: probe::Targets,
}

const USAGE: &str = "usage: warden-runtime --model FILE --digest SPEC [--onnxruntime LIB] \
                     [--threads N] [--concurrency N] [--max-frame-bytes N] [--sandbox JSON] \
                     [--device cpu|cuda:N|tensorrt:N] [--gpu-memory-bytes N] [--cpu-fallback] \
                     [--cuda-library-dir DIR]... [--poll-us N] [--shared-memory-bytes N] \
                     (stdin: the agent's socket)";

fn parse_args(mode: Mode) -> Result<Args, StartError> {
    let mut model = None;
    let mut digest = None;
    let mut onnxruntime = None;
    let mut threads = 1usize;
    let mut concurrency = 1usize;
    let mut max_frame_bytes = DEFAULT_MAX_FRAME_BYTES;
    let mut sandbox = SandboxPolicy::default();
    let mut device = DeviceRequest::default();
    let mut devices = DeviceAccess::default();
    let mut cuda_library_dirs = Vec::new();
    let mut poll_window = std::time::Duration::ZERO;
    let mut shared_memory_bytes = 0usize;
    let mut probe = probe::Targets::default();
    let mut it = std::env::args_os().skip(1);
    while let Some(flag) = it.next() {
        let flag = flag.to_string_lossy().into_owned();
        let mut value = || {
            it.next()
                .ok_or_else(|| StartError::MissingValue { flag: flag.clone() })
        };
        let number = |v: std::ffi::OsString| {
            v.to_string_lossy()
                .parse::<usize>()
                .map_err(|_| StartError::BadValue {
                    flag: flag.clone(),
                    detail: format!("not a number: {v:?}"),
                })
        };
        let bad = |detail: String| StartError::BadValue {
            flag: flag.clone(),
            detail,
        };
        match flag.as_str() {
            "--model" => model = Some(PathBuf::from(value()?)),
            "--digest" => {
                let v = value()?.to_string_lossy().to_ascii_lowercase();
                digest = Some(v.parse::<ModelDigest>().map_err(StartError::BadDigest)?);
            }
            "--onnxruntime" => onnxruntime = Some(PathBuf::from(value()?)),
            "--threads" => threads = number(value()?)?,
            "--concurrency" => concurrency = number(value()?)?.max(1),
            "--max-frame-bytes" => max_frame_bytes = number(value()?)?,
            "--sandbox" => {
                sandbox = serde_json::from_str(&value()?.to_string_lossy())
                    .map_err(|e| bad(e.to_string()))?;
            }
            "--device" => {
                device.device = value()?.to_string_lossy().parse().map_err(
                    |e: warden_runtime_client::device::DeviceParseError| bad(e.to_string()),
                )?;
            }
            "--gpu-memory-bytes" => {
                device.memory_budget_bytes = Some(number(value()?)? as u64);
            }
            "--cpu-fallback" => device.cpu_fallback = true,
            "--cuda-library-dir" => cuda_library_dirs.push(PathBuf::from(value()?)),
            "--poll-us" => {
                let window = std::time::Duration::from_micros(number(value()?)? as u64);
                if window > warden_runtime_client::worker::MAX_POLL_WINDOW {
                    return Err(bad(format!(
                        "at most {}",
                        warden_runtime_client::worker::MAX_POLL_WINDOW.as_micros()
                    )));
                }
                poll_window = window;
            }
            "--shared-memory-bytes" => shared_memory_bytes = number(value()?)?,
            "--probe-secret" if mode == Mode::Probe => {
                probe.secret = Some(PathBuf::from(value()?));
            }
            "--probe-device" if mode == Mode::Probe => {
                let node = PathBuf::from(value()?);
                probe.device = Some(node.clone());
                devices.nodes.push(node);
            }
            "--probe-connect" if mode == Mode::Probe => {
                let v = value()?.to_string_lossy().into_owned();
                probe.connect = Some(v.parse().map_err(|_| bad(format!("bad address {v}")))?);
            }
            "--help" | "-h" => return Err(StartError::Help),
            other => return Err(StartError::UnknownArgument(other.to_owned())),
        }
    }
    let digest = digest.ok_or(StartError::Required("--digest"))?;
    device.validate()?;
    // The arena is mapped into the worker's address space, which the sandbox limits.
    if shared_memory_bytes as u64 > sandbox.address_space_bytes / 2 {
        return Err(StartError::ArenaTooLarge {
            bytes: shared_memory_bytes,
            limit: sandbox.address_space_bytes,
        });
    }
    probe.address_space_bytes = sandbox.address_space_bytes;
    let model: PathBuf = model.ok_or(StartError::Required("--model"))?;
    let format = ModelFormat::of(&model)?;
    if format == ModelFormat::Onnx && onnxruntime.is_none() {
        return Err(StartError::Required("--onnxruntime (for an ONNX model)"));
    }
    // A GPU needs its device nodes inside the sandbox. candle gets them only in a build with
    // its CUDA backend (`candle-cuda`); otherwise its engine refuses or falls back.
    let gpu_engine = format == ModelFormat::Onnx || cfg!(feature = "candle-cuda");
    if gpu_engine && device.device.gpu().is_some() {
        devices.nodes.extend(DeviceAccess::nvidia().nodes);
    }
    Ok(Args {
        model,
        digest,
        format,
        onnxruntime,
        threads,
        concurrency,
        max_frame_bytes,
        sandbox,
        device,
        devices,
        cuda_library_dirs,
        poll_window,
        shared_memory_bytes,
        probe,
    })
}

/// The privileged part: the model bytes (checked) and, for an ONNX model, the ONNX Runtime
/// library. A candle model needs no library: candle is linked in.
fn open_resources(args: &Args) -> Result<Vec<u8>, StartError> {
    let bytes = std::fs::read(&args.model).map_err(|source| StartError::ReadModel {
        path: args.model.clone(),
        source,
    })?;
    args.digest
        .check(&bytes)
        .map_err(StartError::DigestMismatch)?;
    if let (ModelFormat::Onnx, Some(library)) = (args.format, &args.onnxruntime) {
        crate::onnx::load_library(library)?;
        if args.device.device.gpu().is_some() {
            for missing in crate::onnx::preload_gpu_libraries(
                library,
                args.device.device,
                &args.cuda_library_dirs,
            ) {
                tracing::warn!(device = %args.device.device, "GPU library not loaded: {missing}");
            }
        }
    }
    Ok(bytes)
}

/// The agent's socket (our stdin). Taken only after the sandbox is entered, so that the
/// sandbox's waiting parent holds no copy of it.
fn take_socket() -> Result<UnixStream, StartError> {
    let stream = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(UnixStream::from)
        .map_err(StartError::Stdin)?;
    // `peer_addr` fails (ENOTSOCK, ENOTCONN) for anything but a connected socket.
    stream.peer_addr().map_err(StartError::NotASocket)?;
    Ok(stream)
}

/// Tells the agent why the worker will not start (when stdin is its socket), and exits 2.
fn refuse(message: String, max_frame_bytes: usize) -> ExitCode {
    tracing::error!("{message}");
    if let Ok(stream) = take_socket() {
        let writer = Mutex::new(stream);
        let _ = server::send(
            &writer,
            &Message::Error {
                id: 0,
                class: ErrorClass::Internal,
                message,
            },
            max_frame_bytes,
        );
    }
    ExitCode::from(2)
}

/// The whole life of a worker process.
pub fn main(mode: Mode) -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let args = match parse_args(mode) {
        Ok(a) => a,
        Err(StartError::Help) => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let socket = match take_socket() {
        Ok(socket) => socket,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    // The arena comes first on the socket, before any frame.
    let arena = if args.shared_memory_bytes > 0 {
        match shm::receive_fd(&socket)
            .and_then(|fd| shm::Mapping::open(fd, args.shared_memory_bytes))
        {
            Ok(mapping) => Some(Arc::new(mapping)),
            Err(e) => return refuse(e.to_string(), args.max_frame_bytes),
        }
    } else {
        None
    };
    drop(socket);
    let bytes = match open_resources(&args) {
        Ok(bytes) => bytes,
        Err(e) => return refuse(e.to_string(), args.max_frame_bytes),
    };
    if let Err(e) = sandbox::enter(&args.sandbox, &args.devices) {
        return refuse(e.to_string(), args.max_frame_bytes);
    }
    // From here on: inside the sandbox.
    let stream = match take_socket() {
        Ok(s) => s,
        Err(e) => return refuse(e.to_string(), args.max_frame_bytes),
    };
    let engine = match Engine::load(
        args.format,
        &bytes,
        args.onnxruntime.as_deref(),
        EngineOptions {
            intra_op_threads: args.threads,
            sessions: args.concurrency,
            device: args.device.clone(),
        },
    ) {
        Ok(engine) => engine,
        Err(e) => return refuse(e.to_string(), args.max_frame_bytes),
    };
    drop(bytes);
    tracing::info!(
        model = %args.model.display(),
        digest = %args.digest,
        engine = args.format.engine_name(),
        device = %engine.placement().device,
        provider = %engine.placement().provider,
        inputs = engine.signature().inputs.len(),
        outputs = engine.signature().outputs.len(),
        concurrency = args.concurrency,
        threads = args.threads,
        "model loaded"
    );
    match mode {
        Mode::Serve => serve(stream, engine, &args, arena),
        Mode::Probe => report_probes(stream, &args),
    }
}

fn serve(
    stream: UnixStream,
    engine: Engine,
    args: &Args,
    arena: Option<Arc<shm::Mapping>>,
) -> ExitCode {
    match server::serve(
        stream,
        Arc::new(engine),
        server::ServeOptions {
            concurrency: args.concurrency,
            max_frame_bytes: args.max_frame_bytes,
            poll_window: args.poll_window,
            arena,
        },
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

/// Writes the report as one JSON line, then stays up until the agent closes the socket, so
/// that the test can also inspect the sandboxed process from outside.
fn report_probes(mut stream: UnixStream, args: &Args) -> ExitCode {
    use std::io::{Read, Write};
    let report = probe::run(&args.probe);
    let written = serde_json::to_vec(&report)
        .map_err(|e| e.to_string())
        .and_then(|mut json| {
            json.push(b'\n');
            stream.write_all(&json).map_err(|e| e.to_string())
        });
    if let Err(e) = written {
        tracing::error!("cannot send the probe report: {e}");
        return ExitCode::from(1);
    }
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    ExitCode::SUCCESS
}
