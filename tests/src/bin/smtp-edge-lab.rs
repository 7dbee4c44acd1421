//! `smtp-edge-lab`: a small Microsoft 365 hybrid mail path on one machine.
//!
//! ```text
//!  eo   203.0.113.10  2001:db8:1::10 ──▶ out-eo  ─┐
//!                                                 ├ edge: XDP gate, routing ─▶ in-lan ──▶ onprem
//!  inet 198.51.100.66 2001:db8:2::66 ──▶ out-inet ─┘   (smtp-edge run)          192.0.2.25:25
//!                                                                               [2001:db8:25::25]:25
//! ```
//!
//! Four network namespaces joined by veth pairs, documentation addresses only.
//! The daemon runs in `edge` with the gate attached (native XDP) to both outside
//! interfaces; the allowlist holds only the stand-in "Exchange Online" ranges.
//! Every few seconds both senders try to deliver mail to the on-prem server with
//! Postfix's `smtp-source`: eo's mail goes through, inet's SYNs are dropped.
//! Part-way through, `smtp-edge allow add` lets inet's IPv4 address in, and
//! `allow remove` takes it out again. Counters and the daemon's drop log are
//! shown as they change. Ctrl-C (or the end of `--duration`) tears it all down.
//!
//! Needs root, bpffs on /sys/fs/bpf, iproute2, and Postfix's smtp-sink and
//! smtp-source (falls back to a built-in banner server and plain connects).

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;

use smtp_edge::view::Stats;
use smtp_edge_tests::netns::{self, Banner, Netns};
use smtp_edge_tests::{Daemon, PinDir, smtp_edge_bin};

/// Bring up the smtp-edge lab: senders, gate, on-prem SMTP server.
#[derive(Parser)]
#[command(name = "smtp-edge-lab")]
struct Args {
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// Seconds between traffic rounds.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    interval: u64,
    /// Use the built-in banner server and plain TCP connects even when
    /// Postfix's smtp-sink and smtp-source are installed.
    #[arg(long)]
    builtin_smtp: bool,
}

// ---- addresses (documentation ranges only) --------------------------------

const EO_V4: &str = "203.0.113.10";
const EO_V6: &str = "2001:db8:1::10";
const EDGE_EO_V4: &str = "203.0.113.1";
const EDGE_EO_V6: &str = "2001:db8:1::1";
/// The stand-in Exchange Online ranges put in the lab's allowlist.
const EO_RANGE_V4: &str = "203.0.113.0/28";
const EO_RANGE_V6: &str = "2001:db8:1::/64";

const INET_V4: &str = "198.51.100.66";
const INET_V6: &str = "2001:db8:2::66";
const EDGE_INET_V4: &str = "198.51.100.1";
const EDGE_INET_V6: &str = "2001:db8:2::1";

const ONPREM_V4: &str = "192.0.2.25";
const ONPREM_V6: &str = "2001:db8:25::25";
const EDGE_LAN_V4: &str = "192.0.2.1";
const EDGE_LAN_V6: &str = "2001:db8:25::1";

/// Edge interfaces (names live in the edge namespace only).
const IF_OUT_EO: &str = "out-eo";
const IF_OUT_INET: &str = "out-inet";
const IF_LAN: &str = "in-lan";

/// Messages per smtp-source run.
const MESSAGES: u32 = 5;
/// How long a refused sender waits before giving up.
const REFUSED_AFTER: Duration = Duration::from_secs(4);
/// Upper bound for an allowed delivery.
const DELIVERY_BOUND: Duration = Duration::from_secs(15);
/// Drop-log lines shown per round (the rest are counted).
const DROP_LINES_PER_ROUND: usize = 6;

const SMTP_SINK: &str = "/usr/sbin/smtp-sink";
const SMTP_SOURCE: &str = "/usr/sbin/smtp-source";

const ALLOW_COMMENT: &str = "lab: allowed on the fly";

// ---- Ctrl-C ---------------------------------------------------------------

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Sleeps until `until`, waking early on Ctrl-C.
fn sleep_until(until: Instant) {
    while !stopping() {
        let now = Instant::now();
        if now >= until {
            return;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(100)));
    }
}

// ---- output helpers -------------------------------------------------------

fn heading(text: &str) {
    let line = "─".repeat(78usize.saturating_sub(text.chars().count() + 4));
    println!("\n── {text} {line}");
}

