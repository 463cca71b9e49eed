//! The operator's trust commands: `warden provision`, `warden attest quote|verify`, the
//! attestation key's enrolment (`warden attest identity|challenge|activate|enrol`: credential
//! activation binds the AK to the TPM's endorsement key), `warden keyd`, `warden status`.
//!
//! `provision` opens the key store backend named in keyd.toml directly: run it as the key
//! service's user while keyd is stopped (keyd is the only process that holds the hardware at
//! run time). `status` asks a running keyd when given its socket, else opens the backend.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use warden_attest::boot::{measure, quote};
use warden_attest::keystore::{self, Counter, KeyStore, KeyStoreError, Role};

use crate::admission;
use crate::keyd::{KeydClient, KeydConfig};

/// `warden attest …`
#[derive(Debug, clap::Subcommand)]
pub enum AttestCommand {
    /// Quote the SHA-256 PCRs over a verifier's nonce with the TPM's attestation key; prints
    /// the quote as JSON. Through the running key service (`--keyd-socket`, or `--config`
    /// naming an agent config whose `[keystore]` has `keyd_socket`), or straight from the TPM
    /// (`--tcti`, the default; for provisioning, while keyd is stopped).
    Quote {
        /// The TPM (TCTI): `device:/dev/tpmrm0` (the default when nothing else is named),
        /// `swtpm:host=127.0.0.1,port=2321`.
        #[arg(long, conflicts_with_all = ["keyd_socket", "config"])]
        tcti: Option<String>,
        /// Ask the running key service on this socket (needs the `quote` operation).
        #[arg(long, conflicts_with = "config")]
        keyd_socket: Option<PathBuf>,
        /// The agent's config: its `[keystore]` names keyd's socket or an in-process TPM.
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
        /// The attestation key's public key, PEM (printed by `warden provision`).
        #[arg(long)]
        ak: PathBuf,
        /// The nonce the verifier sent, hex.
        #[arg(long)]
        nonce: String,
        /// Golden PCR values: a JSON object {"<pcr>": "<hex sha256>", ...}.
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
    /// attestation key's public area), straight from the TPM.
    Identity {
        /// The TPM (TCTI), as for `quote` (default `device:/dev/tpmrm0`).
        #[arg(long, conflicts_with = "keyd_socket")]
        tcti: Option<String>,
        /// Ask the running key service on this socket (needs `attestation_identity`).
        #[arg(long)]
        keyd_socket: Option<PathBuf>,
        /// Where to write the identity (JSON).
        #[arg(long, default_value = "identity.json")]
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
        #[arg(long, required_unless_present = "ek_ca", conflicts_with = "ek_ca")]
        ek: Option<PathBuf>,
        /// TPM manufacturer CA certificates (PEM) the device's EK certificate must chain to.
        #[arg(long)]
        ek_ca: Option<PathBuf>,
        /// Intermediate CA certificates (PEM) between those and the EK certificate.
        #[arg(long, requires = "ek_ca")]
        ek_intermediates: Option<PathBuf>,
        /// Where to write the challenge for the device.
        #[arg(long, default_value = "challenge.json")]
        output: PathBuf,
        /// Where to write what the answer must be (private, 0600).
        #[arg(long, default_value = "expected.json")]
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
        #[arg(long, default_value = "ak.pem")]
        ak_output: PathBuf,
    },
}

/// The TPM named by `--tcti`, or the kernel's resource manager.
fn open_tpm(tcti: Option<String>) -> anyhow::Result<warden_attest::tpm::Tpm> {
    let tcti = tcti.unwrap_or_else(|| "device:/dev/tpmrm0".to_owned());
    warden_attest::tpm::Tpm::open(&tcti).with_context(|| format!("opening the TPM at {tcti}"))
}

/// A device's identity on the wire (`warden attest identity`).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    /// The EK, PEM.
    endorsement_key: String,
    /// The AK's `TPMT_PUBLIC`, base64.
    ak_public_area: String,
    /// The EK's certificate from the TPM (NV 0x01c0000a), base64 DER; absent when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ek_certificate: Option<String>,
}

/// A challenge on the wire (`warden attest challenge` → `activate`).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ChallengeFile {
    /// `TPM2B_ID_OBJECT` contents, base64.
    credential_blob: String,
    /// The seed encrypted to the EK (`TPMS_ECC_POINT`), base64.
    encrypted_seed: String,
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

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(text: &str, what: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .with_context(|| format!("{what} is not base64"))
}

