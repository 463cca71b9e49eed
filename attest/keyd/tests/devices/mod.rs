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

/// How a test manufacturer issues an EK certificate.
#[derive(Clone, Copy, Default)]
pub struct EkCertSpec {
    /// Valid in 2020 only.
    pub expired: bool,
    /// Extended key usage serverAuth instead of the TCG EK certificate's (2.23.133.8.1).
    pub wrong_eku: bool,
}

/// A TPM manufacturer, for tests: a root CA, an intermediate CA under it, and an EK certificate
/// from the intermediate for the key `ek`, shaped like the TCG EK Credential
/// Profile's (no subject, key agreement, the EK extended key usage).
pub struct EkManufacturer {
    pub root_pem: String,
    pub intermediate_pem: String,
    pub ek_certificate: Vec<u8>,
}

impl EkManufacturer {
    pub fn issue(ek: &p256::PublicKey, spec: EkCertSpec) -> Self {
        use p256::elliptic_curve::sec1::ToEncodedPoint as _;
        let ek = ek.to_encoded_point(false);
        let ek = ek.as_bytes();
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        struct Point(Vec<u8>);
        impl rcgen::PublicKeyData for Point {
            fn der_bytes(&self) -> &[u8] {
                &self.0
            }
            fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
                &rcgen::PKCS_ECDSA_P256_SHA256
            }
        }
        let ca = |cn: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.distinguished_name
                .push(DnType::OrganizationName, "Test TPM Manufacturer");
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            p
        };
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let root_params = ca("Test TPM Root CA");
        let root_cert = root_params.self_signed(&root_key).unwrap();
        let root = Issuer::new(root_params, root_key);
        let int_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let int_params = ca("Test TPM EK CA");
        let int_cert = int_params.signed_by(&int_key, &root).unwrap();
        let intermediate = Issuer::new(int_params, int_key);

        let mut ek_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ek_params.is_ca = IsCa::ExplicitNoCa;
        ek_params.key_usages = vec![KeyUsagePurpose::KeyAgreement];
        ek_params.extended_key_usages = if spec.wrong_eku {
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::Other(vec![2, 23, 133, 8, 1])]
        };
        if spec.expired {
            ek_params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            ek_params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let ek_cert = ek_params
            .signed_by(&Point(ek.to_vec()), &intermediate)
            .unwrap();
        Self {
            root_pem: root_cert.pem(),
            intermediate_pem: int_cert.pem(),
            ek_certificate: ek_cert.der().to_vec(),
        }
    }
}

/// Writes `certificate` into the TPM's NV index 0x01c0000a (the P-256 EK certificate's) with
/// platform authorization, as a manufacturer does; readable with the index's empty
/// authorization, like real EK certificate indices.
pub fn write_ek_certificate(tcti: &str, certificate: &[u8]) {
    use tss_esapi::attributes::NvIndexAttributesBuilder;
    use tss_esapi::handles::NvIndexTpmHandle;
    use tss_esapi::interface_types::algorithm::HashingAlgorithm;
    use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
    use tss_esapi::interface_types::session_handles::AuthSession;
    use tss_esapi::structures::{MaxNvBuffer, NvPublicBuilder};
    let tpm = warden_keyd::tpm::Tpm::open(tcti).unwrap();
    let certificate = certificate.to_vec();
    tpm.run(move |ctx| {
        let index = NvIndexTpmHandle::new(0x01c0_000a).unwrap();
        let attributes = NvIndexAttributesBuilder::new()
            .with_pp_write(true)
            .with_pp_read(true)
            .with_owner_read(true)
            .with_auth_read(true)
            .with_no_da(true)
            .with_platform_create(true)
            .build()
            .unwrap();
        let public = NvPublicBuilder::new()
            .with_nv_index(index)
            .with_index_name_algorithm(HashingAlgorithm::Sha256)
            .with_index_attributes(attributes)
            .with_data_area_size(certificate.len())
            .build()
            .unwrap();
        let handle = ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.nv_define_space(Provision::Platform, None, public)
            })
            .unwrap();
        for (i, chunk) in certificate.chunks(512).enumerate() {
            let data = MaxNvBuffer::try_from(chunk.to_vec()).unwrap();
            ctx.execute_with_session(Some(AuthSession::Password), |c| {
                c.nv_write(NvAuth::Platform, handle, data, (i * 512) as u16)
            })
            .unwrap();
        }
        let _ = ctx.tr_close(&mut tss_esapi::handles::ObjectHandle::from(handle));
    })
    .unwrap();
}
