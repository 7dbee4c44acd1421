//! `smtp-edge-lab`: every mail path of smtp-edge on one machine, through the
//! real daemon (`smtp-edge run`: gate, receiving side, queue, ranges updater,
//! metrics).
//!
//! ```text
//!  eo    203.0.113.10 Exchange Online stand-in ──┐            ┌── lan 192.0.2.25 on-prem Exchange
//!        203.0.113.20 Microsoft 365 stand-in ◀──┤            │       (Postfix, a mailbox)
//!                                    out-eo     │  edge      │ in-lan
//!  inet  198.51.100.66 internet sender ─────────┤ gate+relay ├── lan 192.0.2.50 scanner (no TLS)
//!                                    out-inet   └────────────┘
//! ```
//!
//! Each round, at the same time, what Exchange Online really sends (the
//! header sets of `tests/fixtures/exchange-online` through
//! `smtp_edge_tests::exo`), over STARTTLS with Microsoft's
//! `mail.protection.outlook.com` certificate as public CAs issue them in
//! 2026 (RSA 2048, serverAuth only, under a serverAuth-only issuing CA),
//! delivered to a real Postfix whose mailbox the lab reads back:
//! 1. Internet mail EOP relays for our tenant (`-AuthAs: Anonymous`, our
//!    tenant's stamp), signed by its author (`d=sender.test`).
//! 2. The same, unsigned.
//! 3. Our cloud users' mail (`-AuthAs: Internal`), signed by our tenant.
//!
//! The connector has no `relay`, so its tenant proof is the stamp
//! (`tenant_proof = "stamp"`): no DKIM of ours is asked of inbound mail.
//! And:
//! 4. The scanner → edge → Microsoft 365: plain SMTP in, relayed with
//!    domain validation and the organisation's client certificate to a
//!    Postfix that requires one (as a certificate-based inbound connector).
//!    That certificate has the clientAuth EKU (from the lab CA): Postfix 3.7
//!    refuses a serverAuth-only one as a client certificate.
//! 5. The internet sender: its SYNs are dropped by the gate.
//! 6. An open-relay attempt from the allowed Exchange Online source: refused.
//! 7. Another tenant's connector to us (their stamp, their signature, from
//!    the same ranges with the same certificate): refused with the reason.
//!
//! Half-way through, the recorded endpoints web service (on the edge's
//! loopback) publishes a new Exchange Online range holding the internet
//! sender; the daemon's ranges updater takes it and the gate lets it in
//! live (its mail is then refused by the connector: no TLS, no
//! certificate). Every round shows gate counters, the drop log, sessions,
//! queue and deliveries from the metrics endpoint. The run ends with one
//! JSON line and exits non-zero when any path did not behave as expected,
//! so `cargo xtask test` runs it as an end-to-end test.
//!
//! Documentation addresses only, inside namespaces the lab creates and
//! deletes (also on Ctrl-C and on failure). Needs root, bpffs, iproute2,
//! Postfix, NSD, Python 3 and openssl (`cargo xtask setup`).

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use rcgen::ExtendedKeyUsagePurpose;
use serde_json::{Value, json};

use smtp_edge::ops::view::Stats;
use smtp_edge_tests::certs::{Ca, KeyAlg, Leaf, Profile2026};
use smtp_edge_tests::dkim::{self, DkimKey};
use smtp_edge_tests::exo;
use smtp_edge_tests::netns::{self, Netns};
use smtp_edge_tests::nsd::Nsd;
use smtp_edge_tests::postfix::{self, MailServer, Postfix};
use smtp_edge_tests::scrape;
use smtp_edge_tests::tools::{Send, smtp_send};
use smtp_edge_tests::webservice::WebService;
use smtp_edge_tests::{Daemon, PinDir, smtp_edge_bin};

/// Bring up the smtp-edge lab.
#[derive(Parser)]
#[command(name = "smtp-edge-lab")]
struct Args {
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// Seconds between traffic rounds.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    interval: u64,
}

// ---- addresses and names (documentation ranges only) ----------------------

const EO_V4: &str = "203.0.113.10";
const M365_V4: &str = "203.0.113.20";
const EDGE_EO_V4: &str = "203.0.113.1";
/// The stand-in Exchange Online range the lab's endpoints service lists.
const EO_RANGE: &str = "203.0.113.0/28";
const INET_V4: &str = "198.51.100.66";
const EDGE_INET_V4: &str = "198.51.100.1";
/// The range the second published version adds (it holds the internet sender).
const NEW_RANGE: &str = "198.51.100.64/28";
const ONPREM_V4: &str = "192.0.2.25";
const SCANNER_V4: &str = "192.0.2.50";
const EDGE_LAN_V4: &str = "192.0.2.1";
const DEVICES: &str = "192.0.2.48/28";

const IF_OUT_EO: &str = "out-eo";
const IF_OUT_INET: &str = "out-inet";
const IF_LAN: &str = "in-lan";

const EDGE_NAME: &str = "edge.contoso.com";
const ONPREM_NAME: &str = "exchange.contoso.com";
const EXO_NAME: &str = "mail.protection.outlook.com";
const PARTNER: &str = "fabrikam.example";
const OUR_TENANT: &str = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";
const OUR_DOMAIN: &str = "contoso.onmicrosoft.test";
const FOREIGN_TENANT: &str = "9f8e7d6c-5b4a-3928-1706-f5e4d3c2b1a0";
const FOREIGN_DOMAIN: &str = "fabrikam.onmicrosoft.test";
/// The internet author of the mail EOP relays inbound (the fixture's From).
const AUTHOR: &str = "sam@sender.test";
const AUTHOR_DOMAIN: &str = "sender.test";
const METRICS: &str = "127.0.0.1:9325";

const VERSION_1: &str = "2026120100";
const VERSION_2: &str = "2026120200";

/// How long a dropped sender waits for an answer.
const DROPPED_AFTER: u64 = 4;

// ---- Ctrl-C ---------------------------------------------------------------

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Sleeps until `until`, waking early on Ctrl-C.
fn sleep_until(until: Instant) {
    while !stopping() {
        let now = Instant::now();
        if now >= until {
            return;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(100)));
    }
}

// ---- output helpers -------------------------------------------------------

