//! The whole MTA end to end through the daemon: smtp-edge receives on a
//! loopback port, its queue routes by outbound connector and delivers to real
//! next hops on loopback (Postfix's smtp-sink, a scripted Rust server, MX
//! hosts found through NSD serving a private zone with loopback addresses).
//!
//! Each test runs its own daemon (`[filter] enabled = false`) with its own
//! directory, spool, control socket and ports, and a short retry schedule so
//! retries happen within seconds. Every wait is bounded; every process is
//! killed on drop.

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smtp_edge_tests::edge::{Edge, LOOPBACK_RELAY, Setup as EdgeSetup, outbound};
use smtp_edge_tests::nexthop::{NextHop, RcptRule, Script};
use smtp_edge_tests::nsd::Nsd;
use smtp_edge_tests::ports::free_port;
use smtp_edge_tests::sink::{Sink, envelope};
use smtp_edge_tests::smtp::{Client, data_of, message, send, unfold, wait_for};

/// The default `[queue]`: retries after 1 s, then every 2 s.
const QUEUE: &str = "retry_schedule = [1, 2]\n";

// ---------------------------------------------------------------------------
// The daemon under test and next hops

/// A daemon that relays for its loopback clients, with the queue running.
fn relay(setup: Setup) -> Edge {
    Edge::start(EdgeSetup {
        smtp: setup.smtp,
        accepted: "\"contoso.com\", \"fabrikam.com\"",
        connectors: LOOPBACK_RELAY,
        outbound: setup.outbound,
        queue: setup.queue,
        tail: setup.tail,
        ..EdgeSetup::default()
    })
}

/// What differs between the tests' daemons.
struct Setup<'a> {
    /// Extra `[smtp]` keys.
    smtp: &'a str,
    /// The `[[outbound_connectors]]` tables.
    outbound: &'a str,
    /// The `[queue]` keys.
    queue: &'a str,
    /// Further sections (`[dns]`).
    tail: &'a str,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup {
            smtp: "",
            outbound: "",
            queue: QUEUE,
            tail: "",
        }
    }
}

/// An outbound connector table.
fn connector(name: &str, domains: &[&str], hops: &[String]) -> String {
    outbound(name, domains, hops, "")
}

/// The DSN checks common to every bounce: from MAILER-DAEMON with the null
/// envelope sender, to `to`, a multipart/report with a
/// message/delivery-status part; the delivery-status text (unfolded).
fn check_dsn(dump: &str, to: &str) -> String {
    let (from, rcpts) = envelope(dump);
    assert_eq!(from, "<>", "DSN with a null envelope sender:\n{dump}");
    assert_eq!(rcpts, [format!("<{to}>")], "{dump}");
    let text = unfold(dump);
    assert!(
        text.lines()
            .any(|l| l.starts_with("From: ") && l.contains("MAILER-DAEMON@edge.contoso.com")),
        "From MAILER-DAEMON:\n{dump}"
    );
    assert!(
        text.contains("multipart/report") && text.contains("report-type=delivery-status"),
        "{dump}"
    );
    assert!(text.contains("message/delivery-status"), "{dump}");
    text
}

// ---------------------------------------------------------------------------
// 1. Connector selection

