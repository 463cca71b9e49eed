//! Tensors to and from ONNX Runtime's values: little-endian bytes on the wire, one copy each
//! way on a little-endian machine.

use bytes::Bytes;
use ort::session::SessionOutputs;
use ort::value::{DynValue, TensorElementType};
use warden_runtime_client::tensor::{DataType, Tensor};

use crate::engine::error::EngineError;
use crate::engine::options::OutputSink;

pub(super) fn supported() -> String {
    DataType::ALL
        .iter()
        .map(|d| d.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn from_ort_type(ty: TensorElementType) -> Option<DataType> {
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

pub(super) fn to_ort(t: &Tensor) -> Result<DynValue, EngineError> {
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

pub(super) fn collect_outputs(
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
    use super::{decode, encode};

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
