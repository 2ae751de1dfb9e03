//! The report's call sites: an open-addressed table whose slot is the
//! site itself, key and all, in one cache line.
//!
//! Nearly every syscall touches one call site of its process, and sites
//! are many (thousands on a busy host), so their lines are rarely cached:
//! the streamed trace buffers keep pushing them out. A map from key to an
//! index into a list of sites costs two dependent misses per syscall (the
//! map's bucket, then the site); here the key is in the site, so finding it
//! is one line (linear probing, at most half full: a hit rarely looks past
//! its first slot, and the next one is the next line).
//!
//! What the per-syscall path does not need (the description, the count of
//! syscalls outside the site's own group) is kept apart, by the site's `id`
//! (its creation order).

use super::Disc;

/// `id` of an empty slot.
const EMPTY: u32 = u32::MAX;
/// The first table size (slots) once a site is added.
const MIN_SLOTS: usize = 1024;
/// Bit of [`Slot::row`]: the row had a process name when last looked at,
/// so the per-syscall path need not look again.
pub(super) const NAMED: u32 = 1 << 31;

/// One call site (pid, return address) of a summary row, in one line.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Slot {
    pub addr: u64,
    pub pid: u32,
    /// Creation order (index of its [`Cold`] part); [`EMPTY`]: none.
    id: u32,
    /// The site's first open rule-5 group (index into `Report::groups`,
    /// `u32::MAX`: none) keeps its counter here, with what tells it apart
    /// from other groups of the site.
    pub own: u32,
    /// Its row (index into `Report::rows`), with [`NAMED`].
    pub row: u32,
    pub own_disc: Disc,
    pub own_count: u64,
    /// The own group's latest syscall; its earliest is the group's own
    /// `first` (a syscall earlier than this one takes the slow path).
    pub own_last: u64,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 64);

const EMPTY_SLOT: Slot = Slot {
    addr: 0,
    pid: 0,
    id: EMPTY,
    own: u32::MAX,
    row: 0,
    own_disc: Disc::NONE,
    own_count: 0,
    own_last: 0,
};

/// The part of a site the per-syscall path does not touch.
#[derive(Debug)]
pub(super) struct Cold {
    /// Syscalls at the site not counted in its slot's `own_count`: the
    /// site's total is `count + own_count`.
    pub count: u64,
    /// How the site reads in the summary (module+offset or export).
    pub name: String,
}

#[derive(Debug, Default)]
pub(super) struct SiteTable {
    /// A power of two long (or empty), at most half full.
    slots: Vec<Slot>,
    /// 64 - log2(slots.len()).
    shift: u32,
    cold: Vec<Cold>,
}

impl SiteTable {
    /// Sites added.
    pub fn len(&self) -> usize {
        self.cold.len()
    }

