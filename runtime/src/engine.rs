//! The engines behind one tensor-in/tensor-out API ([`Engine`]), chosen by the model file
//! ([`ModelFormat`]): ONNX Runtime for `.onnx` ([`OrtEngine`], below), candle for
//! `.safetensors` ([`crate::candle::CandleEngine`]). The worker protocol, sandbox, batching
//! and supervision are the same for both.
//!
//! ONNX Runtime is loaded dynamically through `ort`.
//!
//! Concurrency: `ort::session::Session::run` takes `&mut self` in 2.0.0-rc.15 (ONNX Runtime's
//! execution providers keep state that is not thread safe), so one session serves one call at a
//! time. [`OrtEngine`] therefore holds a **pool of sessions** ([`EngineOptions::sessions`]), each
//! built from the same model bytes: a call checks a session out (waiting on a condition
//! variable when all are busy), runs, and checks it back in. `OrtEngine` is `Send + Sync` and
//! `run` takes `&self`, so it can be shared by any number of threads; at most `sessions` calls
//! run at once. Each session holds its own copy of the weights: size the pool with that in mind.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard};

use bytes::Bytes;
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{OutputSelector, RunOptions, Session, SessionInputValue, SessionOutputs};
use ort::value::{DynValue, TensorElementType, ValueType};

use crate::candle::{CandleEngine, CandleError};
use crate::device::{Device, DeviceRequest, DeviceUnavailable, Placement};
use crate::tensor::{DataType, ModelSignature, Tensor, TensorSpec, byte_len};

/// How a model file is run, decided by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    /// `.onnx`: ONNX Runtime.
    Onnx,
    /// `.safetensors`: candle.
    Safetensors,
}

impl ModelFormat {
    /// The format of `path`, from its extension (`.onnx` or `.safetensors`, any case).
    pub fn of(path: &Path) -> Result<ModelFormat, EngineError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("onnx") => Ok(ModelFormat::Onnx),
            Some("safetensors") => Ok(ModelFormat::Safetensors),
            _ => Err(EngineError::Model(format!(
                "{}: unknown model format; a model file ends in .onnx (ONNX Runtime) or \
                 .safetensors (candle)",
                path.display()
            ))),
        }
    }

    /// The platform as model metadata names it (KServe v2 / Triton style):
    /// `"onnxruntime_onnx"`, `"candle_safetensors"`.
    pub fn platform(self) -> &'static str {
        match self {
            ModelFormat::Onnx => "onnxruntime_onnx",
            ModelFormat::Safetensors => "candle_safetensors",
        }
    }

    /// The engine's name, for logs (`"onnxruntime"`, `"candle"`).
    pub fn engine_name(self) -> &'static str {
        match self {
            ModelFormat::Onnx => "onnxruntime",
            ModelFormat::Safetensors => "candle",
        }
    }
}

/// One loaded model, on whichever engine its format needs.
#[derive(Debug)]
pub enum Engine {
    Ort(OrtEngine),
    Candle(CandleEngine, Placement),
}

/// candle's provider name in a [`Placement`].
const CANDLE_CPU: &str = "candle-cpu";
const CANDLE_CUDA: &str = "candle-cuda";
/// ONNX Runtime's provider names.
const ORT_CPU: &str = "CPUExecutionProvider";
const ORT_CUDA: &str = "CUDAExecutionProvider";
const ORT_TENSORRT: &str = "TensorrtExecutionProvider";

/// Where candle runs a model: a CUDA device when asked for one and this build has candle's
/// CUDA backend (`candle-cuda`), else the CPU where the request allows it. TensorRT is an ONNX
/// Runtime provider: for candle it is the CUDA device of the same number. The placement names
/// no enforced budget: candle has no allocator limit to hand it to, so the budget is the
/// agent's accounting only.
fn candle_device(request: &DeviceRequest) -> Result<(candle_core::Device, Placement), EngineError> {
    let Some(ordinal) = request.device.gpu() else {
        return Ok((candle_core::Device::Cpu, Placement::cpu(CANDLE_CPU)));
    };
    let reason = match candle_core::Device::new_cuda(ordinal as usize) {
        Ok(device) => {
            return Ok((
                device,
                Placement {
                    device: Device::Cuda(ordinal),
                    provider: CANDLE_CUDA.to_string(),
                    memory_budget_bytes: None,
                    fallback_reason: None,
                },
            ));
        }
        Err(e) if !cfg!(feature = "candle-cuda") => {
            format!("this warden-runtime was built without candle's CUDA backend ({e})")
        }
        Err(e) => format!("candle cannot use cuda:{ordinal}: {e}"),
    };
    request.fall_back(reason.clone())?;
    Ok((
        candle_core::Device::Cpu,
        fell_back_to_cpu(request, CANDLE_CPU, reason),
    ))
}

