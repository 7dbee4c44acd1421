//! `smtp-edge-bench-queue` (`cargo xtask bench queue`): the queue at scale.
//!
//! 1. An empty queue: the daemon (release build from `SMTP_EDGE_BIN`, fsync
//!    on) relays `--new` messages, one at a time, to a healthy next hop on
//!    loopback; per message, the next hop's time of its final 250 minus the
//!    client's time of the daemon's 250 (p50). Then its RSS, idle.
//! 2. `--deferred` messages (100,000) waiting in the queue: written into the
//!    spool as the queue itself leaves them after a first attempt to a next
//!    hop that answered 451 (a spool file and a state file each, next
//!    attempt an hour away). The daemon starts on them:
//!    - `queue_index_seconds`: from its start to the queue loaded (its own
//!      log line), and to its control socket answering;
//!    - `queue_rss_per_message_bytes`: its RSS now minus phase 1's, per
//!      queued message;
//!    - `queue_idle_cpu_percent`: its CPU time over 30 s with nothing due;
//!    - then the same `--new` messages as in phase 1: `queue_latency_ratio`
//!      is their p50 over phase 1's.
//!
//! Traffic is loopback only; every phase is bounded in time. The last line
//! of stdout is one JSON object. Goals: idle CPU < 2 %, ratio ≤ 1.2,
//! ≤ 2 KiB per queued message.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use serde_json::{Map as JsonMap, Value, json};

use smtp_edge::queue::spool::{self, Envelope, MAGIC, Recipient};
use smtp_edge::queue::state::{MessageState, Outcome};
use smtp_edge_tests::bench::{interrupted, round};
use smtp_edge_tests::nexthop::{NextHop, RcptRule, Script};
use smtp_edge_tests::smtp::{Client, data_of, message};
use smtp_edge_tests::{Daemon, Launch, is_root};

#[derive(Parser)]
#[command(name = "smtp-edge-bench-queue")]
struct Args {
    /// Messages waiting in the queue.
    #[arg(long, default_value_t = 100_000)]
    deferred: usize,
    /// New messages timed, on the empty and on the full queue.
    #[arg(long, default_value_t = 200)]
    new: usize,
    /// Seconds of idle CPU measured.
    #[arg(long, default_value_t = 30)]
    idle_seconds: u64,
    /// Directory for the spool (default: the system temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn main() {
    smtp_edge_tests::bench::install_signal_handlers();
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("smtp-edge-bench-queue: error: {e:#}");
        std::process::exit(1);
    }
}

/// The text without terminal colour sequences (`ESC [ … m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// CPU seconds (user + system) of a process so far.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the command name in parentheses: state is field 3; utime 14,
    // stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11) + ticks(12)) / hz)
}

fn config(dir: &Path, port: u16, healthy: &str, deferred: &str) -> String {
    format!(
        r#"[daemon]
state_dir = "{d}/state"
control_socket = "{d}/control.sock"
[filter]
enabled = false
[smtp]
enabled = true
listen = ["127.0.0.1:{port}"]
hostname = "edge.contoso.com"
accepted_domains = ["contoso.com"]
spool_dir = "{d}/spool"
[[inbound_connectors]]
name = "loopback"
sources = ["127.0.0.1"]
relay = true
[[outbound_connectors]]
name = "deferred"
recipient_domains = ["deferred.test"]
smart_hosts = ["{deferred}"]
tls = "none"
[[outbound_connectors]]
name = "healthy"
recipient_domains = ["*"]
smart_hosts = ["{healthy}"]
tls = "none"
[queue]
retry_schedule = [3600]
max_age = 604800
"#,
        d = dir.display()
    )
}

fn start(dir: &Path, n: u32, within: Duration) -> (Daemon, Instant) {
    let started = Instant::now();
    let d = Daemon::launch(
        &Launch {
            ready_within: Some(within),
            ..Launch::default()
        },
        &dir.join("c.toml"),
        &dir.join("control.sock"),
        &dir.join(format!("daemon-{n}.log")),
    );
    (d, started)
}

/// Sends `n` messages one at a time; each one's queue id and when its 250
/// came.
fn send(port: u16, n: usize, tag: &str) -> Result<Vec<(String, Instant)>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        interrupted()?;
        let mut c = Client::greeted(port)?;
        let content = message(
            "alice@contoso.com",
            "bob@healthy.test",
            &format!("{tag} {i}"),
        );
        let id = c.submit(
            "alice@contoso.com",
            &["bob@healthy.test"],
            &data_of(&content),
        )?;
        out.push((id, Instant::now()));
        let _ = c.try_cmd("QUIT", 221);
        // One at a time: the latency of each, not of a backlog.
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(out)
}

