//! Measured boot on a fresh swtpm per test (or `WARDEN_TEST_TCTI`): event logs built here are
//! replayed into the TPM's PCRs, then checked good, tampered and empty; quotes are verified off
//! the TPM; the application PCR matches its prediction after model loads.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod devices;

use std::collections::BTreeMap;

use sha2::Digest as _;
use warden_attest::boot::BootError;
use warden_attest::boot::credential::{
    certified_endorsement_key, check_ak_public_area, make_credential,
};
use warden_attest::boot::eventlog::{ALG_SHA1, ALG_SHA256, EV_NO_ACTION, Event, EventLog};
use warden_attest::boot::measure::{
    AppEventLog, DEFAULT_APP_PCR, ModelLoadEvent, predict, verify_app_log,
};
use warden_attest::boot::quote::verify_quote;
use warden_keyd::tpm::Tpm;
use warden_keyd::tpm::attestation::{ensure_attestation_key, quote};
use warden_keyd::tpm::credential::{
    activate_credential, attestation_key_name, device_identity, endorsement_key,
};
use warden_keystore::attestation::{Challenge, Quote};

/// A model load as the agent measures it: the log line first (synced), then the PCR; returns
/// the PCR value the log now predicts.
fn measure_model_load(tpm: &Tpm, log: &AppEventLog, pcr: u32, event: &ModelLoadEvent) -> [u8; 32] {
    log.append(event).unwrap();
    tpm.extend_pcr(pcr, event.digest()).unwrap();
    predict(&log.read().unwrap())
}

const BOOT_PCRS: [u32; 8] = [0, 1, 2, 3, 4, 5, 6, 7];

fn event(pcr: u32, data: &[u8]) -> Event {
    Event {
        pcr,
        event_type: 0x8000_0008, // EV_EFI_PLATFORM_FIRMWARE_BLOB
        digests: vec![
            (ALG_SHA1, sha1ish(data)),
            (ALG_SHA256, sha2::Sha256::digest(data).to_vec()),
        ],
        data: data.to_vec(),
    }
}

/// A stand-in 20-byte digest for the SHA-1 bank (replay only uses SHA-256).
fn sha1ish(data: &[u8]) -> Vec<u8> {
    sha2::Sha256::digest(data)[..20].to_vec()
}

/// A firmware-like log: a few events on PCRs 0, 2, 4 and 7, plus an EV_NO_ACTION that must
/// not be extended.
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

/// Replays the log's measurements into the TPM, as firmware would.
fn measure_into(tpm: &Tpm, log: &EventLog) {
    for e in &log.events {
        if e.event_type == EV_NO_ACTION {
            continue;
        }
        let d: [u8; 32] = e.sha256().unwrap().try_into().unwrap();
        tpm.extend_pcr(e.pcr, d).unwrap();
    }
}

fn fresh_tpm() -> (devices::Swtpm, Tpm) {
    let sw = devices::Swtpm::start();
    assert!(
        !sw.external,
        "the boot tests extend PCRs 0-7: run them on swtpm only, not on WARDEN_TEST_TCTI"
    );
    let tpm = Tpm::open(&sw.tcti).unwrap();
    (sw, tpm)
}

#[test]
fn good_event_log_replays_to_the_pcrs() {
    let (_sw, tpm) = fresh_tpm();
    let log = firmware_log();
    measure_into(&tpm, &log);
    // Through the binary format, as read from securityfs.
    let parsed = EventLog::parse(&log.to_bytes()).unwrap();
    let pcrs = tpm.read_pcrs(&BOOT_PCRS).unwrap();
    parsed.verify(&pcrs).unwrap();
    // Replay is not vacuous: PCRs the log touches are no longer zero.
    let replayed = parsed.replay().unwrap();
    assert_ne!(replayed[&4], [0u8; 32]);
    assert!(!replayed.contains_key(&1), "EV_NO_ACTION must not extend");
}

