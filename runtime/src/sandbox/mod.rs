//! The sandbox every worker runs in. The worker binary enters it itself, at startup, before it
//! parses a single byte of the model with ONNX Runtime:
//!
//! 1. With the agent's privileges: read the model (checked against its SHA-256) and load the
//!    ONNX Runtime library — the only privileged resources a worker needs. Both stay in memory.
//! 2. cgroup v2: move into a child cgroup with memory/CPU/pids limits when one is delegated
//!    ([`cgroup`]); otherwise say so in the log.
//! 3. A root agent's worker becomes the throwaway host user first (no root from here on).
//!    `unshare` new user, mount, network, IPC, PID, UTS and cgroup namespaces; map one
//!    non-root uid/gid ([`namespaces::SANDBOX_UID`]) onto the agent's uid (or, when the agent
//!    is root, onto [`SandboxPolicy::root_host_uid`]). The network namespace has only a
//!    loopback that is down.
//! 4. Build the root: an empty read-only tmpfs with a private, size-limited writable `/tmp`,
//!    and, for a GPU worker only, its device nodes ([`DeviceAccess`]); `pivot_root` into it and
//!    detach the host's tree (state directory and keys included).
//! 5. `fork`: the child is PID 1 of the new PID namespace and becomes the worker; the parent
//!    stays behind only to wait for it and exit with its status (the agent watches the
//!    parent; `PR_SET_PDEATHSIG` kills the child if the parent dies).
//! 6. In both: rlimits (address space, CPU time, open files, no core), not dumpable, every
//!    capability set emptied, `no_new_privs`, then the seccomp allow-list ([`seccomp`],
//!    data in `runtime/seccomp.json`; anything else fails with `EPERM`).
//!
//! [`probe`] checks each property from inside, under exactly this code path.

mod cgroup;
mod error;
mod lockdown;
mod namespaces;
pub mod probe;
mod seccomp;

use std::os::fd::AsFd;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{Gid, Pid, Uid};

pub use cgroup::Placement;
pub use error::SandboxError;
pub use namespaces::{SANDBOX_GID, SANDBOX_UID};
use warden_runtime_client::sandbox_policy::SandboxPolicy;

/// Device nodes a worker may use inside its sandbox: a GPU worker's `/dev/nvidia*`. Each is
/// bound at its own path into the empty root, and the worker's seccomp filter then allows what
/// driving a device takes (`rules_device` in `seccomp.json`, `ioctl` first of all). Empty for a
/// CPU worker: no `/dev` at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceAccess {
    pub nodes: Vec<PathBuf>,
}

impl DeviceAccess {
    /// The NVIDIA nodes of this machine that CUDA opens: the control node, unified memory, and
    /// the GPUs. All GPUs' nodes are granted: which `/dev/nvidiaN` a CUDA ordinal is depends on
    /// the driver's enumeration order, and CUDA itself enumerates every GPU it can open. None
    /// on a machine without an NVIDIA driver.
    pub fn nvidia() -> DeviceAccess {
        let mut nodes: Vec<PathBuf> =
            ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]
                .into_iter()
                .map(PathBuf::from)
                .collect();
        if let Ok(entries) = std::fs::read_dir("/dev") {
            let mut gpus: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|n| n.strip_prefix("nvidia"))
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                })
                .collect();
            gpus.sort();
            nodes.extend(gpus);
        }
        nodes.retain(|p| is_char_device(p));
        DeviceAccess { nodes }
    }

    /// Refuses anything but character devices directly under `/dev` (no symlinks, no `..`).
    fn validate(&self) -> Result<(), SandboxError> {
        for node in &self.nodes {
            let plain = node.is_absolute()
                && node.starts_with("/dev")
                && node.components().all(|c| {
                    matches!(
                        c,
                        std::path::Component::RootDir | std::path::Component::Normal(_)
                    )
                });
            if !plain || !is_char_device(node) {
                return Err(SandboxError::Device {
                    path: node.clone(),
                    message: "not a character device under /dev".into(),
                });
            }
        }
        Ok(())
    }
}

fn is_char_device(path: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_char_device())
}

