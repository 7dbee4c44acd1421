//! The HTTP client for the web service: ureq on rustls (ring, as the rest of
//! the product), the system's roots or an organisation's CA file, a proxy
//! from the configuration or the environment, a deadline per request and a
//! bound on the answer's size. Blocking: the daemon calls it from a blocking
//! task.

use std::sync::Arc;
use std::time::Duration;

use crate::config::ranges::Ranges;

/// The largest answer read (the worldwide endpoints list is ~100 KB; the
/// Exchange part a fraction of it).
pub const MAX_BODY: u64 = 2 * 1024 * 1024;

/// Errors fetching one URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The server answered, but not 200.
    #[error("{url}: HTTP {status}{}", retry_after.map_or(String::new(), |s| format!(" (Retry-After {s} s)")))]
    Status {
        /// URL.
        url: String,
        /// Status code.
        status: u16,
        /// Seconds the server asks to wait.
        retry_after: Option<u64>,
    },
    /// No complete answer within the deadline.
    #[error("{url}: no answer within {seconds} s")]
    Timeout {
        /// URL.
        url: String,
        /// The deadline.
        seconds: u64,
    },
    /// The answer is larger than [`MAX_BODY`].
    #[error("{url}: the answer is larger than {MAX_BODY} octets")]
    TooLarge {
        /// URL.
        url: String,
    },
    /// Anything else: name resolution, connection, TLS, proxy, protocol.
    #[error("{url}: {message}")]
    Transport {
        /// URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The client could not be set up (proxy URL, CA file).
    #[error("{0}")]
    Setup(String),
}

impl FetchError {
    /// Seconds the server asked to wait (429, 503).
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            FetchError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the server said we ask too often.
    pub fn throttled(&self) -> bool {
        matches!(self, FetchError::Status { status: 429, .. })
    }
}

/// A client for one base URL.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    timeout: u64,
}

fn roots(settings: &Ranges) -> Result<Vec<ureq::tls::Certificate<'static>>, FetchError> {
    let ders: Vec<rustls::pki_types::CertificateDer<'static>> = match &settings.tls_trust {
        Some(path) => {
            crate::certs::load_chain(path).map_err(|e| FetchError::Setup(e.to_string()))?
        }
        None => rustls_native_certs::load_native_certs().certs,
    };
    if ders.is_empty() {
        return Err(FetchError::Setup(
            "no trusted CA certificates (the system store is empty; set ranges.tls_trust)".into(),
        ));
    }
    Ok(ders
        .iter()
        .map(|d| ureq::tls::Certificate::from_der(d.as_ref()).to_owned())
        .collect())
}

impl Client {
    /// A client for `settings.service_url`.
    pub fn new(settings: &Ranges) -> Result<Client, FetchError> {
        let proxy = match &settings.proxy {
            Some(p) => Some(
                ureq::Proxy::new(p)
                    .map_err(|e| FetchError::Setup(format!("ranges.proxy `{p}`: {e}")))?,
            ),
            None => ureq::Proxy::try_from_env(),
        };
        // ureq would ignore a SOCKS proxy it was built without and go
        // direct: a firewall host's only way out is refused loudly instead.
        if let Some(p) = &proxy
            && !matches!(
                p.protocol(),
                ureq::ProxyProtocol::Http | ureq::ProxyProtocol::Https
            )
        {
            return Err(FetchError::Setup(format!(
                "the proxy {}:{} is not an HTTP proxy (SOCKS is not supported; set ranges.proxy)",
                p.host(),
                p.port()
            )));
        }
        let https = settings.service_url.starts_with("https://");
        let tls = if https {
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots(settings)?)))
                .build()
        } else {
            ureq::tls::TlsConfig::default()
        };
        let timeout = Duration::from_secs(settings.timeout);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .https_only(https)
            // The service answers in place; a redirect elsewhere is not it.
            .max_redirects(0)
            .proxy(proxy)
            .tls_config(tls)
            .timeout_global(Some(timeout))
            .user_agent(concat!("smtp-edge/", env!("CARGO_PKG_VERSION")))
            .max_idle_connections(0)
            .build()
            .into();
        Ok(Client {
            agent,
            base: settings.service_url.clone(),
            timeout: settings.timeout,
        })
    }

    /// GETs `base + path` and returns the body of a 200 answer.
    pub fn get(&self, path: &str) -> Result<String, FetchError> {
        let url = format!("{}{path}", self.base);
        let transport = |e: ureq::Error| match e {
            ureq::Error::Timeout(_) => FetchError::Timeout {
                url: url.clone(),
                seconds: self.timeout,
            },
            ureq::Error::BodyExceedsLimit(_) => FetchError::TooLarge { url: url.clone() },
            other => FetchError::Transport {
                url: url.clone(),
                message: other.to_string(),
            },
        };
        let mut response = self
            .agent
            .get(&url)
            .header("Accept", "application/json")
            .call()
            .map_err(transport)?;
        let status = response.status().as_u16();
        if status != 200 {
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            return Err(FetchError::Status {
                url,
                status,
                retry_after,
            });
        }
        let bytes = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map_err(transport)?;
        String::from_utf8(bytes).map_err(|_| FetchError::Transport {
            url,
            message: "the answer is not UTF-8".into(),
        })
    }
}
