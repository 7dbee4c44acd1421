//! The XDP program in the kernel, through BPF_PROG_TEST_RUN: every parse path,
//! each verdict, and the counter that moved, checked after each case. The real
//! Exchange Online ranges are checked here only (no packet leaves the kernel).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use aya::maps::{Map, MapData, RingBuf};
use aya::programs::{TestRun, TestRunOptions};
use smtp_edge::config::Mode;
use smtp_edge::gate::allowlist::{self, Entry, Origin, exchange};
use smtp_edge::gate::xdp::{Gate, LoadCapacity, Maps, Sync};
use smtp_edge_common::{map_names, reason};
use smtp_edge_tests::PinDir;
use smtp_edge_tests::frames::{self, V4, V6};

const PASS: u32 = 2;
const DROP: u32 = 1;

struct Rig {
    gate: Gate,
    sync: Sync,
    compiled: allowlist::Compiled,
    pin: PinDir,
}

const CAP: LoadCapacity = LoadCapacity {
    entries: 1024,
    v4_l2_blocks: 64,
    v4_l3_blocks: 64,
    v6_prefixes: 1024,
};

fn rig(sources: &[&str], exchange_online: bool, ports: &[u16], mode: Mode, events: u32) -> Rig {
    let pin = PinDir::new("tr");
    let gate = Gate::load(&pin.0, CAP).expect("load gate");
    let maps = Maps::open(&pin.0, true).expect("open maps");
    let mut sync = Sync::adopt(maps).expect("adopt");
    sync.maps().set_ports(ports);
    sync.maps_mut()
        .set_settings(mode, events)
        .expect("settings");
    let mut entries: Vec<Entry> = Vec::new();
    if exchange_online {
        for r in exchange::BUNDLED {
            entries.push(Entry::parse(Origin::ExchangeOnline, r, "EXO").expect("bundled"));
        }
    }
    for s in sources {
        entries.push(Entry::parse(Origin::Config, s, "test").expect("entry"));
    }
    let compiled = allowlist::compile(&entries, &Default::default(), CAP.entries).expect("compile");
    sync.apply(&compiled).expect("sync");
    Rig {
        gate,
        sync,
        compiled,
        pin,
    }
}

impl Rig {
    fn run(&mut self, frame: &[u8]) -> Result<u32, String> {
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        };
        self.gate
            .xdp()
            .expect("program")
            .test_run(opts)
            .map(|r| r.return_value)
            .map_err(|e| e.to_string())
    }

    fn counters(&self) -> [u64; reason::COUNT as usize] {
        self.sync.maps().counters().expect("counters")
    }

    fn hits(&self, source: &str) -> u64 {
        let e = self
            .compiled
            .entries
            .iter()
            .find(|e| e.entry.source == source)
            .unwrap_or_else(|| panic!("no entry {source}"));
        self.sync.maps().hits(e.id).expect("hits")
    }

    /// Runs one frame and checks the verdict and that exactly the expected
    /// reason counter moved by one (events_suppressed is ignored).
    fn expect(&mut self, case: &str, frame: &[u8], action: u32, counter: u32) {
        let before = self.counters();
        let got = self
            .run(frame)
            .unwrap_or_else(|e| panic!("{case}: test run failed: {e}"));
        let after = self.counters();
        assert_eq!(got, action, "{case}: verdict");
        for i in 0..reason::COUNT as usize {
            if i as u32 == reason::EVENTS_SUPPRESSED {
                continue;
            }
            let want = u64::from(i as u32 == counter);
            assert_eq!(
                after[i] - before[i],
                want,
                "{case}: counter {} moved by {} (expected {want})",
                reason::NAMES[i],
                after[i] - before[i]
            );
        }
    }
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().expect("v4")
}
fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("v6")
}

const ALLOWED4: &str = "198.51.100.7";
const DENIED4: &str = "203.0.113.66";
const ALLOWED6: &str = "2001:db8:25::7";
const DENIED6: &str = "2001:db8:66::1";

fn standard() -> Rig {
    rig(
        &["198.51.100.7", "192.0.2.0/24", "2001:db8:25::/48"],
        false,
        &[25, 465, 587],
        Mode::Enforce,
        0,
    )
}

