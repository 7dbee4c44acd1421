//! One session to one next hop, step by step, for `smtp-edge connector
//! test`: what Exchange Online's "validate connector" reports (connect,
//! greeting, EHLO, STARTTLS, the TLS version and cipher, the peer's chain,
//! whether it verifies and matches the TLS name, whether our client
//! certificate was asked for), judged by the connector's TLS level as
//! delivery would judge it. The session ends with QUIT after EHLO; a test
//! message goes through [`super::deliver`] itself.
//!
//! A server asking for a client certificate is not one requiring it
//! (Postfix's `smtpd_tls_ask_ccert`, smtp-edge's own listener, most receive
//! connectors ask and take mail without one): the client certificate step
//! never fails by itself. It is a note when we had none to give, a warning
//! when ours was configured but not asked for; a server that requires one
//! refuses the session or the transaction, and that reply is the failure.

use std::net::SocketAddr;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use super::conn::{Conn, Stream};
use super::error::Stage;
use super::settings::ClientSettings;
use super::tls::judge;
use crate::outbound::routing::TlsLevel;

/// A remark on a step that went through: worth reading, not a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Notice {
    /// Something to know (a client certificate asked for and none given).
    Note,
    /// Something that may not be as meant (a configured client certificate
    /// that was never presented).
    Warn,
}

/// One step and its verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// What was done ("connect", "greeting", "ehlo", "starttls", "tls",
    /// "certificate", "client certificate", "ehlo after tls").
    pub step: String,
    /// It went as delivery needs.
    pub ok: bool,
    /// A note or warning on a step that went through (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<Notice>,
    /// What was seen (one line per item).
    pub detail: Vec<String>,
}

impl Step {
    /// A step without a notice.
    pub fn new(step: &str, ok: bool, detail: Vec<String>) -> Step {
        Step {
            step: step.into(),
            ok,
            notice: None,
            detail,
        }
    }
}

fn step(steps: &mut Vec<Step>, name: &str, ok: bool, detail: Vec<String>) -> bool {
    steps.push(Step::new(name, ok, detail));
    ok
}

/// An EHLO reply as a step shows it: the code and the extensions when
/// positive, the whole reply (the server's reason) otherwise.
fn ehlo_shown(r: &super::reply::Reply) -> String {
    if r.is_positive() {
        format!("{} {}", r.code, extensions(r))
    } else {
        r.to_string()
    }
}

fn extensions(r: &super::reply::Reply) -> String {
    r.lines
        .iter()
        .skip(1)
        .cloned()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The steps of one session to `host` at `addr` under `settings`; stops at
/// the first step delivery could not get past.
pub async fn probe(addr: SocketAddr, host: &str, settings: &ClientSettings) -> Vec<Step> {
    let mut steps = Vec::new();
    let t = settings.timeouts;
    let started = Instant::now();
    let tcp = match tokio::time::timeout(t.connect, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            step(&mut steps, "connect", false, vec![format!("{addr}: {e}")]);
            return steps;
        }
        Err(_) => {
            step(
                &mut steps,
                "connect",
                false,
                vec![format!(
                    "{addr}: no answer within {} s",
                    t.connect.as_secs()
                )],
            );
            return steps;
        }
    };
    step(
        &mut steps,
        "connect",
        true,
        vec![format!("{addr} in {} ms", started.elapsed().as_millis())],
    );
    let mut conn = Conn {
        stream: Stream::Plain(tcp),
        buf: Vec::new(),
        timeouts: t,
        closing: false,
    };
    run(&mut conn, host, settings, &mut steps).await;
    conn.quit().await;
    steps
}

