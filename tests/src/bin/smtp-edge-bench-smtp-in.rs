//! `smtp-edge-bench-smtp-in` (`cargo xtask bench smtp-in`): what the receiving
//! side accepts, against Postfix on the same machine in the same run.
//!
//! 1. Idle sessions: a fresh daemon, 1,000 connections (banner read, EHLO
//!    answered) left open; the daemon's VmRSS before and after gives KiB per
//!    session. Again on another fresh daemon with the sessions in TLS
//!    (STARTTLS, handshake, EHLO).
//! 2. Sessions in DATA: a fresh daemon, `--data-sessions` sessions (200)
//!    each in DATA having sent `--data-mb` MB (30) of a 36 MB message; the
//!    daemon's VmRSS growth per session shows that message data streams to
//!    the spool instead of piling up in memory.
//! 3. Accept rate: messages per second acknowledged with 250, which both
//!    servers give only once the message is fsync'd in their queue. smtp-edge
//!    (release build, `fsync = true`) against a private Postfix instance
//!    (smtpd + cleanup; a `HOLD` recipient action keeps every message in the
//!    hold queue, so Postfix does the receive-cleanup-fsync work and no
//!    delivery). Both queues live in one temporary directory (same file
//!    system). The load comes from one client written here, the same for
//!    both servers, plain and STARTTLS: `--sessions` concurrent sessions,
//!    `--per-connection` messages per connection (1, as smtp-source, by
//!    default), MAIL/RCPT/DATA pipelined, no TLS session resumption (a full
//!    handshake every connection, on both). Rounds alternate the servers; the
//!    median is reported, with every run in the JSON.
//! 4. Plain again with Postfix's own `smtp-source` (which has no STARTTLS),
//!    as a cross-check of the client.
//!
//! Every run is bounded in messages and seconds; traffic is loopback only.
//! Human-readable results go to stdout; the last line is one JSON object.
//! Needs root (Postfix runs as its `postfix` user) and the Debian package
//! postfix (`cargo xtask setup`). The private Postfix is stopped and its
//! directory removed at the end, also on failure or Ctrl-C.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::Parser;
use serde_json::{Map as JsonMap, Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use smtp_edge_tests::bench::{
    self, Certs, Client, Outcome, Postfix, PostfixDirs, Tally, certificates, client_config,
    interrupted, postfix_version, raise_nofile, round, run_sessions, set_mode, settle, stopped,
    wait_banner,
};
use smtp_edge_tests::ports::free_port;
use smtp_edge_tests::{Daemon, is_root};

/// Benchmark of smtp-edge's receiving side against Postfix (last line of
/// stdout: JSON).
#[derive(Parser)]
#[command(name = "smtp-edge-bench-smtp-in")]
struct Args {
    /// Concurrent client sessions.
    #[arg(long, default_value_t = 20)]
    sessions: usize,
    /// Messages per run.
    #[arg(long, default_value_t = 5000)]
    messages: u64,
    /// Message size in octets (as smtp-source -l).
    #[arg(long, default_value_t = 10240)]
    size: usize,
    /// Messages per connection.
    #[arg(long, default_value_t = 1)]
    per_connection: u64,
    /// Runs per figure (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Idle sessions for the memory figure.
    #[arg(long, default_value_t = 1000)]
    idle: usize,
    /// Sessions in DATA for the streaming memory figure.
    #[arg(long, default_value_t = 200)]
    data_sessions: usize,
    /// MB each of them sends before the measurement.
    #[arg(long, default_value_t = 30)]
    data_mb: usize,
    /// Longest run, in seconds (a run stops taking new messages then).
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
    /// Threads of the load client (the machine's CPUs are shared with the servers).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Directory for both queues (default: the system temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Skip parts: any of idle, data, plain, tls, smtp-source.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
}

const FROM: &str = "sender@example.org";
const TO: &str = "user@contoso.com";
/// Name in the test certificate (both servers present it).
const SERVER_NAME: &str = "mx.contoso.com";
/// Name the client gives in EHLO.
const EHLO: &str = "client.example.org";
/// Messages sent to each server (and mode) before measuring.
const WARMUP: u64 = 200;

fn main() {
    bench::install_signal_handlers();
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("smtp-edge-bench-smtp-in: error: {e:#}");
        std::process::exit(1);
    }
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
        (100..=10_000_000).contains(&args.size),
        "--size must be in 100..=10000000"
    );
    ensure!(
        (1..=100_000).contains(&args.per_connection),
        "--per-connection must be in 1..=100000"
    );
    ensure!(
        (1..=50).contains(&args.rounds),
        "--rounds must be in 1..=50"
    );
    ensure!(
        (1..=20_000).contains(&args.idle),
        "--idle must be in 1..=20000"
    );
    ensure!(
        (1..=3600).contains(&args.max_seconds),
        "--max-seconds must be in 1..=3600"
    );
    ensure!(
        (1..=8).contains(&args.client_threads),
        "--client-threads must be in 1..=8"
    );
    for tool in ["postfix", "postconf", "smtp-source"] {
        ensure!(
            Path::new("/usr/sbin").join(tool).is_file(),
            "/usr/sbin/{tool} not found (Debian package postfix; `cargo xtask setup`)"
        );
    }
    ensure!(
        (1..=2000).contains(&args.data_sessions),
        "--data-sessions must be in 1..=2000"
    );
    ensure!(
        (1..=35).contains(&args.data_mb),
        "--data-mb must be in 1..=35 (the message limit is 36 MB)"
    );
    for s in &args.skip {
        ensure!(
            ["idle", "data", "plain", "tls", "smtp-source"].contains(&s.as_str()),
            "--skip: unknown part `{s}` (idle, data, plain, tls, smtp-source)"
        );
    }
    let skip = |part: &str| args.skip.iter().any(|s| s == part);
    let started = Instant::now();
    let nofile = raise_nofile(
        (args.idle.max(args.data_sessions)) as u64 * 2 + args.sessions as u64 * 4 + 1024,
    )?;

    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("smtp-edge-bench-smtp-in.")
        .tempdir_in(&base)
        .with_context(|| format!("temporary directory in {}", base.display()))?;
    // Postfix's processes run as `postfix` and must reach their queue.
    set_mode(tmp.path(), 0o755)?;
    let certs = certificates(tmp.path(), &[SERVER_NAME])?;
    let tls_client = client_config(&certs.ca)?;

    let rt = if args.client_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.client_threads)
            .enable_all()
            .build()?
    };
    let message = Arc::new(bench::message(
        args.size,
        FROM,
        TO,
        "smtp-edge benchmark",
        "bench@example.org",
    ));

    let mut out = JsonMap::new();
    println!(
        "smtp-edge receiving side vs Postfix {} (loopback, fsync on, {} CPUs)",
        postfix_version(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "queues in {} (file system shared by both); RLIMIT_NOFILE {nofile}",
        tmp.path().display()
    );

    // 1. Idle sessions, each on a fresh daemon.
    let max_conn = (args.idle.max(args.data_sessions) + args.sessions + 100) as u32;
    let edge_dir = tmp.path().join("edge");
    std::fs::create_dir(&edge_dir)?;
    if !skip("idle") {
        println!(
            "\n-- idle sessions ({} per daemon, fresh daemon each) --",
            args.idle
        );
        for (label, tls) in [("plain", None), ("tls", Some(&tls_client))] {
            interrupted()?;
            let edge = Edge::start(&edge_dir, &certs, max_conn, &format!("idle-{label}"))?;
            let r = rt.block_on(idle_rss(edge.pid, edge.addr, args.idle, tls))?;
            drop(edge);
            let per = (r.after_kib as f64 - r.before_kib as f64) / args.idle as f64;
            println!(
                "  {label:5}: VmRSS {} KiB -> {} KiB with {} sessions: {:.1} KiB per session",
                r.before_kib, r.after_kib, args.idle, per
            );
            let key = if label == "plain" {
                "idle_session_rss_kib"
            } else {
                "idle_tls_session_rss_kib"
            };
            out.insert(key.into(), json!(round(per, 1)));
            out.insert(format!("idle_{label}_rss_before_kib"), json!(r.before_kib));
            out.insert(format!("idle_{label}_rss_after_kib"), json!(r.after_kib));
        }
        out.insert("idle_sessions".into(), json!(args.idle));
    }

    // 2. Sessions in DATA, on a fresh daemon.
    if !skip("data") {
        interrupted()?;
        println!(
            "\n-- sessions in DATA ({} sessions, {} MB sent each, fresh daemon) --",
            args.data_sessions, args.data_mb
        );
        let edge = Edge::start(&edge_dir, &certs, max_conn, "data")?;
        let r = rt.block_on(data_rss(
            edge.pid,
            edge.addr,
            args.data_sessions,
            args.data_mb,
        ))?;
        drop(edge);
        let per = (r.after_kib as f64 - r.before_kib as f64) / args.data_sessions as f64;
        println!(
            "  VmRSS {} KiB -> {} KiB with {} sessions in DATA ({} MB each): {:.1} KiB per session",
            r.before_kib, r.after_kib, args.data_sessions, args.data_mb, per
        );
        out.insert("data_session_rss_kib".into(), json!(round(per, 1)));
        out.insert("data_rss_before_kib".into(), json!(r.before_kib));
        out.insert("data_rss_after_kib".into(), json!(r.after_kib));
        out.insert("data_sessions".into(), json!(args.data_sessions));
        out.insert("data_mb_each".into(), json!(args.data_mb));
    }

    // 3. and 4. Accept rates.
    let postfix = start_postfix(&tmp.path().join("postfix"), &certs, args.sessions)?;
    let edge = Edge::start(&edge_dir, &certs, max_conn, "load")?;
    let servers: [(&str, &dyn Queue); 2] = [("smtp-edge", &edge), ("postfix", &postfix)];
    let params = Load {
        sessions: args.sessions,
        messages: args.messages,
        per_connection: args.per_connection,
        max: Duration::from_secs(args.max_seconds),
        message: message.clone(),
    };
    println!(
        "\n-- accept rate: {} messages of {} octets per run, {} sessions, {} per connection; median of {} --",
        args.messages, args.size, args.sessions, args.per_connection, args.rounds
    );
    let mut modes: Vec<(&str, Option<&TlsConnector>)> = Vec::new();
    if !skip("plain") {
        modes.push(("plain", None));
    }
    if !skip("tls") {
        modes.push(("tls", Some(&tls_client)));
    }
    // Warm-up: Postfix starts its processes, both fill their caches.
    for (_, q) in servers {
        for (_, tls) in &modes {
            let w = Load {
                messages: WARMUP,
                ..params.clone()
            };
            let base = q.count()?;
            let r = rt.block_on(load(q.addr(), *tls, &w))?;
            let stored = q.wait_count(base, r.accepted)?;
            ensure!(
                r.accepted == WARMUP && stored == WARMUP,
                "{}: warm-up: {} of {WARMUP} accepted, {stored} in its queue: {}",
                q.name(),
                r.accepted,
                r.first_error.unwrap_or_default()
            );
        }
    }
    // The queues are not emptied between runs: on ext4 without a journal,
    // inodes freed in the last minutes are skipped by the allocator one by
    // one (`recently_deleted`), so deleting thousands of messages would slow
    // whichever server runs next. Counts are taken before and after each run.
    let mut rates: JsonMap<String, Value> = JsonMap::new();
    let mut medians = std::collections::BTreeMap::new();
    for (mode, tls) in &modes {
        let mut per_server: Vec<Vec<f64>> = vec![Vec::new(); servers.len()];
        let mut cipher = JsonMap::new();
        for round in 0..args.rounds {
            // Alternate who goes first, so neither always inherits the other's
            // write-back.
            let order: Vec<usize> = if round % 2 == 0 {
                (0..servers.len()).collect()
            } else {
                (0..servers.len()).rev().collect()
            };
            for i in order {
                interrupted()?;
                let (name, q) = servers[i];
                let base = q.count()?;
                settle(200);
                let r = rt.block_on(load(q.addr(), *tls, &params))?;
                let stored = q.wait_count(base, r.accepted)?;
                ensure!(
                    r.accepted == args.messages && stored == r.accepted,
                    "{name} {mode}: {} of {} accepted, {stored} in its queue ({} failed connections): {}",
                    r.accepted,
                    args.messages,
                    r.failures,
                    r.first_error.unwrap_or_default()
                );
                let rate = r.accepted as f64 / r.secs;
                println!(
                    "  {mode:5} round {} {name:9}: {:8.0} msg/s ({} in {:.2} s{})",
                    round + 1,
                    rate,
                    r.accepted,
                    r.secs,
                    r.cipher
                        .as_deref()
                        .map(|c| format!(", {c}"))
                        .unwrap_or_default()
                );
                if let Some(c) = r.cipher {
                    cipher.insert(name.into(), json!(c));
                }
                per_server[i].push(rate);
            }
        }
        for (i, (name, _)) in servers.iter().enumerate() {
            let m = median(&mut per_server[i].clone());
            medians.insert((*mode, *name), m);
            let key = format!("{}_{mode}_msgs_per_s", name.replace('-', "_"));
            out.insert(key.clone(), json!(round(m, 0)));
            rates.insert(
                key,
                json!(
                    per_server[i]
                        .iter()
                        .map(|r| round(*r, 0))
                        .collect::<Vec<_>>()
                ),
            );
        }
        if !cipher.is_empty() {
            out.insert("tls_cipher".into(), Value::Object(cipher));
        }
        let ratio = medians[&(*mode, "smtp-edge")] / medians[&(*mode, "postfix")];
        out.insert(
            format!("accept_ratio_vs_postfix_{mode}"),
            json!(round(ratio, 2)),
        );
    }

    if !skip("smtp-source") {
        println!(
            "\n-- cross-check: Postfix's smtp-source, plain; median of {} --",
            args.rounds
        );
        let mut per_server: Vec<Vec<f64>> = vec![Vec::new(); servers.len()];
        for round in 0..args.rounds {
            let order: Vec<usize> = if round % 2 == 0 {
                (0..servers.len()).collect()
            } else {
                (0..servers.len()).rev().collect()
            };
            for i in order {
                interrupted()?;
                let (name, q) = servers[i];
                let base = q.count()?;
                settle(200);
                let secs = smtp_source(q.addr(), args, tmp.path())?;
                let stored = q.wait_count(base, args.messages)?;
                ensure!(
                    stored == args.messages,
                    "{name}: smtp-source sent {} messages, {stored} in the queue",
                    args.messages
                );
                let rate = args.messages as f64 / secs;
                println!(
                    "  smtp-source round {} {name:9}: {rate:8.0} msg/s ({} in {secs:.2} s)",
                    round + 1,
                    args.messages
                );
                per_server[i].push(rate);
            }
        }
        let mut m = [0.0; 2];
        for (i, (name, _)) in servers.iter().enumerate() {
            m[i] = median(&mut per_server[i].clone());
            let key = format!("smtp_source_{}_plain_msgs_per_s", name.replace('-', "_"));
            out.insert(key.clone(), json!(round(m[i], 0)));
            rates.insert(
                key,
                json!(
                    per_server[i]
                        .iter()
                        .map(|r| round(*r, 0))
                        .collect::<Vec<_>>()
                ),
            );
        }
        out.insert(
            "smtp_source_ratio_vs_postfix_plain".into(),
            json!(round(m[0] / m[1], 2)),
        );
    }
    drop(edge);
    drop(postfix);

    println!("\n-- summary --");
    for mode in ["plain", "tls"] {
        if let (Some(e), Some(p)) = (
            medians.get(&(mode, "smtp-edge")),
            medians.get(&(mode, "postfix")),
        ) {
            let ratio = e / p;
            println!(
                "  {mode:5}: smtp-edge {e:.0} msg/s, Postfix {p:.0} msg/s: {ratio:.2}x (target >= 2x: {})",
                if ratio >= 2.0 { "met" } else { "NOT met" }
            );
        }
    }
    if let Some(Value::Number(kib)) = out.get("idle_session_rss_kib") {
        let kib = kib.as_f64().unwrap_or(f64::NAN);
        println!(
            "  idle session: {kib:.1} KiB (target <= 64 KiB: {})",
            if kib <= 64.0 { "met" } else { "NOT met" }
        );
    }
    if let Some(Value::Number(kib)) = out.get("idle_tls_session_rss_kib") {
        println!("  idle TLS session: {kib} KiB");
    }
    if let Some(kib) = out.get("data_session_rss_kib").and_then(Value::as_f64) {
        println!(
            "  session in DATA: {kib:.1} KiB (target <= 256 KiB: {})",
            if kib <= 256.0 { "met" } else { "NOT met" }
        );
    }
    let ratios_met = ["plain", "tls"].iter().all(|m| {
        out.get(&format!("accept_ratio_vs_postfix_{m}"))
            .and_then(Value::as_f64)
            .is_none_or(|r| r >= 2.0)
    });
    let idle_met = out
        .get("idle_session_rss_kib")
        .and_then(Value::as_f64)
        .is_none_or(|k| k <= 64.0);
    let data_met = out
        .get("data_session_rss_kib")
        .and_then(Value::as_f64)
        .is_none_or(|k| k <= 256.0);
    out.insert("target_accept_ratio".into(), json!(2.0));
    out.insert("target_idle_session_rss_kib".into(), json!(64));
    out.insert("target_data_session_rss_kib".into(), json!(256));
    out.insert(
        "targets_met".into(),
        json!(ratios_met && idle_met && data_met),
    );
    out.insert("runs".into(), Value::Object(rates));
    out.insert(
        "params".into(),
        json!({
            "sessions": args.sessions,
            "messages": args.messages,
            "size": args.size,
            "per_connection": args.per_connection,
            "rounds": args.rounds,
            "client_threads": args.client_threads,
            "postfix_version": postfix_version(),
        }),
    );
    let total = started.elapsed().as_secs_f64();
    out.insert("total_seconds".into(), json!(round(total, 1)));
    println!("\ntotal {total:.1} s");
    println!("{}", Value::Object(out));
    Ok(())
}