#[test]
fn tampered_event_log_is_refused() {
    let (_sw, tpm) = fresh_tpm();
    let log = firmware_log();
    measure_into(&tpm, &log);
    let pcrs = tpm.read_pcrs(&BOOT_PCRS).unwrap();

    // One digest changed (e.g. hiding a different boot loader).
    let mut changed = log.clone();
    changed.events[5] = event(4, b"evil grub");
    let err = EventLog::parse(&changed.to_bytes())
        .unwrap()
        .verify(&pcrs)
        .unwrap_err();
    assert!(
        matches!(err, BootError::PcrMismatch { pcr: 4, .. }),
        "{err}"
    );

    // One event removed.
    let mut removed = log.clone();
    removed.events.remove(4);
    let err = removed.verify(&pcrs).unwrap_err();
    assert!(
        matches!(err, BootError::PcrMismatch { pcr: 7, .. }),
        "{err}"
    );

    // Events reordered within a PCR.
    let mut reordered = log.clone();
    reordered.events.swap(3, 5);
    assert!(matches!(
        reordered.verify(&pcrs),
        Err(BootError::PcrMismatch { pcr: 4, .. })
    ));

    // A byte flipped in the binary log: either unparseable or a mismatch, never accepted.
    let bytes = log.to_bytes();
    for i in (0..bytes.len()).step_by(7) {
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        if let Ok(l) = EventLog::parse(&b) {
            // Flips that leave the replay unchanged (event data, the SHA-1 stand-in, event
            // types other than EV_NO_ACTION, the PCR of an EV_NO_ACTION event) are for the
            // policy reading the log; every flip that changes what is extended is refused.
            let data_only = l.replay().ok() == log.replay().ok();
            if !data_only {
                assert!(l.verify(&pcrs).is_err(), "flip at byte {i} accepted");
            }
        }
    }

    // An event the TPM never saw, appended.
    let mut extra = log;
    extra.events.push(event(0, b"injected"));
    assert!(matches!(
        extra.verify(&pcrs),
        Err(BootError::PcrMismatch { pcr: 0, .. })
    ));
}

#[test]
fn empty_event_log_is_refused() {
    let (_sw, tpm) = fresh_tpm();
    measure_into(&tpm, &firmware_log());
    let pcrs = tpm.read_pcrs(&BOOT_PCRS).unwrap();
    // No bytes at all.
    assert!(matches!(
        EventLog::parse(&[]),
        Err(BootError::EmptyEventLog)
    ));
    // A header and no events, against measured PCRs.
    let header_only = EventLog {
        algorithms: vec![(ALG_SHA1, 20), (ALG_SHA256, 32)],
        events: vec![],
    };
    let parsed = EventLog::parse(&header_only.to_bytes()).unwrap();
    assert!(matches!(
        parsed.verify(&pcrs),
        Err(BootError::PcrMismatch { pcr: 0, .. })
    ));
}

fn golden(tpm: &Tpm, pcrs: &[u32]) -> BTreeMap<u32, [u8; 32]> {
    tpm.read_pcrs(pcrs).unwrap().into_iter().collect()
}

#[test]
fn quote_verifies_off_tpm_and_refuses_what_it_must() {
    let (_sw, tpm) = fresh_tpm();
    measure_into(&tpm, &firmware_log());
    let ak = ensure_attestation_key(&tpm).unwrap();
    assert_eq!(ensure_attestation_key(&tpm).unwrap(), ak, "persistent AK");
    let pcrs = [0, 2, 4, 7, DEFAULT_APP_PCR];
    let gold = golden(&tpm, &pcrs);
    let nonce = b"verifier nonce 0123456789abcdef";
    let q = quote(&tpm, nonce, &pcrs).unwrap();
    // Through JSON, as it travels.
    let q: Quote = serde_json::from_str(&serde_json::to_string(&q).unwrap()).unwrap();
    let v = verify_quote(&q, &ak, nonce, &gold).unwrap();
    assert_eq!(v.pcrs, gold);

    // Wrong nonce (replay).
    let err = verify_quote(&q, &ak, b"another nonce", &gold).unwrap_err();
    assert!(err.to_string().contains("nonce"), "{err}");
    // Another AK.
    let other = p256::SecretKey::random(&mut rand_core::OsRng).public_key();
    assert!(verify_quote(&q, &other, nonce, &gold).is_err());
    // A golden value that differs.
    let mut bad_gold = gold.clone();
    bad_gold.insert(7, [9u8; 32]);
    assert!(matches!(
        verify_quote(&q, &ak, nonce, &bad_gold),
        Err(BootError::PcrMismatch { pcr: 7, .. })
    ));
    // A golden PCR that was not quoted.
    let mut extra_gold = gold.clone();
    extra_gold.insert(1, [0u8; 32]);
    assert!(verify_quote(&q, &ak, nonce, &extra_gold).is_err());
    // Carried PCR values edited to match a forged golden set.
    let mut forged = q.clone();
    forged.pcrs.insert(7, hex::encode([9u8; 32]));
    assert!(verify_quote(&forged, &ak, nonce, &bad_gold).is_err());
    // Attest bytes altered.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut raw = b64.decode(&q.attest).unwrap();
    let n = raw.len() - 1;
    raw[n] ^= 1;
    let mut altered = q.clone();
    altered.attest = b64.encode(raw);
    assert!(verify_quote(&altered, &ak, nonce, &gold).is_err());
    // After a PCR moves, the old golden set no longer matches a fresh quote.
    tpm.extend_pcr(7, [1u8; 32]).unwrap();
    let q2 = quote(&tpm, nonce, &pcrs).unwrap();
    assert!(matches!(
        verify_quote(&q2, &ak, nonce, &gold),
        Err(BootError::PcrMismatch { pcr: 7, .. })
    ));
}

