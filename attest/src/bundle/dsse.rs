//! The Sigstore bundle v0.3 JSON that carries the DSSE envelope, as model_signing writes it
//! for the key and certificate methods (no transparency-log entries).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::error::BundleError;

pub(crate) const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
pub(crate) const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// DSSE v1 pre-authentication encoding: what the signature is over.
pub(crate) fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BundleJson {
    pub(crate) media_type: String,
    pub(crate) verification_material: VerificationMaterial,
    pub(crate) dsse_envelope: Envelope,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VerificationMaterial {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) public_key: Option<PublicKeyIdentifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) x509_certificate_chain: Option<CertificateChain>,
    /// A single leaf (keyless Sigstore signing): recognised only to refuse it by name.
    #[serde(default, skip_serializing)]
    pub(crate) certificate: Option<serde_json::Value>,
    #[serde(default)]
    pub(crate) tlog_entries: Vec<serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct PublicKeyIdentifier {
    #[serde(default)]
    pub(crate) hint: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct CertificateChain {
    pub(crate) certificates: Vec<RawCertificate>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RawCertificate {
    pub(crate) raw_bytes: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Envelope {
    pub(crate) payload: String,
    pub(crate) payload_type: String,
    pub(crate) signatures: Vec<EnvelopeSignature>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct EnvelopeSignature {
    pub(crate) sig: String,
    #[serde(default)]
    pub(crate) keyid: String,
}

/// Builds the bundle around a signed payload.
pub(crate) fn assemble(
    payload: &[u8],
    signature_der: &[u8],
    material: VerificationMaterial,
) -> Result<Vec<u8>, BundleError> {
    let bundle = BundleJson {
        media_type: BUNDLE_MEDIA_TYPE.to_owned(),
        verification_material: material,
        dsse_envelope: Envelope {
            payload: STANDARD.encode(payload),
            payload_type: PAYLOAD_TYPE.to_owned(),
            signatures: vec![EnvelopeSignature {
                sig: STANDARD.encode(signature_der),
                keyid: String::new(),
            }],
        },
    };
    serde_json::to_vec(&bundle).map_err(|e| BundleError::MalformedJson {
        what: "Sigstore bundle",
        detail: e.to_string(),
    })
}

/// The parts of a bundle a verifier needs, decoded but not yet trusted.
pub(crate) struct ParsedBundle {
    pub(crate) material: VerificationMaterial,
    /// The payload bytes exactly as carried: the signature is checked over these, never over
    /// a re-serialization.
    pub(crate) payload: Vec<u8>,
    pub(crate) signature: Vec<u8>,
}

/// Parses the bundle and checks what can be checked without a key: media type, payload
/// type, exactly one signature, base64.
pub(crate) fn parse(bytes: &[u8]) -> Result<ParsedBundle, BundleError> {
    let b: BundleJson = serde_json::from_slice(bytes).map_err(|e| BundleError::MalformedJson {
        what: "Sigstore bundle",
        detail: e.to_string(),
    })?;
    if b.media_type != BUNDLE_MEDIA_TYPE {
        return Err(BundleError::WrongMediaType {
            expected: BUNDLE_MEDIA_TYPE,
            actual: b.media_type,
        });
    }
    // model_signing signs the PAE with the in-toto type whatever the envelope says, then
    // refuses other types; refusing first gives the same verdict with a clearer reason.
    if b.dsse_envelope.payload_type != PAYLOAD_TYPE {
        return Err(BundleError::WrongPayloadType {
            expected: PAYLOAD_TYPE,
            actual: b.dsse_envelope.payload_type,
        });
    }
    let count = b.dsse_envelope.signatures.len();
    let [sig] = <[EnvelopeSignature; 1]>::try_from(b.dsse_envelope.signatures)
        .map_err(|_| BundleError::SignatureCount { count })?;
    let payload = decode_b64("dsseEnvelope.payload", &b.dsse_envelope.payload)?;
    let signature = decode_b64("dsseEnvelope.signatures[0].sig", &sig.sig)?;
    Ok(ParsedBundle {
        material: b.verification_material,
        payload,
        signature,
    })
}

pub(crate) fn decode_b64(field: &'static str, s: &str) -> Result<Vec<u8>, BundleError> {
    STANDARD
        .decode(s)
        .map_err(|e| BundleError::MalformedBase64 {
            field,
            detail: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_dsse_spec_example() {
        // DSSE protocol.md: PAE("http://example.com/HelloWorld", "hello world").
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }
}
