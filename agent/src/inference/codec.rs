//! Decoding Open Inference Protocol (KServe v2) infer requests into raw tensors, and encoding
//! responses, with the binary tensor data extension (`Inference-Header-Content-Length`).
//!
//! Parsing is strict: unknown fields, duplicate fields, NaN/Infinity, numbers out of the
//! datatype's range, element counts that disagree with the shape and nesting deeper than the
//! limit are all refused with a message naming the tensor. Tensor data is decoded straight
//! from the JSON text into little-endian bytes, with no intermediate `Value` tree.

use bytes::{Bytes, BytesMut};
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fmt;
use warden_runtime_client::tensor::{DataType, Tensor, byte_len};

/// Deepest nesting of `data` arrays accepted.
const MAX_DATA_DEPTH: usize = 32;
/// Most tensors in one request or response.
const MAX_TENSORS: usize = 256;

/// A refused request; the message is safe to return to the client (it names only what the
/// client sent and what the model declares).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

fn err(msg: impl Into<String>) -> DecodeError {
    DecodeError(msg.into())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestJson<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(borrow)]
    inputs: Vec<InputJson<'a>>,
    #[serde(default)]
    outputs: Option<Vec<OutputJson>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputJson<'a> {
    name: String,
    shape: Vec<u64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A decoded infer request.
#[derive(Debug)]
pub struct InferRequest {
    /// The client's own request id, echoed back in the response.
    pub id: Option<String>,
    pub inputs: Vec<Tensor>,
    /// Outputs asked for, in order; empty means all.
    pub outputs: Vec<RequestedOutput>,
    /// Return every output as binary data (request parameter `binary_data_output`).
    pub binary_output_default: bool,
}

#[derive(Debug, Clone)]
pub struct RequestedOutput {
    pub name: String,
    pub binary: Option<bool>,
}

/// Decodes a request body. `json_len` is the `Inference-Header-Content-Length` header: when
/// present the body is that many bytes of JSON followed by the binary tensor data.
pub fn decode_request(body: &[u8], json_len: Option<usize>) -> Result<InferRequest, DecodeError> {
    let (json, mut binary) = match json_len {
        Some(n) if n > body.len() => {
            return Err(err(format!(
                "Inference-Header-Content-Length {n} exceeds the body's {} bytes",
                body.len()
            )));
        }
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    let text = std::str::from_utf8(json).map_err(|_| err("request JSON is not valid UTF-8"))?;
    let req: RequestJson<'_> =
        serde_json::from_str(text).map_err(|e| err(format!("malformed request JSON: {e}")))?;

    let mut binary_output_default = false;
    if let Some(params) = &req.parameters {
        for (key, value) in params {
            match key.as_str() {
                "binary_data_output" => {
                    binary_output_default = value
                        .as_bool()
                        .ok_or_else(|| err("parameter binary_data_output must be a boolean"))?
                }
                other => return Err(err(format!("unsupported request parameter {other:?}"))),
            }
        }
    }
    if req.inputs.is_empty() {
        return Err(err("request has no inputs"));
    }
    if req.inputs.len() > MAX_TENSORS {
        return Err(err(format!("more than {MAX_TENSORS} inputs")));
    }
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for input in req.inputs {
        let dtype = DataType::parse(&input.datatype).ok_or_else(|| {
            err(format!(
                "input {:?}: unsupported datatype {:?}",
                input.name, input.datatype
            ))
        })?;
        let shape = input
            .shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| err(format!("input {:?}: dimension too large", input.name)))?;
        let expected_bytes = byte_len(dtype, &shape)
            .ok_or_else(|| err(format!("input {:?}: shape {shape:?} overflows", input.name)))?;
        let mut binary_size = None;
        if let Some(params) = &input.parameters {
            for (key, value) in params {
                match key.as_str() {
                    "binary_data_size" => {
                        binary_size = Some(value.as_u64().ok_or_else(|| {
                            err(format!(
                                "input {:?}: binary_data_size must be an unsigned integer",
                                input.name
                            ))
                        })?)
                    }
                    other => {
                        return Err(err(format!(
                            "input {:?}: unsupported parameter {other:?}",
                            input.name
                        )));
                    }
                }
            }
        }
        let data = match (binary_size, input.data) {
            (Some(_), Some(_)) => {
                return Err(err(format!(
                    "input {:?}: both binary_data_size and data are given",
                    input.name
                )));
            }
            (Some(size), None) => {
                if json_len.is_none() {
                    return Err(err(format!(
                        "input {:?}: binary data without the Inference-Header-Content-Length header",
                        input.name
                    )));
                }
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                if size != expected_bytes {
                    return Err(err(format!(
                        "input {:?}: binary_data_size {size} does not match {dtype} shape {shape:?} ({expected_bytes} bytes)",
                        input.name
                    )));
                }
                if size > binary.len() {
                    return Err(err(format!(
                        "input {:?}: binary data is truncated",
                        input.name
                    )));
                }
                let (head, rest) = binary.split_at(size);
                binary = rest;
                Bytes::copy_from_slice(head)
            }
            (None, Some(raw)) => {
                decode_json_data(raw, dtype, expected_bytes / dtype.size(), &input.name)?
            }
            (None, None) => {
                return Err(err(format!("input {:?}: no data", input.name)));
            }
        };
        let tensor = Tensor::new(input.name, dtype, shape, data).map_err(|e| err(e.to_string()))?;
        if inputs.iter().any(|t: &Tensor| t.name == tensor.name) {
            return Err(err(format!("input {:?} is given twice", tensor.name)));
        }
        inputs.push(tensor);
    }
    if !binary.is_empty() {
        return Err(err(format!(
            "{} bytes of binary data follow the last binary input",
            binary.len()
        )));
    }

    let mut outputs = Vec::new();
    for out in req.outputs.unwrap_or_default() {
        let mut binary = None;
        if let Some(params) = &out.parameters {
            for (key, value) in params {
                match key.as_str() {
                    "binary_data" => {
                        binary = Some(value.as_bool().ok_or_else(|| {
                            err(format!(
                                "output {:?}: binary_data must be a boolean",
                                out.name
                            ))
                        })?)
                    }
                    other => {
                        return Err(err(format!(
                            "output {:?}: unsupported parameter {other:?}",
                            out.name
                        )));
                    }
                }
            }
        }
        if outputs.iter().any(|o: &RequestedOutput| o.name == out.name) {
            return Err(err(format!("output {:?} is requested twice", out.name)));
        }
        outputs.push(RequestedOutput {
            name: out.name,
            binary,
        });
    }
    if outputs.len() > MAX_TENSORS {
        return Err(err(format!("more than {MAX_TENSORS} outputs requested")));
    }
    Ok(InferRequest {
        id: req.id,
        inputs,
        outputs,
        binary_output_default,
    })
}

