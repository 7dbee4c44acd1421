//! The smtp-edge gate: an XDP program that drops TCP packets to the protected
//! SMTP ports whose source is not in the allowlist, and passes everything else
//! unmodified.
//!
//! Decisions (documented in the README):
//! - Frames that are not IPv4/IPv6 (after at most two VLAN tags) pass.
//! - TCP to a protected port passes when the source is allowed, else it is dropped
//!   (enforce mode) or counted as would-drop and passed (monitor mode).
//! - TCP fragments: a non-first fragment has no port, so any TCP fragment from a
//!   source outside the allowlist is dropped and counted as `dropped_fragment`.
//! - Truncated or malformed IP/TCP headers, over-long IPv6 extension chains and a
//!   third VLAN tag are dropped as `dropped_malformed` unless the source is allowed.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::bpf_ktime_get_coarse_ns,
    macros::{map, xdp},
    maps::{Array, LpmTrie, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::XdpContext,
};
use smtp_edge_common::{
    BPF_F_MMAPABLE, DropEvent, GateConfig, RATE_CLOCK_EVERY, RateState,
    capacity::{
        BLOCK_SLOTS, DEFAULT_ENTRIES, DEFAULT_V4_L2_BLOCKS, DEFAULT_V4_L3_BLOCKS,
        DEFAULT_V6_PREFIXES, EVENT_RING_BYTES, V4_L1_SLOTS,
    },
    family, mode, reason, slot,
};

