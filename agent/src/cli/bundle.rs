//! `warden bundle`: sign and verify model directories in the OpenSSF Model Signing format,
//! with flags modeled on the reference tool `model_signing` (hyphens instead of underscores).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use warden_attest::bundle::{
    HashAlgorithm, Serialization, SignOptions, Signer, Verifier, VerifyOptions, sign_model,
    verify_model,
};

/// `warden bundle …`
#[derive(Debug, clap::Subcommand)]
pub enum BundleCommand {
    /// Sign a model directory, writing a Sigstore bundle (default `model.sig`).
    Sign {
        #[command(subcommand)]
        method: SignMethod,
    },
    /// Verify a model directory against its signature; prints the root digest on success.
    Verify {
        #[command(subcommand)]
        method: VerifyMethod,
    },
    /// Release statements, attestations and revocation lists (release and fleet authorities).
    #[command(subcommand)]
    Release(super::release::ReleaseCommand),
}

/// How to sign.
#[derive(Debug, clap::Subcommand)]
pub enum SignMethod {
    /// With an ECDSA private key (P-256, P-384, P-521; PEM, PKCS#8 or SEC1).
    Key {
        #[command(flatten)]
        common: SignArgs,
        /// PEM private key.
        #[arg(long)]
        private_key: PathBuf,
    },
    /// With a private key and its certificate chain, embedded in the bundle.
    Certificate {
        #[command(flatten)]
        common: SignArgs,
        /// PEM private key of the signing certificate.
        #[arg(long)]
        private_key: PathBuf,
        /// PEM signing certificate (needs KeyUsage digitalSignature and EKU codeSigning).
        #[arg(long)]
        signing_certificate: PathBuf,
        /// PEM intermediate certificates, in any number of files.
        #[arg(long, num_args = 1..)]
        certificate_chain: Vec<PathBuf>,
    },
}

/// Options shared by every signing method.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// The model directory.
    model: PathBuf,
    /// Where to write the bundle. Ignored in the manifest when inside the model.
    #[arg(long, default_value = "model.sig")]
    signature: PathBuf,
    /// Digest of each file or shard.
    #[arg(long, value_enum, default_value_t = HashArg::Sha256)]
    hash: HashArg,
    /// Hash whole files, or shards of `--shard-size` bytes.
    #[arg(long, value_enum, default_value_t = SerializationArg::Files)]
    serialization: SerializationArg,
    /// Shard size in bytes (with `--serialization shards`).
    #[arg(long, default_value_t = Serialization::DEFAULT_SHARD_SIZE)]
    shard_size: u64,
    /// Paths (relative to the current directory, as model_signing reads them) to leave out.
    #[arg(long, num_args = 1..)]
    ignore_paths: Vec<PathBuf>,
    /// Include `.git`, `.gitattributes`, `.github`, `.gitignore` (ignored by default).
    #[arg(long)]
    no_ignore_git_paths: bool,
}

/// How to verify.
#[derive(Debug, clap::Subcommand)]
pub enum VerifyMethod {
    /// Against an ECDSA public key.
    Key {
        #[command(flatten)]
        common: VerifyArgs,
        /// PEM public key.
        #[arg(long)]
        public_key: PathBuf,
    },
    /// Against root certificates: the bundle's chain must lead to one of them.
    Certificate {
        #[command(flatten)]
        common: VerifyArgs,
        /// PEM root certificates (every certificate given is trusted).
        #[arg(long, num_args = 1.., required = true)]
        certificate_chain: Vec<PathBuf>,
    },
}

/// Options shared by every verification method.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The model directory.
    model: PathBuf,
    /// The bundle to verify.
    #[arg(long)]
    signature: PathBuf,
    /// Extra paths (relative to the current directory) not covered by the signature.
    #[arg(long, num_args = 1..)]
    ignore_paths: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum HashArg {
    Sha256,
    Blake2b,
    Blake3,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SerializationArg {
    Files,
    Shards,
}

/// Runs a `warden bundle` command; errors carry the precise refusal reason.
pub fn run(cmd: BundleCommand) -> anyhow::Result<()> {
    match cmd {
        BundleCommand::Sign { method } => sign(method),
        BundleCommand::Verify { method } => verify(method),
        BundleCommand::Release(cmd) => super::release::run(cmd),
    }
}

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
}

fn read_all(paths: &[PathBuf], what: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    for p in paths {
        out.push_str(&read(p, what)?);
        out.push('\n');
    }
    Ok(out)
}

/// model_signing's CLI reads ignore paths relative to the current directory.
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    Ok(if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .context("reading the current directory")?
            .join(path)
    })
}

fn sign(method: SignMethod) -> anyhow::Result<()> {
    let (common, signer) = match method {
        SignMethod::Key {
            common,
            private_key,
        } => {
            let signer = Signer::from_private_key_pem(&read(&private_key, "private key")?)?;
            (common, signer)
        }
        SignMethod::Certificate {
            common,
            private_key,
            signing_certificate,
            certificate_chain,
        } => {
            let signer = Signer::from_private_key_pem(&read(&private_key, "private key")?)?
                .with_certificate_chain(
                    &read(&signing_certificate, "signing certificate")?,
                    &read_all(&certificate_chain, "certificate chain")?,
                )?;
            (common, signer)
        }
    };
    let mut ignore_paths = common
        .ignore_paths
        .iter()
        .map(|p| absolute(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // The signature must not sign itself (nor a previous version of itself).
    ignore_paths.push(absolute(&common.signature)?);
    let opts = SignOptions {
        serialization: match common.serialization {
            SerializationArg::Files => Serialization::Files,
            SerializationArg::Shards => Serialization::Shards {
                shard_size: common.shard_size,
            },
        },
        hash: match common.hash {
            HashArg::Sha256 => HashAlgorithm::Sha256,
            HashArg::Blake2b => HashAlgorithm::Blake2b,
            HashArg::Blake3 => HashAlgorithm::Blake3,
        },
        ignore_paths,
        ignore_git_paths: !common.no_ignore_git_paths,
        model_name: None,
        progress: true,
    };
    let bundle = sign_model(&common.model, &signer, &opts)
        .with_context(|| format!("signing {}", common.model.display()))?;
    bundle.write_to(&common.signature)?;
    println!(
        "signed {} root {} -> {}",
        common.model.display(),
        bundle.root_digest,
        common.signature.display()
    );
    Ok(())
}

fn verify(method: VerifyMethod) -> anyhow::Result<()> {
    let (common, verifier) = match method {
        VerifyMethod::Key { common, public_key } => {
            let v = Verifier::from_public_key_pem(&read(&public_key, "public key")?)?;
            (common, v)
        }
        VerifyMethod::Certificate {
            common,
            certificate_chain,
        } => {
            let v = Verifier::from_certificate_roots_pem(&read_all(
                &certificate_chain,
                "root certificates",
            )?)?;
            (common, v)
        }
    };
    let opts = VerifyOptions {
        ignore_paths: common
            .ignore_paths
            .iter()
            .map(|p| absolute(p))
            .collect::<anyhow::Result<Vec<_>>>()?,
        progress: true,
        // MODEL is what was signed: a directory, or the one file of a single-file signature.
        model_file: None,
    };
    let v = verify_model(&common.model, &common.signature, &verifier, &opts)
        .with_context(|| format!("verification of {} failed", common.model.display()))?;
    println!(
        "verified {} root {} signed by {} ({} resources, {} serialization)",
        common.model.display(),
        v.root_digest,
        v.signer,
        v.files.len(),
        v.serialization
    );
    Ok(())
}
