//! The sandbox, proven from inside a real worker. `warden-sandbox-probe` starts exactly like
//! `warden-runtime` — same arguments (built by `WorkerOptions::args`), same model load, same
//! `sandbox::enter` — then tries what the sandbox must forbid and reports each outcome as JSON.
//! A control run with `insecure_disable_sandbox` shows the same probes succeed without the
//! sandbox, so none of these assertions can pass vacuously. The serving worker itself is then
//! inspected from outside through /proc.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;
use warden_runtime::sandbox::SANDBOX_UID;
use warden_runtime_client::sandbox_policy::SandboxPolicy;
use warden_runtime_client::worker::{Worker, WorkerOptions};

/// A stand-in for the agent's state directory: the verified model and a private key beside it,
/// world-readable so that only the sandbox can explain the worker not seeing the key. Kept
/// under the target directory, not /tmp (the sandbox mounts its own /tmp).
struct StateDir {
    _dir: tempfile::TempDir,
    model: PathBuf,
    key: PathBuf,
}

fn state_dir() -> StateDir {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let model = dir.path().join("model.onnx");
    std::fs::write(&model, model_bytes()).unwrap();
    let key = dir.path().join("device.key");
    std::fs::write(&key, b"-----BEGIN PRIVATE KEY-----\nnot a real key\n").unwrap();
    for f in [&model, &key] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    StateDir {
        _dir: dir,
        model,
        key,
    }
}

fn options(binary: &str, model: &Path, sandbox: SandboxPolicy) -> WorkerOptions {
    let mut o = WorkerOptions::new(
        PathBuf::from(binary),
        ort_library(),
        model.to_path_buf(),
        model_digest(),
    );
    o.sandbox = sandbox;
    o
}

/// A probe run: its report, and the process (alive until `finish`).
struct Probe {
    report: Value,
    child: Child,
    socket: UnixStream,
}

impl Probe {
    fn start(sandbox: SandboxPolicy, state: &StateDir, connect: &TcpListener) -> Probe {
        Probe::start_as(None, sandbox, state, connect, &[])
    }

    /// `as_uid`: start the probe as that (non-root) host user, like an unprivileged agent.
    fn start_as(
        as_uid: Option<u32>,
        sandbox: SandboxPolicy,
        state: &StateDir,
        connect: &TcpListener,
        extra: &[&str],
    ) -> Probe {
        let opts = options(
            env!("CARGO_BIN_EXE_warden-sandbox-probe"),
            &state.model,
            sandbox,
        );
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut cmd = Command::new(&opts.worker_binary);
        if let Some(uid) = as_uid {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(uid);
        }
        let child = cmd
            .args(opts.args())
            .arg("--probe-secret")
            .arg(&state.key)
            .arg("--probe-connect")
            .arg(connect.local_addr().unwrap().to_string())
            .args(extra)
            .env_clear()
            .envs(opts.env())
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // The command holds our copy of the worker's end: without this drop a worker that
        // dies early would never show as end of stream.
        drop(cmd);
        // As the agent does: the tensor arena first, so the probe maps it like a worker.
        let _arena = warden_runtime_client::shm::share(&ours, opts.shared_memory_bytes).unwrap();

        ours.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut line = String::new();
        BufReader::new(ours.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        let report: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("no probe report ({e}): {line:?}"));
        Probe {
            report,
            child,
            socket: ours,
        }
    }

    fn ok(&self, probe: &str) -> String {
        match &self.report[probe] {
            Value::Object(m) if m.contains_key("ok") => m["ok"].as_str().unwrap().to_string(),
            other => panic!("{probe} should have succeeded: {other}"),
        }
    }

    fn err(&self, probe: &str) -> String {
        match &self.report[probe] {
            Value::Object(m) if m.contains_key("err") => m["err"].as_str().unwrap().to_string(),
            other => panic!("{probe} should have failed: {other}"),
        }
    }

    fn finish(mut self) {
        drop(self.socket);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "probe exited with {status}");
    }
}

fn listener() -> TcpListener {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    l
}

fn sandboxed() -> SandboxPolicy {
    SandboxPolicy::default()
}

