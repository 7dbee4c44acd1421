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
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{CertificateParams, DnType, KeyPair};
use serde_json::Value;
use smtp_edge_tests::Daemon;
use smtp_edge_tests::nsd::Nsd;

/// The longest wait for any one read from a server.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The default `[queue]`: retries after 1 s, then every 2 s.
const QUEUE: &str = "retry_schedule = [1, 2]\n";

// ---------------------------------------------------------------------------
// Small helpers

/// A TCP port free on 127.0.0.1 (at the time of asking).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local address")
        .port()
}

/// Polls `f` every 100 ms until it gives a value; panics with `what` (and
/// the last observation from `f`) after `secs` seconds.
fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) => {
                assert!(
                    Instant::now() < deadline,
                    "timed out after {secs} s waiting for {what}; last: {last}"
                );
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Header fields of a message with folded lines joined (for searching).
fn unfold(text: &str) -> String {
    text.replace("\r\n", "\n")
        .replace("\n ", " ")
        .replace("\n\t", " ")
}

// ---------------------------------------------------------------------------
// The daemon under test

/// A self-signed certificate for the receiving side's STARTTLS.
fn server_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let mut p = CertificateParams::new(vec!["edge.contoso.com".to_string()]).expect("params");
    p.distinguished_name
        .push(DnType::CommonName, "edge.contoso.com");
    let key = KeyPair::generate().expect("key");
    let cert = p.self_signed(&key).expect("certificate");
    let (c, k) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&c, cert.pem()).expect("write certificate");
    std::fs::write(&k, key.serialize_pem()).expect("write key");
    (c, k)
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

/// smtp-edge receiving on 127.0.0.1 with the queue running; killed on drop.
struct Edge {
    dir: tempfile::TempDir,
    port: u16,
    daemon: Daemon,
    starts: u32,
}

impl Edge {
    fn start(setup: Setup) -> Edge {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().to_path_buf();
        let (cert, key) = server_cert(&d);
        let port = free_port();
        let config = format!(
            r#"[daemon]
state_dir = "{d}/state"
control_socket = "{d}/control.sock"

[filter]
enabled = false

[smtp]
enabled = true
listen = ["127.0.0.1:{port}"]
hostname = "edge.contoso.com"
accepted_domains = ["contoso.com", "fabrikam.com"]
spool_dir = "{d}/spool"
{smtp}

[smtp.tls]
certificate = "{cert}"
key = "{key}"

# The test's clients on loopback may send anywhere.
[[inbound_connectors]]
name = "loopback"
sources = ["127.0.0.1"]
relay = true

{outbound}

[queue]
{queue}

{tail}
"#,
            d = d.display(),
            cert = cert.display(),
            key = key.display(),
            smtp = setup.smtp,
            outbound = setup.outbound,
            queue = setup.queue,
            tail = setup.tail,
        );
        std::fs::write(d.join("smtp-edge.toml"), config).expect("config");
        let daemon = Daemon::start(
            None,
            &d.join("smtp-edge.toml"),
            &d.join("control.sock"),
            &d.join("daemon-1.log"),
        );
        let edge = Edge {
            dir,
            port,
            daemon,
            starts: 1,
        };
        edge.wait_smtp();
        edge
    }

    /// kill -9 and start again on the same configuration and spool.
    fn restart(&mut self) {
        self.daemon.kill9();
        self.starts += 1;
        let d = self.dir.path();
        self.daemon = Daemon::start(
            None,
            &d.join("smtp-edge.toml"),
            &d.join("control.sock"),
            &d.join(format!("daemon-{}.log", self.starts)),
        );
        self.wait_smtp();
    }

