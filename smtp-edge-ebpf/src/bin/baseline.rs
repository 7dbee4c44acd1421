//! Reference programs for `cargo xtask bench xdp`, measured in the same run as the
//! gate: a minimal program that returns XDP_PASS, and a bare LPM-trie filter (the
//! textbook design the gate's IPv4 table is compared against).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{LpmTrie, lpm_trie::Key},
    programs::XdpContext,
};

/// Source prefixes allowed by the bare trie filter.
#[map]
static BASE_V4_TRIE: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(1 << 20, 1);

/// The cheapest possible XDP program.
#[xdp]
pub fn baseline_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Ethernet + IPv4 + TCP port 25, then one LPM-trie lookup of the source.
#[xdp]
pub fn baseline_trie(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + 14 + 20 + 4 > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the 38 bytes read below were bounds-checked above.
    let (ethertype, ihl, proto, src) = unsafe {
        let p = start as *const u8;
        (
            u16::from_be_bytes([*p.add(12), *p.add(13)]),
            ((*p.add(14) & 0x0f) as usize) * 4,
            *p.add(23),
            [*p.add(26), *p.add(27), *p.add(28), *p.add(29)],
        )
    };
    if ethertype != 0x0800 || proto != 6 || ihl < 20 {
        return xdp_action::XDP_PASS;
    }
    let tcp = start + 14 + ihl;
    if tcp + 4 > end {
        return xdp_action::XDP_DROP;
    }
    // SAFETY: bounds-checked above.
    let port =
        unsafe { u16::from_be_bytes([*((tcp + 2) as *const u8), *((tcp + 3) as *const u8)]) };
    if port != 25 {
        return xdp_action::XDP_PASS;
    }
    match BASE_V4_TRIE.get(Key::new(32, src)) {
        Some(_) => xdp_action::XDP_PASS,
        None => xdp_action::XDP_DROP,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
