//! Models signed with the certificate method.
//!
//! A model loads only while its chain is valid, so its expiry is announced well before:
//! `warden check` prints a warning, `warden status` reports a problem, and `/metrics` carries
//! the time as a gauge. The date is the earliest notAfter on the verified path (here the
//! intermediate's, before the leaf's).
//!
//! Revocation (`trust.model_signer_crls`): a signing certificate its issuer's CRL lists is
//! refused, in development mode at load and with a key store at admission; once CRLs are
//! configured, a certificate whose issuer has none among them is refused too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::pki::{Pki, pki};
use warden_agent::serve;
use warden_attest::bundle::{SignOptions, sign_model};
use warden_keystore::report::Line;

const DAY: u64 = 86_400;

/// The demo world with its model signed by `pki`'s leaf and the root as the anchor.
fn certificate_signed_world(
    dir: &std::path::Path,
    pki: &Pki,
) -> (warden_agent::demo::DemoFiles, warden_agent::config::Config) {
    let (files, mut config) = support::serving::demo_world(dir);
    std::fs::write(files.dir.join("trust/signer-root.pem"), &pki.root).unwrap();
    let signer = pki.signer();
    sign_model(
        &files.dir.join("models/demo"),
        &signer,
        &SignOptions::default(),
    )
    .unwrap()
    .write_to(&files.dir.join("models/demo.sig"))
    .unwrap();
    config.trust.model_signer_keys.clear();
    config.trust.model_signer_roots = vec![files.dir.join("trust/signer-root.pem")];
    (files, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_chain_near_its_expiry_is_announced_by_check_status_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expires = now + 5 * DAY;
    let pki = pki(expires, now + 10 * DAY);
    let (files, config) = certificate_signed_world(dir.path(), &pki);

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

    let prepared = serve::prepare(&config).await.unwrap();
    let (models, _) = prepared.models.report();
    assert_eq!(models[0].signer_valid_until, Some(expires));
    let metrics = prepared.metrics_addr.unwrap();
    let state_dir = config.state.directory.clone();
    let server = support::serving::Background::start(prepared);

    let scraped = support::serving::scrape(metrics).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_signing_certificate_is_refused_at_load() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let pki = pki(now + 365 * DAY, now + 365 * DAY);
    for (crl, served, why) in [
        // The leaf's issuer's list, not naming it: served.
        (pki.crl(false, false), true, ""),
        // The same issuer's list naming the leaf: refused.
        (
            pki.crl(false, true),
            false,
            "the signing certificate is revoked",
        ),
        // Only the root's list: the leaf's status cannot be known, refused.
        (pki.crl(true, false), false, "revocation status is unknown"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (files, mut config) = certificate_signed_world(dir.path(), &pki);
        let path = files.dir.join("trust/signers.crl");
        std::fs::write(&path, crl).unwrap();
        config.trust.model_signer_crls = vec![path];
        match serve::prepare(&config).await {
            Ok(prepared) => {
                assert!(served, "served although {why}");
                prepared.models.shutdown().await;
            }
            Err(e) => {
                let e = e.to_string();
                assert!(!served, "refused: {e}");
                assert!(e.contains(why), "{e}");
            }
        }
    }
    // A list that does not parse stops the start.
    let dir = tempfile::tempdir().unwrap();
    let (files, mut config) = certificate_signed_world(dir.path(), &pki);
    let path = files.dir.join("trust/signers.crl");
    std::fs::write(&path, b"\x30\x03\x02\x01\x00").unwrap();
    config.trust.model_signer_crls = vec![path];
    assert!(serve::prepare(&config).await.is_err());
}

/// With a key store the model signers' anchors are the key store's (here the root
/// certificate) and the CRLs come with the evidence admission verifies.
#[test]
fn admission_verifies_signers_against_their_crls() {
    use std::sync::Arc;
    use warden_agent::models::admission::{Admission, Evidence, SignatureStatus, admit};
    use warden_keystore::software::SoftwareKeyStore;
    use warden_keystore::{KeyStore, Role};

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let pki = pki(now + 365 * DAY, now + 365 * DAY);
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::write(model.join("model.onnx"), b"weights").unwrap();
    let signer = pki.signer();
    let signature = sign_model(&model, &signer, &SignOptions::default())
        .unwrap()
        .json;
    let store: Arc<dyn KeyStore> =
        Arc::new(SoftwareKeyStore::open(&dir.path().join("keystore")).unwrap());
    store
        .install_anchors(Role::ModelSigners, pki.root.as_bytes())
        .unwrap();
    let admission =
        Admission::new(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"))
            .unwrap();
    let signature_facts = |crls: &[Vec<u8>]| {
        let (facts, _) = admit(
            &admission,
            &Evidence {
                name: "m",
                version: "1",
                model_dir: &model,
                model_file: None,
                signature: Some(&signature),
                release: None,
                attestations: &[],
                revocation_list: None,
                signer_crls: crls,
                loaded: None,
            },
            store.as_ref(),
        )
        .unwrap();
        facts.signature
    };
    assert_eq!(signature_facts(&[]).status, SignatureStatus::Valid);
    assert_eq!(
        signature_facts(&[pki.crl(false, false)]).status,
        SignatureStatus::Valid
    );
    let revoked = signature_facts(&[pki.crl(false, true)]);
    assert_ne!(revoked.status, SignatureStatus::Valid);
    assert!(revoked.detail.contains("revoked"), "{revoked:?}");
}

/// Development mode: the anchors and their CRLs are read again on reload (what SIGHUP does);
/// the loads that follow are decided under the new lists, and a list that does not read keeps
/// those in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_signer_crls_decide_the_loads_that_follow() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let pki = pki(now + 365 * DAY, now + 365 * DAY);
    let dir = tempfile::tempdir().unwrap();
    let (files, mut config) = certificate_signed_world(dir.path(), &pki);
    let crl = files.dir.join("trust/signers.crl");
    std::fs::write(&crl, pki.crl(false, false)).unwrap();
    config.trust.model_signer_crls = vec![crl.clone()];
    let prepared = serve::prepare(&config).await.unwrap();
    let models = prepared.models.clone();
    let mut v2 = config.models[0].clone();
    v2.version = "2".into();

    std::fs::write(&crl, b"not a list").unwrap();
    assert!(matches!(models.reload_file_anchors(), Some(Err(_))));
    models.add(&v2).await.unwrap();

    std::fs::write(&crl, pki.crl(false, true)).unwrap();
    assert!(matches!(models.reload_file_anchors(), Some(Ok(1))));
    let mut v3 = v2.clone();
    v3.version = "3".into();
    let e = models.add(&v3).await.unwrap_err().to_string();
    assert!(e.contains("the signing certificate is revoked"), "{e}");
    prepared.models.shutdown().await;
}