// ---- helpers ---------------------------------------------------------------

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn count_files(dir: &Path) -> Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let e = e?;
        if e.file_type()?.is_dir() {
            n += count_files(&e.path())?;
        } else {
            n += 1;
        }
    }
    Ok(n)
}

fn vm_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

// ---- the servers -----------------------------------------------------------

/// A server under test and its queue.
trait Queue {
    fn name(&self) -> &'static str;
    fn addr(&self) -> SocketAddr;
    /// Messages in the queue.
    fn count(&self) -> Result<u64>;
    /// Waits (at most 10 s) until the queue holds `n` messages more than
    /// `base`; returns how many more it holds.
    fn wait_count(&self, base: u64, n: u64) -> Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let c = self.count()?.saturating_sub(base);
            if c >= n || Instant::now() >= deadline {
                return Ok(c);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// smtp-edge, release build, `[filter]` off.
struct Edge {
    daemon: Daemon,
    addr: SocketAddr,
    spool: PathBuf,
    pid: u32,
}

impl Edge {
    fn start(dir: &Path, certs: &Certs, max_conn: u32, tag: &str) -> Result<Edge> {
        let port = free_port();
        let config = dir.join(format!("smtp-edge-{tag}.toml"));
        let spool = dir.join("spool");
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
spool_dir = "{spool}"
fsync = true
max_connections = {max_conn}
max_connections_per_source = {max_conn}

[smtp.tls]
certificate = "{chain}"
key = "{key}"

[[inbound_connectors]]
name = "internet"
"#,
            d = dir.display(),
            spool = spool.display(),
            chain = certs.chain.display(),
            key = certs.key.display(),
        );
        std::fs::write(&config, text)?;
        let daemon = Daemon::start(
            None,
            &config,
            &dir.join("control.sock"),
            &dir.join(format!("daemon-{tag}.log")),
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_banner(addr).context("smtp-edge's listener")?;
        let pid = pid_of(&config)?;
        Ok(Edge {
            daemon,
            addr,
            spool,
            pid,
        })
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.daemon.stop();
    }
}

impl Queue for Edge {
    fn name(&self) -> &'static str {
        "smtp-edge"
    }
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn count(&self) -> Result<u64> {
        count_files(&self.spool.join("incoming"))
    }
}

/// The pid of the process whose command line names `config`.
fn pid_of(config: &Path) -> Result<u32> {
    let want = config.as_os_str().as_encoded_bytes();
    for e in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && cmd.split(|&b| b == 0).any(|a| a == want)
        {
            return Ok(pid);
        }
    }
    bail!("no process runs with {}", config.display())
}

