//! What the running agent reports to `warden status`: every model version's state (ready,
//! restarting, quarantined, batching), what was withdrawn, and the machine's accelerators.
//!
//! `warden serve` rewrites `<state dir>/status.json` (mode 0600, replaced atomically) every
//! [`WRITE_EVERY`]; `warden status --config` reads it beside a live accelerator discovery. A
//! file older than [`STALE_AFTER`] means the agent is not running. The file is a report, never
//! an input: nothing the agent does depends on it.

use crate::models::ModelRegistry;
use crate::models::report::{ModelStatus, Withdrawn};
use crate::state_files::Durability;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use warden_keystore::report::Line;

/// The file's name inside the state directory.
pub const STATUS_FILE: &str = "status.json";
/// How often the agent rewrites it.
pub const WRITE_EVERY: Duration = Duration::from_secs(2);
/// Older than this, the agent is taken to be stopped.
pub const STALE_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("encoding the status: {0}")]
    Encode(#[from] serde_json::Error),
}

/// One snapshot of the running agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentStatus {
    pub pid: u32,
    pub written_at_unix: u64,
    /// The inference listener's address.
    pub listen: String,
    /// Still serving (false in the last file written on the way down).
    pub running: bool,
    pub models: Vec<ModelStatus>,
    pub withdrawn: Vec<Withdrawn>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The current snapshot.
pub fn snapshot(models: &ModelRegistry, listen: &str, running: bool) -> AgentStatus {
    let (models, withdrawn) = models.report();
    AgentStatus {
        pid: std::process::id(),
        written_at_unix: now_unix(),
        listen: listen.to_owned(),
        running,
        models,
        withdrawn,
    }
}

/// Writes `status` into `state_dir` atomically (a temporary file, then a rename).
pub fn write(state_dir: &Path, status: &AgentStatus) -> Result<(), StatusError> {
    let path = state_dir.join(STATUS_FILE);
    let body = serde_json::to_vec_pretty(status)?;
    crate::state_files::write_atomically(&path, &body, 0o600, Durability::Report)
        .map_err(|source| StatusError::Write { path, source })
}

/// Rewrites the file every [`WRITE_EVERY`] until aborted.
pub async fn keep_written(state_dir: PathBuf, models: Arc<ModelRegistry>, listen: String) {
    let mut tick = tokio::time::interval(WRITE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        match write(&state_dir, &snapshot(&models, &listen, true)) {
            Ok(()) => failing = false,
            // Once per failure streak, not every tick.
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot write the status file for `warden status`");
            }
            Err(_) => {}
        }
    }
}

/// `warden status --config`: lines about the running agent and the accelerators; problems
/// carry a hint. A model whose signing chain expires within `signer_warning` is a problem.
pub fn report_lines(state_dir: &Path, signer_warning: Duration) -> Vec<Line> {
    let mut out = Vec::new();
    let path = state_dir.join(STATUS_FILE);
    match std::fs::read(&path) {
        Err(e) => out.push(Line::Problem(format!(
            "agent: no status at {} ({e})\n  hint: is `warden serve` running with this config, \
             and are you its user or root?",
            path.display()
        ))),
        Ok(bytes) => match serde_json::from_slice::<AgentStatus>(&bytes) {
            Err(e) => out.push(Line::Problem(format!(
                "agent: unreadable status file {}: {e}",
                path.display()
            ))),
            Ok(s) => agent_lines(&s, signer_warning, &mut out),
        },
    }
    let inv = warden_runtime_client::accel::discover();
    match (&inv.none_because, inv.gpus.is_empty()) {
        (Some(why), true) => out.push(Line::Fine(format!(
            "accelerators: none ({why}); models run on CPU"
        ))),
        _ => {
            out.push(Line::Fine(format!(
                "accelerators: CUDA driver {}",
                inv.driver_version.as_deref().unwrap_or("unknown")
            )));
            for g in &inv.gpus {
                out.push(Line::Fine(format!(
                    "  gpu {}: {} (compute {}), {} MiB total, {} MiB free",
                    g.ordinal,
                    g.name,
                    g.compute_capability,
                    g.total_memory_bytes >> 20,
                    g.free_memory_bytes >> 20
                )));
            }
        }
    }
    out
}

