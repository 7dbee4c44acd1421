//! `smtp-edge-bench-relay` (`cargo xtask bench relay`): end-to-end relay
//! throughput and latency, smtp-edge against Postfix on the same machine in
//! the same run.
//!
//! load client → relay under test → sink (next hop), all on loopback.
//!
//! - The load client (written here, the same for both relays, as in
//!   `smtp-edge-bench-smtp-in`) sends `--messages` messages of `--size`
//!   octets over `--sessions` concurrent sessions, `--per-connection`
//!   messages per connection, MAIL/RCPT/DATA pipelined, no TLS session
//!   resumption. Every message carries `X-Bench-Seq: RUN.SEQ`; the client
//!   timestamps the relay's 250 to each DATA.
//! - The relay: smtp-edge (release build from `SMTP_EDGE_BIN`, `fsync =
//!   true`, an inbound connector with `relay = true` for 127.0.0.1, one
//!   `[[outbound_connectors]]` for `*` to the sink as smart host,
//!   `max_per_destination = --sessions`) and a private Postfix instance
//!   configured as the same relay (`relayhost = [127.0.0.1]:SINK`,
//!   `mynetworks = 127.0.0.0/8`, `default_destination_concurrency_limit =
//!   --sessions`). Postfix fsyncs its queue files before its 250 too.
//! - The sink (written here, one for both relays): accepts SMTP with
//!   PIPELINING and STARTTLS, discards the content, and timestamps each
//!   message's end-of-data by its `X-Bench-Seq` header.
//! - Modes: plain on both legs; STARTTLS on both legs (the client requires
//!   it at the relay; smtp-edge uses `tls = "encryption-only"`, Postfix
//!   `smtp_tls_security_level = encrypt`).
//!
//! Throughput: messages delivered / (last arrival at the sink − the load
//! client's first connection). Latency: per message, the sink's timestamp
//! minus the client's timestamp of the relay's 250 (p50, p99, max).
//!
//! Every run is bounded in messages and seconds; traffic is loopback only.
//! Human-readable results go to stdout; the last line is one JSON object.
//! Needs root (Postfix runs as its `postfix` user) and the Debian package
//! postfix (`cargo xtask setup`). Each relay is stopped and the temporary
//! directory removed at the end, also on failure or Ctrl-C.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::Parser;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::{Map as JsonMap, Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use smtp_edge_tests::{Daemon, is_root};

/// End-to-end relay benchmark: smtp-edge vs Postfix (last line of stdout:
/// JSON).
#[derive(Parser)]
#[command(name = "smtp-edge-bench-relay")]
struct Args {
    /// Concurrent client sessions (and deliveries per destination).
    #[arg(long, default_value_t = 20)]
    sessions: usize,
    /// Messages per measured run.
    #[arg(long, default_value_t = 10000)]
    messages: u64,
    /// Message size in octets.
    #[arg(long, default_value_t = 10240)]
    size: usize,
    /// Messages per client connection.
    #[arg(long, default_value_t = 1)]
    per_connection: u64,
    /// Messages per relay and mode before measuring.
    #[arg(long, default_value_t = 200)]
    warmup: u64,
    /// Longest load phase of a run, in seconds (the client stops taking new
    /// messages then).
    #[arg(long, default_value_t = 90)]
    max_seconds: u64,
    /// Longest wait, after the load phase, for the last messages at the sink.
    #[arg(long, default_value_t = 60)]
    drain_seconds: u64,
    /// Directory for both queues (default: the system temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Skip parts: any of plain, tls.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
}

const FROM: &str = "sender@contoso.com";
/// Not an accepted domain of either relay: relayed.
const TO: &str = "user@example.net";
/// Name in the relays' certificate (the client checks it).
const SERVER_NAME: &str = "relay.contoso.com";
/// The sink's name (differs from the relays': no loop detection).
const SINK_NAME: &str = "sink.example.net";
/// The longest wait for one reply.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// The sink's longest wait for a client's next bytes.
const SINK_IDLE: Duration = Duration::from_secs(120);
/// Failed connections after which a run gives up.
const MAX_FAILURES: u64 = 50;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn interrupted() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn main() {
    // Ctrl-C and SIGTERM end the current run and then clean up (the private
    // Postfix is daemonized outside our process group).
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("smtp-edge-bench-relay: error: {e:#}");
        std::process::exit(1);
    }
}

/// Nanoseconds since the first call, plus 1 (0 means "not yet" in a slot).
fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}

