//! A BERT sequence classifier (`BertForSequenceClassification`) on `candle-core` + `candle-nn`,
//! loaded from a checked safetensors file with the Hugging Face tensor names.
//!
//! Sizes come from the tensors' shapes: vocabulary and hidden size
//! (`bert.embeddings.word_embeddings.weight`), maximum positions, token types, layers
//! (`bert.encoder.layer.N.*`, numbered from 0 without gaps), intermediate size, labels
//! (`classifier.weight`). What shapes cannot tell is read from the file's `__metadata__`:
//! `architecture` (must be `BertForSequenceClassification`), `num_attention_heads`,
//! `layer_norm_eps` and `hidden_act` (`gelu`, the erf form BERT uses). Keeping these in the
//! file itself means the one SHA-256 the worker checks before its sandbox, and the bundle
//! signature, cover every byte the model is built from.
//!
//! Every tensor must be present with dtype F32 and the shape the configuration implies;
//! a tensor the classifier does not use is refused (it would mean another architecture),
//! except `bert.embeddings.position_ids`, a buffer older checkpoints carry.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, Linear};

use super::safetensors::{Dtype, SafeTensors};

/// The value of `architecture` this module serves.
pub const ARCHITECTURE: &str = "BertForSequenceClassification";

/// Added to the attention scores of masked positions (`torch.finfo(float32).min`, as
/// `transformers` does): their softmax weight is exactly zero.
pub const MASKED: f32 = f32::MIN;

const REQUIRED_METADATA: &str = "architecture, num_attention_heads, layer_norm_eps, hidden_act";

/// Why a file is not a BERT classifier this module can serve.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BertError {
    #[error(
        "the safetensors header has no __metadata__; a BERT classifier needs {REQUIRED_METADATA}"
    )]
    NoMetadata,
    #[error("metadata {key:?} is missing (a BERT classifier needs {REQUIRED_METADATA})")]
    MissingMetadata { key: &'static str },
    #[error("metadata {key:?}: {reason}")]
    Metadata { key: &'static str, reason: String },
    #[error("tensor {0:?} is missing")]
    MissingTensor(String),
    #[error("tensor {name:?} has dtype {dtype}, expected F32")]
    Dtype { name: String, dtype: Dtype },
    #[error("tensor {name:?} has shape {actual:?}, expected {expected:?}")]
    Shape {
        name: String,
        actual: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("tensor {0:?} is not part of a BERT sequence classifier")]
    Unexpected(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("candle: {0}")]
    Candle(String),
}

impl From<candle_core::Error> for BertError {
    fn from(e: candle_core::Error) -> Self {
        BertError::Candle(e.to_string())
    }
}

/// The hidden activation of the feed-forward blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x · Φ(x)` with the exact normal CDF (erf), `hidden_act = "gelu"`.
    GeluErf,
}

/// The network's sizes and hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub max_positions: usize,
    pub type_vocab_size: usize,
    pub num_labels: usize,
    pub layer_norm_eps: f64,
    pub activation: Activation,
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// The loaded classifier. Immutable after loading: any number of threads may run it at once.
pub struct BertClassifier {
    config: BertConfig,
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    pooler: Linear,
    classifier: Linear,
}

impl std::fmt::Debug for BertClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertClassifier")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Takes tensors out of the file by name, checking dtype and shape, and remembers what was
/// taken so that leftovers can be refused.
struct Weights<'a, 'b> {
    file: &'b SafeTensors<'a>,
    taken: BTreeSet<&'b str>,
}

impl<'a, 'b> Weights<'a, 'b> {
    fn shape_of(&self, name: &str) -> Result<&'b [usize], BertError> {
        self.file
            .tensors
            .get(name)
            .map(|t| t.shape.as_slice())
            .ok_or_else(|| BertError::MissingTensor(name.to_string()))
    }

    fn tensor(&mut self, name: &str, expected: &[usize]) -> Result<Tensor, BertError> {
        let Some((key, view)) = self.file.tensors.get_key_value(name) else {
            return Err(BertError::MissingTensor(name.to_string()));
        };
        if view.dtype != Dtype::F32 {
            return Err(BertError::Dtype {
                name: name.to_string(),
                dtype: view.dtype,
            });
        }
        if view.shape != expected {
            return Err(BertError::Shape {
                name: name.to_string(),
                actual: view.shape.clone(),
                expected: expected.to_vec(),
            });
        }
        self.taken.insert(key.as_str());
        let values: Vec<f32> = view
            .data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Tensor::from_vec(values, expected, &Device::Cpu)?)
    }

    fn linear(&mut self, prefix: &str, out: usize, inp: usize) -> Result<Linear, BertError> {
        let w = self.tensor(&format!("{prefix}.weight"), &[out, inp])?;
        let b = self.tensor(&format!("{prefix}.bias"), &[out])?;
        Ok(Linear::new(w, Some(b)))
    }

    fn layer_norm(&mut self, prefix: &str, size: usize, eps: f64) -> Result<LayerNorm, BertError> {
        let w = self.tensor(&format!("{prefix}.weight"), &[size])?;
        let b = self.tensor(&format!("{prefix}.bias"), &[size])?;
        Ok(LayerNorm::new(w, b, eps))
    }
}

