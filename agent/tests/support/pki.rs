//! A certificate-method signing PKI for the tests: root → intermediate → code-signing leaf,
//! with revocation lists by either CA.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use warden_attest::bundle::Signer;

/// A test PKI and what it can revoke with.
pub struct Pki {
    pub root: String,
    pub intermediate: String,
    pub leaf: String,
    pub leaf_key: String,
    pub leaf_serial: Vec<u8>,
    root_issuer: Issuer<'static, KeyPair>,
    intermediate_issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    /// A signer for the certificate method: the leaf's key with the leaf and intermediate.
    pub fn signer(&self) -> Signer {
        Signer::from_private_key_pem(&self.leaf_key)
            .unwrap()
            .with_certificate_chain(&self.leaf, &self.intermediate)
            .unwrap()
    }

    /// A CRL (DER) by the intermediate or the root, revoking the leaf or nothing.
    pub fn crl(&self, by_root: bool, revoke_leaf: bool) -> Vec<u8> {
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2025, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: if revoke_leaf {
                vec![rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(&self.leaf_serial),
                    revocation_time: rcgen::date_time_ymd(2025, 6, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                }]
            } else {
                Vec::new()
            },
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let issuer = if by_root {
            &self.root_issuer
        } else {
            &self.intermediate_issuer
        };
        params.signed_by(issuer).unwrap().der().to_vec()
    }
}

/// root → intermediate (valid until `intermediate_until`) → code-signing leaf (valid until
/// `leaf_until`).
pub fn pki(intermediate_until: u64, leaf_until: u64) -> Pki {
    let at = |unix: u64| rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(unix);
    let ca = |cn: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = rcgen::date_time_ymd(2025, 1, 1);
        p
    };
    let root_key = KeyPair::generate().unwrap();
    let root_params = ca("Expiry Test Root");
    let root_cert = root_params.self_signed(&root_key).unwrap();
    let root = Issuer::new(root_params, root_key);
    let int_key = KeyPair::generate().unwrap();
    let mut int_params = ca("Expiry Test Intermediate");
    int_params.not_after = at(intermediate_until);
    let int_cert = int_params.signed_by(&int_key, &root).unwrap();
    let intermediate = Issuer::new(int_params, int_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut lp = CertificateParams::new(Vec::<String>::new()).unwrap();
    lp.distinguished_name
        .push(DnType::CommonName, "model-signer");
    lp.is_ca = IsCa::ExplicitNoCa;
    lp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    lp.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    lp.not_before = rcgen::date_time_ymd(2025, 1, 1);
    lp.not_after = at(leaf_until);
    let leaf_serial = vec![0x42, 0x17, 0x01];
    lp.serial_number = Some(rcgen::SerialNumber::from_slice(&leaf_serial));
    let leaf_cert = lp.signed_by(&leaf_key, &intermediate).unwrap();
    Pki {
        root: root_cert.pem(),
        intermediate: int_cert.pem(),
        leaf: leaf_cert.pem(),
        leaf_key: leaf_key.serialize_pem(),
        leaf_serial,
        root_issuer: root,
        intermediate_issuer: intermediate,
    }
}
