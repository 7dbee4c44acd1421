//! An outbound connector as configured: its recipient domains, its next hop
//! (smart hosts or MX), its TLS level and client certificate, and the
//! parsers of their written forms (Exchange Online's vocabulary,
//! `New-OutboundConnector`).
//!
//! Which connector carries a recipient is the sending side's decision
//! (matching and selection, in `outbound::routing`, which re-exports these
//! types).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::str::FromStr;

use serde::Serialize;

/// The default SMTP port of a smart host.
pub const DEFAULT_PORT: u16 = 25;

/// Errors of the parsers and of [`Outbound::check`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    /// A recipient domain that is not `domain`, `*.domain`, `accepted` or `*`.
    #[error("recipient domain `{text}`: {reason}")]
    RecipientDomain {
        /// What was written.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A smart host that is not `host`, `host:port`, an IP address or
    /// `[IPv6]:port`.
    #[error("smart host `{text}`: {reason}")]
    SmartHost {
        /// What was written.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An unknown TLS level.
    #[error(
        "TLS setting `{0}`: expected none, opportunistic, encryption-only, \
         certificate-validation or domain-validation"
    )]
    TlsLevel(String),
    /// A connector whose settings do not fit together.
    #[error("outbound connector `{name}`: {reason}")]
    Connector {
        /// Connector name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// Lower case, no trailing dot: the form domains are compared in (routing
/// compares recipient domains in it too).
pub(crate) fn normalize(domain: &str) -> String {
    domain.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// Why `name` (already normalized) is not a domain name, if it is not.
/// Letters, digits and hyphens per label, as [`crate::address::DomainPattern::parse`] allows
/// (UTF-8 labels too).
fn domain_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("the domain is empty");
    }
    if name.len() > 253 {
        return Some("a domain has at most 253 octets");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Some("a label is empty (two dots in a row, or a leading dot)");
        }
        if label.len() > 63 {
            return Some("a label has at most 63 octets");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some("a label cannot start or end with a hyphen");
        }
        if label == "*" || label.contains('*') {
            return Some("a wildcard can only be the whole first label, as in *.contoso.com");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b >= 0x80)
        {
            return Some("only letters, digits, hyphens and dots are allowed");
        }
    }
    None
}

/// One entry of a connector's `RecipientDomains`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum RecipientDomain {
    /// `contoso.com`: exactly this domain.
    Exact(String),
    /// `*.contoso.com`: every subdomain of this domain (sales.contoso.com,
    /// a.b.contoso.com), not the domain itself (Microsoft's meaning for
    /// outbound connectors).
    Wildcard(String),
    /// `accepted`: every accepted domain ("all accepted domains").
    AllAccepted,
    /// `*`: every domain.
    Any,
}

impl RecipientDomain {
    /// Parses `contoso.com`, `*.contoso.com`, `accepted` or `*` (any case, a
    /// trailing dot is ignored).
    pub fn parse(text: &str) -> Result<Self, RoutingError> {
        let bad = |reason| RoutingError::RecipientDomain {
            text: text.to_string(),
            reason,
        };
        let t = normalize(text);
        match t.as_str() {
            "*" => return Ok(RecipientDomain::Any),
            "accepted" => return Ok(RecipientDomain::AllAccepted),
            "" => return Err(bad("empty; write a domain, *.domain, accepted or *")),
            _ => {}
        }
        if let Some(rest) = t.strip_prefix("*.") {
            if let Some(reason) = domain_problem(rest) {
                return Err(bad(reason));
            }
            return Ok(RecipientDomain::Wildcard(rest.to_string()));
        }
        if t.starts_with('*') {
            return Err(bad(
                "a wildcard is `*` alone or `*.` before a domain, as in *.contoso.com",
            ));
        }
        if let Some(reason) = domain_problem(&t) {
            return Err(bad(reason));
        }
        Ok(RecipientDomain::Exact(t))
    }
}

impl FromStr for RecipientDomain {
    type Err = RoutingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RecipientDomain::parse(s)
    }
}

