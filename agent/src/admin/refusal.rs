//! Every refusal of the admin listener, and the one place that maps each to its status, its
//! class (the client's error word and the audit outcome) and its public text. The precise
//! reason (paths, serials, what the verifier said) goes to the log and the audit trail only.

use http::StatusCode;

use super::archive::{SpoolError, UnpackError};
use super::oci::OciError;
use crate::models::ModelError;
use crate::models::policy_set::PolicyPushError;

/// Why an admin action was refused; each variant's field is the reason for the operator.
#[derive(Debug)]
pub enum Refusal {
    /// No such endpoint.
    NotFound(String),
    /// A model name or version outside `[A-Za-z0-9._-]{1,64}`.
    InvalidName,
    /// The body is not declared `application/x-tar`.
    NotTar,
    /// The body could not be read.
    UploadFailed(String),
    /// A JSON body that does not parse; `expected` says its shape.
    InvalidBody {
        expected: &'static str,
        reason: String,
    },
    /// An OCI reference not pinned by digest, or not a reference at all.
    ReferenceRefused(String),
    /// Over a size or entry limit.
    TooLarge(String),
    /// An archive that is malformed or holds what it must not; `what` says what it must hold.
    ArchiveInvalid {
        what: &'static str,
        reason: String,
    },
    /// A push for a model the configuration does not name (`admin.accept_new_models` off).
    UnknownModel(String),
    AlreadyLoaded(String),
    NotLoaded(String),
    NoPrevious(String),
    /// Revocation lists and policy sets need a key store; `what` names the document.
    NoKeyStore(&'static str),
    NoRevocationList,
    RevocationListReplayed(String),
    RevocationListInvalid(String),
    PolicySetReplayed(String),
    /// A policy set that does not verify, or does not compile (`what`).
    PolicySetInvalid {
        what: &'static str,
        reason: String,
    },
    DigestMismatch(String),
    NotABundle(String),
    RegistryFailed(String),
    /// The signature does not verify, or there is none (`what`).
    SignatureRefused {
        what: &'static str,
        reason: String,
    },
    AdmissionRefused(String),
    DeviceUnavailable(String),
    LoadFailed(String),
    /// A local failure; `what` says what could not be done.
    Internal {
        what: &'static str,
        reason: String,
    },
}

impl Refusal {
    /// A local failure while doing `what`.
    pub fn internal(what: &'static str, reason: impl std::fmt::Display) -> Refusal {
        Refusal::Internal {
            what,
            reason: reason.to_string(),
        }
    }

