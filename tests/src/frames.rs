//! Crafted Ethernet frames for BPF_PROG_TEST_RUN: VLAN tags, IPv4 with options
//! and fragments, IPv6 with extension header chains, TCP and UDP.

use std::net::{Ipv4Addr, Ipv6Addr};

/// EtherTypes.
pub const ETH_IP: u16 = 0x0800;
/// IPv6.
pub const ETH_IPV6: u16 = 0x86DD;
/// ARP.
pub const ETH_ARP: u16 = 0x0806;
/// 802.1Q tag.
pub const TPID_8021Q: u16 = 0x8100;
/// 802.1ad (QinQ outer) tag.
pub const TPID_8021AD: u16 = 0x88A8;

/// IP protocol numbers.
pub const TCP: u8 = 6;
/// UDP.
pub const UDP: u8 = 17;
/// IPv6 extension headers.
pub const HOP_BY_HOP: u8 = 0;
/// Routing.
pub const ROUTING: u8 = 43;
/// Fragment.
pub const FRAGMENT: u8 = 44;
/// Destination options.
pub const DEST_OPTS: u8 = 60;
/// Authentication header.
pub const AUTH: u8 = 51;

/// Ethernet header (after the MACs: `tags` VLAN TPIDs, then `ethertype`).
pub fn ethernet(tags: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    for (i, tpid) in tags.iter().enumerate() {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(100 + i as u16).to_be_bytes()); // VLAN id
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A TCP header (SYN) to `dport`.
pub fn tcp(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = 0x02;
    h[14..16].copy_from_slice(&65535u16.to_be_bytes());
    h
}

/// A UDP header to `dport`.
pub fn udp(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..6].copy_from_slice(&8u16.to_be_bytes());
    h
}

/// IPv4 header fields that tests vary.
#[derive(Clone, Debug)]
pub struct V4 {
    /// Source.
    pub src: Ipv4Addr,
    /// Destination.
    pub dst: Ipv4Addr,
    /// Protocol.
    pub proto: u8,
    /// Bytes of options (a multiple of 4, at most 40).
    pub options: usize,
    /// Fragment offset in 8-byte units.
    pub frag_offset: u16,
    /// More-fragments flag.
    pub more_fragments: bool,
}

impl V4 {
    /// A plain TCP packet header from `src`.
    pub fn tcp_from(src: Ipv4Addr) -> V4 {
        V4 {
            src,
            dst: Ipv4Addr::new(192, 0, 2, 25),
            proto: TCP,
            options: 0,
            frag_offset: 0,
            more_fragments: false,
        }
    }

    /// The IPv4 packet carrying `l4`.
    pub fn packet(&self, l4: &[u8]) -> Vec<u8> {
        let hlen = 20 + self.options;
        let mut h = vec![0u8; hlen];
        h[0] = 0x40 | (hlen / 4) as u8;
        h[2..4].copy_from_slice(&((hlen + l4.len()) as u16).to_be_bytes());
        let frag = self.frag_offset & 0x1fff | if self.more_fragments { 0x2000 } else { 0 };
        h[6..8].copy_from_slice(&frag.to_be_bytes());
        h[8] = 64;
        h[9] = self.proto;
        h[12..16].copy_from_slice(&self.src.octets());
        h[16..20].copy_from_slice(&self.dst.octets());
        // Options: NOPs ending with End of Options.
        for b in h.iter_mut().take(hlen).skip(20) {
            *b = 1;
        }
        if self.options > 0 {
            h[hlen - 1] = 0;
        }
        h.extend_from_slice(l4);
        h
    }
}

/// IPv6 header fields that tests vary.
#[derive(Clone, Debug)]
pub struct V6 {
    /// Source.
    pub src: Ipv6Addr,
    /// Destination.
    pub dst: Ipv6Addr,
    /// Extension headers in order (each 8 bytes; a fragment header uses `frag`).
    pub ext: Vec<u8>,
    /// Fragment offset (8-byte units) and more-fragments flag for a fragment header.
    pub frag: (u16, bool),
}

impl V6 {
    /// A plain packet header from `src`.
    pub fn from(src: Ipv6Addr) -> V6 {
        V6 {
            src,
            dst: "2001:db8::25".parse().expect("address"),
            ext: Vec::new(),
            frag: (0, false),
        }
    }

    /// The IPv6 packet carrying `l4` of protocol `proto`.
    pub fn packet(&self, proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut chain = Vec::new();
        for (i, &t) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).copied().unwrap_or(proto);
            let mut e = vec![0u8; 8];
            e[0] = next;
            match t {
                FRAGMENT => {
                    let v = (self.frag.0 << 3) | u16::from(self.frag.1);
                    e[2..4].copy_from_slice(&v.to_be_bytes());
                }
                // AH: length in 4-octet units minus 2 → 8 bytes is len 0.
                AUTH => e[1] = 0,
                // Others: length in 8-octet units minus 1 → 8 bytes is len 0;
                // padding option PadN fills the rest.
                _ => {
                    e[2] = 1;
                    e[3] = 4;
                }
            }
            chain.extend_from_slice(&e);
        }
        let first = self.ext.first().copied().unwrap_or(proto);
        let mut h = vec![0u8; 40];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&((chain.len() + l4.len()) as u16).to_be_bytes());
        h[6] = first;
        h[7] = 64;
        h[8..24].copy_from_slice(&self.src.octets());
        h[24..40].copy_from_slice(&self.dst.octets());
        h.extend_from_slice(&chain);
        h.extend_from_slice(l4);
        h
    }
}

/// Ethernet + IPv4 + TCP SYN from `src` to `dport`.
pub fn tcp4(src: Ipv4Addr, dport: u16) -> Vec<u8> {
    ethernet(&[], ETH_IP, &V4::tcp_from(src).packet(&tcp(40000, dport)))
}

/// Ethernet + IPv6 + TCP SYN from `src` to `dport`.
pub fn tcp6(src: Ipv6Addr, dport: u16) -> Vec<u8> {
    ethernet(
        &[],
        ETH_IPV6,
        &V6::from(src).packet(TCP, &tcp(40000, dport)),
    )
}
