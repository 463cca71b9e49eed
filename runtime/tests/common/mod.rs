//! Shared by the integration tests: the ONNX Runtime library, the demo model, the sample
//! request, and the reference outputs from Python onnxruntime.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

use bytes::Bytes;
use warden_runtime_client::tensor::{DataType, Tensor};

pub fn ort_library() -> PathBuf {
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!("ORT_DYLIB_PATH is not set: run scripts/setup.sh, then `source .cache/env`"),
    }
}

pub fn python() -> PathBuf {
    match std::env::var_os("WARDEN_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!("WARDEN_PYTHON is not set: run scripts/setup.sh, then `source .cache/env`"),
    }
}

/// The repository: where this was built, or `WARDEN_REPO_ROOT` for a prebuilt test binary run
/// from another checkout (the GPU kit, `hw-tests/gpu-kit.sh`).
pub fn repo_root() -> PathBuf {
    match std::env::var_os("WARDEN_REPO_ROOT") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."),
    }
}

/// The `warden-runtime` worker binary: the one built beside this test, or `WARDEN_RUNTIME_BIN`
/// for a prebuilt test binary run elsewhere.
pub fn runtime_binary() -> PathBuf {
    match std::env::var_os("WARDEN_RUNTIME_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_warden-runtime")),
    }
}

pub fn model_path() -> PathBuf {
    repo_root().join("agent/demo-model/model/model.onnx")
}

pub fn model_bytes() -> Vec<u8> {
    std::fs::read(model_path()).expect("demo model")
}

/// The demo model's SHA-256, as the worker's `--digest` takes it.
pub fn model_digest() -> warden_runtime_client::model_digest::ModelDigest {
    warden_runtime_client::model_digest::ModelDigest::sha256_of(&model_bytes())
}

/// A whole-file SHA-256 digest from its hex.
pub fn sha256_digest(hex: &str) -> warden_runtime_client::model_digest::ModelDigest {
    format!("sha256:{hex}").parse().unwrap()
}

pub fn model_sha256() -> String {
    use sha2::Digest;
    sha2::Sha256::digest(model_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The rows of `sample-request.json` as f32 values and their shape.
pub fn sample_rows() -> (Vec<usize>, Vec<f32>) {
    let text = std::fs::read_to_string(repo_root().join("agent/demo-model/sample-request.json"))
        .expect("sample request");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let input = &v["inputs"][0];
    assert_eq!(input["datatype"], "FP32");
    let shape = input["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let data = input["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    (shape, data)
}

pub fn f32_tensor(name: &str, shape: Vec<usize>, values: &[f32]) -> Tensor {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Tensor::new(name, DataType::Fp32, shape, Bytes::from(bytes)).unwrap()
}

pub fn sample_input() -> Tensor {
    let (shape, data) = sample_rows();
    f32_tensor("input", shape, &data)
}

pub fn as_f32(t: &Tensor) -> Vec<f32> {
    assert_eq!(t.dtype, DataType::Fp32);
    t.data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

pub fn as_i64(t: &Tensor) -> Vec<i64> {
    assert_eq!(t.dtype, DataType::Int64);
    t.data
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Labels and flattened probabilities computed by Python onnxruntime on the same rows.
pub fn python_reference(shape: &[usize], data: &[f32]) -> (Vec<i64>, Vec<f32>) {
    let script = r#"
import json, sys
import numpy as np
import onnxruntime as ort
req = json.load(sys.stdin)
x = np.asarray(req["data"], dtype=np.float32).reshape(req["shape"])
s = ort.InferenceSession(req["model"], providers=["CPUExecutionProvider"])
label, prob = s.run(["label", "probabilities"], {"input": x})
json.dump({"label": [int(v) for v in label.reshape(-1)],
           "probabilities": [float(v) for v in prob.reshape(-1)]}, sys.stdout)
"#;
    let request = serde_json::json!({
        "model": model_path(),
        "shape": shape,
        "data": data,
    });
    let mut child = Command::new(python())
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run WARDEN_PYTHON");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(serde_json::to_string(&request).unwrap().as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python onnxruntime failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let labels = v["label"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    let probs = v["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    (labels, probs)
}

pub fn assert_close(actual: &[f32], expected: &[f32]) {
    assert_eq!(actual.len(), expected.len());
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!((a - e).abs() <= 1e-5, "element {i}: {a} vs {e}");
    }
}

/// The children of a process (the sandboxed worker is the child of the process started).
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

/// One field of a `/proc/<pid>/status` text.
pub fn field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("{name} missing"))
        .trim()
        .to_string()
}

/// An `Identity` model over an FP32 `[n, m]` tensor (input `x`, output `y`), written with the
/// `onnx` Python package into `dir`; returns its path and SHA-256. Its outputs are as large as
/// its inputs, which is what the tensor arena's tests and bench need.
pub fn identity_model(dir: &std::path::Path) -> (PathBuf, String) {
    let script = r#"
import sys, onnx
from onnx import helper, TensorProto
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "m"])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "m"])
g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
m.ir_version = 8
onnx.checker.check_model(m)
onnx.save(m, sys.argv[1])
"#;
    let path = dir.join("identity.onnx");
    let status = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(&path)
        .status()
        .expect("run WARDEN_PYTHON");
    assert!(
        status.success(),
        "crafting the model failed: WARDEN_PYTHON needs `onnx` (scripts/setup.sh --test)"
    );
    use sha2::Digest;
    let sha = sha2::Sha256::digest(std::fs::read(&path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (path, sha)
}

/// `[1, n]` FP32 values `salt, salt + 1, …`: distinct per request.
pub fn ramp(n: usize, salt: f32) -> Tensor {
    let values: Vec<f32> = (0..n).map(|i| salt + i as f32).collect();
    f32_tensor("x", vec![1, n], &values)
}

/// `o` asking for `cuda:0` with a 512 MiB budget, the CUDA libraries from
/// `WARDEN_CUDA_LIBRARY_DIRS` (colon-separated; `hw-tests/gpu.sh` sets it).
pub fn on_cuda0(
    mut o: warden_runtime_client::worker::WorkerOptions,
    cpu_fallback: bool,
) -> warden_runtime_client::worker::WorkerOptions {
    o.device = warden_runtime_client::device::DeviceRequest {
        device: warden_runtime_client::device::Device::Cuda(0),
        memory_budget_bytes: Some(512 << 20),
        cpu_fallback,
    };
    o.cuda_library_dirs = std::env::var("WARDEN_CUDA_LIBRARY_DIRS")
        .map(|v| v.split(':').map(PathBuf::from).collect())
        .unwrap_or_default();
    o
}

/// `warden-runtime` on `model`, its socket (our end, 30 s read timeout) as stdin, with
/// `extra` arguments: for tests that speak the protocol by hand.
pub fn spawn_worker_raw(
    model: &std::path::Path,
    sha256: &str,
    extra: &[&str],
) -> (std::process::Child, std::os::unix::net::UnixStream) {
    spawn_worker_raw_env(model, sha256, extra, &[])
}

/// [`spawn_worker_raw`] with environment changes: `(name, Some(value))` sets, `(name, None)`
/// removes.
pub fn spawn_worker_raw_env(
    model: &std::path::Path,
    sha256: &str,
    extra: &[&str],
    env: &[(&str, Option<&std::ffi::OsStr>)],
) -> (std::process::Child, std::os::unix::net::UnixStream) {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut command = Command::new(runtime_binary());
    for (name, value) in env {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    let child = command
        .args(["--model".as_ref(), model.as_os_str()])
        .arg("--digest")
        .arg(format!("sha256:{sha256}"))
        .args(["--onnxruntime".as_ref(), ort_library().as_os_str()])
        .args(extra)
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            theirs,
        )))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    ours.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    (child, ours)
}

