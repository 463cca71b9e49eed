//! The system-call census of a real sandboxed worker: started by the agent's own code under
//! `strace -f`, it loads the demo model and serves requests (small ones inline, large ones
//! through the tensor arena, two at a time), and every call it makes under its seccomp filter
//! must be one the allow-list names (`hw-tests/syscall_census.py` reads the trace). A library
//! that starts doing something new inside the sandbox — ONNX Runtime's telemetry looking up a
//! user and its home, before it was switched off — fails here by name, where the worker itself
//! would carry on after an EPERM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use warden_runtime::worker::{Worker, WorkerOptions};

/// Runs the census on `trace` against `allow_list`: its exit status and JSON report.
fn census(trace: &Path, allow_list: &Path) -> (i32, serde_json::Value) {
    let out = Command::new(python())
        .arg(repo_root().join("hw-tests/syscall_census.py"))
        .arg(trace)
        .arg("--allow-list")
        .arg(allow_list)
        .args(["--json", "--fail-on-refused"])
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "census printed no report ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), report)
}

fn names(report: &serde_json::Value, key: &str) -> Vec<String> {
    report[key].as_object().unwrap().keys().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_worker_makes_only_allowed_calls() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let wrapper = dir.path().join("traced-worker");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec strace -f --decode-pids=pidns -qq -o '{}' '{}' \"$@\"\n",
            trace.display(),
            runtime_binary().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut options = WorkerOptions::new(wrapper, ort_library(), model_path(), model_sha256());
    options.concurrency = 2;
    options.startup_timeout = Duration::from_secs(60);
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

    let seccomp = repo_root().join("runtime/seccomp.json");
    let (status, report) = census(&trace, &seccomp);
    println!("{}", serde_json::to_string(&report).unwrap());
    assert_eq!(report["refused"], serde_json::json!({}), "refused calls");
    assert_eq!(status, 0);
    // The trace covered both phases: the set-up with the agent's privileges, then serving.
    let (before, used) = (names(&report, "before_filter"), names(&report, "used"));
    for call in ["unshare", "pivot_root", "seccomp"] {
        assert!(before.iter().any(|c| c == call), "{call} before the filter");
    }
    for call in ["futex", "mmap"] {
        assert!(used.iter().any(|c| c == call), "{call} under the filter");
    }

    // The census is not blind: without one of the calls the worker made, it says so.
    let missing = "futex";
    let mut list: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&seccomp).unwrap()).unwrap();
    list["rules"]
        .as_array_mut()
        .unwrap()
        .retain(|rule| rule["syscall"] != missing);
    let reduced = dir.path().join("seccomp-without-futex.json");
    std::fs::write(&reduced, list.to_string()).unwrap();
    let (status, report) = census(&trace, &reduced);
    assert_eq!(status, 1);
    assert_eq!(
        names(&report, "refused"),
        vec![format!("{missing} (not on the list)")]
    );
}
