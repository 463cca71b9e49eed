//! A model worker that dies is restarted, and its death and restart are in the audit trail;
//! the model serves again afterwards. A worker that keeps failing opens its circuit; one that
//! keeps dying is quarantined and `warden status` says so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use support::serving::{Background, demo_client, kill9, sandboxed_pid, warden};
use warden_agent::config::Config;
use warden_agent::demo::DemoFiles;
use warden_agent::serve;
use warden_runtime_client::tensor::{DataType, Tensor};

/// The demo's files and config, with this build's worker and an audit file.
fn demo_world(dir: &std::path::Path) -> (DemoFiles, Config) {
    let (files, mut config) = support::serving::demo_world(dir);
    config.audit.path = Some(dir.join("audit.jsonl"));
    (files, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_worker_is_audited_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let (_files, config) = demo_world(dir.path());
    let audit = config.audit.path.clone().unwrap();
    let prepared = serve::prepare(&config).await.unwrap();
    let model = prepared.models.resolve("demo", None).unwrap();

    kill9(sandboxed_pid(&model.worker));

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
    let dir = tempfile::tempdir().unwrap();
    let (files, mut config) = demo_world(dir.path());
    let audit = config.audit.path.clone().unwrap();
    // The dead worker stays down for 2 s, long enough to see the circuit open.
    config.runtime.restart.backoff_initial_ms = 2000;
    config.runtime.restart.backoff_max_ms = 2000;
    config.gateway.circuit.failures = 2;
    config.gateway.circuit.open_ms = 300;
    let prepared = serve::prepare(&config).await.unwrap();
    let model = prepared.models.resolve("demo", None).unwrap();
    let server = Background::start(prepared);
    let mut c = demo_client(&files, &server).await;
    let body = Bytes::from(std::fs::read(&files.request).unwrap());
    let infer = "/v2/models/demo/infer";
    assert_eq!(c.post_json(infer, body.clone()).await.unwrap().status, 200);

    kill9(sandboxed_pid(&model.worker));
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
    server.stop().await;
}

/// A model whose worker keeps dying is quarantined, and `warden status` says so (and fails),
/// beside the accelerators it found; before that it reports the model ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_model_is_reported_by_warden_status() {
    let dir = tempfile::tempdir().unwrap();
    let (files, mut config) = demo_world(dir.path());
    // The first death quarantines.
    config.runtime.restart.max_crashes = 1;
    let prepared = serve::prepare(&config).await.unwrap();
    let model = prepared.models.resolve("demo", None).unwrap();
    let server = Background::start(prepared);
    let status_file = config.state.directory.join("status.json");
    let status = || warden(&["status", "--config"], &files.config);
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

    kill9(sandboxed_pid(&model.worker));
    wait_for("\"quarantined\": \"").await;
    let (ok, out) = status();
    assert!(!ok, "a quarantined model is a problem: {out}");
    assert!(
        out.contains("model demo version 1 (active): QUARANTINED"),
        "{out}"
    );

    let mut c = demo_client(&files, &server).await;
    let r = c
        .post_json(
            "/v2/models/demo/infer",
            Bytes::from(std::fs::read(&files.request).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    server.stop().await;
    // The last status written on the way down says the agent stopped.
    let (ok, out) = status();
    assert!(!ok && out.contains("agent: stopped"), "{out}");
}