    /// The status, the class and the public text: the only mapping there is.
    pub fn class(&self) -> (StatusCode, &'static str, &'static str) {
        use StatusCode as S;
        match self {
            Refusal::NotFound(_) => (S::NOT_FOUND, "not_found", "no such admin endpoint"),
            Refusal::InvalidName => (
                S::BAD_REQUEST,
                "invalid_name",
                "model names and versions are 1-64 of [A-Za-z0-9._-]",
            ),
            Refusal::NotTar => (
                S::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send one application/x-tar archive",
            ),
            Refusal::UploadFailed(_) => (
                S::BAD_REQUEST,
                "upload_failed",
                "the body could not be read",
            ),
            Refusal::InvalidBody { expected, .. } => (S::BAD_REQUEST, "invalid_body", expected),
            Refusal::ReferenceRefused(_) => (
                S::BAD_REQUEST,
                "reference_refused",
                "the reference must be pinned by digest (registry/repo@sha256:…)",
            ),
            Refusal::TooLarge(_) => (
                S::PAYLOAD_TOO_LARGE,
                "too_large",
                "the archive exceeds the size or entry limits",
            ),
            Refusal::ArchiveInvalid { what, .. } => (S::BAD_REQUEST, "archive_invalid", what),
            Refusal::UnknownModel(_) => (
                S::NOT_FOUND,
                "unknown_model",
                "pushed versions must belong to a configured model",
            ),
            Refusal::AlreadyLoaded(_) => (
                S::CONFLICT,
                "already_loaded",
                "this version is already loaded",
            ),
            Refusal::NotLoaded(_) => (S::NOT_FOUND, "not_loaded", "that version is not loaded"),
            Refusal::NoPrevious(_) => (
                S::CONFLICT,
                "no_previous",
                "there is no previously active version to go back to",
            ),
            Refusal::NoKeyStore(what) => (S::CONFLICT, "no_key_store", what),
            Refusal::NoRevocationList => (
                S::CONFLICT,
                "no_revocation_list",
                "admission.revocation_list is not configured",
            ),
            Refusal::RevocationListReplayed(_) => (
                S::CONFLICT,
                "revocation_list_replayed",
                "the list's serial is older than the accepted one",
            ),
            Refusal::RevocationListInvalid(_) => (
                S::UNPROCESSABLE_ENTITY,
                "revocation_list_invalid",
                "the list does not verify against the fleet authority",
            ),
            Refusal::PolicySetReplayed(_) => (
                S::CONFLICT,
                "policy_set_replayed",
                "the set's serial is not above the accepted one",
            ),
            Refusal::PolicySetInvalid { what, .. } => {
                (S::UNPROCESSABLE_ENTITY, "policy_set_invalid", what)
            }
            Refusal::DigestMismatch(_) => (
                S::UNPROCESSABLE_ENTITY,
                "digest_mismatch",
                "the registry's content does not match the pinned digest",
            ),
            Refusal::NotABundle(_) => (
                S::UNPROCESSABLE_ENTITY,
                "not_a_bundle",
                "the artifact is not a Warden bundle",
            ),
            Refusal::RegistryFailed(_) => (
                S::BAD_GATEWAY,
                "registry_failed",
                "the bundle could not be pulled from the registry",
            ),
            Refusal::SignatureRefused { what, .. } => {
                (S::UNPROCESSABLE_ENTITY, "signature_refused", what)
            }
            Refusal::AdmissionRefused(_) => (
                S::UNPROCESSABLE_ENTITY,
                "admission_refused",
                "the startup policy refused this version",
            ),
            Refusal::DeviceUnavailable(_) => (
                S::CONFLICT,
                "device_unavailable",
                "the version's configured device cannot take it",
            ),
            Refusal::LoadFailed(_) => (
                S::INTERNAL_SERVER_ERROR,
                "load_failed",
                "the version could not be started",
            ),
            Refusal::Internal { .. } => (
                S::INTERNAL_SERVER_ERROR,
                "internal",
                "the request could not be carried out",
            ),
        }
    }