async fn run(conn: &mut Conn, host: &str, settings: &ClientSettings, steps: &mut Vec<Step>) {
    let t = settings.timeouts;
    match conn.reply(Stage::Greeting, t.greeting).await {
        Ok(r) => {
            if !step(steps, "greeting", r.is_positive(), vec![r.to_string()]) {
                return;
            }
        }
        Err(e) => {
            step(steps, "greeting", false, vec![e.to_string()]);
            return;
        }
    }
    let ehlo = format!("EHLO {}", settings.ehlo_name);
    let reply = match conn.command(&ehlo, Stage::Ehlo, t.command).await {
        Ok(r) => r,
        Err(e) => {
            step(steps, "ehlo", false, vec![e.to_string()]);
            return;
        }
    };
    let ext = super::reply::Extensions::parse(&reply);
    if !step(steps, "ehlo", reply.is_positive(), vec![ehlo_shown(&reply)]) {
        return;
    }
    let level = settings.tls;
    if level == TlsLevel::None {
        step(
            steps,
            "starttls",
            true,
            vec!["not attempted (tls = none)".into()],
        );
        return;
    }
    if !ext.starttls {
        let ok = !level.requires_tls();
        let why = match ok {
            true => "not offered: under opportunistic TLS mail goes in clear".to_string(),
            false => format!("not offered, and tls = {level} requires it: delivery fails"),
        };
        step(steps, "starttls", ok, vec![why]);
        return;
    }
    let reply = match conn.command("STARTTLS", Stage::StartTls, t.command).await {
        Ok(r) => r,
        Err(e) => {
            step(steps, "starttls", false, vec![e.to_string()]);
            return;
        }
    };
    if reply.code != 220 {
        let ok = !level.requires_tls();
        step(steps, "starttls", ok, vec![format!("refused: {reply}")]);
        return;
    }
    step(steps, "starttls", true, vec![reply.to_string()]);
    let (session, seen) = match conn.start_tls_probe(settings, host).await {
        Ok(x) => x,
        Err(e) => {
            step(steps, "tls", false, vec![e.to_string()]);
            return;
        }
    };
    step(
        steps,
        "tls",
        true,
        vec![format!("{} {}", session.version, session.cipher)],
    );
    let j = judge(settings, host, &seen);
    let mut detail = j.lines.clone();
    detail.push(match &j.chain {
        Ok(()) => "chain: verifies against the connector's trust (tls_trust)".into(),
        Err(e) => format!("chain: does not verify: {e}"),
    });
    if let Some((name, verdict)) = &j.name {
        detail.push(match verdict {
            Ok(()) => format!("name: matches {name}"),
            Err(e) => format!("name: does not match {name} ({e})"),
        });
    }
    let ok = match level {
        TlsLevel::CertificateValidation => j.chain.is_ok(),
        TlsLevel::DomainValidation => {
            j.chain.is_ok() && j.name.as_ref().is_some_and(|(_, v)| v.is_ok())
        }
        _ => true,
    };
    detail.push(format!(
        "tls = {level}: {}",
        match (ok, level.verifies_certificate()) {
            (_, false) => "the certificate is not checked",
            (true, true) => "accepted",
            (false, true) => "refused: delivery fails",
        }
    ));
    if !step(steps, "certificate", ok, detail) {
        return;
    }
    let asked = seen.asked();
    let presented = settings
        .client_cert
        .as_ref()
        .and_then(|id| id.chain.first())
        .map(|c| {
            format!(
                "{} ({})",
                crate::certs::certificate_subject(c),
                super::tls::purposes(c)
            )
        });
    steps.push(client_certificate(asked, presented.as_deref()));
    let (ok, mut detail) = match conn.command(&ehlo, Stage::Ehlo, t.command).await {
        Ok(r) => (r.is_positive(), vec![ehlo_shown(&r)]),
        Err(e) => (false, vec![e.to_string()]),
    };
    if !ok && asked && presented.is_none() {
        detail.push(
            "the server asked for a client certificate and got none: \
             it may require one (a certificate-based connector)"
                .into(),
        );
    }
    step(steps, "ehlo after tls", ok, detail);
}

/// The client certificate step: whether the server asked, what we presented
/// (`presented`: our certificate's subject, when one is configured). Never
/// a failure: asking is not requiring, and the server's replies to the rest
/// of the session (or, with `--send`, to the transaction) decide.
fn client_certificate(asked: bool, presented: Option<&str>) -> Step {
    let (notice, line) = match (presented, asked) {
        (Some(s), true) => (None, format!("presented: {s}")),
        (Some(s), false) => (
            Some(Notice::Warn),
            format!(
                "configured, not asked for: {s} (not presented; a next hop that \
                 recognises us by certificate would not see it)"
            ),
        ),
        (None, true) => (
            Some(Notice::Note),
            "none configured: asking is not requiring; the server's replies decide \
             (--send proves it takes mail without one)"
                .into(),
        ),
        (None, false) => (None, "none configured".into()),
    };
    Step {
        step: "client certificate".into(),
        ok: true,
        notice,
        detail: vec![
            format!(
                "asked for by the server: {}",
                if asked { "yes" } else { "no" }
            ),
            line,
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asking_is_not_requiring() {
        let s = client_certificate(true, None);
        assert!(s.ok);
        assert_eq!(s.notice, Some(Notice::Note));
        assert_eq!(s.detail[0], "asked for by the server: yes");
        assert!(s.detail[1].contains("asking is not requiring"), "{s:?}");
    }

    #[test]
    fn a_configured_certificate_not_asked_for_is_a_warning() {
        let s = client_certificate(false, Some("CN=edge.contoso.com"));
        assert!(s.ok);
        assert_eq!(s.notice, Some(Notice::Warn));
        assert!(
            s.detail[1].starts_with("configured, not asked for: CN=edge.contoso.com"),
            "{s:?}"
        );
    }

    #[test]
    fn asked_and_presented_or_neither_is_plain() {
        let s = client_certificate(true, Some("CN=edge.contoso.com"));
        assert_eq!((s.ok, s.notice), (true, None));
        assert_eq!(s.detail[1], "presented: CN=edge.contoso.com");
        let s = client_certificate(false, None);
        assert_eq!((s.ok, s.notice), (true, None));
        assert_eq!(s.detail[1], "none configured");
    }

    #[test]
    fn a_refused_ehlo_shows_the_reason() {
        let r = super::super::reply::Reply {
            code: 421,
            enhanced: Some((4, 7, 1)),
            lines: vec!["4.7.1 mx.test Error: No client certificate presented".into()],
        };
        assert_eq!(
            ehlo_shown(&r),
            "421 4.7.1 mx.test Error: No client certificate presented"
        );
        let ok = super::super::reply::Reply {
            code: 250,
            enhanced: None,
            lines: vec!["mx.test".into(), "PIPELINING".into(), "STARTTLS".into()],
        };
        assert_eq!(ehlo_shown(&ok), "250 PIPELINING STARTTLS");
    }
}