fn agent_lines(s: &AgentStatus, signer_warning: Duration, out: &mut Vec<Line>) {
    let age = now_unix().saturating_sub(s.written_at_unix);
    if !s.running {
        out.push(Line::Problem(format!(
            "agent: stopped (pid {} wrote its last status {age} s ago)",
            s.pid
        )));
    } else if age > STALE_AFTER.as_secs() {
        out.push(Line::Problem(format!(
            "agent: status is {age} s old: the agent (pid {}) is not running or is stuck\n  \
             hint: `systemctl status warden`",
            s.pid
        )));
    } else {
        out.push(Line::Fine(format!(
            "agent: pid {}, serving on {}, status {age} s old",
            s.pid, s.listen
        )));
    }
    for m in &s.models {
        let what = format!(
            "model {} version {}{}",
            m.name,
            m.version,
            if m.active { " (active)" } else { "" }
        );
        match &m.quarantined {
            Some(why) => out.push(Line::Problem(format!(
                "{what}: QUARANTINED: {why}\n  hint: its worker kept dying (audit events of kind \
                 worker say how); fix the model or its [sandbox] and [runtime.restart] limits, \
                 then push a new version or restart the agent"
            ))),
            None => out.push(Line::Fine(format!(
                "{what}: {}; {}; batching {}; {} request(s) served; root digest {}",
                if m.ready { "ready" } else { "restarting" },
                m.placement
                    .as_ref()
                    .map_or_else(|| "placement unknown".into(), placement_text),
                if m.batching { "on" } else { "off" },
                m.forwarded,
                m.root_digest
            ))),
        }
    }
    for m in &s.models {
        if let Some(warning) = m.signer_valid_until.and_then(|until| {
            crate::models::report::signer_expiry_warning(until, now_unix(), signer_warning)
        }) {
            out.push(Line::Problem(format!(
                "model {} version {}: {warning}",
                m.name, m.version
            )));
        }
    }
    for w in &s.withdrawn {
        out.push(Line::Fine(format!(
            "model {} version {}: WITHDRAWN (no longer admitted): {}",
            w.name, w.version, w.reason
        )));
    }
}

/// `on cuda:0 (CUDAExecutionProvider, GPU memory budget 4096 MiB)`, or the CPU fallback, loudly.
fn placement_text(p: &warden_runtime_client::device::Placement) -> String {
    let budget = p
        .memory_budget_bytes
        .map(|b| format!(", GPU memory budget {} MiB", b >> 20))
        .unwrap_or_default();
    match &p.fallback_reason {
        None => format!("on {} ({}{budget})", p.device, p.provider),
        Some(why) => format!(
            "on {} ({}) — CPU FALLBACK, the configured GPU is not used: {why}",
            p.device, p.provider
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(quarantined: Option<&str>, age: u64, running: bool) -> AgentStatus {
        AgentStatus {
            pid: 7,
            written_at_unix: now_unix() - age,
            listen: "127.0.0.1:8443".into(),
            running,
            models: vec![ModelStatus {
                name: "demo".into(),
                version: "1".into(),
                active: true,
                root_digest: "sha256:00".into(),
                ready: quarantined.is_none(),
                quarantined: quarantined.map(str::to_owned),
                batching: true,
                placement: Some(warden_runtime_client::device::Placement::cpu(
                    "CPUExecutionProvider",
                )),
                forwarded: 3,
                signer_valid_until: None,
            }],
            withdrawn: Vec::new(),
        }
    }

    const THIRTY_DAYS: Duration = Duration::from_secs(30 * 86_400);

    fn problems(s: &AgentStatus) -> Vec<String> {
        let mut out = Vec::new();
        agent_lines(s, THIRTY_DAYS, &mut out);
        out.into_iter()
            .filter_map(|l| match l {
                Line::Problem(t) => Some(t),
                Line::Fine(_) => None,
            })
            .collect()
    }

    #[test]
    fn quarantine_stale_and_stopped_agents_are_problems() {
        assert!(problems(&status(None, 0, true)).is_empty());
        let p = problems(&status(Some("5 deaths within 60 s"), 0, true));
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("QUARANTINED: 5 deaths"), "{p:?}");
        assert!(problems(&status(None, 60, true))[0].contains("not running"));
        assert!(problems(&status(None, 0, false))[0].contains("stopped"));
    }

    #[test]
    fn a_signing_chain_near_or_past_its_expiry_is_a_problem() {
        let mut s = status(None, 0, true);
        let now = now_unix();
        for (until, warned, text) in [
            (now + 90 * 86_400, false, ""),
            (now + 29 * 86_400, true, "expires on"),
            (now - 86_400, true, "EXPIRED on"),
        ] {
            s.models[0].signer_valid_until = Some(until);
            let p = problems(&s);
            assert_eq!(p.len(), usize::from(warned), "{p:?}");
            if warned {
                assert!(
                    p[0].contains(text) && p[0].contains("model demo version 1"),
                    "{p:?}"
                );
            }
        }
        // 30 days is the default; another threshold is honoured.
        s.models[0].signer_valid_until = Some(now + 40 * 86_400 + 3600);
        let mut out = Vec::new();
        agent_lines(&s, Duration::from_secs(45 * 86_400), &mut out);
        assert!(
            out.iter()
                .any(|l| matches!(l, Line::Problem(t) if t.contains("in 40 day")))
        );
    }

    #[test]
    fn the_file_is_written_atomically_and_privately() {
        let dir = tempfile::tempdir().unwrap();
        let s = status(None, 0, true);
        write(dir.path(), &s).unwrap();
        write(dir.path(), &s).unwrap();
        let path = dir.path().join(STATUS_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let back: AgentStatus = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back.models[0].forwarded, 3);
        assert!(!dir.path().join(format!(".{STATUS_FILE}.tmp")).exists());
    }
}
