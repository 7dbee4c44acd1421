//! The configuration file (TOML): parsing and validation with exact locations.
//!
//! Every error names the file, line and column of the value at fault, and all
//! semantic errors are reported at once, so an admin fixes a file in one pass.

pub mod dns;
pub mod metrics;
pub mod outbound;
pub mod ranges;
pub mod smtp;
pub mod submission;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::gate::allowlist::{Entry, Origin};
use smtp_edge_common::capacity;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// 1-based line (0 when the whole file is at fault).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

/// All the problems found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Gate mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Drop packets to protected ports from sources outside the allowlist.
    #[default]
    Enforce,
    /// Count and log what would be dropped; pass everything.
    Monitor,
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum XdpAttach {
    /// Native (driver) mode, falling back to generic (skb) mode when the driver lacks XDP.
    #[default]
    Auto,
    /// Native mode only.
    Native,
    /// Generic mode only.
    Skb,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[daemon]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Daemon {
    /// Where the daemon keeps its state (CLI allowlist entries, imported ranges).
    pub state_dir: PathBuf,
    /// The control socket the CLI talks to.
    pub control_socket: PathBuf,
    /// Log format.
    pub log_format: LogFormat,
}

impl Default for Daemon {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/smtp-edge"),
            control_socket: PathBuf::from("/run/smtp-edge/control.sock"),
            log_format: LogFormat::Text,
        }
    }
}

/// `[filter.capacity]`: sizes of the kernel maps, fixed when they are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Capacity {
    /// Allowlist entries (each has a hit counter).
    pub entries: u32,
    /// IPv4 second-level blocks (one per /16 holding prefixes longer than /16).
    pub v4_l2_blocks: u32,
    /// IPv4 third-level blocks (one per /24 holding prefixes longer than /24).
    pub v4_l3_blocks: u32,
    /// IPv6 prefixes.
    pub v6_prefixes: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            entries: capacity::DEFAULT_ENTRIES,
            v4_l2_blocks: capacity::DEFAULT_V4_L2_BLOCKS,
            v4_l3_blocks: capacity::DEFAULT_V4_L3_BLOCKS,
            v6_prefixes: capacity::DEFAULT_V6_PREFIXES,
        }
    }
}

/// `[filter]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Filter {
    /// Whether the daemon loads and manages the XDP gate.
    pub enabled: bool,
    /// Internet-facing interfaces to attach to.
    pub interfaces: Vec<Spanned<String>>,
    /// Protected TCP destination ports.
    pub ports: Spanned<Vec<Spanned<u32>>>,
    /// enforce or monitor.
    pub mode: Mode,
    /// auto, native or skb.
    pub xdp_mode: XdpAttach,
    /// bpffs directory for the pinned program links and maps.
    pub pin_dir: PathBuf,
    /// Drop events logged per second and per CPU (0 = none).
    pub drop_events_per_second: u32,
    /// Map sizes.
    pub capacity: Capacity,
}

impl Default for Filter {
    fn default() -> Self {
        Self {
            enabled: true,
            interfaces: Vec::new(),
            ports: Spanned::new(0..0, vec![Spanned::new(0..0, 25)]),
            mode: Mode::Enforce,
            xdp_mode: XdpAttach::Auto,
            pin_dir: PathBuf::from("/sys/fs/bpf/smtp-edge"),
            drop_events_per_second: 20,
            capacity: Capacity::default(),
        }
    }
}

/// One `[[allowlist.entries]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEntry {
    /// Address, CIDR, address/dotted-mask or start-end range.
    pub source: Spanned<String>,
    /// Free text shown in listings and stats.
    #[serde(default)]
    pub comment: String,
}

/// `[allowlist]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Allowlist {
    /// Include the Exchange Online port-25 ranges (bundled, or the imported ones).
    pub exchange_online: bool,
    /// Static entries.
    pub entries: Vec<RawEntry>,
}

