//! SIGHUP on the real binary: `warden demo` (with its development key store) serves tenant
//! `demo`; the grants of its policy set are emptied on disk and the process gets SIGHUP. With a
//! key store only a signed push changes the policy set: the change is refused and named in the
//! log, and the same client keeps being served under the set in force. (Development mode,
//! where SIGHUP puts a changed set in force, is `gateway_e2e`'s.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{Client, tls_config};

struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_refuses_a_policy_set_changed_on_disk_and_keeps_serving() {
    // `warden demo` runs the worker beside the binary.
    support::serving::require_onnxruntime();
    support::serving::worker_binary();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["demo", "--port", "0", "--dir"])
        .arg(dir.path().join("demo"))
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let demo = Demo(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.strip_prefix("listening on https://") {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    let addr: std::net::SocketAddr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the demo did not print `listening on` within 60 s")
        .parse()
        .unwrap();
    let dir = dir.path().join("demo");
    let pki = dir.join("pki");
    let tls = tls_config(
        &pki.join("ca.pem"),
        Some((&pki.join("client.pem"), &pki.join("client.key"))),
        false,
    );
    let mut c = Client::connect(addr, tls, false).await.unwrap();
    let body = std::fs::read(dir.join("sample-request.json")).unwrap();
    let infer = "/v2/models/demo/infer";
    assert_eq!(c.post_json(infer, body.clone()).await.unwrap().status, 200);

    std::fs::write(dir.join("policies/data.json"), r#"{"tenants": {}}"#).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(demo.0.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    // The refusal is logged, naming the changed file.
    let deadline = Instant::now() + Duration::from_secs(10);
    let refusal = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if let Some(line) = text
            .lines()
            .find(|l| l.contains("SIGHUP: policy set refused"))
        {
            break line.to_owned();
        }
        assert!(Instant::now() < deadline, "no refusal logged:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(refusal.contains("changed: data.json"), "{refusal}");
    assert!(refusal.contains("outside a signed set"), "{refusal}");
    // The set in force stays: the demo tenant is still granted, without a restart.
    assert_eq!(c.post_json(infer, body.clone()).await.unwrap().status, 200);
    assert_eq!(c.get("/v2/health/live").await.unwrap().status, 200);
}