    /// The precise reason, for the log and the audit trail.
    pub fn reason(&self) -> String {
        match self {
            Refusal::InvalidName => "invalid model name or version".into(),
            Refusal::NotTar => "content-type is not application/x-tar".into(),
            Refusal::NoKeyStore(_) => "no [keystore] configured".into(),
            Refusal::NoRevocationList => "admission.revocation_list is not set".into(),
            Refusal::Internal { what, reason } => format!("{what}: {reason}"),
            Refusal::NotFound(r)
            | Refusal::UploadFailed(r)
            | Refusal::ReferenceRefused(r)
            | Refusal::TooLarge(r)
            | Refusal::UnknownModel(r)
            | Refusal::AlreadyLoaded(r)
            | Refusal::NotLoaded(r)
            | Refusal::NoPrevious(r)
            | Refusal::RevocationListReplayed(r)
            | Refusal::RevocationListInvalid(r)
            | Refusal::PolicySetReplayed(r)
            | Refusal::DigestMismatch(r)
            | Refusal::NotABundle(r)
            | Refusal::RegistryFailed(r)
            | Refusal::AdmissionRefused(r)
            | Refusal::DeviceUnavailable(r)
            | Refusal::LoadFailed(r) => r.clone(),
            Refusal::InvalidBody { reason, .. }
            | Refusal::ArchiveInvalid { reason, .. }
            | Refusal::PolicySetInvalid { reason, .. }
            | Refusal::SignatureRefused { reason, .. } => reason.clone(),
        }
    }
}

/// A refused load, by what refused it.
impl From<ModelError> for Refusal {
    fn from(e: ModelError) -> Refusal {
        let reason = e.to_string();
        match e {
            ModelError::Signature { .. } => Refusal::SignatureRefused {
                what: "the model's signature does not verify against the trusted signers",
                reason,
            },
            ModelError::Refused { .. } => Refusal::AdmissionRefused(reason),
            ModelError::NotRegular { .. } | ModelError::Stage { .. } => Refusal::ArchiveInvalid {
                what: "the model could not be staged",
                reason,
            },
            ModelError::AlreadyLoaded { .. } => Refusal::AlreadyLoaded(reason),
            ModelError::Device { .. } => Refusal::DeviceUnavailable(reason),
            _ => Refusal::LoadFailed(reason),
        }
    }
}

impl From<OciError> for Refusal {
    fn from(e: OciError) -> Refusal {
        let reason = e.to_string();
        match e {
            OciError::TooLarge { .. } => Refusal::TooLarge(reason),
            OciError::DigestMismatch { .. } => Refusal::DigestMismatch(reason),
            OciError::NotABundle { .. } => Refusal::NotABundle(reason),
            OciError::Write { .. } => Refusal::internal("staging the pulled bundle", reason),
            OciError::Reference { .. }
            | OciError::NotPinned { .. }
            | OciError::Registry { .. }
            | OciError::Transfer { .. } => Refusal::RegistryFailed(reason),
        }
    }
}

impl From<SpoolError> for Refusal {
    fn from(e: SpoolError) -> Refusal {
        match e {
            SpoolError::TooLarge(limit) => {
                Refusal::TooLarge(format!("archive larger than {limit} bytes"))
            }
            SpoolError::Body(reason) => Refusal::UploadFailed(reason),
            SpoolError::Io(e) => Refusal::internal("writing the upload", e),
        }
    }
}

impl Refusal {
    /// An archive that could not be unpacked; `what` says what it must hold.
    pub fn unpack(e: UnpackError, what: &'static str) -> Refusal {
        match e {
            UnpackError::TooLarge(reason) => Refusal::TooLarge(reason),
            UnpackError::Invalid(reason) => Refusal::ArchiveInvalid { what, reason },
        }
    }
}

impl From<PolicyPushError> for Refusal {
    fn from(e: PolicyPushError) -> Refusal {
        match e {
            PolicyPushError::Replayed(reason) => Refusal::PolicySetReplayed(reason),
            PolicyPushError::Invalid(reason) => Refusal::PolicySetInvalid {
                what: "the set does not verify against the fleet authority",
                reason,
            },
            PolicyPushError::Internal(reason) => {
                Refusal::internal("checking the policy set", reason)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The public texts say what is wrong with the request and nothing about the appliance:
    /// no path, key, serial or model name reaches the client.
    #[test]
    fn public_texts_carry_no_reason() {
        let secret = "/var/lib/warden/keystore serial 7 model fraud";
        for r in [
            Refusal::NotFound(secret.into()),
            Refusal::TooLarge(secret.into()),
            Refusal::AdmissionRefused(secret.into()),
            Refusal::RevocationListReplayed(secret.into()),
            Refusal::internal("keeping the policy set", secret),
            Refusal::ArchiveInvalid {
                what: "the archive holds no model/ directory",
                reason: secret.into(),
            },
        ] {
            let (_, class, public) = r.class();
            assert!(
                !public.contains("warden") && !public.contains('7'),
                "{class}: {public}"
            );
            assert!(r.reason().contains("serial 7"), "{class}");
        }
    }

    #[test]
    fn refused_loads_map_by_cause() {
        let refused = ModelError::Refused {
            name: "m".into(),
            version: "1".into(),
            reasons: vec!["revoked: x".into()],
        };
        assert_eq!(Refusal::from(refused).class().1, "admission_refused");
        let device = ModelError::Device {
            name: "m".into(),
            version: "1".into(),
            message: "no GPU".into(),
        };
        assert_eq!(Refusal::from(device).class().0, StatusCode::CONFLICT);
    }
}
