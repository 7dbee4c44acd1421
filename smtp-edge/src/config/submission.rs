//! `[submission]`: SMTP AUTH for devices and apps.
//!
//! ```toml
//! [submission]
//! listen = ["192.0.2.1:587"]        # STARTTLS, then AUTH (RFC 6409)
//! listen_tls = ["192.0.2.1:465"]    # implicit TLS (RFC 8314)
//! plaintext_auth_sources = []       # legacy devices allowed AUTH without TLS
//! max_failures = 5                  # per source network (/32, /64)
//! lockout_seconds = 900
//! failure_delay_ms = 500            # doubles per failure, at most 8 s
//! rate_per_hour = 1800              # per device unless it has its own
//! header_from = "enforce"           # From/Sender must be the device's ("log": only log)
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::error::{At, ConfigError};

/// `[submission]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSubmission {
    /// STARTTLS listeners.
    pub listen: Vec<Spanned<String>>,
    /// Implicit-TLS listeners.
    pub listen_tls: Vec<Spanned<String>>,
    /// Sources that may AUTH without TLS (legacy devices).
    pub plaintext_auth_sources: Vec<Spanned<String>>,
    /// Failures before a lockout.
    pub max_failures: u32,
    /// Lockout length.
    pub lockout_seconds: u64,
    /// The first failure's delay.
    pub failure_delay_ms: u64,
    /// Messages per hour per device.
    pub rate_per_hour: u32,
    /// Whether a From or Sender field that is not the device's refuses.
    pub header_from: HeaderFrom,
}

/// What becomes of a device's message whose From or Sender field is not one
/// of the device's senders (`inbound::submission::send_as`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeaderFrom {
    /// Refused at the end of the data (550 5.7.60) and logged.
    #[default]
    Enforce,
    /// Relayed and logged.
    Log,
}

impl Default for RawSubmission {
    fn default() -> Self {
        RawSubmission {
            listen: Vec::new(),
            listen_tls: Vec::new(),
            plaintext_auth_sources: Vec::new(),
            max_failures: 5,
            lockout_seconds: 900,
            failure_delay_ms: 500,
            rate_per_hour: 1800,
            header_from: HeaderFrom::Enforce,
        }
    }
}

/// The brute-force guard's settings (`inbound::submission::guard`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardSettings {
    /// Failures before a lockout.
    pub max_failures: u32,
    /// How long a lockout lasts.
    pub lockout: Duration,
    /// The delay after the first failure.
    pub failure_delay: Duration,
}

impl Default for GuardSettings {
    fn default() -> Self {
        GuardSettings {
            max_failures: 5,
            lockout: Duration::from_secs(900),
            failure_delay: Duration::from_millis(500),
        }
    }
}

/// Validated `[submission]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// STARTTLS listeners.
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS listeners.
    pub listen_tls: Vec<SocketAddr>,
    /// Sources that may AUTH in plain text.
    pub plaintext_auth_sources: Vec<IpNet>,
    /// The brute-force guard's settings.
    pub guard: GuardSettings,
    /// Messages per hour per device.
    pub rate_per_hour: u32,
    /// From and Sender fields that are not the device's: refused or logged.
    pub header_from: HeaderFrom,
}

impl Submission {
    /// Whether any submission listener is configured.
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty() || !self.listen_tls.is_empty()
    }

    /// The ports the listeners use (for the gate).
    pub fn ports(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self
            .listen
            .iter()
            .chain(&self.listen_tls)
            .map(|a| a.port())
            .collect();
        p.sort_unstable();
        p.dedup();
        p
    }
}

/// Validates the section; `tls` says whether `[smtp.tls]` is set.
pub(super) fn validate(
    raw: RawSubmission,
    tls: bool,
    smtp_listen: &[SocketAddr],
    at: At<'_>,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<ConfigError>,
) -> Submission {
    let mut addrs = |list: &[Spanned<String>], what: &str| -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for l in list {
            match l.get_ref().parse::<SocketAddr>() {
                Ok(a) if smtp_listen.contains(&a) || out.contains(&a) => errors.push(at(
                    l.span(),
                    format!("submission.{what}: {a} is listened on already"),
                )),
                Ok(a) => out.push(a),
                Err(_) => errors.push(at(
                    l.span(),
                    format!(
                        "submission.{what}: `{}` is not an address:port",
                        l.get_ref()
                    ),
                )),
            }
        }
        out
    };
    let listen = addrs(&raw.listen, "listen");
    let listen_tls = addrs(&raw.listen_tls, "listen_tls");
    if listen_tls.iter().any(|a| listen.contains(a)) {
        errors.push(at(
            0..0,
            "submission: an address is in both listen and listen_tls".into(),
        ));
    }
    if (!listen.is_empty() || !listen_tls.is_empty()) && !tls {
        errors.push(at(
            0..0,
            "submission needs [smtp.tls]: passwords go only over TLS (465 is TLS from the start)"
                .into(),
        ));
    }
    let mut plaintext = Vec::new();
    for s in &raw.plaintext_auth_sources {
        match crate::address::spec::parse(s.get_ref()) {
            Ok(n) => plaintext.extend(n),
            Err(e) => errors.push(at(
                s.span(),
                format!("submission.plaintext_auth_sources: {e}"),
            )),
        }
    }
    if !plaintext.is_empty() {
        warnings.push(at(
            0..0,
            format!(
                "submission.plaintext_auth_sources: devices at {} may send their passwords \
                 without TLS (legacy devices only; keep that network small)",
                plaintext
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    for (name, value, min, max) in [
        ("max_failures", u64::from(raw.max_failures), 1, 1000),
        ("lockout_seconds", raw.lockout_seconds, 1, 86_400 * 7),
        ("failure_delay_ms", raw.failure_delay_ms, 0, 8000),
        ("rate_per_hour", u64::from(raw.rate_per_hour), 1, 1_000_000),
    ] {
        if !(min..=max).contains(&value) {
            errors.push(at(
                0..0,
                format!("submission.{name} = {value} is out of range ({min}..={max})"),
            ));
        }
    }
    Submission {
        listen,
        listen_tls,
        plaintext_auth_sources: plaintext,
        guard: GuardSettings {
            max_failures: raw.max_failures.max(1),
            lockout: Duration::from_secs(raw.lockout_seconds),
            failure_delay: Duration::from_millis(raw.failure_delay_ms),
        },
        rate_per_hour: raw.rate_per_hour.max(1),
        header_from: raw.header_from,
    }
}
