//! How to talk to a next hop: time limits, the client certificate, the
//! connector's settings.

use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::certs::{CertError, load_chain, load_key};
use crate::outbound::routing::{Outbound, TlsLevel};

/// Time limits. The defaults are RFC 5321 §4.5.3.2's client timeouts; the
/// connect limit is not in the RFC (one minute).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// The greeting ("initial 220 message", 5 minutes).
    pub greeting: Duration,
    /// EHLO/HELO, STARTTLS and the TLS handshake, RSET, QUIT (5 minutes).
    pub command: Duration,
    /// The reply to MAIL (5 minutes).
    pub mail: Duration,
    /// The reply to each RCPT (5 minutes).
    pub rcpt: Duration,
    /// The reply to DATA ("DATA initiation", 2 minutes).
    pub data_init: Duration,
    /// Each write of content ("data block", 3 minutes).
    pub data_block: Duration,
    /// The reply to the final dot ("DATA termination", 10 minutes).
    pub data_end: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        const MIN: u64 = 60;
        Timeouts {
            connect: Duration::from_secs(MIN),
            greeting: Duration::from_secs(5 * MIN),
            command: Duration::from_secs(5 * MIN),
            mail: Duration::from_secs(5 * MIN),
            rcpt: Duration::from_secs(5 * MIN),
            data_init: Duration::from_secs(2 * MIN),
            data_block: Duration::from_secs(3 * MIN),
            data_end: Duration::from_secs(10 * MIN),
        }
    }
}

impl Timeouts {
    /// The same limit for everything (tests).
    pub fn all(limit: Duration) -> Self {
        Timeouts {
            connect: limit,
            greeting: limit,
            command: limit,
            mail: limit,
            rcpt: limit,
            data_init: limit,
            data_block: limit,
            data_end: limit,
        }
    }
}

impl From<&crate::config::outbound::ClientTimeouts> for Timeouts {
    /// The configured limits (`[queue.timeouts]`, in seconds).
    fn from(t: &crate::config::outbound::ClientTimeouts) -> Self {
        Timeouts {
            connect: Duration::from_secs(t.connect),
            greeting: Duration::from_secs(t.greeting),
            command: Duration::from_secs(t.command),
            mail: Duration::from_secs(t.mail),
            rcpt: Duration::from_secs(t.rcpt),
            data_init: Duration::from_secs(t.data_init),
            data_block: Duration::from_secs(t.data_block),
            data_end: Duration::from_secs(t.data_end),
        }
    }
}

/// A client certificate chain (leaf first) and its private key.
#[derive(Debug)]
pub struct ClientIdentity {
    /// Certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for ClientIdentity {
    fn clone(&self) -> Self {
        ClientIdentity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl ClientIdentity {
    /// Reads the PEM files of a connector's client certificate.
    pub fn load(cert: &crate::outbound::routing::ClientCert) -> Result<Self, CertError> {
        let chain = load_chain(&cert.certificate)?;
        let key = load_key(&cert.key)?;
        crate::certs::check_pair(&chain, &key, &cert.certificate, &cert.key)?;
        Ok(ClientIdentity { chain, key })
    }
}

/// How to talk to one next hop.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// The name sent with EHLO/HELO.
    pub ehlo_name: String,
    /// TLS level.
    pub tls: TlsLevel,
    /// Under [`TlsLevel::DomainValidation`], the name the certificate must
    /// match (`mail.contoso.com` or `*.contoso.com`, see the module
    /// documentation); `None`: the next hop's host name as given to
    /// [`deliver`]. Also sent as SNI when it is a plain host name.
    pub tls_name: Option<String>,
    /// Client certificate presented when the server asks for one.
    pub client_cert: Option<Arc<ClientIdentity>>,
    /// Trusted roots for [`TlsLevel::CertificateValidation`] and
    /// [`TlsLevel::DomainValidation`] (see [`system_roots`]).
    pub roots: Arc<RootCertStore>,
    /// Time limits.
    pub timeouts: Timeouts,
    /// rustls configurations kept per next hop (TLS session resumption);
    /// `None`: a fresh one per session.
    pub tls_configs: Option<Arc<super::tls::TlsConfigs>>,
}

impl ClientSettings {
    /// Settings with the given EHLO name and TLS level, no TLS name, no
    /// client certificate, no trusted roots and the default time limits.
    pub fn new(ehlo_name: impl Into<String>, tls: TlsLevel) -> Self {
        ClientSettings {
            ehlo_name: ehlo_name.into(),
            tls,
            tls_name: None,
            client_cert: None,
            roots: Arc::new(RootCertStore::empty()),
            timeouts: Timeouts::default(),
            tls_configs: None,
        }
    }

    /// Settings for delivering through an outbound connector: its EHLO
    /// name (else `hostname`), TLS level, TLS name ([`Outbound::tls_name`];
    /// without one, domain validation checks the next hop's own name),
    /// client certificate (loaded once, by the caller) and `roots` as
    /// trust.
    pub fn for_connector(
        connector: &Outbound,
        hostname: &str,
        client_cert: Option<Arc<ClientIdentity>>,
        roots: Arc<RootCertStore>,
        timeouts: Timeouts,
    ) -> Self {
        ClientSettings {
            ehlo_name: connector
                .ehlo_name
                .clone()
                .unwrap_or_else(|| hostname.to_string()),
            tls: connector.tls,
            tls_name: connector.tls_name().map(str::to_string),
            client_cert,
            roots,
            timeouts,
            tls_configs: None,
        }
    }
}

/// The system's trusted roots (rustls-native-certs); certificates it cannot
/// use are skipped. Load once and share.
pub fn system_roots() -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    Arc::new(roots)
}
