//! Device submission with SMTP AUTH against a running smtp-edge: device
//! accounts made with the CLI, real clients (swaks, Python's smtplib and a
//! raw socket) on the STARTTLS and implicit-TLS listeners, and the relayed
//! mail arriving at a Postfix that requires the organisation's client
//! certificate, as Microsoft 365's certificate-based connector does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use smtp_edge_tests::certs::{Ca, Leaf};
use smtp_edge_tests::edge::{Edge, Setup, V4, V6, outbound};
use smtp_edge_tests::ports::free_port_dual;
use smtp_edge_tests::postfix::{self, MailServer, Postfix};
use smtp_edge_tests::smtp::Client;
use smtp_edge_tests::tools::{self, Send, smtp_send, swaks_reply};

const SENDER: &str = "scanner@contoso.com";
const RCPT: &str = "carol@fabrikam.example";

struct Lab {
    edge: Edge,
    starttls: u16,
    implicit: u16,
    m365_dir: PathBuf,
    _m365: Postfix,
}

fn message(subject: &str) -> String {
    format!("From: <{SENDER}>\r\nTo: <{RCPT}>\r\nSubject: {subject}\r\n\r\nscanned\r\n")
}

impl Lab {
    /// An edge with submission on 587-like and 465-like ports (loopback;
    /// ::1 is a legacy source allowed AUTH without TLS), relaying to a
    /// Postfix that requires the client certificate `to-m365` presents.
    fn start(guard: &str) -> Lab {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().to_path_buf();
        let ca = Ca::new("Submission test CA");
        let ca_file = ca.write(&d.join("ca.pem"));
        // Postfix 3.7 requires the clientAuth EKU of a client certificate.
        let client =
            Leaf::with_client_auth(&["edge.contoso.com", "contoso.com"], &ca).write(&d, "client");
        let m365_cert =
            Leaf::new(&["mail.protection.outlook.test"], Some(&ca), false).write(&d, "m365");
        let m365_dir = d.join("m365");
        let port = smtp_edge_tests::ports::free_port();
        let m365 = postfix::mail_server(
            &m365_dir,
            SocketAddr::from(([127, 0, 0, 1], port)),
            &MailServer {
                hostname: "mail.protection.outlook.test",
                domains: &["fabrikam.example", "partner.example"],
                cert: (&m365_cert.0, &m365_cert.1),
                client_ca: &ca_file,
                require_client_cert: true,
                networks: "192.0.2.0/24",
            },
        )
        .expect("the Microsoft 365 stand-in");
        let (starttls, implicit) = (free_port_dual(), free_port_dual());
        let out = outbound(
            "to-m365",
            &["*"],
            &[format!("127.0.0.1:{port}")],
            &format!(
                "tls = \"domain-validation\"\ntls_domain = \"mail.protection.outlook.test\"\ntls_trust = \"{}\"\nclient_certificate = \"{}\"\nclient_key = \"{}\"\n",
                ca_file.display(),
                client.0.display(),
                client.1.display()
            ),
        );
        // Partner mail goes elsewhere (nowhere: port 9 refuses), unless a
        // device's own connector says otherwise.
        let out = format!(
            "{out}\n{}",
            outbound(
                "to-partner",
                &["partner.example"],
                &["127.0.0.1:9".to_string()],
                ""
            )
        );
        let tail = format!(
            "[submission]\nlisten = [\"127.0.0.1:{starttls}\", \"[::1]:{starttls}\"]\nlisten_tls = [\"127.0.0.1:{implicit}\"]\nplaintext_auth_sources = [\"::1\"]\n{guard}\n"
        );
        let edge = Edge::start_in(
            dir,
            Setup {
                outbound: &out,
                queue: "retry_schedule = [1, 2, 5]",
                tail: &tail,
                ..Setup::default()
            },
        );
        Lab {
            edge,
            starttls,
            implicit,
            m365_dir,
            _m365: m365,
        }
    }

    /// `smtp-edge device ARGS --json`.
    fn device(&self, args: &[&str]) -> Value {
        self.edge
            .cli(&[&["device"], args].concat())
            .unwrap_or_else(|e| panic!("device {args:?}: {e}"))
    }

    /// A new device: its password.
    fn add(&self, args: &[&str]) -> String {
        let v = self.device(&[&["add"], args].concat());
        v["password"].as_str().expect("password").to_string()
    }

