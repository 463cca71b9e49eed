//! Why the sandbox could not be entered, one variant per kind of step.

use std::path::PathBuf;

use nix::errno::Errno;
use warden_runtime_client::sandbox_policy::PolicyError;

/// Why the sandbox could not be entered. The worker refuses to start (it never falls back to
/// running unsandboxed unless the policy says `insecure_disable_sandbox`).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox policy: {0}")]
    Policy(#[from] PolicyError),
    #[error("sandbox: {step}: {errno}")]
    Sys { step: &'static str, errno: Errno },
    #[error("sandbox: {step}: {source}")]
    Io {
        step: &'static str,
        source: std::io::Error,
    },
    #[error("sandbox: capabilities: {message}")]
    Capabilities { message: String },
    #[error("sandbox: seccomp: {message}")]
    Seccomp { message: String },
    #[error("sandbox: cgroup {path}: {message}")]
    Cgroup { path: PathBuf, message: String },
    #[error("sandbox: device {path}: {message}")]
    Device { path: PathBuf, message: String },
}
