//! Binding the attestation key (AK) to the TPM's endorsement key (EK) by credential
//! activation (TPM 2.0 Part 1, "Credential Protection").
//!
//! A verifier that trusts an EK (from the manufacturer's EK certificate, or enrolled at
//! provisioning) learns whether an AK lives in the same TPM: it encrypts a random secret to
//! the EK, bound to the AK's name ([`make_credential`], in software: the verifier needs no
//! TPM); only that TPM can recover it, and only for a loaded object with exactly that name
//! ([`activate_credential`], on the device). A returned secret proves the AK is that TPM's,
//! so the AK's quotes can be trusted as much as the EK.
//!
//! The EK is the TCG default ECC P-256 EK (template L-2: restricted decryption key,
//! AES-128-CFB, SHA-256, policy `PolicySecret(TPM_RH_ENDORSEMENT)`), recreated from the
//! endorsement seed when needed and flushed after use.
//!
//! Which EK to trust: either one the verifier recorded for the device, or any EK whose
//! certificate — written by the TPM's manufacturer into NV index 0x01c0000a, and sent with the
//! device's identity — chains to a manufacturer CA the verifier trusts
//! ([`certified_endorsement_key`]).

use aes::cipher::{BlockEncrypt as _, KeyInit as _};
use hmac::Mac as _;
use sha2::Digest as _;
use tss_esapi::Context;
use tss_esapi::abstraction::AsymmetricAlgorithmSelection;
use tss_esapi::abstraction::ek::{create_ek_object_2, retrieve_ek_pubcert};
use tss_esapi::handles::{AuthHandle, KeyHandle, ObjectHandle};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Digest, EncryptedSecret, IdObject, Nonce};
use tss_esapi::traits::{Marshall as _, UnMarshall as _};

use super::BootError;
use super::quote::AK_HANDLE;
use crate::keystore::KeyStoreError;
use crate::keystore::tpm::{close, ecc_public, flush_session, persistent_key, start_policy};
use crate::tpm::Tpm;

/// Bytes of the secret a verifier sends (at most a SHA-256 digest).
pub const SECRET_BYTES: usize = 32;
/// TPM_ALG_SHA256, the name algorithm of the AK and the EK.
const TPM_ALG_SHA256: [u8; 2] = [0x00, 0x0b];

/// What a verifier sends to the device: the encrypted credential (`TPM2B_ID_OBJECT` contents)
/// and the seed encrypted to the EK (an ephemeral `TPMS_ECC_POINT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub credential_blob: Vec<u8>,
    pub encrypted_seed: Vec<u8>,
}

/// The EK's public key (recreated from the endorsement seed; the same on every call for one
/// TPM).
pub fn endorsement_key(tpm: &Tpm) -> Result<p256::PublicKey, BootError> {
    Ok(tpm.run(|ctx| {
        let ek = create_ek(ctx)?;
        let public = ecc_public(ctx, ek);
        flush(ctx, ek);
        public
    })??)
}

/// The AK's TPM name (`nameAlg || H(TPMT_PUBLIC)`), which a challenge is bound to.
pub fn attestation_key_name(tpm: &Tpm) -> Result<Vec<u8>, BootError> {
    Ok(ak_public(tpm)?.1)
}

/// The AK's public area (`TPMT_PUBLIC`, marshalled) and its name, as the TPM reports them.
fn ak_public(tpm: &Tpm) -> Result<(Vec<u8>, Vec<u8>), BootError> {
    Ok(tpm.run(|ctx| {
        let ak = persistent_key(ctx, AK_HANDLE)?.ok_or(KeyStoreError::NotProvisioned {
            what: "the attestation key",
        })?;
        let read = ctx.execute_without_session(|c| c.read_public(ak));
        close(ctx, ak);
        let (public, name, _) = read.map_err(|e| KeyStoreError::tpm("ReadPublic", e))?;
        let area = public
            .marshall()
            .map_err(|e| KeyStoreError::tpm("marshalling the AK's public area", e))?;
        Ok::<_, KeyStoreError>((area, name.value().to_vec()))
    })??)
}

/// What a device tells a verifier to be enrolled: its EK, the EK's certificate when the TPM
/// has one, and its AK's public area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub endorsement_key: p256::PublicKey,
    /// The AK's `TPMT_PUBLIC`, marshalled: the verifier derives the AK's key and name from it
    /// and checks its attributes ([`check_ak_public_area`]).
    pub ak_public_area: Vec<u8>,
    /// The P-256 EK's certificate (DER) from NV index [`EK_CERTIFICATE_NV_INDEX`], as the
    /// manufacturer wrote it; `None` when the TPM has none there.
    pub ek_certificate: Option<Vec<u8>>,
}