/// Starts the private Postfix instance (see `bench::Postfix`), every message
/// held in the hold queue.
fn start_postfix(dir: &Path, certs: &Certs, sessions: usize) -> Result<Postfix> {
    let main_cf = |d: &PostfixDirs| {
        format!(
            r#"# Private instance of smtp-edge-bench-smtp-in; not the system's.
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
relay_domains = contoso.com
local_recipient_maps =
alias_maps =
alias_database =
biff = no
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
# Every message goes to the hold queue: received, cleaned up and fsync'd,
# never delivered.
smtpd_recipient_restrictions = check_recipient_access static:HOLD
# Held mail never reaches the queue manager, which would hand out the
# tokens cleanup waits for: without this each message would wait 1 s.
in_flow_delay = 0
# No reverse DNS for 127.0.0.1 (spares Postfix work smtp-edge does not do).
smtpd_peername_lookup = no
# An smtpd process for every client session.
default_process_limit = {procs}
smtpd_tls_security_level = may
smtpd_tls_cert_file = {chain}
smtpd_tls_key_file = {key}
smtpd_tls_loglevel = 0
maillog_file = {log}
maillog_file_prefixes = {dir}
"#,
            queue = d.queue.display(),
            data = d.data.display(),
            chain = certs.chain.display(),
            key = certs.key.display(),
            log = d.log.display(),
            dir = dir.display(),
            procs = sessions.max(90) + 10,
        )
    };
    Postfix::start(
        dir,
        main_cf,
        "cleanup   unix  n - n -     0 cleanup\n\
             qmgr      unix  n - n 300   1 qmgr\n\
             tlsmgr    unix  - - n 1000? 1 tlsmgr\n\
             rewrite   unix  - - n -     - trivial-rewrite\n\
             bounce    unix  - - n -     0 bounce\n\
             defer     unix  - - n -     0 bounce\n\
             trace     unix  - - n -     0 bounce\n\
             verify    unix  - - n -     1 verify\n\
             proxymap  unix  - - n -     - proxymap\n\
             showq     unix  n - n -     - showq\n\
             error     unix  - - n -     - error\n\
             retry     unix  - - n -     - error\n\
             discard   unix  - - n -     - discard\n\
             anvil     unix  - - n -     1 anvil\n\
             scache    unix  - - n -     1 scache\n\
             postlog   unix-dgram n - n - 1 postlogd\n",
    )
}

