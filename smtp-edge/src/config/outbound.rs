//! `[[outbound_connectors]]` and `[queue]`: the sending side's settings.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::outbound::routing::{
    ClientCert, NextHop, Outbound, RecipientDomain, SmartHost, TlsLevel,
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

/// `[queue]`: retries and limits of the sending side.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Queue {
    /// Seconds between attempts, in order; the last repeats. Close to RFC 5321
    /// §4.5.4.1: first retries within minutes, then at least 30 minutes apart.
    pub retry_schedule: Vec<u64>,
    /// Seconds after which an undelivered message bounces (default 2 days).
    pub max_age: u64,
    /// Seconds after which the sender gets a delay notice (0: never).
    pub delay_notice_after: u64,
    /// Deliveries at once, in total.
    pub max_concurrency: u32,
    /// Deliveries at once to one next hop.
    pub max_per_destination: u32,
    /// Where bounces of bounces go; empty: dropped with a log line.
    pub postmaster: String,
    /// Addresses tried per delivery attempt, across all next hops (Postfix's
    /// smtp_mx_address_limit).
    pub max_addresses: u32,
    /// SMTP sessions per delivery attempt (Postfix's smtp_mx_session_limit).
    pub max_sessions: u32,
    /// Seconds a session stays open after a delivery, for the next message
    /// to the same next hop (Postfix's smtp_connection_cache_time_limit);
    /// 0: every delivery has a connection of its own.
    pub session_cache_time: u64,
    /// The SMTP client's time limits.
    pub timeouts: ClientTimeouts,
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            retry_schedule: vec![60, 300, 900, 1800],
            max_age: 2 * 24 * 3600,
            delay_notice_after: 4 * 3600,
            max_concurrency: 100,
            max_per_destination: 20,
            postmaster: String::new(),
            max_addresses: 5,
            max_sessions: 2,
            session_cache_time: 2,
            timeouts: ClientTimeouts::default(),
        }
    }
}

/// `[queue.timeouts]`, in seconds: RFC 5321 §4.5.3.2's client timeouts
/// (connect is not in the RFC: Postfix's 30 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientTimeouts {
    /// TCP connect.
    pub connect: u64,
    /// The greeting.
    pub greeting: u64,
    /// EHLO, STARTTLS and the handshake, RSET, QUIT.
    pub command: u64,
    /// The reply to MAIL.
    pub mail: u64,
    /// The reply to each RCPT.
    pub rcpt: u64,
    /// The reply to DATA.
    pub data_init: u64,
    /// Each write of content.
    pub data_block: u64,
    /// The reply to the final dot.
    pub data_end: u64,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        ClientTimeouts {
            connect: 30,
            greeting: 300,
            command: 300,
            mail: 300,
            rcpt: 300,
            data_init: 120,
            data_block: 180,
            data_end: 600,
        }
    }
}

impl ClientTimeouts {
    fn all(&self) -> [(&'static str, u64); 8] {
        [
            ("connect", self.connect),
            ("greeting", self.greeting),
            ("command", self.command),
            ("mail", self.mail),
            ("rcpt", self.rcpt),
            ("data_init", self.data_init),
            ("data_block", self.data_block),
            ("data_end", self.data_end),
        ]
    }

    /// As the client's time limits.
    pub fn to_client(&self) -> crate::outbound::client::Timeouts {
        use std::time::Duration;
        crate::outbound::client::Timeouts {
            connect: Duration::from_secs(self.connect),
            greeting: Duration::from_secs(self.greeting),
            command: Duration::from_secs(self.command),
            mail: Duration::from_secs(self.mail),
            rcpt: Duration::from_secs(self.rcpt),
            data_init: Duration::from_secs(self.data_init),
            data_block: Duration::from_secs(self.data_block),
            data_end: Duration::from_secs(self.data_end),
        }
    }
}

/// Validates the connectors; `at(span, message)` builds located errors.
pub(super) fn validate(
    raw: Vec<RawOutbound>,
    queue: &Queue,
    at: &dyn Fn(std::ops::Range<usize>, String) -> super::ConfigError,
    errors: &mut Vec<super::ConfigError>,
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
    if queue.retry_schedule.is_empty() || queue.retry_schedule.contains(&0) {
        errors.push(at(
            0..0,
            "queue.retry_schedule needs at least one delay, each above 0 seconds".into(),
        ));
    }
    if queue.max_age == 0
        || queue.max_concurrency == 0
        || queue.max_per_destination == 0
        || queue.max_addresses == 0
        || queue.max_sessions == 0
    {
        errors.push(at(
            0..0,
            "queue.max_age, max_concurrency, max_per_destination, max_addresses and max_sessions must be above 0".into(),
        ));
    }
    if queue.session_cache_time > 300 {
        errors.push(at(
            0..0,
            format!(
                "queue.session_cache_time = {} must be within 0..=300 seconds (a server closes an idle session after 5 minutes, RFC 5321 4.5.3.2.7)",
                queue.session_cache_time
            ),
        ));
    }
    for (name, secs) in queue.timeouts.all() {
        if secs == 0 || secs > 86_400 {
            errors.push(at(
                0..0,
                format!("queue.timeouts.{name} = {secs} must be within 1..=86400 seconds"),
            ));
        }
    }
    out
}