/// Enters the sandbox described by `policy`, with `devices` bound inside. Returns only in the
/// sandboxed worker; the process that called it becomes its waiting parent and exits with the
/// worker's status. Must be called while the process has a single thread (before ONNX Runtime
/// builds anything).
pub fn enter(policy: &SandboxPolicy, devices: &DeviceAccess) -> Result<(), SandboxError> {
    policy.validate()?;
    devices.validate()?;
    if policy.insecure_disable_sandbox {
        tracing::warn!(
            "INSECURE: sandbox.insecure_disable_sandbox is set; this worker runs with the \
             agent's uid, network, filesystem (state directory and keys included) and no \
             seccomp filter (only its rlimits and no_new_privs remain)"
        );
        return lockdown::limits(policy);
    }
    let filter = seccomp::compile(!devices.nodes.is_empty())?;

    match cgroup::place(policy, std::process::id())? {
        Placement::Limited(dir) => tracing::info!(cgroup = %dir.display(), "cgroup limits applied"),
        Placement::Unlimited(why) => tracing::info!("{why}"),
    }

    let (outer_uid, outer_gid) = if Uid::effective().is_root() {
        become_throwaway_user(policy)?
    } else {
        (Uid::effective(), Gid::effective())
    };
    let single = namespaces::unshare_all()?;
    namespaces::map_ids(outer_uid, outer_gid)?;
    namespaces::build_root(policy.tmpfs_bytes, &devices.nodes)?;

    // The child learns that the parent died before PR_SET_PDEATHSIG was armed from this pipe:
    // the parent holds the only write end.
    let (alive_r, alive_w) = nix::unistd::pipe().map_err(|errno| SandboxError::Sys {
        step: "pipe",
        errno,
    })?;
    match crate::sys::fork_single_threaded(single).map_err(|errno| SandboxError::Sys {
        step: "fork",
        errno,
    })? {
        crate::sys::Side::Parent { child } => {
            drop(alive_r);
            wait_and_exit(policy, &filter, child, alive_w)
        }
        crate::sys::Side::Child => {
            drop(alive_w);
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|errno| SandboxError::Sys {
                step: "prctl(PR_SET_PDEATHSIG)",
                errno,
            })?;
            let mut fds = [PollFd::new(alive_r.as_fd(), PollFlags::POLLIN)];
            let parent_gone = poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| n > 0);
            if parent_gone {
                std::process::exit(1);
            }
            drop(alive_r);
            lockdown::lockdown(policy, &filter)?;
            tracing::info!(
                uid = SANDBOX_UID,
                host_uid = outer_uid.as_raw(),
                "sandbox entered: namespaces, read-only root, no capabilities, seccomp"
            );
            Ok(())
        }
    }
}

/// A root agent's worker first becomes the policy's throwaway host user (groups, gid, uid, in
/// that order), so that everything after — the namespaces, the id map, the model — runs
/// without root. The kernel only lets a process map its *own* uid into a new user namespace,
/// so this is also what lets the worker's sandbox uid map onto the throwaway uid.
fn become_throwaway_user(policy: &SandboxPolicy) -> Result<(Uid, Gid), SandboxError> {
    let sys = |step: &'static str| move |errno| SandboxError::Sys { step, errno };
    let uid = Uid::from_raw(policy.root_host_uid);
    let gid = Gid::from_raw(policy.root_host_gid);
    // Root's supplementary groups (gid 0 among them) must not follow the worker.
    nix::unistd::setgroups(&[]).map_err(sys("setgroups([])"))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(sys("setresgid(throwaway gid)"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(sys("setresuid(throwaway uid)"))?;
    // Changing uid made the process non-dumpable, which makes /proc/self/uid_map root's and
    // unwritable to us; the id map is written right after. `lockdown` clears it again.
    nix::sys::prctl::set_dumpable(true).map_err(sys("prctl(PR_SET_DUMPABLE, 1)"))?;
    Ok((uid, gid))
}

/// The parent's whole remaining life: give up the agent's socket (the worker's death must
/// show as end of stream), lock itself down like the worker, wait, and exit with the worker's
/// status (128 + signal when it was killed, like a shell).
fn wait_and_exit(
    policy: &SandboxPolicy,
    filter: &seccomp::Filters,
    child: Pid,
    alive_w: std::os::fd::OwnedFd,
) -> ! {
    // Replace our stdin (the socket) with the pipe's write end, which we keep open anyway.
    if let Err(e) = nix::unistd::dup2_stdin(&alive_w) {
        tracing::error!("sandbox parent cannot release the socket: {e}");
        std::process::exit(1);
    }
    if let Err(e) = lockdown::lockdown(policy, filter) {
        // The child dies with us (PR_SET_PDEATHSIG); `kill` may already be filtered here.
        tracing::error!("sandbox parent: {e}");
        std::process::exit(1);
    }
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => std::process::exit(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                tracing::error!(%signal, "the sandboxed worker was killed by a signal");
                std::process::exit(128 + signal as i32);
            }
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!("sandbox parent cannot wait for the worker: {e}");
                std::process::exit(1);
            }
        }
    }
}
