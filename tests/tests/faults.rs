//! The sending side on an operator's bad day: a failing postmaster, a slow
//! or broken next hop, a server with a recipient limit, a full or read-only
//! spool, corrupt queue state, many domains behind one smart host, backups
//! that refuse, a huge message to a slow reader, certificate files that go
//! away, and `kill -9` while bounces are being written.
//!
//! Each test asserts what must hold: nothing accepted is lost, duplicates
//! are bounded, nothing loops or storms, DSNs go where they should. Next
//! hops are scripted servers and smtp-sink on loopback; full and read-only
//! file systems are a small tmpfs in the daemon's own mount namespace
//! (never the host's). Every wait is bounded.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smtp_edge_tests::certs::{Ca, Leaf};
use smtp_edge_tests::edge::{Edge, LOOPBACK_RELAY, Setup, V4, outbound};
use smtp_edge_tests::nexthop::{NextHop, RcptRule, Script, StartTls};
use smtp_edge_tests::ports::free_port;
use smtp_edge_tests::sink::{Sink, envelope};
use smtp_edge_tests::smtp::{Client, data_of, message, send, wait_for};

/// A relay for loopback clients with these outbound connectors and
/// `[queue]` keys.
fn edge(outbound: &str, queue: &str) -> Edge {
    Edge::start(setup(outbound, queue))
}

fn setup<'a>(outbound: &'a str, queue: &'a str) -> Setup<'a> {
    Setup {
        accepted: "\"contoso.com\", \"fabrikam.com\"",
        connectors: LOOPBACK_RELAY,
        outbound,
        queue,
        ..Setup::default()
    }
}

fn count(log: &str, what: &str) -> usize {
    log.matches(what).count()
}

// ---------------------------------------------------------------------------
// 1. Bounces of bounces

#[test]
fn a_bounce_about_a_bounce_ends_the_line() {
    let hop = NextHop::start(Script {
        rcpt: RcptRule::All("550 5.1.1 no such user".into()),
        ..Script::default()
    });
    let e = edge(
        &outbound("all", &["*"], &[hop.host()], ""),
        "retry_schedule = [1, 2]\npostmaster = \"postmaster@contoso.com\"\n",
    );
    // A bounce from elsewhere (null sender) and an ordinary message; every
    // recipient is refused, the postmaster included.
    send(
        e.port,
        "",
        &["nobody@contoso.com"],
        &message("", "x", "remote bounce"),
    );
    send(
        e.port,
        "alice@fabrikam.com",
        &["nobody@contoso.com"],
        &message("alice@fabrikam.com", "nobody@contoso.com", "ordinary"),
    );
    e.wait_queue_empty(20);
    // Long enough for a loop to show (it made thousands a second).
    std::thread::sleep(Duration::from_secs(3));
    let rcpts: Vec<String> = hop.rcpts().into_iter().map(|(a, _)| a).collect();
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &rcpts {
        *by.entry(r.as_str()).or_default() += 1;
    }
    // The remote bounce, its double bounce; the message, its bounce to
    // alice, that bounce's double bounce. Nothing more.
    assert_eq!(
        by,
        BTreeMap::from([
            ("alice@fabrikam.com", 1),
            ("nobody@contoso.com", 2),
            ("postmaster@contoso.com", 2),
        ]),
        "{}",
        e.log()
    );
    assert_eq!(hop.mails().len(), 5);
    assert_eq!(
        count(&e.log(), "a double bounce could not be delivered: dropped"),
        2,
        "{}",
        e.log()
    );
}

// ---------------------------------------------------------------------------
// 2. Head-of-line blocking