#[test]
fn runs_as_a_non_root_user_without_capabilities_as_pid_1() {
    let state = state_dir();
    let l = listener();
    let p = Probe::start(sandboxed(), &state, &l);
    let r = &p.report;
    assert_eq!(r["uid"], SANDBOX_UID);
    assert_eq!(r["euid"], SANDBOX_UID);
    assert_ne!(r["gid"], 0);
    assert_eq!(r["pid"], 1, "its own PID namespace");
    let caps = &r["capabilities"]["Ok"];
    for set in [
        "effective",
        "permitted",
        "inheritable",
        "ambient",
        "bounding",
    ] {
        assert_eq!(
            caps[set],
            Value::Array(vec![]),
            "{set} capabilities: {caps}"
        );
    }
    assert_eq!(p.ok("no_new_privs"), "true");

    // Seen from the host: the sandboxed process is not root there either.
    let inner = children(p.child.id());
    assert_eq!(inner.len(), 1, "one sandboxed child");
    let status = std::fs::read_to_string(format!("/proc/{}/status", inner[0])).unwrap();
    let host_uid = field(&status, "Uid:");
    assert!(!host_uid.starts_with("0\t"), "host uid {host_uid}");
    p.finish();
}

#[test]
fn cannot_connect_out() {
    let state = state_dir();
    let l = listener();
    let p = Probe::start(sandboxed(), &state, &l);
    let e = p.err("connect_tcp");
    assert!(e.contains("not permitted"), "{e}");
    assert!(
        matches!(l.accept(), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the listener outside saw a connection"
    );
    p.finish();
}

#[test]
fn writes_only_into_its_private_tmpfs() {
    let state = state_dir();
    let l = listener();
    let p = Probe::start(sandboxed(), &state, &l);
    assert_eq!(
        p.ok("root_entries"),
        r#"["proc", "tmp"]"#,
        "the root holds /tmp and /proc"
    );
    assert_eq!(
        p.ok("proc_entries"),
        r#"["cpuinfo"]"#,
        "/proc holds only cpuinfo"
    );
    let e = p.err("write_root");
    assert!(e.contains("Read-only file system"), "{e}");
    assert_eq!(p.ok("write_tmp"), "1");
    p.finish();
}

#[test]
fn the_state_dir_and_its_keys_are_invisible() {
    let state = state_dir();
    let l = listener();
    let p = Probe::start(sandboxed(), &state, &l);
    let e = p.err("secret_path");
    assert!(e.contains("No such file or directory"), "{e}");
    p.finish();
}

#[test]
fn a_forbidden_syscall_fails_with_eperm() {
    let state = state_dir();
    let l = listener();
    let p = Probe::start(sandboxed(), &state, &l);
    for probe in ["syscall_socket", "syscall_unshare"] {
        let e = p.err(probe);
        assert!(e.starts_with("EPERM"), "{probe}: {e}");
    }
    // No new processes: fork/spawn is refused before any exec is tried.
    let e = p.err("spawn_process");
    assert!(e.contains("Operation not permitted"), "spawn: {e}");
    // No ioctl for a worker that drives no device, and no /dev at all.
    let e = p.err("device_ioctl");
    assert!(e.starts_with("EPERM"), "ioctl: {e}");
    let e = p.err("dev_entries");
    assert!(e.contains("No such file or directory"), "/dev: {e}");
    p.finish();
}

/// The probe's arguments that grant it `/dev/null` as a device node.
const GRANT_DEV_NULL: &[&str] = &["--probe-device", "/dev/null"];

/// The probe saw `/dev/null` and no other device, and could write to it.
fn assert_only_dev_null(p: &Probe) {
    assert_eq!(p.ok("dev_entries"), r#"["null"]"#);
    assert_eq!(p.ok("device_write"), "5");
}

/// A worker granted a device node (a GPU worker's `/dev/nvidia*`; here `/dev/null`, a real
/// character device every host has) sees that node and no other, can use it, and may ioctl
/// (the call reaches the driver: `ENOTTY` from /dev/null, not `EPERM` from the filter). The
/// rest of the sandbox is unchanged. A path that is not a character device under /dev is
/// refused before anything else.
#[test]
fn a_granted_device_node_is_the_only_device_inside() {
    let state = state_dir();
    let l = listener();
    let p = Probe::start_as(None, sandboxed(), &state, &l, GRANT_DEV_NULL);
    assert_only_dev_null(&p);
    let e = p.err("device_ioctl");
    assert!(e.starts_with("ENOTTY"), "ioctl: {e}");
    for probe in ["syscall_socket", "syscall_unshare", "write_root"] {
        p.err(probe);
    }
    p.finish();

    for refused in ["/etc/passwd", "/dev/../etc/passwd", "/tmp"] {
        let mut opts = options(
            env!("CARGO_BIN_EXE_warden-sandbox-probe"),
            &state.model,
            sandboxed(),
        );
        // Nobody sends an arena on this socket.
        opts.shared_memory_bytes = 0;
        let out = Command::new(&opts.worker_binary)
            .args(opts.args())
            .args(["--probe-device", refused])
            .env_clear()
            .envs(opts.env())
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(
                UnixStream::pair().unwrap().1,
            )))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{refused}");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            log.contains(&format!(
                "sandbox: device {refused}: not a character device under /dev"
            )),
            "{refused}: {log}"
        );
    }
}

