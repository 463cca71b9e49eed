//! Certificate revocation lists for client certificates on the inference listener
//! (`tls.client_crls`), against a real TLS handshake: a revoked client is refused, a client
//! still valid is served; CRLs are re-read on reload (what SIGHUP does) and a list that does not
//! read keeps the ones in force; a client whose CA has no list among those configured is
//! refused, since its revocation status cannot be known.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};

use support::{Client, tls_config};
use warden_agent::demo::pki::{DevCa, IssuedCert};
use warden_agent::serve;

fn write_client(dir: &Path, name: &str, cert: &IssuedCert) -> (PathBuf, PathBuf) {
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, &cert.cert_pem).unwrap();
    std::fs::write(&k, &cert.key_pem).unwrap();
    (c, k)
}

/// The status of `GET /v2/health/live` for a client, or why no request got through.
async fn live(
    addr: std::net::SocketAddr,
    server_ca: &Path,
    id: &(PathBuf, PathBuf),
) -> Result<u16, String> {
    let mut c = Client::connect(
        addr,
        tls_config(server_ca, Some((&id.0, &id.1)), false),
        false,
    )
    .await?;
    c.get("/v2/health/live").await.map(|r| r.status.as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_clients_are_refused_and_crls_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (files, mut config) = support::serving::demo_world(dir.path());
    let ca = DevCa::new("CRL test client CA").unwrap();
    let ca_path = dir.path().join("client-ca.pem");
    std::fs::write(&ca_path, ca.cert_pem()).unwrap();
    let issue = |app: &str| {
        ca.issue_client(
            Some(&format!("spiffe://warden.demo/tenant/demo/app/{app}")),
            app,
        )
        .unwrap()
    };
    let (a, b) = (issue("a"), issue("b"));
    let (a_id, b_id) = (
        write_client(dir.path(), "a", &a),
        write_client(dir.path(), "b", &b),
    );
    let crl = dir.path().join("clients.crl.pem");
    std::fs::write(&crl, ca.revocation_list(&[&a]).unwrap()).unwrap();
    config.tls.client_ca = Some(ca_path);
    config.tls.client_crls = vec![crl.clone()];

    let prepared = serve::prepare(&config).await.unwrap();
    let verifiers = prepared.client_verifiers.clone();
    assert_eq!(verifiers.len(), 1, "the inference listener's verifier");
    let server = support::serving::Background::start(prepared);
    let addr = server.addr;

    assert_eq!(live(addr, &files.ca, &b_id).await, Ok(200));
    let refused = live(addr, &files.ca, &a_id).await;
    assert!(
        refused.is_err(),
        "a revoked client got through: {refused:?}"
    );

    // A list that does not read is refused; the one in force stays.
    std::fs::write(
        &crl,
        "-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n",
    )
    .unwrap();
    assert!(verifiers[0].reload_crls().is_err());
    assert_eq!(live(addr, &files.ca, &b_id).await, Ok(200));
    assert!(live(addr, &files.ca, &a_id).await.is_err());

    // A new list revoking b too: once reloaded, b is refused on its next connection.
    std::fs::write(&crl, ca.revocation_list(&[&a, &b]).unwrap()).unwrap();
    assert_eq!(verifiers[0].reload_crls().unwrap(), 1);
    assert!(live(addr, &files.ca, &b_id).await.is_err());

    // An empty list of the same CA: both served again.
    std::fs::write(&crl, ca.revocation_list(&[]).unwrap()).unwrap();
    verifiers[0].reload_crls().unwrap();
    assert_eq!(live(addr, &files.ca, &a_id).await, Ok(200));

    // Only another CA's list: the clients' own revocation status is unknown, so refused.
    let other = DevCa::new("another CA").unwrap();
    std::fs::write(&crl, other.revocation_list(&[]).unwrap()).unwrap();
    verifiers[0].reload_crls().unwrap();
    assert!(live(addr, &files.ca, &b_id).await.is_err());
    server.stop().await;
}

#[tokio::test]
async fn a_crl_that_does_not_read_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let (_files, mut config) = support::serving::demo_world(dir.path());
    let crl = dir.path().join("broken.crl");
    std::fs::write(&crl, b"\x30\x03\x02\x01").unwrap();
    config.tls.client_crls = vec![crl];
    let e = match serve::prepare(&config).await {
        Ok(_) => panic!("started with a CRL that does not parse"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("broken.crl") || e.contains("client CA"), "{e}");
}
