//! Sessions kept open between deliveries to the same next hop (`[queue]
//! session_cache_time`): message after message on one session, a session
//! the server closed replaced without a deferral, none kept after a 421,
//! none kept when it is turned off, and kept sessions closed once they
//! waited their time. Next hops are scripted servers on loopback; every
//! wait is bounded.

use std::time::Duration;

use smtp_edge_tests::edge::{Edge, LOOPBACK_RELAY, Setup, outbound};
use smtp_edge_tests::nexthop::{NextHop, Script};
use smtp_edge_tests::smtp::{message, send, wait_for};

/// A relay for loopback clients with every domain going to `hop`, and
/// these `[queue]` keys.
fn relay(hop: &NextHop, queue: &str) -> Edge {
    Edge::start(Setup {
        accepted: "\"contoso.com\", \"fabrikam.com\"",
        connectors: LOOPBACK_RELAY,
        outbound: &outbound("all", &["*"], &[hop.host()], ""),
        queue,
        ..Setup::default()
    })
}

/// Sends `n` messages one after the other, each once the one before it has
/// reached `hop` (so each delivery finds the session the last one left).
fn one_by_one(e: &Edge, hop: &NextHop, n: usize) {
    let before = hop.transactions().len();
    for i in 0..n {
        send(
            e.port,
            "alice@fabrikam.com",
            &["bob@contoso.test"],
            &message(
                "alice@fabrikam.com",
                "bob@contoso.test",
                &format!("number {i}"),
            ),
        );
        hop.wait_for("the message at the next hop", 10, |t| t.len() > before + i);
    }
}

#[test]
fn one_session_carries_message_after_message_then_quits() {
    let hop = NextHop::start(Script::default());
    let e = relay(&hop, "retry_schedule = [60]\nsession_cache_time = 2\n");
    one_by_one(&e, &hop, 10);
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
    let id = send(
        e.port,
        "alice@fabrikam.com",
        &["bob@contoso.test"],
        &message("alice@fabrikam.com", "bob@contoso.test", "after a 421"),
    );
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