#[test]
fn the_memory_limit_holds() {
    let state = state_dir();
    let l = listener();
    let limit: u64 = 768 << 20;
    let p = Probe::start(
        SandboxPolicy {
            address_space_bytes: limit,
            ..sandboxed()
        },
        &state,
        &l,
    );
    assert_eq!(p.ok("rlimit_as"), format!("({limit}, {limit})"));
    let e = p.err("allocate_over_limit");
    assert!(e.contains("refused"), "{e}");
    p.ok("allocate_small");
    assert_eq!(p.ok("rlimit_core"), "(0, 0)", "no core dumps");
    assert_eq!(p.ok("rlimit_nofile"), "(256, 256)");
    p.finish();
}

/// An agent running as an ordinary user (production) can only map its own uid: the worker
/// then runs as that uid on the host, with the same namespaces, root, filter and limits. Here
/// the tests run as root (CI), so the probe is started as an unprivileged user to take that
/// path; run as non-root, it takes it anyway.
#[test]
fn an_unprivileged_agent_gets_the_same_sandbox() {
    let state = state_dir();
    let l = listener();
    let unprivileged: u32 = 4242;
    let as_uid = nix::unistd::Uid::effective()
        .is_root()
        .then_some(unprivileged);
    // With a device node granted, as a GPU worker of an unprivileged agent gets its nodes.
    let p = Probe::start_as(as_uid, sandboxed(), &state, &l, GRANT_DEV_NULL);
    assert_only_dev_null(&p);
    assert_eq!(p.report["uid"], SANDBOX_UID);
    assert_eq!(p.report["pid"], 1);
    let caps = &p.report["capabilities"]["Ok"];
    assert_eq!(caps["effective"], Value::Array(vec![]));
    assert_eq!(caps["bounding"], Value::Array(vec![]));
    assert!(p.err("secret_path").contains("No such file"));
    assert!(p.err("connect_tcp").contains("not permitted"));
    assert!(p.err("write_root").contains("Read-only"));
    assert!(p.err("syscall_socket").starts_with("EPERM"));
    let inner = children(p.child.id());
    let status = std::fs::read_to_string(format!("/proc/{}/status", inner[0])).unwrap();
    let expected = as_uid.unwrap_or_else(|| nix::unistd::Uid::effective().as_raw());
    assert!(
        field(&status, "Uid:").starts_with(&format!("{expected}\t")),
        "host uid {}",
        field(&status, "Uid:")
    );
    p.finish();
}

/// The control: the same probes, unsandboxed, reach what the sandbox hides. If this stops
/// holding, the assertions above prove nothing.
#[test]
fn without_the_sandbox_the_same_probes_succeed() {
    let state = state_dir();
    let l = listener();
    let p = Probe::start(
        SandboxPolicy {
            insecure_disable_sandbox: true,
            ..sandboxed()
        },
        &state,
        &l,
    );
    p.ok("secret_path");
    p.ok("connect_tcp");
    p.ok("syscall_socket");
    let e = p.err("spawn_process");
    assert!(
        e.contains("Permission denied"),
        "unsandboxed, only the exec fails: {e}"
    );
    assert!(p.ok("root_entries").contains("\"etc\""));
    assert_ne!(p.report["pid"], 1);
    p.finish();
}

/// The serving worker, from outside: its sandboxed process has other namespaces than ours,
/// a non-root host uid, no capabilities, no_new_privs and a seccomp filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serving_worker_is_sandboxed() {
    let state = state_dir();
    let worker = Worker::start(options(
        env!("CARGO_BIN_EXE_warden-runtime"),
        &state.model,
        sandboxed(),
    ))
    .await
    .unwrap();
    let out = worker.infer(vec![sample_input()], vec![]).await.unwrap();
    assert_eq!(out.len(), 2);

    let inner = children(worker.pid().unwrap());
    assert_eq!(inner.len(), 1);
    let pid = inner[0];
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(!field(&status, "Uid:").starts_with("0\t"));
    assert_eq!(field(&status, "CapEff:"), "0000000000000000");
    assert_eq!(field(&status, "CapPrm:"), "0000000000000000");
    assert_eq!(field(&status, "CapBnd:"), "0000000000000000");
    assert_eq!(field(&status, "NoNewPrivs:"), "1");
    assert_eq!(field(&status, "Seccomp:"), "2", "filter mode");
    for ns in ["user", "mnt", "net", "ipc", "pid", "uts"] {
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        assert_ne!(ours, theirs, "{ns} namespace shared with the agent");
    }
    worker.shutdown().await;
}
