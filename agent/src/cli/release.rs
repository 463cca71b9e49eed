//! `warden bundle release`: the release authority's and fleet authority's tools: sign and verify
//! release statements, sign attestations, sign revocation lists and policy sets. Every document is
//! a signed in-toto statement in a Sigstore bundle, signed like OMS model bundles (see
//! `warden_attest::release` and `warden_attest::revocation`).
//!
//! The model is named by its root digest, which `warden bundle verify` prints after checking
//! the model's signature: a release authority signs only what it has verified.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use warden_attest::bundle::{Signer, Verifier};
use warden_attest::policyset::{PolicySet, sign_policy_set};
use warden_attest::release::{Release, Stage, sign_attestation, sign_release, verify_release};
use warden_attest::revocation::{
    RevocationList, RevokedDigest, RevokedVersion, sign_revocation_list, verify_revocation_list,
};

/// `warden bundle release …`
#[derive(Debug, clap::Subcommand)]
pub enum ReleaseCommand {
    /// Sign a release statement over a model's root digest (as the release authority).
    Sign {
        /// The model's root digest, `sha256:<hex>` (printed by `warden bundle verify`).
        #[arg(long)]
        root_digest: String,
        /// Model name.
        #[arg(long)]
        name: String,
        /// Model version.
        #[arg(long)]
        version: String,
        /// Release stage.
        #[arg(long, value_enum)]
        stage: StageArg,
        /// Digest of the policy set this release is approved under, `sha256:<hex>`.
        #[arg(long)]
        policy_digest: String,
        /// Predicate type of an attestation that must accompany the model (repeatable).
        #[arg(long = "require-attestation")]
        required_attestations: Vec<String>,
        /// The release authority's PEM private key (ECDSA).
        #[arg(long)]
        private_key: PathBuf,
        /// Where to write the signed statement.
        #[arg(long, default_value = "release.sig")]
        output: PathBuf,
    },
    /// Verify a release statement against the release authority's key and the model's digest.
    Verify {
        /// The signed statement.
        #[arg(long, default_value = "release.sig")]
        statement: PathBuf,
        /// The release authority's PEM public key.
        #[arg(long)]
        public_key: PathBuf,
        /// The model's root digest, `sha256:<hex>`.
        #[arg(long)]
        root_digest: String,
    },
    /// Sign an attestation (e.g. SLSA provenance, an evaluation report) about a model.
    Attest {
        /// The model's root digest, `sha256:<hex>`.
        #[arg(long)]
        root_digest: String,
        /// Model name (the statement's subject name).
        #[arg(long)]
        name: String,
        /// The predicate type, e.g. `https://slsa.dev/provenance/v1`.
        #[arg(long)]
        predicate_type: String,
        /// A JSON file holding the predicate.
        #[arg(long)]
        predicate: PathBuf,
        /// The attester's PEM private key (ECDSA).
        #[arg(long)]
        private_key: PathBuf,
        /// Where to write the signed attestation.
        #[arg(long)]
        output: PathBuf,
    },
    /// Sign a revocation list (as the fleet authority).
    Revoke {
        /// The list's serial: higher than every list published before.
        #[arg(long)]
        serial: u64,
        /// A revoked model digest, `sha256:<hex>[=reason]` (repeatable).
        #[arg(long = "digest")]
        digests: Vec<String>,
        /// A revoked model version, `name@version[=reason]` (repeatable).
        #[arg(long = "model-version")]
        versions: Vec<String>,
        /// The fleet authority's PEM private key (ECDSA).
        #[arg(long)]
        private_key: PathBuf,
        /// Where to write the signed list.
        #[arg(long, default_value = "revocations.sig")]
        output: PathBuf,
    },
    /// Sign a policy set (as the fleet authority) and pack it for `PUT /admin/v1/policies`:
    /// a tar of the set's files (`.rego` policies and `data.json` documents) under `policies/`
    /// and the signed statement over the set's canonical digest and a serial as
    /// `statement.json`.
    SignPolicies {
        /// The policy set's directory (`serving/startup.rego`, `serving/routes.rego`, data).
        #[arg(long)]
        policies: PathBuf,
        /// The set's serial: higher than every set published before.
        #[arg(long)]
        serial: u64,
        /// The fleet authority's PEM private key (ECDSA).
        #[arg(long)]
        private_key: PathBuf,
        /// Where to write the archive.
        #[arg(long, default_value = "policies.tar")]
        output: PathBuf,
    },
    /// Verify a revocation list against the fleet authority's key; prints its serial.
    VerifyRevocations {
        /// The signed list.
        #[arg(long, default_value = "revocations.sig")]
        list: PathBuf,
        /// The fleet authority's PEM public key.
        #[arg(long)]
        public_key: PathBuf,
    },
}

/// A release stage on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StageArg {
    /// Built, not for production.
    Development,
    /// Candidate for staging appliances.
    Staging,
    /// Released for production.
    Approved,
    /// Allowed where serving; replace it.
    Deprecated,
    /// Must not be served.
    Revoked,
}

impl From<StageArg> for Stage {
    fn from(s: StageArg) -> Self {
        match s {
            StageArg::Development => Stage::Development,
            StageArg::Staging => Stage::Staging,
            StageArg::Approved => Stage::Approved,
            StageArg::Deprecated => Stage::Deprecated,
            StageArg::Revoked => Stage::Revoked,
        }
    }
}

