//! `smtp-edge connector test` against good and broken next hops on
//! loopback: smtp-edge itself with a certificate from a test CA (asking for
//! our client certificate), the same with a wrong name, an untrusted CA and
//! an expired certificate; private Postfix instances that ask for a client
//! certificate without requiring one, require one, or do not ask; and
//! scripted next hops without STARTTLS, with a 5xx greeting, a tarpit and
//! nothing listening.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use smtp_edge_tests::certs::{Ca, Leaf, LeafSpec};
use smtp_edge_tests::edge::{Edge, Setup};
use smtp_edge_tests::nexthop::{NextHop, Script, StartTls};
use smtp_edge_tests::postfix::{self, MailServer};
use smtp_edge_tests::smtp::wait_for;

/// The configuration under test: `connectors` as outbound connectors.
fn config(dir: &Path, connectors: &str) -> std::path::PathBuf {
    let path = dir.join("tested.toml");
    std::fs::write(
        &path,
        format!(
            "[daemon]\nstate_dir = \"{d}/state\"\ncontrol_socket = \"{d}/tested.sock\"\n\n[filter]\nenabled = false\n\n[smtp]\nhostname = \"edge.contoso.test\"\naccepted_domains = [\"contoso.com\"]\n\n{connectors}\n[queue.timeouts]\ngreeting = 2\ncommand = 5\nconnect = 3\n",
            d = dir.display()
        ),
    )
    .expect("config");
    path
}

/// `connector test ARGS` on `config`: exit code, text and the JSON report
/// (two runs; with `--send` only the JSON one, so one message is sent).
fn test(config: &Path, args: &[&str]) -> (i32, String, Value) {
    let mut all = vec![
        "--config",
        config.to_str().expect("path"),
        "connector",
        "test",
    ];
    all.extend_from_slice(args);
    if args.contains(&"--send") {
        all.push("--json");
        let out = smtp_edge_tests::cli(None, &all);
        let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let text = format!("{json}{}", String::from_utf8_lossy(&out.stderr));
        return (out.status.code().unwrap_or(-1), text, json);
    }
    let text_out = smtp_edge_tests::cli(None, &all);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&text_out.stdout),
        String::from_utf8_lossy(&text_out.stderr)
    );
    all.push("--json");
    let json_out = smtp_edge_tests::cli(None, &all);
    let json = serde_json::from_slice(&json_out.stdout).unwrap_or(Value::Null);
    (text_out.status.code().unwrap_or(-1), text, json)
}

/// The step named `name` of the last attempt.
fn step<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["attempts"]
        .as_array()
        .and_then(|a| a.last())
        .and_then(|a| a["steps"].as_array())
        .and_then(|s| s.iter().find(|s| s["step"] == name))
        .unwrap_or_else(|| panic!("no step {name} in {report}"))
}

