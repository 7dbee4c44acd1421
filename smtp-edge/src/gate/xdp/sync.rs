//! The pinned maps of a loaded gate: opening them, pushing the compiled
//! allowlist into them as a diff (additions before removals, so the filter
//! never drops a source allowed before and after), and reading back the tables,
//! settings, ports and counters for status views and metrics.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::time::Instant;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, Map, MapData, PerCpuArray, PerCpuValues};
use ipnet::Ipv6Net;
use serde::Serialize;
use smtp_edge_common::{GateConfig, capacity, map_names, mode, reason};

use super::mmap::MmapArray;
use super::{FilterError, bpf_err};
use crate::config::Mode;
use crate::gate::allowlist::Compiled;
use crate::gate::allowlist::v4table::{self, Level, V4Table};

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
