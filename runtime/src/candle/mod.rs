//! The candle engine: safetensors models run with `candle-core` + `candle-nn` on the CPU.
//!
//! Today it serves one architecture, a BERT sequence classifier ([`bert`], Hugging Face
//! `BertForSequenceClassification` tensor names and hyper-parameters in the file's
//! `__metadata__`), read through a strict safetensors parser ([`safetensors`]).
//!
//! Its signature, as the agent sees it:
//! - `input_ids`, `attention_mask`: INT64 `[-1, -1]`; `token_type_ids`: INT64 `[-1, -1]`, declared
//!   only when the model has more than one token type (with one, every id would be 0, so it is
//!   not asked for);
//! - `logits`: FP32 `[-1, num_labels]`.
//!
//! Every input is checked before anything runs, and a bad one is an
//! [`CandleError::InvalidInput`] naming the position, never the value (no payload in errors or
//! logs): names, datatypes, rank 2 and one shape for all inputs, the batch bound
//! ([`MAX_BATCH`]), the sequence within `max_positions`, the memory bound
//! ([`MAX_LAYER_ELEMENTS`]), ids within the vocabularies, mask values 0 or 1 and at least one
//! attended token per row.
//!
//! Threads: the engine owns a rayon pool of `threads` threads (0: one per core) and runs every
//! inference inside it, so candle's parallel kernels stay within it. The pool is created by
//! [`CandleEngine::load`], which the worker calls inside its sandbox (threads must come after
//! the user namespace). The weights are immutable: `run` takes `&self` and calls may overlap.
//!
//! GPU: [`CandleEngine::load_on`] puts the weights and the work on a CUDA device in a build
//! with the `candle-cuda` feature (`hw-tests/candle-cuda.sh`: candle's kernels compiled by
//! `nvcc` from CUDA 13.0's PyPI wheels). The default build has candle's CPU backend only.

pub mod bert;
pub mod safetensors;

use std::collections::HashSet;

use bytes::Bytes;
use candle_core::{Device, Tensor as CandleTensor};

use bert::{BertClassifier, BertError, MASKED};
use safetensors::SafetensorsError;
use warden_runtime_client::tensor::{DataType, ModelSignature, Tensor, TensorSpec, byte_len};

/// The most rows one inference may hold.
pub const MAX_BATCH: usize = 1024;

/// The most elements the largest tensor of one layer may hold: the attention scores
/// (`batch × heads × seq × seq`) and the feed-forward activations (`batch × seq ×
/// intermediate`), FP32: 2^26, i.e. 256 MiB each. Bounds the memory a request can make the
/// worker allocate (a layer holds a few such tensors at once); a bigger request is refused as
/// invalid input before anything is allocated, rather than running into the sandbox's memory
/// limit. For BERT-base (12 heads, intermediate 3072) that is 21 rows of 512 tokens.
pub const MAX_LAYER_ELEMENTS: usize = 1 << 26;

/// What went wrong in the candle engine.
#[derive(Debug, thiserror::Error)]
pub enum CandleError {
    /// The file is not well-formed safetensors.
    #[error("cannot load model: malformed safetensors: {0}")]
    Format(#[from] SafetensorsError),
    /// The file is well-formed but not a model this engine serves.
    #[error("cannot load model: {0}")]
    Model(#[from] BertError),
    /// The thread pool could not be created.
    #[error("cannot start the engine's threads: {0}")]
    Threads(String),
    /// The request does not fit the model; nothing was run.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// candle failed on a valid input.
    #[error("inference failed: {0}")]
    Run(String),
}

const INPUT_IDS: &str = "input_ids";
const ATTENTION_MASK: &str = "attention_mask";
const TOKEN_TYPE_IDS: &str = "token_type_ids";
const LOGITS: &str = "logits";

/// A candle model ready to serve. See the module documentation.
pub struct CandleEngine {
    model: BertClassifier,
    signature: ModelSignature,
    pool: rayon::ThreadPool,
    device: Device,
}

impl std::fmt::Debug for CandleEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CandleEngine")
            .field("model", &self.model)
            .field("signature", &self.signature)
            .finish_non_exhaustive()
    }
}

/// Validated inputs, ready for candle.
struct Batch {
    batch: usize,
    seq: usize,
    ids: Vec<u32>,
    type_ids: Vec<u32>,
    mask: Vec<f32>,
}