/// The placement of a model that asked for `requested` and runs on the CPU because of
/// `reason` (said loudly: an operator who asked for a GPU must learn that it is not used).
fn fell_back_to_cpu(requested: &DeviceRequest, provider: &str, reason: String) -> Placement {
    tracing::warn!(
        requested = %requested.device,
        %reason,
        "GPU not usable; running on the CPU because the model's configuration allows a CPU fallback"
    );
    Placement {
        fallback_reason: Some(reason),
        ..Placement::cpu(provider)
    }
}

impl Engine {
    /// Loads `model_bytes` as `format`. ONNX needs the ONNX Runtime library. candle serves
    /// concurrent calls from one copy of the weights, in one thread pool of
    /// `intra_op_threads × sessions` threads (0: one per core): the same thread budget as ONNX
    /// Runtime's `sessions` sessions of `intra_op_threads` threads each, so that `sessions`
    /// calls can run side by side (the worker also sets `RAYON_NUM_THREADS` to
    /// `intra_op_threads`, which is how finely candle splits one product).
    pub fn load(
        format: ModelFormat,
        model_bytes: &[u8],
        onnxruntime_library: Option<&Path>,
        opts: EngineOptions,
    ) -> Result<Engine, EngineError> {
        match format {
            ModelFormat::Onnx => {
                let library = onnxruntime_library.ok_or_else(|| EngineError::Library {
                    path: String::new(),
                    message: "an ONNX model needs the ONNX Runtime library (--onnxruntime)".into(),
                })?;
                OrtEngine::load(library, model_bytes, opts).map(Engine::Ort)
            }
            ModelFormat::Safetensors => {
                let threads = opts.intra_op_threads.saturating_mul(opts.sessions.max(1));
                let (device, placement) = candle_device(&opts.device)?;
                let engine = CandleEngine::load_on(model_bytes, threads, &device)?;
                Ok(Engine::Candle(engine, placement))
            }
        }
    }

    /// Where the model runs.
    pub fn placement(&self) -> &Placement {
        match self {
            Engine::Ort(e) => &e.placement,
            Engine::Candle(_, placement) => placement,
        }
    }

    /// The model's inputs and outputs.
    pub fn signature(&self) -> &ModelSignature {
        match self {
            Engine::Ort(e) => e.signature(),
            Engine::Candle(e, _) => e.signature(),
        }
    }

    /// Runs the model (see [`OrtEngine::run`] and [`CandleEngine::run`]).
    pub fn run(&self, inputs: &[Tensor], outputs: &[String]) -> Result<Vec<Tensor>, EngineError> {
        self.run_into(inputs, outputs, &mut |_| None)
    }

    /// [`Engine::run`], offering each output's bytes to `sink` as the engine produces them
    /// (see [`OutputSink`]; candle builds its outputs itself and offers none).
    pub fn run_into(
        &self,
        inputs: &[Tensor],
        outputs: &[String],
        sink: OutputSink<'_>,
    ) -> Result<Vec<Tensor>, EngineError> {
        match self {
            Engine::Ort(e) => e.run_into(inputs, outputs, sink),
            Engine::Candle(e, _) => Ok(e.run(inputs, outputs)?),
        }
    }
}

/// Where an output's bytes may go as the engine produces them: given the bytes (little-endian),
/// it copies them to where they will be sent from and returns a view of that copy, or `None`
/// to leave them to the engine (which then copies them into a buffer of their own). The
/// worker passes its reply region in the tensor arena, so that a large output is copied once.
pub type OutputSink<'a> = &'a mut dyn FnMut(&[u8]) -> Option<Bytes>;

