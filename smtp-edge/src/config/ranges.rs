//! `[ranges]`: how the Exchange Online port-25 ranges keep themselves current
//! from Microsoft's "IP address and URL web service".
//!
//! ```toml
//! [ranges]
//! auto_update = true
//! service_url = "https://endpoints.office.com"
//! instance = "Worldwide"
//! check_interval = 3600        # seconds; only /version is asked this often
//! removal_grace = 604800       # 7 days: a prefix no longer listed stays allowed
//! max_shrink = 25              # percent of prefixes one update may remove
//! stale_after = 3888000        # 45 days without a successful check: a warning
//! proxy = ""                   # empty: HTTPS_PROXY / ALL_PROXY (NO_PROXY honoured)
//! tls_trust = "system"         # or a PEM file of CA certificates
//! timeout = 30                 # seconds per request
//! ```

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

/// The web service's instances (cloud environments).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum Instance {
    /// Microsoft 365 worldwide, including GCC.
    #[default]
    Worldwide,
    /// US Government DoD.
    USGovDoD,
    /// US Government GCC High.
    USGovGCCHigh,
    /// Microsoft 365 operated by 21Vianet.
    China,
}

impl Instance {
    /// The name used in the web service's paths.
    pub fn as_str(self) -> &'static str {
        match self {
            Instance::Worldwide => "Worldwide",
            Instance::USGovDoD => "USGovDoD",
            Instance::USGovGCCHigh => "USGovGCCHigh",
            Instance::China => "China",
        }
    }
}

impl std::fmt::Display for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Exchange Online port-25 sources as published (endpoint set 10, service area
/// Exchange, TCP 25, `*.mail.protection.outlook.com`): the list the gate
/// starts from, and what an inbound connector's sources are compared with to
/// tell whether they are shared with every Microsoft 365 tenant.
pub const BUNDLED: [&str; 6] = [
    "40.92.0.0/15",
    "40.107.0.0/16",
    "52.100.0.0/14",
    "104.47.0.0/17",
    "2a01:111:f400::/48",
    "2a01:111:f403::/48",
];

/// The published default of the web service.
pub const DEFAULT_SERVICE_URL: &str = "https://endpoints.office.com";

/// `[ranges]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRanges {
    /// Check the web service on a schedule (the daemon does it only while
    /// the ranges are in use: the gate's Exchange Online entries or an
    /// inbound connector with the `exchange-online` source).
    pub auto_update: bool,
    /// The web service's base URL; `http://127.0.0.1:PORT` serves recorded
    /// answers in tests and labs.
    pub service_url: Spanned<String>,
    /// The instance.
    pub instance: Instance,
    /// Seconds between version checks.
    pub check_interval: Spanned<u64>,
    /// Seconds a prefix Microsoft stops listing stays allowed.
    pub removal_grace: Spanned<u64>,
    /// Percent of the prefixes in force one update may remove.
    pub max_shrink: Spanned<u64>,
    /// Seconds without a successful check before the list counts as stale.
    pub stale_after: Spanned<u64>,
    /// HTTP(S) proxy URL; empty: the environment's (HTTPS_PROXY, ALL_PROXY,
    /// HTTP_PROXY; NO_PROXY honoured).
    pub proxy: Spanned<String>,
    /// Trust for the service's certificate: "system" or a PEM file.
    pub tls_trust: Spanned<String>,
    /// Seconds for one request (connect, headers and body).
    pub timeout: Spanned<u64>,
}

impl Default for RawRanges {
    fn default() -> Self {
        let s = |v: u64| Spanned::new(0..0, v);
        Self {
            auto_update: true,
            service_url: Spanned::new(0..0, DEFAULT_SERVICE_URL.to_string()),
            instance: Instance::Worldwide,
            check_interval: s(3600),
            removal_grace: s(7 * 86_400),
            max_shrink: s(25),
            stale_after: s(45 * 86_400),
            proxy: Spanned::new(0..0, String::new()),
            tls_trust: Spanned::new(0..0, "system".to_string()),
            timeout: s(30),
        }
    }
}

/// Validated `[ranges]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranges {
    /// Check on a schedule.
    pub auto_update: bool,
    /// Base URL without a trailing slash.
    pub service_url: String,
    /// Instance.
    pub instance: Instance,
    /// Seconds between checks.
    pub check_interval: u64,
    /// Seconds of grace for removed prefixes.
    pub removal_grace: u64,
    /// Percent one update may remove.
    pub max_shrink: u64,
    /// Seconds before a list counts as stale.
    pub stale_after: u64,
    /// Explicit proxy.
    pub proxy: Option<String>,
    /// CA file (None: the system's roots).
    pub tls_trust: Option<PathBuf>,
    /// Seconds per request.
    pub timeout: u64,
}