fn heading(text: &str) {
    let line = "─".repeat(78usize.saturating_sub(text.chars().count() + 4));
    println!("\n── {text} {line}");
}

/// A labelled line of a round.
fn row(label: &str, text: &str) {
    println!("  {label:<16} {text}");
}

fn indent(text: &str) {
    for l in text.lines() {
        println!("    {l}");
    }
}

fn quote(path: &Path) -> Result<String> {
    // A JSON string is a valid TOML basic string.
    Ok(serde_json::to_string(path.to_str().ok_or_else(|| {
        anyhow!("{} is not UTF-8", path.display())
    })?)?)
}

/// Runs `f` on a thread inside network namespace `ns` (setns(2) only: the
/// mount namespace, and so the one bpffs, stays the host's).
fn within<T: std::marker::Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + std::marker::Send + 'static,
) -> Result<T> {
    use std::os::fd::AsRawFd;
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || -> Result<T> {
        let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
        // SAFETY: setns on a valid namespace fd; it affects only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        anyhow!("{msg}")
    })?
}

// ---- the CLI and the daemon's outputs -------------------------------------

/// `smtp-edge --config CFG ARGS` on the edge host (its network namespace).
struct Cli {
    ns: String,
    config: PathBuf,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Result<String> {
        let config = self.config.clone();
        let owned: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let out = within(&self.ns, move || {
            Command::new(smtp_edge_bin())
                .arg("--config")
                .arg(&config)
                .args(&owned)
                .process_group(0)
                .stdin(Stdio::null())
                .output()
                .context("run smtp-edge")
        })?;
        if !out.status.success() {
            bail!(
                "smtp-edge {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    }

    /// Runs and prints `$ smtp-edge ARGS` with its output, as an admin sees it.
    fn show(&self, args: &[&str]) {
        println!("  $ smtp-edge {}", args.join(" "));
        match self.run(args) {
            Ok(out) => indent(&out),
            Err(e) => println!("    ! {e:#}"),
        }
    }

    fn json(&self, args: &[&str]) -> Result<Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all)?;
        serde_json::from_str(&out).with_context(|| format!("parse `smtp-edge {}`", all.join(" ")))
    }

    fn stats(&self) -> Result<Stats> {
        serde_json::from_value(self.json(&["stats"])?).context("parse stats")
    }
}

/// The metrics endpoint's text, read from inside the edge namespace.
fn metrics(ns: &str) -> Result<String> {
    within(ns, || {
        let addr: SocketAddr = METRICS.parse()?;
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let (_, body) = out
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("not an HTTP answer"))?;
        Ok(body.to_string())
    })
}

/// Follows the daemon's log file.
struct LogTail {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl LogTail {
    fn new_lines(&mut self) -> Vec<String> {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return Vec::new();
        }
        self.offset += buf.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        let mut lines = Vec::new();
        while let Some(pos) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=pos).collect();
            let line = line.trim_end().to_string();
            if !line.is_empty() {
                lines.push(line);
            }
        }
        lines
    }
}

/// The log lines worth showing in a round: drops, refusals, tenant checks,
/// ranges, warnings (a few of each).
fn show_log(tail: &mut LogTail, drops: &mut u64) {
    let lines = tail.new_lines();
    let mut shown = 0;
    for l in &lines {
        let drop = l.contains("packet refused by the gate");
        if drop {
            *drops += 1;
        }
        let interesting = drop
            || l.contains("refused")
            || l.contains("tenant check")
            || l.contains("ranges")
            || l.contains("WARN")
            || l.contains("ERROR");
        if interesting && shown < 8 {
            // Only the message and its fields, not the timestamp and target.
            let short = l.split_once(": ").map_or(l.as_str(), |(_, rest)| rest);
            row(if drop { "drop log" } else { "daemon log" }, short);
            shown += 1;
        }
    }
}

// ---- the senders ------------------------------------------------------------

/// What the lab needs to send.
#[derive(Clone)]
struct Kit {
    /// Exchange Online's `mail.protection.outlook.com` certificate (2026
    /// profile: serverAuth only), presented as its client certificate.
    eo_cert: (PathBuf, PathBuf),
    /// Our tenant's DKIM key (`d=` its initial domain).
    ours: std::sync::Arc<DkimKey>,
    /// Another tenant's.
    foreign: std::sync::Arc<DkimKey>,
    /// The internet author's (`d=sender.test`, the fixture's From domain).
    author: std::sync::Arc<DkimKey>,
}

/// The fields an internet author's mail server signs (not Exchange
/// Online's set: the author is not a tenant).
const AUTHOR_SIGNED: &[&str] = &[
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
];

/// Internet mail Exchange Online Protection relays for our tenant (the
/// fixture `inbound.eml`: `-AuthAs: Anonymous`, our tenant's stamp),
/// signed by its author's domain or not at all, never by us. The author
/// signed before EOP put its fields above the message's own, so the
/// signature sits just above From.
fn inbound_message(kit: &Kit, subject: &str, signed: bool) -> String {
    let m = exo::inbound(OUR_TENANT, OUR_TENANT, OUR_DOMAIN, subject);
    if !signed {
        return m;
    }
    let at = m.find("\r\nFrom: ").map_or(0, |i| i + 2);
    let (eop, authored) = m.split_at(at);
    format!("{eop}{}", kit.author.sign_fields(authored, AUTHOR_SIGNED))
}

/// A cloud user's message (the fixture `validation.eml`'s header set:
/// `-AuthAs: Internal`) stamped with `tenant` and signed by `key`, as
/// Exchange Online signs every message a tenant sends.
fn cloud_message(key: &DkimKey, tenant: &str, from: &str, subject: &str) -> String {
    key.sign(&exo::internal(tenant, &key.domain, from, subject))
}

fn plain_message(from: &str, to: &str, subject: &str) -> String {
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nDate: {}\r\n\r\nScanned document attached (not really).\r\n",
        smtp_edge::smtp::trace::rfc5322_date(smtp_edge::queue::spool::now())
    )
}

/// One flow of a round.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Flow {
    /// Internet mail EOP relays for our tenant, signed by its author.
    InboundSigned,
    /// The same, unsigned.
    InboundUnsigned,
    /// Our cloud users' mail to on-prem (`-AuthAs: Internal`, our DKIM).
    Internal,
    DeviceToM365,
    Internet,
    RelayAttempt,
    /// Another tenant's connector to us: their stamp, their signature.
    ForeignTenant,
}

