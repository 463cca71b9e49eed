//! The `warden demo` binary as a user meets it: its printed curl command, the official Triton
//! HTTP client over mutual TLS, and a graceful stop on SIGTERM with a request in flight.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod support;

struct Demo {
    child: Child,
    banner: String,
    addr: String,
    dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> String {
    std::env::var("WARDEN_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn start_demo() -> Demo {
    // `warden demo` runs the worker beside the binary.
    support::serving::require_onnxruntime();
    support::serving::worker_binary();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["demo", "--port", "0", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut banner = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            banner.push_str(&line);
            banner.push('\n');
            if let Some(addr) = line.strip_prefix("listening on https://") {
                let _ = tx.send((banner.clone(), addr.to_string()));
            }
        }
    });
    let (banner, addr) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the demo did not print `listening on` within 60 s");
    Demo {
        child,
        banner,
        addr,
        dir,
    }
}

fn reference(model: &Path, request: &Path) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/ort_reference.py");
    let out = Command::new(python())
        .arg(script)
        .arg(model)
        .arg(request)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn printed_curl_command_matches_python_onnxruntime() {
    let demo = start_demo();
    assert!(demo.banner.contains("DEVELOPMENT ONLY"), "{}", demo.banner);
    assert!(demo.banner.contains("software keys"), "{}", demo.banner);
    // The demo runs the trust path: the model was admitted by the startup policy, through a
    // (development-only) key store, and the decision is audited.
    assert!(
        demo.banner
            .contains("Admitted before serving by policies/serving/startup.rego"),
        "{}",
        demo.banner
    );
    let audit = std::fs::read_to_string(demo.dir.path().join("audit.jsonl")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains(r#""kind":"admission""#) && l.contains(r#""outcome":"admitted""#)),
        "{audit}"
    );
    let curl = demo
        .banner
        .lines()
        .find(|l| l.starts_with("curl "))
        .expect("no curl command in the banner")
        .to_string();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{curl} --silent --show-error"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let response: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let want = reference(
        &demo.dir.path().join("models/demo/model.onnx"),
        &demo.dir.path().join("sample-request.json"),
    );
    for out in response["outputs"].as_array().unwrap() {
        let name = out["name"].as_str().unwrap();
        let got = out["data"].as_array().unwrap();
        let exp = want[name].as_array().unwrap();
        assert_eq!(got.len(), exp.len());
        for (g, w) in got.iter().zip(exp) {
            assert!(
                (g.as_f64().unwrap() - w.as_f64().unwrap()).abs() <= 1e-5,
                "{name}: {g} vs {w}"
            );
        }
    }
    // The same curl without the client certificate is refused at the handshake.
    let anonymous = curl
        .replace(" --cert ", " --x-removed ")
        .replace(" --key ", " --x-removed2 ");
    let anonymous: String = {
        // Drop the two options and their values.
        let words: Vec<&str> = anonymous.split(' ').collect();
        let mut kept = Vec::new();
        let mut skip = false;
        for w in words {
            if skip {
                skip = false;
                continue;
            }
            if w == "--x-removed" || w == "--x-removed2" {
                skip = true;
                continue;
            }
            kept.push(w);
        }
        kept.join(" ")
    };
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{anonymous} --silent"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "served without a client certificate");
}

#[test]
fn official_triton_client_over_mtls() {
    let demo = start_demo();
    let d = demo.dir.path();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/triton_client.py");
    let out = Command::new(python())
        .arg(script)
        .arg(&demo.addr)
        .arg(d.join("pki/ca.pem"))
        .arg(d.join("pki/client.pem"))
        .arg(d.join("pki/client.key"))
        .arg(d.join("models/demo/model.onnx"))
        .arg(d.join("sample-request.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tritonclient checks failed (run `scripts/setup.sh --test` for the Python tools):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("all checks passed"));
}

/// A request whose body is still arriving when SIGTERM comes is answered; then the process
/// exits 0 and its worker is gone.
#[test]
fn sigterm_drains_in_flight_requests() {
    use rustls::pki_types::ServerName;
    let mut demo = start_demo();
    let d: PathBuf = demo.dir.path().to_path_buf();
    let body = std::fs::read(d.join("sample-request.json")).unwrap();

    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(d.join("pki/ca.pem")).unwrap();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(d.join("pki/client.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(d.join("pki/client.key")).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    let conn = rustls::ClientConnection::new(
        std::sync::Arc::new(config),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let tcp = std::net::TcpStream::connect(&demo.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let head = format!(
        "POST /v2/models/demo/infer HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).unwrap();
    tls.write_all(&body[..body.len() / 2]).unwrap();
    tls.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let pid = nix::unistd::Pid::from_raw(demo.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    tls.write_all(&body[body.len() / 2..]).unwrap();
    tls.flush().unwrap();

    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                response.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&response);
                if text.contains("\r\n\r\n") && text.trim_end().ends_with('}') {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => panic!("reading the response: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&response);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "in-flight request not answered: {text}"
    );
    assert!(text.contains("\"probabilities\""), "{text}");
    drop(tls);

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = demo.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "warden did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
}

/// `warden check` on the demo's configuration names where identities come from, and refuses a
/// configuration in which no identity source is set (every request would be a 401).
#[test]
fn check_names_the_identity_sources_and_refuses_none() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = warden_agent::demo::prepare(dir.path(), 0).unwrap();
    let check = |config: &Path| support::serving::warden(&["check", "--config"], config);
    let (ok, out) = check(&files.config);
    assert!(ok, "{out}");
    assert!(
        out.contains("gateway: identities from SPIFFE IDs of trust domain(s) warden.demo"),
        "{out}"
    );
    let text = std::fs::read_to_string(&files.config).unwrap();
    let line = "trust_domains = [\"warden.demo\"]\n";
    assert!(text.contains(line), "the demo config changed: {text}");
    let none = files.config.with_file_name("no-identity.toml");
    std::fs::write(&none, text.replace(line, "")).unwrap();
    let (ok, out) = check(&none);
    assert!(!ok, "{out}");
    assert!(out.contains("NO IDENTITY SOURCE"), "{out}");
    assert!(
        out.contains("hint: set gateway.identity.trust_domains"),
        "{out}"
    );
}