fn run(args: &Args) -> Result<()> {
    ensure!(
        is_root(),
        "the benchmark needs root (a private Postfix instance)"
    );
    ensure!(
        (1..=500).contains(&args.sessions),
        "--sessions must be in 1..=500"
    );
    ensure!(
        (1..=1_000_000).contains(&args.messages),
        "--messages must be in 1..=1000000"
    );
    ensure!(
        (200..=10_000_000).contains(&args.size),
        "--size must be in 200..=10000000"
    );
    ensure!(
        (1..=100_000).contains(&args.per_connection),
        "--per-connection must be in 1..=100000"
    );
    ensure!(args.warmup <= 100_000, "--warmup must be at most 100000");
    ensure!(
        (1..=3600).contains(&args.max_seconds),
        "--max-seconds must be in 1..=3600"
    );
    ensure!(
        (1..=3600).contains(&args.drain_seconds),
        "--drain-seconds must be in 1..=3600"
    );
    for tool in ["postfix", "postconf"] {
        ensure!(
            Path::new("/usr/sbin").join(tool).is_file(),
            "/usr/sbin/{tool} not found (Debian package postfix; `cargo xtask setup`)"
        );
    }
    for s in &args.skip {
        ensure!(
            ["plain", "tls"].contains(&s.as_str()),
            "--skip: unknown part `{s}` (plain, tls)"
        );
    }
    let skip = |part: &str| args.skip.iter().any(|s| s == part);
    let started = Instant::now();
    now_ns();
    let nofile = raise_nofile(args.sessions as u64 * 8 + 1024)?;

    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("smtp-edge-bench-relay.")
        .tempdir_in(&base)
        .with_context(|| format!("temporary directory in {}", base.display()))?;
    // Postfix's processes run as `postfix` and must reach their queue.
    set_mode(tmp.path(), 0o755)?;
    let certs = certificates(tmp.path())?;
    let tls_client = client_config(&certs.ca)?;

    // The sink on its own thread (one of the two CPUs' worth of work is the
    // relay's; the client and the sink share the rest).
    let sink_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sink")
        .enable_all()
        .build()?;
    let sink = Sink::start(&sink_rt, &certs)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    let mut out = JsonMap::new();
    println!(
        "smtp-edge as a relay vs Postfix {} (loopback, fsync on, {} CPUs)",
        postfix_version(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "client -> relay -> sink ({}); queues in {}; RLIMIT_NOFILE {nofile}",
        sink.addr,
        tmp.path().display()
    );
    println!(
        "{} messages of {} octets per run over {} sessions, {} per connection; warm-up {}",
        args.messages, args.size, args.sessions, args.per_connection, args.warmup
    );

    let params = Load {
        sessions: args.sessions,
        messages: args.messages,
        per_connection: args.per_connection,
        max: Duration::from_secs(args.max_seconds),
        size: args.size,
    };
    let mut run_id = 0u64;
    let mut figures: std::collections::BTreeMap<(&str, &str), Figures> = Default::default();
    let mut modes: Vec<&str> = Vec::new();
    if !skip("plain") {
        modes.push("plain");
    }
    if !skip("tls") {
        modes.push("tls");
    }
    for mode in &modes {
        let tls = (*mode == "tls").then_some(&tls_client);
        println!("\n-- {mode} (both legs) --");
        for name in ["smtp-edge", "postfix"] {
            interrupted()?;
            let dir = tmp.path().join(format!("{name}-{mode}"));
            std::fs::create_dir_all(&dir)?;
            set_mode(&dir, 0o755)?;
            let relay: Box<dyn Relay> = if name == "smtp-edge" {
                Box::new(Edge::start(&dir, &certs, sink.addr, *mode == "tls", args)?)
            } else {
                Box::new(Postfix::start(
                    &dir,
                    &certs,
                    sink.addr,
                    *mode == "tls",
                    args,
                )?)
            };
            if args.warmup > 0 {
                run_id += 1;
                let w = Load {
                    messages: args.warmup,
                    ..params.clone()
                };
                let f = measure(&rt, &sink, relay.as_ref(), tls, &w, run_id, args)
                    .with_context(|| format!("{name} {mode}: warm-up"))?;
                ensure!(
                    f.delivered == args.warmup,
                    "{name} {mode}: warm-up: {} of {} delivered\n{}",
                    f.delivered,
                    args.warmup,
                    relay.log_tail()
                );
            }
            settle();
            run_id += 1;
            let f = measure(&rt, &sink, relay.as_ref(), tls, &params, run_id, args)
                .with_context(|| format!("{name} {mode}"))?;
            println!(
                "  {name:9}: {:7.0} msg/s end to end ({} delivered in {:.2} s; accepted at {:.0} msg/s), \
                 latency 250->sink p50 {:.1} ms p99 {:.1} ms max {:.1} ms{}",
                f.rate,
                f.delivered,
                f.secs,
                f.accept_rate,
                f.p50_ms,
                f.p99_ms,
                f.max_ms,
                f.cipher
                    .as_deref()
                    .map(|c| format!(", client {c}"))
                    .unwrap_or_default()
            );
            ensure!(
                f.accepted == args.messages && f.delivered == args.messages,
                "{name} {mode}: {} of {} accepted, {} delivered ({} failed connections): {}\n{}",
                f.accepted,
                args.messages,
                f.delivered,
                f.failures,
                f.first_error.clone().unwrap_or_default(),
                relay.log_tail()
            );
            drop(relay);
            let key = name.replace('-', "_");
            out.insert(format!("{key}_{mode}_msgs_per_s"), json!(round(f.rate, 0)));
            out.insert(
                format!("{key}_{mode}_accept_msgs_per_s"),
                json!(round(f.accept_rate, 0)),
            );
            out.insert(format!("{key}_{mode}_p50_ms"), json!(round(f.p50_ms, 2)));
            out.insert(format!("{key}_{mode}_p99_ms"), json!(round(f.p99_ms, 2)));
            out.insert(format!("{key}_{mode}_max_ms"), json!(round(f.max_ms, 2)));
            out.insert(format!("{key}_{mode}_seconds"), json!(round(f.secs, 3)));
            figures.insert((*mode, name), f);
        }
        let (e, p) = (
            &figures[&(*mode, "smtp-edge")],
            &figures[&(*mode, "postfix")],
        );
        out.insert(
            format!("relay_ratio_vs_postfix_{mode}"),
            json!(round(e.rate / p.rate, 2)),
        );
    }
    drop(sink);
    drop(sink_rt);

    println!("\n-- summary --");
    for mode in &modes {
        let (e, p) = (
            &figures[&(*mode, "smtp-edge")],
            &figures[&(*mode, "postfix")],
        );
        let ratio = e.rate / p.rate;
        println!(
            "  {mode:5}: smtp-edge {:.0} msg/s, Postfix {:.0} msg/s: {ratio:.2}x (target >= 2x: {}); \
             p99 250->sink smtp-edge {:.1} ms, Postfix {:.1} ms",
            e.rate,
            p.rate,
            if ratio >= 2.0 { "met" } else { "NOT met" },
            e.p99_ms,
            p.p99_ms
        );
    }
    // The headline p99: smtp-edge's worst mode.
    let p99 = modes
        .iter()
        .map(|m| figures[&(*m, "smtp-edge")].p99_ms)
        .fold(f64::NAN, f64::max);
    let pf_p99 = modes
        .iter()
        .map(|m| figures[&(*m, "postfix")].p99_ms)
        .fold(f64::NAN, f64::max);
    out.insert("relay_p99_ms".into(), json!(round(p99, 2)));
    out.insert("postfix_p99_ms".into(), json!(round(pf_p99, 2)));
    out.insert("target_relay_ratio".into(), json!(2.0));
    let met = modes.iter().all(|m| {
        out.get(&format!("relay_ratio_vs_postfix_{m}"))
            .and_then(Value::as_f64)
            .is_some_and(|r| r >= 2.0)
    });
    out.insert("targets_met".into(), json!(met));
    out.insert(
        "params".into(),
        json!({
            "sessions": args.sessions,
            "messages": args.messages,
            "size": args.size,
            "per_connection": args.per_connection,
            "warmup": args.warmup,
            "postfix_version": postfix_version(),
            "sink": "in-bench tokio(-rustls) sink, PIPELINING + STARTTLS, discards",
        }),
    );
    let total = started.elapsed().as_secs_f64();
    out.insert("total_seconds".into(), json!(round(total, 1)));
    println!("\ntotal {total:.1} s");
    println!("{}", Value::Object(out));
    Ok(())
}

// ---- one measured run ------------------------------------------------------

/// Timestamps of one run, indexed by sequence number.
struct Run {
    id: u64,
    acked: Vec<AtomicU64>,
    arrived: Vec<AtomicU64>,
    arrivals: AtomicU64,
    last_arrival: AtomicU64,
    duplicates: AtomicU64,
}

impl Run {
    fn new(id: u64, n: u64) -> Run {
        Run {
            id,
            acked: (0..n).map(|_| AtomicU64::new(0)).collect(),
            arrived: (0..n).map(|_| AtomicU64::new(0)).collect(),
            arrivals: AtomicU64::new(0),
            last_arrival: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
        }
    }
}

struct Figures {
    accepted: u64,
    delivered: u64,
    failures: u64,
    first_error: Option<String>,
    cipher: Option<String>,
    /// First connection to last arrival.
    secs: f64,
    rate: f64,
    accept_rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn measure(
    rt: &tokio::runtime::Runtime,
    sink: &Sink,
    relay: &dyn Relay,
    tls: Option<&TlsConnector>,
    p: &Load,
    id: u64,
    args: &Args,
) -> Result<Figures> {
    let run = Arc::new(Run::new(id, p.messages));
    *sink.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(run.clone());
    let start = now_ns();
    let o = rt.block_on(load(relay.addr(), tls, p, &run))?;
    // Wait for the relay to deliver what it accepted.
    let deadline = Instant::now() + Duration::from_secs(args.drain_seconds);
    while run.arrivals.load(Ordering::SeqCst) < o.accepted && Instant::now() < deadline {
        interrupted()?;
        std::thread::sleep(Duration::from_millis(2));
    }
    *sink.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    let delivered = run.arrivals.load(Ordering::SeqCst);
    let dup = run.duplicates.load(Ordering::SeqCst);
    if dup > 0 {
        println!("  ({} duplicate deliveries at the sink)", dup);
    }
    let last = run.last_arrival.load(Ordering::SeqCst).max(start);
    let secs = (last - start) as f64 / 1e9;
    let mut lat: Vec<f64> = run
        .acked
        .iter()
        .zip(&run.arrived)
        .filter_map(|(a, b)| {
            let (a, b) = (a.load(Ordering::SeqCst), b.load(Ordering::SeqCst));
            (a > 0 && b > 0).then(|| (b as f64 - a as f64) / 1e6)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    Ok(Figures {
        accepted: o.accepted,
        delivered,
        failures: o.failures,
        first_error: o.first_error,
        cipher: o.cipher,
        secs,
        rate: delivered as f64 / secs.max(1e-9),
        accept_rate: o.accepted as f64 / o.secs.max(1e-9),
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        max_ms: lat.last().copied().unwrap_or(f64::NAN),
    })
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

// ---- the sink --------------------------------------------------------------

/// The next hop: SMTP with PIPELINING and STARTTLS; every message is counted
/// and timestamped by its `X-Bench-Seq` header, then discarded.
struct Sink {
    addr: SocketAddr,
    current: Arc<Mutex<Option<Arc<Run>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sink {
    fn start(rt: &tokio::runtime::Runtime, certs: &Certs) -> Result<Sink> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![certs.leaf_der.clone(), certs.ca.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certs.key_der.clone())),
            )?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let std_listener = TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let current: Arc<Mutex<Option<Arc<Run>>>> = Arc::new(Mutex::new(None));
        let cur = current.clone();
        let task = rt.spawn(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                return;
            };
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let (acceptor, cur) = (acceptor.clone(), cur.clone());
                tokio::spawn(async move {
                    let _ = sink_session(s, acceptor, cur).await;
                });
            }
        });
        Ok(Sink {
            addr,
            current,
            task,
        })
    }
}

