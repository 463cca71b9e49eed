//! The gateway chain's added cost per request, in one run:
//!
//! 1. End to end, on the same server: one `warden` server (mutual TLS, HTTP/1.1 keep-alive, the
//!    demo model in its sandboxed worker) answers alternating rounds of requests with its whole
//!    chain on — load shedding, deadline, authn (client certificate, or a bearer JWT ES256),
//!    authz (`routes.rego` in regorus), both rate limits, signature and range validation, abuse
//!    signals, circuit breaker, audit line, metrics — and off (the `insecure-bench-baseline`
//!    switch: routing, body reading, decoding, the worker hop and encoding only). Same
//!    connection, same worker, rounds interleaved so that drift hits both alike.
//! 2. In process, per stage, to see where the time goes.
//!
//! Prints p50/p99 of each and the differences. Goal: added p50 ≤ 50 µs, p99 ≤ 200 µs.
//! Run with `scripts/bench.sh` (it builds the worker in release and passes
//! `--features insecure-bench-baseline`). Environment: `WARDEN_BENCH_REQUESTS` (default 20000;
//! the end-to-end part uses a quarter of it per variant).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use warden_agent::audit::{AuditEvent, AuditLog};
use warden_agent::config::InputRange;
use warden_agent::gateway::Gateway;
use warden_agent::gateway::config::{GatewayConfig, JwtConfig};
use warden_agent::inference::codec;
use warden_agent::inference::validate;
use warden_agent::listener::tls::CertNames;
use warden_agent::{demo, serve};
use warden_runtime_client::tensor::{DataType, ModelSignature, TensorSpec};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn report(what: &str, mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let (p50, p99) = (
        us(percentile(&samples, 0.5)),
        us(percentile(&samples, 0.99)),
    );
    println!(
        "{what:<44} p50 {p50:>8.1} µs   p99 {p99:>8.1} µs   max {:>8.1} µs",
        us(*samples.last().unwrap())
    );
    (p50, p99)
}

