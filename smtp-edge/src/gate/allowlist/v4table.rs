//! The IPv4 lookup table the XDP program reads: a multibit trie with strides
//! 16, 8 and 8 (DIR-16-8-8), built here by controlled prefix expansion.
//!
//! The kernel's LPM trie costs more per lookup as prefixes are added (it walks
//! one node per distinguishing bit); this table costs at most three array reads
//! whatever the number of prefixes, with the same longest-prefix-match result:
//! prefixes are expanded shortest first, so a longer prefix always overwrites
//! the slots of a shorter one it lies inside.
//!
//! Level 1 has 65,536 slots (one per /16). A slot holds nothing, a leaf (the
//! entry id plus one) or a pointer to a 256-slot block of the next level. Blocks are numbered
//! ("physical" numbers in the kernel arrays); a block keeps its number from one
//! build to the next while its place in the trie exists, and a number freed by a
//! build is reused only by a later build. [`V4Table::apply_diff`] orders writes
//! so that the kernel, reading concurrently, only ever sees a slot's old or new
//! value and never a block before it is complete: an address allowed before and
//! after an update is never refused in between.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use smtp_edge_common::{
    capacity::{BLOCK_SLOTS, V4_L1_SLOTS},
    slot,
};

const BLOCK: usize = BLOCK_SLOTS as usize;
type Block = Box<[u32; BLOCK]>;

/// Number of blocks each lower level can hold (the kernel arrays' sizes / 256).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Capacity {
    /// Second-level blocks.
    pub l2_blocks: u32,
    /// Third-level blocks.
    pub l3_blocks: u32,
}

/// Which array of the table a write goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Level {
    /// 65,536 slots indexed by the top 16 bits.
    L1,
    /// Blocks indexed by the third octet.
    L2,
    /// Blocks indexed by the fourth octet.
    L3,
}

/// Errors building or reading the table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    /// More blocks needed than the kernel arrays hold.
    #[error(
        "the IPv4 allowlist needs {needed} {level} blocks (including blocks still in use until this update completes) but the capacity is {capacity}; raise filter.capacity.{setting}"
    )]
    Full {
        /// "second-level" or "third-level".
        level: &'static str,
        /// Blocks needed.
        needed: usize,
        /// Blocks available.
        capacity: u32,
        /// Configuration key to raise.
        setting: &'static str,
    },
    /// An entry id too large to encode.
    #[error("allowlist entry id {0} is too large")]
    EntryId(u32),
    /// The kernel arrays hold a pointer outside their size (not written by us).
    #[error("the pinned IPv4 table is inconsistent: {0}")]
    Corrupt(String),
}

/// A complete IPv4 table as it is (or will be) in the kernel arrays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V4Table {
    l1: Vec<u32>,
    l2: BTreeMap<u32, Block>,
    l3: BTreeMap<u32, Block>,
}

impl Default for V4Table {
    fn default() -> Self {
        Self {
            l1: vec![slot::EMPTY; V4_L1_SLOTS as usize],
            l2: BTreeMap::new(),
            l3: BTreeMap::new(),
        }
    }
}

fn child_of(value: u32) -> Option<u32> {
    (value & slot::CHILD != 0).then_some(value & !slot::CHILD)
}

fn leaf_entry(value: u32) -> Option<u32> {
    (value != slot::EMPTY && value & slot::CHILD == 0).then(|| value - 1)
}

/// Hands out block numbers not used by the previous table nor already taken.
struct Allocator {
    used: Vec<bool>,
    next: usize,
    taken: usize,
}

impl Allocator {
    fn new(capacity: u32, prev: impl Iterator<Item = u32>) -> Self {
        let mut used = vec![false; capacity as usize];
        let mut taken = 0;
        for n in prev {
            if let Some(u) = used.get_mut(n as usize) {
                *u = true;
                taken += 1;
            }
        }
        Self {
            used,
            next: 0,
            taken,
        }
    }

