//! cgroup v2 limits (memory, CPU, tasks) for one worker, when the host delegates a cgroup to
//! the agent. Done before the namespaces are entered, with the agent's own rights on the
//! delegated directory: the worker makes a child cgroup `worker-<pid>` there, writes its
//! limits and moves itself in. Its children (the sandboxed worker) inherit it.

use std::path::{Path, PathBuf};

use super::error::SandboxError;
use warden_runtime_client::sandbox_policy::SandboxPolicy;

/// Where the worker's cgroup ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// In its own cgroup with the policy's limits.
    Limited(PathBuf),
    /// No delegated cgroup: the reason, for the log. The rlimits still apply.
    Unlimited(String),
}

const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// Places the calling process in its own limited cgroup under `policy.cgroup_parent`. Without
/// a configured parent this only reports why there are no cgroup limits; a configured parent
/// that does not work is an error (the operator asked for those limits).
pub fn place(policy: &SandboxPolicy, pid: u32) -> Result<Placement, SandboxError> {
    let Some(parent) = &policy.cgroup_parent else {
        return Ok(Placement::Unlimited(describe_host()));
    };
    let err = |message: String| SandboxError::Cgroup {
        path: parent.clone(),
        message,
    };
    let available = std::fs::read_to_string(parent.join("cgroup.controllers"))
        .map_err(|e| err(format!("not a cgroup v2 directory: {e}")))?;
    let missing: Vec<&str> = CONTROLLERS
        .iter()
        .copied()
        .filter(|c| !available.split_whitespace().any(|a| a == *c))
        .collect();
    if !missing.is_empty() {
        return Err(err(format!(
            "controllers {missing:?} are not delegated (cgroup.controllers: {:?})",
            available.trim()
        )));
    }
    let enabled =
        std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
    let to_enable: Vec<String> = CONTROLLERS
        .iter()
        .filter(|c| !enabled.split_whitespace().any(|a| a == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if !to_enable.is_empty() {
        write(&parent.join("cgroup.subtree_control"), &to_enable.join(" "))
            .map_err(|e| err(e.to_string()))?;
    }
    // The same path the supervisor removes after the worker exits.
    let Some(dir) = policy.worker_cgroup(pid) else {
        return Ok(Placement::Unlimited(describe_host()));
    };
    std::fs::create_dir(&dir).map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
    let quota = u64::from(policy.cgroup_cpu_permille) * 100;
    write(
        &dir.join("memory.max"),
        &policy.cgroup_memory_bytes.to_string(),
    )
    .map_err(|e| err(e.to_string()))?;
    // Swap would let the worker exceed memory.max on disk; optional where swap accounting is off.
    let _ = write(&dir.join("memory.swap.max"), "0");
    write(&dir.join("cpu.max"), &format!("{quota} 100000")).map_err(|e| err(e.to_string()))?;
    write(&dir.join("pids.max"), &policy.cgroup_pids.to_string())
        .map_err(|e| err(e.to_string()))?;
    write(&dir.join("cgroup.procs"), "0").map_err(|e| err(e.to_string()))?;
    Ok(Placement::Limited(dir))
}

/// A cgroup file that did not take its value.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {value:?} to {}: {source}", path.display())]
struct WriteError {
    path: std::path::PathBuf,
    value: String,
    source: std::io::Error,
}

fn write(path: &Path, value: &str) -> Result<(), WriteError> {
    std::fs::write(path, value).map_err(|source| WriteError {
        path: path.to_path_buf(),
        value: value.to_owned(),
        source,
    })
}

fn describe_host() -> String {
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        });
    let controllers = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").ok();
    match (own, controllers) {
        (Some(own), Some(c)) => format!(
            "no sandbox.cgroup_parent delegated (the agent is in cgroup v2 {own}, controllers {:?}); cgroup limits off, rlimits apply",
            c.trim()
        ),
        _ => "no cgroup v2 hierarchy with delegated controllers on this host; cgroup limits off, rlimits apply".to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn without_a_parent_it_says_why() {
        let p = place(&SandboxPolicy::default(), 1).unwrap();
        assert!(matches!(p, Placement::Unlimited(ref why) if why.contains("cgroup limits off")));
    }

    #[test]
    fn writes_the_limits_into_a_child_cgroup() {
        // A stand-in for a delegated cgroup directory: the same files, in a temp dir.
        let parent = tempfile::tempdir().unwrap();
        std::fs::write(
            parent.path().join("cgroup.controllers"),
            "cpu memory pids io\n",
        )
        .unwrap();
        std::fs::write(parent.path().join("cgroup.subtree_control"), "").unwrap();
        let policy = SandboxPolicy {
            cgroup_parent: Some(parent.path().to_path_buf()),
            cgroup_memory_bytes: 1 << 30,
            cgroup_cpu_permille: 500,
            cgroup_pids: 64,
            ..SandboxPolicy::default()
        };
        let placed = place(&policy, 42).unwrap();
        let dir = parent.path().join("worker-42");
        assert_eq!(placed, Placement::Limited(dir.clone()));
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("memory.max"), (1u64 << 30).to_string());
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("pids.max"), "64");
        assert_eq!(read("cgroup.procs"), "0");
        let enabled =
            std::fs::read_to_string(parent.path().join("cgroup.subtree_control")).unwrap();
        assert_eq!(enabled, "+memory +cpu +pids");
        assert_eq!(policy.worker_cgroup(42), Some(dir));
    }

    #[test]
    fn a_parent_without_the_controllers_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        std::fs::write(parent.path().join("cgroup.controllers"), "io\n").unwrap();
        let policy = SandboxPolicy {
            cgroup_parent: Some(parent.path().to_path_buf()),
            ..SandboxPolicy::default()
        };
        assert!(place(&policy, 1).is_err());
    }
}
