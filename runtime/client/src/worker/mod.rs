//! The agent's handle on the worker of one model version: a supervised `warden-runtime`
//! process ([`process`] is one process and its socket).
//!
//! Supervision: a monitor task waits for the current process's connection to finish. When it
//! finishes without [`Worker::shutdown`] (a crash, a signal, a broken limit, the watchdog's
//! kill, a protocol violation), every call in flight has already failed with
//! [`WorkerError::Unavailable`] (503 at the agent); the monitor reports a
//! [`WorkerEvent::Exited`], waits a backoff that doubles with each recent crash, and starts a
//! new process. A model whose worker dies [`RestartPolicy::max_crashes`] times within
//! [`RestartPolicy::window`] is **quarantined**: no more restarts, every call fails with
//! `Unavailable`, and [`WorkerEvent::Quarantined`] is reported. Events go to any number of
//! subscribers ([`Worker::events`]); the agent writes them into its audit trail.
//!
//! Watchdog: each call has a deadline ([`WorkerOptions::request_timeout`]). A call that passes
//! it kills the process (one stuck request means a stuck executor; its siblings fail with it)
//! and reports [`WorkerEvent::Hung`]; the restart follows as for a crash.

mod batch;
mod process;

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::device::{DeviceRequest, Placement};
use crate::protocol::DEFAULT_MAX_FRAME_BYTES;
use crate::sandbox_policy::SandboxPolicy;
use crate::tensor::{ModelSignature, Tensor};
pub use batch::BatchPolicy;
use batch::Batcher;
use process::Process;

/// The environment variable that switches ONNX Runtime's telemetry off, wholly and for the
/// process's lifetime, when it is `1` before the library starts (ONNX Runtime reads it once).
/// The API switch (`with_telemetry(false)`, which the engine also sets) is not
/// enough: with it, the 1.31.1 wheel's library still created the device identifier and the
/// event cache, and looked up the collector's address within 45 s (measured with strace).
/// Every worker's environment has it ([`WorkerOptions`]); the engine
/// (`warden_runtime::engine::load_library`) refuses to start without it.
pub const TELEMETRY_OPT_OUT: &str = "ORT_DISABLE_TELEMETRY";

/// How long [`Worker::shutdown`] waits for a clean exit before killing the process.
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
    /// Its SHA-256 (hex) as verified; the worker refuses a file that no longer matches.
    pub model_sha256: String,
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
        model_sha256: String,
    ) -> WorkerOptions {
        WorkerOptions {
            worker_binary,
            onnxruntime_library: Some(onnxruntime_library),
            model_file,
            model_sha256,
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
            "--sha256".into(),
            self.model_sha256.clone().into(),
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

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerError {
    /// The worker cannot answer: not started, refused to start, crashed, socket closed, shut
    /// down, timed out. Maps to 503.
    #[error("model worker unavailable: {reason}")]
    Unavailable { reason: String },
    /// The engine refused the input (name, datatype, shape, size). Maps to 400.
    #[error("invalid input: {message}")]
    InvalidInput { message: String },
    /// The engine failed on a valid input. Maps to 500.
    #[error("inference failed: {message}")]
    Engine { message: String },
    /// A request could not be encoded (too large for a frame, too many tensors) or the worker
    /// broke the protocol.
    #[error("worker protocol: {message}")]
    Protocol { message: String },
}

pub(crate) fn unavailable(reason: impl Into<String>) -> WorkerError {
    WorkerError::Unavailable {
        reason: reason.into(),
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

    fn backoff(&self, recent: usize) -> Duration {
        let doublings = u32::try_from(recent.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .min(16);
        self.backoff_initial
            .saturating_mul(1u32 << doublings)
            .min(self.backoff_max)
    }
}

/// Something that happened to a model's worker, for the audit trail and the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerEvent {
    /// The process ended without being asked to. `status`: "exit status 1", "killed by
    /// SIGKILL"…; `reason`: what the connection saw.
    Exited {
        pid: Option<u32>,
        status: String,
        reason: String,
    },
    /// A request passed its deadline; the process was killed.
    Hung {
        pid: Option<u32>,
        deadline: Duration,
    },
    /// A new process serves the model.
    Restarted { pid: Option<u32>, restarts: u64 },
    /// A new process could not be started.
    RestartFailed { error: String },
    /// No more restarts; every request fails with `Unavailable`.
    Quarantined { deaths: usize, window: Duration },
}

impl WorkerEvent {
    /// A short name: `exited`, `hung`, `restarted`, `restart_failed`, `quarantined`.
    pub fn kind(&self) -> &'static str {
        match self {
            WorkerEvent::Exited { .. } => "exited",
            WorkerEvent::Hung { .. } => "hung",
            WorkerEvent::Restarted { .. } => "restarted",
            WorkerEvent::RestartFailed { .. } => "restart_failed",
            WorkerEvent::Quarantined { .. } => "quarantined",
        }
    }
}

impl std::fmt::Display for WorkerEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pid = |p: &Option<u32>| p.map_or_else(|| "?".to_string(), |p| p.to_string());
        match self {
            WorkerEvent::Exited {
                pid: p,
                status,
                reason,
            } => write!(f, "worker (pid {}) died: {status}; {reason}", pid(p)),
            WorkerEvent::Hung { pid: p, deadline } => write!(
                f,
                "worker (pid {}) did not answer within {deadline:?}; killed",
                pid(p)
            ),
            WorkerEvent::Restarted { pid: p, restarts } => {
                write!(f, "worker restarted (pid {}, restart {restarts})", pid(p))
            }
            WorkerEvent::RestartFailed { error } => write!(f, "worker restart failed: {error}"),
            WorkerEvent::Quarantined { deaths, window } => write!(
                f,
                "model quarantined: its worker died {deaths} times within {window:?}; no more restarts"
            ),
        }
    }
}

