//! `[runtime]`: the worker binary and ONNX Runtime, threads and concurrency per worker,
//! polling, the tensor arena, and restarts.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::error::{Invalid, invalid};
use super::paths::{relative_opt, relative_vec};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// The worker binary. Absent: `warden-runtime` beside the `warden` executable.
    #[serde(default, deserialize_with = "relative_opt")]
    pub worker_binary: Option<PathBuf>,
    /// `libonnxruntime.so`, for ONNX models. Absent: the `ORT_DYLIB_PATH` environment variable.
    #[serde(default, deserialize_with = "relative_opt")]
    pub onnxruntime_library: Option<PathBuf>,
    /// Directories holding the CUDA, cuDNN and TensorRT libraries that ONNX Runtime's GPU
    /// providers need (e.g. the `nvidia/*/lib` directories of the pip packages that come with
    /// `onnxruntime-gpu`). Loaded by a GPU model's worker before its sandbox; absent: found
    /// through the system's library cache.
    #[serde(default, deserialize_with = "relative_vec")]
    pub cuda_library_dirs: Vec<PathBuf>,
    /// Threads ONNX Runtime uses inside one inference.
    #[serde(default = "one")]
    pub intra_op_threads: usize,
    /// Inferences one worker runs at the same time.
    #[serde(default = "default_worker_concurrency")]
    pub worker_concurrency: usize,
    /// Time a worker gets to load its model and say hello.
    #[serde(default = "default_worker_startup_timeout_ms")]
    pub worker_startup_timeout_ms: u64,
    /// How long a worker, having answered, polls for the next request before its thread
    /// sleeps, in µs (0, the default: sleep at once). CPU for latency: a request inside the
    /// window skips the wake-up of a sleeping thread; on a machine without spare cores it
    /// costs throughput.
    #[serde(default = "default_worker_poll_us")]
    pub worker_poll_us: u64,
    /// The shared-memory tensor arena of each worker process, in MiB (0: none, every tensor
    /// crosses the worker's socket). Tensors of 16 KiB and more go through it.
    #[serde(default = "default_shared_memory_mib")]
    pub shared_memory_mib: u64,
    /// Restarts of a worker that died, and when a model is quarantined instead.
    #[serde(default)]
    pub restart: RestartConfig,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            worker_binary: None,
            onnxruntime_library: None,
            cuda_library_dirs: Vec::new(),
            intra_op_threads: one(),
            worker_concurrency: default_worker_concurrency(),
            worker_startup_timeout_ms: default_worker_startup_timeout_ms(),
            worker_poll_us: default_worker_poll_us(),
            shared_memory_mib: default_shared_memory_mib(),
            restart: RestartConfig::default(),
        }
    }
}

impl RuntimeConfig {
    /// The rules of the section alone; the arena's bound against the sandbox is checked with
    /// the whole config.
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if !(1..=3_600_000).contains(&self.worker_startup_timeout_ms) {
            return Err(invalid(
                "runtime.worker_startup_timeout_ms",
                "must be between 1 ms and one hour",
            ));
        }
        if !(1..=256).contains(&self.intra_op_threads) {
            return Err(invalid(
                "runtime.intra_op_threads",
                "must be between 1 and 256",
            ));
        }
        if !(1..=1024).contains(&self.worker_concurrency) {
            return Err(invalid(
                "runtime.worker_concurrency",
                "must be between 1 and 1024",
            ));
        }
        let rs = &self.restart;
        if !(1..=1000).contains(&rs.max_crashes) {
            return Err(invalid(
                "runtime.restart.max_crashes",
                "must be between 1 and 1000",
            ));
        }
        if !(1..=86_400).contains(&rs.window_s) {
            return Err(invalid(
                "runtime.restart.window_s",
                "must be between 1 s and one day",
            ));
        }
        if !(1..=3_600_000).contains(&rs.backoff_max_ms)
            || rs.backoff_initial_ms > rs.backoff_max_ms
        {
            return Err(invalid(
                "runtime.restart.backoff_max_ms",
                "must be between 1 ms and one hour, and not below backoff_initial_ms",
            ));
        }
        let max_poll = warden_runtime_client::worker::MAX_POLL_WINDOW.as_micros();
        if u128::from(self.worker_poll_us) > max_poll {
            return Err(invalid(
                "runtime.worker_poll_us",
                format!("must be at most {max_poll} ({} ms)", max_poll / 1000),
            ));
        }
        Ok(())
    }

    /// The tensor arena is mapped into the worker, whose address space the sandbox limits.
    pub(super) fn validate_arena(&self, address_space_bytes: u64) -> Result<(), Invalid> {
        let arena = self.shared_memory_mib << 20;
        if self.shared_memory_mib > MAX_SHARED_MEMORY_MIB || arena > address_space_bytes / 2 {
            return Err(invalid(
                "runtime.shared_memory_mib",
                format!(
                    "must be at most {MAX_SHARED_MEMORY_MIB} and at most half of \
                     sandbox.address_space_bytes ({} MiB)",
                    address_space_bytes >> 20
                ),
            ));
        }
        Ok(())
    }
}

/// `[runtime.restart]`: a dead worker is restarted after a backoff that doubles with each
/// recent death; `max_crashes` deaths within `window_s` quarantine the model (it is no longer
/// restarted, requests get 503, `warden status` names it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartConfig {
    /// Deaths within the window that quarantine the model (1: never restart).
    #[serde(default = "default_max_crashes")]
    pub max_crashes: u32,
    #[serde(default = "default_crash_window_s")]
    pub window_s: u64,
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
}

impl Default for RestartConfig {
    fn default() -> Self {
        RestartConfig {
            max_crashes: default_max_crashes(),
            window_s: default_crash_window_s(),
            backoff_initial_ms: default_backoff_initial_ms(),
            backoff_max_ms: default_backoff_max_ms(),
        }
    }
}

impl RestartConfig {
    pub fn policy(&self) -> warden_runtime_client::worker::RestartPolicy {
        warden_runtime_client::worker::RestartPolicy {
            max_crashes: self.max_crashes,
            window: Duration::from_secs(self.window_s),
            backoff_initial: Duration::from_millis(self.backoff_initial_ms),
            backoff_max: Duration::from_millis(self.backoff_max_ms),
        }
    }
}

fn one() -> usize {
    1
}
fn default_worker_concurrency() -> usize {
    2
}
fn default_worker_poll_us() -> u64 {
    warden_runtime_client::worker::DEFAULT_POLL_WINDOW.as_micros() as u64
}

fn default_shared_memory_mib() -> u64 {
    (warden_runtime_client::worker::DEFAULT_SHARED_MEMORY_BYTES >> 20) as u64
}

/// The largest tensor arena a worker may get, in MiB.
const MAX_SHARED_MEMORY_MIB: u64 = 1024;

fn default_worker_startup_timeout_ms() -> u64 {
    30_000
}
fn default_max_crashes() -> u32 {
    5
}
fn default_crash_window_s() -> u64 {
    60
}
fn default_backoff_initial_ms() -> u64 {
    100
}
fn default_backoff_max_ms() -> u64 {
    10_000
}
