//! The correlator as it was before the fast path (young entries, expiry
//! hint): the reference the differential tests compare against.

use std::collections::{HashMap, VecDeque};

use sentry_kernel::{Frames, StackKeyDefinition, StackKeyOp, StackKeyReference, StackPart};

use sentry_engine::{CorrelatorStats, Finish, Parent, ParentHook};

/// A deterministic hasher (the library's is private; nothing here depends
/// on iteration order).
type FxBuildHasher = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

const NONE: u32 = u32::MAX;

/// Parts merged into one entry at most (a kernel and a user part, each
/// possibly split into a few key references); more is hostile input.
const MAX_FRAGMENTS: u32 = 16;

/// Frames held by stack-key definitions at most (128 MiB of addresses).
const MAX_KEY_FRAMES: usize = 16 << 20;

/// One pending parent and/or stack.
#[derive(Debug, Default, Clone)]
pub struct RefEntry {
    pub ts: u64,
    generation: u32,
    live: bool,
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

impl RefEntry {
    pub fn has_stack(&self) -> bool {
        self.has_kernel || self.has_user
    }

    fn complete(&self) -> bool {
        self.parent.is_some()
            && self.waiting == 0
            && (self.has_user || (self.has_kernel && (self.pid == 0 || self.pid == 4)))
    }
}

/// The pending set.
#[derive(Debug)]
pub struct RefCorrelator {
    entries: Vec<RefEntry>,
    free: Vec<u32>,
    index: HashMap<u64, u32, FxBuildHasher>,
    order: VecDeque<(u32, u32)>,
    /// Entries past the window that still wait for a stack-key definition
    /// (Windows logs a key's frames only when it leaves the cache).
    parked: VecDeque<(u32, u32)>,
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
    ready: VecDeque<(u32, Finish)>,
    kernel_boundary: u64,
    scratch: Vec<u64>,
    next_generation: u32,
    count_co_parents: bool,
    pub stats: CorrelatorStats,
}

impl RefCorrelator {
    pub fn new(window_ticks: u64, max_pending: usize) -> RefCorrelator {
        RefCorrelator {
            entries: Vec::new(),
            free: Vec::new(),
            index: HashMap::default(),
            order: VecDeque::new(),
            parked: VecDeque::new(),
            live: 0,
            window_ticks,
            max_pending: max_pending.max(1),
            max_keys: 1 << 20,
            keys: HashMap::default(),
            key_frames: 0,
            waiting: HashMap::default(),
            waiting_len: 0,
            waiting_pids: HashMap::default(),
            ready: VecDeque::new(),
            kernel_boundary: 0xFFFF_8000_0000_0000,
            scratch: Vec::new(),
            next_generation: 0,
            count_co_parents: false,
            stats: CorrelatorStats::default(),
        }
    }

    pub fn set_window_ticks(&mut self, t: u64) {
        self.window_ticks = t;
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

    pub fn entry(&self, slot: u32) -> &RefEntry {
        &self.entries[slot as usize]
    }

    /// The next finalised entry: read it with [`RefCorrelator::entry`], then [`RefCorrelator::release`] it.
    pub fn pop_ready(&mut self) -> Option<(u32, Finish)> {
        self.ready.pop_front()
    }

    fn alloc(&mut self, ts: u64) -> u32 {
        self.next_generation = self.next_generation.wrapping_add(1);
        let generation = self.next_generation;
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.entries.push(RefEntry::default());
                (self.entries.len() - 1) as u32
            }
        };
        let e = &mut self.entries[slot as usize];
        e.ts = ts;
        e.generation = generation;
        e.live = true;
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
        // Link at the chain head for this timestamp.
        if let Some(head) = self.index.insert(ts, slot) {
            self.entries[slot as usize].next = head;
        }
        self.order.push_back((slot, generation));
        self.live += 1;
        if self.order.len() > 2 * self.live + 4096 {
            let entries = &self.entries;
            self.order
                .retain(|&(s, g)| entries[s as usize].live && entries[s as usize].generation == g);
        }
        while self.live > self.max_pending {
            if !self.finalize_oldest(Finish::Evicted) {
                break;
            }
        }
        self.stats.peak_pending = self.stats.peak_pending.max(self.live as u64);
        slot
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
        false
    }

