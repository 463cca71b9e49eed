//! The gateway end to end against the real server (mutual TLS, real workers): the identity ×
//! route/model/version/tenant matrix, JWT attacks, rate limits, policy reload, metrics, and the
//! replay of the WAF development corpus at the inference routes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::type_complexity
)]

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use support::{Client, Reply, tls_config};
use warden_agent::config::Config;
use warden_agent::demo::pki::DevCa;
use warden_agent::gateway::config::{JwtConfig, SubjectMapping};
use warden_agent::gateway::{Gateway, identity::IdentityKind};
use warden_agent::models::ModelRegistry;
use warden_agent::policy_in_force::Reloaded;
use warden_agent::{demo, serve};

const ISSUER: &str = "https://idp.warden.test";
const AUDIENCE: &str = "warden";

/// Grants: tenant `demo` may infer and read metadata of `demo` version 1 (not `ready`, not
/// version 0); tenant `other` owns model `secret`.
const GRANTS: &str = r#"{"tenants": {
  "demo": {"models": {"demo": {"versions": ["1"], "routes": ["infer", "metadata"]}}},
  "other": {"models": {"secret": {"versions": ["*"], "routes": ["infer", "metadata", "ready"]}}}
}}"#;

struct Pki {
    /// name → (cert, key) paths.
    certs: BTreeMap<&'static str, (PathBuf, PathBuf)>,
}

struct Running {
    addr: std::net::SocketAddr,
    metrics_addr: Option<std::net::SocketAddr>,
    files: demo::DemoFiles,
    models: Arc<ModelRegistry>,
    gateway: Arc<Gateway>,
    policies: Arc<warden_agent::policy_in_force::PolicyInForce>,
    pki: Pki,
    jwt_key: EcdsaKeyPair,
    grants: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

fn jwk(key: &EcdsaKeyPair, kid: &str) -> serde_json::Value {
    let p = key.public_key().as_ref();
    serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..])})
}

impl Running {
    async fn start(edit: impl FnOnce(&mut Config, &Path)) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let (files, mut config) = support::serving::demo_world(dir.path());

        // A second CA for the test identities, trusted beside the demo's.
        let ca = DevCa::new("gateway test CA").unwrap();
        let pki_dir = dir.path().join("test-pki");
        std::fs::create_dir_all(&pki_dir).unwrap();
        let bundle = format!(
            "{}{}",
            std::fs::read_to_string(&files.ca).unwrap(),
            ca.cert_pem()
        );
        let ca_bundle = pki_dir.join("cas.pem");
        std::fs::write(&ca_bundle, bundle).unwrap();
        config.tls.client_ca = Some(ca_bundle.clone());
        let mut certs = BTreeMap::new();
        for (name, uri, org, cn) in [
            (
                "uri-demo",
                Some("spiffe://warden.demo/tenant/demo/app/web"),
                None,
                "web",
            ),
            (
                "uri-other",
                Some("spiffe://warden.demo/tenant/other/app/web"),
                None,
                "web",
            ),
            ("subject-demo", None, Some("demo"), "batch"),
            ("subject-other", None, Some("other"), "batch"),
            // A SPIFFE ID of a foreign trust domain and no organization: nobody.
            (
                "nobody",
                Some("spiffe://elsewhere.test/tenant/demo/app/web"),
                None,
                "stray",
            ),
        ] {
            let issued = ca.issue_client_in(uri, org, cn).unwrap();
            let (c, k) = (
                pki_dir.join(format!("{name}.pem")),
                pki_dir.join(format!("{name}.key")),
            );
            std::fs::write(&c, issued.cert_pem).unwrap();
            std::fs::write(&k, issued.key_pem).unwrap();
            certs.insert(name, (c, k));
        }
        certs.insert(
            "demo-client",
            (files.client_cert.clone(), files.client_key.clone()),
        );
        config.gateway.identity.subject_mapping = Some(SubjectMapping {
            tenant: "O".into(),
            app: "CN".into(),
        });

        // An OIDC issuer's JWKS with one P-256 key.
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap();
        let jwt_key = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(
            &jwks,
            serde_json::json!({"keys": [jwk(&jwt_key, "k1")]}).to_string(),
        )
        .unwrap();
        config.gateway.jwt = Some(JwtConfig {
            jwks,
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            algorithms: vec!["ES256".into(), "RS256".into()],
            leeway_s: 30,
            max_token_bytes: 4096,
            tenant_claim: "tenant".into(),
        });

