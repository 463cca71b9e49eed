//! What happens to a model's worker, as supervision reports it (audit trail, log).

use std::time::Duration;

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
