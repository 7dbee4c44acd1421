//! Reload of everything while mail flows: outbound connectors, `[queue]`,
//! `[dns]`, listeners added and removed, certificates renewed on disk; bad
//! files and files a service refuses change nothing; the queue starts at the
//! reload that adds the first outbound connector and waits (never bounces)
//! when a reload removes them all. No session is dropped, no acknowledged
//! message lost.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use smtp_edge_tests::certs::self_signed;
use smtp_edge_tests::edge::{Edge, LOOPBACK_RELAY, Setup, outbound};
use smtp_edge_tests::nexthop::{NextHop, Script};
use smtp_edge_tests::ports::free_port;
use smtp_edge_tests::smtp::{Client, message, wait_for};
use smtp_edge_tests::tools::run_tool;

/// Rewrites the configuration file: `from` → `to` (which must occur).
fn edit(edge: &Edge, from: &str, to: &str) {
    let path = edge.config_path();
    let text = std::fs::read_to_string(&path).expect("config");
    assert!(
        text.contains(from),
        "`{from}` not in the configuration:\n{text}"
    );
    std::fs::write(&path, text.replacen(from, to, 1)).expect("write config");
}

fn config_text(edge: &Edge) -> String {
    std::fs::read_to_string(edge.config_path()).expect("config")
}

/// The certificate subject a STARTTLS client sees on `port`.
fn served_subject(port: u16) -> String {
    let t = run_tool(
        "openssl",
        &[
            "s_client",
            "-starttls",
            "smtp",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "edge.contoso.com",
        ],
        b"QUIT\r\n",
    );
    t.all()
        .lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or("")
        .to_string()
}

fn tokens_at(hop: &NextHop) -> Vec<String> {
    hop.transactions()
        .iter()
        .filter_map(|t| {
            let text = String::from_utf8_lossy(&t.data);
            text.lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .map(str::to_string)
        })
        .collect()
}

fn refused_connection(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_secs(2),
    )
    .is_err()
}

