//! `smtp-edge exo-commands`: the Exchange Online and on-premises Exchange
//! PowerShell that matches this host's configuration.
//!
//! Each connector on this host has a counterpart on the other side:
//!
//! | here | there |
//! | --- | --- |
//! | an inbound connector with the `exchange-online` source | Exchange Online `New-OutboundConnector` (OnPremises, smart host = this host) |
//! | an outbound connector to `*.mail.protection.outlook.com` | Exchange Online `New-InboundConnector` (OnPremises, certificate-based) |
//! | an outbound connector to other smart hosts | a `New-ReceiveConnector` on that Exchange server |
//! | an inbound connector with its own sources, next to one of those | a `New-SendConnector` on the on-premises Exchange |
//!
//! Commands are written with splatting (`$p = @{ … }; New-X @p`) so that
//! every parameter carries a comment naming the TOML setting it comes from.
//! Pure: configuration (and the certificate names read by the caller) in,
//! text out.

use std::fmt::Write as _;

use crate::address::DomainPattern;
use crate::config::Config;
use crate::outbound::routing::{NextHop, Outbound, RecipientDomain, TlsLevel};

/// Names read from certificate files (the caller reads them; absent when a
/// file cannot be read here).
#[derive(Debug, Clone, Default)]
pub struct CertNames {
    /// The names of `[smtp.tls] certificate`.
    pub server: Option<Vec<String>>,
    /// The names of each outbound connector's client certificate, by
    /// connector name.
    pub clients: Vec<(String, Vec<String>)>,
}

/// The Exchange Online certificate and smart-host domain.
const EXO_DOMAIN: &str = "mail.protection.outlook.com";

/// One PowerShell value.
enum V {
    Str(String),
    List(Vec<String>),
    Bool(bool),
    Int(u16),
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl V {
    fn render(&self) -> String {
        match self {
            V::Str(s) => quote(s),
            V::List(l) => format!(
                "@({})",
                l.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ")
            ),
            V::Bool(true) => "$true".into(),
            V::Bool(false) => "$false".into(),
            V::Int(n) => n.to_string(),
        }
    }
}

/// One command being written.
struct Command {
    cmdlet: &'static str,
    intro: Vec<String>,
    params: Vec<(&'static str, V, String)>,
}

impl Command {
    fn new(cmdlet: &'static str) -> Command {
        Command {
            cmdlet,
            intro: Vec::new(),
            params: Vec::new(),
        }
    }

    fn note(&mut self, line: impl Into<String>) -> &mut Self {
        self.intro.push(line.into());
        self
    }

    fn p(&mut self, name: &'static str, v: V, from: impl Into<String>) -> &mut Self {
        self.params.push((name, v, from.into()));
        self
    }

