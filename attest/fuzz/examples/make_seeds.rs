//! Writes the seed corpora of this crate's fuzz targets into `corpus/<target>/`, and
//! `fixtures/root.pem` (the certificate method's root) when it is missing:
//! `cargo run --example make_seeds` from `attest/fuzz` (scripts/fuzz.sh never runs it; the
//! seeds are committed). Bundles and statements are made by the project's own signers
//! (`bundle::sign_model`, `release::sign_release`, …) with the fixed keys of common.rs; event
//! logs as attest/keyd/tests/boot.rs builds them; TPM structures as the TPM marshals them.
//! Real swtpm structures (an AK public area, a quote) are added by
//! `examples/swtpm_seeds.sh`.
//! Seeds named `regression_*` are not made here: they are minimised crash inputs found by the
//! targets, kept so that every run checks the fix.

#[path = "../fuzz_targets/common.rs"]
mod common;

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::pkcs8::{EncodePrivateKey as _, LineEnding};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use sha2::Digest as _;
use warden_attest::boot::eventlog::{
    ALG_SHA1, ALG_SHA256, ALG_SHA384, EV_NO_ACTION, Event, EventLog,
};
use warden_attest::bundle::{SignOptions, Signer, sign_model};
use warden_attest::policyset::{PolicySet, sign_policy_set};
use warden_attest::release::{Release, Stage, sign_attestation, sign_release};
use warden_attest::revocation::{
    RevocationList, RevokedDigest, RevokedVersion, sign_revocation_list,
};

fn here() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = here().join("corpus").join(target);
    fs::create_dir_all(&dir).unwrap();
    assert!(
        bytes.len() < 64 * 1024,
        "{target}/{name}: {} bytes",
        bytes.len()
    );
    fs::write(dir.join(name), bytes).unwrap();
}

fn with_mode(mode: u8, bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(bytes);
    v
}

// ---- event logs (attest/keyd/tests/boot.rs) -------------------------------------------------

fn event(pcr: u32, data: &[u8]) -> Event {
    Event {
        pcr,
        event_type: 0x8000_0008, // EV_EFI_PLATFORM_FIRMWARE_BLOB
        digests: vec![
            (ALG_SHA1, sha2::Sha256::digest(data)[..20].to_vec()),
            (ALG_SHA256, sha2::Sha256::digest(data).to_vec()),
        ],
        data: data.to_vec(),
    }
}

fn firmware_log() -> EventLog {
    EventLog {
        algorithms: vec![(ALG_SHA1, 20), (ALG_SHA256, 32)],
        events: vec![
            event(0, b"firmware volume"),
            event(2, b"option rom"),
            Event {
                pcr: 1,
                event_type: EV_NO_ACTION,
                digests: vec![(ALG_SHA1, vec![0; 20]), (ALG_SHA256, vec![0; 32])],
                data: b"informational".to_vec(),
            },
            event(4, b"shim"),
            event(7, b"secure boot: enabled"),
            event(4, b"grub"),
            event(7, b"db entry"),
            event(4, b"linux"),
        ],
    }
}

fn event_logs() {
    write("tpm_event_log", "firmware_log", &firmware_log().to_bytes());
    let header_only = EventLog {
        algorithms: vec![(ALG_SHA256, 32)],
        events: vec![],
    };
    write("tpm_event_log", "header_only", &header_only.to_bytes());
    let mut locality = b"StartupLocality\0".to_vec();
    locality.push(3);
    let startup = EventLog {
        algorithms: vec![(ALG_SHA256, 32), (ALG_SHA384, 48)],
        events: vec![
            Event {
                pcr: 0,
                event_type: EV_NO_ACTION,
                digests: vec![(ALG_SHA256, vec![0; 32]), (ALG_SHA384, vec![0; 48])],
                data: locality,
            },
            Event {
                pcr: 0,
                event_type: 0x0000_0001, // EV_POST_CODE
                digests: vec![
                    (ALG_SHA256, sha2::Sha256::digest(b"post").to_vec()),
                    (ALG_SHA384, sha2::Sha384::digest(b"post").to_vec()),
                ],
                data: b"post".to_vec(),
            },
        ],
    };
    write(
        "tpm_event_log",
        "startup_locality_sha384",
        &startup.to_bytes(),
    );
}

// ---- TPM structures ---------------------------------------------------------------------------

fn tpm2b(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u16::try_from(b.len()).unwrap().to_be_bytes());
    out.extend_from_slice(b);
}

