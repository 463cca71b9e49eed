//! Model admission: one test per clause of `policies/serving/startup.rego`, each through real
//! signatures (OMS bundles, release statements, attestations, revocation lists) verified
//! against anchors held by a software key store, and the policy's case file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use warden_agent::models::admission::{Admission, Decision, Evidence, establish_facts};
use warden_attest::anchors::TrustAnchors;
use warden_attest::bundle::{self, Curve, SignOptions, Signer};
use warden_attest::policyset::files::{policy_set_digest, policy_set_manifest};
use warden_attest::release::{Release, Stage, sign_attestation, sign_release};
use warden_attest::revocation::{
    RevocationList, RevokedDigest, RevokedVersion, sign_revocation_list,
};
use warden_keystore::software::SoftwareKeyStore;
use warden_keystore::{Counter, KeyStore, Role};

const SLSA: &str = "https://slsa.dev/provenance/v1";
const EVAL: &str = "https://warden.dev/evaluation/v1";

fn policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

struct Key {
    signer: Signer,
    public_pem: String,
}

fn key() -> Key {
    let (private_pem, public_pem) = bundle::generate_private_key_pem(Curve::P256).unwrap();
    Key {
        signer: Signer::from_private_key_pem(&private_pem).unwrap(),
        public_pem,
    }
}

/// Signers, a signed model, a release, attestations and a key store holding the anchors.
struct World {
    _dir: tempfile::TempDir,
    model_dir: PathBuf,
    signature: Vec<u8>,
    root_digest: String,
    model_signer: Key,
    release_authority: Key,
    fleet: Key,
    store: Arc<dyn KeyStore>,
    admission: Admission,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let model_dir = dir.path().join("fraud");
        std::fs::create_dir(&model_dir).unwrap();
        std::fs::write(model_dir.join("model.onnx"), b"weights v3").unwrap();
        std::fs::write(model_dir.join("config.json"), b"{}").unwrap();
        let model_signer = key();
        let release_authority = key();
        let fleet = key();
        let signed =
            bundle::sign_model(&model_dir, &model_signer.signer, &SignOptions::default()).unwrap();
        let store: Arc<dyn KeyStore> =
            Arc::new(SoftwareKeyStore::open(&dir.path().join("keystore")).unwrap());
        store
            .install_anchors(Role::ModelSigners, model_signer.public_pem.as_bytes())
            .unwrap();
        store
            .install_anchors(
                Role::ReleaseAuthority,
                release_authority.public_pem.as_bytes(),
            )
            .unwrap();
        store
            .install_anchors(Role::FleetAuthority, fleet.public_pem.as_bytes())
            .unwrap();
        let admission = Admission::new(&policies()).unwrap();
        World {
            _dir: dir,
            model_dir,
            signature: signed.json,
            root_digest: signed.root_digest,
            model_signer,
            release_authority,
            fleet,
            store,
            admission,
        }
    }

    fn release(&self, stage: Stage, policy: &str, required: &[&str]) -> Vec<u8> {
        sign_release(
            &Release {
                name: "fraud".into(),
                version: "3".into(),
                stage,
                policy_set_digest: policy.into(),
                required_attestations: required.iter().map(|s| s.to_string()).collect(),
            },
            &self.root_digest,
            &self.release_authority.signer,
        )
        .unwrap()
    }

    fn good_release(&self) -> Vec<u8> {
        self.release(Stage::Approved, self.admission.policy_digest(), &[SLSA])
    }

    fn attestation(&self, predicate_type: &str, signer: &Signer) -> Vec<u8> {
        sign_attestation(
            predicate_type,
            &serde_json::json!({"builder": {"id": "ci"}}),
            "fraud",
            &self.root_digest,
            signer,
        )
        .unwrap()
    }

    fn revocations(&self, list: &RevocationList) -> Vec<u8> {
        sign_revocation_list(list, &self.fleet.signer).unwrap()
    }

    fn decide(
        &self,
        signature: Option<&[u8]>,
        release: Option<&[u8]>,
        attestations: &[Vec<u8>],
        revocation_list: Option<&[u8]>,
    ) -> Decision {
        let anchors = TrustAnchors::from_key_store(self.store.as_ref()).unwrap();
        let facts = establish_facts(
            &Evidence {
                name: "fraud",
                version: "3",
                model_dir: &self.model_dir,
                model_file: None,
                signer_crls: &[],
                signature,
                release,
                attestations,
                revocation_list,
                loaded: None,
            },
            &anchors,
            self.store.as_ref(),
            self.admission.policy_digest(),
        );
        self.admission.decide(&facts)
    }

    /// Everything right but the part under test.
    fn decide_good(&self) -> Decision {
        let release = self.good_release();
        let att = vec![self.attestation(SLSA, &self.release_authority.signer)];
        self.decide(Some(&self.signature), Some(&release), &att, None)
    }
}

