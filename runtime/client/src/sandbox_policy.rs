//! What a worker's sandbox allows, as configured by the operator (`[sandbox]` in the agent's
//! config). Every field has a secure default; the only way to turn the sandbox off is the
//! loudly named [`SandboxPolicy::insecure_disable_sandbox`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The sandbox settings one worker is started with. Serialised as JSON on the worker's command
/// line (the agent builds it; the worker trusts its parent, not its input).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxPolicy {
    /// Runs the worker with the agent's own privileges and view of the machine. Only for hosts
    /// that cannot create namespaces; the worker logs a warning at every start.
    pub insecure_disable_sandbox: bool,
    /// `RLIMIT_AS`: the worker's whole address space, in bytes (model, sessions, arenas,
    /// thread stacks). An allocation beyond it fails inside ONNX Runtime.
    pub address_space_bytes: u64,
    /// `RLIMIT_CPU`: CPU seconds over the worker's life; the kernel kills it past that, and
    /// the agent restarts it. 0: no limit. Cumulative, so it is a backstop against a worker
    /// spinning for hours; the per-request deadline catches a single runaway request.
    pub cpu_time_secs: u64,
    /// `RLIMIT_NOFILE`: open file descriptors.
    pub open_files: u64,
    /// Size of the worker's private, writable tmpfs at `/tmp`, in bytes.
    pub tmpfs_bytes: u64,
    /// Host uid and gid the worker runs as when the agent itself runs as root (CI, appliances
    /// that start the agent as root). An unprivileged agent can only map its own uid; its
    /// workers then run as that uid, inside their own user namespace, without capabilities.
    pub root_host_uid: u32,
    pub root_host_gid: u32,
    /// A cgroup v2 directory delegated to the agent (e.g. by systemd `Delegate=yes`). Each
    /// worker gets a child cgroup there with the limits below. Absent: probe the agent's own
    /// cgroup; when nothing usable is delegated the worker says so in the log and relies on the
    /// rlimits.
    pub cgroup_parent: Option<PathBuf>,
    /// cgroup `memory.max` in bytes (resident memory, unlike the address-space rlimit).
    pub cgroup_memory_bytes: u64,
    /// cgroup `cpu.max`: CPU time per 100 ms period, in per mille of one core (1000 = 1 core).
    pub cgroup_cpu_permille: u32,
    /// cgroup `pids.max`: tasks (threads included).
    pub cgroup_pids: u32,
}

impl Default for SandboxPolicy {
    fn default() -> Self {
        SandboxPolicy {
            insecure_disable_sandbox: false,
            address_space_bytes: 8 << 30,
            cpu_time_secs: 3600,
            open_files: 256,
            tmpfs_bytes: 64 << 20,
            root_host_uid: 65534,
            root_host_gid: 65534,
            cgroup_parent: None,
            cgroup_memory_bytes: 4 << 30,
            cgroup_cpu_permille: 1000,
            cgroup_pids: 128,
        }
    }
}

/// A policy value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sandbox.{field}: {message}")]
pub struct PolicyError {
    pub field: &'static str,
    pub message: String,
}

impl SandboxPolicy {
    /// The cgroup the worker with process id `pid` places itself in (`worker-<pid>` under
    /// [`SandboxPolicy::cgroup_parent`]), so that its supervisor can read and remove it.
    pub fn worker_cgroup(&self, pid: u32) -> Option<PathBuf> {
        self.cgroup_parent
            .as_ref()
            .map(|p| p.join(format!("worker-{pid}")))
    }

    /// Cross-field checks, run by the agent at config load and by the worker at start.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let err = |field, message: &str| {
            Err(PolicyError {
                field,
                message: message.to_string(),
            })
        };
        if self.address_space_bytes < 64 << 20 {
            return err("address_space_bytes", "below 64 MiB no model can load");
        }
        if self.open_files < 16 {
            return err("open_files", "at least 16 are needed");
        }
        if self.tmpfs_bytes < 4096 {
            return err("tmpfs_bytes", "at least one page");
        }
        if self.root_host_uid == 0 || self.root_host_gid == 0 {
            return err("root_host_uid", "workers never run as root");
        }
        if self.cgroup_pids < 8 {
            return err("cgroup_pids", "at least 8 tasks are needed");
        }
        if self.cgroup_cpu_permille == 0 {
            return err("cgroup_cpu_permille", "0 would stop the worker");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_secure_and_valid() {
        let p = SandboxPolicy::default();
        assert!(!p.insecure_disable_sandbox);
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = serde_json::from_str::<SandboxPolicy>(r#"{"disable": true}"#);
        assert!(e.is_err());
    }

    #[test]
    fn root_is_refused_as_host_uid() {
        let p = SandboxPolicy {
            root_host_uid: 0,
            ..SandboxPolicy::default()
        };
        assert!(p.validate().is_err());
    }
}