/// Engine settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineOptions {
    /// Threads ONNX Runtime may use inside one operator, per session (0 = ONNX Runtime's default,
    /// one per core).
    pub intra_op_threads: usize,
    /// Sessions in the pool, i.e. how many `run` calls execute at the same time (at least 1).
    pub sessions: usize,
    /// The device to run on (default: the CPU).
    pub device: DeviceRequest,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            intra_op_threads: 1,
            sessions: 1,
            device: DeviceRequest::default(),
        }
    }
}

/// What went wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The ONNX Runtime library could not be loaded (missing, wrong version, not a library).
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    Library { path: String, message: String },
    /// The model could not be loaded, or declares something this engine cannot serve.
    #[error("cannot load model: {0}")]
    Model(String),
    /// The request does not fit the model's signature; nothing was run.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The engine failed while running the model.
    #[error("inference failed: {0}")]
    Run(String),
    /// The GPU the configuration asked for cannot be used and no CPU fallback is allowed.
    #[error("cannot load model: {0}")]
    Device(#[from] DeviceUnavailable),
    /// ONNX Runtime's telemetry is not switched off in this process's environment.
    #[error(
        "refusing to load ONNX Runtime with its telemetry on: set {TELEMETRY_OPT_OUT}=1 in \
         the environment before starting (found {found}). ONNX Runtime's Linux builds otherwise \
         keep a device identifier and an event cache under ~/.cache/Microsoft and upload usage \
         events; no other switch stops that"
    )]
    TelemetryOn { found: String },
}

/// The environment variable that switches ONNX Runtime's telemetry off, wholly and for the
/// process's lifetime, when it is `1` before the library starts (ONNX Runtime reads it once).
/// The API switch (`with_telemetry(false)`, which the environment below also sets) is not
/// enough: with it, the 1.31.1 wheel's library still created the device identifier and the
/// event cache, and looked up the collector's address within 45 s (measured with strace).
/// The agent sets the variable for every worker; [`load_library`] refuses without it.
pub const TELEMETRY_OPT_OUT: &str = "ORT_DISABLE_TELEMETRY";

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

impl From<CandleError> for EngineError {
    fn from(e: CandleError) -> Self {
        match e {
            CandleError::InvalidInput(m) => EngineError::InvalidInput(m),
            CandleError::Run(m) => EngineError::Run(m),
            CandleError::Format(e) => EngineError::Model(format!("malformed safetensors: {e}")),
            CandleError::Model(e) => EngineError::Model(e.to_string()),
            CandleError::Threads(m) => {
                EngineError::Model(format!("cannot start the engine's threads: {m}"))
            }
        }
    }
}

/// ONNX Runtime engine for one model. See the module documentation for the concurrency model.
pub struct OrtEngine {
    signature: ModelSignature,
    pool: Mutex<Vec<Session>>,
    available: Condvar,
    placement: Placement,
}

impl std::fmt::Debug for OrtEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtEngine")
            .field("signature", &self.signature)
            .finish_non_exhaustive()
    }
}

impl OrtEngine {
    /// Loads ONNX Runtime from `onnxruntime_library` (the first successful load in a process
    /// wins: the library is process-global) and builds `opts.sessions` sessions from
    /// `model_bytes`.
    pub fn load(
        onnxruntime_library: &Path,
        model_bytes: &[u8],
        opts: EngineOptions,
    ) -> Result<OrtEngine, EngineError> {
        let env = environment(onnxruntime_library)?;

        let count = opts.sessions.max(1);
        let mut sessions = Vec::with_capacity(count);
        // The first session decides where the model runs: a GPU that fails there (no provider
        // in this library, no such device, its libraries missing) either refuses the load or,
        // where allowed, moves every session to the CPU.
        let mut placement = None;
        for _ in 0..count {
            let session = match &placement {
                Some(p) => build_session(&env, model_bytes, &opts, p)?,
                None => {
                    let (session, chosen) = first_session(&env, model_bytes, &opts)?;
                    placement = Some(chosen);
                    session
                }
            };
            sessions.push(session);
        }
        let signature = match sessions.first() {
            Some(session) => read_signature(session)?,
            None => return Err(EngineError::Model("no session was built".into())),
        };
        let placement = placement.unwrap_or_else(|| Placement::cpu(ORT_CPU));
        Ok(OrtEngine {
            signature,
            pool: Mutex::new(sessions),
            available: Condvar::new(),
            placement,
        })
    }

