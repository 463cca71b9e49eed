//! The candle engine on a real BERT classifier: a small BERT with random weights made by
//! `tests/python/bert_reference.py`, written as safetensors (by the `safetensors` package) and
//! as an ONNX graph built op by op; ONNX Runtime's logits on the ONNX graph are the reference.
//! Then the same model through the real sandboxed worker, and the attacks: malformed files and
//! bad inputs, each with its error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use serde_json::{Value, json};
use warden_runtime::candle::bert::BertError;
use warden_runtime::candle::safetensors::SafetensorsError;
use warden_runtime::candle::{CandleEngine, CandleError, MAX_BATCH, MAX_LAYER_ELEMENTS};
use warden_runtime::engine::{Engine, EngineError, EngineOptions, ModelFormat};
use warden_runtime::onnx::OrtEngine;
use warden_runtime_client::tensor::{DataType, Tensor};
use warden_runtime_client::worker::{BatchPolicy, Worker, WorkerError, WorkerOptions};

/// Logits may differ from ONNX Runtime's by this much (both FP32, different kernels).
const TOLERANCE: f32 = 1e-4;
/// On a GPU: cuBLAS sums in another order than the CPU.
const GPU_TOLERANCE: f32 = 1e-3;

struct Model {
    dir: PathBuf,
    cases: Vec<Case>,
}

struct Case {
    shape: Vec<usize>,
    ids: Vec<i64>,
    mask: Vec<i64>,
    types: Vec<i64>,
    logits: Vec<f32>,
}

fn generate(extra: &[&str]) -> Model {
    // Made once per script version and arguments, and kept under the target directory: test
    // processes (one per test under nextest) share it. Written to a fresh directory first and
    // renamed into place, so that a reader never sees a half-written model.
    let script = repo_root().join("runtime/tests/python/bert_reference.py");
    let key = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(std::fs::read(&script).unwrap());
        h.update(extra.join(" "));
        h.finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let dir = match std::env::var_os("WARDEN_CANDLE_TEST_MODEL") {
        // The default model, written beforehand by the same script (the GPU kit carries it to
        // machines without the Python packages).
        Some(prepared) if extra.is_empty() => PathBuf::from(prepared),
        _ => PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bert-{key}")),
    };
    if !dir.join("cases.json").is_file() {
        let fresh = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let status = Command::new(python())
            .arg(&script)
            .arg(fresh.path())
            .args(extra)
            .status()
            .expect("run WARDEN_PYTHON");
        assert!(status.success(), "bert_reference.py failed");
        // Another process may have won the race; its model is the same.
        let _ = std::fs::rename(fresh.path(), &dir);
    }
    let v: Value = serde_json::from_slice(&std::fs::read(dir.join("cases.json")).unwrap()).unwrap();
    let ints = |v: &Value| -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect()
    };
    let cases = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            shape: c["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect(),
            ids: ints(&c["input_ids"]),
            mask: ints(&c["attention_mask"]),
            types: ints(&c["token_type_ids"]),
            logits: c["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect(),
        })
        .collect();
    Model { dir, cases }
}

/// The default test model (2 layers, hidden 64, 4 heads, vocabulary 1000, 64 positions, 2
/// token types, 3 labels), made once per test binary.
fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| generate(&[]))
}

impl Model {
    fn safetensors(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }
    fn bytes(&self) -> Vec<u8> {
        std::fs::read(self.safetensors()).unwrap()
    }
    fn sha256(&self) -> String {
        use sha2::Digest;
        sha2::Sha256::digest(self.bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

fn i64_tensor(name: &str, shape: &[usize], values: &[i64]) -> Tensor {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Tensor::new(name, DataType::Int64, shape.to_vec(), Bytes::from(bytes)).unwrap()
}

fn inputs(shape: &[usize], ids: &[i64], mask: &[i64], types: Option<&[i64]>) -> Vec<Tensor> {
    let mut v = vec![
        i64_tensor("input_ids", shape, ids),
        i64_tensor("attention_mask", shape, mask),
    ];
    if let Some(t) = types {
        v.push(i64_tensor("token_type_ids", shape, t));
    }
    v
}

fn case_inputs(c: &Case) -> Vec<Tensor> {
    inputs(&c.shape, &c.ids, &c.mask, Some(&c.types))
}

fn assert_within(actual: &[f32], expected: &[f32], tolerance: f32, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= tolerance,
            "{what}: element {i}: {a} vs {e}"
        );
    }
}

fn candle(threads: usize) -> CandleEngine {
    CandleEngine::load(&model().bytes(), threads).unwrap()
}

#[test]
fn logits_match_onnx_runtime() {
    let m = model();
    assert!(m.cases.len() >= 5);
    for threads in [1, 2] {
        let engine = candle(threads);
        let c = engine.config();
        assert_eq!(
            (c.vocab_size, c.hidden_size, c.num_layers, c.num_heads),
            (1000, 64, 2, 4)
        );
        assert_eq!(
            (c.max_positions, c.type_vocab_size, c.num_labels),
            (64, 2, 3)
        );
        assert_eq!(c.layer_norm_eps, 1e-12);
        for (n, case) in m.cases.iter().enumerate() {
            let out = engine.run(&case_inputs(case), &[]).unwrap();
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].name, "logits");
            assert_eq!(out[0].shape, vec![case.shape[0], 3]);
            assert_within(
                &as_f32(&out[0]),
                &case.logits,
                TOLERANCE,
                &format!("case {n}, {threads} threads"),
            );
        }
    }
    // The reference is not degenerate: rows differ, and padding is present.
    let c = &m.cases[2];
    assert!(c.mask.contains(&0));
    assert!((c.logits[0] - c.logits[3]).abs() > 1e-2);
}