    fn py(
        &self,
        ip: std::net::IpAddr,
        port: u16,
        tls: Transport,
        login: Option<(&str, &str)>,
        from: &str,
    ) -> Value {
        self.submit(ip, port, tls, login, from, RCPT, &message("py"))
    }

    /// One message to `rcpt` with smtplib, logged in as `login`.
    #[allow(clippy::too_many_arguments)]
    fn submit(
        &self,
        ip: std::net::IpAddr,
        port: u16,
        tls: Transport,
        login: Option<(&str, &str)>,
        from: &str,
        rcpt: &str,
        message: &str,
    ) -> Value {
        smtp_send(&Send {
            addr: SocketAddr::new(ip, port),
            source: None,
            starttls: matches!(tls, Transport::StartTls).then_some(None),
            ehlo: "scanner.contoso.com",
            from,
            rcpts: &[rcpt],
            message: message.as_bytes(),
            timeout: 20,
            login,
            implicit_tls: matches!(tls, Transport::Implicit),
        })
    }
}

#[derive(Clone, Copy)]
enum Transport {
    Plain,
    StartTls,
    Implicit,
}

fn code(v: &Value, step: &str) -> u64 {
    let s = &v[step];
    let first = if step == "rcpt" { &s[0][0] } else { &s[0] };
    first
        .as_u64()
        .unwrap_or_else(|| panic!("no {step} reply: {v}"))
}

fn swaks(port: u16, args: &[&str]) -> tools::Tool {
    tools::swaks(port, args)
}

#[test]
fn devices_authenticate_and_their_mail_is_relayed_with_the_certificate() {
    // `header_from = "log"`: a From field not the device's is relayed and
    // logged (the enforced default is `the_header_from_must_be_the_devices`).
    let lab = Lab::start("header_from = \"log\"");
    let pw = lab.add(&["scanner", "--sender", "contoso.com"]);
    assert!(
        !std::fs::read_to_string(lab.edge.dir().join("state/devices.json"))
            .expect("devices.json")
            .contains(&pw),
        "only a hash is kept"
    );
    // swaks: PLAIN over STARTTLS, LOGIN over implicit TLS.
    for (port, extra, mech) in [
        (lab.starttls, "--tls", "PLAIN"),
        (lab.implicit, "--tlsc", "LOGIN"),
    ] {
        let t = swaks(
            port,
            &[
                extra,
                "--auth",
                mech,
                "--auth-user",
                "scanner",
                "--auth-password",
                &pw,
                "--from",
                SENDER,
                "--to",
                RCPT,
                "--header",
                &format!("Subject: swaks {mech}"),
            ],
        );
        assert!(t.ok, "{mech}: {}", t.all());
        assert!(
            t.stdout.contains("<~  235 2.7.0 Authentication successful"),
            "{mech}: {}",
            t.all()
        );
        let first = swaks_reply(&t.stdout, "AUTH").unwrap_or_default();
        let want = if mech == "LOGIN" { "334 " } else { "235 " };
        assert!(first.starts_with(want), "{mech}: {first}");
    }
    // Python's smtplib login() over STARTTLS.
    let v = lab.py(
        V4,
        lab.starttls,
        Transport::StartTls,
        Some(("scanner", &pw)),
        SENDER,
    );
    assert_eq!(code(&v, "auth"), 235, "{v}");
    assert_eq!(code(&v, "data"), 250, "{v}");
    // A From field that is not the device's: with `header_from = "log"`
    // relayed, and logged.
    let forged =
        format!("From: <ceo@fabrikam.example>\r\nTo: <{RCPT}>\r\nSubject: from\r\n\r\nx\r\n");
    let v = lab.submit(
        V4,
        lab.implicit,
        Transport::Implicit,
        Some(("scanner", &pw)),
        SENDER,
        RCPT,
        &forged,
    );
    assert_eq!(code(&v, "data"), 250, "{v}");
    // All four reach the next hop that requires the client certificate.
    let mail = postfix::wait_mailbox(&lab.m365_dir, 4, 30);
    assert_eq!(mail.len(), 4, "{}", lab.edge.log());
    assert!(
        lab.edge
            .log()
            .contains("the From field is not one of the device's senders")
            && lab.edge.log().contains("from_header=ceo@fabrikam.example"),
        "{}",
        lab.edge.log()
    );
    for m in &mail {
        let unfolded = m.replace("\n\t", " ").replace("\n ", " ");
        assert!(unfolded.contains("with ESMTPSA"), "{m}");
        assert!(unfolded.contains("(authenticated as scanner)"), "{m}");
        assert!(unfolded.contains("Client CN \"edge.contoso.com\""), "{m}");
    }
    let log = lab.edge.log();
    assert!(
        log.contains("AUTH succeeded") && log.contains("device=scanner"),
        "{log}"
    );
    assert!(!log.contains(&pw), "a password in the log");
    // A device with its own connector: partner mail, routed to `to-partner`
    // for everyone else, takes `to-m365` for it.
    let err = lab
        .edge
        .cli(&[
            "device",
            "add",
            "bad",
            "--any-sender",
            "--connector",
            "nowhere",
        ])
        .expect_err("an unknown connector");
    assert!(
        err.contains("no outbound connector named `nowhere`"),
        "{err}"
    );
    let err = lab
        .edge
        .cli(&["device", "add", "nosender"])
        .expect_err("senders are required");
    assert!(err.contains("--any-sender"), "{err}");
    let pw2 = lab.add(&["mfp", "--any-sender", "--connector", "to-m365"]);
    let v = lab.submit(
        V4,
        lab.implicit,
        Transport::Implicit,
        Some(("mfp", &pw2)),
        SENDER,
        "dave@partner.example",
        &message("own connector"),
    );
    assert_eq!(code(&v, "data"), 250, "{v}");
    let mail = postfix::wait_mailbox(&lab.m365_dir, 5, 30);
    assert!(
        mail.iter().any(|m| m.contains("dave@partner.example")),
        "{}",
        lab.edge.log()
    );
    // The device list shows no secret; removing it ends its logins.
    let list = lab.device(&["list"]);
    assert_eq!(list[0]["name"], "scanner", "{list}");
    assert_eq!(list[1]["connector"], "to-m365", "{list}");
    assert!(!list.to_string().contains(&pw) && !list.to_string().contains("argon2"));
    lab.device(&["remove", "scanner"]);
    let v = lab.py(
        V4,
        lab.starttls,
        Transport::StartTls,
        Some(("scanner", &pw)),
        SENDER,
    );
    assert_eq!(code(&v, "auth"), 535, "{v}");
}