    fn alloc(&mut self) -> Option<u32> {
        while self.next < self.used.len() {
            let n = self.next;
            self.next += 1;
            if !self.used[n] {
                self.used[n] = true;
                self.taken += 1;
                return Some(n as u32);
            }
        }
        None
    }
}

impl V4Table {
    /// Builds the table for `prefixes` (network, entry id), keeping the block
    /// numbers `prev` used where the same place in the trie still needs a block.
    ///
    /// Identical networks keep the first entry given.
    pub fn build(
        prefixes: &[(Ipv4Net, u32)],
        prev: &V4Table,
        cap: Capacity,
    ) -> Result<V4Table, TableError> {
        let mut seen = HashSet::with_capacity(prefixes.len());
        let mut sorted: Vec<(Ipv4Net, u32)> = Vec::with_capacity(prefixes.len());
        for &(net, id) in prefixes {
            if id > slot::MAX_ENTRY_ID {
                return Err(TableError::EntryId(id));
            }
            let net = net.trunc();
            if seen.insert(net) {
                sorted.push((net, id));
            }
        }
        // Shortest first, so longer prefixes overwrite the slots they refine.
        sorted.sort_by_key(|(net, _)| net.prefix_len());

        let mut l1 = vec![slot::EMPTY; V4_L1_SLOTS as usize];
        let mut l2: HashMap<u32, [u32; BLOCK]> = HashMap::new();
        let mut l3: HashMap<u32, [u32; BLOCK]> = HashMap::new();
        for (net, id) in sorted {
            let a = u32::from(net.network());
            let len = net.prefix_len() as u32;
            let value = slot::leaf(id);
            if len <= 16 {
                let first = (a >> 16) as usize;
                let count = 1usize << (16 - len);
                l1[first..first + count].fill(value);
            } else if len <= 24 {
                let k1 = a >> 16;
                let block = l2.entry(k1).or_insert([l1[k1 as usize]; BLOCK]);
                let first = ((a >> 8) & 0xff) as usize;
                let count = 1usize << (24 - len);
                block[first..first + count].fill(value);
            } else {
                let k1 = a >> 16;
                let b2 = l2.entry(k1).or_insert([l1[k1 as usize]; BLOCK]);
                let inherited = b2[((a >> 8) & 0xff) as usize];
                let block = l3.entry(a >> 8).or_insert([inherited; BLOCK]);
                let first = (a & 0xff) as usize;
                let count = 1usize << (32 - len);
                block[first..first + count].fill(value);
            }
        }

        // Give every block a number: the previous one for the same place, else a
        // number the previous table did not use.
        let mut alloc3 = Allocator::new(cap.l3_blocks, prev.l3.keys().copied());
        let mut alloc2 = Allocator::new(cap.l2_blocks, prev.l2.keys().copied());
        let mut out = V4Table {
            l1,
            ..V4Table::default()
        };
        let mut l3_keys: Vec<u32> = l3.keys().copied().collect();
        l3_keys.sort_unstable();
        for key in l3_keys {
            let n = match prev.l3_block_at(key) {
                Some(n) if n < cap.l3_blocks => n,
                _ => alloc3.alloc().ok_or(TableError::Full {
                    level: "third-level",
                    needed: alloc3.taken + 1 + l3.len(),
                    capacity: cap.l3_blocks,
                    setting: "v4_l3_blocks",
                })?,
            };
            let content = l3.remove(&key).unwrap_or([slot::EMPTY; BLOCK]);
            out.l3.insert(n, Box::new(content));
            let parent = l2.entry(key >> 8).or_insert([slot::EMPTY; BLOCK]);
            parent[(key & 0xff) as usize] = slot::child(n);
        }
        let mut l2_keys: Vec<u32> = l2.keys().copied().collect();
        l2_keys.sort_unstable();
        for key in l2_keys {
            let n = match prev.l2_block_at(key) {
                Some(n) if n < cap.l2_blocks => n,
                _ => alloc2.alloc().ok_or(TableError::Full {
                    level: "second-level",
                    needed: alloc2.taken + 1 + l2.len(),
                    capacity: cap.l2_blocks,
                    setting: "v4_l2_blocks",
                })?,
            };
            let content = l2.remove(&key).unwrap_or([slot::EMPTY; BLOCK]);
            out.l2.insert(n, Box::new(content));
            out.l1[key as usize] = slot::child(n);
        }
        Ok(out)
    }

