//! A model signed with the certificate method loads only while its chain is valid, so its
//! expiry is announced well before: `warden check` prints a warning, `warden status` reports a
//! problem, and `/metrics` carries the time as a gauge. The date is the earliest notAfter on
//! the verified path (here the intermediate's, before the leaf's).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use warden_agent::serve;
use warden_attest::bundle::{SignOptions, Signer, sign_model};
use warden_keystore::report::Line;

const DAY: u64 = 86_400;

/// root → intermediate (valid until `intermediate_until`) → code-signing leaf (valid until
/// `leaf_until`): (root PEM, intermediate PEM, leaf PEM, leaf key PEM).
fn pki(intermediate_until: u64, leaf_until: u64) -> (String, String, String, String) {
    let at = |unix: u64| rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(unix);
    let ca = |cn: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = rcgen::date_time_ymd(2025, 1, 1);
        p
    };
    let root_key = KeyPair::generate().unwrap();
    let root_params = ca("Expiry Test Root");
    let root_cert = root_params.self_signed(&root_key).unwrap();
    let root = Issuer::new(root_params, root_key);
    let int_key = KeyPair::generate().unwrap();
    let mut int_params = ca("Expiry Test Intermediate");
    int_params.not_after = at(intermediate_until);
    let int_cert = int_params.signed_by(&int_key, &root).unwrap();
    let intermediate = Issuer::new(int_params, int_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut lp = CertificateParams::new(Vec::<String>::new()).unwrap();
    lp.distinguished_name
        .push(DnType::CommonName, "model-signer");
    lp.is_ca = IsCa::ExplicitNoCa;
    lp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    lp.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    lp.not_before = rcgen::date_time_ymd(2025, 1, 1);
    lp.not_after = at(leaf_until);
    let leaf_cert = lp.signed_by(&leaf_key, &intermediate).unwrap();
    (
        root_cert.pem(),
        int_cert.pem(),
        leaf_cert.pem(),
        leaf_key.serialize_pem(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_chain_near_its_expiry_is_announced_by_check_status_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let (files, mut config) = support::serving::demo_world(dir.path());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expires = now + 5 * DAY;
    let (root, intermediate, leaf, leaf_key) = pki(expires, now + 10 * DAY);
    std::fs::write(files.dir.join("trust/signer-root.pem"), root).unwrap();
    let signer = Signer::from_private_key_pem(&leaf_key)
        .unwrap()
        .with_certificate_chain(&leaf, &intermediate)
        .unwrap();
    sign_model(
        &files.dir.join("models/demo"),
        &signer,
        &SignOptions::default(),
    )
    .unwrap()
    .write_to(&files.dir.join("models/demo.sig"))
    .unwrap();

    // `warden check` on the config, the anchor now the root certificate.
    let text = std::fs::read_to_string(&files.config).unwrap();
    let keys = "model_signer_keys = [\"trust/model-signer.pub\"]";
    assert!(text.contains(keys), "the demo config changed");
    std::fs::write(
        &files.config,
        text.replace(keys, "model_signer_roots = [\"trust/signer-root.pem\"]"),
    )
    .unwrap();
    let (ok, out) = support::serving::warden(&["check", "--config"], &files.config);
    assert!(ok, "{out}");
    assert!(
        out.contains("WARNING: model demo version 1: its signing certificate chain expires on")
            && (out.contains("in 4 day(s)") || out.contains("in 5 day(s)")),
        "{out}"
    );

    config.trust.model_signer_keys.clear();
    config.trust.model_signer_roots = vec![files.dir.join("trust/signer-root.pem")];
    let prepared = serve::prepare(&config).await.unwrap();
    let (models, _) = prepared.models.report();
    assert_eq!(models[0].signer_valid_until, Some(expires));
    let metrics = prepared.metrics_addr.unwrap();
    let state_dir = config.state.directory.clone();
    let server = support::serving::Background::start(prepared);

    let scraped = scrape(metrics).await;
    assert!(
        scraped.contains(&format!(
            "warden_model_signer_valid_until_seconds{{model=\"demo\",version=\"1\"}} {expires}"
        )),
        "{scraped}"
    );

    // `warden status`'s report, from the status file the running agent writes.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !state_dir.join(warden_agent::status::STATUS_FILE).exists() {
        assert!(std::time::Instant::now() < deadline, "no status file");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lines =
        warden_agent::status::report_lines(&state_dir, config.trust.signer_expiry_warning());
    assert!(
        lines.iter().any(|l| matches!(l, Line::Problem(t)
            if t.contains("model demo version 1: its signing certificate chain expires on"))),
        "{lines:?}"
    );
    // With a shorter warning window, no problem yet.
    let quiet = warden_agent::status::report_lines(&state_dir, Duration::from_secs(DAY));
    assert!(
        !quiet
            .iter()
            .any(|l| matches!(l, Line::Problem(t) if t.contains("signing certificate"))),
        "{quiet:?}"
    );
    server.stop().await;
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}
