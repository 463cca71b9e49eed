//! Binding the attestation key (AK) to the TPM's endorsement key (EK) by credential
//! activation (TPM 2.0 Part 1, "Credential Protection"): the verifier's side, in software.
//!
//! A verifier that trusts an EK (from the manufacturer's EK certificate, or enrolled at
//! provisioning) learns whether an AK lives in the same TPM: it encrypts a random secret to
//! the EK, bound to the AK's name ([`make_credential`]); only that TPM can recover it, and
//! only for a loaded object with exactly that name (the device's key service answers the
//! [`Challenge`]). A returned secret proves the AK is that TPM's, so the AK's quotes can be
//! trusted as much as the EK.
//!
//! The EK is the TCG default ECC P-256 EK (template L-2: restricted decryption key,
//! AES-128-CFB, SHA-256, policy `PolicySecret(TPM_RH_ENDORSEMENT)`).
//!
//! Which EK to trust: either one the verifier recorded for the device, or any EK whose
//! certificate — written by the TPM's manufacturer into NV index 0x01c0000a, and sent with the
//! device's identity — chains to a manufacturer CA the verifier trusts
//! ([`certified_endorsement_key`]). The AK's public area, as the device sends it, is read
//! here without a TSS ([`check_ak_public_area`]).

use aes::cipher::{BlockEncrypt as _, KeyInit as _};
use hmac::Mac as _;
use sha2::Digest as _;
use warden_keystore::attestation::{Challenge, SECRET_BYTES};

use super::BootError;
use super::tpm_wire::Reader;

/// TPM_ALG_SHA256, the name algorithm of the AK and the EK.
const TPM_ALG_SHA256: [u8; 2] = [0x00, 0x0b];

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

/// An AK as a verifier accepts it: from its public area (`TPMT_PUBLIC`, marshalled), the
/// P-256 key quotes are verified with and the name a challenge is bound to. The area must
/// describe a restricted ECDSA signing key on P-256 that never leaves its TPM (fixedTPM,
/// fixedParent), named with SHA-256; otherwise the key could sign arbitrary data as "quotes"
/// or be a copy.
pub fn check_ak_public_area(area: &[u8]) -> Result<(p256::PublicKey, Vec<u8>), BootError> {
    let public = EccPublicArea::parse(area)?;
    let a = public.attributes;
    if !(a & OBJECT_FIXED_TPM != 0
        && a & OBJECT_FIXED_PARENT != 0
        && a & OBJECT_RESTRICTED != 0
        && a & OBJECT_SIGN_ENCRYPT != 0
        && a & OBJECT_DECRYPT == 0)
    {
        return Err(refused(
            "the AK must be a restricted signing key bound to its TPM (fixedTPM, fixedParent)"
                .into(),
        ));
    }
    if public.name_alg != ALG_SHA256 {
        return Err(refused("the AK's name algorithm must be SHA-256".into()));
    }
    if public.curve != ECC_NIST_P256 {
        return Err(refused(format!(
            "the AK is not on NIST P-256 (curve 0x{:04x})",
            public.curve
        )));
    }
    if public.scheme != (ALG_ECDSA, Some(ALG_SHA256)) {
        return Err(refused(
            "the AK's signing scheme must be ECDSA with SHA-256".into(),
        ));
    }
    let key = warden_keystore::backend::p256_from_xy(public.x, public.y)
        .map_err(|e| refused(format!("the AK's point: {e}")))?;
    let mut name = TPM_ALG_SHA256.to_vec();
    name.extend_from_slice(&sha2::Sha256::digest(area));
    Ok((key, name))
}

