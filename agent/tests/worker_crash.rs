//! A model worker that dies is restarted, and its death and restart are in the audit trail;
//! the model serves again afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use warden_agent::{demo, serve};
use warden_runtime::tensor::{DataType, Tensor};

fn kill9(pid: u32) {
    let status = std::process::Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_worker_is_audited_and_restarted() {
    assert!(
        std::env::var_os("ORT_DYLIB_PATH").is_some(),
        "ORT_DYLIB_PATH is not set: run `scripts/setup.sh --test` and `source .cache/env`"
    );
    let dir = tempfile::tempdir().unwrap();
    let (_files, mut config) = demo::prepare(dir.path(), 0).unwrap();
    config.runtime.worker_binary =
        Some(Path::new(env!("CARGO_BIN_EXE_warden")).with_file_name("warden-runtime"));
    let audit = dir.path().join("audit.jsonl");
    config.audit.path = Some(audit.clone());
    let prepared = serve::prepare(&config).await.unwrap();
    let model = prepared.models.resolve("demo", None).unwrap();

    // The sandboxed process (child of the one the agent started) crashes.
    let outer = model.worker.pid().unwrap();
    let inner: u32 = std::fs::read_to_string(format!("/proc/{outer}/task/{outer}/children"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    kill9(inner);

    let deadline = Instant::now() + Duration::from_secs(20);
    let lines = loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        let worker_lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["kind"] == "worker")
            .collect();
        if worker_lines.iter().any(|v| v["outcome"] == "restarted") {
            break worker_lines;
        }
        assert!(Instant::now() < deadline, "no restart audited: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let exited = lines.iter().find(|v| v["outcome"] == "exited").unwrap();
    assert_eq!(exited["model"], "demo");
    assert_eq!(exited["version"], "1");
    assert!(
        exited["reason"]
            .as_str()
            .unwrap()
            .contains("killed by SIGKILL"),
        "{exited}"
    );

    let row: Vec<u8> = (0..30).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let input = Tensor::new("input", DataType::Fp32, vec![1, 30], Bytes::from(row)).unwrap();
    let out = model.worker.infer(vec![input], vec![]).await.unwrap();
    assert_eq!(out.len(), 2);
    prepared.models.shutdown().await;
}
