//! `smtp-edge-bench-xdp` (`cargo xtask bench xdp`): what the gate costs.
//!
//! 1. Per-packet cost with BPF_PROG_TEST_RUN: the real gate (loaded with
//!    [`Gate::load`], filled through [`Sync::apply`] with N random IPv4
//!    prefixes, production settings: enforce, port 25, 20 drop events/s)
//!    against, in the same run, the cheapest XDP program (`baseline_pass`) and
//!    a bare LPM-trie filter (`baseline_trie`) holding the same prefixes. The
//!    probes take the longest path of the gate's table (three array reads):
//!    one prefix of every set is 192.0.2.200/32, the allowed probe comes from
//!    it and the dropped one from 192.0.2.1 (same /24, no prefix); the random
//!    prefixes never overlap the documentation ranges.
//! 2. Drop rate on a veth between two namespaces: a SYN flood to port 25 from
//!    a source outside the allowlist, dropped by the gate (native XDP) and then
//!    by nftables (netdev ingress hook, nftables' earliest and cheapest; and an
//!    inet prerouting hook at raw priority, the usual firewall setup). Two
//!    generators: XDP live frames (BPF_PROG_TEST_RUN redirecting into the
//!    veth), which reach the receiver as XDP frames without an skb, as from a
//!    NIC driver: the headline figure; and an AF_PACKET socket, whose skbs the
//!    veth copies into XDP buffers, so XDP saves nothing there (reported as the
//!    "skb path"). A phase in which the veth refuses every frame gives the
//!    sender's own ceiling; as the veth delivers in the sender's softirq, the
//!    time per packet above the ceiling's is the receiver's.
//! 3. Reload: 100,000 random prefixes plus one stable entry for a sender that
//!    keeps making real TCP connections through the attached gate, replaced by
//!    another 100,000 with [`Sync::apply`] (what the daemon does on reload);
//!    reports the time taken and the allowed connections (and packets) lost.
//!
//! Human-readable results go to stdout; the last line is one JSON object.
//! Needs root and bpffs. Traffic stays inside namespaces created here, with
//! documentation addresses only.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::programs::links::FdLink;
use aya::programs::{Xdp, XdpMode};
use aya::{EbpfLoader, TestRun, TestRunOptions};
use clap::Parser;
use ipnet::Ipv4Net;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map as JsonMap, Value, json};

use smtp_edge::config::{Mode, XdpAttach};
use smtp_edge::gate::allowlist::{Compiled, Entry, Origin, compile};
use smtp_edge::gate::xdp::{self, BASELINE_OBJECT, Gate, LoadCapacity, Maps, Sync};
use smtp_edge_common::reason;
use smtp_edge_tests::frames;
use smtp_edge_tests::netns::{self, Banner, Netns};
use smtp_edge_tests::{PinDir, is_root, unique};

/// Benchmarks of the smtp-edge XDP gate (last line of stdout: JSON).
#[derive(Parser)]
#[command(name = "smtp-edge-bench-xdp")]
struct Args {
    /// BPF_PROG_TEST_RUN repetitions per measurement.
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// Measurements per figure (the median is reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Allowlist sizes (prefixes) for the per-packet cost.
    #[arg(long, value_delimiter = ',', default_value = "10,1000,100000")]
    sizes: Vec<usize>,
    /// Seconds each flood phase is measured (after a short warm-up).
    #[arg(long, default_value_t = 3.0)]
    flood_seconds: f64,
    /// Sender threads in the flood (the machine's CPUs are shared with the receiver).
    #[arg(long, default_value_t = 1)]
    senders: usize,
    /// Prefixes in each of the two allowlists of the reload test.
    #[arg(long, default_value_t = 100_000)]
    reload_prefixes: usize,
    /// Concurrent connectors during the reload test.
    #[arg(long, default_value_t = 2)]
    connectors: usize,
    /// Seed of the random prefixes (default: random).
    #[arg(long)]
    seed: Option<u64>,
    /// Skip parts: any of cost, flood, reload.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
}

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// Production event rate (the daemon's default): the drop path includes the limiter.
const EVENTS_PER_SECOND: u32 = 20;

/// Map sizes of the gates loaded here: two tables of 100,000 random prefixes
/// coexist during the reload (each block is 256 slots of 8 bytes: 256 MiB per level).
const CAPACITY: LoadCapacity = LoadCapacity {
    entries: 131_072,
    v4_l2_blocks: 131_072,
    v4_l3_blocks: 131_072,
    v6_prefixes: 1024,
};

/// Never covered by random prefixes: the namespaces' and probes' addresses.
const RESERVED: [&str; 3] = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"];
/// The prefix every cost-test set contains, and the probes around it.
const PROBE_PREFIX: &str = "192.0.2.200/32";
const PROBE_ALLOWED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 200);
const PROBE_DROPPED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// Flood and reload network (documentation addresses only).
const RX_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const TX_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const TX_ADDR_DENIED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 3);
/// The one entry of the flood's allowlist (not the sender).
const FLOOD_ALLOWED: &str = "192.0.2.10/32";
const RX_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x01];
const TX_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x02];
const NFT_TABLE: &str = "smtpbench";

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("smtp-edge-bench-xdp: error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run(args: &Args) -> Result<()> {
    ensure!(is_root(), "the benchmark needs root (BPF, namespaces)");
    ensure!(
        args.repeat > 0 && args.rounds > 0,
        "repeat and rounds must be > 0"
    );
    ensure!(
        args.flood_seconds > 0.0 && args.flood_seconds <= 60.0,
        "--flood-seconds must be in (0, 60]"
    );
    ensure!(
        (1..=8).contains(&args.senders) && (1..=8).contains(&args.connectors),
        "--senders and --connectors must be in 1..=8"
    );
    let seed = args.seed.unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut out = JsonMap::new();
    out.insert("seed".into(), json!(seed));
    println!("smtp-edge XDP benchmark (seed {seed})");

    let skip = |part: &str| args.skip.iter().any(|s| s == part);
    if !skip("cost") {
        cost(args, &mut rng, &mut out).context("per-packet cost")?;
    }
    if !skip("flood") {
        flood(args, &mut out).context("drop rate")?;
    }
    if !skip("reload") {
        reload(args, &mut rng, &mut out).context("reload")?;
    }
    let total = started.elapsed().as_secs_f64();
    out.insert("total_seconds".into(), json!(round(total, 1)));
    println!("\ntotal {total:.1} s");
    println!("{}", Value::Object(out));
    Ok(())
}

