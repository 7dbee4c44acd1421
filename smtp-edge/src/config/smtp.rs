//! `[smtp]`: the receiving side's settings (its connectors are
//! [`super::inbound`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::error::{At, ConfigError};
use crate::address::DomainPattern;

/// The connectors (their own module; the old paths keep working).
pub use super::inbound::{InboundConnector, RawInbound, Trust};
pub use super::tenant::RawTenant;

/// What to do with a bare CR or LF in message data (`reject` or `normalize`).
pub use crate::smtp::data::BareLineEndings;

/// The longest timeout accepted, in seconds.
const MAX_TIMEOUT: u64 = 86_400;

/// `[smtp.timeouts]` in seconds (RFC 5321 §4.5.3.2 server side).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Waiting for a command (also the connection inactivity limit).
    pub command: u64,
    /// Waiting for the next block of message data.
    pub data_block: u64,
    /// The whole session, whatever the client does (Exchange's
    /// ConnectionTimeout).
    pub session: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            command: 300,
            data_block: 180,
            session: 600,
        }
    }
}

/// `[smtp.tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain (PEM, leaf first).
    pub certificate: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// `[smtp]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSmtp {
    /// Accept mail at all.
    pub enabled: bool,
    /// Listening addresses.
    pub listen: Vec<Spanned<String>>,
    /// Name in the banner, EHLO reply and Received headers.
    pub hostname: String,
    /// Domains this host accepts mail for (`contoso.com`, `*.contoso.com`).
    pub accepted_domains: Vec<Spanned<String>>,
    /// Spool directory.
    pub spool_dir: PathBuf,
    /// fsync before 250 (only a benchmark turns this off).
    pub fsync: bool,
    /// reject or normalize.
    pub bare_line_endings: BareLineEndings,
    /// Octets (default 36 MB, Exchange's default).
    pub max_message_size: u64,
    /// Recipients per message.
    pub max_recipients: u32,
    /// Connections in total.
    pub max_connections: u32,
    /// Connections per source network.
    pub max_connections_per_source: u32,
    /// Prefix length of an IPv4 source for that limit.
    pub per_source_prefix_v4: u8,
    /// Prefix length of an IPv6 source for that limit.
    pub per_source_prefix_v6: u8,
    /// Octets per second a client must average while sending message data
    /// (0: no minimum).
    pub min_data_rate: u64,
    /// Header fields removed from untrusted connectors' messages, beyond the
    /// Exchange-internal families (`X-Name` or `X-Prefix-*`).
    pub strip_headers: Vec<Spanned<String>>,
    /// Protocol errors before the connection is closed.
    pub max_errors: u32,
    /// Received headers above which a message is a loop.
    pub max_received_headers: u32,
    /// The largest header section, octets (Exchange's MaxHeaderSize).
    pub max_header_size: usize,
    /// Octets per command line, CRLF included.
    pub command_line_limit: usize,
    /// Octets per text line, CRLF included.
    pub text_line_limit: usize,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Server certificate for STARTTLS.
    pub tls: Option<TlsFiles>,
}

impl Default for RawSmtp {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: Vec::new(),
            hostname: String::new(),
            accepted_domains: Vec::new(),
            spool_dir: PathBuf::from("/var/spool/smtp-edge"),
            fsync: true,
            bare_line_endings: BareLineEndings::Reject,
            max_message_size: 36 * 1024 * 1024,
            max_recipients: 200,
            max_connections: 1000,
            max_connections_per_source: 20,
            per_source_prefix_v4: 32,
            per_source_prefix_v6: 64,
            min_data_rate: 500,
            strip_headers: Vec::new(),
            max_errors: 10,
            max_received_headers: 50,
            max_header_size: 256 * 1024,
            command_line_limit: 512,
            text_line_limit: 1000,
            timeouts: Timeouts::default(),
            tls: None,
        }
    }
}

/// Validated `[smtp]` and connectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Smtp {
    /// As written (limits, timeouts, paths).
    pub raw: RawSmtp,
    /// Listening addresses.
    pub listen: Vec<SocketAddr>,
    /// Host name.
    pub hostname: String,
    /// Accepted domains.
    pub accepted: Vec<DomainPattern>,
    /// Connectors.
    pub connectors: Vec<InboundConnector>,
}

