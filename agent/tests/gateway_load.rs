//! A bounded load test on loopback: tenant `demo` floods past its quota and gets 429s, while
//! tenant `other`, calling within its quota, keeps its latency (p99 within 2× its unloaded p99,
//! in one of up to three paired measurements) and every one of its requests is answered
//! correctly. Bounded in count and time.
//! A second test drives sustained mixed traffic and shows the agent's and the worker's memory
//! stop growing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::{Client, serving, tls_config};
use warden_agent::demo::pki::DevCa;
use warden_agent::serve;

/// Tenant `other` calls at 40/s, under the 50/s quota each tenant has.
const PACE: Duration = Duration::from_millis(25);
const SAMPLES: usize = 100;

/// The two tests load the machine and measure latency and memory: they must not overlap.
/// Under `cargo test` (one process for the file) this lock serializes them; under nextest (a
/// process per test) the `load-tests` group in `.config/nextest.toml` does.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_quota_does_not_hurt_another() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (files, mut config) = serving::demo_world(dir.path());
    let mut secret = config.models[0].clone();
    secret.name = "secret".into();
    config.models.push(secret);
    std::fs::write(
        config.policy.as_ref().unwrap().directory.join("data.json"),
        r#"{"tenants": {"demo": {"models": {"demo": {"versions": ["*"], "routes": ["infer"]}}},
            "other": {"models": {"secret": {"versions": ["*"], "routes": ["infer"]}}}}}"#,
    )
    .unwrap();
    config.gateway.limits.tenant_rate_per_s = 50.0;
    config.gateway.limits.tenant_burst = 50;
    let ca = DevCa::new("load test CA").unwrap();
    let issued = ca
        .issue_client(Some("spiffe://warden.demo/tenant/other/app/b"), "b")
        .unwrap();
    let cas = dir.path().join("cas.pem");
    std::fs::write(
        &cas,
        format!(
            "{}{}",
            std::fs::read_to_string(&files.ca).unwrap(),
            ca.cert_pem()
        ),
    )
    .unwrap();
    let (b_cert, b_key) = (dir.path().join("b.pem"), dir.path().join("b.key"));
    std::fs::write(&b_cert, issued.cert_pem).unwrap();
    std::fs::write(&b_key, issued.key_pem).unwrap();
    config.tls.client_ca = Some(cas);

    let prepared = serve::prepare(&config).await.unwrap();
    let addr = prepared.local_addr;
    let models = prepared.models.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(prepared.run(async move {
        let _ = rx.await;
    }));
    let body = bytes::Bytes::from(std::fs::read(&files.request).unwrap());
    let b_tls = tls_config(&files.ca, Some((&b_cert, &b_key)), false);
    let a_tls = tls_config(
        &files.ca,
        Some((&files.client_cert, &files.client_key)),
        false,
    );

    // Tenant other's paced calls; each answer checked.
    async fn paced(c: &mut Client, body: &bytes::Bytes) -> Vec<Duration> {
        let mut lat = Vec::with_capacity(SAMPLES);
        let mut next = Instant::now();
        for _ in 0..SAMPLES {
            tokio::time::sleep_until(next.into()).await;
            next += PACE;
            let req = c.build(
                "POST",
                "/v2/models/secret/infer",
                body.clone(),
                Some("application/json"),
            );
            let t = Instant::now();
            let r = c.send(req).await.unwrap();
            lat.push(t.elapsed());
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            assert_eq!(r.json()["model_name"], "secret");
        }
        lat.sort();
        lat
    }
    let p99 = |l: &[Duration]| l[(l.len() * 99 / 100).min(l.len() - 1)];

    let mut b = Client::connect(addr, b_tls, false).await.unwrap();

    // Tenant demo calls at 400/s, 8× its quota, on 2 connections, bounded to 2 × 1000
    // requests: over quota, but within what the 2 test cores can answer beside tenant other.
    async fn flood(
        addr: std::net::SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        body: bytes::Bytes,
        stop: Arc<AtomicBool>,
        ok: Arc<AtomicU64>,
        limited: Arc<AtomicU64>,
    ) {
        let mut c = Client::connect(addr, tls, false).await.unwrap();
        let mut next = Instant::now();
        for _ in 0..1000 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep_until(next.into()).await;
            next += Duration::from_millis(5);
            let req = c.build(
                "POST",
                "/v2/models/demo/infer",
                body.clone(),
                Some("application/json"),
            );
            let r = c.send(req).await.unwrap();
            match r.status.as_u16() {
                200 => ok.fetch_add(1, Ordering::Relaxed),
                429 => {
                    assert!(r.headers.contains_key("retry-after"));
                    limited.fetch_add(1, Ordering::Relaxed)
                }
                s => panic!("flood got {s}: {}", String::from_utf8_lossy(&r.body)),
            };
        }
    }

    // The latency comparison is a measurement on a shared machine: a burst of unrelated load
    // during one of the two rounds can break the bound without the gateway being at fault. Each
    // attempt measures unloaded, then loaded, back to back; the bound must hold in one of
    // three. Every other assertion holds in every attempt. Broken isolation fails all three.
    let (mut ok_total, mut attempts) = (0, Vec::new());
    for attempt in 1..=3 {
        let unloaded = paced(&mut b, &body).await;
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, limited) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let flooders: Vec<_> = (0..2)
            .map(|_| {
                tokio::spawn(flood(
                    addr,
                    a_tls.clone(),
                    body.clone(),
                    stop.clone(),
                    ok.clone(),
                    limited.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let loaded = paced(&mut b, &body).await;
        stop.store(true, Ordering::Relaxed);
        for f in flooders {
            f.await.unwrap();
        }
        let (ok, limited) = (ok.load(Ordering::Relaxed), limited.load(Ordering::Relaxed));
        ok_total += ok;
        println!(
            "load, attempt {attempt}: tenant demo flood {ok} served, {limited} limited (429); tenant other p50 {:?} → {:?}, p99 {:?} unloaded → {:?} loaded",
            unloaded[SAMPLES / 2],
            loaded[SAMPLES / 2],
            p99(&unloaded),
            p99(&loaded)
        );
        assert!(limited > 0, "the flooding tenant was never limited");
        let demo_forwarded = models
            .resolve("demo", None)
            .unwrap()
            .forwarded
            .load(Ordering::SeqCst);
        assert_eq!(
            demo_forwarded, ok_total,
            "every served flood request reached the worker once, no limited one did"
        );
        // Within 2× of unloaded; a 1 ms floor absorbs timer granularity on sub-millisecond
        // p99s.
        let bound = (p99(&unloaded) * 2).max(p99(&unloaded) + Duration::from_millis(1));
        attempts.push((p99(&unloaded), p99(&loaded), bound));
        if p99(&loaded) <= bound {
            break;
        }
    }
    assert!(
        attempts.iter().any(|(_, loaded, bound)| loaded <= bound),
        "tenant other's p99 (unloaded, loaded, bound) broke the bound in every attempt: {attempts:?}"
    );
    let _ = tx.send(());
    server.await.unwrap();
}

/// Resident set size of a process, from `/proc/<pid>/status`, in KiB.
fn rss_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Sustained traffic of every kind — served, rate limited, invalid, unknown model, forbidden —
/// in rounds of equal size: after a warm-up round, further rounds must not grow the agent's
/// memory (this process: server and clients) or the sandboxed worker's, beyond allocator noise.
/// A leak of 1 KiB per request would show as 3 MiB per round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_under_sustained_load() {
    let _serial = ONE_AT_A_TIME.lock().await;
    const ROUND: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    let (files, mut config) = serving::demo_world(dir.path());
    config.audit.path = Some(dir.path().join("audit.jsonl"));
    // One identity's limit is hit in every round; the tenant's never is.
    config.gateway.limits.identity_rate_per_s = 200.0;
    config.gateway.limits.identity_burst = 50;
    config.gateway.limits.tenant_rate_per_s = 1e6;
    config.gateway.limits.tenant_burst = 1_000_000;
    let prepared = serve::prepare(&config).await.unwrap();
    let model = prepared.models.resolve("demo", None).unwrap();
    let inner = serving::sandboxed_pid(&model.worker).to_string();
    let server = serving::Background::start(prepared);
    let addr = server.addr;
    let tls = tls_config(
        &files.ca,
        Some((&files.client_cert, &files.client_key)),
        false,
    );
    let good = bytes::Bytes::from(std::fs::read(&files.request).unwrap());
    let mut c = Client::connect(addr, tls, false).await.unwrap();
    let mut round = async |n: usize| {
        let mut seen = std::collections::BTreeMap::<u16, usize>::new();
        for i in 0..n {
            let req = match i % 5 {
                0 | 1 => c.build(
                    "POST",
                    "/v2/models/demo/infer",
                    good.clone(),
                    Some("application/json"),
                ),
                2 => c.build(
                    "POST",
                    "/v2/models/demo/infer",
                    format!("{{\"inputs\": [{{\"name\": \"input\", \"shape\": [1, {i}]"),
                    Some("application/json"),
                ),
                3 => c.build(
                    "GET",
                    &format!("/v2/models/m{i}"),
                    bytes::Bytes::new(),
                    None,
                ),
                _ => c.build("DELETE", "/v2/models/demo/infer", bytes::Bytes::new(), None),
            };
            let r = c.send(req).await.unwrap();
            assert!(
                r.status.as_u16() < 500,
                "{}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
            *seen.entry(r.status.as_u16()).or_default() += 1;
        }
        seen
    };
    let warm = round(ROUND).await;
    assert!(
        warm.contains_key(&200) && warm.contains_key(&429),
        "{warm:?}"
    );
    let me = std::process::id().to_string();
    let (agent0, worker0) = (rss_kib(&me), rss_kib(&inner));
    let mut last = (agent0, worker0);
    for _ in 0..2 {
        round(ROUND).await;
        last = (rss_kib(&me), rss_kib(&inner));
    }
    println!(
        "memory after warm-up: agent {agent0} KiB, worker {worker0} KiB; after {} more requests: agent {} KiB, worker {} KiB ({warm:?} per round)",
        2 * ROUND,
        last.0,
        last.1
    );
    for (what, before, after) in [("agent", agent0, last.0), ("worker", worker0, last.1)] {
        assert!(
            after <= before + 3 * 1024,
            "the {what}'s memory grew from {before} KiB to {after} KiB over {} requests",
            2 * ROUND
        );
    }
    server.stop().await;
}
