//! Loading, attaching and pinning the XDP program: bpffs under the pin
//! directory, the program loaded with its maps created or reused from the pins,
//! one pinned `link-IFNAME` per interface (adopted by a restarted daemon so the
//! program is replaced without a window), and detaching by removing the pins.

use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{Xdp, XdpMode, xdp::XdpLink};
use aya::{Ebpf, EbpfLoader};
use serde::Serialize;
use smtp_edge_common::{PROGRAM_NAME, capacity, map_names};

use super::{FilterError, GATE_OBJECT, bpf_err};
use crate::config::XdpAttach;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where bpffs is mounted when it is missing.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Makes sure `pin_dir` is on a bpf filesystem, mounting bpffs at
/// /sys/fs/bpf when the directory lies under it and nothing is mounted.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<(), FilterError> {
    let root = Path::new(BPFFS_ROOT);
    if pin_dir.starts_with(root) && !is_bpffs(root) {
        let src = c"bpf";
        let target = c"/sys/fs/bpf";
        // SAFETY: valid C strings, no data argument.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                src.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(FilterError::Bpffs(format!(
                "bpffs is not mounted at {BPFFS_ROOT} and cannot be mounted: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    std::fs::create_dir_all(pin_dir).map_err(|e| {
        FilterError::Bpffs(format!(
            "cannot create pin directory {}: {e}",
            pin_dir.display()
        ))
    })?;
    if !is_bpffs(pin_dir) {
        return Err(FilterError::Bpffs(format!(
            "pin directory {} is not on a bpf filesystem",
            pin_dir.display()
        )));
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path pointer and out-pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// How one interface ended up attached.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Attachment {
    /// Interface.
    pub iface: String,
    /// "native" or "skb", or "adopted" when a pinned link was taken over.
    pub how: String,
}

/// Link pin file of an interface.
pub fn link_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("link-{iface}"))
}

/// Interfaces with a pinned link.
pub fn pinned_interfaces(pin_dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(pin_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|d| {
            d.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("link-"))
                .map(str::to_string)
        })
        .collect();
    out.sort();
    out
}

/// Capacities to create maps with (ignored for maps that are already pinned).
#[derive(Debug, Clone, Copy)]
pub struct LoadCapacity {
    /// Entry counters.
    pub entries: u32,
    /// IPv4 second-level blocks.
    pub v4_l2_blocks: u32,
    /// IPv4 third-level blocks.
    pub v4_l3_blocks: u32,
    /// IPv6 prefixes.
    pub v6_prefixes: u32,
}

/// The loaded gate program. Dropping it leaves the pinned links and maps (and
/// therefore the filter) in place.
pub struct Gate {
    ebpf: Ebpf,
    pin_dir: PathBuf,
}