/// Microsoft's worked example on the real path: one message to contoso.com,
/// sales.contoso.com and fabrikam.com is split three ways — the exact domain,
/// the `*.contoso.com` wildcard (subdomains only) and `accepted`.
#[test]
fn connector_selection_splits_one_message_three_ways() {
    let (accepted, exact, wildcard) = (Sink::start(&[]), Sink::start(&[]), Sink::start(&[]));
    let outbound = [
        connector("to-accepted", &["accepted"], &[accepted.host()]),
        connector("to-contoso", &["contoso.com"], &[exact.host()]),
        connector(
            "to-contoso-subdomains",
            &["*.contoso.com"],
            &[wildcard.host()],
        ),
    ]
    .concat();
    let edge = relay(Setup {
        outbound: &outbound,
        ..Setup::default()
    });
    let rcpts = [
        "bob@contoso.com",
        "carol@sales.contoso.com",
        "dave@fabrikam.com",
    ];
    send(
        edge.port,
        "alice@fabrikam.com",
        &rcpts,
        &message("alice@fabrikam.com", "team", "connector selection"),
    );
    for (sink, want) in [
        (&exact, "bob@contoso.com"),
        (&wildcard, "carol@sales.contoso.com"),
        (&accepted, "dave@fabrikam.com"),
    ] {
        let d = sink.wait(1, 15);
        assert_eq!(d.len(), 1, "{want}: {d:#?}");
        let (from, got) = envelope(&d[0]);
        assert_eq!(from, "<alice@fabrikam.com>");
        assert_eq!(got, [format!("<{want}>")], "{}", edge.log());
        assert!(d[0].contains("Subject: connector selection"));
    }
    edge.wait_queue_empty(10);
}

// ---------------------------------------------------------------------------
// 2. Failover

/// The first smart host refuses connections: the second one gets the message
/// in the same attempt.
#[test]
fn failover_to_the_second_smart_host() {
    let sink = Sink::start(&[]);
    let closed = format!("127.0.0.1:{}", free_port());
    let edge = relay(Setup {
        outbound: &connector(
            "to-contoso",
            &["contoso.com"],
            &[closed.clone(), sink.host()],
        ),
        // No quick retry: delivery must happen in the first attempt.
        queue: "retry_schedule = [60]\n",
        ..Setup::default()
    });
    send(
        edge.port,
        "alice@fabrikam.com",
        &["bob@contoso.com"],
        &message("alice@fabrikam.com", "bob@contoso.com", "failover"),
    );
    let d = sink.wait(1, 10);
    assert_eq!(d.len(), 1);
    assert_eq!(envelope(&d[0]).1, ["<bob@contoso.com>"]);
    edge.wait_queue_empty(5);
    let logs = edge.log();
    assert!(
        logs.contains("next hop failed") && logs.contains(&closed),
        "the closed port was tried first:\n{logs}"
    );
}

// ---------------------------------------------------------------------------
// 3. Outage

