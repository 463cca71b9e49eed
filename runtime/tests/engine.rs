//! OrtEngine against the demo model and Python onnxruntime.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use warden_runtime::engine::{EngineError, EngineOptions};
use warden_runtime::onnx::OrtEngine;
use warden_runtime_client::tensor::{DataType, Tensor, TensorSpec};

fn demo_engine(sessions: usize) -> OrtEngine {
    OrtEngine::load(
        &ort_library(),
        &model_bytes(),
        EngineOptions {
            intra_op_threads: 1,
            sessions,
            ..Default::default()
        },
    )
    .expect("load demo model")
}

#[test]
fn reads_the_demo_signature() {
    let engine = demo_engine(1);
    let sig = engine.signature();
    assert_eq!(
        sig.inputs,
        vec![TensorSpec {
            name: "input".into(),
            datatype: DataType::Fp32,
            shape: vec![-1, 30],
        }]
    );
    assert_eq!(
        sig.outputs,
        vec![
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
        ]
    );
}

#[test]
fn matches_python_onnxruntime() {
    let engine = demo_engine(1);
    let (shape, data) = sample_rows();
    let (labels, probs) = python_reference(&shape, &data);
    assert_eq!(labels.len(), 2);

    let out = engine.run(&[sample_input()], &[]).unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].name, "label");
    assert_eq!(out[0].shape, vec![2]);
    assert_eq!(as_i64(&out[0]), labels);
    assert_eq!(out[1].name, "probabilities");
    assert_eq!(out[1].shape, vec![2, 2]);
    assert_close(&as_f32(&out[1]), &probs);

    // Selected outputs come back in the order asked for, and only those.
    let out = engine
        .run(&[sample_input()], &["probabilities".to_string()])
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].name, "probabilities");
    assert_close(&as_f32(&out[0]), &probs);
    let out = engine
        .run(
            &[sample_input()],
            &["probabilities".to_string(), "label".to_string()],
        )
        .unwrap();
    assert_eq!(out[0].name, "probabilities");
    assert_eq!(as_i64(&out[1]), labels);
}