#[test]
fn ipv4_and_ipv6_allowed_and_not_on_each_protected_port() {
    let mut r = standard();
    for port in [25u16, 465, 587] {
        r.expect(
            &format!("v4 allowed :{port}"),
            &frames::tcp4(v4(ALLOWED4), port),
            PASS,
            reason::PASSED_ALLOWED,
        );
        r.expect(
            &format!("v4 denied :{port}"),
            &frames::tcp4(v4(DENIED4), port),
            DROP,
            reason::DROPPED_NOT_ALLOWED_V4,
        );
        r.expect(
            &format!("v6 allowed :{port}"),
            &frames::tcp6(v6(ALLOWED6), port),
            PASS,
            reason::PASSED_ALLOWED,
        );
        r.expect(
            &format!("v6 denied :{port}"),
            &frames::tcp6(v6(DENIED6), port),
            DROP,
            reason::DROPPED_NOT_ALLOWED_V6,
        );
    }
    // Per-entry counters: 3 ports each.
    assert_eq!(r.hits("198.51.100.7/32"), 3);
    assert_eq!(r.hits("2001:db8:25::/48"), 3);
    assert_eq!(r.hits("192.0.2.0/24"), 0);
    r.expect(
        "v4 /24 entry",
        &frames::tcp4(v4("192.0.2.200"), 25),
        PASS,
        reason::PASSED_ALLOWED,
    );
    assert_eq!(r.hits("192.0.2.0/24"), 1);
}

#[test]
fn everything_else_passes_untouched() {
    let mut r = standard();
    for port in [80u16, 443, 24, 26, 2525] {
        r.expect(
            &format!("v4 :{port}"),
            &frames::tcp4(v4(DENIED4), port),
            PASS,
            reason::PASSED_OTHER,
        );
        r.expect(
            &format!("v6 :{port}"),
            &frames::tcp6(v6(DENIED6), port),
            PASS,
            reason::PASSED_OTHER,
        );
    }
    let udp = frames::ethernet(
        &[],
        frames::ETH_IP,
        &V4 {
            proto: frames::UDP,
            ..V4::tcp_from(v4(DENIED4))
        }
        .packet(&frames::udp(1, 25)),
    );
    r.expect("udp :25", &udp, PASS, reason::PASSED_OTHER);
    let udp6 = frames::ethernet(
        &[],
        frames::ETH_IPV6,
        &V6::from(v6(DENIED6)).packet(frames::UDP, &frames::udp(1, 25)),
    );
    r.expect("udp6 :25", &udp6, PASS, reason::PASSED_OTHER);
    let icmp6 = frames::ethernet(
        &[],
        frames::ETH_IPV6,
        &V6::from(v6(DENIED6)).packet(58, &[135, 0, 0, 0, 0, 0, 0, 0]),
    );
    r.expect("icmpv6", &icmp6, PASS, reason::PASSED_OTHER);
    let arp = frames::ethernet(&[], frames::ETH_ARP, &[0u8; 28]);
    r.expect("arp", &arp, PASS, reason::PASSED_OTHER);
    let lldp = frames::ethernet(&[], 0x88cc, &[0u8; 40]);
    r.expect("lldp", &lldp, PASS, reason::PASSED_OTHER);
}

