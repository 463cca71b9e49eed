//! Signed model bundles in the OpenSSF Model Signing (OMS) format, byte-compatible with the
//! reference tool `model-signing` 1.1.1 for the key and certificate methods.
//!
//! A bundle is a Sigstore bundle v0.3 (JSON) holding a DSSE envelope over an in-toto
//! Statement v1. The statement's predicate (`https://model_signing/signature/v1.0`) lists every
//! resource of the model (each file, or each shard of each file) with its digest, and how the
//! model was serialized; the subject's SHA-256 is taken over the resource digests in order.
//!
//! Verification, in order: the bundle's media type and payload type; the signer (key hint and
//! signature, or certificate chain to the configured roots and signature) over the payload
//! bytes *as received*; the statement and predicate types; the root digest against the
//! resources; and finally the model on disk, hashed again with the signed serialization and
//! compared file by file. Files under an ignored path (recorded in the signed predicate, given
//! by the caller, or the signature file itself) are not covered: callers must only use the
//! files listed in [`VerifiedModel::files`].

pub(crate) mod certificate;
mod digest;
mod dsse;
mod error;
mod hash;
mod key;
mod manifest;
mod signers;
mod statement;
mod walk;

use std::io::Read as _;
use std::path::{Path, PathBuf};

pub use digest::HashAlgorithm;
pub use error::BundleError;
pub use key::Curve;
pub use manifest::Serialization;
pub use signers::{
    CertificateVerifier, MAX_SIGNATURE_BYTES, PublicKeyVerifier, Signer, Verifier,
    check_revocation_list, generate_private_key_pem,
};

use manifest::SerializationDesc;
use walk::IgnoreSet;

/// Paths that model_signing ignores by default (`ignore_git_paths=True`).
const GIT_PATHS: [&str; 4] = [".git", ".gitattributes", ".github", ".gitignore"];

/// How to sign a model.
#[derive(Debug, Clone)]
pub struct SignOptions {
    /// Files, or shards of files, as resources. With BLAKE3, shards fall back to files, as in
    /// model_signing (BLAKE3 is already parallel inside a file).
    pub serialization: Serialization,
    /// Digest of each resource.
    pub hash: HashAlgorithm,
    /// Paths left out of the signature, relative to the model directory (absolute paths must
    /// lie inside it). They are recorded in the predicate. Put the signature file here when
    /// it is written inside the model.
    pub ignore_paths: Vec<PathBuf>,
    /// Also ignore `.git`, `.gitattributes`, `.github`, `.gitignore`, as model_signing does by
    /// default. Default: true.
    pub ignore_git_paths: bool,
    /// The subject name; default: the model directory's name, as model_signing does.
    pub model_name: Option<String>,
    /// Show a progress bar (only on a terminal, and only for large models).
    pub progress: bool,
}

impl Default for SignOptions {
    fn default() -> Self {
        Self {
            serialization: Serialization::Files,
            hash: HashAlgorithm::Sha256,
            ignore_paths: Vec::new(),
            ignore_git_paths: true,
            model_name: None,
            progress: false,
        }
    }
}

/// How to verify a model.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Extra paths not covered, relative to the model directory (absolute ones must lie inside
    /// it). The paths recorded in the signed predicate, and the signature file when it lies
    /// inside the model, are always ignored.
    pub ignore_paths: Vec<PathBuf>,
    /// Show a progress bar (only on a terminal, and only for large models).
    pub progress: bool,
    /// The file the engine loads, relative to the model directory. A signature over a single
    /// file (model_signing signing a file rather than a directory: its manifest's one
    /// resource is named `.`) is checked against this file when the model path is a
    /// directory; without it, such a signature only verifies the file given as the model.
    pub model_file: Option<PathBuf>,
}

/// A bundle produced by [`sign_model`].
#[derive(Debug, Clone)]
pub struct SignedBundle {
    /// The Sigstore bundle JSON, as model_signing writes it.
    pub json: Vec<u8>,
    /// The statement's subject digest, `sha256:<hex>`.
    pub root_digest: String,
}

impl SignedBundle {
    /// Writes the bundle to `path` (replacing it).
    pub fn write_to(&self, path: &Path) -> Result<(), BundleError> {
        std::fs::write(path, &self.json).map_err(|e| BundleError::io(path, e))
    }
}