/// The fixed AK's `TPMT_PUBLIC` with the attributes keyd's AK template sets (fixedTPM,
/// fixedParent, sensitiveDataOrigin, userWithAuth, restricted, sign), ECDSA-SHA256 on P-256.
fn ak_area(attributes: u32) -> Vec<u8> {
    let point = common::ak_key().public_key().to_encoded_point(false);
    let mut a = Vec::new();
    a.extend_from_slice(&0x0023u16.to_be_bytes()); // TPM_ALG_ECC
    a.extend_from_slice(&0x000bu16.to_be_bytes()); // nameAlg SHA-256
    a.extend_from_slice(&attributes.to_be_bytes());
    tpm2b(&mut a, &[]); // authPolicy
    a.extend_from_slice(&0x0010u16.to_be_bytes()); // symmetric: NULL
    a.extend_from_slice(&0x0018u16.to_be_bytes()); // scheme: ECDSA
    a.extend_from_slice(&0x000bu16.to_be_bytes()); //   hash: SHA-256
    a.extend_from_slice(&0x0003u16.to_be_bytes()); // curve: NIST P-256
    a.extend_from_slice(&0x0010u16.to_be_bytes()); // kdf: NULL
    tpm2b(&mut a, point.x().unwrap());
    tpm2b(&mut a, point.y().unwrap());
    a
}

fn ak_areas() {
    const AK: u32 = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 16) | (1 << 18);
    write("ak_public_area", "fixed_ak", &ak_area(AK));
    write("ak_public_area", "unrestricted", &ak_area(AK & !(1 << 16)));
    // An ECDAA scheme (hash and count) and a KDF, parsed then refused.
    let mut ecdaa = ak_area(AK);
    ecdaa[12..14].copy_from_slice(&0x001au16.to_be_bytes());
    ecdaa.splice(16..16, [0x00, 0x01]);
    write("ak_public_area", "ecdaa_scheme", &ecdaa);
}

/// A `TPMS_ATTEST` quote over `values` (SHA-256 bank) as the TPM marshals it.
fn attest(nonce: &[u8], values: &[(u32, [u8; 32])]) -> Vec<u8> {
    let mut a = Vec::new();
    a.extend_from_slice(&0xff54_4347u32.to_be_bytes()); // TPM_GENERATED_VALUE
    a.extend_from_slice(&0x8018u16.to_be_bytes()); // TPM_ST_ATTEST_QUOTE
    let mut name = vec![0x00, 0x0b];
    name.extend_from_slice(&sha2::Sha256::digest(b"the AK's public area"));
    tpm2b(&mut a, &name); // qualifiedSigner
    tpm2b(&mut a, nonce); // extraData
    a.extend_from_slice(&123_456u64.to_be_bytes()); // clock
    a.extend_from_slice(&7u32.to_be_bytes()); // resetCount
    a.extend_from_slice(&0u32.to_be_bytes()); // restartCount
    a.push(1); // safe
    a.extend_from_slice(&0x2019_1023_0016_3100u64.to_be_bytes()); // firmwareVersion
    a.extend_from_slice(&1u32.to_be_bytes()); // one TPMS_PCR_SELECTION
    a.extend_from_slice(&0x000bu16.to_be_bytes()); // SHA-256
    a.push(3);
    let mut bitmap = [0u8; 3];
    for (pcr, _) in values {
        bitmap[(*pcr / 8) as usize] |= 1 << (pcr % 8);
    }
    a.extend_from_slice(&bitmap);
    let mut h = sha2::Sha256::new();
    for (_, v) in values {
        h.update(v);
    }
    tpm2b(&mut a, &h.finalize());
    a
}

/// A `quote_attest` input: flags, nonce, carried values, attest bytes.
fn quote_input(flags: u8, nonce: &[u8], values: &[(u32, [u8; 32])], attest: &[u8]) -> Vec<u8> {
    let mut v = vec![flags, u8::try_from(nonce.len()).unwrap()];
    v.extend_from_slice(nonce);
    v.push(u8::try_from(values.len()).unwrap());
    for (pcr, value) in values {
        v.push(u8::try_from(*pcr).unwrap());
        v.extend_from_slice(value);
    }
    v.extend_from_slice(attest);
    v
}

fn quotes() {
    let nonce = b"verifier nonce 0123456789abcdef";
    let replayed = firmware_log().replay().unwrap();
    let mut values: Vec<(u32, [u8; 32])> = [0u32, 2, 4, 7]
        .iter()
        .map(|p| (*p, replayed.get(p).copied().unwrap_or([0; 32])))
        .collect();
    values.push((23, [0u8; 32]));
    let a = attest(nonce, &values);
    // Verifies with its golden set (flags: golden = carried, another AK and nonce refused).
    write(
        "quote_attest",
        "boot_pcrs",
        &quote_input(0x32, nonce, &values, &a),
    );
    // The digest left for the target to fill in.
    write(
        "quote_attest",
        "boot_pcrs_fix_digest",
        &quote_input(0x03, nonce, &values, &a),
    );
    // A changed golden value, and a value that is not hex.
    write(
        "quote_attest",
        "wrong_golden",
        &quote_input(0x06, nonce, &values, &a),
    );
    write(
        "quote_attest",
        "not_hex",
        &quote_input(0x08, nonce, &values, &a),
    );
    let one = [(23u32, [0x11u8; 32])];
    write(
        "quote_attest",
        "app_pcr",
        &quote_input(0x02, b"n", &one, &attest(b"n", &one)),
    );
}

