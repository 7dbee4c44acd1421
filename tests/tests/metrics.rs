//! The Prometheus endpoint against known traffic: sessions by connector and
//! outcome, refusals by reason, TLS sessions, messages accepted, deliveries
//! by outcome, the queue's size, the ranges, the build; the endpoint moved
//! and refused by reloads. (The gate's counters: tests/tests/e2e.rs.)

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use smtp_edge_tests::edge::{Edge, Setup, V4, outbound};
use smtp_edge_tests::nexthop::{NextHop, RcptRule, Script};
use smtp_edge_tests::ports::free_port;
use smtp_edge_tests::scrape::{sample, scrape, sum};
use smtp_edge_tests::smtp::{Client, message, wait_for};
use smtp_edge_tests::tools::run_tool;

const CONNECTORS: &str = "[[inbound_connectors]]\nname = \"loopback\"\nsources = [\"127.0.0.1\"]\nrelay = true\n\n[[inbound_connectors]]\nname = \"internet\"\n";

#[test]
fn known_traffic_gives_known_values() {
    let a = NextHop::start(Script {
        rcpt: RcptRule::ByAddress {
            replies: vec![("later@example.net".into(), "450 4.2.0 try later".into())],
            default: "250 2.1.5 ok".into(),
        },
        ..Script::default()
    });
    let port = free_port();
    let out = outbound("out", &["*"], &[a.host()], "");
    let tail = format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n[ranges]\nauto_update = false\n");
    let edge = Edge::start(Setup {
        connectors: CONNECTORS,
        outbound: &out,
        tail: &tail,
        ..Setup::default()
    });
    let metrics: SocketAddr = ([127, 0, 0, 1], port).into();
    // What the harness's own probes left (Edge::start connects once): its
    // session is counted when the daemon sees it end, which may come after
    // the probe has moved on, so wait for it before taking the baseline.
    let before = wait_for("the harness's probe session to be counted", 10, || {
        let b = scrape(metrics);
        let probed = sum(
            &b,
            "smtp_edge_smtp_sessions_total",
            "connector=\"loopback\"",
        ) >= 1.0
            && sample(&b, "smtp_edge_smtp_connections_open", "") == Some(0.0);
        probed.then_some(b.clone()).ok_or(b)
    });
    let base = |name: &str, labels: &str| sample(&before, name, labels).unwrap_or(0.0);
    // Three messages delivered, one deferred.
    for i in 0..3 {
        let r = edge.send(
            "a@fabrikam.com",
            &["b@example.net"],
            &message("a@fabrikam.com", "b@example.net", &format!("m{i}")),
        );
        assert_eq!(r.code, 250, "{r:?}");
    }
    let r = edge.send(
        "a@fabrikam.com",
        &["later@example.net"],
        &message("a@fabrikam.com", "later@example.net", "later"),
    );
    assert_eq!(r.code, 250);
    // A relay attempt on the default connector.
    let mut c = Client::connect(
        edge.addr(V4),
        Some("127.0.0.2".parse::<IpAddr>().expect("ip")),
    )
    .expect("connect");
    c.answer();
    assert_eq!(c.cmd("EHLO relay.example").code, 250);
    assert_eq!(c.cmd("MAIL FROM:<x@example.org>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<victim@elsewhere.example>").code, 550);
    assert_eq!(c.cmd("QUIT").code, 221);
    // A STARTTLS session (counted apart: s_client may leave before 221).
    let t = run_tool(
        "openssl",
        &[
            "s_client",
            "-starttls",
            "smtp",
            "-crlf",
            "-connect",
            &format!("127.0.0.1:{}", edge.port),
            "-servername",
            "edge.contoso.com",
        ],
        b"QUIT\n",
    );
    assert!(t.all().contains("TLSv1.3"), "{}", t.all());
    // A client that goes away without QUIT.
    let mut c = Client::connect(edge.addr(V4), None).expect("connect");
    c.answer();
    drop(c);
    a.wait_for("three deliveries", 20, |t| t.len() >= 3);
    let body = wait_for("the counters", 10, || {
        let b = scrape(metrics);
        let settled = sum(
            &b,
            "smtp_edge_smtp_sessions_total",
            "connector=\"loopback\"",
        ) - sum(
            &before,
            "smtp_edge_smtp_sessions_total",
            "connector=\"loopback\"",
        ) == 6.0
            && sample(
                &b,
                "smtp_edge_deliveries_total",
                "connector=\"out\",outcome=\"deferred\"",
            )
            .is_some()
            && sample(&b, "smtp_edge_smtp_connections_open", "") == Some(0.0);
        settled.then_some(b.clone()).ok_or(b)
    });
    let get = |name: &str, labels: &str| {
        sample(&body, name, labels).unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{body}"))
    };
    let quit = get(
        "smtp_edge_smtp_sessions_total",
        "connector=\"loopback\",outcome=\"quit\"",
    ) - base(
        "smtp_edge_smtp_sessions_total",
        "connector=\"loopback\",outcome=\"quit\"",
    );
    let gone = get(
        "smtp_edge_smtp_sessions_total",
        "connector=\"loopback\",outcome=\"disconnected\"",
    ) - base(
        "smtp_edge_smtp_sessions_total",
        "connector=\"loopback\",outcome=\"disconnected\"",
    );
    assert!(
        (4.0..=5.0).contains(&quit) && quit + gone == 6.0,
        "quit {quit}, disconnected {gone}: {body}"
    );
    assert!(gone >= 1.0, "the client that left without QUIT: {body}");
    assert_eq!(
        get(
            "smtp_edge_smtp_sessions_total",
            "connector=\"internet\",outcome=\"quit\""
        ),
        1.0
    );
    assert_eq!(
        get("smtp_edge_smtp_refusals_total", "reason=\"relay_denied\""),
        1.0
    );
    assert_eq!(
        get("smtp_edge_smtp_tls_sessions_total", "version=\"TLSv1.3\""),
        1.0
    );
    assert_eq!(
        get(
            "smtp_edge_messages_accepted_total",
            "connector=\"loopback\""
        ),
        4.0
    );
    assert!(
        get(
            "smtp_edge_messages_accepted_bytes_total",
            "connector=\"loopback\""
        ) > 4.0 * 50.0
    );
    assert_eq!(
        get(
            "smtp_edge_deliveries_total",
            "connector=\"out\",outcome=\"delivered\""
        ),
        3.0
    );
    assert_eq!(
        get(
            "smtp_edge_deliveries_total",
            "connector=\"out\",outcome=\"deferred\""
        ),
        1.0
    );
    assert_eq!(get("smtp_edge_delivery_seconds_count", ""), 4.0);
    assert_eq!(get("smtp_edge_queue_messages", "state=\"scheduled\""), 1.0);
    assert_eq!(get("smtp_edge_queue_messages", "state=\"frozen\""), 0.0);
    assert_eq!(get("smtp_edge_ranges_prefixes", "state=\"in_force\""), 6.0);
    assert_eq!(get("smtp_edge_ranges_stale", ""), 0.0);
    assert!(get("smtp_edge_ranges_age_seconds", "") >= 0.0);
    assert_eq!(
        get(
            "smtp_edge_build_info",
            &format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))
        ),
        1.0
    );
    assert_eq!(
        sum(&body, "smtp_edge_smtp_refusals_total", ""),
        1.0,
        "only the relay attempt was refused"
    );
    // No addresses in labels.
    assert!(!body.contains("127.0.0."), "{body}");
    // `smtp-edge status` tells the same story.
    let st = edge.cli(&["status"]).expect("status");
    assert_eq!(st["queue"]["scheduled"], 1, "{st}");
    assert_eq!(st["metrics"], format!("http://127.0.0.1:{port}/metrics"));
    assert_eq!(st["smtp"]["inbound"][0]["name"], "loopback");
    let shown = String::from_utf8_lossy(
        &smtp_edge_tests::cli(
            None,
            &[
                "--config",
                edge.config_path().to_str().expect("path"),
                "status",
            ],
        )
        .stdout,
    )
    .into_owned();
    assert!(
        shown.contains("queue      1 scheduled") && shown.contains("metrics    http://127.0.0.1:"),
        "{shown}"
    );
}

