//! Tensors as they cross between the agent and a worker: a name, a datatype, a shape and the
//! raw little-endian bytes of the elements in row-major order. No JSON on this path.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Element types, named as the Open Inference Protocol (KServe v2) names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DataType {
    #[serde(rename = "BOOL")]
    Bool,
    #[serde(rename = "UINT8")]
    Uint8,
    #[serde(rename = "UINT16")]
    Uint16,
    #[serde(rename = "UINT32")]
    Uint32,
    #[serde(rename = "UINT64")]
    Uint64,
    #[serde(rename = "INT8")]
    Int8,
    #[serde(rename = "INT16")]
    Int16,
    #[serde(rename = "INT32")]
    Int32,
    #[serde(rename = "INT64")]
    Int64,
    #[serde(rename = "FP16")]
    Fp16,
    #[serde(rename = "FP32")]
    Fp32,
    #[serde(rename = "FP64")]
    Fp64,
}

impl DataType {
    pub const ALL: [DataType; 12] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Fp32,
        DataType::Fp64,
    ];

    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 => 2,
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => 4,
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => 8,
        }
    }

    /// The protocol's name (`"FP32"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
        }
    }

    /// Parses the protocol's name; `None` for anything else (including `BYTES`, which no
    /// engine here accepts yet).
    pub fn parse(name: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.as_str() == name)
    }

    /// Stable one-byte code used by the worker wire protocol.
    pub fn code(self) -> u8 {
        match self {
            DataType::Bool => 1,
            DataType::Uint8 => 2,
            DataType::Uint16 => 3,
            DataType::Uint32 => 4,
            DataType::Uint64 => 5,
            DataType::Int8 => 6,
            DataType::Int16 => 7,
            DataType::Int32 => 8,
            DataType::Int64 => 9,
            DataType::Fp16 => 10,
            DataType::Fp32 => 11,
            DataType::Fp64 => 12,
        }
    }

    pub fn from_code(code: u8) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.code() == code)
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One tensor: `data.len() == shape.iter().product() * dtype.size()` always holds for a tensor
/// built through [`Tensor::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub dtype: DataType,
    pub shape: Vec<usize>,
    pub data: bytes::Bytes,
}

/// A tensor whose byte length does not match its shape and datatype.
#[derive(Debug, thiserror::Error)]
#[error("tensor {name:?}: {dtype} shape {shape:?} needs {expected} bytes, got {actual}")]
pub struct TensorSizeError {
    pub name: String,
    pub dtype: DataType,
    pub shape: Vec<usize>,
    pub expected: usize,
    pub actual: usize,
}

impl Tensor {
    pub fn new(
        name: impl Into<String>,
        dtype: DataType,
        shape: Vec<usize>,
        data: bytes::Bytes,
    ) -> Result<Tensor, TensorSizeError> {
        let name = name.into();
        let expected = byte_len(dtype, &shape);
        match expected {
            Some(expected) if expected == data.len() => Ok(Tensor {
                name,
                dtype,
                shape,
                data,
            }),
            _ => Err(TensorSizeError {
                name,
                dtype,
                actual: data.len(),
                expected: expected.unwrap_or(usize::MAX),
                shape,
            }),
        }
    }

    /// Number of elements.
    pub fn element_count(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Bytes needed for a tensor of this type and shape; `None` on overflow.
pub fn byte_len(dtype: DataType, shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
}

/// A declared tensor in a model's signature. A dimension of `-1` is dynamic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

impl TensorSpec {
    /// Whether a concrete shape fits this declaration (same rank; fixed dims equal).
    pub fn accepts_shape(&self, shape: &[usize]) -> bool {
        shape.len() == self.shape.len()
            && self
                .shape
                .iter()
                .zip(shape)
                .all(|(&declared, &actual)| declared < 0 || declared as u64 == actual as u64)
    }
}

/// A model's inputs and outputs as the engine reads them from the model file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSignature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_is_checked() {
        let ok = Tensor::new(
            "x",
            DataType::Fp32,
            vec![2, 3],
            bytes::Bytes::from(vec![0u8; 24]),
        );
        assert!(ok.is_ok());
        let bad = Tensor::new(
            "x",
            DataType::Fp32,
            vec![2, 3],
            bytes::Bytes::from(vec![0u8; 23]),
        );
        assert!(bad.is_err());
        assert_eq!(byte_len(DataType::Fp64, &[usize::MAX, 2]), None);
    }

    #[test]
    fn codes_round_trip() {
        for d in DataType::ALL {
            assert_eq!(DataType::from_code(d.code()), Some(d));
            assert_eq!(DataType::parse(d.as_str()), Some(d));
        }
        assert_eq!(DataType::parse("BYTES"), None);
    }

    #[test]
    fn spec_shapes() {
        let spec = TensorSpec {
            name: "x".into(),
            datatype: DataType::Fp32,
            shape: vec![-1, 30],
        };
        assert!(spec.accepts_shape(&[1, 30]));
        assert!(spec.accepts_shape(&[64, 30]));
        assert!(!spec.accepts_shape(&[1, 29]));
        assert!(!spec.accepts_shape(&[30]));
    }
}
