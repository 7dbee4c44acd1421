//! The receiving side read as an attacker would: each test is a way in that
//! a review found on the running daemon (header injection through undeclared
//! parameters, memory held per session, readable spool files, BDAT chunks
//! taken for commands, endless sessions, certificate names, forged trace
//! fields, incomplete header families, and the control socket), tried over
//! real sockets against a running smtp-edge.
//!
//! Loopback only (and, for the per-network limit, documentation addresses
//! inside a namespace the test creates and deletes). Every wait is bounded.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use smtp_edge_tests::certs::{Ca, Leaf, LeafSpec};
use smtp_edge_tests::edge::{Edge, INTERNET, Setup, V4, text};
use smtp_edge_tests::netns::{Netns, add_addr};
use smtp_edge_tests::ports::free_port;
use smtp_edge_tests::smtp::{Answer, Client};
use smtp_edge_tests::tools::{swaks, swaks_reply};
use smtp_edge_tests::{Daemon, cli};

fn edge(smtp: &str, connectors: &str) -> Edge {
    Edge::start(Setup {
        smtp,
        connectors,
        ..Setup::default()
    })
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

// ---------------------------------------------------------------------------
// 1. Undeclared parameters; BINARYMIME; the injection it carried

#[test]
fn undeclared_parameters_are_refused_and_binarymime_injection_is_closed() {
    let e = edge("", INTERNET);
    let mut c = e.ehlo(V4);
    let ehlo = c.cmd("EHLO client.fabrikam.com");
    assert!(!ehlo.text().contains("BINARYMIME"), "{ehlo:?}");
    assert!(!ehlo.text().contains("AUTH"), "{ehlo:?}");
    // The reproduced attack: BINARYMIME was never offered, yet taken, and
    // its bare CR carried an internal-authentication header past the
    // firewall to the next hop.
    let a = c.cmd("MAIL FROM:<a@fabrikam.test> BODY=BINARYMIME");
    assert!(a.is(555, "5.5.4"), "{a:?}");
    let a = c.cmd("RCPT TO:<bob@contoso.com>");
    assert_eq!(a.code, 503, "no transaction: {a:?}");
    let payload: &[u8] = b"Subject: x\rX-MS-Exchange-Organization-AuthAs: Internal\r\nX-MS-Exchange-Organization-SCL: -1\r\n\r\nb\r\n";
    c.send(format!("BDAT {} LAST\r\n", payload.len()).as_bytes());
    c.send(payload);
    let a = c.answer();
    assert_ne!(a.code, 250, "{a:?}");
    // Other values and parameters nobody announced.
    for line in [
        "MAIL FROM:<a@fabrikam.test> AUTH=<>",
        "MAIL FROM:<a@fabrikam.test> XCLIENT=1",
    ] {
        let a = c.cmd(line);
        assert!(a.is(555, "5.5.4"), "{line}: {a:?}");
    }
    // After HELO nothing is announced.
    let mut h = e.greeted(V4);
    assert_eq!(h.cmd("HELO client.fabrikam.com").code, 250);
    for line in [
        "MAIL FROM:<a@fabrikam.test> SIZE=100",
        "MAIL FROM:<a@fabrikam.test> RET=HDRS",
        "MAIL FROM:<a@fabrikam.test> ENVID=x",
    ] {
        let a = h.cmd(line);
        assert!(a.is(555, "5.5.4"), "{line}: {a:?}");
    }
    assert_eq!(h.cmd("MAIL FROM:<a@fabrikam.test>").code, 250);
    let a = h.cmd("RCPT TO:<bob@contoso.com> NOTIFY=NEVER");
    assert!(a.is(555, "5.5.4"), "{a:?}");
    assert!(e.incoming().is_empty());
}

#[test]
fn the_firewall_sees_bare_cr_line_ends_as_any_reader_would() {
    // With normalize, a bare CR ends a line; whatever line it starts is
    // judged as a header line (and leaves with CRLF).
    let e = edge("bare_line_endings = \"normalize\"", INTERNET);
    let mut c = e.ehlo(V4);
    assert_eq!(c.cmd("MAIL FROM:<a@fabrikam.test>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<bob@contoso.com>").code, 250);
    let payload: &[u8] = b"Subject: x\rX-MS-Exchange-Organization-AuthAs: Internal\r\nX-MS-Exchange-Organization-SCL: -1\nX-OK: 1\r\n\r\nb\r\n";
    c.send(format!("BDAT {} LAST\r\n", payload.len()).as_bytes());
    c.send(payload);
    let id = c.answer().queue_id();
    let t = text(&e.message(&id));
    assert!(!t.contains("X-MS-Exchange"), "{t}");
    assert!(t.contains("Subject: x\r\nX-OK: 1\r\n\r\nb\r\n"), "{t}");
    assert!(!t.replace("\r\n", "").contains('\r'), "no bare CR: {t:?}");
}

// ---------------------------------------------------------------------------
// 2. Memory per session

/// Sends about `mb` MB of message lines.
fn send_lines(c: &mut Client, mb: usize) {
    let line = format!("{}\r\n", "x".repeat(98));
    let block = line.repeat(10_000); // ~1 MB
    for _ in 0..mb {
        c.send(block.as_bytes());
    }
}

#[test]
fn message_data_streams_to_the_spool_in_bounded_memory() {
    const SESSIONS: usize = 5;
    const MB: usize = 20;
    let mut e = edge("", INTERNET);
    let before = e.daemon().rss_kib();
    let mut clients: Vec<Client> = (0..SESSIONS)
        .map(|_| {
            let mut c = e.ehlo(V4);
            assert_eq!(c.cmd("MAIL FROM:<a@fabrikam.test>").code, 250);
            assert_eq!(c.cmd("RCPT TO:<bob@contoso.com>").code, 250);
            assert_eq!(c.cmd("DATA").code, 354);
            c.send(b"Subject: big\r\n\r\n");
            c
        })
        .collect();
    for c in &mut clients {
        send_lines(c, MB);
    }
    // The data is on its way to disk, not in memory: give the daemon a
    // moment to read what the sockets hold.
    let grew = |e: &mut Edge| e.daemon().rss_kib().saturating_sub(before);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut tmp_bytes = 0;
    while Instant::now() < deadline {
        let spool = e.dir().join("spool");
        tmp_bytes = e.daemon().open_bytes_under(&spool);
        if tmp_bytes as usize >= SESSIONS * (MB - 2) * 1_000_000 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let growth = grew(&mut e);
    assert!(
        tmp_bytes as usize >= SESSIONS * (MB - 2) * 1_000_000,
        "message data is written as it arrives: {tmp_bytes} octets in the spool files being written"
    );
    assert!(
        growth < 16 * 1024,
        "RSS grew by {growth} KiB for {SESSIONS} sessions holding {MB} MB each"
    );
    // One completes: 250, the whole message on disk; the others abandon.
    let mut first = clients.remove(0);
    first.send(b".\r\n");
    let id = first.answer().queue_id();
    let m = e.message(&id);
    assert!(m.content.len() > MB * 1_000_000, "{}", m.content.len());
    drop(clients);
    let spool = e.dir().join("spool");
    smtp_edge_tests::smtp::wait_for("the unfinished messages to go", 10, || {
        let left = e.daemon().open_bytes_under(&spool);
        if left == 0 && e.files("tmp").is_empty() {
            Ok(())
        } else {
            Err(format!("{left} octets still open"))
        }
    });
    // A message over the size limit is refused and not kept either.
    let mut c = e.ehlo(V4);
    assert_eq!(c.cmd("MAIL FROM:<a@fabrikam.test>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<bob@contoso.com>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    send_lines(&mut c, 40);
    c.send(b".\r\n");
    assert!(c.answer().is(552, "5.3.4"));
    assert!(e.files("tmp").is_empty());
    assert_eq!(e.daemon().open_bytes_under(&spool), 0);
    assert_eq!(e.incoming().len(), 1);
}

// ---------------------------------------------------------------------------
// 3. Private spool, state and socket, whatever the umask

#[test]
fn spool_state_and_socket_are_private_whatever_the_umask() {
    let sink = free_port();
    let outbound = format!(
        "[[outbound_connectors]]\nname = \"out\"\nrecipient_domains = [\"*\"]\nsmart_hosts = [\"127.0.0.1:{sink}\"]\n"
    );
    let e = Edge::start(Setup {
        outbound: &outbound,
        queue: "retry_schedule = [60]",
        umask: Some(0),
        ..Setup::default()
    });
    let id = e
        .send(
            "a@fabrikam.test",
            &["bob@contoso.com"],
            "Subject: s\r\n\r\nb\r\n",
        )
        .queue_id();
    // The queue tries the closed port and writes its state.
    let state = e.dir().join("spool/queue").join(format!("{id}.json"));
    smtp_edge_tests::smtp::wait_for("the queue state", 10, || {
        state.exists().then_some(()).ok_or_else(|| e.log())
    });
    for d in [
        "spool",
        "spool/tmp",
        "spool/incoming",
        "spool/queue",
        "state",
    ] {
        assert_eq!(mode(&e.dir().join(d)), 0o700, "{d}");
    }
    assert_eq!(mode(&e.spool_dir("incoming").join(&id)), 0o600);
    assert_eq!(mode(&state), 0o600);
    assert_eq!(mode(&e.dir().join("control.sock")), 0o600);
    // Nothing left of the private directory the socket was bound in.
    let stray: Vec<_> = std::fs::read_dir(e.dir())
        .expect("dir")
        .filter_map(|f| f.ok())
        .filter(|f| {
            f.file_name()
                .to_string_lossy()
                .starts_with(".smtp-edge-bind")
        })
        .collect();
    assert!(stray.is_empty());
}

// ---------------------------------------------------------------------------
// 4. BDAT that cannot be used ends the session

#[test]
fn an_unusable_bdat_command_ends_the_session() {
    let e = edge("max_message_size = 1048576", INTERNET);
    for bdat in [
        &b"BDAT 99999999999999999999 LAST\r\n"[..],
        b"BDAT\t6 LAST\r\n",
        b"BDAT 12 LAST\n",
        b"BDAT twelve LAST\r\n",
        b"BDAT 2000000 LAST\r\n",
    ] {
        let mut c = e.ehlo(V4);
        assert_eq!(c.cmd("MAIL FROM:<a@fabrikam.test>").code, 250);
        assert_eq!(c.cmd("RCPT TO:<bob@contoso.com>").code, 250);
        // The "chunk" holds commands: none may be answered.
        c.send(bdat);
        c.send(b"RSET\r\nMAIL FROM:<evil@fabrikam.test>\r\nNOOP\r\n");
        let all = c.rest();
        assert_eq!(all.len(), 1, "{:?}: {all:?}", String::from_utf8_lossy(bdat));
        assert!(all[0].code == 501 || all[0].code == 552, "{all:?}");
        assert!(all[0].text().contains("closing connection"), "{all:?}");
    }
    assert!(e.incoming().is_empty());
}

#[test]
fn a_recipient_after_the_first_chunk_is_refused() {
    let e = edge("", INTERNET);
    let mut c = e.ehlo(V4);
    assert_eq!(c.cmd("MAIL FROM:<a@fabrikam.test>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<bob@contoso.com>").code, 250);
    c.send(b"BDAT 14\r\nSubject: x\r\n\r\n");
    assert_eq!(c.answer().code, 250);
    // The envelope went to the spool with the first chunk: a 250 here
    // would be a recipient acknowledged and never delivered.
    let a = c.cmd("RCPT TO:<carol@contoso.com>");
    assert!(a.is(503, "5.5.1"), "{a:?}");
    c.send(b"BDAT 6 LAST\r\nbody\r\n");
    let id = c.answer().queue_id();
    let m = e.message(&id);
    let rcpts: Vec<_> = m
        .envelope
        .recipients
        .iter()
        .map(|r| r.address.clone())
        .collect();
    assert_eq!(rcpts, ["bob@contoso.com"]);
}

#[test]
fn replies_are_not_piled_up_for_a_client_that_does_not_read() {
    let mut e = edge("", INTERNET);
    let mut c = e.ehlo(V4);
    assert_eq!(c.cmd("MAIL FROM:<a@fabrikam.test>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<bob@contoso.com>").code, 250);
    c.stream().set_nodelay(true).expect("nodelay");
    c.send(b"BDAT 1\r\n");
    c.stream()
        .set_write_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let before = e.daemon().rss_kib();
    // Each write: the byte of the chunk announced before, 2,600 commands
    // answered with 2,600 replies, and a chunk whose byte comes in the next
    // write. The replies are never read. At most 400 writes (10 MB).
    let mut batch = b"x".to_vec();
    batch.extend_from_slice(&b"HELP\r\n".repeat(2600));
    batch.extend_from_slice(b"BDAT 1\r\n");
    let mut sent = 0usize;
    for _ in 0..400 {
        if c.try_send(&batch).is_err() {
            break;
        }
        sent += batch.len();
        // One write per read of the daemon: the chunk's octet is never in
        // the same read as the commands before it.
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let growth = e.daemon().rss_kib().saturating_sub(before);
    assert!(
        growth < 16 * 1024,
        "RSS grew by {growth} KiB while {sent} octets of unread commands came in"
    );
    assert!(
        sent < 400 * batch.len(),
        "the daemon stopped reading a client that does not read"
    );
}

// ---------------------------------------------------------------------------
// 5. Deadlines

const SLOW: &str =
    "min_data_rate = 500\n[smtp.timeouts]\ncommand = 3\ndata_block = 3\nsession = 6\n";

#[test]
fn a_trickling_client_is_cut_by_the_data_rate() {
    let e = edge(SLOW, INTERNET);
    let mut c = e.ehlo(V4);
    assert_eq!(c.cmd("MAIL FROM:<a@fabrikam.test>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<bob@contoso.com>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c.stream()
        .set_read_timeout(Some(Duration::from_millis(900)))
        .expect("timeout");
    // One byte a second: well inside the 3 s data timeout, far below
    // 500 octets/s. At most 20 s.
    let started = Instant::now();
    let mut cut = None;
    for _ in 0..20 {
        if c.try_send(b"x").is_err() {
            break;
        }
        match c.try_answer() {
            Ok(Some(a)) => {
                cut = Some(a);
                break;
            }
            Ok(None) => break,
            Err(_) => {}
        }
    }
    let a = cut.unwrap_or_else(|| panic!("still connected after {:?}", started.elapsed()));
    assert!(a.is(421, "4.4.2"), "{a:?}");
    assert!(e.log().contains("min_data_rate"), "{}", e.log());
    assert!(e.files("tmp").is_empty());
}

#[test]
fn bdat_chunks_share_one_data_deadline() {
    let e = edge(SLOW, INTERNET);
    let mut c = e.ehlo(V4);
    assert_eq!(c.cmd("MAIL FROM:<a@fabrikam.test>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<bob@contoso.com>").code, 250);
    c.stream()
        .set_read_timeout(Some(Duration::from_millis(900)))
        .expect("timeout");
    // A one-octet chunk a second: each chunk alone is quick, the message is
    // not. Cut by the data rate, before the 6 s session limit.
    let mut cut = None;
    for _ in 0..20 {
        if c.try_send(b"BDAT 1\r\nx").is_err() {
            break;
        }
        match c.try_answer() {
            Ok(Some(a)) if a.code == 250 => {}
            Ok(Some(a)) => {
                cut = Some(a);
                break;
            }
            Ok(None) => break,
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(900));
    }
    let a = cut.expect("the session was ended with a reply");
    assert!(a.is(421, "4.4.2"), "{a:?}");
    assert!(a.text().contains("message data too slow"), "{a:?}");
}

#[test]
fn a_session_has_a_time_limit() {
    let e = edge(SLOW, INTERNET);
    let mut c = e.ehlo(V4);
    // A NOOP a second never meets the 3 s command timeout.
    let mut last = None;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_secs(1));
        if c.try_send(b"NOOP\r\n").is_err() {
            break;
        }
        match c.try_answer() {
            Ok(Some(a)) if a.code == 250 => {}
            other => {
                last = other.ok().flatten();
                break;
            }
        }
    }
    let a = last.expect("the session was ended with a reply");
    assert!(a.is(421, "4.4.2"), "{a:?}");
    assert!(a.text().contains("Session time limit"), "{a:?}");
    assert!(e.log().contains("smtp.timeouts.session"), "{}", e.log());
}

#[test]
fn one_ipv6_network_counts_as_one_source() {
    let ns = Netns::new("ip6");
    for a in [
        "2001:db8:7::1/64",
        "2001:db8:7::2/64",
        "2001:db8:7::3/64",
        "2001:db8:8::4/64",
    ] {
        add_addr(&ns, "lo", a);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let port = free_port();
    let config = format!(
        r#"[daemon]
state_dir = "{d}/state"
control_socket = "{d}/control.sock"
[filter]
enabled = false
[smtp]
enabled = true
listen = ["[2001:db8:7::1]:{port}"]
hostname = "edge.contoso.com"
accepted_domains = ["contoso.com"]
spool_dir = "{d}/spool"
max_connections_per_source = 2
{INTERNET}
"#,
        d = d.display()
    );
    std::fs::write(d.join("c.toml"), config).expect("config");
    let _daemon = Daemon::start(
        Some(&ns.name),
        &d.join("c.toml"),
        &d.join("control.sock"),
        &d.join("log"),
    );
    let dst: SocketAddr = format!("[2001:db8:7::1]:{port}").parse().expect("addr");
    let greet = move |src: &str| -> (Client, Answer) {
        let src: IpAddr = src.parse().expect("src");
        let mut c = Client::connect(dst, Some(src)).expect("connect");
        let a = c.answer();
        (c, a)
    };
    let codes = ns.within(move || {
        // Two addresses of one /64 take its two slots; a third address of
        // the same /64 is refused, another /64 is not.
        let (_a, a) = greet("2001:db8:7::2");
        let (_b, b) = greet("2001:db8:7::3");
        let (_c, c) = greet("2001:db8:7::3");
        let (_d, d) = greet("2001:db8:8::4");
        [a.code, b.code, c.code, d.code]
    });
    assert_eq!(codes, [220, 220, 421, 220]);
}

// ---------------------------------------------------------------------------
// 6. Certificate names

#[test]
fn the_cn_is_ignored_when_the_certificate_has_dns_sans() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_path_buf();
    let evil = Ca::name_constrained("Evil CA", &["evil.test"]);
    let ca_file = evil.write(&d.join("ca.pem"));
    // CN says example.test; the only SAN (all name constraints look at) is
    // below evil.test.
    let sneaky = Leaf::build(LeafSpec {
        cn: Some("mail.example.test"),
        sans: &["x.evil.test"],
        ca: Some(&evil),
        expired: false,
    })
    .write(&d, "sneaky");
    let connectors = format!(
        r#"[[inbound_connectors]]
name = "partner"
require_tls = true
client_cert_names = ["*.example.test"]
client_cert_trust = "{}"
"#,
        ca_file.display()
    );
    let e = Edge::start_in(
        dir,
        Setup {
            connectors: &connectors,
            ..Setup::default()
        },
    );
    let t = swaks(
        e.port,
        &[
            "--from",
            "app@contoso.com",
            "--to",
            "bob@contoso.com",
            "--tls",
            "--tls-cert",
            sneaky.0.to_str().expect("path"),
            "--tls-key",
            sneaky.1.to_str().expect("path"),
        ],
    );
    let reply = swaks_reply(&t.stdout, "MAIL FROM").unwrap_or_else(|| panic!("{}", t.all()));
    assert!(reply.starts_with("550 5.7.1"), "{reply}\n{}", t.all());
    assert!(e.incoming().is_empty());
}

// ---------------------------------------------------------------------------
// 7. Forged trace fields

#[test]
fn forged_trace_fields_are_refused() {
    let e = edge("", INTERNET);
    let mut c = e.greeted(V4);
    for bad in [
        "EHLO evil (forged by trusted.example.test); x",
        "EHLO evil\tx",
        "HELO a_b;c",
        "EHLO [192.0.2.1",
    ] {
        let a = c.cmd(bad);
        assert!(a.is(501, "5.5.4"), "{bad}: {a:?}");
    }
    // Domains and address literals are fine (a bare IPv4 is a domain's
    // syntax).
    for ok in [
        "EHLO [192.0.2.1]",
        "EHLO [IPv6:2001:db8::1]",
        "EHLO 192.0.2.1",
        "HELO mx.fabrikam.com",
    ] {
        assert_eq!(c.cmd(ok).code, 250, "{ok}");
    }
    let mut c = e.ehlo(V4);
    let a = c.transaction(
        "a@fabrikam.test",
        &["bob@contoso.com"],
        " by mx.example.test with ESMTPSA (authenticated as admin)\r\nSubject: x\r\n\r\nb\r\n",
    );
    assert!(a.is(554, "5.6.0"), "{a:?}");
    assert!(e.incoming().is_empty());
}

// ---------------------------------------------------------------------------
// 8. Every Exchange-internal family, and configured extras

const FAMILIES: &[&str] = &[
    "X-MS-Exchange-Organization-AuthAs",
    "X-MS-Exchange-Forest-RulesExecuted",
    "X-MS-Exchange-CrossPremises-AuthSource",
    "X-MS-Exchange-CrossTenant-Id",
    "X-MS-Exchange-Transport-CrossTenantHeadersStamped",
    "X-MS-Exchange-AntiSpam-MessageData-0",
    "X-MS-Exchange-ExternalOriginalInternetSender",
    "X-OriginatorOrg",
    "X-Forefront-Antispam-Report",
    "X-Forefront-Antispam-Report-Untrusted",
    "X-Microsoft-Antispam",
    "X-Microsoft-Antispam-Message-Info",
    "X-EOPAttributedMessage",
    "X-EOPTenantAttributedMessage",
    "X-Corp-Trust",
];

fn family_message() -> String {
    let mut m = String::from("Subject: families\r\n");
    for (i, name) in FAMILIES.iter().enumerate() {
        let name = match i % 3 {
            0 => name.to_string(),
            1 => name.to_ascii_lowercase(),
            _ => name.to_ascii_uppercase(),
        };
        // Folded, with white space before the colon every other time; line
        // ends bare LF and bare CR too (normalized on the way in).
        let end = ["\r\n", "\n", "\r"][i % 3];
        let colon = if i % 2 == 0 { ":" } else { " :" };
        m.push_str(&format!("{name}{colon} value {i}{end}\tfolded {i}{end}"));
    }
    m.push_str("X-Kept: yes\r\n\r\nbody\r\n");
    m
}

#[test]
fn every_internal_family_is_removed_unless_trusted() {
    let trusted =
        "[[inbound_connectors]]\nname = \"on-prem\"\nsources = [\"::1\"]\ntrusted_headers = true\n";
    let e = edge(
        "bare_line_endings = \"normalize\"\nstrip_headers = [\"X-Corp-*\"]",
        &format!("{trusted}\n{INTERNET}"),
    );
    // 127.0.0.1: untrusted.
    let id = e
        .send("a@fabrikam.test", &["bob@contoso.com"], &family_message())
        .queue_id();
    let t = text(&e.message(&id));
    for name in FAMILIES {
        assert!(
            !t.to_ascii_lowercase().contains(&name.to_ascii_lowercase()),
            "{name} left in:\n{t}"
        );
    }
    assert!(
        !t.contains("folded"),
        "continuations go with their field:\n{t}"
    );
    assert!(
        t.contains("Subject: families\r\nX-Kept: yes\r\n\r\nbody"),
        "{t}"
    );
    // ::1: trusted, everything kept.
    let mut c = e.ehlo(smtp_edge_tests::edge::V6);
    let id = c
        .transaction("a@fabrikam.test", &["bob@contoso.com"], &family_message())
        .queue_id();
    let t = text(&e.message(&id)).to_ascii_lowercase();
    for name in FAMILIES {
        assert!(t.contains(&name.to_ascii_lowercase()), "{name} kept");
    }
}

// ---------------------------------------------------------------------------
// 10. Configuration and parameter lengths

#[test]
fn require_tls_without_a_certificate_is_a_located_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("c.toml");
    std::fs::write(
        &f,
        "[filter]\nenabled = false\n\n[smtp]\nenabled = true\nlisten = [\"127.0.0.1:2525\"]\n\n[[inbound_connectors]]\nname = \"tls-only\"\nrequire_tls = true\n",
    )
    .expect("write");
    let out = cli(None, &["config", "check", f.to_str().expect("path")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("{}:9:8: require_tls needs TLS", f.display())),
        "{err}"
    );
}

#[test]
fn a_dsn_orcpt_of_legal_length_is_taken() {
    let e = edge("", INTERNET);
    let mut c = e.ehlo(V4);
    assert_eq!(
        c.cmd("MAIL FROM:<a@fabrikam.test> RET=HDRS ENVID=abc").code,
        250
    );
    let orcpt = format!("rfc822;{}@contoso.com", "b".repeat(60));
    let long = format!(
        "RCPT TO:<bob@contoso.com> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT={orcpt}{}",
        "+2B".repeat(140)
    );
    assert!(long.len() > 512);
    let a = c.cmd(&long);
    assert_eq!(a.code, 250, "{a:?}");
    // UTF-8 as such only with SMTPUTF8; values nobody announced are 555.
    let a = c.cmd("RCPT TO:<carol@contoso.com> ORCPT=utf-8;pel\u{e9}@example.org");
    assert!(a.is(553, "5.6.7"), "{a:?}");
    for line in [
        "RCPT TO:<carol@contoso.com> NOTIFY=SOMETIMES",
        "MAIL FROM:<a@fabrikam.test> BODY=9BIT",
    ] {
        let a = c.cmd(line);
        assert!(a.is(555, "5.5.4"), "{line}: {a:?}");
    }
    // Other commands keep the 512-octet limit.
    let a = c.cmd(&format!("NOOP {}", "x".repeat(600)));
    assert!(a.is(500, "5.5.2"), "{a:?}");
}

// ---------------------------------------------------------------------------
// 11. Queue ids on the control socket

#[test]
fn queue_commands_take_only_queue_ids() {
    let outbound = format!(
        "[[outbound_connectors]]\nname = \"out\"\nrecipient_domains = [\"*\"]\nsmart_hosts = [\"127.0.0.1:{}\"]\n",
        free_port()
    );
    let e = Edge::start(Setup {
        outbound: &outbound,
        queue: "retry_schedule = [60]",
        ..Setup::default()
    });
    let victim = e.dir().join("spool/precious");
    std::fs::write(&victim, b"not a queued message").expect("write");
    for args in [
        &["queue", "delete", "../precious"][..],
        &["queue", "show", "../precious"],
        &["queue", "hold", "/etc/passwd"],
        &["queue", "flush", "a/../../b"],
    ] {
        let r = e.cli(args);
        let err = r.expect_err("refused");
        assert!(err.contains("is not a queue id"), "{args:?}: {err}");
    }
    assert!(victim.exists(), "nothing outside the queue was touched");
}

// ---------------------------------------------------------------------------
// 12. Shared Exchange Online ranges never earn trust on their own

#[test]
fn trusting_headers_on_exchange_online_ranges_is_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("c.toml");
    std::fs::write(
        &f,
        "[filter]\nenabled = false\n\n[[inbound_connectors]]\nname = \"eo\"\nsources = [\"exchange-online\"]\ntrusted_headers = true\n\n[[inbound_connectors]]\nname = \"anyone\"\ntrusted_headers = true\n",
    )
    .expect("write");
    let out = cli(None, &["config", "check", f.to_str().expect("path")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning:")
            && err.contains("connector `eo` has trusted_headers = true on sources it shares")
            && err.contains("its Exchange-internal headers are stripped"),
        "{err}"
    );
    assert!(
        err.contains("connector `anyone` has trusted_headers = true on sources it shares"),
        "{err}"
    );
    // The example configuration trusts them only with a tenant check.
    let ex = cli(None, &["config", "example"]);
    let example = String::from_utf8_lossy(&ex.stdout);
    let eo = example
        .split("[[inbound_connectors]]")
        .find(|s| s.contains("exchange-online"))
        .expect("an Exchange Online connector in the example");
    assert!(
        !eo.contains("trusted_headers = true") || eo.contains("tenant_policy = \"enforce\""),
        "{eo}"
    );
}
