//! Tenant authorization against a running smtp-edge, in both flows: mail
//! Exchange Online Protection relays inbound (proven by Exchange Online's
//! tenant stamp; the header sets of real messages, [`exo`]) and mail the
//! tenant sends out through the edge (the stamp and the tenant's DKIM
//! signature, with keys made for this test in NSD on loopback). Everything
//! is sent over STARTTLS with the test CA's `mail.protection.outlook.com`
//! client certificate from the loopback source of the connector.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;

use serde_json::Value;
use smtp_edge_tests::certs::{Ca, Leaf};
use smtp_edge_tests::dkim::{self, DkimKey};
use smtp_edge_tests::edge::{Edge, Setup, V4, V6, split_received};
use smtp_edge_tests::exo;
use smtp_edge_tests::nsd::Nsd;
use smtp_edge_tests::ports::free_port;
use smtp_edge_tests::scrape::{sample, scrape};
use smtp_edge_tests::smtp::queued;
use smtp_edge_tests::tools::starttls_send;

const OURS: &str = "11111111-2222-3333-4444-555555555555";
const THEIRS: &str = "99999999-8888-7777-6666-555555555555";
const OUR_DOMAIN: &str = "contoso.onmicrosoft.test";
const THEIR_DOMAIN: &str = "fabrikam.onmicrosoft.test";

/// A message as Exchange Online sends it to an on-premises connector:
/// internal fields, the tenant id, then the signed fields.
fn exo_message(from: &str, tenant_id: Option<&str>, subject: &str) -> String {
    let id = tenant_id
        .map(|t| format!("X-MS-Exchange-CrossTenant-Id: {t}\r\n"))
        .unwrap_or_default();
    format!(
        "X-MS-Exchange-Organization-AuthAs: Internal\r\n\
         X-MS-Exchange-Organization-SCL: -1\r\n\
         {id}\
         From: Alice <{from}>\r\n\
         To: bob@contoso.com\r\n\
         Subject: {subject}\r\n\
         Date: Wed, 02 Dec 2026 09:00:00 +0000\r\n\
         Message-ID: <{subject}@contoso.onmicrosoft.test>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         X-MS-Exchange-SenderADCheck: 1\r\n\
         \r\n\
         Hello from Exchange Online.\r\n"
    )
}

struct Lab {
    edge: Edge,
    cert: (PathBuf, PathBuf),
    ours: DkimKey,
    theirs: DkimKey,
    metrics: SocketAddr,
    _nsd: Option<Nsd>,
    _silent: Option<UdpSocket>,
}

impl Lab {
    /// An edge whose `eo` connector (127.0.0.1) enforces and whose
    /// `eo-monitor` connector (::1) monitors, both with the relay flow's
    /// proof (the stamp and the tenant's DKIM signature); keys asked from
    /// NSD, or from a server that never answers.
    fn start(dns_answers: bool) -> Lab {
        Lab::start_with(dns_answers, "tenant_proof = \"stamp-and-dkim\"\n")
    }

    /// The same connectors with the inbound flow's proof, the default of a
    /// connector without `relay`, and a name server that never answers
    /// (the stamp needs no DNS).
    fn start_inbound() -> Lab {
        Lab::start_with(false, "")
    }

