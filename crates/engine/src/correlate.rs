//! Pairs parent events (SysCallEnter, or any event in the generalised mode)
//! with their StackWalk events by raw timestamp, stitches kernel and user
//! parts, and resolves stack-cache keys.
//!
//! [StackWalk_Event](https://learn.microsoft.com/windows/win32/etw/stackwalk-event):
//! `EventTimeStamp` equals the parent's raw timestamp. The kernel part is
//! walked when the event is logged (same processor, right after it); the user
//! part may be walked later, when the thread returns to user mode, and logged
//! on another processor. The thread id ties the parts together. Stack caching
//! (Windows 8+, opcodes 34–38) logs key references whose frames are defined
//! by other events (before or after the reference).
//!
//! An entry is complete when it has a parent and a user part (or a kernel
//! part of the System/Idle process, which has no user mode); otherwise it is
//! held for the window (trace time) and then finalised with what it has.
//! Entries live in a slab whose frame buffers are reused: no allocation per
//! event once warmed up. A hard cap evicts the oldest entry.

use std::collections::{HashMap, VecDeque};

use sentry_kernel::{Frames, StackKeyDefinition, StackKeyOp, StackKeyReference, StackPart};

use crate::fxhash::FxBuildHasher;

/// What the parent event of a stack is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Parent {
    /// PerfInfo SysCallEnter with its `SysCallAddress`.
    SysCall { address: u64 },
    /// Any other event (generalised pairing).
    Other(ParentHook),
}

/// The kind of a non-syscall parent, as the corpus golden files name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ParentHook {
    /// Kernel hook `group << 8 | opcode`.
    Kernel(u16),
    /// A classic (FULL_HEADER/INSTANCE) provider event: `ETH`.
    Classic,
    /// An EVENT_HEADER event: `EVH`.
    Manifest,
}

impl std::fmt::Display for ParentHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParentHook::Kernel(h) => write!(f, "{h:04x}"),
            ParentHook::Classic => f.write_str("ETH"),
            ParentHook::Manifest => f.write_str("EVH"),
        }
    }
}

/// How an entry left the pending set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Parent and stack complete.
    Complete,
    /// The window passed.
    Expired,
    /// Evicted by the pending cap.
    Evicted,
    /// Flushed by `finish()` at the end of the input.
    Flushed,
}

const NONE: u32 = u32::MAX;

/// Parts merged into one entry at most (a kernel and a user part, each
/// possibly split into a few key references); more is hostile input.
const MAX_FRAGMENTS: u32 = 16;

/// Frames held by stack-key definitions at most (128 MiB of addresses).
const MAX_KEY_FRAMES: usize = 16 << 20;

/// Where a live entry can be found by timestamp.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Home {
    /// Not findable (finalised, or being finalised).
    #[default]
    Nowhere,
    /// In the young ring (the most recently made entries).
    Young,
    /// In the timestamp index (and the expiry order).
    Indexed,
}

/// Entries among the last `YOUNG` made are kept in a small ring, not in the
/// timestamp index: most complete within a few events (a SysCallEnter and
/// its StackWalk on the same processor), so they never cost a hash insert
/// and removal. An entry moves to the index when `YOUNG` newer entries have
/// been made (or when a stack-key reference makes it wait).
const YOUNG: u32 = 16;

/// One pending parent and/or stack.
#[derive(Debug, Default, Clone)]
pub struct Entry {
    pub ts: u64,
    generation: u32,
    live: bool,
    home: Home,
    pub parent: Option<Parent>,
    pub parent_processor: u16,
    /// Kernel-only parts, in arrival order.
    pub kernel: Vec<u64>,
    pub has_kernel: bool,
    /// The part holding user frames (it may start with kernel frames).
    pub user: Vec<u64>,
    pub has_user: bool,
    pub pid: u32,
    pub tid: u32,
    pub has_thread: bool,
    pub stack_processor: u16,
    /// StackWalk / key-reference events merged into this entry.
    pub fragments: u32,
    /// Key references not yet resolved.
    pub waiting: u32,
    next: u32,
}

impl Entry {
    pub fn has_stack(&self) -> bool {
        self.has_kernel || self.has_user
    }

    #[inline]
    fn complete(&self) -> bool {
        self.parent.is_some()
            && self.waiting == 0
            && (self.has_user || (self.has_kernel && (self.pid == 0 || self.pid == 4)))
    }
}