/// A role's anchors on the command line: `ROLE=FILE.pem`.
#[derive(Debug, Clone)]
pub struct AnchorArg {
    role: Role,
    path: PathBuf,
}

impl std::str::FromStr for AnchorArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (role, path) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not ROLE=FILE"))?;
        let role = Role::ALL
            .into_iter()
            .find(|r| r.name() == role)
            .ok_or_else(|| {
                format!(
                    "unknown role {role:?}; one of {}",
                    Role::ALL.map(Role::name).join(", ")
                )
            })?;
        Ok(Self {
            role,
            path: path.into(),
        })
    }
}

/// Options of `warden provision`.
#[derive(Debug, clap::Args)]
pub struct ProvisionArgs {
    /// keyd's config; its `[keystore]` names the backend to enrol.
    #[arg(long, default_value = crate::keyd::config::DEFAULT_PATH)]
    pub keyd_config: PathBuf,
    /// Install a role's anchors from a PEM file, `ROLE=FILE` (repeatable). Roles:
    /// model-signers, release-authority, fleet-authority, tenant-cas. Anchors are locked once
    /// installed.
    #[arg(long = "anchor")]
    pub anchors: Vec<AnchorArg>,
    /// Write a certificate signing request for the device key here (signed by the key store).
    #[arg(long)]
    pub csr: Option<PathBuf>,
    /// The device identity's DNS name (subject CN and SAN of the CSR).
    #[arg(long, default_value = "warden-device")]
    pub device_name: String,
    /// TPM only: create the attestation key and write its public key (PEM) here.
    #[arg(long)]
    pub ak: Option<PathBuf>,
}

/// Options of `warden status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The agent's config: report the running agent's models (ready, restarting, quarantined,
    /// withdrawn) from its state directory, and the machine's accelerators.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Ask the running key service on this socket.
    #[arg(long, conflicts_with = "keyd_config")]
    pub keyd_socket: Option<PathBuf>,
    /// Or open the backend of this keyd config directly (keyd stopped).
    #[arg(long)]
    pub keyd_config: Option<PathBuf>,
    /// The policy directory whose digest releases must pin.
    #[arg(long, default_value = "/etc/warden/policies")]
    pub policies: PathBuf,
}

/// The device key as an rcgen signing key, so a CSR is signed inside the key store.
struct StoreKey<'a> {
    store: &'a dyn KeyStore,
    point: Vec<u8>,
}

impl rcgen::PublicKeyData for StoreKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for StoreKey<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.store
            .sign(msg)
            .map(|s| s.to_der().as_bytes().to_vec())
            .map_err(|e| {
                tracing::error!(error = %e, "the key store refused to sign the CSR");
                rcgen::Error::RemoteKeyError
            })
    }
}

/// A PKCS#10 request for the device key, signed by the key store.
pub fn device_csr(store: &dyn KeyStore, device_name: &str) -> anyhow::Result<String> {
    let public = store.device_public_key()?;
    let key = StoreKey {
        store,
        point: public.to_encoded_point(false).as_bytes().to_vec(),
    };
    let mut params = rcgen::CertificateParams::new(vec![device_name.to_owned()])
        .context("the device name is not a valid DNS name")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, device_name);
    Ok(params.serialize_request(&key)?.pem()?)
}

/// Checks that anchors parse before they are locked in for good.
fn check_anchor_pem(role: Role, pem: &[u8]) -> anyhow::Result<()> {
    match role {
        Role::TenantCas => {
            use rustls_pki_types::pem::PemObject as _;
            let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(pem)
                .collect::<Result<_, _>>()
                .with_context(|| format!("the {role} anchors are not PEM certificates"))?;
            if certs.is_empty() {
                bail!("the {role} anchors hold no certificate");
            }
        }
        _ => {
            admission::verifiers_from_pem(role, pem)?;
        }
    }
    Ok(())
}

