//! Loading ONNX Runtime's library into the worker: once per process, only with its telemetry
//! switched off, and, for a GPU worker, with the CUDA libraries loaded before the sandbox hides
//! the file system.

use std::path::Path;
use std::sync::{Mutex, PoisonError};

use warden_runtime_client::device::Device;
use warden_runtime_client::worker::TELEMETRY_OPT_OUT;

use crate::engine::error::EngineError;

/// Loads the ONNX Runtime library (`dlopen` and API lookup) without creating anything in it.
/// The sandboxed worker calls this with the agent's privileges, before it drops them: creating
/// the environment starts threads, which must come after the sandbox (a process with more
/// than one thread cannot enter a user namespace). Loading twice is harmless.
pub fn load_library(onnxruntime_library: &Path) -> Result<(), EngineError> {
    let mut loaded = LIBRARY.lock().unwrap_or_else(PoisonError::into_inner);
    if loaded.is_some() {
        return Ok(());
    }
    telemetry_off(std::env::var_os(TELEMETRY_OPT_OUT).as_deref())?;
    // `init_from` reports a missing or unusable library as an error; every other `ort` call
    // would go through the lazy loader, which panics. Nothing else is called before this.
    drop(
        ort::init_from(onnxruntime_library).map_err(|e| EngineError::Library {
            path: onnxruntime_library.display().to_string(),
            message: e.to_string(),
        })?,
    );
    *loaded = Some(onnxruntime_library.to_path_buf());
    Ok(())
}

/// The CUDA, cuDNN and TensorRT libraries a GPU provider of ONNX Runtime needs, in the order
/// they depend on each other; each is looked for as `<name>.<major>` (the soname) in the
/// configured directories.
const GPU_LIBRARIES: &[&str] = &[
    "libcudart.so",
    "libcublasLt.so",
    "libcublas.so",
    "libnvrtc.so",
    "libcurand.so",
    "libcufft.so",
    "libcudnn.so",
    "libcudnn_graph.so",
    "libcudnn_ops.so",
    "libcudnn_heuristic.so",
    "libcudnn_adv.so",
    "libcudnn_cnn.so",
    "libcudnn_engines_precompiled.so",
    "libcudnn_engines_runtime_compiled.so",
    "libnvinfer.so",
    "libnvinfer_plugin.so",
    "libnvonnxparser.so",
];

/// The file in `dirs` (first directory first) named `<name>.<major>`, e.g. `libcudart.so.12`.
pub fn find_soname(dirs: &[std::path::PathBuf], name: &str) -> Option<std::path::PathBuf> {
    dirs.iter().find_map(|dir| {
        let mut found: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|f| f.to_str())
                    .and_then(|f| f.strip_prefix(name))
                    .and_then(|rest| rest.strip_prefix('.'))
                    .is_some_and(|major| {
                        !major.is_empty() && major.bytes().all(|b| b.is_ascii_digit())
                    })
            })
            .collect();
        found.sort();
        found.pop()
    })
}

/// Loads, before the sandbox hides the file system, every library a GPU worker's engine
/// would otherwise open later from inside it: the CUDA/cuDNN/TensorRT libraries found in
/// `library_dirs`, the CUDA driver (`libcuda.so.1`, which the CUDA runtime opens lazily), and
/// ONNX Runtime's provider libraries beside `onnxruntime_library` (ONNX Runtime opens them by
/// that same path when the provider is registered, and the loader answers with the copy
/// already loaded; libraries opened by soname are matched the same way). Returns what could
/// not be loaded: the provider's registration then fails inside the sandbox and says why,
/// which refuses the model or moves it to the CPU.
pub fn preload_gpu_libraries(
    onnxruntime_library: &Path,
    device: Device,
    library_dirs: &[std::path::PathBuf],
) -> Vec<String> {
    let mut missing = Vec::new();
    let mut load = |path: std::path::PathBuf| {
        if let Err(e) = ort::util::preload_dylib(&path) {
            missing.push(format!("{}: {e}", path.display()));
        }
    };
    for name in GPU_LIBRARIES {
        if let Some(path) = find_soname(library_dirs, name) {
            load(path);
        }
    }
    load("libcuda.so.1".into());
    let mut providers = vec![
        "libonnxruntime_providers_shared.so",
        "libonnxruntime_providers_cuda.so",
    ];
    if matches!(device, Device::TensorRt(_)) {
        providers.push("libonnxruntime_providers_tensorrt.so");
    }
    for provider in providers {
        load(onnxruntime_library.with_file_name(provider));
    }
    missing
}

/// Whether the library is already loaded (then no file needs to be opened).
static LIBRARY: Mutex<Option<std::path::PathBuf>> = Mutex::new(None);

/// Whether `value` (of [`TELEMETRY_OPT_OUT`]) switches the telemetry off.
fn telemetry_off(value: Option<&std::ffi::OsStr>) -> Result<(), EngineError> {
    match value {
        Some(v) if v == "1" => Ok(()),
        Some(v) => Err(EngineError::TelemetryOn {
            found: format!("{TELEMETRY_OPT_OUT}={:?}", v.to_string_lossy()),
        }),
        None => Err(EngineError::TelemetryOn {
            found: format!("{TELEMETRY_OPT_OUT} unset"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::{EngineError, telemetry_off};

    /// Only the exact value `1` counts as off; anything else names what was found.
    #[test]
    fn telemetry_must_be_switched_off_exactly() {
        assert!(telemetry_off(Some("1".as_ref())).is_ok());
        for (value, found) in [
            (None, "ORT_DISABLE_TELEMETRY unset"),
            (Some("0"), "ORT_DISABLE_TELEMETRY=\"0\""),
            (Some("true"), "ORT_DISABLE_TELEMETRY=\"true\""),
            (Some(""), "ORT_DISABLE_TELEMETRY=\"\""),
            (Some(" 1"), "ORT_DISABLE_TELEMETRY=\" 1\""),
        ] {
            let e = telemetry_off(value.map(AsRef::as_ref)).unwrap_err();
            assert!(
                matches!(&e, EngineError::TelemetryOn { found: f } if f == found),
                "{e}"
            );
            assert!(e.to_string().contains("set ORT_DISABLE_TELEMETRY=1"), "{e}");
        }
    }
}