// ---- helpers ---------------------------------------------------------------

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn reserved() -> Vec<Ipv4Net> {
    RESERVED
        .iter()
        .map(|s| s.parse().expect("reserved range"))
        .collect()
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// `n` distinct random IPv4 prefixes, /8 to /32, none overlapping the
/// documentation ranges nor in `exclude`.
fn random_prefixes(rng: &mut StdRng, n: usize, exclude: &HashSet<Ipv4Net>) -> Result<Vec<Ipv4Net>> {
    let reserved = reserved();
    let mut seen = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    let max_attempts = n.saturating_mul(20).max(1000);
    for _ in 0..max_attempts {
        if out.len() == n {
            break;
        }
        let len: u8 = rng.random_range(8..=32);
        let net = Ipv4Net::new(Ipv4Addr::from(rng.random::<u32>()), len)
            .context("random prefix")?
            .trunc();
        if reserved.iter().any(|r| overlaps(r, &net)) || exclude.contains(&net) {
            continue;
        }
        if seen.insert(net) {
            out.push(net);
        }
    }
    ensure!(
        out.len() == n,
        "could not draw {n} random prefixes (got {})",
        out.len()
    );
    Ok(out)
}

fn entries(nets: &[Ipv4Net]) -> Result<Vec<Entry>> {
    nets.iter()
        .map(|n| {
            Entry::parse(Origin::Config, &n.to_string(), "bench")
                .with_context(|| format!("entry {n}"))
        })
        .collect()
}

fn compile_for(sync: &Sync, list: &[Entry], prev: &BTreeMap<String, u32>) -> Result<Compiled> {
    compile(list, prev, sync.maps().capacity.entries).context("compile the allowlist")
}

fn configure(sync: &mut Sync) -> Result<()> {
    sync.maps().set_ports(&[25]);
    sync.maps_mut()
        .set_settings(Mode::Enforce, EVENTS_PER_SECOND)
        .context("gate settings")?;
    Ok(())
}

fn counter(pin: &Path, which: u32) -> Result<u64> {
    let maps = Maps::open(pin, false).context("open the gate's maps")?;
    let c = maps.counters().context("read counters")?;
    Ok(c[which as usize])
}

// ---- 1. per-packet cost ----------------------------------------------------

/// One timed BPF_PROG_TEST_RUN: (kernel ns per run, wall ns per run).
fn time_run(prog: &Xdp, frame: &[u8], repeat: u32, expect: u32, what: &str) -> Result<(f64, f64)> {
    let t = Instant::now();
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::new()
        })
        .with_context(|| format!("test run of {what}"))?;
    let wall = t.elapsed().as_nanos() as f64 / f64::from(repeat);
    if r.return_value != expect {
        bail!(
            "{what}: the program returned {} but {} was expected (1 = XDP_DROP, 2 = XDP_PASS)",
            r.return_value,
            expect
        );
    }
    Ok((r.duration.as_nanos() as f64, wall))
}

/// Kernel- and wall-clock medians of one figure.
#[derive(Default)]
struct Figure {
    kernel: Vec<f64>,
    wall: Vec<f64>,
}

impl Figure {
    fn push(&mut self, (k, w): (f64, f64)) {
        self.kernel.push(k);
        self.wall.push(w);
    }
    fn kernel_ns(&mut self) -> f64 {
        median(&mut self.kernel)
    }
    fn wall_ns(&mut self) -> f64 {
        median(&mut self.wall)
    }
}

const FIGURES: [&str; 7] = [
    "gate_allowed",
    "gate_dropped",
    "gate_dropped_no_events",
    "gate_other",
    "trie_allowed",
    "trie_dropped",
    "minimal",
];

