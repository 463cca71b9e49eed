//! candle against ONNX Runtime on the same network: the test BERT classifier of
//! `tests/python/bert_reference.py` (2 layers, hidden 64, 4 heads, vocabulary 1000, 3 labels),
//! and a larger one from the same script (4 layers, hidden 256), as safetensors for candle and
//! as the equivalent ONNX graph for ONNX Runtime, both in process, one thread each. Latency at
//! batch 1 and throughput at batch 64, sequence 32; medians, and candle's ratio to ONNX
//! Runtime.
//!
//! With `WARDEN_BENCH_GPU=cuda:0` (or `tensorrt:0`) and `ORT_DYLIB_PATH` naming an
//! `onnxruntime-gpu` library (`WARDEN_CUDA_LIBRARY_DIRS`: where its CUDA libraries are), ONNX
//! Runtime on that GPU is measured against ONNX Runtime on the CPU too, after checking that
//! their logits agree (`hw-tests/gpu.sh` runs it so).
//!
//! `source .cache/env && cargo bench -p warden-runtime --bench engines`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use warden_runtime::candle::CandleEngine;
use warden_runtime::engine::EngineOptions;
use warden_runtime::onnx::OrtEngine;
use warden_runtime_client::device::{Device, DeviceRequest};
use warden_runtime_client::tensor::{DataType, Tensor};

const SEQ: usize = 32;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn inputs(batch: usize) -> Vec<Tensor> {
    let n = batch * SEQ;
    let ids: Vec<i64> = (0..n).map(|i| ((i * 7919) % 1000) as i64).collect();
    // Rows of varying length, padded to SEQ.
    let mask: Vec<i64> = (0..n)
        .map(|i| i64::from(i % SEQ < SEQ - (i / SEQ) % 8))
        .collect();
    let types = vec![0i64; n];
    let t = |name: &str, v: &[i64]| {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        Tensor::new(name, DataType::Int64, vec![batch, SEQ], Bytes::from(bytes)).unwrap()
    };
    vec![
        t("input_ids", &ids),
        t("attention_mask", &mask),
        t("token_type_ids", &types),
    ]
}

/// Medians of `f` and `g`, called alternately (so that load from elsewhere on the machine
/// falls on both alike), after a warm-up.
fn time_pair(
    iterations: usize,
    mut f: impl FnMut() -> Vec<Tensor>,
    mut g: impl FnMut() -> Vec<Tensor>,
) -> (Duration, Duration) {
    for _ in 0..iterations / 10 + 1 {
        f();
        g();
    }
    let once = |h: &mut dyn FnMut() -> Vec<Tensor>| {
        let t = Instant::now();
        let out = h();
        let d = t.elapsed();
        assert_eq!(out.len(), 1);
        d
    };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..iterations {
        a.push(once(&mut f));
        b.push(once(&mut g));
    }
    (median(a), median(b))
}