/// Correlator counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CorrelatorStats {
    /// Parents finalised with a stack.
    pub matched: u64,
    /// SysCallEnter finalised without any stack.
    pub syscall_without_stack: u64,
    /// Non-syscall parents finalised without a stack (generalised mode).
    pub parent_without_stack: u64,
    /// StackWalk/key-reference events that never met a parent.
    pub stack_without_syscall: u64,
    /// StackWalk/key-reference events merged into an entry with a parent.
    pub stack_events_matched: u64,
    /// Entries finalised because the window passed.
    pub expired: u64,
    /// Second and later parts merged by thread id.
    pub fragments_stitched: u64,
    /// Entries evicted by the pending cap.
    pub evicted: u64,
    /// Stack-key references resolved through a definition.
    pub keys_resolved: u64,
    /// Stack-key references whose key was never defined in time.
    pub keys_unresolved: u64,
    /// Entries held past the window for a stack-key definition.
    pub parked: u64,
    /// Highest number of pending entries seen.
    pub peak_pending: u64,
    /// Generalised pairing: the other kinds (hooks) of parent event logged
    /// at a stack event's timestamp, besides the one it paired with; each
    /// kind once per stack event.
    pub co_parents: std::collections::BTreeMap<String, u64>,
    /// Stack-key definitions not kept because the key table was full.
    pub keys_dropped: u64,
    /// Stack-key definitions held (now).
    pub keys_defined: u64,
}

/// The pending set.
///
/// Live entries, oldest first, are `order` (indexed entries, in the order
/// they were made, plus entries re-queued after a stack-key wait) followed
/// by `young` (the newest entries, not indexed). Expiry and eviction walk
/// that sequence from its front; lookups by timestamp visit `young` newest
/// first, then the index chain (newest first): every young entry is newer
/// than every indexed one.
#[derive(Debug)]
pub struct Correlator {
    entries: Vec<Entry>,
    free: Vec<u32>,
    index: HashMap<u64, u32, FxBuildHasher>,
    /// No indexed entry has a timestamp above this (0 when the index is empty).
    index_max: u64,
    /// (timestamp, slot, generation) of the live entries among the last
    /// `YOUNG` made, oldest first.
    young: Vec<(u64, u32, u32)>,
    order: VecDeque<(u32, u32)>,
    /// Entries past the window that still wait for a stack-key definition
    /// (Windows logs a key's frames only when it leaves the cache).
    parked: VecDeque<(u32, u32)>,
    /// The deadline and slot of the first live entry of the expiry sequence
    /// when `expire` last stopped: until that entry is finalised (which
    /// clears the hint), nothing expires at or before its deadline. 0: no
    /// hint.
    hint_deadline: u64,
    hint_slot: u32,
    live: usize,
    window_ticks: u64,
    max_pending: usize,
    max_keys: usize,
    keys: HashMap<u64, Vec<u64>, FxBuildHasher>,
    key_frames: usize,
    waiting: HashMap<u64, Vec<(u32, u32, StackPart)>, FxBuildHasher>,
    waiting_len: usize,
    /// Entries waiting for a stack key, per process: such a process must
    /// outlive its end event until they are resolved.
    waiting_pids: HashMap<u32, u32, FxBuildHasher>,
    /// Finalised entries not yet popped: `ready[ready_head..]`, in order.
    ready: Vec<(u32, Finish)>,
    ready_head: usize,
    kernel_boundary: u64,
    scratch: Vec<u64>,
    next_generation: u32,
    count_co_parents: bool,
    pub stats: CorrelatorStats,
}

impl Correlator {
    pub fn new(window_ticks: u64, max_pending: usize) -> Correlator {
        Correlator {
            entries: Vec::new(),
            free: Vec::new(),
            index: HashMap::default(),
            index_max: 0,
            young: Vec::with_capacity(YOUNG as usize),
            order: VecDeque::new(),
            parked: VecDeque::new(),
            hint_deadline: 0,
            hint_slot: NONE,
            live: 0,
            window_ticks,
            max_pending: max_pending.max(1),
            max_keys: 1 << 20,
            keys: HashMap::default(),
            key_frames: 0,
            waiting: HashMap::default(),
            waiting_len: 0,
            waiting_pids: HashMap::default(),
            ready: Vec::new(),
            ready_head: 0,
            kernel_boundary: 0xFFFF_8000_0000_0000,
            scratch: Vec::new(),
            next_generation: 0,
            count_co_parents: false,
            stats: CorrelatorStats::default(),
        }
    }

    pub fn set_window_ticks(&mut self, t: u64) {
        self.window_ticks = t;
        self.clear_hint();
    }

    pub fn window_ticks(&self) -> u64 {
        self.window_ticks
    }

    /// Addresses at or above this are kernel addresses.
    pub fn set_kernel_boundary(&mut self, b: u64) {
        self.kernel_boundary = b;
    }