    fn wait_smtp(&self) {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        wait_for("the SMTP listener", 10, || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                .map(drop)
                .map_err(|e| format!("{e}\n{}", self.logs()))
        });
    }

    /// All daemon logs so far.
    fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                std::fs::read_to_string(self.dir.path().join(format!("daemon-{n}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    /// `smtp-edge --config F --json ARGS`: the JSON answer, or the error.
    fn cli(&self, args: &[&str]) -> Result<Value, String> {
        let config = self.dir.path().join("smtp-edge.toml");
        let mut all = vec!["--config", config.to_str().expect("utf-8 path"), "--json"];
        all.extend_from_slice(args);
        let out = smtp_edge_tests::cli(None, &all);
        if !out.status.success() {
            return Err(format!(
                "{args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// A queue command that may meet a delivery in flight (`Busy`): retried
    /// for at most 10 s.
    fn queue_cmd(&self, args: &[&str]) -> Value {
        let mut all = vec!["queue"];
        all.extend_from_slice(args);
        wait_for(&format!("queue {args:?}"), 10, || self.cli(&all))
    }

    /// `queue list --json`.
    fn queue(&self) -> Vec<Value> {
        self.queue_cmd(&["list"])
            .as_array()
            .cloned()
            .expect("queue list is an array")
    }

    /// The listed message with this id.
    fn queued(&self, id: &str) -> Option<Value> {
        self.queue().into_iter().find(|m| m["id"] == id)
    }

    fn wait_queue_empty(&self, secs: u64) {
        wait_for("an empty queue", secs, || {
            let q = self.queue();
            if q.is_empty() {
                Ok(())
            } else {
                Err(format!("{q:#?}"))
            }
        });
    }
}

// ---------------------------------------------------------------------------
// A raw SMTP client (records the 250 queue id)

struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Client {
    fn connect(port: u16) -> io::Result<Client> {
        let s = TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Duration::from_secs(2),
        )?;
        s.set_read_timeout(Some(READ_TIMEOUT))?;
        let mut c = Client {
            r: BufReader::new(s.try_clone()?),
            w: s,
        };
        c.expect(220)?;
        Ok(c)
    }

    /// One reply (all its lines joined).
    fn reply(&mut self) -> io::Result<(u16, String)> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed after {all:?}"),
                ));
            }
            all.push_str(&line);
            let b = line.as_bytes();
            if b.len() < 4 || b[3] != b'-' {
                let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                return Ok((code, all));
            }
        }
    }

    fn expect(&mut self, code: u16) -> io::Result<String> {
        let (c, text) = self.reply()?;
        if c != code {
            return Err(io::Error::other(format!("expected {code}, got {text:?}")));
        }
        Ok(text)
    }

    fn cmd(&mut self, line: &str, code: u16) -> io::Result<String> {
        self.w.write_all(format!("{line}\r\n").as_bytes())?;
        self.expect(code)
    }

    /// EHLO, MAIL, RCPT..., DATA with `data` sent as is (it must end with
    /// the terminating `.` line); the queue id of the 250 reply.
    fn transaction(&mut self, from: &str, rcpts: &[&str], data: &[u8]) -> io::Result<String> {
        self.cmd("EHLO client.fabrikam.com", 250)?;
        self.cmd(&format!("MAIL FROM:<{from}>"), 250)?;
        for r in rcpts {
            self.cmd(&format!("RCPT TO:<{r}>"), 250)?;
        }
        self.cmd("DATA", 354)?;
        self.w.write_all(data)?;
        let text = self.expect(250)?;
        let id = text
            .split_whitespace()
            .last()
            .filter(|_| text.contains("queued as"))
            .ok_or_else(|| io::Error::other(format!("no queue id in {text:?}")))?;
        Ok(id.to_string())
    }

    /// Sends QUIT; the very next reply.
    fn reply_to_quit(&mut self) -> (u16, String) {
        self.w.write_all(b"QUIT\r\n").expect("QUIT");
        self.reply().expect("reply to QUIT")
    }
}

/// `content` (CRLF line ends) dot-stuffed and terminated.
fn data_of(content: &str) -> Vec<u8> {
    let mut out = String::new();
    for line in content.split_inclusive("\r\n") {
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
    }
    out.push_str(".\r\n");
    out.into_bytes()
}

/// A simple message.
fn message(from: &str, to: &str, subject: &str) -> String {
    format!("From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nHello from the relay tests.\r\n")
}

/// Sends one message through smtp-edge; its queue id.
fn send(port: u16, from: &str, rcpts: &[&str], content: &str) -> String {
    let mut c = Client::connect(port).expect("connect to smtp-edge");
    let id = c
        .transaction(from, rcpts, &data_of(content))
        .expect("message accepted");
    let _ = c.cmd("QUIT", 221);
    id
}

// ---------------------------------------------------------------------------
// Next hops

/// Postfix's smtp-sink dumping each message (with the envelope as X-Mail-Args
/// and X-Rcpt-Args header lines) to its own file; killed on drop.
struct Sink {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Sink {
    fn start(options: &[&str]) -> Sink {
        Sink::start_at(
            SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
            options,
        )
    }

    fn start_at(addr: SocketAddr, options: &[&str]) -> Sink {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new("/usr/sbin/smtp-sink");
        if smtp_edge_tests::is_root() {
            cmd.args(["-u", "root"]);
        }
        cmd.arg("-d")
            .arg(format!("{}/msg.", dir.path().display()))
            .args(options)
            .arg(addr.to_string())
            .arg("10")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("spawn smtp-sink");
        let sink = Sink { child, dir, addr };
        wait_for(&format!("smtp-sink on {addr}"), 10, || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                .map_err(|e| e.to_string())?;
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.write_all(b"QUIT\r\n");
            let _ = s.read_to_end(&mut Vec::new());
            Ok(())
        });
        sink
    }

    /// The port, for a smart host.
    fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The dumps so far.
    fn dumps(&self) -> Vec<String> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .expect("dump dir")
            .filter_map(|e| Some(e.ok()?.path()))
            .collect();
        v.sort();
        v.iter()
            .filter_map(|p| std::fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect()
    }