impl fmt::Display for RecipientDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecipientDomain::Exact(d) => f.write_str(d),
            RecipientDomain::Wildcard(d) => write!(f, "*.{d}"),
            RecipientDomain::AllAccepted => f.write_str("accepted"),
            RecipientDomain::Any => f.write_str("*"),
        }
    }
}

/// One smart host: a host name or an IP address, and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct SmartHost {
    /// Host name (lower case, no trailing dot) or IP address (IPv6 without
    /// brackets); see [`SmartHost::ip`].
    pub host: String,
    /// Port, [`DEFAULT_PORT`] unless given.
    pub port: u16,
}

impl SmartHost {
    /// Parses `host`, `host:port`, `192.0.2.1`, `192.0.2.1:587`,
    /// `[2001:db8::1]`, `[2001:db8::1]:25` (also `[IPv6:2001:db8::1]` and
    /// `[192.0.2.1]`, as in SMTP address literals). An IPv6 address needs
    /// brackets: `2001:db8::1:25` would be ambiguous.
    pub fn parse(text: &str) -> Result<Self, RoutingError> {
        let bad = |reason| RoutingError::SmartHost {
            text: text.to_string(),
            reason,
        };
        let t = text.trim();
        if t.is_empty() {
            return Err(bad("empty"));
        }
        let port_of = |p: &str| -> Result<u16, RoutingError> {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("the port must be a number from 1 to 65535"));
            }
            match p.parse::<u16>() {
                Ok(0) | Err(_) => Err(bad("the port must be a number from 1 to 65535")),
                Ok(n) => Ok(n),
            }
        };
        if let Some(rest) = t.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("`[` without a closing `]`"))?;
            let port = match after {
                "" => DEFAULT_PORT,
                _ => port_of(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| bad("only `:port` may follow `]`"))?,
                )?,
            };
            let inside = match inside.get(..5) {
                Some(p) if p.eq_ignore_ascii_case("ipv6:") => &inside[5..],
                _ => inside,
            };
            let ip: IpAddr = inside
                .parse()
                .map_err(|_| bad("brackets must hold an IP address"))?;
            return Ok(SmartHost {
                host: ip.to_string(),
                port,
            });
        }
        if t.matches(':').count() > 1 {
            return Err(bad(
                "write an IPv6 address in brackets, as in [2001:db8::1] or [2001:db8::1]:25",
            ));
        }
        let (host, port) = match t.split_once(':') {
            Some((h, p)) => (h, port_of(p)?),
            None => (t, DEFAULT_PORT),
        };
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            return Ok(SmartHost {
                host: ip.to_string(),
                port,
            });
        }
        let name = normalize(host);
        if let Some(reason) = domain_problem(&name) {
            return Err(bad(reason));
        }
        if name
            .rsplit('.')
            .next()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(bad("neither an IPv4 address nor a host name"));
        }
        Ok(SmartHost { host: name, port })
    }

    /// The address, when the host is an IP address rather than a name.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl FromStr for SmartHost {
    type Err = RoutingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SmartHost::parse(s)
    }
}

impl fmt::Display for SmartHost {
    /// `host:port`, with brackets around an IPv6 address.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.parse::<Ipv6Addr>().is_ok() {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Where a connector sends mail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum NextHop {
    /// These hosts, tried in order (`SmartHosts`); one delivery per
    /// connector carries every recipient routed to it.
    SmartHosts(Vec<SmartHost>),
    /// The MX records of each recipient domain (`UseMXRecord`); one delivery
    /// per recipient domain.
    Mx,
}