fn cost(args: &Args, rng: &mut StdRng, out: &mut JsonMap<String, Value>) -> Result<()> {
    println!(
        "\n1. Per-packet cost (BPF_PROG_TEST_RUN, {} runs, median of {})",
        args.repeat, args.rounds
    );
    let pin = PinDir::new("bxc");
    let mut gate = Gate::load(&pin.0, CAPACITY).context("load the gate")?;
    let maps = Maps::open(&pin.0, true).context("open the gate's maps")?;
    let mut sync = Sync::adopt(maps).context("adopt the gate's maps")?;
    configure(&mut sync)?;
    let allowed = frames::tcp4(PROBE_ALLOWED, 25);
    let dropped = frames::tcp4(PROBE_DROPPED, 25);
    let other = frames::tcp4(PROBE_DROPPED, 80);
    let probe: Ipv4Net = PROBE_PREFIX.parse().context("probe prefix")?;

    let mut prev = BTreeMap::new();
    let mut rows = Vec::new();
    for &n in &args.sizes {
        ensure!(
            (1..=CAPACITY.entries as usize - 1).contains(&n),
            "size {n} out of range"
        );
        let mut nets = random_prefixes(rng, n - 1, &HashSet::new())?;
        nets.push(probe);
        let list = entries(&nets)?;
        let compiled = compile_for(&sync, &list, &prev)?;
        let report = sync.apply(&compiled).context("fill the gate")?;
        prev = compiled.ids();
        let (l2, l3) = sync.v4_blocks();
        eprintln!(
            "  N={n}: gate filled in {:.3} s ({} slot writes, {l2} L2 / {l3} L3 blocks)",
            report.seconds, report.v4_slot_writes
        );
        let lookup = |a: Ipv4Addr| sync.maps().lookup(IpAddr::V4(a));
        ensure!(
            lookup(PROBE_ALLOWED)?.is_some() && lookup(PROBE_DROPPED)?.is_none(),
            "the gate's table does not hold the probes as expected"
        );

        // The bare trie filter, holding the same prefixes.
        let mut base = EbpfLoader::new()
            .load(BASELINE_OBJECT)
            .context("load the baseline object")?;
        for name in ["baseline_pass", "baseline_trie"] {
            let p: &mut Xdp = base
                .program_mut(name)
                .with_context(|| format!("program {name} missing"))?
                .try_into()
                .with_context(|| format!("program {name}"))?;
            p.load().with_context(|| format!("load {name}"))?;
        }
        {
            let map = base
                .map_mut("BASE_V4_TRIE")
                .context("map BASE_V4_TRIE missing")?;
            let mut trie: LpmTrie<_, [u8; 4], u32> =
                LpmTrie::try_from(map).context("BASE_V4_TRIE")?;
            let t = Instant::now();
            for (i, net) in nets.iter().enumerate() {
                trie.insert(
                    &Key::new(u32::from(net.prefix_len()), net.network().octets()),
                    i as u32,
                    0,
                )
                .with_context(|| format!("trie insert {net}"))?;
            }
            eprintln!("  N={n}: trie filled in {:.3} s", t.elapsed().as_secs_f64());
        }
        let pass: &Xdp = base
            .program("baseline_pass")
            .context("baseline_pass")?
            .try_into()
            .context("baseline_pass")?;
        let trie: &Xdp = base
            .program("baseline_trie")
            .context("baseline_trie")?
            .try_into()
            .context("baseline_trie")?;
        let g: &Xdp = gate.xdp().context("the gate program")?;

        let mut f: BTreeMap<&str, Figure> =
            FIGURES.iter().map(|k| (*k, Figure::default())).collect();
        let rep = args.repeat;
        for _ in 0..args.rounds {
            let mut put = |k: &'static str, v: (f64, f64)| {
                if let Some(fig) = f.get_mut(k) {
                    fig.push(v);
                }
            };
            put(
                "minimal",
                time_run(pass, &dropped, rep, XDP_PASS, "baseline_pass")?,
            );
            put(
                "gate_allowed",
                time_run(g, &allowed, rep, XDP_PASS, "gate, allowed")?,
            );
            put(
                "gate_dropped",
                time_run(g, &dropped, rep, XDP_DROP, "gate, dropped")?,
            );
            put(
                "gate_other",
                time_run(g, &other, rep, XDP_PASS, "gate, port 80")?,
            );
            put(
                "trie_allowed",
                time_run(trie, &allowed, rep, XDP_PASS, "trie, allowed")?,
            );
            put(
                "trie_dropped",
                time_run(trie, &dropped, rep, XDP_DROP, "trie, dropped")?,
            );
            // The same drop without the event rate limiter (events off).
            sync.maps_mut()
                .set_settings(Mode::Enforce, 0)
                .context("gate settings")?;
            let r = time_run(g, &dropped, rep, XDP_DROP, "gate, dropped, no events");
            configure(&mut sync)?;
            put("gate_dropped_no_events", r?);
        }
        let mut kernel = BTreeMap::new();
        let mut wall = BTreeMap::new();
        for (k, fig) in f.iter_mut() {
            kernel.insert(*k, fig.kernel_ns());
            wall.insert(*k, fig.wall_ns());
        }
        rows.push((n, kernel, wall));
    }

    println!(
        "  {:>7} | {:>10} {:>10} {:>10} {:>10} | {:>10} {:>10} | {:>8} | {:>10} {:>10} {:>10}",
        "N",
        "gate",
        "gate",
        "gate drop",
        "gate",
        "trie",
        "trie",
        "minimal",
        "gate drop/",
        "trie drop/",
        "gate drop/"
    );
    println!(
        "  {:>7} | {:>10} {:>10} {:>10} {:>10} | {:>10} {:>10} | {:>8} | {:>10} {:>10} {:>10}",
        "",
        "allowed",
        "dropped",
        "no events",
        "port 80",
        "allowed",
        "dropped",
        "",
        "minimal",
        "minimal",
        "trie drop"
    );
    for (n, k, w) in &rows {
        let ratio = |a: &str, b: &str| k[a] / k[b];
        println!(
            "  {:>7} | {:>10.0} {:>10.0} {:>10.0} {:>10.0} | {:>10.0} {:>10.0} | {:>8.0} | {:>10.2} {:>10.2} {:>10.2}",
            n,
            k["gate_allowed"],
            k["gate_dropped"],
            k["gate_dropped_no_events"],
            k["gate_other"],
            k["trie_allowed"],
            k["trie_dropped"],
            k["minimal"],
            ratio("gate_dropped", "minimal"),
            ratio("trie_dropped", "minimal"),
            ratio("gate_dropped", "trie_dropped"),
        );
        for (key, v) in k {
            out.insert(format!("{key}_ns_{n}"), json!(v));
        }
        for (key, v) in w {
            out.insert(format!("{key}_wall_ns_{n}"), json!(round(*v, 2)));
        }
        out.insert(
            format!("drop_cost_ratio_{n}"),
            json!(round(ratio("gate_dropped", "minimal"), 3)),
        );
        out.insert(
            format!("drop_cost_ratio_no_events_{n}"),
            json!(round(ratio("gate_dropped_no_events", "minimal"), 3)),
        );
        out.insert(
            format!("allowed_cost_ratio_{n}"),
            json!(round(ratio("gate_allowed", "minimal"), 3)),
        );
        out.insert(
            format!("trie_drop_cost_ratio_{n}"),
            json!(round(ratio("trie_dropped", "minimal"), 3)),
        );
        out.insert(
            format!("gate_vs_trie_drop_ratio_{n}"),
            json!(round(ratio("gate_dropped", "trie_dropped"), 3)),
        );
        out.insert(
            format!("drop_cost_ratio_wall_{n}"),
            json!(round(w["gate_dropped"] / w["minimal"], 3)),
        );
    }
    println!(
        "  ns per packet: BPF_PROG_TEST_RUN's own average (whole ns), median of the rounds; \
         probes take the table's longest path (three reads)"
    );
    drop(sync);
    drop(gate);
    drop(pin);
    Ok(())
}

// ---- 2. drop rate ----------------------------------------------------------

/// Two namespaces joined by a veth: `rx` (198.51.100.1) and `tx` (198.51.100.2, .3).
struct Net {
    rx: Netns,
    tx: Netns,
    rx_if: String,
    tx_if: String,
}

