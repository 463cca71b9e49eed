//! The key service's commands, run by its own binary: `warden keyd`, `warden provision` and the
//! device-side `warden attest` commands on the TPM itself hand over to `warden-keyd` (beside
//! `warden`), which alone links the TPM and PKCS#11 backends. The process is replaced, so
//! signals, output and the exit status are `warden-keyd`'s.

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;

use anyhow::Context as _;

/// The binary's name.
pub const KEYD_BINARY: &str = "warden-keyd";

/// `warden-keyd` beside this executable.
fn keyd_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let path = exe
        .parent()
        .map(|d| d.join(KEYD_BINARY))
        .context("this executable has no directory")?;
    anyhow::ensure!(
        path.is_file(),
        "{} is not installed beside {} (the key service's commands are its own)",
        path.display(),
        exe.display()
    );
    Ok(path)
}

/// Replaces this process with `warden-keyd ARGS`; returns only when that fails.
pub fn exec<I, S>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let binary = keyd_binary()?;
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let error = std::process::Command::new(&binary).args(&args).exec();
    Err(error).with_context(|| format!("starting {}", binary.display()))
}