#[test]
fn auth_is_refused_as_it_should_be() {
    let lab = Lab::start("failure_delay_ms = 0\nmax_failures = 50");
    let pw = lab.add(&["scanner", "--sender", "contoso.com", "--rate", "2"]);
    lab.add(&["app", "--sender", "app@contoso.com"]);

    // Before TLS from an ordinary source: no AUTH offered, 538 if tried.
    let mut c = Client::connect(SocketAddr::new(V4, lab.starttls), None).expect("connect");
    c.answer();
    let ehlo = c.cmd("EHLO scanner.contoso.com");
    assert!(!ehlo.text().contains("AUTH"), "{}", ehlo.text());
    assert!(ehlo.text().contains("STARTTLS"), "{}", ehlo.text());
    assert!(c.cmd("AUTH PLAIN AHNjYW5uZXIAeA==").is(538, "5.7.11"));
    assert!(c.cmd("MAIL FROM:<scanner@contoso.com>").is(530, "5.7.0"));
    // After TLS, without AUTH: 530 at MAIL.
    let v = lab.py(V4, lab.starttls, Transport::StartTls, None, SENDER);
    assert!(
        v["ehlo"]
            .as_str()
            .unwrap_or_default()
            .contains("AUTH PLAIN LOGIN"),
        "{v}"
    );
    assert_eq!(code(&v, "mail"), 530, "{v}");
    // Wrong password, unknown account: the same 535.
    let v = lab.py(
        V4,
        lab.starttls,
        Transport::StartTls,
        Some(("scanner", "wrong")),
        SENDER,
    );
    assert_eq!(code(&v, "auth"), 535, "{v}");
    let v = lab.py(
        V4,
        lab.starttls,
        Transport::StartTls,
        Some(("nobody", "x")),
        SENDER,
    );
    assert_eq!(code(&v, "auth"), 535, "{v}");
    // A sender the device may not use.
    let v = lab.py(
        V4,
        lab.implicit,
        Transport::Implicit,
        Some(("scanner", &pw)),
        "ceo@fabrikam.example",
    );
    assert_eq!(code(&v, "mail"), 550, "{v}");
    assert!(
        v["mail"][1]
            .as_str()
            .unwrap_or_default()
            .starts_with("5.7.1"),
        "{v}"
    );

    // The legacy source (::1) may AUTH in plain text: smtplib, then the raw
    // forms.
    let v = lab.py(
        V6,
        lab.starttls,
        Transport::Plain,
        Some(("scanner", &pw)),
        SENDER,
    );
    assert_eq!(code(&v, "auth"), 235, "{v}");
    assert_eq!(code(&v, "data"), 250, "{v}");
    let mut c = Client::connect(SocketAddr::new(V6, lab.starttls), None).expect("connect");
    c.answer();
    assert!(
        c.cmd("EHLO printer.contoso.com")
            .text()
            .contains("AUTH PLAIN LOGIN")
    );
    assert!(c.cmd("AUTH CRAM-MD5").is(504, "5.5.4"));
    assert!(c.cmd("AUTH PLAIN not!base64").is(501, "5.5.2"));
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    // A long initial response is an AUTH line, not a too-long command.
    let long = b64(&format!("\0scanner\0{}", "x".repeat(600)));
    let a = c.cmd(&format!("AUTH PLAIN {long}"));
    assert!(a.is(535, "5.7.8"), "{a:?}");
    let a = c.cmd("AUTH LOGIN");
    assert_eq!((a.code, a.text()), (334, "VXNlcm5hbWU6".to_string()));
    assert!(c.cmd("*").is(501, "5.7.0"), "cancelled");
    let a = c.cmd("AUTH PLAIN");
    assert_eq!(a.code, 334);
    assert!(c.cmd(&b64(&format!("\0scanner\0{pw}"))).is(235, "2.7.0"));
    assert!(c.cmd("AUTH PLAIN =").is(503, "5.5.1"), "once per session");
    // AUTH=<> on MAIL is understood once AUTH is offered.
    assert!(
        c.cmd("MAIL FROM:<scanner@contoso.com> AUTH=<>")
            .is(250, "2.1.0")
    );
    assert!(c.cmd(&format!("RCPT TO:<{RCPT}>")).is(250, "2.1.5"));
    assert!(c.cmd("RSET").is(250, "2.0.0"));
    // The rate: two messages an hour (smtplib's and this one), the third
    // MAIL waits.
    let a = c.cmd("MAIL FROM:<scanner@contoso.com>");
    assert!(a.is(450, "4.7.1"), "{a:?}");
    // LOGIN with the user name as initial response.
    let mut c = Client::connect(SocketAddr::new(V6, lab.starttls), None).expect("connect");
    c.answer();
    c.cmd("EHLO printer.contoso.com");
    let a = c.cmd(&format!("AUTH LOGIN {}", b64("app")));
    assert_eq!((a.code, a.text()), (334, "UGFzc3dvcmQ6".to_string()));
    assert!(c.cmd(&b64("wrong")).is(535, "5.7.8"));
    // Metrics count what happened.
    let log = lab.edge.log();
    assert!(
        log.contains("AUTH failed") && log.contains("(unknown account)"),
        "{log}"
    );
    assert!(!log.contains("wrong"), "no password in the log:\n{log}");
}

