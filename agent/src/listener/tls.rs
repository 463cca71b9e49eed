//! TLS for the inference listener: rustls on the ring provider, TLS 1.3 and 1.2 only (rustls
//! implements only AEAD suites with forward secrecy, so nothing weaker can be negotiated),
//! client certificates required by default, ALPN for HTTP/2 and HTTP/1.1.

use super::client_verifier::ClientVerifier;
use crate::config::TlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
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
    #[error(transparent)]
    ClientVerifier(#[from] super::client_verifier::ClientVerifierError),
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

/// A server config builder that still needs the server's certificate.
pub type WantsServerCert =
    rustls::ConfigBuilder<rustls::ServerConfig, rustls::server::WantsServerCert>;

/// A server config builder with the listener's protocol versions and client-certificate
/// policy: certificates chaining to `client_ca` are required, unless the insecure opt-in
/// allows anonymous clients (then a certificate, when offered, must still chain), and checked
/// against `client_crls`. Returns the verifier too, whose CRLs can be reloaded.
pub fn builder_with_client_auth(
    client_ca: Option<&Path>,
    client_crls: &[PathBuf],
    insecure_allow_anonymous_clients: bool,
) -> Result<(WantsServerCert, Option<Arc<ClientVerifier>>), TlsError> {
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
            let verifier = Arc::new(ClientVerifier::new(
                provider,
                roots,
                ca_path,
                insecure_allow_anonymous_clients,
                client_crls,
            )?);
            Ok((
                builder.with_client_cert_verifier(verifier.clone()),
                Some(verifier),
            ))
        }
        None if !client_crls.is_empty() => Err(TlsError::Setup(
            "client certificate revocation lists without a client CA".into(),
        )),
        None if insecure_allow_anonymous_clients => Ok((builder.with_no_client_auth(), None)),
        None => Err(TlsError::Setup(
            "no client CA: client certificates are required unless insecure_allow_anonymous_clients"
                .into(),
        )),
    }
}

/// A listener's rustls configuration and the handle that reloads its client CRLs.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub config: Arc<rustls::ServerConfig>,
    pub client_verifier: Option<Arc<ClientVerifier>>,
}

/// Builds the listener's rustls configuration from the `[tls]` table.
pub fn server_config(cfg: &TlsConfig) -> Result<ListenerTls, TlsError> {
    let (builder, client_verifier) = builder_with_client_auth(
        cfg.client_ca.as_deref(),
        &cfg.client_crls,
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
    Ok(ListenerTls {
        config: Arc::new(config),
        client_verifier,
    })
}

/// The names of a verified client certificate that identities are made from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertNames {
    pub uris: Vec<String>,
    /// `(attribute, value)` for O, OU and CN, in certificate order.
    pub subject: Vec<(&'static str, String)>,
}

impl CertNames {
    /// Reads the leaf of a connection's verified chain, once per connection; `None` without
    /// a certificate. A leaf that does not parse (rustls verified it, so this does not happen
    /// in practice) has no names: it maps to no identity.
    pub fn from_peer_certificates(certs: Option<&[CertificateDer<'_>]>) -> Option<CertNames> {
        let leaf = certs?.first()?;
        let mut names = CertNames::default();
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
            return Some(names);
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::URI(uri) = name {
                    names.uris.push((*uri).to_string());
                }
            }
        }
        let subject = cert.subject();
        for (attr, iter) in [
            ("O", subject.iter_organization().collect::<Vec<_>>()),
            ("OU", subject.iter_organizational_unit().collect()),
            ("CN", subject.iter_common_name().collect()),
        ] {
            for v in iter {
                if let Ok(s) = v.as_str() {
                    names.subject.push((attr, s.to_string()));
                }
            }
        }
        Some(names)
    }

    /// How the audit trail names the connection before authentication: the first URI SAN
    /// (a SPIFFE ID, say), else `cn:` and the first common name; `anonymous` without a
    /// certificate (only with `insecure_allow_anonymous_clients`).
    pub fn audit_name(names: Option<&CertNames>) -> String {
        let Some(names) = names else {
            return "anonymous".into();
        };
        if let Some(uri) = names.uris.first() {
            return uri.clone();
        }
        let cn = names
            .subject
            .iter()
            .find(|(attr, _)| *attr == "CN")
            .map_or("<no common name>", |(_, v)| v.as_str());
        format!("cn:{cn}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One parse of the leaf names both the audit trail's peer and the gateway's identity.
    #[test]
    fn a_client_certificate_is_named_by_its_uri_else_its_common_name() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "acme");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "teller");
        let cn_only = params.self_signed(&key).unwrap();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://bank.example/tenant/acme/app/teller"
                .try_into()
                .unwrap(),
        )];
        let with_uri = params.self_signed(&key).unwrap();

        let names = CertNames::from_peer_certificates(Some(&[cn_only.der().clone()])).unwrap();
        assert_eq!(
            names.subject,
            vec![("O", "acme".to_owned()), ("CN", "teller".to_owned())]
        );
        assert_eq!(CertNames::audit_name(Some(&names)), "cn:teller");
        let names = CertNames::from_peer_certificates(Some(&[with_uri.der().clone()])).unwrap();
        assert_eq!(
            CertNames::audit_name(Some(&names)),
            "spiffe://bank.example/tenant/acme/app/teller"
        );
        assert_eq!(CertNames::audit_name(None), "anonymous");
        assert_eq!(CertNames::from_peer_certificates(None), None);
        let garbage = CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]);
        let names = CertNames::from_peer_certificates(Some(&[garbage])).unwrap();
        assert_eq!(CertNames::audit_name(Some(&names)), "cn:<no common name>");
    }
}
