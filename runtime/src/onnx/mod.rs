//! ONNX Runtime through `ort`, loaded dynamically: [`OrtEngine`] runs one `.onnx` model.
//!
//! Concurrency: `ort::session::Session::run` takes `&mut self` in 2.0.0-rc.15 (ONNX Runtime's
//! execution providers keep state that is not thread safe), so one session serves one call at a
//! time. [`OrtEngine`] therefore holds a **pool of sessions** ([`EngineOptions::sessions`]), each
//! built from the same model bytes: a call checks a session out (waiting on a condition
//! variable when all are busy), runs, and checks it back in. `OrtEngine` is `Send + Sync` and
//! `run` takes `&self`, so it can be shared by any number of threads; at most `sessions` calls
//! run at once. Each session holds its own copy of the weights: size the pool with that in mind.
//!
//! - [`library`]: loading the library (telemetry off first) and, for a GPU worker, the CUDA
//!   libraries before the sandbox hides them.
//! - `convert`: tensors to and from ONNX Runtime's values.

mod convert;
pub mod library;

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{OutputSelector, RunOptions, Session, SessionInputValue};
use ort::value::ValueType;
use warden_runtime_client::device::{Device, Placement};
use warden_runtime_client::tensor::{ModelSignature, Tensor, TensorSpec, byte_len};

use crate::engine::error::EngineError;
use crate::engine::options::{EngineOptions, OutputSink};
use crate::engine::placement::fell_back_to_cpu;
use convert::{collect_outputs, from_ort_type, supported, to_ort};
pub use library::{find_soname, load_library, preload_gpu_libraries};

/// ONNX Runtime's provider names.
const ORT_CPU: &str = "CPUExecutionProvider";
const ORT_CUDA: &str = "CUDAExecutionProvider";
const ORT_TENSORRT: &str = "TensorrtExecutionProvider";

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

    /// Where the model runs.
    pub fn placement(&self) -> &Placement {
        &self.placement
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
                .unwrap_or_else(PoisonError::into_inner);
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
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