fn main() {
    // The worker runs candle with RAYON_NUM_THREADS = its thread count (WorkerOptions::env);
    // measure it the same way.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let status = Command::new(std::env::current_exe().unwrap())
            .args(std::env::args_os().skip(1))
            .env("RAYON_NUM_THREADS", "1")
            .status()
            .unwrap();
        std::process::exit(status.code().unwrap_or(1));
    }
    let ort_library = PathBuf::from(
        std::env::var_os("ORT_DYLIB_PATH")
            .expect("ORT_DYLIB_PATH is not set: run scripts/setup.sh"),
    );
    // WARDEN_BENCH_MODELS: a directory with the two models already written by
    // bert_reference.py (in `small/` and `mini/`), for a machine without the Python packages
    // (the GPU kit, `hw-tests/gpu-kit.sh`).
    let prepared = std::env::var_os("WARDEN_BENCH_MODELS").map(PathBuf::from);
    let python = std::env::var_os("WARDEN_PYTHON");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/bert_reference.py");
    let gpu: Option<Device> = std::env::var("WARDEN_BENCH_GPU")
        .ok()
        .map(|d| d.parse().expect("WARDEN_BENCH_GPU: cuda:N or tensorrt:N"));
    if let Some(device) = gpu {
        let dirs: Vec<PathBuf> = std::env::var("WARDEN_CUDA_LIBRARY_DIRS")
            .map(|v| v.split(':').map(PathBuf::from).collect())
            .unwrap_or_default();
        warden_runtime::onnx::load_library(&ort_library).unwrap();
        for missing in warden_runtime::onnx::preload_gpu_libraries(&ort_library, device, &dirs) {
            eprintln!("not loaded: {missing}");
        }
    }
    // The test BERT, and a larger one (BERT-mini-like) where matrix products weigh more.
    for (label, args) in [
        ("2 layers, hidden 64, 4 heads", &[][..]),
        (
            "4 layers, hidden 256, 4 heads",
            &["--layers", "4", "--hidden", "256"][..],
        ),
    ] {
        let written = tempfile::tempdir().unwrap();
        let dir = match &prepared {
            Some(models) => models.join(if args.is_empty() { "small" } else { "mini" }),
            None => {
                let python = python
                    .as_ref()
                    .expect("WARDEN_PYTHON is not set: run scripts/setup.sh --test");
                let status = Command::new(python)
                    .arg(&script)
                    .arg(written.path())
                    .args(args)
                    .status()
                    .unwrap();
                assert!(status.success(), "bert_reference.py failed");
                written.path().to_path_buf()
            }
        };
        let candle =
            CandleEngine::load(&std::fs::read(dir.join("model.safetensors")).unwrap(), 1).unwrap();
        let ort = OrtEngine::load(
            &ort_library,
            &std::fs::read(dir.join("model.onnx")).unwrap(),
            EngineOptions {
                intra_op_threads: 1,
                sessions: 1,
                ..Default::default()
            },
        )
        .unwrap();

        println!("BERT classifier ({label}), sequence {SEQ}, 1 thread each");
        for (batch, iterations) in [(1usize, 1000usize), (64, 40)] {
            let x = inputs(batch);
            let (c, o) = time_pair(
                iterations,
                || candle.run(&x, &[]).unwrap(),
                || ort.run(&x, &[]).unwrap(),
            );
            let rows = |d: Duration| batch as f64 / d.as_secs_f64();
            println!(
                "  batch {batch:>2}: candle p50 {:>9.1} µs ({:>6.0} rows/s)   onnxruntime p50 \
                 {:>9.1} µs ({:>6.0} rows/s)   candle/ort time ratio {:.2}",
                c.as_secs_f64() * 1e6,
                rows(c),
                o.as_secs_f64() * 1e6,
                rows(o),
                c.as_secs_f64() / o.as_secs_f64()
            );
        }
        let Some(device) = gpu else { continue };
        let on_gpu = OrtEngine::load(
            &ort_library,
            &std::fs::read(dir.join("model.onnx")).unwrap(),
            EngineOptions {
                intra_op_threads: 1,
                sessions: 1,
                device: DeviceRequest {
                    device,
                    memory_budget_bytes: Some(2 << 30),
                    cpu_fallback: false,
                },
            },
        )
        .expect("the model on the GPU");
        for (batch, iterations) in [(1usize, 1000usize), (64, 200)] {
            let x = inputs(batch);
            let logits = |out: Vec<Tensor>| -> Vec<f32> {
                out[0]
                    .data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            };
            let (g, c) = (
                logits(on_gpu.run(&x, &[]).unwrap()),
                logits(ort.run(&x, &[]).unwrap()),
            );
            let worst = g
                .iter()
                .zip(&c)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= 1e-2,
                "{device} logits differ from the CPU's by {worst}"
            );
            let (gd, cd) = time_pair(
                iterations,
                || on_gpu.run(&x, &[]).unwrap(),
                || ort.run(&x, &[]).unwrap(),
            );
            let rows = |d: Duration| batch as f64 / d.as_secs_f64();
            println!(
                "  batch {batch:>2}: onnxruntime {device} p50 {:>9.1} µs ({:>7.0} rows/s)   cpu \
                 p50 {:>9.1} µs ({:>6.0} rows/s)   cpu/gpu time ratio {:.2}   max |Δlogit| {worst:.1e}",
                gd.as_secs_f64() * 1e6,
                rows(gd),
                cd.as_secs_f64() * 1e6,
                rows(cd),
                cd.as_secs_f64() / gd.as_secs_f64()
            );
        }
    }
}