fn detail(s: &Value) -> String {
    s["detail"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

fn reload(edge: &Edge) {
    if let Err(e) = edge.reload() {
        panic!("{e}");
    }
}

#[test]
fn a_good_next_hop_and_every_way_a_certificate_can_be_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = Ca::new("Contoso Test Root");
    let ca_file = ca.write(&d.join("ca.pem"));
    let (client_cert, client_key) =
        Leaf::new(&["edge.contoso.test"], Some(&ca), false).write(d, "client");
    // The next hop: smtp-edge requiring TLS and our client certificate.
    let peer_dir = tempfile::tempdir().expect("tempdir");
    let peer_ca = ca.write(&peer_dir.path().join("ca.pem"));
    let connectors = format!(
        "[[inbound_connectors]]\nname = \"from-edge\"\nrequire_tls = true\nclient_cert_names = [\"edge.contoso.test\"]\nclient_cert_trust = \"{}\"\n",
        peer_ca.display()
    );
    let peer = Edge::start_in(
        peer_dir,
        Setup {
            connectors: &connectors,
            ..Setup::default()
        },
    );
    Leaf::new(&["mail.contoso.test"], Some(&ca), false).write(peer.dir(), "server");
    reload(&peer);
    let hop = format!("127.0.0.1:{}", peer.port);
    let outbound = |name: &str, extra: &str| {
        format!(
            "[[outbound_connectors]]\nname = \"{name}\"\nrecipient_domains = [\"contoso.com\"]\nsmart_hosts = [\"{hop}\"]\nclient_certificate = \"{}\"\nclient_key = \"{}\"\n{extra}\n",
            client_cert.display(),
            client_key.display()
        )
    };
    let trust = format!("tls_trust = \"{}\"", ca_file.display());
    let all = [
        outbound(
            "good",
            &format!("tls = \"domain-validation\"\ntls_domain = \"mail.contoso.test\"\n{trust}"),
        ),
        outbound(
            "wrong-name",
            &format!("tls = \"domain-validation\"\ntls_domain = \"other.contoso.test\"\n{trust}"),
        ),
        outbound("untrusted", "tls = \"certificate-validation\""),
        outbound("only-encrypted", "tls = \"encryption-only\""),
    ]
    .concat();
    let cfg = config(d, &all);

    // Every step through, then a test message delivered for real.
    let (code, text, report) = test(&cfg, &["good", "--rcpt", "bob@contoso.com", "--send"]);
    assert_eq!(code, 0, "{text}");
    for s in [
        "connect",
        "greeting",
        "ehlo",
        "starttls",
        "tls",
        "certificate",
        "client certificate",
        "ehlo after tls",
    ] {
        assert_eq!(step(&report, s)["ok"], true, "{s}: {text}");
    }
    assert!(detail(step(&report, "tls")).contains("TLSv1.3"), "{text}");
    let cert = detail(step(&report, "certificate"));
    assert!(
        cert.contains("mail.contoso.test") && cert.contains("Contoso Test Root"),
        "{cert}"
    );
    assert!(
        cert.contains("chain: verifies") && cert.contains("name: matches mail.contoso.test"),
        "{cert}"
    );
    let client = detail(step(&report, "client certificate"));
    assert!(
        client.contains("asked for by the server: yes") && client.contains("presented"),
        "{client}"
    );
    assert!(detail(step(&report, "ehlo")).contains("STARTTLS"), "{text}");
    assert_eq!(report["message"]["ok"], true, "{text}");
    assert!(detail(&report["message"]).contains("queued as"), "{text}");
    assert_eq!(report["ok"], true, "{text}");
    wait_for("the test message at the next hop", 10, || {
        let n = peer.incoming().len();
        (n == 1).then_some(()).ok_or(format!("{n} messages"))
    });

    // The name does not match.
    let (code, text, report) = test(&cfg, &["wrong-name"]);
    assert_eq!(code, 1, "{text}");
    let c = step(&report, "certificate");
    assert_eq!(c["ok"], false);
    assert!(
        detail(c).contains("name: does not match other.contoso.test"),
        "{text}"
    );
    assert!(detail(c).contains("refused: delivery fails"), "{text}");
    assert!(
        text.contains("FAIL  certificate") && text.contains("FAILED at certificate"),
        "{text}"
    );

    // A CA the system does not trust.
    let (code, text, report) = test(&cfg, &["untrusted"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        detail(step(&report, "certificate")).contains("unknown issuer"),
        "{text}"
    );

    // Encryption only: the certificate is reported, not checked.
    let (code, text, report) = test(&cfg, &["only-encrypted"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        detail(step(&report, "certificate")).contains("not checked"),
        "{text}"
    );

    // An expired certificate.
    Leaf::new(&["mail.contoso.test"], Some(&ca), true).write(peer.dir(), "server");
    reload(&peer);
    let (code, text, report) = test(&cfg, &["good"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        detail(step(&report, "certificate")).contains("expired"),
        "{text}"
    );

    // An unknown connector.
    let (code, text, _) = test(&cfg, &["nope"]);
    assert_ne!(code, 0);
    assert!(
        text.contains("no outbound connector `nope` (there are: good, wrong-name"),
        "{text}"
    );
}

#[test]
fn broken_next_hops_fail_at_their_step_and_failover_is_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let no_tls = NextHop::start(Script {
        starttls: StartTls::No,
        ..Script::default()
    });
    let refusing = NextHop::start(Script {
        greeting: "554 5.7.1 go away".into(),
        ..Script::default()
    });
    let tarpit = NextHop::start(Script {
        greeting_delay: Duration::from_secs(8),
        ..Script::default()
    });
    let open = NextHop::start(Script::default());
    let hop = |h: &NextHop, name: &str, tls: &str| {
        format!(
            "[[outbound_connectors]]\nname = \"{name}\"\nrecipient_domains = [\"contoso.com\"]\nsmart_hosts = [\"{}\"]\ntls = \"{tls}\"\n\n",
            h.host()
        )
    };
    let all = [
        hop(&no_tls, "required", "encryption-only"),
        hop(&no_tls, "opportunistic", "opportunistic"),
        hop(&refusing, "refusing", "opportunistic"),
        hop(&tarpit, "tarpit", "opportunistic"),
        format!(
            "[[outbound_connectors]]\nname = \"failover\"\nrecipient_domains = [\"fabrikam.com\"]\nsmart_hosts = [\"127.0.0.1:9\", \"{}\"]\ntls = \"opportunistic\"\n",
            open.host()
        ),
    ]
    .concat();
    let cfg = config(dir.path(), &all);

    let (code, text, report) = test(&cfg, &["required"]);
    assert_eq!(code, 1, "{text}");
    let s = step(&report, "starttls");
    assert_eq!(s["ok"], false);
    assert!(
        detail(s).contains("not offered, and tls = encryption-only requires it"),
        "{text}"
    );

    let (code, text, report) = test(&cfg, &["opportunistic"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        detail(step(&report, "starttls")).contains("mail goes in clear"),
        "{text}"
    );

    let (code, text, report) = test(&cfg, &["refusing"]);
    assert_eq!(code, 1, "{text}");
    let g = step(&report, "greeting");
    assert_eq!(g["ok"], false);
    assert!(detail(g).contains("554"), "{text}");

    let started = std::time::Instant::now();
    let (code, text, report) = test(&cfg, &["tarpit"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        detail(step(&report, "greeting")).contains("timeout"),
        "{text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(16),
        "the greeting limit applies (2 s, twice: text and JSON)"
    );

    let (code, text, report) = test(&cfg, &["failover"]);
    assert_eq!(code, 0, "{text}");
    let attempts = report["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{text}");
    assert_eq!(attempts[0]["steps"][0]["ok"], false, "{text}");
    assert!(text.contains("127.0.0.1:9"), "{text}");
    assert_eq!(
        report["resolve"].as_array().map(Vec::len),
        Some(2),
        "{text}"
    );
}

/// Every control character in `text` (what a terminal would act on).
fn controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|c| c.is_control() && *c != '\n')
        .collect()
}

#[test]
fn asking_for_a_client_certificate_is_not_requiring_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // The Postfix instances run as `postfix` below this directory.
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let ca = Ca::new("Fabrikam Test Root");
    let ca_file = ca.write(&d.join("ca.pem"));
    // Postfix 3.7 requires the clientAuth EKU of a client certificate.
    let client = Leaf::with_client_auth(&["edge.contoso.test"], &ca).write(d, "client");
    // The next hops' certificate: its subject carries control characters
    // (an escape sequence and a bell) that the text output must not pass on.
    let server = Leaf::build(LeafSpec {
        cn: Some("mx.fabrikam.test\u{1b}[2J\u{7}"),
        sans: &["mx.fabrikam.test"],
        ca: Some(&ca),
        expired: false,
    })
    .write(d, "server");
    let start = |name: &str, require: bool| {
        let addr = SocketAddr::from(([127, 0, 0, 1], smtp_edge_tests::ports::free_port()));
        postfix::mail_server(
            &d.join(name),
            addr,
            &MailServer {
                hostname: "mx.fabrikam.test",
                domains: &["fabrikam.example"],
                cert: (&server.0, &server.1),
                client_ca: &ca_file,
                require_client_cert: require,
                // Not loopback: mail from us is taken only for its domains
                // (or, where required, with a trusted certificate).
                networks: "192.0.2.0/24",
            },
        )
        .unwrap_or_else(|e| panic!("Postfix {name}: {e:#}"))
    };
    // smtpd_tls_ask_ccert = yes, no requirement: asks, takes mail anyway.
    let asking = start("asking", false);
    // smtpd_tls_req_ccert = yes: refuses a client without one.
    let requiring = start("requiring", true);
    let connector = |name: &str, hop: SocketAddr, cert: bool| {
        let cert = if cert {
            format!(
                "client_certificate = \"{}\"\nclient_key = \"{}\"\n",
                client.0.display(),
                client.1.display()
            )
        } else {
            String::new()
        };
        format!(
            "[[outbound_connectors]]\nname = \"{name}\"\nrecipient_domains = [\"fabrikam.example\"]\nsmart_hosts = [\"{hop}\"]\ntls = \"domain-validation\"\ntls_domain = \"mx.fabrikam.test\"\ntls_trust = \"{}\"\n{cert}\n",
            ca_file.display()
        )
    };
    let all = [
        connector("asked", asking.addr, false),
        connector("asked-with-cert", asking.addr, true),
        connector("required", requiring.addr, false),
        connector("required-with-cert", requiring.addr, true),
    ]
    .concat();
    let cfg = config(d, &all);
    let mailbox = |name: &str| postfix::mailbox(&d.join(name));

    // Asked, none configured: a note, not a failure; the session goes on.
    let (code, text, report) = test(&cfg, &["asked"]);
    assert_eq!(code, 0, "{text}");
    let c = step(&report, "client certificate");
    assert_eq!(c["ok"], true, "{text}");
    assert_eq!(c["notice"], "note", "{text}");
    let cd = detail(c);
    assert!(
        cd.contains("asked for by the server: yes") && cd.contains("asking is not requiring"),
        "{cd}"
    );
    assert_eq!(step(&report, "ehlo after tls")["ok"], true, "{text}");
    assert!(text.contains("  note  client certificate"), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
    assert!(text.contains("result: the connector works"), "{text}");
    // The peer's control characters: in the JSON (escaped by JSON), never
    // raw in the text, shown escaped instead.
    assert!(
        detail(step(&report, "certificate")).contains('\u{1b}'),
        "{report}"
    );
    assert!(controls(&text).is_empty(), "{text:?}");
    assert!(text.contains(r"mx.fabrikam.test\x1b[2J\x07"), "{text}");

    // --send proves it: the transaction's replies decide, and the message
    // is in the mailbox.
    let (code, text, report) = test(
        &cfg,
        &["asked", "--rcpt", "alice@fabrikam.example", "--send"],
    );
    assert_eq!(code, 0, "{text}");
    assert_eq!(report["message"]["ok"], true, "{text}");
    assert!(detail(&report["message"]).contains("250"), "{text}");
    let got = postfix::wait_mailbox(&d.join("asking"), 1, 15);
    assert_eq!(got.len(), 1, "{}", asking.log_text());
    assert!(
        got[0].contains("Subject: smtp-edge connector test: asked"),
        "{}",
        got[0]
    );

    // Asked, and ours presented.
    let (code, text, report) = test(&cfg, &["asked-with-cert"]);
    assert_eq!(code, 0, "{text}");
    let c = step(&report, "client certificate");
    assert!(c.get("notice").is_none_or(Value::is_null), "{text}");
    assert!(
        detail(c).contains("presented: CN=edge.contoso.test (EKU serverAuth, clientAuth)"),
        "{text}"
    );
    // The next hop's chain with its purposes (2026 test certificates:
    // serverAuth only).
    assert!(
        detail(step(&report, "certificate")).contains("EKU serverAuth"),
        "{text}"
    );

    // Required, none configured: Postfix refuses the session after the
    // handshake, and that reply is the failure shown.
    let (code, text, report) = test(&cfg, &["required"]);
    assert_eq!(code, 1, "{text}");
    assert_eq!(report["ok"], false, "{text}");
    assert_eq!(step(&report, "client certificate")["ok"], true, "{text}");
    let refused = step(&report, "ehlo after tls");
    assert_eq!(refused["ok"], false, "{text}");
    assert!(
        detail(refused).contains("421 4.7.1") && detail(refused).contains("certificate"),
        "{text}"
    );
    assert!(text.contains("FAILED at ehlo after tls"), "{text}");
    assert!(controls(&text).is_empty(), "{text:?}");
    // --send does not send through a next hop that refused the session.
    let (code, text, report) = test(
        &cfg,
        &["required", "--rcpt", "alice@fabrikam.example", "--send"],
    );
    assert_eq!(code, 1, "{text}");
    assert!(report["message"].is_null(), "{text}");

    // Required and presented: through, and the message delivered.
    let (code, text, report) = test(
        &cfg,
        &[
            "required-with-cert",
            "--rcpt",
            "bob@fabrikam.example",
            "--send",
        ],
    );
    assert_eq!(code, 0, "{text}");
    assert_eq!(report["message"]["ok"], true, "{text}");
    let got = postfix::wait_mailbox(&d.join("requiring"), 1, 15);
    assert_eq!(got.len(), 1, "{}", requiring.log_text());
    assert!(mailbox("requiring")[0].contains("bob@fabrikam.example"));

    // Configured but not asked for: a warning (a certificate-based
    // connector there could not recognise us), not a failure.
    asking
        .configure(&["smtpd_tls_ask_ccert=no"])
        .expect("postconf");
    let (code, text, report) = test(&cfg, &["asked-with-cert"]);
    assert_eq!(code, 0, "{text}");
    let c = step(&report, "client certificate");
    assert_eq!(c["ok"], true, "{text}");
    assert_eq!(c["notice"], "warn", "{text}");
    assert!(
        detail(c).contains("asked for by the server: no")
            && detail(c).contains("configured, not asked for"),
        "{text}"
    );
    assert!(text.contains("  WARN  client certificate"), "{text}");
    assert!(
        text.contains("result: the connector works, with 1 warning"),
        "{text}"
    );
    assert_eq!(mailbox("asking").len(), 1);
}
