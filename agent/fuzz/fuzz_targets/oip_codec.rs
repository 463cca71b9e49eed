//! The Open Inference Protocol request decoder (`inference::codec::decode_request`), JSON and
//! binary tensor extension, then validation and the response encoder on what it decoded.
//!
//! Input: one mode byte, then (when bit 0 is set) a little-endian u16 for the
//! `Inference-Header-Content-Length` header, then the body. The header value is taken modulo
//! `body.len() + 2`, so that both a split inside the body and one past its end are reached.
//! Mode bits 1 and 2 choose which outputs the response encodes as binary.
//!
//! Properties checked on every request that decodes:
//! - every tensor's bytes are exactly what its datatype and shape need; names are unique;
//!   1 to 256 inputs, at most 256 distinct requested outputs;
//! - `validate::inputs` against a signature declaring exactly those tensors accepts them unless
//!   one is empty, and with a dynamic first dimension it refuses exactly disagreeing batches;
//! - `validate::requested_outputs` accepts outputs the signature declares;
//! - `validate::ranges` without bounds accepts any JSON-decoded request (JSON has no NaN);
//! - `encode_response` of the decoded tensors, turned back into a request, decodes to the same
//!   tensors (JSON text or binary, per tensor), unless a float is not finite in JSON (`null`).
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use warden_agent::config::InputRange;
use warden_agent::inference::codec::{self, InferRequest, RequestedOutput, ResponseOutput};
use warden_agent::inference::validate::{self, ValidationError};
use warden_runtime_client::tensor::{DataType, ModelSignature, Tensor, TensorSpec, byte_len};

fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (json_len, body) = if mode & 1 == 1 {
        let Some((len, body)) = rest.split_first_chunk::<2>() else {
            return;
        };
        let n = usize::from(u16::from_le_bytes(*len)) % (body.len() + 2);
        (Some(n), body)
    } else {
        (None, rest)
    };
    let Ok(req) = codec::decode_request(body, json_len) else {
        return;
    };
    check_shape(&req);
    check_validation(&req, json_len.is_none());
    check_round_trip(&req, mode);
}

fn check_shape(req: &InferRequest) {
    assert!(!req.inputs.is_empty() && req.inputs.len() <= 256);
    assert!(req.outputs.len() <= 256);
    for (i, t) in req.inputs.iter().enumerate() {
        assert_eq!(
            byte_len(t.dtype, &t.shape),
            Some(t.data.len()),
            "{}",
            t.name
        );
        assert!(req.inputs[..i].iter().all(|u| u.name != t.name));
    }
    for (i, o) in req.outputs.iter().enumerate() {
        assert!(req.outputs[..i].iter().all(|p| p.name != o.name));
    }
}

fn spec(t: &Tensor, dynamic_batch: bool) -> TensorSpec {
    TensorSpec {
        name: t.name.clone(),
        datatype: t.dtype,
        shape: t
            .shape
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                if i == 0 && dynamic_batch {
                    -1
                } else {
                    // A dimension above i64::MAX cannot be declared: make it dynamic.
                    i64::try_from(d).unwrap_or(-1)
                }
            })
            .collect(),
    }
}