    /// The model's inputs and outputs, as the model file declares them.
    pub fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    /// Runs the model. `inputs` must name every model input exactly once, with the declared
    /// datatype and a shape the declaration accepts. `outputs` selects outputs by name (empty:
    /// all, in signature order); the result follows the order asked for.
    pub fn run(&self, inputs: &[Tensor], outputs: &[String]) -> Result<Vec<Tensor>, EngineError> {
        self.run_into(inputs, outputs, &mut |_| None)
    }

    /// [`OrtEngine::run`], offering each output's bytes to `sink` (see [`OutputSink`]).
    pub fn run_into(
        &self,
        inputs: &[Tensor],
        outputs: &[String],
        sink: OutputSink<'_>,
    ) -> Result<Vec<Tensor>, EngineError> {
        self.validate(inputs, outputs)?;
        let values = inputs
            .iter()
            .map(|t| Ok((t.name.as_str(), SessionInputValue::from(to_ort(t)?))))
            .collect::<Result<Vec<_>, EngineError>>()?;
        let wanted: Vec<&str> = if outputs.is_empty() {
            self.signature
                .outputs
                .iter()
                .map(|o| o.name.as_str())
                .collect()
        } else {
            outputs.iter().map(String::as_str).collect()
        };

        let mut lease = self.checkout();
        let session = lease.session_mut()?;
        if outputs.is_empty() {
            let mut produced = session
                .run(values)
                .map_err(|e| EngineError::Run(e.to_string()))?;
            collect_outputs(&mut produced, &wanted, sink)
        } else {
            let selector = wanted
                .iter()
                .fold(OutputSelector::no_default(), |s, name| s.with(*name));
            let options = RunOptions::new()
                .map_err(|e| EngineError::Run(e.to_string()))?
                .with_outputs(selector);
            let mut produced = session
                .run_with_options(values, &options)
                .map_err(|e| EngineError::Run(e.to_string()))?;
            collect_outputs(&mut produced, &wanted, sink)
        }
    }

    fn validate(&self, inputs: &[Tensor], outputs: &[String]) -> Result<(), EngineError> {
        let mut seen = HashSet::new();
        for t in inputs {
            let Some(spec) = self.signature.inputs.iter().find(|s| s.name == t.name) else {
                return Err(EngineError::InvalidInput(format!(
                    "unknown input {:?}; the model's inputs are {:?}",
                    t.name,
                    names(&self.signature.inputs)
                )));
            };
            if !seen.insert(t.name.as_str()) {
                return Err(EngineError::InvalidInput(format!(
                    "input {:?} given more than once",
                    t.name
                )));
            }
            if t.dtype != spec.datatype {
                return Err(EngineError::InvalidInput(format!(
                    "input {:?} has datatype {}, the model expects {}",
                    t.name, t.dtype, spec.datatype
                )));
            }
            if !spec.accepts_shape(&t.shape) {
                return Err(EngineError::InvalidInput(format!(
                    "input {:?} has shape {:?}, the model expects {:?} (-1: any size)",
                    t.name, t.shape, spec.shape
                )));
            }
            if t.shape.iter().any(|&d| i64::try_from(d).is_err()) {
                return Err(EngineError::InvalidInput(format!(
                    "input {:?}: dimension too large",
                    t.name
                )));
            }
            match byte_len(t.dtype, &t.shape) {
                Some(n) if n == t.data.len() => {}
                expected => {
                    return Err(EngineError::InvalidInput(format!(
                        "input {:?}: {} shape {:?} needs {} bytes, got {}",
                        t.name,
                        t.dtype,
                        t.shape,
                        expected.map_or_else(|| "too many".to_string(), |n| n.to_string()),
                        t.data.len()
                    )));
                }
            }
        }
        if let Some(missing) = self
            .signature
            .inputs
            .iter()
            .find(|s| !seen.contains(s.name.as_str()))
        {
            return Err(EngineError::InvalidInput(format!(
                "missing input {:?}",
                missing.name
            )));
        }
        let mut asked = HashSet::new();
        for name in outputs {
            if !self.signature.outputs.iter().any(|s| &s.name == name) {
                return Err(EngineError::InvalidInput(format!(
                    "unknown output {:?}; the model's outputs are {:?}",
                    name,
                    names(&self.signature.outputs)
                )));
            }
            if !asked.insert(name.as_str()) {
                return Err(EngineError::InvalidInput(format!(
                    "output {name:?} asked for more than once"
                )));
            }
        }
        Ok(())
    }

