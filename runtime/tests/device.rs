//! Placement of an ONNX model: the CPU by default; a GPU only through its ONNX Runtime
//! provider, registered so that failing to register it fails (never a silent CPU run); the
//! CPU instead only where the request allows it, with the reason kept. With the CPU-only
//! library (what CI has) a GPU request must be refused or fall back; with a GPU build of the
//! library on a machine with a GPU (`hw-tests/gpu.sh`) it must land on the GPU.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use ort::ep::ExecutionProvider;
use warden_runtime::engine::{Engine, EngineError, EngineOptions, ModelFormat};
use warden_runtime_client::device::{Device, DeviceRequest, Placement};

fn load(device: Device, cpu_fallback: bool) -> Result<Engine, EngineError> {
    Engine::load(
        ModelFormat::Onnx,
        &model_bytes(),
        Some(&ort_library()),
        EngineOptions {
            intra_op_threads: 1,
            sessions: 2,
            device: DeviceRequest {
                device,
                memory_budget_bytes: (device != Device::Cpu).then_some(256 << 20),
                cpu_fallback,
            },
        },
    )
}

/// Whether this library and machine can run the CUDA provider at all.
fn gpu_capable() -> bool {
    warden_runtime::onnx::load_library(&ort_library()).unwrap();
    ort::ep::CUDA::is_available().unwrap()
        && !warden_runtime_client::accel::discover().gpus.is_empty()
}

fn outputs(engine: &Engine) -> Vec<f32> {
    let out = engine
        .run(&[sample_input()], &["probabilities".to_string()])
        .unwrap();
    as_f32(&out[0])
}

#[test]
fn the_cpu_is_the_default() {
    let engine = load(Device::Cpu, false).unwrap();
    assert_eq!(engine.placement(), &Placement::cpu("CPUExecutionProvider"));
}

#[test]
fn a_gpu_request_lands_on_the_gpu_or_is_refused() {
    for device in [Device::Cuda(0), Device::TensorRt(0)] {
        match load(device, false) {
            Ok(engine) => {
                assert!(
                    gpu_capable(),
                    "{device}: loaded without a GPU build and a GPU"
                );
                assert_eq!(engine.placement().device, device);
                assert_eq!(engine.placement().fallback_reason, None);
                assert_eq!(engine.placement().memory_budget_bytes, Some(256 << 20));
                // GPU kernels (TF32 where the GPU has it) differ from the CPU's in low bits.
                let (gpu, cpu) = (
                    outputs(&engine),
                    outputs(&load(Device::Cpu, false).unwrap()),
                );
                for (g, c) in gpu.iter().zip(&cpu) {
                    assert!((g - c).abs() <= 1e-3, "{device}: {g} vs {c}");
                }
            }
            Err(EngineError::Device(d)) => {
                assert!(!gpu_capable() || device == Device::TensorRt(0), "{d}");
                assert_eq!(d.device, device);
                let provider = match device {
                    Device::TensorRt(_) => "TensorrtExecutionProvider on GPU 0",
                    _ => "CUDAExecutionProvider on GPU 0",
                };
                assert!(d.reason.contains(provider), "{d}");
                assert!(d.to_string().contains("allows no CPU fallback"), "{d}");
            }
            Err(e) => panic!("{device}: wrong error: {e}"),
        }
    }
}

#[test]
fn an_allowed_fallback_runs_on_the_cpu_and_keeps_the_reason() {
    if gpu_capable() {
        // The fallback cannot be provoked with a usable GPU 0; GPU 99 does not exist.
        let engine = load(Device::Cuda(99), true).unwrap();
        assert_eq!(engine.placement().device, Device::Cpu);
        return;
    }
    let engine = load(Device::Cuda(0), true).unwrap();
    let placement = engine.placement();
    assert_eq!(placement.device, Device::Cpu);
    assert_eq!(placement.provider, "CPUExecutionProvider");
    assert_eq!(placement.memory_budget_bytes, None);
    let why = placement.fallback_reason.as_deref().unwrap();
    assert!(why.starts_with("CUDAExecutionProvider on GPU 0: "), "{why}");
    // Every session of the pool is on the CPU and computes what the CPU engine does.
    let cpu = outputs(&load(Device::Cpu, false).unwrap());
    for _ in 0..4 {
        assert_close(&outputs(&engine), &cpu);
    }
}