        let grants = config.policy.as_ref().unwrap().directory.join("data.json");
        std::fs::write(&grants, GRANTS).unwrap();
        config.gateway.limits.identity_rate_per_s = 10_000.0;
        config.gateway.limits.identity_burst = 10_000;
        config.gateway.limits.tenant_rate_per_s = 10_000.0;
        config.gateway.limits.tenant_burst = 10_000;
        edit(&mut config, dir.path());

        let prepared = serve::prepare(&config).await.unwrap();
        let addr = prepared.local_addr;
        let metrics_addr = prepared.metrics_addr;
        let models = prepared.models.clone();
        let gateway = prepared.gateway.clone();
        let policies = prepared.policies.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(prepared.run(async move {
            let _ = rx.await;
        }));
        Running {
            addr,
            metrics_addr,
            files,
            models,
            gateway,
            policies,
            pki: Pki { certs },
            jwt_key,
            grants,
            stop: Some(tx),
            task: Some(task),
            _dir: dir,
        }
    }

    /// Two more model entries from the demo's signed files: `demo` version 0 (older, so that
    /// version 1 stays the default) and tenant `other`'s model `secret`.
    fn with_more_models(config: &mut Config) {
        let base = config.models[0].clone();
        let mut v0 = base.clone();
        v0.version = "0".into();
        let mut secret = base;
        secret.name = "secret".into();
        config.models.push(v0);
        config.models.push(secret);
    }

    async fn client(&self, cert: &str) -> Result<Client, String> {
        let (c, k) = &self.pki.certs[cert];
        let tls = tls_config(&self.files.ca, Some((c.as_path(), k.as_path())), false);
        Client::connect(self.addr, tls, false).await
    }

    fn forwarded(&self, name: &str, version: &str) -> u64 {
        self.models
            .resolve(name, Some(version))
            .map(|m| m.forwarded.load(Ordering::SeqCst))
            .unwrap_or(0)
    }

    fn forwarded_total(&self) -> u64 {
        self.models
            .all()
            .iter()
            .map(|m| m.forwarded.load(Ordering::SeqCst))
            .sum()
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.files.dir.join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn audit_text(&self) -> String {
        std::fs::read_to_string(self.files.dir.join("audit.jsonl")).unwrap_or_default()
    }

    fn token(&self, claims: &serde_json::Value) -> String {
        sign_es256(&self.jwt_key, "k1", claims)
    }

    fn request_body(&self) -> Vec<u8> {
        std::fs::read(&self.files.request).unwrap()
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

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(tenant: &str, scope: &str) -> serde_json::Value {
    serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "sub": format!("svc-{tenant}"),
        "tenant": tenant, "scope": scope, "exp": now() + 300, "nbf": now() - 5})
}

