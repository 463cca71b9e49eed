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
//! The layers are candle-nn's (`Linear`, `LayerNorm`, softmax) except one fused kernel of our
//! own, `BiasGelu`: the feed-forward bias and erf-GELU in one pass over the largest
//! activation (15–20% of the time on a hidden-256 model in `benches/engines.rs`); the ONNX
//! Runtime comparison in `tests/candle.rs` holds it to 1e-4.
//!
//! Every tensor must be present with dtype F32 and the shape the configuration implies;
//! a tensor the classifier does not use is refused (it would mean another architecture),
//! except `bert.embeddings.position_ids`, a buffer older checkpoints carry.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Module, Shape, Tensor};
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
    /// `[intermediate, hidden]` and `[intermediate]`: applied by [`BiasGelu`] after the product.
    intermediate_weight: Tensor,
    intermediate_bias: Tensor,
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
    /// Where the weights go (the CPU, or a CUDA device in a `candle-cuda` build).
    device: Device,
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
        Ok(Tensor::from_vec(values, expected, &self.device)?)
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
    /// Builds the classifier from a checked safetensors file, its weights on `device`.
    pub fn load(file: &SafeTensors<'_>, device: &Device) -> Result<BertClassifier, BertError> {
        let config = Self::read_config(file)?;
        let c = &config;
        let (h, eps) = (c.hidden_size, c.layer_norm_eps);
        let mut w = Weights {
            file,
            taken: BTreeSet::new(),
            device: device.clone(),
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
                intermediate_weight: w.tensor(
                    &format!("{p}.intermediate.dense.weight"),
                    &[c.intermediate_size, h],
                )?,
                intermediate_bias: w.tensor(
                    &format!("{p}.intermediate.dense.bias"),
                    &[c.intermediate_size],
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
            device: Device::Cpu,
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
        // Layers 0, 1, … as long as they run without a gap (one pass over the names: a header
        // may hold many entries). Tensors of a layer after a gap are refused as unexpected.
        let present: BTreeSet<usize> = file
            .tensors
            .keys()
            .filter_map(|k| {
                k.strip_prefix("bert.encoder.layer.")?
                    .split('.')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        let num_layers = (0..).take_while(|n| present.contains(n)).count();
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
            // The feed-forward block's product, then its bias and GELU in one pass.
            let inner = attended
                .reshape((batch * seq, h))?
                .matmul(&layer.intermediate_weight.t()?)?;
            let inner = match c.activation {
                Activation::GeluErf => {
                    inner.apply_op2_no_bwd(&layer.intermediate_bias, &BiasGelu)?
                }
            }
            .reshape((batch, seq, c.intermediate_size))?;
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

/// `gelu(x + bias)` over the last dimension in one pass (candle would make two: a broadcast
/// add, then `gelu_erf`, each with its own output buffer), with [`erf`] below.
struct BiasGelu;

impl CustomOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "bias-gelu-erf"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(bias)) = (x, bias) else {
            candle_core::bail!("bias-gelu-erf: F32 tensors only")
        };
        let (Some(x), Some(bias)) = (contiguous(x, x_layout), contiguous(bias, bias_layout)) else {
            candle_core::bail!("bias-gelu-erf: contiguous tensors only")
        };
        let n = bias.len();
        if n == 0 || x_layout.dims().last() != Some(&n) || bias_layout.dims().len() != 1 {
            candle_core::bail!("bias-gelu-erf: the bias must match the last dimension")
        }
        let out = x
            .chunks_exact(n)
            .flat_map(|row| row.iter().zip(bias).map(|(&v, &b)| gelu(v + b)))
            .collect();
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }
}

/// The elements of a contiguous tensor; `None` for a strided one.
fn contiguous<'a>(v: &'a [f32], layout: &Layout) -> Option<&'a [f32]> {
    layout
        .contiguous_offsets()
        .and_then(|(start, end)| v.get(start..end))
}

/// GELU with the normal CDF: `x · (1 + erf(x / √2)) / 2`.
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// erf in FP32: a Taylor series below 0.5 (where `1 − …` below would cancel), Abramowitz &
/// Stegun 7.1.26 above (1.5·10⁻⁷ before rounding); within 4·10⁻⁷ of erf everywhere (a few
/// FP32 ulps; the test below measures it), with one `exp` and two short polynomials, several
/// times faster than the branchy libm `erff`. In GELU that is an error below 2·10⁻⁷·|x|.
fn erf(x: f32) -> f32 {
    let a = x.abs();
    if a < 0.5 {
        let x2 = x * x;
        // 2/√π · (x − x³/3 + x⁵/10 − x⁷/42 + x⁹/216 − x¹¹/1320); the next term is < 1.1·10⁻⁸.
        let series = 1.0
            + x2 * (-1.0 / 3.0
                + x2 * (1.0 / 10.0 + x2 * (-1.0 / 42.0 + x2 * (1.0 / 216.0 - x2 / 1320.0))));
        return std::f32::consts::FRAC_2_SQRT_PI * x * series;
    }
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_8) * t - 0.284_496_74) * t
        + 0.254_829_6)
        * t;
    (1.0 - poly * (-a * a).exp()).copysign(x)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn erf_is_within_4e_minus_7_of_the_f64_reference() {
        let mut worst = 0f64;
        for i in -60_000..=60_000 {
            let x = i as f32 / 10_000.0;
            let reference = candle_core::cpu::erf::erf_f64(f64::from(x));
            worst = worst.max((f64::from(erf(x)) - reference).abs());
        }
        assert!(worst < 4e-7, "worst error {worst}");
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(-3.0), -erf(3.0));
        assert_eq!(erf(f32::INFINITY), 1.0);
    }

    #[test]
    fn bias_gelu_matches_candles_two_ops() {
        let x = Tensor::from_vec(
            (0..24).map(|i| (i as f32 - 12.0) / 3.0).collect::<Vec<_>>(),
            (4, 6),
            &Device::Cpu,
        )
        .unwrap();
        let b =
            Tensor::from_vec(vec![0.5f32, -1.0, 0.0, 2.0, -0.25, 1.5], 6, &Device::Cpu).unwrap();
        let fused: Vec<f32> = x
            .apply_op2_no_bwd(&b, &BiasGelu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let two: Vec<f32> = x
            .broadcast_add(&b)
            .unwrap()
            .gelu_erf()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, e) in fused.iter().zip(&two) {
            assert!((a - e).abs() <= 1e-6 * e.abs().max(1.0), "{a} vs {e}");
        }
        // A bias that does not match the last dimension, and a strided input, are refused.
        let short = Tensor::from_vec(vec![1f32; 4], 4, &Device::Cpu).unwrap();
        assert!(x.apply_op2_no_bwd(&short, &BiasGelu).is_err());
        assert!(x.t().unwrap().apply_op2_no_bwd(&short, &BiasGelu).is_err());
    }
}
