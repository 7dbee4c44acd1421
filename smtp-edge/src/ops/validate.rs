//! `smtp-edge connector test NAME [--rcpt ADDRESS] [--send]`: an outbound
//! connector checked the way Exchange Online's "validate connector" does —
//! its next hops resolved as delivery resolves them, then a session to
//! each address in turn, step by step ([`client::probe`]), until one gets
//! through; with `--send`, a test message delivered through that address
//! by the delivery client itself, and its final reply.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::outbound::client::{self, ClientSettings, Content, Notice, Step, Transaction};
use crate::outbound::routing::{NextHop, Outbound, RecipientDomain};
use crate::queue::spool::{Envelope, Recipient};

/// One address tried.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    /// The next hop's name.
    pub host: String,
    /// Its address.
    pub address: String,
    /// What happened.
    pub steps: Vec<Step>,
}

/// The whole test.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectorTest {
    /// The connector.
    pub connector: String,
    /// How it delivers (smart hosts or MX, TLS level and name).
    pub summary: String,
    /// Name resolution.
    pub resolve: Vec<Step>,
    /// Each address tried, in delivery's order.
    pub attempts: Vec<Attempt>,
    /// The test message (with `--send`).
    pub message: Option<Step>,
    /// Every step delivery needs went through.
    pub ok: bool,
}

fn summary(c: &Outbound) -> String {
    let hops = match &c.next_hop {
        NextHop::SmartHosts(h) => format!(
            "smart hosts {}",
            h.iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        NextHop::Mx => "MX of the recipient's domain".into(),
    };
    let name = c
        .tls_name()
        .map_or(String::new(), |n| format!(", tls_domain {n}"));
    let cert = if c.client_cert.is_some() {
        ", client certificate"
    } else {
        ""
    };
    format!("{hops}; tls = {}{name}{cert}", c.tls)
}

/// The domain an MX connector is tested for: the recipient's, else the
/// connector's first exact domain.
fn domain_for(c: &Outbound, rcpt: Option<&str>) -> Option<String> {
    if let Some(d) = rcpt.and_then(crate::address::domain_of) {
        return Some(d.to_ascii_lowercase());
    }
    c.recipient_domains.iter().find_map(|d| match d {
        RecipientDomain::Exact(d) => Some(d.clone()),
        _ => None,
    })
}

/// Runs the test of connector `name` from `config`.
pub async fn test_connector(
    config: &Config,
    name: &str,
    rcpt: Option<&str>,
    send: bool,
) -> Result<ConnectorTest, String> {
    let Some(index) = config.outbound.iter().position(|c| c.name == name) else {
        let names: Vec<&str> = config.outbound.iter().map(|c| c.name.as_str()).collect();
        return Err(format!(
            "no outbound connector `{name}` (there are: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ));
    };
    if send && rcpt.is_none() {
        return Err("--send needs --rcpt ADDRESS (whom the test message is for)".into());
    }
    let connector = &config.outbound[index];
    let qc = crate::queue::config::QueueConfig::load(config).map_err(|e| e.to_string())?;
    let settings = ClientSettings::for_connector(
        connector,
        &config.smtp.hostname,
        qc.identities.get(index).cloned().flatten(),
        qc.roots
            .get(index)
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::RootCertStore::empty())),
        (&config.queue.timeouts).into(),
    );
    let mut report = ConnectorTest {
        connector: name.to_string(),
        summary: summary(connector),
        resolve: Vec::new(),
        attempts: Vec::new(),
        message: None,
        ok: false,
    };
    let mut hops: Vec<(String, Vec<SocketAddr>)> = Vec::new();
    match &connector.next_hop {
        NextHop::SmartHosts(list) => {
            for h in list {
                match qc.resolver.smart_host(&h.host, h.port).await {
                    Ok(addrs) => {
                        report.resolve.push(Step::new(
                            "resolve",
                            true,
                            vec![format!("{h} → {}", join(&addrs))],
                        ));
                        hops.push((h.host.clone(), addrs));
                    }
                    Err(e) => {
                        report
                            .resolve
                            .push(Step::new("resolve", false, vec![format!("{h}: {e}")]))
                    }
                }
            }
        }
        NextHop::Mx => {
            let Some(domain) = domain_for(connector, rcpt) else {
                return Err(format!(
                    "connector `{name}` routes by MX: give --rcpt ADDRESS for a domain to test"
                ));
            };
            match qc.resolver.mx(&domain).await {
                Ok(list) => {
                    for m in list {
                        report.resolve.push(Step::new(
                            "resolve",
                            true,
                            vec![format!("MX {domain}: {} → {}", m.name, join(&m.addrs))],
                        ));
                        hops.push((m.name, m.addrs));
                    }
                }
                Err(e) => report.resolve.push(Step::new(
                    "resolve",
                    false,
                    vec![format!("MX {domain}: {e}")],
                )),
            }
        }
    }
    let mut through = None;
    'hosts: for (host, addrs) in &hops {
        for addr in addrs {
            let steps = client::probe(*addr, host, &settings).await;
            let ok = steps.iter().all(|s| s.ok) && steps.len() > 1;
            report.attempts.push(Attempt {
                host: host.clone(),
                address: addr.to_string(),
                steps,
            });
            if ok {
                through = Some((host.clone(), *addr));
                break 'hosts;
            }
        }
    }
    report.ok = through.is_some();
    if let (true, Some(rcpt), Some((host, addr))) = (send, rcpt, &through) {
        let step = send_test(config, name, &settings, host, *addr, rcpt).await;
        report.ok &= step.ok;
        report.message = Some(step);
    }
    Ok(report)
}