impl Gate {
    /// Loads the program, creating the maps under `pin_dir` or reusing the
    /// pinned ones.
    pub fn load(pin_dir: &Path, cap: LoadCapacity) -> Result<Gate, FilterError> {
        ensure_bpffs(pin_dir)?;
        let l2 = cap.v4_l2_blocks * capacity::BLOCK_SLOTS;
        let l3 = cap.v4_l3_blocks * capacity::BLOCK_SLOTS;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .map_max_entries(map_names::V4_L2, l2)
            .map_max_entries(map_names::V4_L3, l3)
            .map_max_entries(map_names::ENTRY_HITS, cap.entries)
            .map_max_entries(map_names::V6_TRIE, cap.v6_prefixes)
            .load(GATE_OBJECT)
            .map_err(|e| bpf_err("load the XDP object", e))?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| FilterError::Bpf {
                context: "load".into(),
                detail: format!("program {PROGRAM_NAME} missing from the object"),
            })?
            .try_into()
            .map_err(|e| bpf_err("load", e))?;
        prog.load()
            .map_err(|e| bpf_err("verify the XDP program", e))?;
        Ok(Gate {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
        })
    }

    /// The loaded program (for BPF_PROG_TEST_RUN in tests and benchmarks).
    pub fn xdp(&mut self) -> Result<&mut Xdp, FilterError> {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| FilterError::Bpf {
                context: "attach".into(),
                detail: format!("program {PROGRAM_NAME} missing"),
            })?
            .try_into()
            .map_err(|e| bpf_err("attach", e))
    }

    /// Attaches to `iface`: takes over a pinned link (atomic program replace,
    /// no window), or attaches anew and pins the link.
    pub fn attach(&mut self, iface: &str, how: XdpAttach) -> Result<Attachment, FilterError> {
        let pin = link_pin(&self.pin_dir, iface);
        let ifindex = if_index(iface)?;
        if pin.exists() {
            match self.adopt(&pin) {
                Ok(()) => {
                    return Ok(Attachment {
                        iface: iface.to_string(),
                        how: "adopted".into(),
                    });
                }
                Err(e) => {
                    tracing::warn!(iface, error = %e, "pinned link is stale; attaching anew");
                    let _ = std::fs::remove_file(&pin);
                }
            }
        }
        let prog = self.xdp()?;
        let attempts: &[(XdpMode, &str)] = match how {
            XdpAttach::Auto => &[(XdpMode::Driver, "native"), (XdpMode::Skb, "skb")],
            XdpAttach::Native => &[(XdpMode::Driver, "native")],
            XdpAttach::Skb => &[(XdpMode::Skb, "skb")],
        };
        let mut last = String::new();
        for &(mode, name) in attempts {
            match prog.attach_to_if_index(ifindex, mode) {
                Ok(id) => {
                    let link = prog.take_link(id).map_err(|e| bpf_err("attach", e))?;
                    let fd: FdLink = link.try_into().map_err(|e| FilterError::Attach {
                        iface: iface.to_string(),
                        detail: format!("the kernel gave no bpf_link to pin: {e}"),
                    })?;
                    fd.pin(&pin)
                        .map_err(|e| bpf_err(format!("pin {}", pin.display()), e))?;
                    if name == "skb" && how == XdpAttach::Auto {
                        tracing::warn!(
                            iface,
                            "native XDP not available on this driver; using generic (skb) mode"
                        );
                    }
                    return Ok(Attachment {
                        iface: iface.to_string(),
                        how: name.into(),
                    });
                }
                Err(e) => {
                    let e = bpf_err("attach", e);
                    if matches!(e, FilterError::Permission(_)) {
                        return Err(e);
                    }
                    last = e.to_string();
                }
            }
        }
        Err(FilterError::Attach {
            iface: iface.to_string(),
            detail: last,
        })
    }

    fn adopt(&mut self, pin: &Path) -> Result<(), FilterError> {
        let pinned = PinnedLink::from_pin(pin).map_err(|e| bpf_err("open pinned link", e))?;
        let fd: FdLink = pinned.into();
        let link = XdpLink::try_from(fd).map_err(|e| bpf_err("pinned link", e))?;
        let prog = self.xdp()?;
        let id = prog
            .attach_to_link(link)
            .map_err(|e| bpf_err("replace the program in the pinned link", e))?;
        // The pin keeps the link; our handle only needs to be closed.
        drop(prog.take_link(id));
        Ok(())
    }
}

/// Whether a network interface of this name exists in the current network
/// namespace (asks the kernel, not /sys, which may belong to another namespace).
pub fn interface_exists(iface: &str) -> bool {
    if_index(iface).is_ok()
}

fn if_index(iface: &str) -> Result<u32, FilterError> {
    let c = std::ffi::CString::new(iface)
        .map_err(|_| FilterError::UnknownInterface(iface.to_string()))?;
    // SAFETY: valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(FilterError::UnknownInterface(iface.to_string()))
    } else {
        Ok(idx)
    }
}

/// Detaches the link of one interface (removing its pin ends the link).
pub fn detach_interface(pin_dir: &Path, iface: &str) -> Result<(), FilterError> {
    let pin = link_pin(pin_dir, iface);
    std::fs::remove_file(&pin).map_err(|e| bpf_err(format!("remove {}", pin.display()), e))
}

/// Removes the whole gate: every link and map pin, then the directory.
pub fn detach_all(pin_dir: &Path) -> Result<Vec<String>, FilterError> {
    if !pin_dir.exists() {
        return Err(FilterError::NotPinned(pin_dir.to_path_buf()));
    }
    let ifaces = pinned_interfaces(pin_dir);
    for iface in &ifaces {
        detach_interface(pin_dir, iface)?;
    }
    for entry in std::fs::read_dir(pin_dir)
        .map_err(|e| bpf_err(format!("read {}", pin_dir.display()), e))?
        .flatten()
    {
        std::fs::remove_file(entry.path())
            .map_err(|e| bpf_err(format!("remove {}", entry.path().display()), e))?;
    }
    std::fs::remove_dir(pin_dir)
        .map_err(|e| bpf_err(format!("remove {}", pin_dir.display()), e))?;
    Ok(ifaces)
}