/// `TPMA_OBJECT` bits (TPM 2.0 Part 2, 8.3).
const OBJECT_FIXED_TPM: u32 = 1 << 1;
const OBJECT_FIXED_PARENT: u32 = 1 << 4;
const OBJECT_RESTRICTED: u32 = 1 << 16;
const OBJECT_DECRYPT: u32 = 1 << 17;
const OBJECT_SIGN_ENCRYPT: u32 = 1 << 18;
/// Algorithm and curve identifiers (TCG Algorithm Registry).
const ALG_ECC: u16 = 0x0023;
const ALG_SHA256: u16 = 0x000b;
const ALG_NULL: u16 = 0x0010;
const ALG_ECDSA: u16 = 0x0018;
const ALG_ECDAA: u16 = 0x001a;
const ECC_NIST_P256: u16 = 0x0003;

/// The fields of an ECC key's `TPMT_PUBLIC` that the verifier checks.
struct EccPublicArea<'a> {
    name_alg: u16,
    attributes: u32,
    /// The signing scheme and its hash (`None` for `TPM_ALG_NULL`).
    scheme: (u16, Option<u16>),
    curve: u16,
    x: &'a [u8],
    y: &'a [u8],
}

impl<'a> EccPublicArea<'a> {
    /// Parses the whole area; anything but an ECC key, an unknown scheme layout or trailing
    /// bytes is refused.
    fn parse(area: &'a [u8]) -> Result<Self, BootError> {
        let mut r = Reader::new(area, "AK public area", |detail| {
            refused(format!("the AK's public area does not parse: {detail}"))
        });
        if r.u16()? != ALG_ECC {
            return Err(refused("the AK is not an ECC key".into()));
        }
        let name_alg = r.u16()?;
        let attributes = r.u32()?;
        let _auth_policy = r.tpm2b()?;
        // TPMS_ECC_PARMS. A signing key has no symmetric algorithm.
        if r.u16()? != ALG_NULL {
            return Err(refused(
                "the AK has a symmetric algorithm: not a signing key".into(),
            ));
        }
        let scheme = match r.u16()? {
            ALG_NULL => (ALG_NULL, None),
            // TPMS_SCHEME_ECDAA: the hash, then a commit count.
            ALG_ECDAA => {
                let hash = r.u16()?;
                let _count = r.u16()?;
                (ALG_ECDAA, Some(hash))
            }
            // Every other ECC scheme's details are one TPMS_SCHEME_HASH.
            scheme @ 0x0018..=0x001d => (scheme, Some(r.u16()?)),
            other => {
                return Err(refused(format!(
                    "the AK's public area names an unknown ECC scheme 0x{other:04x}"
                )));
            }
        };
        let curve = r.u16()?;
        // TPMT_KDF_SCHEME: a hash unless NULL.
        if r.u16()? != ALG_NULL {
            let _kdf_hash = r.u16()?;
        }
        let x = r.tpm2b()?;
        let y = r.tpm2b()?;
        if !r.is_empty() {
            return Err(refused("the AK's public area has trailing bytes".into()));
        }
        Ok(Self {
            name_alg,
            attributes,
            scheme,
            curve,
            x,
            y,
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use p256::elliptic_curve::sec1::ToEncodedPoint as _;

    /// A restricted ECDSA P-256 signing key's `TPMT_PUBLIC`, marshalled as a TPM does.
    fn area(edit: impl FnOnce(&mut Fields)) -> (Vec<u8>, p256::PublicKey) {
        let key = p256::SecretKey::random(&mut rand_core::OsRng).public_key();
        let point = key.to_encoded_point(false);
        let mut f = Fields {
            kind: ALG_ECC,
            name_alg: ALG_SHA256,
            attributes: OBJECT_FIXED_TPM
                | OBJECT_FIXED_PARENT
                | (1 << 5)
                | (1 << 6)
                | OBJECT_RESTRICTED
                | OBJECT_SIGN_ENCRYPT,
            symmetric: vec![0x00, 0x10],
            scheme: vec![0x00, 0x18, 0x00, 0x0b],
            curve: ECC_NIST_P256,
            kdf: vec![0x00, 0x10],
            x: point.x().map(|x| x.to_vec()).unwrap_or_default(),
            y: point.y().map(|y| y.to_vec()).unwrap_or_default(),
            trailing: Vec::new(),
        };
        edit(&mut f);
        let mut out = Vec::new();
        out.extend_from_slice(&f.kind.to_be_bytes());
        out.extend_from_slice(&f.name_alg.to_be_bytes());
        out.extend_from_slice(&f.attributes.to_be_bytes());
        out.extend_from_slice(&[0, 0]); // empty authPolicy
        out.extend_from_slice(&f.symmetric);
        out.extend_from_slice(&f.scheme);
        out.extend_from_slice(&f.curve.to_be_bytes());
        out.extend_from_slice(&f.kdf);
        for coordinate in [&f.x, &f.y] {
            out.extend_from_slice(&(coordinate.len() as u16).to_be_bytes());
            out.extend_from_slice(coordinate);
        }
        out.extend_from_slice(&f.trailing);
        (out, key)
    }

    struct Fields {
        kind: u16,
        name_alg: u16,
        attributes: u32,
        symmetric: Vec<u8>,
        scheme: Vec<u8>,
        curve: u16,
        kdf: Vec<u8>,
        x: Vec<u8>,
        y: Vec<u8>,
        trailing: Vec<u8>,
    }

    #[test]
    fn a_restricted_signing_key_is_accepted_with_its_name() {
        let (bytes, key) = area(|_| {});
        let (got, name) = check_ak_public_area(&bytes).unwrap();
        assert_eq!(got, key);
        assert_eq!(name.len(), 34);
        assert_eq!(name[..2], TPM_ALG_SHA256);
        assert_eq!(name[2..], sha2::Sha256::digest(&bytes)[..]);
    }

    #[test]
    fn every_property_an_attestation_key_needs_is_checked() {
        let refused = |edit: fn(&mut Fields), why: &str| {
            let (bytes, _) = area(edit);
            let e = check_ak_public_area(&bytes).unwrap_err().to_string();
            assert!(e.contains(why), "{why}: {e}");
        };
        refused(|f| f.kind = 0x0001, "not an ECC key");
        refused(
            |f| f.attributes &= !OBJECT_FIXED_TPM,
            "restricted signing key",
        );
        refused(
            |f| f.attributes &= !OBJECT_FIXED_PARENT,
            "restricted signing key",
        );
        refused(
            |f| f.attributes &= !OBJECT_RESTRICTED,
            "restricted signing key",
        );
        refused(|f| f.attributes |= OBJECT_DECRYPT, "restricted signing key");
        refused(|f| f.name_alg = 0x0004, "name algorithm");
        refused(|f| f.curve = 0x0004, "NIST P-256");
        refused(|f| f.scheme = vec![0x00, 0x10], "ECDSA with SHA-256");
        refused(
            |f| f.scheme = vec![0x00, 0x18, 0x00, 0x04],
            "ECDSA with SHA-256",
        );
        refused(
            |f| f.scheme = vec![0x00, 0x1a, 0x00, 0x0b, 0x00, 0x01],
            "ECDSA with SHA-256",
        );
        refused(|f| f.scheme = vec![0x7f, 0x00], "unknown ECC scheme");
        refused(
            |f| f.symmetric = vec![0x00, 0x06, 0x00, 0x80, 0x00, 0x43],
            "symmetric",
        );
        refused(|f| f.trailing = vec![0], "trailing bytes");
        refused(|f| f.x = vec![1; 33], "point");
        refused(|f| f.y[31] ^= 1, "point");
    }

    #[test]
    fn a_cut_area_is_refused_at_every_length() {
        let (bytes, _) = area(|f| f.kdf = vec![0x00, 0x20, 0x00, 0x0b]);
        check_ak_public_area(&bytes).unwrap();
        for len in 0..bytes.len() {
            assert!(check_ak_public_area(&bytes[..len]).is_err(), "length {len}");
        }
    }
}