#[test]
fn concurrent_runs_share_the_pool() {
    let engine = Arc::new(demo_engine(2));
    let (shape, data) = sample_rows();
    let (labels, probs) = python_reference(&shape, &data);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let engine = Arc::clone(&engine);
            let (labels, probs) = (labels.clone(), probs.clone());
            std::thread::spawn(move || {
                for _ in 0..50 {
                    let out = engine.run(&[sample_input()], &[]).unwrap();
                    assert_eq!(as_i64(&out[0]), labels);
                    assert_close(&as_f32(&out[1]), &probs);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

fn invalid(result: Result<Vec<Tensor>, EngineError>) -> String {
    match result {
        Err(EngineError::InvalidInput(m)) => m,
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

#[test]
fn refuses_bad_inputs_precisely() {
    let engine = demo_engine(1);
    let good = sample_input();

    let mut t = good.clone();
    t.name = "inputs".into();
    let m = invalid(engine.run(&[t], &[]));
    assert!(
        m.contains("unknown input \"inputs\"") && m.contains("\"input\""),
        "{m}"
    );

    let t = Tensor::new(
        "input",
        DataType::Fp64,
        vec![1, 30],
        Bytes::from(vec![0u8; 240]),
    )
    .unwrap();
    let m = invalid(engine.run(&[t], &[]));
    assert!(
        m.contains("datatype FP64") && m.contains("expects FP32"),
        "{m}"
    );

    let t = f32_tensor("input", vec![1, 29], &[0.0; 29]);
    let m = invalid(engine.run(&[t], &[]));
    assert!(m.contains("shape [1, 29]") && m.contains("[-1, 30]"), "{m}");

    let t = f32_tensor("input", vec![30], &[0.0; 30]);
    let m = invalid(engine.run(&[t], &[]));
    assert!(m.contains("shape [30]"), "{m}");

    // Fields are public: a tensor whose bytes do not match its shape is refused, not run.
    let mut t = f32_tensor("input", vec![1, 30], &[0.0; 30]);
    t.data = t.data.slice(..100);
    let m = invalid(engine.run(&[t], &[]));
    assert!(m.contains("needs 120 bytes, got 100"), "{m}");

    let m = invalid(engine.run(&[], &[]));
    assert!(m.contains("missing input \"input\""), "{m}");

    let m = invalid(engine.run(&[good.clone(), good.clone()], &[]));
    assert!(m.contains("more than once"), "{m}");

    let m = invalid(engine.run(std::slice::from_ref(&good), &["score".to_string()]));
    assert!(m.contains("unknown output \"score\""), "{m}");

    // Still serving after all that.
    assert_eq!(engine.run(&[good], &[]).unwrap().len(), 2);
}

#[test]
fn load_errors_are_errors() {
    match OrtEngine::load(
        std::path::Path::new("/nonexistent/libonnxruntime.so"),
        &model_bytes(),
        EngineOptions::default(),
    ) {
        // In a process where another test already loaded the library the path is ignored
        // (the library is process-global), so only the model error path is certain here.
        Err(EngineError::Library { path, .. }) => assert!(path.contains("nonexistent")),
        Ok(_) => {}
        Err(e) => panic!("unexpected {e}"),
    }
    match OrtEngine::load(&ort_library(), b"not a model", EngineOptions::default()) {
        Err(EngineError::Model(_)) => {}
        other => panic!("expected a model error, got {other:?}"),
    }
}

/// Builds, with Python's `onnx`, a model with one Identity per datatype.
fn identity_model(types: &[(&str, &str)], extra: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.onnx");
    let spec: Vec<String> = types
        .iter()
        .map(|(name, ty)| format!("(\"{name}\", TensorProto.{ty})"))
        .collect();
    let script = format!(
        r#"
import onnx, sys
from onnx import helper, TensorProto
types = [{spec}]
inputs = [helper.make_tensor_value_info("x_" + n, t, [None, 3]) for n, t in types]
outputs = [helper.make_tensor_value_info("y_" + n, t, [None, 3]) for n, t in types]
nodes = [helper.make_node("Identity", ["x_" + n], ["y_" + n]) for n, t in types]
{extra}
graph = helper.make_graph(nodes, "identity", inputs, outputs)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
model.ir_version = 8
onnx.save(model, sys.argv[1])
"#,
        spec = spec.join(", ")
    );
    let status = Command::new(python())
        .arg("-c")
        .arg(&script)
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success(), "building the identity model failed");
    std::fs::read(&path).unwrap()
}

#[test]
fn converts_every_datatype_both_ways() {
    let types = [
        ("fp32", "FLOAT", DataType::Fp32),
        ("fp64", "DOUBLE", DataType::Fp64),
        ("fp16", "FLOAT16", DataType::Fp16),
        ("i8", "INT8", DataType::Int8),
        ("i16", "INT16", DataType::Int16),
        ("i32", "INT32", DataType::Int32),
        ("i64", "INT64", DataType::Int64),
        ("u8", "UINT8", DataType::Uint8),
        ("u16", "UINT16", DataType::Uint16),
        ("u32", "UINT32", DataType::Uint32),
        ("u64", "UINT64", DataType::Uint64),
        ("bool", "BOOL", DataType::Bool),
    ];
    let pairs: Vec<_> = types.iter().map(|(n, t, _)| (*n, *t)).collect();
    let engine = OrtEngine::load(
        &ort_library(),
        &identity_model(&pairs, ""),
        EngineOptions::default(),
    )
    .unwrap();
    let mut inputs = Vec::new();
    for (name, _, dtype) in &types {
        assert_eq!(
            engine
                .signature()
                .inputs
                .iter()
                .find(|s| s.name == format!("x_{name}"))
                .unwrap()
                .datatype,
            *dtype
        );
        // Two rows of three elements, with distinctive bytes per type.
        let n = 6 * dtype.size();
        let data: Vec<u8> = match dtype {
            DataType::Bool => vec![1, 0, 1, 1, 0, 0],
            DataType::Fp16 => [1.5f32, -2.0, 0.25, 65504.0, 0.0, -0.5]
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            DataType::Fp32 => [1.5f32, -2.0, 0.25, 3.4e38, 0.0, -0.5]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            DataType::Fp64 => [1.5f64, -2.0, 0.25, 1e300, 0.0, -0.5]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            _ => (0..n).map(|i| (i * 37 + 11) as u8).collect(),
        };
        inputs
            .push(Tensor::new(format!("x_{name}"), *dtype, vec![2, 3], Bytes::from(data)).unwrap());
    }
    let out = engine.run(&inputs, &[]).unwrap();
    assert_eq!(out.len(), types.len());
    for (input, output) in inputs.iter().zip(&out) {
        assert_eq!(output.name, input.name.replace("x_", "y_"));
        assert_eq!(output.dtype, input.dtype);
        assert_eq!(output.shape, input.shape);
        assert_eq!(output.data, input.data, "{}", input.name);
    }

    // BOOL bytes other than 0/1 are refused rather than reinterpreted.
    let mut bad = inputs.clone();
    let pos = bad.iter().position(|t| t.dtype == DataType::Bool).unwrap();
    bad[pos].data = Bytes::from_static(&[1, 0, 2, 1, 0, 0]);
    let m = invalid(engine.run(&bad, &[]));
    assert!(m.contains("BOOL element 2 is 2"), "{m}");
}

#[test]
fn refuses_models_with_unsupported_types() {
    let bytes = identity_model(&[("s", "STRING")], "");
    match OrtEngine::load(&ort_library(), &bytes, EngineOptions::default()) {
        Err(EngineError::Model(m)) => {
            assert!(m.contains("\"x_s\"") && m.contains("String"), "{m}")
        }
        other => panic!("expected a model error, got {other:?}"),
    }
}