#[test]
fn application_pcr_has_the_predicted_value_after_model_loads() {
    let (_sw, tpm) = fresh_tpm();
    tpm.reset_pcr(DEFAULT_APP_PCR).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = AppEventLog::new(&dir.path().join("app-events.jsonl"));
    let ev = |v: &str, root: &str| ModelLoadEvent {
        model: "fraud".into(),
        version: v.into(),
        root_digest: format!("sha256:{}", root.repeat(32)),
        policy_digest: format!("sha256:{}", "cd".repeat(32)),
    };
    let loads = [ev("1", "aa"), ev("2", "bb"), ev("1", "aa")];
    for (i, e) in loads.iter().enumerate() {
        let predicted = measure_model_load(&tpm, &log, DEFAULT_APP_PCR, e);
        let actual = tpm.read_pcrs(&[DEFAULT_APP_PCR]).unwrap()[0].1;
        assert_eq!(actual, predicted, "after load {i}");
        assert_eq!(actual, predict(&loads[..=i]));
    }
    let events = log.read().unwrap();
    assert_eq!(events, loads);

    // A quote over the application PCR proves the log.
    let ak = ensure_attestation_key(&tpm).unwrap();
    let q = quote(&tpm, b"n", &[DEFAULT_APP_PCR]).unwrap();
    let v = verify_quote(&q, &ak, b"n", &BTreeMap::new()).unwrap();
    verify_app_log(&events, DEFAULT_APP_PCR, &v.pcrs[&DEFAULT_APP_PCR]).unwrap();

    // A log that hides a load, or claims another model, does not match.
    assert!(verify_app_log(&events[..2], DEFAULT_APP_PCR, &v.pcrs[&DEFAULT_APP_PCR]).is_err());
    let mut lied = events.clone();
    lied[1].root_digest = format!("sha256:{}", "ee".repeat(32));
    assert!(matches!(
        verify_app_log(&lied, DEFAULT_APP_PCR, &v.pcrs[&DEFAULT_APP_PCR]),
        Err(BootError::PcrMismatch { pcr: 23, .. })
    ));
}

#[test]
fn tpm_key_store_reads_and_extends_the_application_pcr_and_others_say_not_supported() {
    use warden_keyd::tpm::keystore::TpmKeyStore;
    use warden_keystore::{KeyStore, KeyStoreError, software::SoftwareKeyStore};
    let (_sw, tpm) = fresh_tpm();
    tpm.reset_pcr(DEFAULT_APP_PCR).unwrap();
    let store = TpmKeyStore::with_tpm(tpm, vec![0, 2, 4, 7]).unwrap();
    let e = ModelLoadEvent {
        model: "fraud".into(),
        version: "1".into(),
        root_digest: format!("sha256:{}", "aa".repeat(32)),
        policy_digest: format!("sha256:{}", "cd".repeat(32)),
    };
    assert_eq!(store.read_pcr(DEFAULT_APP_PCR).unwrap(), [0u8; 32]);
    store.extend_pcr(DEFAULT_APP_PCR, e.digest()).unwrap();
    let actual = store.tpm().read_pcrs(&[DEFAULT_APP_PCR]).unwrap()[0].1;
    assert_eq!(actual, predict(std::slice::from_ref(&e)));
    assert_eq!(store.read_pcr(DEFAULT_APP_PCR).unwrap(), actual);

    let dir = tempfile::tempdir().unwrap();
    let soft = SoftwareKeyStore::open(dir.path()).unwrap();
    assert!(matches!(
        soft.extend_pcr(DEFAULT_APP_PCR, e.digest()),
        Err(KeyStoreError::NotSupported {
            operation: "extend_pcr",
            ..
        })
    ));
    assert!(matches!(
        soft.read_pcr(DEFAULT_APP_PCR),
        Err(KeyStoreError::NotSupported {
            operation: "read_pcr",
            ..
        })
    ));
}