/// One resource of a verified model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceDigest {
    /// `path` for files, `path:start:end` for shards (POSIX separators, relative).
    pub name: String,
    /// As named in the manifest: `sha256`, `blake2b`, `blake3`, or `<hash>-sharded-<size>`.
    pub algorithm: String,
    /// The digest, hex.
    pub digest_hex: String,
}

/// The outcome of a successful [`verify_model`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedModel {
    /// The subject name of the statement (informative only: renaming a model directory does
    /// not invalidate its signature).
    pub model_name: String,
    /// `sha256:<hex>` over the resource digests: the model's identity for release statements,
    /// audit and measurement.
    pub root_digest: String,
    /// Every covered resource, as signed and as found on disk.
    pub files: Vec<ResourceDigest>,
    /// `key <hint>` for the key method, the signing certificate's subject for certificates.
    pub signer: String,
    /// Serialization method as signed: `files` or `shards`.
    pub serialization: String,
    /// Paths not covered by the signature (recorded in the predicate, given by the caller, or
    /// the signature file), relative to the model directory.
    pub ignored_paths: Vec<String>,
    /// The signature covers one file, signed as itself (its one resource, or each of its
    /// shards, is named `.`), rather than a directory.
    pub single_file: bool,
    /// For the certificate method: when the signing chain stops being valid (the earliest
    /// notAfter of the leaf and the intermediates on the verified path, Unix seconds). A chain
    /// is verified at the time of verification, so past this the model no longer loads: an
    /// operator is warned well before (`warden check`, `warden status`, metrics).
    pub signer_valid_until: Option<u64>,
}

/// The signed digest of one file of a verified model, as its manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    /// The hash of the serialization.
    pub hash: HashAlgorithm,
    /// `None` for a whole-file digest; the shard size for sharded serialization.
    pub shard_size: Option<u64>,
    /// The whole file's digest, or its shards' digests in file order (none for an empty
    /// file, which model_signing splits into no shard).
    pub digests: Vec<Vec<u8>>,
}

impl VerifiedModel {
    /// Whether the signature covers `file` (relative to the model directory) whole or as
    /// shards. A single-file signature was checked against the file the caller named as the
    /// model ([`VerifyOptions::model_file`]), which is the one it covers.
    pub fn covers(&self, file: &str) -> bool {
        self.single_file
            || self.files.iter().any(|f| {
                f.name == file
                    || f.name
                        .strip_prefix(file)
                        .is_some_and(|rest| rest.starts_with(':'))
            })
    }

    /// The signed digest of `file` (relative to the model directory; for a single-file
    /// signature, its one file), for a loader to hand to whatever reads the file next: the
    /// digest comes from the verified manifest, never from reading the file again. `None` when
    /// the signature does not cover the file or its entries are not what verification
    /// accepted (shards not adjoining from 0).
    pub fn file_digest(&self, file: &str) -> Option<FileDigest> {
        let name = if self.single_file { "." } else { file };
        let mut hash = None;
        let mut shard_size = None;
        let mut whole = None;
        let mut shards: Vec<(u64, u64, Vec<u8>)> = Vec::new();
        for r in &self.files {
            let (algorithm, size) = match r.algorithm.split_once("-sharded-") {
                Some((a, n)) => (a, Some(n.parse::<u64>().ok()?)),
                None => (r.algorithm.as_str(), None),
            };
            let this = HashAlgorithm::from_name(algorithm)?;
            let digest = hex::decode(&r.digest_hex).ok()?;
            if r.name == name && size.is_none() {
                whole = Some(digest);
            } else if let Some(range) = r.name.strip_prefix(name).and_then(|s| s.strip_prefix(':'))
                && size.is_some()
            {
                let (start, end) = range.split_once(':')?;
                shards.push((start.parse().ok()?, end.parse().ok()?, digest));
            } else {
                continue;
            }
            hash = Some(this);
            shard_size = size;
        }
        let hash = hash?;
        if let Some(digest) = whole {
            return shards.is_empty().then(|| FileDigest {
                hash,
                shard_size: None,
                digests: vec![digest],
            });
        }
        shards.sort_by_key(|(start, _, _)| *start);
        let mut next = 0;
        for (start, end, _) in &shards {
            if *start != next || end <= start {
                return None;
            }
            next = *end;
        }
        Some(FileDigest {
            hash,
            shard_size,
            digests: shards.into_iter().map(|(_, _, d)| d).collect(),
        })
    }
}