    /// Number of the second-level block under /16 number `k1`, if any.
    fn l2_block_at(&self, k1: u32) -> Option<u32> {
        child_of(*self.l1.get(k1 as usize)?)
    }

    /// Number of the third-level block under /24 number `k2`, if any.
    fn l3_block_at(&self, k2: u32) -> Option<u32> {
        let b2 = self.l2.get(&self.l2_block_at(k2 >> 8)?)?;
        child_of(b2[(k2 & 0xff) as usize])
    }

    /// Longest-prefix match, exactly as the XDP program computes it.
    pub fn lookup(&self, addr: Ipv4Addr) -> Option<u32> {
        let a = u32::from(addr);
        let mut v = self.l1[(a >> 16) as usize];
        if let Some(n) = child_of(v) {
            v = self.l2.get(&n)?[((a >> 8) & 0xff) as usize];
            if let Some(n) = child_of(v) {
                v = self.l3.get(&n)?[(a & 0xff) as usize];
            }
        }
        leaf_entry(v)
    }

    /// Blocks in use at each lower level.
    pub fn blocks_used(&self) -> (usize, usize) {
        (self.l2.len(), self.l3.len())
    }

    /// Calls `write(level, index, value)` for every slot that must change to turn
    /// the kernel arrays holding `self` into `next`, in a safe order: fresh blocks
    /// completely, then changed slots bottom-up (L3, L2, L1), so a pointer is
    /// only published after the block it points to is complete.
    pub fn apply_diff<E>(
        &self,
        next: &V4Table,
        mut write: impl FnMut(Level, u32, u32) -> Result<(), E>,
    ) -> Result<usize, E> {
        let mut writes = 0;
        for (level, old, new) in [
            (Level::L3, &self.l3, &next.l3),
            (Level::L2, &self.l2, &next.l2),
        ] {
            for (&n, block) in new {
                let base = n * BLOCK_SLOTS;
                match old.get(&n) {
                    Some(before) => {
                        for (i, (&a, &b)) in before.iter().zip(block.iter()).enumerate() {
                            if a != b {
                                write(level, base + i as u32, b)?;
                                writes += 1;
                            }
                        }
                    }
                    None => {
                        for (i, &b) in block.iter().enumerate() {
                            write(level, base + i as u32, b)?;
                            writes += 1;
                        }
                    }
                }
            }
        }
        for (i, (&a, &b)) in self.l1.iter().zip(next.l1.iter()).enumerate() {
            if a != b {
                write(Level::L1, i as u32, b)?;
                writes += 1;
            }
        }
        Ok(writes)
    }

