//! Checks a decoded request against the model's declared signature — names, datatypes and shapes —
//! and the configured value ranges, so that nothing malformed reaches a worker. Messages name the
//! tensor and what the model declares; they are returned to the client.

use crate::config::InputRange;
use crate::inference::codec::RequestedOutput;
use warden_runtime_client::tensor::{DataType, ModelSignature, Tensor};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ValidationError {
    #[error("unknown input {name:?}; the model's inputs are {expected:?}")]
    UnknownInput { name: String, expected: Vec<String> },
    #[error("missing input {name:?}")]
    MissingInput { name: String },
    #[error("input {name:?} is {actual}, the model expects {expected}")]
    DataType {
        name: String,
        actual: String,
        expected: String,
    },
    #[error("input {name:?} has shape {actual:?}, the model expects {expected:?} (-1 is any size)")]
    Shape {
        name: String,
        actual: Vec<usize>,
        expected: Vec<i64>,
    },
    #[error("input {name:?} is empty")]
    Empty { name: String },
    #[error("unknown output {name:?}; the model's outputs are {expected:?}")]
    UnknownOutput { name: String, expected: Vec<String> },
    #[error("inputs disagree on the batch size: {first} and {other}")]
    Batch { first: usize, other: usize },
    #[error("input {name:?} has a value outside its declared range [{min}, {max}]")]
    Range { name: String, min: f64, max: f64 },
}

/// Declared value ranges (`[model.inputs.<name>] min/max`): every element of each named input
/// lies within its bounds. NaN is outside every range. BOOL inputs count as 0 and 1.
pub fn ranges(
    ranges: &std::collections::BTreeMap<String, InputRange>,
    inputs: &[Tensor],
) -> Result<(), ValidationError> {
    for t in inputs {
        let Some(r) = ranges.get(&t.name) else {
            continue;
        };
        let (min, max) = (
            r.min.unwrap_or(f64::NEG_INFINITY),
            r.max.unwrap_or(f64::INFINITY),
        );
        let size = t.dtype.size();
        let outside = t.data.chunks_exact(size).any(|b| {
            let v = element(t.dtype, b);
            !(v >= min && v <= max)
        });
        if outside {
            return Err(ValidationError::Range {
                name: t.name.clone(),
                min,
                max,
            });
        }
    }
    Ok(())
}

/// One little-endian element as f64 (64-bit integers beyond 2^53 round, which only matters
/// for bounds that large).
fn element(dtype: DataType, b: &[u8]) -> f64 {
    let a = |n: usize| -> [u8; 8] {
        let mut out = [0u8; 8];
        out[..n].copy_from_slice(&b[..n]);
        out
    };
    match dtype {
        DataType::Bool | DataType::Uint8 => f64::from(b[0]),
        DataType::Int8 => f64::from(b[0] as i8),
        DataType::Uint16 => f64::from(u16::from_le_bytes([b[0], b[1]])),
        DataType::Int16 => f64::from(i16::from_le_bytes([b[0], b[1]])),
        DataType::Fp16 => f64::from(half::f16::from_le_bytes([b[0], b[1]])),
        DataType::Uint32 => f64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        DataType::Int32 => f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        DataType::Fp32 => f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        DataType::Uint64 => u64::from_le_bytes(a(8)) as f64,
        DataType::Int64 => i64::from_le_bytes(a(8)) as f64,
        DataType::Fp64 => f64::from_le_bytes(a(8)),
    }
}