/// Events kept for a slow subscriber before it starts missing some.
const EVENT_BACKLOG: usize = 64;

struct State {
    current: Option<Arc<Process>>,
    /// Why the model is quarantined.
    quarantined: Option<String>,
    stopping: bool,
    deaths: VecDeque<Instant>,
    restarts: u64,
}

struct Supervisor {
    opts: WorkerOptions,
    signature: ModelSignature,
    /// Where the first process placed the model (a restarted one reports its own).
    first_placement: Placement,
    state: Mutex<State>,
    events: broadcast::Sender<WorkerEvent>,
    /// Present when batching is asked for and the model can batch.
    batcher: Option<Batcher>,
    /// Requests answered as part of a batch of more than one.
    batched: std::sync::atomic::AtomicU64,
}

impl Supervisor {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn report(&self, event: WorkerEvent) {
        tracing::warn!(model = %self.opts.model_file.display(), %event, "worker event");
        // No subscriber is fine: the log has it.
        let _ = self.events.send(event);
    }

    /// One inference on the current process, under the watchdog.
    async fn infer_now(&self, inputs: Vec<Tensor>, outputs: Vec<String>) -> Reply {
        let process = {
            let state = self.lock();
            if let Some(why) = &state.quarantined {
                return Err(unavailable(why.clone()));
            }
            match &state.current {
                Some(p) => Arc::clone(p),
                None => return Err(unavailable("the model's worker is restarting")),
            }
        };
        let Some(deadline) = self.opts.request_timeout else {
            return process.infer(inputs, outputs).await;
        };
        match tokio::time::timeout(deadline, process.infer(inputs, outputs)).await {
            Ok(reply) => reply,
            Err(_) => {
                if process.is_alive() {
                    process.kill();
                    self.report(WorkerEvent::Hung {
                        pid: process.pid(),
                        deadline,
                    });
                }
                Err(unavailable(format!(
                    "the model's worker did not answer within {deadline:?}; it was killed and will be restarted"
                )))
            }
        }
    }
}

type Reply = Result<Vec<Tensor>, WorkerError>;