impl CandleEngine {
    /// Parses and checks the safetensors bytes, builds the model and a pool of `threads`
    /// threads (0: one per core).
    pub fn load(model_bytes: &[u8], threads: usize) -> Result<CandleEngine, CandleError> {
        Self::load_on(model_bytes, threads, &Device::Cpu)
    }

    /// [`CandleEngine::load`] with the weights and the work on `device` (a CUDA device needs
    /// a `candle-cuda` build).
    pub fn load_on(
        model_bytes: &[u8],
        threads: usize,
        device: &Device,
    ) -> Result<CandleEngine, CandleError> {
        let file = safetensors::parse(model_bytes)?;
        let model = BertClassifier::load(&file, device)?;
        let config = model.config();
        let spec = |name: &str| TensorSpec {
            name: name.to_string(),
            datatype: DataType::Int64,
            shape: vec![-1, -1],
        };
        let mut inputs = vec![spec(INPUT_IDS), spec(ATTENTION_MASK)];
        if config.type_vocab_size > 1 {
            inputs.push(spec(TOKEN_TYPE_IDS));
        }
        let labels = i64::try_from(config.num_labels)
            .map_err(|_| CandleError::Model(BertError::Config("too many labels".into())))?;
        let signature = ModelSignature {
            inputs,
            outputs: vec![TensorSpec {
                name: LOGITS.to_string(),
                datatype: DataType::Fp32,
                shape: vec![-1, labels],
            }],
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|n| format!("candle-{n}"))
            .build()
            .map_err(|e| CandleError::Threads(e.to_string()))?;
        Ok(CandleEngine {
            model,
            signature,
            pool,
            device: device.clone(),
        })
    }

    /// The model's inputs and outputs.
    pub fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    /// The model's configuration.
    pub fn config(&self) -> &bert::BertConfig {
        self.model.config()
    }

    /// Runs the classifier. `outputs`: empty or `["logits"]`.
    pub fn run(&self, inputs: &[Tensor], outputs: &[String]) -> Result<Vec<Tensor>, CandleError> {
        let batch = self.prepare(inputs, outputs)?;
        let logits = self.pool.install(|| self.forward(&batch))?;
        let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
        let tensor = Tensor::new(
            LOGITS,
            DataType::Fp32,
            vec![batch.batch, self.model.config().num_labels],
            Bytes::from(bytes),
        )
        .map_err(|e| CandleError::Run(e.to_string()))?;
        Ok(vec![tensor])
    }

    fn forward(&self, b: &Batch) -> Result<Vec<f32>, CandleError> {
        let run = |e: candle_core::Error| CandleError::Run(e.to_string());
        let device = &self.device;
        let ids = CandleTensor::from_slice(&b.ids, (b.batch, b.seq), device).map_err(run)?;
        let type_ids =
            CandleTensor::from_slice(&b.type_ids, (b.batch, b.seq), device).map_err(run)?;
        let mask =
            CandleTensor::from_slice(&b.mask, (b.batch, 1, 1, b.seq), device).map_err(run)?;
        let logits = self
            .model
            .forward(&ids, &type_ids, &mask)
            .map_err(|e| CandleError::Run(e.to_string()))?;
        logits
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(run)
    }

