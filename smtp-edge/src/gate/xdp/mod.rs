//! The kernel side of the gate as the daemon and the CLI see it: load and attach
//! the XDP program, pin it, keep its maps in step with the allowlist, and read
//! its counters.
//!
//! Everything lives under the pin directory (`filter.pin_dir`): one map per file
//! (named as in [`smtp_edge_common::map_names`]) and one `link-IFNAME` per
//! interface. The pins keep the gate in force when the daemon stops; a restarted
//! daemon adopts them (same maps, program replaced atomically in the link) so
//! there is no window without a filter.

pub mod events;
pub mod mmap;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Instant;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, Map, MapData, PerCpuArray, PerCpuValues};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{Xdp, XdpMode, xdp::XdpLink};
use aya::{Ebpf, EbpfLoader};
use ipnet::Ipv6Net;
use serde::Serialize;
use smtp_edge_common::{GateConfig, PROGRAM_NAME, capacity, map_names, mode, reason};

use crate::config::{Mode, XdpAttach};
use crate::gate::allowlist::Compiled;
use crate::gate::allowlist::v4table::{self, Level, V4Table};
use mmap::MmapArray;

/// The XDP gate object, built by the build script and embedded in the binary.
pub static GATE_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SMTP_EDGE_GATE_OBJECT"));
/// Reference programs for the benchmark (minimal XDP_PASS, bare LPM trie).
pub static BASELINE_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SMTP_EDGE_BASELINE_OBJECT"));

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where bpffs is mounted when it is missing.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

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

/// Kernel map sizes actually in force (read from the maps, which may predate
/// the current configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct KernelCapacity {
    /// Entry counters.
    pub entries: u32,
    /// IPv4 tables.
    pub v4: v4table::Capacity,
    /// IPv6 trie.
    pub v6_prefixes: u32,
}

/// Handles on the pinned maps.
pub struct Maps {
    l1: MmapArray,
    l2: MmapArray,
    l3: MmapArray,
    ports: MmapArray,
    v6: LpmTrie<MapData, [u8; 16], u32>,
    config: Array<MapData, GateConfig>,
    counters: PerCpuArray<MapData, u64>,
    hits: PerCpuArray<MapData, u64>,
    /// Sizes in force.
    pub capacity: KernelCapacity,
}

fn open_pinned(pin_dir: &Path, name: &str) -> Result<(MapData, u32), FilterError> {
    let path = pin_dir.join(name);
    if !path.exists() {
        return Err(FilterError::NotPinned(pin_dir.to_path_buf()));
    }
    let data =
        MapData::from_pin(&path).map_err(|e| bpf_err(format!("open {}", path.display()), e))?;
    let info = data
        .info()
        .map_err(|e| bpf_err(format!("inspect {}", path.display()), e))?;
    Ok((data, info.max_entries()))
}

fn typed<T: TryFrom<Map>>(data: MapData, name: &str) -> Result<T, FilterError>
where
    <T as TryFrom<Map>>::Error: std::error::Error + 'static,
{
    let map = Map::from_map_data(data).map_err(|e| bpf_err(format!("map {name}"), e))?;
    T::try_from(map).map_err(|e| bpf_err(format!("map {name}"), e))
}

impl Maps {
    /// Opens the maps pinned under `pin_dir`; `writable` maps the tables read-write.
    pub fn open(pin_dir: &Path, writable: bool) -> Result<Maps, FilterError> {
        let mm = |name: &str| -> Result<(MmapArray, u32), FilterError> {
            let (data, max) = open_pinned(pin_dir, name)?;
            Ok((MmapArray::new(data.fd(), max, writable, name)?, max))
        };
        let (l1, _) = mm(map_names::V4_L1)?;
        let (l2, l2_len) = mm(map_names::V4_L2)?;
        let (l3, l3_len) = mm(map_names::V4_L3)?;
        let (ports, _) = mm(map_names::PORTS)?;
        let (v6, v6_len) = open_pinned(pin_dir, map_names::V6_TRIE)?;
        let (config, _) = open_pinned(pin_dir, map_names::CONFIG)?;
        let (counters, _) = open_pinned(pin_dir, map_names::COUNTERS)?;
        let (hits, entries) = open_pinned(pin_dir, map_names::ENTRY_HITS)?;
        Ok(Maps {
            l1,
            l2,
            l3,
            ports,
            v6: typed(v6, map_names::V6_TRIE)?,
            config: typed(config, map_names::CONFIG)?,
            counters: typed(counters, map_names::COUNTERS)?,
            hits: typed(hits, map_names::ENTRY_HITS)?,
            capacity: KernelCapacity {
                entries,
                v4: v4table::Capacity {
                    l2_blocks: l2_len / capacity::BLOCK_SLOTS,
                    l3_blocks: l3_len / capacity::BLOCK_SLOTS,
                },
                v6_prefixes: v6_len,
            },
        })
    }