/// Runs `warden provision`.
pub fn provision(args: &ProvisionArgs) -> anyhow::Result<()> {
    let config = KeydConfig::load(&args.keyd_config)?;
    let store = keystore::open(&config.keystore).context("opening the key store (`keystore`)")?;
    let info = store.describe();
    println!("backend: {info}");
    let public = store.ensure_device_key()?;
    let spki = public
        .to_public_key_pem(LineEnding::LF)
        .context("encoding the device public key")?;
    println!("device key: ok (ECDSA P-256)\n{spki}");
    for a in &args.anchors {
        let pem = std::fs::read(&a.path)
            .with_context(|| format!("reading the {} anchors {}", a.role, a.path.display()))?;
        check_anchor_pem(a.role, &pem)?;
        match store.install_anchors(a.role, &pem) {
            Ok(()) => println!("anchors {}: installed and locked", a.role),
            Err(KeyStoreError::AnchorsLocked { .. })
                if store.anchors(a.role)?.as_deref() == Some(pem.as_slice()) =>
            {
                println!("anchors {}: already installed (same bytes)", a.role);
            }
            Err(e) => return Err(e).context(format!("installing the {} anchors", a.role)),
        }
    }
    if let Some(path) = &args.csr {
        let csr = device_csr(store.as_ref(), &args.device_name)?;
        std::fs::write(path, &csr).with_context(|| format!("writing {}", path.display()))?;
        println!(
            "device CSR for {} -> {} (have the device CA sign it; serve TLS with the resulting certificate)",
            args.device_name,
            path.display()
        );
    }
    if let Some(path) = &args.ak {
        let keystore::BackendConfig::Tpm(tpm_config) = &config.keystore else {
            bail!("--ak needs the tpm backend");
        };
        drop(store);
        let tpm = warden_attest::tpm::Tpm::open(&tpm_config.tcti)?;
        let ak = quote::ensure_attestation_key(&tpm)?;
        let pem = ak
            .to_public_key_pem(LineEnding::LF)
            .context("encoding the AK")?;
        std::fs::write(path, &pem).with_context(|| format!("writing {}", path.display()))?;
        println!(
            "attestation key -> {} (enrol it with the verifier)",
            path.display()
        );
    }
    if info.development_only {
        println!("WARNING: DEVELOPMENT-ONLY key store: do not use this appliance in production");
    }
    Ok(())
}

fn parse_nonce(hex_nonce: &str) -> anyhow::Result<Vec<u8>> {
    let nonce = hex::decode(hex_nonce).context("--nonce is not hex")?;
    if nonce.is_empty() || nonce.len() > quote::MAX_NONCE {
        bail!(
            "--nonce holds 1 to {} bytes, not {}",
            quote::MAX_NONCE,
            nonce.len()
        );
    }
    Ok(nonce)
}

/// Reads a golden PCR file: `{"<pcr>": "<64 hex>"}`.
pub fn read_golden(path: &Path) -> anyhow::Result<BTreeMap<u32, [u8; 32]>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let raw: BTreeMap<String, String> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not {{\"pcr\": \"hex\"}}", path.display()))?;
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

/// Who answers `warden attest quote`.
#[derive(Debug, PartialEq, Eq)]
enum QuoteSource {
    /// The TPM itself (TCTI).
    Tpm(String),
    /// The key service's socket.
    Keyd(PathBuf),
}

fn quote_source(
    tcti: Option<String>,
    keyd_socket: Option<PathBuf>,
    config: Option<&Path>,
) -> anyhow::Result<QuoteSource> {
    if let Some(socket) = keyd_socket {
        return Ok(QuoteSource::Keyd(socket));
    }
    if let Some(tcti) = tcti {
        return Ok(QuoteSource::Tpm(tcti));
    }
    let Some(path) = config else {
        return Ok(QuoteSource::Tpm("device:/dev/tpmrm0".to_owned()));
    };
    let config = crate::config::Config::load(path)?;
    match config.keystore {
        Some(crate::config::KeystoreConfig::Keyd { socket }) => Ok(QuoteSource::Keyd(socket)),
        Some(crate::config::KeystoreConfig::InProcess(keystore::BackendConfig::Tpm(t))) => {
            Ok(QuoteSource::Tpm(t.tcti))
        }
        Some(_) => bail!(
            "{}: the key store is not a TPM; only a TPM quotes (keystore.backend = \"tpm\" or keystore.keyd_socket)",
            path.display()
        ),
        None => bail!(
            "{}: no [keystore]; name keystore.keyd_socket or pass --keyd-socket / --tcti",
            path.display()
        ),
    }
}