/// p50 of 250-to-next-hop latency, in milliseconds.
fn latency_p50(sent: &[(String, Instant)], hop: &NextHop) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ms = Vec::new();
    for (id, acked) in sent {
        let needle = format!("id {id}");
        loop {
            let found = hop
                .transactions()
                .into_iter()
                .find(|t| String::from_utf8_lossy(&t.data).contains(&needle));
            if let Some(t) = found {
                ms.push(t.at.saturating_duration_since(*acked).as_secs_f64() * 1000.0);
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "message {id} never reached the next hop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms[ms.len() / 2])
}

/// Writes `n` messages as the queue leaves them after a first attempt that
/// was answered 451: spool file, state file, next attempt in an hour.
fn write_deferred(spool_dir: &Path, n: usize) -> Result<()> {
    let incoming = spool_dir.join("incoming");
    let queue = spool_dir.join("queue");
    std::fs::create_dir_all(&incoming)?;
    std::fs::create_dir_all(&queue)?;
    let now = spool::now();
    let body = message("carol@contoso.com", "dave@deferred.test", "waiting");
    for i in 0..n {
        if i % 10_000 == 0 {
            interrupted()?;
        }
        // Ids sortable, unique, 22 hex characters, as the spool makes them.
        let id = format!(
            "{:013x}{:05x}{:04x}",
            now * 1_000_000 + i as u64,
            0xbeefu32,
            i % 0x10000
        );
        let env = Envelope {
            id: id.clone(),
            received_at: now - 60,
            mail_from: "carol@contoso.com".into(),
            recipients: vec![Recipient {
                address: format!("dave{i}@deferred.test"),
                ..Recipient::default()
            }],
            client_ip: Some("127.0.0.1".parse()?),
            helo: "client.contoso.com".into(),
            connector: "loopback".into(),
            ..Envelope::default()
        };
        let mut f = std::fs::File::create(incoming.join(&id))?;
        writeln!(f, "{MAGIC}")?;
        writeln!(f, "{}", serde_json::to_string(&env)?)?;
        f.write_all(format!("Received: from client.contoso.com ([127.0.0.1])\r\n\tby edge.contoso.com (smtp-edge) with ESMTP id {id};\r\n\tMon, 30 Nov 2026 00:00:00 +0000\r\n{body}").as_bytes())?;
        let mut st = MessageState::new(&env);
        st.record(
            0,
            Outcome::Deferred {
                remote: Some("nexthop.test [127.0.0.1]".into()),
                status: (4, 3, 0),
                reason: "451 4.3.0 try later".into(),
            },
            now - 30,
        );
        st.attempts = 1;
        st.next_attempt = now + 3600;
        std::fs::write(queue.join(format!("{id}.json")), serde_json::to_vec(&st)?)?;
    }
    Ok(())
}

fn run(args: &Args) -> Result<()> {
    ensure!(is_root(), "the benchmark needs root");
    ensure!(
        (1..=1_000_000).contains(&args.deferred),
        "--deferred in 1..=1000000"
    );
    ensure!((10..=10_000).contains(&args.new), "--new in 10..=10000");
    ensure!(
        (5..=600).contains(&args.idle_seconds),
        "--idle-seconds in 5..=600"
    );
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("smtp-edge-bench-queue.")
        .tempdir_in(&base)?;
    let d = tmp.path();
    let healthy = NextHop::start(Script::default());
    let deferring = NextHop::start(Script {
        rcpt: RcptRule::All("451 4.3.0 try later".into()),
        ..Script::default()
    });
    let port = smtp_edge_tests::ports::free_port();
    std::fs::write(
        d.join("c.toml"),
        config(d, port, &healthy.host(), &deferring.host()),
    )?;
    let mut out = JsonMap::new();
    println!(
        "smtp-edge queue at scale ({} CPUs): {} deferred messages, {} new ones timed",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.deferred,
        args.new
    );

    // 1. The empty queue.
    let (mut daemon, _) = start(d, 1, Duration::from_secs(30));
    send(port, 20, "warm-up")?;
    std::thread::sleep(Duration::from_secs(1));
    let sent = send(port, args.new, "empty")?;
    let empty_p50 = latency_p50(&sent, &healthy)?;
    std::thread::sleep(Duration::from_secs(2));
    let empty_rss = daemon.rss_kib();
    println!("  empty queue: p50 250-to-next-hop {empty_p50:.2} ms; RSS {empty_rss} KiB");
    daemon.stop();

    // 2. The full queue.
    let t = Instant::now();
    write_deferred(&d.join("spool"), args.deferred)?;
    println!(
        "  wrote {} deferred messages in {:.1} s",
        args.deferred,
        t.elapsed().as_secs_f64()
    );
    // Cold, as after a reboot.
    let _ = std::process::Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    let (mut daemon, started) = start(d, 2, Duration::from_secs(600));
    let ready = started.elapsed().as_secs_f64();
    let log = strip_ansi(&std::fs::read_to_string(&daemon.log).unwrap_or_default());
    let loaded = log
        .lines()
        .find(|l| l.contains("queue loaded"))
        .context("no `queue loaded` line in the daemon log")?;
    let field = |name: &str| -> Option<f64> {
        let at = loaded.find(&format!("{name}="))? + name.len() + 1;
        let v: String = loaded[at..]
            .chars()
            .skip_while(|c| !c.is_ascii_digit())
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        v.parse().ok()
    };
    let index_s = field("seconds").context("no seconds in the log line")?;
    let count = field("messages").unwrap_or(0.0) as usize;
    if count != args.deferred {
        bail!(
            "the queue loaded {count} messages, not {}: {loaded}",
            args.deferred
        );
    }
    println!(
        "  started on them: queue loaded in {index_s:.2} s, control socket after {ready:.2} s"
    );
    std::thread::sleep(Duration::from_secs(3));
    let full_rss = daemon.rss_kib();
    let per_msg = (full_rss.saturating_sub(empty_rss)) as f64 * 1024.0 / args.deferred as f64;
    println!("  RSS {full_rss} KiB: {per_msg:.0} octets per queued message");
    let pid = daemon.pid().context("daemon pid")?;
    let c0 = cpu_seconds(pid)?;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(args.idle_seconds) {
        interrupted()?;
        std::thread::sleep(Duration::from_millis(200));
    }
    let idle = (cpu_seconds(pid)? - c0) / t0.elapsed().as_secs_f64() * 100.0;
    println!(
        "  idle CPU with the queue full: {idle:.2} % of one core over {} s",
        args.idle_seconds
    );
    let sent = send(port, args.new, "full")?;
    let full_p50 = latency_p50(&sent, &healthy)?;
    let ratio = full_p50 / empty_p50;
    println!("  full queue: p50 250-to-next-hop {full_p50:.2} ms: {ratio:.2}x the empty queue's");
    ensure!(
        deferring.sessions() == 0,
        "the deferred messages were tried again ({} sessions)",
        deferring.sessions()
    );
    daemon.stop();

    let met = idle < 2.0 && ratio <= 1.2 && per_msg <= 2048.0;
    println!(
        "\n-- summary --\n  index {index_s:.2} s; idle CPU {idle:.2} % (target < 2: {}); {per_msg:.0} B per message (target <= 2048: {}); latency {ratio:.2}x (target <= 1.2: {})",
        if idle < 2.0 { "met" } else { "NOT met" },
        if per_msg <= 2048.0 { "met" } else { "NOT met" },
        if ratio <= 1.2 { "met" } else { "NOT met" },
    );
    out.insert("queue_index_seconds".into(), json!(round(index_s, 3)));
    out.insert("queue_ready_seconds".into(), json!(round(ready, 3)));
    out.insert("queue_idle_cpu_percent".into(), json!(round(idle, 3)));
    out.insert(
        "queue_rss_per_message_bytes".into(),
        json!(round(per_msg, 0)),
    );
    out.insert("queue_latency_ratio".into(), json!(round(ratio, 3)));
    out.insert("empty_p50_ms".into(), json!(round(empty_p50, 3)));
    out.insert("full_p50_ms".into(), json!(round(full_p50, 3)));
    out.insert("deferred".into(), json!(args.deferred));
    out.insert("new".into(), json!(args.new));
    out.insert("targets_met".into(), json!(met));
    println!("{}", Value::Object(out));
    Ok(())
}
