//! How a worker is started: the binary, the model, the sandbox, threads and sessions, frames
//! and the tensor arena, the watchdog, restarts, batching and the device.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::device::DeviceRequest;
use crate::model_digest::ModelDigest;
use crate::protocol::DEFAULT_MAX_FRAME_BYTES;
use crate::sandbox_policy::SandboxPolicy;

/// The environment variable that switches ONNX Runtime's telemetry off, wholly and for the
/// process's lifetime, when it is `1` before the library starts (ONNX Runtime reads it once).
/// The API switch (`with_telemetry(false)`, which the engine also sets) is not
/// enough: with it, the 1.31.1 wheel's library still created the device identifier and the
/// event cache, and looked up the collector's address within 45 s (measured with strace).
/// Every worker's environment has it ([`WorkerOptions`]); the engine
/// (`warden_runtime::engine::load_library`) refuses to start without it.
pub const TELEMETRY_OPT_OUT: &str = "ORT_DISABLE_TELEMETRY";

/// How long [`Worker::shutdown`](super::Worker::shutdown) waits for a clean exit before killing the
/// process.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How to start a worker.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The `warden-runtime` binary.
    pub worker_binary: PathBuf,
    /// `libonnxruntime.so` for the worker to load; needed by ONNX models only.
    pub onnxruntime_library: Option<PathBuf>,
    /// The model file, already verified by the agent.
    pub model_file: PathBuf,
    /// Its digest as the verified signature lists it; the worker refuses a file that does
    /// not match.
    pub model_digest: ModelDigest,
    /// ONNX Runtime intra-op threads per session (0: ONNX Runtime's default).
    pub intra_op_threads: usize,
    /// Requests the worker runs at once (executor threads and engine sessions).
    pub concurrency: usize,
    /// How long to wait for the worker's `Hello`.
    pub startup_timeout: Duration,
    /// Hard limit on one frame, both directions.
    pub max_frame_bytes: usize,
    /// The sandbox the worker enters before it parses the model (secure by default).
    pub sandbox: SandboxPolicy,
    /// Watchdog: a request not answered within this is taken as a hung worker, which is
    /// killed (and restarted). `None`: no deadline.
    pub request_timeout: Option<Duration>,
    /// When a dead worker is restarted, and when a model that keeps crashing is quarantined.
    pub restart: RestartPolicy,
    /// Dynamic batching for models with a dynamic first dimension. `None`: off.
    pub batching: Option<BatchPolicy>,
    /// The device the model should run on (default: the CPU).
    pub device: DeviceRequest,
    /// Directories holding the CUDA/cuDNN/TensorRT libraries, for a GPU device.
    pub cuda_library_dirs: Vec<PathBuf>,
    /// How long the worker's idle reader polls for the next request before it sleeps (zero,
    /// the default: it sleeps at once). Polling spends CPU to skip the wake-up of a sleeping
    /// thread: worth it where cores are spare; on a busy machine it costs throughput.
    pub poll_window: Duration,
    /// Size of the shared-memory tensor arena each worker process gets ([`crate::shm`]): a
    /// multiple of 64; 0: none, every tensor crosses the socket.
    pub shared_memory_bytes: usize,
}

/// The default tensor arena: 64 MiB per worker process, the size of the default frame
/// limit. Virtual until used: pages are touched only by tensors that pass through it.
pub const DEFAULT_SHARED_MEMORY_BYTES: usize = 64 << 20;

/// The worker's default polling window: none. Measured on a 2-core machine, a 100 µs window
/// cuts the hop from about 37 to 25 µs over in-process ONNX Runtime
/// (`runtime/benches/worker_hop.rs`) and the end-to-end p50 at concurrency 1 by about 14 µs,
/// but raised p99 at concurrency 8 in each of five runs (median 946 → 1491 µs,
/// `agent/benches/https_latency.rs`): an opt-in where cores are spare.
pub const DEFAULT_POLL_WINDOW: Duration = Duration::ZERO;

/// The longest polling window a worker accepts.
pub const MAX_POLL_WINDOW: Duration = Duration::from_millis(10);

/// The polling window the benchmarks compare against the default.
pub const BENCH_POLL_WINDOW: Duration = Duration::from_micros(100);

impl WorkerOptions {
    /// Options with the defaults: 1 thread, concurrency 1, 30 s start, 64 MiB frames, the
    /// default sandbox, a 30 s request deadline, the default restart policy.
    pub fn new(
        worker_binary: PathBuf,
        onnxruntime_library: PathBuf,
        model_file: PathBuf,
        model_digest: ModelDigest,
    ) -> WorkerOptions {
        WorkerOptions {
            worker_binary,
            onnxruntime_library: Some(onnxruntime_library),
            model_file,
            model_digest,
            intra_op_threads: 1,
            concurrency: 1,
            startup_timeout: Duration::from_secs(30),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            sandbox: SandboxPolicy::default(),
            request_timeout: Some(Duration::from_secs(30)),
            restart: RestartPolicy::default(),
            batching: None,
            device: DeviceRequest::default(),
            cuda_library_dirs: Vec::new(),
            poll_window: DEFAULT_POLL_WINDOW,
            shared_memory_bytes: DEFAULT_SHARED_MEMORY_BYTES,
        }
    }