fn refused(d: &Decision, clause: &str) {
    assert!(!d.allowed, "expected a refusal for {clause}, got {d:?}");
    assert!(
        d.refused_for(clause),
        "expected a `{clause}` reason, got {:?}",
        d.reasons
    );
}

#[test]
fn everything_valid_is_admitted() {
    let w = World::new();
    let d = w.decide_good();
    assert!(d.allowed, "{d:?}");
    assert!(d.reasons.is_empty());

    // The loader's one call, and the event it then measures.
    let release = w.good_release();
    let att = vec![w.attestation(SLSA, &w.release_authority.signer)];
    let (facts, d) = warden_agent::models::admission::admit(
        &w.admission,
        &Evidence {
            name: "fraud",
            version: "3",
            model_dir: &w.model_dir,
            model_file: None,
            signer_crls: &[],
            signature: Some(&w.signature),
            release: Some(&release),
            attestations: &att,
            revocation_list: None,
            loaded: None,
        },
        w.store.as_ref(),
    )
    .unwrap();
    assert!(d.allowed, "{d:?}");
    let event = facts.load_event().unwrap();
    assert_eq!(event.root_digest, w.root_digest);
    assert_eq!(event.policy_digest, w.admission.policy_digest());
}

#[test]
fn wrong_stage_is_refused() {
    let w = World::new();
    let release = w.release(Stage::Staging, w.admission.policy_digest(), &[SLSA]);
    let att = vec![w.attestation(SLSA, &w.release_authority.signer)];
    let d = w.decide(Some(&w.signature), Some(&release), &att, None);
    refused(&d, "wrong_stage");
    assert_eq!(d.reasons.len(), 1, "{:?}", d.reasons);
    assert!(d.reasons[0].contains("Staging"), "{:?}", d.reasons);

    // The same release is admitted on an appliance configured to serve Staging.
    let staging = Admission::with_options(
        &policies(),
        &[Stage::Approved, Stage::Staging],
        warden_agent::models::admission::DEFAULT_LIMIT,
    )
    .unwrap();
    let anchors = TrustAnchors::from_key_store(w.store.as_ref()).unwrap();
    let facts = establish_facts(
        &Evidence {
            name: "fraud",
            version: "3",
            model_dir: &w.model_dir,
            model_file: None,
            signer_crls: &[],
            signature: Some(&w.signature),
            release: Some(&release),
            attestations: &att,
            revocation_list: None,
            loaded: None,
        },
        &anchors,
        w.store.as_ref(),
        staging.policy_digest(),
    );
    assert!(staging.decide(&facts).allowed);

    // A revoked stage is never served.
    let release = w.release(Stage::Revoked, w.admission.policy_digest(), &[SLSA]);
    refused(
        &w.decide(Some(&w.signature), Some(&release), &att, None),
        "wrong_stage",
    );
}

#[test]
fn unsigned_model_is_refused() {
    let w = World::new();
    let release = w.good_release();
    let d = w.decide(None, Some(&release), &[], None);
    refused(&d, "unsigned");
}

#[test]
fn tampered_model_is_refused() {
    let w = World::new();
    std::fs::write(w.model_dir.join("model.onnx"), b"weights v3 + backdoor").unwrap();
    let d = w.decide_good();
    refused(&d, "tampered");
    assert!(d.reasons.iter().any(|r| r.contains("model.onnx")), "{d:?}");
}

