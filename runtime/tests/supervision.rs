//! Crash safety: a worker that dies, hangs or breaks its limits is killed and restarted with
//! backoff, in-flight requests fail with `Unavailable`, every event is reported, a model that
//! keeps dying is quarantined — and crafted hostile models take down only their own worker.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use tokio::sync::broadcast;
use warden_runtime_client::sandbox_policy::SandboxPolicy;
use warden_runtime_client::tensor::{DataType, Tensor};
use warden_runtime_client::worker::{
    RestartPolicy, Worker, WorkerError, WorkerEvent, WorkerOptions,
};

fn options_for(model: &Path) -> WorkerOptions {
    let bytes = std::fs::read(model).unwrap();
    let sha = warden_runtime_client::model_digest::ModelDigest::sha256_of(&bytes);
    let mut o = WorkerOptions::new(
        PathBuf::from(env!("CARGO_BIN_EXE_warden-runtime")),
        ort_library(),
        model.to_path_buf(),
        sha,
    );
    o.restart = RestartPolicy {
        max_crashes: 3,
        window: Duration::from_secs(60),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
    };
    o
}

/// The sandboxed process inside the worker (the one that runs the model).
fn inner_pid(worker: &Worker) -> u32 {
    let outer = worker.pid().unwrap();
    let children = std::fs::read_to_string(format!("/proc/{outer}/task/{outer}/children")).unwrap();
    children.split_whitespace().next().unwrap().parse().unwrap()
}

fn kill9(pid: u32) {
    assert!(
        Command::new("kill")
            .arg("-9")
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success()
    );
}

async fn next_event(rx: &mut broadcast::Receiver<WorkerEvent>) -> WorkerEvent {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("no worker event within 20 s")
        .unwrap()
}