fn sign_es256(key: &EcdsaKeyPair, kid: &str, claims: &serde_json::Value) -> String {
    let header = serde_json::json!({"alg": "ES256", "kid": kid, "typ": "JWT"});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

async fn call(c: &mut Client, method: &str, path: &str, body: &[u8], token: Option<&str>) -> Reply {
    let ct = (method == "POST").then_some("application/json");
    let mut req = c.build(method, path, Bytes::copy_from_slice(body), ct);
    if let Some(t) = token {
        req.headers_mut().insert(
            http::header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
    }
    c.send(req).await.unwrap()
}

/// One identity of the matrix: how to reach the server as it.
struct Who {
    label: &'static str,
    kind: IdentityKind,
    tenant: &'static str,
    cert: &'static str,
    token: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_matrix_against_routes_models_versions_and_tenants() {
    let server = Running::start(|c, _| Running::with_more_models(c)).await;
    let all_scopes = "warden:infer warden:metadata warden:ready";
    let whos = vec![
        Who {
            label: "mTLS URI SAN, tenant demo",
            kind: IdentityKind::MtlsUri,
            tenant: "demo",
            cert: "uri-demo",
            token: None,
        },
        Who {
            label: "mTLS subject mapping, tenant demo",
            kind: IdentityKind::MtlsSubject,
            tenant: "demo",
            cert: "subject-demo",
            token: None,
        },
        Who {
            label: "JWT, tenant demo (on a certificate that names nobody)",
            kind: IdentityKind::Jwt,
            tenant: "demo",
            cert: "nobody",
            token: Some(server.token(&claims("demo", all_scopes))),
        },
        Who {
            label: "mTLS URI SAN, tenant other",
            kind: IdentityKind::MtlsUri,
            tenant: "other",
            cert: "uri-other",
            token: None,
        },
        Who {
            label: "mTLS subject mapping, tenant other",
            kind: IdentityKind::MtlsSubject,
            tenant: "other",
            cert: "subject-other",
            token: None,
        },
        Who {
            label: "JWT, tenant other (on tenant demo's certificate: the token decides)",
            kind: IdentityKind::Jwt,
            tenant: "other",
            cert: "uri-demo",
            token: Some(server.token(&claims("other", all_scopes))),
        },
    ];
    let body = server.request_body();
    let mut rows = Vec::new();
    let mut expected_forwards: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for who in &whos {
        let mut c = server.client(who.cert).await.unwrap();
        let own = if who.tenant == "demo" {
            "demo"
        } else {
            "secret"
        };
        let foreign = if who.tenant == "demo" {
            "secret"
        } else {
            "demo"
        };
        // (what, method, path, expected status)
        let mut cases: Vec<(String, &str, String, u16)> = vec![
            ("health".into(), "GET", "/v2/health/ready".into(), 200),
            ("server metadata".into(), "GET", "/v2".into(), 200),
            (
                "own model infer".into(),
                "POST",
                format!("/v2/models/{own}/infer"),
                200,
            ),
            (
                "own model metadata".into(),
                "GET",
                format!("/v2/models/{own}"),
                200,
            ),
            (
                "other tenant's model (cross-tenant)".into(),
                "POST",
                format!("/v2/models/{foreign}/infer"),
                403,
            ),
            (
                "other tenant's model metadata".into(),
                "GET",
                format!("/v2/models/{foreign}"),
                403,
            ),
        ];
        if who.tenant == "demo" {
            cases.push((
                "route not granted (ready)".into(),
                "GET",
                "/v2/models/demo/ready".into(),
                403,
            ));
            cases.push((
                "version not granted (0)".into(),
                "POST",
                "/v2/models/demo/versions/0/infer".into(),
                403,
            ));
            cases.push((
                "granted version named".into(),
                "POST",
                "/v2/models/demo/versions/1/infer".into(),
                200,
            ));
        } else {
            cases.push((
                "ready granted".into(),
                "GET",
                "/v2/models/secret/ready".into(),
                200,
            ));
        }
        for (what, method, path, want) in cases {
            let reply = call(&mut c, method, &path, &body, who.token.as_deref()).await;
            let got = reply.status.as_u16();
            rows.push(format!(
                "{:<13} {:<70} {:<40} {got}",
                who.kind.as_str(),
                who.label,
                what
            ));
            assert_eq!(
                got,
                want,
                "{} / {what}: {}",
                who.label,
                String::from_utf8_lossy(&reply.body)
            );
            assert!(reply.headers.contains_key("x-request-id"));
            if got == 403 {
                // The fixed template: nothing about the policy or the rule.
                let msg = reply.json()["error"].as_str().unwrap().to_string();
                assert!(msg.starts_with("forbidden (request "), "{msg}");
            }
            if got == 200 && method == "POST" {
                let model = if path.contains("/secret/") {
                    "secret"
                } else {
                    "demo"
                };
                *expected_forwards.entry((model, "1")).or_default() += 1;
            }
        }
    }
    println!("{}", rows.join("\n"));
    // Exactly the allowed inferences reached workers; nothing reached demo version 0.
    assert_eq!(
        server.forwarded("demo", "1"),
        expected_forwards[&("demo", "1")]
    );
    assert_eq!(
        server.forwarded("secret", "1"),
        expected_forwards[&("secret", "1")]
    );
    assert_eq!(server.forwarded("demo", "0"), 0);

    // The audit names identity, tenant, rule and outcome for allowed and denied requests.
    let audit = server.audit();
    let denied: Vec<_> = audit
        .iter()
        .filter(|e| e["outcome"] == "forbidden")
        .collect();
    assert!(!denied.is_empty());
    assert!(
        denied
            .iter()
            .all(|e| e["rule"].is_string() && e["tenant"].is_string())
    );
    assert!(audit.iter().any(|e| {
        e["outcome"] == "ok"
            && e["rule"] == "tenant_model_grant"
            && e["identity"] == "spiffe://warden.demo/tenant/demo/app/web"
            && e["tenant"] == "demo"
            && e["model"] == "demo"
            && e["version"] == "1"
    }));
    assert!(audit.iter().any(|e| e["identity"] == "subject:other/batch"
        && e["outcome"] == "ok"
        && e["model"] == "secret"));
    assert!(
        audit
            .iter()
            .any(|e| e["identity"] == "jwt:https://idp.warden.test#svc-other"
                && e["outcome"] == "forbidden"
                && e["model"] == "demo")
    );
    // No token ever reaches the audit trail.
    let text = server.audit_text();
    for who in &whos {
        if let Some(t) = &who.token {
            assert!(
                !text.contains(&t[..40]),
                "a token leaked into the audit trail"
            );
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_callers_and_jwt_attacks_are_refused() {
    let server = Running::start(|_, _| {}).await;
    let body = server.request_body();
    let infer = "/v2/models/demo/infer";

    // A certificate that names nobody: 401 on every route, with the fixed template.
    let mut nobody = server.client("nobody").await.unwrap();
    for (m, p) in [
        ("GET", "/v2/health/live"),
        ("POST", infer),
        ("GET", "/v2/models/demo"),
    ] {
        let r = call(&mut nobody, m, p, &body, None).await;
        assert_eq!(r.status, 401, "{p}");
        assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"warden\"");
        assert!(
            r.json()["error"]
                .as_str()
                .unwrap()
                .starts_with("authentication required (request ")
        );
    }

    let good = claims("demo", "warden:infer");
    let token = server.token(&good);
    let parts: Vec<&str> = token.split('.').collect();
    let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = good.clone();
        f(&mut c);
        server.token(&c)
    };
    // HS256 with the EC public key (the classic key-confusion forgery).
    let hs_input = format!("{}.{}", b64(r#"{"alg":"HS256","kid":"k1"}"#), parts[1]);
    let hs_tag = ring::hmac::sign(
        &ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            server.jwt_key.public_key().as_ref(),
        ),
        hs_input.as_bytes(),
    );
    let mut tampered_claims = good.clone();
    tampered_claims["tenant"] = "other".into();
    let attacks: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!("{}.{}.", b64(r#"{"alg":"none","kid":"k1"}"#), parts[1]),
        ),
        (
            "HS256 with the public key",
            format!("{hs_input}.{}", URL_SAFE_NO_PAD.encode(hs_tag.as_ref())),
        ),
        ("expired", with(&|c| c["exp"] = (now() - 120).into())),
        ("not yet valid", with(&|c| c["nbf"] = (now() + 120).into())),
        (
            "wrong issuer",
            with(&|c| c["iss"] = "https://evil.test".into()),
        ),
        (
            "wrong audience",
            with(&|c| c["aud"] = "someone-else".into()),
        ),
        (
            "unknown kid",
            sign_es256(&server.jwt_key, "k-unknown", &good),
        ),
        (
            "tampered payload",
            format!(
                "{}.{}.{}",
                parts[0],
                b64(&tampered_claims.to_string()),
                parts[2]
            ),
        ),
        (
            "oversized token",
            with(&|c| c["pad"] = "x".repeat(6000).into()),
        ),
        ("not a JWT", "definitely-not-a-jwt".into()),
    ];
    // Over tenant demo's own certificate: a bad token is refused even though the certificate
    // alone would be allowed.
    let mut c = server.client("demo-client").await.unwrap();
    for (what, t) in &attacks {
        let r = call(&mut c, "POST", infer, &body, Some(t)).await;
        assert_eq!(
            r.status,
            401,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let msg = r.json()["error"].as_str().unwrap().to_string();
        assert!(msg.starts_with("authentication required"), "{what}: {msg}");
    }
    // Malformed Authorization headers.
    for value in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer "] {
        let mut req = c.build("POST", infer, body.clone(), Some("application/json"));
        req.headers_mut()
            .insert(http::header::AUTHORIZATION, value.parse().unwrap());
        assert_eq!(c.send(req).await.unwrap().status, 401, "{value}");
    }
    assert_eq!(
        server.forwarded_total(),
        0,
        "a refused request reached a worker"
    );
    // The good token works, and without its scope it is forbidden.
    assert_eq!(
        call(&mut c, "POST", infer, &body, Some(&token))
            .await
            .status,
        200
    );
    let no_scope = server.token(&claims("demo", "warden:metadata"));
    let r = call(&mut c, "POST", infer, &body, Some(&no_scope)).await;
    assert_eq!(r.status, 403);
    assert_eq!(server.forwarded_total(), 1);
    let audit = server.audit();
    assert!(
        audit
            .iter()
            .any(|e| e["outcome"] == "forbidden" && e["rule"] == "missing_scope")
    );
    let reasons: Vec<String> = audit
        .iter()
        .filter(|e| e["outcome"] == "unauthenticated")
        .map(|e| e["reason"].as_str().unwrap_or("").to_string())
        .collect();
    for want in [
        "expired",
        "not yet valid",
        "wrong issuer",
        "wrong audience",
        "unknown key id",
        "signature",
        "larger than",
        "\"none\"",
        "\"HS256\"",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(want)),
            "no audited refusal says {want}: {reasons:#?}"
        );
    }
    let text = server.audit_text();
    assert!(
        !text.contains(parts[2]),
        "a token signature leaked into the audit trail"
    );

    // Key rotation: a new key in the JWKS file is picked up (here by SIGHUP's reload).
    let rng = SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let k2 = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8.as_ref(),
        &rng,
    )
    .unwrap();
    let rotated = sign_es256(&k2, "k2", &good);
    assert_eq!(
        call(&mut c, "POST", infer, &body, Some(&rotated))
            .await
            .status,
        401
    );
    let jwks_path = server.files.dir.join("jwks.json");
    std::fs::write(
        &jwks_path,
        serde_json::json!({"keys": [jwk(&k2, "k2")]}).to_string(),
    )
    .unwrap();
    server.gateway.reload_keys().unwrap();
    assert_eq!(
        call(&mut c, "POST", infer, &body, Some(&rotated))
            .await
            .status,
        200
    );
    assert_eq!(
        call(&mut c, "POST", infer, &body, Some(&token))
            .await
            .status,
        401,
        "the retired key still verifies"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_policy_reload_and_metrics() {
    let server = Running::start(|c, _| {
        c.gateway.limits.identity_rate_per_s = 0.2;
        c.gateway.limits.identity_burst = 3;
    })
    .await;
    let body = server.request_body();
    let infer = "/v2/models/demo/infer";
    let mut a = server.client("uri-demo").await.unwrap();
    for i in 0..3 {
        let r = call(&mut a, "POST", infer, &body, None).await;
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.headers["ratelimit-limit"], "3");
        assert_eq!(
            r.headers["ratelimit-remaining"].to_str().unwrap(),
            (2 - i).to_string()
        );
    }
    let limited = call(&mut a, "POST", infer, &body, None).await;
    assert_eq!(limited.status, 429);
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry), "{retry}");
    assert_eq!(limited.headers["ratelimit-remaining"], "0");
    assert!(
        limited.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("too many requests")
    );
    // Another identity of the same tenant has its own budget.
    let mut b = server.client("subject-demo").await.unwrap();
    assert_eq!(call(&mut b, "POST", infer, &body, None).await.status, 200);
    assert_eq!(
        server.forwarded_total(),
        4,
        "a limited request reached the worker"
    );

    // Policy reload: the grants file loses tenant demo; after the reload, demo is forbidden.
    // (Development mode, no key store: the changed set is put in force, with a warning.)
    std::fs::write(&server.grants, r#"{"tenants": {}}"#).unwrap();
    match server.policies.reload().unwrap() {
        Reloaded::Replaced { changes, .. } => assert_eq!(changes, ["changed: data.json"]),
        other => panic!("{other:?}"),
    }
    assert_eq!(call(&mut b, "POST", infer, &body, None).await.status, 403);
    // A broken policy file does not replace the running one.
    let policy = server.files.dir.join("policies/serving/routes.rego");
    std::fs::write(&policy, "package warden.serving.routes\ndecision := {").unwrap();
    assert!(server.policies.reload().is_err());
    assert_eq!(call(&mut b, "POST", infer, &body, None).await.status, 403);

    // Metrics, on their own plain-HTTP loopback listener.
    let addr = server.metrics_addr.expect("metrics listener");
    assert!(addr.ip().is_loopback());
    let text = support::serving::scrape(addr).await;
    for want in [
        "warden_requests_total{route=\"/v2/models/{name}/infer\",model=\"demo\",outcome=\"ok\"} 4",
        "warden_requests_total{route=\"/v2/models/{name}/infer\",model=\"demo\",outcome=\"too_many_requests\"} 1",
        "warden_errors_total{class=\"forbidden\"} 2",
        "warden_rate_limited_total{limit=\"identity\"} 1",
        "warden_policy_denials_total{rule=\"default_deny\"} 2",
        "warden_request_duration_seconds_count{route=\"/v2/models/{name}/infer\",model=\"demo\"} 7",
        "warden_load_shed_total 0",
    ] {
        assert!(text.contains(want), "metrics lack {want}:\n{text}");
    }
    server.stop().await;
}

/// The specification's route policy (6.2) dropped into the policy set as written and named as
/// the entry point decides every request: it grants only `churn_v2` 2.3.1 on `/v2/predict` to
/// two apps, so the demo's calls are refused, audited under its rule, and nothing reaches the
/// worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_specifications_route_example_decides_requests_as_written() {
    let server = Running::start(|c, _| {
        let set = c.policy.as_ref().unwrap().directory.clone();
        std::fs::create_dir_all(set.join("examples/serving")).unwrap();
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/examples/serving/routes.rego"),
            set.join("examples/serving/routes.rego"),
        )
        .unwrap();
        c.gateway.authz.rule = "data.serving.routes.allow".into();
    })
    .await;
    let body = server.request_body();
    let mut c = server.client("uri-demo").await.unwrap();
    assert_eq!(
        call(&mut c, "POST", "/v2/models/demo/infer", &body, None)
            .await
            .status,
        403
    );
    assert_eq!(server.forwarded_total(), 0);
    assert!(
        server
            .audit()
            .iter()
            .any(|e| e["status"] == 403 && e["rule"] == "serving.routes.allow"),
        "{}",
        server.audit_text()
    );
    server.stop().await;
}

