//! The client-certificate verifier of an HTTPS listener: rustls's WebPKI verifier over the
//! configured client CAs, with certificate revocation lists, behind a handle that swaps in a
//! verifier built from freshly read CRLs (SIGHUP) without rebuilding the listener. A handshake
//! in progress keeps the verifier it started with.
//!
//! With CRLs configured, the client's own certificate is checked against the CRL of the CA
//! that issued it, and a client whose issuer has no CRL among them is refused (the revocation
//! status cannot be known: rustls's default, kept). The CRLs' own signatures are checked
//! against the CAs by webpki.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::DistinguishedName;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};

/// Why a client verifier could not be built or reloaded.
#[derive(Debug, thiserror::Error)]
pub enum ClientVerifierError {
    /// A CRL file.
    #[error(transparent)]
    Crl(#[from] crate::crl::CrlFileError),
    /// The CAs or CRLs refused by the verifier (a CRL that does not parse, say).
    #[error("client CA {path} and its revocation lists: {message}")]
    Build { path: PathBuf, message: String },
}

/// A listener's client verifier, its CRLs reloadable.
#[derive(Debug)]
pub struct ClientVerifier {
    provider: Arc<CryptoProvider>,
    roots: Arc<rustls::RootCertStore>,
    /// Where the client CAs came from (for messages).
    client_ca: PathBuf,
    allow_unauthenticated: bool,
    crls: Vec<PathBuf>,
    hints: Vec<DistinguishedName>,
    current: RwLock<Arc<dyn ClientCertVerifier>>,
}

impl ClientVerifier {
    /// Builds the verifier, reading the CRLs now; a CRL that does not read stops the start.
    pub fn new(
        provider: Arc<CryptoProvider>,
        roots: rustls::RootCertStore,
        client_ca: &Path,
        allow_unauthenticated: bool,
        crls: &[PathBuf],
    ) -> Result<ClientVerifier, ClientVerifierError> {
        let roots = Arc::new(roots);
        let hints = roots.subjects();
        let inner = build(
            &provider,
            &roots,
            client_ca,
            allow_unauthenticated,
            &read_crls(crls)?,
        )?;
        Ok(ClientVerifier {
            provider,
            roots,
            client_ca: client_ca.to_path_buf(),
            allow_unauthenticated,
            crls: crls.to_vec(),
            hints,
            current: RwLock::new(inner),
        })
    }

    /// Re-reads the CRLs and swaps in a verifier built from them; on any error the verifier in
    /// use stays. Returns how many CRLs are in force.
    pub fn reload_crls(&self) -> Result<usize, ClientVerifierError> {
        let crls = read_crls(&self.crls)?;
        let inner = build(
            &self.provider,
            &self.roots,
            &self.client_ca,
            self.allow_unauthenticated,
            &crls,
        )?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = inner;
        Ok(crls.len())
    }

    fn inner(&self) -> Arc<dyn ClientCertVerifier> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn build(
    provider: &Arc<CryptoProvider>,
    roots: &Arc<rustls::RootCertStore>,
    client_ca: &Path,
    allow_unauthenticated: bool,
    crls: &[CertificateRevocationListDer<'static>],
) -> Result<Arc<dyn ClientCertVerifier>, ClientVerifierError> {
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
    if !crls.is_empty() {
        builder = builder
            .with_crls(crls.iter().cloned())
            .only_check_end_entity_revocation();
    }
    if allow_unauthenticated {
        builder = builder.allow_unauthenticated();
    }
    builder.build().map_err(|e| ClientVerifierError::Build {
        path: client_ca.to_path_buf(),
        message: e.to_string(),
    })
}

/// The CRLs of the files, for rustls.
fn read_crls(
    paths: &[PathBuf],
) -> Result<Vec<CertificateRevocationListDer<'static>>, ClientVerifierError> {
    Ok(crate::crl::read_crl_files(paths)?
        .into_iter()
        .map(CertificateRevocationListDer::from)
        .collect())
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner().offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner().client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner().supported_verify_schemes()
    }
}