impl Net {
    fn new() -> Net {
        let rx = Netns::new("bxr");
        let tx = Netns::new("bxs");
        let rx_if = unique("vr");
        let tx_if = unique("vs");
        netns::veth(&rx, &rx_if, &tx, &tx_if);
        rx.ip(&["link", "set", "dev", &rx_if, "address", &mac(RX_MAC)]);
        tx.ip(&["link", "set", "dev", &tx_if, "address", &mac(TX_MAC)]);
        netns::add_addr(&rx, &rx_if, &format!("{RX_ADDR}/24"));
        netns::add_addr(&tx, &tx_if, &format!("{TX_ADDR}/24"));
        netns::add_addr(&tx, &tx_if, &format!("{TX_ADDR_DENIED}/24"));
        Net {
            rx,
            tx,
            rx_if,
            tx_if,
        }
    }
}

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A complete, checksummed TCP SYN frame from TX to RX port 25.
fn syn_frame(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut tcp = frames::tcp(40000, 25);
    let mut pseudo = Vec::with_capacity(12 + tcp.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, frames::TCP]);
    pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&tcp);
    let c = checksum(&pseudo);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut v4 = frames::V4::tcp_from(src);
    v4.dst = dst;
    let mut ip = v4.packet(&tcp);
    let c = checksum(&ip[..20]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = frames::ethernet(&[], frames::ETH_IP, &ip);
    f[0..6].copy_from_slice(&RX_MAC);
    f[6..12].copy_from_slice(&TX_MAC);
    f
}

/// How the flood is generated.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Gen {
    /// AF_PACKET socket: every frame is an skb, also when the receiving veth
    /// runs XDP (veth then copies it into an XDP buffer).
    Packet,
    /// BPF_PROG_TEST_RUN in live-frame mode with a program that redirects each
    /// frame to the sending veth: frames reach the receiver as XDP frames,
    /// without an skb, the way a NIC driver hands them to native XDP.
    Frames,
}

impl Gen {
    fn name(self) -> &'static str {
        match self {
            Gen::Packet => "AF_PACKET (skb path)",
            Gen::Frames => "XDP live frames (frame path)",
        }
    }
}

fn if_index(iface: &str) -> Result<u32> {
    let c = std::ffi::CString::new(iface).context("interface name")?;
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    ensure!(ifindex != 0, "no interface {iface} in this namespace");
    Ok(ifindex)
}

/// Sends `frame` on `iface` (in the calling thread's namespace) as fast as it
/// can with an AF_PACKET socket, until `stop` or `deadline`.
fn send_loop(
    iface: &str,
    frame: &[u8],
    stop: &AtomicBool,
    deadline: Instant,
    sent: &AtomicU64,
    refused: &AtomicU64,
) -> Result<()> {
    const BATCH: usize = 64;
    let ifindex = if_index(iface)?;
    // SAFETY: plain socket(2); the fd is owned below.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    ensure!(
        raw >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: zeroed sockaddr_ll is a valid value; fields set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: valid socket and address of the stated size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    ensure!(
        rc == 0,
        "bind AF_PACKET: {}",
        std::io::Error::last_os_error()
    );
    // Straight to the driver (the veth has no queue anyway).
    let one: libc::c_int = 1;
    // SAFETY: valid socket, int option.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    let mut iov = libc::iovec {
        iov_base: frame.as_ptr() as *mut libc::c_void,
        iov_len: frame.len(),
    };
    let iov_ptr: *mut libc::iovec = &mut iov;
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH)
        .map(|_| {
            // SAFETY: zeroed mmsghdr is valid; iov set below.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = iov_ptr;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let mut batches: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        batches += 1;
        if batches.is_multiple_of(64) && Instant::now() >= deadline {
            break;
        }
        // SAFETY: valid socket; BATCH headers each pointing at `iov`, which
        // points at `frame`; both outlive the call.
        let n = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n < 0 {
            // sendmmsg fails only when its first frame fails: that frame went
            // through the send path and the veth dropped it (ENOBUFS).
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) => {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                _ => bail!("sendmmsg: {e}"),
            }
        } else {
            sent.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    Ok(())
}

// The bpf(2) calls of the live-frame generator (aya loads only ELF objects).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
const BPF_FUNC_REDIRECT: i32 = 23;

/// A `union bpf_attr`, zero-filled.
#[repr(C, align(8))]
struct BpfAttr([u8; 128]);

impl BpfAttr {
    fn new() -> Self {
        BpfAttr([0; 128])
    }
    fn u32_at(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn u64_at(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
    fn call(&mut self, cmd: libc::c_long) -> std::io::Result<libc::c_long> {
        // SAFETY: bpf(2) with an attribute buffer of the size we pass; the
        // pointers inside it are valid for the duration of the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                self.0.as_mut_ptr(),
                self.0.len() as libc::c_uint,
            )
        };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r)
        }
    }
}

fn insn(code: u8, dst: u8, imm: i32) -> [u8; 8] {
    let mut i = [0u8; 8];
    i[0] = code;
    i[1] = dst & 0x0f;
    i[4..8].copy_from_slice(&imm.to_le_bytes());
    i
}

