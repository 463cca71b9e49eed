//! Drives the built `warden` binary: `bundle sign`, `bundle verify`, and a tampered model;
//! `bundle release sign-policies`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

fn warden(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warden"))
        .current_dir(cwd)
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn sign_verify_and_refuse_a_tampered_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = d.join("model");
    std::fs::create_dir_all(model.join("sub")).unwrap();
    std::fs::write(model.join("model.onnx"), b"weights").unwrap();
    std::fs::write(model.join("sub/config.json"), b"{}").unwrap();
    std::fs::write(model.join("empty"), b"").unwrap();
    let (private, public) =
        warden_attest::bundle::generate_private_key_pem(warden_attest::bundle::Curve::P256)
            .unwrap();
    std::fs::write(d.join("key.pem"), private).unwrap();
    std::fs::write(d.join("key.pub"), public).unwrap();

    // Signature written inside the model: it must leave itself out of the manifest.
    let out = warden(
        d,
        &[
            "bundle",
            "sign",
            "key",
            "model",
            "--private-key",
            "key.pem",
            "--signature",
            "model/model.sig",
            "--serialization",
            "shards",
            "--shard-size",
            "4",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let signed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(signed.contains("root sha256:"), "{signed}");
    assert!(model.join("model.sig").is_file());

    let verify = |d: &Path| {
        warden(
            d,
            &[
                "bundle",
                "verify",
                "key",
                "model",
                "--public-key",
                "key.pub",
                "--signature",
                "model/model.sig",
            ],
        )
    };
    let out = verify(d);
    assert!(out.status.success(), "{}", text(&out));
    let verdict = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(verdict.lines().count(), 1, "one-line verdict: {verdict}");
    assert!(verdict.starts_with("verified "), "{verdict}");
    // Same root digest as announced at signing.
    let root = |s: &str| {
        s.split_whitespace()
            .skip_while(|w| *w != "root")
            .nth(1)
            .map(str::to_owned)
    };
    assert_eq!(root(&verdict), root(&signed));

    // Tamper: one byte of one file.
    std::fs::write(model.join("model.onnx"), b"weightz").unwrap();
    let out = verify(d);
    assert!(
        !out.status.success(),
        "tampered model verified: {}",
        text(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("model.onnx") && err.contains("changed"),
        "{err}"
    );
}

/// `bundle release sign-policies` packs exactly the set's `.rego` files (what its digest
/// covers) and a statement that verifies with the fleet authority's key for that digest.
#[test]
fn sign_policies_packs_the_rego_files_and_a_statement_for_their_digest() {
    use std::io::Read;
    use warden_attest::bundle::{self, Curve, Verifier};
    let dir = tempfile::tempdir().unwrap();
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let (private_pem, public_pem) = bundle::generate_private_key_pem(Curve::P256).unwrap();
    std::fs::write(dir.path().join("fleet.key"), private_pem).unwrap();
    let out = warden(
        dir.path(),
        &[
            "bundle",
            "release",
            "sign-policies",
            "--policies",
            policies.to_str().unwrap(),
            "--serial",
            "7",
            "--private-key",
            "fleet.key",
            "--output",
            "set.tar",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let digest = warden_attest::policyset::files::policy_set_digest(&policies).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&digest),
        "{}",
        text(&out)
    );

    let mut archive = tar::Archive::new(std::fs::File::open(dir.path().join("set.tar")).unwrap());
    let mut names = Vec::new();
    let mut statement = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        if name == "statement.json" {
            entry.read_to_end(&mut statement).unwrap();
        }
        names.push(name);
    }
    names.sort();
    assert_eq!(
        names,
        [
            "policies/examples/llm/output.rego",
            "policies/examples/serving/routes.rego",
            "policies/examples/serving/startup.rego",
            "policies/serving/routes.rego",
            "policies/serving/startup.rego",
            "statement.json"
        ]
    );
    let fleet = Verifier::from_public_key_pem(&public_pem).unwrap();
    let set = warden_attest::policyset::verify_policy_set(&statement, &fleet, &digest, 0).unwrap();
    assert_eq!(set.serial, 7);
}
