//! Starting the agent in process for a test or a benchmark, and finding its workers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use warden_agent::serve::Prepared;
use warden_runtime_client::worker::Worker;

/// `warden-runtime`, built beside the `warden` binary of this build.
pub fn worker_binary() -> PathBuf {
    let worker = Path::new(env!("CARGO_BIN_EXE_warden")).with_file_name("warden-runtime");
    assert!(
        worker.is_file(),
        "{} is missing: build the workspace's binaries first",
        worker.display()
    );
    worker
}

/// Fails the test with the setup hint when the ONNX Runtime library is not configured.
pub fn require_onnxruntime() {
    assert!(
        std::env::var_os("ORT_DYLIB_PATH").is_some(),
        "ORT_DYLIB_PATH is not set: run `scripts/setup.sh --test` and `source .cache/env`"
    );
}

/// The demo's files and config in `dir`, with this build's worker; fails with the setup hint
/// when the ONNX Runtime library is not configured.
pub fn demo_world(dir: &Path) -> (warden_agent::demo::DemoFiles, warden_agent::config::Config) {
    require_onnxruntime();
    let (files, mut config) = warden_agent::demo::prepare(dir, 0).unwrap();
    config.runtime.worker_binary = Some(worker_binary());
    (files, config)
}

/// A prepared server serving in the background until [`Background::stop`].
pub struct Background {
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Background {
    pub fn start(prepared: Prepared) -> Background {
        let addr = prepared.local_addr;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(prepared.run(async move {
            let _ = stopped.await;
        }));
        Background { addr, stop, task }
    }

    /// Drains and stops the server and its workers.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

/// The sandboxed process of a model's worker: the child of the process the agent started.
pub fn sandboxed_pid(worker: &Worker) -> u32 {
    let outer = worker.pid().unwrap();
    std::fs::read_to_string(format!("/proc/{outer}/task/{outer}/children"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

pub fn kill9(pid: u32) {
    let status = Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Runs the `warden` binary; its success and its standard output and error together.
pub fn warden(args: &[&str], config: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// An mTLS client of a served demo, with the demo client's certificate.
pub async fn demo_client(
    files: &warden_agent::demo::DemoFiles,
    server: &Background,
) -> super::Client {
    let tls = super::tls_config(
        &files.ca,
        Some((&files.client_cert, &files.client_key)),
        false,
    );
    super::Client::connect(server.addr, tls, false)
        .await
        .unwrap()
}

/// `GET /metrics` on the agent's plain-HTTP metrics listener: the whole response, asserted 200.
pub async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}