enum Next {
    Quit,
    StartTls,
}

async fn sink_session(
    s: TcpStream,
    acceptor: TlsAcceptor,
    current: Arc<Mutex<Option<Arc<Run>>>>,
) -> Result<()> {
    s.set_nodelay(true)?;
    let mut s = s;
    s.write_all(format!("220 {SINK_NAME} ESMTP bench sink\r\n").as_bytes())
        .await?;
    let mut buf = Vec::with_capacity(32 * 1024);
    match serve(&mut s, &mut buf, true, &current).await? {
        Next::Quit => Ok(()),
        Next::StartTls => {
            ensure!(buf.is_empty(), "data after STARTTLS");
            let mut t = tokio::time::timeout(IO_TIMEOUT, acceptor.accept(s))
                .await
                .map_err(|_| anyhow!("TLS handshake timeout"))??;
            serve(&mut t, &mut buf, false, &current).await?;
            Ok(())
        }
    }
}

/// Serves commands until QUIT (or STARTTLS when `offer_tls`).
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    offer_tls: bool,
    current: &Mutex<Option<Arc<Run>>>,
) -> Result<Next> {
    let mut in_data = false;
    let mut scan = 0usize;
    let mut out = Vec::with_capacity(1024);
    let mut tmp = vec![0u8; 64 * 1024];
    loop {
        // Everything complete in the buffer, replies batched (PIPELINING).
        loop {
            if in_data {
                let end = if buf.starts_with(b".\r\n") {
                    Some((0, 3))
                } else {
                    find(&buf[scan..], b"\r\n.\r\n").map(|i| (scan + i, scan + i + 5))
                };
                let Some((end, consumed)) = end else {
                    scan = buf.len().saturating_sub(4);
                    break;
                };
                record(&buf[..end], current);
                buf.drain(..consumed);
                in_data = false;
                scan = 0;
                out.extend_from_slice(b"250 2.0.0 Ok: queued\r\n");
                continue;
            }
            let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
                ensure!(buf.len() < 4096, "command line too long");
                break;
            };
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let verb: String = line
                .iter()
                .take_while(|b| b.is_ascii_alphabetic())
                .map(|b| b.to_ascii_uppercase() as char)
                .collect();
            match verb.as_str() {
                "EHLO" => {
                    out.extend_from_slice(format!("250-{SINK_NAME}\r\n").as_bytes());
                    if offer_tls {
                        out.extend_from_slice(b"250-STARTTLS\r\n");
                    }
                    out.extend_from_slice(b"250-PIPELINING\r\n250-SIZE 0\r\n250 8BITMIME\r\n");
                }
                "HELO" => out.extend_from_slice(format!("250 {SINK_NAME}\r\n").as_bytes()),
                "MAIL" | "RCPT" | "RSET" | "NOOP" => out.extend_from_slice(b"250 2.0.0 Ok\r\n"),
                "DATA" => {
                    out.extend_from_slice(b"354 End data with <CR><LF>.<CR><LF>\r\n");
                    in_data = true;
                    scan = 0;
                }
                "QUIT" => {
                    out.extend_from_slice(b"221 2.0.0 Bye\r\n");
                    s.write_all(&out).await?;
                    let _ = s.shutdown().await;
                    return Ok(Next::Quit);
                }
                "STARTTLS" if offer_tls => {
                    out.extend_from_slice(b"220 2.0.0 Ready to start TLS\r\n");
                    s.write_all(&out).await?;
                    return Ok(Next::StartTls);
                }
                _ => out.extend_from_slice(b"502 5.5.2 Not implemented\r\n"),
            }
        }
        if !out.is_empty() {
            s.write_all(&out).await?;
            s.flush().await?;
            out.clear();
        }
        let n = tokio::time::timeout(SINK_IDLE, s.read(&mut tmp))
            .await
            .map_err(|_| anyhow!("sink: idle timeout"))??;
        if n == 0 {
            return Ok(Next::Quit);
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Counts one message of the current run by its `X-Bench-Seq: RUN.SEQ`.
fn record(content: &[u8], current: &Mutex<Option<Arc<Run>>>) {
    let t = now_ns();
    let head = &content[..content.len().min(16 * 1024)];
    let Some(i) = find(head, b"X-Bench-Seq: ") else {
        return;
    };
    let rest = &head[i + 13..];
    let end = rest
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(rest.len());
    let Some((run_id, seq)) = std::str::from_utf8(&rest[..end])
        .ok()
        .and_then(|v| v.split_once('.'))
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<usize>().ok()?)))
    else {
        return;
    };
    let Some(run) = current.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
        return;
    };
    if run.id != run_id || seq >= run.arrived.len() {
        return;
    }
    if run.arrived[seq]
        .compare_exchange(0, t, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
    {
        run.last_arrival.fetch_max(t, Ordering::SeqCst);
        run.arrivals.fetch_add(1, Ordering::SeqCst);
    } else {
        run.duplicates.fetch_add(1, Ordering::SeqCst);
    }
}

