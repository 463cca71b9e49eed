//! The unit files in `systemd/`, checked with systemd's own tools (offline: no running
//! systemd is needed): `systemd-analyze verify` must accept both units without a warning;
//! `systemd-analyze security --offline=yes` scores their exposure (printed, and bounded);
//! `systemd-sysusers` and `systemd-tmpfiles` apply the sysusers.d and tmpfiles.d files to a
//! scratch root. Then what matters to Warden, from the parsed units: only the key service
//! reaches the TPM; the agent keeps every system call and namespace its worker sandbox needs
//! (runtime/SANDBOX.md) and no capability.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../attest/keyd/tests/devices/mod.rs"]
mod support_devices;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn systemd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd")
}

/// `key -> values in order` of one section; a key given twice keeps both.
type Section = BTreeMap<String, Vec<String>>;

/// A unit file's sections; comments and blank lines dropped, continuation lines unsupported
/// (the units do not use them; a stray backslash fails the parse).
fn parse_unit(path: &Path) -> BTreeMap<String, Section> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut sections: BTreeMap<String, Section> = BTreeMap::new();
    let mut current = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        assert!(
            !line.ends_with('\\'),
            "{}:{}: continuation lines are not used",
            path.display(),
            i + 1
        );
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.to_owned());
            sections.entry(name.to_owned()).or_default();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{}:{}: not key=value", path.display(), i + 1));
        let section = current
            .clone()
            .unwrap_or_else(|| panic!("{}:{}: outside a section", path.display(), i + 1));
        sections
            .get_mut(&section)
            .unwrap()
            .entry(key.trim().to_owned())
            .or_default()
            .push(value.trim().to_owned());
    }
    sections
}

fn service(path: &Path) -> Section {
    parse_unit(path)
        .remove("Service")
        .expect("a [Service] section")
}

/// The one value of `key` (given exactly once).
fn one<'a>(s: &'a Section, key: &str) -> &'a str {
    match s.get(key).map(Vec::as_slice) {
        Some([v]) => v,
        other => panic!("{key}: expected one value, found {other:?}"),
    }
}

fn words(s: &Section, key: &str) -> BTreeSet<String> {
    s.get(key)
        .into_iter()
        .flatten()
        .flat_map(|v| v.split_whitespace().map(str::to_owned))
        .collect()
}

fn run(program: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(program).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The system calls of a `SystemCallFilter=` group or name, groups expanded by
/// `systemd-analyze syscall-filter` (this systemd's own tables).
fn expand(item: &str, cache: &mut BTreeMap<String, BTreeSet<String>>) -> BTreeSet<String> {
    if !item.starts_with('@') {
        return BTreeSet::from([item.to_owned()]);
    }
    if let Some(s) = cache.get(item) {
        return s.clone();
    }
    let (ok, out, err) = run("systemd-analyze", &["syscall-filter", item]);
    assert!(ok, "systemd-analyze syscall-filter {item}: {err}");
    let mut set = BTreeSet::new();
    for line in out.lines().skip(1) {
        let name = line.trim();
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        set.extend(expand(name, cache));
    }
    assert!(!set.is_empty(), "{item} expands to nothing");
    cache.insert(item.to_owned(), set.clone());
    set
}

/// The system calls a unit's `SystemCallFilter=` lines allow, applied in order as systemd
/// does when the first line is an allow-list: `~` lines remove, later plain lines add back.
fn allowed_syscalls(s: &Section) -> BTreeSet<String> {
    let lines = s.get("SystemCallFilter").expect("SystemCallFilter=");
    assert!(
        !lines[0].starts_with('~'),
        "the first SystemCallFilter= must be an allow-list"
    );
    let mut cache = BTreeMap::new();
    let mut allowed = BTreeSet::new();
    for line in lines {
        let (deny, list) = match line.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, line.as_str()),
        };
        for item in list.split_whitespace() {
            let calls = expand(item, &mut cache);
            if deny {
                allowed.retain(|c| !calls.contains(c));
            } else {
                allowed.extend(calls);
            }
        }
    }
    allowed
}

