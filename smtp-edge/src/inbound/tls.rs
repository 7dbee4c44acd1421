//! TLS for the receiving side: rustls, TLS 1.2 and 1.3 only.
//!
//! The server asks every client for a certificate but lets the handshake
//! finish without one: connectors decide. During the handshake a client
//! certificate is only checked for possession of its key (the handshake
//! signature); its chain is verified afterwards against the trust of the
//! connector that applies ([`ClientTrust::verify`]), since connectors may trust
//! different CAs (the system roots for Exchange Online, the organisation's CA
//! for on-prem servers). MTAs present their server certificate as client
//! certificate, and public CAs stopped putting the clientAuth EKU in those
//! (2026): a chain valid for client or for server authentication is
//! accepted, and which one it was ([`Purpose`]) is recorded.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};

use crate::certs::{
    CertError, certificate_names, check_pair, has_extended_key_usage, load_chain, load_key,
};
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
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
    /// A trusted CA carries name constraints.
    constrained: bool,
}

/// What a verified client certificate chain is valid for. MTAs present
/// their server certificate as client certificate, and public CAs issue
/// server certificates for server authentication only (Chrome root program
/// from 2026-06-15 for new issuing CAs, 2027-03-15 for every leaf), so
/// either purpose identifies the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The leaf names TLS client authentication (and the chain allows it).
    ClientAuth,
    /// The chain allows TLS server authentication only.
    ServerAuth,
    /// The leaf has no extended key usage and the chain allows both.
    Any,
}

impl std::fmt::Display for Purpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Purpose::ClientAuth => "clientAuth",
            Purpose::ServerAuth => "serverAuth",
            Purpose::Any => "any",
        })
    }
}

/// A client certificate chain that [`ClientTrust::verify`] accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The names a connector matches against.
    pub names: Vec<String>,
    /// What the chain is valid for.
    pub purpose: Purpose,
}

/// Why a chain whose EKUs allow neither purpose is refused.
pub const WRONG_PURPOSE: &str = "certificate not valid for client or server authentication";

/// Whether a certificate may carry name constraints: it has the extension,
/// or it cannot be read well enough to say it has none (fail closed: the
/// verifier applies name constraints to SANs only, so the subject CN must
/// not count under such a CA).
fn has_name_constraints(cert: &CertificateDer<'_>) -> bool {
    match x509_parser::parse_x509_certificate(cert.as_ref()) {
        Ok((_, x)) => !matches!(x.name_constraints(), Ok(None)),
        Err(_) => true,
    }
}

/// A refusal for a purpose the EKUs on the path do not allow.
fn is_wrong_purpose(e: &webpki::Error) -> bool {
    #[allow(deprecated)]
    let found = matches!(
        e,
        webpki::Error::RequiredEkuNotFound | webpki::Error::RequiredEkuNotFoundContext(_)
    );
    found
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
        Ok(ClientTrust {
            roots: Arc::new(roots),
            algorithms: provider().signature_verification_algorithms,
            constrained,
        })
    }

    /// Verifies a presented chain (leaf first) now, for TLS client
    /// authentication or else server authentication: every certificate on
    /// the path (leaf and CAs) must allow the same purpose in its extended
    /// key usage, or have none (RFC 5280 §4.2.1.12). On success returns the
    /// purpose and the names a connector matches against: the SAN DNS
    /// names, or, for a certificate without any, its subject CN (RFC 6125
    /// §6.4.4) — unless a CA on the way carries name constraints, which the
    /// verifier applies to SANs only: then a CN counts for nothing.
    pub fn verify(&self, chain: &[CertificateDer<'_>]) -> Result<Verified, String> {
        let (leaf, intermediates) = chain.split_first().ok_or("no certificate presented")?;
        let cert = webpki::EndEntityCert::try_from(leaf).map_err(|e| describe(&e))?;
        let now = UnixTime::now();
        // Both are "required if present": a certificate without the EKU
        // extension passes, one whose EKUs lack the purpose does not.
        let valid_for = |usage: webpki::KeyUsage| {
            cert.verify_for_usage(
                self.algorithms.all,
                &self.roots.roots,
                intermediates,
                now,
                usage,
                None,
                None,
            )
            .map(drop)
        };
        let purpose = match valid_for(webpki::KeyUsage::client_auth()) {
            Ok(()) if has_extended_key_usage(leaf) => Purpose::ClientAuth,
            Ok(()) => match valid_for(webpki::KeyUsage::server_auth()) {
                Ok(()) => Purpose::Any,
                // A CA on the path allows client authentication only.
                Err(_) => Purpose::ClientAuth,
            },
            Err(e) if is_wrong_purpose(&e) => match valid_for(webpki::KeyUsage::server_auth()) {
                Ok(()) => Purpose::ServerAuth,
                Err(e) => return Err(describe(&e)),
            },
            Err(e) => return Err(describe(&e)),
        };
        let constrained = self.constrained || intermediates.iter().any(has_name_constraints);
        Ok(Verified {
            names: certificate_names(leaf, !constrained),
            purpose,
        })
    }
}

