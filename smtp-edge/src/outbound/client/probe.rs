//! One session to one next hop, step by step, for `smtp-edge connector
//! test`: what Exchange Online's "validate connector" reports (connect,
//! greeting, EHLO, STARTTLS, the TLS version and cipher, the peer's chain,
//! whether it verifies and matches the TLS name, whether our client
//! certificate was asked for), judged by the connector's TLS level as
//! delivery would judge it. The session ends with QUIT after EHLO; a test
//! message goes through [`super::deliver`] itself.

use std::net::SocketAddr;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use super::conn::{Conn, Stream};
use super::error::Stage;
use super::settings::ClientSettings;
use super::tls::judge;
use crate::outbound::routing::TlsLevel;

/// One step and its verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// What was done ("connect", "greeting", "ehlo", "starttls", "tls",
    /// "certificate", "client certificate", "ehlo after tls").
    pub step: String,
    /// It went as delivery needs.
    pub ok: bool,
    /// What was seen (one line per item).
    pub detail: Vec<String>,
}

fn step(steps: &mut Vec<Step>, name: &str, ok: bool, detail: Vec<String>) -> bool {
    steps.push(Step {
        step: name.into(),
        ok,
        detail,
    });
    ok
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
    if !step(
        steps,
        "ehlo",
        reply.is_positive(),
        vec![format!("{} {}", reply.code, extensions(&reply))],
    ) {
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
        .map(crate::certs::certificate_subject);
    let detail = vec![
        format!(
            "asked for by the server: {}",
            if asked { "yes" } else { "no" }
        ),
        match (&presented, asked) {
            (Some(s), true) => format!("presented: {s}"),
            (Some(s), false) => format!("configured, not asked for: {s}"),
            (None, true) => "none configured: a certificate-based connector refuses us".into(),
            (None, false) => "none configured".into(),
        },
    ];
    step(
        steps,
        "client certificate",
        !(asked && presented.is_none()),
        detail,
    );
    match conn.command(&ehlo, Stage::Ehlo, t.command).await {
        Ok(r) => {
            step(
                steps,
                "ehlo after tls",
                r.is_positive(),
                vec![format!("{} {}", r.code, extensions(&r))],
            );
        }
        Err(e) => {
            step(steps, "ehlo after tls", false, vec![e.to_string()]);
        }
    }
}