/// Validates the section; `at(span, message)` builds located errors (and
/// warnings: valid settings an administrator should think twice about).
pub(super) fn validate(
    raw: RawSmtp,
    connectors: Vec<RawInbound>,
    at: At<'_>,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<ConfigError>,
) -> Smtp {
    let mut listen = Vec::new();
    for l in &raw.listen {
        match l.get_ref().parse::<SocketAddr>() {
            Ok(a) => listen.push(a),
            Err(_) => errors.push(at(
                l.span(),
                format!(
                    "`{}` is not an address:port (use [::]:25 for IPv6)",
                    l.get_ref()
                ),
            )),
        }
    }
    if raw.enabled && listen.is_empty() {
        errors.push(at(
            0..0,
            "smtp.listen: at least one address is needed when smtp.enabled is true".into(),
        ));
    }
    let hostname = if raw.hostname.is_empty() {
        hostname_of_host()
    } else {
        raw.hostname.clone()
    };
    let mut accepted = Vec::new();
    for d in &raw.accepted_domains {
        match DomainPattern::parse(d.get_ref()) {
            Ok(DomainPattern::Any | DomainPattern::Accepted) => errors.push(at(
                d.span(),
                "accepted domains are domains or *.domain".into(),
            )),
            Ok(p) => accepted.push(p),
            Err(e) => errors.push(at(d.span(), e)),
        }
    }
    for (name, value, min) in [
        ("max_message_size", raw.max_message_size, 1024),
        ("max_recipients", u64::from(raw.max_recipients), 1),
        ("max_connections", u64::from(raw.max_connections), 1),
        (
            "max_connections_per_source",
            u64::from(raw.max_connections_per_source),
            1,
        ),
        ("max_errors", u64::from(raw.max_errors), 1),
        (
            "max_received_headers",
            u64::from(raw.max_received_headers),
            1,
        ),
        ("max_header_size", raw.max_header_size as u64, 1024),
        ("command_line_limit", raw.command_line_limit as u64, 512),
        ("text_line_limit", raw.text_line_limit as u64, 1000),
        ("timeouts.command", raw.timeouts.command, 1),
        ("timeouts.data_block", raw.timeouts.data_block, 1),
        ("timeouts.session", raw.timeouts.session, 1),
    ] {
        if value < min {
            errors.push(at(
                0..0,
                format!("smtp.{name} = {value} is below the minimum {min}"),
            ));
        }
    }
    if raw.max_recipients > 10_000 {
        errors.push(at(
            0..0,
            format!(
                "smtp.max_recipients = {} is above 10000",
                raw.max_recipients
            ),
        ));
    }
    for (name, value) in [
        ("timeouts.command", raw.timeouts.command),
        ("timeouts.data_block", raw.timeouts.data_block),
        ("timeouts.session", raw.timeouts.session),
    ] {
        if value > MAX_TIMEOUT {
            errors.push(at(
                0..0,
                format!("smtp.{name} = {value} is above {MAX_TIMEOUT} seconds (one day)"),
            ));
        }
    }
    for (name, value, max) in [
        ("per_source_prefix_v4", raw.per_source_prefix_v4, 32),
        ("per_source_prefix_v6", raw.per_source_prefix_v6, 128),
    ] {
        if value > max {
            errors.push(at(0..0, format!("smtp.{name} = {value} is above {max}")));
        }
    }
    for p in &raw.strip_headers {
        if let Err(e) = crate::smtp::header::Policy::new(std::slice::from_ref(p.get_ref())) {
            errors.push(at(p.span(), format!("smtp.strip_headers: {e}")));
        }
    }
    let connectors = super::inbound::validate(
        connectors,
        &accepted,
        raw.enabled,
        raw.tls.is_some(),
        at,
        errors,
        warnings,
    );
    Smtp {
        listen,
        hostname,
        accepted,
        connectors,
        raw,
    }
}

fn hostname_of_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