fn main() {
    let n: usize = std::env::var("WARDEN_BENCH_REQUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().unwrap();

    // The gateway as the demo configures it (its policy set: the shipped route policy and the
    // demo's grants), plus a JWKS.
    std::fs::create_dir_all(dir.path().join("policies/serving")).unwrap();
    std::fs::write(
        dir.path()
            .join("policies")
            .join(warden_agent::gateway::authz::ROUTES_POLICY),
        warden_agent::gateway::authz::SHIPPED_ROUTES_REGO,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("policies/data.json"),
        r#"{"tenants": {"demo": {"models": {"demo": {"versions": ["*"], "routes": ["infer", "metadata", "ready"]}}}}}"#,
    )
    .unwrap();
    let rng = SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8.as_ref(),
        &rng,
    )
    .unwrap();
    let p = key.public_key().as_ref();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1",
            "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..])}]})
        .to_string(),
    )
    .unwrap();
    let mut cfg = GatewayConfig::default();
    cfg.identity.trust_domains = vec!["warden.demo".into()];
    cfg.limits.identity_rate_per_s = 1e6;
    cfg.limits.identity_burst = 1_000_000;
    cfg.limits.tenant_rate_per_s = 1e6;
    cfg.limits.tenant_burst = 1_000_000;
    cfg.jwt = Some(JwtConfig {
        jwks,
        issuer: "https://idp.test".into(),
        audience: "warden".into(),
        algorithms: vec!["ES256".into()],
        leeway_s: 30,
        max_token_bytes: 8192,
        tenant_claim: "tenant".into(),
    });
    end_to_end(n / 4, &cfg, &jwt_token(&key, &rng));
    println!("in process:");
    let gateway = Gateway::new(&cfg).unwrap();
    let set =
        warden_agent::policy::set::PolicySetFiles::read(&dir.path().join("policies")).unwrap();
    gateway
        .routes()
        .install(gateway.routes().compile(&set).unwrap());
    let audit = AuditLog::open(Some(&dir.path().join("audit.jsonl"))).unwrap();

    let token = jwt_token(&key, &rng);
    let mut jwt_headers = http::HeaderMap::new();
    jwt_headers.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    let no_headers = http::HeaderMap::new();
    let cert = CertNames {
        uris: vec!["spiffe://warden.demo/tenant/demo/app/curl".into()],
        subject: vec![("CN", "curl".into())],
    };

    let body = demo::DEMO_REQUEST_JSON.as_bytes();
    let signature = ModelSignature {
        inputs: vec![TensorSpec {
            name: "input".into(),
            datatype: DataType::Fp32,
            shape: vec![-1, 30],
        }],
        outputs: vec![],
    };
    let mut ranges = BTreeMap::new();
    ranges.insert(
        "input".to_string(),
        InputRange {
            min: Some(-1e6),
            max: Some(1e6),
        },
    );

    let off = |_: ()| {
        let req = codec::decode_request(body, None).unwrap();
        validate::inputs(&signature, &req.inputs).unwrap();
        std::hint::black_box(req);
    };
    // One request's audit line, as the server writes it.
    let audit_line = |identity: &warden_agent::gateway::identity::Identity, rule: &str| {
        audit.record(&AuditEvent {
            kind: "request",
            request_id: Some("0123456789abcdef0123456789abcdef"),
            identity: Some(&identity.id),
            tenant: Some(&identity.tenant),
            peer: Some("127.0.0.1:40000".into()),
            method: Some("POST"),
            route: Some("/v2/models/{name}/infer"),
            model: Some("demo"),
            version: Some("1"),
            outcome: "ok",
            status: Some(200),
            reason: None,
            rule: Some(rule),
            latency_us: Some(100),
        });
    };
    let on = |headers: &http::HeaderMap| {
        let started = Instant::now();
        let identity = gateway.authenticate(Some(&cert), headers).unwrap();
        let d = gateway.authorize(
            &identity,
            "POST",
            "/v2/models/{name}/infer",
            Some("demo"),
            Some("1"),
        );
        assert!(d.allow, "{d:?}");
        assert!(gateway.rate(&identity).allowed);
        let req = codec::decode_request(body, None).unwrap();
        validate::inputs(&signature, &req.inputs).unwrap();
        validate::ranges(&ranges, &req.inputs).unwrap();
        audit_line(&identity, &d.rule);
        gateway.record("/v2/models/{name}/infer", "demo", "ok", started.elapsed());
        std::hint::black_box(req);
    };

    // Warm up, then interleave the variants so that drift hits all of them alike.
    for _ in 0..500 {
        off(());
        on(&no_headers);
        on(&jwt_headers);
    }
    let (mut t_off, mut t_cert, mut t_jwt) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        off(());
        t_off.push(t.elapsed());
        let t = Instant::now();
        on(&no_headers);
        t_cert.push(t.elapsed());
        let t = Instant::now();
        on(&jwt_headers);
        t_jwt.push(t.elapsed());
    }
    // Per-stage breakdown, to see where the time goes.
    let id = gateway.authenticate(Some(&cert), &no_headers).unwrap();
    let stage = |what: &str, f: &dyn Fn()| {
        let mut t = Vec::with_capacity(n / 4);
        for _ in 0..n / 4 {
            let s = Instant::now();
            f();
            t.push(s.elapsed());
        }
        report(what, t);
    };
    println!("stages:");
    stage("  authn, certificate", &|| {
        std::hint::black_box(gateway.authenticate(Some(&cert), &no_headers).unwrap());
    });
    stage("  authn, JWT ES256", &|| {
        std::hint::black_box(gateway.authenticate(Some(&cert), &jwt_headers).unwrap());
    });
    stage("  authz, routes.rego", &|| {
        std::hint::black_box(gateway.authorize(
            &id,
            "POST",
            "/v2/models/{name}/infer",
            Some("demo"),
            Some("1"),
        ));
    });
    // The route policy compiled alone, and with every policy of the repository's shipped set
    // (the startup policy, the specification's examples) as a deployment's set compiles them:
    // each decision on a distinct input (another version), so none comes from the cache.
    let alone =
        warden_agent::policy::set::PolicySetFiles::read(&dir.path().join("policies")).unwrap();
    let whole = dir.path().join("shipped");
    copy_tree(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"),
        &whole,
    );
    std::fs::copy(
        dir.path().join("policies/data.json"),
        whole.join("data.json"),
    )
    .unwrap();
    let whole = warden_agent::policy::set::PolicySetFiles::read(&whole).unwrap();
    let limit = Duration::from_millis(50);
    for (what, set) in [
        ("  authz uncached, routes.rego alone", &alone),
        ("  authz uncached, the whole shipped set", &whole),
    ] {
        let policy = warden_agent::gateway::authz::RoutePolicy::from_set(set, limit).unwrap();
        let next = std::cell::Cell::new(0u64);
        stage(what, &|| {
            let version = next.get().to_string();
            next.set(next.get() + 1);
            std::hint::black_box(policy.decide(&warden_agent::gateway::authz::PolicyInput {
                identity: &id,
                tenant: &id.tenant,
                method: "POST",
                route: "/v2/models/{name}/infer",
                model: Some("demo"),
                version: Some(&version),
            }));
        });
    }
    stage("  rate limits", &|| {
        std::hint::black_box(gateway.rate(&id));
    });
    stage("  audit line (file)", &|| {
        audit_line(&id, "tenant_model_grant")
    });
    stage("  metrics", &|| {
        gateway.record(
            "/v2/models/{name}/infer",
            "demo",
            "ok",
            Duration::from_micros(100),
        )
    });
    println!("gateway chain, {n} requests per variant, demo request (2×30 FP32), one thread");
    let (o50, o99) = report("chain off (decode + validate)", t_off);
    let (c50, c99) = report("chain on, mTLS identity", t_cert);
    let (j50, j99) = report("chain on, JWT identity (ES256)", t_jwt);
    println!(
        "added by the chain: mTLS p50 {:.1} µs p99 {:.1} µs; JWT p50 {:.1} µs p99 {:.1} µs \
         (goal p50 ≤ 50 µs, p99 ≤ 200 µs)",
        c50 - o50,
        c99 - o99,
        j50 - o50,
        j99 - o99
    );
}

