//! A development PKI for `warden demo` and the tests: one CA, a server certificate for
//! localhost/127.0.0.1, and client certificates with SPIFFE-style URI SANs. Every subject says
//! "development only"; an appliance gets its identity from `warden provision` instead.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, thiserror::Error)]
#[error("development PKI: {0}")]
pub struct PkiError(#[from] rcgen::Error);

/// A certificate and its private key, both PEM, and its serial number.
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub serial: Vec<u8>,
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

    /// A certificate revocation list, signed by this CA, revoking `revoked` (PEM).
    pub fn revocation_list(&self, revoked: &[&IssuedCert]) -> Result<String, PkiError> {
        let params = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2025, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|c| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&c.serial),
                    revocation_time: rcgen::date_time_ymd(2025, 1, 1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    fn issue(&self, mut params: CertificateParams) -> Result<IssuedCert, PkiError> {
        // A random positive serial, distinct per certificate, for revocation lists to name.
        let mut serial = uuid::Uuid::new_v4().as_bytes().to_vec();
        serial[0] &= 0x7f;
        serial[0] |= 0x01;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
        })
    }
}