#[test]
fn vlan_and_qinq() {
    let mut r = standard();
    for (name, tags) in [
        ("802.1Q", vec![frames::TPID_8021Q]),
        (
            "QinQ 802.1ad+802.1Q",
            vec![frames::TPID_8021AD, frames::TPID_8021Q],
        ),
        (
            "double 802.1Q",
            vec![frames::TPID_8021Q, frames::TPID_8021Q],
        ),
    ] {
        let ok = frames::ethernet(
            &tags,
            frames::ETH_IP,
            &V4::tcp_from(v4(ALLOWED4)).packet(&frames::tcp(1, 25)),
        );
        r.expect(
            &format!("{name} allowed"),
            &ok,
            PASS,
            reason::PASSED_ALLOWED,
        );
        let bad = frames::ethernet(
            &tags,
            frames::ETH_IP,
            &V4::tcp_from(v4(DENIED4)).packet(&frames::tcp(1, 25)),
        );
        r.expect(
            &format!("{name} denied"),
            &bad,
            DROP,
            reason::DROPPED_NOT_ALLOWED_V4,
        );
        let bad6 = frames::ethernet(
            &tags,
            frames::ETH_IPV6,
            &V6::from(v6(DENIED6)).packet(frames::TCP, &frames::tcp(1, 25)),
        );
        r.expect(
            &format!("{name} v6 denied"),
            &bad6,
            DROP,
            reason::DROPPED_NOT_ALLOWED_V6,
        );
        let other = frames::ethernet(
            &tags,
            frames::ETH_IP,
            &V4::tcp_from(v4(DENIED4)).packet(&frames::tcp(1, 80)),
        );
        r.expect(
            &format!("{name} other port"),
            &other,
            PASS,
            reason::PASSED_OTHER,
        );
    }
    // A third tag could hide anything: refused as malformed.
    let triple = frames::ethernet(
        &[frames::TPID_8021AD, frames::TPID_8021Q, frames::TPID_8021Q],
        frames::ETH_IP,
        &V4::tcp_from(v4(ALLOWED4)).packet(&frames::tcp(1, 25)),
    );
    r.expect("three tags", &triple, DROP, reason::DROPPED_MALFORMED);
}

#[test]
fn ipv4_options() {
    let mut r = standard();
    for opts in [4usize, 12, 40] {
        let hdr = V4 {
            options: opts,
            ..V4::tcp_from(v4(DENIED4))
        };
        r.expect(
            &format!("{opts} option bytes denied"),
            &frames::ethernet(&[], frames::ETH_IP, &hdr.packet(&frames::tcp(1, 25))),
            DROP,
            reason::DROPPED_NOT_ALLOWED_V4,
        );
        let hdr = V4 {
            options: opts,
            ..V4::tcp_from(v4(ALLOWED4))
        };
        r.expect(
            &format!("{opts} option bytes allowed"),
            &frames::ethernet(&[], frames::ETH_IP, &hdr.packet(&frames::tcp(1, 25))),
            PASS,
            reason::PASSED_ALLOWED,
        );
        let hdr = V4 {
            options: opts,
            ..V4::tcp_from(v4(DENIED4))
        };
        r.expect(
            &format!("{opts} option bytes other port"),
            &frames::ethernet(&[], frames::ETH_IP, &hdr.packet(&frames::tcp(1, 110))),
            PASS,
            reason::PASSED_OTHER,
        );
    }
    // IHL below 5 is malformed.
    let mut bad = V4::tcp_from(v4(DENIED4)).packet(&frames::tcp(1, 25));
    bad[0] = 0x44;
    r.expect(
        "ihl 4",
        &frames::ethernet(&[], frames::ETH_IP, &bad),
        DROP,
        reason::DROPPED_MALFORMED,
    );
    let mut bad = V4::tcp_from(v4(DENIED4)).packet(&frames::tcp(1, 25));
    bad[0] = 0x55;
    r.expect(
        "version 5 in an IPv4 frame",
        &frames::ethernet(&[], frames::ETH_IP, &bad),
        DROP,
        reason::DROPPED_MALFORMED,
    );
}

