//! `warden-keyd attest …`: the device's side of measured boot, on the TPM itself (keyd
//! stopped): quote PCRs over a verifier's nonce, write the device's identity for enrolment,
//! answer the verifier's challenge. Through a running keyd the same commands are the agent
//! CLI's (`warden attest … --keyd-socket`); the verifier's side (`verify`, `challenge`,
//! `enrol`) needs no TPM and is the agent CLI's too.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use warden_attest::boot::measure::DEFAULT_APP_PCR;
use warden_keystore::attestation::{ChallengeFile, IdentityFile, MAX_NONCE};

use crate::tpm::{Tpm, attestation, credential};

/// The kernel's TPM resource manager.
const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";

/// What to do on the TPM.
#[derive(Debug, clap::Subcommand)]
pub enum DeviceCommand {
    /// Quote the SHA-256 PCRs over a verifier's nonce with the TPM's attestation key; prints
    /// the quote as JSON.
    Quote {
        /// The TPM (TCTI): `device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`.
        #[arg(long, default_value = DEFAULT_TCTI)]
        tcti: String,
        /// The verifier's nonce, hex (1 to 64 bytes).
        #[arg(long)]
        nonce: String,
        /// PCRs to quote, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [0u32, 2, 4, 7, DEFAULT_APP_PCR])]
        pcrs: Vec<u32>,
        /// Write the quote here instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Write the device's identity for enrolment (the TPM's endorsement key, its certificate
    /// when the TPM has one, and the attestation key's public area).
    Identity {
        /// The TPM (TCTI), as for `quote`.
        #[arg(long, default_value = DEFAULT_TCTI)]
        tcti: String,
        /// Where to write the identity (JSON).
        #[arg(long)]
        output: PathBuf,
    },
    /// Answer a verifier's challenge with the TPM (prints the recovered secret, hex).
    Activate {
        /// The TPM (TCTI), as for `quote`.
        #[arg(long, default_value = DEFAULT_TCTI)]
        tcti: String,
        /// The challenge (from `warden attest challenge`).
        #[arg(long)]
        challenge: PathBuf,
    },
}

fn open(tcti: &str) -> anyhow::Result<Tpm> {
    Tpm::open(tcti).with_context(|| format!("opening the TPM at {tcti}"))
}

/// Runs one command.
pub fn run(cmd: DeviceCommand) -> anyhow::Result<()> {
    match cmd {
        DeviceCommand::Quote {
            tcti,
            nonce,
            pcrs,
            output,
        } => {
            let nonce = parse_nonce(&nonce)?;
            let quote = attestation::quote(&open(&tcti)?, &nonce, &pcrs)?;
            let json = serde_json::to_string_pretty(&quote)?;
            match output {
                Some(p) => write(&p, &json)?,
                None => println!("{json}"),
            }
            Ok(())
        }
        DeviceCommand::Identity { tcti, output } => {
            let identity = credential::device_identity(&open(&tcti)?)?;
            write(
                &output,
                &serde_json::to_string_pretty(&IdentityFile::new(&identity)?)?,
            )?;
            println!(
                "device identity -> {} (send it to the verifier)",
                output.display()
            );
            Ok(())
        }
        DeviceCommand::Activate { tcti, challenge } => {
            let text = std::fs::read_to_string(&challenge)
                .with_context(|| format!("reading {}", challenge.display()))?;
            let file: ChallengeFile = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a challenge", challenge.display()))?;
            let secret = credential::activate_credential(&open(&tcti)?, &file.challenge()?)
                .context("the TPM did not open the challenge: it is for another TPM or key")?;
            println!("{}", hex::encode(secret));
            Ok(())
        }
    }
}

fn write(path: &Path, json: &str) -> anyhow::Result<()> {
    std::fs::write(path, format!("{json}\n")).with_context(|| format!("writing {}", path.display()))
}

/// A verifier's nonce from the command line (hex, 1 to [`MAX_NONCE`] bytes).
fn parse_nonce(hex_nonce: &str) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context as _;
    let nonce = hex::decode(hex_nonce).context("--nonce is not hex")?;
    if nonce.is_empty() || nonce.len() > MAX_NONCE {
        anyhow::bail!("--nonce holds 1 to {MAX_NONCE} bytes, not {}", nonce.len());
    }
    Ok(nonce)
}