fn join(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

async fn send_test(
    config: &Config,
    connector: &str,
    settings: &ClientSettings,
    host: &str,
    addr: SocketAddr,
    rcpt: &str,
) -> Step {
    let now = crate::queue::spool::now();
    let from = format!("postmaster@{}", config.smtp.hostname);
    let id = format!("{:016x}", rand::random::<u64>());
    let text = format!(
        "From: smtp-edge connector test <{from}>\r\nTo: <{rcpt}>\r\nSubject: smtp-edge connector test: {connector}\r\nDate: {}\r\nMessage-ID: <{id}.connector-test@{}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nA test message from smtp-edge through the outbound connector {connector}\r\n(next hop {host} [{}]). No reply is needed.\r\n",
        crate::smtp::trace::rfc5322_date(now),
        config.smtp.hostname,
        addr.ip(),
    );
    let envelope = Envelope {
        id,
        received_at: now,
        mail_from: from,
        recipients: vec![Recipient {
            address: rcpt.to_string(),
            ..Recipient::default()
        }],
        ..Envelope::default()
    };
    let content = Content::memory(text.into_bytes());
    let txn = Transaction::new(&envelope, &envelope.recipients);
    let result = client::deliver(addr, host, settings, &txn, &content).await;
    match result {
        Ok(o) => {
            let r = o.per_recipient.first();
            let delivered = r.is_some_and(|r| r.disposition == client::Disposition::Delivered);
            Step::new(
                "test message",
                delivered,
                vec![format!(
                    "to <{rcpt}> through {host} [{}]: {}",
                    addr.ip(),
                    r.map_or("no result".to_string(), |r| match &r.reply {
                        Some(reply) => reply.to_string(),
                        None => r.text.clone(),
                    })
                )],
            )
        }
        Err(e) => Step::new(
            "test message",
            false,
            vec![format!("to <{rcpt}> through {host} [{}]: {e}", addr.ip())],
        ),
    }
}

/// `text` safe for a terminal: control characters (a certificate subject
/// or a reply can carry escape sequences) and bidirectional overrides shown
/// as `\xNN` / `\u{NNNN}` escapes.
fn shown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            let n = u32::from(c);
            let _ = if n <= 0xff {
                write!(out, "\\x{n:02x}")
            } else {
                write!(out, "\\u{{{n:04x}}}")
            };
        } else {
            out.push(c);
        }
    }
    out
}

impl ConnectorTest {
    /// Every step of the report, in order.
    fn steps(&self) -> impl Iterator<Item = &Step> {
        self.resolve
            .iter()
            .chain(self.attempts.iter().flat_map(|a| a.steps.iter()))
            .chain(self.message.iter())
    }