    #[inline]
    fn home(&self, pid: u32, addr: u64) -> usize {
        let h = (addr ^ u64::from(pid).rotate_left(40)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // The high bits are the well mixed ones (Fibonacci hashing).
        (h >> self.shift) as usize
    }

    /// The slot of (pid, addr), if that site was added.
    #[inline]
    pub fn find(&self, pid: u32, addr: u64) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(pid, addr);
        loop {
            let s = self.slots.get(i)?;
            if s.id == EMPTY {
                return None;
            }
            if s.addr == addr && s.pid == pid {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// Adds the site (pid, addr), known not to be there; returns its slot.
    /// Slots found before may move (the table grows).
    pub fn insert(&mut self, pid: u32, addr: u64, row: u32, count: u64, name: String) -> usize {
        if (self.cold.len() + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let id = self.cold.len() as u32;
        self.cold.push(Cold { count, name });
        self.place(Slot {
            addr,
            pid,
            id,
            row,
            ..EMPTY_SLOT
        })
    }

    fn place(&mut self, slot: Slot) -> usize {
        let mask = self.slots.len() - 1;
        let mut i = self.home(slot.pid, slot.addr);
        while self.slots[i].id != EMPTY {
            i = (i + 1) & mask;
        }
        self.slots[i] = slot;
        i
    }

    fn grow(&mut self) {
        let n = (self.slots.len() * 2).max(MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, vec![EMPTY_SLOT; n]);
        self.shift = 64 - n.trailing_zeros();
        for s in old.into_iter().filter(|s| s.id != EMPTY) {
            self.place(s);
        }
    }

    #[inline]
    pub fn slot(&self, i: usize) -> &Slot {
        &self.slots[i]
    }

    #[inline]
    pub fn slot_mut(&mut self, i: usize) -> &mut Slot {
        &mut self.slots[i]
    }

    /// The cold part of the site in slot `i`.
    pub fn cold_mut(&mut self, i: usize) -> &mut Cold {
        let id = self.slots[i].id as usize;
        &mut self.cold[id]
    }

    /// Calls `f` with every site's slot and cold part, in no particular
    /// order.
    pub fn for_each_mut(&mut self, mut f: impl FnMut(&mut Slot, &mut Cold)) {
        for s in self.slots.iter_mut().filter(|s| s.id != EMPTY) {
            if let Some(c) = self.cold.get_mut(s.id as usize) {
                f(s, c);
            }
        }
    }

    /// Every site in creation order: its row, its description and its
    /// total count.
    pub fn in_order(&self) -> impl Iterator<Item = (u32, &String, u64)> {
        let mut hot = vec![(0u32, 0u64); self.cold.len()];
        for s in self.slots.iter().filter(|s| s.id != EMPTY) {
            hot[s.id as usize] = (s.row & !NAMED, s.own_count);
        }
        self.cold
            .iter()
            .zip(hot)
            .map(|(c, (row, own))| (row, &c.name, c.count + own))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Xorshift;
    use std::collections::HashMap;

    /// Against a map: every key added is found at a slot holding it, none
    /// other is found, and growing keeps them (and their cold parts).
    #[test]
    fn finds_exactly_what_was_added() {
        let mut rng = Xorshift(0x5EED_0001);
        let mut t = SiteTable::default();
        let mut model: HashMap<(u32, u64), u64> = HashMap::new();
        for n in 0..20_000u64 {
            // Stub-like addresses (32 bytes apart) in a few processes,
            // address 0 and pid 0 included: the worst spread for a hash.
            let pid = 4 * rng.below(40) as u32;
            let addr = match rng.below(10) {
                0 => 0,
                1 => rng.next(),
                _ => 0x7FFA_0000_0000 + 0x20 * rng.below(600),
            };
            let found = t.find(pid, addr);
            match model.get(&(pid, addr)) {
                Some(&count) => {
                    let i = found.expect("an added site is found");
                    let s = t.slot(i);
                    assert_eq!((s.pid, s.addr), (pid, addr));
                    assert_eq!(t.cold_mut(i).count, count);
                }
                None => {
                    assert_eq!(found, None, "{pid} {addr:#x} was not added");
                    let i = t.insert(pid, addr, (n % 7) as u32, n, format!("{addr:#x}"));
                    assert_eq!(t.find(pid, addr), Some(i));
                    model.insert((pid, addr), n);
                }
            }
        }
        assert_eq!(t.len(), model.len());
        assert!(t.slots.len() >= 2 * t.len(), "at most half full");
        // Every site once, with its own cold part.
        let mut seen = 0;
        t.for_each_mut(|s, c| {
            assert_eq!(model[&(s.pid, s.addr)], c.count);
            assert_eq!(c.name, format!("{:#x}", s.addr));
            seen += 1;
        });
        assert_eq!(seen, model.len());
    }

    /// The same address in two processes whose keys share a home slot:
    /// two sites, each found as itself (the probe passes the other).
    #[test]
    fn same_address_in_another_process_is_another_site() {
        let mut t = SiteTable::default();
        let addr = 0x7FFA_1234_5670;
        t.insert(4, addr, 0, 1, "first".into());
        let home = t.home(4, addr);
        let pid = (8..100_000u32)
            .step_by(4)
            .find(|&p| t.home(p, addr) == home)
            .expect("a pid with the same home");
        assert_eq!(t.find(pid, addr), None);
        let i = t.insert(pid, addr, 0, 2, "second".into());
        assert_ne!(Some(i), t.find(4, addr));
        assert_eq!(t.find(pid, addr), Some(i));
        assert_eq!(t.cold_mut(i).name, "second");
        let j = t.find(4, addr).unwrap();
        assert_eq!(t.cold_mut(j).name, "first");
    }

    /// A site's total is its cold count plus its slot's own count, listed
    /// in creation order with its row (without [`NAMED`]).
    #[test]
    fn totals_in_creation_order() {
        let mut t = SiteTable::default();
        let keys: Vec<(u32, u64)> = (0..3000u64)
            .map(|i| ((i % 5) as u32, 0x1000 + 0x20 * i))
            .collect();
        for (k, &(pid, addr)) in keys.iter().enumerate() {
            let named = if k % 2 == 0 { NAMED } else { 0 };
            t.insert(pid, addr, (k % 3) as u32 | named, k as u64, String::new());
        }
        for &(pid, addr) in &keys {
            let i = t.find(pid, addr).unwrap();
            t.slot_mut(i).own_count = 10;
        }
        let listed: Vec<(u32, u64)> = t.in_order().map(|(row, _, n)| (row, n)).collect();
        let want: Vec<(u32, u64)> = (0..3000u64).map(|k| ((k % 3) as u32, k + 10)).collect();
        assert_eq!(listed, want);
    }
}