#[test]
fn ipv6_extension_chains() {
    let mut r = standard();
    let chains: Vec<Vec<u8>> = vec![
        vec![frames::HOP_BY_HOP],
        vec![frames::ROUTING],
        vec![frames::DEST_OPTS],
        vec![frames::AUTH],
        vec![
            frames::HOP_BY_HOP,
            frames::DEST_OPTS,
            frames::ROUTING,
            frames::DEST_OPTS,
        ],
        vec![
            frames::HOP_BY_HOP,
            frames::ROUTING,
            frames::AUTH,
            frames::DEST_OPTS,
            frames::DEST_OPTS,
            frames::DEST_OPTS,
            frames::DEST_OPTS,
            frames::DEST_OPTS,
        ],
    ];
    for chain in chains {
        let case = format!("chain {chain:?}");
        let denied = V6 {
            ext: chain.clone(),
            ..V6::from(v6(DENIED6))
        };
        r.expect(
            &format!("{case} denied"),
            &frames::ethernet(
                &[],
                frames::ETH_IPV6,
                &denied.packet(frames::TCP, &frames::tcp(1, 25)),
            ),
            DROP,
            reason::DROPPED_NOT_ALLOWED_V6,
        );
        let allowed = V6 {
            ext: chain.clone(),
            ..V6::from(v6(ALLOWED6))
        };
        r.expect(
            &format!("{case} allowed"),
            &frames::ethernet(
                &[],
                frames::ETH_IPV6,
                &allowed.packet(frames::TCP, &frames::tcp(1, 25)),
            ),
            PASS,
            reason::PASSED_ALLOWED,
        );
        r.expect(
            &format!("{case} other port"),
            &frames::ethernet(
                &[],
                frames::ETH_IPV6,
                &denied.packet(frames::TCP, &frames::tcp(1, 443)),
            ),
            PASS,
            reason::PASSED_OTHER,
        );
    }
    // Nine headers: longer than the program walks, so it may hide TCP to :25.
    let long = vec![frames::DEST_OPTS; 9];
    let denied = V6 {
        ext: long.clone(),
        ..V6::from(v6(DENIED6))
    };
    r.expect(
        "over-long chain denied",
        &frames::ethernet(
            &[],
            frames::ETH_IPV6,
            &denied.packet(frames::TCP, &frames::tcp(1, 25)),
        ),
        DROP,
        reason::DROPPED_MALFORMED,
    );
    let allowed = V6 {
        ext: long,
        ..V6::from(v6(ALLOWED6))
    };
    r.expect(
        "over-long chain allowed",
        &frames::ethernet(
            &[],
            frames::ETH_IPV6,
            &allowed.packet(frames::TCP, &frames::tcp(1, 25)),
        ),
        PASS,
        reason::PASSED_ALLOWED,
    );
}

#[test]
fn fragments() {
    let mut r = standard();
    let l4 = frames::tcp(1, 25);
    // IPv4 first fragment (MF, offset 0) carries the port.
    let first = V4 {
        more_fragments: true,
        ..V4::tcp_from(v4(DENIED4))
    };
    r.expect(
        "v4 first fragment denied",
        &frames::ethernet(&[], frames::ETH_IP, &first.packet(&l4)),
        DROP,
        reason::DROPPED_FRAGMENT,
    );
    let first_ok = V4 {
        more_fragments: true,
        ..V4::tcp_from(v4(ALLOWED4))
    };
    r.expect(
        "v4 first fragment allowed",
        &frames::ethernet(&[], frames::ETH_IP, &first_ok.packet(&l4)),
        PASS,
        reason::PASSED_ALLOWED,
    );
    let first_other = V4 {
        more_fragments: true,
        ..V4::tcp_from(v4(DENIED4))
    };
    r.expect(
        "v4 first fragment other port",
        &frames::ethernet(
            &[],
            frames::ETH_IP,
            &first_other.packet(&frames::tcp(1, 80)),
        ),
        PASS,
        reason::PASSED_OTHER,
    );
    // Non-first fragments have no port.
    for (mf, name) in [(true, "middle"), (false, "last")] {
        let frag = V4 {
            frag_offset: 185,
            more_fragments: mf,
            ..V4::tcp_from(v4(DENIED4))
        };
        r.expect(
            &format!("v4 {name} fragment denied"),
            &frames::ethernet(&[], frames::ETH_IP, &frag.packet(&[0u8; 64])),
            DROP,
            reason::DROPPED_FRAGMENT,
        );
        let frag = V4 {
            frag_offset: 185,
            more_fragments: mf,
            ..V4::tcp_from(v4(ALLOWED4))
        };
        r.expect(
            &format!("v4 {name} fragment allowed"),
            &frames::ethernet(&[], frames::ETH_IP, &frag.packet(&[0u8; 64])),
            PASS,
            reason::PASSED_ALLOWED,
        );
    }
    let udp_frag = V4 {
        proto: frames::UDP,
        frag_offset: 185,
        ..V4::tcp_from(v4(DENIED4))
    };
    r.expect(
        "v4 UDP fragment",
        &frames::ethernet(&[], frames::ETH_IP, &udp_frag.packet(&[0u8; 64])),
        PASS,
        reason::PASSED_OTHER,
    );
    // A first fragment too short to hold the TCP header.
    let tiny = V4 {
        more_fragments: true,
        ..V4::tcp_from(v4(DENIED4))
    };
    r.expect(
        "v4 tiny first fragment",
        &frames::ethernet(&[], frames::ETH_IP, &tiny.packet(&l4[..8])),
        DROP,
        reason::DROPPED_FRAGMENT,
    );

    // IPv6 fragment header.
    let first = V6 {
        ext: vec![frames::FRAGMENT],
        frag: (0, true),
        ..V6::from(v6(DENIED6))
    };
    r.expect(
        "v6 first fragment denied",
        &frames::ethernet(&[], frames::ETH_IPV6, &first.packet(frames::TCP, &l4)),
        DROP,
        reason::DROPPED_FRAGMENT,
    );
    let later = V6 {
        ext: vec![frames::FRAGMENT],
        frag: (100, false),
        ..V6::from(v6(DENIED6))
    };
    r.expect(
        "v6 later fragment denied",
        &frames::ethernet(
            &[],
            frames::ETH_IPV6,
            &later.packet(frames::TCP, &[0u8; 64]),
        ),
        DROP,
        reason::DROPPED_FRAGMENT,
    );
    let later_ok = V6 {
        ext: vec![frames::FRAGMENT],
        frag: (100, true),
        ..V6::from(v6(ALLOWED6))
    };
    r.expect(
        "v6 later fragment allowed",
        &frames::ethernet(
            &[],
            frames::ETH_IPV6,
            &later_ok.packet(frames::TCP, &[0u8; 64]),
        ),
        PASS,
        reason::PASSED_ALLOWED,
    );
    let later_udp = V6 {
        ext: vec![frames::FRAGMENT],
        frag: (100, false),
        ..V6::from(v6(DENIED6))
    };
    r.expect(
        "v6 later UDP fragment",
        &frames::ethernet(
            &[],
            frames::ETH_IPV6,
            &later_udp.packet(frames::UDP, &[0u8; 64]),
        ),
        PASS,
        reason::PASSED_OTHER,
    );
}

