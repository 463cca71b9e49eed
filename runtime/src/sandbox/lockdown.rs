//! The last steps, in the process that will run untrusted model code: resource limits, no
//! capabilities in any set, `no_new_privs`, not dumpable, then the seccomp filter.

use nix::sys::resource::{Resource, setrlimit};

use super::error::SandboxError;
use warden_runtime_client::sandbox_policy::SandboxPolicy;

/// Applies every limit and drops every privilege of the calling (single-threaded) process.
pub fn lockdown(
    policy: &SandboxPolicy,
    filter: &super::seccomp::Filters,
) -> Result<(), SandboxError> {
    limits(policy)?;
    drop_capabilities()?;
    super::seccomp::install(filter)
}

/// rlimits, not dumpable, `no_new_privs`: what works on any host, even one without
/// namespaces, so the insecure mode keeps it too.
pub fn limits(policy: &SandboxPolicy) -> Result<(), SandboxError> {
    let sys = |step: &'static str| move |errno| SandboxError::Sys { step, errno };
    let limit = |resource, value: u64, step| setrlimit(resource, value, value).map_err(sys(step));
    limit(
        Resource::RLIMIT_AS,
        policy.address_space_bytes,
        "setrlimit(RLIMIT_AS)",
    )?;
    if policy.cpu_time_secs > 0 {
        // Soft = hard: the soft limit's SIGXCPU would be ignored (the worker is the init of
        // its PID namespace, which drops signals it has no handler for); the hard limit's
        // SIGKILL is not.
        limit(
            Resource::RLIMIT_CPU,
            policy.cpu_time_secs,
            "setrlimit(RLIMIT_CPU)",
        )?;
    }
    limit(
        Resource::RLIMIT_NOFILE,
        policy.open_files,
        "setrlimit(RLIMIT_NOFILE)",
    )?;
    limit(Resource::RLIMIT_CORE, 0, "setrlimit(RLIMIT_CORE)")?;
    // Not dumpable: no core file, and no ptrace from another process of the same host uid.
    nix::sys::prctl::set_dumpable(false).map_err(sys("prctl(PR_SET_DUMPABLE, 0)"))?;
    nix::sys::prctl::set_no_new_privs().map_err(sys("prctl(PR_SET_NO_NEW_PRIVS)"))
}

/// Empties the ambient, bounding, inheritable, effective and permitted sets, in that order:
/// the bounding set can only be changed while CAP_SETPCAP is still effective.
fn drop_capabilities() -> Result<(), SandboxError> {
    use caps::CapSet;
    for set in [
        CapSet::Ambient,
        CapSet::Bounding,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(|e| SandboxError::Capabilities {
            message: format!("cannot clear the {set:?} set: {e}"),
        })?;
    }
    Ok(())
}