    fn render(&self, out: &mut String) {
        for l in &self.intro {
            let _ = writeln!(out, "# {l}");
        }
        let width = self.params.iter().map(|p| p.0.len()).max().unwrap_or(0);
        out.push_str("$p = @{\n");
        for (name, v, from) in &self.params {
            let _ = writeln!(out, "    {name:<width$} = {}    # {from}", v.render());
        }
        let _ = writeln!(out, "}}\n{} @p\n", self.cmdlet);
    }
}

/// The domains of a connector's `recipient_domains` (inbound patterns).
fn inbound_domains(list: &[DomainPattern], accepted: &[DomainPattern]) -> Vec<String> {
    let mut out = Vec::new();
    for d in list {
        match d {
            DomainPattern::Accepted => out.extend(accepted.iter().map(pattern)),
            other => out.push(pattern(other)),
        }
    }
    out.dedup();
    out
}

fn pattern(d: &DomainPattern) -> String {
    match d {
        DomainPattern::Exact(n) => n.clone(),
        DomainPattern::Subtree(n) => format!("*.{n}"),
        DomainPattern::Any => "*".into(),
        DomainPattern::Accepted => "accepted".into(),
    }
}

fn outbound_domains(list: &[RecipientDomain], accepted: &[DomainPattern]) -> Vec<String> {
    let mut out = Vec::new();
    for d in list {
        match d {
            RecipientDomain::Exact(n) => out.push(n.clone()),
            RecipientDomain::Wildcard(n) => out.push(format!("*.{n}")),
            RecipientDomain::AllAccepted => out.extend(accepted.iter().map(pattern)),
            RecipientDomain::Any => out.push("*".into()),
        }
    }
    out.dedup();
    out
}

/// Whether certificate name `name` (maybe `*.domain`, one label) covers
/// `host`, as a TLS client checks it.
fn names_host(name: &str, host: &str) -> bool {
    crate::certs::name_covers(name, host)
}

/// Whether an outbound connector delivers to Exchange Online.
pub fn to_exchange_online(o: &Outbound) -> bool {
    let exo = |h: &str| {
        let h = h.trim_end_matches('.').to_ascii_lowercase();
        h == EXO_DOMAIN || h.ends_with(&format!(".{EXO_DOMAIN}"))
    };
    let by_host = match &o.next_hop {
        NextHop::SmartHosts(hosts) => hosts.iter().any(|h| exo(&h.host)),
        NextHop::Mx => false,
    };
    by_host
        || o.tls_domain
            .as_deref()
            .is_some_and(|d| exo(d.trim_start_matches("*.")))
}

fn smart_hosts(o: &Outbound) -> Vec<String> {
    match &o.next_hop {
        NextHop::SmartHosts(h) => h.iter().map(|h| h.host.clone()).collect(),
        NextHop::Mx => Vec::new(),
    }
}

/// The commands for `cfg`.
pub fn commands(cfg: &Config, certs: &CertNames) -> String {
    let smtp = &cfg.smtp;
    let host = &smtp.hostname;
    let accepted = &smtp.accepted;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Exchange commands for smtp-edge at {host}.\n\
         # Each parameter names the setting it comes from; check every value\n\
         # marked CHECK before you run a command.\n"
    );
    if !smtp.raw.enabled {
        out.push_str(
            "# [smtp] enabled = false: this host only passes port 25 on to your Exchange server\n\
             # (the gate), as Microsoft supports for hybrid mail flow. The Hybrid Configuration\n\
             # Wizard makes the connectors between Exchange Online and that server; nothing here\n\
             # changes them. Check that the gate allows the addresses they use:\n\
             Get-OutboundConnector | Format-Table Name, SmartHosts, TlsDomain\n\
             Get-InboundConnector | Format-Table Name, SenderIPAddresses, TlsSenderCertificateName\n",
        );
        return out;
    }
    let on_prem: Vec<&Outbound> = cfg
        .outbound
        .iter()
        .filter(|o| !to_exchange_online(o) && matches!(o.next_hop, NextHop::SmartHosts(_)))
        .collect();
    let ports: Vec<u16> = smtp.listen.iter().map(|a| a.port()).collect();
    let server_names = certs.server.as_deref();