/// A labelled line of a round.
fn row(label: &str, text: &str) {
    println!("  {label:<15} {text}");
}

fn indent(text: &str) {
    for l in text.lines() {
        println!("    {l}");
    }
}

/// Removes ANSI colour sequences (the daemon's log may carry them).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

fn quote(path: &Path) -> Result<String> {
    // A JSON string is a valid TOML basic string.
    Ok(serde_json::to_string(path.to_str().ok_or_else(|| {
        anyhow!("{} is not UTF-8", path.display())
    })?)?)
}

// ---- processes ------------------------------------------------------------

/// A background process (smtp-sink), killed on drop.
struct Proc {
    child: Child,
    what: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ip netns exec NS PROGRAM`, in its own process group so that Ctrl-C in the
/// terminal reaches only the lab, which then stops everything in order.
fn ns_cmd(ns: &Netns, program: &str) -> Command {
    let mut c = ns.cmd(program);
    c.process_group(0);
    c
}

fn sh(ns: &Netns, script: &str) -> Result<()> {
    let out = ns_cmd(ns, "sh")
        .args(["-c", script])
        .output()
        .with_context(|| format!("run `{script}` in {}", ns.name))?;
    if !out.status.success() {
        bail!(
            "`{script}` in {} failed: {}",
            ns.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `f` on a thread that joined network namespace `ns` (setns(2) only).
///
/// Processes spawned there live in that network namespace but keep this
/// process's mount namespace. `ip netns exec` would instead give them a private
/// mount namespace with a fresh /sys, where the daemon mounts a private bpffs:
/// its pins (and so the gate) would vanish with it, and no later CLI call could
/// see them. The real edge host has one bpffs; so does the lab.
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || -> Result<T> {
        let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
        // SAFETY: setns on a valid namespace fd; it affects only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        anyhow!("{msg}")
    })?
}

/// `smtp-edge --config CFG ARGS` on the edge host (its network namespace).
struct Cli {
    ns: String,
    config: PathBuf,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Result<String> {
        let config = self.config.clone();
        let owned: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let out = in_netns(&self.ns, move || {
            Command::new(smtp_edge_bin())
                .arg("--config")
                .arg(&config)
                .args(&owned)
                .process_group(0)
                .stdin(Stdio::null())
                .output()
                .context("run smtp-edge")
        })?;
        if !out.status.success() {
            bail!(
                "smtp-edge {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    }

    /// Runs and prints `$ smtp-edge ARGS` with its output, as an admin sees it.
    fn show(&self, args: &[&str]) {
        let shown: Vec<String> = args
            .iter()
            .map(|a| {
                if a.contains(' ') {
                    format!("\"{a}\"")
                } else {
                    a.to_string()
                }
            })
            .collect();
        println!("  $ smtp-edge {}", shown.join(" "));
        match self.run(args) {
            Ok(out) => indent(&out),
            Err(e) => println!("    ! {e:#}"),
        }
    }

    fn stats(&self) -> Result<Stats> {
        let out = self.run(&["--json", "stats"])?;
        serde_json::from_str(&out).context("parse `smtp-edge --json stats`")
    }
}

// ---- the on-prem server and the senders ----------------------------------

enum Server {
    /// Postfix smtp-sink, one per address family; stdout carries its counters.
    Sink(Vec<(Proc, PathBuf)>),
    /// Built-in fallback: greets and counts connections.
    Banner(Banner),
}

impl Server {
    fn start(onprem: &Netns, dir: &Path, postfix: bool) -> Result<Server> {
        if !postfix {
            let listeners = [ONPREM_V4, ONPREM_V6]
                .iter()
                .map(|a| -> Result<_> {
                    let ip: IpAddr = a.parse()?;
                    Ok(onprem.listen(SocketAddr::new(ip, 25)))
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok(Server::Banner(Banner::serve(listeners)));
        }
        let mut sinks = Vec::new();
        for (family, listen) in [
            ("4", format!("{ONPREM_V4}:25")),
            ("6", format!("[{ONPREM_V6}]:25")),
        ] {
            let out = dir.join(format!("smtp-sink-v{family}.out"));
            let file = std::fs::File::create(&out).context("smtp-sink output file")?;
            let child = ns_cmd(onprem, SMTP_SINK)
                .args(["-u", "nobody", "-c", &format!("-{family}"), &listen, "100"])
                .stdin(Stdio::null())
                .stdout(file.try_clone()?)
                .stderr(file)
                .spawn()
                .context("start smtp-sink")?;
            sinks.push((
                Proc {
                    child,
                    what: format!("smtp-sink {listen}"),
                },
                out,
            ));
        }
        // Wait until both listen.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = ns_cmd(onprem, "ss").args(["-Hltn"]).output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let listening = [format!("{ONPREM_V4}:25"), format!("[{ONPREM_V6}]:25")]
                .iter()
                .all(|a| text.contains(a.as_str()));
            if listening {
                break;
            }
            for (p, out) in &mut sinks {
                if let Ok(Some(st)) = p.child.try_wait() {
                    bail!(
                        "{} exited with {st}: {}",
                        p.what,
                        std::fs::read_to_string(out).unwrap_or_default().trim()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!("smtp-sink is not listening after 5 s:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Server::Sink(sinks))
    }

    fn describe(&self) -> &'static str {
        match self {
            Server::Sink(_) => "Postfix smtp-sink (accepts and discards mail)",
            Server::Banner(_) => "built-in banner server (greets and counts connections)",
        }
    }

    /// Messages received (smtp-sink) or connections accepted (fallback).
    fn received(&self) -> u64 {
        match self {
            Server::Sink(sinks) => sinks
                .iter()
                .map(|(_, out)| {
                    let text = std::fs::read_to_string(out).unwrap_or_default();
                    // "sess=N quit=N mesg=N" records separated by carriage returns.
                    text.rsplit(['\r', '\n'])
                        .find_map(|rec| {
                            rec.split_whitespace().find_map(|f| f.strip_prefix("mesg="))
                        })
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0)
                })
                .sum(),
            Server::Banner(b) => b.accepted.load(Ordering::Relaxed),
        }
    }

    fn unit(&self) -> &'static str {
        match self {
            Server::Sink(_) => "messages",
            Server::Banner(_) => "connections",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SenderKind {
    Eo,
    Inet,
}

struct Sender {
    kind: SenderKind,
    ns: Netns,
}

impl Sender {
    fn label(&self) -> &'static str {
        match self.kind {
            SenderKind::Eo => "eo  ",
            SenderKind::Inet => "inet",
        }
    }
}

enum Outcome {
    /// Mail delivered (count of messages, or 1 connection with the fallback).
    Delivered { messages: u32, secs: f64 },
    /// No answer in time: the SYNs went nowhere.
    TimedOut,
    /// The client gave up with an error.
    Failed(String),
    /// Ctrl-C while it ran.
    Interrupted,
}

/// One delivery attempt from `from` (source `src`) to the on-prem server `dst`.
fn attempt(from: &Sender, src: &str, dst: &str, postfix: bool) -> Result<Outcome> {
    let bound = match from.kind {
        SenderKind::Eo => DELIVERY_BOUND,
        SenderKind::Inet => REFUSED_AFTER,
    };
    let dst_ip: IpAddr = dst.parse()?;
    let started = Instant::now();
    if !postfix {
        let src_ip: IpAddr = src.parse()?;
        return Ok(
            match from
                .ns
                .connect_from(src_ip, SocketAddr::new(dst_ip, 25), bound)
            {
                Ok(_) => Outcome::Delivered {
                    messages: 1,
                    secs: started.elapsed().as_secs_f64(),
                },
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Outcome::TimedOut,
                Err(e) => Outcome::Failed(e.to_string()),
            },
        );
    }
    let target = match dst_ip {
        IpAddr::V4(_) => format!("{dst}:25"),
        IpAddr::V6(_) => format!("[{dst}]:25"),
    };
    let sender_domain = match from.kind {
        SenderKind::Eo => "eo.example",
        SenderKind::Inet => "inet.example",
    };
    let mut child = ns_cmd(&from.ns, SMTP_SOURCE)
        .args(["-m", &MESSAGES.to_string(), "-s", "1", "-M", sender_domain])
        .args(["-f", &format!("lab@{sender_domain}")])
        .args(["-t", "postmaster@onprem.example", &target])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start smtp-source")?;
    let deadline = started + bound;
    loop {
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return Ok(if status.success() {
                Outcome::Delivered {
                    messages: MESSAGES,
                    secs: started.elapsed().as_secs_f64(),
                }
            } else {
                let last = err.lines().last().unwrap_or("").trim();
                Outcome::Failed(if last.is_empty() {
                    format!("smtp-source exited with {status}")
                } else {
                    last.to_string()
                })
            });
        }
        if stopping() || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(if stopping() {
                Outcome::Interrupted
            } else {
                Outcome::TimedOut
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- the drop log ---------------------------------------------------------

/// Follows the daemon's log file.
struct LogTail {
    path: PathBuf,
    offset: u64,
    partial: String,
    /// ifindex → edge interface name, to annotate drop lines.
    ifaces: Vec<(String, String)>,
}

impl LogTail {
    fn new_lines(&mut self) -> Vec<String> {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return Vec::new();
        }
        self.offset += buf.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        let mut lines = Vec::new();
        while let Some(pos) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=pos).collect();
            let line = strip_ansi(line.trim_end());
            if !line.is_empty() {
                lines.push(self.annotate(line));
            }
        }
        lines
    }

    fn annotate(&self, line: String) -> String {
        for (index, name) in &self.ifaces {
            if line.ends_with(&format!("ifindex={index}")) {
                return format!("{line} ({name})");
            }
        }
        line
    }
}

fn is_drop(line: &str) -> bool {
    line.contains("packet refused by the gate")
}

/// Prints new daemon log lines: every drop line (up to a limit) and any other
/// line the daemon wrote (attach, allowlist changes, warnings).
fn show_log(tail: &mut LogTail, drops_total: &mut u64) {
    let lines = tail.new_lines();
    let drops: Vec<&String> = lines.iter().filter(|l| is_drop(l)).collect();
    *drops_total += drops.len() as u64;
    for l in lines.iter().filter(|l| !is_drop(l)) {
        row("daemon log", l);
    }
    if drops.is_empty() {
        return;
    }
    row("drop log", &format!("{} new line(s):", drops.len()));
    for l in drops.iter().take(DROP_LINES_PER_ROUND) {
        println!("    {l}");
    }
    if drops.len() > DROP_LINES_PER_ROUND {
        println!("    … and {} more", drops.len() - DROP_LINES_PER_ROUND);
    }
}

// ---- counters -------------------------------------------------------------

fn counter(s: &Stats, name: &str) -> u64 {
    smtp_edge::view::counter(s, name).copied().unwrap_or(0)
}

fn delta(now: &Stats, before: Option<&Stats>, name: &str) -> String {
    let v = counter(now, name);
    match before {
        Some(b) if v >= counter(b, name) => format!("{v} (+{})", v - counter(b, name)),
        _ => v.to_string(),
    }
}

fn show_stats(now: &Stats, before: Option<&Stats>) {
    row(
        "gate counters",
        &format!(
            "passed_allowed {}   dropped_not_allowed_v4 {}   dropped_not_allowed_v6 {}   passed_other {}",
            delta(now, before, "passed_allowed"),
            delta(now, before, "passed_dropped_v4_placeholder")
                .replace('0', "")
                .is_empty()
                .then(String::new)
                .unwrap_or_default()
                + &delta(now, before, "dropped_not_allowed_v4"),
            delta(now, before, "dropped_not_allowed_v6"),
            delta(now, before, "passed_other"),
        ),
    );
    let rest: Vec<String> = now
        .counters
        .iter()
        .filter(|(n, v)| {
            *v > 0
                && ![
                    "passed_allowed",
                    "passed_other",
                    "dropped_not_allowed_v4",
                    "dropped_not_allowed_v6",
                ]
                .contains(&n.as_str())
        })
        .map(|(n, _)| format!("{n} {}", delta(now, before, n)))
        .collect();
    if !rest.is_empty() {
        row("", &rest.join("   "));
    }
    for e in &now.entries {
        let before_hits = before
            .and_then(|b| b.entries.iter().find(|x| x.entry.id == e.entry.id))
            .map(|x| x.hits);
        let hits = match before_hits {
            Some(h) if e.hits >= h => format!("{} (+{})", e.hits, e.hits - h),
            _ => e.hits.to_string(),
        };
        row(
            &format!("entry #{}", e.entry.id),
            &format!(
                "{:<18} {:<7} hits {:<12} {}",
                e.entry.entry.source, e.entry.entry.origin, hits, e.entry.entry.comment
            ),
        );
    }
}

// ---- the lab --------------------------------------------------------------

struct Tally {
    eo_attempts: u64,
    eo_delivered: u64,
    eo_failed: u64,
    inet_attempts: u64,
    inet_refused: u64,
    inet_delivered: u64,
    inet_delivered_attempts: u64,
    drop_lines: u64,
    /// Outcomes that differ from what the allowlist says should happen.
    unexpected: Vec<String>,
}

fn main() {
    let args = Args::parse();
    install_signal_handlers();
    let code = match lab(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("smtp-edge-lab: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn preflight(args: &Args) -> Result<bool> {
    if !smtp_edge_tests::is_root() {
        bail!("the lab needs root (network namespaces, XDP, bpffs)");
    }
    let bin = smtp_edge_bin();
    if !bin.is_file() {
        bail!(
            "{} not found; build it (cargo xtask build) or set SMTP_EDGE_BIN",
            bin.display()
        );
    }
    if !Path::new("/sys/fs/bpf").is_dir() {
        bail!("bpffs is not mounted on /sys/fs/bpf (cargo xtask setup mounts it)");
    }
    Command::new("ip")
        .arg("-V")
        .output()
        .context("iproute2 (`ip`) is needed")?;
    let postfix = Path::new(SMTP_SINK).is_file() && Path::new(SMTP_SOURCE).is_file();
    if args.builtin_smtp {
        return Ok(false);
    }
    if !postfix {
        println!(
            "note: {SMTP_SINK} / {SMTP_SOURCE} not found (Debian package postfix; `cargo xtask setup`);"
        );
        println!("      using a built-in banner server and plain TCP connects instead");
    }
    Ok(postfix)
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn ifindexes(ns: &Netns) -> Vec<(String, String)> {
    let out = Command::new("ip")
        .args(["-n", &ns.name, "-o", "link", "show"])
        .output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ": ");
            let index = parts.next()?.trim().to_string();
            let name = parts.next()?.split('@').next()?.to_string();
            Some((index, name))
        })
        .collect()
}

fn lab(args: &Args) -> Result<()> {
    let postfix = preflight(args)?;
    let interval = Duration::from_secs(args.interval.max(1));
    let started = Instant::now();
    let end = args.duration.map(|d| started + Duration::from_secs(d));
    // When to add inet to the allowlist and take it out again.
    let (add_at, remove_at) = match args.duration {
        Some(d) if d >= 3 * args.interval.max(1) => (
            Some(Duration::from_secs(d / 3)),
            Some(Duration::from_secs(2 * d / 3)),
        ),
        Some(_) => (None, None),
        None => (
            Some(Duration::from_secs(6 * args.interval.max(1))),
            Some(Duration::from_secs(12 * args.interval.max(1))),
        ),
    };

    // Guards are dropped in reverse order: daemon, servers, namespaces, files, pins.
    let pin = PinDir::new("lab");
    let tmp = tempfile::Builder::new()
        .prefix("smtp-edge-lab.")
        .tempdir()
        .context("temporary directory")?;

    heading("smtp-edge lab: Microsoft 365 → on-prem mail through an XDP port-25 gate");
    println!(
        "  eo      Exchange Online stand-in   {EO_V4:<15} {EO_V6:<16} allowed (stand-in range {EO_RANGE_V4}, {EO_RANGE_V6})"
    );
    println!("  inet    internet sender            {INET_V4:<15} {INET_V6:<16} not allowed");
    println!(
        "  edge    firewall host              gate on {IF_OUT_EO}, {IF_OUT_INET} (native XDP); routes to {IF_LAN}"
    );
    println!("  onprem  on-prem mail server        {ONPREM_V4:<15} {ONPREM_V6:<16} port 25");
    println!("  (documentation addresses only; nothing leaves this machine's namespaces)");

    // ---- namespaces and links
    let eo = Sender {
        kind: SenderKind::Eo,
        ns: Netns::new("eo"),
    };
    let inet = Sender {
        kind: SenderKind::Inet,
        ns: Netns::new("inet"),
    };
    let edge = Netns::new("edge");
    let onprem = Netns::new("onprem");
    netns::veth(&eo.ns, "eth0", &edge, IF_OUT_EO);
    netns::veth(&inet.ns, "eth0", &edge, IF_OUT_INET);
    netns::veth(&edge, IF_LAN, &onprem, "eth0");
    for (ns, iface, v4, v6) in [
        (&eo.ns, "eth0", EO_V4, EO_V6),
        (&edge, IF_OUT_EO, EDGE_EO_V4, EDGE_EO_V6),
        (&inet.ns, "eth0", INET_V4, INET_V6),
        (&edge, IF_OUT_INET, EDGE_INET_V4, EDGE_INET_V6),
        (&edge, IF_LAN, EDGE_LAN_V4, EDGE_LAN_V6),
        (&onprem, "eth0", ONPREM_V4, ONPREM_V6),
    ] {
        let prefix = if v4.starts_with("203.") || v4.starts_with("198.") || v4.starts_with("192.") {
            24
        } else {
            bail!("unexpected address {v4}")
        };
        netns::add_addr(ns, iface, &format!("{v4}/{prefix}"));
        netns::add_addr(ns, iface, &format!("{v6}/64"));
    }
    for (ns, gw4, gw6) in [
        (&eo.ns, EDGE_EO_V4, EDGE_EO_V6),
        (&inet.ns, EDGE_INET_V4, EDGE_INET_V6),
        (&onprem, EDGE_LAN_V4, EDGE_LAN_V6),
    ] {
        ns.ip(&["route", "add", "default", "via", gw4]);
        ns.ip(&["-6", "route", "add", "default", "via", gw6]);
    }
    sh(
        &edge,
        "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1",
    )?;
    println!(
        "\n  namespaces: eo={} inet={} edge={} onprem={}",
        eo.ns.name, inet.ns.name, edge.name, onprem.name
    );

    // ---- the on-prem server
    let server = Server::start(&onprem, tmp.path(), postfix)?;
    println!(
        "  on-prem server: {} on {ONPREM_V4}:25 and [{ONPREM_V6}]:25",
        server.describe()
    );

    // ---- the daemon
    let config = tmp.path().join("smtp-edge.toml");
    let socket = tmp.path().join("control.sock");
    let log = tmp.path().join("smtp-edge.log");
    let config_text = format!(
        r#"# smtp-edge lab configuration (written by smtp-edge-lab)
[daemon]
state_dir = {state}
control_socket = {socket}
log_format = "text"

[filter]
interfaces = ["{IF_OUT_EO}", "{IF_OUT_INET}"]
ports = [25]
mode = "enforce"
xdp_mode = "native"
pin_dir = {pin}
drop_events_per_second = 5

[allowlist]
# The real Microsoft ranges are never used in the lab.
exchange_online = false

[[allowlist.entries]]
source = "{EO_RANGE_V4}"
comment = "Exchange Online (lab stand-in)"

[[allowlist.entries]]
source = "{EO_RANGE_V6}"
comment = "Exchange Online (lab stand-in)"
"#,
        state = quote(&tmp.path().join("state"))?,
        socket = quote(&socket)?,
        pin = quote(&pin.0)?,
    );
    std::fs::write(&config, &config_text).context("write the lab configuration")?;
    heading(&format!("configuration {}", config.display()));
    indent(&config_text);

    heading("starting `smtp-edge run` in the edge namespace");
    // Daemon::start(None, ..) from a thread inside the edge namespace: see in_netns.
    let mut daemon = {
        let (config, socket, log) = (config.clone(), socket.clone(), log.clone());
        in_netns(&edge.name, move || {
            Ok(Daemon::start(None, &config, &socket, &log))
        })
        .context("start `smtp-edge run` in the edge namespace")?
    };
    let cli = Cli {
        ns: edge.name.clone(),
        config: config.clone(),
    };
    let mut tail = LogTail {
        path: daemon.log.clone(),
        offset: 0,
        partial: String::new(),
        ifaces: ifindexes(&edge),
    };
    let mut tally = Tally {
        eo_attempts: 0,
        eo_delivered: 0,
        eo_failed: 0,
        inet_attempts: 0,
        inet_refused: 0,
        inet_delivered: 0,
        inet_delivered_attempts: 0,
        drop_lines: 0,
        unexpected: Vec::new(),
    };
    show_log(&mut tail, &mut tally.drop_lines);
    println!();
    cli.show(&["filter", "status"]);
    cli.show(&["allow", "list"]);
    cli.show(&["check", EO_V4]);
    cli.show(&["check", INET_V4]);
    cli.show(&["check", INET_V6]);

    // Everything but TCP to port 25 passes the gate: ping from both senders
    // (when iputils-ping is installed).
    if let Some(ping) = find_in_path("ping") {
        println!();
        for (from, dst) in [
            (&eo, ONPREM_V4),
            (&eo, ONPREM_V6),
            (&inet, ONPREM_V4),
            (&inet, ONPREM_V6),
        ] {
            let out = ns_cmd(&from.ns, &ping.to_string_lossy())
                .args(["-c", "1", "-W", "2", "-q", dst])
                .stdin(Stdio::null())
                .output()
                .context("ping")?;
            println!(
                "  {} ping {dst:<16} {}",
                from.label(),
                if out.status.success() {
                    "answered (the gate only filters TCP to port 25)"
                } else {
                    "no answer"
                }
            );
        }
    }

    match end {
        Some(_) => println!(
            "\nRunning for {} s; traffic every {} s. Ctrl-C stops earlier.",
            args.duration.unwrap_or(0),
            interval.as_secs()
        ),
        None => println!(
            "\nRunning until Ctrl-C; traffic every {} s.",
            interval.as_secs()
        ),
    }
    if let (Some(a), Some(r)) = (add_at, remove_at) {
        println!(
            "At {} s `allow add {INET_V4}` lets inet in (IPv4 only); at {} s `allow remove` takes it out.",
            a.as_secs(),
            r.as_secs()
        );
    }

    // ---- traffic rounds
    let mut previous = cli.stats().ok();
    let mut allowed = false;
    let mut added = false;
    let mut removed = false;
    let mut round = 0u32;
    let mut next = Instant::now();
    loop {
        sleep_until(next);
        if stopping() || end.is_some_and(|e| Instant::now() >= e) {
            break;
        }
        next = Instant::now() + interval;
        let elapsed = started.elapsed();
        round += 1;

        if !added && add_at.is_some_and(|a| elapsed >= a) {
            added = true;
            heading(&format!(
                "t+{:.0}s  the admin lets the internet sender in",
                elapsed.as_secs_f64()
            ));
            cli.show(&["allow", "add", INET_V4, "--comment", ALLOW_COMMENT]);
            cli.show(&["check", INET_V4]);
            allowed = true;
        } else if added && !removed && remove_at.is_some_and(|r| elapsed >= r) {
            removed = true;
            heading(&format!(
                "t+{:.0}s  the admin takes the internet sender out again",
                elapsed.as_secs_f64()
            ));
            cli.show(&["allow", "remove", INET_V4]);
            cli.show(&["check", INET_V4]);
            allowed = false;
        }

        heading(&format!(
            "round {round}  t+{:.0}s{}",
            elapsed.as_secs_f64(),
            if allowed {
                format!("  ({INET_V4} on the allowlist)")
            } else {
                String::new()
            }
        ));
        let jobs = [
            (&eo, EO_V4, ONPREM_V4),
            (&eo, EO_V6, ONPREM_V6),
            (&inet, INET_V4, ONPREM_V4),
            (&inet, INET_V6, ONPREM_V6),
        ];
        let results: Vec<Result<Outcome>> = std::thread::scope(|s| {
            let handles: Vec<_> = jobs
                .iter()
                .map(|(from, src, dst)| s.spawn(move || attempt(from, src, dst, postfix)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow!("sender thread panicked")))
                })
                .collect()
        });
        for ((from, src, dst), result) in jobs.iter().zip(results) {
            let outcome = result?;
            // eo always passes; inet only over IPv4 while its address is allowed.
            let should_pass = from.kind == SenderKind::Eo || (allowed && *src == INET_V4);
            let path = format!("{src} → {dst}");
            let text = match &outcome {
                Outcome::Delivered { messages, secs } if postfix => {
                    format!("✔ delivered {messages} messages in {secs:.2} s")
                }
                Outcome::Delivered { secs, .. } => {
                    format!("✔ connected, banner read in {secs:.2} s")
                }
                Outcome::TimedOut => format!(
                    "✘ refused: no answer within {} s (SYNs dropped by the gate)",
                    REFUSED_AFTER.as_secs()
                ),
                Outcome::Failed(e) => format!("✘ failed: {e}"),
                Outcome::Interrupted => "… interrupted".to_string(),
            };
            let passed = matches!(outcome, Outcome::Delivered { .. });
            let surprise = !matches!(outcome, Outcome::Interrupted) && passed != should_pass;
            println!(
                "  {} {path:<36} {text}{}",
                from.label(),
                if surprise { "   ← UNEXPECTED" } else { "" }
            );
            if surprise {
                tally.unexpected.push(format!(
                    "round {round}: {} {path}: {text}",
                    from.label().trim()
                ));
            }
            match (from.kind, &outcome) {
                (_, Outcome::Interrupted) => {}
                (SenderKind::Eo, Outcome::Delivered { messages, .. }) => {
                    tally.eo_attempts += 1;
                    tally.eo_delivered += u64::from(*messages);
                }
                (SenderKind::Eo, _) => {
                    tally.eo_attempts += 1;
                    tally.eo_failed += 1;
                }
                (SenderKind::Inet, Outcome::Delivered { messages, .. }) => {
                    tally.inet_attempts += 1;
                    tally.inet_delivered += u64::from(*messages);
                    tally.inet_delivered_attempts += 1;
                }
                (SenderKind::Inet, _) => {
                    tally.inet_attempts += 1;
                    tally.inet_refused += 1;
                }
            }
        }
        row(
            "on-prem server",
            &format!("{} {} received so far", server.received(), server.unit()),
        );
        match cli.stats() {
            Ok(now) => {
                show_stats(&now, previous.as_ref());
                previous = Some(now);
            }
            Err(e) => row("gate counters", &format!("unavailable: {e:#}")),
        }
        show_log(&mut tail, &mut tally.drop_lines);
    }

    // ---- teardown
    heading(if stopping() {
        "Ctrl-C: tearing down"
    } else {
        "time is up: tearing down"
    });
    let final_stats = cli.stats().ok().or(previous);
    println!("  final `smtp-edge stats`:");
    cli.show(&["stats"]);
    // Give the drop-event reader a moment, then show the last log lines.
    std::thread::sleep(Duration::from_millis(200));
    show_log(&mut tail, &mut tally.drop_lines);
    let received = server.received();

    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        println!("  stopping the daemon (SIGTERM; the gate stays pinned and enforcing)");
    } else {
        println!("  the daemon has already stopped (Ctrl-C reached it too); the gate stays pinned");
    }
    daemon.stop();
    show_log(&mut tail, &mut tally.drop_lines);
    println!("  the gate without the daemon (read from the pins):");
    cli.show(&["filter", "status"]);
    println!("  detaching the gate:");
    cli.show(&["filter", "detach"]);
    drop(server);
    println!("  deleting the namespaces");
    drop(eo);
    drop(inet);
    drop(onprem);
    drop(edge);
    let pin_path = pin.0.clone();
    drop(pin);
    println!(
        "  pin directory {} {}",
        pin_path.display(),
        if pin_path.exists() {
            "is STILL there"
        } else {
            "removed"
        }
    );
    drop(tmp);

    // ---- summary
    heading("summary");
    println!(
        "  ran {round} round(s) in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "  eo   (Exchange Online stand-in): {} {} delivered in {} attempts ({} failed)",
        tally.eo_delivered,
        if postfix { "messages" } else { "connections" },
        tally.eo_attempts,
        tally.eo_failed
    );
    println!(
        "  inet (internet sender):          {} delivery attempts refused (SYNs dropped by the gate), {} let through while on the allowlist ({} {})",
        tally.inet_refused,
        tally.inet_delivered_attempts,
        tally.inet_delivered,
        if postfix { "messages" } else { "connections" }
    );
    println!(
        "  on-prem server received {received} {} in total; the daemon logged {} drop events",
        match postfix {
            true => "messages",
            false => "connections",
        },
        tally.drop_lines
    );
    if let Some(s) = &final_stats {
        let nonzero: Vec<String> = s
            .counters
            .iter()
            .filter(|(_, v)| *v > 0)
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        println!("  gate counters: {}", nonzero.join(" "));
        for e in &s.entries {
            println!(
                "  entry #{} {} ({}): {} hits",
                e.entry.id, e.entry.entry.source, e.entry.entry.comment, e.hits
            );
        }
    }
    if tally.unexpected.is_empty() {
        println!("  every delivery attempt ended as the allowlist says it should");
    } else {
        println!("  UNEXPECTED outcomes:");
        for u in &tally.unexpected {
            println!("    {u}");
        }
    }
    let _ = std::io::stdout().flush();
    if !tally.unexpected.is_empty() {
        bail!(
            "{} delivery attempt(s) did not end as the allowlist says",
            tally.unexpected.len()
        );
    }
    Ok(())
}
