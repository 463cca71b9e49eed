//! A model worker that dies is restarted, and its death and restart are in the audit trail;
//! the model serves again afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

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

/// Circuit breaking toward a failing worker, end to end: while the worker is down its
/// requests fail (503); after `failures` of them the circuit opens and requests are refused at
/// once with `Retry-After` without reaching the worker; once the worker is back a trial request
/// closes the circuit and the model serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_worker_opens_the_circuit_and_a_trial_closes_it() {
    use std::sync::atomic::Ordering;
    assert!(
        std::env::var_os("ORT_DYLIB_PATH").is_some(),
        "ORT_DYLIB_PATH is not set: run `scripts/setup.sh --test` and `source .cache/env`"
    );
    let dir = tempfile::tempdir().unwrap();
    let (files, mut config) = demo::prepare(dir.path(), 0).unwrap();
    config.runtime.worker_binary =
        Some(Path::new(env!("CARGO_BIN_EXE_warden")).with_file_name("warden-runtime"));
    let audit = dir.path().join("audit.jsonl");
    config.audit.path = Some(audit.clone());
    // The dead worker stays down for 2 s, long enough to see the circuit open.
    config.runtime.restart.backoff_initial_ms = 2000;
    config.runtime.restart.backoff_max_ms = 2000;
    config.gateway.circuit.failures = 2;
    config.gateway.circuit.open_ms = 300;
    let prepared = serve::prepare(&config).await.unwrap();
    let addr = prepared.local_addr;
    let model = prepared.models.resolve("demo", None).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(prepared.run(async move {
        let _ = rx.await;
    }));
    let tls = support::tls_config(
        &files.ca,
        Some((&files.client_cert, &files.client_key)),
        false,
    );
    let mut c = support::Client::connect(addr, tls, false).await.unwrap();
    let body = Bytes::from(std::fs::read(&files.request).unwrap());
    let infer = "/v2/models/demo/infer";
    assert_eq!(c.post_json(infer, body.clone()).await.unwrap().status, 200);

    let outer = model.worker.pid().unwrap();
    let inner: u32 = std::fs::read_to_string(format!("/proc/{outer}/task/{outer}/children"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    kill9(inner);
    let deadline = Instant::now() + Duration::from_secs(10);
    while model.worker.is_alive() {
        assert!(
            Instant::now() < deadline,
            "the killed worker still looks alive"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Two failures reach the worker (and fail), then the circuit is open.
    let before = model.forwarded.load(Ordering::SeqCst);
    for _ in 0..2 {
        let r = c.post_json(infer, body.clone()).await.unwrap();
        assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(model.forwarded.load(Ordering::SeqCst), before + 2);
    for _ in 0..5 {
        let r = c.post_json(infer, body.clone()).await.unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(
            r.headers.get("retry-after").map(|v| v.to_str().unwrap()),
            Some("1")
        );
        let text = String::from_utf8_lossy(&r.body);
        assert!(!text.contains("circuit"), "internal state leaked: {text}");
    }
    assert_eq!(
        model.forwarded.load(Ordering::SeqCst),
        before + 2,
        "no request reached the worker while the circuit was open"
    );
    let audited = std::fs::read_to_string(&audit).unwrap();
    assert!(
        audited.lines().any(|l| l.contains("\"circuit open\"")),
        "the open circuit is in the audit trail: {audited}"
    );

    // The worker comes back; a trial closes the circuit.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c.post_json(infer, body.clone()).await.unwrap();
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503);
        assert!(Instant::now() < deadline, "the circuit never closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..3 {
        assert_eq!(c.post_json(infer, body.clone()).await.unwrap().status, 200);
    }
    let _ = tx.send(());
    server.await.unwrap();
}

/// A model whose worker keeps dying is quarantined, and `warden status` says so (and fails),
/// beside the accelerators it found; before that it reports the model ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_model_is_reported_by_warden_status() {
    assert!(
        std::env::var_os("ORT_DYLIB_PATH").is_some(),
        "ORT_DYLIB_PATH is not set: run `scripts/setup.sh --test` and `source .cache/env`"
    );
    let dir = tempfile::tempdir().unwrap();
    let (files, mut config) = demo::prepare(dir.path(), 0).unwrap();
    config.runtime.worker_binary =
        Some(Path::new(env!("CARGO_BIN_EXE_warden")).with_file_name("warden-runtime"));
    // The first death quarantines.
    config.runtime.restart.max_crashes = 1;
    let prepared = serve::prepare(&config).await.unwrap();
    let addr = prepared.local_addr;
    let model = prepared.models.resolve("demo", None).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(prepared.run(async move {
        let _ = rx.await;
    }));
    let status_file = config.state.directory.join("status.json");
    let status = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["status", "--config"])
            .arg(&files.config)
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
    };
    let wait_for = |needle: &'static str| {
        let path = status_file.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                if text.contains(needle) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "status never showed {needle}: {text}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_for("\"ready\": true").await;
    let (ok, out) = status();
    assert!(ok, "{out}");
    assert!(
        out.contains("model demo version 1 (active): ready"),
        "{out}"
    );
    assert!(out.contains("accelerators:"), "{out}");

    let outer = model.worker.pid().unwrap();
    let inner: u32 = std::fs::read_to_string(format!("/proc/{outer}/task/{outer}/children"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    kill9(inner);
    wait_for("\"quarantined\": \"").await;
    let (ok, out) = status();
    assert!(!ok, "a quarantined model is a problem: {out}");
    assert!(
        out.contains("model demo version 1 (active): QUARANTINED"),
        "{out}"
    );

    let tls = support::tls_config(
        &files.ca,
        Some((&files.client_cert, &files.client_key)),
        false,
    );
    let mut c = support::Client::connect(addr, tls, false).await.unwrap();
    let r = c
        .post_json(
            "/v2/models/demo/infer",
            Bytes::from(std::fs::read(&files.request).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    let _ = tx.send(());
    server.await.unwrap();
    // The last status written on the way down says the agent stopped.
    let (ok, out) = status();
    assert!(!ok && out.contains("agent: stopped"), "{out}");
}
