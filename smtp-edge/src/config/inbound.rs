//! `[[inbound_connectors]]`: which sources a connector takes, what it
//! requires of them (TLS, a client certificate, tenants) and what it lets
//! them do, as written and validated ([`Inbound`]).
//!
//! Which connector a connection gets, and its checks of each step, are the
//! receiving side's (`inbound::policy`, which re-exports [`Inbound`]).

use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::error::{At, ConfigError};
use super::tenant::{Mode, Proof, RawTenant, Rule, Tenant, is_guid};
use crate::address::{DomainPattern, spec};

/// One inbound connector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inbound {
    /// Name used in logs and Received headers.
    pub name: String,
    /// Source ranges; empty means any source (a default connector).
    pub sources: Vec<IpNet>,
    /// STARTTLS required before MAIL.
    pub require_tls: bool,
    /// Client certificate names required (empty: no certificate needed).
    pub client_cert_names: Vec<DomainPattern>,
    /// Sender domains allowed (empty: any).
    pub sender_domains: Vec<DomainPattern>,
    /// Recipient domains accepted without relay (usually `accepted`).
    pub recipient_domains: Vec<DomainPattern>,
    /// May relay to any domain.
    pub relay: bool,
    /// Keep Exchange-internal headers (X-MS-Exchange-Organization-*): with
    /// `tenants`, only for messages proven to come from one of them.
    pub trusted_headers: bool,
    /// Which Microsoft 365 tenants may send (none: no tenant check).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenants: Option<Rule>,
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
    pub tenant_policy: Option<Spanned<Mode>>,
    /// What proves a tenant: `stamp` (Exchange Online's tenant id; the
    /// default, for mail EOP relays inbound) or `stamp-and-dkim` (the id
    /// and the tenant's DKIM signature; the default with `relay` or
    /// recipient domains beyond the accepted ones, for mail the tenant sends
    /// out through this host).
    #[serde(default)]
    pub tenant_proof: Option<Spanned<Proof>>,
}

/// Whether a connector delivers beyond the accepted domains: `relay`, or a
/// recipient domain pattern that is not one of them (`*`, a partner's
/// domain). Mail it takes may leave the organisation, so the tenant must
/// prove itself with its DKIM signature as well as the stamp.
fn reaches_outside(relay: bool, recipients: &[DomainPattern], accepted: &[DomainPattern]) -> bool {
    relay
        || recipients.iter().any(|p| match p {
            DomainPattern::Accepted => false,
            DomainPattern::Any => true,
            DomainPattern::Exact(n) => !accepted.iter().any(|a| a.matches(n, &[])),
            DomainPattern::Subtree(n) => !accepted
                .iter()
                .any(|a| matches!(a, DomainPattern::Subtree(_)) && a.matches(n, &[])),
        })
}

/// The tenant rule of a connector (`None` when it checks none), its
/// problems added to `errors`; `outside`: it delivers beyond the accepted
/// domains ([`reaches_outside`]), which picks the default proof.
fn tenant_rule(
    c: &RawInbound,
    name: &str,
    outside: bool,
    at: At<'_>,
    errors: &mut Vec<ConfigError>,
) -> Option<Rule> {
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
    let proof = match &c.tenant_proof {
        Some(p) => *p.get_ref(),
        None if outside => Proof::StampAndDkim,
        None => Proof::Stamp,
    };
    (mode != Mode::Off).then_some(Rule {
        mode,
        proof,
        tenants,
    })
}

/// Whether a connector lists tenants but does not check them.
fn tenants_unchecked(c: &RawInbound) -> bool {
    !c.tenants.is_empty()
        && c.tenant_policy
            .as_ref()
            .is_some_and(|m| *m.get_ref() == Mode::Off)
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

/// Validates the connectors (`accepted`: the accepted domains, which tell
/// which connectors deliver beyond them); `smtp_enabled` and `tls` say whether the
/// receiving side is on and has `[smtp.tls]`. `at(span, message)` builds
/// located errors (and warnings: valid settings an administrator should
/// think twice about).
pub(super) fn validate(
    connectors: Vec<RawInbound>,
    accepted: &[DomainPattern],
    smtp_enabled: bool,
    tls: bool,
    at: At<'_>,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<ConfigError>,
) -> Vec<InboundConnector> {
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
        if !tls && smtp_enabled {
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
        let outside = reaches_outside(c.relay, &recipient_domains, accepted);
        let tenants = tenant_rule(&c, &name, outside, at, errors);
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
        if outside && tenants.as_ref().is_some_and(|t| t.proof == Proof::Stamp) {
            warnings.push(at(
                c.tenant_proof
                    .as_ref()
                    .map_or_else(|| c.name.span(), |p| p.span()),
                format!(
                    "connector `{name}` delivers beyond the accepted domains (relay or \
                     recipient_domains) on the stamp alone (tenant_proof = \"stamp\"): mail the \
                     tenant sends out is DKIM-signed by Exchange Online, and \"stamp-and-dkim\" \
                     (the default for such a connector) requires it"
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
        if tenants.as_ref().is_some_and(|t| t.mode == Mode::Monitor) {
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
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(list: &[&str]) -> Vec<DomainPattern> {
        list.iter()
            .map(|p| DomainPattern::parse(p).expect("pattern"))
            .collect()
    }

    #[test]
    fn a_connector_that_delivers_beyond_the_accepted_domains_needs_the_dkim_proof() {
        let accepted = pats(&["contoso.com", "*.fabrikam.com"]);
        let outside = |relay, r: &[&str]| reaches_outside(relay, &pats(r), &accepted);
        // Inbound only: the accepted domains, by name or as `accepted`.
        assert!(!outside(false, &["accepted"]));
        assert!(!outside(false, &["contoso.com", "mail.fabrikam.com"]));
        assert!(!outside(false, &["*.fabrikam.com"]));
        // Relay, `*`, a partner's domain, a subtree wider than accepted.
        assert!(outside(true, &["accepted"]));
        assert!(outside(false, &["*"]));
        assert!(outside(false, &["accepted", "partner.example"]));
        assert!(outside(false, &["*.contoso.com"]));
    }
}
