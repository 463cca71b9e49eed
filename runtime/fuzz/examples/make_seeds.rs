//! Writes the seed corpora of this crate's fuzz targets into `corpus/<target>/`:
//! `cargo run --example make_seeds` from `runtime/fuzz` (scripts/fuzz.sh never runs it; the
//! seeds are committed). Frames are the protocol's own test samples, encoded by the encoder;
//! safetensors files are small BERT-like files laid out as the `safetensors` package writes
//! them.
//! Seeds named `regression_*` are not made here: they are minimised crash inputs found by the
//! targets, kept so that every run checks the fix.

use std::fs;
use std::path::Path;

use bytes::Bytes;
use warden_runtime_client::device::Placement;
use warden_runtime_client::protocol::{
    DEFAULT_MAX_FRAME_BYTES, ErrorClass, LENGTH_PREFIX, Message, PROTOCOL_VERSION,
};
use warden_runtime_client::shm::Region;
use warden_runtime_client::tensor::{DataType, ModelSignature, Tensor, TensorSpec};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&dir).unwrap();
    assert!(
        bytes.len() < 64 * 1024,
        "{target}/{name}: {} bytes",
        bytes.len()
    );
    fs::write(dir.join(name), bytes).unwrap();
}

fn tensors() -> Vec<Tensor> {
    vec![
        Tensor::new(
            "input",
            DataType::Fp32,
            vec![2, 3],
            Bytes::from((0..24u8).collect::<Vec<_>>()),
        )
        .unwrap(),
        Tensor::new("flag", DataType::Bool, vec![], Bytes::from_static(&[1])).unwrap(),
        Tensor::new("empty", DataType::Int64, vec![0, 5], Bytes::new()).unwrap(),
    ]
}

fn samples() -> Vec<(&'static str, Message)> {
    vec![
        (
            "hello",
            Message::Hello {
                version: PROTOCOL_VERSION,
                signature: ModelSignature {
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
                },
                placement: Placement::cpu("CPUExecutionProvider"),
            },
        ),
        (
            "infer_request",
            Message::InferRequest {
                id: 7,
                outputs: vec!["label".into(), "probabilities".into()],
                tensors: tensors(),
                reply: None,
            },
        ),
        (
            "infer_request_reply_region",
            Message::InferRequest {
                id: u64::MAX,
                outputs: vec![],
                tensors: vec![],
                reply: Some(Region {
                    offset: 4096,
                    len: 1 << 20,
                }),
            },
        ),
        (
            "infer_response",
            Message::InferResponse {
                id: 8,
                tensors: tensors(),
            },
        ),
        (
            "error",
            Message::Error {
                id: 9,
                class: ErrorClass::InvalidInput,
                message: "bad shape ü".into(),
            },
        ),
        ("shutdown", Message::Shutdown),
    ]
}

fn frames() {
    let mut stream = Vec::new();
    for (name, m) in samples() {
        let frame = m.encode(DEFAULT_MAX_FRAME_BYTES).unwrap();
        // One body, decoded without an arena (mode 0).
        let mut one = vec![0u8];
        one.extend_from_slice(&frame[LENGTH_PREFIX..]);
        write("worker_frames", name, &one);
        stream.extend_from_slice(&frame);
    }
    // All of them as a stream (mode 4, limit 9 + 31 * 64 bytes).
    let mut s = vec![4u8 | (31 << 3)];
    s.extend_from_slice(&stream);
    write("worker_frames", "stream", &s);

    // Tensors placed in the arena, at offsets inside its 64 KiB: resolved by a view (mode 1)
    // and by a copy (mode 2).
    let m = Message::InferResponse {
        id: 3,
        tensors: tensors(),
    };
    let mut at = 128u64;
    let frame = m
        .encode_placing(DEFAULT_MAX_FRAME_BYTES, &mut |data| {
            let here = at;
            at += data.len() as u64 + 64;
            Some(here)
        })
        .unwrap();
    for mode in [1u8, 2] {
        let mut v = vec![mode];
        v.extend_from_slice(&frame[LENGTH_PREFIX..]);
        write("worker_frames", &format!("arena_mode{mode}"), &v);
    }
}

/// A safetensors file: 8-byte header length, the JSON header, the data.
fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn safetensors_seeds() {
    // runtime/src/candle/safetensors.rs's test file.
    write(
        "safetensors_header",
        "two_tensors",
        &safetensors(
            r#"{"__metadata__":{"k":"v"},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},"a":{"dtype":"U8","shape":[2,2],"data_offsets":[0,4]}}  "#,
            &[1, 2, 3, 4, 0, 0, 128, 63, 0, 0, 0, 64],
        ),
    );
    // A tiny BERT-like file (names as the candle BERT loader reads them), padded header.
    let names = [
        ("embeddings.word_embeddings.weight", "F32", vec![8u64, 4]),
        ("embeddings.position_embeddings.weight", "F32", vec![4, 4]),
        ("embeddings.token_type_embeddings.weight", "F32", vec![2, 4]),
        ("embeddings.LayerNorm.weight", "F32", vec![4]),
        ("embeddings.LayerNorm.bias", "F32", vec![4]),
        (
            "encoder.layer.0.attention.self.query.weight",
            "F16",
            vec![4, 4],
        ),
        ("encoder.layer.0.attention.self.query.bias", "BF16", vec![4]),
        ("classifier.weight", "F64", vec![2, 4]),
        ("classifier.bias", "F64", vec![2]),
        ("position_ids", "I64", vec![1, 4]),
        ("mask", "BOOL", vec![4]),
        ("scale", "F8_E4M3", vec![]),
        ("none", "I32", vec![0, 3]),
    ];
    let size = |d: &str| match d {
        "F64" | "I64" => 8,
        "F32" | "I32" => 4,
        "F16" | "BF16" => 2,
        _ => 1,
    };
    let mut header = String::from(r#"{"__metadata__":{"format":"pt"}"#);
    let mut data = Vec::new();
    for (name, dtype, shape) in &names {
        let n: u64 = shape.iter().product::<u64>() * size(dtype);
        let begin = data.len() as u64;
        data.extend((0..n).map(|i| (i * 7 % 251) as u8));
        header.push_str(&format!(
            r#","{name}":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[{begin},{}]}}"#,
            begin + n
        ));
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    write(
        "safetensors_header",
        "bert_like",
        &safetensors(&header, &data),
    );
    write("safetensors_header", "empty", &safetensors("{}", &[]));
}

fn main() {
    frames();
    safetensors_seeds();
}