#[test]
fn a_slow_destination_does_not_hold_up_the_others() {
    // Greets after 30 s: every session to it takes its time. Two connectors
    // lead to it: one destination, whatever the connector.
    let slow = NextHop::start(Script {
        greeting_delay: Duration::from_secs(30),
        ..Script::default()
    });
    let fast = Sink::start(&[]);
    let out = [
        outbound("slow", &["slow.test"], &[slow.host()], ""),
        outbound("slow-too", &["slow2.test"], &[slow.host()], ""),
        outbound("fast", &["fast.test"], &[fast.host()], ""),
    ]
    .concat();
    let mut e = edge(
        &out,
        "retry_schedule = [60]\nmax_concurrency = 4\nmax_per_destination = 2\n",
    );
    for i in 0..20 {
        let domain = if i % 2 == 0 {
            "slow.test"
        } else {
            "slow2.test"
        };
        send(
            e.port,
            "alice@fabrikam.com",
            &[&format!("u{i}@{domain}")],
            &message("alice@fabrikam.com", "u@slow.test", "slow"),
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    send(
        e.port,
        "alice@fabrikam.com",
        &["bob@fast.test"],
        &message("alice@fabrikam.com", "bob@fast.test", "healthy"),
    );
    let d = fast.wait(1, 10);
    assert!(d[0].contains("Subject: healthy"), "{}", d[0]);
    assert!(slow.max_concurrent() <= 2, "{}", slow.max_concurrent());
    // Waiting messages cost nothing while their destination is busy.
    let cpu = |e: &mut Edge| {
        let pid = e.daemon().pid().expect("pid");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        let f: Vec<u64> = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0)
    };
    let before = cpu(&mut e);
    std::thread::sleep(Duration::from_secs(4));
    let ticks = cpu(&mut e) - before;
    assert!(ticks <= 20, "{ticks} CPU ticks in 4 s while nothing can go");
}

// ---------------------------------------------------------------------------
// 3. Opportunistic TLS falls back; required TLS does not

#[test]
fn opportunistic_tls_falls_back_to_clear_text_and_required_tls_does_not() {
    let broken = NextHop::start(Script {
        starttls: StartTls::BreakHandshake,
        ..Script::default()
    });
    let strict = NextHop::start(Script {
        starttls: StartTls::BreakHandshake,
        ..Script::default()
    });
    let out = [
        outbound("may", &["contoso.com"], &[broken.host()], ""),
        outbound(
            "must",
            &["fabrikam.com"],
            &[strict.host()],
            "tls = \"encryption-only\"\n",
        ),
    ]
    .concat();
    let e = edge(&out, "retry_schedule = [60]\n");
    send(
        e.port,
        "alice@fabrikam.com",
        &["bob@contoso.com"],
        &message("alice@fabrikam.com", "bob@contoso.com", "in clear"),
    );
    let id = send(
        e.port,
        "bob@contoso.com",
        &["alice@fabrikam.com"],
        &message("bob@contoso.com", "alice@fabrikam.com", "needs TLS"),
    );
    let t = broken.wait_for("the message in clear", 10, |t| !t.is_empty());
    assert_eq!(t[0].rcpts, ["bob@contoso.com"]);
    assert!(e.log().contains("trying again without TLS"), "{}", e.log());
    let q = wait_for("the strict message deferred", 10, || {
        let m = e.queued(&id).ok_or("gone")?;
        let err = m["recipients"][0][1]["last_error"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if err.contains("TLS") {
            Ok(err)
        } else {
            Err(format!("{m}"))
        }
    });
    assert!(q.contains("TLS handshake failed"), "{q}");
    assert!(strict.transactions().is_empty());
}

// ---------------------------------------------------------------------------
// 4. A recipient limit at the next hop

#[test]
fn too_many_recipients_go_out_again_at_once() {
    let hop = NextHop::start(Script {
        rcpt: RcptRule::Limit {
            accept: 2,
            then: "552 5.5.3 too many recipients".into(),
        },
        ..Script::default()
    });
    let e = edge(
        &outbound("all", &["*"], &[hop.host()], ""),
        // Were a retry needed, it would come after a minute.
        "retry_schedule = [60]\n",
    );
    let rcpts = [
        "r1@contoso.com",
        "r2@contoso.com",
        "r3@contoso.com",
        "r4@contoso.com",
        "r5@contoso.com",
    ];
    send(
        e.port,
        "alice@fabrikam.com",
        &rcpts,
        &message("alice@fabrikam.com", "r1@contoso.com", "five"),
    );
    let t = hop.wait_for("every recipient", 10, |t| {
        t.iter().map(|x| x.rcpts.len()).sum::<usize>() >= 5
    });
    let mut got: Vec<String> = t.iter().flat_map(|x| x.rcpts.clone()).collect();
    got.sort();
    assert_eq!(got, rcpts);
    assert_eq!(t.len(), 3, "2 + 2 + 1");
    e.wait_queue_empty(5);
    assert!(!hop.mails().iter().any(|m| m.is_empty()), "no bounce");
}

// ---------------------------------------------------------------------------
// 5. A full spool: the bounce waits, nothing is lost

/// Fills the file system of `dir` (as the daemon sees it); the filler.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).expect("filler");
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
    p
}

#[test]
fn a_bounce_that_cannot_be_written_keeps_the_message() {
    let hop = NextHop::start(Script {
        rcpt: RcptRule::ByAddress {
            replies: vec![("alice@fabrikam.com".into(), "250 2.1.5 ok".into())],
            default: "451 4.3.0 try later".into(),
        },
        ..Script::default()
    });
    let out = outbound("all", &["*"], &[hop.host()], "");
    let e = Edge::start(Setup {
        tmpfs_spool: Some("2m"),
        ..setup(&out, "retry_schedule = [3600]\n")
    });
    let id = send(
        e.port,
        "alice@fabrikam.com",
        &["bob@contoso.com"],
        &message("alice@fabrikam.com", "bob@contoso.com", "bounce me"),
    );
    wait_for("the first attempt", 10, || {
        e.spool_dir("queue")
            .join(format!("{id}.json"))
            .exists()
            .then_some(())
            .ok_or_else(|| e.log())
    });
    // The disk fills; then bob is refused for good.
    let filler = fill(&e.spool_dir(""));
    hop.set(|s| {
        s.rcpt = RcptRule::ByAddress {
            replies: vec![("alice@fabrikam.com".into(), "250 2.1.5 ok".into())],
            default: "550 5.1.1 no such user".into(),
        }
    });
    e.queue_cmd(&["flush"]);
    wait_for("the DSN write to fail", 10, || {
        let log = e.log();
        log.contains("cannot queue a DSN").then_some(()).ok_or(log)
    });
    // The original stays, its failure unreported; new mail is refused for
    // lack of space, not lost.
    assert!(e.incoming().contains(&id), "{}", e.log());
    let m = e.queued(&id).expect("still queued");
    let st = &m["recipients"][0][1];
    assert_eq!(st["state"], "failed", "{m}");
    assert_eq!(st["reported"], false, "{m}");
    let mut c = e.ehlo(V4);
    let a = c.cmd("MAIL FROM:<carol@fabrikam.com>");
    assert!(a.is(452, "4.3.1"), "{a:?}");
    assert!(!hop.mails().iter().any(|m| m.is_empty()), "no bounce yet");
    // Space again: the bounce goes out, then the message leaves.
    std::fs::remove_file(&filler).expect("remove filler");
    wait_for("the message thawed", 15, || {
        let log = e.log();
        log.contains("thawed").then_some(()).ok_or(log)
    });
    e.queue_cmd(&["flush"]);
    let t = hop.wait_for("the bounce to alice", 15, |t| {
        t.iter()
            .any(|x| x.mail_from.is_empty() && x.rcpts == ["alice@fabrikam.com"])
    });
    let dsn = t.iter().find(|x| x.mail_from.is_empty()).expect("dsn");
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(
        text.contains("Final-Recipient: rfc822;bob@contoso.com"),
        "{text}"
    );
    e.wait_queue_empty(10);
    let mut c = e.ehlo(V4);
    assert_eq!(c.cmd("MAIL FROM:<carol@fabrikam.com>").code, 250);
}

// ---------------------------------------------------------------------------
// 6. A read-only spool: frozen, not sent again and again

#[test]
fn a_state_that_cannot_be_written_freezes_the_message_instead_of_resending() {
    let hop = NextHop::start(Script {
        rcpt: RcptRule::ByAddress {
            replies: vec![("bob@contoso.com".into(), "250 2.1.5 ok".into())],
            default: "451 4.3.0 try later".into(),
        },
        ..Script::default()
    });
    let out = outbound("all", &["*"], &[hop.host()], "");
    let mut e = Edge::start(Setup {
        tmpfs_spool: Some("4m"),
        ..setup(&out, "retry_schedule = [3600]\n")
    });
    let id = send(
        e.port,
        "alice@fabrikam.com",
        &["bob@contoso.com", "carol@contoso.com"],
        &message("alice@fabrikam.com", "bob@contoso.com", "twice?"),
    );
    hop.wait_for("bob's copy", 10, |t| t.len() == 1);
    wait_for("the state", 10, || {
        e.spool_dir("queue")
            .join(format!("{id}.json"))
            .exists()
            .then_some(())
            .ok_or_else(|| e.log())
    });
    // carol is taken now, but nothing can be written any more.
    hop.set(|s| s.rcpt = RcptRule::All("250 2.1.5 ok".into()));
    let spool = e.dir().join("spool");
    e.daemon()
        .in_mounts(&["mount", "-o", "remount,ro", spool.to_str().expect("path")]);
    e.queue_cmd(&["flush"]);
    hop.wait_for("carol's copy", 10, |t| t.len() == 2);
    // A storm would resend every pass: 4 s without another copy.
    std::thread::sleep(Duration::from_secs(4));
    let t = hop.transactions();
    assert_eq!(t.len(), 2, "one copy each: {t:?}");
    let m = e.queued(&id).expect("still listed");
    assert!(m["frozen"].as_str().is_some(), "{m}");
    let mut c = e.ehlo(V4);
    assert!(c.cmd("MAIL FROM:<dave@fabrikam.com>").is(452, "4.3.1"));
    // Writable again: the message leaves, mail is taken again.
    e.daemon()
        .in_mounts(&["mount", "-o", "remount,rw", spool.to_str().expect("path")]);
    e.wait_queue_empty(15);
    assert_eq!(hop.transactions().len(), 2, "still one copy each");
    wait_for("the spool to take mail", 15, || {
        let mut c = e.ehlo(V4);
        let a = c.cmd("MAIL FROM:<dave@fabrikam.com>");
        (a.code == 250).then_some(()).ok_or(format!("{a:?}"))
    });
}

// ---------------------------------------------------------------------------
// 7. Corrupt state and leftovers

#[test]
fn corrupt_states_are_quarantined_and_leftovers_removed() {
    let hop = NextHop::start(Script {
        rcpt: RcptRule::All("451 4.3.0 later".into()),
        ..Script::default()
    });
    let out = outbound("all", &["*"], &[hop.host()], "");
    let mut e = edge(&out, "retry_schedule = [1]\n");
    let ids: Vec<String> = (0..3)
        .map(|i| {
            send(
                e.port,
                "alice@fabrikam.com",
                &["bob@contoso.com", "carol@contoso.com"],
                &message("alice@fabrikam.com", "bob@contoso.com", &format!("m{i}")),
            )
        })
        .collect();
    let q = e.dir().join("spool/queue");
    wait_for("three states", 10, || {
        ids.iter()
            .all(|id| q.join(format!("{id}.json")).exists())
            .then_some(())
            .ok_or_else(|| e.log())
    });
    e.daemon().kill9();
    // A truncated state, a state for another envelope (one recipient), a
    // state without its message, a temporary file of a write cut short.
    std::fs::write(q.join(format!("{}.json", ids[0])), b"{\"id\": \"").expect("truncate");
    let mut st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(q.join(format!("{}.json", ids[1]))).expect("read"))
            .expect("json");
    st["recipients"].as_array_mut().expect("rcpts").pop();
    std::fs::write(q.join(format!("{}.json", ids[1])), st.to_string()).expect("write");
    std::fs::write(q.join("0123456789abcdef.json"), b"{}").expect("orphan");
    std::fs::write(q.join(format!("{}.json.tmp.7.1", ids[2])), b"half").expect("tmp");
    let before = hop.sessions();
    e.restart();
    let list = e.queue();
    let corrupt: Vec<&serde_json::Value> =
        list.iter().filter(|m| m["corrupt"].is_string()).collect();
    assert_eq!(corrupt.len(), 2, "{list:#?}");
    for id in &ids[..2] {
        assert!(e.dir().join("spool/corrupt").join(id).exists());
        assert!(
            e.dir()
                .join("spool/corrupt")
                .join(format!("{id}.reason"))
                .exists()
        );
        assert!(!e.incoming().contains(id));
    }
    assert!(!q.join("0123456789abcdef.json").exists());
    assert!(!q.join(format!("{}.json.tmp.7.1", ids[2])).exists());
    assert!(e.log().contains("quarantined"), "{}", e.log());
    // Only the sound message is tried again: one session a retry.
    std::thread::sleep(Duration::from_secs(3));
    let sessions = hop.sessions() - before;
    assert!(
        (1..=4).contains(&sessions),
        "{sessions} sessions in 3 s: only the sound message, on its schedule"
    );
}

