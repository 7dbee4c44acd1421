//! `[[outbound_connectors]]`: the sending side's connectors, as written and
//! validated ([`Outbound`]; the `[queue]` section is [`super::queue`]).

pub(crate) mod connector;

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::error::{At, ConfigError};

/// `[queue]` (its own module; the old path keeps working).
pub use super::queue::{ClientTimeouts, Queue};
pub(crate) use connector::normalize;
pub use connector::{
    ClientCert, DEFAULT_PORT, NextHop, Outbound, RecipientDomain, RoutingError, SmartHost, TlsLevel,
};

/// One `[[outbound_connectors]]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutbound {
    /// Name.
    pub name: Spanned<String>,
    /// `contoso.com`, `*.contoso.com`, `accepted`, `*`.
    pub recipient_domains: Vec<Spanned<String>>,
    /// Smart hosts tried in order (`host`, `host:port`, `[2001:db8::1]:25`);
    /// empty with `use_mx = true`.
    #[serde(default)]
    pub smart_hosts: Vec<Spanned<String>>,
    /// Route by the recipient domain's MX records.
    #[serde(default)]
    pub use_mx: bool,
    /// none, opportunistic, encryption-only, certificate-validation,
    /// domain-validation.
    #[serde(default = "opportunistic")]
    pub tls: Spanned<String>,
    /// Name the next hop's certificate must match (domain-validation).
    #[serde(default)]
    pub tls_domain: Option<String>,
    /// Client certificate chain (PEM) to present.
    #[serde(default)]
    pub client_certificate: Option<PathBuf>,
    /// Its key (PEM).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// EHLO name (default: `smtp.hostname`).
    #[serde(default)]
    pub ehlo_name: Option<String>,
    /// Trust for the next hop's certificate: "system" (default) or a PEM
    /// file of CA certificates (an organisation's own CA).
    #[serde(default)]
    pub tls_trust: Option<Spanned<String>>,
}

fn opportunistic() -> Spanned<String> {
    Spanned::new(0..0, "opportunistic".to_string())
}

/// Validates the connectors; `at(span, message)` builds located errors.
pub(super) fn validate(
    raw: Vec<RawOutbound>,
    at: At<'_>,
    errors: &mut Vec<ConfigError>,
) -> Vec<Outbound> {
    let mut out = Vec::new();
    for c in raw {
        let name = c.name.get_ref().clone();
        if out.iter().any(|o: &Outbound| o.name == name) {
            errors.push(at(
                c.name.span(),
                format!("an outbound connector named `{name}` already exists"),
            ));
        }
        let mut recipient_domains = Vec::new();
        for d in &c.recipient_domains {
            match RecipientDomain::parse(d.get_ref()) {
                Ok(p) => recipient_domains.push(p),
                Err(e) => errors.push(at(d.span(), e.to_string())),
            }
        }
        let next_hop = if c.use_mx {
            if let Some(h) = c.smart_hosts.first() {
                errors.push(at(
                    h.span(),
                    "use_mx and smart_hosts exclude each other".into(),
                ));
            }
            NextHop::Mx
        } else {
            let mut hosts = Vec::new();
            for h in &c.smart_hosts {
                match SmartHost::parse(h.get_ref()) {
                    Ok(s) => hosts.push(s),
                    Err(e) => errors.push(at(h.span(), e.to_string())),
                }
            }
            if c.smart_hosts.is_empty() {
                errors.push(at(
                    c.name.span(),
                    format!("connector `{name}` needs smart_hosts or use_mx = true"),
                ));
            }
            NextHop::SmartHosts(hosts)
        };
        let tls = match TlsLevel::parse(c.tls.get_ref()) {
            Ok(t) => t,
            Err(e) => {
                errors.push(at(c.tls.span(), e.to_string()));
                TlsLevel::Opportunistic
            }
        };
        let client_cert = match (&c.client_certificate, &c.client_key) {
            (Some(certificate), Some(key)) => Some(ClientCert {
                certificate: certificate.clone(),
                key: key.clone(),
            }),
            (None, None) => None,
            _ => {
                errors.push(at(
                    c.name.span(),
                    format!("connector `{name}`: client_certificate and client_key go together"),
                ));
                None
            }
        };
        let o = Outbound {
            name,
            recipient_domains,
            next_hop,
            tls,
            tls_domain: c.tls_domain.clone(),
            client_cert,
            ehlo_name: c.ehlo_name.clone(),
            tls_trust: match &c.tls_trust {
                None => None,
                Some(t) if t.get_ref() == "system" => None,
                Some(t) => {
                    let p = PathBuf::from(t.get_ref());
                    if !p.is_file() {
                        errors.push(at(
                            t.span(),
                            format!("CA file {} does not exist", p.display()),
                        ));
                    }
                    Some(p)
                }
            },
        };
        if let Err(e) = o.check()
            && !matches!(&o.next_hop, NextHop::SmartHosts(h) if h.is_empty())
        {
            errors.push(at(c.name.span(), e.to_string()));
        }
        out.push(o);
    }
    out
}
