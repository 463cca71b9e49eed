//! The stack in process, on a catalog of fake models (no workers, no sockets): each step's
//! refusal stops the later ones, and the version the route policy decided on is the version
//! that answers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use warden_runtime_client::tensor::{DataType, ModelSignature, Tensor, TensorSpec};
use warden_runtime_client::worker::WorkerError;

use super::catalog::{Catalog, Missing, ServedModel};
use super::stack::{Api, Limits, Peer};
use crate::audit::AuditLog;
use crate::config::InputRange;
use crate::gateway::Gateway;
use crate::gateway::config::GatewayConfig;
use crate::listener::tls::CertNames;

const TENANT_APP: &str = "spiffe://test/tenant/acme/app/teller";

struct FakeModel {
    version: String,
    signature: ModelSignature,
    ranges: BTreeMap<String, InputRange>,
    /// Requests this version's "worker" answered.
    served: AtomicUsize,
}

impl FakeModel {
    fn new(version: &str) -> Arc<FakeModel> {
        let spec = |name: &str, dt| TensorSpec {
            name: name.into(),
            datatype: dt,
            shape: vec![-1, 2],
        };
        Arc::new(FakeModel {
            version: version.into(),
            signature: ModelSignature {
                inputs: vec![spec("x", DataType::Fp32)],
                outputs: vec![spec("y", DataType::Fp32)],
            },
            ranges: BTreeMap::from([(
                "x".to_owned(),
                InputRange {
                    min: Some(-10.0),
                    max: Some(10.0),
                },
            )]),
            served: AtomicUsize::new(0),
        })
    }
}

impl ServedModel for FakeModel {
    fn name(&self) -> &str {
        "demo"
    }
    fn version(&self) -> &str {
        &self.version
    }
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }
    fn platform(&self) -> &str {
        "test"
    }
    fn input_ranges(&self) -> &BTreeMap<String, InputRange> {
        &self.ranges
    }
    fn is_alive(&self) -> bool {
        true
    }
    async fn infer(&self, inputs: Vec<Tensor>, _: Vec<String>) -> Result<Vec<Tensor>, WorkerError> {
        self.served.fetch_add(1, Ordering::SeqCst);
        let x = &inputs[0];
        Ok(vec![
            Tensor::new("y", DataType::Fp32, x.shape.clone(), x.data.clone()).unwrap(),
        ])
    }
}

/// Model `demo` with versions 1 and 2 whose default changes on every lookup, as if `activate`
/// and `rollback` ran between any two steps of every request.
struct FlippingCatalog {
    versions: [Arc<FakeModel>; 2],
    lookups: AtomicUsize,
}

impl FlippingCatalog {
    fn new() -> Arc<FlippingCatalog> {
        Arc::new(FlippingCatalog {
            versions: [FakeModel::new("1"), FakeModel::new("2")],
            lookups: AtomicUsize::new(0),
        })
    }
}

impl Catalog for FlippingCatalog {
    type Model = FakeModel;

    fn resolve(&self, name: &str, version: Option<&str>) -> Result<Arc<FakeModel>, Missing> {
        let n = self.lookups.fetch_add(1, Ordering::SeqCst);
        if name != "demo" {
            return Err(Missing::Model);
        }
        match version {
            None => Ok(self.versions[n % 2].clone()),
            Some("withdrawn") => Err(Missing::Withdrawn {
                reasons: "revoked: key compromised".into(),
            }),
            Some(v) => self
                .versions
                .iter()
                .find(|m| m.version == v)
                .cloned()
                .ok_or(Missing::Version),
        }
    }

    fn versions(&self, _: &str) -> Vec<String> {
        self.versions.iter().map(|m| m.version.clone()).collect()
    }

    fn all_ready(&self) -> bool {
        true
    }
}

struct Rig {
    api: Api<FlippingCatalog>,
    catalog: Arc<FlippingCatalog>,
    audit_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// The shipped route policy, tenant `acme` granted `versions` of `demo`.
fn rig(versions: &[&str], extra: &str) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    // A policy set: the shipped route policy and the grants as its data document.
    let set_dir = dir.path().join("policies");
    std::fs::create_dir_all(set_dir.join("serving")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/serving/routes.rego"),
        set_dir.join(crate::gateway::authz::ROUTES_POLICY),
    )
    .unwrap();
    std::fs::write(
        set_dir.join("data.json"),
        serde_json::json!({"tenants": {"acme": {"models": {"demo": {
            "versions": versions, "routes": ["infer", "metadata", "ready"]}}}}})
        .to_string(),
    )
    .unwrap();
    let cfg: GatewayConfig =
        toml::from_str(&format!("[identity]\ntrust_domains = [\"test\"]\n{extra}")).unwrap();
    let gateway = Gateway::new(&cfg).unwrap();
    let set = crate::policy::set::PolicySetFiles::read(&set_dir).unwrap();
    gateway
        .routes()
        .install(gateway.routes().compile(&set).unwrap());
    let audit_path = dir.path().join("audit.jsonl");
    let catalog = FlippingCatalog::new();
    let api = Api::new(
        catalog.clone(),
        Arc::new(AuditLog::open(Some(&audit_path)).unwrap()),
        Limits {
            max_body_bytes: 4096,
            request_timeout: Duration::from_secs(5),
        },
        Arc::new(gateway),
    );
    Rig {
        api,
        catalog,
        audit_path,
        _dir: dir,
    }
}

fn peer(uri: Option<&str>) -> Peer {
    let cert = uri.map(|u| CertNames {
        uris: vec![u.to_owned()],
        subject: Vec::new(),
    });
    Peer {
        identity: CertNames::audit_name(cert.as_ref()),
        cert,
        addr: "127.0.0.1:1".parse().unwrap(),
    }
}