fn metadata<'m>(
    meta: &'m BTreeMap<String, String>,
    key: &'static str,
) -> Result<&'m str, BertError> {
    meta.get(key)
        .map(String::as_str)
        .ok_or(BertError::MissingMetadata { key })
}

fn dims2(shape: &[usize], name: &str) -> Result<(usize, usize), BertError> {
    match *shape {
        [a, b] if a > 0 && b > 0 => Ok((a, b)),
        _ => Err(BertError::Config(format!(
            "tensor {name:?} has shape {shape:?}, expected two non-zero dimensions"
        ))),
    }
}

impl BertClassifier {
    /// Builds the classifier from a checked safetensors file.
    pub fn load(file: &SafeTensors<'_>) -> Result<BertClassifier, BertError> {
        let config = Self::read_config(file)?;
        let c = &config;
        let (h, eps) = (c.hidden_size, c.layer_norm_eps);
        let mut w = Weights {
            file,
            taken: BTreeSet::new(),
        };
        let word_embeddings =
            w.tensor("bert.embeddings.word_embeddings.weight", &[c.vocab_size, h])?;
        let position_embeddings = w.tensor(
            "bert.embeddings.position_embeddings.weight",
            &[c.max_positions, h],
        )?;
        let token_type_embeddings = w.tensor(
            "bert.embeddings.token_type_embeddings.weight",
            &[c.type_vocab_size, h],
        )?;
        let embedding_norm = w.layer_norm("bert.embeddings.LayerNorm", h, eps)?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for n in 0..c.num_layers {
            let p = format!("bert.encoder.layer.{n}");
            layers.push(Layer {
                query: w.linear(&format!("{p}.attention.self.query"), h, h)?,
                key: w.linear(&format!("{p}.attention.self.key"), h, h)?,
                value: w.linear(&format!("{p}.attention.self.value"), h, h)?,
                attention_out: w.linear(&format!("{p}.attention.output.dense"), h, h)?,
                attention_norm: w.layer_norm(&format!("{p}.attention.output.LayerNorm"), h, eps)?,
                intermediate: w.linear(
                    &format!("{p}.intermediate.dense"),
                    c.intermediate_size,
                    h,
                )?,
                output: w.linear(&format!("{p}.output.dense"), h, c.intermediate_size)?,
                output_norm: w.layer_norm(&format!("{p}.output.LayerNorm"), h, eps)?,
            });
        }
        let pooler = w.linear("bert.pooler.dense", h, h)?;
        let classifier = w.linear("classifier", c.num_labels, h)?;
        if let Some(extra) = file
            .tensors
            .keys()
            .find(|k| !w.taken.contains(k.as_str()) && k.as_str() != "bert.embeddings.position_ids")
        {
            return Err(BertError::Unexpected(extra.clone()));
        }
        Ok(BertClassifier {
            config,
            word_embeddings,
            position_embeddings,
            token_type_embeddings,
            embedding_norm,
            layers,
            pooler,
            classifier,
        })
    }

    /// Reads the configuration from the metadata and the tensors' shapes.
    fn read_config(file: &SafeTensors<'_>) -> Result<BertConfig, BertError> {
        let meta = file.metadata.as_ref().ok_or(BertError::NoMetadata)?;
        let architecture = metadata(meta, "architecture")?;
        if architecture != ARCHITECTURE {
            return Err(BertError::Metadata {
                key: "architecture",
                reason: format!(
                    "{architecture:?} is not served by this engine (it serves {ARCHITECTURE:?})"
                ),
            });
        }
        let num_heads = metadata(meta, "num_attention_heads")?
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| BertError::Metadata {
                key: "num_attention_heads",
                reason: "not a positive integer".into(),
            })?;
        let layer_norm_eps = metadata(meta, "layer_norm_eps")?
            .parse::<f64>()
            .ok()
            .filter(|e| e.is_finite() && *e > 0.0 && *e < 1.0)
            .ok_or_else(|| BertError::Metadata {
                key: "layer_norm_eps",
                reason: "not a number in (0, 1)".into(),
            })?;
        let activation = match metadata(meta, "hidden_act")? {
            "gelu" => Activation::GeluErf,
            other => {
                return Err(BertError::Metadata {
                    key: "hidden_act",
                    reason: format!("{other:?} is not supported (supported: \"gelu\")"),
                });
            }
        };