/// The CUDA libraries are found by soname (`name.<major>`), first directory first, never a
/// longer versioned name or a development link.
#[test]
fn gpu_libraries_are_found_by_soname() {
    use warden_runtime::onnx::find_soname;
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    for name in [
        "libcudart.so",
        "libcudart.so.12.8.90",
        "libcublas.so.12",
        "libcublas.so.13",
        "libcudnn.so.9.1",
    ] {
        std::fs::write(a.path().join(name), b"").unwrap();
    }
    std::fs::write(b.path().join("libcudart.so.12"), b"").unwrap();
    let dirs = [a.path().to_path_buf(), b.path().to_path_buf()];
    assert_eq!(
        find_soname(&dirs, "libcudart.so"),
        Some(b.path().join("libcudart.so.12"))
    );
    assert_eq!(
        find_soname(&dirs, "libcublas.so"),
        Some(a.path().join("libcublas.so.13"))
    );
    assert_eq!(find_soname(&dirs, "libcudnn.so"), None);
    assert_eq!(find_soname(&dirs, "libcublasLt.so"), None);
}

/// The real sandboxed worker asked for GPU 0: with a GPU build of ONNX Runtime on a GPU
/// machine it serves there (device nodes, libraries and device calls granted, see
/// `SANDBOX.md`) and agrees with the CPU; otherwise its start is refused with the provider's
/// reason, or, where allowed, it serves on the CPU and says why. `WARDEN_CUDA_LIBRARY_DIRS`
/// (colon-separated) names the CUDA libraries' directories for the GPU run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandboxed_worker_serves_on_the_gpu_or_refuses_or_falls_back() {
    use warden_runtime_client::worker::{Worker, WorkerError, WorkerOptions};
    let options = |cpu_fallback| {
        let o = WorkerOptions::new(
            runtime_binary(),
            ort_library(),
            model_path(),
            model_digest(),
        );
        on_cuda0(o, cpu_fallback)
    };
    let expected = outputs(&load(Device::Cpu, false).unwrap());
    let served = |worker: &Worker| {
        let worker = worker.clone();
        async move {
            let out = worker
                .infer(vec![sample_input()], vec!["probabilities".into()])
                .await
                .unwrap();
            as_f32(&out[0])
        }
    };
    if gpu_capable() {
        let worker = Worker::start(options(false)).await.unwrap();
        let p = worker.placement();
        assert_eq!(
            (p.device, p.fallback_reason.as_deref()),
            (Device::Cuda(0), None)
        );
        for (g, c) in served(&worker).await.iter().zip(&expected) {
            assert!((g - c).abs() <= 1e-3, "{g} vs {c}");
        }
        worker.shutdown().await;
        return;
    }
    match Worker::start(options(false)).await {
        Err(WorkerError::Unavailable { reason }) => {
            assert!(reason.contains("worker refused to start"), "{reason}");
            assert!(reason.contains("cuda:0 is not usable"), "{reason}");
            assert!(
                reason.contains("CUDAExecutionProvider on GPU 0"),
                "{reason}"
            );
        }
        Err(e) => panic!("wrong refusal: {e}"),
        Ok(_) => panic!("a GPU worker started without a usable GPU provider"),
    }
    let worker = Worker::start(options(true)).await.unwrap();
    let p = worker.placement();
    assert_eq!(p.device, Device::Cpu);
    assert!(
        p.fallback_reason
            .unwrap()
            .contains("CUDAExecutionProvider on GPU 0")
    );
    assert_close(&served(&worker).await, &expected);
    worker.shutdown().await;
}
