//! Test devices: a fresh swtpm per test, a fresh SoftHSM2 token per test, or the real device
//! named by environment variables (see hw-tests/README.md):
//!
//! - `WARDEN_TEST_TCTI`: use this TPM instead of starting swtpm (e.g. `device:/dev/tpmrm0`);
//!   run with `--test-threads=1` on a TPM you may clear.
//! - `WARDEN_TEST_PKCS11_MODULE`, `WARDEN_TEST_PKCS11_TOKEN`, `WARDEN_TEST_PKCS11_PIN_FILE`:
//!   use this module and (initialized, empty) token instead of a SoftHSM2 temp token.
//!
//! Missing programs fail the test with the command that installs them; nothing is skipped.
//! The agent's integration tests include this file too (`#[path]`), so there is one launcher.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
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
    /// True when this is a real TPM from `WARDEN_TEST_TCTI`.
    pub external: bool,
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
                external: true,
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
                    external: false,
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

/// A PKCS#11 token for one test.
pub struct Token {
    _dir: Option<tempfile::TempDir>,
    pub module: PathBuf,
    pub label: String,
    pub pin_file: PathBuf,
    /// The SOFTHSM2_CONF to give a child process; None for a real module.
    pub softhsm_conf: Option<PathBuf>,
}

/// Where Debian puts the SoftHSM2 module.
pub fn softhsm_module() -> PathBuf {
    for p in [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    ] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "the SoftHSM2 module (Debian package softhsm2) is not installed: run scripts/setup.sh --test"
    );
}

impl Token {
    /// The token named by `WARDEN_TEST_PKCS11_*`, or a fresh SoftHSM2 token in a temp dir.
    pub fn create() -> Self {
        if let Ok(module) = std::env::var("WARDEN_TEST_PKCS11_MODULE") {
            return Self {
                _dir: None,
                module: module.into(),
                label: std::env::var("WARDEN_TEST_PKCS11_TOKEN")
                    .expect("WARDEN_TEST_PKCS11_TOKEN names the token"),
                pin_file: std::env::var("WARDEN_TEST_PKCS11_PIN_FILE")
                    .expect("WARDEN_TEST_PKCS11_PIN_FILE names the PIN file")
                    .into(),
                softhsm_conf: None,
            };
        }
        require("softhsm2-util", "softhsm2");
        let module = softhsm_module();
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .unwrap();
        let label = "warden-test".to_owned();
        let pin = "1234-test-pin";
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args([
                "--init-token",
                "--free",
                "--label",
                &label,
                "--so-pin",
                "5678-test-so-pin",
                "--pin",
                pin,
            ])
            .output()
            .expect("running softhsm2-util");
        assert!(
            out.status.success(),
            "softhsm2-util --init-token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pin_file = dir.path().join("user.pin");
        std::fs::write(&pin_file, format!("{pin}\n")).unwrap();
        Self {
            _dir: Some(dir),
            module,
            label,
            pin_file,
            softhsm_conf: Some(conf),
        }
    }
}

/// The environment variable that marks a child re-executed for one PKCS#11 test.
pub const CHILD_MARK: &str = "WARDEN_TEST_PKCS11_CHILD";

/// Runs `test_name` (exact, this test binary) in a child process whose environment points
/// SoftHSM2 at the token's private config: a PKCS#11 module is a process-wide singleton, and
/// `SOFTHSM2_CONF` is read at `C_Initialize`. The child finds the token through
/// `WARDEN_TEST_PKCS11_*`. Returns false in the child itself (the caller runs the test body).
pub fn run_pkcs11_in_child(test_name: &str) -> Option<Token> {
    if std::env::var_os(CHILD_MARK).is_some() {
        return Some(Token::create());
    }
    let token = Token::create();
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env(CHILD_MARK, "1")
        .env("WARDEN_TEST_PKCS11_MODULE", &token.module)
        .env("WARDEN_TEST_PKCS11_TOKEN", &token.label)
        .env("WARDEN_TEST_PKCS11_PIN_FILE", &token.pin_file);
    if let Some(conf) = &token.softhsm_conf {
        cmd.env("SOFTHSM2_CONF", conf);
    }
    let out = cmd.output().expect("re-executing the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "PKCS#11 test {test_name} failed in its child process:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The child must really have run the test (not filtered it out).
    assert!(
        stdout.contains("1 passed"),
        "the child process did not run {test_name}:\n{stdout}"
    );
    None
}

/// This process's uid, without unsafe code: the owner of a file it just created.
pub fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().metadata().unwrap().uid()
}