    fn checkout(&self) -> Lease<'_> {
        let mut pool = lock(&self.pool);
        loop {
            if let Some(session) = pool.pop() {
                return Lease {
                    engine: self,
                    session: Some(session),
                };
            }
            pool = self
                .available
                .wait(pool)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

/// A session checked out of the pool; returned on drop, even when the run fails or unwinds.
struct Lease<'a> {
    engine: &'a OrtEngine,
    session: Option<Session>,
}

impl Lease<'_> {
    fn session_mut(&mut self) -> Result<&mut Session, EngineError> {
        self.session
            .as_mut()
            .ok_or_else(|| EngineError::Run("session lease is empty".into()))
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            lock(&self.engine.pool).push(session);
            self.engine.available.notify_one();
        }
    }
}

/// The process's ONNX Runtime environment. `ort` allows one per process, ever (a second
/// `build` fails even after the first was dropped), so it is created once and kept.
static ENVIRONMENT: Mutex<Option<Environment>> = Mutex::new(None);

/// Loads the ONNX Runtime library (`dlopen` and API lookup) without creating anything in it.
/// The sandboxed worker calls this with the agent's privileges, before it drops them: creating
/// the environment starts threads, which must come after the sandbox (a process with more
/// than one thread cannot enter a user namespace). Loading twice is harmless.
pub fn load_library(onnxruntime_library: &Path) -> Result<(), EngineError> {
    let mut loaded = lock(&LIBRARY);
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

/// Builds the first session where `opts.device` asks, and decides the model's placement: the
/// GPU when its provider registers and the session builds there; otherwise the CPU if the
/// request allows a fallback (a model that fails on the CPU too fails with the CPU's error).
fn first_session(
    env: &Environment,
    model_bytes: &[u8],
    opts: &EngineOptions,
) -> Result<(Session, Placement), EngineError> {
    let Some(gpu) = opts.device.device.gpu() else {
        let cpu = Placement::cpu(ORT_CPU);
        return Ok((build_session(env, model_bytes, opts, &cpu)?, cpu));
    };
    let provider = match opts.device.device {
        Device::TensorRt(_) => ORT_TENSORRT,
        _ => ORT_CUDA,
    };
    let wanted = Placement {
        device: opts.device.device,
        provider: provider.to_string(),
        memory_budget_bytes: opts.device.memory_budget_bytes,
        fallback_reason: None,
    };
    let reason = match build_session(env, model_bytes, opts, &wanted) {
        Ok(session) => {
            tracing::info!(device = %wanted.device, provider, gpu, "model placed on the GPU");
            return Ok((session, wanted));
        }
        Err(e) => format!("{provider} on GPU {gpu}: {e}"),
    };
    opts.device.fall_back(reason.clone())?;
    let cpu = fell_back_to_cpu(&opts.device, ORT_CPU, reason);
    Ok((build_session(env, model_bytes, opts, &cpu)?, cpu))
}

/// One session on `placement`'s device. A GPU provider is registered with `error_on_failure`,
/// so a library without it, or without the CUDA libraries it needs, fails here instead of
/// quietly running on the CPU. The budget caps ONNX Runtime's CUDA memory arena, grown only
/// by what is asked for (not in powers of two), so the cap is what the model may hold.
fn build_session(
    env: &Environment,
    model_bytes: &[u8],
    opts: &EngineOptions,
    placement: &Placement,
) -> Result<Session, EngineError> {
    let model = |e: ort::Error| EngineError::Model(e.to_string());
    let mut builder = Session::builder(env)
        .map_err(model)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| model(e.into()))?;
    if opts.intra_op_threads > 0 {
        builder = builder
            .with_intra_threads(opts.intra_op_threads)
            .map_err(|e| model(e.into()))?;
    }
    let budget = placement
        .memory_budget_bytes
        .map(|b| usize::try_from(b).unwrap_or(usize::MAX));
    let cuda = |ordinal: u32| {
        let mut ep = ort::ep::CUDA::default()
            .with_device_id(i32::try_from(ordinal).unwrap_or(i32::MAX))
            .with_arena_extend_strategy(ort::ep::ArenaExtendStrategy::SameAsRequested);
        if let Some(limit) = budget {
            ep = ep.with_memory_limit(limit);
        }
        ep.build().error_on_failure()
    };
    let providers = match placement.device {
        Device::Cpu => Vec::new(),
        Device::Cuda(n) => vec![cuda(n)],
        Device::TensorRt(n) => {
            let mut trt =
                ort::ep::TensorRT::default().with_device_id(i32::try_from(n).unwrap_or(i32::MAX));
            if let Some(limit) = budget {
                trt = trt.with_max_workspace_size(limit);
            }
            vec![trt.build().error_on_failure(), cuda(n)]
        }
    };
    if !providers.is_empty() {
        builder = builder
            .with_execution_providers(providers)
            .map_err(|e| model(e.into()))?;
    }
    builder.commit_from_memory(model_bytes).map_err(model)
}