/// The next hop is down: five messages wait in the queue with the connection
/// error, and all go out once it comes back.
#[test]
fn outage_defers_then_delivers_everything() {
    let port = free_port();
    let edge = relay(Setup {
        outbound: &connector(
            "to-contoso",
            &["contoso.com"],
            &[format!("127.0.0.1:{port}")],
        ),
        ..Setup::default()
    });
    let ids: HashSet<String> = (0..5)
        .map(|i| {
            send(
                edge.port,
                "alice@fabrikam.com",
                &[&format!("user{i}@contoso.com")],
                &message(
                    "alice@fabrikam.com",
                    "user@contoso.com",
                    &format!("outage {i}"),
                ),
            )
        })
        .collect();
    assert_eq!(ids.len(), 5);
    let q = wait_for("5 deferred messages", 10, || {
        let q = edge.queue();
        let deferred = q
            .iter()
            .filter(|m| {
                m["attempts"].as_u64().unwrap_or(0) >= 1
                    && m["recipients"][0][1]["state"] == "pending"
                    && m["recipients"][0][1]["last_error"].is_string()
            })
            .count();
        if deferred == 5 {
            Ok(q)
        } else {
            Err(format!("{q:#?}"))
        }
    });
    let listed: HashSet<String> = q
        .iter()
        .map(|m| m["id"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(listed, ids);
    for m in &q {
        let r = &m["recipients"][0][1];
        let err = r["last_error"].as_str().unwrap_or("").to_ascii_lowercase();
        assert!(
            err.contains(&format!("cannot connect to 127.0.0.1:{port}")) && err.contains("refused"),
            "the connection error is shown: {m:#}"
        );
        assert_eq!(r["status"][0], 4, "{m:#}");
    }
    let sink = Sink::start_at(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), &[]);
    let d = sink.wait(5, 15);
    assert_eq!(d.len(), 5, "each message exactly once");
    let rcpts: HashSet<String> = d.iter().flat_map(|m| envelope(m).1).collect();
    assert_eq!(rcpts.len(), 5, "{rcpts:?}");
    edge.wait_queue_empty(5);
}

// ---------------------------------------------------------------------------
// 4. Permanent failure

/// The next hop refuses the recipient for good: the sender (whose domain has
/// its own connector) gets a DSN with the remote reply.
#[test]
fn permanent_failure_bounces_to_the_sender() {
    let rejecting = NextHop::start(Script {
        rcpt: RcptRule::All("550 5.1.1 <nobody@contoso.com>: no such user".into()),
        ..Script::default()
    });
    let senders = Sink::start(&[]);
    let outbound = [
        connector("to-contoso", &["contoso.com"], &[rejecting.host()]),
        connector("to-fabrikam", &["fabrikam.com"], &[senders.host()]),
    ]
    .concat();
    let edge = relay(Setup {
        outbound: &outbound,
        ..Setup::default()
    });
    let id = send(
        edge.port,
        "alice@fabrikam.com",
        &["nobody@contoso.com"],
        &message("alice@fabrikam.com", "nobody@contoso.com", "doomed"),
    );
    let d = senders.wait(1, 15);
    assert_eq!(d.len(), 1, "one DSN: {d:#?}");
    let text = check_dsn(&d[0], "alice@fabrikam.com");
    for want in [
        "Final-Recipient: rfc822;nobody@contoso.com",
        "Action: failed",
        "Status: 5.1.1",
        "no such user",
        "Subject: doomed",
    ] {
        assert!(text.contains(want), "DSN lacks {want:?}:\n{}", d[0]);
    }
    assert!(
        rejecting
            .rcpts()
            .iter()
            .any(|(a, code)| a == "nobody@contoso.com" && *code == 550),
        "{:?}",
        rejecting.rcpts()
    );
    assert!(
        rejecting
            .mails()
            .iter()
            .any(|m| m.eq_ignore_ascii_case("alice@fabrikam.com")),
        "{:?}",
        rejecting.mails()
    );
    assert!(edge.queued(&id).is_none());
    edge.wait_queue_empty(5);
}

// ---------------------------------------------------------------------------
// 5. MX routing through a real DNS server

/// A private zone whose MX hosts are loopback addresses (only here: the
/// documentation ranges cannot carry loopback traffic).
const MX_ZONE: &str = r#"$ORIGIN test.
$TTL 300
@               SOA   ns.test. hostmaster.test. 1 3600 600 86400 300
@               NS    ns.test.
ns              A     127.0.0.1

; The preferred MX host listens nowhere, the next one runs smtp-sink.
mail            MX    5  down.mail.test.
mail            MX    10 mx.mail.test.
down.mail       A     127.0.25.3
mx.mail         A     127.0.25.2

; RFC 7505 null MX.
nullmx          MX    0 .
"#;

/// MX routing with NSD on loopback: the preferred MX host is down, the next
/// one (127.0.25.2:25) gets the message; a null MX domain bounces at once
/// with 5.1.10.
#[test]
fn mx_routing_and_null_mx() {
    let mx_addr: SocketAddr = "127.0.25.2:25".parse().expect("address");
    if TcpListener::bind(mx_addr).is_err() {
        panic!("{mx_addr} is taken; the MX test needs it");
    }
    let nsd = Nsd::start(MX_ZONE);
    let mx = Sink::start_at(mx_addr, &[]);
    let senders = Sink::start(&[]);
    let outbound = format!(
        "{}[[outbound_connectors]]\nname = \"internet\"\nrecipient_domains = [\"*\"]\nuse_mx = true\ntls = \"opportunistic\"\n",
        connector("to-fabrikam", &["fabrikam.com"], &[senders.host()])
    );
    let tail = format!(
        "[dns]\nnameservers = [\"{}\"]\ntimeout_seconds = 2\n",
        nsd.addr
    );
    let edge = relay(Setup {
        outbound: &outbound,
        tail: &tail,
        ..Setup::default()
    });
    let started = Instant::now();
    send(
        edge.port,
        "alice@fabrikam.com",
        &["bob@mail.test", "carol@nullmx.test"],
        &message("alice@fabrikam.com", "bob@mail.test", "by MX"),
    );
    let d = mx.wait(1, 15);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(
        envelope(&d[0]),
        (
            "<alice@fabrikam.com>".to_string(),
            vec!["<bob@mail.test>".to_string()]
        )
    );
    let b = senders.wait(1, 15);
    assert_eq!(b.len(), 1, "one DSN: {b:#?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the null MX bounce is immediate"
    );
    let text = check_dsn(&b[0], "alice@fabrikam.com");
    for want in [
        "Final-Recipient: rfc822;carol@nullmx.test",
        "Action: failed",
        "Status: 5.1.10",
    ] {
        assert!(text.contains(want), "DSN lacks {want:?}:\n{}", b[0]);
    }
    assert!(
        !text.contains("Final-Recipient: rfc822;bob@mail.test"),
        "{}",
        b[0]
    );
    edge.wait_queue_empty(5);
    let logs = edge.log();
    assert!(
        logs.contains("127.0.25.3"),
        "the preferred (down) MX host was tried first:\n{logs}"
    );
}

// ---------------------------------------------------------------------------
// 6. Queue commands

/// hold, flush, release, bounce and delete through the CLI on deferred
/// messages (the next hop is down; retries every 30 s, so only a flush makes
/// an attempt happen within the test).
#[test]
fn hold_release_flush_bounce_delete() {
    let port = free_port();
    let senders = Sink::start(&[]);
    let outbound = [
        connector(
            "to-contoso",
            &["contoso.com"],
            &[format!("127.0.0.1:{port}")],
        ),
        connector("to-fabrikam", &["fabrikam.com"], &[senders.host()]),
    ]
    .concat();
    let edge = relay(Setup {
        outbound: &outbound,
        queue: "retry_schedule = [30]\n",
        ..Setup::default()
    });
    let ids: Vec<String> = ["held", "bounced", "deleted"]
        .iter()
        .map(|s| {
            send(
                edge.port,
                "alice@fabrikam.com",
                &[&format!("{s}@contoso.com")],
                &message("alice@fabrikam.com", "x@contoso.com", s),
            )
        })
        .collect();
    let (a, b, c) = (&ids[0], &ids[1], &ids[2]);
    let attempts = |id: &str| {
        edge.queued(id)
            .and_then(|m| m["attempts"].as_u64())
            .unwrap_or(0)
    };
    wait_for("a first attempt of each", 10, || {
        let q = edge.queue();
        if q.len() == 3 && q.iter().all(|m| m["attempts"].as_u64() >= Some(1)) {
            Ok(())
        } else {
            Err(format!("{q:#?}"))
        }
    });

    // hold: even a flush does not make it go.
    edge.queue_cmd(&["hold", a]);
    let before = attempts(a);
    edge.queue_cmd(&["flush", a]);
    std::thread::sleep(Duration::from_millis(2500));
    let m = edge.queued(a).expect("held message listed");
    assert_eq!(m["held"], true, "{m:#}");
    assert_eq!(attempts(a), before, "a held message is not tried: {m:#}");

    // release + flush: tried again at once.
    edge.queue_cmd(&["release", a]);
    edge.queue_cmd(&["flush", a]);
    wait_for("a retry after release + flush", 10, || {
        let n = attempts(a);
        if n > before {
            Ok(())
        } else {
            Err(format!("attempts {n}"))
        }
    });
    assert_eq!(edge.queued(a).expect("listed")["held"], false);

    // bounce: the sender gets a DSN, the message leaves the queue.
    edge.queue_cmd(&["bounce", b]);
    let d = senders.wait(1, 10);
    let text = check_dsn(&d[0], "alice@fabrikam.com");
    assert!(
        text.contains("Final-Recipient: rfc822;bounced@contoso.com")
            && text.contains("Action: failed"),
        "{}",
        d[0]
    );
    wait_for("the bounced message gone", 10, || {
        edge.queued(b).map_or(Ok(()), |m| Err(format!("{m:#}")))
    });

    // delete: gone, and nobody is told.
    edge.queue_cmd(&["delete", c]);
    assert!(edge.queued(c).is_none());
    assert!(
        edge.cli(&["queue", "show", c]).is_err(),
        "show of a deleted message"
    );

    // The next hop comes back; a flush delivers the held-then-released one.
    let sink = Sink::start_at(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), &[]);
    edge.queue_cmd(&["flush"]);
    let got = sink.wait(1, 10);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(envelope(&got[0]).1, ["<held@contoso.com>"]);
    edge.wait_queue_empty(10);
    let dsns = senders.dumps();
    assert_eq!(dsns.len(), 1, "only the bounce made a DSN: {dsns:#?}");
}