#[test]
fn every_section_reloads_while_mail_flows() {
    let a = NextHop::start(Script::default());
    let b = NextHop::start(Script::default());
    let out = outbound("out", &["*"], &[a.host()], "");
    let edge = Edge::start(Setup {
        connectors: LOOPBACK_RELAY,
        outbound: &out,
        queue: "retry_schedule = [1]\nmax_per_destination = 20",
        tail: "[dns]\ntimeout_seconds = 5\n",
        ..Setup::default()
    });
    let p1 = edge.port;
    // Four long sessions on the first port, one message every 20 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for t in 0..4 {
        let stop = stop.clone();
        load.push(std::thread::spawn(move || {
            let mut c = Client::greeted(p1).expect("connect");
            assert_eq!(c.cmd("EHLO load.fabrikam.com").code, 250);
            let mut sent = Vec::new();
            let started = Instant::now();
            for i in 0.. {
                if (stop.load(Ordering::Relaxed) && i >= 20)
                    || started.elapsed() > Duration::from_secs(60)
                {
                    break;
                }
                let token = format!("t{t}-{i}");
                let a = c.transaction(
                    "load@fabrikam.com",
                    &["someone@example.net"],
                    &message("load@fabrikam.com", "someone@example.net", &token),
                );
                assert_eq!(a.code, 250, "{token}: {a:?}");
                sent.push(token);
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(c.cmd("QUIT").code, 221, "the session survived every reload");
            sent
        }));
    }
    a.wait_for("the first deliveries", 20, |t| t.len() >= 10);

    // 1. Another next hop, other queue and DNS settings.
    edit(
        &edge,
        &format!("\"{}\"", a.host()),
        &format!("\"{}\"", b.host()),
    );
    edit(&edge, "max_per_destination = 20", "max_per_destination = 5");
    edit(&edge, "timeout_seconds = 5", "timeout_seconds = 3");
    let m = edge.reload().expect("reload");
    assert!(m.contains("applied"), "{m}");
    b.wait_for("deliveries through the new connector", 20, |t| t.len() >= 5);

    // 2. A broken file changes nothing and says where.
    let good = config_text(&edge);
    std::fs::write(edge.config_path(), good.replace("[queue]", "[queue")).expect("write");
    let e = edge.reload().expect_err("a broken file");
    let line = good
        .lines()
        .position(|l| l == "[queue]")
        .expect("a [queue] line")
        + 1;
    assert!(
        e.contains(&format!("smtp-edge.toml:{line}:")) && e.contains("stays in force"),
        "{e}"
    );
    std::fs::write(edge.config_path(), &good).expect("restore");

    // 3. A new listening address, then the first one removed: its sessions
    // go on, new connections to it are refused.
    let p2 = free_port();
    edit(
        &edge,
        &format!("listen = [\"127.0.0.1:{p1}\", \"[::1]:{p1}\"]"),
        &format!("listen = [\"127.0.0.1:{p1}\", \"[::1]:{p1}\", \"127.0.0.1:{p2}\"]"),
    );
    edge.reload().expect("add a listener");
    let mut c = Client::greeted(p2).expect("the new address answers");
    assert_eq!(c.cmd("QUIT").code, 221);
    edit(
        &edge,
        &format!("listen = [\"127.0.0.1:{p1}\", \"[::1]:{p1}\", \"127.0.0.1:{p2}\"]"),
        &format!("listen = [\"127.0.0.1:{p2}\"]"),
    );
    edge.reload().expect("remove a listener");
    assert!(refused_connection(p1), "the removed address still accepts");
    // A specific address replaced by the wildcard on the same port.
    edit(
        &edge,
        &format!("listen = [\"127.0.0.1:{p2}\"]"),
        &format!("listen = [\"0.0.0.0:{p2}\"]"),
    );
    edge.reload()
        .expect("the wildcard in place of a specific address");
    let mut c = Client::greeted(p2).expect("the wildcard answers");
    assert_eq!(c.cmd("QUIT").code, 221);

    // 4. A renewed certificate on disk, applied by SIGHUP (the same path).
    assert!(
        served_subject(p2).contains("edge.contoso.com"),
        "{}",
        served_subject(p2)
    );
    self_signed(edge.dir(), "server", "renewed.contoso.com");
    let applied_before = edge.log().matches("applied").count();
    let mut edge = edge;
    edge.daemon().signal(libc::SIGHUP);
    wait_for("the SIGHUP reload", 10, || {
        (edge.log().matches("applied").count() > applied_before)
            .then_some(())
            .ok_or_else(|| edge.log())
    });
    assert!(
        served_subject(p2).contains("renewed.contoso.com"),
        "{}",
        served_subject(p2)
    );

    // The load ends; every acknowledged message reached a next hop.
    stop.store(true, Ordering::Relaxed);
    let mut sent = Vec::new();
    for t in load {
        sent.extend(t.join().expect("a load session failed"));
    }
    assert!(sent.len() >= 80, "{}", sent.len());
    wait_for("every message delivered", 30, || {
        let mut got = tokens_at(&a);
        got.extend(tokens_at(&b));
        let missing: Vec<&String> = sent.iter().filter(|s| !got.contains(s)).collect();
        missing.is_empty().then_some(()).ok_or(format!(
            "{} of {} missing: {missing:?}",
            missing.len(),
            sent.len()
        ))
    });
    let at_b = tokens_at(&b).len();
    assert!(at_b >= 5, "{at_b} at the new next hop");
    let log = edge.log();
    assert!(log.contains("SMTP listening (added by reload)"), "{log}");
    assert!(log.contains("no longer listening"), "{log}");
}