/// Every declared input is present exactly once with the declared datatype and a shape that
/// fits; nothing else is present.
pub fn inputs(signature: &ModelSignature, inputs: &[Tensor]) -> Result<(), ValidationError> {
    for t in inputs {
        let Some(spec) = signature.inputs.iter().find(|s| s.name == t.name) else {
            return Err(ValidationError::UnknownInput {
                name: t.name.clone(),
                expected: signature.inputs.iter().map(|s| s.name.clone()).collect(),
            });
        };
        if spec.datatype != t.dtype {
            return Err(ValidationError::DataType {
                name: t.name.clone(),
                actual: t.dtype.to_string(),
                expected: spec.datatype.to_string(),
            });
        }
        if !spec.accepts_shape(&t.shape) {
            return Err(ValidationError::Shape {
                name: t.name.clone(),
                actual: t.shape.clone(),
                expected: spec.shape.clone(),
            });
        }
        if t.element_count() == 0 {
            return Err(ValidationError::Empty {
                name: t.name.clone(),
            });
        }
    }
    for spec in &signature.inputs {
        if !inputs.iter().any(|t| t.name == spec.name) {
            return Err(ValidationError::MissingInput {
                name: spec.name.clone(),
            });
        }
    }
    // Inputs whose first dimension is dynamic form the batch: they must agree on its size.
    let mut batch = None;
    for t in inputs {
        let dynamic_batch = signature
            .inputs
            .iter()
            .find(|s| s.name == t.name)
            .is_some_and(|s| s.shape.first() == Some(&-1));
        if let (true, Some(&n)) = (dynamic_batch, t.shape.first()) {
            match batch {
                None => batch = Some(n),
                Some(first) if first != n => {
                    return Err(ValidationError::Batch { first, other: n });
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// Requested outputs exist in the model.
pub fn requested_outputs(
    signature: &ModelSignature,
    outputs: &[RequestedOutput],
) -> Result<(), ValidationError> {
    for o in outputs {
        if !signature.outputs.iter().any(|s| s.name == o.name) {
            return Err(ValidationError::UnknownOutput {
                name: o.name.clone(),
                expected: signature.outputs.iter().map(|s| s.name.clone()).collect(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use warden_runtime_client::tensor::{DataType, TensorSpec};

    fn sig() -> ModelSignature {
        ModelSignature {
            inputs: vec![TensorSpec {
                name: "input".into(),
                datatype: DataType::Fp32,
                shape: vec![-1, 30],
            }],
            outputs: vec![TensorSpec {
                name: "label".into(),
                datatype: DataType::Int64,
                shape: vec![-1],
            }],
        }
    }

    fn t(name: &str, dtype: DataType, shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product::<usize>() * dtype.size();
        Tensor::new(name, dtype, shape, Bytes::from(vec![0u8; n])).unwrap()
    }

    #[test]
    fn accepts_a_fitting_request() {
        assert_eq!(
            inputs(&sig(), &[t("input", DataType::Fp32, vec![3, 30])]),
            Ok(())
        );
    }

    #[test]
    fn refuses_each_mismatch() {
        assert!(matches!(
            inputs(&sig(), &[t("inputs", DataType::Fp32, vec![1, 30])]),
            Err(ValidationError::UnknownInput { .. })
        ));
        assert!(matches!(
            inputs(&sig(), &[t("input", DataType::Fp64, vec![1, 30])]),
            Err(ValidationError::DataType { .. })
        ));
        assert!(matches!(
            inputs(&sig(), &[t("input", DataType::Fp32, vec![1, 29])]),
            Err(ValidationError::Shape { .. })
        ));
        assert!(matches!(
            inputs(&sig(), &[t("input", DataType::Fp32, vec![30])]),
            Err(ValidationError::Shape { .. })
        ));
        assert!(matches!(
            inputs(&sig(), &[t("input", DataType::Fp32, vec![0, 30])]),
            Err(ValidationError::Empty { .. })
        ));
        assert!(matches!(
            inputs(&sig(), &[]),
            Err(ValidationError::MissingInput { .. })
        ));
        let out = [RequestedOutput {
            name: "probs".into(),
            binary: None,
        }];
        assert!(matches!(
            requested_outputs(&sig(), &out),
            Err(ValidationError::UnknownOutput { .. })
        ));
    }

    #[test]
    fn declared_ranges() {
        let mut r = std::collections::BTreeMap::new();
        r.insert(
            "input".to_string(),
            InputRange {
                min: Some(-1.0),
                max: Some(1.0),
            },
        );
        let fp32 = |vals: &[f32]| {
            let data: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
            Tensor::new("input", DataType::Fp32, vec![1, vals.len()], data.into()).unwrap()
        };
        assert!(ranges(&r, &[fp32(&[0.0, -1.0, 1.0])]).is_ok());
        for bad in [
            [0.0, 1.5],
            [-2.0, 0.0],
            [f32::NAN, 0.0],
            [f32::INFINITY, 0.0],
        ] {
            assert!(matches!(
                ranges(&r, &[fp32(&bad)]),
                Err(ValidationError::Range { .. })
            ));
        }
        let i64s: Vec<u8> = [5i64, -3].iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = Tensor::new("input", DataType::Int64, vec![2], i64s.into()).unwrap();
        assert!(matches!(
            ranges(&r, &[t]),
            Err(ValidationError::Range { .. })
        ));
        // Inputs without a declared range are not checked.
        assert!(
            ranges(
                &r,
                &[Tensor::new("other", DataType::Fp32, vec![1], vec![0u8; 4].into()).unwrap()]
            )
            .is_ok()
        );
    }
}