impl Default for Allowlist {
    fn default() -> Self {
        Self {
            exchange_online: true,
            entries: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    daemon: Daemon,
    #[serde(default)]
    filter: Filter,
    #[serde(default)]
    allowlist: Allowlist,
    #[serde(default)]
    smtp: smtp::RawSmtp,
    #[serde(default)]
    inbound_connectors: Vec<smtp::RawInbound>,
    #[serde(default)]
    outbound_connectors: Vec<outbound::RawOutbound>,
    #[serde(default)]
    queue: outbound::Queue,
    #[serde(default)]
    dns: dns::Dns,
    #[serde(default)]
    ranges: ranges::RawRanges,
    #[serde(default)]
    metrics: metrics::RawMetrics,
    #[serde(default)]
    submission: submission::RawSubmission,
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// `[daemon]`.
    pub daemon: Daemon,
    /// `[filter]`.
    pub filter: Filter,
    /// The protected ports (validated).
    pub ports: Vec<u16>,
    /// `[allowlist]`.
    pub allowlist: Allowlist,
    /// Static entries, parsed.
    pub static_entries: Vec<Entry>,
    /// `[smtp]` and `[[inbound_connectors]]`.
    pub smtp: smtp::Smtp,
    /// `[[outbound_connectors]]`, validated.
    pub outbound: Vec<crate::outbound::routing::Outbound>,
    /// `[queue]`.
    pub queue: outbound::Queue,
    /// `[dns]`.
    pub dns: dns::Dns,
    /// `[ranges]`.
    pub ranges: ranges::Ranges,
    /// `[metrics]`.
    pub metrics: metrics::Metrics,
    /// `[submission]`.
    pub submission: submission::Submission,
    /// Valid settings worth a second look (shown by `config check`, logged
    /// at start and reload).
    pub warnings: Vec<ConfigError>,
}

/// Maps a byte offset to 1-based line and column (columns count characters).
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.display().to_string(),
                line: 0,
                column: 0,
                message: format!("cannot read: {e}"),
            }])
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let at = |span: std::ops::Range<usize>, message: String| {
            let (line, column) = line_col(text, span.start);
            ConfigError {
                file: file.clone(),
                line,
                column,
                message,
            }
        };
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            ConfigErrors(vec![at(span, e.message().trim_end().to_string())])
        })?;
        let mut errors = Vec::new();

        let f = &raw.filter;
        if f.enabled && f.interfaces.is_empty() {
            errors.push(ConfigError {
                file: file.clone(),
                line: 0,
                column: 0,
                message:
                    "filter.interfaces: at least one interface is needed when the filter is enabled"
                        .into(),
            });
        }
        for i in &f.interfaces {
            let name = i.get_ref();
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
                errors.push(at(
                    i.span(),
                    format!("`{name}` is not a valid interface name"),
                ));
            }
        }
        let mut ports = Vec::new();
        if f.ports.get_ref().is_empty() {
            errors.push(at(
                f.ports.span(),
                "filter.ports: at least one port is needed".into(),
            ));
        }
        for p in f.ports.get_ref() {
            match u16::try_from(*p.get_ref()) {
                Ok(port) if port != 0 => {
                    if !ports.contains(&port) {
                        ports.push(port);
                    }
                }
                _ => errors.push(at(
                    p.span(),
                    format!("port {} is out of range (1..=65535)", p.get_ref()),
                )),
            }
        }
        let c = &f.capacity;
        for (name, value, max) in [
            ("entries", c.entries, 1 << 22),
            ("v4_l2_blocks", c.v4_l2_blocks, 1 << 18),
            ("v4_l3_blocks", c.v4_l3_blocks, 1 << 22),
            ("v6_prefixes", c.v6_prefixes, 1 << 22),
        ] {
            if value == 0 || value > max {
                errors.push(ConfigError {
                    file: file.clone(),
                    line: 0,
                    column: 0,
                    message: format!(
                        "filter.capacity.{name} = {value} is out of range (1..={max})"
                    ),
                });
            }
        }

        let mut static_entries = Vec::new();
        for e in &raw.allowlist.entries {
            match Entry::parse(Origin::Config, e.source.get_ref(), &e.comment) {
                Ok(entry) => static_entries.push(entry),
                Err(err) => errors.push(at(e.source.span(), err.to_string())),
            }
        }
        let mut warnings = Vec::new();
        let smtp = smtp::validate(
            raw.smtp,
            raw.inbound_connectors,
            &at,
            &mut errors,
            &mut warnings,
        );
        let outbound = outbound::validate(raw.outbound_connectors, &raw.queue, &at, &mut errors);
        let ranges = ranges::validate(raw.ranges, &at, &mut errors, &mut warnings);
        let metrics = metrics::validate(raw.metrics, &at, &mut errors, &mut warnings);
        let submission = submission::validate(
            raw.submission,
            smtp.raw.tls.is_some(),
            &smtp.listen,
            &at,
            &mut errors,
            &mut warnings,
        );
        if submission.enabled() && !smtp.raw.enabled {
            errors.push(at(
                0..0,
                "[submission] needs smtp.enabled = true (it spools and relays as the receiving side does)"
                    .into(),
            ));
        }
        if submission.enabled() && !raw.filter.enabled {
            warnings.push(at(
                0..0,
                "[submission] listens while the gate is off (filter.enabled = false): any source \
                 that can reach its ports may try passwords"
                    .into(),
            ));
        }
        // The gate protects the submission ports too: LAN-only sources are
        // written in the allowlist as for port 25.
        for p in submission.ports() {
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        for message in raw.dns.problems() {
            errors.push(ConfigError {
                file: file.clone(),
                line: 0,
                column: 0,
                message,
            });
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Config {
            smtp,
            outbound,
            queue: raw.queue,
            dns: raw.dns,
            ranges,
            metrics,
            submission,
            path: path.to_path_buf(),
            daemon: raw.daemon,
            filter: raw.filter,
            ports,
            allowlist: raw.allowlist,
            static_entries,
            warnings,
        })
    }

    /// Interface names.
    pub fn interfaces(&self) -> Vec<String> {
        self.filter
            .interfaces
            .iter()
            .map(|s| s.get_ref().clone())
            .collect()
    }

    /// The Exchange Online entries of the gate: the list in force (bundled,
    /// imported or fetched, with the prefixes waiting for their removal
    /// date); none when `allowlist.exchange_online` is false.
    pub fn exchange_entries(&self, ranges: &crate::gate::ranges::RangesState) -> Vec<Entry> {
        if !self.allowlist.exchange_online {
            return Vec::new();
        }
        let comment = match (ranges.origin, &ranges.version) {
            (crate::gate::ranges::Origin::Service, Some(v)) => {
                format!("Exchange Online (version {v})")
            }
            (origin, _) => format!("Exchange Online ({origin} list)"),
        };
        let mut out: Vec<Entry> = ranges
            .ranges
            .iter()
            .filter_map(|l| Entry::parse(Origin::ExchangeOnline, &l.prefix, &comment).ok())
            .collect();
        out.extend(ranges.pending_removal.iter().filter_map(|p| {
            let note = format!(
                "Exchange Online (no longer listed; allowed until {})",
                crate::smtp::trace::rfc5322_date(p.remove_at)
            );
            Entry::parse(Origin::ExchangeOnline, &p.prefix, &note).ok()
        }));
        out
    }

    /// Whether anything uses the Exchange Online ranges: the gate's entries
    /// or an inbound connector with the `exchange-online` source. Only then
    /// does the daemon keep them current.
    pub fn uses_exchange_ranges(&self) -> bool {
        (self.filter.enabled && self.allowlist.exchange_online)
            || (self.smtp.raw.enabled && self.smtp.connectors.iter().any(|c| c.exchange_online))
    }
}

