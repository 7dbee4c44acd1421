//! Scraping smtp-edge's `/metrics` endpoint and reading samples from it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// GET /metrics from `addr`: the body (panics on another status).
pub fn scrape(addr: SocketAddr) -> String {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\n\r\n")
        .expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    body.to_string()
}

/// The value of the sample `name{labels}` (labels as written, in order,
/// e.g. `connector="loopback",outcome="quit"`; empty for none).
pub fn sample(body: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

/// The sum of every sample of `name` whose labels contain `contains`.
pub fn sum(body: &str, name: &str, contains: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            let (n, labels) = k.split_once('{').unwrap_or((k, ""));
            (n == name && labels.contains(contains))
                .then(|| v.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}