    /// The worker's command-line arguments for these options (the program is
    /// `worker_binary`). Public so that tests can start `warden-sandbox-probe` exactly as the
    /// agent starts a worker.
    pub fn args(&self) -> Vec<OsString> {
        let policy = serde_json::to_string(&self.sandbox).unwrap_or_default();
        let library: Vec<OsString> = match &self.onnxruntime_library {
            Some(l) => vec!["--onnxruntime".into(), l.clone().into_os_string()],
            None => Vec::new(),
        };
        let mut device: Vec<OsString> =
            vec!["--device".into(), self.device.device.to_string().into()];
        if let Some(bytes) = self.device.memory_budget_bytes {
            device.extend(["--gpu-memory-bytes".into(), bytes.to_string().into()]);
        }
        if self.device.cpu_fallback {
            device.push("--cpu-fallback".into());
        }
        if self.device.device.gpu().is_some() {
            for dir in &self.cuda_library_dirs {
                device.extend(["--cuda-library-dir".into(), dir.clone().into_os_string()]);
            }
        }
        [
            "--model".into(),
            self.model_file.clone().into_os_string(),
            "--digest".into(),
            self.model_digest.to_string().into(),
        ]
        .into_iter()
        .chain(library)
        .chain([
            "--threads".into(),
            self.intra_op_threads.to_string().into(),
            "--concurrency".into(),
            self.concurrency.max(1).to_string().into(),
            "--max-frame-bytes".into(),
            self.max_frame_bytes.to_string().into(),
            "--sandbox".into(),
            policy.into(),
            "--poll-us".into(),
            self.poll_window.as_micros().to_string().into(),
            "--shared-memory-bytes".into(),
            self.shared_memory_bytes.to_string().into(),
        ])
        .chain(device)
        .collect()
    }

    /// The environment a worker gets: nothing of the agent's (which may hold credentials)
    /// but the log filter, `LD_LIBRARY_PATH` set to the CUDA library directories for a GPU
    /// worker, and `RAYON_NUM_THREADS` set to `intra_op_threads` (when not 0):
    /// candle splits its matrix products for that many threads (one per core otherwise),
    /// which should match the pool it runs in. ONNX Runtime does not read it.
    pub fn env(&self) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = ["RUST_LOG"]
            .iter()
            .filter_map(|k| std::env::var_os(k).map(|v| (OsString::from(k), v)))
            .collect();
        // ONNX Runtime reads this once, when it starts (see [`TELEMETRY_OPT_OUT`]).
        env.push((TELEMETRY_OPT_OUT.into(), "1".into()));
        if self.intra_op_threads > 0 {
            env.push((
                "RAYON_NUM_THREADS".into(),
                self.intra_op_threads.to_string().into(),
            ));
        }
        // A GPU worker of a build that links the CUDA libraries (candle's CUDA backend) needs
        // the loader to find them when it starts; ONNX Runtime's providers are loaded from
        // these directories by path either way.
        if self.device.device.gpu().is_some()
            && !self.cuda_library_dirs.is_empty()
            && let Ok(path) = std::env::join_paths(&self.cuda_library_dirs)
        {
            env.push(("LD_LIBRARY_PATH".into(), path));
        }
        env
    }
}

/// When to restart a dead worker, and when to give up on a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    /// This many deaths within [`RestartPolicy::window`] quarantine the model (1: never
    /// restart).
    pub max_crashes: u32,
    pub window: Duration,
    /// Wait before the first restart; doubled for each further recent death.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            max_crashes: 5,
            window: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

impl RestartPolicy {
    /// No restarts: the first death quarantines the model.
    pub fn never() -> RestartPolicy {
        RestartPolicy {
            max_crashes: 1,
            ..RestartPolicy::default()
        }
    }

    pub(super) fn backoff(&self, recent: usize) -> Duration {
        let doublings = u32::try_from(recent.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .min(16);
        self.backoff_initial
            .saturating_mul(1u32 << doublings)
            .min(self.backoff_max)
    }
}

/// Dynamic batching (see `batch`): how long to gather requests, and how many rows one batch
/// may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Extra wait for more rows once a session is free (0: none; a batch then holds what
    /// queued while the sessions were busy).
    pub window: Duration,
    /// A batch is run as soon as it holds this many rows.
    pub max_rows: usize,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        BatchPolicy {
            window: Duration::ZERO,
            max_rows: 64,
        }
    }
}
