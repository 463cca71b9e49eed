//! A development PKI for `warden demo` and the tests: one CA, a server certificate for
//! localhost/127.0.0.1, and client certificates with SPIFFE-style URI SANs. Every subject says
//! "development only"; an appliance gets its identity from `warden provision` instead.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, thiserror::Error)]
#[error("development PKI: {0}")]
pub struct PkiError(#[from] rcgen::Error);

/// A certificate and its private key, both PEM.
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A CA that can issue server and client certificates.
pub struct DevCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl DevCa {
    pub fn new(common_name: &str) -> Result<DevCa, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(
            DnType::OrganizationName,
            "Warden development PKI (not for production)",
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(DevCa { issuer })
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate valid for `localhost`, 127.0.0.1 and ::1.
    pub fn issue_server(&self) -> Result<IssuedCert, PkiError> {
        let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        params
            .distinguished_name
            .push(DnType::CommonName, "warden development server");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate named by a URI SAN (for example a SPIFFE ID) and a common name.
    pub fn issue_client(
        &self,
        uri: Option<&str>,
        common_name: &str,
    ) -> Result<IssuedCert, PkiError> {
        self.issue_client_in(uri, None, common_name)
    }

    /// As [`DevCa::issue_client`], with an organization (O) in the subject, for gateways that
    /// map subject attributes to identities.
    pub fn issue_client_in(
        &self,
        uri: Option<&str>,
        organization: Option<&str>,
        common_name: &str,
    ) -> Result<IssuedCert, PkiError> {
        let mut params = CertificateParams::default();
        if let Some(o) = organization {
            params.distinguished_name.push(DnType::OrganizationName, o);
        }
        if let Some(uri) = uri {
            params
                .subject_alt_names
                .push(SanType::URI(uri.to_string().try_into()?));
        }
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, params: CertificateParams) -> Result<IssuedCert, PkiError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
