//! SIGHUP on the real binary: `warden demo` serves tenant `demo`; its grants file is emptied and
//! the process gets SIGHUP; from then on the same client is forbidden, without a restart.
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
async fn sighup_reloads_the_route_policy_data() {
    // `warden demo` runs the worker beside the binary.
    support::serving::require_onnxruntime();
    support::serving::worker_binary();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["demo", "--port", "0", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
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
    let pki = dir.path().join("pki");
    let tls = tls_config(
        &pki.join("ca.pem"),
        Some((&pki.join("client.pem"), &pki.join("client.key"))),
        false,
    );
    let mut c = Client::connect(addr, tls, false).await.unwrap();
    let body = std::fs::read(dir.path().join("sample-request.json")).unwrap();
    let infer = "/v2/models/demo/infer";
    assert_eq!(c.post_json(infer, body.clone()).await.unwrap().status, 200);

    std::fs::write(
        dir.path().join("policies/grants.json"),
        r#"{"tenants": {}}"#,
    )
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(demo.0.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = c.post_json(infer, body.clone()).await.unwrap().status;
        if status == 403 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload the grants"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The process is still serving: health stays allowed.
    assert_eq!(c.get("/v2/health/live").await.unwrap().status, 200);
}
