//! Dynamic batching against unbatched serving: 32 concurrent callers, one row each, on the
//! demo model through the sandboxed worker.
//!
//! `source .cache/env && cargo bench -p warden-runtime --bench batching`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use warden_runtime_client::tensor::{DataType, Tensor};
use warden_runtime_client::worker::{BatchPolicy, Worker, WorkerOptions};

const CALLERS: usize = 32;
const PER_CALLER: usize = 300;

fn main() {
    let ort = PathBuf::from(std::env::var_os("ORT_DYLIB_PATH").expect("ORT_DYLIB_PATH is not set"));
    let model =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../agent/demo-model/model/model.onnx");
    let sha = warden_runtime_client::model_digest::ModelDigest::sha256_of(
        &std::fs::read(&model).unwrap(),
    );
    let row: Vec<u8> = (0..30)
        .flat_map(|i| (i as f32 * 0.1).to_le_bytes())
        .collect();
    let input = Tensor::new("input", DataType::Fp32, vec![1, 30], Bytes::from(row)).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "demo model, {CALLERS} concurrent callers x {PER_CALLER} requests of 1 row, worker concurrency 2"
    );
    for batching in [
        None,
        Some(BatchPolicy::default()),
        Some(BatchPolicy {
            window: Duration::from_micros(200),
            max_rows: 64,
        }),
    ] {
        let label = match &batching {
            None => "unbatched".to_string(),
            Some(b) => format!("batched ({:?}, {} rows)", b.window, b.max_rows),
        };
        let (elapsed, mut latencies, batched) = rt.block_on(async {
            let mut o = WorkerOptions::new(
                PathBuf::from(env!("CARGO_BIN_EXE_warden-runtime")),
                ort.clone(),
                model.clone(),
                sha.clone(),
            );
            o.concurrency = 2;
            o.batching = batching;
            let worker = Worker::start(o).await.unwrap();
            for _ in 0..200 {
                worker.infer(vec![input.clone()], vec![]).await.unwrap();
            }
            let started = Instant::now();
            let tasks: Vec<_> = (0..CALLERS)
                .map(|_| {
                    let worker = worker.clone();
                    let input = input.clone();
                    tokio::spawn(async move {
                        let mut l = Vec::with_capacity(PER_CALLER);
                        for _ in 0..PER_CALLER {
                            let t = Instant::now();
                            worker.infer(vec![input.clone()], vec![]).await.unwrap();
                            l.push(t.elapsed());
                        }
                        l
                    })
                })
                .collect();
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            let elapsed = started.elapsed();
            let batched = worker.batched_requests();
            worker.shutdown().await;
            (elapsed, all, batched)
        });
        latencies.sort();
        let p = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
        let n = latencies.len();
        println!(
            "{label:<28} {:>9.0} req/s   p50 {:>8.1} µs   p99 {:>8.1} µs   batched {batched}/{n}",
            n as f64 / elapsed.as_secs_f64(),
            p(0.5),
            p(0.99),
        );
    }
}