    fn start_with(dns_answers: bool, proof: &str) -> Lab {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().to_path_buf();
        let ca = Ca::new("Test Exchange Online CA");
        let ca_file = ca.write(&d.join("eo-ca.pem"));
        let cert = Leaf::new(&["mail.protection.outlook.com"], Some(&ca), false).write(&d, "eo");
        let ours = DkimKey::new(OUR_DOMAIN);
        let theirs = DkimKey::new(THEIR_DOMAIN);
        let (nsd, silent, dns) = if dns_answers {
            let nsd = Nsd::start(&dkim::zone(&[&ours, &theirs]));
            let addr = nsd.addr;
            (Some(nsd), None, addr)
        } else {
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
            let addr = s.local_addr().expect("address");
            (None, Some(s), addr)
        };
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let connector = |name: &str, source: &str, mode: &str| {
            format!(
                r#"[[inbound_connectors]]
name = "{name}"
sources = ["{source}"]
require_tls = true
client_cert_names = ["mail.protection.outlook.com"]
client_cert_trust = "{ca}"
trusted_headers = true
tenant_policy = "{mode}"
{proof}tenants = [{{ id = "{OURS}", domains = ["{OUR_DOMAIN}", "contoso.test"] }}]
"#,
                ca = ca_file.display()
            )
        };
        let connectors = format!(
            "{}\n{}",
            connector("eo", "127.0.0.1", "enforce"),
            connector("eo-monitor", "::1", "monitor")
        );
        let tail = format!(
            "[dns]\nnameservers = [\"{dns}\"]\ntimeout_seconds = 1\n\n[metrics]\nlisten = \"{metrics}\"\n"
        );
        let edge = Edge::start_in(
            dir,
            Setup {
                smtp: "",
                accepted: "\"contoso.com\"",
                connectors: &connectors,
                outbound: "",
                queue: "",
                tail: &tail,
                umask: None,
                tmpfs_spool: None,
            },
        );
        Lab {
            edge,
            cert,
            ours,
            theirs,
            metrics,
            _nsd: nsd,
            _silent: silent,
        }
    }

    /// Sends `message` from `ip` (127.0.0.1: enforce, ::1: monitor) with
    /// the envelope sender `from`.
    fn send_from(&self, ip: std::net::IpAddr, from: &str, message: &str) -> Value {
        starttls_send(
            self.edge.addr(ip),
            (&self.cert.0, &self.cert.1),
            from,
            "bob@contoso.com",
            message.as_bytes(),
        )
    }

    fn send(&self, ip: std::net::IpAddr, message: &str) -> Value {
        self.send_from(ip, "alice@contoso.com", message)
    }

    /// The spooled message (without our Received field) a 250 named.
    fn spooled(&self, out: &Value) -> String {
        let text = out["data"][1].as_str().expect("DATA reply");
        let id = queued(text).unwrap_or_else(|| panic!("no queue id in {out}"));
        String::from_utf8_lossy(&split_received(&self.edge.message(&id)).1).into_owned()
    }
}

fn code(out: &Value) -> u64 {
    out["data"][0]
        .as_u64()
        .unwrap_or_else(|| panic!("no DATA reply: {out}"))
}

fn reply(out: &Value) -> String {
    out["data"][1].as_str().unwrap_or_default().to_string()
}

