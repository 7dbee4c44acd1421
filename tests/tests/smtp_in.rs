//! The receiving side against real peers on loopback (127.0.0.1 and ::1
//! only): swaks, `openssl s_client`, Python's smtplib and ssl, Postfix's
//! smtp-source, and raw sockets for what no well-behaved client does (SMTP
//! smuggling, STARTTLS injection, open-relay probes, a crash under load).
//!
//! Each test runs its own daemon (`[filter] enabled = false`) with its own
//! directory, spool, control socket, port and certificates made for it with
//! rcgen. Outcomes are checked on the wire and in the spool.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smtp_edge_tests::certs::{Ca, Leaf};
use smtp_edge_tests::edge::{Edge, INTERNET, Setup, V4, V6, split_received, text};
use smtp_edge_tests::smtp::{Answer, Client, codes, queued};
use smtp_edge_tests::tools::{self, Tool, python, run_tool, swaks_reply};

// ---------------------------------------------------------------------------
// Adapters over the shared helpers

/// A CA, self-signed or signed by `parent` (an intermediate).
fn ca(name: &str, parent: Option<&Ca>) -> Ca {
    match parent {
        None => Ca::new(name),
        Some(p) => p.intermediate(name),
    }
}

/// A certificate for `name` (CN and SAN) issued by `ca` (self-signed with
/// `None`), written as `dir/stem.pem` followed by the `chain` certificates,
/// and its key as `dir/stem.key`.
fn leaf(
    dir: &Path,
    stem: &str,
    name: &str,
    ca: Option<&Ca>,
    expired: bool,
    chain: &[&Ca],
) -> (PathBuf, PathBuf) {
    Leaf::new(&[name], ca, expired)
        .with_chain(chain)
        .write(dir, stem)
}

/// A daemon with extra `[smtp]` keys and these connectors.
fn start_edge(smtp: &str, connectors: &str) -> Edge {
    Edge::start(Setup {
        smtp,
        connectors,
        ..Setup::default()
    })
}

/// The same in `dir`.
fn start_edge_in(dir: tempfile::TempDir, smtp: &str, connectors: &str) -> Edge {
    Edge::start_in(
        dir,
        Setup {
            smtp,
            connectors,
            ..Setup::default()
        },
    )
}

fn swaks(edge: &Edge, args: &[&str]) -> Tool {
    tools::swaks(edge.port, args)
}

// ---------------------------------------------------------------------------
// Plain delivery

const SMTPLIB_SEND: &str = r#"
import json, smtplib, sys
host, port = sys.argv[1], int(sys.argv[2])
msg = ("From: alice@fabrikam.com\r\nTo: bob@contoso.com\r\nSubject: smtplib\r\n\r\n"
       "first line\r\n.leading dot\r\n..two dots\r\n.\r\nlast line\r\n")
s = smtplib.SMTP(host, port, local_hostname="py.fabrikam.com", timeout=10)
replies = []
orig = s.data
def data(m):
    r = orig(m)
    replies.append(r)
    return r
s.data = data
refused = s.sendmail("alice@fabrikam.com", ["bob@contoso.com", "carol@contoso.com"], msg)
s.quit()
print(json.dumps({"refused": refused, "code": replies[0][0],
                  "text": replies[0][1].decode(), "msg": msg}))
"#;

#[test]
fn plain_delivery_with_swaks_and_python_smtplib() {
    let edge = start_edge("", INTERNET);

    let t = swaks(
        &edge,
        &[
            "--from",
            "alice@fabrikam.com",
            "--to",
            "bob@contoso.com",
            "--header",
            "Subject: swaks plain",
            "--body",
            "Hello from swaks",
        ],
    );
    assert!(t.ok, "{}", t.all());
    let reply = swaks_reply(&t.stdout, ".").expect("reply to the end of data");
    assert!(reply.starts_with("250 2.0.0 OK: queued as "), "{reply}");
    let id = queued(&reply).expect("queue id");
    let m = edge.message(&id);
    let e = &m.envelope;
    assert_eq!(e.id, id);
    assert_eq!(e.mail_from, "alice@fabrikam.com");
    let rcpts: Vec<_> = e.recipients.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(rcpts, ["bob@contoso.com"]);
    assert_eq!(e.helo, "client.contoso.com");
    assert_eq!(e.connector, "internet");
    assert_eq!(e.client_ip, Some(V4));
    assert!(e.tls.is_none());
    let (received, body) = split_received(&m);
    assert!(
        received.starts_with(
            "Received: from client.contoso.com ([127.0.0.1])\r\n\tby edge.contoso.com (smtp-edge) with ESMTP\r\n"
        ),
        "{received}"
    );
    assert!(received.contains(&format!("(connector internet) id {id}")));
    assert!(received.contains("for <bob@contoso.com>;"), "{received}");
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("Subject: swaks plain\r\n"), "{body}");
    assert!(body.contains("\r\n\r\nHello from swaks\r\n"), "{body}");

    // smtplib over IPv6, two recipients, lines that need dot-stuffing.
    let port = edge.port.to_string();
    let out = python(SMTPLIB_SEND, &["::1", &port]);
    assert_eq!(out["refused"], serde_json::json!({}));
    assert_eq!(out["code"], 250, "{out}");
    let reply = out["text"].as_str().expect("text");
    let id = queued(reply).unwrap_or_else(|| panic!("no queue id in {reply}"));
    let m = edge.message(&id);
    let rcpts: Vec<_> = m
        .envelope
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    assert_eq!(rcpts, ["bob@contoso.com", "carol@contoso.com"]);
    assert_eq!(m.envelope.client_ip, Some(V6));
    assert_eq!(m.envelope.helo, "py.fabrikam.com");
    let (received, body) = split_received(&m);
    assert!(
        received.starts_with("Received: from py.fabrikam.com ([IPv6:::1])"),
        "{received}"
    );
    assert!(!received.contains("\tfor <"), "two recipients: {received}");
    assert_eq!(
        String::from_utf8_lossy(&body),
        out["msg"].as_str().expect("msg"),
        "the message comes back exactly as sent, dot-unstuffed"
    );

    // swaks pipelining (RFC 2920) with three recipients.
    let t = swaks(
        &edge,
        &[
            "--pipeline",
            "--from",
            "alice@fabrikam.com",
            "--to",
            "bob@contoso.com,carol@contoso.com,dave@contoso.com",
            "--body",
            "pipelined",
        ],
    );
    assert!(t.ok, "{}", t.all());
    let id = queued(&t.stdout).unwrap_or_else(|| panic!("{}", t.all()));
    assert_eq!(edge.message(&id).envelope.recipients.len(), 3);
    assert_eq!(edge.incoming().len(), 3);
    assert!(edge.files("tmp").is_empty());
}