/// A tenant's quota over a long window covers all its identities; past it, 429 with a
/// `Retry-After` until the window ends, and nothing reaches the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_quota_covers_all_its_identities() {
    let server = Running::start(|c, _| {
        c.gateway.limits.quotas.insert(
            "demo".into(),
            warden_agent::gateway::config::QuotaConfig {
                requests: 3,
                window_s: 3600,
            },
        );
    })
    .await;
    let body = server.request_body();
    let infer = "/v2/models/demo/infer";
    let mut a = server.client("uri-demo").await.unwrap();
    let mut b = server.client("subject-demo").await.unwrap();
    for first in [true, false, true] {
        let c = if first { &mut a } else { &mut b };
        assert_eq!(call(c, "POST", infer, &body, None).await.status, 200);
    }
    for c in [&mut a, &mut b] {
        let r = call(c, "POST", infer, &body, None).await;
        assert_eq!(r.status, 429);
        let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((3500..=3600).contains(&retry), "{retry}");
    }
    assert_eq!(
        server.forwarded_total(),
        3,
        "a request over quota reached the worker"
    );
    let text = support::serving::scrape(server.metrics_addr.expect("metrics listener")).await;
    assert!(
        text.contains("warden_rate_limited_total{limit=\"tenant_quota\"} 2"),
        "{text}"
    );
    server.stop().await;
}