fn check_validation(req: &InferRequest, json_only: bool) {
    let outputs: Vec<TensorSpec> = req
        .outputs
        .iter()
        .map(|o| TensorSpec {
            name: o.name.clone(),
            datatype: DataType::Fp32,
            shape: vec![-1],
        })
        .collect();
    let any_empty = req.inputs.iter().any(|t| t.element_count() == 0);

    // Exactly the tensors sent: accepted unless one is empty.
    // (A first dimension above i64::MAX can only be declared dynamic, which makes it a batch.)
    let huge_first = req
        .inputs
        .iter()
        .any(|t| t.shape.first().is_some_and(|&d| i64::try_from(d).is_err()));
    let exact = ModelSignature {
        inputs: req.inputs.iter().map(|t| spec(t, false)).collect(),
        outputs: outputs.clone(),
    };
    let r = validate::inputs(&exact, &req.inputs);
    if huge_first {
        // Not asserted: see above.
    } else if any_empty {
        assert!(matches!(r, Err(ValidationError::Empty { .. })), "{r:?}");
    } else {
        assert_eq!(r, Ok(()));
    }
    assert_eq!(validate::requested_outputs(&exact, &req.outputs), Ok(()));

    // A dynamic first dimension everywhere: the batch sizes must agree.
    let dynamic = ModelSignature {
        inputs: req.inputs.iter().map(|t| spec(t, true)).collect(),
        outputs: Vec::new(),
    };
    let firsts: Vec<usize> = req
        .inputs
        .iter()
        .filter_map(|t| t.shape.first().copied())
        .collect();
    let agree = firsts.windows(2).all(|w| w[0] == w[1]);
    let r = validate::inputs(&dynamic, &req.inputs);
    match (any_empty, agree) {
        (true, _) => assert!(matches!(r, Err(ValidationError::Empty { .. })), "{r:?}"),
        (false, true) => assert_eq!(r, Ok(())),
        (false, false) => assert!(matches!(r, Err(ValidationError::Batch { .. })), "{r:?}"),
    }
    // No declared outputs: only an empty request list passes.
    assert_eq!(
        validate::requested_outputs(&dynamic, &req.outputs).is_ok(),
        req.outputs.is_empty()
    );

    // The demo model's signature: refusals only, never a panic.
    let demo = ModelSignature {
        inputs: vec![TensorSpec {
            name: "input".into(),
            datatype: DataType::Fp32,
            shape: vec![-1, 30],
        }],
        outputs: vec![
            TensorSpec {
                name: "label".into(),
                datatype: DataType::Int64,
                shape: vec![-1],
            },
            TensorSpec {
                name: "probabilities".into(),
                datatype: DataType::Fp32,
                shape: vec![-1, 2],
            },
        ],
    };
    let _ = validate::inputs(&demo, &req.inputs);
    let _ = validate::requested_outputs(&demo, &req.outputs);

    // Ranges: unbounded ranges pass every finite value (all a JSON body can carry); bounded
    // ones only must not panic.
    let unbounded: BTreeMap<String, InputRange> = req
        .inputs
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                InputRange {
                    min: None,
                    max: None,
                },
            )
        })
        .collect();
    let r = validate::ranges(&unbounded, &req.inputs);
    if json_only {
        assert_eq!(r, Ok(()));
    }
    let bounded: BTreeMap<String, InputRange> = req
        .inputs
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                InputRange {
                    min: Some(-1.0),
                    max: Some(1.0),
                },
            )
        })
        .collect();
    let _ = validate::ranges(&bounded, &req.inputs);
}

/// Whether a tensor's JSON encoding holds a `null` (a float that is not finite).
fn has_non_finite(t: &Tensor) -> bool {
    match t.dtype {
        DataType::Fp16 => t
            .data
            .chunks_exact(2)
            .any(|c| !half::f16::from_le_bytes([c[0], c[1]]).is_finite()),
        DataType::Fp32 => t
            .data
            .chunks_exact(4)
            .any(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite()),
        DataType::Fp64 => t.data.chunks_exact(8).any(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            !f64::from_le_bytes(b).is_finite()
        }),
        _ => false,
    }
}

/// The tensor's bytes as JSON carries them: a BOOL element is true or false, whatever non-zero
/// byte the binary extension sent.
fn canonical(t: &Tensor, binary: bool) -> Vec<u8> {
    if t.dtype == DataType::Bool && !binary {
        t.data.iter().map(|&b| u8::from(b != 0)).collect()
    } else {
        t.data.to_vec()
    }
}

/// A response header, its tensors' fields kept as the encoder wrote them.
#[derive(serde::Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    outputs: Vec<OutputRaw<'a>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputRaw<'a> {
    name: String,
    datatype: String,
    #[serde(borrow)]
    shape: &'a RawValue,
    #[serde(borrow, default)]
    parameters: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