// ---------------------------------------------------------------------------
// STARTTLS

#[test]
fn starttls_with_swaks_and_openssl_tls12_tls13_and_old_versions_refused() {
    let edge = start_edge("", INTERNET);

    let t = swaks(
        &edge,
        &[
            "--tls",
            "--from",
            "alice@fabrikam.com",
            "--to",
            "bob@contoso.com",
            "--body",
            "over TLS",
        ],
    );
    assert!(t.ok, "{}", t.all());
    assert!(
        t.stdout.contains("TLS started with cipher TLSv1.3"),
        "{}",
        t.stdout
    );
    // After STARTTLS, STARTTLS is no longer offered.
    assert!(t.stdout.contains("<-  250 STARTTLS"), "{}", t.stdout);
    assert!(!t.stdout.contains("<~  250 STARTTLS"), "{}", t.stdout);
    let id = queued(&t.stdout).expect("queue id");
    let m = edge.message(&id);
    let tls = m
        .envelope
        .tls
        .clone()
        .expect("TLS recorded in the envelope");
    assert_eq!(tls.version, "TLSv1.3");
    assert!(tls.cipher.starts_with("TLS13_"), "{tls:?}");
    assert!(tls.client_cert.is_none());
    let (received, _) = split_received(&m);
    assert!(
        received.contains(&format!(
            "with ESMTPS\r\n\t(version=TLSv1.3 cipher={})",
            tls.cipher
        )),
        "{received}"
    );

    let input = "EHLO ossl.fabrikam.com\r\nMAIL FROM:<alice@fabrikam.com>\r\nRCPT TO:<bob@contoso.com>\r\nDATA\r\nSubject: openssl\r\n\r\nvia s_client\r\n.\r\nQUIT\r\n";
    for (ip, flag, version, cipher) in [
        (V4, "-tls1_2", "TLSv1.2", "TLS_ECDHE_"),
        (V4, "-tls1_3", "TLSv1.3", "TLS13_"),
        (V6, "-tls1_3", "TLSv1.3", "TLS13_"),
    ] {
        let addr = edge.host_port(ip);
        let t = run_tool(
            "openssl",
            &[
                "s_client",
                "-starttls",
                "smtp",
                "-connect",
                &addr,
                "-brief",
                "-ign_eof",
                flag,
            ],
            input.as_bytes(),
        );
        assert!(t.ok, "{flag}: {}", t.all());
        assert!(
            t.stderr.contains(&format!("Protocol version: {version}")),
            "{flag}: {}",
            t.stderr
        );
        assert!(t.stdout.contains("221 2.0.0"), "{flag}: {}", t.stdout);
        let id = queued(&t.stdout).unwrap_or_else(|| panic!("{flag}: {}", t.all()));
        let m = edge.message(&id);
        let tls = m.envelope.tls.clone().expect("TLS in the envelope");
        assert_eq!(tls.version, version, "{flag}");
        assert!(tls.cipher.starts_with(cipher), "{flag}: {tls:?}");
        assert_eq!(m.envelope.client_ip, Some(ip));
        let (received, body) = split_received(&m);
        assert!(
            received.contains(&format!("(version={version} cipher={})", tls.cipher)),
            "{received}"
        );
        assert_eq!(body, b"Subject: openssl\r\n\r\nvia s_client\r\n");
    }

    // TLS 1.1 and 1.0: the client offers them (security level 0), the
    // server refuses the handshake with an alert.
    for flag in ["-tls1_1", "-tls1"] {
        let t = run_tool(
            "openssl",
            &[
                "s_client",
                "-starttls",
                "smtp",
                "-connect",
                &edge.host_port(V4),
                "-brief",
                flag,
                "-cipher",
                "DEFAULT@SECLEVEL=0",
            ],
            b"QUIT\r\n",
        );
        assert!(!t.ok, "{flag} must fail: {}", t.all());
        assert!(t.stderr.contains("alert"), "{flag}: {}", t.stderr);
        assert!(
            !t.stderr.contains("Protocol version:"),
            "{flag}: {}",
            t.all()
        );
    }
    assert!(
        edge.log().contains("TLS handshake failed"),
        "{}",
        edge.log()
    );
    assert_eq!(edge.incoming().len(), 4);
}

// ---------------------------------------------------------------------------
// Client certificates

const PY_CERT_CLIENT: &str = r#"
import json, smtplib, ssl, sys
host, port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.load_cert_chain(cert, key)
s = smtplib.SMTP(host, port, local_hostname="relay.contoso.com", timeout=10)
s.starttls(context=ctx)
s.ehlo()
out = {}
code, text = s.mail("app@contoso.com")
out["mail"] = [code, text.decode()]
if code == 250:
    s.rcpt("bob@contoso.com")
    code, text = s.data(b"Subject: chain\r\n\r\nsent with the intermediate\r\n")
    out["data"] = [code, text.decode()]
s.quit()
print(json.dumps(out))
"#;