/// A bearer token the gateway accepts: ES256, tenant `demo`, valid for an hour.
fn jwt_token(key: &EcdsaKeyPair, rng: &SystemRandom) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({"iss": "https://idp.test", "aud": "warden", "sub": "svc",
        "tenant": "demo", "scope": "warden:infer", "exp": now + 3600});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = key.sign(rng, input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

/// Part 1: the same server with its chain on and off, over HTTPS.
fn end_to_end(per_variant: usize, gateway: &GatewayConfig, token: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let (files, mut config) = demo::prepare(dir.path(), 0).unwrap();
        config.runtime.worker_binary = Some(support::serving::worker_binary());
        // The demo's gateway (certificate identities, routes.rego, its grants, its value
        // ranges) plus the bearer-token issuer; limits raised so that nothing is refused.
        config.gateway.jwt = gateway.jwt.clone();
        config.gateway.limits = gateway.limits.clone();
        config.audit.path = Some(dir.path().join("audit.jsonl"));
        let prepared = serve::prepare(&config).await.unwrap();
        let chain_off = prepared.insecure_bench_chain_switch();
        let server = support::serving::Background::start(prepared);
        let addr = server.addr;
        let tls = support::tls_config(
            &files.ca,
            Some((&files.client_cert, &files.client_key)),
            false,
        );
        let mut c = support::Client::connect(addr, tls, false).await.unwrap();
        let body = bytes::Bytes::from(demo::DEMO_REQUEST_JSON.as_bytes());
        let bearer: http::HeaderValue = format!("Bearer {token}").parse().unwrap();
        let mut one = async |jwt: bool| {
            let mut req = c.build(
                "POST",
                "/v2/models/demo/infer",
                body.clone(),
                Some("application/json"),
            );
            if jwt {
                req.headers_mut()
                    .insert(http::header::AUTHORIZATION, bearer.clone());
            }
            let t = Instant::now();
            let r = c.send(req).await.unwrap();
            let took = t.elapsed();
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            took
        };
        const ROUND: usize = 100;
        // (chain off, jwt) per variant.
        let variants = [(true, false), (false, false), (false, true)];
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); variants.len()];
        for round in 0..(per_variant / ROUND).max(1) + 2 {
            for (i, &(off, jwt)) in variants.iter().enumerate() {
                chain_off.store(off, std::sync::atomic::Ordering::Relaxed);
                for _ in 0..ROUND {
                    let took = one(jwt).await;
                    // The first two rounds warm up.
                    if round >= 2 {
                        samples[i].push(took);
                    }
                }
            }
        }
        chain_off.store(false, std::sync::atomic::Ordering::Relaxed);
        println!("end to end, same server and connection, HTTPS mTLS h1, concurrency 1:");
        let mut it = samples.into_iter();
        let (off_p50, off_p99) = report("  chain off (baseline)", it.next().unwrap());
        let (cert_p50, cert_p99) = report("  chain on, certificate identity", it.next().unwrap());
        let (jwt_p50, jwt_p99) = report("  chain on, bearer JWT ES256", it.next().unwrap());
        println!(
            "  added, certificate: p50 {:+.1} µs, p99 {:+.1} µs (goal ≤ 50 / ≤ 200)",
            cert_p50 - off_p50,
            cert_p99 - off_p99
        );
        println!(
            "  added, bearer JWT:  p50 {:+.1} µs, p99 {:+.1} µs (goal ≤ 50 / ≤ 200)",
            jwt_p50 - off_p50,
            jwt_p99 - off_p99
        );
        drop(c);
        server.stop().await;
    });
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
