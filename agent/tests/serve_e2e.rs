//! End to end, in process: the demo's PKI, signed model and config, served over mutual TLS with
//! a real worker process running ONNX Runtime; a real TLS client calls it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::type_complexity
)]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use support::{Client, tls_config};
use warden_agent::{demo, models::ModelRegistry, serve};

struct Running {
    addr: std::net::SocketAddr,
    files: demo::DemoFiles,
    models: Arc<ModelRegistry>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn start() -> Running {
        Running::start_with(|_| {}).await
    }

    async fn start_with(edit: impl FnOnce(&mut warden_agent::config::Config)) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let (files, mut config) = support::serving::demo_world(dir.path());
        edit(&mut config);
        let prepared = serve::prepare(&config).await.unwrap();
        let addr = prepared.local_addr;
        let models = prepared.models.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(prepared.run(async move {
            let _ = rx.await;
        }));
        Running {
            addr,
            files,
            models,
            stop: Some(tx),
            task: Some(task),
            _dir: dir,
        }
    }

    fn tls(&self, h2: bool) -> Arc<rustls::ClientConfig> {
        tls_config(
            &self.files.ca,
            Some((&self.files.client_cert, &self.files.client_key)),
            h2,
        )
    }

    async fn client(&self, h2: bool) -> Client {
        Client::connect(self.addr, self.tls(h2), h2).await.unwrap()
    }

    fn forwarded(&self) -> u64 {
        self.models
            .resolve("demo", None)
            .unwrap()
            .forwarded
            .load(Ordering::SeqCst)
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.files.dir.join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

/// Outputs of Python onnxruntime on the same model and request.
fn python_reference(model: &Path, request: &Path) -> serde_json::Value {
    let python = std::env::var("WARDEN_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/ort_reference.py");
    let out = std::process::Command::new(&python)
        .arg(script)
        .arg(model)
        .arg(request)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}; run `scripts/setup.sh --test`"));
    assert!(
        out.status.success(),
        "python reference failed (run `scripts/setup.sh --test`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn assert_matches_reference(response: &serde_json::Value, reference: &serde_json::Value) {
    let outputs = response["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 2, "{response}");
    for out in outputs {
        let name = out["name"].as_str().unwrap();
        let got: Vec<f64> = out["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let want: Vec<f64> = reference[name]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(got.len(), want.len(), "{name}");
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-5, "{name}: {g} vs {w}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_and_inference_over_http1_and_http2() {
    let server = Running::start().await;
    let model_file = server.files.dir.join("models/demo/model.onnx");
    let reference = python_reference(&model_file, &server.files.request);
    let body = std::fs::read(&server.files.request).unwrap();

    for h2 in [false, true] {
        let mut c = server.client(h2).await;
        let live = c.get("/v2/health/live").await.unwrap();
        assert_eq!(live.status, 200);
        assert_eq!(c.get("/v2/health/ready").await.unwrap().status, 200);
        let meta = c.get("/v2").await.unwrap().json();
        assert_eq!(meta["name"], "warden");
        let model = c.get("/v2/models/demo").await.unwrap();
        assert_eq!(model.status, 200);
        let model = model.json();
        assert_eq!(model["versions"], serde_json::json!(["1"]));
        assert_eq!(model["platform"], "onnxruntime_onnx");
        assert_eq!(
            model["inputs"],
            serde_json::json!([{"name": "input", "datatype": "FP32", "shape": [-1, 30]}])
        );
        assert_eq!(
            c.get("/v2/models/demo/versions/1/ready")
                .await
                .unwrap()
                .status,
            200
        );
        // Several requests on one kept-alive connection.
        for path in ["/v2/models/demo/infer", "/v2/models/demo/versions/1/infer"] {
            let reply = c.post_json(path, body.clone()).await.unwrap();
            assert_eq!(
                reply.status,
                200,
                "{}",
                String::from_utf8_lossy(&reply.body)
            );
            assert!(reply.headers.contains_key("x-request-id"));
            assert_eq!(reply.headers["x-content-type-options"], "nosniff");
            let json = reply.json();
            assert_eq!(json["model_name"], "demo");
            assert_eq!(json["model_version"], "1");
            assert_matches_reference(&json, &reference);
        }
    }
    assert_eq!(server.forwarded(), 4);
    let audit = server.audit();
    let infers: Vec<_> = audit
        .iter()
        .filter(|e| e["route"].as_str().is_some_and(|r| r.ends_with("/infer")))
        .collect();
    assert_eq!(infers.len(), 4);
    for e in infers {
        assert_eq!(e["outcome"], "ok");
        assert_eq!(e["identity"], "spiffe://warden.demo/tenant/demo/app/curl");
        assert_eq!(e["model"], "demo");
        assert_eq!(e["version"], "1");
        assert!(e["latency_us"].as_u64().is_some());
        assert!(e["request_id"].as_str().unwrap().len() >= 16);
    }
    // The audit never holds the payload.
    let text = std::fs::read_to_string(server.files.dir.join("audit.jsonl")).unwrap();
    assert!(
        !text.contains("17.99") && !text.contains("\"data\""),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_audited_and_never_reach_the_worker() {
    let server = Running::start().await;
    let mut c = server.client(false).await;
    let good: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&server.files.request).unwrap()).unwrap();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = good.clone();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, Option<&str>, u16, &str)> = vec![
        ("wrong tensor name", with(&|v| v["inputs"][0]["name"] = "x".into()), Some("application/json"), 400, "unknown input"),
        ("wrong shape", with(&|v| v["inputs"][0]["shape"] = serde_json::json!([3, 20])), Some("application/json"), 400, "shape"),
        ("wrong datatype", with(&|v| v["inputs"][0]["datatype"] = "FP64".into()), Some("application/json"), 400, "FP64"),
        ("data not matching shape", with(&|v| v["inputs"][0]["shape"] = serde_json::json!([1, 30])), Some("application/json"), 400, "elements"),
        ("malformed JSON", b"{\"inputs\": [".to_vec(), Some("application/json"), 400, "malformed"),
        ("NaN", b"{\"inputs\":[{\"name\":\"input\",\"shape\":[1,1],\"datatype\":\"FP32\",\"data\":[NaN]}]}".to_vec(), Some("application/json"), 400, "malformed"),
        ("wrong content type", with(&|_| {}), Some("text/plain"), 415, "application/json"),
    ];
    for (what, body, ct, status, needle) in &cases {
        let req = c.build("POST", "/v2/models/demo/infer", body.clone(), *ct);
        let reply = c.send(req).await.unwrap();
        assert_eq!(
            reply.status.as_u16(),
            *status,
            "{what}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        let msg = reply.json()["error"].as_str().unwrap().to_string();
        assert!(msg.contains(needle), "{what}: {msg}");
        assert!(
            msg.contains("request "),
            "{what}: error carries the request id: {msg}"
        );
    }
    // An oversized body is refused from its Content-Length, before it is read: the client may see
    // the 413 or, having not finished sending, only the connection closing.
    for h2 in [false, true] {
        let mut big = server.client(h2).await;
        let req = big.build(
            "POST",
            "/v2/models/demo/infer",
            vec![b' '; 5 * 1024 * 1024],
            Some("application/json"),
        );
        match big.send(req).await {
            Ok(reply) => {
                assert_eq!(
                    reply.status,
                    413,
                    "{}",
                    String::from_utf8_lossy(&reply.body)
                );
                assert!(reply.json()["error"].as_str().unwrap().contains("exceeds"));
            }
            Err(e) => assert!(e.contains("body") || e.contains("connection"), "{e}"),
        }
    }
    let unknown = c
        .post_json("/v2/models/nope/infer", with(&|_| {}))
        .await
        .unwrap();
    assert_eq!(unknown.status, 404);
    let unknown_version = c
        .post_json("/v2/models/demo/versions/9/infer", with(&|_| {}))
        .await
        .unwrap();
    assert_eq!(unknown_version.status, 404);
    let wrong_method = c.get("/v2/models/demo/infer").await.unwrap();
    assert_eq!(wrong_method.status, 405);
    assert_eq!(c.get("/etc/passwd").await.unwrap().status, 404);

    assert_eq!(
        server.forwarded(),
        0,
        "a refused request reached the worker"
    );
    let audit = server.audit();
    let outcomes: Vec<&str> = audit
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    for want in [
        "invalid",
        "too_large",
        "unsupported_media_type",
        "not_found",
        "method_not_allowed",
    ] {
        assert!(outcomes.contains(&want), "{want} not audited: {outcomes:?}");
    }
    assert_eq!(
        audit.iter().filter(|e| e["outcome"] == "invalid").count(),
        6
    );
    // A good request afterwards still works.
    let ok = c
        .post_json("/v2/models/demo/infer", with(&|_| {}))
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(server.forwarded(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_trusted_certificate_are_refused_at_the_handshake() {
    let server = Running::start().await;
    let body = std::fs::read(&server.files.request).unwrap();

    // No client certificate.
    let anonymous = tls_config(&server.files.ca, None, false);
    let refused = match Client::connect(server.addr, anonymous, false).await {
        Err(_) => true,
        Ok(mut c) => c
            .post_json("/v2/models/demo/infer", body.clone())
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate was served");

    // A certificate from another CA, even with the same name.
    let other_dir = tempfile::tempdir().unwrap();
    let other = warden_agent::demo::pki::DevCa::new("some other CA").unwrap();
    let stranger = other
        .issue_client(
            Some("spiffe://warden.demo/tenant/demo/app/curl"),
            "stranger",
        )
        .unwrap();
    let cert = other_dir.path().join("c.pem");
    let key = other_dir.path().join("c.key");
    std::fs::write(&cert, stranger.cert_pem).unwrap();
    std::fs::write(&key, stranger.key_pem).unwrap();
    let foreign = tls_config(&server.files.ca, Some((&cert, &key)), false);
    let refused = match Client::connect(server.addr, foreign, false).await {
        Err(_) => true,
        Ok(mut c) => c
            .post_json("/v2/models/demo/infer", body.clone())
            .await
            .is_err(),
    };
    assert!(refused, "a client with a foreign certificate was served");

    // Give the server a moment to write the refusals.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(server.forwarded(), 0);
    let audit = server.audit();
    let refusals: Vec<_> = audit
        .iter()
        .filter(|e| e["outcome"] == "tls_refused")
        .collect();
    assert_eq!(refusals.len(), 2, "{audit:?}");
    assert!(refusals.iter().all(|e| e["kind"] == "connection"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_tensor_extension() {
    let server = Running::start().await;
    let reference = python_reference(
        &server.files.dir.join("models/demo/model.onnx"),
        &server.files.request,
    );
    let good: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&server.files.request).unwrap()).unwrap();
    let data: Vec<u8> = good["inputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|v| (v.as_f64().unwrap() as f32).to_le_bytes())
        .collect();
    let header = serde_json::json!({
        "inputs": [{"name": "input", "shape": [2, 30], "datatype": "FP32",
                    "parameters": {"binary_data_size": data.len()}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}},
                    {"name": "label", "parameters": {"binary_data": false}}]
    });
    let header = serde_json::to_vec(&header).unwrap();
    let mut body = header.clone();
    body.extend_from_slice(&data);
    let mut c = server.client(false).await;
    let mut req = c.build(
        "POST",
        "/v2/models/demo/infer",
        body,
        Some("application/octet-stream"),
    );
    req.headers_mut()
        .insert("inference-header-content-length", header.len().into());
    let reply = c.send(req).await.unwrap();
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let n: usize = reply.headers["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let head: serde_json::Value = serde_json::from_slice(&reply.body[..n]).unwrap();
    assert_eq!(head["outputs"][0]["name"], "probabilities");
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 16);
    let probs: Vec<f32> = reply.body[n..]
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let want = reference["probabilities"].as_array().unwrap();
    for (g, w) in probs.iter().zip(want) {
        assert!((f64::from(*g) - w.as_f64().unwrap()).abs() <= 1e-6);
    }
    assert_eq!(head["outputs"][1]["data"], reference["label"]);
    server.stop().await;
}