/// Where the TCG EK Credential Profile puts the certificate of the default ECC P-256 EK.
pub const EK_CERTIFICATE_NV_INDEX: u32 = 0x01c0_000a;

/// The device's identity for enrolment (the AK must exist: `warden provision --ak`).
pub fn device_identity(tpm: &Tpm) -> Result<DeviceIdentity, BootError> {
    let (ak_public_area, _) = ak_public(tpm)?;
    Ok(DeviceIdentity {
        endorsement_key: endorsement_key(tpm)?,
        ak_public_area,
        ek_certificate: ek_certificate(tpm)?,
    })
}

/// The EK certificate in NV, if the index exists. Any other failure is an error: a verifier
/// that needs the certificate must not be told there is none because a read failed.
fn ek_certificate(tpm: &Tpm) -> Result<Option<Vec<u8>>, BootError> {
    use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
    Ok(tpm.run(|ctx| {
        match retrieve_ek_pubcert(ctx, AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256)) {
            Ok(der) => Ok(Some(der)),
            Err(tss_esapi::Error::Tss2Error(code))
                if code.kind() == Some(Tss2ResponseCodeKind::Handle) =>
            {
                Ok(None)
            }
            Err(e) => Err(KeyStoreError::tpm("reading the EK certificate", e)),
        }
    })??)
}

/// TCG's EK certificate extended key usage (2.23.133.8.1), DER content octets.
const EKU_EK_CERTIFICATE: &[u8] = &[0x67, 0x81, 0x05, 0x08, 0x01];
/// The longest manufacturer chain accepted (EK certificate, intermediates, root).
const MAX_EK_CHAIN: usize = 4;

/// On the verifier: checks that a device's EK certificate (`certificate`, from its identity)
/// chains, now, to one of the manufacturer CAs in `roots_pem` (through the CA certificates in
/// `intermediates_pem`, if needed), that its extended key usage, if it has one, is the TCG EK
/// certificate's, and that its key is `endorsement_key`, the identity's EK. Returns the
/// certificate's issuer and serial, for the log. Chain building, signatures, validity and
/// basic constraints are rustls-webpki's.
pub fn certified_endorsement_key(
    endorsement_key: &p256::PublicKey,
    certificate: Option<&[u8]>,
    roots_pem: &str,
    intermediates_pem: Option<&str>,
    now: rustls_pki_types::UnixTime,
) -> Result<String, BootError> {
    use rustls_pki_types::CertificateDer;
    use x509_parser::prelude::FromDer as _;
    let certificate = certificate.ok_or_else(|| {
        refused(
            "the device's identity carries no EK certificate (its TPM has none at \
             0x01c0000a): name the trusted EK instead"
                .into(),
        )
    })?;
    let roots = crate::bundle::certificate::Roots::from_pem(roots_pem)
        .map_err(|e| refused(format!("manufacturer CAs: {e}")))?;
    let intermediates = match intermediates_pem {
        Some(pem) => crate::bundle::certificate::parse_pem_certs(pem, "intermediate CA")
            .map_err(|e| refused(format!("intermediate CAs: {e}")))?,
        None => Vec::new(),
    };
    if intermediates.len() + 2 > MAX_EK_CHAIN {
        return Err(refused(format!(
            "at most {} intermediate CA certificates",
            MAX_EK_CHAIN - 2
        )));
    }
    let der = CertificateDer::from(certificate);
    let leaf = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| refused(format!("the EK certificate does not parse: {e}")))?;
    leaf.verify_for_usage(
        crate::bundle::certificate::ALGORITHMS,
        roots.anchors(),
        &intermediates,
        now,
        webpki::KeyUsage::required_if_present(EKU_EK_CERTIFICATE),
        None,
        None,
    )
    .map_err(|e| refused(format!("the EK certificate is not trusted: {e}")))?;
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(certificate)
        .map_err(|e| refused(format!("the EK certificate does not parse: {e}")))?;
    let certified = p256::PublicKey::from_sec1_bytes(&parsed.public_key().subject_public_key.data)
        .map_err(|_| refused("the EK certificate is not for a P-256 key".into()))?;
    if certified != *endorsement_key {
        return Err(refused(
            "the EK certificate is for another key than the device's endorsement key".into(),
        ));
    }
    Ok(format!(
        "issued by {}, serial {}",
        parsed.issuer(),
        parsed.raw_serial_as_string()
    ))
}