        let w = Weights {
            file,
            taken: BTreeSet::new(),
        };
        let name = "bert.embeddings.word_embeddings.weight";
        let (vocab_size, hidden_size) = dims2(w.shape_of(name)?, name)?;
        let name = "bert.embeddings.position_embeddings.weight";
        let (max_positions, _) = dims2(w.shape_of(name)?, name)?;
        let name = "bert.embeddings.token_type_embeddings.weight";
        let (type_vocab_size, _) = dims2(w.shape_of(name)?, name)?;
        let name = "bert.encoder.layer.0.intermediate.dense.weight";
        let (intermediate_size, _) = dims2(w.shape_of(name)?, name)?;
        let name = "classifier.weight";
        let (num_labels, _) = dims2(w.shape_of(name)?, name)?;
        let num_layers = (0..)
            .take_while(|n| {
                let prefix = format!("bert.encoder.layer.{n}.");
                file.tensors.keys().any(|k| k.starts_with(&prefix))
            })
            .count();
        if hidden_size % num_heads != 0 {
            return Err(BertError::Config(format!(
                "hidden size {hidden_size} is not a multiple of num_attention_heads {num_heads}"
            )));
        }
        if u32::try_from(vocab_size).is_err() || u32::try_from(type_vocab_size).is_err() {
            return Err(BertError::Config("vocabulary larger than 2^32".into()));
        }
        Ok(BertConfig {
            vocab_size,
            hidden_size,
            num_layers,
            num_heads,
            intermediate_size,
            max_positions,
            type_vocab_size,
            num_labels,
            layer_norm_eps,
            activation,
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Logits `[batch, num_labels]`. `ids` and `type_ids` are U32 `[batch, seq]`, already checked
    /// against the vocabularies; `mask` is F32 `[batch, 1, 1, seq]`, 0 where a token is attended
    /// and [`MASKED`] where it is padding; `seq` is at most `max_positions`.
    pub fn forward(
        &self,
        ids: &Tensor,
        type_ids: &Tensor,
        mask: &Tensor,
    ) -> Result<Tensor, BertError> {
        let c = &self.config;
        let (batch, seq) = ids.dims2()?;
        let h = c.hidden_size;
        let heads = c.num_heads;
        let head_dim = h / heads;

        let word = self
            .word_embeddings
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((batch, seq, h))?;
        let types = self
            .token_type_embeddings
            .index_select(&type_ids.flatten_all()?, 0)?
            .reshape((batch, seq, h))?;
        let positions = self.position_embeddings.narrow(0, 0, seq)?;
        let x = word.broadcast_add(&positions)?.add(&types)?;
        let mut x = self.embedding_norm.forward(&x)?;

        let scale = 1.0 / (head_dim as f64).sqrt();
        for layer in &self.layers {
            let split = |t: Tensor| -> Result<Tensor, BertError> {
                Ok(t.reshape((batch, seq, heads, head_dim))?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            let q = split(layer.query.forward(&x)?)?;
            let k = split(layer.key.forward(&x)?)?;
            let v = split(layer.value.forward(&x)?)?;
            let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(mask)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let context = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((batch, seq, h))?;
            let attended = layer.attention_out.forward(&context)?.add(&x)?;
            let attended = layer.attention_norm.forward(&attended)?;
            let inner = layer.intermediate.forward(&attended)?;
            let inner = match c.activation {
                Activation::GeluErf => inner.gelu_erf()?,
            };
            let out = layer.output.forward(&inner)?.add(&attended)?;
            x = layer.output_norm.forward(&out)?;
        }

        let first = x.narrow(1, 0, 1)?.squeeze(1)?.contiguous()?;
        let pooled = self.pooler.forward(&first)?.tanh()?;
        let logits = self.classifier.forward(&pooled)?;
        if logits.dtype() != DType::F32 || logits.dims() != [batch, c.num_labels] {
            return Err(BertError::Candle(format!(
                "unexpected logits {:?} {:?}",
                logits.dtype(),
                logits.dims()
            )));
        }
        Ok(logits)
    }
}