#[test]
fn repeated_failures_lock_the_source_until_the_lockout_passes() {
    let lab = Lab::start("max_failures = 4\nlockout_seconds = 2\nfailure_delay_ms = 10");
    let pw = lab.add(&["scanner", "--any-sender"]);
    // smtplib's login() tries PLAIN, then LOGIN: two failures a call.
    for _ in 0..2 {
        let v = lab.py(
            V4,
            lab.implicit,
            Transport::Implicit,
            Some(("scanner", "guess")),
            SENDER,
        );
        assert_eq!(code(&v, "auth"), 535, "{v}");
    }
    // Locked: even the right password gets 454.
    let v = lab.py(
        V4,
        lab.implicit,
        Transport::Implicit,
        Some(("scanner", &pw)),
        SENDER,
    );
    assert_eq!(code(&v, "auth"), 454, "{v}");
    assert!(lab.edge.log().contains("locked out"), "{}", lab.edge.log());
    std::thread::sleep(Duration::from_millis(2500));
    let v = lab.py(
        V4,
        lab.implicit,
        Transport::Implicit,
        Some(("scanner", &pw)),
        SENDER,
    );
    assert_eq!(code(&v, "auth"), 235, "{v}");
    assert_eq!(code(&v, "data"), 250, "{v}");
}

