//! Large tensors across the process hop: in-process `OrtEngine::run` against `Worker::infer`
//! through the sandboxed worker, with every tensor on the socket (`shared_memory_bytes = 0`)
//! and with the shared-memory tensor arena (the default), on an Identity model whose output is
//! as large as its input (16 KiB to 16 MiB of FP32). The three are measured alternately, one
//! request each in turn, so that the machine's load affects them alike; medians.
//!
//! `source .cache/env && cargo bench -p warden-runtime --bench large_tensors`
//! (`WARDEN_RUNTIME_BIN=path`: another build of the worker, to compare two builds in turn)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use warden_runtime::engine::EngineOptions;
use warden_runtime::onnx::OrtEngine;
use warden_runtime_client::worker::{DEFAULT_SHARED_MEMORY_BYTES, Worker};

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e6
}

fn main() {
    let ort = common::ort_library();
    let dir = tempfile::tempdir().unwrap();
    let (model, sha) = common::identity_model(dir.path());
    let engine = OrtEngine::load(
        &ort,
        &std::fs::read(&model).unwrap(),
        EngineOptions {
            intra_op_threads: 1,
            sessions: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let start = |arena: usize| {
        rt.block_on(async {
            let mut o = common::one_at_a_time(model.clone(), sha.clone());
            o.shared_memory_bytes = arena;
            // Room for 16 MiB on the socket too.
            o.max_frame_bytes = 64 << 20;
            Worker::start(o).await.unwrap()
        })
    };
    let socket = start(0);
    let arena = start(DEFAULT_SHARED_MEMORY_BYTES);

    println!("Identity model, FP32 [1, n], one session, one intra-op thread; medians");
    println!(
        "{:>9}  {:>11}  {:>21}  {:>21}  {:>8}",
        "tensor", "in-process", "socket (overhead)", "arena (overhead)", "socket/arena"
    );
    for kib in [16usize, 64, 256, 1024, 4096, 16384] {
        let input = common::ramp(kib * 1024 / 4, kib as f32);
        let rounds = (40_000 / kib).clamp(30, 600);
        let (mut local, mut on_socket, mut in_arena) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds + 5 {
            let t = Instant::now();
            let out = engine.run(std::slice::from_ref(&input), &[]).unwrap();
            let l = t.elapsed();
            assert!(out[0].data == input.data);
            let t = Instant::now();
            let out = rt
                .block_on(socket.infer(vec![input.clone()], vec![]))
                .unwrap();
            let s = t.elapsed();
            assert!(out[0].data == input.data);
            let t = Instant::now();
            let out = rt
                .block_on(arena.infer(vec![input.clone()], vec![]))
                .unwrap();
            let a = t.elapsed();
            assert!(out[0].data == input.data);
            // The first rounds warm the allocators and the arena's pages.
            if round >= 5 {
                local.push(l);
                on_socket.push(s);
                in_arena.push(a);
            }
        }
        let (l, s, a) = (median(local), median(on_socket), median(in_arena));
        println!(
            "{:>5} KiB  {l:>8.1} µs  {s:>9.1} µs ({:>+8.1})  {a:>9.1} µs ({:>+8.1})  {:>7.2}x",
            kib,
            s - l,
            a - l,
            s / a
        );
    }
}