fn decode_json_data(
    raw: &RawValue,
    dtype: DataType,
    expected_elements: usize,
    name: &str,
) -> Result<Bytes, DecodeError> {
    let mut out =
        BytesMut::with_capacity(expected_elements.saturating_mul(dtype.size()).min(1 << 26));
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let seed = Elements {
        dtype,
        out: &mut out,
        remaining: expected_elements,
        depth: 0,
    };
    seed.deserialize(&mut de)
        .map_err(|e| err(format!("input {name:?}: {e}")))?;
    let got = out.len() / dtype.size();
    if got != expected_elements {
        return Err(err(format!(
            "input {name:?}: data has {got} elements, shape needs {expected_elements}"
        )));
    }
    Ok(out.freeze())
}

/// Flattens (possibly nested) JSON arrays of numbers or booleans into little-endian bytes.
struct Elements<'o> {
    dtype: DataType,
    out: &'o mut BytesMut,
    remaining: usize,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Elements<'_> {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_any(self)
    }
}

impl Elements<'_> {
    fn push<E: de::Error>(
        &mut self,
        f: impl FnOnce(&mut BytesMut) -> Result<(), ElementError>,
    ) -> Result<usize, E> {
        if self.remaining == 0 {
            return Err(E::custom("more data elements than the shape holds"));
        }
        f(self.out).map_err(E::custom)?;
        self.remaining -= 1;
        Ok(self.remaining)
    }
}

/// A data element that does not fit its tensor's datatype.
#[derive(Debug, thiserror::Error)]
enum ElementError {
    #[error("{value} is out of range for {dtype}")]
    OutOfRange { value: String, dtype: DataType },
    #[error("{0} is not a boolean")]
    NotBoolean(i128),
    #[error("non-finite number")]
    NonFinite,
    #[error("{value} is not an integer, the datatype is {dtype}")]
    NotInteger { value: f64, dtype: DataType },
}