#[test]
fn only_our_tenant_gets_through_an_enforcing_connector() {
    let lab = Lab::start(true);

    // Our tenant, signed, with its id: accepted, internal fields kept.
    let m = lab
        .ours
        .sign(&exo_message("alice@contoso.com", Some(OURS), "ours"));
    let out = lab.send(V4, &m);
    assert_eq!(code(&out), 250, "{out}\n{}", lab.edge.log());
    let spooled = lab.spooled(&out);
    assert_eq!(spooled, m, "a proven message is kept as sent");
    assert!(spooled.contains("X-MS-Exchange-Organization-AuthAs: Internal"));

    // Without the id header, our signature is not enough (the stamp says
    // which tenant sent it): deferred, so Exchange Online tries again.
    let m = lab
        .ours
        .sign(&exo_message("alice@contoso.com", None, "noid"));
    let out = lab.send(V4, &m);
    assert_eq!(code(&out), 451, "{out}");
    assert!(reply(&out).starts_with("4.7.1 "), "{out}");

    // A replay of our signed message with an unsigned Subject, Reply-To and
    // internal fields put above: refused.
    let signed = lab
        .ours
        .sign(&exo_message("alice@contoso.com", Some(OURS), "replayed"));
    let m = format!(
        "X-MS-Exchange-Organization-AuthAs: Internal\r\nSubject: URGENT wire transfer\r\nReply-To: mallory@fabrikam.example\r\n{signed}"
    );
    let out = lab.send(V4, &m);
    assert_eq!(code(&out), 550, "{out}");
    assert!(reply(&out).contains("subject"), "{out}");

    // A line without a colon, after which one parser sees header fields and
    // another the body: not judged, refused.
    let head = exo_message("alice@contoso.com", Some(OURS), "colonless");
    let head = head.split("\r\n\r\n").next().unwrap_or_default();
    let m = lab.ours.sign(&format!(
        "{head}\r\nNot a header line\r\nFrom: CEO <ceo@contoso.com>\r\n\r\nbody\r\n"
    ));
    let out = lab.send(V4, &m);
    assert_eq!(code(&out), 550, "{out}");
    assert!(reply(&out).contains("no colon"), "{out}");

    // An Authentication-Results field claiming to be ours is removed.
    let m = format!(
        "Authentication-Results: edge.contoso.com; x-ms365-tenant=allowed\r\n{}",
        lab.ours
            .sign(&exo_message("alice@contoso.com", Some(OURS), "forged-ar"))
    );
    let out = lab.send(V4, &m);
    assert_eq!(code(&out), 250, "{out}");
    assert!(!lab.spooled(&out).contains("x-ms365-tenant"), "{out}");

    // Exchange Online's connector validation message: null sender, From
    // the tenant's initial domain, signed by it.
    let m = lab.ours.sign(&exo_message(
        &format!("O365ConnectorValidation@{OUR_DOMAIN}"),
        Some(OURS),
        "validation",
    ));
    let out = lab.send_from(V4, "", &m);
    assert_eq!(code(&out), 250, "{out}\n{}", lab.edge.log());

    // A foreign tenant, signed by its own domain with its own id.
    let m = lab
        .theirs
        .sign(&exo_message("alice@contoso.com", Some(THEIRS), "foreign"));
    let out = lab.send(V4, &m);
    assert_eq!(code(&out), 550, "{out}");
    assert!(
        reply(&out).starts_with("5.7.1 Not from an allowed Microsoft 365 tenant"),
        "{out}"
    );

    // Our tenant's id header on a message the foreign tenant signed.
    let m = lab
        .theirs
        .sign(&exo_message("alice@contoso.com", Some(OURS), "forged-id"));
    let out = lab.send(V4, &m);
    assert_eq!(code(&out), 550, "{out}");
    assert!(reply(&out).contains(THEIR_DOMAIN), "{out}");

    // Our signature with a foreign id, and with two conflicting ids.
    let m = lab
        .ours
        .sign(&exo_message("alice@contoso.com", Some(THEIRS), "their-id"));
    assert_eq!(code(&lab.send(V4, &m)), 550);
    let m = format!(
        "X-MS-Exchange-CrossTenant-Id: {THEIRS}\r\n{}",
        lab.ours
            .sign(&exo_message("alice@contoso.com", Some(OURS), "two-ids"))
    );
    let out = lab.send(V4, &m);
    assert_eq!(code(&out), 550, "{out}");
    assert!(reply(&out).contains("conflicting"), "{out}");

    // No signature.
    let out = lab.send(
        V4,
        &exo_message("alice@contoso.com", Some(OURS), "unsigned"),
    );
    assert_eq!(code(&out), 550, "{out}");
    assert!(reply(&out).contains("no DKIM signature"), "{out}");

    // Signed, then the body changed.
    let m = lab
        .ours
        .sign(&exo_message("alice@contoso.com", Some(OURS), "changed"))
        .replace("Hello from Exchange Online.", "Please pay invoice 4711.");
    let out = lab.send(V4, &m);
    assert_eq!(code(&out), 550, "{out}");
    assert!(reply(&out).contains(OUR_DOMAIN), "{out}");

    // A signature that does not cover From.
    let m = lab.ours.sign_fields(
        &exo_message("alice@contoso.com", Some(OURS), "no-from"),
        &["Subject", "Date"],
    );
    let out = lab.send(V4, &m);
    assert_eq!(code(&out), 550, "{out}");
    assert!(reply(&out).contains("From"), "{out}");

    // Nothing refused reached the spool: the accepted three only.
    assert_eq!(lab.edge.incoming().len(), 3, "{:?}", lab.edge.incoming());
    let log = lab.edge.log();
    assert!(
        log.contains("message refused by the tenant check")
            && log.contains("connector=eo")
            && log.contains(&format!("tenant_ids={THEIRS}"))
            && log.contains(&format!("dkim_domains={THEIR_DOMAIN}")),
        "{log}"
    );
    let body = scrape(lab.metrics);
    let count = |outcome: &str| {
        sample(
            &body,
            "smtp_edge_tenant_checks_total",
            &format!("connector=\"eo\",outcome=\"{outcome}\""),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(count("allowed"), 3.0, "{body}");
    assert_eq!(count("foreign_tenant"), 4.0, "{body}");
    assert_eq!(count("no_signature"), 1.0, "{body}");
    assert_eq!(count("bad_signature"), 3.0, "{body}");
    assert_eq!(count("malformed"), 1.0, "{body}");
    assert_eq!(count("no_stamp"), 1.0, "{body}");
}

#[test]
fn a_monitoring_connector_accepts_and_says_what_it_found() {
    let lab = Lab::start(true);
    let m = lab
        .theirs
        .sign(&exo_message("alice@contoso.com", Some(THEIRS), "foreign"));
    let out = lab.send(V6, &m);
    assert_eq!(code(&out), 250, "{out}\n{}", lab.edge.log());
    let spooled = lab.spooled(&out);
    assert!(
        spooled
            .starts_with("Authentication-Results: edge.contoso.com; x-ms365-tenant=foreign_tenant"),
        "{spooled}"
    );
    assert!(
        spooled.contains(&format!("header.d={THEIR_DOMAIN}")),
        "{spooled}"
    );
    // Not proven: the internal fields are gone, the rest is as sent.
    assert!(
        !spooled.lines().any(|l| l.starts_with("X-MS-Exchange-")),
        "{spooled}"
    );
    assert!(spooled.contains("DKIM-Signature: "), "{spooled}");
    assert!(
        spooled.ends_with("\r\n\r\nHello from Exchange Online.\r\n"),
        "{spooled}"
    );

    let m = lab
        .ours
        .sign(&exo_message("alice@contoso.com", Some(OURS), "ours"));
    let out = lab.send(V6, &m);
    assert_eq!(code(&out), 250, "{out}");
    let spooled = lab.spooled(&out);
    assert!(
        spooled.starts_with(&format!(
            "Authentication-Results: edge.contoso.com; x-ms365-tenant=allowed policy.tenant={OURS}"
        )),
        "{spooled}"
    );
    // Proven: kept whole after the added field.
    assert!(spooled.ends_with(&m), "{spooled}");

    let out = lab.send(V6, &exo_message("alice@contoso.com", None, "unsigned"));
    assert_eq!(code(&out), 250);
    assert!(lab.spooled(&out).contains("x-ms365-tenant=no_stamp"));
    let body = scrape(lab.metrics);
    assert_eq!(
        sample(
            &body,
            "smtp_edge_tenant_checks_total",
            "connector=\"eo-monitor\",outcome=\"allowed\""
        ),
        Some(1.0),
        "{body}"
    );
}

#[test]
fn inbound_mail_relayed_by_exchange_online_is_proven_by_its_stamp() {
    // The default of a connector without relay; the name server never
    // answers, so any DKIM lookup would turn into a 451.
    let lab = Lab::start_inbound();
    let author = DkimKey::new("sender.test");

    // Internet mail EOP filtered for our tenant, unsigned and signed by its
    // author (never by us): accepted, Exchange Online's fields kept.
    let m = exo::inbound(OURS, OURS, OUR_DOMAIN, "unsigned");
    let out = lab.send_from(V4, "sam@sender.test", &m);
    assert_eq!(code(&out), 250, "{out}\n{}", lab.edge.log());
    assert_eq!(lab.spooled(&out), m, "a proven message is kept as sent");
    let m = author.sign(&exo::inbound(OURS, OURS, OUR_DOMAIN, "author-signed"));
    let out = lab.send_from(V4, "sam@sender.test", &m);
    assert_eq!(code(&out), 250, "{out}");

    // Mail that crossed another tenant first: the last tenant's id is the
    // stamp; the first one's survives only inside
    // -OriginalAttributedTenantConnectingIp, which counts for nothing.
    let m = exo::inbound(OURS, THEIRS, OUR_DOMAIN, "two-tenants");
    assert_eq!(code(&lab.send_from(V4, "sam@sender.test", &m)), 250);
    let m = exo::inbound(THEIRS, OURS, OUR_DOMAIN, "their-connector");
    let out = lab.send_from(V4, "sam@sender.test", &m);
    assert_eq!(code(&out), 550, "{out}");
    assert!(reply(&out).contains(THEIRS), "{out}");

    // The stamp twice: identical copies pass, a differing one refuses.
    let m = format!(
        "X-MS-Exchange-CrossTenant-Id: {OURS}\r\n{}",
        exo::inbound(OURS, OURS, OUR_DOMAIN, "twice")
    );
    assert_eq!(code(&lab.send_from(V4, "sam@sender.test", &m)), 250);
    let m = format!(
        "x-ms-exchange-crosstenant-id: {THEIRS}\r\n{}",
        exo::inbound(OURS, OURS, OUR_DOMAIN, "conflict")
    );
    let out = lab.send_from(V4, "sam@sender.test", &m);
    assert_eq!(code(&out), 550, "{out}");
    assert!(reply(&out).contains("conflicting"), "{out}");

    // Exchange Online's connector validation message, null sender.
    let m = lab
        .ours
        .sign(&exo::validation(OURS, OUR_DOMAIN, "validation"));
    let out = lab.send_from(V4, "", &m);
    assert_eq!(code(&out), 250, "{out}");

    // No stamp at all: deferred (Exchange Online retries), warned, counted;
    // a monitoring connector accepts and says so.
    let unstamped = exo::inbound(OURS, OURS, OUR_DOMAIN, "unstamped")
        .replace(&format!("X-MS-Exchange-CrossTenant-Id: {OURS}\r\n"), "");
    let out = lab.send_from(V4, "sam@sender.test", &unstamped);
    assert_eq!(code(&out), 451, "{out}");
    assert!(reply(&out).starts_with("4.7.1 "), "{out}");
    let out = lab.send_from(V6, "sam@sender.test", &unstamped);
    assert_eq!(code(&out), 250, "{out}");
    assert!(lab.spooled(&out).contains("x-ms365-tenant=no_stamp"));

    assert!(
        lab.edge
            .log()
            .contains("has no X-MS-Exchange-CrossTenant-Id"),
        "{}",
        lab.edge.log()
    );
    let body = scrape(lab.metrics);
    let count = |connector: &str, outcome: &str| {
        sample(
            &body,
            "smtp_edge_tenant_checks_total",
            &format!("connector=\"{connector}\",outcome=\"{outcome}\""),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(count("eo", "allowed"), 5.0, "{body}");
    assert_eq!(count("eo", "foreign_tenant"), 2.0, "{body}");
    assert_eq!(count("eo", "no_stamp"), 1.0, "{body}");
    assert_eq!(count("eo-monitor", "no_stamp"), 1.0, "{body}");
}

#[test]
fn a_key_lookup_that_times_out_is_a_temporary_failure() {
    let lab = Lab::start(false);
    let m = lab
        .ours
        .sign(&exo_message("alice@contoso.com", Some(OURS), "slow"));
    let out = lab.send(V4, &m);
    assert_eq!(code(&out), 451, "{out}");
    assert!(reply(&out).starts_with("4.7.5 "), "{out}");
    assert!(lab.edge.incoming().is_empty());
    // Monitoring says so too, but keeps the message.
    let out = lab.send(V6, &m);
    assert_eq!(code(&out), 250, "{out}");
    assert!(lab.spooled(&out).contains("x-ms365-tenant=temp_error"));
}

#[test]
fn tenant_settings_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("c.toml");
    for (table, why) in [
        ("tenant_policy = \"enforce\"\n", "needs tenants"),
        (
            "tenants = [{ id = \"not-a-guid\", domains = [\"contoso.onmicrosoft.com\"] }]\n",
            "is not a GUID",
        ),
        (
            &format!("tenants = [{{ id = \"{OURS}\", domains = [] }}]\n") as &str,
            "needs domains",
        ),
        (
            &format!("tenants = [{{ id = \"{OURS}\", domains = [\"*.contoso.com\"] }}]\n"),
            "tenant domains are domain names",
        ),
        ("tenant_policy = \"sometimes\"\n", "unknown variant"),
        ("tenant_proof = \"dkim\"\n", "unknown variant"),
        (
            &format!(
                "tenants = [{{ id = \"{OURS}\", domains = [\"a.test\"] }}, {{ id = \"{THEIRS}\", domains = [\"A.test\"] }}]\n"
            ),
            "is listed for two tenants",
        ),
    ] {
        std::fs::write(&f, format!("{HEAD}{table}")).expect("write");
        let out = smtp_edge_tests::cli(None, &["config", "check", f.to_str().expect("path")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{table}: accepted");
        assert!(err.contains(why), "{table}: {err}");
    }
    let tenants = format!("tenants = [{{ id = \"{OURS}\", domains = [\"{OUR_DOMAIN}\"] }}]\n");
    // Without Exchange Online's certificate a replayed signature would do.
    let without_cert = HEAD.replace(
        "client_cert_names = [\"mail.protection.outlook.com\"]\n",
        "",
    );
    std::fs::write(&f, format!("{without_cert}{tenants}")).expect("write");
    let out = smtp_edge_tests::cli(None, &["config", "check", f.to_str().expect("path")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted without a certificate");
    assert!(err.contains("tenants need client_cert_names"), "{err}");
    std::fs::write(&f, format!("{HEAD}tenant_policy = \"monitor\"\n{tenants}")).expect("write");
    let out = smtp_edge_tests::cli(None, &["config", "check", f.to_str().expect("path")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("only monitors its tenants"), "{err}");
    // Relaying, or recipient domains beyond the accepted ones, on the stamp
    // alone: warned (and not the default, which is the DKIM proof too).
    for beyond in ["relay = true\n", "recipient_domains = [\"*\"]\n"] {
        std::fs::write(
            &f,
            format!("{HEAD}{beyond}tenant_proof = \"stamp\"\n{tenants}"),
        )
        .expect("write");
        let out = smtp_edge_tests::cli(None, &["config", "check", f.to_str().expect("path")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(
            err.contains(
                "delivers beyond the accepted domains (relay or recipient_domains) on the stamp alone"
            ),
            "{beyond}: {err}"
        );
    }
    std::fs::write(&f, format!("{HEAD}tenant_policy = \"off\"\n{tenants}")).expect("write");
    let out = smtp_edge_tests::cli(None, &["config", "check", f.to_str().expect("path")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("lists tenants but tenant_policy = \"off\""),
        "{err}"
    );
}

/// A configuration up to the tenant settings of an Exchange Online
/// connector.
const HEAD: &str = "[filter]\nenabled = false\n\n[smtp]\nenabled = true\nlisten = [\"127.0.0.1:2525\"]\n\n[smtp.tls]\ncertificate = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/c.key\"\n\n[[inbound_connectors]]\nname = \"eo\"\nsources = [\"exchange-online\"]\nrequire_tls = true\nclient_cert_names = [\"mail.protection.outlook.com\"]\n";

#[test]
fn shared_sources_never_keep_internal_headers_without_a_tenant_proof() {
    // No sources: everyone (the Exchange Online ranges included) shares it.
    let edge = Edge::start(Setup {
        smtp: "",
        accepted: "\"contoso.com\"",
        connectors: "[[inbound_connectors]]\nname = \"anyone\"\ntrusted_headers = true\n",
        outbound: "",
        queue: "",
        tail: "",
        umask: None,
        tmpfs_spool: None,
    });
    let m = exo_message("alice@contoso.com", Some(OURS), "shared");
    let id = edge
        .send("alice@contoso.com", &["bob@contoso.com"], &m)
        .queue_id();
    let spooled = String::from_utf8_lossy(&split_received(&edge.message(&id)).1).into_owned();
    assert!(
        !spooled.lines().any(|l| l.starts_with("X-MS-Exchange-")),
        "{spooled}"
    );
    assert!(spooled.contains("Subject: shared\r\n"), "{spooled}");
}

#[test]
fn exo_commands_come_from_the_configuration() {
    let scenario = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../smtp-edge/tests/exo/scenario2-eop-relay.toml");
    let out = smtp_edge_tests::cli(
        None,
        &["--config", scenario.to_str().expect("path"), "exo-commands"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let golden = std::fs::read_to_string(scenario.with_extension("ps1")).expect("golden");
    assert_eq!(text, golden);
    for cmdlet in [
        "New-OutboundConnector @p",
        "New-InboundConnector @p",
        "New-ReceiveConnector @p",
        "New-SendConnector @p",
    ] {
        assert!(text.contains(cmdlet), "{cmdlet}:\n{text}");
    }
}