#[test]
fn submission_settings_are_checked_and_its_ports_are_gated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("c.toml");
    let check = |text: &str| {
        std::fs::write(&f, text).expect("write");
        let out = smtp_edge_tests::cli(None, &["config", "check", f.to_str().expect("path")]);
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let base =
        "[filter]\ninterfaces = [\"eth0\"]\n\n[smtp]\nenabled = true\nlisten = [\"0.0.0.0:25\"]\n";
    let (ok, out) = check(&format!("{base}[submission]\nlisten = [\"0.0.0.0:587\"]\n"));
    assert!(!ok && out.contains("submission needs [smtp.tls]"), "{out}");
    let tls = "[smtp.tls]\ncertificate = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/c.key\"\n";
    let (ok, out) = check(&format!(
        "{base}{tls}[submission]\nlisten = [\"0.0.0.0:587\"]\nlisten_tls = [\"0.0.0.0:465\"]\nplaintext_auth_sources = [\"192.0.2.64/28\"]\n"
    ));
    assert!(ok, "{out}");
    assert!(
        out.contains("ports [25, 465, 587]"),
        "the gate protects them: {out}"
    );
    assert!(
        out.contains("without TLS"),
        "a warning for plain-text AUTH: {out}"
    );
    let (ok, out) = check(&format!(
        "{base}{tls}[submission]\nlisten = [\"0.0.0.0:25\"]\n"
    ));
    assert!(!ok && out.contains("listened on already"), "{out}");
    let (ok, out) = check(&format!("{base}{tls}[submission]\nmax_failures = 0\n"));
    assert!(!ok && out.contains("max_failures"), "{out}");
}

