//! Types and constants shared by the smtp-edge XDP program (kernel side) and the
//! `smtp-edge` daemon (user side).
//!
//! Everything here is `#[repr(C)]` plain data so both sides agree on the layout of
//! map keys and values. With the `user` feature the types implement `aya::Pod`.
#![no_std]

/// Names of the maps in the eBPF object. They are also the file names of the pins
/// under the daemon's bpffs directory, so they are part of the on-disk interface.
pub mod map_names {
    /// First level of the IPv4 table: 65,536 slots indexed by the top 16 address bits.
    pub const V4_L1: &str = "SE_V4_L1";
    /// Second level of the IPv4 table: blocks of 256 slots indexed by the third octet.
    pub const V4_L2: &str = "SE_V4_L2";
    /// Third level of the IPv4 table: blocks of 256 slots indexed by the fourth octet.
    pub const V4_L3: &str = "SE_V4_L3";
    /// IPv6 allowlist: kernel LPM trie, value = entry id.
    pub const V6_TRIE: &str = "SE_V6_TRIE";
    /// Protected destination ports: 65,536 bytes, non-zero = protected.
    pub const PORTS: &str = "SE_PORTS";
    /// One [`super::GateConfig`] at index 0.
    pub const CONFIG: &str = "SE_CONFIG";
    /// Per-CPU counters indexed by [`super::reason`].
    pub const COUNTERS: &str = "SE_COUNTERS";
    /// Per-CPU hit counters indexed by allowlist entry id.
    pub const ENTRY_HITS: &str = "SE_ENTRY_HITS";
    /// Ring buffer of sampled [`super::DropEvent`]s.
    pub const EVENTS: &str = "SE_EVENTS";
    /// Per-CPU [`super::RateState`] for the drop event rate limit.
    pub const EVENT_RATE: &str = "SE_EVENT_RATE";
}

/// `BPF_F_MMAPABLE`: the array can be mapped into the daemon's memory.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Bytes between two elements of an array map in its mmap view: the kernel
/// rounds every value up to 8 bytes.
pub const ARRAY_STRIDE: usize = 8;

/// Name of the gate program in the object.
pub const PROGRAM_NAME: &str = "smtp_edge_gate";

/// Default capacities (map `max_entries`), overridable from the configuration at load.
pub mod capacity {
    /// Slots in the first IPv4 level: one per /16.
    pub const V4_L1_SLOTS: u32 = 1 << 16;
    /// Slots per second- or third-level block.
    pub const BLOCK_SLOTS: u32 = 256;
    /// Default number of second-level blocks (/16s holding prefixes longer than /16).
    pub const DEFAULT_V4_L2_BLOCKS: u32 = 4096;
    /// Default number of third-level blocks (/24s holding prefixes longer than /24).
    pub const DEFAULT_V4_L3_BLOCKS: u32 = 4096;
    /// Default number of allowlist entries (per-entry counters).
    pub const DEFAULT_ENTRIES: u32 = 16384;
    /// Default number of IPv6 prefixes in the trie.
    pub const DEFAULT_V6_PREFIXES: u32 = 16384;
    /// Size of the drop event ring buffer in bytes (a power of two, page multiple).
    pub const EVENT_RING_BYTES: u32 = 256 * 1024;
}

/// Encoding of a slot of the IPv4 table.
///
/// The IPv4 allowlist is a three-level multibit trie with strides 16, 8 and 8,
/// filled by controlled prefix expansion in userspace: a lookup costs at most
/// three array reads whatever the number of prefixes.
pub mod slot {
    /// No prefix covers this slot.
    pub const EMPTY: u32 = 0;
    /// Set when the slot points to a block of the next level; the low bits are
    /// the block number.
    pub const CHILD: u32 = 1 << 31;
    /// Largest entry id a leaf can carry.
    pub const MAX_ENTRY_ID: u32 = CHILD - 2;

    /// Leaf slot value for an allowlist entry id.
    #[inline(always)]
    pub const fn leaf(entry_id: u32) -> u32 {
        entry_id + 1
    }

    /// Child slot value for a block number.
    #[inline(always)]
    pub const fn child(block: u32) -> u32 {
        block | CHILD
    }
}

