//! Staging a version: its directory copied into the agent's private state directory (regular
//! files and directories only, sizes capped), its signed documents read with a bound, and in
//! development mode the copy verified against the file anchors of `[trust]`.

use std::path::{Path, PathBuf};

use warden_attest::bundle::{self, HashAlgorithm, VerifiedModel, Verifier, VerifyOptions};
use warden_runtime_client::model_digest::{DigestHash, ModelDigest};

use super::error::ModelError;
use crate::config::{Config, ModelConfig};

/// Largest single file the loader copies into the state directory.
const MAX_MODEL_FILE_BYTES: u64 = 64 * 1024 * 1024 * 1024;
/// Largest release statement, attestation or revocation list read.
const MAX_DOCUMENT_BYTES: u64 = 16 * 1024 * 1024;

/// A version copied into the state directory and verified.
pub(super) struct Staged {
    pub(super) directory: PathBuf,
    pub(super) root_digest: String,
    pub(super) signer: String,
    /// What to measure (with a key store).
    pub(super) load_event: Option<warden_attest::boot::measure::ModelLoadEvent>,
    /// The model file's digest as the verified signature lists it, for the worker to check.
    pub(super) model_digest: ModelDigest,
    /// When the signing certificate chain stops being valid (certificate method).
    pub(super) signer_valid_until: Option<u64>,
}

/// Copies the model directory and its signature into `state_dir/models/NAME/VERSION/`, then
/// verifies the copy — which only this agent can write — against each trusted signer.
pub(super) fn stage_and_verify(
    m: &ModelConfig,
    verifiers: &[(PathBuf, Verifier)],
    state_dir: &Path,
) -> Result<Staged, ModelError> {
    let stage_err = |path: &Path, source: std::io::Error| ModelError::Stage {
        name: m.name.clone(),
        version: m.version.clone(),
        path: path.to_path_buf(),
        source,
    };
    let version_dir = state_dir.join("models").join(&m.name).join(&m.version);
    if version_dir.exists() {
        std::fs::remove_dir_all(&version_dir).map_err(|e| stage_err(&version_dir, e))?;
    }
    let model_copy = version_dir.join("model");
    copy_tree(m, &m.directory, &model_copy)?;
    // A signature kept inside the model directory travels with the copy (and the verifier
    // leaves it out of the manifest); one kept outside is copied beside it.
    let signature_path = m.signature_path();
    let signature_copy = match signature_path.strip_prefix(&m.directory) {
        Ok(inside) => model_copy.join(inside),
        Err(_) => {
            let copy = version_dir.join("model.sig");
            std::fs::copy(&signature_path, &copy).map_err(|e| stage_err(&signature_path, e))?;
            copy
        }
    };

    let mut reasons = Vec::new();
    for (anchor, verifier) in verifiers {
        match bundle::verify_model(
            &model_copy,
            &signature_copy,
            verifier,
            &VerifyOptions {
                model_file: Some(m.file.clone()),
                ..VerifyOptions::default()
            },
        ) {
            Ok(verified) => {
                let model_digest = match signed_digest(m, &verified) {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = std::fs::remove_dir_all(&version_dir);
                        return Err(e);
                    }
                };
                return Ok(Staged {
                    directory: model_copy,
                    root_digest: verified.root_digest,
                    signer: verified.signer,
                    load_event: None,
                    model_digest,
                    signer_valid_until: verified.signer_valid_until,
                });
            }
            Err(e) => reasons.push(format!("{}: {e}", anchor.display())),
        }
    }
    // Leave nothing half-verified behind.
    let _ = std::fs::remove_dir_all(&version_dir);
    Err(ModelError::Signature {
        name: m.name.clone(),
        version: m.version.clone(),
        reasons: reasons.join("; "),
    })
}

