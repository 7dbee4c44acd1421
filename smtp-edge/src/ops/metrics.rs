//! Prometheus exposition: one registry (prefix `smtp_edge_`) each service
//! registers its metrics into, and the `/metrics` endpoint on
//! `[metrics] listen`.
//!
//! The endpoint is served by hyper (HTTP/1.1, one request per connection):
//! `GET /metrics` answers the registry in the OpenMetrics text format
//! (encoded with prometheus-client, the Prometheus organisation's Rust
//! client), `GET /` a pointer to it, other paths 404, other methods 405, a
//! request head over 8 KiB 431. Idle peers cannot keep a scrape out: no slot
//! is held while a peer says nothing, each connection has
//! [`Limits::header_timeout`] to send its request head and
//! [`Limits::connection_timeout`] in all, and at most
//! [`Limits::max_connections`] are open at once, a new one closing the
//! oldest.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE as CONTENT_TYPE_HEADER, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The longest request head read (hyper's smallest read buffer).
const MAX_HEAD: usize = 8192;

/// How the endpoint bounds its peers.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once; one more closes the oldest.
    pub max_connections: usize,
    /// The longest wait for a complete request head from the moment a
    /// connection opens.
    pub header_timeout: Duration,
    /// The longest a connection stays open (the answer taken included).
    pub connection_timeout: Duration,
}

impl Limits {
    /// The endpoint's limits: 256 connections, 5 s for the request head,
    /// 30 s in all.
    pub const DEFAULT: Limits = Limits {
        max_connections: 256,
        header_timeout: Duration::from_secs(5),
        connection_timeout: Duration::from_secs(30),
    };
}

/// A new registry with the product's prefix.
pub fn registry() -> Registry {
    Registry::with_prefix("smtp_edge")
}

/// The registry as text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(error = %e, "metrics encoding failed");
    }
    out
}

/// Answers scrapes on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    serve_with(listener, registry, Limits::DEFAULT).await
}

/// [`serve`] with other limits.
pub async fn serve_with(listener: TcpListener, registry: Arc<Registry>, limits: Limits) {
    let mut open: VecDeque<tokio::task::AbortHandle> = VecDeque::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        open.retain(|h| !h.is_finished());
        while open.len() >= limits.max_connections.max(1) {
            if let Some(oldest) = open.pop_front() {
                oldest.abort();
            }
        }
        let task = tokio::spawn(connection(stream, registry.clone(), limits));
        open.push_back(task.abort_handle());
    }
}

/// One connection: one request answered, within the limits.
async fn connection(stream: TcpStream, registry: Arc<Registry>, limits: Limits) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(false)
        .max_buf_size(MAX_HEAD);
    let service = hyper::service::service_fn(move |req| {
        let registry = registry.clone();
        async move { Ok::<_, Infallible>(answer(req, registry).await) }
    });
    let conn = http.serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(limits.connection_timeout, conn).await {
        Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection ended"),
        Err(_) => tracing::debug!("metrics connection timed out"),
        Ok(Ok(())) => {}
    }
}

async fn answer<B>(req: Request<B>, registry: Arc<Registry>) -> Response<Full<Bytes>> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", String::new());
    }
    match req.uri().path() {
        "/metrics" => {
            // Collectors read kernel maps and files: off the async workers.
            let body = tokio::task::spawn_blocking(move || encode(&registry))
                .await
                .unwrap_or_default();
            respond(StatusCode::OK, CONTENT_TYPE, body)
        }
        "/" => respond(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "smtp-edge: see /metrics\n".into(),
        ),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", String::new()),
    }
}

/// An answer (hyper leaves the body out for HEAD).
fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE_HEADER, HeaderValue::from_static(content_type));
    r
}

/// Label values made safe for a bounded label set: at most 128 characters.
pub fn label(value: &str) -> String {
    value.chars().take(128).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Whether the server closed `s` within 5 s (what it sent before is
    /// ignored).
    async fn closed(s: &mut TcpStream) -> bool {
        let mut sink = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink))
            .await
            .is_ok()
    }

    async fn scrape(addr: std::net::SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
            .await
            .expect("answered within 5 s")
            .unwrap();
        out
    }

    #[tokio::test]
    async fn idle_peers_cannot_keep_a_scrape_out() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let limits = Limits {
            max_connections: 4,
            header_timeout: Duration::from_secs(60),
            connection_timeout: Duration::from_secs(60),
        };
        let task = tokio::spawn(serve_with(l, Arc::new(registry()), limits));
        let mut idle = Vec::new();
        for _ in 0..10 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        for _ in 0..3 {
            let ok = scrape(addr).await;
            assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
            assert!(ok.contains("# EOF"), "{ok}");
        }
        // The oldest idle peers were closed to make room.
        assert!(closed(&mut idle[0]).await, "the oldest idle peer is closed");
        task.abort();
    }

    #[tokio::test]
    async fn a_silent_peer_is_closed_after_the_header_timeout() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let limits = Limits {
            header_timeout: Duration::from_millis(200),
            ..Limits::DEFAULT
        };
        let task = tokio::spawn(serve_with(l, Arc::new(registry()), limits));
        let mut silent = TcpStream::connect(addr).await.unwrap();
        assert!(closed(&mut silent).await, "the silent peer is closed");
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        assert!(closed(&mut slow).await, "the half-sent head is closed");
        task.abort();
    }

    #[tokio::test]
    async fn scrapes_and_refuses_what_is_not_a_scrape() {
        let mut r = registry();
        let c = Counter::<u64>::default();
        r.register("test_events", "Test events", c.clone());
        c.inc_by(3);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(serve(l, Arc::new(r)));
        let get = |req: &'static [u8]| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(req).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(
            ok.to_ascii_lowercase()
                .contains(&format!("content-type: {CONTENT_TYPE}")),
            "{ok}"
        );
        assert!(ok.contains("smtp_edge_test_events_total 3"), "{ok}");
        assert!(ok.contains("# EOF"), "{ok}");
        let head = get(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "no body: {head}");
        assert!(
            get(b"GET / HTTP/1.1\r\n\r\n")
                .await
                .contains("smtp-edge: see /metrics")
        );
        assert!(
            get(b"GET /nope HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 404")
        );
        assert!(
            get(b"POST /metrics HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 405")
        );
        let big = vec![b'a'; 10_000];
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nX: ").await.unwrap();
        let _ = s.write_all(&big).await;
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        assert!(out.starts_with("HTTP/1.1 431"), "{out}");
        task.abort();
    }
}