/// A complete, commented configuration (`smtp-edge config example`).
pub const EXAMPLE: &str = r#"# smtp-edge configuration.
# Check a file with `smtp-edge config check FILE`; apply changes with
# `smtp-edge reload` (a file with errors is refused and the running
# configuration stays in force).

[daemon]
# Daemon state: allowlist entries added with `smtp-edge allow add`, imported
# Exchange Online ranges, and the entry ids behind the kernel counters.
state_dir = "/var/lib/smtp-edge"
# Unix socket the `smtp-edge` CLI uses to talk to the running daemon.
control_socket = "/run/smtp-edge/control.sock"
# "text" or "json" (one object per line, for log shippers).
log_format = "text"

[filter]
# Load the XDP gate. With false the daemon leaves any pinned gate alone.
enabled = true
# Internet-facing interfaces. Only TCP to `ports` is filtered there; everything
# else (ARP, UDP, other ports, replies to this host's own connections) passes.
interfaces = ["eth0"]
# Protected TCP destination ports. 465 and 587 may be added.
ports = [25]
# "enforce" drops packets from sources outside the allowlist; "monitor" only
# counts and logs them (start here to find legitimate senders you missed).
mode = "enforce"
# "auto" (native XDP, or generic skb mode when the driver lacks it), "native", "skb".
xdp_mode = "auto"
# bpffs directory where the program links and maps are pinned. The gate stays in
# force when the daemon stops; `smtp-edge filter detach` removes it.
pin_dir = "/sys/fs/bpf/smtp-edge"
# Sampled drop events logged per second and per CPU (0 = none).
drop_events_per_second = 20