#[test]
fn client_certificates_per_connector() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_path_buf();
    let root = ca("Contoso Root CA", None);
    let issuing = ca("Contoso Issuing CA", Some(&root));
    let foreign_ca = ca("Fabrikam CA", None);
    let ca_file = d.join("ca.pem");
    std::fs::write(&ca_file, &root.pem).expect("ca.pem");
    let good = leaf(&d, "good", "mail.contoso.com", Some(&root), false, &[]);
    let apex = leaf(&d, "apex", "contoso.com", Some(&root), false, &[]);
    let wrong = leaf(&d, "wrong", "mail.fabrikam.com", Some(&root), false, &[]);
    let untrusted = leaf(
        &d,
        "untrusted",
        "mail.contoso.com",
        Some(&foreign_ca),
        false,
        &[],
    );
    let expired = leaf(&d, "expired", "mail.contoso.com", Some(&root), true, &[]);
    let leaf_only = leaf(
        &d,
        "leaf-only",
        "mail.contoso.com",
        Some(&issuing),
        false,
        &[],
    );
    let with_chain = leaf(
        &d,
        "with-chain",
        "relay.contoso.com",
        Some(&issuing),
        false,
        &[&issuing],
    );
    let connectors = format!(
        r#"[[inbound_connectors]]
name = "partner"
require_tls = true
client_cert_names = ["*.contoso.com"]
client_cert_trust = "{}"
"#,
        ca_file.display()
    );
    let edge = start_edge_in(dir, "", &connectors);

    let mail = |cert: Option<&(PathBuf, PathBuf)>, tls: bool| -> (String, Tool) {
        let mut args = vec![
            "--from".to_string(),
            "app@contoso.com".into(),
            "--to".into(),
            "bob@contoso.com".into(),
            "--body".into(),
            "certificate test".into(),
        ];
        if tls {
            args.push("--tls".into());
        }
        if let Some((c, k)) = cert {
            args.extend([
                "--tls-cert".into(),
                c.display().to_string(),
                "--tls-key".into(),
                k.display().to_string(),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let t = swaks(&edge, &args);
        let reply = swaks_reply(&t.stdout, "MAIL FROM")
            .unwrap_or_else(|| panic!("no reply to MAIL FROM:\n{}", t.all()));
        (reply, t)
    };

    for (what, cert) in [("mail.contoso.com", &good), ("contoso.com itself", &apex)] {
        let (reply, t) = mail(Some(cert), true);
        assert!(reply.starts_with("250 "), "{what}: {reply}\n{}", t.all());
        assert!(t.ok, "{what}: {}", t.all());
        let id = queued(&t.stdout).expect("queue id");
        let m = edge.message(&id);
        let tls = m.envelope.tls.clone().expect("TLS");
        let subject = tls.client_cert.expect("client certificate recorded");
        assert!(subject.contains("contoso.com"), "{subject}");
        let (received, _) = split_received(&m);
        assert!(
            received.contains(&format!("client-certificate=\"{subject}\"")),
            "{received}"
        );
        assert!(received.contains("(connector partner)"), "{received}");
    }

    for (what, cert, why) in [
        ("wrong name", &wrong, "does not match"),
        ("untrusted CA", &untrusted, "unknown issuer"),
        ("expired", &expired, "expired"),
        ("intermediate missing", &leaf_only, "unknown issuer"),
    ] {
        let (reply, t) = mail(Some(cert), true);
        assert!(reply.starts_with("550 5.7.1 "), "{what}: {reply}");
        assert!(reply.contains(why), "{what}: {reply}");
        assert!(!t.ok, "{what}");
    }
    let (reply, _) = mail(None, true);
    assert!(
        reply.starts_with("550 5.7.1 A client certificate is required"),
        "{reply}"
    );
    let (reply, _) = mail(Some(&good), false);
    assert!(reply.starts_with("530 5.7.0 "), "no STARTTLS: {reply}");

    // A leaf of the issuing CA sent with its intermediate: accepted.
    let port = edge.port.to_string();
    let (c, k) = &with_chain;
    let out = python(
        PY_CERT_CLIENT,
        &[
            "127.0.0.1",
            &port,
            c.to_str().expect("path"),
            k.to_str().expect("path"),
        ],
    );
    assert_eq!(out["mail"][0], 250, "{out}");
    assert_eq!(out["data"][0], 250, "{out}");
    let id = queued(out["data"][1].as_str().expect("text")).expect("queue id");
    assert!(
        text(&edge.message(&id)).contains("CN=relay.contoso.com"),
        "{}",
        text(&edge.message(&id))
    );

    // Plain MAIL on the raw socket: 530 before STARTTLS.
    let mut c = edge.ehlo(V4);
    let a = c.cmd("MAIL FROM:<app@contoso.com>");
    assert!(a.is(530, "5.7.0"), "{a:?}");
    assert_eq!(edge.incoming().len(), 3, "{:?}", edge.incoming());
}

// ---------------------------------------------------------------------------
// Connector selection by source

#[test]
fn connectors_are_chosen_by_source_address() {
    let onprem = r#"[[inbound_connectors]]
name = "on-prem"
sources = ["127.0.0.1/32"]
sender_domains = ["accepted"]
relay = true
"#;
    let edge = start_edge("", &format!("{onprem}\n{INTERNET}"));

    // 127.0.0.1: on-prem, relay allowed, own sender domains only.
    let mut c = edge.ehlo(V4);
    let a = c.cmd("MAIL FROM:<someone@fabrikam.com>");
    assert!(a.is(550, "5.7.1"), "foreign sender via on-prem: {a:?}");
    let a = c.transaction(
        "app@contoso.com",
        &["partner@fabrikam.com", "bob@contoso.com"],
        "Subject: relayed\r\n\r\nto a partner\r\n",
    );
    let m = edge.message(&a.queue_id());
    assert_eq!(m.envelope.connector, "on-prem");
    assert_eq!(m.envelope.recipients[0].address, "partner@fabrikam.com");
    assert!(text(&m).contains("(connector on-prem)"));

    // ::1 and 127.0.0.2: the default connector, no relay.
    for src in [V6, "127.0.0.2".parse().expect("ip")] {
        let dst = if src.is_ipv6() { V6 } else { V4 };
        let mut c = Client::connect(edge.addr(dst), Some(src)).expect("connect");
        assert_eq!(c.answer().code, 220);
        assert_eq!(c.cmd("EHLO outside.fabrikam.com").code, 250);
        assert!(c.cmd("MAIL FROM:<someone@fabrikam.com>").is(250, "2.1.0"));
        let a = c.cmd("RCPT TO:<victim@fabrikam.com>");
        assert!(a.is(550, "5.7.1"), "{src}: relay must be denied: {a:?}");
        assert!(c.cmd("RCPT TO:<bob@contoso.com>").is(250, "2.1.5"));
        assert_eq!(c.cmd("DATA").code, 354);
        c.send(b"Subject: inbound\r\n\r\nhi\r\n.\r\n");
        let m = edge.message(&c.answer().queue_id());
        assert_eq!(m.envelope.connector, "internet", "{src}");
        assert_eq!(m.envelope.client_ip, Some(src));
        let rcpts: Vec<_> = m.envelope.recipients.iter().map(|r| &r.address).collect();
        assert_eq!(rcpts, ["bob@contoso.com"]);
    }
    assert_eq!(edge.incoming().len(), 3);

    // Without a default connector, other sources are refused at the banner.
    let only = start_edge("", onprem);
    for src in [V6, "127.0.0.2".parse().expect("ip")] {
        let dst = if src.is_ipv6() { V6 } else { V4 };
        let mut c = Client::connect(only.addr(dst), Some(src)).expect("connect");
        let a = c.answer();
        assert!(a.is(554, "5.7.1"), "{src}: {a:?}");
        assert!(c.closed(), "{src}: connection must be closed after 554");
    }
    only.greeted(V4);
    assert!(only.incoming().is_empty());
}

// ---------------------------------------------------------------------------
// Limits

fn received_lines(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "Received: from h{i}.example by h{}.example; Mon, 1 Jan 2024 00:00:00 +0000\r\n",
                i + 1
            )
        })
        .collect()
}