// The tables and the port map are mmapable: the daemon writes them with plain
// atomic stores instead of one syscall per slot.
#[map]
static SE_V4_L1: Array<u32> = Array::pinned(V4_L1_SLOTS, BPF_F_MMAPABLE);
#[map]
static SE_V4_L2: Array<u32> = Array::pinned(DEFAULT_V4_L2_BLOCKS * BLOCK_SLOTS, BPF_F_MMAPABLE);
#[map]
static SE_V4_L3: Array<u32> = Array::pinned(DEFAULT_V4_L3_BLOCKS * BLOCK_SLOTS, BPF_F_MMAPABLE);
/// BPF_F_NO_PREALLOC is mandatory for LPM tries.
#[map]
static SE_V6_TRIE: LpmTrie<[u8; 16], u32> = LpmTrie::pinned(DEFAULT_V6_PREFIXES, 1);
#[map]
static SE_PORTS: Array<u8> = Array::pinned(65536, BPF_F_MMAPABLE);
#[map]
static SE_CONFIG: Array<GateConfig> = Array::pinned(1, 0);
#[map]
static SE_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(reason::COUNT, 0);
#[map]
static SE_ENTRY_HITS: PerCpuArray<u64> = PerCpuArray::pinned(DEFAULT_ENTRIES, 0);
#[map]
static SE_EVENTS: RingBuf = RingBuf::pinned(EVENT_RING_BYTES, 0);
#[map]
static SE_EVENT_RATE: PerCpuArray<RateState> = PerCpuArray::pinned(1, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPPROTO_TCP: u8 = 6;
const IPV6_HLEN: usize = 40;
/// IPv6 extension headers walked before giving up (as malformed).
const MAX_EXT_HEADERS: usize = 8;
/// Upper bound for any header offset: keeps the verifier's range tracking simple.
const MAX_L4_OFFSET: usize = 4096;
const TCP_MIN_HLEN: usize = 20;

/// Where the source address came from, for lookups and events.
#[derive(Clone, Copy)]
enum Source {
    V4([u8; 4]),
    V6([u8; 16]),
}

#[xdp]
#[inline(always)]
pub fn smtp_edge_gate(ctx: XdpContext) -> u32 {
    gate(&ctx)
}

/// Bounds-checked pointer to a `T` at `offset` bytes into the packet.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    // SAFETY: ptr_at checked that size_of::<T>() bytes are inside the packet;
    // read_unaligned because packet headers carry no alignment guarantee.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { core::ptr::read_unaligned(p) })
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

#[inline(always)]
fn count(index: u32) {
    if let Some(p) = SE_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn gate(ctx: &XdpContext) -> u32 {
    let Some(mut proto) = read::<[u8; 2]>(ctx, 12).map(be16) else {
        count(reason::PASSED_OTHER);
        return xdp_action::XDP_PASS;
    };
    let mut off = ETH_HLEN;
    // Up to two VLAN tags (802.1Q, 802.1ad / QinQ).
    for _ in 0..2 {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        let Some(inner) = read::<[u8; 2]>(ctx, off + 2).map(be16) else {
            return malformed(ctx, None);
        };
        proto = inner;
        off += 4;
    }
    match proto {
        ETH_P_IP => ipv4(ctx, off),
        ETH_P_IPV6 => ipv6(ctx, off),
        // A third tag could hide IP; we cannot see the source, so treat it as malformed.
        ETH_P_8021Q | ETH_P_8021AD => malformed(ctx, None),
        _ => {
            count(reason::PASSED_OTHER);
            xdp_action::XDP_PASS
        }
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, off: usize) -> u32 {
    let Some(hdr) = read::<[u8; 20]>(ctx, off) else {
        return malformed(ctx, None);
    };
    let src = Source::V4([hdr[12], hdr[13], hdr[14], hdr[15]]);
    let ihl = ((hdr[0] & 0x0f) as usize) * 4;
    if hdr[0] >> 4 != 4 || ihl < 20 {
        return malformed(ctx, Some(src));
    }
    if hdr[9] != IPPROTO_TCP {
        count(reason::PASSED_OTHER);
        return xdp_action::XDP_PASS;
    }
    let frag = be16([hdr[6], hdr[7]]);
    let more_fragments = frag & 0x2000 != 0;
    if frag & 0x1fff != 0 {
        // Non-first fragment: no port to look at.
        return fragment(ctx, src, 0);
    }
    tcp(ctx, off + ihl, src, more_fragments)
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, off: usize) -> u32 {
    let Some(hdr) = read::<[u8; IPV6_HLEN]>(ctx, off) else {
        return malformed(ctx, None);
    };
    let mut addr = [0u8; 16];
    addr.copy_from_slice(&hdr[8..24]);
    let src = Source::V6(addr);
    if hdr[0] >> 4 != 6 {
        return malformed(ctx, Some(src));
    }
    let mut next = hdr[6];
    let mut cur = off + IPV6_HLEN;
    let mut first_fragment = false;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            IPPROTO_TCP => return tcp(ctx, cur, src, first_fragment),
            // Hop-by-hop, routing, destination options: (len + 1) * 8 octets.
            0 | 43 | 60 => {
                let Some(ext) = read::<[u8; 2]>(ctx, cur) else {
                    return malformed(ctx, Some(src));
                };
                next = ext[0];
                cur += (ext[1] as usize + 1) * 8;
            }
            // Authentication header: (len + 2) * 4 octets.
            51 => {
                let Some(ext) = read::<[u8; 2]>(ctx, cur) else {
                    return malformed(ctx, Some(src));
                };
                next = ext[0];
                cur += (ext[1] as usize + 2) * 4;
            }
            // Fragment header: 8 octets.
            44 => {
                let Some(ext) = read::<[u8; 8]>(ctx, cur) else {
                    return malformed(ctx, Some(src));
                };
                next = ext[0];
                if be16([ext[2], ext[3]]) & 0xfff8 != 0 {
                    // Non-first fragment; only TCP ones concern us.
                    if next == IPPROTO_TCP {
                        return fragment(ctx, src, 0);
                    }
                    count(reason::PASSED_OTHER);
                    return xdp_action::XDP_PASS;
                }
                first_fragment = true;
                cur += 8;
            }
            // Any other next header (UDP, ICMPv6, ESP, no-next-header, ...) is not TCP.
            _ => {
                count(reason::PASSED_OTHER);
                return xdp_action::XDP_PASS;
            }
        }
        if cur > MAX_L4_OFFSET {
            return malformed(ctx, Some(src));
        }
    }
    if next == IPPROTO_TCP {
        return tcp(ctx, cur, src, first_fragment);
    }
    // Chain longer than we walk: it may hide TCP to a protected port.
    malformed(ctx, Some(src))
}

#[inline(always)]
fn tcp(ctx: &XdpContext, off: usize, src: Source, first_fragment: bool) -> u32 {
    if off > MAX_L4_OFFSET {
        return malformed(ctx, Some(src));
    }
    let Some(hdr) = read::<[u8; TCP_MIN_HLEN]>(ctx, off) else {
        if first_fragment {
            return fragment(ctx, src, 0);
        }
        return malformed(ctx, Some(src));
    };
    let port = be16([hdr[2], hdr[3]]);
    match SE_PORTS.get(port as u32) {
        Some(p) if *p != 0 => {}
        _ => {
            count(reason::PASSED_OTHER);
            return xdp_action::XDP_PASS;
        }
    }
    if first_fragment {
        return fragment(ctx, src, port);
    }
    let drop_reason = match src {
        Source::V4(_) => reason::DROPPED_NOT_ALLOWED_V4,
        Source::V6(_) => reason::DROPPED_NOT_ALLOWED_V6,
    };
    decide(ctx, src, port, drop_reason)
}

#[inline(always)]
fn fragment(ctx: &XdpContext, src: Source, port: u16) -> u32 {
    decide(ctx, src, port, reason::DROPPED_FRAGMENT)
}

#[inline(always)]
fn malformed(ctx: &XdpContext, src: Option<Source>) -> u32 {
    match src {
        Some(src) => decide(ctx, src, 0, reason::DROPPED_MALFORMED),
        None => deny(ctx, None, 0, reason::DROPPED_MALFORMED),
    }
}

/// Pass an allowed source (counting the entry that matched), deny anything else.
#[inline(always)]
fn decide(ctx: &XdpContext, src: Source, port: u16, drop_reason: u32) -> u32 {
    let entry = match src {
        Source::V4(a) => lookup_v4(u32::from_be_bytes(a)),
        Source::V6(a) => SE_V6_TRIE.get(Key::new(128, a)).copied(),
    };
    match entry {
        Some(id) => {
            count(reason::PASSED_ALLOWED);
            if let Some(p) = SE_ENTRY_HITS.get_ptr_mut(id) {
                // SAFETY: per-CPU slot.
                unsafe { *p += 1 };
            }
            xdp_action::XDP_PASS
        }
        None => deny(ctx, Some(src), port, drop_reason),
    }
}

/// Three array reads at most: /16 slot, then /24 block, then /32 block.
#[inline(always)]
fn lookup_v4(addr: u32) -> Option<u32> {
    let mut s = *SE_V4_L1.get(addr >> 16)?;
    if s & slot::CHILD != 0 {
        s = *SE_V4_L2.get((s & !slot::CHILD) * BLOCK_SLOTS + ((addr >> 8) & 0xff))?;
        if s & slot::CHILD != 0 {
            s = *SE_V4_L3.get((s & !slot::CHILD) * BLOCK_SLOTS + (addr & 0xff))?;
        }
    }
    if s == slot::EMPTY || s & slot::CHILD != 0 {
        None
    } else {
        Some(s - 1)
    }
}

#[inline(always)]
fn deny(ctx: &XdpContext, src: Option<Source>, port: u16, drop_reason: u32) -> u32 {
    let cfg = SE_CONFIG.get(0).copied().unwrap_or_default();
    let (action, counted) = if cfg.mode == mode::MONITOR {
        (xdp_action::XDP_PASS, reason::WOULD_DROP)
    } else {
        (xdp_action::XDP_DROP, drop_reason)
    };
    count(counted);
    if cfg.events_per_second != 0 {
        emit(ctx, src, port, counted, cfg.events_per_second);
    }
    action
}

/// Send a drop event, at most `limit` per second on this CPU.
#[inline(always)]
fn emit(ctx: &XdpContext, src: Option<Source>, port: u16, why: u32, limit: u32) {
    let Some(state) = SE_EVENT_RATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot; only this program on this CPU touches it.
    let state = unsafe { &mut *state };
    if state.sent >= limit {
        // Over the limit (a flood): look at the clock only now and then, a
        // helper call per dropped packet would double the drop path's cost.
        state.over = state.over.wrapping_add(1);
        if state.over & (RATE_CLOCK_EVERY - 1) != 0 {
            count(reason::EVENTS_SUPPRESSED);
            return;
        }
    }
    // SAFETY: helper without arguments, allowed for every program type.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now.wrapping_sub(state.window_start_ns) >= 1_000_000_000 {
        state.window_start_ns = now;
        state.sent = 0;
        state.over = 0;
    }
    if state.sent >= limit {
        count(reason::EVENTS_SUPPRESSED);
        return;
    }
    let Some(mut entry) = SE_EVENTS.reserve::<DropEvent>(0) else {
        count(reason::EVENTS_SUPPRESSED);
        return;
    };
    // Field by field at constant offsets: a struct copy compiles to a
    // memcpy whose register offset the verifier refuses on ring buffer
    // memory without CAP_PERFMON (the daemon runs with CAP_BPF alone).
    let (fam, words) = match src {
        Some(Source::V4(a)) => (family::V4, [u32::from_ne_bytes(a), 0, 0, 0]),
        Some(Source::V6(a)) => (
            family::V6,
            [
                u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
                u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
                u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
                u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
            ],
        ),
        None => (0, [0; 4]),
    };
    let ev: *mut DropEvent = entry.as_mut_ptr();
    // SAFETY: `ev` points to a reserved, exclusively owned, 8-byte aligned
    // DropEvent; every field is written once before submit.
    unsafe {
        let addr = core::ptr::addr_of_mut!((*ev).addr) as *mut u32;
        addr.write_volatile(words[0]);
        addr.add(1).write_volatile(words[1]);
        addr.add(2).write_volatile(words[2]);
        addr.add(3).write_volatile(words[3]);
        core::ptr::addr_of_mut!((*ev).family).write_volatile(fam);
        core::ptr::addr_of_mut!((*ev).reason).write_volatile(why as u8);
        core::ptr::addr_of_mut!((*ev).port).write_volatile(port);
        core::ptr::addr_of_mut!((*ev).ifindex).write_volatile(ctx.ingress_ifindex() as u32);
    }
    entry.submit(0);
    state.sent += 1;
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
