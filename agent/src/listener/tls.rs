//! TLS for the inference listener: rustls on the ring provider, TLS 1.3 and 1.2 only (rustls
//! implements only AEAD suites with forward secrecy, so nothing weaker can be negotiated),
//! client certificates required by default, ALPN for HTTP/2 and HTTP/1.1.

use crate::config::TlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}: {message}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{path} holds no {what}")]
    Empty { what: &'static str, path: PathBuf },
    #[error("client CA {path}: {message}")]
    ClientCa { path: PathBuf, message: String },
    #[error("server certificate and key: {0}")]
    ServerIdentity(rustls::Error),
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// Reads every certificate of a PEM file.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem {
            what: "certificates",
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what: "certificate",
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        what: "a private key",
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// A server config builder with the listener's protocol versions and client-certificate
/// policy: certificates chaining to `client_ca` are required, unless the insecure opt-in
/// allows anonymous clients (then a certificate, when offered, must still chain).
pub fn builder_with_client_auth(
    client_ca: Option<&Path>,
    insecure_allow_anonymous_clients: bool,
) -> Result<rustls::ConfigBuilder<rustls::ServerConfig, rustls::server::WantsServerCert>, TlsError>
{
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    match client_ca {
        Some(ca_path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in load_certificates(ca_path)? {
                roots.add(cert).map_err(|e| TlsError::ClientCa {
                    path: ca_path.to_path_buf(),
                    message: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if insecure_allow_anonymous_clients {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier.build().map_err(|e| TlsError::ClientCa {
                path: ca_path.to_path_buf(),
                message: e.to_string(),
            })?;
            Ok(builder.with_client_cert_verifier(verifier))
        }
        None if insecure_allow_anonymous_clients => Ok(builder.with_no_client_auth()),
        None => Err(TlsError::Setup(
            "no client CA: client certificates are required unless insecure_allow_anonymous_clients"
                .into(),
        )),
    }
}

/// Builds the listener's rustls configuration from the `[tls]` table.
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder = builder_with_client_auth(
        cfg.client_ca.as_deref(),
        cfg.insecure_allow_anonymous_clients,
    )?;
    let chain = load_certificates(&cfg.certificate)?;
    // Without a key file the key store's device key signs (crate::listener::keystore_tls); this
    // file-key path is only reached when config validation required the file.
    let key_path = cfg.private_key.as_deref().ok_or_else(|| {
        TlsError::Setup("tls.private_key is not set (the key store signs handshakes)".into())
    })?;
    let key = load_private_key(key_path)?;
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(TlsError::ServerIdentity)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Who is on the other end of a connection, as the client certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientIdentity {
    /// A certificate's URI SAN (a SPIFFE ID, for example), the preferred name.
    Uri(String),
    /// A certificate without a URI SAN, named by its subject common name.
    CommonName(String),
    /// Connections without a certificate (only with `insecure_allow_anonymous_clients`).
    Anonymous,
}

impl ClientIdentity {
    /// Reads the identity from the verified leaf certificate of a connection.
    pub fn from_peer_certificates(certs: Option<&[CertificateDer<'_>]>) -> ClientIdentity {
        let Some(leaf) = certs.and_then(|c| c.first()) else {
            return ClientIdentity::Anonymous;
        };
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
            // rustls has already verified the chain, so this is unreachable in practice; name
            // it rather than guess.
            return ClientIdentity::CommonName("<unparsable certificate>".into());
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::URI(uri) = name {
                    return ClientIdentity::Uri((*uri).to_string());
                }
            }
        }
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or("<no common name>");
        ClientIdentity::CommonName(cn.to_string())
    }

    pub fn as_audit_string(&self) -> String {
        match self {
            ClientIdentity::Uri(u) => u.clone(),
            ClientIdentity::CommonName(cn) => format!("cn:{cn}"),
            ClientIdentity::Anonymous => "anonymous".into(),
        }
    }
}