/// An AK as a verifier accepts it: from its public area, the P-256 key quotes are verified
/// with and the name a challenge is bound to. The area must describe a restricted signing
/// key that never leaves its TPM (fixedTPM, fixedParent), named with SHA-256; otherwise the
/// key could sign arbitrary data as "quotes" or be a copy.
pub fn check_ak_public_area(area: &[u8]) -> Result<(p256::PublicKey, Vec<u8>), BootError> {
    let public = tss_esapi::structures::Public::unmarshall(area)
        .map_err(|e| refused(format!("the AK's public area does not parse: {e}")))?;
    let attributes = public.object_attributes();
    if !(attributes.fixed_tpm()
        && attributes.fixed_parent()
        && attributes.restricted()
        && attributes.sign_encrypt()
        && !attributes.decrypt())
    {
        return Err(refused(
            "the AK must be a restricted signing key bound to its TPM (fixedTPM, fixedParent)"
                .into(),
        ));
    }
    if public.name_hashing_algorithm()
        != tss_esapi::interface_types::algorithm::HashingAlgorithm::Sha256
    {
        return Err(refused("the AK's name algorithm must be SHA-256".into()));
    }
    let tss_esapi::structures::Public::Ecc { unique, .. } = &public else {
        return Err(refused("the AK is not an ECC key".into()));
    };
    let key = crate::keystore::p256_from_xy(unique.x().value(), unique.y().value())
        .map_err(|e| refused(format!("the AK's point: {e}")))?;
    let mut name = TPM_ALG_SHA256.to_vec();
    name.extend_from_slice(&sha2::Sha256::digest(area));
    Ok((key, name))
}

/// On the device: recovers the secret of `challenge` with the EK, for the AK. Fails unless the
/// challenge was made for this TPM's EK and this AK's name.
pub fn activate_credential(tpm: &Tpm, challenge: &Challenge) -> Result<Vec<u8>, BootError> {
    let blob = IdObject::try_from(challenge.credential_blob.clone())
        .map_err(|e| refused(format!("credential blob: {e}")))?;
    let seed = EncryptedSecret::try_from(challenge.encrypted_seed.clone())
        .map_err(|e| refused(format!("encrypted seed: {e}")))?;
    Ok(tpm.run(move |ctx| {
        let ak = persistent_key(ctx, AK_HANDLE)?.ok_or(KeyStoreError::NotProvisioned {
            what: "the attestation key",
        })?;
        let ek = match create_ek(ctx) {
            Ok(ek) => ek,
            Err(e) => {
                close(ctx, ak);
                return Err(e);
            }
        };
        // The EK's use is authorized by its policy: PolicySecret on the endorsement
        // hierarchy (whose authorization is empty on an appliance's TPM).
        let result = start_policy(ctx, false).and_then(|session| {
            let done = ctx
                .execute_with_session(Some(AuthSession::Password), |c| {
                    c.policy_secret(
                        session,
                        AuthHandle::Endorsement,
                        Nonce::default(),
                        Digest::default(),
                        Nonce::default(),
                        None,
                    )
                })
                .and_then(|_| {
                    ctx.execute_with_sessions(
                        (
                            Some(AuthSession::Password),
                            Some(AuthSession::from(session)),
                            None,
                        ),
                        |c| c.activate_credential(ak, ek, blob, seed),
                    )
                })
                .map_err(|e| KeyStoreError::tpm("ActivateCredential", e));
            flush_session(ctx, session);
            done
        });
        flush(ctx, ek);
        close(ctx, ak);
        result.map(|secret| secret.value().to_vec())
    })??)
}

fn create_ek(ctx: &mut Context) -> Result<KeyHandle, KeyStoreError> {
    create_ek_object_2(
        ctx,
        AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
        None,
    )
    .map_err(|e| KeyStoreError::tpm("CreatePrimary (endorsement key)", e))
}

fn flush(ctx: &mut Context, key: KeyHandle) {
    let _ = ctx.flush_context(ObjectHandle::from(key));
}

fn refused(detail: String) -> BootError {
    BootError::CredentialRefused { detail }
}