impl Flow {
    const ALL: [Flow; 7] = [
        Flow::InboundSigned,
        Flow::InboundUnsigned,
        Flow::Internal,
        Flow::DeviceToM365,
        Flow::Internet,
        Flow::RelayAttempt,
        Flow::ForeignTenant,
    ];

    /// The flows Exchange Online delivers to on-prem: each one's key in
    /// the JSON line and its Subject prefix in the on-prem mailbox.
    const TO_ONPREM: [(Flow, &'static str, &'static str); 3] = [
        (Flow::InboundSigned, "eo_inbound_signed", "lab-in-signed-"),
        (
            Flow::InboundUnsigned,
            "eo_inbound_unsigned",
            "lab-in-unsigned-",
        ),
        (Flow::Internal, "eo_internal", "lab-internal-"),
    ];

    fn label(self) -> &'static str {
        match self {
            Flow::InboundSigned => "eo in, signed",
            Flow::InboundUnsigned => "eo in, unsigned",
            Flow::Internal => "eo internal",
            Flow::DeviceToM365 => "scanner → M365",
            Flow::Internet => "internet",
            Flow::RelayAttempt => "eo open relay",
            Flow::ForeignTenant => "foreign tenant",
        }
    }

    /// Its Subject prefix in the on-prem mailbox (the flows that end there).
    fn subject(self) -> Option<&'static str> {
        Flow::TO_ONPREM
            .iter()
            .find(|(f, _, _)| *f == self)
            .map(|(_, _, s)| *s)
    }
}

/// How many messages of each Exchange Online flow the on-prem mailbox holds.
fn onprem_counts(mail: &[String]) -> [u64; 3] {
    Flow::TO_ONPREM.map(|(_, _, prefix)| {
        mail.iter()
            .filter(|m| m.contains(&format!("\nSubject: {prefix}")))
            .count() as u64
    })
}

/// Sends this flow's message once; the smtplib transcript.
fn send(flow: Flow, kit: &Kit, ns: &Names, round: u32) -> Result<Value> {
    let subject = format!("{}{round}", flow.subject().unwrap_or("lab-"));
    let (ns_name, src, dst, tls, from, rcpt, message) = match flow {
        Flow::InboundSigned | Flow::InboundUnsigned => (
            ns.eo.clone(),
            EO_V4,
            EDGE_EO_V4,
            true,
            AUTHOR.to_string(),
            "bob@contoso.com".to_string(),
            inbound_message(kit, &subject, flow == Flow::InboundSigned),
        ),
        Flow::Internal => (
            ns.eo.clone(),
            EO_V4,
            EDGE_EO_V4,
            true,
            "alice@contoso.com".to_string(),
            "bob@contoso.com".to_string(),
            cloud_message(&kit.ours, OUR_TENANT, "Alice <alice@contoso.com>", &subject),
        ),
        Flow::DeviceToM365 => (
            ns.lan.clone(),
            SCANNER_V4,
            EDGE_LAN_V4,
            false,
            "scanner@contoso.com".to_string(),
            format!("carol@{PARTNER}"),
            plain_message(
                "scanner@contoso.com",
                &format!("carol@{PARTNER}"),
                &format!("lab-scan-{round}"),
            ),
        ),
        Flow::Internet => (
            ns.inet.clone(),
            INET_V4,
            EDGE_INET_V4,
            false,
            "mallory@example.net".to_string(),
            "bob@contoso.com".to_string(),
            plain_message("mallory@example.net", "bob@contoso.com", "lab-inet"),
        ),
        Flow::RelayAttempt => (
            ns.eo.clone(),
            EO_V4,
            EDGE_EO_V4,
            true,
            "alice@contoso.com".to_string(),
            format!("victim@{PARTNER}"),
            cloud_message(
                &kit.ours,
                OUR_TENANT,
                "Alice <alice@contoso.com>",
                &format!("lab-relay-{round}"),
            ),
        ),
        Flow::ForeignTenant => (
            ns.eo.clone(),
            EO_V4,
            EDGE_EO_V4,
            true,
            "ceo@contoso.com".to_string(),
            "bob@contoso.com".to_string(),
            // Their user writes as our CEO; Exchange Online stamps and
            // signs it as *their* tenant's.
            cloud_message(
                &kit.foreign,
                FOREIGN_TENANT,
                "Contoso CEO <ceo@contoso.com>",
                &format!("lab-foreign-{round}"),
            ),
        ),
    };
    let cert = kit.eo_cert.clone();
    within(&ns_name, move || {
        let source: IpAddr = src.parse()?;
        let addr = SocketAddr::new(dst.parse()?, 25);
        Ok(smtp_send(&Send {
            addr,
            source: Some(source),
            starttls: tls.then_some(Some((cert.0.as_path(), cert.1.as_path()))),
            ehlo: if tls { EXO_NAME } else { "scanner.contoso.com" },
            from: &from,
            rcpts: &[&rcpt],
            message: message.as_bytes(),
            timeout: DROPPED_AFTER,
            login: None,
            implicit_tls: false,
        }))
    })
}

fn code(v: &Value, step: &str) -> Option<u64> {
    let s = &v[step];
    let first = if step == "rcpt" { &s[0][0] } else { &s[0] };
    first.as_u64()
}

fn text(v: &Value, step: &str) -> String {
    let s = &v[step];
    let t = if step == "rcpt" { &s[0][1] } else { &s[1] };
    t.as_str().unwrap_or_default().replace('\n', " ")
}