#[test]
fn parallel_guesses_get_no_more_checks_than_the_limit() {
    let lab = Lab::start("max_failures = 5\nlockout_seconds = 60\nfailure_delay_ms = 0");
    lab.add(&["scanner", "--any-sender"]);
    use base64::Engine as _;
    let guess = base64::engine::general_purpose::STANDARD.encode("\0scanner\0guess");
    let port = lab.starttls;
    // 20 connections at once from the legacy source (AUTH without TLS).
    let codes: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|_| {
                let guess = guess.clone();
                s.spawn(move || {
                    let mut c = Client::connect(SocketAddr::new(V6, port), None).expect("connect");
                    c.answer();
                    c.cmd("EHLO printer.contoso.com");
                    c.cmd(&format!("AUTH PLAIN {guess}")).code
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let checked = codes.iter().filter(|&&c| c == 535).count();
    let locked = codes.iter().filter(|&&c| c == 454).count();
    assert_eq!(checked + locked, 20, "{codes:?}");
    assert!(
        checked <= 5,
        "{checked} passwords checked of 20, limit 5: {codes:?}"
    );
}

/// A raw session from the legacy source (::1, AUTH without TLS), logged in
/// as `user`.
fn logged_in(lab: &Lab, user: &str, password: &str) -> Client {
    use base64::Engine as _;
    let mut c = Client::connect(SocketAddr::new(V6, lab.starttls), None).expect("connect");
    c.answer();
    c.cmd("EHLO printer.contoso.com");
    let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    let a = c.cmd(&format!("AUTH PLAIN {plain}"));
    assert!(a.is(235, "2.7.0"), "{a:?}");
    c
}

#[test]
fn the_header_from_must_be_the_devices() {
    let lab = Lab::start("failure_delay_ms = 0");
    let pw = lab.add(&["printer", "--sender", "printer@contoso.com"]);
    let mut c = logged_in(&lab, "printer", &pw);
    let head = format!("To: <{RCPT}>\r\nSubject: send-as\r\n");
    let refused = [
        "From: CEO <ceo@contoso.com>\r\n".to_string(),
        "From: CEO\r\n <ceo@contoso.com>\r\n".to_string(),
        "From:\r\n\t=?utf-8?q?The_CEO?=\r\n <ceo@contoso.com>\r\n".to_string(),
        "From: <printer@contoso.com>\r\nFrom: <ceo@contoso.com>\r\n".to_string(),
        "From: Board: printer@contoso.com, ceo@contoso.com;\r\n".to_string(),
        "From: <printer@contoso.com>\r\nSender: CEO <ceo@contoso.com>\r\n".to_string(),
        "From: =?utf-8?q?ceo=40contoso=2Ecom?=\r\n".to_string(),
    ];
    for from in &refused {
        let a = c.transaction(
            "printer@contoso.com",
            &[RCPT],
            &format!("{from}{head}\r\nbody\r\n"),
        );
        assert!(a.is(550, "5.7.60"), "{from:?}: {a:?}");
        assert!(a.text().contains("printer"), "{a:?}");
    }
    // BDAT: the same refusal at the last chunk.
    let msg = format!("From: CEO <ceo@contoso.com>\r\n{head}\r\nbody\r\n");
    assert!(c.cmd("MAIL FROM:<printer@contoso.com>").is(250, "2.1.0"));
    assert!(c.cmd(&format!("RCPT TO:<{RCPT}>")).is(250, "2.1.5"));
    c.send(format!("BDAT {} LAST\r\n{msg}", msg.len()).as_bytes());
    let a = c.answer();
    assert!(a.is(550, "5.7.60"), "BDAT: {a:?}");
    // The device's own From (any case, encoded display name) passes.
    let a = c.transaction(
        "printer@contoso.com",
        &[RCPT],
        &format!("From: =?utf-8?q?Printer?= <Printer@Contoso.com>\r\n{head}\r\nok\r\n"),
    );
    assert!(a.is(250, "2.0.0"), "{a:?}");
    let mail = postfix::wait_mailbox(&lab.m365_dir, 1, 30);
    std::thread::sleep(Duration::from_secs(2));
    let mail_now = postfix::wait_mailbox(&lab.m365_dir, 1, 5);
    assert_eq!(mail.len(), 1, "only the device's own message: {mail:?}");
    assert_eq!(mail_now.len(), 1, "nothing refused left: {mail_now:?}");
    let incoming = lab.edge.dir().join("spool/incoming");
    let left = std::fs::read_dir(&incoming).map_or(0, |d| d.count());
    assert_eq!(
        left,
        0,
        "refused messages in the spool: {}",
        incoming.display()
    );
    let log = lab.edge.log();
    assert!(
        log.contains(
            "message refused: the From or Sender field is not one of the device's senders"
        ) && log.contains("header_from=ceo@contoso.com"),
        "{log}"
    );
}

#[test]
fn a_removed_or_changed_device_cannot_go_on_in_an_open_session() {
    let lab = Lab::start("failure_delay_ms = 0");
    let pw = lab.add(&["printer", "--sender", "contoso.com"]);
    let pw2 = lab.add(&["scanner", "--sender", "contoso.com"]);
    let mut c = logged_in(&lab, "printer", &pw);
    let mut c2 = logged_in(&lab, "scanner", &pw2);
    let a = c.transaction(SENDER, &[RCPT], &message("before"));
    assert!(a.is(250, "2.0.0"), "{a:?}");
    lab.device(&["remove", "printer"]);
    let a = c.cmd(&format!("MAIL FROM:<{SENDER}>"));
    assert!(a.is(530, "5.7.0"), "after `device remove`: {a:?}");
    // A new password ends the sessions logged in with the old one.
    lab.device(&["passwd", "scanner"]);
    let a = c2.cmd(&format!("MAIL FROM:<{SENDER}>"));
    assert!(a.is(530, "5.7.0"), "after `device passwd`: {a:?}");
    assert!(
        lab.edge.log().contains("device removed or changed"),
        "{}",
        lab.edge.log()
    );
}

#[test]
fn a_good_login_does_not_reset_the_failure_count() {
    let lab = Lab::start("max_failures = 5\nlockout_seconds = 60\nfailure_delay_ms = 0");
    let pw = lab.add(&["mine", "--any-sender"]);
    lab.add(&["victim", "--any-sender"]);
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut codes = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(SocketAddr::new(V6, lab.starttls), None).expect("connect");
        c.answer();
        c.cmd("EHLO printer.contoso.com");
        for _ in 0..4 {
            codes.push(
                c.cmd(&format!("AUTH PLAIN {}", b64("\0victim\0guess")))
                    .code,
            );
        }
        let mut c = Client::connect(SocketAddr::new(V6, lab.starttls), None).expect("connect");
        c.answer();
        c.cmd("EHLO printer.contoso.com");
        codes.push(
            c.cmd(&format!("AUTH PLAIN {}", b64(&format!("\0mine\0{pw}"))))
                .code,
        );
    }
    // 4 guesses, the own login (235: it takes back its own attempt only),
    // one more guess (the fifth failure), then locked.
    assert_eq!(
        &codes[..7],
        &[535, 535, 535, 535, 235, 535, 454],
        "{codes:?}"
    );
    assert!(
        !codes[7..].contains(&235),
        "locked, even the own login: {codes:?}"
    );
}