impl Queue for Postfix {
    fn name(&self) -> &'static str {
        "postfix"
    }
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn count(&self) -> Result<u64> {
        count_files(&self.queue.join("hold"))
    }
}

// ---- the load client -------------------------------------------------------

#[derive(Clone)]
struct Load {
    sessions: usize,
    messages: u64,
    per_connection: u64,
    max: Duration,
    message: Arc<Vec<u8>>,
}

struct Shared {
    remaining: AtomicI64,
    tally: Tally,
    deadline: Instant,
}

impl Shared {
    /// Takes one message to send; false when none is left or time is up.
    fn claim(&self) -> bool {
        !stopped()
            && Instant::now() < self.deadline
            && self.remaining.fetch_sub(1, Ordering::Relaxed) > 0
    }
}

/// `p.messages` messages over `p.sessions` concurrent sessions.
async fn load(addr: SocketAddr, tls: Option<&TlsConnector>, p: &Load) -> Result<Outcome> {
    let start = Instant::now();
    let shared = Arc::new(Shared {
        remaining: AtomicI64::new(p.messages as i64),
        tally: Tally::default(),
        deadline: start + p.max,
    });
    let secs = run_sessions(start, p.sessions, p.max, || {
        let (shared, tls, p) = (shared.clone(), tls.cloned(), p.clone());
        async move {
            while shared.remaining.load(Ordering::Relaxed) > 0 {
                match connection(addr, tls.as_ref(), &p, &shared).await {
                    Ok(false) => break,
                    Ok(true) => {}
                    Err(e) => {
                        if shared.tally.fail(&e) {
                            shared.remaining.store(0, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    })
    .await?;
    Ok(shared.tally.outcome(secs))
}

/// One connection: EHLO, STARTTLS when `tls`, up to `per_connection`
/// messages, QUIT. Ok(false) when there was nothing left to send.
async fn connection(
    addr: SocketAddr,
    tls: Option<&TlsConnector>,
    p: &Load,
    shared: &Shared,
) -> Result<bool> {
    if !shared.claim() {
        return Ok(false);
    }
    let mut c = Client::connect(addr, EHLO, true).await?;
    match tls {
        None => transactions(&mut c, p, shared).await?,
        Some(tls) => {
            let mut c = c.starttls(tls, SERVER_NAME, EHLO).await?;
            shared.tally.note_cipher(&c)?;
            transactions(&mut c, p, shared).await?;
        }
    }
    Ok(true)
}

/// Sends messages (the first one already claimed), then QUIT.
async fn transactions<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut Client<S>,
    p: &Load,
    shared: &Shared,
) -> Result<()> {
    let envelope = format!("MAIL FROM:<{FROM}>\r\nRCPT TO:<{TO}>\r\nDATA\r\n");
    let mut sent = 0;
    loop {
        // PIPELINING (both servers offer it): the envelope in one write.
        c.send(envelope.as_bytes()).await?;
        c.expect(250).await?;
        c.expect(250).await?;
        c.expect(354).await?;
        c.send(&p.message).await?;
        c.expect(250).await?;
        shared.tally.accepted.fetch_add(1, Ordering::Relaxed);
        sent += 1;
        if sent >= p.per_connection || !shared.claim() {
            break;
        }
    }
    c.send(b"QUIT\r\n").await?;
    c.expect(221).await?;
    Ok(())
}

// ---- idle sessions ---------------------------------------------------------

struct Rss {
    before_kib: u64,
    after_kib: u64,
}

/// Opens `n` sessions (EHLO answered; in TLS when `tls`) and leaves them
/// idle; the daemon's VmRSS before and after.
async fn idle_rss(pid: u32, addr: SocketAddr, n: usize, tls: Option<&TlsConnector>) -> Result<Rss> {
    enum Idle {
        Plain(Client<TcpStream>),
        Tls(Box<Client<tokio_rustls::client::TlsStream<TcpStream>>>),
    }
    async fn open(addr: SocketAddr, tls: Option<&TlsConnector>) -> Result<Idle> {
        let c = Client::connect(addr, EHLO, false).await?;
        Ok(match tls {
            None => Idle::Plain(c),
            Some(tls) => Idle::Tls(Box::new(c.starttls(tls, SERVER_NAME, EHLO).await?)),
        })
    }
    // A few sessions first, so what happens once (TLS setup, thread stacks)
    // is in the baseline.
    for _ in 0..3 {
        drop(open(addr, tls).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_kib = vm_rss_kib(pid)?;
    let mut open_sessions = Vec::with_capacity(n);
    let deadline = Instant::now() + Duration::from_secs(120);
    while open_sessions.len() < n {
        interrupted()?;
        ensure!(
            Instant::now() < deadline,
            "opened only {} idle sessions in 120 s",
            open_sessions.len()
        );
        // 50 at a time.
        let batch = (n - open_sessions.len()).min(50);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..batch {
            let tls = tls.cloned();
            set.spawn(async move { open(addr, tls.as_ref()).await });
        }
        while let Some(r) = set.join_next().await {
            open_sessions.push(r.context("client task")??);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_kib = vm_rss_kib(pid)?;
    // Every session must still be there: QUIT answered with 221.
    for s in open_sessions {
        match s {
            Idle::Plain(mut c) => quit(&mut c).await?,
            Idle::Tls(mut c) => quit(&mut *c).await?,
        }
    }
    Ok(Rss {
        before_kib,
        after_kib,
    })
}

/// Opens `n` sessions, takes each into DATA, sends `mb` MB of message lines
/// to each (a megabyte to every session in turn, so all are in DATA at
/// once), and measures the daemon's VmRSS before and after; then drops them
/// (the daemon removes the unfinished messages).
async fn data_rss(pid: u32, addr: SocketAddr, n: usize, mb: usize) -> Result<Rss> {
    let line = format!("{}\r\n", "x".repeat(998));
    let block = line.repeat(1000); // 1,000,000 octets
    // Once, so what happens once (spool threads, buffers) is in the baseline.
    {
        let mut c = Client::connect(addr, EHLO, false).await?;
        c.send(format!("MAIL FROM:<{FROM}>\r\nRCPT TO:<{TO}>\r\nDATA\r\n").as_bytes())
            .await?;
        c.expect(250).await?;
        c.expect(250).await?;
        c.expect(354).await?;
        c.send(b"Subject: warm-up\r\n\r\n").await?;
        c.send(block.as_bytes()).await?;
        c.send(b".\r\n").await?;
        c.expect(250).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_kib = vm_rss_kib(pid)?;
    let mut sessions = Vec::with_capacity(n);
    for _ in 0..n {
        interrupted()?;
        let mut c = Client::connect(addr, EHLO, false).await?;
        c.send(format!("MAIL FROM:<{FROM}>\r\nRCPT TO:<{TO}>\r\nDATA\r\n").as_bytes())
            .await?;
        c.expect(250).await?;
        c.expect(250).await?;
        c.expect(354).await?;
        c.send(b"Subject: streaming\r\n\r\n").await?;
        sessions.push(c);
    }
    let deadline = Instant::now() + Duration::from_secs(900);
    for _ in 0..mb {
        for c in &mut sessions {
            interrupted()?;
            ensure!(Instant::now() < deadline, "sending took over 900 s");
            c.send(block.as_bytes()).await?;
        }
    }
    // Let the daemon read what the sockets still hold.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_kib = vm_rss_kib(pid)?;
    drop(sessions);
    Ok(Rss {
        before_kib,
        after_kib,
    })
}

async fn quit<S: AsyncRead + AsyncWrite + Unpin>(c: &mut Client<S>) -> Result<()> {
    c.send(b"QUIT\r\n").await?;
    c.expect(221).await.context("idle session lost")
}

// ---- smtp-source -----------------------------------------------------------

/// Runs Postfix's smtp-source against `addr`; the seconds it took.
fn smtp_source(addr: SocketAddr, args: &Args, dir: &Path) -> Result<f64> {
    let log = dir.join("smtp-source.log");
    let mut cmd = Command::new("smtp-source");
    cmd.arg("-s")
        .arg(args.sessions.to_string())
        .arg("-m")
        .arg(args.messages.to_string())
        .arg("-l")
        .arg(args.size.to_string())
        .args(["-f", FROM, "-t", TO]);
    if args.per_connection > 1 {
        // Several messages per connection (smtp-source has no count for it).
        cmd.arg("-d");
    }
    cmd.arg(addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    let start = Instant::now();
    let mut child = cmd.spawn().context("spawn smtp-source")?;
    let deadline = start + Duration::from_secs(args.max_seconds);
    loop {
        if let Some(st) = child.try_wait()? {
            let secs = start.elapsed().as_secs_f64();
            ensure!(
                st.success(),
                "smtp-source exited with {st}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            return Ok(secs);
        }
        if Instant::now() >= deadline || stopped() {
            let _ = child.kill();
            let _ = child.wait();
            interrupted()?;
            bail!("smtp-source did not finish in {} s", args.max_seconds);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