fn describe(e: &webpki::Error) -> String {
    use webpki::Error as E;
    match e {
        E::UnknownIssuer => "unknown issuer (the chain does not lead to a trusted CA)".into(),
        E::CertExpired { .. } | E::InvalidCertValidity => "certificate expired".into(),
        E::CertNotValidYet { .. } => "certificate not valid yet".into(),
        E::InvalidSignatureForPublicKey => "bad signature".into(),
        E::CertRevoked => "certificate revoked".into(),
        E::NameConstraintViolation => {
            "name constraints violated (a name the CA may not certify)".into()
        }
        e if is_wrong_purpose(e) => WRONG_PURPOSE.into(),
        E::BadDer | E::BadDerTime | E::TrailingData(_) => {
            "invalid certificate (bad encoding)".into()
        }
        E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
            "invalid certificate (unsupported signature algorithm)".into()
        }
        other => {
            // The verifier's own words, one short line (some of its errors
            // list every algorithm it supports).
            let text: String = format!("{other:?}").chars().take(80).collect();
            format!("invalid certificate ({text})")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::ExtendedKeyUsagePurpose as Eku;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};

    struct Ca {
        cert: rcgen::Certificate,
        issuer: rcgen::Issuer<'static, KeyPair>,
    }

    /// The key algorithms of the fixtures.
    #[derive(Debug, Clone, Copy)]
    enum Alg {
        /// What Microsoft's certificates use.
        Rsa2048,
        EcdsaP256,
    }

    /// A new key. rcgen on ring cannot generate RSA keys: openssl makes
    /// those (PKCS#8), rcgen signs with them.
    fn key(alg: Alg) -> KeyPair {
        match alg {
            Alg::EcdsaP256 => KeyPair::generate().unwrap(),
            Alg::Rsa2048 => {
                let out = std::process::Command::new("openssl")
                    .args(["genpkey", "-algorithm", "RSA"])
                    .args(["-pkeyopt", "rsa_keygen_bits:2048"])
                    .output()
                    .expect("openssl");
                assert!(out.status.success(), "openssl genpkey failed");
                let key = KeyPair::from_pem(std::str::from_utf8(&out.stdout).unwrap()).unwrap();
                assert_eq!(key.algorithm(), &rcgen::PKCS_RSA_SHA256);
                key
            }
        }
    }

    /// A CA with these EKUs (none: no extension), self-signed or issued by
    /// `parent`.
    fn ca_with(name: &str, alg: Alg, ekus: &[Eku], parent: Option<&Ca>) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.extended_key_usages = ekus.to_vec();
        let key = key(alg);
        let cert = match parent {
            None => p.self_signed(&key),
            Some(c) => p.signed_by(&key, &c.issuer),
        }
        .unwrap();
        Ca {
            cert,
            issuer: rcgen::Issuer::new(p, key),
        }
    }

    fn ca(name: &str) -> Ca {
        ca_with(name, Alg::EcdsaP256, &[], None)
    }

    /// A leaf for `name` (CN and SAN) with these EKUs (none: no extension).
    fn leaf_params(name: &str, ekus: &[Eku]) -> CertificateParams {
        let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = ekus.to_vec();
        p
    }

    fn sign(p: CertificateParams, alg: Alg, ca: &Ca) -> CertificateDer<'static> {
        p.signed_by(&key(alg), &ca.issuer).unwrap().der().clone()
    }

    fn leaf(ca: &Ca, cn: &str, sans: &[&str]) -> CertificateDer<'static> {
        let mut p =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        p.signed_by(&key, &ca.issuer).unwrap().der().clone()
    }

    /// A connector trusting `root` only.
    fn trusting(root: &Ca) -> ClientTrust {
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, root.cert.pem()).unwrap();
        ClientTrust::new(&Trust::File(ca_file)).unwrap()
    }

    /// The 2026 public TLS hierarchy: a root without EKU (CA/B Forum
    /// Baseline Requirements §7.1.2.1: a root carries none); an issuing CA
    /// restricted to id-kp-serverAuth (Chrome Root Program Policy 1.6:
    /// dedicated TLS server authentication hierarchies, every new issuing CA
    /// from 2026-06-15); and a leaf with id-kp-serverAuth only (the same
    /// policy for every new leaf from 2027-03-15; Let's Encrypt's default
    /// "classic" profile since 2026-02-11; DigiCert's default since
    /// 2025-10-01) — what Exchange Online's mail.protection.outlook.com
    /// presents as client certificate after its renewal.
    fn chain_2026(alg: Alg, leaf_ekus: &[Eku]) -> (Ca, Vec<CertificateDer<'static>>) {
        let root = ca_with("Public TLS Root 2026", alg, &[], None);
        let issuing = ca_with(
            "Public TLS Issuing CA",
            alg,
            &[Eku::ServerAuth],
            Some(&root),
        );
        let leaf = sign(
            leaf_params("mail.protection.outlook.com", leaf_ekus),
            alg,
            &issuing,
        );
        (root, vec![leaf, issuing.cert.der().clone()])
    }

    #[test]
    fn the_2026_server_auth_only_chain_is_accepted_rsa_and_ecdsa() {
        for alg in [Alg::Rsa2048, Alg::EcdsaP256] {
            let (root, chain) = chain_2026(alg, &[Eku::ServerAuth]);
            let trust = trusting(&root);
            let v = trust
                .verify(&chain)
                .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            assert_eq!(v.purpose, Purpose::ServerAuth, "{alg:?}");
            assert_eq!(v.names, ["mail.protection.outlook.com"], "{alg:?}");
            // rustls' own client verifier (used here before) requires
            // clientAuth and refuses it.
            let rustls_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                trust.roots.clone(),
                provider(),
            )
            .build()
            .unwrap();
            let e = rustls_verifier
                .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
                .unwrap_err();
            assert!(
                matches!(
                    e,
                    rustls::Error::InvalidCertificate(
                        rustls::CertificateError::InvalidPurposeContext { .. }
                    )
                ),
                "{alg:?}: {e:?}"
            );
            // The usual refusals keep their wording.
            let e = trust.verify(&chain[..1]).unwrap_err();
            assert!(e.contains("unknown issuer"), "{alg:?}: {e}");
        }
        let (root, _) = chain_2026(Alg::EcdsaP256, &[]);
        let issuing = ca_with("Issuing", Alg::EcdsaP256, &[Eku::ServerAuth], Some(&root));
        let mut p = leaf_params("mail.contoso.com", &[Eku::ServerAuth]);
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let expired = sign(p, Alg::EcdsaP256, &issuing);
        let e = trusting(&root)
            .verify(&[expired, issuing.cert.der().clone()])
            .unwrap_err();
        assert_eq!(e, "certificate expired");
    }

    #[test]
    fn client_auth_only_and_no_eku_chains_are_accepted() {
        // An organisation's private CA (root and issuing CA without EKU),
        // as the on-prem servers' certificates come from.
        let root = ca("Contoso Root CA");
        let issuing = ca_with("Contoso Issuing CA", Alg::EcdsaP256, &[], Some(&root));
        let trust = trusting(&root);
        for (what, ekus, purpose) in [
            // A client-only template (AD CS "Workstation Authentication").
            (
                "clientAuth only",
                &[Eku::ClientAuth][..],
                Purpose::ClientAuth,
            ),
            // The pre-2026 public profile: both.
            (
                "serverAuth and clientAuth",
                &[Eku::ServerAuth, Eku::ClientAuth][..],
                Purpose::ClientAuth,
            ),
            // No EKU extension: any purpose (RFC 5280 §4.2.1.12).
            ("no EKU", &[][..], Purpose::Any),
        ] {
            let leaf = sign(
                leaf_params("relay.contoso.com", ekus),
                Alg::EcdsaP256,
                &issuing,
            );
            let v = trust
                .verify(&[leaf, issuing.cert.der().clone()])
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(v.purpose, purpose, "{what}");
        }
        // A leaf without EKU under the 2026 serverAuth-only issuing CA.
        let (root, chain) = chain_2026(Alg::EcdsaP256, &[]);
        let v = trusting(&root).verify(&chain).unwrap();
        assert_eq!(v.purpose, Purpose::ServerAuth);
    }

    #[test]
    fn chains_valid_for_neither_purpose_are_refused() {
        let root = ca("Contoso Root CA");
        let trust = trusting(&root);
        // A code-signing certificate (CA/B Forum Code Signing BR §7.1.2.3:
        // id-kp-codeSigning only), from a CA the connector trusts.
        let signing = sign(
            leaf_params("build.contoso.com", &[Eku::CodeSigning]),
            Alg::EcdsaP256,
            &root,
        );
        assert_eq!(trust.verify(&[signing]).unwrap_err(), WRONG_PURPOSE);
        // A serverAuth leaf under an S/MIME issuing CA (CA/B Forum S/MIME
        // BR §7.1.2.2: id-kp-emailProtection only).
        let smime = ca_with(
            "Contoso S/MIME CA",
            Alg::EcdsaP256,
            &[Eku::EmailProtection],
            Some(&root),
        );
        let server = sign(
            leaf_params("mail.contoso.com", &[Eku::ServerAuth]),
            Alg::EcdsaP256,
            &smime,
        );
        let e = trust
            .verify(&[server, smime.cert.der().clone()])
            .unwrap_err();
        assert_eq!(e, WRONG_PURPOSE);
        // One purpose for the whole path: a clientAuth-only leaf under the
        // 2026 serverAuth-only issuing CA is valid for neither.
        let (root, chain) = chain_2026(Alg::EcdsaP256, &[Eku::ClientAuth]);
        assert_eq!(trusting(&root).verify(&chain).unwrap_err(), WRONG_PURPOSE);
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
        let names = trust.verify(&[good]).unwrap().names;
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
