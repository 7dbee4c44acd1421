//! Every TLS decision of the client in one place: certificate checks per
//! level, name matching, the rustls configuration, and STARTTLS itself
//! (refusing a stream with injected bytes).

use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_rustls::TlsConnector;

use super::conn::{Conn, Stream};
use super::error::{DeliveryError, Stage};
use super::outcome::TlsSession;
use super::settings::ClientSettings;
use crate::certs::certificate_subject;
use crate::outbound::routing::TlsLevel;

/// The name the certificate must carry under domain validation.
#[derive(Debug, Clone)]
enum ExpectedName {
    /// A host name or IP address (webpki's RFC 6125 matching).
    Exact(ServerName<'static>),
    /// `*.domain`: any DNS name below `domain` (lower case).
    Below(String),
}

#[derive(Debug)]
struct NextHopVerifier {
    level: TlsLevel,
    roots: Arc<RootCertStore>,
    name: Option<ExpectedName>,
    algorithms: WebPkiSupportedAlgorithms,
}

fn cert_error(e: impl Into<rustls::Error>) -> rustls::Error {
    e.into()
}

/// SAN DNS names of a certificate, lower case without a trailing dot.
fn san_dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok((_, x)) = x509_parser::parse_x509_certificate(cert.as_ref())
        && let Ok(Some(san)) = x.subject_alternative_name()
    {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    names
}

/// Whether a certificate DNS name lies below `domain` (for a `*.domain`
/// TLS name): `x.domain`, `a.b.domain`, `*.domain`, `*.x.domain`; a `*` is
/// only allowed as a whole leftmost label.
fn below(name: &str, domain: &str) -> bool {
    let Some(prefix) = name.strip_suffix(domain).and_then(|p| p.strip_suffix('.')) else {
        return false;
    };
    if prefix.is_empty() {
        return false;
    }
    prefix
        .split('.')
        .enumerate()
        .all(|(i, label)| !label.is_empty() && (label == "*" && i == 0 || !label.contains('*')))
}

impl ServerCertVerifier for NextHopVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !self.level.verifies_certificate() {
            return Ok(ServerCertVerified::assertion());
        }
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        match &self.name {
            None => {}
            Some(ExpectedName::Exact(name)) => verify_server_name(&cert, name)?,
            Some(ExpectedName::Below(domain))
                if !san_dns_names(end_entity).iter().any(|n| below(n, domain)) =>
            {
                return Err(cert_error(rustls::CertificateError::NotValidForName));
            }
            Some(ExpectedName::Below(_)) => {}
        }
        Ok(ServerCertVerified::assertion())
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

fn server_name(text: &str) -> Option<ServerName<'static>> {
    let t = text.trim().trim_end_matches('.').to_ascii_lowercase();
    let t = t
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .map(|x| x.strip_prefix("ipv6:").unwrap_or(x).to_string())
        .unwrap_or(t);
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Some(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(t).ok()
}

/// The rustls configuration and SNI for a session with `host`: the one kept
/// in [`ClientSettings::tls_configs`] when there is one.
pub(super) fn tls_setup(
    settings: &ClientSettings,
    host: &str,
) -> Result<(Arc<ClientConfig>, ServerName<'static>), DeliveryError> {
    let Some(cache) = &settings.tls_configs else {
        return build(settings, host);
    };
    cache.get_or_try_insert(host, || build(settings, host))
}

/// The name a certificate must carry for `host` under `settings` (none
/// below domain validation), and the SNI to send.
fn expected(
    settings: &ClientSettings,
    level: TlsLevel,
    host: &str,
) -> Result<(Option<ExpectedName>, ServerName<'static>), DeliveryError> {
    let host_name = server_name(host);
    let name = match (level, settings.tls_name.as_deref()) {
        (TlsLevel::DomainValidation, Some(n)) => {
            let n = n.trim().trim_end_matches('.').to_ascii_lowercase();
            Some(match n.strip_prefix("*.") {
                Some(domain) if !domain.is_empty() && !domain.contains('*') => {
                    ExpectedName::Below(domain.to_string())
                }
                _ => ExpectedName::Exact(server_name(&n).ok_or_else(|| {
                    DeliveryError::Settings(format!("TLS name `{n}` is not a host name"))
                })?),
            })
        }
        (TlsLevel::DomainValidation, None) => {
            Some(ExpectedName::Exact(host_name.clone().ok_or_else(|| {
                DeliveryError::Settings(format!(
                    "domain validation without a TLS name, and `{host}` is not a host name"
                ))
            })?))
        }
        _ => None,
    };
    // SNI: the exact TLS name, else the host name (no SNI for an address).
    let sni = match &name {
        Some(ExpectedName::Exact(n)) => n.clone(),
        _ => host_name.unwrap_or(ServerName::IpAddress(IpAddr::from([0u8, 0, 0, 0]).into())),
    };
    Ok((name, sni))
}

fn build(
    settings: &ClientSettings,
    host: &str,
) -> Result<(Arc<ClientConfig>, ServerName<'static>), DeliveryError> {
    let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
    let (name, sni) = expected(settings, settings.tls, host)?;
    let verifier = Arc::new(NextHopVerifier {
        level: settings.tls,
        roots: settings.roots.clone(),
        name,
        algorithms: provider.signature_verification_algorithms,
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| DeliveryError::Settings(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match &settings.client_cert {
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .map_err(|e| DeliveryError::Settings(format!("client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok((Arc::new(config), sni))
}

/// A readable reason for a certificate rustls refused.
fn describe_certificate(e: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    match e {
        C::UnknownIssuer => "unknown issuer (the chain does not lead to a trusted CA)".into(),
        C::Expired | C::ExpiredContext { .. } => "certificate expired".into(),
        C::NotValidYet | C::NotValidYetContext { .. } => "certificate not valid yet".into(),
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "certificate name does not match".into()
        }
        C::BadSignature => "bad signature".into(),
        C::Revoked => "certificate revoked".into(),
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
            "certificate not valid for server authentication".into()
        }
        other => format!("invalid certificate ({other:?})"),
    }
}

impl Conn {
    /// STARTTLS after its 220: refuses a tainted stream, shakes hands.
    pub(super) async fn start_tls(
        &mut self,
        settings: &ClientSettings,
        host: &str,
    ) -> Result<TlsSession, DeliveryError> {
        let tcp = self.take_for_tls().await?;
        let (config, sni) = tls_setup(settings, host)?;
        self.handshake(tcp, config, sni, settings.tls).await
    }

    /// STARTTLS for `smtp-edge connector test`: the same checks before the
    /// handshake, a handshake that records the chain and whether a client
    /// certificate was asked for, and accepts any chain (judged afterwards
    /// by [`judge`]; never used for delivery).
    pub(super) async fn start_tls_probe(
        &mut self,
        settings: &ClientSettings,
        host: &str,
    ) -> Result<(TlsSession, Arc<Seen>), DeliveryError> {
        let tcp = self.take_for_tls().await?;
        let (config, sni, seen) = probe_setup(settings, host)?;
        let session = self.handshake(tcp, config, sni, settings.tls).await?;
        Ok((session, seen))
    }

    /// The plain stream, once nothing was sent after the 220 to STARTTLS.
    async fn take_for_tls(&mut self) -> Result<tokio::net::TcpStream, DeliveryError> {
        let injected = |n: usize| DeliveryError::Protocol {
            stage: Stage::StartTls,
            message: format!(
                "{n} byte(s) received after the 220 to STARTTLS, before the TLS handshake \
                 (response injection); TLS not started on a tainted connection"
            ),
        };
        if !self.buf.is_empty() {
            return Err(injected(self.buf.len()));
        }
        let tcp = match std::mem::replace(&mut self.stream, Stream::Closed) {
            Stream::Plain(tcp) => tcp,
            other => {
                self.stream = other;
                return Err(DeliveryError::Protocol {
                    stage: Stage::StartTls,
                    message: "STARTTLS on a connection that already uses TLS".into(),
                });
            }
        };
        // Bytes that arrived in a later segment but before the handshake:
        // ask the kernel directly (tokio's readiness may lag behind).
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 512];
        match socket2::SockRef::from(&tcp).peek(&mut probe) {
            Ok(0) => {
                return Err(DeliveryError::Connection {
                    stage: Stage::StartTls,
                    source: io::ErrorKind::UnexpectedEof.into(),
                });
            }
            Ok(n) => return Err(injected(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(source) => {
                return Err(DeliveryError::Connection {
                    stage: Stage::StartTls,
                    source,
                });
            }
        }
        Ok(tcp)
    }

    /// The handshake on `tcp` (checked for injected bytes by the caller).
    async fn handshake(
        &mut self,
        tcp: tokio::net::TcpStream,
        config: Arc<ClientConfig>,
        sni: ServerName<'static>,
        level: TlsLevel,
    ) -> Result<TlsSession, DeliveryError> {
        let connect = TlsConnector::from(config).connect(sni, tcp);
        let tls = tokio::time::timeout(self.timeouts.command, connect)
            .await
            .map_err(|_| DeliveryError::Timeout {
                stage: Stage::TlsHandshake,
            })?
            .map_err(|e| {
                let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
                match inner {
                    Some(rustls::Error::InvalidCertificate(c)) => DeliveryError::Certificate {
                        level,
                        reason: describe_certificate(c),
                    },
                    Some(other) => DeliveryError::TlsHandshake(other.to_string()),
                    None => DeliveryError::TlsHandshake(e.to_string()),
                }
            })?;
        let c = tls.get_ref().1;
        let session = TlsSession {
            version: c
                .protocol_version()
                .map_or("TLS".into(), |v| format!("{v:?}").replace('_', ".")),
            cipher: c
                .negotiated_cipher_suite()
                .map_or(String::new(), |s| format!("{:?}", s.suite())),
            peer_subject: c
                .peer_certificates()
                .and_then(|p| p.first())
                .map(certificate_subject),
        };
        self.stream = Stream::Tls(Box::new(tls));
        Ok(session)
    }
}

/// What a probing handshake saw.
#[derive(Debug, Default)]
pub(super) struct Seen {
    chain: std::sync::Mutex<Vec<CertificateDer<'static>>>,
    asked: std::sync::atomic::AtomicBool,
}

impl Seen {
    /// The server asked for a client certificate.
    pub(super) fn asked(&self) -> bool {
        self.asked.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.chain.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Records the chain; takes any (the probe judges it afterwards). The
/// handshake signature is still verified.
#[derive(Debug)]
struct Recording {
    seen: Arc<Seen>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        *self.seen.chain.lock().unwrap_or_else(|p| p.into_inner()) = chain;
        Ok(ServerCertVerified::assertion())
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

/// Presents the configured client certificate (if any) and records that the
/// server asked.
#[derive(Debug)]
struct AskRecorder {
    key: Option<Arc<rustls::sign::CertifiedKey>>,
    seen: Arc<Seen>,
}

impl rustls::client::ResolvesClientCert for AskRecorder {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.seen
            .asked
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.key.clone()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn probe_setup(
    settings: &ClientSettings,
    host: &str,
) -> Result<(Arc<ClientConfig>, ServerName<'static>, Arc<Seen>), DeliveryError> {
    let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
    let (_, sni) = expected(settings, settings.tls, host)?;
    let seen = Arc::new(Seen::default());
    let key = match &settings.client_cert {
        Some(id) => Some(Arc::new(
            rustls::sign::CertifiedKey::from_der(id.chain.clone(), id.key.clone_key(), &provider)
                .map_err(|e| DeliveryError::Settings(format!("client certificate: {e}")))?,
        )),
        None => None,
    };
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| DeliveryError::Settings(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Recording {
            seen: seen.clone(),
            algorithms: provider.signature_verification_algorithms,
        }))
        .with_client_cert_resolver(Arc::new(AskRecorder {
            key,
            seen: seen.clone(),
        }));
    Ok((Arc::new(config), sni, seen))
}

/// The verdict on a recorded chain: each certificate, whether the chain
/// leads to a trusted CA, whether the expected name matches.
#[derive(Debug, Clone)]
pub(super) struct Judged {
    /// One line per certificate: subject, issuer, expiry.
    pub(super) lines: Vec<String>,
    /// The chain verifies against the connector's trust.
    pub(super) chain: Result<(), String>,
    /// The name that must match, and whether it does.
    pub(super) name: Option<(String, Result<(), String>)>,
}

/// The extended key usages a certificate names, for `connector test`
/// (serverAuth-only certificates are what public CAs issue from 2026 on).
pub(super) fn purposes(c: &rustls::pki_types::CertificateDer<'_>) -> String {
    match crate::certs::inspect(c) {
        Ok(i) => format!("EKU {}", i.purposes.join(", ")),
        Err(_) => "EKU unreadable".into(),
    }
}

/// Judges what `seen` recorded as delivery under `settings` would: the
/// chain against [`ClientSettings::roots`], the name against `tls_name` or
/// `host` (reported whatever the level; the level decides what counts).
pub(super) fn judge(settings: &ClientSettings, host: &str, seen: &Seen) -> Judged {
    let chain = seen.chain();
    let mut lines = Vec::new();
    for (i, c) in chain.iter().enumerate() {
        let line = match x509_parser::parse_x509_certificate(c.as_ref()) {
            Ok((_, x)) => format!(
                "{i}: subject {}; issuer {}; valid until {}; {}",
                x.subject(),
                x.issuer(),
                x.validity()
                    .not_after
                    .to_rfc2822()
                    .unwrap_or_else(|e| e.to_string()),
                purposes(c)
            ),
            Err(_) => format!("{i}: (unparsable certificate)"),
        };
        lines.push(line);
    }
    let Some(end_entity) = chain.first() else {
        return Judged {
            lines,
            chain: Err("no certificate presented".into()),
            name: None,
        };
    };
    let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    let verdict = ParsedCertificate::try_from(end_entity)
        .and_then(|cert| {
            verify_server_cert_signed_by_trust_anchor(
                &cert,
                &settings.roots,
                &chain[1..],
                UnixTime::now(),
                algorithms.all,
            )
        })
        .map_err(|e| match e {
            rustls::Error::InvalidCertificate(c) => describe_certificate(&c),
            other => other.to_string(),
        });
    let name = match expected(settings, TlsLevel::DomainValidation, host) {
        Ok((Some(want), _)) => {
            let shown = match &want {
                ExpectedName::Exact(n) => n.to_str().into_owned(),
                ExpectedName::Below(d) => format!("*.{d}"),
            };
            let names = san_dns_names(end_entity);
            let ok = match &want {
                ExpectedName::Exact(n) => ParsedCertificate::try_from(end_entity)
                    .and_then(|cert| verify_server_name(&cert, n))
                    .is_ok(),
                ExpectedName::Below(d) => names.iter().any(|n| below(n, d)),
            };
            Some((
                shown,
                if ok {
                    Ok(())
                } else {
                    Err(format!("the certificate names {}", names.join(", ")))
                },
            ))
        }
        _ => None,
    };
    Judged {
        lines,
        chain: verdict,
        name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_tls_names() {
        assert!(below("mail.contoso.com", "contoso.com"));
        assert!(below("a.b.contoso.com", "contoso.com"));
        assert!(below("*.contoso.com", "contoso.com"));
        assert!(below("*.sales.contoso.com", "contoso.com"));
        assert!(!below("contoso.com", "contoso.com"));
        assert!(!below("evilcontoso.com", "contoso.com"));
        assert!(!below("m*.contoso.com", "contoso.com"));
        assert!(!below("a.*.contoso.com", "contoso.com"));
        assert!(!below(".contoso.com", "contoso.com"));
    }
}
