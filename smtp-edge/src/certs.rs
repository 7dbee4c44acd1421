//! Certificate files and what they say, for both SMTP sides and the
//! operator's tools: PEM chains and keys read with clear errors, a key
//! checked against its certificate, the names and subject a connector or a
//! log line needs.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate or key file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct CertError {
    /// File.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Reads a certificate chain (leaf first) from a PEM file.
pub fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let err = |message: String| CertError {
        path: path.display().to_string(),
        message,
    };
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let chain: Vec<_> = iter
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("bad PEM: {e}")))?;
    if chain.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    Ok(chain)
}

/// Reads a private key (PKCS#8, PKCS#1 or SEC1) from a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| CertError {
        path: path.display().to_string(),
        message: format!("no usable private key: {e}"),
    })
}

/// Checks that `key` (read from `key_path`) is usable and belongs to the
/// first certificate of `chain` (read from `cert_path`), so a renewed
/// certificate installed without its new key is refused when it is loaded,
/// not at the first handshake.
pub fn check_pair(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), CertError> {
    rustls::sign::CertifiedKey::from_der(
        chain.to_vec(),
        key.clone_key(),
        &Arc::new(rustls::crypto::ring::default_provider()),
    )
    .map(drop)
    .map_err(|e| CertError {
        path: key_path.display().to_string(),
        message: format!(
            "not a usable key for the certificate {}: {e}",
            cert_path.display()
        ),
    })
}

/// The names of a certificate a connector matches against: its SAN DNS
/// names; only when it has none, and `cn_fallback`, its subject common names.
pub fn certificate_names(cert: &CertificateDer<'_>, cn_fallback: bool) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok((_, x)) = x509_parser::parse_x509_certificate(cert.as_ref()) {
        if let Ok(Some(san)) = x.subject_alternative_name() {
            for n in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                    names.push(d.to_string());
                }
            }
        }
        if names.is_empty() && cn_fallback {
            for cn in x.subject().iter_common_name() {
                if let Ok(s) = cn.as_str() {
                    names.push(s.to_string());
                }
            }
        }
    }
    names
}

/// Subject line for logs and Received headers.
pub fn certificate_subject(cert: &CertificateDer<'_>) -> String {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .map(|(_, x)| x.subject().to_string())
        .unwrap_or_else(|_| "(unparsable certificate)".into())
}

/// Whether a certificate carries the extended key usage extension (no
/// extension: any purpose, RFC 5280 §4.2.1.12).
pub fn has_extended_key_usage(cert: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .ok()
        .is_some_and(|(_, x)| matches!(x.extended_key_usage(), Ok(Some(_))))
}