#[test]
fn message_limits_size_recipients_line_length_and_loops() {
    let edge = start_edge("max_message_size = 4096\nmax_recipients = 3", INTERNET);
    let mut c = edge.greeted(V4);
    let a = c.cmd("EHLO client.fabrikam.com");
    assert!(a.lines.iter().any(|l| l == "SIZE 4096"), "{a:?}");

    let a = c.cmd("MAIL FROM:<alice@fabrikam.com> SIZE=5000");
    assert!(a.is(552, "5.3.4"), "declared SIZE over the limit: {a:?}");

    // Too many recipients, then a message over the limit.
    assert!(
        c.cmd("MAIL FROM:<alice@fabrikam.com> SIZE=1000")
            .is(250, "2.1.0")
    );
    for r in ["a", "b", "c"] {
        assert!(
            c.cmd(&format!("RCPT TO:<{r}@contoso.com>"))
                .is(250, "2.1.5")
        );
    }
    let a = c.cmd("RCPT TO:<d@contoso.com>");
    assert!(a.is(452, "4.5.3"), "4th recipient: {a:?}");
    assert_eq!(c.cmd("DATA").code, 354);
    let line = format!("{}\r\n", "x".repeat(98));
    c.send(format!("Subject: big\r\n\r\n{}.\r\n", line.repeat(60)).as_bytes());
    let a = c.answer();
    assert!(a.is(552, "5.3.4"), "message over max_message_size: {a:?}");
    assert!(edge.incoming().is_empty());

    // The session is still in step: a small message with 3 of 4 recipients.
    assert!(c.cmd("MAIL FROM:<alice@fabrikam.com>").is(250, "2.1.0"));
    for r in ["a", "b", "c", "d"] {
        let a = c.cmd(&format!("RCPT TO:<{r}@contoso.com>"));
        assert_eq!(a.code, if r == "d" { 452 } else { 250 }, "{a:?}");
    }
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(b"Subject: small\r\n\r\nok\r\n.\r\n");
    let m = edge.message(&c.answer().queue_id());
    assert_eq!(m.envelope.recipients.len(), 3);

    // Command lines: 512 octets with CRLF pass, longer ones get 500.
    let a = c.cmd(&format!("NOOP {}", "x".repeat(505)));
    assert!(a.is(250, "2.0.0"), "512-octet line: {a:?}");
    let a = c.cmd(&format!("NOOP {}", "x".repeat(600)));
    assert!(a.is(500, "5.5.2"), "long line: {a:?}");
    assert!(c.cmd("NOOP").is(250, "2.0.0"), "still in step");

    // Mail loops: 51 Received fields are refused, 50 pass.
    for (n, code) in [(51, 554), (50, 250)] {
        assert!(c.cmd("MAIL FROM:<alice@fabrikam.com>").is(250, "2.1.0"));
        assert!(c.cmd("RCPT TO:<bob@contoso.com>").is(250, "2.1.5"));
        assert_eq!(c.cmd("DATA").code, 354);
        c.send(
            format!(
                "{}Subject: loop {n}\r\n\r\nround and round\r\n.\r\n",
                received_lines(n)
            )
            .as_bytes(),
        );
        let a = c.answer();
        assert_eq!(a.code, code, "{n} Received fields: {a:?}");
        if code == 554 {
            assert!(a.is(554, "5.4.14"), "{a:?}");
        }
    }
    assert!(c.cmd("QUIT").is(221, "2.0.0"));
    assert_eq!(edge.incoming().len(), 2);
}

#[test]
fn connection_limits_error_limit_and_command_timeout() {
    let edge = start_edge(
        "max_connections = 3\nmax_connections_per_source = 2\nmax_errors = 3\ntimeouts = { command = 2 }",
        INTERNET,
    );
    // Let the readiness probe's connection slot go.
    std::thread::sleep(Duration::from_millis(300));

    let a = edge.greeted(V4);
    let b = edge.greeted(V4);
    let mut third = edge.connect(V4);
    let r = third.answer();
    assert!(
        r.is(421, "4.7.0"),
        "third connection from one source: {r:?}"
    );
    assert!(third.closed());
    // Another source is not affected...
    let mut v6 = edge.greeted(V6);
    assert!(v6.cmd("NOOP").is(250, "2.0.0"));
    // ...until the total is reached.
    let mut fourth =
        Client::connect(edge.addr(V4), Some("127.0.0.2".parse().expect("ip"))).expect("connect");
    let r = fourth.answer();
    assert!(r.is(421, "4.7.0"), "over max_connections: {r:?}");
    assert!(fourth.closed());
    drop(v6);
    // A slot comes back when a connection ends.
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut c = edge.connect(V4);
        let r = c.answer();
        if r.code == 220 {
            break;
        }
        assert!(Instant::now() < deadline, "slot not released: {r:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(a);

    // Protocol errors: the third closes the connection.
    let mut c = edge.ehlo(V6);
    assert!(c.cmd("FOO").is(500, "5.5.1"));
    assert!(c.cmd("BAR baz").is(500, "5.5.1"));
    let r = c.cmd("QUUX");
    assert!(r.is(421, "4.7.0"), "{r:?}");
    assert!(c.closed());

    // An idle client (here mid-transaction) gets 421 4.4.2 and is dropped.
    let mut c = edge.ehlo(V6);
    assert!(c.cmd("MAIL FROM:<alice@fabrikam.com>").is(250, "2.1.0"));
    let t0 = Instant::now();
    let r = c.answer();
    let waited = t0.elapsed();
    assert!(r.is(421, "4.4.2"), "{r:?}");
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(8),
        "timeout after {waited:?}"
    );
    assert!(c.closed());
    assert!(edge.incoming().is_empty());
}

// ---------------------------------------------------------------------------
// SMTP smuggling

const SMUGGLING: &[&[u8]] = &[
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\r",
    b"\r.\n",
    b"\n.\r",
    b"\r.\r\n",
    b"\r\n.\n",
    b"\r\n.\r",
    b"\r\n\x00.\r\n",
    b"\r\n.\r\r\n",
];