const GOOD_BODY: &str =
    r#"{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.5]}]}"#;

fn post(path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

async fn send(
    rig: &Rig,
    req: Request<Full<Bytes>>,
    who: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let resp = rig.api.handle(req, &peer(who)).await;
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

fn audit_lines(rig: &Rig) -> Vec<serde_json::Value> {
    std::fs::read_to_string(&rig.audit_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Step 5 resolves once and steps 6 to 10 use that version: with a default that changes on
/// every lookup, tenant `acme` (granted version 1 only) gets version 1's answers or 403s,
/// never an answer from version 2, and each audit line names the version that was decided
/// on. Resolving again after authorization (the defect this replaced) fails this test on the
/// first request.
#[tokio::test]
async fn the_version_authorized_is_the_version_that_answers() {
    let rig = rig(&["1"], "");
    let (mut ok, mut forbidden) = (0, 0);
    for _ in 0..40 {
        let (status, body) = send(
            &rig,
            post("/v2/models/demo/infer", GOOD_BODY),
            Some(TENANT_APP),
        )
        .await;
        match status {
            StatusCode::OK => {
                assert_eq!(body["model_version"], "1", "{body}");
                ok += 1;
            }
            StatusCode::FORBIDDEN => forbidden += 1,
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!((ok, forbidden), (20, 20));
    assert_eq!(
        rig.catalog.lookups.load(Ordering::SeqCst),
        40,
        "one lookup per request"
    );
    assert_eq!(rig.catalog.versions[1].served.load(Ordering::SeqCst), 0);
    assert_eq!(rig.catalog.versions[0].served.load(Ordering::SeqCst), 20);
    for line in audit_lines(&rig) {
        match line["outcome"].as_str().unwrap() {
            "ok" => assert_eq!(line["version"], "1", "{line}"),
            "forbidden" => {
                assert_eq!(line["version"], "2", "{line}");
                assert_eq!(line["rule"], "default_deny", "{line}");
            }
            other => panic!("{other}: {line}"),
        }
    }
}

/// Each refusal happens at its step, before anything later runs.
#[tokio::test]
async fn each_step_refuses_before_the_next_one_runs() {
    let rig = rig(&["1", "2"], "");
    let lookups = || rig.catalog.lookups.load(Ordering::SeqCst);
    let served = || {
        rig.catalog
            .versions
            .iter()
            .map(|m| m.served.load(Ordering::SeqCst))
            .sum::<usize>()
    };
    // 3 before 4: an unknown route is a 404 even without an identity.
    let (status, _) = send(&rig, post("/v3/models/demo/infer", GOOD_BODY), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let get = Request::get("/v2/models/demo/infer")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        send(&rig, get, None).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    // 4 before 5: no identity, no lookup.
    let (status, body) = send(&rig, post("/v2/models/demo/infer", GOOD_BODY), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("authentication required")
    );
    assert_eq!(lookups(), 0);
    // 5: an unknown model or version, and a withdrawn one, each a 404 that says which.
    let who = Some(TENANT_APP);
    let (status, body) = send(&rig, post("/v2/models/other/infer", GOOD_BODY), who).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("no such model "),
        "{body}"
    );
    let (status, body) = send(
        &rig,
        post("/v2/models/demo/versions/9/infer", GOOD_BODY),
        who,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("no such model version"),
        "{body}"
    );
    let (status, body) = send(
        &rig,
        post("/v2/models/demo/versions/withdrawn/infer", GOOD_BODY),
        who,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let text = body["error"].as_str().unwrap();
    assert!(text.starts_with("model version withdrawn"), "{body}");
    assert!(
        !text.contains("key compromised"),
        "the reasons are the operator's: {body}"
    );
    // 6 before 8: another tenant is refused without its body being read or run.
    let stranger = Some("spiffe://test/tenant/other/app/x");
    let (status, _) = send(&rig, post("/v2/models/demo/infer", "not json"), stranger).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // 8 before 10: a malformed body, a wrong shape, an out-of-range value never reach a worker.
    for bad in [
        "not json",
        r#"{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}"#,
        r#"{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 99]}]}"#,
    ] {
        let (status, body) = send(&rig, post("/v2/models/demo/versions/1/infer", bad), who).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    assert_eq!(served(), 0);
    // Everything passes: version 2, as named, answers.
    let (status, body) = send(
        &rig,
        post("/v2/models/demo/versions/2/infer", GOOD_BODY),
        who,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["model_version"], "2");
    assert_eq!(served(), 1);
    // One audit line per request, whatever step ended it.
    assert_eq!(audit_lines(&rig).len(), 11);
}

/// Step 7: a tenant over its rate is refused with 429 before its body is read.
#[tokio::test]
async fn rate_limits_come_after_authorization_and_before_the_body() {
    let rig = rig(
        &["1", "2"],
        "[limits]\nidentity_rate_per_s = 0.001\nidentity_burst = 1\n",
    );
    let who = Some(TENANT_APP);
    let (status, _) = send(
        &rig,
        post("/v2/models/demo/versions/1/infer", GOOD_BODY),
        who,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(
        &rig,
        post("/v2/models/demo/versions/1/infer", "not json"),
        who,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "limited before the body is decoded"
    );
    // A stranger is refused by the policy, not counted against the tenant.
    let (status, _) = send(
        &rig,
        post("/v2/models/demo/versions/1/infer", GOOD_BODY),
        Some("spiffe://test/tenant/other/app/x"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}
