//! `[metrics]`: the Prometheus endpoint.
//!
//! ```toml
//! [metrics]
//! listen = "127.0.0.1:9325"   # empty (the default): no endpoint
//! ```

use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;

/// `[metrics]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMetrics {
    /// Address of the `/metrics` endpoint; empty: off.
    pub listen: Spanned<String>,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            listen: Spanned::new(0..0, String::new()),
        }
    }
}

/// Validated `[metrics]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Where `/metrics` is served; `None`: nowhere.
    pub listen: Option<SocketAddr>,
}

/// Validates the section.
pub(super) fn validate(
    raw: RawMetrics,
    at: super::error::At<'_>,
    errors: &mut Vec<super::ConfigError>,
    warnings: &mut Vec<super::ConfigError>,
) -> Metrics {
    let text = raw.listen.get_ref().trim();
    if text.is_empty() {
        return Metrics::default();
    }
    match text.parse::<SocketAddr>() {
        Ok(a) => {
            if !a.ip().is_loopback() {
                warnings.push(at(
                    raw.listen.span(),
                    format!(
                        "metrics.listen = {a}: the endpoint has no authentication; keep it on loopback or a management network"
                    ),
                ));
            }
            Metrics { listen: Some(a) }
        }
        Err(_) => {
            errors.push(at(
                raw.listen.span(),
                format!("metrics.listen `{text}` is not an address:port (use [::1]:9325 for IPv6)"),
            ));
            Metrics::default()
        }
    }
}