impl NextHop {
    /// Smart hosts from their written forms (see [`SmartHost::parse`]); an
    /// empty list is an error (use [`NextHop::Mx`] for MX routing).
    pub fn smart_hosts<S: AsRef<str>>(
        list: impl IntoIterator<Item = S>,
    ) -> Result<NextHop, RoutingError> {
        let hosts = list
            .into_iter()
            .map(|s| SmartHost::parse(s.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if hosts.is_empty() {
            return Err(RoutingError::SmartHost {
                text: String::new(),
                reason: "the list of smart hosts is empty",
            });
        }
        Ok(NextHop::SmartHosts(hosts))
    }
}

/// TLS to the next hop (Exchange's `TlsSettings`, plus the two levels below
/// it that Exchange expresses with `RequireTls`/no TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum TlsLevel {
    /// `none`: never STARTTLS, even when offered.
    None,
    /// `opportunistic`: STARTTLS when the server offers it, certificate not
    /// checked; plain text when not offered.
    Opportunistic,
    /// `encryption-only` (`EncryptionOnly`): TLS required, the certificate
    /// is not checked.
    EncryptionOnly,
    /// `certificate-validation` (`CertificateValidation`): TLS required,
    /// the certificate must chain to a trusted root and be valid now; its
    /// name is not checked.
    CertificateValidation,
    /// `domain-validation` (`DomainValidation`): as certificate validation,
    /// and a certificate name must match the connector's `tls_domain`, or
    /// the recipient domain when `tls_domain` is not set (see
    /// [`Outbound::tls_name`]).
    DomainValidation,
}

impl TlsLevel {
    /// Parses `none`, `opportunistic`, `encryption-only`,
    /// `certificate-validation`, `domain-validation`; case, `-` and `_` are
    /// ignored, so Exchange's `EncryptionOnly` etc. are accepted too.
    pub fn parse(text: &str) -> Result<Self, RoutingError> {
        let key: String = text
            .trim()
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .collect::<String>()
            .to_ascii_lowercase();
        Ok(match key.as_str() {
            "none" => TlsLevel::None,
            "opportunistic" => TlsLevel::Opportunistic,
            "encryptiononly" => TlsLevel::EncryptionOnly,
            "certificatevalidation" => TlsLevel::CertificateValidation,
            "domainvalidation" => TlsLevel::DomainValidation,
            _ => return Err(RoutingError::TlsLevel(text.to_string())),
        })
    }

    /// The written form.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsLevel::None => "none",
            TlsLevel::Opportunistic => "opportunistic",
            TlsLevel::EncryptionOnly => "encryption-only",
            TlsLevel::CertificateValidation => "certificate-validation",
            TlsLevel::DomainValidation => "domain-validation",
        }
    }

    /// Whether delivery must fail (and be retried) without TLS.
    pub fn requires_tls(self) -> bool {
        self >= TlsLevel::EncryptionOnly
    }

    /// Whether the server's certificate chain is verified.
    pub fn verifies_certificate(self) -> bool {
        self >= TlsLevel::CertificateValidation
    }
}

impl FromStr for TlsLevel {
    type Err = RoutingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TlsLevel::parse(s)
    }
}

impl fmt::Display for TlsLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A client certificate presented to the next hop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientCert {
    /// PEM certificate chain.
    pub certificate: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// One outbound connector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outbound {
    /// Name used in logs and reports.
    pub name: String,
    /// Domains it carries mail for (`RecipientDomains`).
    pub recipient_domains: Vec<RecipientDomain>,
    /// Smart hosts or MX.
    pub next_hop: NextHop,
    /// TLS level (`TlsSettings`).
    pub tls: TlsLevel,
    /// Name the certificate must match under
    /// [`TlsLevel::DomainValidation`] (`TlsDomain`); `*.contoso.com` allowed.
    pub tls_domain: Option<String>,
    /// Client certificate to present, if any.
    pub client_cert: Option<ClientCert>,
    /// EHLO name; the host name when not set.
    pub ehlo_name: Option<String>,
    /// CA certificates (a PEM file) the next hop's certificate must chain
    /// to under certificate or domain validation; `None`: the system's
    /// roots.
    pub tls_trust: Option<std::path::PathBuf>,
}