/// Replays every record of the WAF development corpus (OWASP CRS regression requests) at the
/// inference route: its method, query string, headers and body, over tenant demo's granted
/// identity. No attack may reach the worker (the model's `forwarded` counter proves it); the
/// negatives are replayed the same way, and again as valid inference calls carrying their
/// headers and query, which must all be served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waf_corpus_replay_at_the_inference_route() {
    let corpus = std::env::var_os("WARDEN_WAF_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpora/waf_dev.jsonl")
        });
    let text = std::fs::read_to_string(&corpus)
        .unwrap_or_else(|e| panic!("the WAF corpus {} is required: {e}", corpus.display()));
    let server = Running::start(|_, _| {}).await;
    let valid_body = server.request_body();
    let mut c = server.client("demo-client").await.unwrap();
    let mut statuses: BTreeMap<(String, u16), u64> = BTreeMap::new();
    let (mut attacks, mut negatives, mut unsendable) = (0u64, 0u64, 0u64);
    let mut negatives_as_valid = 0u64;
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 289);
    let skip_header = |k: &str| {
        matches!(
            k.to_ascii_lowercase().as_str(),
            "host"
                | "content-length"
                | "connection"
                | "transfer-encoding"
                | "keep-alive"
                | "expect"
                | "upgrade"
                | "te"
                | "proxy-connection"
        )
    };
    for r in &records {
        let label = r["label"].as_str().unwrap().to_string();
        let method = r["method"].as_str().unwrap_or("GET");
        let uri = r["uri"].as_str().unwrap_or("/");
        let query = uri.split_once('?').map(|(_, q)| q).unwrap_or("");
        let path = if query.is_empty() {
            "/v2/models/demo/infer".to_string()
        } else {
            format!("/v2/models/demo/infer?{query}")
        };
        let data = match &r["data"] {
            serde_json::Value::String(s) => s.as_bytes().to_vec(),
            serde_json::Value::Array(lines) => lines
                .iter()
                .filter_map(|l| l.as_str())
                .collect::<Vec<_>>()
                .join("\r\n")
                .into_bytes(),
            _ => Vec::new(),
        };
        let before = server.forwarded_total();
        let built = (|| {
            let mut b = http::Request::builder()
                .method(http::Method::from_bytes(method.as_bytes()).ok()?)
                .uri(path.parse::<http::Uri>().ok()?)
                .header(
                    http::header::HOST,
                    format!("localhost:{}", server.addr.port()),
                );
            if let Some(h) = r["headers"].as_object() {
                for (k, v) in h {
                    if skip_header(k) {
                        continue;
                    }
                    let name = http::HeaderName::from_bytes(k.as_bytes()).ok()?;
                    let value = http::HeaderValue::from_bytes(v.as_str()?.as_bytes()).ok()?;
                    b = b.header(name, value);
                }
            }
            b.body(http_body_util::Full::new(Bytes::from(data.clone())))
                .ok()
        })();
        let Some(req) = built else {
            unsendable += 1;
            continue;
        };
        let reply = match c.send(req).await {
            Ok(r) => r,
            Err(_) => {
                // The server may close a connection on a protocol error; count and reconnect.
                *statuses.entry((label.clone(), 0)).or_default() += 1;
                c = server.client("demo-client").await.unwrap();
                continue;
            }
        };
        *statuses
            .entry((label.clone(), reply.status.as_u16()))
            .or_default() += 1;
        if label == "attack" {
            attacks += 1;
            assert_ne!(reply.status, 200, "attack {} was served", r["id"]);
            assert_eq!(
                server.forwarded_total(),
                before,
                "attack {} reached the worker",
                r["id"]
            );
        } else {
            negatives += 1;
            // The same negative as a valid inference call: its headers (but the content
            // type) and query, with a valid body, must be served.
            let mut b = http::Request::builder()
                .method("POST")
                .uri(path.parse::<http::Uri>().unwrap())
                .header(
                    http::header::HOST,
                    format!("localhost:{}", server.addr.port()),
                )
                .header(http::header::CONTENT_TYPE, "application/json");
            if let Some(h) = r["headers"].as_object() {
                for (k, v) in h {
                    if skip_header(k) || k.eq_ignore_ascii_case("content-type") {
                        continue;
                    }
                    if let (Ok(n), Some(Ok(v))) = (
                        http::HeaderName::from_bytes(k.as_bytes()),
                        v.as_str()
                            .map(|v| http::HeaderValue::from_bytes(v.as_bytes())),
                    ) {
                        b = b.header(n, v);
                    }
                }
            }
            let req = b
                .body(http_body_util::Full::new(Bytes::from(valid_body.clone())))
                .unwrap();
            let ok = c.send(req).await.unwrap();
            assert_eq!(
                ok.status,
                200,
                "negative {} as a valid call was blocked: {}",
                r["id"],
                String::from_utf8_lossy(&ok.body)
            );
            negatives_as_valid += 1;
        }
    }
    println!(
        "WAF replay ({} records): attacks sent {attacks}, negatives sent {negatives}, unsendable {unsendable}; \
         negatives served as valid inference calls {negatives_as_valid}; statuses {statuses:?}; \
         worker calls {} (all from the valid negatives)",
        records.len(),
        server.forwarded_total()
    );
    assert!(attacks >= 180, "too few attacks replayed: {attacks}");
    assert_eq!(server.forwarded_total(), negatives_as_valid);
    assert!(
        statuses
            .iter()
            .all(|((label, status), _)| label != "attack" || *status != 200)
    );
    server.stop().await;
}

