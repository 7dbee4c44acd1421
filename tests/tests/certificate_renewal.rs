//! The edge's own certificates over time: a server certificate renewed on
//! disk reaches new sessions at `smtp-edge reload` (what a certbot deploy
//! hook runs), without a restart and without disturbing a session already
//! open; the expiry gauge follows; `smtp-edge status` lists every configured
//! certificate and warns about one that expires within 30 days and about a
//! server certificate that no longer names `[smtp] hostname` (the name
//! Exchange Online's outbound connector checks as TlsDomain).
//!
//! Each test runs its own daemon (`[filter] enabled = false`) on loopback
//! with its own directory, port and certificates; the TLS clients are
//! Python's ssl module and OpenSSL's `s_client`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use smtp_edge_tests::certs::Leaf;
use smtp_edge_tests::edge::{Edge, LOOPBACK_RELAY, Setup, V4, outbound};
use smtp_edge_tests::ports::free_port;
use smtp_edge_tests::scrape::{sample, scrape};
use smtp_edge_tests::tools::{python, run_tool};

const GAUGE: &str = "smtp_edge_certificate_expiry_timestamp_seconds";

/// `smtp-edge reload`: its message (panics when refused).
fn reload(edge: &Edge) -> String {
    edge.reload()
        .unwrap_or_else(|text| panic!("reload refused: {text}\n{}", edge.log()))
}