    /// Waits (at most `secs`) for `n` dumps, then for their number to stay
    /// the same for half a second (a late duplicate would show); the dumps.
    fn wait(&self, n: usize, secs: u64) -> Vec<String> {
        wait_for(&format!("{n} message(s) at {}", self.addr), secs, || {
            let d = self.dumps();
            if d.len() >= n {
                Ok(())
            } else {
                Err(format!("{} so far: {d:#?}", d.len()))
            }
        });
        std::thread::sleep(Duration::from_millis(500));
        self.dumps()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The envelope header lines smtp-sink puts at the top of a dump.
fn envelope(dump: &str) -> (String, Vec<String>) {
    let mut from = String::new();
    let mut rcpts = Vec::new();
    for line in dump.lines() {
        if let Some(v) = line.strip_prefix("X-Mail-Args: ") {
            from = v.split_whitespace().next().unwrap_or("").to_string();
        } else if let Some(v) = line.strip_prefix("X-Rcpt-Args: ") {
            rcpts.push(v.split_whitespace().next().unwrap_or("").to_string());
        } else if line.is_empty() {
            break;
        }
    }
    (from, rcpts)
}

/// A scripted SMTP server: every RCPT gets `rcpt_reply`; it records the
/// MAIL FROM and RCPT TO commands it saw. Stopped on drop.
struct Scripted {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Scripted {
    fn start(rcpt_reply: &'static str) -> Scripted {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind scripted");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("address");
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let seen = seen2.clone();
                        std::thread::spawn(move || {
                            let _ = Scripted::session(s, rcpt_reply, &seen);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Scripted {
            addr,
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn session(s: TcpStream, rcpt_reply: &str, seen: &Mutex<Vec<String>>) -> io::Result<()> {
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(READ_TIMEOUT))?;
        let mut w = s.try_clone()?;
        let mut r = BufReader::new(s);
        w.write_all(b"220 scripted.test ESMTP\r\n")?;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
            let reply = match verb.as_str() {
                "EHLO" => "250-scripted.test\r\n250 ENHANCEDSTATUSCODES\r\n".to_string(),
                "HELO" => "250 scripted.test\r\n".to_string(),
                "MAIL" => {
                    seen.lock().unwrap().push(line.trim_end().to_string());
                    "250 2.1.0 ok\r\n".to_string()
                }
                "RCPT" => {
                    seen.lock().unwrap().push(line.trim_end().to_string());
                    format!("{rcpt_reply}\r\n")
                }
                "DATA" => {
                    w.write_all(b"354 go ahead\r\n")?;
                    loop {
                        let mut l = String::new();
                        if r.read_line(&mut l)? == 0 {
                            return Ok(());
                        }
                        if l == ".\r\n" {
                            break;
                        }
                    }
                    "250 2.0.0 ok\r\n".to_string()
                }
                "QUIT" => {
                    w.write_all(b"221 2.0.0 bye\r\n")?;
                    return Ok(());
                }
                "RSET" | "NOOP" => "250 2.0.0 ok\r\n".to_string(),
                _ => "502 5.5.1 not implemented\r\n".to_string(),
            };
            w.write_all(reply.as_bytes())?;
        }
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An outbound connector table.
fn connector(name: &str, domains: &[&str], hops: &[String]) -> String {
    let list = |v: Vec<String>| v.join(", ");
    format!(
        "[[outbound_connectors]]\nname = \"{name}\"\nrecipient_domains = [{}]\nsmart_hosts = [{}]\ntls = \"opportunistic\"\n\n",
        list(domains.iter().map(|d| format!("\"{d}\"")).collect()),
        list(hops.iter().map(|h| format!("\"{h}\"")).collect()),
    )
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
    let edge = Edge::start(Setup {
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
        assert_eq!(got, [format!("<{want}>")], "{}", edge.logs());
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
    let edge = Edge::start(Setup {
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
    let logs = edge.logs();
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
    let edge = Edge::start(Setup {
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
    let rejecting = Scripted::start("550 5.1.1 <nobody@contoso.com>: no such user");
    let senders = Sink::start(&[]);
    let outbound = [
        connector(
            "to-contoso",
            &["contoso.com"],
            &[rejecting.addr.to_string()],
        ),
        connector("to-fabrikam", &["fabrikam.com"], &[senders.host()]),
    ]
    .concat();
    let edge = Edge::start(Setup {
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
    let seen = rejecting.seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|l| l.eq_ignore_ascii_case("RCPT TO:<nobody@contoso.com>")),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|l| l
            .to_ascii_uppercase()
            .starts_with("MAIL FROM:<ALICE@FABRIKAM.COM>")),
        "{seen:?}"
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
    let edge = Edge::start(Setup {
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
    let logs = edge.logs();
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
    let edge = Edge::start(Setup {
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
    let mut edge = Edge::start(Setup {
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
                        let r = Client::connect(port).and_then(|mut c| {
                            let id = c.transaction(
                                "alice@fabrikam.com",
                                &["bob@contoso.com"],
                                &data_of(&content),
                            )?;
                            let _ = c.cmd("QUIT", 221);
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
    let edge = Edge::start(Setup {
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
    let mut c = Client::connect(edge.port).expect("connect");
    c.transaction("alice@fabrikam.com", &["bob@contoso.com"], data)
        .expect("accepted with normalized line ends");
    let (code, text) = c.reply_to_quit();
    assert_eq!(code, 221, "no further replies before QUIT's: {text}");
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