// ---- keyd frames (attest/keystore/src/keyd/protocol.rs) ----------------------------------------

fn frame(out: &mut Vec<u8>, body: &str) {
    out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    out.extend_from_slice(body.as_bytes());
}

fn keyd() {
    let requests = [
        r#"{"op": "describe"}"#,
        r#"{"op": "device_public_key"}"#,
        r#"{"op": "sign", "message": "aGVsbG8gd29ybGQ="}"#,
        r#"{"op": "anchors", "role": "model-signers"}"#,
        r#"{"op": "unseal", "blob": "AAECAwQ="}"#,
        r#"{"op": "counter", "counter": "revocation-serial"}"#,
        r#"{"op": "advance_counter", "counter": "policy-set-serial", "to": 7}"#,
        r#"{"op": "extend_pcr", "pcr": 23, "digest": "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="}"#,
        r#"{"op": "read_pcr", "pcr": 23}"#,
        r#"{"op": "quote", "nonce": "dmVyaWZpZXIgbm9uY2U=", "pcrs": [0, 2, 4, 7, 23]}"#,
        r#"{"op": "attestation_identity"}"#,
        r#"{"op": "activate_credential", "credential_blob": "ACAAAQ==", "encrypted_seed": "AAI="}"#,
    ];
    let identity = format!(
        r#"{{"type": "identity", "endorsement_key": "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE", "ak_public_area": "{}"}}"#,
        STANDARD.encode(ak_area(
            (1 << 1) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 16) | (1 << 18)
        ))
    );
    let responses: Vec<String> = [
        r#"{"type": "describe", "kind": "tpm", "location": "/dev/tpmrm0", "development_only": false, "capabilities": {"anchors": true, "anchors_hardware_locked": true, "device_key": true, "device_key_non_exportable": true, "seal": true, "seal_bound_to_pcrs": true, "counters": true, "counters_hardware_monotonic": true, "pcrs": true}}"#,
        r#"{"type": "public_key", "spki": "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE"}"#,
        r#"{"type": "signature", "der": "MEUCIQ=="}"#,
        r#"{"type": "anchors", "pem": null}"#,
        r#"{"type": "unsealed", "secret": "c2VjcmV0"}"#,
        r#"{"type": "counter", "value": 7}"#,
        r#"{"type": "extended"}"#,
        r#"{"type": "pcr", "value": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}"#,
        r#"{"type": "quote", "attest": "/1RDR4AY", "signature": "MEUCIQ==", "pcrs": {"23": "0000000000000000000000000000000000000000000000000000000000000000", "7": "11"}}"#,
        r#"{"type": "credential", "secret": "c2VjcmV0"}"#,
        r#"{"type": "error", "kind": "counter_rollback", "message": "counter would go back", "current": 9, "requested": 3}"#,
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([identity])
    .collect();
    let (mut req_stream, mut resp_stream) = (Vec::new(), Vec::new());
    for (i, r) in requests.iter().enumerate() {
        write(
            "keyd_protocol",
            &format!("request_{i:02}"),
            &with_mode(0, r.as_bytes()),
        );
        frame(&mut req_stream, r);
    }
    for (i, r) in responses.iter().enumerate() {
        write(
            "keyd_protocol",
            &format!("response_{i:02}"),
            &with_mode(2, r.as_bytes()),
        );
        frame(&mut resp_stream, r);
    }
    // Streams of frames: limit 64 << 4 bytes for requests, 64 << 5 for responses.
    write(
        "keyd_protocol",
        "request_stream",
        &with_mode(1 | (4 << 4), &req_stream),
    );
    write(
        "keyd_protocol",
        "response_stream",
        &with_mode(3 | (5 << 4), &resp_stream),
    );
}

// ---- signed bundles -----------------------------------------------------------------------------

fn payload_of(bundle: &[u8]) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_slice(bundle).unwrap();
    STANDARD
        .decode(v["dsseEnvelope"]["payload"].as_str().unwrap())
        .unwrap()
}