/// A supervised worker for one model version. Cheap to clone; the process is killed when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Supervisor>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("pid", &self.pid())
            .field("alive", &self.is_alive())
            .field("quarantined", &self.quarantined())
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Starts the worker and waits for its `Hello` (protocol version and model signature)
    /// within `startup_timeout`. A worker that cannot start the first time is an error (the
    /// model is not served); later deaths are restarted under the [`RestartPolicy`].
    pub async fn start(opts: WorkerOptions) -> Result<Worker, WorkerError> {
        let process = Arc::new(Process::start(&opts).await?);
        let signature = process.signature().clone();
        let first_placement = process.placement().clone();
        let closed = process.closed();
        let batching = opts
            .batching
            .clone()
            .filter(|_| batch::model_batches(&signature));
        let inner = Arc::new_cyclic(|weak| Supervisor {
            batcher: batching.map(|policy| Batcher::start(weak.clone(), policy, opts.concurrency)),
            batched: std::sync::atomic::AtomicU64::new(0),
            opts,
            signature,
            first_placement,
            state: Mutex::new(State {
                current: Some(Arc::clone(&process)),
                quarantined: None,
                stopping: false,
                deaths: VecDeque::new(),
                restarts: 0,
            }),
            events: broadcast::channel(EVENT_BACKLOG).0,
        });
        tokio::spawn(monitor(Arc::downgrade(&inner), closed, process.pid()));
        Ok(Worker { inner })
    }

    /// The model's signature, as the worker's engine read it from the model.
    pub fn signature(&self) -> &ModelSignature {
        &self.inner.signature
    }

    /// Where the model runs: as the running process reported it (the first one's while none
    /// runs).
    pub fn placement(&self) -> Placement {
        self.inner.lock().current.as_ref().map_or_else(
            || self.inner.first_placement.clone(),
            |p| p.placement().clone(),
        )
    }

    /// Subscribes to this worker's events (deaths, hangs, restarts, quarantine).
    pub fn events(&self) -> broadcast::Receiver<WorkerEvent> {
        self.inner.events.subscribe()
    }

    /// Runs the model on `inputs`; `outputs` selects outputs by name (empty: all). Fails with
    /// `Unavailable` promptly, never hangs, when the worker dies before answering, is being
    /// restarted, or is quarantined; past the deadline the worker is killed. With batching on,
    /// the request may run together with others (see [`BatchPolicy`]).
    pub async fn infer(
        &self,
        inputs: Vec<Tensor>,
        outputs: Vec<String>,
    ) -> Result<Vec<Tensor>, WorkerError> {
        match &self.inner.batcher {
            Some(batcher) => match batcher.submit(inputs, outputs.clone()).await {
                Ok(reply) => reply,
                Err(inputs) => self.inner.infer_now(inputs, outputs).await,
            },
            None => self.inner.infer_now(inputs, outputs).await,
        }
    }

    /// Asks the worker to finish the requests it has and exit; kills it if it has not exited
    /// after [`SHUTDOWN_GRACE`]. No restart follows; later calls fail with `Unavailable`.
    pub async fn shutdown(&self) {
        self.shutdown_with_grace(SHUTDOWN_GRACE).await;
    }

    /// [`Worker::shutdown`] with an explicit grace period.
    pub async fn shutdown_with_grace(&self, grace: Duration) {
        let current = {
            let mut state = self.inner.lock();
            state.stopping = true;
            state.current.clone()
        };
        if let Some(p) = current {
            p.shutdown_with_grace(grace).await;
        }
    }

    /// Whether a worker process is running and its connection usable (false while it is
    /// being restarted and once it is quarantined).
    pub fn is_alive(&self) -> bool {
        let state = self.inner.lock();
        state.quarantined.is_none() && state.current.as_ref().is_some_and(|p| p.is_alive())
    }

    /// Whether dynamic batching is on: asked for, and the model has a dynamic first
    /// dimension on every input and output.
    pub fn batching(&self) -> bool {
        self.inner.batcher.is_some()
    }

    /// How many requests were answered as part of a batch of more than one (dynamic
    /// batching; 0 when it is off or the model cannot batch).
    pub fn batched_requests(&self) -> u64 {
        self.inner
            .batched
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Why the model is quarantined, if it is.
    pub fn quarantined(&self) -> Option<String> {
        self.inner.lock().quarantined.clone()
    }

    /// The current worker process's id while it has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.inner.lock().current.as_ref().and_then(|p| p.pid())
    }
}