[filter.capacity]
# Kernel map sizes, fixed when the maps are created. Changing them needs
# `smtp-edge filter detach` and a restart.
entries = 16384        # allowlist entries (one hit counter each)
v4_l2_blocks = 4096    # /16s that hold prefixes longer than /16 (1 KiB each)
v4_l3_blocks = 4096    # /24s that hold prefixes longer than /24 (1 KiB each)
v6_prefixes = 16384    # IPv6 prefixes

[allowlist]
# Exchange Online's port-25 ranges: the list in force, kept current from
# Microsoft's endpoints web service (see [ranges]; `smtp-edge ranges status`).
# A fresh install starts from the bundled list (endpoint set 10: 40.92.0.0/15,
# 40.107.0.0/16, 52.100.0.0/14, 104.47.0.0/17, 2a01:111:f400::/48,
# 2a01:111:f403::/48).
exchange_online = true

# Static entries: an address, CIDR, address/dotted-mask or start-end range
# (the forms of Exchange's RemoteIPRanges). Ranges become the minimal CIDR set.
[[allowlist.entries]]
source = "198.51.100.25"
comment = "on-prem Exchange (outbound to Microsoft 365)"

[[allowlist.entries]]
source = "198.51.100.64/255.255.255.192"
comment = "scanners and line-of-business apps"

[[allowlist.entries]]
source = "203.0.113.10-203.0.113.20"
comment = "partner relay"

