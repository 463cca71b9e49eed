//! The agent's handle on the worker of one model version: a supervised `warden-runtime`
//! process.
//!
//! - [`options`]: how a worker is started ([`WorkerOptions`], [`RestartPolicy`]).
//! - `supervisor`: the current process, its deaths and restarts, the watchdog.
//! - `process`: one process and its socket.
//! - `batch`: dynamic batching in front of the supervisor.
//! - [`error`] and [`event`]: what a call and what supervision report.
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
mod connection;
pub mod error;
pub mod event;
pub mod options;
mod process;
mod supervisor;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::device::Placement;
use crate::tensor::{ModelSignature, Tensor};
use batch::Batcher;
pub use error::WorkerError;
pub use event::WorkerEvent;
pub use options::{
    BENCH_POLL_WINDOW, BatchPolicy, DEFAULT_POLL_WINDOW, DEFAULT_SHARED_MEMORY_BYTES,
    MAX_POLL_WINDOW, RestartPolicy, SHUTDOWN_GRACE, TELEMETRY_OPT_OUT, WorkerOptions,
};
use process::Process;
use supervisor::{EVENT_BACKLOG, State, Supervisor, monitor};

/// A supervised worker for one model version. Cheap to clone; the process is killed when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Supervisor>,
    /// Present when batching is asked for and the model can batch.
    batcher: Option<Arc<Batcher>>,
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
        let concurrency = opts.concurrency;
        let inner = Arc::new(Supervisor {
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
        let batcher = batching
            .map(|policy| Arc::new(Batcher::start(Arc::downgrade(&inner), policy, concurrency)));
        Ok(Worker { inner, batcher })
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
        match &self.batcher {
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
        self.batcher.is_some()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_gpu_worker_gets_the_cuda_library_path() {
        let mut o = WorkerOptions::new(
            "/w".into(),
            "/ort.so".into(),
            "/m.onnx".into(),
            crate::model_digest::ModelDigest::sha256_of(b""),
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
            crate::model_digest::ModelDigest::sha256_of(b""),
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