#[test]
fn tampered_signature_is_refused() {
    let w = World::new();
    // Flip one byte of the DSSE signature.
    let mut v: serde_json::Value = serde_json::from_slice(&w.signature).unwrap();
    let sig = v["dsseEnvelope"]["signatures"][0]["sig"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut bytes = base64_decode(&sig);
    let last = bytes.len() - 5;
    bytes[last] ^= 1;
    v["dsseEnvelope"]["signatures"][0]["sig"] = base64_encode(&bytes).into();
    let bad = serde_json::to_vec(&v).unwrap();
    let release = w.good_release();
    let d = w.decide(Some(&bad), Some(&release), &[], None);
    refused(&d, "signature_invalid");
}

#[test]
fn unknown_signer_is_refused() {
    let w = World::new();
    let stranger = key();
    let signed =
        bundle::sign_model(&w.model_dir, &stranger.signer, &SignOptions::default()).unwrap();
    let d = w.decide(Some(&signed.json), None, &[], None);
    refused(&d, "unknown_signer");
}

#[test]
fn missing_attestation_is_refused() {
    let w = World::new();
    let release = w.release(Stage::Approved, w.admission.policy_digest(), &[SLSA, EVAL]);
    let att = vec![w.attestation(SLSA, &w.release_authority.signer)];
    let d = w.decide(Some(&w.signature), Some(&release), &att, None);
    refused(&d, "attestation_missing");
    assert!(d.reasons.iter().any(|r| r.contains(EVAL)), "{d:?}");
}

#[test]
fn invalid_attestation_is_refused() {
    let w = World::new();
    let release = w.good_release();
    let stranger = key();
    let att = vec![w.attestation(SLSA, &stranger.signer)];
    let d = w.decide(Some(&w.signature), Some(&release), &att, None);
    refused(&d, "attestation_invalid");
}

#[test]
fn release_missing_or_forged_is_refused() {
    let w = World::new();
    refused(
        &w.decide(Some(&w.signature), None, &[], None),
        "release_missing",
    );
    // Signed by the model signer, not the release authority.
    let forged = sign_release(
        &Release {
            name: "fraud".into(),
            version: "3".into(),
            stage: Stage::Approved,
            policy_set_digest: w.admission.policy_digest().into(),
            required_attestations: vec![],
        },
        &w.root_digest,
        &w.model_signer.signer,
    )
    .unwrap();
    refused(
        &w.decide(Some(&w.signature), Some(&forged), &[], None),
        "release_invalid",
    );
}

#[test]
fn policy_digest_mismatch_is_refused() {
    let w = World::new();
    let other = format!("sha256:{}", "ab".repeat(32));
    let release = w.release(Stage::Approved, &other, &[SLSA]);
    let att = vec![w.attestation(SLSA, &w.release_authority.signer)];
    let d = w.decide(Some(&w.signature), Some(&release), &att, None);
    refused(&d, "policy_digest_mismatch");
    assert!(d.reasons.iter().any(|r| r.contains(&other)), "{d:?}");
    assert_eq!(d.reasons.len(), 1, "{:?}", d.reasons);
}

#[test]
fn revoked_digest_or_version_is_refused() {
    let w = World::new();
    let release = w.good_release();
    let att = vec![w.attestation(SLSA, &w.release_authority.signer)];
    let by_digest = w.revocations(&RevocationList {
        serial: 1,
        revoked_digests: vec![RevokedDigest {
            digest: w.root_digest.clone(),
            reason: "key compromise".into(),
        }],
        revoked_versions: vec![],
    });
    let d = w.decide(Some(&w.signature), Some(&release), &att, Some(&by_digest));
    refused(&d, "revoked");
    assert!(
        d.reasons.iter().any(|r| r.contains("key compromise")),
        "{d:?}"
    );

    let by_version = w.revocations(&RevocationList {
        serial: 2,
        revoked_digests: vec![],
        revoked_versions: vec![RevokedVersion {
            name: "fraud".into(),
            version: "3".into(),
            reason: "bias found".into(),
        }],
    });
    let d = w.decide(Some(&w.signature), Some(&release), &att, Some(&by_version));
    refused(&d, "revoked");
    assert!(d.reasons.iter().any(|r| r.contains("bias found")), "{d:?}");

    // A list that revokes something else admits it.
    let other = w.revocations(&RevocationList {
        serial: 3,
        revoked_digests: vec![],
        revoked_versions: vec![RevokedVersion {
            name: "fraud".into(),
            version: "2".into(),
            reason: String::new(),
        }],
    });
    assert!(
        w.decide(Some(&w.signature), Some(&release), &att, Some(&other))
            .allowed
    );
    assert_eq!(w.store.counter(Counter::RevocationSerial).unwrap(), 3);
}

#[test]
fn older_revocation_list_replayed_is_refused() {
    let w = World::new();
    let release = w.good_release();
    let att = vec![w.attestation(SLSA, &w.release_authority.signer)];
    // List 1 revokes nothing; list 2 revokes this version.
    let old = w.revocations(&RevocationList {
        serial: 1,
        revoked_digests: vec![],
        revoked_versions: vec![],
    });
    let new = w.revocations(&RevocationList {
        serial: 2,
        revoked_digests: vec![],
        revoked_versions: vec![RevokedVersion {
            name: "fraud".into(),
            version: "3".into(),
            reason: "withdrawn".into(),
        }],
    });
    assert!(
        w.decide(Some(&w.signature), Some(&release), &att, Some(&old))
            .allowed
    );
    refused(
        &w.decide(Some(&w.signature), Some(&release), &att, Some(&new)),
        "revoked",
    );
    // Replaying list 1 to un-revoke the model is refused, through the key store's counter.
    let d = w.decide(Some(&w.signature), Some(&release), &att, Some(&old));
    refused(&d, "revocation_list_replayed");
    assert!(
        d.reasons
            .iter()
            .any(|r| r.contains("serial 1") && r.contains("serial 2"))
    );
    // So is dropping the list altogether once one was accepted.
    refused(
        &w.decide(Some(&w.signature), Some(&release), &att, None),
        "revocation_list_missing",
    );
    // The counter survives a reopen of the key store (a restart).
    drop(w.store.counter(Counter::RevocationSerial));
    assert_eq!(w.store.counter(Counter::RevocationSerial).unwrap(), 2);
}

#[test]
fn revocation_list_from_another_signer_is_refused() {
    let w = World::new();
    let release = w.good_release();
    let att = vec![w.attestation(SLSA, &w.release_authority.signer)];
    let forged = sign_revocation_list(
        &RevocationList {
            serial: 9,
            revoked_digests: vec![],
            revoked_versions: vec![],
        },
        &w.release_authority.signer,
    )
    .unwrap();
    refused(
        &w.decide(Some(&w.signature), Some(&release), &att, Some(&forged)),
        "revocation_list_invalid",
    );
    assert_eq!(w.store.counter(Counter::RevocationSerial).unwrap(), 0);
}

#[test]
fn policy_set_digest_is_canonical_and_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("serving")).unwrap();
    std::fs::create_dir_all(dir.path().join("llm")).unwrap();
    std::fs::write(dir.path().join("serving/b.rego"), b"package b\n").unwrap();
    std::fs::write(dir.path().join("llm/a.rego"), b"package a\n").unwrap();
    std::fs::write(dir.path().join("serving/b_test.json"), b"{}").unwrap();
    std::fs::write(dir.path().join("serving/data.json"), b"{\"x\": 1}").unwrap();
    std::fs::write(dir.path().join("README.md"), b"not evaluated").unwrap();
    let manifest = policy_set_manifest(dir.path()).unwrap();
    // The policies and the data document, sorted by path; not the case file nor the README.
    let expected = format!(
        "warden-policy-set/v2\n{}  llm/a.rego\n{}  serving/b.rego\n{}  serving/data.json\n",
        sha256_hex(b"package a\n"),
        sha256_hex(b"package b\n"),
        sha256_hex(b"{\"x\": 1}")
    );
    assert_eq!(manifest, expected);
    let digest = policy_set_digest(dir.path()).unwrap();
    assert_eq!(
        digest,
        format!("sha256:{}", sha256_hex(expected.as_bytes()))
    );

    // Case files do not count; any policy or data byte does.
    std::fs::write(dir.path().join("serving/b_test.json"), b"{\"x\":1}").unwrap();
    assert_eq!(policy_set_digest(dir.path()).unwrap(), digest);
    std::fs::write(dir.path().join("serving/data.json"), b"{\"x\": 2}").unwrap();
    let with_data = policy_set_digest(dir.path()).unwrap();
    assert_ne!(with_data, digest);
    std::fs::write(dir.path().join("serving/b.rego"), b"package b \n").unwrap();
    assert_ne!(policy_set_digest(dir.path()).unwrap(), with_data);

    // Symbolic links are refused.
    std::os::unix::fs::symlink(dir.path().join("llm/a.rego"), dir.path().join("c.rego")).unwrap();
    assert!(policy_set_digest(dir.path()).is_err());
    std::fs::remove_file(dir.path().join("c.rego")).unwrap();

    // A policy set whose serving/ is a link elsewhere: the evaluated policy would escape the
    // digest, so it does not load.
    let real = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(real.path().join("serving")).unwrap();
    std::fs::copy(
        policies().join("serving/startup.rego"),
        real.path().join("serving/startup.rego"),
    )
    .unwrap();
    assert!(Admission::new(real.path()).is_ok());
    let linked = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(real.path().join("serving"), linked.path().join("serving")).unwrap();
    let e = Admission::new(linked.path()).unwrap_err().to_string();
    assert!(e.contains("symbolic link"), "{e}");

    // The shell recipe of the module documentation gives the same digest for the repository's
    // policies.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(
            "cd \"$1\" && { printf 'warden-policy-set/v2\\n'; \
             find . -type f \\( -name '*.rego' -o -name data.json \\) | sed 's|^\\./||' | LC_ALL=C sort | \
             while read -r f; do printf '%s  %s\\n' \"$(sha256sum < \"$f\" | cut -d' ' -f1)\" \"$f\"; done; \
             } | sha256sum | cut -d' ' -f1",
        )
        .arg("sh")
        .arg(policies())
        .output()
        .unwrap();
    assert!(out.status.success());
    let shell = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        format!("sha256:{}", shell.trim()),
        policy_set_digest(&policies()).unwrap()
    );
}