/// Counter indices in the per-CPU counter array.
pub mod reason {
    /// Packet to a protected port from an allowed source.
    pub const PASSED_ALLOWED: u32 = 0;
    /// Anything that is not TCP to a protected port (ARP, UDP, other ports, replies).
    pub const PASSED_OTHER: u32 = 1;
    /// IPv4 packet to a protected port from a source outside the allowlist.
    pub const DROPPED_NOT_ALLOWED_V4: u32 = 2;
    /// IPv6 packet to a protected port from a source outside the allowlist.
    pub const DROPPED_NOT_ALLOWED_V6: u32 = 3;
    /// TCP fragment from a source outside the allowlist.
    pub const DROPPED_FRAGMENT: u32 = 4;
    /// Truncated or malformed IP/TCP headers from a source outside the allowlist
    /// (or with no readable source at all).
    pub const DROPPED_MALFORMED: u32 = 5;
    /// Monitor mode: the packet would have been dropped, and was passed.
    pub const WOULD_DROP: u32 = 6;
    /// Drop events not sent to userspace because of the rate limit or a full ring.
    pub const EVENTS_SUPPRESSED: u32 = 7;
    /// Number of counters.
    pub const COUNT: u32 = 8;

    /// Stable names, indexed by counter number (used in tables, JSON and metrics).
    pub const NAMES: [&str; COUNT as usize] = [
        "passed_allowed",
        "passed_other",
        "dropped_not_allowed_v4",
        "dropped_not_allowed_v6",
        "dropped_fragment",
        "dropped_malformed",
        "would_drop",
        "events_suppressed",
    ];
}

/// Gate mode, stored in [`GateConfig::mode`].
pub mod mode {
    /// Drop packets to protected ports from sources outside the allowlist.
    pub const ENFORCE: u32 = 0;
    /// Count what would be dropped, pass everything.
    pub const MONITOR: u32 = 1;
}

/// Runtime settings of the gate, one value at index 0 of the config array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GateConfig {
    /// [`mode::ENFORCE`] or [`mode::MONITOR`].
    pub mode: u32,
    /// Drop events sent to userspace per second and per CPU (0 = none).
    pub events_per_second: u32,
}

/// Per-CPU state of the drop-event rate limiter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateState {
    /// Start of the current one-second window (coarse monotonic ns).
    pub window_start_ns: u64,
    /// Events sent in the current window.
    pub sent: u32,
    /// Drops seen while over the limit; the clock is read only every
    /// [`RATE_CLOCK_EVERY`] of them, so a flood costs no helper call per packet.
    pub over: u32,
}

/// While over the event limit, the drop path reads the clock once per this
/// many drops (a power of two) to notice the next one-second window.
pub const RATE_CLOCK_EVERY: u32 = 64;

/// Address family tags used in [`DropEvent::family`].
pub mod family {
    /// IPv4: the first four bytes of the address are used.
    pub const V4: u8 = 4;
    /// IPv6.
    pub const V6: u8 = 6;
}

/// A sampled drop (or would-drop) event sent through the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    /// Source address; IPv4 uses the first four bytes (network order).
    pub addr: [u8; 16],
    /// [`family::V4`] or [`family::V6`].
    pub family: u8,
    /// Counter index of the decision ([`reason`]).
    pub reason: u8,
    /// Destination port (host order), 0 when unknown (non-first fragment, malformed).
    pub port: u16,
    /// Ingress interface index.
    pub ifindex: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C) plain data without padding holes that
    // could carry uninitialised bytes across the boundary.
    unsafe impl aya::Pod for super::GateConfig {}
    unsafe impl aya::Pod for super::RateState {}
    unsafe impl aya::Pod for super::DropEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_stable() {
        assert_eq!(core::mem::size_of::<GateConfig>(), 8);
        assert_eq!(core::mem::size_of::<RateState>(), 16);
        assert_eq!(core::mem::size_of::<DropEvent>(), 24);
    }

    #[test]
    fn slot_encoding_round_trips() {
        assert_eq!(slot::leaf(0), 1);
        assert_eq!(slot::child(5) & !slot::CHILD, 5);
        assert!(slot::leaf(slot::MAX_ENTRY_ID) < slot::CHILD);
        assert_eq!(reason::NAMES.len(), reason::COUNT as usize);
    }
}
