//! Ports for the listeners a test starts (daemons, next hops, NSD, metrics).
//!
//! Asking the kernel for port 0 and handing the number on is a race: the
//! number comes from the ephemeral range, and between the moment it is
//! picked and the moment the daemon binds it, any outgoing connection on
//! the machine (another test's client, say) may be given it as its local
//! port. CI saw exactly that (`metrics.listen 127.0.0.1:44585: Address
//! already in use`). Ports handed out here come from *below* the kernel's
//! ephemeral range (`net.ipv4.ip_local_port_range`), where `connect()`
//! never takes a port, each at most once per process, starting at an
//! offset drawn from the process id so that test processes run side by
//! side (nextest) start apart; each is checked free before it is given.

use std::net::{Ipv4Addr, Ipv6Addr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

/// How many ports below the ephemeral range are used.
const SPAN: u32 = 12_000;
/// The lowest port ever given (clear of well-known services).
const FLOOR: u32 = 10_000;

/// The next candidate, counted from a per-process start.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// The lower end of the kernel's ephemeral range (32768 when unreadable).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// The range ports are taken from: `[low, high)`.
fn range() -> (u32, u32) {
    let high = ephemeral_low().clamp(FLOOR + 1_000, 65_535);
    let low = high.saturating_sub(SPAN).max(FLOOR);
    (low, high)
}

/// A port for which `free` holds, never handed out before by this process.
fn pick(what: &str, free: impl Fn(u16) -> bool) -> u16 {
    let (low, high) = range();
    let span = high - low;
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = low + (start + n) % span;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if free(port) {
            return port;
        }
    }
    panic!("no port free on {what} in {low}..{high}");
}

/// A TCP port free on 127.0.0.1.
pub fn free_port() -> u16 {
    pick("127.0.0.1", |p| {
        TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok()
    })
}

/// A TCP port free on both 127.0.0.1 and ::1 (the daemon listens on both).
pub fn free_port_dual() -> u16 {
    pick("127.0.0.1 and ::1", |p| {
        TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok()
            && TcpListener::bind((Ipv6Addr::LOCALHOST, p)).is_ok()
    })
}

/// A port free for both TCP and UDP on 127.0.0.1 (a name server).
pub fn free_port_udp_tcp() -> u16 {
    pick("127.0.0.1 TCP and UDP", |p| {
        TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok()
            && UdpSocket::bind((Ipv4Addr::LOCALHOST, p)).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_and_never_repeat() {
        let low = ephemeral_low();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let p = free_port();
            assert!(u32::from(p) < low, "{p} is in the ephemeral range");
            assert!(u32::from(p) >= FLOOR);
            assert!(seen.insert(p), "{p} handed out twice");
        }
    }
}