[smtp]
# The receiving side (ESMTP + STARTTLS). Off unless enabled.
enabled = false
listen = ["0.0.0.0:25", "[::]:25"]
# Name in the banner, the EHLO reply and Received headers (default: host name).
hostname = "edge.contoso.com"
# Domains this host accepts mail for; `*.contoso.com` also covers contoso.com.
accepted_domains = ["contoso.com"]
# Accepted messages are written here (and fsync'd) before the client gets 250.
spool_dir = "/var/spool/smtp-edge"
fsync = true
# A bare CR or LF in a command or in message data: "reject" (the default,
# closes SMTP smuggling) or "normalize" (Postfix-style: turn it into CRLF; such
# a line end never ends the message).
bare_line_endings = "reject"
max_message_size = 37748736        # 36 MB, as Exchange
max_recipients = 200               # then 452 4.5.3
max_connections = 1000
max_connections_per_source = 20    # per source network:
per_source_prefix_v4 = 32          #   an IPv4 /32
per_source_prefix_v6 = 64          #   an IPv6 /64 (one site's network)
min_data_rate = 500                # octets/s a client must average in DATA/BDAT (0: off)
max_errors = 10                    # protocol errors before disconnect
max_received_headers = 50          # above: mail loop, 554 5.4.14
max_header_size = 262144           # octets of header section (Exchange's MaxHeaderSize)
command_line_limit = 512           # octets, CRLF included (RFC 5321 4.5.3.1.4)
text_line_limit = 1000             # octets, CRLF included (RFC 5321 4.5.3.1.6)
# Header fields removed from messages of connectors without trusted_headers,
# beyond the Exchange-internal families (X-MS-Exchange-Organization-*,
# -CrossTenant-*, -Transport-*, X-Forefront-Antispam-Report*, ...).
# An exact name or a prefix ending in "*".
strip_headers = []

[smtp.timeouts]
command = 300      # seconds waiting for a command (inactivity limit)
data_block = 180   # seconds waiting for the next block of message data
session = 600      # seconds for a whole session (Exchange's ConnectionTimeout)

[smtp.tls]
# TLS 1.2 and 1.3 only. Clients may present a certificate; connectors decide.
certificate = "/etc/smtp-edge/tls/edge.contoso.com.pem"
key = "/etc/smtp-edge/tls/edge.contoso.com.key"