    /// Pending entries now.
    pub fn pending(&self) -> usize {
        self.live
    }

    pub fn entry(&self, slot: u32) -> &Entry {
        &self.entries[slot as usize]
    }

    pub(crate) fn entry_mut(&mut self, slot: u32) -> &mut Entry {
        &mut self.entries[slot as usize]
    }

    /// Whether [`Correlator::pop_ready`] has something.
    #[inline]
    pub fn has_ready(&self) -> bool {
        self.ready_head < self.ready.len()
    }

    /// The next finalised entry: read it with [`Correlator::entry`], then [`Correlator::release`] it.
    #[inline]
    pub fn pop_ready(&mut self) -> Option<(u32, Finish)> {
        let r = *self.ready.get(self.ready_head)?;
        self.ready_head += 1;
        if self.ready_head == self.ready.len() {
            self.ready.clear();
            self.ready_head = 0;
        }
        Some(r)
    }

    #[inline(always)]
    fn alloc(&mut self, ts: u64) -> u32 {
        self.next_generation = self.next_generation.wrapping_add(1);
        let generation = self.next_generation;
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.entries.push(Entry::default());
                (self.entries.len() - 1) as u32
            }
        };
        let e = &mut self.entries[slot as usize];
        e.ts = ts;
        e.generation = generation;
        e.live = true;
        e.home = Home::Young;
        e.parent = None;
        e.parent_processor = 0;
        e.kernel.clear();
        e.has_kernel = false;
        e.user.clear();
        e.has_user = false;
        e.pid = 0;
        e.tid = 0;
        e.has_thread = false;
        e.stack_processor = 0;
        e.fragments = 0;
        e.waiting = 0;
        e.next = NONE;
        while self
            .young
            .first()
            .is_some_and(|y| generation.wrapping_sub(y.2) >= YOUNG)
        {
            self.promote_oldest_young();
        }
        self.young.push((ts, slot, generation));
        self.live += 1;
        while self.live > self.max_pending {
            if !self.finalize_oldest(Finish::Evicted) {
                break;
            }
        }
        self.stats.peak_pending = self.stats.peak_pending.max(self.live as u64);
        slot
    }

    /// Moves the oldest young entry to the index and the expiry order.
    fn promote_oldest_young(&mut self) {
        if self.young.is_empty() {
            return;
        }
        let (ts, slot, _) = self.young.remove(0);
        let e = &mut self.entries[slot as usize];
        e.home = Home::Indexed;
        let generation = e.generation;
        // Link at the chain head for this timestamp: it is the newest
        // indexed entry.
        e.next = NONE;
        if let Some(head) = self.index.insert(ts, slot) {
            self.entries[slot as usize].next = head;
        }
        self.index_max = self.index_max.max(ts);
        self.order.push_back((slot, generation));
        if self.order.len() > 2 * self.live + 4096 {
            let entries = &self.entries;
            self.order
                .retain(|&(s, g)| entries[s as usize].live && entries[s as usize].generation == g);
        }
    }

    /// Moves every young entry to the index (before the expiry order gets
    /// an entry out of creation order).
    fn promote_all_young(&mut self) {
        while !self.young.is_empty() {
            self.promote_oldest_young();
        }
    }

    /// Calls `f` on the live entries at `ts`, newest first, until it
    /// returns true.
    #[inline]
    fn visit(&self, ts: u64, mut f: impl FnMut(u32, &Entry) -> bool) {
        for &(t, s, _) in self.young.iter().rev() {
            if t == ts && f(s, &self.entries[s as usize]) {
                return;
            }
        }
        if ts > self.index_max || self.index.is_empty() {
            return;
        }
        let mut cur = self.index.get(&ts).copied().unwrap_or(NONE);
        while cur != NONE {
            let e = &self.entries[cur as usize];
            if f(cur, e) {
                return;
            }
            cur = e.next;
        }
    }

    /// Moves the oldest live, not yet finalised entry to the ready queue
    /// (parked entries first: they are past the window).
    fn finalize_oldest(&mut self, why: Finish) -> bool {
        while let Some((s, g)) = self.parked.pop_front().or_else(|| self.order.pop_front()) {
            let e = &self.entries[s as usize];
            if e.live && e.generation == g {
                self.finalize(s, why);
                return true;
            }
        }
        if !self.young.is_empty() {
            let (_, s, _) = self.young.remove(0);
            self.entries[s as usize].home = Home::Nowhere;
            self.finalize(s, why);
            return true;
        }
        false
    }

    fn finalize(&mut self, slot: u32, why: Finish) {
        if slot == self.hint_slot {
            self.clear_hint();
        }
        let e = &mut self.entries[slot as usize];
        e.live = false;
        let ts = e.ts;
        let next = e.next;
        let home = std::mem::take(&mut e.home);
        self.live -= 1;
        match home {
            Home::Young => {
                // Usually the newest.
                if self.young.last().is_some_and(|y| y.1 == slot) {
                    self.young.pop();
                } else if let Some(i) = self.young.iter().rposition(|&(_, s, _)| s == slot) {
                    self.young.remove(i);
                }
            }
            Home::Indexed => self.unlink(slot, ts, next),
            Home::Nowhere => {}
        }
        let e = &self.entries[slot as usize];
        match why {
            Finish::Expired => self.stats.expired += 1,
            Finish::Evicted => self.stats.evicted += 1,
            _ => {}
        }
        let (waiting, pid) = (e.waiting, e.pid);
        if waiting > 0 {
            self.stats.keys_unresolved += u64::from(waiting);
            self.unwait_pid(pid);
        }
        let e = &self.entries[slot as usize];
        match e.parent {
            Some(p) => {
                if e.has_stack() {
                    self.stats.matched += 1;
                    self.stats.stack_events_matched += u64::from(e.fragments);
                } else if matches!(p, Parent::SysCall { .. }) {
                    self.stats.syscall_without_stack += 1;
                } else {
                    self.stats.parent_without_stack += 1;
                }
            }
            None => self.stats.stack_without_syscall += u64::from(e.fragments),
        }
        self.ready.push((slot, why));
    }

    /// Unlinks an indexed entry from its timestamp chain so later events do
    /// not find it.
    fn unlink(&mut self, slot: u32, ts: u64, next: u32) {
        match self.index.get(&ts).copied() {
            Some(h) if h == slot => {
                if next == NONE {
                    self.index.remove(&ts);
                    if self.index.is_empty() {
                        self.index_max = 0;
                    }
                } else {
                    self.index.insert(ts, next);
                }
            }
            Some(mut cur) => loop {
                let n = self.entries[cur as usize].next;
                if n == slot {
                    self.entries[cur as usize].next = next;
                    break;
                }
                if n == NONE {
                    break;
                }
                cur = n;
            },
            None => {}
        }
    }

    fn unwait_pid(&mut self, pid: u32) {
        if let Some(n) = self.waiting_pids.get_mut(&pid) {
            *n -= 1;
            if *n == 0 {
                self.waiting_pids.remove(&pid);
            }
        }
    }

    /// Whether entries of this process still wait for stack-key definitions.
    pub fn waits_for_keys(&self, pid: u32) -> bool {
        self.waiting_pids.contains_key(&pid)
    }

    /// Returns a finalised slot to the free list.
    #[inline]
    pub fn release(&mut self, slot: u32) {
        self.free.push(slot);
    }

    /// Finalises entries older than the window before `now`.
    #[inline]
    pub fn expire(&mut self, now: u64) {
        if now > self.hint_deadline {
            self.expire_slow(now);
        }
    }

    #[inline]
    fn clear_hint(&mut self) {
        self.hint_deadline = 0;
        self.hint_slot = NONE;
    }

    fn expire_slow(&mut self, now: u64) {
        self.clear_hint();
        loop {
            if let Some(&(s, g)) = self.order.front() {
                let e = &self.entries[s as usize];
                if !(e.live && e.generation == g) {
                    self.order.pop_front();
                    continue;
                }
                let deadline = e.ts.saturating_add(self.window_ticks);
                if deadline >= now {
                    (self.hint_deadline, self.hint_slot) = (deadline, s);
                    return;
                }
                self.order.pop_front();
                if e.waiting > 0 {
                    self.parked.push_back((s, g));
                    self.stats.parked += 1;
                    if self.parked.len() > 2 * self.live + 4096 {
                        let entries = &self.entries;
                        self.parked.retain(|&(s, g)| {
                            entries[s as usize].live && entries[s as usize].generation == g
                        });
                    }
                    continue;
                }
                self.finalize(s, Finish::Expired);
                continue;
            }
            // Young entries never wait for stack keys.
            let Some(&(ts, s, _)) = self.young.first() else {
                return;
            };
            let deadline = ts.saturating_add(self.window_ticks);
            if deadline >= now {
                (self.hint_deadline, self.hint_slot) = (deadline, s);
                return;
            }
            self.young.remove(0);
            self.entries[s as usize].home = Home::Nowhere;
            self.finalize(s, Finish::Expired);
        }
    }

    /// Finalises everything (end of input).
    pub fn flush(&mut self) {
        while self.finalize_oldest(Finish::Flushed) {}
        self.order.clear();
        self.parked.clear();
        self.clear_hint();
    }

    #[inline]
    fn check(&mut self, slot: u32) {
        let e = &self.entries[slot as usize];
        if e.live && e.complete() {
            self.finalize(slot, Finish::Complete);
        }
    }

    /// Whether a parent at `ts` may be kept outside the correlator until
    /// the next event (see `Engine::process`): [`Correlator::add_parent`]
    /// would make a new entry for it (no findable entry at `ts`) without
    /// evicting anything. If so, the pending peak counts it now, as that
    /// call would.
    #[inline]
    pub fn hold_parent(&mut self, ts: u64) -> bool {
        if self.live >= self.max_pending || self.count_co_parents {
            return false;
        }
        let mut found = false;
        self.visit(ts, |_, _| {
            found = true;
            true
        });
        if found {
            return false;
        }
        self.stats.peak_pending = self.stats.peak_pending.max(self.live as u64 + 1);
        true
    }

    /// A held parent got its whole stack (a user part) from the next event:
    /// counted as [`Correlator::add_parent`] then [`Correlator::add_stack`]
    /// would have (one stack event, matched).
    #[inline]
    pub fn count_held_match(&mut self) {
        self.stats.matched += 1;
        self.stats.stack_events_matched += 1;
    }

    /// Whether a stack event's frames are a user part (its outermost frame
    /// is a user address): such a part completes a syscall.
    #[inline]
    pub fn is_user_part(&self, frames: &Frames<'_>) -> bool {
        frames.last().is_some_and(|a| a < self.kernel_boundary)
    }

    /// A parent event at raw timestamp `ts`.
    pub fn add_parent(&mut self, ts: u64, processor: u16, parent: Parent) {
        let mut best = NONE;
        self.visit(ts, |s, e| {
            if e.parent.is_none() && e.has_thread {
                if e.stack_processor == processor {
                    best = s;
                    return true;
                }
                if best == NONE {
                    best = s;
                }
            }
            false
        });
        if best == NONE {
            // A new entry has no stack: it cannot be complete yet.
            let slot = self.alloc(ts);
            let e = &mut self.entries[slot as usize];
            e.parent = Some(parent);
            e.parent_processor = processor;
            return;
        }
        let e = &mut self.entries[best as usize];
        e.parent = Some(parent);
        e.parent_processor = processor;
        self.check(best);
    }

    /// Finds the entry a stack part of (ts, tid) on `processor` belongs to,
    /// or makes one.
    fn stack_slot(&mut self, ts: u64, processor: u16, pid: u32, tid: u32, part: StackPart) -> u32 {
        let mut same_thread = NONE;
        let mut same_cpu = NONE;
        let mut any = NONE;
        self.visit(ts, |s, e| {
            if e.has_thread {
                let free = match part {
                    StackPart::Kernel => !e.has_kernel,
                    StackPart::User => !e.has_user,
                };
                if e.tid == tid && e.pid == pid && free && e.fragments < MAX_FRAGMENTS {
                    // Stitching by thread comes first.
                    same_thread = s;
                    return true;
                }
            } else if e.parent.is_some() {
                if e.parent_processor == processor && same_cpu == NONE {
                    same_cpu = s;
                }
                if any == NONE {
                    any = s;
                }
            }
            false
        });
        let slot = if same_thread != NONE {
            self.stats.fragments_stitched += 1;
            same_thread
        } else if same_cpu != NONE {
            same_cpu
        } else if any != NONE {
            any
        } else {
            self.alloc(ts)
        };
        if self.count_co_parents {
            self.note_co_parents(ts, slot);
        }
        let e = &mut self.entries[slot as usize];
        if !e.has_thread {
            e.has_thread = true;
            e.pid = pid;
            e.tid = tid;
            e.stack_processor = processor;
        }
        e.fragments += 1;
        slot
    }

    /// Counts the other non-syscall parents logged at the timestamp of a
    /// stack event (generalised pairing): a stack has one parent, but other
    /// events may share its timestamp.
    fn note_co_parents(&mut self, ts: u64, chosen: u32) {
        let chosen_hook = match self.entries[chosen as usize].parent {
            Some(Parent::Other(h)) => Some(h),
            _ => None,
        };
        let mut seen: [Option<ParentHook>; 8] = [None; 8];
        let mut n = 0;
        let mut found: Vec<ParentHook> = Vec::new();
        self.visit(ts, |s, e| {
            if let Some(Parent::Other(h)) = e.parent {
                if s != chosen && Some(h) != chosen_hook && !seen[..n].contains(&Some(h)) {
                    found.push(h);
                    if n < seen.len() {
                        seen[n] = Some(h);
                        n += 1;
                    }
                }
            }
            false
        });
        for h in found {
            *self.stats.co_parents.entry(h.to_string()).or_insert(0) += 1;
        }
    }

    /// Counts co-parents (see [`CorrelatorStats::co_parents`]).
    pub fn set_count_co_parents(&mut self, on: bool) {
        self.count_co_parents = on;
    }

    /// A StackWalk event (opcode 32).
    pub fn add_stack(&mut self, ts: u64, processor: u16, pid: u32, tid: u32, frames: &Frames<'_>) {
        // Innermost first: kernel frames precede user frames, so a part
        // holds user frames exactly when its outermost frame is a user one.
        let part = if self.is_user_part(frames) {
            StackPart::User
        } else {
            StackPart::Kernel
        };
        if part == StackPart::User && !self.count_co_parents {
            if let Some(slot) = self.lone_young_parent(ts) {
                self.complete_at_once(slot, processor, pid, tid, frames);
                return;
            }
        }
        let slot = self.stack_slot(ts, processor, pid, tid, part);
        let e = &mut self.entries[slot as usize];
        match part {
            StackPart::Kernel => {
                push_frames(&mut e.kernel, frames);
                e.has_kernel = true;
            }
            StackPart::User => {
                push_frames(&mut e.user, frames);
                e.has_user = true;
            }
        }
        self.check(slot);
    }

    /// The common case: the newest entry is a parent without a stack at
    /// `ts` and no other entry is at `ts`. A stack part at `ts` then goes to
    /// it whatever its processor and thread ([`Correlator::stack_slot`] would
    /// pick it too).
    #[inline]
    fn lone_young_parent(&self, ts: u64) -> Option<u32> {
        let (&(t, slot, _), older) = self.young.split_last()?;
        if t != ts {
            return None;
        }
        let e = &self.entries[slot as usize];
        if e.parent.is_none() || e.has_thread {
            return None;
        }
        if older.iter().any(|y| y.0 == ts) {
            return None;
        }
        if ts <= self.index_max && !self.index.is_empty() {
            return None;
        }
        Some(slot)
    }

    /// Gives the lone young parent `slot` a complete (user) stack and
    /// finalises it: what `stack_slot`, `check` and `finalize` do for it.
    #[inline]
    fn complete_at_once(
        &mut self,
        slot: u32,
        processor: u16,
        pid: u32,
        tid: u32,
        frames: &Frames<'_>,
    ) {
        let e = &mut self.entries[slot as usize];
        // No stack part yet: no fragments, no key references.
        e.has_thread = true;
        e.pid = pid;
        e.tid = tid;
        e.stack_processor = processor;
        e.fragments = 1;
        push_frames(&mut e.user, frames);
        e.has_user = true;
        e.live = false;
        e.home = Home::Nowhere;
        if slot == self.hint_slot {
            self.clear_hint();
        }
        self.young.pop();
        self.live -= 1;
        self.stats.matched += 1;
        self.stats.stack_events_matched += 1;
        self.ready.push((slot, Finish::Complete));
    }

    /// A stack-key reference (opcodes 37/38).
    pub fn add_key_reference(&mut self, r: &StackKeyReference, processor: u16) {
        let slot = self.stack_slot(
            r.event_timestamp,
            processor,
            r.stack_process,
            r.stack_thread,
            r.part,
        );
        if let Some(frames) = self.keys.get(&r.stack_key) {
            self.stats.keys_resolved += 1;
            let e = &mut self.entries[slot as usize];
            fill_part(e, r.part, frames);
        } else {
            // A waiting entry may be parked and re-queued: it must be in
            // the index and the expiry order.
            if self.entries[slot as usize].home == Home::Young {
                self.promote_all_young();
            }
            let e = &mut self.entries[slot as usize];
            let g = e.generation;
            e.waiting += 1;
            if e.waiting == 1 {
                *self.waiting_pids.entry(e.pid).or_insert(0) += 1;
            }
            self.waiting
                .entry(r.stack_key)
                .or_default()
                .push((slot, g, r.part));
            self.waiting_len += 1;
            if self.waiting_len > 2 * self.max_pending + 4096 {
                self.purge_waiting();
            }
        }
        self.check(slot);
    }

    fn purge_waiting(&mut self) {
        let entries = &self.entries;
        self.waiting.retain(|_, v| {
            v.retain(|&(s, g, _)| entries[s as usize].live && entries[s as usize].generation == g);
            !v.is_empty()
        });
        self.waiting_len = self.waiting.values().map(Vec::len).sum();
    }

    /// A stack-key definition (opcode 34 create, 36 rundown) or deletion
    /// (35). A deletion that carries frames first resolves the references
    /// made while the key was cached (Windows logs the frames at deletion).
    pub fn define_key(&mut self, d: &StackKeyDefinition) {
        let mut frames = std::mem::take(&mut self.scratch);
        frames.clear();
        frames.extend(d.frames.iter());
        if let Some(waiters) = self.waiting.remove(&d.stack_key) {
            self.waiting_len -= waiters.len();
            for (slot, g, part) in waiters {
                let e = &mut self.entries[slot as usize];
                if !(e.live && e.generation == g) {
                    continue;
                }
                if !frames.is_empty() {
                    fill_part(e, part, &frames);
                    self.stats.keys_resolved += 1;
                } else {
                    self.stats.keys_unresolved += 1;
                }
                e.waiting -= 1;
                let unpark = e.waiting == 0;
                if unpark {
                    let pid = e.pid;
                    self.unwait_pid(pid);
                }
                self.check(slot);
                // Resolved but still incomplete: let the window finish it
                // (after every entry made before now).
                let e = &self.entries[slot as usize];
                if unpark && e.live && e.generation == g {
                    self.promote_all_young();
                    self.order.push_back((slot, g));
                }
            }
        }
        match d.op {
            StackKeyOp::Delete => {
                if let Some(old) = self.keys.remove(&d.stack_key) {
                    self.key_frames -= old.len();
                }
            }
            StackKeyOp::Create | StackKeyOp::Rundown => {
                if let Some(old) = self.keys.remove(&d.stack_key) {
                    self.key_frames -= old.len();
                }
                if self.keys.len() < self.max_keys
                    && self.key_frames + frames.len() <= MAX_KEY_FRAMES
                {
                    self.key_frames += frames.len();
                    self.keys.insert(d.stack_key, frames.clone());
                } else {
                    self.stats.keys_dropped += 1;
                }
            }
        }
        self.stats.keys_defined = self.keys.len() as u64;
        self.scratch = frames;
    }
}