/// `[model.inputs.<name>] min/max`: a value outside the declared range is refused before the
/// worker; values inside are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_value_ranges_are_enforced() {
    let server = Running::start(|c, _| {
        c.models[0].inputs.insert(
            "input".into(),
            warden_agent::config::InputRange {
                min: Some(0.0),
                max: Some(2000.0),
            },
        );
    })
    .await;
    let body = server.request_body();
    let mut c = server.client("demo-client").await.unwrap();
    let infer = "/v2/models/demo/infer";
    assert_eq!(call(&mut c, "POST", infer, &body, None).await.status, 200);
    let good: serde_json::Value = serde_json::from_slice(&body).unwrap();
    for bad in [-5.0, 5000.0] {
        let mut v = good.clone();
        v["inputs"][0]["data"][3] = bad.into();
        let r = call(
            &mut c,
            "POST",
            infer,
            &serde_json::to_vec(&v).unwrap(),
            None,
        )
        .await;
        assert_eq!(r.status, 400, "{bad}");
        let msg = r.json()["error"].as_str().unwrap().to_string();
        assert!(msg.contains("outside its declared range"), "{msg}");
    }
    assert_eq!(server.forwarded_total(), 1);
    server.stop().await;
}

/// Load shedding: with one request in flight (a client that sent its headers and is slow with
/// its body) and `max_in_flight = 1`, the next request is refused at once with 503 and
/// `Retry-After`, not queued; once the first finishes, requests are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_is_shed_beyond_the_in_flight_limit() {
    use tokio::io::AsyncWriteExt;
    let server = Running::start(|c, _| c.gateway.limits.max_in_flight = 1).await;
    let (cert, key) = &server.pki.certs["demo-client"];
    let tls = tls_config(
        &server.files.ca,
        Some((cert.as_path(), key.as_path())),
        false,
    );
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut slow = tokio_rustls::TlsConnector::from(tls)
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let body = server.request_body();
    let head = format!(
        "POST /v2/models/demo/infer HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&body[..10]).await.unwrap();
    slow.flush().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let mut c = server.client("demo-client").await.unwrap();
    let started = std::time::Instant::now();
    let r = c.get("/v2/health/live").await.unwrap();
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    assert_eq!(r.headers["retry-after"], "1");
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("the server is busy")
    );
    // The slow client finishes; its request is served, and the next one too.
    slow.write_all(&body[10..]).await.unwrap();
    slow.flush().await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("model_name") {
        use tokio::io::AsyncReadExt;
        let n = slow.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    assert_eq!(c.get("/v2/health/live").await.unwrap().status, 200);
    let text = support::serving::scrape(server.metrics_addr.unwrap()).await;
    assert!(text.contains("warden_load_shed_total 1"), "{text}");
    server.stop().await;
}

