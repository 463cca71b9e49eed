//! What a TPM key store hands out for measured boot, as data: a quote over PCRs, the device's
//! identity for enrolling its attestation key, and the enrolment challenge it answers. The
//! key service makes and answers them on the TPM; a verifier checks them without one
//! (`warden_attest::boot`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The longest nonce a quote carries (`TPM2B_DATA`).
pub const MAX_NONCE: usize = 64;

/// Bytes of the secret a verifier sends in a [`Challenge`] (at most a SHA-256 digest).
pub const SECRET_BYTES: usize = 32;

/// A quote as produced on the device and carried to a verifier (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quote {
    /// The signed `TPMS_ATTEST` structure, base64.
    pub attest: String,
    /// The AK's ECDSA signature over it (SHA-256), DER, base64.
    pub signature: String,
    /// The quoted SHA-256 PCR values, hex, read right after quoting. The verifier recomputes
    /// their digest and compares it with the signed one.
    pub pcrs: BTreeMap<u32, String>,
}

/// What a device tells a verifier to be enrolled: its EK, the EK's certificate when the TPM
/// has one, and its AK's public area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub endorsement_key: p256::PublicKey,
    /// The AK's `TPMT_PUBLIC`, marshalled: the verifier derives the AK's key and name from it
    /// and checks its attributes (`warden_attest::boot::credential::check_ak_public_area`).
    pub ak_public_area: Vec<u8>,
    /// The P-256 EK's certificate (DER) from the TCG's NV index 0x01c0000a, as the
    /// manufacturer wrote it; `None` when the TPM has none there.
    pub ek_certificate: Option<Vec<u8>>,
}

/// What a verifier sends to the device: the encrypted credential (`TPM2B_ID_OBJECT` contents)
/// and the seed encrypted to the EK (an ephemeral `TPMS_ECC_POINT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub credential_blob: Vec<u8>,
    pub encrypted_seed: Vec<u8>,
}

/// A field of an attestation file that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {detail}")]
pub struct FileFieldError {
    /// The field.
    pub field: &'static str,
    /// Why.
    pub detail: String,
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(field: &'static str, text: &str) -> Result<Vec<u8>, FileFieldError> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| FileFieldError {
            field,
            detail: format!("not base64: {e}"),
        })
}

/// A device's identity as the file the device hands the verifier (`attest identity` →
/// `attest challenge`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFile {
    /// The EK, PEM.
    pub endorsement_key: String,
    /// The AK's `TPMT_PUBLIC`, base64.
    pub ak_public_area: String,
    /// The EK's certificate from the TPM (NV 0x01c0000a), base64 DER; absent when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ek_certificate: Option<String>,
}

impl IdentityFile {
    /// The file for `identity`.
    pub fn new(identity: &DeviceIdentity) -> Result<Self, FileFieldError> {
        use p256::pkcs8::EncodePublicKey as _;
        Ok(Self {
            endorsement_key: identity
                .endorsement_key
                .to_public_key_pem(p256::pkcs8::LineEnding::LF)
                .map_err(|e| FileFieldError {
                    field: "endorsement_key",
                    detail: e.to_string(),
                })?,
            ak_public_area: b64(&identity.ak_public_area),
            ek_certificate: identity.ek_certificate.as_deref().map(b64),
        })
    }

    /// The identity the file carries (its EK as claimed: the verifier decides whether to
    /// trust it).
    pub fn identity(&self) -> Result<DeviceIdentity, FileFieldError> {
        use p256::pkcs8::DecodePublicKey as _;
        Ok(DeviceIdentity {
            endorsement_key: p256::PublicKey::from_public_key_pem(&self.endorsement_key).map_err(
                |e| FileFieldError {
                    field: "endorsement_key",
                    detail: format!("not a P-256 public key: {e}"),
                },
            )?,
            ak_public_area: unb64("ak_public_area", &self.ak_public_area)?,
            ek_certificate: self
                .ek_certificate
                .as_deref()
                .map(|c| unb64("ek_certificate", c))
                .transpose()?,
        })
    }
}

/// A challenge as the file the verifier hands the device (`attest challenge` → `activate`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeFile {
    /// `TPM2B_ID_OBJECT` contents, base64.
    pub credential_blob: String,
    /// The seed encrypted to the EK (`TPMS_ECC_POINT`), base64.
    pub encrypted_seed: String,
}

impl ChallengeFile {
    /// The file for `challenge`.
    pub fn new(challenge: &Challenge) -> Self {
        Self {
            credential_blob: b64(&challenge.credential_blob),
            encrypted_seed: b64(&challenge.encrypted_seed),
        }
    }

    /// The challenge the file carries.
    pub fn challenge(&self) -> Result<Challenge, FileFieldError> {
        Ok(Challenge {
            credential_blob: unb64("credential_blob", &self.credential_blob)?,
            encrypted_seed: unb64("encrypted_seed", &self.encrypted_seed)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_round_trip_and_refuse_bad_fields() {
        let key = p256::SecretKey::random(&mut rand_core::OsRng).public_key();
        let id = DeviceIdentity {
            endorsement_key: key,
            ak_public_area: vec![0, 0x23, 1],
            ek_certificate: None,
        };
        let file = IdentityFile::new(&id).unwrap();
        assert_eq!(file.identity().unwrap(), id);
        let bad = IdentityFile {
            ak_public_area: "%%".into(),
            ..file
        };
        assert_eq!(bad.identity().unwrap_err().field, "ak_public_area");
        let c = Challenge {
            credential_blob: vec![1, 2],
            encrypted_seed: vec![3],
        };
        assert_eq!(ChallengeFile::new(&c).challenge().unwrap(), c);
        let text = r#"{"credential_blob": "AQI=", "encrypted_seed": "Aw==", "extra": 1}"#;
        assert!(serde_json::from_str::<ChallengeFile>(text).is_err());
    }
}