async fn serves(worker: &Worker) {
    let out = worker.infer(vec![sample_input()], vec![]).await.unwrap();
    assert_eq!(out.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_worker_is_restarted_and_the_crash_reported() {
    let worker = Worker::start(options_for(&model_path())).await.unwrap();
    let mut events = worker.events();
    let first = worker.pid().unwrap();
    kill9(inner_pid(&worker));

    match next_event(&mut events).await {
        WorkerEvent::Exited { pid, status, .. } => {
            assert_eq!(pid, Some(first));
            assert_eq!(status, "killed by SIGKILL");
        }
        other => panic!("expected Exited, got {other:?}"),
    }
    match next_event(&mut events).await {
        WorkerEvent::Restarted { pid, restarts } => {
            assert_ne!(pid, Some(first));
            assert_eq!(restarts, 1);
        }
        other => panic!("expected Restarted, got {other:?}"),
    }
    assert!(worker.is_alive());
    serves(&worker).await;
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_keeps_crashing_is_quarantined() {
    let worker = Worker::start(options_for(&model_path())).await.unwrap();
    let mut events = worker.events();
    for round in 0..3 {
        kill9(inner_pid(&worker));
        assert!(matches!(
            next_event(&mut events).await,
            WorkerEvent::Exited { .. }
        ));
        if round < 2 {
            assert!(matches!(
                next_event(&mut events).await,
                WorkerEvent::Restarted { .. }
            ));
        }
    }
    match next_event(&mut events).await {
        WorkerEvent::Quarantined { deaths, .. } => assert_eq!(deaths, 3),
        other => panic!("expected Quarantined, got {other:?}"),
    }
    assert!(!worker.is_alive());
    assert!(worker.quarantined().is_some());
    match worker.infer(vec![sample_input()], vec![]).await {
        Err(WorkerError::Unavailable { reason }) => {
            assert!(reason.contains("quarantined"), "{reason}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // No further restart happens.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), events.recv())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_kills_a_request_past_its_deadline() {
    let mut o = options_for(&model_path());
    o.request_timeout = Some(Duration::from_millis(1));
    let worker = Worker::start(o).await.unwrap();
    let mut events = worker.events();
    let rows = 50_000;
    let (_, data) = sample_rows();
    let values: Vec<f32> = (0..rows)
        .flat_map(|r| data[(r % 2) * 30..(r % 2) * 30 + 30].to_vec())
        .collect();
    let big = f32_tensor("input", vec![rows, 30], &values);
    match worker.infer(vec![big], vec![]).await {
        Err(WorkerError::Unavailable { reason }) => {
            assert!(reason.contains("did not answer"), "{reason}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(matches!(
        next_event(&mut events).await,
        WorkerEvent::Hung { .. }
    ));
    assert!(matches!(
        next_event(&mut events).await,
        WorkerEvent::Exited { .. }
    ));
    assert!(matches!(
        next_event(&mut events).await,
        WorkerEvent::Restarted { .. }
    ));
    worker.shutdown().await;
}

/// Hostile models, written with the `onnx` Python package:
/// - `balloon`: `ConstantOfShape(n)` — allocates whatever the caller asks;
/// - `burn`: `ConstantOfShape([n, n])` squared by `MatMul` three times — as much CPU as asked.
fn craft_models(dir: &Path) -> (PathBuf, PathBuf) {
    let script = r#"
import sys, onnx
from onnx import helper, TensorProto
out = sys.argv[1]
def save(name, nodes, inputs, outputs):
    g = helper.make_graph(nodes, name, inputs, outputs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, f"{out}/{name}.onnx")
one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
save("balloon",
     [helper.make_node("ConstantOfShape", ["n"], ["big"], value=one),
      helper.make_node("ReduceSum", ["big"], ["y"], keepdims=0)],
     [helper.make_tensor_value_info("n", TensorProto.INT64, [1])],
     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
save("burn",
     [helper.make_node("ConstantOfShape", ["n"], ["x"], value=one),
      helper.make_node("MatMul", ["x", "x"], ["x2"]),
      helper.make_node("MatMul", ["x2", "x"], ["x3"]),
      helper.make_node("MatMul", ["x3", "x"], ["x4"]),
      helper.make_node("ReduceSum", ["x4"], ["y"], keepdims=0)],
     [helper.make_tensor_value_info("n", TensorProto.INT64, [2])],
     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
"#;
    let status = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(dir)
        .status()
        .expect("run WARDEN_PYTHON");
    assert!(
        status.success(),
        "crafting the models failed: WARDEN_PYTHON needs `onnx` (scripts/setup.sh --test)"
    );
    (dir.join("balloon.onnx"), dir.join("burn.onnx"))
}

fn int64(name: &str, values: &[i64]) -> Tensor {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Tensor::new(
        name,
        DataType::Int64,
        vec![values.len()],
        Bytes::from(bytes),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_models_take_down_only_their_own_worker() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (balloon, burn) = craft_models(dir.path());
    let demo = Worker::start(options_for(&model_path())).await.unwrap();

    // Unbounded allocation: 16 GiB asked for, under a 1 GiB address-space limit.
    let mut o = options_for(&balloon);
    o.sandbox = SandboxPolicy {
        address_space_bytes: 1 << 30,
        ..SandboxPolicy::default()
    };
    let balloon = Worker::start(o).await.unwrap();
    let mut balloon_events = balloon.events();
    let small = balloon
        .infer(vec![int64("n", &[1000])], vec![])
        .await
        .unwrap();
    assert_eq!(small.len(), 1);
    let r = balloon.infer(vec![int64("n", &[4 << 30])], vec![]).await;
    assert!(
        matches!(
            r,
            Err(WorkerError::Engine { .. } | WorkerError::Unavailable { .. })
        ),
        "{r:?}"
    );
    serves(&demo).await;
    // Refused inside ONNX Runtime (the worker lives on) or killed and restarted: either way
    // the model serves again and nothing else was touched.
    if !balloon.is_alive() {
        assert!(matches!(
            next_event(&mut balloon_events).await,
            WorkerEvent::Exited { .. }
        ));
        assert!(matches!(
            next_event(&mut balloon_events).await,
            WorkerEvent::Restarted { .. }
        ));
    }
    balloon
        .infer(vec![int64("n", &[1000])], vec![])
        .await
        .unwrap();

    // Unbounded CPU: killed by the kernel at its 1 s CPU-time limit, then restarted.
    let mut o = options_for(&burn);
    o.sandbox = SandboxPolicy {
        cpu_time_secs: 1,
        ..SandboxPolicy::default()
    };
    o.request_timeout = Some(Duration::from_secs(60));
    let burn = Worker::start(o).await.unwrap();
    let mut burn_events = burn.events();
    let r = burn.infer(vec![int64("n", &[3000, 3000])], vec![]).await;
    assert!(matches!(r, Err(WorkerError::Unavailable { .. })), "{r:?}");
    match next_event(&mut burn_events).await {
        WorkerEvent::Exited { status, .. } => {
            // SIGKILL at the hard limit (the soft limit's SIGXCPU is dropped by a PID
            // namespace's init, which the worker is).
            assert_eq!(status, "killed by SIGKILL");
        }
        other => panic!("expected Exited, got {other:?}"),
    }
    assert!(matches!(
        next_event(&mut burn_events).await,
        WorkerEvent::Restarted { .. }
    ));
    burn.infer(vec![int64("n", &[8, 8])], vec![]).await.unwrap();

    // The demo model never noticed.
    serves(&demo).await;
    assert!(demo.is_alive());
    for w in [&demo, &balloon, &burn] {
        w.shutdown().await;
    }
}