// ---------------------------------------------------------------------------
// 8. The destination limit counts sessions to a next hop

#[test]
fn twenty_domains_behind_one_smart_host_share_its_session_limit() {
    let hop = NextHop::start(Script {
        data_end_delay: Duration::from_millis(600),
        ..Script::default()
    });
    let e = edge(
        &outbound("all", &["*"], &[hop.host()], ""),
        "retry_schedule = [60]\nmax_concurrency = 50\nmax_per_destination = 2\n",
    );
    for i in 0..20 {
        send(
            e.port,
            "alice@fabrikam.com",
            &[&format!("user@d{i}.test")],
            &message("alice@fabrikam.com", "user@x.test", "many domains"),
        );
    }
    hop.wait_for("twenty messages", 40, |t| t.len() >= 20);
    assert!(
        hop.max_concurrent() <= 2,
        "{} sessions at once to one smart host",
        hop.max_concurrent()
    );
}

// ---------------------------------------------------------------------------
// 9. Caps per attempt and configurable time limits

#[test]
fn attempts_are_capped_in_addresses_sessions_and_time() {
    // Seven smart hosts nobody listens on: five addresses are tried.
    let closed: Vec<String> = (0..7)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let busy: Vec<NextHop> = (0..3)
        .map(|_| {
            NextHop::start(Script {
                greeting: "421 4.3.2 busy, try later".into(),
                ..Script::default()
            })
        })
        .collect();
    let mute = NextHop::start(Script {
        greeting_delay: Duration::from_secs(30),
        ..Script::default()
    });
    let out = [
        outbound("closed", &["contoso.com"], &closed, ""),
        outbound(
            "busy",
            &["fabrikam.com"],
            &busy.iter().map(NextHop::host).collect::<Vec<_>>(),
            "",
        ),
        outbound("mute", &["mute.test"], &[mute.host()], ""),
    ]
    .concat();
    let e = edge(
        &out,
        "retry_schedule = [3600]\nmax_addresses = 5\nmax_sessions = 2\n[queue.timeouts]\ngreeting = 1\n",
    );
    let started = Instant::now();
    let a = send(
        e.port,
        "x@mute.test",
        &["bob@contoso.com"],
        &message("x", "y", "closed"),
    );
    let b = send(
        e.port,
        "x@mute.test",
        &["alice@fabrikam.com"],
        &message("x", "y", "busy"),
    );
    let c = send(
        e.port,
        "x@contoso.com",
        &["z@mute.test"],
        &message("x", "y", "mute"),
    );
    let deferred = |id: &str| {
        e.queued(id)
            .is_some_and(|m| m["attempts"].as_u64().unwrap_or(0) >= 1)
    };
    wait_for("three deferred messages", 15, || {
        (deferred(&a) && deferred(&b) && deferred(&c))
            .then_some(())
            .ok_or_else(|| e.log())
    });
    // The mute host timed out after its 1 s, not after 5 minutes.
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(e.log().contains("timeout at greeting"), "{}", e.log());
    let log = e.log();
    let failed_for_a = log
        .lines()
        .filter(|l| l.contains("next hop failed") && l.contains(&a))
        .count();
    assert_eq!(failed_for_a, 5, "addresses tried for one attempt\n{log}");
    let sessions: usize = busy.iter().map(NextHop::sessions).sum();
    assert_eq!(sessions, 2, "sessions per attempt");
}