/// One transaction whose data holds `variant` then a whole second
/// transaction, then QUIT; the replies after the 354.
fn smuggle(edge: &Edge, variant: &[u8]) -> Vec<Answer> {
    let mut c = edge.ehlo(V4);
    c.send(b"MAIL FROM:<alice@fabrikam.com>\r\nRCPT TO:<bob@contoso.com>\r\nDATA\r\n");
    assert_eq!(codes(&c.answers(3)), [250, 250, 354]);
    let mut data = b"Subject: a\r\n\r\nhello".to_vec();
    data.extend_from_slice(variant);
    data.extend_from_slice(
        b"MAIL FROM:<evil@fabrikam.com>\r\nRCPT TO:<victim@contoso.com>\r\nDATA\r\nsmuggled\r\n.\r\nQUIT\r\n",
    );
    c.send(&data);
    c.rest()
}

fn escaped(b: &[u8]) -> String {
    b.escape_ascii().to_string()
}

#[test]
fn smtp_smuggling_is_refused_by_default() {
    let edge = start_edge("", INTERNET);
    for v in SMUGGLING {
        let answers = smuggle(&edge, v);
        let status = if v.contains(&0) { "5.6.0" } else { "5.5.2" };
        assert_eq!(codes(&answers), [554, 221], "{}: {answers:?}", escaped(v));
        assert!(answers[0].is(554, status), "{}: {answers:?}", escaped(v));
        assert!(edge.incoming().is_empty(), "{}", escaped(v));
    }

    // A bare LF ends no command: 500, and the command has no effect.
    let mut c = edge.ehlo(V4);
    assert!(c.cmd("MAIL FROM:<alice@fabrikam.com>").is(250, "2.1.0"));
    c.send(b"RCPT TO:<bob@contoso.com>\n");
    assert!(c.answer().is(500, "5.5.2"));
    let a = c.cmd("DATA");
    assert!(a.is(554, "5.5.1"), "the RCPT did not count: {a:?}");
    c.send(b"QUIT\n");
    assert!(c.answer().is(500, "5.5.2"));
    assert!(c.cmd("NOOP").is(250, "2.0.0"), "QUIT with LF did not quit");
    assert!(c.cmd("QUIT").is(221, "2.0.0"));
    assert!(edge.incoming().is_empty());
}

#[test]
fn smtp_smuggling_is_content_when_normalizing() {
    let edge = start_edge("bare_line_endings = \"normalize\"", INTERNET);
    let mut expected = 0;
    for v in SMUGGLING {
        let answers = smuggle(&edge, v);
        if v.contains(&0) {
            assert_eq!(codes(&answers), [554, 221], "{}: {answers:?}", escaped(v));
            assert!(answers[0].is(554, "5.6.0"), "{answers:?}");
            assert_eq!(edge.incoming().len(), expected);
            continue;
        }
        assert_eq!(codes(&answers), [250, 221], "{}: {answers:?}", escaped(v));
        expected += 1;
        assert_eq!(edge.incoming().len(), expected, "{}", escaped(v));
        let m = edge.message(&answers[0].queue_id());
        let rcpts: Vec<_> = m.envelope.recipients.iter().map(|r| &r.address).collect();
        assert_eq!(rcpts, ["bob@contoso.com"], "{}", escaped(v));
        let t = text(&m);
        assert!(
            t.contains("\r\nMAIL FROM:<evil@fabrikam.com>\r\n"),
            "{}: {t:?}",
            escaped(v)
        );
        assert!(t.contains("\r\nsmuggled\r\n"), "{}: {t:?}", escaped(v));
        // Normalized: every CR is followed by LF and every LF preceded by CR.
        let c = &m.content;
        for (i, &b) in c.iter().enumerate() {
            match b {
                b'\r' => assert_eq!(c.get(i + 1), Some(&b'\n'), "{}: bare CR at {i}", escaped(v)),
                b'\n' => assert_eq!(
                    c[i.saturating_sub(1)],
                    b'\r',
                    "{}: bare LF at {i}",
                    escaped(v)
                ),
                _ => {}
            }
        }
    }
    assert_eq!(expected, SMUGGLING.len() - 1);
}

// ---------------------------------------------------------------------------
// Pipelining

#[test]
fn pipelined_transactions_are_answered_in_order() {
    let edge = start_edge("", INTERNET);
    let mut c = edge.greeted(V4);
    c.send(b"EHLO pipe.fabrikam.com\r\nMAIL FROM:<alice@fabrikam.com>\r\nRCPT TO:<bob@contoso.com>\r\nRCPT TO:<carol@contoso.com>\r\nDATA\r\n");
    let a = c.answers(5);
    assert_eq!(codes(&a), [250, 250, 250, 250, 354], "{a:?}");
    assert!(a[0].lines.iter().any(|l| l == "PIPELINING"), "{a:?}");
    c.send(b"Subject: first\r\n\r\none\r\n.\r\n");
    c.send(b"MAIL FROM:<alice@fabrikam.com>\r\nRCPT TO:<dave@contoso.com>\r\nDATA\r\nSubject: second\r\n\r\n..dotted\r\ntwo\r\n.\r\nQUIT\r\n");
    let a = c.rest();
    assert_eq!(codes(&a), [250, 250, 250, 354, 250, 221], "{a:?}");
    let first = edge.message(&a[0].queue_id());
    let second = edge.message(&a[4].queue_id());
    let rcpts: Vec<_> = first
        .envelope
        .recipients
        .iter()
        .map(|r| &r.address)
        .collect();
    assert_eq!(rcpts, ["bob@contoso.com", "carol@contoso.com"]);
    assert_eq!(split_received(&first).1, b"Subject: first\r\n\r\none\r\n");
    assert_eq!(second.envelope.recipients[0].address, "dave@contoso.com");
    assert_eq!(
        split_received(&second).1,
        b"Subject: second\r\n\r\n.dotted\r\ntwo\r\n"
    );

    // Everything, both messages included, in a single write.
    let mut c = edge.greeted(V6);
    c.send(b"EHLO pipe.fabrikam.com\r\nMAIL FROM:<alice@fabrikam.com>\r\nRCPT TO:<bob@contoso.com>\r\nDATA\r\nSubject: third\r\n\r\nthree\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<erin@contoso.com>\r\nDATA\r\nSubject: fourth\r\n\r\nfour\r\n.\r\nQUIT\r\n");
    let a = c.rest();
    assert_eq!(
        codes(&a),
        [250, 250, 250, 354, 250, 250, 250, 354, 250, 221],
        "{a:?}"
    );
    let third = edge.message(&a[4].queue_id());
    let fourth = edge.message(&a[8].queue_id());
    assert_eq!(split_received(&third).1, b"Subject: third\r\n\r\nthree\r\n");
    assert_eq!(fourth.envelope.mail_from, "");
    assert_eq!(
        split_received(&fourth).1,
        b"Subject: fourth\r\n\r\nfour\r\n"
    );
    assert_eq!(edge.incoming().len(), 4);
}