fn put_int(out: &mut BytesMut, dtype: DataType, v: i128) -> Result<(), ElementError> {
    let range = |lo: i128, hi: i128| {
        if v < lo || v > hi {
            Err(ElementError::OutOfRange {
                value: v.to_string(),
                dtype,
            })
        } else {
            Ok(())
        }
    };
    match dtype {
        DataType::Int8 => range(i8::MIN.into(), i8::MAX.into())
            .map(|()| out.extend_from_slice(&(v as i8).to_le_bytes())),
        DataType::Int16 => range(i16::MIN.into(), i16::MAX.into())
            .map(|()| out.extend_from_slice(&(v as i16).to_le_bytes())),
        DataType::Int32 => range(i32::MIN.into(), i32::MAX.into())
            .map(|()| out.extend_from_slice(&(v as i32).to_le_bytes())),
        DataType::Int64 => range(i64::MIN.into(), i64::MAX.into())
            .map(|()| out.extend_from_slice(&(v as i64).to_le_bytes())),
        DataType::Uint8 => {
            range(0, u8::MAX.into()).map(|()| out.extend_from_slice(&(v as u8).to_le_bytes()))
        }
        DataType::Uint16 => {
            range(0, u16::MAX.into()).map(|()| out.extend_from_slice(&(v as u16).to_le_bytes()))
        }
        DataType::Uint32 => {
            range(0, u32::MAX.into()).map(|()| out.extend_from_slice(&(v as u32).to_le_bytes()))
        }
        DataType::Uint64 => {
            range(0, u64::MAX.into()).map(|()| out.extend_from_slice(&(v as u64).to_le_bytes()))
        }
        // Integers are fine for float tensors; the conversion rounds to nearest as JSON does.
        DataType::Fp16 | DataType::Fp32 | DataType::Fp64 => put_float(out, dtype, v as f64),
        DataType::Bool => Err(ElementError::NotBoolean(v)),
    }
}

fn put_float(out: &mut BytesMut, dtype: DataType, v: f64) -> Result<(), ElementError> {
    let out_of_range = || ElementError::OutOfRange {
        value: v.to_string(),
        dtype,
    };
    if !v.is_finite() {
        return Err(ElementError::NonFinite);
    }
    match dtype {
        DataType::Fp64 => out.extend_from_slice(&v.to_le_bytes()),
        DataType::Fp32 => {
            let f = v as f32;
            if !f.is_finite() {
                return Err(out_of_range());
            }
            out.extend_from_slice(&f.to_le_bytes())
        }
        DataType::Fp16 => {
            let h = half::f16::from_f64(v);
            if !h.is_finite() {
                return Err(out_of_range());
            }
            out.extend_from_slice(&h.to_le_bytes())
        }
        _ => return Err(ElementError::NotInteger { value: v, dtype }),
    }
    Ok(())
}

impl<'de> Visitor<'de> for Elements<'_> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an array of {} values", self.dtype)
    }

    fn visit_bool<E: de::Error>(mut self, v: bool) -> Result<usize, E> {
        if self.dtype != DataType::Bool {
            return Err(E::custom(format!("boolean given for {}", self.dtype)));
        }
        self.push(|out| {
            out.extend_from_slice(&[u8::from(v)]);
            Ok(())
        })
    }

    fn visit_i64<E: de::Error>(mut self, v: i64) -> Result<usize, E> {
        let dtype = self.dtype;
        self.push(|out| put_int(out, dtype, v.into()))
    }

    fn visit_u64<E: de::Error>(mut self, v: u64) -> Result<usize, E> {
        let dtype = self.dtype;
        self.push(|out| put_int(out, dtype, v.into()))
    }

    fn visit_f64<E: de::Error>(mut self, v: f64) -> Result<usize, E> {
        let dtype = self.dtype;
        self.push(|out| put_float(out, dtype, v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        if self.depth >= MAX_DATA_DEPTH {
            return Err(de::Error::custom("data is nested too deeply"));
        }
        let mut remaining = self.remaining;
        while let Some(r) = seq.next_element_seed(Elements {
            dtype: self.dtype,
            out: &mut *self.out,
            remaining,
            depth: self.depth + 1,
        })? {
            remaining = r;
        }
        Ok(remaining)
    }
}

/// One output tensor of a response.
pub struct ResponseOutput<'a> {
    pub tensor: &'a Tensor,
    pub binary: bool,
}

/// An encoded response body and, for binary outputs, the JSON header's length.
pub struct EncodedResponse {
    pub body: Vec<u8>,
    pub json_len: Option<usize>,
}

