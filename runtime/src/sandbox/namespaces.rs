//! Fresh namespaces, the uid/gid mapping, and the minimal read-only root.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::unistd::{Gid, Uid, pivot_root};

use super::error::SandboxError;
use crate::sys::SingleThreaded;

/// The uid and gid the worker has inside its user namespace. Not 0: inside its namespace the
/// worker is an ordinary user too.
pub const SANDBOX_UID: u32 = 1000;
pub const SANDBOX_GID: u32 = 1000;

/// New user, mount, network, IPC, PID, UTS and cgroup namespaces for this process (PID: for
/// its children). Must be called single-threaded; the kernel enforces it for `CLONE_NEWUSER`.
pub fn unshare_all() -> Result<SingleThreaded, SandboxError> {
    let flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWCGROUP;
    unshare(flags).map_err(|e| SandboxError::Sys {
        step: "unshare(user, mount, net, ipc, pid, uts, cgroup namespaces)",
        errno: e,
    })?;
    Ok(SingleThreaded::after_unshare_newuser())
}

/// Maps the single sandbox uid/gid onto `outer` (one id each, which an unprivileged agent may
/// do for its own ids). `setgroups` is denied first: the kernel requires it for an
/// unprivileged gid map, and it stops the worker from ever regaining supplementary groups.
pub fn map_ids(outer_uid: Uid, outer_gid: Gid) -> Result<(), SandboxError> {
    write_proc("/proc/self/setgroups", "deny")?;
    write_proc(
        "/proc/self/uid_map",
        &format!("{SANDBOX_UID} {outer_uid} 1\n"),
    )?;
    write_proc(
        "/proc/self/gid_map",
        &format!("{SANDBOX_GID} {outer_gid} 1\n"),
    )?;
    Ok(())
}

fn write_proc(path: &'static str, text: &str) -> Result<(), SandboxError> {
    std::fs::write(path, text).map_err(|source| SandboxError::Io { step: path, source })
}

/// Replaces the filesystem view with an empty read-only tmpfs root holding only a private,
/// size-limited, writable tmpfs at `/tmp`. The old root (the agent's state directory, its keys,
/// the whole host) is detached: nothing of it is reachable afterwards.
pub fn build_root(tmpfs_bytes: u64, device_nodes: &[PathBuf]) -> Result<(), SandboxError> {
    let sys = |step: &'static str| move |errno| SandboxError::Sys { step, errno };
    // Our mounts must not propagate back to the host, nor host mounts into us.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("make / private"))?;
    // The new root is a tmpfs mounted (in our mount namespace only) over the host's /tmp,
    // which exists on any host; pivot_root needs a mount point.
    let new_root = Path::new("/tmp");
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("tmpfs"),
        new_root,
        Some("tmpfs"),
        hardened,
        Some("size=1m,mode=0755"),
    )
    .map_err(sys("mount the new root tmpfs"))?;
    for dir in ["tmp", ".old", "proc"] {
        let path = new_root.join(dir);
        std::fs::create_dir(&path).map_err(|source| SandboxError::Io {
            step: "create a directory in the new root",
            source,
        })?;
    }
    mount(
        Some("tmpfs"),
        &new_root.join("tmp"),
        Some("tmpfs"),
        hardened,
        Some(format!("size={tmpfs_bytes},mode=1777").as_str()),
    )
    .map_err(sys("mount the private /tmp"))?;
    // ONNX Runtime sizes its thread pools and picks kernels from /proc/cpuinfo; the file
    // says nothing about the agent. Bound read-only, it is the only file of /proc inside.
    let cpuinfo = new_root.join("proc/cpuinfo");
    std::fs::write(&cpuinfo, b"").map_err(|source| SandboxError::Io {
        step: "create /proc/cpuinfo in the new root",
        source,
    })?;
    bind_read_only(
        Path::new("/proc/cpuinfo"),
        &cpuinfo,
        hardened,
        ("bind /proc/cpuinfo", "remount /proc/cpuinfo read-only"),
    )?;
    // Device nodes (a GPU worker's), each bound at its own path; read-only binds without
    // `nodev`, so that the node itself works while nothing can be created beside it.
    for node in device_nodes {
        let relative = node.strip_prefix("/").unwrap_or(node);
        let target = new_root.join(relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|source| SandboxError::Io {
                step: "create a device directory in the new root",
                source,
            })?;
        }
        std::fs::write(&target, b"").map_err(|source| SandboxError::Io {
            step: "create a device mount point in the new root",
            source,
        })?;
        bind_read_only(
            node,
            &target,
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            ("bind a device node", "remount a device node read-only"),
        )?;
    }
    pivot_root(new_root, &new_root.join(".old")).map_err(sys("pivot_root"))?;
    std::env::set_current_dir("/").map_err(|source| SandboxError::Io {
        step: "chdir to the new root",
        source,
    })?;
    umount2("/.old", MntFlags::MNT_DETACH).map_err(sys("detach the old root"))?;
    std::fs::remove_dir("/.old").map_err(|source| SandboxError::Io {
        step: "remove the old root's mount point",
        source,
    })?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | hardened,
        None::<&str>,
    )
    .map_err(sys("remount the root read-only"))?;
    Ok(())
}

/// Binds `source` onto `target` (an existing file), then makes that mount read-only with
/// `flags` added (a bind mount takes its flags only from a remount). `steps` name the two
/// mounts in errors.
fn bind_read_only(
    source: &Path,
    target: &Path,
    flags: MsFlags,
    steps: (&'static str, &'static str),
) -> Result<(), SandboxError> {
    let sys = |step: &'static str| move |errno| SandboxError::Sys { step, errno };
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(sys(steps.0))?;
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | flags,
        None::<&str>,
    )
    .map_err(sys(steps.1))
}