impl Default for Ranges {
    fn default() -> Self {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let at = |_: std::ops::Range<usize>, message: String| super::ConfigError {
            file: String::new(),
            line: 0,
            column: 0,
            message,
        };
        validate(RawRanges::default(), &at, &mut errors, &mut warnings)
    }
}

/// Whether `url` is an http(s) URL with a host and no query or fragment.
fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("must start with https:// (or http:// for a local server)")?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err("has no host".into());
    }
    if rest.contains(['?', '#', ' ']) {
        return Err("must not carry a query, a fragment or spaces".into());
    }
    if url.starts_with("http://") {
        let h = host
            .rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let loopback = h == "localhost"
            || h.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err(
                "must use https:// (plain http:// only on loopback, for recorded answers)".into(),
            );
        }
    }
    Ok(())
}

/// Validates the section.
pub(super) fn validate(
    raw: RawRanges,
    at: super::error::At<'_>,
    errors: &mut Vec<super::ConfigError>,
    warnings: &mut Vec<super::ConfigError>,
) -> Ranges {
    if let Err(e) = check_url(raw.service_url.get_ref()) {
        errors.push(at(
            raw.service_url.span(),
            format!("ranges.service_url `{}` {e}", raw.service_url.get_ref()),
        ));
    }
    let proxy = raw.proxy.get_ref().trim().to_string();
    if !proxy.is_empty() && !["http://", "https://"].iter().any(|p| proxy.starts_with(p)) {
        errors.push(at(
            raw.proxy.span(),
            format!(
                "ranges.proxy `{proxy}` must be an http:// or https:// URL (SOCKS is not supported)"
            ),
        ));
    }
    let tls_trust = match raw.tls_trust.get_ref().as_str() {
        "system" => None,
        path => {
            let p = PathBuf::from(path);
            if !p.is_file() {
                errors.push(at(
                    raw.tls_trust.span(),
                    format!("ranges.tls_trust: CA file {} does not exist", p.display()),
                ));
            }
            Some(p)
        }
    };
    for (name, value, min, max) in [
        ("check_interval", &raw.check_interval, 1, 7 * 86_400),
        ("removal_grace", &raw.removal_grace, 0, 365 * 86_400),
        ("max_shrink", &raw.max_shrink, 0, 100),
        ("stale_after", &raw.stale_after, 3600, 365 * 86_400),
        ("timeout", &raw.timeout, 1, 300),
    ] {
        let v = *value.get_ref();
        if !(min..=max).contains(&v) {
            errors.push(at(
                value.span(),
                format!("ranges.{name} = {v} is out of range ({min}..={max})"),
            ));
        }
    }
    if raw.auto_update && *raw.check_interval.get_ref() < 3600 {
        warnings.push(at(
            raw.check_interval.span(),
            format!(
                "ranges.check_interval = {} s: Microsoft asks for at most one version check an hour",
                raw.check_interval.get_ref()
            ),
        ));
    }
    Ranges {
        auto_update: raw.auto_update,
        service_url: raw.service_url.get_ref().trim_end_matches('/').to_string(),
        instance: raw.instance,
        check_interval: *raw.check_interval.get_ref(),
        removal_grace: *raw.removal_grace.get_ref(),
        max_shrink: *raw.max_shrink.get_ref(),
        stale_after: *raw.stale_after.get_ref(),
        proxy: (!proxy.is_empty()).then_some(proxy),
        tls_trust,
        timeout: *raw.timeout.get_ref(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(check_url("https://endpoints.office.com").is_ok());
        assert!(check_url("http://127.0.0.1:8080/").is_ok());
        assert!(check_url("ftp://x").is_err());
        assert!(check_url("https://").is_err());
        assert!(check_url("https://x/?a=b").is_err());
        assert!(check_url("http://endpoints.office.com").is_err());
        assert!(check_url("http://[::1]:8080").is_ok());
        assert!(check_url("http://localhost:9").is_ok());
    }

    #[test]
    fn defaults_are_microsofts() {
        let r = Ranges::default();
        assert_eq!(r.service_url, DEFAULT_SERVICE_URL);
        assert_eq!(r.instance, Instance::Worldwide);
        assert_eq!(r.check_interval, 3600);
        assert_eq!(r.removal_grace, 7 * 86_400);
        assert_eq!(r.max_shrink, 25);
        assert_eq!(r.stale_after, 45 * 86_400);
        assert!(r.proxy.is_none() && r.tls_trust.is_none());
    }
}