    /// Reconstructs the table from the kernel arrays (used when a restarted
    /// daemon adopts the pinned maps). `read(level, index)` returns one slot.
    pub fn read_back(
        cap: Capacity,
        mut read: impl FnMut(Level, u32) -> Option<u32>,
    ) -> Result<V4Table, TableError> {
        let mut table = V4Table::default();
        for i in 0..V4_L1_SLOTS {
            table.l1[i as usize] = read(Level::L1, i)
                .ok_or_else(|| TableError::Corrupt(format!("level-1 slot {i} unreadable")))?;
        }
        let mut read_block = |level: Level, n: u32, limit: u32| -> Result<Block, TableError> {
            if n >= limit {
                return Err(TableError::Corrupt(format!(
                    "{level:?} block {n} is beyond the capacity {limit}"
                )));
            }
            let mut block = Box::new([slot::EMPTY; BLOCK]);
            for (i, v) in block.iter_mut().enumerate() {
                *v = read(level, n * BLOCK_SLOTS + i as u32).ok_or_else(|| {
                    TableError::Corrupt(format!("{level:?} block {n} unreadable"))
                })?;
            }
            Ok(block)
        };
        for &v in &table.l1 {
            if let Some(n) = child_of(v) {
                let block = read_block(Level::L2, n, cap.l2_blocks)?;
                for &v2 in block.iter() {
                    if let Some(n3) = child_of(v2) {
                        let b3 = read_block(Level::L3, n3, cap.l3_blocks)?;
                        if b3.iter().any(|&v3| child_of(v3).is_some()) {
                            return Err(TableError::Corrupt(format!(
                                "third-level block {n3} holds a pointer"
                            )));
                        }
                        table.l3.insert(n3, b3);
                    }
                }
                table.l2.insert(n, block);
            }
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    const CAP: Capacity = Capacity {
        l2_blocks: 4096,
        l3_blocks: 4096,
    };

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    /// Reference longest-prefix match by brute force.
    fn reference(prefixes: &[(Ipv4Net, u32)], addr: Ipv4Addr) -> Option<u32> {
        let mut best: Option<(u8, u32)> = None;
        let mut seen = HashSet::new();
        for &(n, id) in prefixes {
            let n = n.trunc();
            if !seen.insert(n) {
                continue;
            }
            if n.contains(&addr) && best.is_none_or(|(l, _)| n.prefix_len() > l) {
                best = Some((n.prefix_len(), id));
            }
        }
        best.map(|(_, id)| id)
    }

    /// Simulated kernel arrays.
    struct Kernel {
        l1: Vec<u32>,
        l2: Vec<u32>,
        l3: Vec<u32>,
    }

    impl Kernel {
        fn new() -> Self {
            Self {
                l1: vec![0; V4_L1_SLOTS as usize],
                l2: vec![0; (CAP.l2_blocks * BLOCK_SLOTS) as usize],
                l3: vec![0; (CAP.l3_blocks * BLOCK_SLOTS) as usize],
            }
        }
        fn arr(&mut self, level: Level) -> &mut Vec<u32> {
            match level {
                Level::L1 => &mut self.l1,
                Level::L2 => &mut self.l2,
                Level::L3 => &mut self.l3,
            }
        }
        fn lookup(&self, addr: Ipv4Addr) -> Option<u32> {
            let a = u32::from(addr);
            let mut s = self.l1[(a >> 16) as usize];
            if let Some(n) = child_of(s) {
                s = self.l2[(n * BLOCK_SLOTS + ((a >> 8) & 0xff)) as usize];
                if let Some(n) = child_of(s) {
                    s = self.l3[(n * BLOCK_SLOTS + (a & 0xff)) as usize];
                }
            }
            leaf_entry(s)
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let p = vec![
            (net("40.92.0.0/15"), 0),
            (net("40.92.1.0/24"), 1),
            (net("40.92.1.128/25"), 2),
            (net("40.92.1.130/32"), 3),
            (net("0.0.0.0/0"), 4),
        ];
        let t = V4Table::build(&p, &V4Table::default(), CAP).unwrap();
        for (addr, want) in [
            ("40.92.0.1", 0),
            ("40.93.255.255", 0),
            ("40.92.1.1", 1),
            ("40.92.1.129", 2),
            ("40.92.1.130", 3),
            ("40.94.0.0", 4),
            ("192.0.2.1", 4),
        ] {
            assert_eq!(t.lookup(addr.parse().unwrap()), Some(want), "{addr}");
        }
    }

    #[test]
    fn identical_networks_keep_the_first_entry() {
        let p = vec![(net("192.0.2.0/24"), 7), (net("192.0.2.9/24"), 8)];
        let t = V4Table::build(&p, &V4Table::default(), CAP).unwrap();
        assert_eq!(t.lookup("192.0.2.200".parse().unwrap()), Some(7));
    }

    fn random_prefixes(rng: &mut StdRng, n: usize, base_id: u32) -> Vec<(Ipv4Net, u32)> {
        (0..n)
            .map(|i| {
                // Cluster addresses so prefixes overlap and share blocks.
                let a: u32 = (rng.random_range(0..4u32) << 30)
                    | rng.random_range(0..(1 << 20)) << 8
                    | rng.random_range(0..256);
                let len = rng.random_range(8..=32);
                (
                    Ipv4Net::new_assert(Ipv4Addr::from(a), len).trunc(),
                    base_id + i as u32,
                )
            })
            .collect()
    }

    #[test]
    fn matches_brute_force_and_kernel_simulation_across_updates() {
        let mut rng = StdRng::seed_from_u64(25);
        let mut kernel = Kernel::new();
        let mut current = V4Table::default();
        for round in 0..6 {
            let p = random_prefixes(&mut rng, 300, round * 1000);
            let next = V4Table::build(&p, &current, CAP).unwrap();
            // Probe addresses: inside prefixes, at their edges, and random.
            let mut probes: Vec<Ipv4Addr> = Vec::new();
            for (n, _) in &p {
                probes.push(n.network());
                probes.push(n.broadcast());
                probes.push(Ipv4Addr::from(u32::from(n.broadcast()).wrapping_add(1)));
            }
            for _ in 0..2000 {
                probes.push(Ipv4Addr::from(rng.random::<u32>()));
            }
            current
                .apply_diff(&next, |level, index, value| {
                    kernel.arr(level)[index as usize] = value;
                    Ok::<_, ()>(())
                })
                .unwrap();
            for &a in &probes {
                let want = reference(&p, a);
                assert_eq!(next.lookup(a), want, "model {a}");
                assert_eq!(kernel.lookup(a), want, "kernel {a}");
            }
            let back =
                V4Table::read_back(CAP, |level, i| Some(kernel.arr(level)[i as usize])).unwrap();
            assert_eq!(back, next);
            current = next;
        }
    }

    #[test]
    fn an_address_allowed_before_and_after_is_never_refused_mid_update() {
        // Apply the diff one write at a time and look up after each write.
        let mut rng = StdRng::seed_from_u64(587);
        let stable = [
            (net("198.51.100.0/24"), 1u32),
            (net("203.0.113.77/32"), 2),
            (net("192.0.2.0/25"), 3),
        ];
        let mut a = random_prefixes(&mut rng, 200, 100);
        a.extend(stable.iter().copied());
        let mut b = random_prefixes(&mut rng, 200, 1000);
        b.extend(stable.iter().copied());
        let mut kernel = Kernel::new();
        let empty = V4Table::default();
        let ta = V4Table::build(&a, &empty, CAP).unwrap();
        empty
            .apply_diff(&ta, |l, i, v| {
                kernel.arr(l)[i as usize] = v;
                Ok::<_, ()>(())
            })
            .unwrap();
        let tb = V4Table::build(&b, &ta, CAP).unwrap();
        let probes: Vec<Ipv4Addr> = [
            "198.51.100.1",
            "198.51.100.254",
            "203.0.113.77",
            "192.0.2.5",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let writes = ta
            .apply_diff(&tb, |l, i, v| {
                kernel.arr(l)[i as usize] = v;
                for &p in &probes {
                    assert!(kernel.lookup(p).is_some(), "{p} refused mid-update");
                }
                Ok::<_, ()>(())
            })
            .unwrap();
        assert!(writes > 0);
    }

    #[test]
    fn capacity_is_enforced_with_a_clear_error() {
        let p: Vec<_> = (0..10u32)
            .map(|i| {
                (
                    Ipv4Net::new_assert(Ipv4Addr::from(i << 16 | 0x0101_0000), 32),
                    i,
                )
            })
            .collect();
        let small = Capacity {
            l2_blocks: 4,
            l3_blocks: 100,
        };
        let e = V4Table::build(&p, &V4Table::default(), small).unwrap_err();
        assert!(
            e.to_string().contains("filter.capacity.v4_l2_blocks"),
            "{e}"
        );
    }

    #[test]
    fn corrupt_pointers_are_detected() {
        let e = V4Table::read_back(CAP, |level, i| {
            Some(if level == Level::L1 && i == 3 {
                slot::child(CAP.l2_blocks + 1)
            } else {
                0
            })
        })
        .unwrap_err();
        assert!(matches!(e, TableError::Corrupt(_)));
    }
}