    // ---- Exchange Online ---------------------------------------------
    out.push_str("# ===== Exchange Online PowerShell (Connect-ExchangeOnline) =====\n\n");
    let mut any = false;
    for ic in smtp.connectors.iter().filter(|c| c.exchange_online) {
        any = true;
        let c = &ic.policy;
        let mut cmd = Command::new("New-OutboundConnector");
        cmd.note(format!(
            "Exchange Online delivers to this host: [[inbound_connectors]] `{}` takes it.",
            c.name
        ));
        if !ports.contains(&25) {
            cmd.note(format!(
                "CHECK: Exchange Online connects on port 25 only; [smtp] listen has {ports:?}."
            ));
        }
        match server_names {
            Some(names) if !names.iter().any(|n| names_host(n, host)) => {
                cmd.note(format!(
                    "CHECK: [smtp.tls] certificate names {} but not {host}: Exchange Online \
                     checks TlsDomain against it.",
                    names.join(", ")
                ));
            }
            Some(_) => {}
            None => {
                cmd.note(format!(
                    "CHECK: [smtp.tls] certificate could not be read here: it must name {host}."
                ));
            }
        }
        cmd.p(
            "Name",
            V::Str(format!("smtp-edge {host} ({})", c.name)),
            "[smtp] hostname, [[inbound_connectors]] name",
        )
            .p(
                "ConnectorType",
                V::Str("OnPremises".into()),
                "your organisation's own server (the edge in front of it)",
            )
            .p(
                "RecipientDomains",
                V::List(inbound_domains(&c.recipient_domains, accepted)),
                format!(
                    "[[inbound_connectors]] `{}` recipient_domains (accepted = [smtp] accepted_domains)",
                    c.name
                ),
            )
            .p("SmartHosts", V::List(vec![host.clone()]), "[smtp] hostname")
            .p("UseMXRecord", V::Bool(false), "deliver to the smart host, not MX")
            .p(
                "TlsSettings",
                V::Str("DomainValidation".into()),
                format!(
                    "require_tls = {} with [smtp.tls]: Exchange Online checks our certificate",
                    c.require_tls
                ),
            )
            .p("TlsDomain", V::Str(host.clone()), "[smtp] hostname, named by [smtp.tls] certificate");
        if let Some(rule) = &c.tenants
            && c.trusted_headers
        {
            cmd.p(
                "CloudServicesMailEnabled",
                V::Bool(true),
                format!(
                    "trusted_headers = true with tenants ({}): keep the internal headers",
                    rule.tenants
                        .iter()
                        .map(|t| t.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        cmd.render(&mut out);
        if let Some(rule) = &c.tenants {
            for t in &rule.tenants {
                let _ = writeln!(
                    out,
                    "# [[inbound_connectors]] `{}` tenants: only tenant {} may send through it \
                     (tenant_policy = \"{}\", tenant_proof = \"{}\"): Exchange Online stamps its \
                     id as X-MS-Exchange-CrossTenant-Id; {}\n",
                    c.name,
                    t.id,
                    rule.mode,
                    rule.proof,
                    match rule.proof {
                        crate::config::tenant::Proof::Stamp => {
                            "mail EOP relays from the internet keeps its author's DKIM signature \
                             (none of yours is needed)."
                                .to_string()
                        }
                        crate::config::tenant::Proof::StampAndDkim => format!(
                            "it must also be signed with DKIM as one of: {}.\n\
                             # Check DKIM signing is on for the domains you list:\n\
                             Get-DkimSigningConfig | Format-Table Domain, Enabled, Selector1CNAME",
                            t.domains.join(", ")
                        ),
                    }
                );
            }
        } else {
            let _ = writeln!(
                out,
                "# CHECK: [[inbound_connectors]] `{}` has no tenants: any Microsoft 365 tenant can \
                 point a connector at this host. Add yours (Get-OrganizationConfig | fl Guid).\n",
                c.name
            );
        }
    }
    for o in cfg.outbound.iter().filter(|o| to_exchange_online(o)) {
        any = true;
        let mut cmd = Command::new("New-InboundConnector");
        cmd.note(format!(
            "This host delivers to Exchange Online: [[outbound_connectors]] `{}`.",
            o.name
        ));
        let cert_names = certs
            .clients
            .iter()
            .find(|(n, _)| n == &o.name)
            .map(|(_, v)| v.clone());
        cmd.p(
            "Name",
            V::Str(format!("smtp-edge {host} ({})", o.name)),
            "[smtp] hostname, [[outbound_connectors]] name",
        )
        .p(
            "ConnectorType",
            V::Str("OnPremises".into()),
            "mail from your organisation's own server",
        )
        .p(
            "SenderDomains",
            V::List(vec!["*".into()]),
            "any sender of your organisation",
        )
        .p(
            "RequireTls",
            V::Bool(true),
            format!("tls = \"{}\"", o.tls.as_str()),
        );
        match (&o.client_cert, cert_names) {
            (Some(_), Some(names)) if !names.is_empty() => {
                let name = names[0].clone();
                cmd.p(
                    "TlsSenderCertificateName",
                    V::Str(name),
                    format!(
                        "a name of `{}` client_certificate ({})",
                        o.name,
                        names.join(", ")
                    ),
                )
                .p(
                    "RestrictDomainsToCertificate",
                    V::Bool(true),
                    "certificate-based: only mail presenting it",
                );
            }
            (Some(cc), _) => {
                cmd.note(format!(
                    "CHECK: {} could not be read here: put a name from its subject or SAN \
                     (an accepted domain) in TlsSenderCertificateName.",
                    cc.certificate.display()
                ));
                cmd.p(
                    "TlsSenderCertificateName",
                    V::Str(o.ehlo_name.clone().unwrap_or_else(|| host.clone())),
                    format!(
                        "`{}` client_certificate (its name assumed: ehlo_name or [smtp] hostname)",
                        o.name
                    ),
                )
                .p(
                    "RestrictDomainsToCertificate",
                    V::Bool(true),
                    "certificate-based: only mail presenting it",
                );
            }
            (None, _) => {
                cmd.note(format!(
                    "CHECK: `{}` has no client_certificate, so Exchange Online can only know this \
                     host by address: set SenderIPAddresses to its public address (Microsoft \
                     recommends certificate-based connectors: shared addresses let other tenants in).",
                    o.name
                ));
                cmd.p(
                    "SenderIPAddresses",
                    V::List(vec!["<this host's public address>".into()]),
                    "not in the configuration: CHECK",
                )
                .p(
                    "RestrictDomainsToIPAddresses",
                    V::Bool(true),
                    "address-based: only mail from it",
                );
            }
        }
        if o.tls != TlsLevel::DomainValidation {
            cmd.note(format!(
                "CHECK: `{}` tls = \"{}\": use domain-validation with tls_domain = \"{EXO_DOMAIN}\".",
                o.name,
                o.tls.as_str()
            ));
        }
        cmd.render(&mut out);
    }
    if !any {
        out.push_str("# No connector of this host talks to Exchange Online.\n\n");
    }

    // ---- on-premises Exchange ----------------------------------------
    out.push_str("# ===== Exchange Management Shell on the on-premises Exchange server =====\n\n");
    if on_prem.is_empty() {
        out.push_str(
            "# No outbound connector delivers to an on-premises server (smart hosts other than \
             Exchange Online): nothing to set up there.\n",
        );
        return out;
    }
    let edge_addrs: Vec<String> = smtp
        .listen
        .iter()
        .filter(|a| !a.ip().is_unspecified())
        .map(|a| a.ip().to_string())
        .collect();
    for o in &on_prem {
        let hosts = smart_hosts(o);
        let mut cmd = Command::new("New-ReceiveConnector");
        cmd.note(format!(
            "This host delivers mail for {} to {}: [[outbound_connectors]] `{}`.",
            outbound_domains(&o.recipient_domains, accepted).join(", "),
            hosts.join(", "),
            o.name
        ));
        let remote = if edge_addrs.is_empty() {
            cmd.note(
                "CHECK: [smtp] listen has only wildcard addresses: put the address this host \
                 connects from in RemoteIPRanges.",
            );
            vec!["<this host's address>".to_string()]
        } else {
            edge_addrs.clone()
        };
        let tls_required = !matches!(o.tls, TlsLevel::None | TlsLevel::Opportunistic);
        cmd.p(
            "Name",
            V::Str(format!("From smtp-edge {host} ({})", o.name)),
            "[smtp] hostname, [[outbound_connectors]] name",
        )
        .p(
            "Server",
            V::Str(hosts.first().cloned().unwrap_or_default()),
            format!("`{}` smart_hosts (the first)", o.name),
        )
        .p(
            "TransportRole",
            V::Str("FrontendTransport".into()),
            "port 25 on the Front End Transport service",
        )
        .p(
            "Usage",
            V::Str("Custom".into()),
            "its own connector for this host",
        )
        .p(
            "Bindings",
            V::List(vec![format!(
                "0.0.0.0:{}",
                match &o.next_hop {
                    NextHop::SmartHosts(h) => h.first().map_or(25, |h| h.port),
                    NextHop::Mx => 25,
                }
            )]),
            format!("`{}` smart_hosts port", o.name),
        )
        .p(
            "RemoteIPRanges",
            V::List(remote),
            "[smtp] listen addresses (where this host connects from: CHECK)",
        )
        .p(
            "Fqdn",
            V::Str(
                o.tls_domain
                    .clone()
                    .unwrap_or_else(|| hosts.first().cloned().unwrap_or_default()),
            ),
            format!(
                "`{}` tls_domain or smart host: the name its certificate must have",
                o.name
            ),
        )
        .p(
            "PermissionGroups",
            V::Str("AnonymousUsers".into()),
            "mail relayed from the internet and Exchange Online",
        )
        .p(
            "AuthMechanism",
            V::Str(if tls_required { "Tls" } else { "None" }.into()),
            format!("`{}` tls = \"{}\"", o.name, o.tls.as_str()),
        )
        .p(
            "RequireTLS",
            V::Bool(tls_required),
            format!("`{}` tls = \"{}\"", o.name, o.tls.as_str()),
        );
        cmd.render(&mut out);
    }
    let senders = smtp
        .connectors
        .iter()
        .filter(|c| !c.exchange_online && !c.policy.sources.is_empty());
    for ic in senders {
        let c = &ic.policy;
        let mut cmd = Command::new("New-SendConnector");
        cmd.note(format!(
            "If {} is the on-premises Exchange: its mail to the internet and Exchange Online \
             goes through this host ([[inbound_connectors]] `{}`). For devices and apps there \
             is nothing to set up in Exchange.",
            c.sources
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            c.name
        ));
        let spaces = if c.relay {
            vec!["SMTP:*;1".to_string()]
        } else {
            inbound_domains(&c.recipient_domains, accepted)
                .into_iter()
                .map(|d| format!("SMTP:{d};1"))
                .collect()
        };
        let tls = smtp.raw.tls.is_some();
        cmd.p(
            "Name",
            V::Str(format!("To smtp-edge {host} ({})", c.name)),
            "[smtp] hostname, [[inbound_connectors]] name",
        )
        .p(
            "Usage",
            V::Str("Custom".into()),
            "its own connector for this host",
        )
        .p(
            "AddressSpaces",
            V::List(spaces),
            format!(
                "relay = {} (true: everything; false: recipient_domains)",
                c.relay
            ),
        )
        .p(
            "DNSRoutingEnabled",
            V::Bool(false),
            "deliver to the smart host",
        )
        .p("SmartHosts", V::List(vec![host.clone()]), "[smtp] hostname")
        .p(
            "Port",
            V::Int(ports.first().copied().unwrap_or(25)),
            "[smtp] listen port",
        )
        .p(
            "RequireTLS",
            V::Bool(c.require_tls || !c.client_cert_names.is_empty()),
            format!(
                "require_tls = {}{}",
                c.require_tls,
                if c.client_cert_names.is_empty() {
                    ""
                } else {
                    " and client_cert_names (TLS to present a certificate)"
                }
            ),
        );
        if tls {
            cmd.p(
                "TlsAuthLevel",
                V::Str("DomainValidation".into()),
                "[smtp.tls]: this host's certificate",
            )
            .p("TlsDomain", V::Str(host.clone()), "[smtp] hostname");
        }
        if !c.client_cert_names.is_empty() {
            cmd.p(
                "TlsCertificateName",
                V::Str("<I>issuer<S>subject".into()),
                format!(
                    "client_cert_names = {:?}: CHECK, the Exchange certificate that has one",
                    c.client_cert_names.iter().map(pattern).collect::<Vec<_>>()
                ),
            );
        }
        cmd.render(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn load(text: &str) -> Config {
        Config::parse(text, Path::new("smtp-edge.toml")).expect("a valid configuration")
    }

    fn golden_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/exo")
    }

    /// Each scenario's commands are exactly its golden file
    /// (`UPDATE_GOLDEN=1 cargo test -p smtp-edge exo` rewrites them).
    #[test]
    fn golden_commands_per_scenario() {
        let mut seen = 0;
        for entry in std::fs::read_dir(golden_dir()).expect("tests/exo") {
            let path = entry.expect("entry").path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            seen += 1;
            let text = std::fs::read_to_string(&path).expect("scenario");
            let got = commands(&load(&text), &CertNames::default());
            let golden = path.with_extension("ps1");
            if std::env::var_os("UPDATE_GOLDEN").is_some() {
                std::fs::write(&golden, &got).expect("write golden");
            }
            let want = std::fs::read_to_string(&golden)
                .unwrap_or_else(|e| panic!("{}: {e}", golden.display()));
            assert_eq!(got, want, "{} differs from its golden file", path.display());
        }
        assert_eq!(seen, 3, "the three deployments of the README");
    }

    /// The command block (from its first comment to the cmdlet) that
    /// contains `needle`, runs of spaces made one.
    fn block(out: &str, cmdlet: &str, needle: &str) -> String {
        let b = out
            .split("\n\n")
            .find(|b| b.contains(needle) && b.contains(&format!("{cmdlet} @p")))
            .unwrap_or_else(|| panic!("no {cmdlet} for {needle} in\n{out}"));
        b.split(' ')
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn every_connector_appears_with_its_parameters() {
        let cfg = load(
            r#"
[filter]
enabled = false
[smtp]
enabled = true
listen = ["192.0.2.10:25"]
hostname = "edge.fabrikam.com"
accepted_domains = ["fabrikam.com", "fabrikam.net"]
[smtp.tls]
certificate = "/nonexistent/edge.pem"
key = "/nonexistent/edge.key"
[[inbound_connectors]]
name = "eo-a"
sources = ["exchange-online"]
recipient_domains = ["fabrikam.net"]
[[inbound_connectors]]
name = "eo-b"
sources = ["exchange-online"]
require_tls = true
client_cert_names = ["mail.protection.outlook.com"]
tenants = [{ id = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", domains = ["fabrikam.onmicrosoft.com"] }]
[[inbound_connectors]]
name = "exchange-1"
sources = ["192.0.2.20"]
require_tls = true
client_cert_names = ["mail.fabrikam.com"]
relay = true
[[inbound_connectors]]
name = "partner"
sources = ["198.51.100.0/24"]
[[outbound_connectors]]
name = "m365-cert"
recipient_domains = ["*"]
smart_hosts = ["fabrikam-com.mail.protection.outlook.com"]
tls = "domain-validation"
tls_domain = "mail.protection.outlook.com"
client_certificate = "/nonexistent/c.pem"
client_key = "/nonexistent/c.key"
[[outbound_connectors]]
name = "m365-ip"
recipient_domains = ["partner.example"]
smart_hosts = ["fabrikam-com.mail.protection.outlook.com"]
tls = "encryption-only"
[[outbound_connectors]]
name = "on-prem"
recipient_domains = ["accepted"]
smart_hosts = ["exch.fabrikam.com:2525"]
tls = "opportunistic"
[[outbound_connectors]]
name = "internet"
recipient_domains = ["example.org"]
use_mx = true
"#,
        );
        let certs = CertNames {
            server: Some(vec!["*.fabrikam.com".into()]),
            clients: vec![(
                "m365-cert".into(),
                vec!["fabrikam.com".into(), "*.fabrikam.com".into()],
            )],
        };
        let out = commands(&cfg, &certs);

        let a = block(&out, "New-OutboundConnector", "`eo-a`");
        assert!(a.contains("RecipientDomains = @('fabrikam.net')"), "{a}");
        assert!(a.contains("SmartHosts = @('edge.fabrikam.com')"), "{a}");
        assert!(a.contains("TlsDomain = 'edge.fabrikam.com'"), "{a}");
        assert!(
            !a.contains("CHECK: [smtp.tls]"),
            "the wildcard names the host: {a}"
        );
        assert!(!a.contains("CloudServicesMailEnabled"), "{a}");
        assert!(out.contains("`eo-a` has no tenants"), "{out}");
        let b = block(&out, "New-OutboundConnector", "`eo-b`");
        assert!(
            b.contains("@('fabrikam.com', 'fabrikam.net')"),
            "accepted domains: {b}"
        );
        assert!(
            out.contains("only tenant aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"),
            "{out}"
        );

        let c = block(&out, "New-InboundConnector", "`m365-cert`");
        assert!(
            c.contains("TlsSenderCertificateName = 'fabrikam.com'"),
            "{c}"
        );
        assert!(c.contains("RestrictDomainsToCertificate = $true"), "{c}");
        let ip = block(&out, "New-InboundConnector", "`m365-ip`");
        assert!(ip.contains("SenderIPAddresses"), "{ip}");
        assert!(
            ip.contains("CHECK: `m365-ip` tls = \"encryption-only\""),
            "{ip}"
        );

        let r = block(&out, "New-ReceiveConnector", "`on-prem`");
        assert!(r.contains("Bindings = @('0.0.0.0:2525')"), "{r}");
        assert!(r.contains("RemoteIPRanges = @('192.0.2.10')"), "{r}");
        assert!(r.contains("RequireTLS = $false"), "opportunistic: {r}");
        assert!(
            !out.contains("example.org"),
            "MX connectors have no counterpart: {out}"
        );

        let s = block(&out, "New-SendConnector", "`exchange-1`");
        assert!(s.contains("AddressSpaces = @('SMTP:*;1')"), "{s}");
        assert!(s.contains("RequireTLS = $true"), "{s}");
        assert!(s.contains("TlsCertificateName"), "{s}");
        let p = block(&out, "New-SendConnector", "`partner`");
        assert!(
            p.contains("@('SMTP:fabrikam.com;1', 'SMTP:fabrikam.net;1')"),
            "{p}"
        );
        // Every connector is named somewhere, none twice as a command.
        for name in [
            "eo-a",
            "eo-b",
            "exchange-1",
            "partner",
            "m365-cert",
            "m365-ip",
            "on-prem",
        ] {
            assert!(out.contains(&format!("`{name}`")), "{name} missing:\n{out}");
        }
    }

    #[test]
    fn values_are_quoted_for_powershell() {
        assert_eq!(V::Str("it's".into()).render(), "'it''s'");
        assert_eq!(
            V::List(vec!["a".into(), "b".into()]).render(),
            "@('a', 'b')"
        );
        assert!(names_host("*.contoso.com", "edge.contoso.com"));
        assert!(!names_host("*.contoso.com", "a.edge.contoso.com"));
        assert!(!names_host("*.contoso.com", "contoso.com"));
    }
}