/// Runs `warden attest …`.
pub fn attest(cmd: AttestCommand) -> anyhow::Result<()> {
    use p256::pkcs8::DecodePublicKey as _;
    use warden_attest::boot::credential;
    match cmd {
        AttestCommand::Identity {
            tcti,
            keyd_socket,
            output,
        } => {
            let id = match keyd_socket {
                Some(socket) => KeydClient::connect(&socket)?
                    .attestation_identity()
                    .with_context(|| format!("asking keyd at {}", socket.display()))?,
                None => credential::device_identity(&open_tpm(tcti)?)?,
            };
            let file = IdentityFile {
                endorsement_key: id.endorsement_key.to_public_key_pem(LineEnding::LF)?,
                ak_public_area: b64(&id.ak_public_area),
                ek_certificate: id.ek_certificate.as_deref().map(b64),
            };
            std::fs::write(&output, serde_json::to_string_pretty(&file)? + "\n")
                .with_context(|| format!("writing {}", output.display()))?;
            println!(
                "device identity -> {} (send it to the verifier)",
                output.display()
            );
            Ok(())
        }
        AttestCommand::Challenge {
            identity,
            ek,
            ek_ca,
            ek_intermediates,
            output,
            expected,
        } => {
            let id: IdentityFile = read_json(&identity, "a device identity")?;
            let claimed = p256::PublicKey::from_public_key_pem(&id.endorsement_key)
                .context("the identity's endorsement key is not a P-256 public key")?;
            let area = unb64(&id.ak_public_area, "the attestation key's public area")?;
            let trusted = match (ek, ek_ca) {
                (Some(ek), _) => {
                    let trusted_pem = std::fs::read_to_string(&ek)
                        .with_context(|| format!("reading {}", ek.display()))?;
                    let trusted = p256::PublicKey::from_public_key_pem(&trusted_pem)
                        .with_context(|| format!("{} is not a P-256 public key", ek.display()))?;
                    if claimed != trusted {
                        bail!(
                            "the device's endorsement key is not the one in {}: not this \
                             device, or not enrolled",
                            ek.display()
                        );
                    }
                    trusted
                }
                (None, Some(ca)) => {
                    let read = |p: &PathBuf| {
                        std::fs::read_to_string(p)
                            .with_context(|| format!("reading {}", p.display()))
                    };
                    let roots = read(&ca)?;
                    let intermediates = ek_intermediates.as_ref().map(read).transpose()?;
                    let certificate = id
                        .ek_certificate
                        .as_deref()
                        .map(|c| unb64(c, "the EK certificate"))
                        .transpose()?;
                    let issued = credential::certified_endorsement_key(
                        &claimed,
                        certificate.as_deref(),
                        &roots,
                        intermediates.as_deref(),
                        rustls_pki_types::UnixTime::now(),
                    )?;
                    println!("endorsement key certified by its manufacturer: {issued}");
                    claimed
                }
                (None, None) => bail!("name the trusted endorsement key (--ek) or CA (--ek-ca)"),
            };
            let (ak, name) = credential::check_ak_public_area(&area)?;
            let mut secret = [0u8; credential::SECRET_BYTES];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut secret);
            let challenge = credential::make_credential(&trusted, &name, &secret)?;
            let keep = ExpectedFile {
                secret: hex::encode(secret),
                attestation_key: ak.to_public_key_pem(LineEnding::LF)?,
            };
            crate::state_files::write_atomically(
                &expected,
                (serde_json::to_string_pretty(&keep)? + "\n").as_bytes(),
                0o600,
                crate::state_files::Durability::Synced,
            )
            .with_context(|| format!("writing {}", expected.display()))?;
            let file = ChallengeFile {
                credential_blob: b64(&challenge.credential_blob),
                encrypted_seed: b64(&challenge.encrypted_seed),
            };
            std::fs::write(&output, serde_json::to_string_pretty(&file)? + "\n")
                .with_context(|| format!("writing {}", output.display()))?;
            println!(
                "challenge -> {} (for the device); expected answer -> {} (keep it private)",
                output.display(),
                expected.display()
            );
            Ok(())
        }
        AttestCommand::Activate {
            tcti,
            keyd_socket,
            challenge,
        } => {
            let c: ChallengeFile = read_json(&challenge, "a challenge")?;
            let challenge = credential::Challenge {
                credential_blob: unb64(&c.credential_blob, "the credential blob")?,
                encrypted_seed: unb64(&c.encrypted_seed, "the encrypted seed")?,
            };
            let not_ours = "the TPM did not open the challenge: it is for another TPM or key";
            let secret = match keyd_socket {
                Some(socket) => KeydClient::connect(&socket)?
                    .activate_credential(&challenge)
                    .context(not_ours)?,
                None => credential::activate_credential(&open_tpm(tcti)?, &challenge)
                    .context(not_ours)?,
            };
            println!("{}", hex::encode(secret));
            Ok(())
        }
        AttestCommand::Enrol {
            expected,
            answer,
            ak_output,
        } => {
            let keep: ExpectedFile = read_json(&expected, "an expected answer")?;
            let want = hex::decode(&keep.secret).context("the expected secret is not hex")?;
            let got = hex::decode(answer.trim()).context("the answer is not hex")?;
            // Constant time: the comparison must not tell a guesser how close it came.
            let equal = want.len() == got.len()
                && want.iter().zip(&got).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
            if !equal {
                bail!(
                    "the answer does not match: the attestation key is not in the TPM of the \
                     trusted endorsement key; not enrolled"
                );
            }
            std::fs::write(&ak_output, &keep.attestation_key)
                .with_context(|| format!("writing {}", ak_output.display()))?;
            println!(
                "attestation key enrolled -> {} (bound to the trusted endorsement key)",
                ak_output.display()
            );
            Ok(())
        }
        AttestCommand::Quote {
            tcti,
            keyd_socket,
            config,
            nonce,
            pcrs,
            output,
        } => {
            let nonce = parse_nonce(&nonce)?;
            let q = match quote_source(tcti, keyd_socket, config.as_deref())? {
                QuoteSource::Keyd(socket) => KeydClient::connect(&socket)?
                    .quote(&nonce, &pcrs)
                    .with_context(|| format!("quoting through keyd at {}", socket.display()))?,
                QuoteSource::Tpm(tcti) => {
                    let tpm = warden_attest::tpm::Tpm::open(&tcti)?;
                    quote::quote(&tpm, &nonce, &pcrs)?
                }
            };
            let json = serde_json::to_string_pretty(&q)?;
            match output {
                Some(p) => std::fs::write(&p, json + "\n")
                    .with_context(|| format!("writing {}", p.display()))?,
                None => println!("{json}"),
            }
            Ok(())
        }
        AttestCommand::Verify {
            quote: quote_path,
            ak,
            nonce,
            golden,
            app_log,
            app_pcr,
        } => {
            use p256::pkcs8::DecodePublicKey as _;
            let nonce = parse_nonce(&nonce)?;
            let q: quote::Quote = serde_json::from_str(
                &std::fs::read_to_string(&quote_path)
                    .with_context(|| format!("reading {}", quote_path.display()))?,
            )
            .with_context(|| format!("{} is not a quote", quote_path.display()))?;
            let ak_pem = std::fs::read_to_string(&ak)
                .with_context(|| format!("reading {}", ak.display()))?;
            let ak_key = p256::PublicKey::from_public_key_pem(&ak_pem)
                .with_context(|| format!("{} is not a P-256 public key", ak.display()))?;
            let golden = read_golden(&golden)?;
            let verified = quote::verify_quote(&q, &ak_key, &nonce, &golden)?;
            println!(
                "quote verifies: {} PCR(s) quoted, {} golden value(s) match, TPM reset count {}",
                verified.pcrs.len(),
                golden.len(),
                verified.reset_count
            );
            if let Some(log) = app_log {
                let events = measure::AppEventLog::new(&log).read()?;
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
    }
}

/// Runs `warden keyd --config FILE` until SIGTERM or SIGINT.
pub fn keyd(config_path: &Path) -> anyhow::Result<()> {
    let config = KeydConfig::load(config_path)?;
    let store = keystore::open(&config.keystore).with_context(|| {
        format!(
            "{}: opening the key store (`keystore`)",
            config_path.display()
        )
    })?;
    let socket_gid = config.socket_gid(config_path)?;
    let info = store.describe();
    if info.development_only {
        tracing::warn!(backend = %info, "keyd: DEVELOPMENT-ONLY key store: nothing is hardware-protected");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let listener =
            crate::keyd::bind_with_group(&config.socket, socket_gid).with_context(|| {
                format!(
                    "{}: binding `socket` {}",
                    config_path.display(),
                    config.socket.display()
                )
            })?;
        tracing::info!(
            socket = %config.socket.display(),
            backend = info.kind,
            principals = config.principals.len(),
            "keyd: serving"
        );
        let socket = config.socket.clone();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        };
        crate::keyd::serve(listener, Arc::new(config), store, shutdown).await;
        let _ = std::fs::remove_file(&socket);
        tracing::info!("keyd: stopped");
        Ok(())
    })
}