#[test]
fn truncated_frames_at_every_header_boundary() {
    let mut r = standard();
    let cases = [
        (
            "v4 denied",
            frames::tcp4(v4(DENIED4), 25),
            34usize,
            reason::DROPPED_NOT_ALLOWED_V4,
            DROP,
        ),
        (
            "v4 allowed",
            frames::tcp4(v4(ALLOWED4), 25),
            34,
            reason::PASSED_ALLOWED,
            PASS,
        ),
        (
            "v6 denied",
            frames::tcp6(v6(DENIED6), 25),
            54,
            reason::DROPPED_NOT_ALLOWED_V6,
            DROP,
        ),
        (
            "v6 allowed",
            frames::tcp6(v6(ALLOWED6), 25),
            54,
            reason::PASSED_ALLOWED,
            PASS,
        ),
    ];
    for (name, full, ip_end, full_reason, full_action) in cases {
        let allowed = full_action == PASS;
        for len in 0..=full.len() {
            let frame = &full[..len];
            let case = format!("{name} cut at {len}");
            if len < 14 {
                // The kernel refuses test frames shorter than an Ethernet header;
                // where it accepts them they must pass as non-IP.
                if let Ok(action) = r.run(frame) {
                    assert_eq!(action, PASS, "{case}");
                }
                continue;
            }
            let (action, counter) = if len < ip_end {
                // No readable source: refused as malformed whatever it is.
                (DROP, reason::DROPPED_MALFORMED)
            } else if len < ip_end + 20 {
                if allowed {
                    (PASS, reason::PASSED_ALLOWED)
                } else {
                    (DROP, reason::DROPPED_MALFORMED)
                }
            } else {
                (full_action, full_reason)
            };
            r.expect(&case, frame, action, counter);
        }
    }
    // A truncated extension header.
    let chain = V6 {
        ext: vec![frames::HOP_BY_HOP, frames::ROUTING],
        ..V6::from(v6(DENIED6))
    };
    let full = frames::ethernet(
        &[],
        frames::ETH_IPV6,
        &chain.packet(frames::TCP, &frames::tcp(1, 25)),
    );
    r.expect(
        "cut inside the routing header",
        &full[..14 + 40 + 8 + 1],
        DROP,
        reason::DROPPED_MALFORMED,
    );
}

