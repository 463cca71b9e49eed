//! The system-call census of real sandboxed workers: started by the agent's own code under
//! `strace -f`, they load the demo model and serve requests (small ones inline, large ones
//! through the tensor arena, several at a time), and every call they make under their seccomp
//! filter must be one the allow-list names (`hw-tests/syscall_census.py` reads the trace). A
//! library that starts doing something new inside the sandbox — ONNX Runtime's telemetry
//! looking up a user and its home, before it was switched off — fails here by name, where the
//! worker itself would carry on after an EPERM. (The candle worker's census is in `candle.rs`,
//! beside its model.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use warden_runtime_client::worker::{Worker, WorkerOptions};

/// Serves 10 rounds of a 2-row and a 400-row request (the latter through the arena) in
/// parallel on a traced worker configured by `configure`; the trace.
async fn traced_run(dir: &std::path::Path, configure: impl FnOnce(&mut WorkerOptions)) {
    let (wrapper, _) = traced_worker(dir);
    let mut options = WorkerOptions::new(wrapper, ort_library(), model_path(), model_digest());
    options.concurrency = 2;
    options.startup_timeout = Duration::from_secs(60);
    configure(&mut options);
    let worker = Worker::start(options).await.unwrap();
    let (_, rows) = sample_rows();
    let large: Vec<f32> = rows.iter().cycle().take(30 * 400).copied().collect();
    for round in 0..10 {
        let small = worker.infer(vec![sample_input()], vec![]);
        let big = worker.infer(vec![f32_tensor("input", vec![400, 30], &large)], vec![]);
        let (small, big) = tokio::join!(small, big);
        assert_eq!(small.unwrap()[0].shape[0], 2, "round {round}");
        assert_eq!(big.unwrap()[0].shape[0], 400, "round {round}");
    }
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_worker_makes_only_allowed_calls() {
    let dir = tempfile::tempdir().unwrap();
    traced_run(dir.path(), |_| {}).await;
    let trace = dir.path().join("trace");
    let (status, report) = syscall_census(&trace, None);
    assert_census_clean("default worker", status, &report);

    // The census is not blind: without one of the calls the worker made, it says so.
    let missing = "futex";
    let seccomp = repo_root().join("runtime/seccomp.json");
    let mut list: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&seccomp).unwrap()).unwrap();
    list["rules"]
        .as_array_mut()
        .unwrap()
        .retain(|rule| rule["syscall"] != missing);
    let reduced = dir.path().join("seccomp-without-futex.json");
    std::fs::write(&reduced, list.to_string()).unwrap();
    let (status, report) = syscall_census(&trace, Some(&reduced));
    assert_eq!(status, 1);
    assert_eq!(
        census_names(&report, "refused"),
        vec![format!("{missing} (not on the list)")]
    );
}

/// The other ways an ONNX worker runs: ONNX Runtime's own thread pool (2 threads), 4 requests
/// at a time, the polling window, and dynamic batching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_threaded_polling_batching_worker_makes_only_allowed_calls() {
    let dir = tempfile::tempdir().unwrap();
    traced_run(dir.path(), |o| {
        o.intra_op_threads = 2;
        o.concurrency = 4;
        o.poll_window = Duration::from_micros(100);
        o.batching = Some(warden_runtime_client::worker::BatchPolicy {
            max_rows: 512,
            window: Duration::from_millis(2),
        });
    })
    .await;
    let (status, report) = syscall_census(&dir.path().join("trace"), None);
    assert_census_clean("threaded, polling, batching worker", status, &report);
}