// ---------------------------------------------------------------------------
// 10. A refusing backup does not bounce a message its primary deferred

#[test]
fn a_5xx_greeting_from_the_backup_does_not_bounce() {
    let backup = NextHop::start(Script {
        greeting: "554 5.3.2 not accepting mail".into(),
        ..Script::default()
    });
    let senders = Sink::start(&[]);
    let primary = format!("127.0.0.1:{}", free_port());
    let out = [
        outbound(
            "to-contoso",
            &["contoso.com"],
            &[primary.clone(), backup.host()],
            "",
        ),
        outbound("to-fabrikam", &["fabrikam.com"], &[senders.host()], ""),
    ]
    .concat();
    let e = edge(&out, "retry_schedule = [3600]\n");
    let id = send(
        e.port,
        "alice@fabrikam.com",
        &["bob@contoso.com"],
        &message("alice@fabrikam.com", "bob@contoso.com", "keep trying"),
    );
    let m = wait_for("an attempt", 10, || {
        let m = e.queued(&id).ok_or("gone")?;
        if m["attempts"].as_u64().unwrap_or(0) >= 1 {
            Ok(m)
        } else {
            Err(m.to_string())
        }
    });
    let st = &m["recipients"][0][1];
    assert_eq!(st["state"], "pending", "deferred, not bounced: {m}");
    let err = st["last_error"].as_str().unwrap_or("");
    assert!(
        err.contains(&primary) && err.contains("554"),
        "both hosts named: {err}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(senders.dumps().is_empty(), "no DSN");
}

// ---------------------------------------------------------------------------
// 13. A large message to a slow reader, in bounded memory

#[test]
fn a_large_message_is_delivered_from_the_spool_in_bounded_memory() {
    let hop = NextHop::start(Script {
        read_rate: 5 * 1024 * 1024,
        ..Script::default()
    });
    let mut e = edge(
        &outbound("all", &["*"], &[hop.host()], ""),
        "retry_schedule = [60]\n",
    );
    let line = format!("{}\r\n", "y".repeat(98));
    let body = line.repeat(200_000); // 20 MB
    let before = e.daemon().rss_kib();
    let mut c = Client::greeted(e.port).expect("connect");
    c.submit(
        "alice@fabrikam.com",
        &["bob@contoso.com"],
        &data_of(&format!("Subject: big\r\n\r\n{body}")),
    )
    .expect("accepted");
    let peak = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(30);
    while hop.transactions().is_empty() && Instant::now() < deadline {
        let grew = e.daemon().rss_kib().saturating_sub(before) as usize;
        peak.fetch_max(grew, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(100));
    }
    let t = hop.transactions();
    assert_eq!(t.len(), 1, "delivered in time");
    assert!(t[0].data.len() > 20_000_000);
    let peak = peak.load(Ordering::Relaxed);
    assert!(peak < 16 * 1024, "RSS grew by {peak} KiB delivering 20 MB");
}

// ---------------------------------------------------------------------------
// 14. Client certificates are loaded once

#[test]
fn client_certificates_are_read_once_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_path_buf();
    let org = Ca::new("Contoso Test CA");
    let ca_file = org.write(&d.join("ca.pem"));
    let (cert, key) = Leaf::new(&["relay.contoso.com"], Some(&org), false).write(&d, "client");
    // The next hop: smtp-edge itself, wanting our certificate.
    let receiver_connectors = format!(
        "[[inbound_connectors]]\nname = \"partner\"\nrequire_tls = true\nclient_cert_names = [\"*.contoso.com\"]\nclient_cert_trust = \"{}\"\n",
        ca_file.display()
    );
    let receiver = Edge::start(Setup {
        connectors: &receiver_connectors,
        ..Setup::default()
    });
    let out = outbound(
        "to-receiver",
        &["contoso.com"],
        &[format!("127.0.0.1:{}", receiver.port)],
        &format!(
            "tls = \"encryption-only\"\nclient_certificate = \"{}\"\nclient_key = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    );
    let e = Edge::start_in(dir, setup(&out, "retry_schedule = [1]\n"));
    // A renewal would replace them; gone, the running daemon has them still.
    std::fs::remove_file(&cert).expect("rm cert");
    std::fs::remove_file(&key).expect("rm key");
    send(
        e.port,
        "alice@fabrikam.com",
        &["bob@contoso.com"],
        &message(
            "alice@fabrikam.com",
            "bob@contoso.com",
            "with my certificate",
        ),
    );
    let id = wait_for("the message at the receiver", 15, || {
        receiver.incoming().first().cloned().ok_or_else(|| e.log())
    });
    let m = receiver.message(&id);
    let tls = m.envelope.tls.expect("TLS");
    assert!(
        tls.client_cert
            .as_deref()
            .unwrap_or("")
            .contains("relay.contoso.com"),
        "{tls:?}"
    );
}

// ---------------------------------------------------------------------------
// kill -9 while bounces are written

#[test]
fn kill_9_while_bounces_are_written_loses_no_bounce() {
    const N: usize = 150;
    let rejecting = NextHop::start(Script {
        rcpt: RcptRule::All("550 5.1.1 no such user".into()),
        ..Script::default()
    });
    let senders = Sink::start(&[]);
    let out = [
        outbound("to-contoso", &["contoso.com"], &[rejecting.host()], ""),
        outbound("to-fabrikam", &["fabrikam.com"], &[senders.host()], ""),
    ]
    .concat();
    let mut e = edge(&out, "retry_schedule = [1, 2]\n");
    let acked: Arc<Mutex<Vec<usize>>> = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let port = e.port;
    let deadline = Instant::now() + Duration::from_secs(90);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (acked, next) = (acked.clone(), next.clone());
            std::thread::spawn(move || {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= N {
                        return;
                    }
                    let from = format!("sender{n}@fabrikam.com");
                    let content = message(&from, "nobody@contoso.com", &format!("doomed {n}"));
                    while Instant::now() < deadline {
                        let r = Client::greeted(port).and_then(|mut c| {
                            c.submit(&from, &["nobody@contoso.com"], &data_of(&content))
                        });
                        if r.is_ok() {
                            acked.lock().unwrap_or_else(|p| p.into_inner()).push(n);
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
        })
        .collect();
    // Kill while the bounces are being made and queued.
    for k in 1..=3 {
        wait_for("bounces under way", 60, || {
            let got = senders.dumps().len();
            (got >= k * N / 5)
                .then_some(())
                .ok_or(format!("{got} bounces"))
        });
        e.restart();
    }
    for c in clients {
        let _ = c.join();
    }
    let acked = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(acked.len(), N, "every message accepted (after retries)");
    // Every acknowledged message's sender hears of it: no bounce lost.
    let dumps = wait_for("a bounce for each message", 90, || {
        let d = senders.dumps();
        let mut told: Vec<usize> = d
            .iter()
            .filter_map(|x| {
                let (from, rcpts) = envelope(x);
                (from == "<>").then_some(())?;
                rcpts
                    .first()?
                    .trim_start_matches("<sender")
                    .split('@')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        told.sort();
        told.dedup();
        if told.len() >= N {
            Ok(d)
        } else {
            Err(format!("{} of {N} senders told", told.len()))
        }
    });
    e.wait_queue_empty(30);
    let duplicates = senders.dumps().len().max(dumps.len()) - N;
    eprintln!("kill -9 during bounces: {N} messages, {duplicates} duplicate bounces");
    assert!(duplicates <= 3 * 4 * 2, "{duplicates} duplicate bounces");
}

// ---------------------------------------------------------------------------
// 11. Domain validation without tls_domain checks the next hop's name

const DV_ZONE: &str = r#"$ORIGIN test.
$TTL 300
@               SOA   ns.test. hostmaster.test. 1 3600 600 86400 300
@               NS    ns.test.
ns              A     127.0.0.1
; Mail for fabrikam.test is hosted elsewhere, as EOP hosts many domains.
fabrikam        MX    10 mx.hosting.test.
mx.hosting      A     127.0.25.4
; The same host under a name its certificate does not carry.
other           MX    10 alias.hosting.test.
alias.hosting   A     127.0.25.4
"#;

#[test]
fn domain_validation_checks_the_next_hops_own_name() {
    let mx_addr: std::net::SocketAddr = "127.0.25.4:25".parse().expect("address");
    assert!(
        std::net::TcpListener::bind(mx_addr).is_ok(),
        "{mx_addr} is taken; the test needs it"
    );
    let nsd = smtp_edge_tests::nsd::Nsd::start(DV_ZONE);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_path_buf();
    let ca = Ca::new("Hosting Test CA");
    let ca_file = ca.write(&d.join("ca.pem"));
    // The next hop: smtp-edge on 127.0.25.4:25 with a certificate for its
    // own name only (not for fabrikam.test).
    let (cert, key) = Leaf::new(&["mx.hosting.test"], Some(&ca), false).write(&d, "mx");
    let rd = d.join("mx");
    std::fs::create_dir_all(&rd).expect("dir");
    std::fs::write(
        rd.join("c.toml"),
        format!(
            r#"[daemon]
state_dir = "{r}/state"
control_socket = "{r}/control.sock"
[filter]
enabled = false
[smtp]
enabled = true
listen = ["{mx_addr}"]
hostname = "mx.hosting.test"
accepted_domains = ["fabrikam.test"]
spool_dir = "{r}/spool"
[smtp.tls]
certificate = "{c}"
key = "{k}"
[[inbound_connectors]]
name = "internet"
"#,
            r = rd.display(),
            c = cert.display(),
            k = key.display()
        ),
    )
    .expect("config");
    let _mx = smtp_edge_tests::Daemon::start(
        None,
        &rd.join("c.toml"),
        &rd.join("control.sock"),
        &rd.join("log"),
    );
    let out = format!(
        "[[outbound_connectors]]\nname = \"internet\"\nrecipient_domains = [\"*\"]\nuse_mx = true\ntls = \"domain-validation\"\ntls_trust = \"{}\"\n",
        ca_file.display()
    );
    let tail = format!(
        "[dns]\nnameservers = [\"{}\"]\ntimeout_seconds = 2\n",
        nsd.addr
    );
    let e = Edge::start_in(
        dir,
        Setup {
            tail: &tail,
            ..setup(&out, "retry_schedule = [60]\n")
        },
    );
    send(
        e.port,
        "alice@contoso.com",
        &["bob@fabrikam.test"],
        &message("alice@contoso.com", "bob@fabrikam.test", "verified"),
    );
    let incoming = rd.join("spool/incoming");
    let id = wait_for("the message at the MX host", 15, || {
        std::fs::read_dir(&incoming)
            .ok()
            .and_then(|mut r| r.next())
            .and_then(|f| f.ok())
            .map(|f| f.file_name().to_string_lossy().into_owned())
            .ok_or_else(|| e.log())
    });
    let m = smtp_edge::queue::spool::read_file(&incoming.join(&id)).expect("spooled");
    assert!(m.envelope.tls.is_some(), "over TLS");
    e.wait_queue_empty(10);
    // Through a name the certificate does not carry: refused, kept.
    let id = send(
        e.port,
        "alice@contoso.com",
        &["carol@other.test"],
        &message("alice@contoso.com", "carol@other.test", "not verified"),
    );
    let err = wait_for("the name check to fail", 15, || {
        let m = e.queued(&id).ok_or("gone")?;
        let err = m["recipients"][0][1]["last_error"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if err.contains("certificate") {
            Ok(err)
        } else {
            Err(m.to_string())
        }
    });
    assert!(err.contains("name does not match"), "{err}");
}
