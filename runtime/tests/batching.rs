//! Dynamic batching: concurrent requests are merged into one inference and split back, with
//! exactly the results each would get alone; requests that cannot share a batch do not.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use warden_runtime::engine::EngineOptions;
use warden_runtime::onnx::OrtEngine;
use warden_runtime_client::tensor::Tensor;
use warden_runtime_client::worker::{BatchPolicy, Worker, WorkerError, WorkerOptions};

fn options(batching: Option<BatchPolicy>) -> WorkerOptions {
    let mut o = WorkerOptions::new(
        PathBuf::from(env!("CARGO_BIN_EXE_warden-runtime")),
        ort_library(),
        model_path(),
        model_digest(),
    );
    o.batching = batching;
    o
}

/// `rows` distinct rows derived from the sample rows.
fn rows(rows: usize, salt: f32) -> Tensor {
    let (_, data) = sample_rows();
    let mut values = Vec::with_capacity(rows * 30);
    for r in 0..rows {
        let base = &data[(r % 2) * 30..(r % 2) * 30 + 30];
        values.extend(
            base.iter()
                .map(|v| v * (1.0 + salt / 10.0 + r as f32 / 7.0)),
        );
    }
    f32_tensor("input", vec![rows, 30], &values)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched_with_the_same_results() {
    let worker = Worker::start(options(Some(BatchPolicy {
        window: Duration::from_millis(20),
        max_rows: 64,
    })))
    .await
    .unwrap();
    let engine = OrtEngine::load(&ort_library(), &model_bytes(), EngineOptions::default()).unwrap();
    let requests: Vec<Tensor> = (0..32).map(|i| rows(1 + i % 3, i as f32)).collect();
    let handles: Vec<_> = requests
        .iter()
        .cloned()
        .map(|t| {
            let worker = worker.clone();
            tokio::spawn(async move { worker.infer(vec![t], vec![]).await })
        })
        .collect();
    for (request, handle) in requests.iter().zip(handles) {
        let got = handle.await.unwrap().unwrap();
        let alone = engine.run(std::slice::from_ref(request), &[]).unwrap();
        assert_eq!(got.len(), alone.len());
        for (g, a) in got.iter().zip(&alone) {
            assert_eq!(g.name, a.name);
            assert_eq!(g.shape, a.shape);
            assert_eq!(as_i64_or_f32(g), as_i64_or_f32(a));
        }
    }
    assert!(
        worker.batched_requests() >= 2,
        "nothing was batched ({})",
        worker.batched_requests()
    );
    worker.shutdown().await;
}

/// Outputs compared bit for bit, whatever their type.
fn as_i64_or_f32(t: &Tensor) -> Vec<u8> {
    t.data.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_request_does_not_fail_its_batch_mates() {
    let worker = Worker::start(options(Some(BatchPolicy {
        window: Duration::from_millis(20),
        max_rows: 64,
    })))
    .await
    .unwrap();
    let good: Vec<_> = (0..4)
        .map(|i| {
            let worker = worker.clone();
            tokio::spawn(async move { worker.infer(vec![rows(2, i as f32)], vec![]).await })
        })
        .collect();
    // 29 features instead of 30: refused by the engine, alone.
    let bad = f32_tensor("input", vec![1, 29], &[0.5; 29]);
    let bad = {
        let worker = worker.clone();
        tokio::spawn(async move { worker.infer(vec![bad], vec![]).await })
    };
    for g in good {
        assert_eq!(g.await.unwrap().unwrap()[0].shape, vec![2]);
    }
    assert!(matches!(
        bad.await.unwrap(),
        Err(WorkerError::InvalidInput { .. })
    ));
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_batching_nothing_is_batched() {
    let worker = Worker::start(options(None)).await.unwrap();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let worker = worker.clone();
            tokio::spawn(async move { worker.infer(vec![rows(1, i as f32)], vec![]).await })
        })
        .collect();
    for h in handles {
        h.await.unwrap().unwrap();
    }
    assert_eq!(worker.batched_requests(), 0);
    worker.shutdown().await;
}