/// `return bpf_redirect(ifindex, 0);` as an XDP program.
fn redirect_program(ifindex: u32) -> Result<OwnedFd> {
    let code: Vec<u8> = [
        insn(0xb7, 1, ifindex as i32),    // r1 = ifindex
        insn(0xb7, 2, 0),                 // r2 = 0
        insn(0x85, 0, BPF_FUNC_REDIRECT), // call bpf_redirect
        insn(0x95, 0, 0),                 // exit
    ]
    .concat();
    let license = c"GPL";
    let mut attr = BpfAttr::new();
    attr.u32_at(0, BPF_PROG_TYPE_XDP);
    attr.u32_at(4, (code.len() / 8) as u32);
    attr.u64_at(8, code.as_ptr() as u64);
    attr.u64_at(16, license.as_ptr() as u64);
    attr.0[48..59].copy_from_slice(b"bench_redir");
    let fd = attr
        .call(BPF_PROG_LOAD)
        .context("load the redirect program")?;
    // SAFETY: the kernel returned a new fd that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// One BPF_PROG_TEST_RUN call of the live-frame generator: start, end, frames.
type Call = (Instant, Instant, u64);

/// Generates frames with BPF_PROG_TEST_RUN in live-frame mode: each is
/// redirected out of `iface`, until `stop` or `deadline`.
///
/// Every call sets up and tears down a page pool, which takes tens of
/// milliseconds with no frame flowing; calls are sized to about a second so
/// that this dead time stays a few percent (it lowers every phase alike).
fn live_loop(
    iface: &str,
    frame: &[u8],
    stop: &AtomicBool,
    deadline: Instant,
    sent: &AtomicU64,
) -> Result<Vec<Call>> {
    let prog = redirect_program(if_index(iface)?)?;
    let mut chunk: u32 = 1 << 18;
    let mut calls = Vec::new();
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && calls.len() < 10_000 {
        let mut attr = BpfAttr::new();
        attr.u32_at(0, prog.as_raw_fd() as u32);
        attr.u32_at(8, frame.len() as u32);
        attr.u64_at(16, frame.as_ptr() as u64);
        attr.u32_at(32, chunk);
        attr.u32_at(64, BPF_F_TEST_XDP_LIVE_FRAMES);
        attr.u32_at(72, 64);
        let t = Instant::now();
        attr.call(BPF_PROG_TEST_RUN)
            .context("live-frame test run")?;
        let end = Instant::now();
        sent.fetch_add(u64::from(chunk), Ordering::Relaxed);
        calls.push((t, end, u64::from(chunk)));
        let rate = f64::from(chunk) / (end - t).as_secs_f64().max(1e-3);
        chunk = rate.clamp(65_536.0, 8_388_608.0) as u32;
    }
    Ok(calls)
}

/// Frames sent within `[t0, t1]`, each call's frames spread evenly over it.
fn frames_within(calls: &[Call], t0: Instant, t1: Instant) -> u64 {
    calls
        .iter()
        .map(|&(s, e, n)| {
            let lo = s.max(t0);
            let hi = e.min(t1);
            if hi <= lo {
                return 0.0;
            }
            n as f64 * (hi - lo).as_secs_f64() / (e - s).as_secs_f64().max(1e-9)
        })
        .sum::<f64>()
        .round() as u64
}

/// What one flood phase measured.
struct Flood {
    seconds: f64,
    sent: u64,
    counted: u64,
    refused: u64,
}

impl Flood {
    fn sent_pps(&self) -> f64 {
        self.sent as f64 / self.seconds
    }
    /// Frames through the send path, accepted or refused by the veth.
    fn attempted_pps(&self) -> f64 {
        (self.sent + self.refused) as f64 / self.seconds
    }
    fn counted_pps(&self) -> f64 {
        self.counted as f64 / self.seconds
    }
}

/// Floods from `tx` for a warm-up plus `seconds`, reading `count` at the start
/// and the end of the measured window.
fn flood_phase(
    net: &Net,
    generator: Gen,
    senders: usize,
    seconds: f64,
    mut count: impl FnMut() -> Result<u64>,
) -> Result<Flood> {
    let frame = Arc::new(syn_frame(TX_ADDR, RX_ADDR));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let warmup = Duration::from_millis(500);
    let deadline =
        Instant::now() + warmup + Duration::from_secs_f64(seconds) + Duration::from_secs(10);
    std::thread::scope(|s| -> Result<Flood> {
        let mut handles = Vec::new();
        for _ in 0..senders {
            let (frame, stop, sent, refused) =
                (frame.clone(), stop.clone(), sent.clone(), refused.clone());
            let iface = net.tx_if.clone();
            let tx = &net.tx;
            handles.push(s.spawn(move || {
                tx.within(move || match generator {
                    Gen::Packet => send_loop(&iface, &frame, &stop, deadline, &sent, &refused)
                        .map(|()| Vec::new()),
                    Gen::Frames => live_loop(&iface, &frame, &stop, deadline, &sent),
                })
            }));
        }
        let mut measure = || -> Result<(Flood, Instant, Instant)> {
            std::thread::sleep(warmup);
            let c0 = count()?;
            let (s0, r0, t0) = (
                sent.load(Ordering::Relaxed),
                refused.load(Ordering::Relaxed),
                Instant::now(),
            );
            std::thread::sleep(Duration::from_secs_f64(seconds));
            let (s1, r1, t1) = (
                sent.load(Ordering::Relaxed),
                refused.load(Ordering::Relaxed),
                Instant::now(),
            );
            let c1 = count()?;
            let flood = Flood {
                seconds: (t1 - t0).as_secs_f64(),
                sent: s1 - s0,
                counted: c1.saturating_sub(c0),
                refused: r1 - r0,
            };
            Ok((flood, t0, t1))
        };
        let result = measure();
        stop.store(true, Ordering::Relaxed);
        let mut calls = Vec::new();
        for h in handles {
            calls.extend(
                h.join()
                    .map_err(|_| anyhow!("sender thread panicked"))?
                    .context("sender")?,
            );
        }
        let (mut flood, t0, t1) = result?;
        if generator == Gen::Frames {
            flood.sent = frames_within(&calls, t0, t1);
        }
        Ok(flood)
    })
}

fn nft_counter(rx: &Netns, family: &str) -> Result<u64> {
    let out = rx
        .cmd("nft")
        .args(["-j", "list", "counter", family, NFT_TABLE, "dropped"])
        .output()
        .context("run nft")?;
    ensure!(
        out.status.success(),
        "nft list counter: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).context("nft JSON")?;
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|o| o["counter"]["packets"].as_u64())
        .ok_or_else(|| anyhow!("no counter in nft output: {v}"))
}

fn nft_run(rx: &Netns, args: &[&str], input: Option<&str>) -> Result<()> {
    let dir = tempfile::tempdir().context("tempdir")?;
    let mut cmd = rx.cmd("nft");
    cmd.args(args);
    if let Some(text) = input {
        let path = dir.path().join("bench.nft");
        std::fs::write(&path, text).context("write the nft ruleset")?;
        cmd.arg("-f").arg(&path);
    }
    let out = cmd.output().context("run nft")?;
    ensure!(
        out.status.success(),
        "nft {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        input.unwrap_or_default()
    );
    Ok(())
}

/// The nftables equivalent of the gate with one allowed address, hooked at
/// netdev ingress (nftables' earliest hook) or inet prerouting (raw priority).
fn nft_ruleset(family: &str, iface: &str) -> String {
    let (hook, matcher) = if family == "netdev" {
        (
            format!("type filter hook ingress device \"{iface}\" priority -500;"),
            "meta protocol ip ip protocol tcp",
        )
    } else {
        (
            "type filter hook prerouting priority -300;".to_string(),
            "meta nfproto ipv4 ip protocol tcp",
        )
    };
    format!(
        "table {family} {NFT_TABLE} {{\n\
         \tset allowed {{ type ipv4_addr; flags interval; elements = {{ {FLOOD_ALLOWED} }} }}\n\
         \tcounter dropped {{ }}\n\
         \tchain filter {{\n\
         \t\t{hook} policy accept;\n\
         \t\t{matcher} tcp dport 25 ip saddr != @allowed counter name \"dropped\" drop\n\
         \t}}\n\
         }}\n"
    )
}

/// Loads the gate (its maps pinned under `pin`) and attaches it natively to
/// the receiving veth.
fn attach_gate(net: &Net, pin: &Path) -> Result<()> {
    let pin_dir = pin.to_path_buf();
    let iface = net.rx_if.clone();
    let how = net.rx.within(move || -> Result<String> {
        let cap = LoadCapacity {
            entries: 1024,
            v4_l2_blocks: 64,
            v4_l3_blocks: 64,
            v6_prefixes: 1024,
        };
        let mut gate = Gate::load(&pin_dir, cap).context("load the gate")?;
        Ok(gate
            .attach(&iface, XdpAttach::Native)
            .context("attach the gate")?
            .how)
    })?;
    ensure!(how == "native", "the gate attached as {how}, not native");
    Ok(())
}

/// Attaches `baseline_pass` natively to the receiving veth (pinned link at
/// `link`): the veth then takes XDP frames and builds skbs for the stack, as
/// a NIC driver does.
fn attach_pass(net: &Net, link: &Path) -> Result<()> {
    let link = link.to_path_buf();
    let iface = net.rx_if.clone();
    net.rx.within(move || -> Result<()> {
        let mut base = EbpfLoader::new()
            .load(BASELINE_OBJECT)
            .context("load the baseline object")?;
        let p: &mut Xdp = base
            .program_mut("baseline_pass")
            .context("baseline_pass missing")?
            .try_into()
            .context("baseline_pass")?;
        p.load().context("load baseline_pass")?;
        let id = p
            .attach_to_if_index(if_index(&iface)?, XdpMode::Driver)
            .context("attach baseline_pass")?;
        let fd: FdLink = p
            .take_link(id)
            .context("baseline_pass link")?
            .try_into()
            .context("baseline_pass link")?;
        fd.pin(&link).context("pin the baseline_pass link")?;
        Ok(())
    })
}

/// The flood phases of one generator, in order: ceiling, gate, nft netdev, nft inet.
fn flood_run(args: &Args, net: &Net, generator: Gen) -> Result<[Flood; 4]> {
    let secs = args.flood_seconds;
    let senders = args.senders;
    eprintln!("  {}: sender ceiling", generator.name());
    // Sender's ceiling: the veth refuses every frame at once (receiving end
    // down; or, for XDP frames, no XDP there to take them), so the rate is
    // the sender's alone.
    let ceiling = match generator {
        Gen::Packet => {
            net.rx.ip(&["link", "set", "dev", &net.rx_if, "down"]);
            let r = flood_phase(net, generator, senders, secs, || Ok(0));
            net.rx.ip(&["link", "set", "dev", &net.rx_if, "up"]);
            std::thread::sleep(Duration::from_millis(300));
            r?
        }
        Gen::Frames => flood_phase(net, generator, senders, secs, || Ok(0))?,
    };
    ensure!(
        ceiling.sent + ceiling.refused > 0,
        "the sender sent nothing"
    );

    eprintln!("  {}: gate", generator.name());
    let pin = PinDir::new("bxf");
    attach_gate(net, &pin.0)?;
    {
        let maps = Maps::open(&pin.0, true).context("open the gate's maps")?;
        let mut sync = Sync::adopt(maps).context("adopt")?;
        configure(&mut sync)?;
        let list = vec![Entry::parse(Origin::Config, FLOOD_ALLOWED, "bench").context("entry")?];
        let compiled = compile_for(&sync, &list, &BTreeMap::new())?;
        sync.apply(&compiled).context("allowlist")?;
    }
    let xdp = flood_phase(net, generator, senders, secs, || {
        counter(&pin.0, reason::DROPPED_NOT_ALLOWED_V4)
    })?;
    xdp::detach_all(&pin.0).context("detach the gate")?;

    // With XDP frames, the receiving veth needs an XDP program to take them
    // at all; the cheapest one passes them on to the stack.
    let pass_link = PinDir::new("bxp");
    if generator == Gen::Frames {
        std::fs::create_dir_all(&pass_link.0).context("pin directory")?;
        attach_pass(net, &pass_link.0.join("link"))?;
    }
    let mut nft = Vec::new();
    for family in ["netdev", "inet"] {
        eprintln!("  {}: nft {family}", generator.name());
        nft_run(&net.rx, &[], Some(&nft_ruleset(family, &net.rx_if)))?;
        nft.push(flood_phase(net, generator, senders, secs, || {
            nft_counter(&net.rx, family)
        })?);
        nft_run(&net.rx, &["delete", "table", family, NFT_TABLE], None)?;
    }
    drop(pass_link);
    let inet = nft.pop().context("nft inet phase")?;
    let netdev = nft.pop().context("nft netdev phase")?;
    Ok([ceiling, xdp, netdev, inet])
}

fn flood(args: &Args, out: &mut JsonMap<String, Value>) -> Result<()> {
    println!(
        "\n2. Drop rate: SYN flood to port 25 over a veth ({} sender thread(s), {} s per phase)",
        args.senders, args.flood_seconds
    );
    println!(
        "  nft: one rule `tcp dport 25 ip saddr != @allowed counter drop` at netdev ingress \
         (priority -500) or inet prerouting (priority -300); gate: native XDP, enforce, \
         {EVENTS_PER_SECOND} events/s"
    );
    let net = Net::new();
    let names = ["xdp gate", "nft netdev ingress", "nft inet prerouting"];
    for generator in [Gen::Frames, Gen::Packet] {
        let [ceiling, xdp, netdev, inet] = flood_run(args, &net, generator)?;
        let tag = match generator {
            Gen::Frames => "",
            Gen::Packet => "_skb_path",
        };
        println!("  {}:", generator.name());
        if generator == Gen::Frames {
            println!(
                "    (nft phases: baseline_pass attached so the veth takes the XDP frames and \
                 builds skbs for the stack, as a NIC driver does)"
            );
        }
        println!(
            "    {:<22} {:>12} {:>12} {:>9} {:>16}",
            "phase", "sent pkt/s", "dropped/s", "refused", "receiver ns/pkt"
        );
        println!(
            "    {:<22} {:>12.0} {:>12} {:>9} {:>16}",
            "sender ceiling",
            ceiling.attempted_pps(),
            "-",
            ceiling.refused,
            "-"
        );
        let ceiling_ns = 1e9 / ceiling.attempted_pps();
        let mut rx_ns = Vec::new();
        for (name, f) in names.iter().zip([&xdp, &netdev, &inet]) {
            ensure!(
                f.counted > 0,
                "{}, {name}: the receiver dropped nothing; packets did not reach it",
                generator.name()
            );
            // Everything runs on the sender's CPU (the veth delivers in its
            // softirq), so the time per packet above the ceiling's is the
            // receiver's.
            let rx = 1e9 / f.counted_pps() - ceiling_ns;
            rx_ns.push(rx);
            println!(
                "    {:<22} {:>12.0} {:>12.0} {:>9} {:>16.0}",
                name,
                f.sent_pps(),
                f.counted_pps(),
                f.refused,
                rx
            );
        }
        let ratio = xdp.counted_pps() / netdev.counted_pps();
        let ratio_inet = xdp.counted_pps() / inet.counted_pps();
        println!(
            "    xdp / nft dropped pkt/s: {ratio:.2} (netdev ingress), {ratio_inet:.2} (inet prerouting)"
        );
        let near = |f: &Flood| f.counted_pps() > 0.9 * ceiling.attempted_pps();
        let bound = near(&xdp) && near(&netdev);
        if bound {
            println!(
                "    note: both rates are within 10% of the sender's ceiling: the sender is the bottleneck"
            );
        }
        out.insert(
            format!("sender_ceiling_pps{tag}"),
            json!(ceiling.attempted_pps().round()),
        );
        out.insert(
            format!("xdp_drop_pps{tag}"),
            json!(xdp.counted_pps().round()),
        );
        out.insert(format!("xdp_sent_pps{tag}"), json!(xdp.sent_pps().round()));
        out.insert(
            format!("nft_drop_pps{tag}"),
            json!(netdev.counted_pps().round()),
        );
        out.insert(
            format!("nft_sent_pps{tag}"),
            json!(netdev.sent_pps().round()),
        );
        out.insert(
            format!("nft_inet_prerouting_drop_pps{tag}"),
            json!(inet.counted_pps().round()),
        );
        out.insert(format!("xdp_vs_nft_pps_ratio{tag}"), json!(round(ratio, 3)));
        out.insert(
            format!("xdp_vs_nft_inet_pps_ratio{tag}"),
            json!(round(ratio_inet, 3)),
        );
        out.insert(format!("xdp_rx_ns_per_pkt{tag}"), json!(round(rx_ns[0], 1)));
        out.insert(format!("nft_rx_ns_per_pkt{tag}"), json!(round(rx_ns[1], 1)));
        out.insert(
            format!("nft_inet_rx_ns_per_pkt{tag}"),
            json!(round(rx_ns[2], 1)),
        );
        out.insert(format!("flood_sender_bound{tag}"), json!(bound));
    }
    out.insert("nft_hook".into(), json!("netdev ingress"));
    out.insert("flood_generator".into(), json!("xdp live frames"));
    out.insert("flood_senders".into(), json!(args.senders));
    drop(net);
    Ok(())
}

// ---- 3. reload -------------------------------------------------------------

/// One connection attempt of the reload test (times from the test's origin).
struct Attempt {
    start: f64,
    end: f64,
    error: Option<String>,
}

fn connect_once(src: Ipv4Addr, dst: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    // Reset on close: no TIME_WAIT, so the ephemeral ports last the whole test.
    s.set_linger(Some(Duration::ZERO))?;
    s.bind(&SocketAddr::new(IpAddr::V4(src), 0).into())?;
    s.connect_timeout(&dst.into(), timeout)?;
    let mut stream: TcpStream = s.into();
    stream.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf)?;
    if !buf[..n].starts_with(b"220") {
        return Err(std::io::Error::other("no SMTP banner"));
    }
    let _ = stream.write_all(b"QUIT\r\n");
    Ok(())
}