#[test]
fn monitor_mode_counts_and_passes() {
    let mut r = rig(&["198.51.100.7"], false, &[25], Mode::Monitor, 0);
    r.expect(
        "denied in monitor",
        &frames::tcp4(v4(DENIED4), 25),
        PASS,
        reason::WOULD_DROP,
    );
    r.expect(
        "denied v6 in monitor",
        &frames::tcp6(v6(DENIED6), 25),
        PASS,
        reason::WOULD_DROP,
    );
    r.expect(
        "allowed in monitor",
        &frames::tcp4(v4(ALLOWED4), 25),
        PASS,
        reason::PASSED_ALLOWED,
    );
    let frag = V4 {
        frag_offset: 8,
        ..V4::tcp_from(v4(DENIED4))
    };
    r.expect(
        "fragment in monitor",
        &frames::ethernet(&[], frames::ETH_IP, &frag.packet(&[0u8; 16])),
        PASS,
        reason::WOULD_DROP,
    );
    // Switching to enforce takes effect at once.
    r.sync
        .maps_mut()
        .set_settings(Mode::Enforce, 0)
        .expect("settings");
    r.expect(
        "denied in enforce",
        &frames::tcp4(v4(DENIED4), 25),
        DROP,
        reason::DROPPED_NOT_ALLOWED_V4,
    );
}

#[test]
fn real_exchange_online_ranges() {
    let mut r = rig(&[], true, &[25], Mode::Enforce, 0);
    for a in [
        "40.92.0.1",
        "40.93.255.254",
        "40.107.0.1",
        "40.107.255.254",
        "52.100.0.1",
        "52.103.255.254",
        "104.47.0.1",
        "104.47.127.254",
    ] {
        r.expect(
            &format!("EXO {a}"),
            &frames::tcp4(v4(a), 25),
            PASS,
            reason::PASSED_ALLOWED,
        );
    }
    for a in [
        "40.91.255.255",
        "40.94.0.1",
        "40.106.255.255",
        "40.108.0.0",
        "52.99.255.255",
        "52.104.0.1",
        "104.47.128.1",
        "104.46.255.255",
    ] {
        r.expect(
            &format!("outside EXO {a}"),
            &frames::tcp4(v4(a), 25),
            DROP,
            reason::DROPPED_NOT_ALLOWED_V4,
        );
    }
    for a in [
        "2a01:111:f400::1",
        "2a01:111:f400:ffff:ffff:ffff:ffff:fffe",
        "2a01:111:f403:1234::25",
    ] {
        r.expect(
            &format!("EXO {a}"),
            &frames::tcp6(v6(a), 25),
            PASS,
            reason::PASSED_ALLOWED,
        );
    }
    for a in ["2a01:111:f401::1", "2a01:111:f402::1", "2a01:111:f404::1"] {
        r.expect(
            &format!("outside EXO {a}"),
            &frames::tcp6(v6(a), 25),
            DROP,
            reason::DROPPED_NOT_ALLOWED_V6,
        );
    }
    assert_eq!(r.hits("40.92.0.0/15"), 2);
    assert_eq!(r.hits("104.47.0.0/17"), 2);
    assert_eq!(r.hits("2a01:111:f403::/48"), 1);
}

