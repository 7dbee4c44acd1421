//! How to talk to a next hop: time limits, the client certificate, the
//! connector's settings.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::timeouts::Timeouts;
use super::tls_configs::TlsConfigs;
use crate::certs::{CertError, load_chain, load_key};
use crate::outbound::routing::{Outbound, TlsLevel};

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
    /// [`deliver`](super::deliver). Also sent as SNI when it is a plain host name.
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
    pub tls_configs: Option<Arc<TlsConfigs>>,
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