fn environment(onnxruntime_library: &Path) -> Result<Environment, EngineError> {
    let mut slot = lock(&ENVIRONMENT);
    if let Some(env) = slot.as_ref() {
        return Ok(env.clone());
    }
    load_library(onnxruntime_library)?;
    let env = ort::init()
        .with_name("warden")
        .with_telemetry(false)
        .build()
        .map_err(|e| EngineError::Model(format!("cannot create the environment: {e}")))?;
    *slot = Some(env.clone());
    Ok(env)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn names(specs: &[TensorSpec]) -> Vec<&str> {
    specs.iter().map(|s| s.name.as_str()).collect()
}

fn read_signature(session: &Session) -> Result<ModelSignature, EngineError> {
    let spec = |kind: &str, name: &str, ty: &ValueType| -> Result<TensorSpec, EngineError> {
        match ty {
            ValueType::Tensor { ty, shape, .. } => {
                let datatype = from_ort_type(*ty).ok_or_else(|| {
                    EngineError::Model(format!(
                        "{kind} {name:?} has element type {ty:?}, which this engine does not \
                         support (supported: {})",
                        supported()
                    ))
                })?;
                Ok(TensorSpec {
                    name: name.to_string(),
                    datatype,
                    shape: shape.iter().map(|&d| if d < 0 { -1 } else { d }).collect(),
                })
            }
            other => Err(EngineError::Model(format!(
                "{kind} {name:?} is a {other}, not a tensor; this engine serves tensors only"
            ))),
        }
    };
    Ok(ModelSignature {
        inputs: session
            .inputs()
            .iter()
            .map(|o| spec("input", o.name(), o.dtype()))
            .collect::<Result<_, _>>()?,
        outputs: session
            .outputs()
            .iter()
            .map(|o| spec("output", o.name(), o.dtype()))
            .collect::<Result<_, _>>()?,
    })
}

fn supported() -> String {
    DataType::ALL
        .iter()
        .map(|d| d.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn from_ort_type(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float16 => DataType::Fp16,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        _ => return None,
    })
}

/// Decodes little-endian elements; the caller has checked that the length is a multiple.
/// On a little-endian machine the wire's byte order is the machine's: one copy of the bytes
/// into a vector of elements (whatever the buffer's alignment), instead of one element at a
/// time (`large_tensors` bench).
fn decode<T: bytemuck::Pod, const N: usize>(data: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
    if cfg!(target_endian = "little") {
        return bytemuck::pod_collect_to_vec(data);
    }
    data.chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a)
        })
        .collect()
}

/// Encodes elements little-endian (one copy on a little-endian machine, as [`decode`]).
fn encode<T: bytemuck::Pod, const N: usize>(values: &[T], f: fn(T) -> [u8; N]) -> Vec<u8> {
    if cfg!(target_endian = "little") {
        return bytemuck::cast_slice(values).to_vec();
    }
    let mut out = Vec::with_capacity(values.len() * N);
    for &v in values {
        out.extend_from_slice(&f(v));
    }
    out
}