    fn finalize(&mut self, slot: u32, why: Finish) {
        let e = &mut self.entries[slot as usize];
        e.live = false;
        let ts = e.ts;
        let next = e.next;
        self.live -= 1;
        // Unlink from its timestamp chain so later events do not find it.
        match self.index.get(&ts).copied() {
            Some(h) if h == slot => {
                if next == NONE {
                    self.index.remove(&ts);
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
        self.ready.push_back((slot, why));
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
    pub fn release(&mut self, slot: u32) {
        self.free.push(slot);
    }

    /// Finalises entries older than the window before `now`.
    pub fn expire(&mut self, now: u64) {
        while let Some(&(s, g)) = self.order.front() {
            let e = &self.entries[s as usize];
            if !(e.live && e.generation == g) {
                self.order.pop_front();
                continue;
            }
            if e.ts.saturating_add(self.window_ticks) >= now {
                break;
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
        }
    }

    /// Finalises everything (end of input).
    pub fn flush(&mut self) {
        while self.finalize_oldest(Finish::Flushed) {}
        self.order.clear();
        self.parked.clear();
    }

    fn check(&mut self, slot: u32) {
        let e = &self.entries[slot as usize];
        if e.live && e.complete() {
            self.finalize(slot, Finish::Complete);
        }
    }

    /// A parent event at raw timestamp `ts`.
    pub fn add_parent(&mut self, ts: u64, processor: u16, parent: Parent) {
        let mut best = NONE;
        let mut cur = self.index.get(&ts).copied().unwrap_or(NONE);
        while cur != NONE {
            let e = &self.entries[cur as usize];
            if e.parent.is_none() && e.has_thread {
                if e.stack_processor == processor {
                    best = cur;
                    break;
                }
                if best == NONE {
                    best = cur;
                }
            }
            cur = e.next;
        }
        let slot = if best == NONE { self.alloc(ts) } else { best };
        let e = &mut self.entries[slot as usize];
        e.parent = Some(parent);
        e.parent_processor = processor;
        self.check(slot);
    }

    /// Finds the entry a stack part of (ts, tid) on `processor` belongs to,
    /// or makes one.
    fn stack_slot(&mut self, ts: u64, processor: u16, pid: u32, tid: u32, part: StackPart) -> u32 {
        let mut same_thread = NONE;
        let mut same_cpu = NONE;
        let mut any = NONE;
        let mut cur = self.index.get(&ts).copied().unwrap_or(NONE);
        while cur != NONE {
            let e = &self.entries[cur as usize];
            if e.has_thread {
                let free = match part {
                    StackPart::Kernel => !e.has_kernel,
                    StackPart::User => !e.has_user,
                };
                if e.tid == tid
                    && e.pid == pid
                    && free
                    && e.fragments < MAX_FRAGMENTS
                    && same_thread == NONE
                {
                    same_thread = cur;
                }
            } else if e.parent.is_some() {
                if e.parent_processor == processor && same_cpu == NONE {
                    same_cpu = cur;
                }
                if any == NONE {
                    any = cur;
                }
            }
            cur = e.next;
        }
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
        let mut cur = self.index.get(&ts).copied().unwrap_or(NONE);
        while cur != NONE {
            let e = &self.entries[cur as usize];
            if let Some(Parent::Other(h)) = e.parent {
                if cur != chosen && Some(h) != chosen_hook && !seen[..n].contains(&Some(h)) {
                    *self.stats.co_parents.entry(h.to_string()).or_insert(0) += 1;
                    if n < seen.len() {
                        seen[n] = Some(h);
                        n += 1;
                    }
                }
            }
            cur = e.next;
        }
    }

    /// Counts co-parents (see [`CorrelatorStats::co_parents`]).
    pub fn set_count_co_parents(&mut self, on: bool) {
        self.count_co_parents = on;
    }

    /// A StackWalk event (opcode 32).
    pub fn add_stack(&mut self, ts: u64, processor: u16, pid: u32, tid: u32, frames: &Frames<'_>) {
        let kb = self.kernel_boundary;
        // Innermost first: kernel frames precede user frames, so a part
        // holds user frames exactly when its outermost frame is a user one.
        let outermost = frames.len().checked_sub(1).and_then(|i| frames.get(i));
        let part = if outermost.is_some_and(|a| a < kb) {
            StackPart::User
        } else {
            StackPart::Kernel
        };
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
                // Resolved but still incomplete: let the window finish it.
                let e = &self.entries[slot as usize];
                if unpark && e.live && e.generation == g {
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

/// Appends frames, converting with the pointer size known per branch (the
/// hot loop of the correlator).
fn push_frames(dst: &mut Vec<u64>, frames: &Frames<'_>) {
    let b = frames.as_bytes();
    if frames.pointer_size() == 4 {
        dst.extend(
            b.chunks_exact(4)
                .map(|c| u64::from(u32::from_le_bytes(c.try_into().unwrap_or([0; 4])))),
        );
    } else {
        dst.extend(
            b.chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))),
        );
    }
}

fn fill_part(e: &mut RefEntry, part: StackPart, frames: &[u64]) {
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