#[derive(Serialize)]
struct ResponseJson<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputTensorJson<'a>>,
}

#[derive(Serialize)]
struct OutputTensorJson<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParameters>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<TensorData<'a>>,
}

#[derive(Serialize)]
struct BinaryParameters {
    binary_data_size: usize,
}

/// Serializes raw tensor bytes as a flat JSON array; floats use the shortest text that
/// round-trips at their own precision.
struct TensorData<'a>(&'a Tensor);

impl Serialize for TensorData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = self.0;
        let width = t.dtype.size();
        let mut seq = s.serialize_seq(Some(t.data.len() / width))?;
        for chunk in t.data.chunks_exact(width) {
            match t.dtype {
                DataType::Bool => seq.serialize_element(&(chunk[0] != 0))?,
                DataType::Uint8 => seq.serialize_element(&chunk[0])?,
                DataType::Int8 => seq.serialize_element(&(chunk[0] as i8))?,
                DataType::Uint16 => {
                    seq.serialize_element(&u16::from_le_bytes([chunk[0], chunk[1]]))?
                }
                DataType::Int16 => {
                    seq.serialize_element(&i16::from_le_bytes([chunk[0], chunk[1]]))?
                }
                DataType::Fp16 => {
                    seq.serialize_element(&half::f16::from_le_bytes([chunk[0], chunk[1]]).to_f32())?
                }
                DataType::Uint32 | DataType::Int32 | DataType::Fp32 => {
                    let b = [chunk[0], chunk[1], chunk[2], chunk[3]];
                    match t.dtype {
                        DataType::Uint32 => seq.serialize_element(&u32::from_le_bytes(b))?,
                        DataType::Int32 => seq.serialize_element(&i32::from_le_bytes(b))?,
                        _ => {
                            let f = f32::from_le_bytes(b);
                            // JSON has no NaN/Infinity; a model that produces them yields null.
                            if f.is_finite() {
                                seq.serialize_element(&f)?
                            } else {
                                seq.serialize_element(&())?
                            }
                        }
                    }
                }
                DataType::Uint64 | DataType::Int64 | DataType::Fp64 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(chunk);
                    match t.dtype {
                        DataType::Uint64 => seq.serialize_element(&u64::from_le_bytes(b))?,
                        DataType::Int64 => seq.serialize_element(&i64::from_le_bytes(b))?,
                        _ => {
                            let f = f64::from_le_bytes(b);
                            if f.is_finite() {
                                seq.serialize_element(&f)?
                            } else {
                                seq.serialize_element(&())?
                            }
                        }
                    }
                }
            }
        }
        seq.end()
    }
}