#[test]
fn a_broken_or_permissive_policy_does_not_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("serving")).unwrap();
    let path = dir.path().join("serving/startup.rego");
    std::fs::write(&path, "package warden.serving.startup\nthis is not rego\n").unwrap();
    assert!(Admission::new(dir.path()).is_err());
    std::fs::write(
        &path,
        "package warden.serving.startup\ndecision := {\"allow\": true, \"reasons\": set()}\n",
    )
    .unwrap();
    let e = Admission::new(dir.path()).unwrap_err().to_string();
    assert!(e.contains("deny by default"), "{e}");
}

#[test]
fn an_endless_policy_hits_the_execution_limit_and_denies() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("serving")).unwrap();
    // Denies on an empty input (so it loads), explodes on a large one.
    std::fs::write(
        dir.path().join("serving/startup.rego"),
        "package warden.serving.startup\n\
         n := object.get(input, \"n\", 0)\n\
         big := count([x | some a in numbers.range(1, n); some b in numbers.range(1, n); x := a * b])\n\
         decision := {\"allow\": big > 0, \"reasons\": set()} if n > 0\n\
         decision := {\"allow\": false, \"reasons\": {\"empty\"}} if n == 0\n",
    )
    .unwrap();
    let a = Admission::with_options(
        dir.path(),
        &[Stage::Approved],
        std::time::Duration::from_millis(20),
    )
    .unwrap();
    let start = std::time::Instant::now();
    let d = a.evaluate_json(serde_json::json!({"n": 100_000}));
    assert!(!d.allowed);
    assert!(d.refused_for("evaluation_error"), "{d:?}");
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
}

/// The policy's case file, `policies/serving/startup_test.json`, every case.
#[test]
fn startup_policy_case_file() {
    let path = policies().join("serving/startup_test.json");
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let admission = Admission::new(&policies()).unwrap();
    let base = table["base_input"].clone();
    let cases = table["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let mut input = base.clone();
        merge(&mut input, &case["patch"]);
        let d = admission.evaluate_json(input);
        let want_allow = case["allow"].as_bool().unwrap();
        let want: Vec<&str> = case["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        let got: Vec<&str> = d
            .reasons
            .iter()
            .map(|r| r.split(':').next().unwrap())
            .collect();
        if d.allowed != want_allow || got != want {
            failures.push(format!(
                "{name}: expected allow={want_allow} {want:?}, got {d:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// JSON merge patch (RFC 7386).
fn merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
    if let serde_json::Value::Object(p) = patch {
        if !target.is_object() {
            *target = serde_json::json!({});
        }
        let t = target.as_object_mut().unwrap();
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
    } else {
        *target = patch.clone();
    }
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}