    /// One verdict line per step (`ok`, `note`, `WARN`, `FAIL`), anything
    /// that came from a peer or the network escaped for the terminal.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "connector {}: {}",
            shown(&self.connector),
            shown(&self.summary)
        );
        let line = |s: &mut String, st: &Step| {
            let mark = match (st.ok, st.notice) {
                (false, _) => "FAIL",
                (true, Some(Notice::Warn)) => "WARN",
                (true, Some(Notice::Note)) => "note",
                (true, None) => "ok  ",
            };
            let mut lines = st.detail.iter().map(|l| shown(l));
            let first = lines.next().unwrap_or_default();
            let _ = writeln!(s, "  {mark}  {:<19} {first}", shown(&st.step));
            for more in lines {
                let _ = writeln!(s, "        {:<19} {more}", "");
            }
        };
        for st in &self.resolve {
            line(&mut s, st);
        }
        for a in &self.attempts {
            let _ = writeln!(s, "  -- {} [{}]", shown(&a.host), shown(&a.address));
            for st in &a.steps {
                line(&mut s, st);
            }
        }
        if let Some(m) = &self.message {
            line(&mut s, m);
        }
        let warnings = self
            .steps()
            .filter(|st| st.ok && st.notice == Some(Notice::Warn))
            .count();
        let verdict = match (self.ok, self.attempts.last()) {
            (true, _) if warnings > 0 => format!(
                "the connector works, with {warnings} warning{}",
                if warnings == 1 { "" } else { "s" }
            ),
            (true, _) => "the connector works".to_string(),
            (false, None) => "FAILED: no next hop to try".into(),
            (false, Some(a)) => match a.steps.iter().find(|s| !s.ok) {
                Some(st) => format!(
                    "FAILED at {} ({} [{}])",
                    shown(&st.step),
                    shown(&a.host),
                    shown(&a.address)
                ),
                None => "FAILED: the test message was not taken".into(),
            },
        };
        let _ = writeln!(s, "result: {verdict}");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(steps: Vec<Step>, ok: bool) -> ConnectorTest {
        ConnectorTest {
            connector: "to-m365".into(),
            summary: "smart hosts mx.test:25; tls = opportunistic".into(),
            resolve: vec![Step::new(
                "resolve",
                true,
                vec!["mx.test → 192.0.2.1:25".into()],
            )],
            attempts: vec![Attempt {
                host: "mx.test".into(),
                address: "192.0.2.1:25".into(),
                steps,
            }],
            message: None,
            ok,
        }
    }

    #[test]
    fn control_characters_from_the_peer_are_escaped() {
        assert_eq!(shown("plain → text"), "plain → text");
        assert_eq!(shown("CN=a\u{1b}[2J\u{7}"), "CN=a\\x1b[2J\\x07");
        assert_eq!(shown("a\r\nb\u{9b}c\u{7f}"), "a\\x0d\\x0ab\\x9bc\\x7f");
        assert_eq!(shown("x\u{202e}y"), "x\\u{202e}y");
        let text = report(
            vec![Step::new(
                "certificate",
                true,
                vec!["0: subject CN=evil\u{1b}]0;title\u{7}".into()],
            )],
            true,
        )
        .render();
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(text.contains("CN=evil\\x1b]0;title\\x07"), "{text}");
    }

    #[test]
    fn notes_and_warnings_are_marked_and_do_not_fail() {
        let mut note = Step::new("client certificate", true, vec!["asked: yes".into()]);
        note.notice = Some(Notice::Note);
        let text = report(vec![note.clone()], true).render();
        assert!(text.contains("  note  client certificate"), "{text}");
        assert!(text.ends_with("result: the connector works\n"), "{text}");
        let mut warn = note;
        warn.notice = Some(Notice::Warn);
        let text = report(vec![warn.clone(), warn], true).render();
        assert!(text.contains("  WARN  client certificate"), "{text}");
        assert!(
            text.ends_with("result: the connector works, with 2 warnings\n"),
            "{text}"
        );
        let failed = Step::new("ehlo after tls", false, vec!["421 4.7.1 no".into()]);
        let text = report(vec![failed], false).render();
        assert!(
            text.contains("  FAIL  ehlo after tls      421 4.7.1 no"),
            "{text}"
        );
        assert!(
            text.contains("result: FAILED at ehlo after tls (mx.test [192.0.2.1:25])"),
            "{text}"
        );
    }

    #[test]
    fn a_step_without_notice_has_none_in_json() {
        let json = serde_json::to_value(Step::new("tls", true, vec![])).expect("json");
        assert!(json.get("notice").is_none(), "{json}");
        let mut s = Step::new("client certificate", true, vec![]);
        s.notice = Some(Notice::Warn);
        let json = serde_json::to_value(&s).expect("json");
        assert_eq!(json["notice"], "warn");
        let back: Step = serde_json::from_value(json).expect("back");
        assert_eq!(back, s);
    }
}
