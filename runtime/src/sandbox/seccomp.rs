//! The seccomp-bpf allow-list. The list itself is data (`runtime/seccomp.json`, embedded at
//! build time so a worker cannot be pointed at another one); this module turns it into a BPF
//! program with `seccompiler` and installs it.

use seccompiler::{BpfProgram, TargetArch};
use serde::Deserialize;

use super::error::SandboxError;

const POLICY: &str = include_str!("../../seccomp.json");

#[derive(Deserialize)]
struct AllowList {
    mismatch_errno: u32,
    enosys: Vec<String>,
    rules: Vec<serde_json::Value>,
    rules_x86_64: Vec<serde_json::Value>,
    rules_aarch64: Vec<serde_json::Value>,
    rules_device: Vec<serde_json::Value>,
}

/// The two programs to install: the allow-list, and the calls that must look unimplemented.
pub struct Filters {
    allow: BpfProgram,
    enosys: BpfProgram,
}

/// Compiles the embedded allow-list for the running architecture; `devices`: with the calls a
/// worker granted device nodes needs to drive them (`rules_device`).
pub fn compile(devices: bool) -> Result<Filters, SandboxError> {
    let bad = |message: String| SandboxError::Seccomp { message };
    let list: AllowList =
        serde_json::from_str(POLICY).map_err(|e| bad(format!("seccomp.json: {e}")))?;
    let (arch, extra) = match std::env::consts::ARCH {
        "x86_64" => (TargetArch::x86_64, list.rules_x86_64),
        "aarch64" => (TargetArch::aarch64, list.rules_aarch64),
        other => return Err(bad(format!("no seccomp allow-list for {other}"))),
    };
    let mut rules = list.rules;
    rules.extend(extra);
    if devices {
        rules.extend(list.rules_device);
    }
    let enosys: Vec<serde_json::Value> = list
        .enosys
        .iter()
        .map(|name| serde_json::json!({ "syscall": name }))
        .collect();
    // Stacked filters: the kernel takes the most restrictive answer, so ENOSYS (an errno)
    // wins over the allow-list's ALLOW for those calls.
    let program = serde_json::json!({
        "allow": {
            "mismatch_action": {"errno": list.mismatch_errno},
            "match_action": "allow",
            "filter": rules,
        },
        "enosys": {
            "mismatch_action": "allow",
            "match_action": {"errno": 38},
            "filter": enosys,
        }
    });
    let text = program.to_string();
    let mut map = seccompiler::compile_from_json(text.as_bytes(), arch)
        .map_err(|e| bad(format!("seccomp.json: {e}")))?;
    let mut take = |name: &str| {
        map.remove(name)
            .ok_or_else(|| bad(format!("seccomp.json: no {name} program")))
    };
    Ok(Filters {
        allow: take("allow")?,
        enosys: take("enosys")?,
    })
}

/// Installs the filters on the calling thread; threads created afterwards inherit them. Needs
/// `no_new_privs` (set before). The allow-list goes last: it does not allow `seccomp` itself.
pub fn install(filters: &Filters) -> Result<(), SandboxError> {
    for program in [&filters.enosys, &filters.allow] {
        seccompiler::apply_filter(program).map_err(|e| SandboxError::Seccomp {
            message: format!("cannot install the filter: {e}"),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_embedded_allow_list_compiles() {
        for devices in [false, true] {
            let program = super::compile(devices);
            assert!(program.is_ok(), "{:?}", program.err());
        }
    }

    #[test]
    fn dangerous_calls_are_not_allowed() {
        let list: super::AllowList = serde_json::from_str(super::POLICY).unwrap();
        let names = |rules: &[serde_json::Value]| -> Vec<String> {
            rules
                .iter()
                .map(|r| r["syscall"].as_str().unwrap().to_string())
                .collect()
        };
        let base = [list.rules, list.rules_x86_64, list.rules_aarch64].concat();
        let device = names(&list.rules_device);
        for name in [
            "socket",
            "connect",
            "bind",
            "execve",
            "ptrace",
            "mount",
            "unshare",
            "setns",
            "keyctl",
            "bpf",
            "ioctl",
            "perf_event_open",
        ] {
            assert!(
                !names(&base).contains(&name.to_string()),
                "{name} must stay out of the allow-list"
            );
            // A device worker may drive its devices (ioctl), nothing else of these.
            assert!(
                name == "ioctl" || !device.contains(&name.to_string()),
                "{name} must stay out of the device additions"
            );
        }
        assert!(device.contains(&"ioctl".to_string()));
    }
}