/// What `warden status` reports, as lines; `Err` lines are problems with a hint.
pub fn status_lines(store: &dyn KeyStore, policies: &Path) -> Vec<Result<String, String>> {
    let mut out = Vec::new();
    let info = store.describe();
    if info.development_only {
        out.push(Err(format!(
            "key store: {info}\n  hint: choose backend = \"tpm\" or \"pkcs11\" in keyd.toml for production"
        )));
    } else {
        out.push(Ok(format!("key store: {info}")));
    }
    let c = store.capabilities();
    out.push(Ok(format!(
        "capabilities: anchors {}{}, device key {}{}, seal {}{}, counters {}{}, PCRs and quotes {}",
        yes(c.anchors),
        if c.anchors_hardware_locked {
            " (hardware-locked)"
        } else {
            ""
        },
        yes(c.device_key),
        if c.device_key_non_exportable {
            " (non-exportable)"
        } else {
            ""
        },
        yes(c.seal),
        if c.seal_bound_to_pcrs {
            " (bound to PCRs)"
        } else {
            ""
        },
        yes(c.counters),
        if c.counters_hardware_monotonic {
            " (hardware-monotonic)"
        } else {
            ""
        },
        yes(c.pcrs),
    )));
    match store.device_public_key() {
        Ok(_) => out.push(Ok("device key: present".to_owned())),
        Err(e) => out.push(Err(format!(
            "device key: {e}\n  hint: run `warden provision --keyd-config …`"
        ))),
    }
    for role in Role::ALL {
        match store.anchors(role) {
            Ok(Some(pem)) => out.push(Ok(format!("anchors {role}: present ({} bytes)", pem.len()))),
            Ok(None) => out.push(Err(format!(
                "anchors {role}: ABSENT\n  hint: `warden provision --anchor {role}=FILE.pem`"
            ))),
            Err(e) => out.push(Err(format!("anchors {role}: {e}"))),
        }
    }
    for counter in [Counter::RevocationSerial, Counter::PolicySetSerial] {
        match store.counter(counter) {
            Ok(v) => out.push(Ok(format!("counter {counter}: {v}"))),
            Err(e) => out.push(Err(format!("counter {counter}: {e}"))),
        }
    }
    match admission::policy_set_digest(policies) {
        Ok(d) => out.push(Ok(format!(
            "policy set {}: {d} (releases must pin this digest)",
            policies.display()
        ))),
        Err(e) => out.push(Err(format!(
            "policy set: {e}\n  hint: pass --policies DIR (the directory holding serving/startup.rego)"
        ))),
    }
    out
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Runs `warden status`; fails when something is wrong.
pub fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let mut lines = Vec::new();
    if let Some(config) = &args.config {
        let config = crate::config::Config::load(config)?;
        lines.extend(crate::status::report_lines(&config.state.directory));
        match crate::policy_push::active_set(&config.state.directory) {
            Ok(None) => {}
            Ok(Some(set)) => {
                let policies = set.join(crate::policy_push::POLICIES);
                lines.push(match admission::policy_set_digest(&policies) {
                    Ok(d) => Ok(format!(
                        "policy set in force: pushed by the fleet authority, {d} ({})",
                        set.display()
                    )),
                    Err(e) => Err(format!("pushed policy set {}: {e}", set.display())),
                });
            }
            Err(e) => lines.push(Err(format!("pushed policy set: {e}"))),
        }
    }
    let store: Option<Arc<dyn KeyStore>> = match (&args.keyd_socket, &args.keyd_config) {
        (Some(socket), _) => Some(Arc::new(KeydClient::connect(socket)?)),
        (None, Some(config)) => {
            let config = KeydConfig::load(config)?;
            Some(keystore::open(&config.keystore).context("opening the key store (`keystore`)")?)
        }
        (None, None) if args.config.is_some() => None,
        (None, None) => bail!(
            "name the agent (--config FILE) and/or the key service (--keyd-socket PATH or \
             --keyd-config FILE)"
        ),
    };
    if let Some(store) = store {
        lines.extend(status_lines(store.as_ref(), &args.policies));
    }
    let mut problems = 0;
    for line in lines {
        match line {
            Ok(l) => println!("{l}"),
            Err(l) => {
                problems += 1;
                println!("{l}");
            }
        }
    }
    if problems > 0 {
        bail!("{problems} problem(s): see the hints above");
    }
    println!("ok");
    Ok(())
}
