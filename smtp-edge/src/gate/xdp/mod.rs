//! The kernel side of the gate as the daemon and the CLI see it: load and attach
//! the XDP program, pin it, keep its maps in step with the allowlist, and read
//! its counters.
//!
//! Everything lives under the pin directory (`filter.pin_dir`): one map per file
//! (named as in [`smtp_edge_common::map_names`]) and one `link-IFNAME` per
//! interface. The pins keep the gate in force when the daemon stops; a restarted
//! daemon adopts them (same maps, program replaced atomically in the link) so
//! there is no window without a filter.
//!
//! This module owns the embedded objects and the error type; the work is split
//! between `load` (bpffs, loading, attaching, pinning and detaching the
//! program) and `sync` (the pinned maps: diffing the allowlist into them and
//! reading settings and counters back). Their public items are re-exported
//! here, so callers use `gate::xdp::X`.

pub mod events;
mod load;
pub mod mmap;
mod sync;

use std::path::PathBuf;

use crate::gate::allowlist::v4table;

pub use load::{
    Attachment, BPFFS_ROOT, Gate, LoadCapacity, detach_all, detach_interface, ensure_bpffs,
    interface_exists, link_pin, pinned_interfaces,
};
pub use sync::{KernelCapacity, Maps, Sync, SyncReport};

/// The XDP gate object, built by the build script and embedded in the binary.
pub static GATE_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SMTP_EDGE_GATE_OBJECT"));
/// Reference programs for the benchmark (minimal XDP_PASS, bare LPM trie).
pub static BASELINE_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SMTP_EDGE_BASELINE_OBJECT"));

/// Errors of the kernel side.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// Not allowed to use BPF.
    #[error(
        "no permission for BPF ({0}); run as root or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"
    )]
    Permission(String),
    /// bpffs missing and not mountable, or the pin directory is not on it.
    #[error("{0}")]
    Bpffs(String),
    /// The interface does not exist.
    #[error("unknown interface `{0}` (see `ip link`)")]
    UnknownInterface(String),
    /// Attaching failed.
    #[error("cannot attach the gate to {iface}: {detail}")]
    Attach {
        /// Interface.
        iface: String,
        /// Cause.
        detail: String,
    },
    /// No pinned gate at the pin directory.
    #[error("no gate is pinned at {0} (is `smtp-edge run` or its filter configured?)")]
    NotPinned(PathBuf),
    /// Building the IPv4 table.
    #[error(transparent)]
    Table(#[from] v4table::TableError),
    /// Mapping an array.
    #[error(transparent)]
    Mmap(#[from] mmap::MmapError),
    /// Any other BPF error.
    #[error("{context}: {detail}")]
    Bpf {
        /// What we were doing.
        context: String,
        /// Cause.
        detail: String,
    },
}

/// Turns an aya error into a [`FilterError`], recognising permission problems.
fn bpf_err(context: impl Into<String>, err: impl std::error::Error + 'static) -> FilterError {
    let mut detail = err.to_string();
    let mut source: Option<&dyn std::error::Error> = err.source();
    let mut permission = false;
    let mut cur: Option<&dyn std::error::Error> = Some(&err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
        {
            permission = true;
        }
        cur = e.source();
    }
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    let context = context.into();
    if permission {
        FilterError::Permission(format!("{context}: {detail}"))
    } else {
        FilterError::Bpf { context, detail }
    }
}