// ---------------------------------------------------------------------------
// STARTTLS injection, BDAT

const PY_STARTTLS_INJECTION: &str = r#"
import json, socket, ssl, sys
host, port = sys.argv[1], int(sys.argv[2])
raw = socket.create_connection((host, port), timeout=10)
conn = raw
buf = b""
def reply():
    global buf
    lines = []
    while True:
        while b"\r\n" in buf:
            line, buf = buf.split(b"\r\n", 1)
            lines.append(line.decode())
            if len(line) < 4 or line[3:4] == b" ":
                return lines
        data = conn.recv(4096)
        if not data:
            return lines + ["EOF"]
        buf += data
out = {"banner": reply()}
conn.sendall(b"EHLO inject.fabrikam.com\r\n")
out["ehlo"] = reply()
conn.sendall(b"STARTTLS\r\nRSET\r\n")
out["starttls"] = reply()
out["plaintext_after_220"] = buf.decode("latin-1")
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
conn = ctx.wrap_socket(raw, server_hostname="edge.contoso.com")
out["version"] = conn.version()
conn.sendall(b"EHLO inject.fabrikam.com\r\n")
out["first_after_tls"] = reply()
conn.sendall(b"QUIT\r\n")
out["quit"] = reply()
print(json.dumps(out))
"#;

#[test]
fn starttls_injection_is_discarded() {
    let edge = start_edge("", INTERNET);
    let port = edge.port.to_string();
    for host in ["127.0.0.1", "::1"] {
        let out = python(PY_STARTTLS_INJECTION, &[host, &port]);
        assert_eq!(
            out["starttls"],
            serde_json::json!(["220 2.0.0 Ready to start TLS"]),
            "{out}"
        );
        assert_eq!(out["plaintext_after_220"], "", "{out}");
        let first = out["first_after_tls"].as_array().expect("lines");
        assert!(
            first[0]
                .as_str()
                .is_some_and(|l| l.starts_with("250-edge.contoso.com Hello inject.fabrikam.com")),
            "the first reply after the handshake must answer EHLO, not the injected RSET: {out}"
        );
        assert!(!first.iter().any(|l| l == "250 STARTTLS"), "{out}");
        assert_eq!(
            out["quit"],
            serde_json::json!(["221 2.0.0 edge.contoso.com closing connection"]),
            "{out}"
        );
    }
    assert!(edge.incoming().is_empty());
}

#[test]
fn bdat_chunks_make_one_message() {
    let edge = start_edge("", INTERNET);
    let mut c = edge.ehlo(V4);
    assert!(c.cmd("MAIL FROM:<alice@fabrikam.com>").is(250, "2.1.0"));
    assert!(c.cmd("RCPT TO:<bob@contoso.com>").is(250, "2.1.5"));
    // Chunk content that looks like commands and a DATA end stays content.
    let one: &[u8] =
        b"Subject: chunked\r\n\r\nfirst chunk\r\n.\r\nMAIL FROM:<evil@fabrikam.com>\r\n";
    let two: &[u8] = b"RCPT TO:<victim@contoso.com>\r\nsecond chunk\r\n";
    c.send(format!("BDAT {}\r\n", one.len()).as_bytes());
    c.send(one);
    let a = c.answer();
    assert!(
        a.is(250, "2.0.0") && a.text().contains(&format!("{} octets", one.len())),
        "{a:?}"
    );
    c.send(format!("BDAT {} LAST\r\n", two.len()).as_bytes());
    c.send(two);
    let m = edge.message(&c.answer().queue_id());
    assert_eq!(split_received(&m).1, [one, two].concat());
    let rcpts: Vec<_> = m.envelope.recipients.iter().map(|r| &r.address).collect();
    assert_eq!(rcpts, ["bob@contoso.com"]);

    // Pipelined: both chunks and QUIT in one write.
    let mut all = b"MAIL FROM:<alice@fabrikam.com>\r\nRCPT TO:<carol@contoso.com>\r\n".to_vec();
    all.extend_from_slice(format!("BDAT {}\r\n", one.len()).as_bytes());
    all.extend_from_slice(one);
    all.extend_from_slice(format!("BDAT {} LAST\r\n", two.len()).as_bytes());
    all.extend_from_slice(two);
    all.extend_from_slice(b"QUIT\r\n");
    c.send(&all);
    let a = c.rest();
    assert_eq!(codes(&a), [250, 250, 250, 250, 221], "{a:?}");
    let m = edge.message(&a[3].queue_id());
    assert_eq!(split_received(&m).1, [one, two].concat());
    assert_eq!(edge.incoming().len(), 2);
}

const PY_BDAT_ACROSS_STARTTLS: &str = r#"
import json, socket, ssl, sys
host, port = sys.argv[1], int(sys.argv[2])
raw = socket.create_connection((host, port), timeout=10)
conn = raw
buf = b""
def reply():
    global buf
    lines = []
    while True:
        while b"\r\n" in buf:
            line, buf = buf.split(b"\r\n", 1)
            lines.append(line.decode())
            if len(line) < 4 or line[3:4] == b" ":
                return lines
        data = conn.recv(4096)
        if not data:
            return lines + ["EOF"]
        buf += data
def cmd(b):
    conn.sendall(b)
    return reply()[-1]
out = {"banner": reply()[-1]}
out["ehlo"] = cmd(b"EHLO plain.fabrikam.com\r\n")
out["mail"] = cmd(b"MAIL FROM:<mallory@fabrikam.com>\r\n")
out["rcpt"] = cmd(b"RCPT TO:<bob@contoso.com>\r\n")
stale = b"X-Injected: sent in plaintext before STARTTLS\r\n"
out["bdat"] = cmd(b"BDAT %d\r\n" % len(stale) + stale)
out["starttls"] = cmd(b"STARTTLS\r\n")
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
conn = ctx.wrap_socket(raw, server_hostname="edge.contoso.com")
out["ehlo_tls"] = cmd(b"EHLO tls.fabrikam.com\r\n")
out["mail_tls"] = cmd(b"MAIL FROM:<alice@fabrikam.com>\r\n")
out["rcpt_tls"] = cmd(b"RCPT TO:<bob@contoso.com>\r\n")
fresh = b"Subject: fresh\r\n\r\nsent over TLS\r\n"
out["last"] = cmd(b"BDAT %d LAST\r\n" % len(fresh) + fresh)
out["quit"] = cmd(b"QUIT\r\n")
print(json.dumps(out))
"#;