pub(super) fn copy_tree(m: &ModelConfig, from: &Path, to: &Path) -> Result<(), ModelError> {
    let stage_err = |path: &Path, source: std::io::Error| ModelError::Stage {
        name: m.name.clone(),
        version: m.version.clone(),
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(to).map_err(|e| stage_err(to, e))?;
    let entries = std::fs::read_dir(from).map_err(|e| stage_err(from, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| stage_err(from, e))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| stage_err(&path, e))?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(m, &path, &target)?;
        } else if kind.is_file() {
            let len = entry.metadata().map_err(|e| stage_err(&path, e))?.len();
            if len > MAX_MODEL_FILE_BYTES {
                return Err(stage_err(
                    &path,
                    std::io::Error::other("file larger than 64 GiB"),
                ));
            }
            std::fs::copy(&path, &target).map_err(|e| stage_err(&path, e))?;
        } else {
            return Err(ModelError::NotRegular {
                name: m.name.clone(),
                version: m.version.clone(),
                path,
            });
        }
    }
    Ok(())
}

/// The digest the worker checks the model file against, taken from the verified manifest
/// (never from reading the staged file again). The signature may leave paths out (ignore
/// paths): the file the engine loads must be one it covers, whole or as shards.
pub(super) fn signed_digest(
    m: &ModelConfig,
    verified: &VerifiedModel,
) -> Result<ModelDigest, ModelError> {
    let file = m.file.to_string_lossy();
    let refused = |reasons: String| ModelError::Signature {
        name: m.name.clone(),
        version: m.version.clone(),
        reasons,
    };
    let signed = match verified.file_digest(&file) {
        Some(d) => d,
        None => {
            return Err(refused(format!(
                "{} is not covered by the signature (it is ignored or absent)",
                m.file.display()
            )));
        }
    };
    let hash = match signed.hash {
        HashAlgorithm::Sha256 => DigestHash::Sha256,
        HashAlgorithm::Blake2b => DigestHash::Blake2b,
        HashAlgorithm::Blake3 => DigestHash::Blake3,
    };
    let digest = match (signed.shard_size, <[Vec<u8>; 1]>::try_from(signed.digests)) {
        (None, Ok([whole])) => ModelDigest::whole(hash, whole),
        (Some(size), Ok(one)) => ModelDigest::shards(hash, size, &one),
        (Some(size), Err(many)) => ModelDigest::shards(hash, size, &many),
        (None, Err(_)) => {
            return Err(refused(format!(
                "{} has more than one whole-file digest",
                m.file.display()
            )));
        }
    };
    digest.map_err(|e| refused(format!("{}: {e}", m.file.display())))
}

/// A bounded document read (release statements, attestations, revocation lists).
pub(super) fn read_document(path: &Path) -> std::io::Result<Vec<u8>> {
    crate::state_files::read_bounded(path, MAX_DOCUMENT_BYTES)
}

/// `None` when the file does not exist.
pub(super) fn optional_document(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match read_document(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The model signers of `[trust]` (development mode: anchors in files).
pub fn trust_anchors(config: &Config) -> Result<Vec<(PathBuf, Verifier)>, ModelError> {
    let mut out = Vec::new();
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| ModelError::Anchor {
            path: p.to_path_buf(),
            message: e.to_string(),
        })
    };
    for p in &config.trust.model_signer_keys {
        let v = Verifier::from_public_key_pem(&read(p)?).map_err(|e| ModelError::Anchor {
            path: p.clone(),
            message: e.to_string(),
        })?;
        out.push((p.clone(), v));
    }
    let crls = crate::crl::read_crl_files(&config.trust.model_signer_crls).map_err(|e| {
        ModelError::Anchor {
            path: e.path,
            message: e.detail,
        }
    })?;
    for p in &config.trust.model_signer_roots {
        let v = Verifier::from_certificate_roots_pem(&read(p)?)
            .and_then(|v| v.with_revocation_lists(&crls))
            .map_err(|e| ModelError::Anchor {
                path: p.clone(),
                message: e.to_string(),
            })?;
        out.push((p.clone(), v));
    }
    Ok(out)
}
