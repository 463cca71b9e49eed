//! Pulling a model bundle from an OCI registry:
//! `POST /admin/v1/models/{name}/versions/{version}/pull`.
//!
//! A bundle is an OCI artifact: an image manifest whose config has the media type
//! [`CONFIG_MEDIA_TYPE`] (content `{}`) and whose single layer, of media type [`LAYER_MEDIA_TYPE`],
//! is the same tar archive the admin `PUT` accepts. The reference must be pinned by digest
//! (`registry/repo@sha256:…`); tags alone are refused. The manifest's digest is checked against the
//! reference (by `oci-client`, and again here), the layer's against the manifest (by `oci-client`
//! at the end of the stream, and again here while it is written, with its size capped by the
//! descriptor and `admin.max_upload_bytes`). The archive then goes through the admin path's
//! unpacking and loading: there is no second verification path.
//!
//! HTTPS by default; plain HTTP only when the request opts in (`insecure_http`, for loopback
//! registries in tests). Only anonymous pulls.

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The media type of a bundle's single layer: the admin push tar.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.warden.bundle.v1.tar";
/// The media type of a bundle's config (content `{}`); it marks the artifact as a bundle.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.warden.bundle.config.v1+json";

/// Connecting to the registry.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Between two reads from the registry.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("OCI reference {reference:?}: {source}")]
    Reference {
        reference: String,
        source: oci_client::ParseError,
    },
    #[error("OCI reference {reference:?} is not pinned by digest (registry/repo@sha256:…)")]
    NotPinned { reference: String },
    #[error("OCI registry, pulling {reference}: {source}")]
    Registry {
        reference: String,
        source: Box<OciDistributionError>,
    },
    #[error("OCI registry, reading the bundle layer of {reference}: {source}")]
    Transfer {
        reference: String,
        source: std::io::Error,
    },
    #[error("OCI {reference}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        reference: String,
        expected: String,
        actual: String,
    },
    #[error("OCI {reference}: not a Warden bundle: {reason}")]
    NotABundle { reference: String, reason: String },
    #[error("OCI {reference}: the bundle layer is larger than {limit} bytes")]
    TooLarge { reference: String, limit: u64 },
    #[error("OCI: cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Parses `reference` and refuses one that is not pinned by a sha256 digest.
pub fn pinned_reference(reference: &str) -> Result<Reference, OciError> {
    let parsed: Reference = reference.parse().map_err(|source| OciError::Reference {
        reference: reference.to_owned(),
        source,
    })?;
    match parsed.digest() {
        Some(d) if d.starts_with("sha256:") => Ok(parsed),
        _ => Err(OciError::NotPinned {
            reference: reference.to_owned(),
        }),
    }
}

/// Pulls the bundle pinned by `reference` and writes its tar layer to `to`, at most `limit`
/// bytes; every digest is checked before this returns `Ok`.
pub async fn pull_bundle(
    reference: &Reference,
    insecure_http: bool,
    to: &Path,
    limit: u64,
) -> Result<(), OciError> {
    // reqwest is built without a default rustls provider (no aws-lc): the process uses ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let name = reference.whole();
    let registry = |e: OciDistributionError| {
        if let OciDistributionError::DigestError(
            oci_client::errors::DigestError::VerificationError { expected, actual },
        ) = &e
        {
            return OciError::DigestMismatch {
                reference: name.clone(),
                expected: expected.clone(),
                actual: actual.clone(),
            };
        }
        OciError::Registry {
            reference: name.clone(),
            source: Box::new(e),
        }
    };
    let client = Client::new(ClientConfig {
        protocol: if insecure_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        // A registry that stops answering must not hold an admin request forever.
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        ..ClientConfig::default()
    });
    let (manifest, digest) = client
        .pull_manifest(reference, &RegistryAuth::Anonymous)
        .await
        .map_err(registry)?;
    let expected = reference.digest().unwrap_or_default();
    if digest != expected {
        return Err(OciError::DigestMismatch {
            reference: name.clone(),
            expected: expected.to_owned(),
            actual: digest,
        });
    }
    let not_a_bundle = |reason: String| OciError::NotABundle {
        reference: name.clone(),
        reason,
    };
    let OciManifest::Image(manifest) = manifest else {
        return Err(not_a_bundle("an image index, not an image manifest".into()));
    };
    if manifest.config.media_type != CONFIG_MEDIA_TYPE {
        return Err(not_a_bundle(format!(
            "config media type {} (expected {CONFIG_MEDIA_TYPE})",
            manifest.config.media_type
        )));
    }
    let [layer] = manifest.layers.as_slice() else {
        return Err(not_a_bundle(format!(
            "{} layers (expected one)",
            manifest.layers.len()
        )));
    };
    if layer.media_type != LAYER_MEDIA_TYPE {
        return Err(not_a_bundle(format!(
            "layer media type {} (expected {LAYER_MEDIA_TYPE})",
            layer.media_type
        )));
    }
    let Some(layer_hex) = layer.digest.strip_prefix("sha256:") else {
        return Err(not_a_bundle(format!(
            "layer digest {} is not sha256",
            layer.digest
        )));
    };
    let size = u64::try_from(layer.size).map_err(|_| not_a_bundle("negative layer size".into()))?;
    if size > limit {
        return Err(OciError::TooLarge {
            reference: name.clone(),
            limit,
        });
    }
    let write = |source: std::io::Error| OciError::Write {
        path: to.to_owned(),
        source,
    };
    let mut file = std::fs::File::create(to).map_err(write)?;
    let mut stream = client
        .pull_blob_stream(reference, layer)
        .await
        .map_err(registry)?;
    let mut hasher = Sha256::new();
    let mut written: u64 = 0;
    while let Some(chunk) = stream.next().await {
        // oci-client checks the layer (and Docker-Content-Digest) digest at the end of the
        // stream and reports a mismatch as an io::Error wrapping a DigestError.
        let chunk = chunk.map_err(|source| {
            if let Some(oci_client::errors::DigestError::VerificationError { expected, actual }) =
                source
                    .get_ref()
                    .and_then(|e| e.downcast_ref::<oci_client::errors::DigestError>())
            {
                return OciError::DigestMismatch {
                    reference: name.clone(),
                    expected: expected.clone(),
                    actual: actual.clone(),
                };
            }
            OciError::Transfer {
                reference: name.clone(),
                source,
            }
        })?;
        written = written.saturating_add(chunk.len() as u64);
        if written > size {
            return Err(not_a_bundle(format!(
                "the layer is longer than the {size} bytes its descriptor states"
            )));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).map_err(write)?;
    }
    let actual = hex::encode(hasher.finalize());
    if actual != layer_hex || written != size {
        return Err(OciError::DigestMismatch {
            reference: name.clone(),
            expected: layer.digest.clone(),
            actual: format!("sha256:{actual} ({written} bytes)"),
        });
    }
    file.sync_all().map_err(write)
}
