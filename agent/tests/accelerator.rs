//! A model configured for a GPU: refused with a precise reason when the GPU cannot be used,
//! or, where its configuration allows, served on the CPU with the fallback reported by the
//! worker's placement and by `warden status`. On this build machine there is no GPU; on a
//! machine with one and the CPU-only ONNX Runtime library the worker refuses instead (its
//! library has no CUDA provider), and the same assertions hold. Serving on a real GPU is
//! `hw-tests/gpu.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use support::serving::{Background, demo_client, demo_world, warden};
use warden_agent::config::{AcceleratorConfig, Config};
use warden_agent::demo::DemoFiles;
use warden_agent::serve;
use warden_runtime_client::device::Device;

fn gpu_world(dir: &std::path::Path, device: Device, cpu_fallback: bool) -> (DemoFiles, Config) {
    let (files, mut config) = demo_world(dir);
    config.models[0].accelerator = Some(AcceleratorConfig {
        device,
        memory_budget_mib: Some(256),
        cpu_fallback,
    });
    (files, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_that_cannot_be_used_refuses_the_load() {
    for device in [Device::Cuda(0), Device::TensorRt(0), Device::Cuda(7)] {
        let dir = tempfile::tempdir().unwrap();
        let (_files, config) = gpu_world(dir.path(), device, false);
        let err = match serve::prepare(&config).await {
            Ok(_) => panic!("{device}: served without a usable GPU"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("model demo version 1"), "{err}");
        assert!(err.contains(&format!("{device} is not usable")), "{err}");
        assert!(err.contains("allows no CPU fallback"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_cpu_fallback_the_model_serves_on_the_cpu_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let (files, config) = gpu_world(dir.path(), Device::Cuda(0), true);
    let prepared = serve::prepare(&config).await.unwrap();
    let placement = prepared.models.resolve("demo", None).unwrap().placement();
    assert_eq!(placement.device, Device::Cpu);
    assert_eq!(placement.provider, "CPUExecutionProvider");
    let why = placement
        .fallback_reason
        .expect("the fallback has a reason");
    assert!(
        why.contains("no GPU 0 on this machine") || why.contains("CUDAExecutionProvider"),
        "{why}"
    );
    let server = Background::start(prepared);

    let r = demo_client(&files, &server)
        .await
        .post_json(
            "/v2/models/demo/infer",
            Bytes::from(std::fs::read(&files.request).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // `warden status` says loudly that the configured GPU is not used, and why; a fallback
    // the configuration allows is not a failure.
    let status_file = config.state.directory.join("status.json");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !std::fs::read_to_string(&status_file)
        .unwrap_or_default()
        .contains("fallback_reason")
    {
        assert!(Instant::now() < deadline, "no status with the placement");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, out) = warden(&["status", "--config"], &files.config);
    assert!(ok, "{out}");
    assert!(
        out.contains(
            "on cpu (CPUExecutionProvider) — CPU FALLBACK, the configured GPU is not used"
        ),
        "{out}"
    );
    server.stop().await;
}