/// Model-extraction signals: an identity probing one input with small perturbations is
/// flagged; from then on (this window) it gets labels only, no scores; the flag is counted and
/// audited. Another identity still gets full answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probing_identities_get_labels_only() {
    use warden_agent::gateway::abuse::{AbuseAction, AbuseConfig};
    let server = Running::start(|c, _| {
        c.gateway.abuse = AbuseConfig {
            enabled: true,
            window_s: 600,
            max_distinct_inputs: 1000,
            max_near_duplicates: 3,
            action: AbuseAction::LabelOnly,
            label_outputs: vec!["label".into()],
        };
    })
    .await;
    let good: serde_json::Value = serde_json::from_slice(&server.request_body()).unwrap();
    let mut prober = server.client("uri-demo").await.unwrap();
    let infer = "/v2/models/demo/infer";
    let outputs = |r: &Reply| -> Vec<String> {
        r.json()["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["name"].as_str().unwrap().to_string())
            .collect()
    };
    let mut last = Vec::new();
    for i in 0..6 {
        let mut v = good.clone();
        let x = v["inputs"][0]["data"][0].as_f64().unwrap();
        v["inputs"][0]["data"][0] = (x * (1.0 + 0.001 * f64::from(i))).into();
        let r = call(
            &mut prober,
            "POST",
            infer,
            &serde_json::to_vec(&v).unwrap(),
            None,
        )
        .await;
        assert_eq!(r.status, 200);
        last = outputs(&r);
        if i == 0 {
            assert!(last.contains(&"probabilities".to_string()), "{last:?}");
        }
    }
    assert_eq!(last, vec!["label".to_string()], "scores after the flag");
    let mut other = server.client("subject-demo").await.unwrap();
    let r = call(&mut other, "POST", infer, &server.request_body(), None).await;
    assert!(outputs(&r).contains(&"probabilities".to_string()));
    let text = support::serving::scrape(server.metrics_addr.unwrap()).await;
    assert!(
        text.contains("warden_abuse_flags_total{signal=\"near_duplicates\"} 1"),
        "{text}"
    );
    assert!(server.audit().iter().any(|e| e["reason"]
        == "abuse signal near_duplicates (label_only)"
        && e["identity"] == "spiffe://warden.demo/tenant/demo/app/web"));
    server.stop().await;
}
