//! Checks of each sandbox property, run from inside a sandboxed worker (the
//! `warden-sandbox-probe` binary enters the sandbox through the same [`super::enter`] and the
//! same worker start-up as `warden-runtime`, then runs these instead of serving). Each probe
//! records what the worker could or could not do; the tests decide what must hold.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

/// What one attempt did: `{"ok": …}` or `{"err": …}` in the report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok(String),
    Err(String),
}

impl<T: std::fmt::Debug, E: std::fmt::Display> From<Result<T, E>> for Outcome {
    fn from(r: Result<T, E>) -> Outcome {
        match r {
            Ok(v) => Outcome::Ok(format!("{v:?}")),
            Err(e) => Outcome::Err(e.to_string()),
        }
    }
}

/// Capability sets as the kernel reports them (names).
#[derive(Debug, Serialize)]
pub struct CapabilitySets {
    pub effective: Vec<String>,
    pub permitted: Vec<String>,
    pub inheritable: Vec<String>,
    pub ambient: Vec<String>,
    pub bounding: Vec<String>,
}

/// The process's capability sets, or why they could not be read (`{"Ok": …}` or
/// `{"Err": "…"}` in the report).
#[derive(Debug, Serialize)]
pub enum CapabilityReport {
    #[serde(rename = "Ok")]
    Read(CapabilitySets),
    #[serde(rename = "Err")]
    Unreadable(String),
}

/// Everything the probes saw.
#[derive(Debug, Serialize)]
pub struct Report {
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    pub egid: u32,
    pub pid: i32,
    pub capabilities: CapabilityReport,
    pub no_new_privs: Outcome,
    pub root_entries: Outcome,
    pub proc_entries: Outcome,
    pub write_root: Outcome,
    pub write_tmp: Outcome,
    pub secret_path: Outcome,
    pub connect_tcp: Outcome,
    pub syscall_socket: Outcome,
    pub syscall_unshare: Outcome,
    pub spawn_process: Outcome,
    pub allocate_over_limit: Outcome,
    pub allocate_small: Outcome,
    pub rlimit_as: Outcome,
    pub rlimit_core: Outcome,
    pub rlimit_nofile: Outcome,
    pub dev_entries: Outcome,
    /// Open the granted device node read-write and write to it.
    pub device_write: Outcome,
    /// An ioctl (`TCGETS`) on it, or on `/proc/cpuinfo` without one: `ENOTTY` from the
    /// driver when ioctl is allowed, `EPERM` from the seccomp filter when not.
    pub device_ioctl: Outcome,
}

/// What to try to reach from inside.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// A file outside the sandbox (e.g. a key in the agent's state directory).
    pub secret: Option<std::path::PathBuf>,
    /// A TCP address that listens outside the sandbox.
    pub connect: Option<std::net::SocketAddr>,
    /// The address-space limit the worker was given.
    pub address_space_bytes: u64,
    /// A device node to use (one the test granted, or one it did not).
    pub device: Option<std::path::PathBuf>,
}

/// Runs every probe.
pub fn run(targets: &Targets) -> Report {
    use nix::sys::resource::{Resource, getrlimit};
    use nix::unistd::{getegid, geteuid, getgid, getpid, getuid};

    let secret = targets
        .secret
        .clone()
        .unwrap_or_else(|| "/etc/passwd".into());
    Report {
        uid: getuid().as_raw(),
        euid: geteuid().as_raw(),
        gid: getgid().as_raw(),
        egid: getegid().as_raw(),
        pid: getpid().as_raw(),
        capabilities: match capability_sets() {
            Ok(sets) => CapabilityReport::Read(sets),
            Err(e) => CapabilityReport::Unreadable(e.to_string()),
        },
        no_new_privs: nix::sys::prctl::get_no_new_privs().into(),
        root_entries: list("/").into(),
        proc_entries: list("/proc").into(),
        write_root: std::fs::write("/probe", b"x").into(),
        write_tmp: std::fs::write("/tmp/probe", b"x")
            .and_then(|()| std::fs::read("/tmp/probe"))
            .map(|b| b.len())
            .into(),
        secret_path: std::fs::read(Path::new(&secret)).map(|b| b.len()).into(),
        connect_tcp: match targets.connect {
            Some(addr) => std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .map(|_| "connected")
                .into(),
            None => Outcome::Err("no target given".into()),
        },
        syscall_socket: nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::empty(),
            None,
        )
        .map(|_| "created")
        .into(),
        syscall_unshare: nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).into(),
        // Not executable anyway: without the sandbox this fails in exec (EACCES), inside it
        // the fork itself is refused (EPERM).
        spawn_process: std::process::Command::new("/proc/cpuinfo")
            .spawn()
            .map(|_| "spawned")
            .into(),
        allocate_over_limit: allocate(targets.address_space_bytes as usize).into(),
        allocate_small: allocate(16 << 20).into(),
        rlimit_as: getrlimit(Resource::RLIMIT_AS).into(),
        rlimit_core: getrlimit(Resource::RLIMIT_CORE).into(),
        rlimit_nofile: getrlimit(Resource::RLIMIT_NOFILE).into(),
        dev_entries: list("/dev").into(),
        device_write: match &targets.device {
            Some(node) => std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(node)
                .and_then(|mut f| std::io::Write::write(&mut f, b"probe"))
                .into(),
            None => Outcome::Err("no device given".into()),
        },
        // Without a device, on the one file every worker sees: the question is only whether
        // the call reaches the kernel's file code at all.
        device_ioctl: std::fs::File::open(
            targets
                .device
                .clone()
                .unwrap_or_else(|| "/proc/cpuinfo".into()),
        )
        .map_err(|e| e.to_string())
        .and_then(|f| nix::sys::termios::tcgetattr(&f).map_err(|e| e.to_string()))
        .map(|_| "a terminal")
        .into(),
    }
}

fn list(dir: &str) -> std::io::Result<Vec<String>> {
    let mut names = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<Vec<_>>>()?;
    names.sort();
    Ok(names)
}

/// An allocation the address-space limit refused.
#[derive(Debug, thiserror::Error)]
#[error("allocation of {bytes} bytes refused: {source}")]
struct AllocationRefused {
    bytes: usize,
    source: std::collections::TryReserveError,
}

/// Reserves and touches `bytes`; fails (instead of aborting) when the limit refuses it.
fn allocate(bytes: usize) -> Result<usize, AllocationRefused> {
    let mut v: Vec<u8> = Vec::new();
    v.try_reserve_exact(bytes)
        .map_err(|source| AllocationRefused { bytes, source })?;
    v.resize(bytes, 1);
    Ok(v.iter().step_by(4096).map(|&b| usize::from(b)).sum())
}

fn capability_sets() -> Result<CapabilitySets, caps::errors::CapsError> {
    use caps::CapSet;
    let read = |set| -> Result<Vec<String>, caps::errors::CapsError> {
        let mut names: Vec<String> = caps::read(None, set)?
            .iter()
            .map(ToString::to_string)
            .collect();
        names.sort();
        Ok(names)
    };
    Ok(CapabilitySets {
        effective: read(CapSet::Effective)?,
        permitted: read(CapSet::Permitted)?,
        inheritable: read(CapSet::Inheritable)?,
        ambient: read(CapSet::Ambient)?,
        bounding: read(CapSet::Bounding)?,
    })
}