/// An output's bytes, little-endian: offered to `sink` first, else copied into a buffer of
/// their own (one copy either way on a little-endian machine).
fn output_bytes<T: bytemuck::Pod, const N: usize>(
    values: &[T],
    f: fn(T) -> [u8; N],
    sink: OutputSink<'_>,
) -> Bytes {
    if cfg!(target_endian = "little") {
        let raw: &[u8] = bytemuck::cast_slice(values);
        return sink(raw).unwrap_or_else(|| Bytes::copy_from_slice(raw));
    }
    let bytes = encode(values, f);
    sink(&bytes).unwrap_or_else(|| Bytes::from(bytes))
}

fn to_ort(t: &Tensor) -> Result<DynValue, EngineError> {
    let shape: Vec<i64> = t
        .shape
        .iter()
        .map(|&d| i64::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| {
            EngineError::InvalidInput(format!("input {:?}: dimension too large", t.name))
        })?;
    fn make<T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static>(
        shape: Vec<i64>,
        data: Vec<T>,
    ) -> Result<DynValue, EngineError> {
        ort::value::Tensor::from_array((shape, data))
            .map(|v| v.into_dyn())
            .map_err(|e| EngineError::Run(e.to_string()))
    }
    let d = &t.data[..];
    match t.dtype {
        DataType::Bool => {
            if let Some(pos) = d.iter().position(|&b| b > 1) {
                return Err(EngineError::InvalidInput(format!(
                    "input {:?}: BOOL element {pos} is {}, must be 0 or 1",
                    t.name, d[pos]
                )));
            }
            make(shape, d.iter().map(|&b| b == 1).collect::<Vec<bool>>())
        }
        DataType::Uint8 => make(shape, d.to_vec()),
        DataType::Int8 => make(shape, decode(d, i8::from_le_bytes)),
        DataType::Uint16 => make(shape, decode(d, u16::from_le_bytes)),
        DataType::Int16 => make(shape, decode(d, i16::from_le_bytes)),
        DataType::Uint32 => make(shape, decode(d, u32::from_le_bytes)),
        DataType::Int32 => make(shape, decode(d, i32::from_le_bytes)),
        DataType::Uint64 => make(shape, decode(d, u64::from_le_bytes)),
        DataType::Int64 => make(shape, decode(d, i64::from_le_bytes)),
        DataType::Fp16 => make(shape, decode(d, half::f16::from_le_bytes)),
        DataType::Fp32 => make(shape, decode(d, f32::from_le_bytes)),
        DataType::Fp64 => make(shape, decode(d, f64::from_le_bytes)),
    }
}

fn collect_outputs(
    produced: &mut SessionOutputs<'_>,
    wanted: &[&str],
    sink: OutputSink<'_>,
) -> Result<Vec<Tensor>, EngineError> {
    let mut result = Vec::with_capacity(wanted.len());
    for &name in wanted {
        let value = produced
            .remove(name)
            .ok_or_else(|| EngineError::Run(format!("the model produced no output {name:?}")))?;
        result.push(from_ort(name, &value, sink)?);
    }
    Ok(result)
}

