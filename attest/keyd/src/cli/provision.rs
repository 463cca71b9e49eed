//! `warden-keyd provision`: enrols the key store named in keyd's config — the device key, each
//! role's anchors (checked, then locked for good), a CSR for the device key signed inside the
//! key store, and on a TPM the attestation key. Idempotent: a second run with the same anchors
//! changes nothing; different anchors are refused.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use warden_keystore::config::BackendConfig;
use warden_keystore::{KeyStore, KeyStoreError, Role};

use crate::config::KeydConfig;
use crate::tpm::{Tpm, attestation};

/// A role's anchors on the command line: `ROLE=FILE.pem`.
#[derive(Debug, Clone)]
pub struct AnchorArg {
    role: Role,
    path: PathBuf,
}

impl std::str::FromStr for AnchorArg {
    type Err = AnchorArgError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (role, path) = s
            .split_once('=')
            .ok_or_else(|| AnchorArgError::NotRoleFile(s.to_owned()))?;
        let role = Role::ALL
            .into_iter()
            .find(|r| r.name() == role)
            .ok_or_else(|| AnchorArgError::UnknownRole(role.to_owned()))?;
        Ok(Self {
            role,
            path: path.into(),
        })
    }
}

/// An `--anchor` argument that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum AnchorArgError {
    #[error("{0:?} is not ROLE=FILE")]
    NotRoleFile(String),
    #[error(
        "unknown role {0:?}; one of model-signers, release-authority, fleet-authority, tenant-cas"
    )]
    UnknownRole(String),
}

/// Options of `warden-keyd provision`.
#[derive(Debug, clap::Args)]
pub struct ProvisionArgs {
    /// keyd's config; its `[keystore]` names the backend to enrol.
    #[arg(long, short, alias = "keyd-config", default_value = crate::config::DEFAULT_PATH)]
    pub config: PathBuf,
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
            warden_attest::anchors::verifiers_from_pem(role, pem)?;
        }
    }
    Ok(())
}

/// Runs `warden-keyd provision`.
pub fn run(args: &ProvisionArgs) -> anyhow::Result<()> {
    let config = KeydConfig::load(&args.config)?;
    let store =
        crate::backend::open(&config.keystore).context("opening the key store (`keystore`)")?;
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
        let BackendConfig::Tpm(tpm_config) = &config.keystore else {
            bail!("--ak needs the tpm backend");
        };
        // swtpm serves one connection at a time: let the key store's go first.
        drop(store);
        let tpm = Tpm::open(&tpm_config.tcti)?;
        let ak = attestation::ensure_attestation_key(&tpm)?;
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