/// The next frame from a raw worker, decoded (no tensor arena).
pub fn next_message(
    stream: &mut std::os::unix::net::UnixStream,
) -> warden_runtime_client::protocol::Message {
    use warden_runtime_client::protocol::{DEFAULT_MAX_FRAME_BYTES, Message, read_frame};
    let body = read_frame(stream, DEFAULT_MAX_FRAME_BYTES)
        .unwrap()
        .unwrap();
    Message::decode(body).unwrap()
}

/// A script in `dir` that runs the worker binary under `strace -f`, and the trace it writes:
/// given to `WorkerOptions` as the worker, it traces exactly what the agent would start.
pub fn traced_worker(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let trace = dir.join("trace");
    let wrapper = dir.join("traced-worker");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec strace -f --decode-pids=pidns -qq -o '{}' '{}' \"$@\"\n",
            trace.display(),
            runtime_binary().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    (wrapper, trace)
}

/// `hw-tests/syscall_census.py` on `trace` against `allow_list` (the shipped
/// `runtime/seccomp.json` when `None`): its exit status and JSON report.
pub fn syscall_census(
    trace: &std::path::Path,
    allow_list: Option<&std::path::Path>,
) -> (i32, serde_json::Value) {
    let shipped = repo_root().join("runtime/seccomp.json");
    let out = Command::new(python())
        .arg(repo_root().join("hw-tests/syscall_census.py"))
        .arg(trace)
        .arg("--allow-list")
        .arg(allow_list.unwrap_or(&shipped))
        .args(["--json", "--fail-on-refused"])
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "census printed no report ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), report)
}

/// The names under `key` in a census report.
pub fn census_names(report: &serde_json::Value, key: &str) -> Vec<String> {
    report[key].as_object().unwrap().keys().cloned().collect()
}

/// A census that refused nothing, saw the set-up before the filter and ran under it.
pub fn assert_census_clean(what: &str, status: i32, report: &serde_json::Value) {
    println!("{what}: {}", serde_json::to_string(report).unwrap());
    assert_eq!(
        report["refused"],
        serde_json::json!({}),
        "{what}: refused calls"
    );
    assert_eq!(status, 0, "{what}");
    let before = census_names(report, "before_filter");
    for call in ["unshare", "pivot_root", "seccomp"] {
        assert!(
            before.iter().any(|c| c == call),
            "{what}: {call} before the filter"
        );
    }
    let used = census_names(report, "used");
    for call in ["futex", "mmap"] {
        assert!(
            used.iter().any(|c| c == call),
            "{what}: {call} under the filter"
        );
    }
}

/// Options for the benchmarks' workers: this build's worker (or `WARDEN_RUNTIME_BIN`, to
/// compare two builds) on `model`, one request at a time on one intra-op thread.
pub fn one_at_a_time(
    model: PathBuf,
    sha256: String,
) -> warden_runtime_client::worker::WorkerOptions {
    let mut o = warden_runtime_client::worker::WorkerOptions::new(
        runtime_binary(),
        ort_library(),
        model,
        sha256_digest(&sha256),
    );
    o.concurrency = 1;
    o.intra_op_threads = 1;
    o
}