/// Copies of both units with `ExecStart=` pointing at the binary just built (verify checks
/// that the executable exists).
fn units_for_verify(dir: &Path) -> Vec<PathBuf> {
    ["warden-keyd.service", "warden.service"]
        .iter()
        .map(|name| {
            let warden = Path::new(env!("CARGO_BIN_EXE_warden"));
            let text = std::fs::read_to_string(systemd_dir().join(name))
                .unwrap()
                .replace("/usr/bin/warden ", &format!("{} ", warden.display()))
                .replace(
                    "/usr/bin/warden-keyd ",
                    &format!("{} ", warden.with_file_name("warden-keyd").display()),
                );
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect()
}

#[test]
fn systemd_analyze_verifies_both_units_without_a_warning() {
    support_devices::require("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().unwrap();
    let units = units_for_verify(dir.path());
    let mut args = vec!["verify", "--man=no"];
    args.extend(units.iter().map(|p| p.to_str().unwrap()));
    let (ok, out, err) = run("systemd-analyze", &args);
    // verify exits 0 on unknown or malformed directives (it ignores them with a warning), so
    // any output at all fails the test.
    assert!(
        ok && out.trim().is_empty() && err.trim().is_empty(),
        "systemd-analyze verify:\n{out}{err}"
    );

    // The check is not vacuous: a misspelt directive is reported.
    let broken = dir.path().join("warden.service");
    let text = std::fs::read_to_string(&broken).unwrap();
    std::fs::write(
        &broken,
        text.replace("ProtectSystem=strict", "ProtectSytem=strict"),
    )
    .unwrap();
    let (_, out, err) = run(
        "systemd-analyze",
        &["verify", "--man=no", broken.to_str().unwrap()],
    );
    assert!(format!("{out}{err}").contains("ProtectSytem"), "{out}{err}");
}

#[test]
fn exposure_scores_of_systemd_analyze_security() {
    support_devices::require("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().unwrap();
    // Upper bounds on "Overall exposure level" (0 = fully locked down, 10 = unprotected). The
    // agent keeps the network and the namespaces its worker sandbox builds, so it scores
    // higher than keyd; see systemd/README.md for what each unit leaves out.
    let bounds = [("warden-keyd.service", 1.5), ("warden.service", 3.0)];
    for (unit, (name, bound)) in units_for_verify(dir.path()).iter().zip(bounds) {
        let (_, out, err) = run(
            "systemd-analyze",
            &["security", "--offline=yes", unit.to_str().unwrap()],
        );
        let line = out
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_else(|| panic!("{name}: no exposure level:\n{out}{err}"));
        println!("{name}: {}", line.trim_start_matches('→').trim());
        let score: f64 = line
            .split(':')
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{name}: {line}"));
        assert!(
            score <= bound,
            "{name}: exposure {score} is above {bound}:\n{out}"
        );
    }
}

#[test]
fn sysusers_and_tmpfiles_apply_to_a_scratch_root() {
    support_devices::require("systemd-sysusers", "systemd");
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("etc")).unwrap();
    let root_arg = format!("--root={}", root.path().display());
    let sysusers = systemd_dir().join("sysusers.d/warden.conf");
    let (ok, out, err) = run("systemd-sysusers", &[&root_arg, sysusers.to_str().unwrap()]);
    assert!(ok, "systemd-sysusers: {out}{err}");
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    let members = |g: &str| -> (u32, BTreeSet<String>) {
        let line = group
            .lines()
            .find(|l| l.starts_with(&format!("{g}:")))
            .unwrap_or_else(|| panic!("no group {g}:\n{group}"));
        let fields: Vec<&str> = line.split(':').collect();
        (
            fields[2].parse().unwrap(),
            fields[3]
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    };
    // Only the key service is in tss; it is in the agent's group for the socket.
    assert_eq!(members("tss").1, BTreeSet::from(["warden-keyd".to_owned()]));
    let (warden_gid, warden_members) = members("warden");
    assert_eq!(warden_members, BTreeSet::from(["warden-keyd".to_owned()]));
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    for user in ["warden", "warden-keyd"] {
        let line = passwd
            .lines()
            .find(|l| l.starts_with(&format!("{user}:")))
            .unwrap_or_else(|| panic!("no user {user}:\n{passwd}"));
        assert!(line.ends_with(":/usr/sbin/nologin"), "{line}");
        assert!(!line.starts_with(&format!("{user}:x:0:")), "{line}");
    }

    support_devices::require("systemd-tmpfiles", "systemd");
    let tmpfiles = systemd_dir().join("tmpfiles.d/warden.conf");
    let (ok, out, err) = run(
        "systemd-tmpfiles",
        &[&root_arg, "--create", tmpfiles.to_str().unwrap()],
    );
    assert!(ok, "systemd-tmpfiles: {out}{err}");
    use std::os::unix::fs::MetadataExt as _;
    let etc = std::fs::metadata(root.path().join("etc/warden")).unwrap();
    assert_eq!(
        (etc.mode() & 0o7777, etc.uid(), etc.gid()),
        (0o750, 0, warden_gid)
    );
    let creds = std::fs::metadata(root.path().join("etc/warden/credstore")).unwrap();
    assert_eq!(
        (creds.mode() & 0o7777, creds.uid(), creds.gid()),
        (0o700, 0, 0)
    );
}

#[test]
fn only_the_key_service_reaches_the_tpm() {
    let keyd = service(&systemd_dir().join("warden-keyd.service"));
    let agent = service(&systemd_dir().join("warden.service"));

    assert_eq!(one(&keyd, "User"), "warden-keyd");
    assert!(one(&keyd, "ExecStart").ends_with("warden-keyd serve --config /etc/warden/keyd.toml"));
    assert!(words(&keyd, "SupplementaryGroups").contains("tss"));
    assert!(words(&keyd, "SupplementaryGroups").contains("warden"));
    assert_eq!(one(&keyd, "DevicePolicy"), "closed");
    assert_eq!(one(&keyd, "DeviceAllow"), "/dev/tpmrm0 rw");
    assert_ne!(
        keyd.get("PrivateDevices").map(Vec::as_slice),
        Some(&["yes".to_owned()][..])
    );
    // The socket's directory: /run/warden, as keyd.toml's socket = "/run/warden/keyd.sock".
    assert_eq!(one(&keyd, "RuntimeDirectory"), "warden");
    // The PIN as a credential, at the path keyd.toml's pin_file names, with a fallback so
    // a TPM appliance without a PIN file still starts.
    assert_eq!(
        one(&keyd, "LoadCredential"),
        "pkcs11-pin:/etc/warden/credstore/pkcs11-pin"
    );
    assert!(one(&keyd, "SetCredential").starts_with("pkcs11-pin:"));
    assert_eq!(one(&keyd, "PrivateNetwork"), "yes");
    assert_eq!(one(&keyd, "RestrictAddressFamilies"), "AF_UNIX");
    let keyd_calls = allowed_syscalls(&keyd);
    assert!(
        keyd_calls.contains("fchownat"),
        "keyd gives its socket to socket_group"
    );
    for denied in ["mount", "pivot_root", "ptrace", "setrlimit", "init_module"] {
        assert!(!keyd_calls.contains(denied), "keyd may call {denied}");
    }
    // unshare and clone stay callable (@system-service), but create no namespace.
    assert_eq!(one(&keyd, "RestrictNamespaces"), "yes");

    assert_eq!(one(&agent, "User"), "warden");
    assert!(one(&agent, "ExecStart").ends_with("warden serve --config /etc/warden/warden.toml"));
    assert!(!words(&agent, "SupplementaryGroups").contains("tss"));
    assert!(
        !agent.contains_key("DeviceAllow"),
        "the agent opens no device"
    );
    assert_eq!(one(&agent, "PrivateDevices"), "yes");
    assert!(
        !agent.contains_key("LoadCredential"),
        "the agent holds no PIN"
    );
}

#[test]
fn the_agent_unit_is_hardened_and_keeps_what_the_worker_sandbox_needs() {
    let agent = service(&systemd_dir().join("warden.service"));
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("StateDirectory", "warden"),
        ("StateDirectoryMode", "0700"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("SystemCallArchitectures", "native"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
    ] {
        assert_eq!(one(&agent, key), value, "{key}");
    }
    // Each worker creates these namespaces (runtime/src/sandbox/namespaces.rs); a unit that
    // forbids one breaks every model load. PrivateUsers= is left out (see the README).
    let namespaces = words(&agent, "RestrictNamespaces");
    for ns in ["user", "mnt", "pid", "net", "ipc", "uts", "cgroup"] {
        assert!(namespaces.contains(ns), "RestrictNamespaces= lacks {ns}");
    }
    assert!(!agent.contains_key("PrivateUsers"));
    // ... and makes these system calls before its own seccomp filter is in place.
    let calls = allowed_syscalls(&agent);
    for needed in [
        "unshare",
        "mount",
        "umount2",
        "pivot_root",
        "seccomp",
        "prctl",
        "capset",
        "clone",
        "wait4",
        "prlimit64",
        "setrlimit",
        "socketpair",
        "execve",
    ] {
        assert!(calls.contains(needed), "SystemCallFilter= denies {needed}");
    }
    for denied in [
        "init_module",
        "kexec_load",
        "reboot",
        "ptrace",
        "settimeofday",
        "swapon",
    ] {
        assert!(!calls.contains(denied), "SystemCallFilter= allows {denied}");
    }
}
