//! `[smtp]` and `[[inbound_connectors]]`: the receiving side's settings.

use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::address::{DomainPattern, spec};
use crate::inbound::policy::Inbound;

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

/// Where a connector's client certificate chain must lead.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(untagged)]
pub enum Trust {
    /// The system's root store.
    #[default]
    System,
    /// A PEM file of CA certificates.
    File(PathBuf),
}

/// One `[[inbound_connectors]]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInbound {
    /// Name.
    pub name: Spanned<String>,
    /// Source ranges (address forms of the allowlist, or `exchange-online`);
    /// none: the default connector.
    #[serde(default)]
    pub sources: Vec<Spanned<String>>,
    /// STARTTLS before MAIL.
    #[serde(default)]
    pub require_tls: bool,
    /// Certificate names (`mail.protection.outlook.com`, `*.contoso.com`).
    #[serde(default)]
    pub client_cert_names: Vec<Spanned<String>>,
    /// Trust for the client chain: "system" or a CA file path.
    #[serde(default)]
    pub client_cert_trust: Option<Spanned<String>>,
    /// Sender domains allowed.
    #[serde(default)]
    pub sender_domains: Vec<Spanned<String>>,
    /// Recipient domains accepted without relay.
    #[serde(default = "accepted_only")]
    pub recipient_domains: Vec<Spanned<String>>,
    /// Relay to any domain.
    #[serde(default)]
    pub relay: bool,
    /// Keep Exchange-internal headers (on sources shared with others: only
    /// for messages proven to come from one of `tenants`).
    #[serde(default)]
    pub trusted_headers: bool,
    /// The Microsoft 365 tenants allowed to send through this connector.
    #[serde(default)]
    pub tenants: Vec<RawTenant>,
    /// What the tenant check does: `enforce` (the default when tenants are
    /// given), `monitor` or `off`.
    #[serde(default)]
    pub tenant_policy: Option<Spanned<crate::inbound::tenant::Mode>>,
}

/// One `tenants = [{ id = "…", domains = ["…"] }]` entry as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    /// The tenant id (a GUID).
    pub id: Spanned<String>,
    /// Its `*.onmicrosoft.com` domain and the accepted domains it signs for.
    pub domains: Vec<Spanned<String>>,
}

/// The tenant rule of a connector (`None` when it checks none), its
/// problems added to `errors`.
fn tenant_rule(
    c: &RawInbound,
    name: &str,
    at: &dyn Fn(std::ops::Range<usize>, String) -> super::ConfigError,
    errors: &mut Vec<super::ConfigError>,
) -> Option<crate::inbound::tenant::Rule> {
    use crate::inbound::tenant::{Mode, Rule, Tenant, is_guid};
    let mode = match &c.tenant_policy {
        Some(m) => *m.get_ref(),
        None if c.tenants.is_empty() => Mode::Off,
        None => Mode::Enforce,
    };
    let span = c
        .tenant_policy
        .as_ref()
        .map_or_else(|| c.name.span(), |m| m.span());
    if mode != Mode::Off && !c.tenants.is_empty() && c.client_cert_names.is_empty() {
        // A signature alone can be replayed by anyone who ever got mail of
        // the tenant: only Exchange Online's certificate says the message
        // came through Exchange Online, which stamps who sent it.
        errors.push(at(
            c.name.span(),
            format!(
                "connector `{name}`: tenants need client_cert_names (Exchange Online's \
                 certificate, mail.protection.outlook.com): without it anyone could connect \
                 and present a replayed signature"
            ),
        ));
    }
    if mode != Mode::Off && c.tenants.is_empty() {
        errors.push(at(
            span,
            format!("connector `{name}`: tenant_policy = \"{mode}\" needs tenants"),
        ));
        return None;
    }
    let mut tenants: Vec<Tenant> = Vec::new();
    for t in &c.tenants {
        let id = t.id.get_ref().trim().to_ascii_lowercase();
        if !is_guid(&id) {
            errors.push(at(
                t.id.span(),
                format!("tenant id `{}` is not a GUID", t.id.get_ref()),
            ));
        }
        if tenants.iter().any(|x| x.id == id) {
            errors.push(at(t.id.span(), format!("tenant {id} is listed twice")));
        }
        if t.domains.is_empty() {
            errors.push(at(
                t.id.span(),
                format!(
                    "tenant {id} needs domains (its *.onmicrosoft.com domain and the domains it \
                     signs for)"
                ),
            ));
        }
        let mut domains = Vec::new();
        for d in &t.domains {
            match DomainPattern::parse(d.get_ref()) {
                Ok(DomainPattern::Exact(n))
                    if tenants.iter().any(|x: &Tenant| x.domains.contains(&n)) =>
                {
                    errors.push(at(
                        d.span(),
                        format!("domain {n} is listed for two tenants (a signature names one)"),
                    ));
                }
                Ok(DomainPattern::Exact(n)) => domains.push(n),
                Ok(_) => errors.push(at(
                    d.span(),
                    format!(
                        "tenant domains are domain names (a DKIM d= is one domain), not `{}`",
                        d.get_ref()
                    ),
                )),
                Err(e) => errors.push(at(d.span(), format!("tenants.domains: {e}"))),
            }
        }
        tenants.push(Tenant { id, domains });
    }
    (mode != Mode::Off).then_some(Rule { mode, tenants })
}