#[test]
fn the_endpoint_moves_with_a_reload_and_a_bad_address_is_refused() {
    let (p1, p2) = (free_port(), free_port());
    let tail = format!("[metrics]\nlisten = \"127.0.0.1:{p1}\"\n");
    let edge = Edge::start(Setup {
        tail: &tail,
        ..Setup::default()
    });
    let at = |p: u16| -> SocketAddr { ([127, 0, 0, 1], p).into() };
    assert!(scrape(at(p1)).contains("smtp_edge_build_info"));
    let path = edge.config_path();
    let text = std::fs::read_to_string(&path).expect("config");
    std::fs::write(
        &path,
        text.replace(&format!("127.0.0.1:{p1}"), &format!("127.0.0.1:{p2}")),
    )
    .expect("write");
    edge.reload().expect("move");
    assert!(scrape(at(p2)).contains("smtp_edge_build_info"));
    wait_for("the old endpoint to close", 5, || {
        std::net::TcpStream::connect_timeout(&at(p1), Duration::from_secs(1))
            .err()
            .map(|_| ())
            .ok_or("still open".to_string())
    });
    let text = std::fs::read_to_string(&path).expect("config");
    std::fs::write(
        &path,
        text.replace(&format!("127.0.0.1:{p2}"), "localhost:9325"),
    )
    .expect("write");
    let e = edge.reload().expect_err("not an address");
    assert!(
        e.contains("metrics.listen `localhost:9325` is not an address:port"),
        "{e}"
    );
    assert!(
        scrape(at(p2)).contains("smtp_edge_build_info"),
        "still served"
    );
}

