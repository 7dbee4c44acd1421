//! Sampled drop events from the kernel's ring buffer, decoded and logged.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use aya::maps::{Map, MapData, RingBuf};
use serde::Serialize;
use smtp_edge_common::{DropEvent, family, map_names, reason};
use tokio::io::unix::AsyncFd;

use super::{FilterError, bpf_err};

/// A decoded drop event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drop {
    /// Source address, when the header was readable.
    pub source: Option<IpAddr>,
    /// Destination port (0 when unknown).
    pub port: u16,
    /// Counter name of the decision.
    pub reason: &'static str,
    /// Ingress interface index.
    pub ifindex: u32,
}

/// Decodes one ring buffer record.
pub fn decode(bytes: &[u8]) -> Option<Drop> {
    if bytes.len() < std::mem::size_of::<DropEvent>() {
        return None;
    }
    // SAFETY: length checked; DropEvent is plain data, read unaligned.
    let ev: DropEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let source = match ev.family {
        family::V4 => Some(IpAddr::V4(Ipv4Addr::new(
            ev.addr[0], ev.addr[1], ev.addr[2], ev.addr[3],
        ))),
        family::V6 => Some(IpAddr::V6(Ipv6Addr::from(ev.addr))),
        _ => None,
    };
    Some(Drop {
        source,
        port: ev.port,
        reason: reason::NAMES
            .get(ev.reason as usize)
            .copied()
            .unwrap_or("unknown"),
        ifindex: ev.ifindex,
    })
}

/// Reads the pinned ring buffer until the task is dropped, calling `sink` for
/// every event.
pub async fn run(pin_dir: &Path, mut sink: impl FnMut(Drop)) -> Result<(), FilterError> {
    let path = pin_dir.join(map_names::EVENTS);
    let data = MapData::from_pin(&path).map_err(|e| bpf_err("open the drop event ring", e))?;
    let map = Map::from_map_data(data).map_err(|e| bpf_err("drop event ring", e))?;
    let ring = RingBuf::try_from(map).map_err(|e| bpf_err("drop event ring", e))?;
    // SAFETY: the AsyncFd owns the ring buffer, which owns the fd, so the fd
    // stays open for as long as it is registered.
    let mut fd =
        unsafe { AsyncFd::register(ring) }.map_err(|e| bpf_err("watch the drop event ring", e))?;
    loop {
        let mut guard = fd
            .readable_mut()
            .await
            .map_err(|e| bpf_err("watch the drop event ring", e))?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if let Some(d) = decode(&item) {
                sink(d);
            }
        }
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_v4_and_v6() {
        let mut ev = DropEvent {
            family: family::V4,
            reason: reason::DROPPED_NOT_ALLOWED_V4 as u8,
            port: 25,
            ifindex: 3,
            ..DropEvent::default()
        };
        ev.addr[..4].copy_from_slice(&[198, 51, 100, 66]);
        // SAFETY: viewing a repr(C) value as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&ev as *const DropEvent).cast::<u8>(),
                std::mem::size_of::<DropEvent>(),
            )
        };
        let d = decode(bytes).unwrap();
        assert_eq!(d.source, Some("198.51.100.66".parse().unwrap()));
        assert_eq!(d.reason, "dropped_not_allowed_v4");
        assert_eq!(d.port, 25);
        assert!(decode(&bytes[..10]).is_none());
    }
}