/// The frames as addresses without a copy, when they can be: 64-bit
/// pointers, suitably aligned, on a little-endian host (the file's byte
/// order).
#[inline]
pub(crate) fn frames_in_place<'a>(frames: &Frames<'a>) -> Option<&'a [u64]> {
    if cfg!(target_endian = "little") && frames.pointer_size() == 8 {
        bytemuck::try_cast_slice(frames.as_bytes()).ok()
    } else {
        None
    }
}

/// Appends frames, converting with the pointer size known per branch (the
/// hot loop of the correlator).
pub(crate) fn push_frames(dst: &mut Vec<u64>, frames: &Frames<'_>) {
    if let Some(a) = frames_in_place(frames) {
        dst.extend_from_slice(a);
        return;
    }
    let b = frames.as_bytes();
    if frames.pointer_size() == 4 {
        dst.extend(
            b.chunks_exact(4)
                .map(|c| u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        );
    } else {
        dst.extend(
            b.chunks_exact(8)
                .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])),
        );
    }
}

fn fill_part(e: &mut Entry, part: StackPart, frames: &[u64]) {
    match part {
        StackPart::Kernel => {
            e.kernel.extend_from_slice(frames);
            e.has_kernel = true;
        }
        StackPart::User => {
            e.user.extend_from_slice(frames);
            e.has_user = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fr(v: &[u64]) -> Vec<u8> {
        v.iter().flat_map(|a| a.to_le_bytes()).collect()
    }

    impl Correlator {
        fn add(&mut self, ts: u64, cpu: u16, pid: u32, tid: u32, frames: &[u64]) {
            let b = fr(frames);
            self.add_stack(ts, cpu, pid, tid, &Frames::new(&b, 8));
        }
    }

    const K: u64 = 0xFFFF_F800_0000_1000;
    const U: u64 = 0x7FF0_0000_0014;

    fn drain(c: &mut Correlator) -> Vec<(u64, Finish, bool, usize, usize)> {
        let mut out = Vec::new();
        while let Some((s, f)) = c.pop_ready() {
            let e = c.entry(s);
            out.push((e.ts, f, e.parent.is_some(), e.kernel.len(), e.user.len()));
            c.release(s);
        }
        out
    }

    #[test]
    fn syscall_then_full_stack_completes_at_once() {
        let mut c = Correlator::new(100, 1000);
        c.add_parent(10, 0, Parent::SysCall { address: 1 });
        assert!(drain(&mut c).is_empty());
        c.add(10, 0, 5, 6, &[K, U]);
        assert_eq!(drain(&mut c), vec![(10, Finish::Complete, true, 0, 2)]);
        assert_eq!(c.stats.matched, 1);
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn user_part_on_another_processor_is_stitched_by_thread() {
        let mut c = Correlator::new(100, 1000);
        c.add_parent(10, 3, Parent::SysCall { address: 1 });
        c.add(10, 3, 5, 6, &[K]);
        assert!(
            drain(&mut c).is_empty(),
            "kernel part alone waits for the user part"
        );
        c.add(10, 0, 5, 6, &[U, U + 8]);
        assert_eq!(drain(&mut c), vec![(10, Finish::Complete, true, 1, 2)]);
        assert_eq!(c.stats.fragments_stitched, 1);
        assert_eq!(c.stats.stack_events_matched, 2);
    }

    #[test]
    fn stack_before_syscall_prefers_same_processor() {
        let mut c = Correlator::new(100, 1000);
        c.add(10, 1, 5, 6, &[U]);
        c.add(10, 2, 7, 8, &[U + 0x20]);
        c.add_parent(10, 2, Parent::SysCall { address: 1 });
        let (s, f) = c.pop_ready().unwrap();
        assert_eq!(f, Finish::Complete);
        assert_eq!(c.entry(s).tid, 8);
        c.release(s);
        c.expire(1000);
        assert_eq!(drain(&mut c), vec![(10, Finish::Expired, false, 0, 1)]);
        assert_eq!(c.stats.stack_without_syscall, 1);
    }

    #[test]
    fn kernel_only_stack_expires_after_window() {
        let mut c = Correlator::new(100, 1000);
        c.add_parent(10, 0, Parent::SysCall { address: 1 });
        c.add(10, 0, 50, 6, &[K]);
        c.expire(110);
        assert!(drain(&mut c).is_empty());
        c.expire(111);
        assert_eq!(drain(&mut c), vec![(10, Finish::Expired, true, 1, 0)]);
        // System process: no user part will come.
        c.add_parent(20, 0, Parent::SysCall { address: 1 });
        c.add(20, 0, 4, 6, &[K]);
        assert_eq!(drain(&mut c), vec![(20, Finish::Complete, true, 1, 0)]);
    }

    #[test]
    fn stack_keys_resolve_before_and_after_reference() {
        let mut c = Correlator::new(100, 1000);
        let kb: Vec<u8> = K.to_le_bytes().to_vec();
        let ub: Vec<u8> = [U.to_le_bytes(), (U + 8).to_le_bytes()].concat();
        c.define_key(&StackKeyDefinition {
            op: StackKeyOp::Create,
            stack_key: 0xAA,
            frames: Frames::new(&kb, 8),
        });
        c.add_parent(10, 0, Parent::SysCall { address: 1 });
        let r = |part, key| StackKeyReference {
            part,
            event_timestamp: 10,
            stack_process: 5,
            stack_thread: 6,
            stack_key: key,
        };
        c.add_key_reference(&r(StackPart::Kernel, 0xAA), 0);
        c.add_key_reference(&r(StackPart::User, 0xBB), 0);
        assert!(drain(&mut c).is_empty(), "user key not defined yet");
        // Windows logs a key's frames when it deletes it from the cache.
        c.define_key(&StackKeyDefinition {
            op: StackKeyOp::Delete,
            stack_key: 0xBB,
            frames: Frames::new(&ub, 8),
        });
        assert_eq!(drain(&mut c), vec![(10, Finish::Complete, true, 1, 2)]);
        assert_eq!(c.stats.keys_resolved, 2);
    }

    #[test]
    fn pending_set_never_exceeds_its_cap() {
        let cap = 64;
        let mut c = Correlator::new(u64::MAX / 4, cap);
        let mut finished = 0u64;
        for i in 0..100_000u64 {
            // Syscalls that never get a stack and stacks that never get a syscall.
            if i % 2 == 0 {
                c.add_parent(i * 2, (i % 4) as u16, Parent::SysCall { address: 1 });
            } else {
                c.add(i * 2 + 1, 0, 9, 9, &[U]);
            }
            assert!(c.pending() <= cap);
            while let Some((s, _)) = c.pop_ready() {
                c.release(s);
                finished += 1;
            }
            assert!(c.entries.len() <= cap + 1, "slab grows past the cap");
            assert!(c.order.len() <= 2 * cap + 4097);
        }
        assert_eq!(c.stats.evicted, 100_000 - cap as u64);
        assert_eq!(finished, 100_000 - cap as u64);
        assert_eq!(c.stats.peak_pending, cap as u64);
        assert_eq!(
            c.stats.syscall_without_stack + c.stats.stack_without_syscall,
            finished
        );
    }
}