#[test]
fn abandoned_bdat_chunks_never_reach_a_later_message() {
    let edge = start_edge("", INTERNET);
    let stale: &[u8] = b"X-Injected: from an abandoned transaction\r\n";
    let fresh: &[u8] = b"Subject: fresh\r\n\r\nnew transaction\r\n";
    // RSET, EHLO and HELO each end the transaction and its chunks.
    for reset in ["RSET", "EHLO again.fabrikam.com", "HELO again.fabrikam.com"] {
        let mut c = edge.ehlo(V4);
        assert!(c.cmd("MAIL FROM:<mallory@fabrikam.com>").is(250, "2.1.0"));
        assert!(c.cmd("RCPT TO:<bob@contoso.com>").is(250, "2.1.5"));
        c.send(format!("BDAT {}\r\n", stale.len()).as_bytes());
        c.send(stale);
        assert_eq!(c.answer().code, 250);
        assert_eq!(c.cmd(reset).code, 250, "{reset}");
        assert!(c.cmd("MAIL FROM:<alice@fabrikam.com>").is(250, "2.1.0"));
        assert!(c.cmd("RCPT TO:<bob@contoso.com>").is(250, "2.1.5"));
        c.send(format!("BDAT {} LAST\r\n", fresh.len()).as_bytes());
        c.send(fresh);
        let m = edge.message(&c.answer().queue_id());
        assert_eq!(
            String::from_utf8_lossy(&split_received(&m).1),
            String::from_utf8_lossy(fresh),
            "a chunk from before {reset} leaked into the next message"
        );
    }
    // STARTTLS: nothing from the plaintext session survives the handshake.
    let port = edge.port.to_string();
    let out = python(PY_BDAT_ACROSS_STARTTLS, &["127.0.0.1", &port]);
    assert!(
        out["starttls"]
            .as_str()
            .is_some_and(|r| r.starts_with("220 ")),
        "{out}"
    );
    assert_eq!(
        out["quit"], "221 2.0.0 edge.contoso.com closing connection",
        "{out}"
    );
    let last = out["last"].as_str().expect("reply");
    let m = edge.message(&queued(last).unwrap_or_else(|| panic!("{out}")));
    assert_eq!(
        String::from_utf8_lossy(&split_received(&m).1),
        "Subject: fresh\r\n\r\nsent over TLS\r\n",
        "plaintext sent before STARTTLS reached a message sent over TLS"
    );
    assert_eq!(m.envelope.mail_from, "alice@fabrikam.com");
    assert_eq!(edge.incoming().len(), 4);
}

// ---------------------------------------------------------------------------
// Open-relay probes

#[test]
fn open_relay_probes_are_refused() {
    let edge = start_edge("", INTERNET);
    // The forms of nmap's smtp-open-relay and friends.
    let probes = [
        "<victim@fabrikam.com>",
        "<victim%fabrikam.com@contoso.com>",
        "<victim%fabrikam.com@[127.0.0.1]>",
        "<\"victim@fabrikam.com\"@contoso.com>",
        "<\"victim%fabrikam.com\"@contoso.com>",
        "<\"victim@fabrikam.com\">",
        "<fabrikam.com!victim@contoso.com>",
        "<fabrikam.com!victim>",
        "<victim@fabrikam.com@contoso.com>",
        "<victim@fabrikam.com@[127.0.0.1]>",
        "<@contoso.com:victim@fabrikam.com>",
        "<@[127.0.0.1]:victim@fabrikam.com>",
        "<victim@[192.0.2.1]>",
        "<victim@[127.0.0.1]>",
        "<victim@[IPv6:2001:db8::1]>",
        "<victim@sub.contoso.com>",
        "<victim@contoso.com.fabrikam.com>",
    ];
    let senders = [
        "<probe@fabrikam.com>",
        "<>",
        "<antispam@[127.0.0.1]>",
        "<antispam@contoso.com>",
    ];
    for (i, rcpt) in probes.iter().enumerate() {
        let from = senders[i % senders.len()];
        let mut c = edge.ehlo(V4);
        let a = c.cmd(&format!("MAIL FROM:{from}"));
        assert!(a.is(250, "2.1.0"), "MAIL FROM:{from}: {a:?}");
        let a = c.cmd(&format!("RCPT TO:{rcpt}"));
        assert!(
            (500..600).contains(&a.code),
            "RCPT TO:{rcpt} must be refused: {a:?}"
        );
        let a = c.cmd("DATA");
        assert!((500..600).contains(&a.code), "DATA after {rcpt}: {a:?}");
        assert!(c.cmd("QUIT").is(221, "2.0.0"));
    }
    // The same connector takes mail for its own domain.
    let mut c = edge.ehlo(V4);
    assert!(c.cmd("MAIL FROM:<probe@fabrikam.com>").is(250, "2.1.0"));
    assert!(c.cmd("RCPT TO:<bob@contoso.com>").is(250, "2.1.5"));
    assert!(c.cmd("RSET").is(250, "2.0.0"));
    assert!(edge.incoming().is_empty(), "{:?}", edge.incoming());
    assert!(edge.log().contains("relay denied"), "{}", edge.log());
}

// ---------------------------------------------------------------------------
// Exchange-internal headers

#[test]
fn exchange_internal_headers_pass_only_trusted_connectors() {
    let trusted = r#"[[inbound_connectors]]
name = "exchange-online"
sources = ["127.0.0.1/32"]
trusted_headers = true
"#;
    let edge = start_edge("", &format!("{trusted}\n{INTERNET}"));
    let msg = "X-MS-Exchange-Organization-AuthAs: Internal\r\n\
               X-MS-Exchange-Organization-AuthSource: mail.contoso.com\r\n\
               \tfolded onto a second line\r\n\
               x-ms-exchange-crosstenant-id: 00000000-0000-0000-0000-000000000000\r\n\
               X-MS-Exchange-Forest-RulesExecuted : obsolete syntax\r\n\
               X-MS-Exchange-Organization-SCL\t: -1\r\n\
               X-MS-Has-Attach: yes\r\n\
               Subject: headers\r\n\
               \r\n\
               X-MS-Exchange-Organization-AuthAs: body text stays\r\n";
    let mut outside = edge.ehlo(V6);
    let a = outside.transaction("alice@fabrikam.com", &["bob@contoso.com"], msg);
    let m = edge.message(&a.queue_id());
    assert_eq!(m.envelope.connector, "internet");
    assert_eq!(
        String::from_utf8_lossy(&split_received(&m).1),
        "X-MS-Has-Attach: yes\r\nSubject: headers\r\n\r\nX-MS-Exchange-Organization-AuthAs: body text stays\r\n",
        "Exchange-internal fields from an untrusted connector must go"
    );
    let mut inside = edge.ehlo(V4);
    let a = inside.transaction("alice@fabrikam.com", &["bob@contoso.com"], msg);
    let m = edge.message(&a.queue_id());
    assert_eq!(m.envelope.connector, "exchange-online");
    assert_eq!(String::from_utf8_lossy(&split_received(&m).1), msg);
}