/// What a flow's transcript means, and whether that is what should happen.
fn judge(flow: Flow, v: &Value, inet_allowed: bool) -> (String, bool, Outcome) {
    if let Some(e) = v["error"].as_str() {
        let dropped = e.contains("timed out") || e.contains("TimeoutError");
        let ok = flow == Flow::Internet && !inet_allowed && dropped;
        let what = if dropped {
            format!("✘ no answer within {DROPPED_AFTER} s (SYNs dropped by the gate)")
        } else {
            format!("✘ {e}")
        };
        return (
            what,
            ok,
            if dropped {
                Outcome::Dropped
            } else {
                Outcome::Failed
            },
        );
    }
    match flow {
        Flow::InboundSigned | Flow::InboundUnsigned | Flow::Internal | Flow::DeviceToM365 => {
            match code(v, "data") {
                Some(250) => (
                    format!("✔ 250 {}", text(v, "data")),
                    true,
                    Outcome::Accepted,
                ),
                _ => (format!("✘ {v}"), false, Outcome::Failed),
            }
        }
        Flow::Internet => {
            let mail = code(v, "mail");
            let ok = inet_allowed && mail.is_some_and(|c| c >= 500);
            (
                format!(
                    "reached the edge (the new range): MAIL → {} {}",
                    mail.unwrap_or(0),
                    text(v, "mail")
                ),
                ok,
                Outcome::Refused,
            )
        }
        Flow::RelayAttempt => match code(v, "rcpt") {
            Some(c) if c >= 500 => (
                format!("✔ refused: RCPT → {c} {}", text(v, "rcpt")),
                true,
                Outcome::Refused,
            ),
            _ => (format!("✘ {v}"), false, Outcome::Failed),
        },
        // Refused for the tenant (their stamp), not for anything else.
        Flow::ForeignTenant => match code(v, "data") {
            Some(c) if c >= 500 && text(v, "data").contains("tenant") => (
                format!("✔ refused: DATA → {c} {}", text(v, "data")),
                true,
                Outcome::Refused,
            ),
            _ => (format!("✘ {v}"), false, Outcome::Failed),
        },
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Accepted,
    Refused,
    Dropped,
    Failed,
}

/// The namespaces' names (for threads).
#[derive(Clone)]
struct Names {
    eo: String,
    inet: String,
    lan: String,
}

#[derive(Default)]
struct Tally {
    /// Accepted by the edge, per flow of [`Flow::TO_ONPREM`].
    eo_accepted: [u64; 3],
    device_accepted: u64,
    inet_dropped: u64,
    inet_refused: u64,
    relay_refused: u64,
    foreign_refused: u64,
    drop_lines: u64,
    unexpected: Vec<String>,
}

impl Tally {
    fn count(&mut self, flow: Flow, outcome: Outcome) {
        if let Some(i) = Flow::TO_ONPREM.iter().position(|(f, _, _)| *f == flow)
            && outcome == Outcome::Accepted
        {
            self.eo_accepted[i] += 1;
        }
        match (flow, outcome) {
            (Flow::DeviceToM365, Outcome::Accepted) => self.device_accepted += 1,
            (Flow::Internet, Outcome::Dropped) => self.inet_dropped += 1,
            (Flow::Internet, Outcome::Refused) => self.inet_refused += 1,
            (Flow::RelayAttempt, Outcome::Refused) => self.relay_refused += 1,
            (Flow::ForeignTenant, Outcome::Refused) => self.foreign_refused += 1,
            _ => {}
        }
    }

    /// Exchange Online messages accepted for on-prem, every flow.
    fn eo_total(&self) -> u64 {
        self.eo_accepted.iter().sum()
    }

    /// The running counts a round shows.
    fn line(&self) -> String {
        let [s, u, i] = self.eo_accepted;
        format!(
            "accepted: in signed {s}, in unsigned {u}, internal {i}, scanner {}   refused: foreign tenant {}, open relay {}",
            self.device_accepted, self.foreign_refused, self.relay_refused
        )
    }
}

// ---- main -------------------------------------------------------------------

fn main() {
    let args = Args::parse();
    install_signal_handlers();
    let code = match lab(&args) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("smtp-edge-lab: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn preflight() -> Result<()> {
    if !smtp_edge_tests::is_root() {
        bail!("the lab needs root (network namespaces, XDP, bpffs)");
    }
    let bin = smtp_edge_bin();
    if !bin.is_file() {
        bail!(
            "{} not found; build it (cargo xtask build) or set SMTP_EDGE_BIN",
            bin.display()
        );
    }
    if !Path::new("/sys/fs/bpf").is_dir() {
        bail!("bpffs is not mounted on /sys/fs/bpf (cargo xtask setup mounts it)");
    }
    for (program, package) in [
        ("/usr/sbin/postfix", "postfix"),
        ("/usr/sbin/nsd", "nsd"),
        ("/usr/bin/python3", "python3"),
        ("/usr/bin/openssl", "openssl"),
    ] {
        if !Path::new(program).is_file() {
            bail!("{program} is missing (Debian package {package}; `cargo xtask setup`)");
        }
    }
    Command::new("ip")
        .arg("-V")
        .output()
        .context("iproute2 (`ip`) is needed")?;
    Ok(())
}

/// The configuration the lab runs, as a real deployment would write it.
struct Files<'a> {
    dir: &'a Path,
    pin: &'a Path,
    /// The lab CA (private: on-prem's certificate, the organisation's
    /// client certificate).
    ca: &'a Path,
    /// The 2026 public root (Exchange Online's and the edge's certificates).
    public_root: &'a Path,
    edge_cert: &'a (PathBuf, PathBuf),
    /// The edge's client certificate toward Microsoft 365.
    edge_client: &'a (PathBuf, PathBuf),
    ranges_url: String,
    dns: SocketAddr,
}

fn config(f: &Files<'_>) -> Result<String> {
    Ok(format!(
        r#"# smtp-edge lab configuration (written by smtp-edge-lab)
[daemon]
state_dir = {state}
control_socket = {socket}
log_format = "text"

[filter]
interfaces = ["{IF_OUT_EO}", "{IF_OUT_INET}"]   # internet-facing
ports = [25]
mode = "enforce"
xdp_mode = "native"
pin_dir = {pin}
drop_events_per_second = 5

[allowlist]
exchange_online = true       # the ranges in force (from the endpoints service)

[ranges]
# The lab serves recorded answers on the edge's loopback; the real service
# is never asked.
service_url = "{ranges_url}"
check_interval = 2           # so the lab sees an update soon (a real host: 1 h)
removal_grace = 3600

[smtp]
enabled = true
listen = ["0.0.0.0:25"]
hostname = "{EDGE_NAME}"
accepted_domains = ["contoso.com"]
spool_dir = {spool}               # the lab's own, not the host's /var/spool/smtp-edge

[smtp.tls]
certificate = {edge_cert}
key = {edge_key}

[[inbound_connectors]]
name = "from-exchange-online"
sources = ["exchange-online"]
require_tls = true
client_cert_names = ["{EXO_NAME}"]
client_cert_trust = {public_root}   # stands in for the public roots
recipient_domains = ["accepted"]
relay = false
tenants = [{{ id = "{OUR_TENANT}", domains = ["{OUR_DOMAIN}"] }}]
tenant_policy = "enforce"
# Without relay the proof is Exchange Online's tenant stamp (the default):
# internet mail EOP relays is signed by its author or not at all.
tenant_proof = "stamp"
trusted_headers = true

[[inbound_connectors]]
name = "devices"
sources = ["{DEVICES}"]
sender_domains = ["accepted"]
relay = true

[[outbound_connectors]]
name = "to-on-prem"
recipient_domains = ["accepted"]
smart_hosts = ["{ONPREM_V4}"]
tls = "domain-validation"
tls_domain = "{ONPREM_NAME}"
tls_trust = {ca}

[[outbound_connectors]]
name = "to-microsoft-365"
recipient_domains = ["*"]
smart_hosts = ["{M365_V4}"]
tls = "domain-validation"
tls_domain = "{EXO_NAME}"
tls_trust = {public_root}
client_certificate = {client_cert}
client_key = {client_key}

[queue]
retry_schedule = [5, 10, 30]

[dns]
nameservers = ["{dns}"]              # NSD with the tenants' DKIM keys
timeout_seconds = 2

[metrics]
listen = "{METRICS}"
"#,
        state = quote(&f.dir.join("state"))?,
        socket = quote(&f.dir.join("control.sock"))?,
        spool = quote(&f.dir.join("spool"))?,
        pin = quote(f.pin)?,
        ranges_url = f.ranges_url,
        edge_cert = quote(&f.edge_cert.0)?,
        edge_key = quote(&f.edge_cert.1)?,
        client_cert = quote(&f.edge_client.0)?,
        client_key = quote(&f.edge_client.1)?,
        ca = quote(f.ca)?,
        public_root = quote(f.public_root)?,
        dns = f.dns,
    ))
}

fn lab(args: &Args) -> Result<bool> {
    preflight()?;
    let interval = Duration::from_secs(args.interval.max(1));
    let started = Instant::now();
    let end = args.duration.map(|d| started + Duration::from_secs(d));
    let update_at = Duration::from_secs(match args.duration {
        Some(d) => d / 2,
        None => 6 * args.interval.max(1),
    });

    // Guards drop in reverse order: daemon, peers, namespaces, files, pins.
    let pin = PinDir::new("lab");
    let tmp = tempfile::Builder::new()
        .prefix("smtp-edge-lab.")
        .tempdir()
        .context("temporary directory")?;
    let dir = tmp.path().to_path_buf();

    heading("smtp-edge lab: every mail path through the gate and the relay");
    println!(
        "  eo      Exchange Online stand-in  {EO_V4:<14} sends with the {EXO_NAME} certificate:"
    );
    println!(
        "{:51}inbound internet mail (author-signed, unsigned), cloud users' mail",
        ""
    );
    println!(
        "          Microsoft 365 stand-in    {M365_V4:<14} requires the organisation's client certificate"
    );
    println!(
        "  inet    internet sender           {INET_V4:<14} not in the ranges (until the update)"
    );
    println!("  lan     on-prem Exchange          {ONPREM_V4:<14} Postfix with a mailbox");
    println!("          scanner                   {SCANNER_V4:<14} plain SMTP, no TLS");
    println!(
        "  edge    firewall host             gate on {IF_OUT_EO}, {IF_OUT_INET}; smtp-edge run"
    );
    println!("  (documentation addresses only; nothing leaves this machine's namespaces)");

    // ---- certificates and keys
    // Public certificates as CAs issue them in 2026 (RSA 2048, a
    // serverAuth-only leaf under a serverAuth-only issuing CA): Microsoft's
    // mail.protection.outlook.com certificate, which Exchange Online
    // presents as client and the Microsoft 365 stand-in as server, and the
    // edge's server certificate. The lab CA is the organisation's private
    // CA: on-prem Exchange's certificate and the edge's client certificate.
    let public = Profile2026::new();
    let public_root = public.root.write(&dir.join("public-root.pem"));
    let microsoft = public
        .server_leaf(&[EXO_NAME, &format!("*.{EXO_NAME}")])
        .write(&dir, "microsoft");
    let edge_cert = public
        .server_leaf(&[EDGE_NAME, "contoso.com"])
        .write(&dir, "edge");
    let ca = Ca::new("smtp-edge lab CA");
    let ca_file = ca.write(&dir.join("lab-ca.pem"));
    let onprem_cert = Leaf::new(&[ONPREM_NAME], Some(&ca), false).write(&dir, "onprem");
    // Toward Microsoft 365 the edge presents a clientAuth certificate, not
    // its serverAuth-only server certificate: Postfix 3.7 (OpenSSL 3.0)
    // refuses that one as a client certificate ("certificate verification
    // failed …: not designated for use as a client certificate", then "421
    // 4.7.1 Error: Client certificate not trusted" at EHLO). The lab CA
    // stands in for a CA that still issues clientAuth certificates.
    let edge_client = Leaf::with_ekus(
        &[EDGE_NAME],
        &ca,
        &[ExtendedKeyUsagePurpose::ClientAuth],
        KeyAlg::Rsa2048,
    )
    .write(&dir, "edge-client");
    let m365_cert = microsoft.clone();
    // The roots the Microsoft 365 stand-in trusts for client certificates:
    // the public one and the client certificate's issuer.
    let m365_trust = dir.join("m365-trust.pem");
    std::fs::write(&m365_trust, format!("{}{}", public.root.pem, ca.pem))
        .context("write the Microsoft 365 trust file")?;
    let kit = Kit {
        eo_cert: microsoft.clone(),
        ours: std::sync::Arc::new(DkimKey::new(OUR_DOMAIN)),
        foreign: std::sync::Arc::new(DkimKey::new(FOREIGN_DOMAIN)),
        author: std::sync::Arc::new(DkimKey::new(AUTHOR_DOMAIN)),
    };

    // ---- namespaces and links
    let eo = Netns::new("eo");
    let inet = Netns::new("inet");
    let lan = Netns::new("lan");
    let edge = Netns::new("edge");
    netns::veth(&eo, "eth0", &edge, IF_OUT_EO);
    netns::veth(&inet, "eth0", &edge, IF_OUT_INET);
    netns::veth(&lan, "eth0", &edge, IF_LAN);
    for (ns, iface, addr) in [
        (&eo, "eth0", EO_V4),
        (&eo, "eth0", M365_V4),
        (&edge, IF_OUT_EO, EDGE_EO_V4),
        (&inet, "eth0", INET_V4),
        (&edge, IF_OUT_INET, EDGE_INET_V4),
        (&lan, "eth0", ONPREM_V4),
        (&lan, "eth0", SCANNER_V4),
        (&edge, IF_LAN, EDGE_LAN_V4),
    ] {
        netns::add_addr(ns, iface, &format!("{addr}/24"));
    }
    let names = Names {
        eo: eo.name.clone(),
        inet: inet.name.clone(),
        lan: lan.name.clone(),
    };
    println!(
        "\n  namespaces: eo={} inet={} lan={} edge={}",
        eo.name, inet.name, lan.name, edge.name
    );

    // ---- peers: the two Postfix servers, NSD and the endpoints service
    let onprem_dir = dir.join("onprem");
    let m365_dir = dir.join("m365");
    let onprem: Postfix = {
        let (d, cert, ca) = (onprem_dir.clone(), onprem_cert.clone(), ca_file.clone());
        within(&lan.name, move || {
            postfix::mail_server(
                &d,
                SocketAddr::new(ONPREM_V4.parse()?, 25),
                &MailServer {
                    hostname: ONPREM_NAME,
                    domains: &["contoso.com"],
                    cert: (&cert.0, &cert.1),
                    client_ca: &ca,
                    require_client_cert: false,
                    networks: "192.0.2.0/24",
                },
            )
        })
        .context("the on-prem Postfix")?
    };
    let m365: Postfix = {
        let (d, cert, ca) = (m365_dir.clone(), m365_cert.clone(), m365_trust.clone());
        within(&eo.name, move || {
            postfix::mail_server(
                &d,
                SocketAddr::new(M365_V4.parse()?, 25),
                &MailServer {
                    hostname: "contoso-com.mail.protection.outlook.com",
                    domains: &[PARTNER],
                    cert: (&cert.0, &cert.1),
                    client_ca: &ca,
                    require_client_cert: true,
                    networks: "127.0.0.0/8",
                },
            )
        })
        .context("the Microsoft 365 Postfix")?
    };
    println!(
        "  on-prem Exchange: Postfix on {ONPREM_V4}:25 ({ONPREM_NAME}, mailbox for contoso.com)"
    );
    println!(
        "  Microsoft 365:    Postfix on {M365_V4}:25 (TLS with a verified client certificate required)"
    );
    let zone = dkim::zone(&[&kit.ours, &kit.foreign, &kit.author]);
    let nsd = within(&edge.name, move || Ok(Nsd::start(&zone)))?;
    let ws = within(&edge.name, || Ok(WebService::start()))?;
    let mut ranges: Vec<&str> = smtp_edge::gate::allowlist::exchange::BUNDLED.to_vec();
    ranges.push(EO_RANGE);
    ws.publish(VERSION_1, &ranges);
    println!(
        "  DNS: NSD on the edge's {} with the DKIM keys of tenants {OUR_DOMAIN} (ours) and {FOREIGN_DOMAIN}, and of {AUTHOR_DOMAIN}",
        nsd.addr
    );
    println!(
        "  certificates: {EXO_NAME} (Exchange Online's client, Microsoft 365's server) and {EDGE_NAME} (server):"
    );
    println!(
        "                2026 public profile, RSA 2048, serverAuth only under a serverAuth-only issuing CA;"
    );
    println!(
        "                the edge's client certificate toward Microsoft 365: lab CA, clientAuth (Postfix 3.7 refuses serverAuth-only)"
    );
    println!(
        "  endpoints web service: recorded answers on the edge's {} (version {VERSION_1}: Exchange Online + {EO_RANGE})",
        ws.url()
    );

    // ---- the daemon
    let cfg_path = dir.join("smtp-edge.toml");
    let cfg_text = config(&Files {
        dir: &dir,
        pin: &pin.0,
        ca: &ca_file,
        public_root: &public_root,
        edge_cert: &edge_cert,
        edge_client: &edge_client,
        ranges_url: ws.url(),
        dns: nsd.addr,
    })?;
    std::fs::write(&cfg_path, &cfg_text).context("write the lab configuration")?;
    heading(&format!("configuration {}", cfg_path.display()));
    indent(&cfg_text);

    heading("starting `smtp-edge run` in the edge namespace");
    let socket = dir.join("control.sock");
    let log = dir.join("smtp-edge.log");
    let mut daemon = {
        let (c, s, l) = (cfg_path.clone(), socket.clone(), log.clone());
        within(&edge.name, move || Ok(Daemon::start(None, &c, &s, &l)))
            .context("start `smtp-edge run` in the edge namespace")?
    };
    let cli = Cli {
        ns: edge.name.clone(),
        config: cfg_path.clone(),
    };
    let mut tail = LogTail {
        path: log.clone(),
        offset: 0,
        partial: String::new(),
    };
    let mut tally = Tally::default();
    // The first ranges check runs at start.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = cli.json(&["ranges", "status"]).unwrap_or(Value::Null);
        if v["version"] == VERSION_1 {
            break;
        }
        if Instant::now() > deadline || stopping() {
            bail!("the daemon did not take ranges version {VERSION_1}: {v}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    cli.show(&["status"]);
    cli.show(&["check", EO_V4]);
    cli.show(&["check", INET_V4]);

    if end.is_none() {
        heading("try it yourself (another terminal)");
        let c = cfg_path.display();
        println!(
            "  ip netns exec {} swaks --server {EDGE_LAN_V4} --from scanner@contoso.com --to you@{PARTNER}",
            lan.name
        );
        println!(
            "  ip netns exec {} swaks --server {EDGE_INET_V4} --to bob@contoso.com   # dropped by the gate",
            inet.name
        );
        println!(
            "  ip netns exec {} {} --config {c} queue list",
            edge.name,
            smtp_edge_bin().display()
        );
        println!(
            "  ip netns exec {} {} --config {c} status",
            edge.name,
            smtp_edge_bin().display()
        );
        println!(
            "  ip netns exec {} curl -s http://{METRICS}/metrics",
            edge.name
        );
    }
    match args.duration {
        Some(d) => println!(
            "\nRunning for {d} s, a round every {} s; the ranges update at {} s. Ctrl-C stops earlier.",
            interval.as_secs(),
            update_at.as_secs()
        ),
        None => println!(
            "\nRunning until Ctrl-C, a round every {} s; the ranges update at {} s.",
            interval.as_secs(),
            update_at.as_secs()
        ),
    }

    // ---- rounds
    let mut inet_allowed = false;
    let mut ranges_updated = false;
    let mut published = false;
    let mut before: Option<Stats> = cli.stats().ok();
    let mut round = 0u32;
    let mut next = Instant::now();
    loop {
        sleep_until(next);
        if stopping() || end.is_some_and(|e| Instant::now() >= e) {
            break;
        }
        next = Instant::now() + interval;
        let elapsed = started.elapsed();
        round += 1;

        if !published && elapsed >= update_at {
            published = true;
            heading(&format!(
                "t+{:.0}s  Microsoft publishes {NEW_RANGE} (version {VERSION_2})",
                elapsed.as_secs_f64()
            ));
            let mut more = ranges.clone();
            more.push(NEW_RANGE);
            ws.publish(VERSION_2, &more);
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let v = cli.json(&["ranges", "status"]).unwrap_or(Value::Null);
                if v["version"] == VERSION_2 {
                    break;
                }
                if Instant::now() > deadline || stopping() {
                    tally
                        .unexpected
                        .push(format!("the daemon did not take version {VERSION_2}: {v}"));
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let check = cli.json(&["check", INET_V4]).unwrap_or(Value::Null);
            cli.show(&["check", INET_V4]);
            inet_allowed = check.to_string().contains("allow")
                || check["verdict"]
                    .as_str()
                    .is_some_and(|v| v.contains("pass"));
            ranges_updated = inet_allowed;
            if !inet_allowed {
                tally.unexpected.push(format!(
                    "the gate does not allow {INET_V4} after the update: {check}"
                ));
            }
        }

        heading(&format!("round {round}  t+{:.0}s", elapsed.as_secs_f64()));
        let results: Vec<(Flow, Result<Value>)> = std::thread::scope(|s| {
            let handles: Vec<_> = Flow::ALL
                .iter()
                .map(|&p| {
                    let (kit, names) = (kit.clone(), names.clone());
                    (p, s.spawn(move || send(p, &kit, &names, round)))
                })
                .collect();
            handles
                .into_iter()
                .map(|(p, h)| {
                    (
                        p,
                        h.join()
                            .unwrap_or_else(|_| Err(anyhow!("sender thread panicked"))),
                    )
                })
                .collect()
        });
        for (flow, result) in results {
            let v = result?;
            let (what, ok, outcome) = judge(flow, &v, inet_allowed);
            row(
                flow.label(),
                &format!("{what}{}", if ok { "" } else { "   ← UNEXPECTED" }),
            );
            if !ok {
                tally
                    .unexpected
                    .push(format!("round {round}: {}: {what}", flow.label()));
            }
            tally.count(flow, outcome);
        }
        row("so far", &tally.line());
        show_log(&mut tail, &mut tally.drop_lines);
        live_view(&cli, &edge.name, &onprem_dir, &m365_dir, &mut before);
    }

    // ---- delivery, then teardown
    heading(if stopping() {
        "Ctrl-C: finishing"
    } else {
        "time is up: waiting for the queue"
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !stopping() {
        let q = cli.json(&["queue", "list"]).unwrap_or(Value::Null);
        if q.as_array().is_some_and(|a| a.is_empty()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let onprem_mail = postfix::wait_mailbox(&onprem_dir, tally.eo_total() as usize, 10);
    let m365_mail = postfix::wait_mailbox(&m365_dir, tally.device_accepted as usize, 10);
    if let Some(m) = onprem_mail.last() {
        row("on-prem mailbox", "the last message from Exchange Online:");
        for l in trail(m) {
            println!("    {l}");
        }
    }
    if let Some(m) = m365_mail.last() {
        row("M365 mailbox", "the last message from the scanner:");
        for l in trail(m) {
            println!("    {l}");
        }
    }
    let final_stats = cli.stats().ok().or(before);
    cli.show(&["stats"]);
    cli.show(&["queue", "list"]);
    show_log(&mut tail, &mut tally.drop_lines);
    if (m365_mail.len() as u64) < tally.device_accepted {
        row("M365 Postfix", "its log (TLS and refusals):");
        for l in m365.log_text().lines().filter(|l| {
            ["TLS", "certificate", "verif", "reject", "NOQUEUE"]
                .iter()
                .any(|w| l.contains(w))
        }) {
            println!("    {l}");
        }
    }

    daemon.stop();
    let _ = cli.run(&["filter", "detach"]);
    drop(m365);
    drop(onprem);
    drop(nsd);
    drop(ws);
    drop(eo);
    drop(inet);
    drop(lan);
    drop(edge);
    drop(pin);
    drop(tmp);

    // ---- summary
    let gate_dropped = final_stats
        .as_ref()
        .map_or(0, |s| counter(s, "dropped_not_allowed_v4"));
    let eo_delivered = onprem_mail.len() as u64;
    let per_flow = onprem_counts(&onprem_mail);
    let device_relayed = m365_mail.len() as u64;
    for (i, (flow, _, _)) in Flow::TO_ONPREM.iter().enumerate() {
        if per_flow[i] < tally.eo_accepted[i] {
            tally.unexpected.push(format!(
                "{}: {} of {} accepted messages reached the on-prem mailbox",
                flow.label(),
                per_flow[i],
                tally.eo_accepted[i]
            ));
        }
        if per_flow[i] > tally.eo_accepted[i] {
            tally.unexpected.push(format!(
                "{}: {} messages in the on-prem mailbox for {} accepted",
                flow.label(),
                per_flow[i],
                tally.eo_accepted[i]
            ));
        }
        if round > 0 && tally.eo_accepted[i] == 0 {
            tally
                .unexpected
                .push(format!("{}: no message was accepted", flow.label()));
        }
    }
    if round > 0 && tally.foreign_refused == 0 {
        tally
            .unexpected
            .push("foreign tenant: no message was refused".into());
    }
    if device_relayed < tally.device_accepted {
        tally.unexpected.push(format!(
            "{} of {} accepted scanner messages reached Microsoft 365",
            device_relayed, tally.device_accepted
        ));
    }
    if device_relayed > tally.device_accepted {
        tally.unexpected.push(format!(
            "{device_relayed} messages at Microsoft 365 for {} accepted",
            tally.device_accepted
        ));
    }
    if let Some(m) = m365_mail.last()
        && !m.contains(&format!("CN \"{EDGE_NAME}\""))
    {
        tally
            .unexpected
            .push("Microsoft 365 did not record the organisation's client certificate".into());
    }
    if round > 0 && gate_dropped == 0 {
        tally.unexpected.push("the gate dropped nothing".into());
    }
    if published && !ranges_updated {
        tally
            .unexpected
            .push("the ranges update did not reach the gate".into());
    }
    heading("summary");
    row(
        "rounds",
        &format!("{round} in {:.0} s", started.elapsed().as_secs_f64()),
    );
    for (i, (flow, _, _)) in Flow::TO_ONPREM.iter().enumerate() {
        row(
            flow.label(),
            &format!(
                "{} accepted, {} in the on-prem mailbox",
                tally.eo_accepted[i], per_flow[i]
            ),
        );
    }
    row(
        "scanner → M365",
        &format!(
            "{} accepted, {device_relayed} at Microsoft 365",
            tally.device_accepted
        ),
    );
    row(
        "internet",
        &format!(
            "{} attempts dropped by the gate ({gate_dropped} packets), {} refused by SMTP after the update",
            tally.inet_dropped, tally.inet_refused
        ),
    );
    row(
        "open relay",
        &format!("{} attempts refused", tally.relay_refused),
    );
    row(
        "foreign tenant",
        &format!(
            "{} messages refused (their connector, their stamp)",
            tally.foreign_refused
        ),
    );
    if tally.unexpected.is_empty() {
        row("verdict", "every path behaved as expected");
    } else {
        row("verdict", "UNEXPECTED:");
        for u in &tally.unexpected {
            println!("    {u}");
        }
    }
    println!(
        "{}",
        json!({
            "rounds": round,
            "eo_delivered": eo_delivered,
            "eo_inbound_signed": per_flow[0],
            "eo_inbound_unsigned": per_flow[1],
            "eo_internal": per_flow[2],
            "device_relayed": device_relayed,
            "gate_dropped": gate_dropped,
            "relay_refused": tally.relay_refused,
            "foreign_tenant_refused": tally.foreign_refused,
            "ranges_updated": ranges_updated,
            "unexpected": tally.unexpected.len(),
        })
    );
    let _ = std::io::stdout().flush();
    Ok(tally.unexpected.is_empty())
}

fn counter(s: &Stats, name: &str) -> u64 {
    smtp_edge::ops::view::counter(s, name).copied().unwrap_or(0)
}

/// A message's Subject and Received fields, unfolded.
fn trail(m: &str) -> Vec<String> {
    let head = m.split("\n\n").next().unwrap_or_default().replace('\r', "");
    let mut fields: Vec<String> = Vec::new();
    for l in head.lines() {
        if l.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.push(' ');
                last.push_str(l.trim());
            }
        } else {
            fields.push(l.to_string());
        }
    }
    fields
        .into_iter()
        .filter(|f| f.starts_with("Subject:") || f.starts_with("Received:"))
        .collect()
}

/// Gate counters, sessions, queue and deliveries, every round.
fn live_view(cli: &Cli, edge: &str, onprem: &Path, m365: &Path, before: &mut Option<Stats>) {
    if let Ok(now) = cli.stats() {
        let delta = |name: &str| {
            let v = counter(&now, name);
            let b = before.as_ref().map_or(0, |b| counter(b, name));
            format!("{v} (+{})", v.saturating_sub(b))
        };
        row(
            "gate",
            &format!(
                "passed_allowed {}   dropped_not_allowed_v4 {}",
                delta("passed_allowed"),
                delta("dropped_not_allowed_v4")
            ),
        );
        *before = Some(now);
    }
    match metrics(edge) {
        Ok(body) => {
            let sessions = |c: &str| {
                scrape::sum(
                    &body,
                    "smtp_edge_smtp_sessions_total",
                    &format!("connector=\"{c}\""),
                )
            };
            row(
                "sessions",
                &format!(
                    "from-exchange-online {}   devices {}   refused before a connector {}",
                    sessions("from-exchange-online"),
                    sessions("devices"),
                    scrape::sum(
                        &body,
                        "smtp_edge_smtp_sessions_total",
                        "outcome=\"refused\""
                    ) as u64
                ),
            );
            let deliveries = |c: &str| {
                scrape::sum(
                    &body,
                    "smtp_edge_deliveries_total",
                    &format!("connector=\"{c}\",outcome=\"delivered\""),
                ) as u64
            };
            row(
                "deliveries",
                &format!(
                    "to-on-prem {}   to-microsoft-365 {}   queue {}",
                    deliveries("to-on-prem"),
                    deliveries("to-microsoft-365"),
                    scrape::sum(&body, "smtp_edge_queue_messages", "") as u64
                ),
            );
            row(
                "tenant checks",
                &["allowed", "foreign_tenant", "no_stamp"]
                    .map(|o| {
                        let n = scrape::sum(
                            &body,
                            "smtp_edge_tenant_checks_total",
                            &format!("outcome=\"{o}\""),
                        ) as u64;
                        format!("{o} {n}")
                    })
                    .join("   "),
            );
        }
        Err(e) => row("metrics", &format!("unavailable: {e:#}")),
    }
    let onprem = postfix::mailbox(onprem);
    let [s, u, i] = onprem_counts(&onprem);
    row(
        "mailboxes",
        &format!(
            "on-prem {} (in signed {s}, in unsigned {u}, internal {i})   Microsoft 365 {}",
            onprem.len(),
            postfix::mailbox(m365).len()
        ),
    );
}