// ---------------------------------------------------------------------------
// 7. Crashes under load

/// 1,000 messages from 5 concurrent senders while the daemon is killed with
/// SIGKILL four times and restarted: every message that got 250 reaches
/// the next hop at least once.
#[test]
fn crash_under_load_loses_nothing() {
    const TOTAL: usize = 1000;
    let sink = Sink::start(&[]);
    let mut edge = relay(Setup {
        outbound: &connector("to-contoso", &["contoso.com"], &[sink.host()]),
        ..Setup::default()
    });
    let port = edge.port;
    let next = Arc::new(AtomicUsize::new(0));
    let acked: Arc<Mutex<BTreeMap<usize, String>>> = Arc::new(Mutex::new(BTreeMap::new()));
    let deadline = Instant::now() + Duration::from_secs(90);
    let senders: Vec<_> = (0..5)
        .map(|_| {
            let (next, acked) = (next.clone(), acked.clone());
            std::thread::spawn(move || {
                loop {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if seq >= TOTAL {
                        return;
                    }
                    let content = format!(
                        "From: alice@fabrikam.com\r\nTo: bob@contoso.com\r\nSubject: load {seq}\r\nX-Test-Seq: {seq}\r\n\r\nmessage {seq}\r\n"
                    );
                    // Until it gets 250 (the daemon may be down for a moment).
                    while Instant::now() < deadline {
                        let r = Client::greeted(port).and_then(|mut c| {
                            let id = c.submit(
                                "alice@fabrikam.com",
                                &["bob@contoso.com"],
                                &data_of(&content),
                            )?;
                            let _ = c.try_cmd("QUIT", 221);
                            Ok(id)
                        });
                        match r {
                            Ok(id) => {
                                acked.lock().unwrap().insert(seq, id);
                                break;
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(50)),
                        }
                    }
                }
            })
        })
        .collect();
    // Four crashes while the messages come in.
    for at in [150, 400, 650, 850] {
        wait_for(&format!("{at} messages acknowledged"), 30, || {
            let n = acked.lock().unwrap().len();
            if n >= at { Ok(()) } else { Err(format!("{n}")) }
        });
        edge.restart();
    }
    for s in senders {
        s.join().expect("sender thread");
    }
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), TOTAL, "every message eventually got 250");
    let ids: HashSet<&String> = acked.values().collect();
    assert_eq!(ids.len(), TOTAL, "distinct queue ids");

    let seqs_at_sink = |dumps: &[String]| -> Vec<usize> {
        dumps
            .iter()
            .filter_map(|d| {
                d.lines()
                    .find_map(|l| l.strip_prefix("X-Test-Seq: "))
                    .and_then(|v| v.trim().parse().ok())
            })
            .collect()
    };
    let dumps = wait_for("every acknowledged message at the sink", 30, || {
        let dumps = sink.dumps();
        let seen: HashSet<usize> = seqs_at_sink(&dumps).into_iter().collect();
        let missing: Vec<usize> = acked
            .keys()
            .filter(|s| !seen.contains(s))
            .copied()
            .collect();
        if missing.is_empty() {
            Ok(dumps)
        } else {
            Err(format!("{} missing: {missing:?}", missing.len()))
        }
    });
    edge.wait_queue_empty(20);
    let dumps = {
        // Let any last delivery land before counting duplicates.
        std::thread::sleep(Duration::from_millis(300));
        let later = sink.dumps();
        if later.len() >= dumps.len() {
            later
        } else {
            dumps
        }
    };
    let seqs = seqs_at_sink(&dumps);
    let distinct: HashSet<usize> = seqs.iter().copied().collect();
    println!(
        "crash test: {} acknowledged, {} messages at the sink, {} distinct, {} duplicate(s)",
        acked.len(),
        seqs.len(),
        distinct.len(),
        seqs.len() - distinct.len()
    );
}