// ---------------------------------------------------------------------------
// Load from Postfix's smtp-source

#[test]
fn smtp_source_load_is_all_spooled() {
    let edge = start_edge("", INTERNET);
    let target = edge.host_port(V4);
    for (extra, msgs) in [(None, 40), (Some("-d"), 20)] {
        let m = msgs.to_string();
        let mut args = vec![
            "-s",
            "4",
            "-m",
            &m,
            "-l",
            "2048",
            "-f",
            "load@fabrikam.com",
            "-t",
            "bob@contoso.com",
            "-M",
            "source.fabrikam.com",
        ];
        args.extend(extra);
        args.push(&target);
        let t = run_tool("smtp-source", &args, b"");
        assert!(t.ok, "smtp-source {args:?}: {}", t.all());
    }
    let ids = edge.incoming();
    assert_eq!(ids.len(), 60, "{}", edge.log());
    for id in &ids {
        let m = edge.message(id);
        assert_eq!(m.envelope.mail_from, "load@fabrikam.com");
        assert_eq!(m.envelope.helo, "source.fabrikam.com");
        let (received, body) = split_received(&m);
        assert!(received.contains(" with SMTP\r\n"), "HELO: {received}");
        assert!(body.len() >= 2048, "{id}: {} octets", body.len());
    }
    assert!(edge.files("tmp").is_empty());
}

// ---------------------------------------------------------------------------
// Crash

const SENDERS: usize = 4;
const KILL_AFTER: usize = 100;

fn crash_body(tag: usize, n: usize) -> Vec<u8> {
    let mut b = format!("Subject: crash {tag}-{n}\r\nMessage-Id: <{tag}.{n}@fabrikam.com>\r\n\r\n")
        .into_bytes();
    for line in 0..40 {
        let fill = char::from(b'a' + ((tag * 7 + n + line) % 26) as u8);
        b.extend_from_slice(
            format!(
                "{tag:02}-{n:04}-{line:02} {}\r\n",
                fill.to_string().repeat(88)
            )
            .as_bytes(),
        );
    }
    b
}

/// Sends messages until the connection fails or `stop`; records every
/// acknowledged (queue id, message).
fn crash_sender(
    addr: SocketAddr,
    tag: usize,
    stop: &AtomicBool,
    acked: &AtomicUsize,
    log: &Mutex<Vec<(String, Vec<u8>)>>,
) {
    let Ok(mut c) = Client::connect(addr, None) else {
        return;
    };
    let ok = |c: &mut Client, want: u16| matches!(c.try_answer(), Ok(Some(a)) if a.code == want);
    if !ok(&mut c, 220) || c.try_send(b"EHLO crash.fabrikam.com\r\n").is_err() || !ok(&mut c, 250) {
        return;
    }
    for n in 0..500 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let body = crash_body(tag, n);
        if c.try_send(b"MAIL FROM:<load@fabrikam.com>\r\nRCPT TO:<bob@contoso.com>\r\nDATA\r\n")
            .is_err()
            || !ok(&mut c, 250)
            || !ok(&mut c, 250)
            || !ok(&mut c, 354)
        {
            return;
        }
        if c.try_send(&body)
            .and_then(|()| c.try_send(b".\r\n"))
            .is_err()
        {
            return;
        }
        match c.try_answer() {
            Ok(Some(a)) if a.code == 250 => {
                let Some(id) = queued(&a.text()) else { return };
                log.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((id, body));
                acked.fetch_add(1, Ordering::Relaxed);
            }
            _ => return,
        }
    }
}

#[test]
fn acknowledged_messages_survive_kill_9() {
    let mut edge = start_edge("", INTERNET);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let log = Arc::new(Mutex::new(Vec::new()));
    let senders: Vec<_> = (0..SENDERS)
        .map(|tag| {
            let (stop, acked, log) = (stop.clone(), acked.clone(), log.clone());
            let addr = edge.addr(if tag % 2 == 0 { V4 } else { V6 });
            std::thread::spawn(move || crash_sender(addr, tag, &stop, &acked, &log))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::Relaxed) < KILL_AFTER && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    let at_kill = acked.load(Ordering::Relaxed);
    edge.daemon().kill9();
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().expect("sender thread");
    }
    assert!(
        at_kill >= KILL_AFTER,
        "only {at_kill} acknowledged in 30 s:\n{}",
        edge.log()
    );
    let sent = std::mem::take(&mut *log.lock().unwrap_or_else(|p| p.into_inner()));
    eprintln!(
        "crash test: {} acknowledged ({at_kill} when killed), {} senders",
        sent.len(),
        SENDERS
    );
    assert!(sent.len() < SENDERS * 500, "the daemon was killed mid-run");

    // Leftovers of unacknowledged writes go at the next start.
    std::fs::write(
        edge.spool_dir("tmp").join("partial-from-crash"),
        b"half a message",
    )
    .expect("plant a partial file");
    edge.restart();
    assert!(
        edge.files("tmp").is_empty(),
        "tmp/ after restart: {:?}",
        edge.files("tmp")
    );
    let incoming = edge.incoming();
    assert!(
        incoming.len() >= sent.len(),
        "{} on disk, {} acknowledged",
        incoming.len(),
        sent.len()
    );
    for (id, body) in &sent {
        assert!(incoming.contains(id), "acknowledged {id} lost");
        let m = edge.message(id);
        assert_eq!(m.envelope.id, *id);
        assert_eq!(m.envelope.mail_from, "load@fabrikam.com");
        let (received, content) = split_received(&m);
        assert!(received.contains(&format!(" id {id}")), "{received}");
        assert_eq!(&content, body, "{id}: content differs");
    }
    // Every file in incoming/ is complete and readable.
    for id in &incoming {
        let m = edge.message(id);
        assert!(m.content.ends_with(b"\r\n"), "{id}");
    }
    // And the restarted daemon takes mail.
    let mut c = edge.ehlo(V4);
    let a = c.transaction(
        "alice@fabrikam.com",
        &["bob@contoso.com"],
        "Subject: after\r\n\r\nrestart\r\n",
    );
    edge.message(&a.queue_id());
}
