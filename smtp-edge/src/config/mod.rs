//! The configuration file (TOML): parsing and validation with exact locations.
//!
//! Every error names the file, line and column of the value at fault, and all
//! semantic errors are reported at once, so an admin fixes a file in one pass.
//! This module reads the file and holds the root [`Config`]; each section is
//! parsed and validated in its own module.
//!
//! A leaf: it turns the file into plain settings and calls nothing above the
//! floor (`address`, the pure `smtp` protocol for header patterns). Each
//! wing builds its runtime types from its section (`QueueConfig::load`,
//! `ServerConfig::from_config`, `gate::allowlist::static_entries`).

pub mod allowlist;
pub mod daemon;
pub mod dns;
pub mod error;
pub mod filter;
pub mod inbound;
pub mod metrics;
pub mod outbound;
pub mod queue;
pub mod ranges;
pub mod smtp;
pub mod submission;
pub mod tenant;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use allowlist::{Allowlist, RawEntry, StaticEntry};
pub use daemon::{Daemon, LogFormat};
pub use error::{ConfigError, ConfigErrors};
pub use filter::{Capacity, Filter, Mode, XdpAttach};

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
    inbound_connectors: Vec<inbound::RawInbound>,
    #[serde(default)]
    outbound_connectors: Vec<outbound::RawOutbound>,
    #[serde(default)]
    queue: queue::Queue,
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
    pub static_entries: Vec<StaticEntry>,
    /// `[smtp]` and `[[inbound_connectors]]`.
    pub smtp: smtp::Smtp,
    /// `[[outbound_connectors]]`, validated.
    pub outbound: Vec<outbound::Outbound>,
    /// `[queue]`.
    pub queue: queue::Queue,
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

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError::whole_file(
                &path.display().to_string(),
                format!("cannot read: {e}"),
            )])
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let at = |span: std::ops::Range<usize>, message: String| {
            let (line, column) = error::line_col(text, span.start);
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

        let mut ports = filter::validate(&raw.filter, &file, &at, &mut errors);
        let static_entries = allowlist::validate(&raw.allowlist, &at, &mut errors);
        let mut warnings = Vec::new();
        let smtp = smtp::validate(
            raw.smtp,
            raw.inbound_connectors,
            &at,
            &mut errors,
            &mut warnings,
        );
        let outbound = outbound::validate(raw.outbound_connectors, &at, &mut errors);
        queue::validate(&raw.queue, &at, &mut errors);
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
            errors.push(ConfigError::whole_file(&file, message));
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

    /// Whether anything uses the Exchange Online ranges: the gate's entries
    /// or an inbound connector with the `exchange-online` source. Only then
    /// does the daemon keep them current.
    pub fn uses_exchange_ranges(&self) -> bool {
        (self.filter.enabled && self.allowlist.exchange_online)
            || (self.smtp.raw.enabled && self.smtp.connectors.iter().any(|c| c.exchange_online))
    }
}

/// A complete, commented configuration (`smtp-edge config example`).
pub const EXAMPLE: &str = include_str!("example.toml");

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