#[test]
fn a_reload_a_service_refuses_changes_nothing() {
    let a = NextHop::start(Script::default());
    let out = outbound("out", &["*"], &[a.host()], "");
    let edge = Edge::start(Setup {
        connectors: LOOPBACK_RELAY,
        outbound: &out,
        ..Setup::default()
    });
    let good = config_text(&edge);
    let deliver = |token: &str| {
        let r = edge.send(
            "a@fabrikam.com",
            &["b@example.net"],
            &message("a@fabrikam.com", "b@example.net", token),
        );
        assert_eq!(r.code, 250, "{r:?}");
        a.wait_for(token, 20, |_| tokens_at(&a).iter().any(|t| t == token));
    };
    deliver("before");
    // A key that does not parse.
    let key = edge.dir().join("server.key");
    let key_text = std::fs::read(&key).expect("key");
    std::fs::write(
        &key,
        b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    )
    .expect("write");
    let e = edge.reload().expect_err("an unusable key");
    assert!(
        e.contains("server.key") && e.contains("stays in force"),
        "{e}"
    );
    std::fs::write(&key, &key_text).expect("restore key");
    // A renewed certificate installed without its new key.
    let cert = edge.dir().join("server.pem");
    let cert_text = std::fs::read(&cert).expect("certificate");
    let other = tempfile::tempdir().expect("tempdir");
    let (new_cert, _) = self_signed(other.path(), "renewed", "renewed.contoso.com");
    std::fs::copy(&new_cert, &cert).expect("install the certificate alone");
    let e = edge.reload().expect_err("a certificate without its key");
    assert!(e.contains("not a usable key for the certificate"), "{e}");
    std::fs::write(&cert, cert_text).expect("restore certificate");
    assert!(served_subject(edge.port).contains("edge.contoso.com"));
    // An address already taken by another program.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = taken.local_addr().expect("addr").port();
    let p = edge.port;
    edit(
        &edge,
        &format!("listen = [\"127.0.0.1:{p}\", \"[::1]:{p}\"]"),
        &format!("listen = [\"127.0.0.1:{p}\", \"[::1]:{p}\", \"127.0.0.1:{busy}\"]"),
    );
    // The outbound change in the same file must not apply either.
    let other = NextHop::start(Script::default());
    edit(
        &edge,
        &format!("\"{}\"", a.host()),
        &format!("\"{}\"", other.host()),
    );
    let e = edge.reload().expect_err("a taken address");
    assert!(
        e.contains(&format!("127.0.0.1:{busy}")) && e.contains("stays in force"),
        "{e}"
    );
    std::fs::write(edge.config_path(), &good).expect("restore");
    // An outbound client certificate that cannot be read.
    let bad = good.replace(
        "tls = \"opportunistic\"",
        &format!(
            "tls = \"opportunistic\"\nclient_certificate = \"{d}/missing.pem\"\nclient_key = \"{d}/missing.key\"",
            d = edge.dir().display()
        ),
    );
    std::fs::write(edge.config_path(), bad).expect("write");
    let e = edge.reload().expect_err("a missing client certificate");
    assert!(e.contains("missing.pem"), "{e}");
    std::fs::write(edge.config_path(), &good).expect("restore");
    // Everything still as before.
    deliver("after");
    assert!(
        other.transactions().is_empty(),
        "a refused reload changed the next hop"
    );
}

#[test]
fn the_queue_starts_with_the_first_outbound_connector_and_waits_without_any() {
    let a = NextHop::start(Script::default());
    let edge = Edge::start(Setup {
        connectors: LOOPBACK_RELAY,
        queue: "retry_schedule = [1]",
        ..Setup::default()
    });
    // No outbound connector: accepted, kept in the spool, no queue.
    let r = edge.send(
        "a@fabrikam.com",
        &["b@example.net"],
        &message("a@fabrikam.com", "b@example.net", "early"),
    );
    assert_eq!(r.code, 250);
    assert!(
        edge.cli(&["queue", "list"])
            .expect_err("no queue")
            .contains("not running")
    );
    // A session open across the reload hands its next message to the queue.
    let mut open = Client::greeted(edge.port).expect("connect");
    assert_eq!(open.cmd("EHLO client.fabrikam.com").code, 250);
    let text = config_text(&edge);
    let with = text.replace(
        "[queue]",
        &format!("{}\n[queue]", outbound("out", &["*"], &[a.host()], "")),
    );
    std::fs::write(edge.config_path(), &with).expect("write");
    edge.reload().expect("first connector");
    let r = open.transaction(
        "a@fabrikam.com",
        &["b@example.net"],
        &message("a@fabrikam.com", "b@example.net", "across"),
    );
    assert_eq!(r.code, 250);
    a.wait_for("both messages", 20, |_| {
        let got = tokens_at(&a);
        got.contains(&"early".to_string()) && got.contains(&"across".to_string())
    });
    // Every connector removed: messages wait, nobody gets a bounce.
    std::fs::write(edge.config_path(), &text).expect("write");
    edge.reload().expect("no connectors");
    let r = open.transaction(
        "a@fabrikam.com",
        &["b@example.net"],
        &message("a@fabrikam.com", "b@example.net", "waiting"),
    );
    let id = r.queue_id();
    wait_for("a deferral", 10, || {
        let m = edge.queued(&id).ok_or("not queued")?;
        let shown = m.to_string();
        shown
            .contains("no outbound connectors are configured")
            .then_some(())
            .ok_or(shown)
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        edge.queued(&id).is_some(),
        "the message must wait, not bounce"
    );
    assert_eq!(tokens_at(&a).len(), 2, "no DSN went anywhere");
    // Back: delivered.
    std::fs::write(edge.config_path(), &with).expect("write");
    edge.reload().expect("connector back");
    a.wait_for("the waiting message", 20, |_| {
        tokens_at(&a).contains(&"waiting".to_string())
    });
    assert_eq!(open.cmd("QUIT").code, 221);
}
