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

/// What a certificate says about itself, for `status`, the logs and the
/// expiry metric.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Inspected {
    /// Subject, as an RFC 4514 string.
    pub subject: String,
    /// Issuer, as an RFC 4514 string.
    pub issuer: String,
    /// Serial number, colon-separated hex.
    pub serial: String,
    /// SAN DNS names, or the subject CNs when there are none.
    pub names: Vec<String>,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// Extended key usages among serverAuth, clientAuth and
    /// anyExtendedKeyUsage; `["any"]` without the extension (RFC 5280
    /// §4.2.1.12: any purpose).
    pub purposes: Vec<String>,
}

/// Reads what a certificate says; `Err` for one that does not parse.
pub fn inspect(cert: &CertificateDer<'_>) -> Result<Inspected, String> {
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("unparsable certificate: {e}"))?;
    let purposes = match x.extended_key_usage() {
        Ok(Some(eku)) => {
            let e = eku.value;
            let mut p = Vec::new();
            for (on, name) in [
                (e.server_auth, "serverAuth"),
                (e.client_auth, "clientAuth"),
                (e.any, "anyExtendedKeyUsage"),
            ] {
                if on {
                    p.push(name.to_string());
                }
            }
            p
        }
        Ok(None) => vec!["any".into()],
        Err(e) => return Err(format!("bad extended key usage extension: {e}")),
    };
    Ok(Inspected {
        subject: x.subject().to_string(),
        issuer: x.issuer().to_string(),
        serial: x.raw_serial_as_string(),
        names: certificate_names(cert, true),
        not_before: x.validity().not_before.timestamp(),
        not_after: x.validity().not_after.timestamp(),
        purposes,
    })
}

/// Whether certificate name `name` (maybe `*.domain`, one label) covers
/// `host`, as a TLS client checks it (case-insensitive, no trailing dot).
pub fn name_covers(name: &str, host: &str) -> bool {
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    n == h
        || n.strip_prefix("*.")
            .is_some_and(|d| h.split_once('.').is_some_and(|(_, rest)| rest == d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(names: &[&str], ekus: Vec<rcgen::ExtendedKeyUsagePurpose>) -> CertificateDer<'static> {
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        p.extended_key_usages = ekus;
        p.not_before = rcgen::date_time_ymd(2026, 1, 1);
        p.not_after = rcgen::date_time_ymd(2026, 4, 1);
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x0a, 0x1b]));
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn inspects_names_dates_serial_and_purposes() {
        use rcgen::ExtendedKeyUsagePurpose as E;
        let c = leaf(
            &["edge.contoso.com", "mail.contoso.com"],
            vec![E::ServerAuth],
        );
        let i = inspect(&c).unwrap();
        assert_eq!(i.names, ["edge.contoso.com", "mail.contoso.com"]);
        assert_eq!(i.subject, "CN=edge.contoso.com");
        assert_eq!(i.serial, "0a:1b");
        assert_eq!(i.not_before, 1_767_225_600);
        assert_eq!(i.not_after, 1_775_001_600);
        assert_eq!(i.purposes, ["serverAuth"]);
        let both = inspect(&leaf(&["a.example"], vec![E::ServerAuth, E::ClientAuth])).unwrap();
        assert_eq!(both.purposes, ["serverAuth", "clientAuth"]);
        assert_eq!(
            inspect(&leaf(&["a.example"], vec![])).unwrap().purposes,
            ["any"]
        );
        assert!(inspect(&CertificateDer::from(vec![1u8, 2, 3])).is_err());
    }

    #[test]
    fn names_cover_hosts_as_tls_clients_check() {
        assert!(name_covers("edge.contoso.com", "EDGE.contoso.com."));
        assert!(name_covers("*.contoso.com", "edge.contoso.com"));
        assert!(!name_covers("*.contoso.com", "contoso.com"));
        assert!(!name_covers("*.contoso.com", "a.edge.contoso.com"));
        assert!(!name_covers("mail.contoso.com", "edge.contoso.com"));
    }
}