/// The AK is bound to the EK by credential activation: a challenge made in software for this
/// TPM's EK and this AK's name opens on this TPM, returning the secret; one made for another
/// TPM's EK, for another name, or altered in transit does not. Sessions and the EK are flushed
/// every time (swtpm holds three sessions).
#[test]
fn credential_activation_binds_the_attestation_key_to_the_endorsement_key() {
    let (_sw, tpm) = fresh_tpm();
    let ak = ensure_attestation_key(&tpm).unwrap();
    let ek = endorsement_key(&tpm).unwrap();
    assert_eq!(
        endorsement_key(&tpm).unwrap(),
        ek,
        "the EK is derived, not random"
    );
    let name = attestation_key_name(&tpm).unwrap();
    assert_eq!(name.len(), 34);
    // What the verifier derives from the device's identity is the AK and its name.
    let identity = device_identity(&tpm).unwrap();
    assert_eq!(identity.endorsement_key, ek);
    assert_eq!(
        check_ak_public_area(&identity.ak_public_area).unwrap(),
        (ak, name.clone())
    );
    // An area that is not a restricted key (bit 16 of the attributes cleared) is refused.
    let mut unrestricted = identity.ak_public_area.clone();
    unrestricted[5] ^= 0x01;
    assert!(check_ak_public_area(&unrestricted).is_err());
    assert!(check_ak_public_area(&identity.ak_public_area[..10]).is_err());
    for round in 0..6u8 {
        let secret: Vec<u8> = (0..32u8).map(|i| i ^ round.wrapping_mul(37)).collect();
        let challenge = make_credential(&ek, &name, &secret).unwrap();
        assert_eq!(activate_credential(&tpm, &challenge).unwrap(), secret);
    }

    let secret = b"warden enrolment".to_vec();
    // Another TPM's EK: this TPM cannot open it.
    let (_other_sw, other) = fresh_tpm();
    let other_ek = endorsement_key(&other).unwrap();
    assert_ne!(other_ek, ek);
    let foreign = make_credential(&other_ek, &name, &secret).unwrap();
    assert!(activate_credential(&tpm, &foreign).is_err());
    // Bound to another name (another key): refused by the integrity check.
    let mut other_name = name.clone();
    other_name[33] ^= 1;
    let misbound = make_credential(&ek, &other_name, &secret).unwrap();
    assert!(activate_credential(&tpm, &misbound).is_err());
    // Altered in transit.
    let good = make_credential(&ek, &name, &secret).unwrap();
    for i in [2, 20, good.credential_blob.len() - 1] {
        let mut c = good.clone();
        c.credential_blob[i] ^= 0x40;
        assert!(activate_credential(&tpm, &c).is_err(), "blob byte {i}");
    }
    let mut c = good.clone();
    c.encrypted_seed[10] ^= 0x01;
    assert!(activate_credential(&tpm, &c).is_err());
    let garbage = Challenge {
        credential_blob: vec![0; 4],
        encrypted_seed: vec![0; 4],
    };
    assert!(activate_credential(&tpm, &garbage).is_err());
    // Still working after the refusals (nothing leaked).
    assert_eq!(activate_credential(&tpm, &good).unwrap(), secret);
    // Bad inputs to the verifier's side.
    assert!(make_credential(&ek, &name, &[]).is_err());
    assert!(make_credential(&ek, &name, &[0; 33]).is_err());
    assert!(make_credential(&ek, &name[..20], &secret).is_err());
}