impl Outbound {
    /// The certificate name to verify under
    /// [`TlsLevel::DomainValidation`]: `tls_domain`; without one, the next
    /// hop's own name (the smart host or MX host), so MX delivery to domains
    /// hosted elsewhere (EOP's `*.mail.protection.outlook.com`) verifies the
    /// host it talks to. `None` for other levels.
    pub fn tls_name(&self) -> Option<&str> {
        if self.tls == TlsLevel::DomainValidation {
            self.tls_domain.as_deref()
        } else {
            None
        }
    }

    /// Checks that the settings fit together: at least one recipient
    /// domain, `tls_domain` only with domain validation and well formed,
    /// `ehlo_name` a host name, at least one smart host.
    pub fn check(&self) -> Result<(), RoutingError> {
        let bad = |reason: String| RoutingError::Connector {
            name: self.name.clone(),
            reason,
        };
        if self.recipient_domains.is_empty() {
            return Err(bad("no recipient domains (use `*` for every domain)".into()));
        }
        if let NextHop::SmartHosts(h) = &self.next_hop
            && h.is_empty()
        {
            return Err(bad("no smart hosts (or use MX)".into()));
        }
        if let Some(d) = &self.tls_domain {
            if self.tls != TlsLevel::DomainValidation {
                return Err(bad(format!(
                    "tls_domain `{d}` is only used with TLS level domain-validation, not {}",
                    self.tls
                )));
            }
            let n = normalize(d);
            let name = n.strip_prefix("*.").unwrap_or(&n);
            if let Some(reason) = domain_problem(name) {
                return Err(bad(format!("tls_domain `{d}`: {reason}")));
            }
        }
        if let Some(e) = &self.ehlo_name
            && let Some(reason) = domain_problem(&normalize(e))
        {
            return Err(bad(format!("ehlo_name `{e}`: {reason}")));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A recipient-domain pattern (tests here and in routing).
    pub(crate) fn rd(s: &str) -> RecipientDomain {
        RecipientDomain::parse(s).unwrap()
    }

    /// An opportunistic connector (tests here and in routing).
    pub(crate) fn connector(name: &str, domains: &[&str], next_hop: NextHop) -> Outbound {
        Outbound {
            name: name.into(),
            recipient_domains: domains.iter().map(|d| rd(d)).collect(),
            next_hop,
            tls: TlsLevel::Opportunistic,
            tls_domain: None,
            client_cert: None,
            ehlo_name: None,
            tls_trust: None,
        }
    }

    #[test]
    fn recipient_domain_parsing() {
        assert_eq!(
            rd("contoso.com"),
            RecipientDomain::Exact("contoso.com".into())
        );
        assert_eq!(
            rd(" *.Contoso.com. "),
            RecipientDomain::Wildcard("contoso.com".into())
        );
        assert_eq!(rd("accepted"), RecipientDomain::AllAccepted);
        assert_eq!(rd("ACCEPTED"), RecipientDomain::AllAccepted);
        assert_eq!(rd("*"), RecipientDomain::Any);
        // The trailing dot is ignored here too.
        assert_eq!(rd("*."), RecipientDomain::Any);
        assert_eq!(rd("*.com"), RecipientDomain::Wildcard("com".into()));
        assert_eq!(
            rd("xn--bcher-kva.example"),
            RecipientDomain::Exact("xn--bcher-kva.example".into())
        );
        assert_eq!(
            rd("bücher.example"),
            RecipientDomain::Exact("bücher.example".into())
        );
        for s in ["contoso.com", "*.contoso.com", "accepted", "*"] {
            assert_eq!(rd(s).to_string(), s);
            assert_eq!(s.parse::<RecipientDomain>().unwrap(), rd(s));
        }
    }

    #[test]
    fn recipient_domain_errors() {
        for (text, reason_part) in [
            ("", "empty"),
            ("  ", "empty"),
            ("*.-", "hyphen"),
            ("*contoso.com", "wildcard"),
            ("**.contoso.com", "wildcard"),
            ("sales.*.contoso.com", "wildcard"),
            ("*.*.contoso.com", "wildcard"),
            ("contoso..com", "label is empty"),
            (".contoso.com", "label is empty"),
            ("-contoso.com", "hyphen"),
            ("contoso-.com", "hyphen"),
            ("contoso_mail.com", "only letters"),
            ("user@contoso.com", "only letters"),
            ("contoso.com:25", "only letters"),
        ] {
            let e = RecipientDomain::parse(text).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains(reason_part) && msg.contains(&format!("`{text}`")),
                "{text:?}: {msg}"
            );
            assert!(matches!(e, RoutingError::RecipientDomain { .. }));
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(
            RecipientDomain::parse(&long_label)
                .unwrap_err()
                .to_string()
                .contains("63")
        );
        let long = format!("{}com", "abcdefghi.".repeat(26));
        assert!(
            RecipientDomain::parse(&long)
                .unwrap_err()
                .to_string()
                .contains("253")
        );
    }

    #[test]
    fn smart_host_parsing() {
        let sh = |s: &str| SmartHost::parse(s).unwrap();
        let want = |h: &str, port| SmartHost {
            host: h.into(),
            port,
        };
        assert_eq!(sh("mail.contoso.com"), want("mail.contoso.com", 25));
        assert_eq!(sh("Mail.Contoso.com.:587"), want("mail.contoso.com", 587));
        assert_eq!(sh("192.0.2.1"), want("192.0.2.1", 25));
        assert_eq!(sh("192.0.2.1:2525"), want("192.0.2.1", 2525));
        assert_eq!(sh("[192.0.2.1]"), want("192.0.2.1", 25));
        assert_eq!(sh("[2001:db8::1]:25"), want("2001:db8::1", 25));
        assert_eq!(sh("[2001:DB8:0::1]"), want("2001:db8::1", 25));
        assert_eq!(sh("[2001:db8::1]:2525"), want("2001:db8::1", 2525));
        assert_eq!(sh("[IPv6:2001:db8::1]:26"), want("2001:db8::1", 26));
        assert_eq!(sh("localhost"), want("localhost", 25));
        assert_eq!(sh("mx1:65535").port, 65535);

        assert_eq!(
            sh("[2001:db8::1]:25").ip(),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(sh("192.0.2.1").ip(), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(sh("mail.contoso.com").ip(), None);

        assert_eq!(sh("[2001:db8::1]").to_string(), "[2001:db8::1]:25");
        assert_eq!(sh("mail.contoso.com").to_string(), "mail.contoso.com:25");
        assert_eq!(sh("192.0.2.1:26").to_string(), "192.0.2.1:26");
        for s in ["[2001:db8::1]:25", "mail.contoso.com:25", "192.0.2.1:26"] {
            assert_eq!(sh(s).to_string().parse::<SmartHost>().unwrap(), sh(s));
        }
    }

    #[test]
    fn smart_host_errors() {
        for (text, reason_part) in [
            ("", "empty"),
            ("2001:db8::1", "brackets"),
            ("2001:db8::1:25", "brackets"),
            ("[2001:db8::1", "closing"),
            ("[2001:db8::1]25", "only `:port`"),
            ("[mail.contoso.com]", "IP address"),
            ("[2001:db8::g]", "IP address"),
            ("mail.contoso.com:", "port"),
            ("mail.contoso.com:0", "port"),
            ("mail.contoso.com:65536", "port"),
            ("mail.contoso.com:+25", "port"),
            ("mail.contoso.com:smtp", "port"),
            ("[192.0.2.1]:x", "port"),
            ("192.0.2.256", "IPv4"),
            ("1.2.3", "IPv4"),
            ("mail_server", "only letters"),
            ("*.contoso.com", "wildcard"),
            ("mail..contoso.com", "label is empty"),
        ] {
            let e = SmartHost::parse(text).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(reason_part), "{text:?}: {msg}");
            assert!(matches!(e, RoutingError::SmartHost { .. }));
        }
    }

    #[test]
    fn next_hop_smart_hosts_list() {
        assert_eq!(
            NextHop::smart_hosts(["a.example", "[2001:db8::1]:2525"]).unwrap(),
            NextHop::SmartHosts(vec![
                SmartHost {
                    host: "a.example".into(),
                    port: 25
                },
                SmartHost {
                    host: "2001:db8::1".into(),
                    port: 2525
                },
            ])
        );
        assert!(NextHop::smart_hosts(Vec::<String>::new()).is_err());
        assert!(
            NextHop::smart_hosts(["a.example", "b_c"])
                .unwrap_err()
                .to_string()
                .contains("b_c")
        );
    }

    #[test]
    fn tls_level_parsing() {
        for (text, want) in [
            ("none", TlsLevel::None),
            ("opportunistic", TlsLevel::Opportunistic),
            ("encryption-only", TlsLevel::EncryptionOnly),
            ("certificate-validation", TlsLevel::CertificateValidation),
            ("domain-validation", TlsLevel::DomainValidation),
            ("EncryptionOnly", TlsLevel::EncryptionOnly),
            ("CertificateValidation", TlsLevel::CertificateValidation),
            (" DomainValidation ", TlsLevel::DomainValidation),
            ("domain_validation", TlsLevel::DomainValidation),
        ] {
            assert_eq!(TlsLevel::parse(text).unwrap(), want, "{text}");
            assert_eq!(want.to_string().parse::<TlsLevel>().unwrap(), want);
        }
        for bad in ["", "tls", "required", "domain validation", "strict"] {
            let e = TlsLevel::parse(bad).unwrap_err();
            assert_eq!(e, RoutingError::TlsLevel(bad.into()));
            assert!(e.to_string().contains("encryption-only"));
        }
        assert!(!TlsLevel::Opportunistic.requires_tls());
        assert!(TlsLevel::EncryptionOnly.requires_tls());
        assert!(!TlsLevel::EncryptionOnly.verifies_certificate());
        assert!(TlsLevel::CertificateValidation.verifies_certificate());
        assert!(TlsLevel::DomainValidation.verifies_certificate());
    }

    #[test]
    fn tls_name_for_domain_validation() {
        let mut c = connector("p", &["contoso.com"], NextHop::Mx);
        assert_eq!(c.tls_name(), None);
        // Without tls_domain: the next hop's own name (None here).
        c.tls = TlsLevel::DomainValidation;
        assert_eq!(c.tls_name(), None);
        c.tls_domain = Some("*.mail.protection.outlook.com".into());
        assert_eq!(c.tls_name(), Some("*.mail.protection.outlook.com"));
    }

    #[test]
    fn connector_check() {
        let ok = connector("ok", &["*"], NextHop::Mx);
        assert_eq!(ok.check(), Ok(()));
        let mut c = ok.clone();
        c.recipient_domains.clear();
        assert!(
            c.check()
                .unwrap_err()
                .to_string()
                .contains("no recipient domains")
        );
        let mut c = ok.clone();
        c.next_hop = NextHop::SmartHosts(vec![]);
        assert!(
            c.check()
                .unwrap_err()
                .to_string()
                .contains("no smart hosts")
        );
        let mut c = ok.clone();
        c.tls_domain = Some("contoso.com".into());
        assert!(
            c.check()
                .unwrap_err()
                .to_string()
                .contains("domain-validation")
        );
        c.tls = TlsLevel::DomainValidation;
        assert_eq!(c.check(), Ok(()));
        c.tls_domain = Some("*.contoso.com".into());
        assert_eq!(c.check(), Ok(()));
        c.tls_domain = Some("con toso.com".into());
        assert!(c.check().is_err());
        let mut c = ok.clone();
        c.ehlo_name = Some("edge.contoso.com".into());
        assert_eq!(c.check(), Ok(()));
        c.ehlo_name = Some("edge..contoso.com".into());
        let e = c.check().unwrap_err();
        assert!(
            e.to_string()
                .starts_with("outbound connector `ok`: ehlo_name"),
            "{e}"
        );
    }
}
