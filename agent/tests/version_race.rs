//! The version the route policy decides on is the version that answers, while the default
//! version changes under running requests: the demo model served as versions 1 and 2, tenant
//! `demo` granted version 1 only, requests without a version from several connections while
//! another task flips the default between the two with `activate`. Every answer is version
//! 1's or a 403, and every audit line names the version that was decided on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use support::serving::{Background, demo_client, demo_world};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_activations_never_serve_an_unauthorized_version() {
    let dir = tempfile::tempdir().unwrap();
    let (files, mut config) = demo_world(dir.path());
    let mut v2 = config.models[0].clone();
    v2.version = "2".into();
    config.models.push(v2);
    std::fs::write(
        files.dir.join("policies/data.json"),
        r#"{"tenants": {"demo": {"models": {"demo": {"versions": ["1"], "routes": ["infer", "metadata", "ready"]}}}}}"#,
    )
    .unwrap();
    // The requests of this test are not what the rate limits are about.
    config.gateway.limits.identity_rate_per_s = 1e6;
    config.gateway.limits.identity_burst = 1_000_000;
    config.gateway.limits.tenant_rate_per_s = 1e6;
    config.gateway.limits.tenant_burst = 1_000_000;
    let audit_path = config.audit.path.clone().unwrap();
    let prepared = warden_agent::serve::prepare(&config).await.unwrap();
    let models = prepared.models.clone();
    let server = Background::start(prepared);
    let request = std::fs::read(&files.request).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let (models, stop) = (models.clone(), stop.clone());
        tokio::spawn(async move {
            let mut flips = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let version = if flips.is_multiple_of(2) { "2" } else { "1" };
                models.activate("demo", version).unwrap();
                flips += 1;
                tokio::task::yield_now().await;
            }
            flips
        })
    };
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut client = demo_client(&files, &server).await;
        let body = request.clone();
        clients.push(tokio::spawn(async move {
            let (mut ok, mut forbidden) = (0u32, 0u32);
            for _ in 0..150 {
                let reply = client
                    .post_json("/v2/models/demo/infer", body.clone())
                    .await
                    .unwrap();
                match reply.status.as_u16() {
                    200 => {
                        assert_eq!(reply.json()["model_version"], "1", "{:?}", reply.json());
                        ok += 1;
                    }
                    403 => forbidden += 1,
                    other => panic!("{other}: {:?}", reply.json()),
                }
            }
            (ok, forbidden)
        }));
    }
    let (mut ok, mut forbidden) = (0, 0);
    for c in clients {
        let (o, f) = c.await.unwrap();
        ok += o;
        forbidden += f;
    }
    stop.store(true, Ordering::Relaxed);
    let flips = flipper.await.unwrap();
    server.stop().await;
    println!("{ok} answered by version 1, {forbidden} refused (version 2), {flips} activations");
    assert!(
        ok > 0 && forbidden > 0,
        "the default did not change under the requests"
    );

    let text = std::fs::read_to_string(&audit_path).unwrap();
    let mut lines = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["kind"] != "request" || v["route"] != "/v2/models/{name}/infer" {
            continue;
        }
        lines += 1;
        match v["outcome"].as_str().unwrap() {
            "ok" => assert_eq!(v["version"], "1", "{line}"),
            "forbidden" => assert_eq!(v["version"], "2", "{line}"),
            other => panic!("{other}: {line}"),
        }
    }
    assert_eq!(lines, ok + forbidden, "one audit line per request");
}