/// `smtp-edge status` as text.
fn status_text(edge: &Edge) -> String {
    let out = smtp_edge_tests::cli(
        None,
        &[
            "--config",
            edge.config_path().to_str().expect("utf-8 path"),
            "status",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The certificate a new STARTTLS session on `port` gets, as PEM (Python's
/// ssl module: no verification, the certificate itself is compared).
fn served_pem(port: u16) -> String {
    let script = r#"
import json, smtplib, ssl, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="client.example", timeout=20)
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s.starttls(context=ctx)
der = s.sock.getpeercert(binary_form=True)
s.quit()
print(json.dumps({"pem": ssl.DER_cert_to_PEM_cert(der)}))
"#;
    let v = python(script, &[&port.to_string()]);
    v["pem"].as_str().expect("pem").to_string()
}

/// The base64 body of a PEM certificate (headers and line breaks dropped).
fn body(pem: &str) -> String {
    pem.lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect()
}

/// What `openssl s_client -starttls smtp -showcerts` prints for a new session.
fn s_client(port: u16) -> String {
    run_tool(
        "openssl",
        &[
            "s_client",
            "-starttls",
            "smtp",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "edge.contoso.com",
            "-showcerts",
        ],
        b"QUIT\r\n",
    )
    .all()
}

/// A point `days` from now, whole seconds (as a certificate stores it).
fn in_days(days: u64) -> (SystemTime, f64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let t = now + days * 86_400;
    (UNIX_EPOCH + Duration::from_secs(t), t as f64)
}

/// Replaces the server certificate and key files in place (as a deploy hook
/// does).
fn install(dir: &Path, leaf: &Leaf) {
    leaf.write(dir, "server");
}

fn server_labels(dir: &Path) -> String {
    format!(
        "role=\"server\",name=\"smtp\",path=\"{}\"",
        dir.join("server.pem").display()
    )
}

/// Whether `text` says a certificate made to expire `days` from now
/// expires "in N days" (a second may have passed: N is `days` or one less).
fn says_expires_in(text: &str, days: u64) -> bool {
    text.contains(&format!("(in {days} days)")) || text.contains(&format!("(in {} days)", days - 1))
}

fn certificate<'a>(status: &'a Value, role: &str) -> &'a Value {
    status["certificates"]
        .as_array()
        .expect("certificates")
        .iter()
        .find(|c| c["role"] == role)
        .unwrap_or_else(|| panic!("no {role} certificate in {status}"))
}

#[test]
fn a_renewed_server_certificate_reaches_new_sessions_at_reload() {
    let metrics = free_port();
    let tail =
        format!("[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n[ranges]\nauto_update = false\n");
    let mut edge = Edge::start(Setup {
        connectors: LOOPBACK_RELAY,
        tail: &tail,
        ..Setup::default()
    });
    let pid = edge.daemon().pid();
    let dir = edge.dir().to_path_buf();
    let metrics: SocketAddr = ([127, 0, 0, 1], metrics).into();
    let labels = server_labels(&dir);

    // Certificate A: what the daemon started with.
    let a = std::fs::read_to_string(dir.join("server.pem")).expect("certificate A");
    assert_eq!(body(&served_pem(edge.port)), body(&a));
    let before = sample(&scrape(metrics), GAUGE, &labels).expect("gauge for A");
    let st = edge.cli(&["status"]).expect("status");
    let serial_a = certificate(&st, "server")["certificate"]["serial"].clone();
    assert!(
        edge.log().contains("certificate in force"),
        "{}",
        edge.log()
    );

    // A session open across the reload keeps going.
    let mut open = edge.ehlo(V4);

    // Certificate B: another serial and expiry, installed in place.
    let (until, until_secs) = in_days(200);
    let b = Leaf::valid_until(&["edge.contoso.com"], until, 0x0b0b_0b0b);
    install(&dir, &b);
    let said = reload(&edge);
    assert!(said.contains("applied"), "{said}");

    // A new session gets B, from the same process.
    assert_eq!(body(&served_pem(edge.port)), body(&b.cert_pem));
    let shown = s_client(edge.port);
    let first = shown
        .split("-----BEGIN CERTIFICATE-----")
        .nth(1)
        .and_then(|c| c.split("-----END CERTIFICATE-----").next())
        .unwrap_or_else(|| panic!("no certificate from s_client:\n{shown}"));
    assert_eq!(
        first.split_whitespace().collect::<String>(),
        body(&b.cert_pem)
    );
    assert_eq!(edge.daemon().pid(), pid, "no restart");
    assert!(
        open.cmd("NOOP").is(250, "2.0.0"),
        "the open session goes on"
    );

    // The gauge follows.
    let after = sample(&scrape(metrics), GAUGE, &labels).expect("gauge for B");
    assert_ne!(before, after);
    assert_eq!(after, until_secs);
    let st = edge.cli(&["status"]).expect("status");
    let c = certificate(&st, "server");
    assert_eq!(c["certificate"]["serial"], "0b:0b:0b:0b");
    assert_ne!(c["certificate"]["serial"], serial_a);
    assert_eq!(c["certificate"]["not_after"], until_secs as i64);
    let warnings = st["warnings"].to_string();
    assert!(!warnings.contains("server certificate"), "{warnings}");
}

#[test]
fn status_warns_before_expiry_and_when_the_host_name_is_gone() {
    let metrics = free_port();
    let tmp = tempfile::tempdir().expect("tempdir");
    // An outbound connector's client certificate that expires in 20 days.
    let (client_until, client_secs) = in_days(20);
    let (cc, ck) =
        Leaf::valid_until(&["edge.contoso.com"], client_until, 0x0c).write(tmp.path(), "client");
    let out = outbound(
        "to-microsoft-365",
        &["*"],
        &["127.0.0.1:9".to_string()],
        &format!(
            "client_certificate = \"{}\"\nclient_key = \"{}\"\n",
            cc.display(),
            ck.display()
        ),
    );
    let tail =
        format!("[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n[ranges]\nauto_update = false\n");
    let edge = Edge::start_in(
        tmp,
        Setup {
            connectors: LOOPBACK_RELAY,
            outbound: &out,
            tail: &tail,
            ..Setup::default()
        },
    );
    let dir = edge.dir().to_path_buf();
    let metrics: SocketAddr = ([127, 0, 0, 1], metrics).into();

    // At start: the client certificate is warned about, in status and log.
    let st = edge.cli(&["status"]).expect("status");
    let warnings = st["warnings"].to_string();
    assert!(
        warnings.contains("`to-microsoft-365` client certificate")
            && says_expires_in(&warnings, 20),
        "{warnings}"
    );
    assert!(says_expires_in(&edge.log(), 20), "{}", edge.log());
    let c = certificate(&st, "client");
    assert_eq!(c["name"], "to-microsoft-365");
    assert_eq!(
        c["certificate"]["purposes"],
        serde_json::json!(["serverAuth", "clientAuth"])
    );
    let body_m = scrape(metrics);
    let client_labels = format!(
        "role=\"client\",name=\"to-microsoft-365\",path=\"{}\"",
        cc.display()
    );
    assert_eq!(sample(&body_m, GAUGE, &client_labels), Some(client_secs));

    // A renewal that expires in 10 days.
    let (soon, _) = in_days(10);
    install(
        &dir,
        &Leaf::valid_until(&["edge.contoso.com", "mx.contoso.com"], soon, 0x10),
    );
    reload(&edge);
    let text = status_text(&edge);
    assert!(
        text.contains("cert       server smtp · CN=edge.contoso.com")
            && text.contains("cert       client to-microsoft-365"),
        "{text}"
    );
    assert!(
        text.contains("WARNING    server certificate") && says_expires_in(&text, 10),
        "{text}"
    );

    // A certificate without the host name Exchange Online checks.
    let (later, _) = in_days(300);
    install(&dir, &Leaf::valid_until(&["mail.contoso.com"], later, 0x11));
    reload(&edge);
    let text = status_text(&edge);
    assert!(
        text.contains("does not name edge.contoso.com") && text.contains("TlsDomain"),
        "{text}"
    );
    assert!(
        text.contains("no longer names mx.contoso.com") && !text.contains("no longer names edge"),
        "{text}"
    );
    assert!(!says_expires_in(&text, 10), "{text}");
    let log = edge.log();
    assert!(
        log.contains("does not name edge.contoso.com"),
        "logged at reload:\n{log}"
    );
    assert!(
        s_client(edge.port).contains("mail.contoso.com"),
        "the new certificate is served"
    );
}