# Inbound connectors: a connection gets the connector whose sources match its
# address most specifically; one without sources takes everyone else. With no
# match the connection is refused (554 5.7.1).
[[inbound_connectors]]
name = "from-exchange-online"
sources = ["exchange-online"]          # the Exchange Online port-25 ranges
require_tls = true
client_cert_names = ["mail.protection.outlook.com"]
client_cert_trust = "system"           # or a CA file path
recipient_domains = ["accepted"]       # any tenant sends from these ranges:
relay = false                          # never relay on the strength of the IP alone
# Every Microsoft 365 tenant sends from these ranges with this certificate:
# they prove "some tenant", not yours. What proves yours is a DKIM signature
# of your tenant's domain (Exchange Online signs with <tenant>.onmicrosoft.com,
# or a custom domain with DKIM enabled), keys asked through [dns], and the
# X-MS-Exchange-CrossTenant-Id field, when present, naming your tenant id
# (Entra admin center > Overview > Tenant ID).
tenants = [
  { id = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0", domains = ["contoso.onmicrosoft.com", "contoso.com"] },
]
tenant_policy = "enforce"              # refuse others with 550 5.7.1; "monitor":
                                       # accept, log, add Authentication-Results
# Exchange-internal headers (X-MS-Exchange-Organization-* ...) are kept only
# for messages proven to come from one of the tenants above; everything else
# loses them. Without tenants, shared sources never keep them.
trusted_headers = true

[[inbound_connectors]]
name = "from-on-prem"
sources = ["198.51.100.25", "198.51.100.64/26"]
sender_domains = ["accepted"]
relay = true                           # devices and apps may send anywhere

[[inbound_connectors]]
name = "internet"                      # no sources: everyone else
recipient_domains = ["accepted"]

# Outbound connectors: each recipient goes through the most specific match —
# an exact domain, then the longest `*.domain` (subdomains only), then
# "accepted" (all accepted domains), then "*". Microsoft's page lists "all
# accepted domains" before wildcards, but its worked example (sales.contoso.com
# goes to the *.contoso.com connector) shows most-specific-wins: so do we.
[[outbound_connectors]]
name = "to-on-prem"
recipient_domains = ["accepted"]
smart_hosts = ["exchange.contoso.com", "exchange2.contoso.com:25"]   # in order, with failover
tls = "domain-validation"             # none, opportunistic, encryption-only,
tls_domain = "*.contoso.com"          # certificate-validation, domain-validation
                                      # (without tls_domain: the next hop's own name)
tls_trust = "system"                  # or a PEM file of your own CA(s)

[[outbound_connectors]]
name = "to-microsoft-365"
recipient_domains = ["*"]
smart_hosts = ["contoso-com.mail.protection.outlook.com"]
tls = "domain-validation"
tls_domain = "mail.protection.outlook.com"
# Exchange Online's certificate-based inbound connector identifies us by this.
client_certificate = "/etc/smtp-edge/tls/edge.contoso.com.pem"
client_key = "/etc/smtp-edge/tls/edge.contoso.com.key"
ehlo_name = "edge.contoso.com"

[queue]
retry_schedule = [60, 300, 900, 1800]   # seconds; the last repeats
max_age = 172800                        # 2 days, then the sender gets a DSN
delay_notice_after = 14400              # 4 hours: a delay DSN (0: never)
max_concurrency = 100                   # deliveries at once
max_per_destination = 20                # at once to one next hop (smart host or MX host set)
max_addresses = 5                       # addresses tried per delivery attempt
max_sessions = 2                        # SMTP sessions per delivery attempt
session_cache_time = 2                  # seconds a session waits open for the next message to its next hop (0: off)
postmaster = ""                         # bounces of bounces go here; empty: dropped and logged

[queue.timeouts]
# Seconds; RFC 5321 4.5.3.2 (connect: Postfix's 30 s).
connect = 30
greeting = 300
command = 300
mail = 300
rcpt = 300
data_init = 120
data_block = 180
data_end = 600

[dns]
# Name servers for MX and smart host lookups; empty: those of /etc/resolv.conf.
nameservers = []
timeout_seconds = 5

[ranges]
# Keep the Exchange Online ranges current (only while something uses them:
# allowlist.exchange_online or an inbound connector with "exchange-online").
# The version is asked every check_interval; the list only when it changed.
auto_update = true
service_url = "https://endpoints.office.com"
instance = "Worldwide"          # USGovDoD, USGovGCCHigh, China
check_interval = 3600           # seconds (Microsoft: at most hourly)
removal_grace = 604800          # 7 days: a prefix no longer listed stays allowed
max_shrink = 25                 # percent one update may remove (--accept-shrink)
stale_after = 3888000           # 45 days without a successful check: a warning
proxy = ""                      # empty: HTTPS_PROXY / ALL_PROXY (NO_PROXY honoured)
tls_trust = "system"            # or a PEM file (a TLS-inspecting proxy's CA)
timeout = 30                    # seconds per request

[metrics]
# Prometheus endpoint (/metrics, OpenMetrics text); empty: off. No
# authentication: keep it on loopback or a management network.
listen = ""                     # e.g. "127.0.0.1:9325"

[submission]
# SMTP AUTH for scanners and apps that cannot use a certificate connector
# (Microsoft 365 turns Basic authentication for SMTP AUTH off): they log in
# here with a device account (`smtp-edge device add NAME --sender ...`) and
# their mail is relayed with the organisation's certificate. Empty: off.
# The gate protects these ports too: allow the LAN in [allowlist].
listen = []                     # STARTTLS, e.g. ["192.0.2.1:587"]
listen_tls = []                 # implicit TLS, e.g. ["192.0.2.1:465"]
plaintext_auth_sources = []     # legacy devices allowed AUTH without TLS (warned)
max_failures = 5                # per source network (/32, /64), then a lockout
lockout_seconds = 900           # then 454 4.7.0 until it passes
failure_delay_ms = 500          # before each 535, doubling, at most 8 s
rate_per_hour = 1800            # messages per device (Exchange Online: 30 a minute)
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(text, Path::new("edge.toml"))
    }

    #[test]
    fn example_is_valid_and_complete() {
        let c = parse(EXAMPLE).unwrap();
        assert_eq!(c.ports, vec![25]);
        assert_eq!(c.interfaces(), vec!["eth0"]);
        assert_eq!(c.static_entries.len(), 3);
        assert_eq!(c.static_entries[1].source, "198.51.100.64/26");
        assert_eq!(
            c.exchange_entries(&crate::gate::ranges::RangesState::bundled())
                .len(),
            6
        );
    }

    #[test]
    fn defaults() {
        let c = parse("[filter]\ninterfaces = [\"veth0\"]\n").unwrap();
        assert_eq!(c.filter.mode, Mode::Enforce);
        assert_eq!(c.filter.xdp_mode, XdpAttach::Auto);
        assert_eq!(c.ports, vec![25]);
        assert!(c.allowlist.exchange_online);
    }

    #[test]
    fn syntax_errors_have_locations() {
        let e = parse("[filter]\ninterfaces = [\"eth0\"\n").unwrap_err();
        assert_eq!(e.0[0].file, "edge.toml");
        assert_eq!(e.0[0].line, 2, "{e}");
        let e = parse("[filter]\nmode = \"block\"\ninterfaces=[\"a\"]\n").unwrap_err();
        assert_eq!((e.0[0].line, e.0[0].column), (2, 8), "{e}");
        assert!(e.to_string().contains("enforce"), "{e}");
        let e = parse("[filtre]\n").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn semantic_errors_are_all_reported_with_locations() {
        let text = r#"[filter]
interfaces = ["eth0"]
ports = [25, 70000]

[[allowlist.entries]]
source = "10.0.0.1/33"

[[allowlist.entries]]
source = "2001:db8::/129"

[[allowlist.entries]]
  source = "192.0.2.9-192.0.2.1"
"#;
        let e = parse(text).unwrap_err();
        let shown = e.to_string();
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), 4, "{shown}");
        assert!(
            lines[0].starts_with("edge.toml:3:14: port 70000"),
            "{shown}"
        );
        assert!(
            lines[1].starts_with("edge.toml:6:10: prefix length `33`"),
            "{shown}"
        );
        assert!(
            lines[2].starts_with("edge.toml:9:10: prefix length `129`"),
            "{shown}"
        );
        assert!(
            lines[3].starts_with("edge.toml:12:12: range start 192.0.2.9 is after"),
            "{shown}"
        );
    }

    #[test]
    fn filter_needs_interfaces_unless_disabled() {
        assert!(parse("").is_err());
        assert!(parse("[filter]\nenabled = false\n").is_ok());
        let e = parse("[filter]\ninterfaces = [\"this-name-is-too-long\"]\n").unwrap_err();
        assert!(e.to_string().contains("not a valid interface name"));
    }

    #[test]
    fn outbound_connectors_are_validated_with_locations() {
        let text = r#"[filter]
enabled = false

[[outbound_connectors]]
name = "a"
recipient_domains = ["contoso..com"]
smart_hosts = ["mx.contoso.com"]
tls = "maybe"

[[outbound_connectors]]
name = "b"
recipient_domains = ["*"]
use_mx = true
smart_hosts = ["mx.contoso.com"]

[[outbound_connectors]]
name = "c"
recipient_domains = ["*.contoso.com"]
"#;
        let e = parse(text).unwrap_err();
        let shown = e.to_string();
        assert!(shown.contains("edge.toml:6:22:"), "{shown}");
        assert!(shown.contains("edge.toml:8:7:"), "{shown}");
        assert!(
            shown.contains("edge.toml:14:16: use_mx and smart_hosts exclude each other"),
            "{shown}"
        );
        assert!(shown.contains("needs smart_hosts or use_mx"), "{shown}");
        let ok = parse(EXAMPLE).unwrap();
        assert_eq!(ok.outbound.len(), 2);
        assert_eq!(ok.queue.retry_schedule, vec![60, 300, 900, 1800]);
    }

    #[test]
    fn unreadable_file() {
        let e = Config::load(Path::new("/nonexistent/smtp-edge.toml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/smtp-edge.toml: cannot read")
        );
    }
}