fn check_round_trip(req: &InferRequest, mode: u8) {
    let binary: Vec<bool> = (0..req.inputs.len())
        .map(|i| (mode & 2 != 0) ^ (mode & 4 != 0 && i % 2 == 0))
        .collect();
    let outputs: Vec<ResponseOutput<'_>> = req
        .inputs
        .iter()
        .zip(&binary)
        .map(|(tensor, &binary)| ResponseOutput { tensor, binary })
        .collect();
    let enc = codec::encode_response("model", "1", req.id.as_deref(), &outputs)
        .unwrap_or_else(|e| panic!("encode_response: {e}"));
    let any_binary = binary.iter().any(|&b| b);
    assert_eq!(enc.json_len.is_some(), any_binary);
    let head_len = enc.json_len.unwrap_or(enc.body.len());
    assert!(head_len <= enc.body.len());
    let value: Value = serde_json::from_slice(&enc.body[..head_len])
        .unwrap_or_else(|e| panic!("the response header is not JSON: {e}"));
    assert_eq!(value["model_name"], "model");
    assert_eq!(value["model_version"], "1");
    assert_eq!(value["id"].as_str(), req.id.as_deref());
    let tail = &enc.body[head_len..];
    let expected_tail: usize = req
        .inputs
        .iter()
        .zip(&binary)
        .filter(|(_, b)| **b)
        .map(|(t, _)| t.data.len())
        .sum();
    assert_eq!(tail.len(), expected_tail);

    // The response's outputs, sent back as a request's inputs: the tensors' JSON text is
    // carried over as it is (no re-serialization of numbers here).
    let head: Head<'_> = serde_json::from_slice(&enc.body[..head_len])
        .unwrap_or_else(|e| panic!("the response header does not parse: {e}"));
    assert_eq!(head.outputs.len(), req.inputs.len());
    if req
        .inputs
        .iter()
        .zip(&binary)
        .any(|(t, b)| !b && has_non_finite(t))
    {
        return;
    }
    let text = |v: &str| serde_json::to_string(v).unwrap_or_else(|e| panic!("{e}"));
    let mut again = String::from("{\"inputs\":[");
    for (i, o) in head.outputs.iter().enumerate() {
        if i > 0 {
            again.push(',');
        }
        again.push_str(&format!(
            "{{\"name\":{},\"shape\":{},\"datatype\":{}",
            text(&o.name),
            o.shape.get(),
            text(&o.datatype)
        ));
        if let Some(p) = o.parameters {
            again.push_str(&format!(",\"parameters\":{}", p.get()));
        }
        if let Some(d) = o.data {
            again.push_str(&format!(",\"data\":{}", d.get()));
        }
        again.push('}');
    }
    again.push(']');
    if !req.outputs.is_empty() {
        let requested: Vec<Value> = req
            .outputs
            .iter()
            .map(|RequestedOutput { name, binary }| match binary {
                Some(b) => json!({"name": name, "parameters": {"binary_data": b}}),
                None => json!({"name": name}),
            })
            .collect();
        again.push_str(&format!(",\"outputs\":{}", Value::Array(requested)));
    }
    if let Some(id) = &req.id {
        again.push_str(&format!(",\"id\":{}", text(id)));
    }
    again.push('}');
    let mut body = again.into_bytes();
    let json_len = any_binary.then_some(body.len());
    body.extend_from_slice(tail);
    let back = codec::decode_request(&body, json_len)
        .unwrap_or_else(|e| panic!("the encoded response does not decode again: {e}"));
    assert_eq!(back.id, req.id);
    assert_eq!(back.inputs.len(), req.inputs.len());
    for ((a, b), &bin) in req.inputs.iter().zip(&back.inputs).zip(&binary) {
        assert_eq!(a.name, b.name);
        assert_eq!(a.dtype, b.dtype);
        assert_eq!(a.shape, b.shape);
        assert_eq!(
            canonical(a, bin),
            b.data.to_vec(),
            "tensor {:?} {}",
            a.name,
            a.dtype
        );
    }
    for (a, b) in req.outputs.iter().zip(&back.outputs) {
        assert_eq!((&a.name, a.binary), (&b.name, b.binary));
    }
}