/// Hashes `model_dir` and signs it.
pub fn sign_model(
    model_dir: &Path,
    signer: &Signer,
    opts: &SignOptions,
) -> Result<SignedBundle, BundleError> {
    let mut ignore = IgnoreSet::default();
    for p in &opts.ignore_paths {
        if p.as_os_str().is_empty() || p.components().all(|c| c == std::path::Component::CurDir) {
            return Err(BundleError::InvalidOption {
                detail: "an empty ignore path would leave the whole model unsigned".to_owned(),
            });
        }
        ignore.add_caller_path(model_dir, p);
    }
    if opts.ignore_git_paths {
        for g in GIT_PATHS {
            ignore.add_relative(g);
        }
    }
    let method = match (opts.serialization, opts.hash) {
        // model_signing's use_shard_serialization: BLAKE3 bypasses sharding.
        (Serialization::Shards { .. }, HashAlgorithm::Blake3) => Serialization::Files,
        (Serialization::Shards { shard_size: 0 }, _) => {
            return Err(BundleError::InvalidOption {
                detail: "shard size must be positive".to_owned(),
            });
        }
        (m, _) => m,
    };
    let files = walk::list_files(model_dir, &ignore)?;
    let resources = hash::hash_model(&files, method, opts.hash, opts.progress)?;
    let desc = SerializationDesc {
        method,
        hash: opts.hash,
        allow_symlinks: false,
        ignore_paths: ignore.recorded(),
    };
    let name = match &opts.model_name {
        Some(n) => n.clone(),
        None => model_name_of(model_dir),
    };
    let (payload, root) = statement::build(&name, &desc, &resources)?;
    let signature = signer.key.sign(&dsse::pae(dsse::PAYLOAD_TYPE, &payload))?;
    let json = dsse::assemble(&payload, &signature, signer.verification_material()?)?;
    Ok(SignedBundle {
        json,
        root_digest: format!("sha256:{root}"),
    })
}

/// model_signing's rule: the directory's last component, or the resolved one for `.`/`..`.
fn model_name_of(model_dir: &Path) -> String {
    let name = match model_dir.file_name() {
        Some(n) => Some(n.to_owned()),
        None => std::fs::canonicalize(model_dir)
            .ok()
            .and_then(|p| p.file_name().map(ToOwned::to_owned)),
    };
    name.map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Reads a signature file, refusing it beyond [`MAX_SIGNATURE_BYTES`].
fn read_bounded(path: &Path) -> Result<Vec<u8>, BundleError> {
    let file = std::fs::File::open(path).map_err(|e| BundleError::io(path, e))?;
    let mut buf = Vec::new();
    // Read one byte past the limit to tell "exactly at the limit" from "over it" without
    // trusting metadata (the file could be a FIFO or growing).
    file.take(MAX_SIGNATURE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| BundleError::io(path, e))?;
    if buf.len() as u64 > MAX_SIGNATURE_BYTES {
        return Err(BundleError::TooLarge {
            what: format!("signature file {}", path.display()),
            size: buf.len() as u64,
            limit: MAX_SIGNATURE_BYTES,
        });
    }
    Ok(buf)
}

/// Verifies `model_dir` against the bundle at `signature_file`.
pub fn verify_model(
    model_dir: &Path,
    signature_file: &Path,
    verifier: &Verifier,
    opts: &VerifyOptions,
) -> Result<VerifiedModel, BundleError> {
    let raw = read_bounded(signature_file)?;
    verify_model_bytes(model_dir, &raw, Some(signature_file), verifier, opts)
}

/// Like [`verify_model`], with the bundle already in memory (e.g. received over the network).
/// `signature_path`, when given and inside the model, is ignored like a signature file.
pub fn verify_model_bytes(
    model_dir: &Path,
    bundle_json: &[u8],
    signature_path: Option<&Path>,
    verifier: &Verifier,
    opts: &VerifyOptions,
) -> Result<VerifiedModel, BundleError> {
    let (signed, signer) = open_signed(bundle_json, verifier)?;

    let mut ignore = IgnoreSet::default();
    for p in &signed.serialization.ignore_paths {
        ignore.add_relative(p);
    }
    for p in &opts.ignore_paths {
        ignore.add_caller_path(model_dir, p);
    }
    if let Some(sig) = signature_path {
        let abs = if sig.is_absolute() {
            sig.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| BundleError::io(sig, e))?
                .join(sig)
        };
        let model_abs = if model_dir.is_absolute() {
            model_dir.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| BundleError::io(model_dir, e))?
                .join(model_dir)
        };
        if let Some(rel) = walk::relative_to_model(&model_abs, &abs)
            && let Some(s) = rel.to_str()
        {
            ignore.add_relative(s);
        }
    }

    // A single-file signature is checked against the file the caller loads, when the model
    // path is the directory holding it. The choice follows the signed statement, whose
    // signature is verified by now.
    let single_file = signed.resources.iter().any(|r| r.path.is_empty());
    let target = match &opts.model_file {
        Some(file) if single_file && model_dir.is_dir() => model_dir.join(file),
        _ => model_dir.to_path_buf(),
    };
    if single_file && target.is_dir() {
        return Err(BundleError::SingleFileSignature { path: target });
    }
    let files = walk::list_files(&target, &ignore)?;
    let actual = hash::hash_model(
        &files,
        signed.serialization.method,
        signed.serialization.hash,
        opts.progress,
    )?;
    let algorithm = signed.serialization.resource_algorithm();
    manifest::compare(&signed.resources, &actual, &algorithm)?;

    let files = resource_digests(&signed, &algorithm);
    Ok(VerifiedModel {
        model_name: signed.model_name,
        root_digest: format!("sha256:{}", signed.root_digest),
        files,
        signer: signer.name,
        signer_valid_until: signer.valid_until,
        serialization: match signed.serialization.method {
            Serialization::Files => "files".to_owned(),
            Serialization::Shards { .. } => "shards".to_owned(),
        },
        ignored_paths: ignore.recorded(),
        single_file,
    })
}