/// The certificate method's PKI: the root from ROOT_SCALAR (fixtures/root.pem, written when
/// missing), an intermediate and a code-signing leaf for the fixed signing key.
fn cert_signer() -> Signer {
    let p256_pem = |k: p256::SecretKey| k.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    let root_key = KeyPair::from_pem(&p256_pem(
        p256::SecretKey::from_slice(&common::ROOT_SCALAR).unwrap(),
    ))
    .unwrap();
    let ca = |cn: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p
    };
    let root_params = ca("Warden Fuzz Root");
    let root_path = here().join("fixtures/root.pem");
    if !root_path.exists() {
        let root_cert = root_params.self_signed(&root_key).unwrap();
        fs::create_dir_all(root_path.parent().unwrap()).unwrap();
        fs::write(&root_path, root_cert.pem()).unwrap();
    }
    let root = Issuer::new(root_params, root_key);
    let int_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let int_params = ca("Warden Fuzz Intermediate");
    let int_cert = int_params.signed_by(&int_key, &root).unwrap();
    let intermediate = Issuer::new(int_params, int_key);
    let leaf_key = KeyPair::from_pem(&p256_pem(common::secret_key())).unwrap();
    let mut lp = CertificateParams::new(Vec::<String>::new()).unwrap();
    lp.distinguished_name
        .push(DnType::CommonName, "model-signer");
    lp.is_ca = IsCa::ExplicitNoCa;
    lp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    lp.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    let leaf = lp.signed_by(&leaf_key, &intermediate).unwrap();
    common::signer()
        .with_certificate_chain(&leaf.pem(), &int_cert.pem())
        .unwrap()
}

fn bundles() {
    let model: &Path = common::model_dir();
    let signer = common::signer();
    let signed = sign_model(model, &signer, &SignOptions::default()).unwrap();
    let root = signed.root_digest.clone();
    let shards = sign_model(
        model,
        &signer,
        &SignOptions {
            serialization: warden_attest::bundle::Serialization::Shards { shard_size: 8 },
            ..SignOptions::default()
        },
    )
    .unwrap();
    let cert = sign_model(model, &cert_signer(), &SignOptions::default()).unwrap();

    let release = sign_release(
        &Release {
            name: "model".into(),
            version: "1".into(),
            stage: Stage::Approved,
            policy_set_digest: common::policy_digest(),
            required_attestations: vec!["https://warden.dev/attestation/test/v1".into()],
        },
        &root,
        &signer,
    )
    .unwrap();
    let revocations = sign_revocation_list(
        &RevocationList {
            serial: 3,
            revoked_digests: vec![RevokedDigest {
                digest: format!("sha256:{}", "ab".repeat(32)),
                reason: "leaked".into(),
            }],
            revoked_versions: vec![RevokedVersion {
                name: "model".into(),
                version: "0".into(),
                reason: "bug".into(),
            }],
        },
        &signer,
    )
    .unwrap();
    let policy = sign_policy_set(
        &PolicySet {
            serial: 2,
            policy_set_digest: common::policy_digest(),
        },
        &signer,
    )
    .unwrap();
    let attestation = sign_attestation(
        "https://warden.dev/attestation/test/v1",
        &serde_json::json!({"evaluation": {"accuracy": 0.97}}),
        "model",
        &root,
        &signer,
    )
    .unwrap();

    // oms_bundle: mode bit 0 = certificate method; bits 1-3 = consumer.
    write("oms_bundle", "model_files", &with_mode(0, &signed.json));
    write("oms_bundle", "model_shards", &with_mode(0, &shards.json));
    write("oms_bundle", "model_certificate", &with_mode(1, &cert.json));
    write("oms_bundle", "release", &with_mode(1 << 1, &release));
    write(
        "oms_bundle",
        "revocation_list",
        &with_mode(2 << 1, &revocations),
    );
    write("oms_bundle", "policy_set", &with_mode(3 << 1, &policy));
    write(
        "oms_bundle",
        "attestation",
        &with_mode(4 << 1, &attestation),
    );
    write("oms_bundle", "reverify", &with_mode(5 << 1, &signed.json));

    // oms_statement: the payloads; bits 0-2 = consumer, bit 3 = fix the root digest.
    write(
        "oms_statement",
        "model_files",
        &with_mode(0, &payload_of(&signed.json)),
    );
    write(
        "oms_statement",
        "model_files_fix_root",
        &with_mode(8, &payload_of(&signed.json)),
    );
    write(
        "oms_statement",
        "model_shards_fix_root",
        &with_mode(8, &payload_of(&shards.json)),
    );
    write(
        "oms_statement",
        "release",
        &with_mode(1, &payload_of(&release)),
    );
    write(
        "oms_statement",
        "revocation_list",
        &with_mode(2, &payload_of(&revocations)),
    );
    write(
        "oms_statement",
        "policy_set",
        &with_mode(3, &payload_of(&policy)),
    );
    write(
        "oms_statement",
        "attestation",
        &with_mode(4, &payload_of(&attestation)),
    );
    write(
        "oms_statement",
        "reverify",
        &with_mode(5, &payload_of(&signed.json)),
    );
}

fn main() {
    event_logs();
    ak_areas();
    quotes();
    keyd();
    bundles();
}