    fn array(&self, level: Level) -> &MmapArray {
        match level {
            Level::L1 => &self.l1,
            Level::L2 => &self.l2,
            Level::L3 => &self.l3,
        }
    }

    /// The IPv4 table as the kernel has it.
    pub fn read_v4(&self) -> Result<V4Table, FilterError> {
        Ok(V4Table::read_back(self.capacity.v4, |level, i| {
            self.array(level).get_u32(i)
        })?)
    }

    /// The IPv6 prefixes as the kernel has them.
    pub fn read_v6(&self) -> Result<BTreeMap<Ipv6Net, u32>, FilterError> {
        let mut out = BTreeMap::new();
        for item in self.v6.iter() {
            let (key, id) = item.map_err(|e| bpf_err("read the IPv6 trie", e))?;
            let net = Ipv6Net::new(Ipv6Addr::from(key.data()), key.prefix_len() as u8)
                .map_err(|e| bpf_err("read the IPv6 trie", e))?;
            out.insert(net, id);
        }
        Ok(out)
    }

    /// The entry id the kernel finds for `addr` (the same lookup as the XDP program).
    pub fn lookup(&self, addr: IpAddr) -> Result<Option<u32>, FilterError> {
        match addr {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                let mut s = self.l1.get_u32(a >> 16).unwrap_or(0);
                if s & smtp_edge_common::slot::CHILD != 0 {
                    let n = s & !smtp_edge_common::slot::CHILD;
                    s = self
                        .l2
                        .get_u32(n * capacity::BLOCK_SLOTS + ((a >> 8) & 0xff))
                        .unwrap_or(0);
                    if s & smtp_edge_common::slot::CHILD != 0 {
                        let n = s & !smtp_edge_common::slot::CHILD;
                        s = self
                            .l3
                            .get_u32(n * capacity::BLOCK_SLOTS + (a & 0xff))
                            .unwrap_or(0);
                    }
                }
                Ok((s != 0 && s & smtp_edge_common::slot::CHILD == 0).then(|| s - 1))
            }
            IpAddr::V6(a) => match self.v6.get(&Key::new(128, a.octets()), 0) {
                Ok(id) => Ok(Some(id)),
                Err(aya::maps::MapError::KeyNotFound) => Ok(None),
                Err(e) => Err(bpf_err("look up the IPv6 trie", e)),
            },
        }
    }

    /// Protected ports.
    pub fn ports(&self) -> Vec<u16> {
        (0..=u16::MAX)
            .filter(|&p| self.ports.get_u8(p as u32).unwrap_or(0) != 0)
            .collect()
    }

    /// Mode and event rate.
    pub fn settings(&self) -> Result<GateConfig, FilterError> {
        self.config
            .get(&0, 0)
            .map_err(|e| bpf_err("read the gate settings", e))
    }

    /// Counters by reason, summed over CPUs.
    pub fn counters(&self) -> Result<[u64; reason::COUNT as usize], FilterError> {
        let mut out = [0u64; reason::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let v = self
                .counters
                .get(&(i as u32), 0)
                .map_err(|e| bpf_err("read counters", e))?;
            *slot = v.iter().sum();
        }
        Ok(out)
    }

    /// Hit counter of entry `id`, summed over CPUs.
    pub fn hits(&self, id: u32) -> Result<u64, FilterError> {
        let v = self
            .hits
            .get(&id, 0)
            .map_err(|e| bpf_err("read entry counters", e))?;
        Ok(v.iter().sum())
    }

    fn zero_hits(&mut self, id: u32) -> Result<(), FilterError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| bpf_err("count CPUs", e))?;
        let zeros = PerCpuValues::try_from(vec![0u64; cpus])
            .map_err(|e| bpf_err("reset entry counter", e))?;
        self.hits
            .set(id, zeros, 0)
            .map_err(|e| bpf_err("reset entry counter", e))
    }

    /// Sets the protected ports (adds first, then removes).
    pub fn set_ports(&self, ports: &[u16]) {
        for &p in ports {
            self.ports.set_u8(p as u32, 1);
        }
        for p in 0..=u16::MAX {
            if !ports.contains(&p) && self.ports.get_u8(p as u32) != Some(0) {
                self.ports.set_u8(p as u32, 0);
            }
        }
    }

    /// Sets mode and event rate.
    pub fn set_settings(&mut self, m: Mode, events_per_second: u32) -> Result<(), FilterError> {
        let cfg = GateConfig {
            mode: match m {
                Mode::Enforce => mode::ENFORCE,
                Mode::Monitor => mode::MONITOR,
            },
            events_per_second,
        };
        self.config
            .set(0, cfg, 0)
            .map_err(|e| bpf_err("write the gate settings", e))
    }
}

