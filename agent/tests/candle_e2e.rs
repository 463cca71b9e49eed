//! A safetensors BERT classifier end to end: signed as an OMS bundle, verified and staged by
//! the agent, run by a sandboxed candle worker, called over mutual TLS at
//! `/v2/models/<name>/infer`. The model and its reference logits (ONNX Runtime on the same
//! network built as an ONNX graph) come from `runtime/tests/python/bert_reference.py`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use support::serving::{Background, require_onnxruntime, worker_binary};
use support::{Client, tls_config};
use warden_agent::{config::Config, demo, serve};
use warden_attest::bundle::{self, SignOptions, Signer};

fn python() -> PathBuf {
    PathBuf::from(
        std::env::var_os("WARDEN_PYTHON")
            .expect("WARDEN_PYTHON is not set: run `scripts/setup.sh --test`, `source .cache/env`"),
    )
}

/// The demo's PKI, signer and config, with its model replaced by the BERT classifier, signed
/// by the demo's model signer. Returns the reference cases.
fn prepare(dir: &Path) -> (demo::DemoFiles, Config, Value) {
    require_onnxruntime();
    let (files, _) = demo::prepare(dir, 0).unwrap();
    let made = dir.join("made");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime/tests/python/bert_reference.py");
    let status = std::process::Command::new(python())
        .arg(script)
        .arg(&made)
        .status()
        .unwrap();
    assert!(status.success(), "bert_reference.py failed");
    let model_dir = files.dir.join("models/demo");
    std::fs::remove_file(model_dir.join("model.onnx")).unwrap();
    std::fs::copy(
        made.join("model.safetensors"),
        model_dir.join("model.safetensors"),
    )
    .unwrap();
    let key = std::fs::read_to_string(files.dir.join("trust/model-signer.key")).unwrap();
    let signed = bundle::sign_model(
        &model_dir,
        &Signer::from_private_key_pem(&key).unwrap(),
        &SignOptions {
            model_name: Some("demo".into()),
            ..SignOptions::default()
        },
    )
    .unwrap();
    signed.write_to(&files.dir.join("models/demo.sig")).unwrap();
    let text = std::fs::read_to_string(&files.config).unwrap();
    assert!(text.contains("file = \"model.onnx\""));
    std::fs::write(
        &files.config,
        text.replace("file = \"model.onnx\"", "file = \"model.safetensors\""),
    )
    .unwrap();
    let mut config = Config::load(&files.config).unwrap();
    config.runtime.worker_binary = Some(worker_binary());
    let cases: Value =
        serde_json::from_slice(&std::fs::read(made.join("cases.json")).unwrap()).unwrap();
    (files, config, cases)
}

fn request(case: &Value) -> Value {
    let input = |name: &str, key: &str| json!({"name": name, "datatype": "INT64", "shape": case["shape"], "data": case[key]});
    json!({"inputs": [
        input("input_ids", "input_ids"),
        input("attention_mask", "attention_mask"),
        input("token_type_ids", "token_type_ids"),
    ]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_safetensors_bert_is_served_over_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let (files, config, cases) = prepare(dir.path());
    let prepared = serve::prepare(&config).await.unwrap();
    let server = Background::start(prepared);
    let addr = server.addr;
    let tls = tls_config(
        &files.ca,
        Some((&files.client_cert, &files.client_key)),
        false,
    );
    let mut client = Client::connect(addr, tls, false).await.unwrap();

    let meta = client.get("/v2/models/demo").await.unwrap();
    assert_eq!(meta.status, 200);
    let meta = meta.json();
    assert_eq!(meta["platform"], "candle_safetensors");
    assert_eq!(meta["outputs"][0]["name"], "logits");
    assert_eq!(meta["outputs"][0]["shape"], json!([-1, 3]));
    assert_eq!(meta["inputs"].as_array().unwrap().len(), 3);

    for case in cases["cases"].as_array().unwrap() {
        let reply = client
            .post_json("/v2/models/demo/infer", request(case).to_string())
            .await
            .unwrap();
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let out = reply.json();
        let logits = &out["outputs"][0];
        assert_eq!(logits["name"], "logits");
        assert_eq!(logits["datatype"], "FP32");
        let got: Vec<f64> = logits["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let want: Vec<f64> = case["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-4, "element {i}: {g} vs {w}");
        }
    }

    // An id outside the vocabulary: 400 from the worker's validation (the agent cannot know the
    // vocabulary), and the worker keeps serving.
    let mut bad = cases["cases"][0].clone();
    bad["input_ids"][3] = json!(1000);
    let reply = client
        .post_json("/v2/models/demo/infer", request(&bad).to_string())
        .await
        .unwrap();
    assert_eq!(reply.status, 400);
    // The agent answers with its fixed text; the worker's reason stays in the worker.
    let e = reply.json()["error"].as_str().unwrap().to_string();
    assert!(e.starts_with("the model refused the input"), "{e}");
    let reply = client
        .post_json(
            "/v2/models/demo/infer",
            request(&cases["cases"][0]).to_string(),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200);

    server.stop().await;
}

/// A deployment that serves only safetensors models needs no ONNX Runtime: the real `warden
/// serve`, started without `ORT_DYLIB_PATH` and without `runtime.onnxruntime_library`, serves
/// the BERT classifier; the ONNX demo model in the same situation is refused at start, named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safetensors_models_need_no_onnx_runtime() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let (files, config, cases) = prepare(dir.path());
    assert!(config.runtime.onnxruntime_library.is_none());
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["--log-format", "json", "serve", "--config"])
        .arg(&files.config)
        .env_remove("ORT_DYLIB_PATH")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if v["fields"]["message"] == "serving" {
                let _ = tx.send(v["fields"]["addr"].as_str().unwrap_or("").to_string());
            }
        }
    });
    let addr: std::net::SocketAddr = match rx.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(a) => a.parse().unwrap(),
        Err(_) => {
            let _ = child.kill();
            panic!(
                "`warden serve` without ONNX Runtime did not start serving the safetensors model"
            );
        }
    };
    let tls = tls_config(
        &files.ca,
        Some((&files.client_cert, &files.client_key)),
        false,
    );
    let mut client = Client::connect(addr, tls, false).await.unwrap();
    let reply = client
        .post_json(
            "/v2/models/demo/infer",
            request(&cases["cases"][0]).to_string(),
        )
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let _ = child.kill();
    let _ = child.wait();

    // The ONNX demo without the library: refused at start, the model named.
    let onnx_dir = tempfile::tempdir().unwrap();
    let (onnx, _) = demo::prepare(onnx_dir.path(), 0).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["serve", "--config"])
        .arg(&onnx.config)
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "model demo version 1 is an ONNX model but the ONNX Runtime library is not configured"
        ),
        "{err}"
    );
}
