//! TLS for the receiving side: rustls, TLS 1.2 and 1.3 only.
//!
//! The server asks every client for a certificate but lets the handshake
//! finish without one: connectors decide. During the handshake a client
//! certificate is only checked for possession of its key (the handshake
//! signature); its chain is verified afterwards against the trust of the
//! connector that applies ([`ClientTrust::verify`]), since connectors may trust
//! different CAs (the system roots for Exchange Online, the organisation's CA
//! for on-prem servers).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};

use crate::certs::{CertError, certificate_names, check_pair, load_chain, load_key};
use crate::config::smtp::Trust;

/// TLS set-up errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file that cannot be used.
    #[error(transparent)]
    File(#[from] CertError),
    /// rustls refused the material.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// A trust store that cannot be built.
    #[error("client certificate trust: {0}")]
    Trust(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any client certificate whose holder proves possession of its key;
/// the chain is verified later per connector.
#[derive(Debug)]
struct RequestAnyClientCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for RequestAnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The server side TLS configuration from the certificate and key files.
pub fn server_config(certificate: &Path, key_path: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = load_chain(certificate)?;
    let key = load_key(key_path)?;
    check_pair(&chain, &key, certificate, key_path)?;
    let provider = provider();
    let verifier = Arc::new(RequestAnyClientCert {
        algorithms: provider.signature_verification_algorithms,
    });
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// A connector's trust for client certificate chains.
#[derive(Debug, Clone)]
pub struct ClientTrust {
    verifier: Arc<dyn ClientCertVerifier>,
    /// A trusted CA carries name constraints.
    constrained: bool,
}

/// Whether a certificate has the name constraints extension.
fn has_name_constraints(cert: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .ok()
        .is_some_and(|(_, x)| matches!(x.name_constraints(), Ok(Some(_))))
}

impl ClientTrust {
    /// Builds the trust: the system roots or the CA certificates of a file.
    pub fn new(trust: &Trust) -> Result<ClientTrust, TlsError> {
        let mut roots = RootCertStore::empty();
        let mut constrained = false;
        match trust {
            Trust::System => {
                let found = rustls_native_certs::load_native_certs();
                for c in found.certs {
                    constrained |= has_name_constraints(&c);
                    let _ = roots.add(c);
                }
            }
            Trust::File(path) => {
                for c in load_chain(path)? {
                    constrained |= has_name_constraints(&c);
                    roots
                        .add(c)
                        .map_err(|e| TlsError::Trust(format!("{}: {e}", path.display())))?;
                }
            }
        }
        if roots.is_empty() {
            return Err(TlsError::Trust("no trusted CA certificates found".into()));
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Trust(e.to_string()))?;
        Ok(ClientTrust {
            verifier,
            constrained,
        })
    }

    /// Verifies a presented chain (leaf first) now; on success returns the
    /// names a connector matches against: the SAN DNS names, or, for a
    /// certificate without any, its subject CN (RFC 6125 §6.4.4) — unless a
    /// CA on the way carries name constraints, which the verifier applies
    /// to SANs only: then a CN counts for nothing.
    pub fn verify(&self, chain: &[CertificateDer<'_>]) -> Result<Vec<String>, String> {
        let (leaf, intermediates) = chain.split_first().ok_or("no certificate presented")?;
        self.verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map_err(|e| describe(&e))?;
        let constrained = self.constrained || intermediates.iter().any(has_name_constraints);
        Ok(certificate_names(leaf, !constrained))
    }
}

fn describe(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "unknown issuer (the chain does not lead to a trusted CA)".into(),
            C::Expired | C::ExpiredContext { .. } => "certificate expired".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => "certificate not valid yet".into(),
            C::BadSignature => "bad signature".into(),
            C::Revoked => "certificate revoked".into(),
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                "certificate not valid for client authentication".into()
            }
            other => format!("invalid certificate ({other:?})"),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    struct Ca {
        cert: rcgen::Certificate,
        issuer: rcgen::Issuer<'static, KeyPair>,
    }

    fn ca(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca {
            cert,
            issuer: rcgen::Issuer::new(p, key),
        }
    }

    fn leaf(ca: &Ca, cn: &str, sans: &[&str]) -> CertificateDer<'static> {
        let mut p =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        p.signed_by(&key, &ca.issuer).unwrap().der().clone()
    }

    #[test]
    fn verifies_chains_against_the_connector_trust_and_extracts_names() {
        let dir = tempfile::tempdir().unwrap();
        let org = ca("Contoso CA");
        let other = ca("Other CA");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, org.cert.pem()).unwrap();
        let trust = ClientTrust::new(&Trust::File(ca_file)).unwrap();
        let good = leaf(
            &org,
            "mail.contoso.com",
            &["mail.contoso.com", "smtp.contoso.com"],
        );
        let names = trust.verify(&[good]).unwrap();
        assert!(names.contains(&"mail.contoso.com".to_string()));
        assert!(names.contains(&"smtp.contoso.com".to_string()));
        let foreign = leaf(&other, "mail.contoso.com", &["mail.contoso.com"]);
        let e = trust.verify(&[foreign]).unwrap_err();
        assert!(e.contains("unknown issuer"), "{e}");
        assert!(trust.verify(&[]).is_err());
    }

    #[test]
    fn the_cn_counts_only_without_dns_sans() {
        let org = ca("Contoso CA");
        let both = leaf(&org, "mail.example.test", &["x.evil.test"]);
        assert_eq!(
            certificate_names(&both, true),
            vec!["x.evil.test".to_string()]
        );
        let cn_only = leaf(&org, "mail.example.test", &[]);
        assert_eq!(
            certificate_names(&cn_only, true),
            vec!["mail.example.test".to_string()]
        );
        assert!(certificate_names(&cn_only, false).is_empty());
    }

    #[test]
    fn unreadable_files_get_clear_errors() {
        let e = load_chain(Path::new("/nonexistent/cert.pem")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/cert.pem: cannot read"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem").unwrap();
        assert!(
            load_chain(&empty)
                .unwrap_err()
                .to_string()
                .contains("no certificate")
        );
        assert!(load_key(&empty).is_err());
    }
}