/// Runs `warden bundle release …`.
pub fn run(cmd: ReleaseCommand) -> anyhow::Result<()> {
    match cmd {
        ReleaseCommand::Sign {
            root_digest,
            name,
            version,
            stage,
            policy_digest,
            required_attestations,
            private_key,
            output,
        } => {
            let signer = signer(&private_key)?;
            let release = Release {
                name,
                version,
                stage: stage.into(),
                policy_set_digest: policy_digest,
                required_attestations,
            };
            let bundle = sign_release(&release, &root_digest, &signer)?;
            write(&output, &bundle)?;
            println!(
                "signed release {} {} ({}) for {root_digest} -> {}",
                release.name,
                release.version,
                release.stage,
                output.display()
            );
            Ok(())
        }
        ReleaseCommand::Verify {
            statement,
            public_key,
            root_digest,
        } => {
            let verifier = verifier(&public_key)?;
            let bundle = read(&statement, "release statement")?;
            let v = verify_release(&bundle, &verifier, &root_digest)?;
            println!(
                "release {} {} stage {} policy {} requires [{}], signed by {}",
                v.release.name,
                v.release.version,
                v.release.stage,
                v.release.policy_set_digest,
                v.release.required_attestations.join(", "),
                v.signer
            );
            Ok(())
        }
        ReleaseCommand::Attest {
            root_digest,
            name,
            predicate_type,
            predicate,
            private_key,
            output,
        } => {
            let signer = signer(&private_key)?;
            let predicate: serde_json::Value =
                serde_json::from_slice(&read(&predicate, "predicate")?)
                    .with_context(|| format!("{} is not JSON", predicate.display()))?;
            let bundle =
                sign_attestation(&predicate_type, &predicate, &name, &root_digest, &signer)?;
            write(&output, &bundle)?;
            println!(
                "signed {predicate_type} attestation for {root_digest} -> {}",
                output.display()
            );
            Ok(())
        }
        ReleaseCommand::Revoke {
            serial,
            digests,
            versions,
            private_key,
            output,
        } => {
            let signer = signer(&private_key)?;
            let list = RevocationList {
                serial,
                revoked_digests: digests
                    .iter()
                    .map(|d| {
                        let (digest, reason) = split_reason(d);
                        RevokedDigest { digest, reason }
                    })
                    .collect(),
                revoked_versions: versions
                    .iter()
                    .map(|v| {
                        let (nv, reason) = split_reason(v);
                        let (name, version) = nv.split_once('@').with_context(|| {
                            format!("--model-version {v:?} is not name@version")
                        })?;
                        Ok(RevokedVersion {
                            name: name.to_owned(),
                            version: version.to_owned(),
                            reason,
                        })
                    })
                    .collect::<anyhow::Result<_>>()?,
            };
            let bundle = sign_revocation_list(&list, &signer)?;
            write(&output, &bundle)?;
            println!(
                "signed revocation list {serial} ({} digests, {} versions) -> {}",
                list.revoked_digests.len(),
                list.revoked_versions.len(),
                output.display()
            );
            Ok(())
        }
        ReleaseCommand::SignPolicies {
            policies,
            serial,
            private_key,
            output,
        } => {
            let signer = signer(&private_key)?;
            // The archive carries exactly the bytes the digest was computed over.
            let (files, digest) = warden_attest::policyset::files::policy_set_files(&policies)?;
            let bundle = sign_policy_set(
                &PolicySet {
                    serial,
                    policy_set_digest: digest.clone(),
                },
                &signer,
            )?;
            write(&output, &policy_archive(&files, &bundle)?)?;
            println!(
                "signed policy set {serial} ({digest}) of {} -> {}",
                policies.display(),
                output.display()
            );
            Ok(())
        }
        ReleaseCommand::VerifyRevocations { list, public_key } => {
            let verifier = verifier(&public_key)?;
            let bundle = read(&list, "revocation list")?;
            // Offline check: no counter to compare with; the agent applies anti-rollback.
            let l = verify_revocation_list(&bundle, &verifier, 0)?;
            println!(
                "revocation list {} ({} digests, {} versions) verifies",
                l.serial,
                l.revoked_digests.len(),
                l.revoked_versions.len()
            );
            Ok(())
        }
    }
}

/// The tar a policy-set push carries: the set's files under `policies/`, and the statement.
fn policy_archive(
    files: &std::collections::BTreeMap<String, Vec<u8>>,
    statement: &[u8],
) -> anyhow::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |name: &str, bytes: &[u8]| -> anyhow::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes)
            .with_context(|| format!("packing {name}"))
    };
    for (rel, bytes) in files {
        add(&format!("policies/{rel}"), bytes)?;
    }
    add("statement.json", statement)?;
    tar.into_inner().context("packing the policy set")
}

/// `value=reason` → (value, reason); no `=` → empty reason.
fn split_reason(s: &str) -> (String, String) {
    match s.split_once('=') {
        Some((v, r)) => (v.to_owned(), r.to_owned()),
        None => (s.to_owned(), String::new()),
    }
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn signer(private_key: &Path) -> anyhow::Result<Signer> {
    let pem = String::from_utf8(read(private_key, "private key")?)
        .with_context(|| format!("{} is not PEM text", private_key.display()))?;
    Ok(Signer::from_private_key_pem(&pem)?)
}

fn verifier(public_key: &Path) -> anyhow::Result<Verifier> {
    let pem = String::from_utf8(read(public_key, "public key")?)
        .with_context(|| format!("{} is not PEM text", public_key.display()))?;
    Ok(Verifier::from_public_key_pem(&pem)?)
}
