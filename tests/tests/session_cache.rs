//! Sessions kept open between deliveries to the same next hop (`[queue]
//! session_cache_time`): message after message on one session, a session
//! the server closed replaced without a deferral, none kept after a 421,
//! after a stray reply or when RSET is refused, none kept when it is turned
//! off, kept sessions closed once they waited their time, and kept
//! sessions to a second smart host while the first is down, within the
//! per-destination limit. Next hops are scripted servers on loopback; every
//! wait is bounded.

use std::net::SocketAddr;
use std::time::Duration;

use smtp_edge_tests::edge::{Edge, LOOPBACK_RELAY, Setup, outbound};
use smtp_edge_tests::nexthop::{NextHop, RcptRule, Script};
use smtp_edge_tests::ports::free_port;
use smtp_edge_tests::scrape::{sample, scrape};
use smtp_edge_tests::smtp::{message, send, wait_for};

/// A relay for loopback clients with every domain going to `hop`, and
/// these `[queue]` keys.
fn relay(hop: &NextHop, queue: &str) -> Edge {
    relay_via(&[hop.host()], queue, "")
}

/// A relay for loopback clients with every domain going to the smart hosts
/// `hops` in order, these `[queue]` keys and further sections `tail`.
fn relay_via(hops: &[String], queue: &str, tail: &str) -> Edge {
    Edge::start(Setup {
        accepted: "\"contoso.com\", \"fabrikam.com\"",
        connectors: LOOPBACK_RELAY,
        outbound: &outbound("all", &["*"], hops, ""),
        queue,
        tail,
        ..Setup::default()
    })
}

/// Queues one message from alice@ to bob@ with this subject.
fn send_one(e: &Edge, subject: &str) -> String {
    send(
        e.port,
        "alice@fabrikam.com",
        &["bob@contoso.test"],
        &message("alice@fabrikam.com", "bob@contoso.test", subject),
    )
}

/// Sends `n` messages one after the other, each once the one before it has
/// reached `hop` (so each delivery finds the session the last one left).
fn one_by_one(e: &Edge, hop: &NextHop, n: usize) {
    let before = hop.transactions().len();
    for i in 0..n {
        send_one(e, &format!("number {i}"));
        hop.wait_for("the message at the next hop", 10, |t| t.len() > before + i);
    }
}

#[test]
fn one_session_carries_message_after_message_then_quits() {
    let hop = NextHop::start(Script::default());
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let tail = format!("[metrics]\nlisten = \"{metrics}\"\n");
    let e = relay_via(
        &[hop.host()],
        "retry_schedule = [60]\nsession_cache_time = 2\n",
        &tail,
    );
    one_by_one(&e, &hop, 10);
    let body = scrape(metrics);
    let kind = |k: &str| {
        sample(
            &body,
            "smtp_edge_delivery_sessions_total",
            &format!("connector=\"all\",session=\"{k}\""),
        )
    };
    assert_eq!(
        (kind("new"), kind("reused")),
        (Some(1.0), Some(9.0)),
        "{body}"
    );
    let t = hop.transactions();
    assert_eq!(t.len(), 10, "each message exactly once");
    assert_eq!(hop.mails().len(), 10, "no transaction repeated");
    assert_eq!(hop.sessions(), 1, "ten messages, one session");
    // Nobody else comes: the kept session gets QUIT after its 2 s.
    wait_for("the kept session to be closed", 10, || {
        if hop.open_now() == 0 {
            Ok(())
        } else {
            Err(format!("{} open", hop.open_now()))
        }
    });
    e.wait_queue_empty(5);
}

#[test]
fn a_session_the_server_closed_is_replaced_at_once() {
    // The server hangs up on a session idle for 300 ms (with a 421), while
    // the relay keeps sessions 5 s: the next message finds a dead session.
    let hop = NextHop::start(Script {
        idle_close: Some(Duration::from_millis(300)),
        ..Script::default()
    });
    let e = relay(&hop, "retry_schedule = [60]\nsession_cache_time = 5\n");
    one_by_one(&e, &hop, 1);
    std::thread::sleep(Duration::from_millis(1_000));
    // A deferral would wait 60 s for its retry: it must go now.
    one_by_one(&e, &hop, 1);
    assert_eq!(hop.transactions().len(), 2);
    assert_eq!(hop.mails().len(), 2, "no transaction repeated");
    assert_eq!(hop.sessions(), 2);
    e.wait_queue_empty(5);
}