fn from_ort(name: &str, value: &DynValue, sink: OutputSink<'_>) -> Result<Tensor, EngineError> {
    let ty = value.dtype().tensor_type().ok_or_else(|| {
        EngineError::Run(format!(
            "output {name:?} is a {}, not a tensor",
            value.dtype()
        ))
    })?;
    let dtype = from_ort_type(ty).ok_or_else(|| {
        EngineError::Run(format!(
            "output {name:?} has unsupported element type {ty:?}"
        ))
    })?;
    let err = |e: ort::Error| EngineError::Run(format!("output {name:?}: {e}"));
    fn extract<T: ort::value::PrimitiveTensorElementType>(
        value: &DynValue,
        err: impl Fn(ort::Error) -> EngineError,
    ) -> Result<(Vec<i64>, &[T]), EngineError> {
        let (shape, data) = value.try_extract_tensor::<T>().map_err(err)?;
        Ok((shape.iter().copied().collect(), data))
    }
    let (shape, data) = match dtype {
        DataType::Bool => {
            let (s, v) = extract::<bool>(value, err)?;
            (
                s,
                Bytes::from(v.iter().map(|&b| u8::from(b)).collect::<Vec<u8>>()),
            )
        }
        DataType::Uint8 => {
            let (s, v) = extract::<u8>(value, err)?;
            (s, output_bytes(v, u8::to_le_bytes, sink))
        }
        DataType::Int8 => {
            let (s, v) = extract::<i8>(value, err)?;
            (s, output_bytes(v, i8::to_le_bytes, sink))
        }
        DataType::Uint16 => {
            let (s, v) = extract::<u16>(value, err)?;
            (s, output_bytes(v, u16::to_le_bytes, sink))
        }
        DataType::Int16 => {
            let (s, v) = extract::<i16>(value, err)?;
            (s, output_bytes(v, i16::to_le_bytes, sink))
        }
        DataType::Uint32 => {
            let (s, v) = extract::<u32>(value, err)?;
            (s, output_bytes(v, u32::to_le_bytes, sink))
        }
        DataType::Int32 => {
            let (s, v) = extract::<i32>(value, err)?;
            (s, output_bytes(v, i32::to_le_bytes, sink))
        }
        DataType::Uint64 => {
            let (s, v) = extract::<u64>(value, err)?;
            (s, output_bytes(v, u64::to_le_bytes, sink))
        }
        DataType::Int64 => {
            let (s, v) = extract::<i64>(value, err)?;
            (s, output_bytes(v, i64::to_le_bytes, sink))
        }
        DataType::Fp16 => {
            let (s, v) = extract::<half::f16>(value, err)?;
            (s, output_bytes(v, half::f16::to_le_bytes, sink))
        }
        DataType::Fp32 => {
            let (s, v) = extract::<f32>(value, err)?;
            (s, output_bytes(v, f32::to_le_bytes, sink))
        }
        DataType::Fp64 => {
            let (s, v) = extract::<f64>(value, err)?;
            (s, output_bytes(v, f64::to_le_bytes, sink))
        }
    };
    let shape = shape
        .into_iter()
        .map(usize::try_from)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| EngineError::Run(format!("output {name:?} has a negative dimension")))?;
    Tensor::new(name, dtype, shape, data).map_err(|e| EngineError::Run(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::{EngineError, decode, encode, telemetry_off};

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

    /// The one-copy conversions give exactly what the element-by-element ones give, also from
    /// a buffer that is not aligned for the element type.
    #[test]
    fn conversions_match_the_element_by_element_ones() {
        let bytes: Vec<u8> = (0..4097u32).map(|i| (i * 7 + 3) as u8).collect();
        let unaligned = &bytes[1..];
        fn check<T: bytemuck::Pod + PartialEq + std::fmt::Debug, const N: usize>(
            data: &[u8],
            from: fn([u8; N]) -> T,
            to: fn(T) -> [u8; N],
        ) {
            let data = &data[..data.len() / N * N];
            let one_copy = decode(data, from);
            let each: Vec<T> = data
                .chunks_exact(N)
                .map(|c| from(c.try_into().unwrap()))
                .collect();
            assert!(
                one_copy
                    .iter()
                    .zip(&each)
                    .all(|(a, b)| a.to_bytes() == b.to_bytes())
                    && one_copy.len() == each.len()
            );
            let back: Vec<u8> = each.iter().flat_map(|&v| to(v)).collect();
            assert_eq!(encode(&one_copy, to), back);
            assert_eq!(back, data);
        }
        // Compare bit patterns, not values: NaNs are in these bytes.
        trait Bits {
            fn to_bytes(&self) -> Vec<u8>;
        }
        impl<T: bytemuck::Pod> Bits for T {
            fn to_bytes(&self) -> Vec<u8> {
                bytemuck::bytes_of(self).to_vec()
            }
        }
        check(unaligned, i8::from_le_bytes, i8::to_le_bytes);
        check(unaligned, u16::from_le_bytes, u16::to_le_bytes);
        check(unaligned, i16::from_le_bytes, i16::to_le_bytes);
        check(unaligned, u32::from_le_bytes, u32::to_le_bytes);
        check(unaligned, i32::from_le_bytes, i32::to_le_bytes);
        check(unaligned, u64::from_le_bytes, u64::to_le_bytes);
        check(unaligned, i64::from_le_bytes, i64::to_le_bytes);
        check(unaligned, half::f16::from_le_bytes, half::f16::to_le_bytes);
        check(unaligned, f32::from_le_bytes, f32::to_le_bytes);
        check(unaligned, f64::from_le_bytes, f64::to_le_bytes);
    }
}
