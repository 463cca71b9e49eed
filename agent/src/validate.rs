//! Checks a decoded request against the model's declared signature — names, datatypes and
//! shapes — so that nothing malformed reaches a worker. Messages name the tensor and what the
//! model declares; they are returned to the client.

use crate::api::codec::RequestedOutput;
use warden_runtime::tensor::{ModelSignature, Tensor};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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
    use warden_runtime::tensor::{DataType, TensorSpec};

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
}