/// Connects again and again until `stop` (or `deadline`, or `max` attempts).
fn connector(
    src: Ipv4Addr,
    dst: SocketAddr,
    origin: Instant,
    stop: &AtomicBool,
    deadline: Instant,
    max: usize,
) -> Vec<Attempt> {
    let mut v = Vec::new();
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && v.len() < max {
        let start = origin.elapsed().as_secs_f64();
        let r = connect_once(src, dst, Duration::from_secs(1));
        v.push(Attempt {
            start,
            end: origin.elapsed().as_secs_f64(),
            error: r.err().map(|e| e.to_string()),
        });
    }
    v
}

fn reload(args: &Args, rng: &mut StdRng, out: &mut JsonMap<String, Value>) -> Result<()> {
    let n = args.reload_prefixes;
    println!(
        "\n3. Reload: {n} random prefixes replaced by {n} others while an allowed sender connects ({} connector(s))",
        args.connectors
    );
    let net = Net::new();
    let pin = PinDir::new("bxl");
    {
        let pin_dir = pin.0.clone();
        let iface = net.rx_if.clone();
        let how = net.rx.within(move || -> Result<String> {
            let mut gate = Gate::load(&pin_dir, CAPACITY).context("load the gate")?;
            Ok(gate
                .attach(&iface, XdpAttach::Native)
                .context("attach the gate")?
                .how)
        })?;
        ensure!(how == "native", "the gate attached as {how}, not native");
    }
    let maps = Maps::open(&pin.0, true).context("open the gate's maps")?;
    let mut sync = Sync::adopt(maps).context("adopt")?;
    configure(&mut sync)?;
    let listener = net.rx.listen(SocketAddr::new(IpAddr::V4(RX_ADDR), 25));
    let banner = Banner::serve(vec![listener]);
    let dst = SocketAddr::new(IpAddr::V4(RX_ADDR), 25);

    let stable = Entry::parse(Origin::Config, &format!("{TX_ADDR}/32"), "the sender")
        .context("stable entry")?;
    let first = random_prefixes(rng, n, &HashSet::new())?;
    let second = random_prefixes(rng, n, &first.iter().copied().collect())?;
    let mut list1 = entries(&first)?;
    list1.push(stable.clone());
    let t = Instant::now();
    let c1 = compile_for(&sync, &list1, &BTreeMap::new())?;
    let r1 = sync.apply(&c1).context("load the first allowlist")?;
    let initial = t.elapsed().as_secs_f64();
    let (l2, l3) = sync.v4_blocks();
    println!(
        "  initial load: {initial:.3} s (kernel update {:.3} s, {} slot writes, {l2} L2 / {l3} L3 blocks)",
        r1.seconds, r1.v4_slot_writes
    );
    let stable_id = c1
        .entries
        .iter()
        .find(|e| e.entry == stable)
        .map(|e| e.id)
        .context("stable entry id")?;

    // The gate lets the sender in and keeps everyone else out.
    let (tx, timeout) = (&net.tx, Duration::from_secs(1));
    let ok = tx.connect_from(IpAddr::V4(TX_ADDR), dst, timeout);
    ensure!(ok.is_ok(), "the allowed sender cannot connect: {ok:?}");
    let denied = tx.connect_from(IpAddr::V4(TX_ADDR_DENIED), dst, timeout);
    ensure!(
        denied.is_err(),
        "a source outside the allowlist got through: {denied:?}"
    );
    let dropped_before = counter(&pin.0, reason::DROPPED_NOT_ALLOWED_V4)?;
    ensure!(dropped_before > 0, "the gate did not count the denied SYNs");
    let hits_before = sync.maps().hits(stable_id).context("hits")?;

    let origin = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = origin + Duration::from_secs(120);
    let (window, attempts) = std::thread::scope(|s| -> Result<_> {
        let mut handles = Vec::new();
        for _ in 0..args.connectors {
            let stop = stop.clone();
            handles.push(s.spawn(move || {
                tx.within(move || connector(TX_ADDR, dst, origin, &stop, deadline, 1_000_000))
            }));
        }
        let mut work = || -> Result<_> {
            std::thread::sleep(Duration::from_millis(500));
            let t0 = origin.elapsed().as_secs_f64();
            let mut list2 = entries(&second)?;
            list2.push(stable.clone());
            let t_parsed = origin.elapsed().as_secs_f64();
            let c2 = compile_for(&sync, &list2, &c1.ids())?;
            let t_compiled = origin.elapsed().as_secs_f64();
            let r2 = sync.apply(&c2).context("replace the allowlist")?;
            let t1 = origin.elapsed().as_secs_f64();
            ensure!(
                c2.entries
                    .iter()
                    .any(|e| e.entry == stable && e.id == stable_id),
                "the stable entry changed id"
            );
            std::thread::sleep(Duration::from_millis(1500));
            Ok((t0, t_parsed, t_compiled, t1, r2))
        };
        let w = work();
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().map_err(|_| anyhow!("connector panicked"))?);
        }
        Ok((w?, all))
    })?;
    let (t0, t_parsed, t_compiled, t1, r2) = window;
    let dropped_after = counter(&pin.0, reason::DROPPED_NOT_ALLOWED_V4)?;
    let hits_after = sync.maps().hits(stable_id).context("hits")?;
    let (l2, l3) = sync.v4_blocks();
    let accepted = banner.accepted.load(Ordering::Relaxed);
    drop(banner);

    let during: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.end >= t0 && a.start <= t1)
        .collect();
    let failed_during = during.iter().filter(|a| a.error.is_some()).count();
    let failed_total = attempts.iter().filter(|a| a.error.is_some()).count();
    let errors: Vec<&str> = attempts
        .iter()
        .filter_map(|a| a.error.as_deref())
        .take(3)
        .collect();
    ensure!(!attempts.is_empty(), "no connection attempts were made");
    ensure!(
        !during.is_empty(),
        "no connection attempt overlapped the reload"
    );
    let seconds = t1 - t0;
    println!(
        "  replace: {seconds:.3} s (parse {:.3} s, compile {:.3} s, kernel update {:.3} s, {} slot writes; now {l2} L2 / {l3} L3 blocks)",
        t_parsed - t0,
        t_compiled - t_parsed,
        r2.seconds,
        r2.v4_slot_writes
    );
    println!(
        "  connections: {} in all ({} accepted by the server), {} overlapping the reload; failed: {failed_during} during the reload, {failed_total} in all{}",
        attempts.len(),
        accepted,
        during.len(),
        if errors.is_empty() {
            String::new()
        } else {
            format!(" ({})", errors.join("; "))
        }
    );
    println!(
        "  packets from the allowed sender dropped (gate counter delta): {}; stable entry hits +{}",
        dropped_after - dropped_before,
        hits_after - hits_before
    );
    out.insert("reload_100k_seconds".into(), json!(round(seconds, 4)));
    out.insert("reload_prefixes".into(), json!(n));
    out.insert(
        "reload_kernel_update_seconds".into(),
        json!(round(r2.seconds, 4)),
    );
    out.insert(
        "reload_compile_seconds".into(),
        json!(round(t_compiled - t_parsed, 4)),
    );
    out.insert(
        "reload_parse_seconds".into(),
        json!(round(t_parsed - t0, 4)),
    );
    out.insert("reload_slot_writes".into(), json!(r2.v4_slot_writes));
    out.insert("initial_load_100k_seconds".into(), json!(round(initial, 4)));
    out.insert("reload_failed_allowed".into(), json!(failed_during));
    out.insert("reload_connections_during".into(), json!(during.len()));
    out.insert("reload_connections_total".into(), json!(attempts.len()));
    out.insert("reload_failed_total".into(), json!(failed_total));
    out.insert(
        "reload_dropped_packets".into(),
        json!(dropped_after - dropped_before),
    );
    drop(sync);
    xdp::detach_all(&pin.0).context("detach the gate")?;
    drop(pin);
    drop(net);
    Ok(())
}
