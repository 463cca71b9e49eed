//! `warden attest …`: measured boot from both ends. The verifier's side needs no TPM and runs
//! here (`verify` a quote, `challenge` a device to enrol its attestation key, `enrol` it on the
//! right answer). The device's side (`quote`, `identity`, `activate`) asks the running key
//! service (`--keyd-socket`, or the agent config's `keystore.keyd_socket`); on the TPM itself
//! (`--tcti`, or nothing named: keyd stopped, provisioning) it is `warden-keyd attest …`'s.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use p256::pkcs8::{DecodePublicKey as _, EncodePublicKey as _, LineEnding};
use warden_agent::config::{Config, KeystoreConfig};
use warden_agent::state_files::{Durability, write_atomically};
use warden_attest::boot::{credential, measure, quote};
use warden_keystore::KeyStore as _;
use warden_keystore::attestation::{ChallengeFile, IdentityFile, MAX_NONCE, Quote, SECRET_BYTES};
use warden_keystore::keyd::KeydClient;

/// `warden attest …`
#[derive(Debug, clap::Subcommand)]
pub enum AttestCommand {
    /// Quote the SHA-256 PCRs over a verifier's nonce with the TPM's attestation key; prints
    /// the quote as JSON. Through the running key service (`--keyd-socket`, or `--config`
    /// naming an agent config whose `[keystore]` has `keyd_socket`), or on the TPM itself
    /// (`--tcti`, the default; for provisioning, while keyd is stopped: `warden-keyd attest
    /// quote`).
    Quote {
        /// The TPM (TCTI): `device:/dev/tpmrm0` (the default when nothing else is named),
        /// `swtpm:host=127.0.0.1,port=2321`.
        #[arg(long, conflicts_with_all = ["keyd_socket", "config"])]
        tcti: Option<String>,
        /// Ask the running key service on this socket (needs the `quote` operation).
        #[arg(long, conflicts_with = "config")]
        keyd_socket: Option<PathBuf>,
        /// The agent's config: its `[keystore]` names keyd's socket.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The verifier's nonce, hex (1 to 64 bytes).
        #[arg(long)]
        nonce: String,
        /// PCRs to quote, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [0u32, 2, 4, 7, measure::DEFAULT_APP_PCR])]
        pcrs: Vec<u32>,
        /// Write the quote here instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Verify a quote off the TPM against the attestation key and a golden PCR file.
    Verify {
        /// The quote (JSON from `warden attest quote`).
        #[arg(long)]
        quote: PathBuf,
        /// The attestation key's public key, PEM (from `warden attest enrol`).
        #[arg(long)]
        ak: PathBuf,
        /// The nonce the verifier sent, hex.
        #[arg(long)]
        nonce: String,
        /// Golden PCR values: a JSON object {"PCR": "HEX SHA-256", ...}.
        #[arg(long)]
        golden: PathBuf,
        /// An application event log to check against the quoted application PCR.
        #[arg(long)]
        app_log: Option<PathBuf>,
        /// The application PCR.
        #[arg(long, default_value_t = measure::DEFAULT_APP_PCR)]
        app_pcr: u32,
    },
    /// On the device: write its identity for enrolment (the TPM's endorsement key and the
    /// attestation key's public area), through keyd or from the TPM itself.
    Identity {
        /// The TPM (TCTI), as for `quote` (default `device:/dev/tpmrm0`).
        #[arg(long, conflicts_with = "keyd_socket")]
        tcti: Option<String>,
        /// Ask the running key service on this socket (needs `attestation_identity`).
        #[arg(long)]
        keyd_socket: Option<PathBuf>,
        /// Where to write the identity (JSON).
        #[arg(long)]
        output: PathBuf,
    },
    /// On the verifier: check a device's endorsement key — against the one you trust for it
    /// (`--ek`, recorded at provisioning), or by its EK certificate, which must chain to a TPM
    /// manufacturer's CA you trust (`--ek-ca`) — and make a challenge only that TPM can
    /// answer, and only for that attestation key. The expected answer and the attestation key
    /// go to `--expected` (keep it private), the challenge to `--output`.
    Challenge {
        /// The device's identity (from `warden attest identity`).
        #[arg(long)]
        identity: PathBuf,
        /// The endorsement key you trust for this device, PEM.
        #[arg(long, conflicts_with = "ek_ca")]
        ek: Option<PathBuf>,
        /// TPM manufacturer CA certificates (PEM) the device's EK certificate must chain to.
        #[arg(long)]
        ek_ca: Option<PathBuf>,
        /// Intermediate CA certificates (PEM) between those and the EK certificate.
        #[arg(long, requires = "ek_ca")]
        ek_intermediates: Option<PathBuf>,
        /// Where to write the challenge for the device.
        #[arg(long)]
        output: PathBuf,
        /// Where to write what the answer must be (private, 0600).
        #[arg(long)]
        expected: PathBuf,
    },
    /// On the device: answer a challenge with the TPM (prints the recovered secret, hex).
    Activate {
        /// The TPM (TCTI), as for `quote` (default `device:/dev/tpmrm0`).
        #[arg(long, conflicts_with = "keyd_socket")]
        tcti: Option<String>,
        /// Ask the running key service on this socket (needs `activate_credential`).
        #[arg(long)]
        keyd_socket: Option<PathBuf>,
        /// The challenge (from `warden attest challenge`).
        #[arg(long)]
        challenge: PathBuf,
    },
    /// On the verifier: accept the device's answer; writes the attestation key (PEM) that
    /// `warden attest verify --ak` then trusts.
    Enrol {
        /// What `warden attest challenge` wrote to `--expected`.
        #[arg(long)]
        expected: PathBuf,
        /// The device's answer (hex, from `warden attest activate`).
        #[arg(long)]
        answer: String,
        /// Where to write the enrolled attestation key.
        #[arg(long)]
        ak_output: PathBuf,
    },
}

/// What the verifier keeps between `challenge` and `enrol`.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedFile {
    /// The secret, hex.
    secret: String,
    /// The AK to enrol once the answer matches, PEM.
    attestation_key: String,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not {what}", path.display()))
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

fn parse_nonce(hex_nonce: &str) -> anyhow::Result<Vec<u8>> {
    let nonce = hex::decode(hex_nonce).context("--nonce is not hex")?;
    if nonce.is_empty() || nonce.len() > MAX_NONCE {
        bail!("--nonce holds 1 to {MAX_NONCE} bytes, not {}", nonce.len());
    }
    Ok(nonce)
}

/// Reads a golden PCR file: `{"<pcr>": "<64 hex>"}`.
fn read_golden(path: &Path) -> anyhow::Result<BTreeMap<u32, [u8; 32]>> {
    let raw: BTreeMap<String, String> = read_json(path, "{\"pcr\": \"hex\"}")?;
    raw.into_iter()
        .map(|(k, v)| {
            let pcr: u32 = k
                .parse()
                .with_context(|| format!("{}: {k:?} is not a PCR number", path.display()))?;
            let bytes: [u8; 32] = hex::decode(&v)
                .ok()
                .and_then(|b| b.try_into().ok())
                .with_context(|| format!("{}: PCR {pcr} is not 32 bytes of hex", path.display()))?;
            Ok((pcr, bytes))
        })
        .collect()
}

/// `warden-keyd attest SUBCOMMAND --tcti TCTI REST…` (keyd stopped).
fn on_the_tpm(subcommand: &str, tcti: Option<String>, rest: Vec<OsString>) -> anyhow::Result<()> {
    let mut args: Vec<OsString> = vec!["attest".into(), subcommand.into()];
    if let Some(tcti) = tcti {
        args.extend(["--tcti".into(), tcti.into()]);
    }
    args.extend(rest);
    super::keyd::exec(args)
}

/// The key service an agent config names for quotes.
fn keyd_of(config: &Path) -> anyhow::Result<PathBuf> {
    match Config::load(config)?.keystore {
        Some(KeystoreConfig::Keyd { socket }) => Ok(socket),
        Some(KeystoreConfig::Development(_)) => bail!(
            "{}: the key store is the development one; only a TPM quotes (keystore.keyd_socket \
             naming a key service on a TPM)",
            config.display()
        ),
        None => bail!(
            "{}: no [keystore]; name keystore.keyd_socket or pass --keyd-socket / --tcti",
            config.display()
        ),
    }
}

fn connect(socket: &Path) -> anyhow::Result<KeydClient> {
    KeydClient::connect(socket)
        .with_context(|| format!("connecting to keyd at {}", socket.display()))
}

/// Runs one command.
pub fn run(cmd: AttestCommand) -> anyhow::Result<()> {
    match cmd {
        AttestCommand::Quote {
            tcti,
            keyd_socket,
            config,
            nonce,
            pcrs,
            output,
        } => {
            let socket = match (keyd_socket, config) {
                (Some(socket), _) => socket,
                (None, Some(config)) => keyd_of(&config)?,
                (None, None) => {
                    let mut rest: Vec<OsString> = vec![
                        "--nonce".into(),
                        nonce.into(),
                        "--pcrs".into(),
                        pcrs.iter()
                            .map(u32::to_string)
                            .collect::<Vec<_>>()
                            .join(",")
                            .into(),
                    ];
                    if let Some(o) = output {
                        rest.extend(["--output".into(), o.into()]);
                    }
                    return on_the_tpm("quote", tcti, rest);
                }
            };
            let nonce = parse_nonce(&nonce)?;
            let q = connect(&socket)?
                .quote(&nonce, &pcrs)
                .with_context(|| format!("quoting through keyd at {}", socket.display()))?;
            match output {
                Some(p) => write_json(&p, &q)?,
                None => println!("{}", serde_json::to_string_pretty(&q)?),
            }
            Ok(())
        }
        AttestCommand::Identity {
            tcti,
            keyd_socket,
            output,
        } => {
            let Some(socket) = keyd_socket else {
                return on_the_tpm("identity", tcti, vec!["--output".into(), output.into()]);
            };
            let id = connect(&socket)?
                .attestation_identity()
                .with_context(|| format!("asking keyd at {}", socket.display()))?;
            write_json(&output, &IdentityFile::new(&id)?)?;
            println!(
                "device identity -> {} (send it to the verifier)",
                output.display()
            );
            Ok(())
        }
        AttestCommand::Activate {
            tcti,
            keyd_socket,
            challenge,
        } => {
            let Some(socket) = keyd_socket else {
                return on_the_tpm(
                    "activate",
                    tcti,
                    vec!["--challenge".into(), challenge.into()],
                );
            };
            let file: ChallengeFile = read_json(&challenge, "a challenge")?;
            let secret = connect(&socket)?
                .activate_credential(&file.challenge()?)
                .context("the TPM did not open the challenge: it is for another TPM or key")?;
            println!("{}", hex::encode(secret));
            Ok(())
        }
        AttestCommand::Challenge {
            identity,
            ek,
            ek_ca,
            ek_intermediates,
            output,
            expected,
        } => challenge(&identity, ek, ek_ca, ek_intermediates, &output, &expected),
        AttestCommand::Enrol {
            expected,
            answer,
            ak_output,
        } => enrol(&expected, &answer, &ak_output),
        AttestCommand::Verify {
            quote,
            ak,
            nonce,
            golden,
            app_log,
            app_pcr,
        } => verify(&quote, &ak, &nonce, &golden, app_log.as_deref(), app_pcr),
    }
}

fn challenge(
    identity: &Path,
    ek: Option<PathBuf>,
    ek_ca: Option<PathBuf>,
    ek_intermediates: Option<PathBuf>,
    output: &Path,
    expected: &Path,
) -> anyhow::Result<()> {
    let file: IdentityFile = read_json(identity, "a device identity")?;
    let id = file
        .identity()
        .with_context(|| format!("{}: the device identity", identity.display()))?;
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let trusted = match (ek, ek_ca) {
        (Some(ek), _) => {
            let trusted = p256::PublicKey::from_public_key_pem(&read(&ek)?)
                .with_context(|| format!("{} is not a P-256 public key", ek.display()))?;
            if id.endorsement_key != trusted {
                bail!(
                    "the device's endorsement key is not the one in {}: not this device, or not \
                     enrolled",
                    ek.display()
                );
            }
            trusted
        }
        (None, Some(ca)) => {
            let roots = read(&ca)?;
            let intermediates = ek_intermediates.as_deref().map(read).transpose()?;
            let issued = credential::certified_endorsement_key(
                &id.endorsement_key,
                id.ek_certificate.as_deref(),
                &roots,
                intermediates.as_deref(),
                rustls_pki_types::UnixTime::now(),
            )?;
            println!("endorsement key certified by its manufacturer: {issued}");
            id.endorsement_key
        }
        (None, None) => bail!("name the trusted endorsement key (--ek) or CA (--ek-ca)"),
    };
    let (ak, name) = credential::check_ak_public_area(&id.ak_public_area)?;
    let mut secret = [0u8; SECRET_BYTES];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut secret);
    let challenge = credential::make_credential(&trusted, &name, &secret)?;
    let keep = ExpectedFile {
        secret: hex::encode(secret),
        attestation_key: ak.to_public_key_pem(LineEnding::LF)?,
    };
    write_atomically(
        expected,
        (serde_json::to_string_pretty(&keep)? + "\n").as_bytes(),
        0o600,
        Durability::Synced,
    )
    .with_context(|| format!("writing {}", expected.display()))?;
    write_json(output, &ChallengeFile::new(&challenge))?;
    println!(
        "challenge -> {} (for the device); expected answer -> {} (keep it private)",
        output.display(),
        expected.display()
    );
    Ok(())
}