// ---- the load client -------------------------------------------------------

#[derive(Clone)]
struct Load {
    sessions: usize,
    messages: u64,
    per_connection: u64,
    max: Duration,
    size: usize,
}

#[derive(Default)]
struct Outcome {
    accepted: u64,
    failures: u64,
    secs: f64,
    first_error: Option<String>,
    cipher: Option<String>,
}

struct Shared {
    next: AtomicU64,
    total: u64,
    accepted: AtomicU64,
    failures: AtomicU64,
    first_error: Mutex<Option<String>>,
    cipher: Mutex<Option<String>>,
    deadline: Instant,
    run: Arc<Run>,
    body: Vec<u8>,
}

impl Shared {
    /// Takes one message to send (its sequence number); None when none is
    /// left or time is up.
    fn claim(&self) -> Option<u64> {
        if STOP.load(Ordering::Relaxed) || Instant::now() >= self.deadline {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        (n < self.total).then_some(n)
    }

    fn left(&self) -> bool {
        self.next.load(Ordering::Relaxed) < self.total
    }

    /// Message `seq`: its header, then the shared body.
    fn message(&self, seq: u64) -> Vec<u8> {
        let mut m = Vec::with_capacity(self.body.len() + 64);
        m.extend_from_slice(format!("X-Bench-Seq: {}.{seq}\r\n", self.run.id).as_bytes());
        m.extend_from_slice(&self.body);
        m
    }
}

/// `p.messages` messages over `p.sessions` concurrent sessions.
async fn load(
    addr: SocketAddr,
    tls: Option<&TlsConnector>,
    p: &Load,
    run: &Arc<Run>,
) -> Result<Outcome> {
    let start = Instant::now();
    let shared = Arc::new(Shared {
        next: AtomicU64::new(0),
        total: p.messages,
        accepted: AtomicU64::new(0),
        failures: AtomicU64::new(0),
        first_error: Mutex::new(None),
        cipher: Mutex::new(None),
        deadline: start + p.max,
        run: run.clone(),
        body: body(p.size),
    });
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..p.sessions {
        let (shared, tls, p) = (shared.clone(), tls.cloned(), p.clone());
        set.spawn(async move {
            while shared.left() {
                match connection(addr, tls.as_ref(), &p, &shared).await {
                    Ok(false) => break,
                    Ok(true) => {}
                    Err(e) => {
                        let n = shared.failures.fetch_add(1, Ordering::Relaxed) + 1;
                        let mut first =
                            shared.first_error.lock().unwrap_or_else(|p| p.into_inner());
                        first.get_or_insert_with(|| format!("{e:#}"));
                        if n >= MAX_FAILURES {
                            shared.next.store(shared.total, Ordering::Relaxed);
                        }
                    }
                }
            }
        });
    }
    let all = async {
        while let Some(r) = set.join_next().await {
            r.context("client task")?;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(p.max + IO_TIMEOUT * 2, all)
        .await
        .map_err(|_| anyhow!("load run did not finish in time"))??;
    let secs = start.elapsed().as_secs_f64();
    interrupted()?;
    let first_error = shared
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let cipher = shared
        .cipher
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    Ok(Outcome {
        accepted: shared.accepted.load(Ordering::Relaxed),
        failures: shared.failures.load(Ordering::Relaxed),
        secs,
        first_error,
        cipher,
    })
}

/// One connection: EHLO, STARTTLS when `tls`, up to `per_connection`
/// messages, QUIT. Ok(false) when there was nothing left to send.
async fn connection(
    addr: SocketAddr,
    tls: Option<&TlsConnector>,
    p: &Load,
    shared: &Shared,
) -> Result<bool> {
    let Some(first) = shared.claim() else {
        return Ok(false);
    };
    let tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connect timeout"))??;
    tcp.set_nodelay(true)?;
    let mut c = Client::new(tcp);
    c.expect(220).await?;
    c.send(b"EHLO client.contoso.com\r\n").await?;
    c.expect(250).await?;
    match tls {
        None => transactions(&mut c, p, shared, first).await?,
        Some(tls) => {
            let mut c = starttls(c, tls).await?;
            if shared
                .cipher
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_none()
            {
                let (_, conn) = c.s.get_ref();
                let desc = format!(
                    "{:?} {:?}",
                    conn.protocol_version()
                        .ok_or_else(|| anyhow!("no TLS version"))?,
                    conn.negotiated_cipher_suite()
                        .ok_or_else(|| anyhow!("no cipher"))?
                        .suite()
                );
                *shared.cipher.lock().unwrap_or_else(|p| p.into_inner()) = Some(desc);
            }
            transactions(&mut c, p, shared, first).await?;
        }
    }
    Ok(true)
}

async fn starttls(
    mut c: Client<TcpStream>,
    tls: &TlsConnector,
) -> Result<Client<tokio_rustls::client::TlsStream<TcpStream>>> {
    c.send(b"STARTTLS\r\n").await?;
    c.expect(220).await?;
    ensure!(c.buf.is_empty(), "data after the STARTTLS reply");
    let name = ServerName::try_from(SERVER_NAME)?;
    let s = tokio::time::timeout(IO_TIMEOUT, tls.connect(name, c.s))
        .await
        .map_err(|_| anyhow!("TLS handshake timeout"))?
        .context("TLS handshake")?;
    let mut c = Client::new(s);
    c.send(b"EHLO client.contoso.com\r\n").await?;
    c.expect(250).await?;
    Ok(c)
}

/// Sends messages (the first one, `seq`, already claimed), then QUIT.
async fn transactions<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut Client<S>,
    p: &Load,
    shared: &Shared,
    mut seq: u64,
) -> Result<()> {
    let envelope = format!("MAIL FROM:<{FROM}>\r\nRCPT TO:<{TO}>\r\nDATA\r\n");
    let mut sent = 0;
    loop {
        // PIPELINING (both relays offer it): the envelope in one write.
        c.send(envelope.as_bytes()).await?;
        c.expect(250).await?;
        c.expect(250).await?;
        c.expect(354).await?;
        c.send(&shared.message(seq)).await?;
        c.expect(250).await?;
        shared.run.acked[seq as usize].store(now_ns(), Ordering::SeqCst);
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        sent += 1;
        if sent >= p.per_connection {
            break;
        }
        match shared.claim() {
            Some(n) => seq = n,
            None => break,
        }
    }
    c.send(b"QUIT\r\n").await?;
    c.expect(221).await?;
    Ok(())
}

/// An SMTP client connection: replies are read line by line.
struct Client<S> {
    s: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    fn new(s: S) -> Self {
        Client {
            s,
            buf: Vec::with_capacity(1024),
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        tokio::time::timeout(IO_TIMEOUT, async {
            self.s.write_all(bytes).await?;
            self.s.flush().await
        })
        .await
        .map_err(|_| anyhow!("write timeout"))?
        .context("write")
    }

    async fn line(&mut self) -> Result<String> {
        loop {
            if let Some(p) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=p).collect();
                return Ok(String::from_utf8_lossy(&line).trim_end().to_string());
            }
            ensure!(self.buf.len() < 64 * 1024, "reply line too long");
            let mut tmp = [0u8; 4096];
            let n = tokio::time::timeout(IO_TIMEOUT, self.s.read(&mut tmp))
                .await
                .map_err(|_| anyhow!("read timeout"))?
                .context("read")?;
            ensure!(n > 0, "connection closed by the server");
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    /// Reads one (possibly multi-line) reply and checks its code.
    async fn expect(&mut self, code: u16) -> Result<()> {
        let mut text = String::new();
        loop {
            let line = self.line().await?;
            let got: u16 = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| anyhow!("not a reply: {line:?}"))?;
            let last = line.as_bytes().get(3) != Some(&b'-');
            text.push_str(&line);
            text.push('\n');
            if last {
                ensure!(got == code, "expected {code}, got: {}", text.trim_end());
                return Ok(());
            }
        }
    }
}

/// The message after the `X-Bench-Seq` line: about `size` octets in all
/// (headers included), CRLF line ends, ending with the terminating dot line;
/// no line starts with a dot.
fn body(size: usize) -> Vec<u8> {
    let size = size.saturating_sub(32);
    let mut m = format!(
        "From: <{FROM}>\r\nTo: <{TO}>\r\nSubject: smtp-edge relay benchmark\r\n\
         Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <bench@contoso.com>\r\n\r\n"
    )
    .into_bytes();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd";
    while m.len() + line.len() + 2 <= size {
        m.extend_from_slice(line);
        m.extend_from_slice(b"\r\n");
    }
    while m.len() + 2 < size {
        m.push(b'x');
    }
    m.extend_from_slice(b"\r\n.\r\n");
    m
}

// ---- helpers ---------------------------------------------------------------

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Writes dirty pages out, so a run does not pay for the previous one's.
fn settle() {
    // SAFETY: no preconditions.
    unsafe { libc::sync() };
    std::thread::sleep(Duration::from_millis(300));
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Raises RLIMIT_NOFILE (soft, and hard when needed) to at least `want`
/// descriptors; the daemons started later inherit it.
fn raise_nofile(want: u64) -> Result<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        ensure!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0,
            "getrlimit"
        );
        if r.rlim_cur >= want {
            return Ok(r.rlim_cur);
        }
        r.rlim_max = r.rlim_max.max(want);
        r.rlim_cur = want;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
            bail!(
                "cannot raise RLIMIT_NOFILE to {want}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(want)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn postfix_version() -> String {
    Command::new("postconf")
        .args(["-d", "-h", "mail_version"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "?".into())
}

/// The last `n` lines of a log.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---- certificates ----------------------------------------------------------

struct Certs {
    /// Leaf then CA, PEM.
    chain: PathBuf,
    key: PathBuf,
    leaf_der: CertificateDer<'static>,
    key_der: Vec<u8>,
    ca: CertificateDer<'static>,
}

/// A CA and a server certificate (ECDSA P-256) for SERVER_NAME and
/// SINK_NAME; both relays and the sink present the same one.
fn certificates(dir: &Path) -> Result<Certs> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "smtp-edge bench CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let mut leaf = CertificateParams::new(vec![SERVER_NAME.to_string(), SINK_NAME.to_string()])?;
    leaf.distinguished_name
        .push(DnType::CommonName, SERVER_NAME);
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &ca)?;
    let chain = dir.join("server.pem");
    let key_path = dir.join("server.key");
    std::fs::write(&chain, format!("{}{}", cert.pem(), ca.pem()))?;
    std::fs::write(&key_path, key.serialize_pem())?;
    set_mode(&key_path, 0o600)?;
    Ok(Certs {
        chain,
        key: key_path,
        leaf_der: cert.der().clone(),
        key_der: key.serialize_der(),
        ca: ca.der().clone(),
    })
}

/// The client's TLS: trusts the bench CA, no session resumption (every
/// connection does a full handshake, on both relays).
fn client_config(ca: &CertificateDer<'static>) -> Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.resumption = rustls::client::Resumption::disabled();
    Ok(TlsConnector::from(Arc::new(c)))
}

// ---- the relays ------------------------------------------------------------

trait Relay {
    fn addr(&self) -> SocketAddr;
    /// The end of its log, for error messages.
    fn log_tail(&self) -> String;
}

/// smtp-edge, release build, `[filter]` off.
struct Edge {
    daemon: Daemon,
    addr: SocketAddr,
}

impl Edge {
    fn start(dir: &Path, certs: &Certs, sink: SocketAddr, tls: bool, args: &Args) -> Result<Edge> {
        let port = free_port()?;
        let config = dir.join("smtp-edge.toml");
        let max_conn = args.sessions * 4 + 100;
        let text = format!(
            r#"[daemon]
state_dir = "{d}/state"
control_socket = "{d}/control.sock"

[filter]
enabled = false

[smtp]
enabled = true
listen = ["127.0.0.1:{port}"]
hostname = "{SERVER_NAME}"
accepted_domains = ["contoso.com"]
spool_dir = "{d}/spool"
fsync = true
max_connections = {max_conn}
max_connections_per_source = {max_conn}

[smtp.tls]
certificate = "{chain}"
key = "{key}"

[[inbound_connectors]]
name = "apps"
sources = ["127.0.0.1"]
relay = true

[[outbound_connectors]]
name = "sink"
recipient_domains = ["*"]
smart_hosts = ["127.0.0.1:{sink_port}"]
tls = "{level}"

[queue]
max_concurrency = {conc}
max_per_destination = {sessions}
"#,
            d = dir.display(),
            chain = certs.chain.display(),
            key = certs.key.display(),
            sink_port = sink.port(),
            level = if tls { "encryption-only" } else { "none" },
            conc = args.sessions.max(100),
            sessions = args.sessions,
        );
        std::fs::write(&config, text)?;
        let daemon = Daemon::start(
            None,
            &config,
            &dir.join("control.sock"),
            &dir.join("daemon.log"),
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_banner(addr)
            .with_context(|| format!("smtp-edge's listener\n{}", daemon.log_text()))?;
        Ok(Edge { daemon, addr })
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.daemon.stop();
    }
}

impl Relay for Edge {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn log_tail(&self) -> String {
        tail(&self.daemon.log_text(), 30)
    }
}

/// Waits (at most 20 s) until `addr` greets with 220.
fn wait_banner(addr: SocketAddr) -> Result<()> {
    use std::io::Read;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        interrupted()?;
        if let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut b = [0u8; 512];
            if let Ok(n) = s.read(&mut b)
                && b[..n].starts_with(b"220")
            {
                return Ok(());
            }
        }
        ensure!(Instant::now() < deadline, "no 220 banner on {addr}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A private Postfix instance configured as a relay to the sink. Stopped on
/// drop (its directory goes with the bench's).
struct Postfix {
    conf: PathBuf,
    queue: PathBuf,
    addr: SocketAddr,
    log: PathBuf,
    master_pid: Option<u32>,
}

impl Postfix {
    fn start(
        dir: &Path,
        certs: &Certs,
        sink: SocketAddr,
        tls: bool,
        args: &Args,
    ) -> Result<Postfix> {
        let conf = dir.join("conf");
        let queue = dir.join("queue");
        let data = dir.join("data");
        for d in [dir, &conf, &queue, &data] {
            std::fs::create_dir_all(d)?;
            set_mode(d, 0o755)?;
        }
        let (uid, gid) = user_ids("postfix")?;
        std::os::unix::fs::chown(&data, Some(uid), Some(gid)).context("chown data_directory")?;
        let port = free_port()?;
        let log = dir.join("maillog");
        let main_cf = format!(
            r#"# Private instance of smtp-edge-bench-relay; not the system's.
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = {SERVER_NAME}
mydomain = contoso.com
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
biff = no
smtpd_relay_restrictions = permit_mynetworks, reject
# Everything goes to the sink.
relayhost = [127.0.0.1]:{sink_port}
smtp_dns_support_level = disabled
default_destination_concurrency_limit = {sessions}
smtp_tls_security_level = {level}
smtp_tls_loglevel = 0
# No reverse DNS for 127.0.0.1 (spares Postfix work smtp-edge does not do).
smtpd_peername_lookup = no
# An smtpd process for every client session, an smtp for every delivery.
default_process_limit = {procs}
smtpd_tls_security_level = may
smtpd_tls_cert_file = {chain}
smtpd_tls_key_file = {key}
smtpd_tls_loglevel = 0
maillog_file = {log}
maillog_file_prefixes = {dir}
"#,
            queue = queue.display(),
            data = data.display(),
            sink_port = sink.port(),
            sessions = args.sessions,
            level = if tls { "encrypt" } else { "none" },
            chain = certs.chain.display(),
            key = certs.key.display(),
            log = log.display(),
            dir = dir.display(),
            procs = args.sessions.max(45) * 2 + 10,
        );
        let master_cf = format!(
            "127.0.0.1:{port} inet n - n - - smtpd\n\
             cleanup   unix  n - n -     0 cleanup\n\
             qmgr      unix  n - n 300   1 qmgr\n\
             tlsmgr    unix  - - n 1000? 1 tlsmgr\n\
             rewrite   unix  - - n -     - trivial-rewrite\n\
             bounce    unix  - - n -     0 bounce\n\
             defer     unix  - - n -     0 bounce\n\
             trace     unix  - - n -     0 bounce\n\
             verify    unix  - - n -     1 verify\n\
             flush     unix  n - n 1000? 0 flush\n\
             proxymap  unix  - - n -     - proxymap\n\
             showq     unix  n - n -     - showq\n\
             error     unix  - - n -     - error\n\
             retry     unix  - - n -     - error\n\
             discard   unix  - - n -     - discard\n\
             smtp      unix  - - n -     - smtp\n\
             relay     unix  - - n -     - smtp\n\
             anvil     unix  - - n -     1 anvil\n\
             scache    unix  - - n -     1 scache\n\
             postlog   unix-dgram n - n - 1 postlogd\n"
        );
        std::fs::write(conf.join("main.cf"), main_cf)?;
        std::fs::write(conf.join("master.cf"), master_cf)?;
        let mut p = Postfix {
            conf,
            queue,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
            master_pid: None,
        };
        p.postfix("check")?;
        p.postfix("start")?;
        p.master_pid = std::fs::read_to_string(p.queue.join("pid/master.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        wait_banner(p.addr).with_context(|| format!("Postfix's smtpd\n{}", p.log_text()))?;
        Ok(p)
    }

    fn postfix(&self, cmd: &str) -> Result<()> {
        let out = Command::new("postfix")
            .arg("-c")
            .arg(&self.conf)
            .arg(cmd)
            .env("MAIL_CONFIG", &self.conf)
            .stdin(Stdio::null())
            .output()
            .context("run postfix")?;
        ensure!(
            out.status.success(),
            "postfix -c {} {cmd}: {}\n{}{}",
            self.conf.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        Ok(())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Relay for Postfix {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn log_tail(&self) -> String {
        tail(&self.log_text(), 30)
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = self.postfix("stop");
        let Some(pid) = self.master_pid else { return };
        let alive = || Path::new(&format!("/proc/{pid}")).exists();
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive() {
            let _ = self.postfix("abort");
            std::thread::sleep(Duration::from_millis(500));
        }
        if alive() {
            // SAFETY: kill(2) on the master we started (its children follow).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

fn user_ids(name: &str) -> Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == name)
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .ok_or_else(|| anyhow!("no user {name} (Debian package postfix)"))
}