/// Waits for each process's connection to finish, then restarts or quarantines. Holds only a
/// weak reference: dropping the last [`Worker`] kills the process and ends this task.
async fn monitor(
    weak: Weak<Supervisor>,
    mut closed: tokio::sync::watch::Receiver<bool>,
    mut pid: Option<u32>,
) {
    loop {
        // Err: the process and its connection are gone (the supervisor was dropped).
        let _ = closed.wait_for(|c| *c).await;
        let Some(sup) = weak.upgrade() else { return };
        let (process, stopping) = {
            let state = sup.lock();
            (state.current.clone(), state.stopping)
        };
        if stopping {
            return;
        }
        let status = match &process {
            Some(p) => p.reap(Duration::from_secs(2)).await,
            None => "not running".to_string(),
        };
        if let Some(dir) = pid.and_then(|p| sup.opts.sandbox.worker_cgroup(p)) {
            // Empty once its processes are gone; a leftover would only clutter the parent.
            let _ = std::fs::remove_dir(dir);
        }
        if sup.lock().stopping {
            return;
        }
        sup.report(WorkerEvent::Exited {
            pid,
            status,
            reason: "its connection closed".into(),
        });
        let policy = sup.opts.restart.clone();
        let opts = sup.opts.clone();
        drop(process);
        drop(sup);

        // Restart, with backoff, until a process is up or the model is quarantined.
        loop {
            let recent = {
                let Some(sup) = weak.upgrade() else { return };
                let mut state = sup.lock();
                let now = Instant::now();
                state.deaths.push_back(now);
                while state
                    .deaths
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > policy.window)
                {
                    state.deaths.pop_front();
                }
                let recent = state.deaths.len();
                if recent >= policy.max_crashes as usize {
                    let why = format!(
                        "model quarantined: its worker died {recent} times within {:?}",
                        policy.window
                    );
                    state.quarantined = Some(why);
                    state.current = None;
                    drop(state);
                    sup.report(WorkerEvent::Quarantined {
                        deaths: recent,
                        window: policy.window,
                    });
                    return;
                }
                state.current = None;
                recent
            };
            tokio::time::sleep(policy.backoff(recent)).await;
            if weak.upgrade().is_none_or(|s| s.lock().stopping) {
                return;
            }
            match Process::start(&opts).await {
                Ok(p) => {
                    let Some(sup) = weak.upgrade() else { return };
                    let p = Arc::new(p);
                    closed = p.closed();
                    pid = p.pid();
                    let restarts = {
                        let mut state = sup.lock();
                        if state.stopping {
                            return;
                        }
                        state.current = Some(Arc::clone(&p));
                        state.restarts += 1;
                        state.restarts
                    };
                    sup.report(WorkerEvent::Restarted { pid, restarts });
                    break;
                }
                Err(e) => {
                    let Some(sup) = weak.upgrade() else { return };
                    sup.report(WorkerEvent::RestartFailed {
                        error: e.to_string(),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_gpu_worker_gets_the_cuda_library_path() {
        let mut o = WorkerOptions::new(
            "/w".into(),
            "/ort.so".into(),
            "/m.onnx".into(),
            "0".repeat(64),
        );
        o.cuda_library_dirs = vec!["/cuda/lib".into(), "/cudnn/lib".into()];
        let path = |o: &WorkerOptions| {
            o.env()
                .into_iter()
                .find(|(k, _)| k == "LD_LIBRARY_PATH")
                .map(|(_, v)| v)
        };
        assert_eq!(path(&o), None, "a CPU worker");
        o.device.device = crate::device::Device::Cuda(0);
        assert_eq!(path(&o), Some("/cuda/lib:/cudnn/lib".into()));
        o.cuda_library_dirs.clear();
        assert_eq!(path(&o), None, "no directories configured");
    }

    #[test]
    fn every_worker_gets_the_telemetry_opt_out() {
        let mut o = WorkerOptions::new(
            "/w".into(),
            "/ort.so".into(),
            "/m.onnx".into(),
            "0".repeat(64),
        );
        for device in [crate::device::Device::Cpu, crate::device::Device::Cuda(0)] {
            o.device.device = device;
            let env = o.env();
            let found: Vec<_> = env.iter().filter(|(k, _)| k == TELEMETRY_OPT_OUT).collect();
            assert_eq!(found.len(), 1, "{device}: {env:?}");
            assert_eq!(found[0].1, "1");
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let p = RestartPolicy {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            ..RestartPolicy::default()
        };
        let waits: Vec<u128> = (1..=6).map(|n| p.backoff(n).as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.backoff(usize::MAX), Duration::from_secs(1));
    }

    #[test]
    fn events_name_themselves_for_the_audit_trail() {
        let e = WorkerEvent::Quarantined {
            deaths: 5,
            window: Duration::from_secs(60),
        };
        assert_eq!(e.kind(), "quarantined");
        assert!(e.to_string().contains("5 times"));
        let e = WorkerEvent::Exited {
            pid: Some(7),
            status: "killed by SIGKILL".into(),
            reason: "its connection closed".into(),
        };
        assert_eq!(e.kind(), "exited");
        assert!(e.to_string().contains("pid 7"));
    }
}
