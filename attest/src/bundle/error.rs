//! Why a bundle was refused, with enough context to act on it.
//!
//! One variant per refusal reason: callers (the agent's loader, the CLI, tests) match on the
//! variant, operators read the message. Messages name the file, the digest and what was
//! expected versus found; they never include key material.

use std::path::PathBuf;

/// Everything that can go wrong while signing or verifying an OMS model bundle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    // ---- local filesystem -------------------------------------------------------------------
    /// Reading or writing a file failed.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The signature covers one file signed as itself, and the model path is a directory:
    /// which of its files was signed is for the caller to say.
    #[error(
        "the signature covers a single file (its resource is named \".\"), but {path} is a directory: give the signed file as the model"
    )]
    SingleFileSignature {
        /// The directory given as the model.
        path: PathBuf,
    },
    /// A certificate revocation list that does not parse.
    #[error("certificate revocation list: {detail}")]
    MalformedCrl {
        /// Why.
        detail: String,
    },
    /// The model path is neither a directory nor a regular file (a FIFO, a device, a socket).
    #[error("model path {path} is neither a directory nor a regular file")]
    NotDirectoryOrFile {
        /// The path given as the model.
        path: PathBuf,
    },
    /// A symbolic link inside the model (or the model path itself): refused, as model_signing
    /// does, because a link can point outside what was signed.
    #[error("symbolic link in the model: {path} (links are refused)")]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    /// A socket, FIFO or device inside the model: it cannot be hashed reproducibly.
    #[error("{path} is neither a regular file nor a directory")]
    SpecialFile {
        /// The offending path.
        path: PathBuf,
    },
    /// A file name that is not valid UTF-8 cannot be named in the manifest.
    #[error("file name is not valid UTF-8: {path}")]
    NonUtf8Path {
        /// The offending path.
        path: PathBuf,
    },
    /// An input exceeded a size limit.
    #[error("{what} is too large: {size} bytes, limit {limit}")]
    TooLarge {
        /// What was too large (e.g. "signature file").
        what: String,
        /// Its size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },

    // ---- malformed input --------------------------------------------------------------------
    /// JSON that does not parse or lacks a required field.
    #[error("malformed {what}: {detail}")]
    MalformedJson {
        /// Which document (bundle, in-toto statement, …).
        what: &'static str,
        /// The parser's description.
        detail: String,
    },
    /// A base64 field that does not decode.
    #[error("malformed base64 in {field}: {detail}")]
    MalformedBase64 {
        /// The JSON field.
        field: &'static str,
        /// The decoder's description.
        detail: String,
    },
    /// PEM text (key or certificate) that does not parse.
    #[error("malformed PEM {what}: {detail}")]
    MalformedPem {
        /// What was expected (private key, public key, certificate).
        what: &'static str,
        /// Why it was refused.
        detail: String,
    },
    /// A DER certificate that does not parse.
    #[error("malformed certificate #{index} in the bundle: {detail}")]
    MalformedCertificate {
        /// Position in the bundle's chain (0 = signing certificate).
        index: usize,
        /// The parser's description.
        detail: String,
    },
    /// A key on a curve or of a type that OMS does not allow (only P-256, P-384, P-521).
    #[error("unsupported key: {detail}")]
    UnsupportedKey {
        /// What was found.
        detail: String,
    },
    /// The predicate's serialization section names something we cannot reproduce.
    #[error("unsupported serialization in the signed predicate: {detail}")]
    UnsupportedSerialization {
        /// What was found.
        detail: String,
    },
    /// A resource entry whose name or algorithm does not fit the serialization.
    #[error("invalid resource {name:?} in the signed manifest: {reason}")]
    InvalidResource {
        /// The resource name as signed.
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// A sign option that cannot be honoured.
    #[error("invalid option: {detail}")]
    InvalidOption {
        /// What was wrong.
        detail: String,
    },

    // ---- envelope and statement ----------------------------------------------------------------
    /// The bundle's media type is not the Sigstore bundle v0.3 JSON type.
    #[error("wrong bundle media type: expected {expected}, found {actual:?}")]
    WrongMediaType {
        /// The media type OMS uses.
        expected: &'static str,
        /// What the bundle declares.
        actual: String,
    },
    /// The DSSE payload type is not in-toto JSON.
    #[error("wrong DSSE payload type: expected {expected}, found {actual:?}")]
    WrongPayloadType {
        /// The payload type OMS uses.
        expected: &'static str,
        /// What the envelope declares.
        actual: String,
    },
    /// The statement is not an in-toto Statement v1.
    #[error("wrong in-toto statement type: expected {expected}, found {actual:?}")]
    WrongStatementType {
        /// The statement type OMS uses.
        expected: &'static str,
        /// What the payload declares.
        actual: String,
    },
    /// The predicate type is not the OMS signature predicate.
    #[error("wrong predicate type: expected {expected}, found {actual:?}")]
    WrongPredicateType {
        /// The predicate type OMS uses.
        expected: &'static str,
        /// What the statement declares.
        actual: String,
    },
    /// The bundle carries verification material for another method (e.g. a certificate chain
    /// given to a public-key verifier).
    #[error("bundle was signed with the {found} method, but the verifier expects {expected}")]
    WrongVerificationMaterial {
        /// What the verifier was configured for.
        expected: &'static str,
        /// What the bundle carries.
        found: &'static str,
    },
    /// The envelope must carry exactly one signature.
    #[error("expected exactly one DSSE signature, found {count}")]
    SignatureCount {
        /// Signatures found.
        count: usize,
    },
    /// The bundle names a different public key than the verifier's (key hint mismatch).
    #[error(
        "wrong key: bundle was signed by key {bundle_hint}, verifier holds key {verifier_hint}"
    )]
    WrongKey {
        /// The hint (SHA-256 of the PEM public key) recorded in the bundle.
        bundle_hint: String,
        /// The hint of the configured key.
        verifier_hint: String,
    },
    /// The DSSE signature does not verify over the payload: the signature or the payload was
    /// altered, or another key signed it.
    #[error("signature does not verify for {signer}: signature or payload altered, or wrong key")]
    BadSignature {
        /// Key hint or certificate subject used for verification.
        signer: String,
    },
    /// The subject digest does not equal SHA-256 over the listed resource digests.
    /// A re-check without the files found a statement other than the one verified at load.
    #[error("the signed statement no longer lists the files verified at load: {reason}")]
    NotAsLoaded {
        /// What differs.
        reason: String,
    },

    #[error(
        "inconsistent root digest: statement says sha256:{expected}, resources hash to sha256:{actual}"
    )]
    InconsistentRootDigest {
        /// The subject's digest.
        expected: String,
        /// The digest recomputed from the resources.
        actual: String,
    },

    // ---- model content --------------------------------------------------------------------
    /// A file's content differs from what was signed.
    #[error(
        "file {name} changed: resource {resource} {algorithm} expected {expected}, found {actual}"
    )]
    FileChanged {
        /// The file (relative path).
        name: String,
        /// The resource that differs (the file, or a shard `path:start:end`).
        resource: String,
        /// Digest algorithm as named in the manifest.
        algorithm: String,
        /// Signed digest (hex).
        expected: String,
        /// Digest found on disk (hex, or a description when the shard layout differs).
        actual: String,
    },
    /// A file on disk that the signature does not cover.
    #[error("file {name} was added: it is not in the signed manifest")]
    FileAdded {
        /// The file (relative path).
        name: String,
    },
    /// A signed file that is not on disk.
    #[error("file {name} was removed: it is in the signed manifest but not on disk")]
    FileRemoved {
        /// The file (relative path).
        name: String,
    },
    /// A signed file appears under another name with the same content.
    #[error("file {from} was renamed to {to}")]
    FileRenamed {
        /// The signed name.
        from: String,
        /// The name found on disk.
        to: String,
    },

    // ---- keys and certificates ------------------------------------------------------------
    /// The signing certificate does not hold the signer's public key.
    #[error("the signing certificate's public key does not match the private key")]
    CertificateKeyMismatch,
    /// The certificate chain does not lead to a configured root, or is otherwise invalid.
    #[error("untrusted certificate chain for {subject}: {reason}")]
    UntrustedChain {
        /// Subject of the signing certificate.
        subject: String,
        /// What the path validation reported.
        reason: String,
    },
    /// The signing certificate is not allowed to sign code.
    #[error("signing certificate {subject} is not allowed to sign models: {reason}")]
    LeafNotAllowedToSign {
        /// Subject of the signing certificate.
        subject: String,
        /// Which usage is missing.
        reason: String,
    },
    /// The signing certificate is outside its validity period now.
    #[error("signing certificate {subject} is not valid now: {reason}")]
    LeafExpired {
        /// Subject of the signing certificate.
        subject: String,
        /// Validity window and current time.
        reason: String,
    },
    /// No usable trust anchor in the configured roots.
    #[error("no usable root certificate: {detail}")]
    NoRoots {
        /// Why.
        detail: String,
    },
    /// Signing failed inside the crypto library.
    #[error("signing failed: {detail}")]
    Signing {
        /// Why.
        detail: String,
    },
}

impl BundleError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