fn enrol(expected: &Path, answer: &str, ak_output: &Path) -> anyhow::Result<()> {
    let keep: ExpectedFile = read_json(expected, "an expected answer")?;
    let want = hex::decode(&keep.secret).context("the expected secret is not hex")?;
    let got = hex::decode(answer.trim()).context("the answer is not hex")?;
    // Constant time: the comparison must not tell a guesser how close it came.
    let equal = want.len() == got.len()
        && want.iter().zip(&got).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if !equal {
        bail!(
            "the answer does not match: the attestation key is not in the TPM of the trusted \
             endorsement key; not enrolled"
        );
    }
    std::fs::write(ak_output, &keep.attestation_key)
        .with_context(|| format!("writing {}", ak_output.display()))?;
    println!(
        "attestation key enrolled -> {} (bound to the trusted endorsement key)",
        ak_output.display()
    );
    Ok(())
}

fn verify(
    quote_path: &Path,
    ak: &Path,
    nonce: &str,
    golden: &Path,
    app_log: Option<&Path>,
    app_pcr: u32,
) -> anyhow::Result<()> {
    let nonce = parse_nonce(nonce)?;
    let q: Quote = read_json(quote_path, "a quote")?;
    let ak_pem =
        std::fs::read_to_string(ak).with_context(|| format!("reading {}", ak.display()))?;
    let ak_key = p256::PublicKey::from_public_key_pem(&ak_pem)
        .with_context(|| format!("{} is not a P-256 public key", ak.display()))?;
    let golden = read_golden(golden)?;
    let verified = quote::verify_quote(&q, &ak_key, &nonce, &golden)?;
    println!(
        "quote verifies: {} PCR(s) quoted, {} golden value(s) match, TPM reset count {}",
        verified.pcrs.len(),
        golden.len(),
        verified.reset_count
    );
    if let Some(log) = app_log {
        let events = measure::AppEventLog::new(log).read()?;
        let value = verified
            .pcrs
            .get(&app_pcr)
            .with_context(|| format!("PCR {app_pcr} was not quoted"))?;
        measure::verify_app_log(&events, app_pcr, value)?;
        println!(
            "application log {}: {} model load(s) replay to PCR {app_pcr}",
            log.display(),
            events.len()
        );
        for e in events {
            println!(
                "  {} {} {} policy {}",
                e.model, e.version, e.root_digest, e.policy_digest
            );
        }
    }
    Ok(())
}