/// The signed resources as [`VerifiedModel::files`] lists them.
fn resource_digests(signed: &statement::SignedManifest, algorithm: &str) -> Vec<ResourceDigest> {
    signed
        .resources
        .iter()
        .map(|r| ResourceDigest {
            name: r.name(),
            algorithm: algorithm.to_owned(),
            digest_hex: hex::encode(&r.digest),
        })
        .collect()
}

/// The bundle's size bound, its envelope verified over the exact bytes, and only then its
/// statement parsed: the signed statement and who signed it.
fn open_signed(
    bundle_json: &[u8],
    verifier: &Verifier,
) -> Result<(statement::SignedManifest, signers::SignedBy), BundleError> {
    let (payload, signer) = verifier.verify_bounded(bundle_json, "signature")?;
    let signed = statement::parse(&payload)?;
    Ok((signed, signer))
}

/// Re-checks a bundle against a model verified earlier from the same bundle, without reading
/// the model again: the envelope's signature is verified over the exact bytes against
/// `verifier` (anchors may have changed since), and the signed statement must still list
/// exactly the resources and root digest of `loaded`. For periodic re-admission of a model
/// already loaded: what is served is what was hashed at load (a worker restart re-checks its
/// file's digest), so re-hashing gigabytes on every refresh proves nothing more.
pub fn reverify_model_bytes(
    bundle_json: &[u8],
    verifier: &Verifier,
    loaded: &VerifiedModel,
) -> Result<VerifiedModel, BundleError> {
    let (signed, signer) = open_signed(bundle_json, verifier)?;
    let algorithm = signed.serialization.resource_algorithm();
    let files = resource_digests(&signed, &algorithm);
    let root_digest = format!("sha256:{}", signed.root_digest);
    if root_digest != loaded.root_digest {
        return Err(BundleError::NotAsLoaded {
            reason: format!("root digest {root_digest}, loaded {}", loaded.root_digest),
        });
    }
    let (mut signed_sorted, mut expected) = (files.clone(), loaded.files.clone());
    signed_sorted.sort_by(|a, b| a.name.cmp(&b.name));
    expected.sort_by(|a, b| a.name.cmp(&b.name));
    if signed_sorted != expected {
        return Err(BundleError::NotAsLoaded {
            reason: "the resource list differs".to_owned(),
        });
    }
    Ok(VerifiedModel {
        model_name: signed.model_name,
        root_digest,
        files,
        signer: signer.name,
        signer_valid_until: signer.valid_until,
        serialization: loaded.serialization.clone(),
        ignored_paths: loaded.ignored_paths.clone(),
        single_file: loaded.single_file,
    })
}