/// Whether a connector lists tenants but does not check them.
fn tenants_unchecked(c: &RawInbound) -> bool {
    !c.tenants.is_empty()
        && c.tenant_policy
            .as_ref()
            .is_some_and(|m| *m.get_ref() == crate::inbound::tenant::Mode::Off)
}

fn accepted_only() -> Vec<Spanned<String>> {
    vec![Spanned::new(0..0, "accepted".to_string())]
}

/// A validated inbound connector and the trust of its certificate rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundConnector {
    /// Policy.
    pub policy: Inbound,
    /// Trust for client certificates.
    pub trust: Trust,
    /// Its sources include `exchange-online`: the list in force is added to
    /// `policy.sources` when the server is built (and again when it changes).
    pub exchange_online: bool,
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
    at: &dyn Fn(std::ops::Range<usize>, String) -> super::ConfigError,
    errors: &mut Vec<super::ConfigError>,
    warnings: &mut Vec<super::ConfigError>,
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
    let exo: Vec<IpNet> = super::ranges::BUNDLED
        .iter()
        .filter_map(|r| spec::parse(r).ok())
        .flatten()
        .collect();
    let mut out = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for c in connectors {
        let name = c.name.get_ref().clone();
        if names.contains(&name) {
            errors.push(at(
                c.name.span(),
                format!("a connector named `{name}` already exists"),
            ));
        }
        names.push(name.clone());
        let mut sources: Vec<IpNet> = Vec::new();
        let mut exchange_online = false;
        for s in &c.sources {
            if s.get_ref() == "exchange-online" {
                exchange_online = true;
                continue;
            }
            match spec::parse(s.get_ref()) {
                Ok(n) => sources.extend(n),
                Err(e) => errors.push(at(s.span(), e.to_string())),
            }
        }
        let mut patterns = |list: &[Spanned<String>], what: &str| -> Vec<DomainPattern> {
            let mut v = Vec::new();
            for d in list {
                match DomainPattern::parse(d.get_ref()) {
                    Ok(p) => v.push(p),
                    Err(e) => errors.push(at(d.span(), format!("{what}: {e}"))),
                }
            }
            v
        };
        let client_cert_names = patterns(&c.client_cert_names, "client_cert_names");
        let sender_domains = patterns(&c.sender_domains, "sender_domains");
        let recipient_domains = patterns(&c.recipient_domains, "recipient_domains");
        let trust = match &c.client_cert_trust {
            None => Trust::System,
            Some(t) if t.get_ref() == "system" => Trust::System,
            Some(t) => {
                let p = PathBuf::from(t.get_ref());
                if !p.is_file() {
                    errors.push(at(
                        t.span(),
                        format!("CA file {} does not exist", p.display()),
                    ));
                }
                Trust::File(p)
            }
        };
        if raw.tls.is_none() && raw.enabled {
            if !client_cert_names.is_empty() {
                errors.push(at(
                    c.name.span(),
                    "client certificates need TLS: set [smtp.tls]".into(),
                ));
            } else if c.require_tls {
                errors.push(at(
                    c.name.span(),
                    "require_tls needs TLS: set [smtp.tls] (no client could ever send)".into(),
                ));
            }
        }
        let mut shared_sources = exchange_online;
        shared_sources |= sources
            .iter()
            .any(|n| exo.iter().any(|e| e.contains(n) || n.contains(e)));
        // No sources: everyone, the Exchange Online ranges included.
        shared_sources |= sources.is_empty() && !exchange_online;
        let tenants = tenant_rule(&c, &name, at, errors);
        if c.trusted_headers && shared_sources && tenants.is_none() {
            warnings.push(at(
                c.name.span(),
                format!(
                    "connector `{name}` has trusted_headers = true on sources it shares with others \
                     (the Exchange Online ranges, where every Microsoft 365 tenant sends from with \
                     the same certificate, or, without sources, everyone): without tenants nothing \
                     proves who sent a message, so its Exchange-internal headers are stripped (check \
                     tenants with tenant_policy, or set trusted_headers = false)"
                ),
            ));
        }
        if tenants_unchecked(&c) {
            warnings.push(at(
                c.name.span(),
                format!(
                    "connector `{name}` lists tenants but tenant_policy = \"off\": no message is \
                     checked"
                ),
            ));
        }
        if tenants
            .as_ref()
            .is_some_and(|t| t.mode == crate::inbound::tenant::Mode::Monitor)
        {
            warnings.push(at(
                c.name.span(),
                format!(
                    "connector `{name}` only monitors its tenants (tenant_policy = \"monitor\"): \
                     mail of any Microsoft 365 tenant is accepted"
                ),
            ));
        }
        out.push(InboundConnector {
            policy: Inbound {
                name,
                sources,
                require_tls: c.require_tls,
                client_cert_names,
                sender_domains,
                recipient_domains,
                relay: c.relay,
                // Shared sources earn header trust only by a tenant proof.
                trusted_headers: c.trusted_headers && (!shared_sources || tenants.is_some()),
                tenants,
            },
            trust,
            exchange_online,
        });
    }
    Smtp {
        listen,
        hostname,
        accepted,
        connectors: out,
        raw,
    }
}

fn hostname_of_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