/// Encodes an infer response; binary outputs go after the JSON header.
pub fn encode_response(
    model_name: &str,
    model_version: &str,
    id: Option<&str>,
    outputs: &[ResponseOutput<'_>],
) -> Result<EncodedResponse, serde_json::Error> {
    let json = ResponseJson {
        model_name,
        model_version,
        id,
        outputs: outputs
            .iter()
            .map(|o| OutputTensorJson {
                name: &o.tensor.name,
                datatype: o.tensor.dtype.as_str(),
                shape: &o.tensor.shape,
                parameters: o.binary.then(|| BinaryParameters {
                    binary_data_size: o.tensor.data.len(),
                }),
                data: (!o.binary).then_some(TensorData(o.tensor)),
            })
            .collect(),
    };
    let mut body = serde_json::to_vec(&json)?;
    if !outputs.iter().any(|o| o.binary) {
        return Ok(EncodedResponse {
            body,
            json_len: None,
        });
    }
    let json_len = body.len();
    for o in outputs.iter().filter(|o| o.binary) {
        body.extend_from_slice(&o.tensor.data);
    }
    Ok(EncodedResponse {
        body,
        json_len: Some(json_len),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(text: &str) -> Result<InferRequest, DecodeError> {
        decode_request(text.as_bytes(), None)
    }

    #[test]
    fn flat_and_nested_data_decode_the_same() {
        let flat = decode(
            r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2.5,-3,4e2]}]}"#,
        )
        .unwrap();
        let nested = decode(r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2.5],[-3,400]]}]}"#).unwrap();
        assert_eq!(flat.inputs[0].data, nested.inputs[0].data);
        let v: Vec<f32> = flat.inputs[0]
            .data
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(v, vec![1.0, 2.5, -3.0, 400.0]);
    }

    #[test]
    fn strictness() {
        let cases = [
            (
                r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1]}]}"#,
                "elements",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1,2]}]}"#,
                "more data",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[NaN]}]}"#,
                "malformed",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1e39]}]}"#,
                "out of range",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[128]}]}"#,
                "out of range",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT64","data":[1.5]}]}"#,
                "not an integer",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"UINT8","data":[-1]}]}"#,
                "out of range",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"BOOL","data":[1]}]}"#,
                "not a boolean",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[true]}]}"#,
                "boolean given",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":["a"]}]}"#,
                "unsupported datatype",
            ),
            (
                r#"{"inputs":[{"name":"x","name":"y","shape":[1],"datatype":"FP32","data":[1]}]}"#,
                "duplicate field",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1],"extra":1}]}"#,
                "unknown field",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]},{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}"#,
                "twice",
            ),
            (r#"{"inputs":[]}"#, "no inputs"),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#,
                "no data",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[18446744073709551615,4],"datatype":"FP32","data":[1]}]}"#,
                "overflows",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}],"parameters":{"shared_memory_region":"r"}}"#,
                "unsupported request parameter",
            ),
            (r#"[1,2]"#, "malformed"),
        ];
        for (text, want) in cases {
            let e = decode(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
        let deep = format!(
            r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"FP32","data":{}1{}}}]}}"#,
            "[".repeat(40),
            "]".repeat(40)
        );
        let e = decode(&deep).unwrap_err().to_string();
        assert!(e.contains("nested too deeply"), "{e}");
    }

    #[test]
    fn binary_extension_round_trip() {
        let header = r#"{"inputs":[{"name":"x","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}}],"outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#;
        let mut body = header.as_bytes().to_vec();
        body.extend_from_slice(&7i32.to_le_bytes());
        body.extend_from_slice(&(-9i32).to_le_bytes());
        let req = decode_request(&body, Some(header.len())).unwrap();
        assert_eq!(req.inputs[0].data.as_ref(), &body[header.len()..]);
        assert_eq!(req.outputs[0].binary, Some(true));
        // Truncated and trailing binary data are refused.
        assert!(decode_request(&body[..body.len() - 1], Some(header.len())).is_err());
        let mut longer = body.clone();
        longer.push(0);
        assert!(decode_request(&longer, Some(header.len())).is_err());
        assert!(decode_request(&body, Some(body.len() + 1)).is_err());

        let out = Tensor::new("y", DataType::Int32, vec![2], req.inputs[0].data.clone()).unwrap();
        let enc = encode_response(
            "m",
            "1",
            Some("abc"),
            &[ResponseOutput {
                tensor: &out,
                binary: true,
            }],
        )
        .unwrap();
        let n = enc.json_len.unwrap();
        let head: serde_json::Value = serde_json::from_slice(&enc.body[..n]).unwrap();
        assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(head["id"], "abc");
        assert_eq!(&enc.body[n..], &body[header.len()..]);
    }

    /// Found by agent/fuzz's oip_codec: without serde_json's `float_roundtrip`, "2e-162"
    /// decoded one unit in the last place off, and the response then read
    /// 2.0000000000000002e-162.
    #[test]
    fn json_numbers_decode_to_the_nearest_value_and_encode_back_the_same() {
        let req = decode(
            r#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP64","data":[1,2e-162,0.1]}]}"#,
        )
        .unwrap();
        let want: Vec<u8> = [1.0f64, 2e-162, 0.1]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(req.inputs[0].data.as_ref(), &want[..]);
        let enc = encode_response(
            "m",
            "1",
            None,
            &[ResponseOutput {
                tensor: &req.inputs[0],
                binary: false,
            }],
        )
        .unwrap();
        let text = String::from_utf8(enc.body).unwrap();
        assert!(text.contains("[1.0,2e-162,0.1]"), "{text}");
    }

    #[test]
    fn json_output_uses_shortest_float_text() {
        let data: Vec<u8> = [0.1f32, 7.619858e-4]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        let t = Tensor::new("p", DataType::Fp32, vec![2], Bytes::from(data)).unwrap();
        let enc = encode_response(
            "m",
            "1",
            None,
            &[ResponseOutput {
                tensor: &t,
                binary: false,
            }],
        )
        .unwrap();
        let text = String::from_utf8(enc.body).unwrap();
        assert!(text.contains("[0.1,0.0007619858]"), "{text}");
    }
}