#[test]
fn mail_waiting_for_a_connector_is_counted() {
    // An inbound connector, no outbound connector: accepted mail stays in
    // the spool, and status and the queue metric say how much.
    let port = free_port();
    let tail = format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n[ranges]\nauto_update = false\n");
    let edge = Edge::start(Setup {
        connectors: CONNECTORS,
        tail: &tail,
        ..Setup::default()
    });
    let metrics: SocketAddr = ([127, 0, 0, 1], port).into();
    for i in 0..3 {
        let r = edge.send(
            "a@fabrikam.com",
            &["b@example.net"],
            &message("a@fabrikam.com", "b@example.net", &format!("w{i}")),
        );
        assert_eq!(r.code, 250, "{r:?}");
    }
    assert_eq!(edge.incoming().len(), 3);
    let body = scrape(metrics);
    assert_eq!(
        sample(
            &body,
            "smtp_edge_queue_messages",
            "state=\"waiting_for_connector\""
        ),
        Some(3.0),
        "{body}"
    );
    assert_eq!(sum(&body, "smtp_edge_queue_messages", ""), 3.0, "{body}");
    let st = edge.cli(&["status"]).expect("status");
    assert_eq!(st["queue_running"], false, "{st}");
    assert_eq!(st["queue"]["waiting_for_connector"], 3, "{st}");
    let shown = String::from_utf8_lossy(
        &smtp_edge_tests::cli(
            None,
            &[
                "--config",
                edge.config_path().to_str().expect("path"),
                "status",
            ],
        )
        .stdout,
    )
    .into_owned();
    assert!(
        shown.contains(
            "queue      not running: 3 message(s) waiting in the spool for an outbound connector"
        ),
        "{shown}"
    );
    assert!(
        shown.contains("WARNING    3 message(s) wait in the spool"),
        "{shown}"
    );
}

#[test]
fn idle_connections_do_not_starve_a_scrape() {
    let port = free_port();
    let tail = format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n[ranges]\nauto_update = false\n");
    let _edge = Edge::start(Setup {
        tail: &tail,
        ..Setup::default()
    });
    let metrics: SocketAddr = ([127, 0, 0, 1], port).into();
    // A hundred peers that connect and say nothing (one sends half a
    // request head), held open while scrapes come.
    let mut idle: Vec<std::net::TcpStream> = (0..100)
        .map(|_| {
            std::net::TcpStream::connect_timeout(&metrics, Duration::from_secs(5))
                .expect("idle connection")
        })
        .collect();
    std::io::Write::write_all(&mut idle[0], b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .expect("half a head");
    // Each scrape must be answered: `scrape` waits at most 5 s to connect
    // and 10 s for the answer, and panics otherwise.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let answered = (0..5)
            .filter(|_| scrape(metrics).contains("smtp_edge_build_info"))
            .count();
        let _ = tx.send(answered);
    });
    let answered = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("the scrapes did not finish: {e}"));
    assert_eq!(
        answered, 5,
        "scrapes answered with 100 idle connections open"
    );
    drop(idle);
}
