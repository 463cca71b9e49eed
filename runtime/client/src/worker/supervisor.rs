//! Supervision of one model's worker: the current process, the watchdog on each call, and the
//! monitor that restarts a dead process with backoff or quarantines the model.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::device::Placement;
use crate::tensor::{ModelSignature, Tensor};

use super::error::{Reply, unavailable};
use super::event::WorkerEvent;
use super::options::WorkerOptions;
use super::process::Process;

/// Events kept for a slow subscriber before it starts missing some.
pub(super) const EVENT_BACKLOG: usize = 64;

pub(super) struct State {
    pub(super) current: Option<Arc<Process>>,
    /// Why the model is quarantined.
    pub(super) quarantined: Option<String>,
    pub(super) stopping: bool,
    pub(super) deaths: VecDeque<Instant>,
    pub(super) restarts: u64,
}

pub(super) struct Supervisor {
    pub(super) opts: WorkerOptions,
    pub(super) signature: ModelSignature,
    /// Where the first process placed the model (a restarted one reports its own).
    pub(super) first_placement: Placement,
    pub(super) state: Mutex<State>,
    pub(super) events: broadcast::Sender<WorkerEvent>,
    /// Requests answered as part of a batch of more than one.
    pub(super) batched: std::sync::atomic::AtomicU64,
}

impl Supervisor {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn report(&self, event: WorkerEvent) {
        tracing::warn!(model = %self.opts.model_file.display(), %event, "worker event");
        // No subscriber is fine: the log has it.
        let _ = self.events.send(event);
    }

    /// One inference on the current process, under the watchdog.
    pub(super) async fn infer_now(&self, inputs: Vec<Tensor>, outputs: Vec<String>) -> Reply {
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

/// Waits for each process's connection to finish, then restarts or quarantines. Holds only a weak
/// reference: dropping the last [`Worker`](super::Worker) kills the process and ends this task.
pub(super) async fn monitor(
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
