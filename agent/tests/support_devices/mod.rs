//! A fresh swtpm per test (copied, minimal, from attest/tests/devices so that the agent's tests
//! do not depend on another crate's test files), or the TPM named by `WARDEN_TEST_TCTI`.
//! A missing swtpm fails the test with the command that installs it; nothing is skipped.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Fails with the setup hint when `program` is not on PATH.
pub fn require(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{program}` (Debian package {package}) is not installed: run scripts/setup.sh --test"
    );
}

/// A software TPM on loopback, killed on drop.
pub struct Swtpm {
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
    /// The TCTI string for tss-esapi.
    pub tcti: String,
}

fn free_port_pair() -> u16 {
    loop {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port < 65535 && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

impl Swtpm {
    /// `WARDEN_TEST_TCTI` if set, else a fresh swtpm (new state directory, new ports).
    pub fn start() -> Self {
        if let Ok(tcti) = std::env::var("WARDEN_TEST_TCTI") {
            return Self {
                child: None,
                _dir: None,
                tcti,
            };
        }
        require("swtpm", "swtpm");
        for _attempt in 0..10 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port_pair();
            let mut child = Command::new("swtpm")
                .args([
                    "socket",
                    "--tpm2",
                    "--server",
                    &format!("type=tcp,port={port},bindaddr=127.0.0.1"),
                    "--ctrl",
                    &format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1),
                    "--tpmstate",
                    &format!("dir={}", dir.path().display()),
                    "--flags",
                    "not-need-init,startup-clear",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting swtpm");
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut up = false;
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break; // lost a port race: try other ports
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    up = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if up {
                return Self {
                    child: Some(child),
                    _dir: Some(dir),
                    tcti: format!("swtpm:host=127.0.0.1,port={port}"),
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("swtpm did not start");
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// This process's uid, without unsafe code: the owner of a file it just created.
pub fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().metadata().unwrap().uid()
}