/// A GPU request. In the default build candle has its CPU backend only: the request is
/// refused, or runs on the CPU where allowed, with the reason in the placement. In a
/// `candle-cuda` build (`hw-tests/candle-cuda.sh`) on a machine with a GPU it runs on
/// `cuda:0` and agrees with the Python reference; without a GPU there it is refused or falls
/// back, saying why.
#[test]
fn a_gpu_request_runs_there_or_is_refused_or_falls_back() {
    use warden_runtime_client::device::{Device, DeviceRequest};
    let m = model();
    let load = |cpu_fallback| {
        Engine::load(
            ModelFormat::Safetensors,
            &m.bytes(),
            None,
            EngineOptions {
                device: DeviceRequest {
                    device: Device::Cuda(0),
                    memory_budget_bytes: Some(1 << 30),
                    cpu_fallback,
                },
                ..EngineOptions::default()
            },
        )
    };
    let cuda_build = cfg!(feature = "candle-cuda");
    if cuda_build && !warden_runtime_client::accel::discover().gpus.is_empty() {
        let engine = load(false).unwrap();
        let p = engine.placement();
        assert_eq!(
            (p.device, p.provider.as_str()),
            (Device::Cuda(0), "candle-cuda")
        );
        assert_eq!(p.fallback_reason, None);
        for case in &m.cases {
            let out = engine.run(&case_inputs(case), &[]).unwrap();
            assert_within(
                &as_f32(&out[0]),
                &case.logits,
                GPU_TOLERANCE,
                "candle on cuda:0",
            );
        }
        println!(
            "candle-cuda: {} cases on cuda:0 agree with the reference",
            m.cases.len()
        );
        return;
    }
    let why = if cuda_build {
        "candle cannot use cuda:0"
    } else {
        "without candle's CUDA backend"
    };
    match load(false) {
        Err(EngineError::Device(d)) => {
            assert_eq!(d.device, Device::Cuda(0));
            assert!(d.reason.contains(why), "{d}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let engine = load(true).unwrap();
    let p = engine.placement();
    assert_eq!((p.device, p.provider.as_str()), (Device::Cpu, "candle-cpu"));
    assert!(p.fallback_reason.as_deref().unwrap().contains(why));
    let case = &m.cases[0];
    let out = engine.run(&case_inputs(case), &[]).unwrap();
    assert_within(&as_f32(&out[0]), &case.logits, TOLERANCE, "fallback");
}

#[test]
fn the_same_onnx_graph_in_the_rust_ort_engine_agrees() {
    let m = model();
    let onnx = std::fs::read(m.dir.join("model.onnx")).unwrap();
    let ort = OrtEngine::load(&ort_library(), &onnx, EngineOptions::default()).unwrap();
    let engine = candle(1);
    assert_eq!(ort.signature(), engine.signature());
    for case in &m.cases {
        let a = as_f32(&ort.run(&case_inputs(case), &[]).unwrap()[0]);
        let b = as_f32(&engine.run(&case_inputs(case), &[]).unwrap()[0]);
        assert_within(&b, &a, TOLERANCE, "candle vs ort (rust)");
        assert_within(&a, &case.logits, 1e-5, "ort (rust) vs ort (python)");
    }
}

#[test]
fn padding_changes_nothing() {
    let m = model();
    let engine = candle(1);
    let case = &m.cases[2]; // 5 rows of 32, lengths 32, 7, 19, 2, 30
    let (rows, seq) = (case.shape[0], case.shape[1]);
    let padded = as_f32(&engine.run(&case_inputs(case), &[]).unwrap()[0]);
    for r in 0..rows {
        let row = r * seq..(r + 1) * seq;
        let len = case.mask[row.clone()].iter().filter(|&&v| v == 1).count();
        let ids = &case.ids[row.start..row.start + len];
        let types = &case.types[row.start..row.start + len];
        let alone = engine
            .run(&inputs(&[1, len], ids, &vec![1; len], Some(types)), &[])
            .unwrap();
        assert_within(
            &as_f32(&alone[0]),
            &padded[r * 3..r * 3 + 3],
            1e-5,
            &format!("row {r} alone"),
        );
    }
    // Other ids under the mask: same logits. Other ids where it attends: different logits.
    let mut ids = case.ids.clone();
    let mut changed = case.ids.clone();
    for (i, &mask) in case.mask.iter().enumerate() {
        if mask == 0 {
            ids[i] = (ids[i] + 1) % 1000;
        } else {
            changed[i] = (changed[i] + 1) % 1000;
        }
    }
    let out = engine
        .run(
            &inputs(&case.shape, &ids, &case.mask, Some(&case.types)),
            &[],
        )
        .unwrap();
    assert_within(&as_f32(&out[0]), &padded, 1e-6, "padding ids changed");
    let out = engine
        .run(
            &inputs(&case.shape, &changed, &case.mask, Some(&case.types)),
            &[],
        )
        .unwrap();
    let diff: f32 = as_f32(&out[0])
        .iter()
        .zip(&padded)
        .map(|(a, b)| (a - b).abs())
        .sum();
    assert!(diff > 1e-2, "attended ids changed, logits did not ({diff})");
}

#[test]
fn one_token_type_means_no_token_type_input() {
    let m = generate(&["--type-vocab", "1", "--seed", "11"]);
    let engine =
        CandleEngine::load(&std::fs::read(m.dir.join("model.safetensors")).unwrap(), 1).unwrap();
    let names: Vec<&str> = engine
        .signature()
        .inputs
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["input_ids", "attention_mask"]);
    for case in &m.cases {
        let out = engine
            .run(&inputs(&case.shape, &case.ids, &case.mask, None), &[])
            .unwrap();
        assert_within(&as_f32(&out[0]), &case.logits, TOLERANCE, "type vocab 1");
    }
    let c = &m.cases[0];
    match engine.run(&case_inputs(c), &[]) {
        Err(CandleError::InvalidInput(e)) => assert!(e.contains("unknown input"), "{e}"),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

fn refused(engine: &CandleEngine, inputs: Vec<Tensor>, outputs: &[&str], expect: &str) {
    let outputs: Vec<String> = outputs.iter().map(|s| s.to_string()).collect();
    match engine.run(&inputs, &outputs) {
        Err(CandleError::InvalidInput(e)) => assert!(e.contains(expect), "{expect:?} not in {e:?}"),
        other => panic!("expected InvalidInput containing {expect:?}, got {other:?}"),
    }
}

#[test]
fn bad_inputs_are_refused_before_anything_runs() {
    let engine = candle(1);
    let s = [2usize, 4];
    let ok_ids = [1i64, 2, 3, 4, 5, 6, 7, 8];
    let ones = [1i64; 8];
    let zeros = [0i64; 8];
    let good = || inputs(&s, &ok_ids, &ones, Some(&zeros));
    assert!(engine.run(&good(), &[]).is_ok());
    assert!(engine.run(&good(), &["logits".to_string()]).is_ok());

    let mut ids = ok_ids;
    ids[5] = 1000;
    refused(
        &engine,
        inputs(&s, &ids, &ones, Some(&zeros)),
        &[],
        "input_ids row 1, position 1: id outside 0..1000",
    );
    ids[5] = -1;
    refused(
        &engine,
        inputs(&s, &ids, &ones, Some(&zeros)),
        &[],
        "id outside 0..1000",
    );
    ids[5] = i64::MAX;
    refused(
        &engine,
        inputs(&s, &ids, &ones, Some(&zeros)),
        &[],
        "id outside 0..1000",
    );
    let mut types = zeros;
    types[0] = 2;
    refused(
        &engine,
        inputs(&s, &ok_ids, &ones, Some(&types)),
        &[],
        "token_type_ids row 0, position 0: id outside 0..2",
    );
    let mut mask = ones;
    mask[6] = 2;
    refused(
        &engine,
        inputs(&s, &ok_ids, &mask, Some(&zeros)),
        &[],
        "attention_mask row 1, position 2: values must be 0 or 1",
    );
    let mut mask = ones;
    mask[4..].fill(0);
    refused(
        &engine,
        inputs(&s, &ok_ids, &mask, Some(&zeros)),
        &[],
        "attention_mask row 1 attends to no token",
    );
    // Longer than the 64 positions.
    let long = vec![1i64; 65];
    refused(
        &engine,
        inputs(&[1, 65], &long, &long, Some(&vec![0; 65])),
        &[],
        "sequence length 65 exceeds the model's 64 positions",
    );
    // Too many rows.
    let n = MAX_BATCH + 1;
    refused(
        &engine,
        inputs(&[n, 1], &vec![1; n], &vec![1; n], Some(&vec![0; n])),
        &[],
        "exceeds the limit of 1024",
    );
    // Shapes that disagree, wrong rank, empty, wrong datatype.
    let mut v = good();
    v[1] = i64_tensor("attention_mask", &[4, 2], &ones);
    refused(&engine, v, &[], "they must agree");
    let mut v = good();
    for t in &mut v {
        let name = t.name.clone();
        *t = i64_tensor(&name, &[8], &ones);
    }
    refused(&engine, v, &[], "[batch, sequence]");
    refused(
        &engine,
        inputs(&[0, 4], &[], &[], Some(&[])),
        &[],
        "empty input",
    );
    let mut v = good();
    v[0] = Tensor::new(
        "input_ids",
        DataType::Int32,
        vec![2, 4],
        Bytes::from(vec![0u8; 32]),
    )
    .unwrap();
    refused(&engine, v, &[], "datatype INT32, the model expects INT64");
    // A tensor whose bytes do not match its shape (built around Tensor::new).
    let mut v = good();
    v[0].data = Bytes::from(vec![0u8; 8]);
    refused(&engine, v, &[], "does not match its 8 bytes");
    // Names: missing, unknown, twice; outputs.
    refused(
        &engine,
        good()[..2].to_vec(),
        &[],
        "missing input \"token_type_ids\"",
    );
    let mut v = good();
    v.push(i64_tensor("position_ids", &s, &zeros));
    refused(&engine, v, &[], "unknown input \"position_ids\"");
    let mut v = good();
    v.push(v[0].clone());
    refused(&engine, v, &[], "given more than once");
    refused(&engine, good(), &["probabilities"], "unknown output");
    refused(&engine, good(), &["logits", "logits"], "more than once");
    // And the engine still serves.
    assert!(engine.run(&good(), &[]).is_ok());
}

#[test]
fn batch_and_attention_work_are_bounded() {
    // A full batch of the cap runs: 1024 identical rows give identical logits.
    let engine = candle(2);
    let (n, seq) = (MAX_BATCH, 8);
    let out = engine
        .run(
            &inputs(
                &[n, seq],
                &vec![7; n * seq],
                &vec![1; n * seq],
                Some(&vec![0; n * seq]),
            ),
            &[],
        )
        .unwrap();
    assert_eq!(out[0].shape, vec![n, 3]);
    let logits = as_f32(&out[0]);
    assert!(logits.chunks_exact(3).all(|r| r == &logits[..3]));

    // With 512 positions and 4 heads, 64 rows of 512 make exactly 2^26 scores per layer: the
    // most allowed. 65 rows are refused before anything is allocated.
    let m = generate(&["--max-positions", "512", "--seed", "3"]);
    let engine = CandleEngine::load(&std::fs::read(m.safetensors()).unwrap(), 2).unwrap();
    assert_eq!(64 * 4 * 512 * 512, MAX_LAYER_ELEMENTS);
    let (n, seq) = (65, 512);
    refused(
        &engine,
        inputs(
            &[n, seq],
            &vec![1; n * seq],
            &vec![1; n * seq],
            Some(&vec![0; n * seq]),
        ),
        &[],
        "needs more memory than one inference may use",
    );
    // The long case of the reference (2 rows of 512) matches.
    let long = m.cases.iter().find(|c| c.shape == [2, 512]).unwrap();
    let out = engine.run(&case_inputs(long), &[]).unwrap();
    assert_within(&as_f32(&out[0]), &long.logits, TOLERANCE, "512 positions");

    // The feed-forward activations are bounded too: hidden 512 (intermediate 2048), 600 rows
    // of 64 make 78.6 Mi activations (over 2^26) but only 9.8 Mi scores.
    let m = generate(&["--hidden", "512", "--seed", "5"]);
    let engine = CandleEngine::load(&std::fs::read(m.safetensors()).unwrap(), 2).unwrap();
    assert_eq!(engine.config().intermediate_size, 2048);
    let batch = |n: usize| {
        inputs(
            &[n, 64],
            &vec![1; n * 64],
            &vec![1; n * 64],
            Some(&vec![0; n * 64]),
        )
    };
    refused(
        &engine,
        batch(600),
        &[],
        "needs more memory than one inference may use",
    );
    let c = &m.cases[1];
    let out = engine.run(&case_inputs(c), &[]).unwrap();
    assert_within(&as_f32(&out[0]), &c.logits, TOLERANCE, "hidden 512");
}

// ---- malformed files ----

/// The test model's header and data section, to rebuild variants from.
struct Parts {
    metadata: Option<BTreeMap<String, String>>,
    tensors: Vec<(String, String, Vec<u64>, Vec<u8>)>,
}

fn parts(bytes: &[u8]) -> Parts {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: BTreeMap<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut metadata = None;
    let mut tensors = Vec::new();
    for (name, v) in header {
        if name == "__metadata__" {
            metadata = Some(serde_json::from_value(v).unwrap());
            continue;
        }
        let [b, e]: [usize; 2] = serde_json::from_value(v["data_offsets"].clone()).unwrap();
        tensors.push((
            name,
            v["dtype"].as_str().unwrap().to_string(),
            serde_json::from_value(v["shape"].clone()).unwrap(),
            data[b..e].to_vec(),
        ));
    }
    Parts { metadata, tensors }
}

impl Parts {
    fn write(&self) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        if let Some(m) = &self.metadata {
            header.insert("__metadata__".into(), json!(m));
        }
        let mut data = Vec::new();
        for (name, dtype, shape, bytes) in &self.tensors {
            header.insert(
                name.clone(),
                json!({"dtype": dtype, "shape": shape,
                       "data_offsets": [data.len(), data.len() + bytes.len()]}),
            );
            data.extend_from_slice(bytes);
        }
        let header = serde_json::to_vec(&header).unwrap();
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&header);
        out.extend_from_slice(&data);
        out
    }

    fn tensor(&mut self, name: &str) -> &mut (String, String, Vec<u64>, Vec<u8>) {
        self.tensors.iter_mut().find(|t| t.0 == name).unwrap()
    }
}

fn load_err(bytes: &[u8]) -> CandleError {
    match CandleEngine::load(bytes, 1) {
        Ok(_) => panic!("a malformed model loaded"),
        Err(e) => e,
    }
}

#[test]
fn malformed_files_are_refused_at_load() {
    let good = model().bytes();
    // The rebuilt file is byte-for-byte loadable, so every refusal below is the defect's.
    let base = parts(&good);
    assert!(CandleEngine::load(&base.write(), 1).is_ok());
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;

    // Truncated: in the length, in the header, in the data.
    assert!(matches!(
        load_err(&good[..5]),
        CandleError::Format(SafetensorsError::TooShort { len: 5 })
    ));
    assert!(matches!(
        load_err(&good[..8 + header_len / 2]),
        CandleError::Format(SafetensorsError::HeaderPastEnd { .. })
    ));
    match load_err(&good[..good.len() - 1]) {
        CandleError::Format(SafetensorsError::OffsetsOutOfRange { end, len, .. }) => {
            assert_eq!(end as usize, len + 1)
        }
        other => panic!("truncated data: {other:?}"),
    }
    // Header length overflow.
    let mut bad = good.clone();
    bad[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        load_err(&bad),
        CandleError::Format(SafetensorsError::HeaderTooLarge { .. })
    ));
    // Header that is not JSON.
    let mut bad = good.clone();
    bad[8 + 1] = b'!';
    assert!(matches!(
        load_err(&bad),
        CandleError::Format(SafetensorsError::Header(_))
    ));
    // Offsets out of range: rewrite one tensor's end past the data.
    let text = String::from_utf8(good[8..8 + header_len].to_vec()).unwrap();
    let data_len = good.len() - 8 - header_len;
    let last_end = format!("{data_len}]");
    assert!(text.contains(&last_end));
    let moved = text.replacen(&last_end, &format!("{}]", data_len + 4), 1);
    let mut bad = (moved.len() as u64).to_le_bytes().to_vec();
    bad.extend_from_slice(moved.as_bytes());
    bad.extend_from_slice(&good[8 + header_len..]);
    assert!(matches!(
        load_err(&bad),
        CandleError::Format(
            SafetensorsError::OffsetsOutOfRange { .. } | SafetensorsError::SizeMismatch { .. }
        )
    ));

    // Wrong dtype (same element size, so only the dtype check can catch it).
    let mut p = parts(&good);
    p.tensor("classifier.weight").1 = "I32".into();
    assert_eq!(
        load_err(&p.write()).to_string(),
        "cannot load model: tensor \"classifier.weight\" has dtype I32, expected F32"
    );
    // Missing tensor.
    let mut p = parts(&good);
    p.tensors
        .retain(|t| t.0 != "bert.encoder.layer.1.attention.self.key.bias");
    assert!(matches!(
        load_err(&p.write()),
        CandleError::Model(BertError::MissingTensor(n)) if n == "bert.encoder.layer.1.attention.self.key.bias"
    ));
    // Mis-shaped tensor (same element count).
    let mut p = parts(&good);
    p.tensor("bert.encoder.layer.0.attention.self.query.weight")
        .2 = vec![32, 128];
    match load_err(&p.write()) {
        CandleError::Model(BertError::Shape {
            name,
            actual,
            expected,
        }) => {
            assert_eq!(name, "bert.encoder.layer.0.attention.self.query.weight");
            assert_eq!((actual, expected), (vec![32, 128], vec![64, 64]));
        }
        other => panic!("mis-shaped: {other:?}"),
    }
    // A tensor of another architecture.
    let mut p = parts(&good);
    p.tensors.push((
        "cls.predictions.bias".into(),
        "F32".into(),
        vec![1000],
        vec![0; 4000],
    ));
    assert!(matches!(
        load_err(&p.write()),
        CandleError::Model(BertError::Unexpected(n)) if n == "cls.predictions.bias"
    ));

    // A gap in the layers: layer 1 renamed to layer 2.
    let mut p = parts(&good);
    for t in &mut p.tensors {
        t.0 =
            t.0.replace("bert.encoder.layer.1.", "bert.encoder.layer.2.");
    }
    assert!(matches!(
        load_err(&p.write()),
        CandleError::Model(BertError::Unexpected(n)) if n.starts_with("bert.encoder.layer.2.")
    ));

    // Metadata: absent, incomplete, wrong.
    let mut p = parts(&good);
    p.metadata = None;
    assert!(matches!(
        load_err(&p.write()),
        CandleError::Model(BertError::NoMetadata)
    ));
    for (key, value, expect) in [
        ("num_attention_heads", None, "is missing"),
        ("num_attention_heads", Some("0"), "not a positive integer"),
        ("num_attention_heads", Some("5"), "not a multiple"),
        ("layer_norm_eps", Some("NaN"), "not a number in (0, 1)"),
        ("hidden_act", Some("swish"), "\"swish\" is not supported"),
        ("architecture", Some("GPT2LMHeadModel"), "is not served"),
    ] {
        let mut p = parts(&good);
        let m = p.metadata.as_mut().unwrap();
        match value {
            Some(v) => m.insert(key.into(), v.into()),
            None => m.remove(key),
        };
        let e = load_err(&p.write()).to_string();
        assert!(e.contains(expect), "{key}={value:?}: {e}");
    }

    // Through the engine abstraction, refusals are `Model` errors.
    match Engine::load(
        ModelFormat::Safetensors,
        &good[..5],
        None,
        EngineOptions::default(),
    ) {
        Err(EngineError::Model(m)) => assert!(m.contains("malformed safetensors"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_format_follows_the_file_name() {
    assert_eq!(
        ModelFormat::of(Path::new("m/model.safetensors")).unwrap(),
        ModelFormat::Safetensors
    );
    assert_eq!(
        ModelFormat::of(Path::new("model.ONNX")).unwrap(),
        ModelFormat::Onnx
    );
    for bad in ["model.bin", "model", "model.pt"] {
        assert!(ModelFormat::of(Path::new(bad)).is_err(), "{bad}");
    }
}

// ---- the sandboxed worker ----

fn worker_options(m: &Model) -> WorkerOptions {
    let mut o = WorkerOptions::new(
        runtime_binary(),
        ort_library(),
        m.safetensors(),
        sha256_digest(&m.sha256()),
    );
    o.concurrency = 2;
    o.intra_op_threads = 1;
    o.startup_timeout = Duration::from_secs(30);
    o
}

/// The candle worker's system-call census (see `tests/syscalls.rs`): traced under `strace -f`,
/// it serves every reference case, two at a time, and makes no call its filter refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_candle_worker_makes_only_allowed_calls() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let (wrapper, trace) = traced_worker(dir.path());
    let mut options = worker_options(m);
    options.worker_binary = wrapper;
    options.intra_op_threads = 2;
    options.startup_timeout = Duration::from_secs(60);
    let worker = Worker::start(options).await.unwrap();
    for pair in m.cases.chunks(2) {
        let first = worker.infer(case_inputs(&pair[0]), vec![]);
        let second = async {
            match pair.get(1) {
                Some(case) => Some(worker.infer(case_inputs(case), vec![]).await),
                None => None,
            }
        };
        let (first, second) = tokio::join!(first, second);
        let outs = std::iter::once(first).chain(second);
        for (case, out) in pair.iter().zip(outs) {
            assert_within(&as_f32(&out.unwrap()[0]), &case.logits, TOLERANCE, "traced");
        }
    }
    worker.shutdown().await;
    let (status, report) = syscall_census(&trace, None);
    assert_census_clean("candle worker", status, &report);
}

/// [`a_gpu_request_runs_there_or_is_refused_or_falls_back`] through the real sandboxed worker:
/// in a `candle-cuda` build on a GPU machine the worker gets the GPU's device nodes, reports
/// `cuda:0` in its `Hello` and agrees with the reference; elsewhere its start is refused, or,
/// with a fallback allowed, it serves on the CPU and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_request_runs_there_or_is_refused_or_falls_back_in_the_sandboxed_worker() {
    use warden_runtime_client::device::Device;
    let m = model();
    // The CUDA libraries the candle-cuda worker links come from WARDEN_CUDA_LIBRARY_DIRS.
    let options = |cpu_fallback| on_cuda0(worker_options(m), cpu_fallback);
    let on_gpu =
        cfg!(feature = "candle-cuda") && !warden_runtime_client::accel::discover().gpus.is_empty();
    if !on_gpu {
        let e = Worker::start(options(false)).await.unwrap_err();
        assert!(e.to_string().contains("cuda:0"), "{e}");
    }
    let worker = Worker::start(options(!on_gpu)).await.unwrap();
    let p = worker.placement();
    if on_gpu {
        assert_eq!(
            (p.device, p.provider.as_str()),
            (Device::Cuda(0), "candle-cuda")
        );
    } else {
        assert_eq!(p.device, Device::Cpu);
        assert!(p.fallback_reason.is_some());
    }
    let tolerance = if on_gpu { GPU_TOLERANCE } else { TOLERANCE };
    for case in &m.cases {
        let out = worker.infer(case_inputs(case), vec![]).await.unwrap();
        assert_within(
            &as_f32(&out[0]),
            &case.logits,
            tolerance,
            "sandboxed worker",
        );
    }
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandboxed_worker_serves_the_candle_model() {
    let m = model();
    let worker = Worker::start(worker_options(m)).await.unwrap();
    let engine = candle(1);
    assert_eq!(worker.signature(), engine.signature());
    for case in &m.cases {
        let out = worker.infer(case_inputs(case), vec![]).await.unwrap();
        assert_within(&as_f32(&out[0]), &case.logits, TOLERANCE, "worker");
    }
    // A bad input is the caller's fault, and the worker keeps serving.
    let c = &m.cases[0];
    let mut ids = c.ids.clone();
    ids[0] = 5000;
    match worker
        .infer(inputs(&c.shape, &ids, &c.mask, Some(&c.types)), vec![])
        .await
    {
        Err(WorkerError::InvalidInput { message }) => {
            assert!(message.contains("id outside 0..1000"), "{message}");
            assert!(!message.contains("5000"), "the value leaked: {message}");
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    // 32 concurrent requests of mixed shapes, all correct.
    let mut tasks = Vec::new();
    for i in 0..32 {
        let worker = worker.clone();
        let case = &m.cases[i % m.cases.len()];
        let (input, expected) = (case_inputs(case), case.logits.clone());
        tasks.push(tokio::spawn(async move {
            let out = worker.infer(input, vec![]).await.unwrap();
            assert_within(&as_f32(&out[0]), &expected, TOLERANCE, "concurrent");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(worker.is_alive());

    // Seen from outside, the process that ran candle is sandboxed like an ONNX worker.
    let inner = children(worker.pid().unwrap());
    assert_eq!(inner.len(), 1);
    let status = std::fs::read_to_string(format!("/proc/{}/status", inner[0])).unwrap();
    assert!(!field(&status, "Uid:").starts_with("0\t"));
    assert_eq!(field(&status, "CapEff:"), "0000000000000000");
    assert_eq!(field(&status, "CapBnd:"), "0000000000000000");
    assert_eq!(field(&status, "NoNewPrivs:"), "1");
    assert_eq!(field(&status, "Seccomp:"), "2", "filter mode");
    // The reader, 2 executors, and candle's pool of 1 thread × concurrency 2.
    let threads: usize = field(&status, "Threads:").parse().unwrap();
    assert_eq!(threads, 5, "{threads} threads");
    for ns in ["user", "mnt", "net", "pid"] {
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let theirs = std::fs::read_link(format!("/proc/{}/ns/{ns}", inner[0])).unwrap();
        assert_ne!(ours, theirs, "{ns} namespace shared");
    }
    worker.shutdown().await;
}

/// `warden-sandbox-probe` started on the candle model (it loads the model exactly as the
/// worker does, then probes): the same sandbox as for an ONNX model.
#[test]
fn the_sandbox_holds_for_a_candle_worker() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixStream;
    use std::process::Stdio;
    let m = model();
    let secrets = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let secret = secrets.path().join("secret.key");
    std::fs::write(&secret, b"not a real key").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut o = worker_options(m);
    o.worker_binary = PathBuf::from(env!("CARGO_BIN_EXE_warden-sandbox-probe"));
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut child = Command::new(&o.worker_binary)
        .args(o.args())
        .arg("--probe-secret")
        .arg(&secret)
        .arg("--probe-connect")
        .arg(listener.local_addr().unwrap().to_string())
        .env_clear()
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // As the agent does: the tensor arena first, so the probe maps it like a worker.
    let _arena = warden_runtime_client::shm::share(&ours, o.shared_memory_bytes).unwrap();
    ours.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(ours.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    let r: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    let err = |k: &str| {
        r[k]["err"]
            .as_str()
            .unwrap_or_else(|| panic!("{k}: {}", r[k]))
            .to_string()
    };
    assert_eq!(r["pid"], 1);
    assert_eq!(r["uid"], warden_runtime::sandbox::SANDBOX_UID);
    assert!(err("connect_tcp").contains("not permitted"));
    assert!(err("syscall_socket").starts_with("EPERM"));
    assert!(err("syscall_unshare").starts_with("EPERM"));
    assert!(err("spawn_process").contains("Operation not permitted"));
    assert!(err("secret_path").contains("No such file"));
    assert!(err("write_root").contains("Read-only"));
    assert_eq!(r["root_entries"]["ok"], r#"["proc", "tmp"]"#);
    assert!(matches!(listener.accept(), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock));
    drop(ours);
    assert!(child.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_merges_candle_requests_of_one_length() {
    let m = model();
    let mut o = worker_options(m);
    o.batching = Some(BatchPolicy {
        window: Duration::from_millis(20),
        max_rows: 64,
    });
    let worker = Worker::start(o).await.unwrap();
    let case = &m.cases[4]; // 8 rows of 16
    let seq = case.shape[1];
    let mut tasks = Vec::new();
    for r in 0..case.shape[0] {
        let worker = worker.clone();
        let row = r * seq..(r + 1) * seq;
        let input = inputs(
            &[1, seq],
            &case.ids[row.clone()],
            &case.mask[row.clone()],
            Some(&case.types[row]),
        );
        let expected = case.logits[r * 3..r * 3 + 3].to_vec();
        tasks.push(tokio::spawn(async move {
            let out = worker.infer(input, vec![]).await.unwrap();
            assert_eq!(out[0].shape, vec![1, 3]);
            assert_within(&as_f32(&out[0]), &expected, TOLERANCE, "batched row");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_refuses_a_tampered_or_malformed_model() {
    let m = model();
    // The digest covers the hyper-parameters: a file whose metadata was changed after
    // signing is refused before it is parsed.
    let mut p = parts(&m.bytes());
    p.metadata
        .as_mut()
        .unwrap()
        .insert("num_attention_heads".into(), "8".into());
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let tampered = dir.path().join("model.safetensors");
    std::fs::write(&tampered, p.write()).unwrap();
    let mut o = worker_options(m);
    o.model_file = tampered.clone();
    match Worker::start(o).await {
        Err(WorkerError::Unavailable { reason }) => {
            assert!(reason.contains("digest mismatch"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // With a matching digest, the malformed file is refused by the parser, in the sandbox.
    let truncated = dir.path().join("truncated.safetensors");
    let bytes = m.bytes();
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let mut o = worker_options(m);
    o.model_file = truncated.clone();
    o.model_digest =
        warden_runtime_client::model_digest::ModelDigest::sha256_of(&bytes[..bytes.len() - 100]);
    match Worker::start(o).await {
        Err(WorkerError::Unavailable { reason }) => {
            assert!(reason.contains("malformed safetensors"), "{reason}");
            assert!(reason.contains("run past the data section"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A small deterministic generator (xorshift), so that the fuzz cases below are the same on
/// every run and a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn mutated_files_never_panic_the_loader() {
    let good = model().bytes();
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    let (mut loaded, mut refused) = (0, 0);
    for round in 0..400 {
        let mut bytes = good.clone();
        match round % 4 {
            // Flip bytes in the header (where the structure is).
            0 | 1 => {
                for _ in 0..1 + rng.below(4) {
                    let i = 8 + rng.below(header_len);
                    bytes[i] = rng.next() as u8;
                }
            }
            // Rewrite the length prefix.
            2 => {
                let v = match rng.below(3) {
                    0 => rng.next(),
                    1 => header_len as u64 + rng.below(64) as u64 - 32,
                    _ => rng.below(good.len() * 2) as u64,
                };
                bytes[..8].copy_from_slice(&v.to_le_bytes());
            }
            // Truncate anywhere.
            _ => bytes.truncate(rng.below(good.len())),
        }
        match CandleEngine::load(&bytes, 1) {
            Ok(engine) => {
                // A flip that leaves a loadable model (e.g. in a metadata value that still
                // parses) must still serve.
                loaded += 1;
                let _ = engine.run(&case_inputs(&model().cases[0]), &[]);
            }
            Err(CandleError::Format(_) | CandleError::Model(_)) => refused += 1,
            Err(other) => panic!("round {round}: unexpected error {other:?}"),
        }
    }
    assert!(refused > 300, "{refused} refused, {loaded} loaded");
}

#[test]
fn random_inputs_never_panic_the_engine() {
    let engine = candle(1);
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut ran = 0;
    for _ in 0..300 {
        let (b, s) = (1 + rng.below(4), 1 + rng.below(70));
        let n = b * s;
        let value = |r: &mut Rng| -> i64 {
            match r.below(6) {
                0 => r.next() as i64,
                1 => -(r.below(3) as i64),
                2 => 999 + r.below(3) as i64,
                _ => r.below(1000) as i64,
            }
        };
        let ids: Vec<i64> = (0..n).map(|_| value(&mut rng)).collect();
        let mask: Vec<i64> = (0..n)
            .map(|_| {
                if rng.below(20) == 0 {
                    2
                } else {
                    (rng.below(4) != 0) as i64
                }
            })
            .collect();
        let types: Vec<i64> = (0..n).map(|_| (rng.below(30) == 0) as i64 * 3).collect();
        match engine.run(&inputs(&[b, s], &ids, &mask, Some(&types)), &[]) {
            Ok(out) => {
                ran += 1;
                assert!(as_f32(&out[0]).iter().all(|v| v.is_finite()));
            }
            Err(CandleError::InvalidInput(_)) => {}
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert!(ran > 0 && ran < 300, "{ran} of 300 ran");
}
