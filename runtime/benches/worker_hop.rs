//! The cost of the process hop: in-process `OrtEngine::run` against `Worker::infer` (socket to
//! the `warden-runtime` worker and back) on the demo model at batch 1; sandboxed and not, and
//! with the default configuration (the worker sleeps between requests) and with a 100 µs
//! polling window (`runtime.worker_poll_us`), and without the tensor arena (its per-request slot
//! is the only cost it adds to a small request). The three workers that sleep between
//! requests are measured in turns of 100 calls, so that the machine's load drifts over them
//! alike; in-process ONNX Runtime before them and the polling worker after them, each alone.
//!
//! `source .cache/env && cargo bench -p warden-runtime --bench worker_hop`
//! (`WARDEN_RUNTIME_BIN=path`: another build of the worker, to compare two builds in turn)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use warden_runtime::engine::EngineOptions;
use warden_runtime::onnx::OrtEngine;
use warden_runtime_client::sandbox_policy::SandboxPolicy;
use warden_runtime_client::worker::{
    BENCH_POLL_WINDOW, DEFAULT_POLL_WINDOW, DEFAULT_SHARED_MEMORY_BYTES, Worker,
};

const WARMUP: usize = 300;
const ITERATIONS: usize = 3000;
/// Calls per side per turn.
const BLOCK: usize = 100;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let (p50, p99) = (percentile(&samples, 0.50), percentile(&samples, 0.99));
    println!(
        "{name:<26} p50 {:>9.1} µs   p99 {:>9.1} µs   (n = {})",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        samples.len()
    );
    (p50, p99)
}

fn main() {
    let ort = common::ort_library();
    let (model, bytes, sha) = (
        common::model_path(),
        common::model_bytes(),
        common::model_sha256(),
    );
    // The sample request's first row.
    let (_, rows) = common::sample_rows();
    let input = common::f32_tensor("input", vec![1, 30], &rows[..30]);

    let engine = OrtEngine::load(
        &ort,
        &bytes,
        EngineOptions {
            intra_op_threads: 1,
            sessions: 1,
            ..Default::default()
        },
    )
    .unwrap();
    for _ in 0..WARMUP {
        engine.run(std::slice::from_ref(&input), &[]).unwrap();
    }
    let mut local = Vec::with_capacity(ITERATIONS);
    for _ in 0..ITERATIONS {
        let t = Instant::now();
        let out = engine.run(std::slice::from_ref(&input), &[]).unwrap();
        local.push(t.elapsed());
        assert_eq!(out.len(), 2);
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // The same hop through a sandboxed worker (the default) and an unsandboxed one: the
    // difference is the sandbox's cost per request (seccomp on each syscall, mostly).
    let start = |sandbox: SandboxPolicy, poll_window: Duration, arena: usize| {
        rt.block_on(async {
            let mut o = common::one_at_a_time(model.clone(), sha.clone());
            o.sandbox = sandbox;
            o.poll_window = poll_window;
            o.shared_memory_bytes = arena;
            Worker::start(o).await.unwrap()
        })
    };
    let hop = |worker: &Worker| {
        let t = Instant::now();
        let out = rt
            .block_on(worker.infer(vec![input.clone()], vec![]))
            .unwrap();
        let d = t.elapsed();
        assert_eq!(out.len(), 2);
        d
    };
    // The workers that sleep between requests, in turns of BLOCK calls each, so that the
    // machine's load drifts over them alike.
    let sleeping = [
        start(
            SandboxPolicy {
                insecure_disable_sandbox: true,
                ..SandboxPolicy::default()
            },
            DEFAULT_POLL_WINDOW,
            DEFAULT_SHARED_MEMORY_BYTES,
        ),
        start(
            SandboxPolicy::default(),
            DEFAULT_POLL_WINDOW,
            DEFAULT_SHARED_MEMORY_BYTES,
        ),
        start(SandboxPolicy::default(), DEFAULT_POLL_WINDOW, 0),
    ];
    for _ in 0..WARMUP {
        for w in &sleeping {
            hop(w);
        }
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(ITERATIONS); sleeping.len()];
    for _ in 0..ITERATIONS / BLOCK {
        for (w, s) in sleeping.iter().zip(&mut samples) {
            s.extend((0..BLOCK).map(|_| hop(w)));
        }
    }
    for w in &sleeping {
        rt.block_on(w.shutdown());
    }
    let [unsandboxed, default, no_arena] = <[Vec<Duration>; 3]>::try_from(samples).unwrap();
    // The polling worker alone: its spinning after each answer would take a core from
    // whichever side came next.
    let poller = start(
        SandboxPolicy::default(),
        BENCH_POLL_WINDOW,
        DEFAULT_SHARED_MEMORY_BYTES,
    );
    for _ in 0..WARMUP {
        hop(&poller);
    }
    let polling: Vec<Duration> = (0..ITERATIONS).map(|_| hop(&poller)).collect();
    rt.block_on(poller.shutdown());

    println!("demo model, batch 1, one session, one intra-op thread");
    let (l50, l99) = report("OrtEngine::run", local);
    report("Worker::infer, no sandbox", unsandboxed);
    let poll = format!("Worker::infer, poll {} µs", BENCH_POLL_WINDOW.as_micros());
    for (name, samples) in [
        ("Worker::infer (default)", default),
        ("Worker::infer, no arena", no_arena),
        (poll.as_str(), polling),
    ] {
        let (w50, w99) = report(name, samples);
        println!(
            "  ratio worker/in-process: p50 {:.1}x, p99 {:.1}x; hop overhead p50 {:.1} µs \
             (goal <= 30 µs)",
            w50.as_secs_f64() / l50.as_secs_f64(),
            w99.as_secs_f64() / l99.as_secs_f64(),
            (w50.as_secs_f64() - l50.as_secs_f64()) * 1e6
        );
    }
}