// ---------------------------------------------------------------------------
// 8. Outbound smuggling

/// With `bare_line_endings = "normalize"` the receiving side accepts
/// `\r\n.\r\r\n`, lone CRs and a `\r\r\n.\r\n` end of data; what it relays
/// reaches Postfix's smtp-sink as exactly one message, with the would-be
/// smuggled commands inside its body.
#[test]
fn normalized_bare_line_ends_relay_as_one_message() {
    let sink = Sink::start(&[]);
    let edge = relay(Setup {
        smtp: "bare_line_endings = \"normalize\"",
        outbound: &connector("to-contoso", &["contoso.com"], &[sink.host()]),
        ..Setup::default()
    });
    let data: &[u8] =
        b"From: alice@fabrikam.com\r\nTo: bob@contoso.com\r\nSubject: smuggling\r\n\r\n\
before\r\n\
.\r\r\n\
MAIL FROM:<evil1@fabrikam.com>\r\n\
RCPT TO:<victim1@contoso.com>\r\n\
DATA\r\n\
Subject: smuggled one\r\n\
\r\n\
lone\rCR\rin the middle\r\n\
.\rMAIL FROM:<evil2@fabrikam.com>\r\n\
RCPT TO:<victim2@contoso.com>\r\n\
DATA\r\n\
Subject: smuggled two\r\n\
\r\n\
last line\r\r\n.\r\n";
    let mut c = Client::greeted(edge.port).expect("connect");
    c.submit("alice@fabrikam.com", &["bob@contoso.com"], data)
        .expect("accepted with normalized line ends");
    let a = c.cmd("QUIT");
    assert_eq!(a.code, 221, "no further replies before QUIT's: {a:?}");
    let d = sink.wait(1, 10);
    edge.wait_queue_empty(10);
    std::thread::sleep(Duration::from_millis(500));
    let d = if sink.dumps().len() > d.len() {
        sink.dumps()
    } else {
        d
    };
    assert_eq!(d.len(), 1, "exactly one message at the next hop: {d:#?}");
    assert_eq!(envelope(&d[0]).1, ["<bob@contoso.com>"]);
    assert!(
        !d[0].contains('\r'),
        "lone CRs became line ends (smtp-sink writes LF):\n{:?}",
        d[0]
    );
    for want in [
        "smuggled one",
        "smuggled two",
        "victim1",
        "victim2",
        "last line",
    ] {
        assert!(d[0].contains(want), "{want:?} is body text:\n{}", d[0]);
    }
}