    fn prepare(&self, inputs: &[Tensor], outputs: &[String]) -> Result<Batch, CandleError> {
        let invalid = |m: String| Err(CandleError::InvalidInput(m));
        let mut asked = HashSet::new();
        for name in outputs {
            if name != LOGITS {
                return invalid(format!(
                    "unknown output {name:?}; the model's outputs are [\"{LOGITS}\"]"
                ));
            }
            if !asked.insert(name) {
                return invalid(format!("output {name:?} asked for more than once"));
            }
        }

        let declared: Vec<&str> = self
            .signature
            .inputs
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        let mut seen: Vec<&Tensor> = Vec::with_capacity(declared.len());
        for t in inputs {
            if !declared.contains(&t.name.as_str()) {
                return invalid(format!(
                    "unknown input {:?}; the model's inputs are {declared:?}",
                    t.name
                ));
            }
            if seen.iter().any(|s| s.name == t.name) {
                return invalid(format!("input {:?} given more than once", t.name));
            }
            if t.dtype != DataType::Int64 {
                return invalid(format!(
                    "input {:?} has datatype {}, the model expects INT64",
                    t.name, t.dtype
                ));
            }
            if t.shape.len() != 2 {
                return invalid(format!(
                    "input {:?} has shape {:?}, the model expects [batch, sequence]",
                    t.name, t.shape
                ));
            }
            if byte_len(t.dtype, &t.shape) != Some(t.data.len()) {
                return invalid(format!(
                    "input {:?}: shape {:?} does not match its {} bytes",
                    t.name,
                    t.shape,
                    t.data.len()
                ));
            }
            if let Some(first) = seen.first()
                && first.shape != t.shape
            {
                return invalid(format!(
                    "input {:?} has shape {:?} but {:?} has shape {:?}: they must agree",
                    t.name, t.shape, first.name, first.shape
                ));
            }
            seen.push(t);
        }
        if let Some(missing) = declared
            .iter()
            .find(|d| !seen.iter().any(|s| s.name == **d))
        {
            return invalid(format!("missing input {missing:?}"));
        }
        let find = |name: &str| seen.iter().find(|s| s.name == name).copied();

        let config = self.model.config();
        let (batch, seq) = match seen.first().map(|t| t.shape.as_slice()) {
            Some(&[b, s]) => (b, s),
            _ => return invalid("no input".to_string()),
        };
        if batch == 0 || seq == 0 {
            return invalid(format!("empty input: shape [{batch}, {seq}]"));
        }
        if batch > MAX_BATCH {
            return invalid(format!(
                "batch of {batch} rows exceeds the limit of {MAX_BATCH}"
            ));
        }
        if seq > config.max_positions {
            return invalid(format!(
                "sequence length {seq} exceeds the model's {} positions",
                config.max_positions
            ));
        }
        let elements = |dims: [usize; 4]| dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let scores = elements([batch, config.num_heads, seq, seq]);
        let activations = elements([batch, seq, config.intermediate_size, 1]);
        if [scores, activations]
            .iter()
            .any(|n| n.is_none_or(|n| n > MAX_LAYER_ELEMENTS))
        {
            return invalid(format!(
                "batch {batch} × sequence {seq} needs more memory than one inference may \
                 use; send fewer rows or shorter sequences"
            ));
        }

        let ids = match find(INPUT_IDS) {
            Some(t) => ids_within(t, config.vocab_size, seq)?,
            None => return invalid(format!("missing input {INPUT_IDS:?}")),
        };
        let type_ids = match find(TOKEN_TYPE_IDS) {
            Some(t) => ids_within(t, config.type_vocab_size, seq)?,
            None => vec![0; batch * seq],
        };
        let Some(mask_input) = find(ATTENTION_MASK) else {
            return invalid(format!("missing input {ATTENTION_MASK:?}"));
        };
        let mut mask = Vec::with_capacity(batch * seq);
        for (i, v) in int64s(mask_input).enumerate() {
            match v {
                1 => mask.push(0.0),
                0 => mask.push(MASKED),
                _ => {
                    return invalid(format!(
                        "{ATTENTION_MASK} row {}, position {}: values must be 0 or 1",
                        i / seq,
                        i % seq
                    ));
                }
            }
        }
        if let Some(row) = mask
            .chunks_exact(seq)
            .position(|r| r.iter().all(|&m| m != 0.0))
        {
            return invalid(format!("{ATTENTION_MASK} row {row} attends to no token"));
        }
        Ok(Batch {
            batch,
            seq,
            ids,
            type_ids,
            mask,
        })
    }
}

fn int64s(t: &Tensor) -> impl Iterator<Item = i64> + '_ {
    t.data.chunks_exact(8).map(|c| {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        i64::from_le_bytes(a)
    })
}

/// The ids of `t` as u32, each checked to lie in `0..limit`.
fn ids_within(t: &Tensor, limit: usize, seq: usize) -> Result<Vec<u32>, CandleError> {
    int64s(t)
        .enumerate()
        .map(|(i, v)| {
            usize::try_from(v)
                .ok()
                .filter(|&v| v < limit)
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| {
                    CandleError::InvalidInput(format!(
                        "{} row {}, position {}: id outside 0..{limit}",
                        t.name,
                        i / seq,
                        i % seq
                    ))
                })
        })
        .collect()
}