#[test]
fn overlapping_entries_count_separately_and_longest_wins() {
    let mut r = rig(
        &[
            "203.0.113.0/24",
            "203.0.113.64/26",
            "203.0.113.70",
            "2001:db8::/32",
            "2001:db8:1::/48",
        ],
        false,
        &[25],
        Mode::Enforce,
        0,
    );
    r.expect(
        "/24",
        &frames::tcp4(v4("203.0.113.1"), 25),
        PASS,
        reason::PASSED_ALLOWED,
    );
    r.expect(
        "/26",
        &frames::tcp4(v4("203.0.113.65"), 25),
        PASS,
        reason::PASSED_ALLOWED,
    );
    r.expect(
        "/32",
        &frames::tcp4(v4("203.0.113.70"), 25),
        PASS,
        reason::PASSED_ALLOWED,
    );
    r.expect(
        "v6 /48",
        &frames::tcp6(v6("2001:db8:1::9"), 25),
        PASS,
        reason::PASSED_ALLOWED,
    );
    r.expect(
        "v6 /32",
        &frames::tcp6(v6("2001:db8:2::9"), 25),
        PASS,
        reason::PASSED_ALLOWED,
    );
    assert_eq!(r.hits("203.0.113.0/24"), 1);
    assert_eq!(r.hits("203.0.113.64/26"), 1);
    assert_eq!(r.hits("203.0.113.70/32"), 1);
    assert_eq!(r.hits("2001:db8:1::/48"), 1);
    assert_eq!(r.hits("2001:db8::/32"), 1);
}

#[test]
fn drop_events_reach_userspace_rate_limited() {
    let mut r = rig(&["198.51.100.7"], false, &[25], Mode::Enforce, 3);
    let ring_path = Path::new(&r.pin.0).join(map_names::EVENTS);
    let data = MapData::from_pin(&ring_path).expect("ring pin");
    let mut ring = RingBuf::try_from(Map::from_map_data(data).expect("map")).expect("ring");
    for i in 0..10u8 {
        let src = Ipv4Addr::new(203, 0, 113, 100 + i);
        assert_eq!(r.run(&frames::tcp4(src, 25)), Ok(DROP));
    }
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        events.push(smtp_edge::gate::xdp::events::decode(&item).expect("decode"));
    }
    // At most 3 per second per CPU (test runs are on one CPU at a time; allow two).
    assert!((3..=6).contains(&events.len()), "{} events", events.len());
    let first = &events[0];
    assert_eq!(first.source, Some("203.0.113.100".parse().expect("addr")));
    assert_eq!(first.port, 25);
    assert_eq!(first.reason, "dropped_not_allowed_v4");
    assert!(r.counters()[reason::EVENTS_SUPPRESSED as usize] >= 4);
}

#[test]
fn allowlist_updates_apply_to_the_running_program() {
    let mut r = rig(&["198.51.100.7"], false, &[25], Mode::Enforce, 0);
    r.expect(
        "before",
        &frames::tcp4(v4(DENIED4), 25),
        DROP,
        reason::DROPPED_NOT_ALLOWED_V4,
    );
    let entries = vec![
        Entry::parse(Origin::Config, "198.51.100.7", "").expect("e"),
        Entry::parse(Origin::Cli, "203.0.113.64-203.0.113.71", "").expect("e"),
    ];
    let next = allowlist::compile(&entries, &r.compiled.ids(), CAP.entries).expect("compile");
    r.sync.apply(&next).expect("sync");
    r.compiled = next;
    r.expect(
        "after add",
        &frames::tcp4(v4(DENIED4), 25),
        PASS,
        reason::PASSED_ALLOWED,
    );
    r.expect(
        "range end",
        &frames::tcp4(v4("203.0.113.71"), 25),
        PASS,
        reason::PASSED_ALLOWED,
    );
    r.expect(
        "past range",
        &frames::tcp4(v4("203.0.113.72"), 25),
        DROP,
        reason::DROPPED_NOT_ALLOWED_V4,
    );
    let only = vec![Entry::parse(Origin::Config, "198.51.100.7", "").expect("e")];
    let next = allowlist::compile(&only, &r.compiled.ids(), CAP.entries).expect("compile");
    r.sync.apply(&next).expect("sync");
    r.expect(
        "after remove",
        &frames::tcp4(v4(DENIED4), 25),
        DROP,
        reason::DROPPED_NOT_ALLOWED_V4,
    );
    // Ports are live too.
    r.sync.maps().set_ports(&[25, 587]);
    r.expect(
        "587 now protected",
        &frames::tcp4(v4(DENIED4), 587),
        DROP,
        reason::DROPPED_NOT_ALLOWED_V4,
    );
    r.sync.maps().set_ports(&[587]);
    r.expect(
        "25 no longer protected",
        &frames::tcp4(v4(DENIED4), 25),
        PASS,
        reason::PASSED_OTHER,
    );
}