#[test]
fn no_session_is_kept_after_a_421() {
    let hop = NextHop::start(Script {
        data_end: "421 4.3.2 going down".into(),
        ..Script::default()
    });
    let e = relay(&hop, "retry_schedule = [60]\nsession_cache_time = 30\n");
    let id = send_one(&e, "after a 421");
    wait_for("the deferral", 10, || match e.queued(&id) {
        Some(q) if q["attempts"].as_u64() >= Some(1) => Ok(()),
        other => Err(format!("{other:?}")),
    });
    hop.set(|s| s.data_end = "250 2.0.0 ok".into());
    e.queue_cmd(&["flush"]);
    hop.wait_for("the message after the flush", 10, |t| t.len() == 1);
    assert_eq!(
        hop.sessions(),
        2,
        "the session that was told 421 must not carry the retry"
    );
}

#[test]
fn session_cache_time_0_gives_each_delivery_its_own_session() {
    let hop = NextHop::start(Script::default());
    let e = relay(&hop, "retry_schedule = [60]\nsession_cache_time = 0\n");
    one_by_one(&e, &hop, 3);
    assert_eq!(hop.sessions(), 3);
    e.wait_queue_empty(5);
}

#[test]
fn a_session_with_a_reply_left_unread_is_not_reused() {
    // Two replies to each final dot: a session reused after that would read
    // every later reply one step behind (RSET would take the stray 250, a
    // recipient the reply meant for another).
    let hop = NextHop::start(Script {
        data_end_extra: Some("250 2.0.0 and again".into()),
        rcpt: RcptRule::ByAddress {
            replies: vec![(
                "nobody@contoso.test".into(),
                "550 5.1.1 no such user".into(),
            )],
            default: "250 2.1.5 ok".into(),
        },
        ..Script::default()
    });
    let e = relay(&hop, "retry_schedule = [60]\nsession_cache_time = 30\n");
    one_by_one(&e, &hop, 1);
    send(
        e.port,
        "alice@fabrikam.com",
        &["bob@contoso.test", "nobody@contoso.test"],
        &message("alice@fabrikam.com", "bob@contoso.test", "the second"),
    );
    let t = hop.wait_for("the second message and the bounce", 10, |t| t.len() >= 3);
    let second: Vec<_> = t
        .iter()
        .filter(|x| x.mail_from == "alice@fabrikam.com")
        .collect();
    assert_eq!(second.len(), 2, "{t:?}");
    assert_eq!(second[1].rcpts, vec!["bob@contoso.test".to_string()]);
    let bounce: Vec<_> = t.iter().filter(|x| x.mail_from.is_empty()).collect();
    assert_eq!(bounce.len(), 1, "one DSN, for nobody@ only");
    let dsn = String::from_utf8_lossy(&bounce[0].data);
    assert!(dsn.contains("nobody@contoso.test"), "{dsn}");
    assert!(!dsn.contains("Final-Recipient: rfc822;bob@"), "{dsn}");
}

#[test]
fn a_refused_rset_means_a_new_connection() {
    let hop = NextHop::start(Script {
        rset: "502 5.5.1 RSET not here".into(),
        ..Script::default()
    });
    let e = relay(&hop, "retry_schedule = [60]\nsession_cache_time = 30\n");
    one_by_one(&e, &hop, 3);
    assert_eq!(hop.mails().len(), 3, "no transaction repeated");
    assert_eq!(
        hop.sessions(),
        3,
        "a session that refused RSET carried a message"
    );
    e.wait_queue_empty(5);
}

#[test]
fn sessions_to_the_second_smart_host_are_kept_while_the_first_is_down() {
    // Nothing listens at the first smart host: every attempt tries it, then
    // the second. The sessions kept to the second must survive that, and
    // the connections open to it stay within max_per_destination.
    let down = format!("127.0.0.1:{}", free_port());
    let hop = NextHop::start(Script {
        data_end_delay: Duration::from_millis(100),
        ..Script::default()
    });
    let e = relay_via(
        &[down, hop.host()],
        "retry_schedule = [60]\nsession_cache_time = 5\nmax_per_destination = 2\n",
        "",
    );
    for i in 0..12 {
        send_one(&e, &format!("failover {i}"));
    }
    hop.wait_for("twelve messages", 20, |t| t.len() >= 12);
    assert_eq!(hop.mails().len(), 12, "no transaction repeated");
    assert!(
        hop.max_concurrent() <= 2,
        "{} connections at once to one destination with max_per_destination = 2",
        hop.max_concurrent()
    );
    assert!(
        hop.sessions() <= 4,
        "{} sessions for 12 messages: kept sessions to the second host were closed",
        hop.sessions()
    );
    e.wait_queue_empty(5);
}
