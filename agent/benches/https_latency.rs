//! Warden's cost over raw ONNX Runtime, measured in one run on the demo model:
//! - raw: `OrtEngine::run` in process, batch 1 (the floor);
//! - warden: HTTPS (mutual TLS, HTTP/1.1 keep-alive) → the gateway chain (identity, routes.rego,
//!   rate-limit bookkeeping) → decode → validate → sandboxed worker hop → ONNX Runtime →
//!   encode → audit, at concurrency 1, 8 and 32.
//!
//! Prints medians and tails, throughput and the added latency at concurrency 1. Run with
//! `scripts/bench.sh` (it builds the worker in release first). Environment:
//! `WARDEN_BENCH_REQUESTS` (per level, default 4000).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use warden_agent::{demo, serve};
use warden_runtime::engine::{EngineOptions, OrtEngine};
use warden_runtime::tensor::{DataType, Tensor};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn one_row() -> (serde_json::Value, Vec<u8>) {
    let req: serde_json::Value = serde_json::from_str(demo::DEMO_REQUEST_JSON).unwrap();
    let row: Vec<serde_json::Value> = req["inputs"][0]["data"].as_array().unwrap()[..30].to_vec();
    let bytes = row
        .iter()
        .flat_map(|v| (v.as_f64().unwrap() as f32).to_le_bytes())
        .collect();
    let body = serde_json::json!({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row}]});
    (body, bytes)
}

fn main() {
    let ort = std::env::var_os("ORT_DYLIB_PATH").expect("ORT_DYLIB_PATH: run scripts/setup.sh");
    let n: usize = std::env::var("WARDEN_BENCH_REQUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4000);
    let (body, row_bytes) = one_row();

    // Raw ONNX Runtime, in process, one thread, batch 1.
    let engine = OrtEngine::load(
        Path::new(&ort),
        demo::DEMO_MODEL_ONNX,
        EngineOptions {
            intra_op_threads: 1,
            sessions: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let input = Tensor::new("input", DataType::Fp32, vec![1, 30], row_bytes.into()).unwrap();
    for _ in 0..500 {
        engine.run(std::slice::from_ref(&input), &[]).unwrap();
    }
    let mut raw = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        engine.run(std::slice::from_ref(&input), &[]).unwrap();
        raw.push(t.elapsed());
    }
    raw.sort();
    let raw_p50 = percentile(&raw, 0.5);
    println!(
        "raw ORT in-process (batch 1):        p50 {:8.1} us  p99 {:8.1} us",
        us(raw_p50),
        us(percentile(&raw, 0.99))
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let (files, mut config) = demo::prepare(dir.path(), 0).unwrap();
        config.runtime.worker_binary = Some(support::serving::worker_binary());
        config.runtime.worker_concurrency = 2;
        // The whole gateway chain runs (authn, authz, limiter bookkeeping, validation, audit);
        // the limits are raised so that the load generator measures latency, not refusals.
        config.gateway.limits.identity_rate_per_s = 1_000_000.0;
        config.gateway.limits.identity_burst = 1_000_000;
        config.gateway.limits.tenant_rate_per_s = 1_000_000.0;
        config.gateway.limits.tenant_burst = 1_000_000;
        let prepared = serve::prepare(&config).await.unwrap();
        let server = support::serving::Background::start(prepared);
        let addr = server.addr;
        let tls = support::tls_config(&files.ca, Some((&files.client_cert, &files.client_key)), false);
        let body = Arc::new(serde_json::to_vec(&body).unwrap());
        let mut c1_p50 = None;
        for concurrency in [1usize, 8, 32] {
            let per_client = (n / concurrency).max(50);
            let mut tasks = Vec::new();
            let started = Instant::now();
            for _ in 0..concurrency {
                let tls = tls.clone();
                let body = body.clone();
                tasks.push(tokio::spawn(async move {
                    let mut c = support::Client::connect(addr, tls, false).await.unwrap();
                    for _ in 0..20 {
                        let r = c.post_json("/v2/models/demo/infer", body.as_ref().clone()).await.unwrap();
                        assert_eq!(r.status, 200);
                    }
                    let mut lat = Vec::with_capacity(per_client);
                    for _ in 0..per_client {
                        let t = Instant::now();
                        let r = c.post_json("/v2/models/demo/infer", body.as_ref().clone()).await.unwrap();
                        lat.push(t.elapsed());
                        assert_eq!(r.status, 200);
                    }
                    lat
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            let elapsed = started.elapsed();
            all.sort();
            let p50 = percentile(&all, 0.5);
            if concurrency == 1 {
                c1_p50 = Some(p50);
            }
            println!(
                "warden HTTPS mTLS h1 concurrency {concurrency:2}: p50 {:8.1} us  p99 {:8.1} us  {:8.0} req/s",
                us(p50),
                us(percentile(&all, 0.99)),
                all.len() as f64 / elapsed.as_secs_f64()
            );
        }
        if let Some(p50) = c1_p50 {
            println!(
                "added by warden at concurrency 1 (p50 - raw p50): {:.1} us (target <= 200 us)",
                us(p50) - us(raw_p50)
            );
        }
        server.stop().await;
    });
}