/// What a sync changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    /// IPv4 table slots written.
    pub v4_slot_writes: usize,
    /// IPv6 prefixes added or changed.
    pub v6_added: usize,
    /// IPv6 prefixes removed.
    pub v6_removed: usize,
    /// Wall time of the kernel update.
    pub seconds: f64,
}

/// The desired state pushed into the kernel, diffed against what is there.
pub struct Sync {
    maps: Maps,
    v4: V4Table,
    v6: BTreeMap<Ipv6Net, u32>,
}

impl Sync {
    /// Reads what the kernel holds now, so the first sync is a diff too.
    pub fn adopt(maps: Maps) -> Result<Sync, FilterError> {
        let v4 = maps.read_v4()?;
        let v6 = maps.read_v6()?;
        Ok(Sync { maps, v4, v6 })
    }

    /// The maps.
    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    /// Mutable maps (settings).
    pub fn maps_mut(&mut self) -> &mut Maps {
        &mut self.maps
    }

    /// IPv4 blocks in use (second level, third level).
    pub fn v4_blocks(&self) -> (usize, usize) {
        self.v4.blocks_used()
    }

    /// Brings the kernel tables to `compiled`. Additions and changes are
    /// written before removals, so a source allowed before and after is never
    /// dropped while the update runs. On error the kernel keeps a consistent
    /// table (the old one, or the old one plus some additions).
    pub fn apply(&mut self, compiled: &Compiled) -> Result<SyncReport, FilterError> {
        let started = Instant::now();
        let cap = self.maps.capacity;
        if let Some(&id) = compiled.entries.iter().map(|e| &e.id).max()
            && id >= cap.entries
        {
            return Err(FilterError::Bpf {
                context: "allowlist".into(),
                detail: format!(
                    "entry id {id} exceeds the pinned counter map ({} entries); detach and restart to resize",
                    cap.entries
                ),
            });
        }
        let next_v4 = V4Table::build(&compiled.v4, &self.v4, cap.v4)?;
        let mut next_v6: BTreeMap<Ipv6Net, u32> = BTreeMap::new();
        for &(net, id) in &compiled.v6 {
            next_v6.entry(net.trunc()).or_insert(id);
        }
        if next_v6.len() > cap.v6_prefixes as usize {
            return Err(FilterError::Bpf {
                context: "allowlist".into(),
                detail: format!(
                    "{} IPv6 prefixes exceed filter.capacity.v6_prefixes ({})",
                    next_v6.len(),
                    cap.v6_prefixes
                ),
            });
        }
        // New entries start from zero before anything can hit them.
        for &id in &compiled.new_ids {
            self.maps.zero_hits(id)?;
        }
        let mut report = SyncReport::default();
        for (net, &id) in &next_v6 {
            if self.v6.get(net) != Some(&id) {
                self.maps
                    .v6
                    .insert(
                        &Key::new(net.prefix_len() as u32, net.network().octets()),
                        id,
                        0,
                    )
                    .map_err(|e| bpf_err(format!("add {net}"), e))?;
                self.v6.insert(*net, id);
                report.v6_added += 1;
            }
        }
        let maps = &self.maps;
        report.v4_slot_writes = self.v4.apply_diff(&next_v4, |level, index, value| {
            if maps.array(level).set_u32(index, value) {
                Ok(())
            } else {
                Err(FilterError::Bpf {
                    context: "IPv4 table".into(),
                    detail: format!("slot {index} of {level:?} is beyond the map"),
                })
            }
        })?;
        self.v4 = next_v4;
        let stale: Vec<Ipv6Net> = self
            .v6
            .keys()
            .filter(|n| !next_v6.contains_key(n))
            .copied()
            .collect();
        for net in stale {
            self.maps
                .v6
                .remove(&Key::new(net.prefix_len() as u32, net.network().octets()))
                .map_err(|e| bpf_err(format!("remove {net}"), e))?;
            self.v6.remove(&net);
            report.v6_removed += 1;
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }
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
