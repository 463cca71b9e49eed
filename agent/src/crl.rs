//! Certificate revocation lists read from files (PEM `X509 CRL` blocks, or one DER CRL per
//! file), bounded in size: for the listeners' client certificates and for model signers'
//! certificates. Their signatures are checked against the CAs where they are used.

use std::path::PathBuf;

use rustls::pki_types::CertificateRevocationListDer;
use rustls::pki_types::pem::PemObject as _;

/// Largest CRL file read.
pub const MAX_CRL_BYTES: u64 = 16 * 1024 * 1024;

/// A CRL file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("certificate revocation list {path}: {detail}")]
pub struct CrlFileError {
    pub path: PathBuf,
    pub detail: String,
}

/// Every CRL of every file, DER, in order.
pub fn read_crl_files(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>, CrlFileError> {
    let mut out = Vec::new();
    for path in paths {
        let err = |detail: String| CrlFileError {
            path: path.clone(),
            detail,
        };
        let bytes = crate::state_files::read_bounded(path, MAX_CRL_BYTES)
            .map_err(|e| err(e.to_string()))?;
        if bytes.starts_with(b"-----BEGIN") {
            let found = CertificateRevocationListDer::pem_slice_iter(&bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(e.to_string()))?;
            if found.is_empty() {
                return Err(err("no X509 CRL block".to_owned()));
            }
            out.extend(found.into_iter().map(|c| c.as_ref().to_vec()));
        } else {
            out.push(bytes);
        }
    }
    Ok(out)
}
