//! Warden's cost over raw ONNX Runtime, measured in one run on the demo model:
//! - raw: `OrtEngine::run` in process, batch 1 (the floor);
//! - warden: HTTPS (mutual TLS, HTTP/1.1 keep-alive) → the gateway chain (identity, routes.rego,
//!   rate-limit bookkeeping) → decode → validate → sandboxed worker hop → ONNX Runtime →
//!   encode → audit, at concurrency 1, 8 and 32.
//!
//! Prints medians and tails, throughput and the added latency at concurrency 1, for the
//! default configuration and, alternating with it, one whose workers poll for 100 µs before
//! they sleep (`runtime.worker_poll_us`). Run with
//! `scripts/bench.sh` (it builds the worker in release first). Environment:
//! `WARDEN_BENCH_REQUESTS` (per level, default 4000).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use warden_agent::{demo, serve};
use warden_runtime::engine::EngineOptions;
use warden_runtime::onnx::OrtEngine;
use warden_runtime_client::tensor::{DataType, Tensor};

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
        // Two servers side by side: the default, and one whose workers poll for 100 µs before
        // sleeping. Rounds alternate between them so that both see the same machine; the
        // first is the one the targets are about.
        let default_poll = warden_runtime_client::worker::DEFAULT_POLL_WINDOW.as_micros() as u64;
        let bench_poll = warden_runtime_client::worker::BENCH_POLL_WINDOW.as_micros() as u64;
        let mut servers = Vec::new();
        for poll_us in [default_poll, bench_poll] {
            let dir = tempfile::tempdir().unwrap();
            let (files, mut config) = demo::prepare(dir.path(), 0).unwrap();
            config.runtime.worker_binary = Some(support::serving::worker_binary());
            config.runtime.worker_concurrency = 2;
            config.runtime.worker_poll_us = poll_us;
            // The whole gateway chain runs (authn, authz, limiter bookkeeping, validation,
            // audit); the limits are raised so that the load generator measures latency, not
            // refusals.
            config.gateway.limits.identity_rate_per_s = 1_000_000.0;
            config.gateway.limits.identity_burst = 1_000_000;
            config.gateway.limits.tenant_rate_per_s = 1_000_000.0;
            config.gateway.limits.tenant_burst = 1_000_000;
            let prepared = serve::prepare(&config).await.unwrap();
            let server = support::serving::Background::start(prepared);
            let tls = support::tls_config(
                &files.ca,
                Some((&files.client_cert, &files.client_key)),
                false,
            );
            servers.push((poll_us, server, tls, dir));
        }
        let body = Arc::new(serde_json::to_vec(&body).unwrap());
        const ROUNDS: usize = 8;
        for concurrency in [1usize, 8, 32] {
            let per_client = (n / concurrency / ROUNDS).max(20);
            let mut results: Vec<(Vec<Duration>, Duration)> =
                servers.iter().map(|_| (Vec::new(), Duration::ZERO)).collect();
            for _ in 0..ROUNDS {
                for (i, (_, server, tls, _)) in servers.iter().enumerate() {
                    let (lat, elapsed) =
                        load(server.addr, tls, &body, concurrency, per_client).await;
                    results[i].0.extend(lat);
                    results[i].1 += elapsed;
                }
            }
            for ((poll_us, ..), (mut all, elapsed)) in servers.iter().zip(results) {
                all.sort();
                let p50 = percentile(&all, 0.5);
                println!(
                    "warden HTTPS mTLS h1 concurrency {concurrency:2}, worker poll {poll_us:3} us: \
                     p50 {:8.1} us  p99 {:8.1} us  {:8.0} req/s",
                    us(p50),
                    us(percentile(&all, 0.99)),
                    all.len() as f64 / elapsed.as_secs_f64()
                );
                if concurrency == 1 && *poll_us == default_poll {
                    println!(
                        "  added by warden at concurrency 1 (p50 - raw p50): {:.1} us (target <= 200 us)",
                        us(p50) - us(raw_p50)
                    );
                }
            }
        }
        for (_, server, _, _) in servers {
            server.stop().await;
        }
    });
}

/// `concurrency` clients on their own connections, `per_client` timed requests each after a
/// warm-up; every latency, and the wall time of the timed part.
async fn load(
    addr: std::net::SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    body: &Arc<Vec<u8>>,
    concurrency: usize,
    per_client: usize,
) -> (Vec<Duration>, Duration) {
    let mut clients = Vec::new();
    for _ in 0..concurrency {
        let mut c = support::Client::connect(addr, tls.clone(), false)
            .await
            .unwrap();
        for _ in 0..5 {
            let r = c
                .post_json("/v2/models/demo/infer", body.as_ref().clone())
                .await
                .unwrap();
            assert_eq!(r.status, 200);
        }
        clients.push(c);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut c in clients {
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let t = Instant::now();
                let r = c
                    .post_json("/v2/models/demo/infer", body.as_ref().clone())
                    .await
                    .unwrap();
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
    (all, started.elapsed())
}
