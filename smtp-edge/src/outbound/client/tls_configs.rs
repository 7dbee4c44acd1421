//! The rustls configurations a connector keeps per next hop (for TLS
//! session resumption): plain data the settings carry, filled by the TLS
//! code that makes the configurations.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;

/// The rustls configurations of one outbound connector, by next hop, kept
/// across sessions: each keeps its TLS session cache, so the next session
/// to the same host resumes (as Exchange and Postfix's tlsmgr do) instead of
/// a full handshake. At most 512 hosts; then it starts over.
#[derive(Debug, Default)]
pub struct TlsConfigs {
    map: std::sync::Mutex<
        std::collections::HashMap<String, (Arc<ClientConfig>, ServerName<'static>)>,
    >,
}

/// Hosts a [`TlsConfigs`] keeps.
const TLS_CONFIGS: usize = 512;

impl TlsConfigs {
    /// The configuration and SNI kept for `host`; else the ones `make`
    /// returns, kept (made while holding the lock, so two sessions to a new
    /// host make them once). An error from `make` keeps nothing.
    pub(super) fn get_or_try_insert<E>(
        &self,
        host: &str,
        make: impl FnOnce() -> Result<(Arc<ClientConfig>, ServerName<'static>), E>,
    ) -> Result<(Arc<ClientConfig>, ServerName<'static>), E> {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = m.get(host) {
            return Ok(c.clone());
        }
        let made = make()?;
        if m.len() >= TLS_CONFIGS {
            m.clear();
        }
        m.insert(host.to_string(), made.clone());
        Ok(made)
    }
}
