//! Microsoft's endpoints web service as a test's peer: recorded answers
//! served on loopback (plain HTTP or HTTPS with a test certificate), every
//! answer scripted (status, body, headers, a delay), every request logged.
//! It also plays a client's proxy (a `CONNECT` tunnel, or a request in
//! absolute form) and answers as the service behind it, so a test sees
//! whether the client went through its proxy. The real service is
//! never contacted.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};

/// The recorded worldwide answer (trimmed; endpoint set 10 as published).
pub const RECORDED: &str = include_str!("../fixtures/endpoints-worldwide.json");

/// The recorded answer with endpoint set 10's (Exchange, TCP 25) addresses
/// replaced by `port25`.
pub fn endpoints(port25: &[&str]) -> String {
    let mut v: Value = serde_json::from_str(RECORDED).expect("recorded answer");
    for set in v.as_array_mut().expect("a list") {
        if set["id"] == 10 {
            set["ips"] = json!(port25);
        }
    }
    v.to_string()
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: String,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Answer {
    /// 200 with a JSON body.
    pub fn json(body: impl Into<String>) -> Answer {
        Answer {
            status: 200,
            body: body.into(),
            headers: vec![("Content-Type".into(), "application/json".into())],
            delay: Duration::ZERO,
        }
    }

    /// The version answer for `latest`.
    pub fn version(latest: &str) -> Answer {
        Answer::json(json!({"instance": "Worldwide", "latest": latest}).to_string())
    }

    /// Another status, with a short body.
    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            body: format!("{{\"error\":\"status {status}\"}}"),
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    /// With a header.
    pub fn header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Answered after `delay`.
    pub fn after(mut self, delay: Duration) -> Answer {
        self.delay = delay;
        self
    }
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    /// The request line.
    pub line: String,
    /// The path with its query (origin form).
    pub path: String,
    /// The request came through a tunnel (`CONNECT host:port`) or in
    /// absolute form (`GET http://host/...`): the client used its proxy.
    pub via_proxy: bool,
    /// The Host header, or the tunnel's target.
    pub host: String,
}

#[derive(Default)]
struct Script {
    version: Option<Answer>,
    endpoints: Option<Answer>,
    log: Vec<Request>,
}

/// A running web service; stopped on drop.
pub struct WebService {
    /// Where it listens.
    pub addr: SocketAddr,
    tls: bool,
    script: Arc<Mutex<Script>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl WebService {
    /// Plain HTTP on 127.0.0.1.
    pub fn start() -> WebService {
        WebService::serve(None)
    }

    /// HTTPS on 127.0.0.1 with this certificate.
    pub fn start_tls(leaf: &crate::certs::Leaf) -> WebService {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(leaf.chain.clone(), leaf.key.clone_key())
            .expect("server config");
        WebService::serve(Some(Arc::new(config)))
    }

    fn serve(tls: Option<Arc<rustls::ServerConfig>>) -> WebService {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let script = Arc::new(Mutex::new(Script::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, t) = (script.clone(), stop.clone(), tls.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (s, t, st) = (s.clone(), t.clone(), st.clone());
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                    match t {
                        None => answer(conn, &s, &st),
                        Some(cfg) => {
                            let Ok(tls) = rustls::ServerConnection::new(cfg) else {
                                return;
                            };
                            answer(rustls::StreamOwned::new(tls, conn), &s, &st);
                        }
                    }
                });
            }
        });
        WebService {
            addr,
            tls: tls.is_some(),
            script,
            stop,
            thread: Some(thread),
        }
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!(
            "{}://127.0.0.1:{}",
            if self.tls { "https" } else { "http" },
            self.addr.port()
        )
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What `/version/...` answers.
    pub fn set_version(&self, a: Answer) {
        self.script().version = Some(a);
    }

    /// What `/endpoints/...` answers.
    pub fn set_endpoints(&self, a: Answer) {
        self.script().endpoints = Some(a);
    }

    /// Publishes `version` with endpoint set 10 holding `port25`.
    pub fn publish(&self, version: &str, port25: &[&str]) {
        self.set_version(Answer::version(version));
        self.set_endpoints(Answer::json(endpoints(port25)));
    }

    /// The requests so far.
    pub fn requests(&self) -> Vec<Request> {
        self.script().log.clone()
    }

    /// The paths requested so far (query stripped).
    pub fn paths(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .map(|r| r.path.split('?').next().unwrap_or("").to_string())
            .collect()
    }

    /// Forgets the requests so far.
    pub fn clear(&self) {
        self.script().log.clear();
    }
}

impl Drop for WebService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop; from another network namespace than the
        // one it listens in this reaches nothing, so the thread is left to
        // end with the process rather than joined.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        drop(self.thread.take());
    }
}

/// Reads one request head: the request line and the Host header.
fn head<S: Read>(reader: &mut BufReader<S>) -> Option<(String, String)> {
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || line.is_empty() {
        return None;
    }
    let mut host = String::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.len() > 8192 {
            return None;
        }
        if h == "\r\n" || h == "\n" || h.is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':')
            && name.eq_ignore_ascii_case("host")
        {
            host = value.trim().to_string();
        }
    }
    Some((line, host))
}

fn answer<S: Read + Write>(stream: S, script: &Mutex<Script>, stop: &AtomicBool) {
    let mut reader = BufReader::new(stream);
    let Some((mut line, mut host)) = head(&mut reader) else {
        return;
    };
    // A client that takes this server for its proxy tunnels first (ureq
    // does so for http:// targets too); the tunnelled request is answered
    // as the service.
    let mut tunnel = false;
    if let Some(target) = line.strip_prefix("CONNECT ") {
        let target = target.split_whitespace().next().unwrap_or("").to_string();
        let stream = reader.get_mut();
        if stream
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .is_err()
        {
            return;
        }
        let _ = stream.flush();
        let Some((l, _)) = head(&mut reader) else {
            return;
        };
        (line, host, tunnel) = (l, target, true);
    }
    let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let (path, absolute) = match target.split_once("://") {
        Some((_, rest)) => (
            rest.find('/')
                .map_or("/".to_string(), |i| rest[i..].to_string()),
            true,
        ),
        None => (target.clone(), false),
    };
    let via_proxy = tunnel || absolute;
    let scripted = {
        let mut s = script.lock().unwrap_or_else(|p| p.into_inner());
        s.log.push(Request {
            line: line.trim_end().to_string(),
            path: path.clone(),
            via_proxy,
            host,
        });
        if path.starts_with("/version/") {
            s.version.clone()
        } else if path.starts_with("/endpoints/") {
            s.endpoints.clone()
        } else {
            None
        }
    };
    let a = scripted.unwrap_or_else(|| Answer::status(404));
    // A bounded wait that ends early when the service stops.
    let until = std::time::Instant::now() + a.delay;
    while std::time::Instant::now() < until && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let reason = match a.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n",
        a.status,
        a.body.len()
    );
    for (n, v) in &a.headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&a.body);
    let stream = reader.get_mut();
    let _ = stream.write_all(out.as_bytes());
    let _ = stream.flush();
}