/// On the verifier, without a TPM: a challenge that only the TPM holding `ek` can open, and
/// only for an object named `ak_name`, carrying `secret` (1 to [`SECRET_BYTES`] bytes).
pub fn make_credential(
    ek: &p256::PublicKey,
    ak_name: &[u8],
    secret: &[u8],
) -> Result<Challenge, BootError> {
    if secret.is_empty() || secret.len() > SECRET_BYTES {
        return Err(refused(format!(
            "a credential secret holds 1 to {SECRET_BYTES} bytes"
        )));
    }
    if ak_name.len() != 34 || ak_name[..2] != TPM_ALG_SHA256 {
        return Err(refused(
            "the attestation key's name must be a SHA-256 name (34 bytes)".into(),
        ));
    }
    // The seed: ECDH between an ephemeral key and the EK, through KDFe.
    let ephemeral = p256::ecdh::EphemeralSecret::random(&mut rand_core::OsRng);
    let ephemeral_point = p256::EncodedPoint::from(ephemeral.public_key());
    let ek_point = p256::EncodedPoint::from(ek);
    let (Some(ux), Some(uy), Some(vx)) = (ephemeral_point.x(), ephemeral_point.y(), ek_point.x())
    else {
        return Err(refused("an EC point without coordinates".into()));
    };
    let z = ephemeral.diffie_hellman(ek);
    let seed = kdf_e(z.raw_secret_bytes(), b"IDENTITY", ux, vx);

    // The credential, as a TPM2B_DIGEST, encrypted with AES-128-CFB (zero IV) under a key
    // bound to the AK's name, then an HMAC over it and the name.
    let sym_key = kdf_a(&seed, b"STORAGE", ak_name, &[], 128);
    let mut plain = Vec::with_capacity(2 + secret.len());
    plain.extend_from_slice(&u16_be(secret.len()));
    plain.extend_from_slice(secret);
    let enc_identity = aes128_cfb_encrypt(&sym_key, &plain)?;
    let hmac_key = kdf_a(&seed, b"INTEGRITY", &[], &[], 256);
    let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(&hmac_key)
        .map_err(|e| refused(format!("HMAC key: {e}")))?;
    mac.update(&enc_identity);
    mac.update(ak_name);
    let integrity = mac.finalize().into_bytes();

    let mut credential_blob = Vec::with_capacity(2 + integrity.len() + enc_identity.len());
    credential_blob.extend_from_slice(&u16_be(integrity.len()));
    credential_blob.extend_from_slice(&integrity);
    credential_blob.extend_from_slice(&enc_identity);
    let mut encrypted_seed = Vec::with_capacity(2 + ux.len() + 2 + uy.len());
    encrypted_seed.extend_from_slice(&u16_be(ux.len()));
    encrypted_seed.extend_from_slice(ux);
    encrypted_seed.extend_from_slice(&u16_be(uy.len()));
    encrypted_seed.extend_from_slice(uy);
    Ok(Challenge {
        credential_blob,
        encrypted_seed,
    })
}

fn u16_be(n: usize) -> [u8; 2] {
    u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes()
}

/// KDFe with SHA-256, 256 bits (one block): `H(1 || Z || label || 0 || U || V)`.
fn kdf_e(z: &[u8], label: &[u8], party_u: &[u8], party_v: &[u8]) -> Vec<u8> {
    let mut h = sha2::Sha256::new();
    h.update(1u32.to_be_bytes());
    h.update(z);
    h.update(label);
    h.update([0u8]);
    h.update(party_u);
    h.update(party_v);
    h.finalize().to_vec()
}

/// KDFa with HMAC-SHA-256: blocks `HMAC(key, i || label || 0 || U || V || bits)`, truncated.
fn kdf_a(key: &[u8], label: &[u8], context_u: &[u8], context_v: &[u8], bits: u32) -> Vec<u8> {
    let bytes = (bits / 8) as usize;
    let mut out = Vec::with_capacity(bytes + 32);
    let mut i: u32 = 1;
    while out.len() < bytes {
        // An HMAC takes a key of any length.
        let Ok(mut mac) = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(key) else {
            break;
        };
        mac.update(&i.to_be_bytes());
        mac.update(label);
        mac.update(&[0u8]);
        mac.update(context_u);
        mac.update(context_v);
        mac.update(&bits.to_be_bytes());
        out.extend_from_slice(&mac.finalize().into_bytes());
        i += 1;
    }
    out.truncate(bytes);
    out
}

/// AES-128 in full-block CFB mode with a zero IV, as TPM credential protection uses it.
fn aes128_cfb_encrypt(key: &[u8], plain: &[u8]) -> Result<Vec<u8>, BootError> {
    let cipher = aes::Aes128::new_from_slice(key).map_err(|e| refused(format!("AES key: {e}")))?;
    let mut feedback = aes::Block::default();
    let mut out = Vec::with_capacity(plain.len());
    for chunk in plain.chunks(16) {
        let mut keystream = feedback;
        cipher.encrypt_block(&mut keystream);
        let start = out.len();
        out.extend(chunk.iter().zip(keystream.iter()).map(|(p, k)| p ^ k));
        if chunk.len() == 16 {
            feedback.copy_from_slice(&out[start..]);
        }
    }
    Ok(out)
}