/// The EK certificate a manufacturer wrote into the TPM's NV travels with the identity, and a
/// verifier trusting the manufacturer's CA accepts that EK — then enrols as with a recorded
/// EK. Refused: no certificate, another CA, a missing intermediate, a certificate for another
/// key, an altered, expired or non-EK certificate.
#[test]
fn the_manufacturers_ek_certificate_vouches_for_the_endorsement_key() {
    use rustls_pki_types::UnixTime;
    let (sw, tpm) = fresh_tpm();
    ensure_attestation_key(&tpm).unwrap();
    let ek = endorsement_key(&tpm).unwrap();
    let now = UnixTime::now();

    // No certificate in NV (swtpm has none by default): the identity says so.
    let bare = device_identity(&tpm).unwrap();
    assert_eq!(bare.ek_certificate, None);
    let maker = devices::EkManufacturer::issue(&ek, devices::EkCertSpec::default());
    let e = certified_endorsement_key(
        &bare.endorsement_key,
        bare.ek_certificate.as_deref(),
        &maker.root_pem,
        Some(&maker.intermediate_pem),
        now,
    )
    .unwrap_err();
    assert!(e.to_string().contains("no EK certificate"), "{e}");

    drop(tpm);
    devices::write_ek_certificate(&sw.tcti, &maker.ek_certificate);
    let tpm = Tpm::open(&sw.tcti).unwrap();
    let identity = device_identity(&tpm).unwrap();
    assert_eq!(
        identity.ek_certificate.as_deref(),
        Some(&maker.ek_certificate[..])
    );
    let issued = certified_endorsement_key(
        &identity.endorsement_key,
        identity.ek_certificate.as_deref(),
        &maker.root_pem,
        Some(&maker.intermediate_pem),
        now,
    )
    .unwrap();
    assert!(issued.contains("Test TPM EK CA"), "{issued}");

    let refused = |id: &warden_keystore::attestation::DeviceIdentity,
                   roots: &str,
                   intermediates: Option<&str>,
                   at: UnixTime,
                   why: &str| {
        let e = certified_endorsement_key(
            &id.endorsement_key,
            id.ek_certificate.as_deref(),
            roots,
            intermediates,
            at,
        )
        .unwrap_err();
        assert!(e.to_string().contains(why), "{e} (expected: {why})");
    };
    // Another manufacturer's CA; the intermediate missing.
    let other = devices::EkManufacturer::issue(&ek, devices::EkCertSpec::default());
    refused(
        &identity,
        &other.root_pem,
        Some(&other.intermediate_pem),
        now,
        "not trusted",
    );
    refused(&identity, &maker.root_pem, None, now, "not trusted");
    // The certificate presented with another TPM's EK.
    let (_other_sw, other_tpm) = fresh_tpm();
    let mut swapped = identity.clone();
    swapped.endorsement_key = endorsement_key(&other_tpm).unwrap();
    refused(
        &swapped,
        &maker.root_pem,
        Some(&maker.intermediate_pem),
        now,
        "another key",
    );
    // Altered: a byte of the signature, a byte of the key.
    let cert = identity.ek_certificate.clone().unwrap();
    for i in [cert.len() - 5, cert.len() / 2] {
        let mut altered = identity.clone();
        altered.ek_certificate.as_mut().unwrap()[i] ^= 0x01;
        assert!(
            certified_endorsement_key(
                &altered.endorsement_key,
                altered.ek_certificate.as_deref(),
                &maker.root_pem,
                Some(&maker.intermediate_pem),
                now
            )
            .is_err(),
            "byte {i}"
        );
    }
    // Expired, and a certificate whose extended key usage is not the EK certificate's.
    for spec in [
        devices::EkCertSpec {
            expired: true,
            ..Default::default()
        },
        devices::EkCertSpec {
            wrong_eku: true,
            ..Default::default()
        },
    ] {
        let m = devices::EkManufacturer::issue(&ek, spec);
        let mut id = identity.clone();
        id.ek_certificate = Some(m.ek_certificate);
        refused(
            &id,
            &m.root_pem,
            Some(&m.intermediate_pem),
            now,
            "not trusted",
        );
    }

    // The certified EK is the one the TPM activates credentials with.
    let name = attestation_key_name(&tpm).unwrap();
    let challenge = make_credential(&identity.endorsement_key, &name, b"certified").unwrap();
    assert_eq!(activate_credential(&tpm, &challenge).unwrap(), b"certified");
}
