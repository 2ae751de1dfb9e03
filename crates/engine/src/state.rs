//! Process, thread and module state rebuilt from kernel events in time order.
//!
//! Layouts of the events: [Process_TypeGroup1](https://learn.microsoft.com/windows/win32/etw/process-typegroup1),
//! [Thread_TypeGroup1](https://learn.microsoft.com/windows/win32/etw/thread-typegroup1),
//! [Image_Load](https://learn.microsoft.com/windows/win32/etw/image-load).
//! Module lookups are a binary search over the sorted image bases (a
//! `BTreeMap` for huge maps), after a check of the last four hits.
//! Ended processes are kept until the correlation window has passed (a
//! syscall still pending may belong to them), then dropped: memory follows
//! the live process set, not the trace length.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use sentry_kernel::{Image, Lifecycle, Process, Thread};

use crate::fxhash::FxBuildHasher;
use crate::sysdlls::SystemDlls;
use sentry_images::Images;

/// What a module is, for the verdict rules (docs/verdicts.md, "Address spaces").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModuleKind {
    /// The native (64-bit on x64) `ntdll.dll` in `\Windows\System32\`: a stub module.
    Ntdll,
    /// The native `win32u.dll`: a stub module.
    Win32u,
    /// The 32-bit `ntdll.dll` in `\Windows\SysWOW64\`: marks a WoW64 process; not a stub module.
    NtdllWow64,
    /// Anything else.
    Other,
    /// A second ntdll or win32u (docs/verdicts.md, rule 3a): the System32
    /// file mapped again at another base than the machine's (KnownDlls or
    /// the file remapped), a file of that name elsewhere, or any file with
    /// the primary one's `SizeOfImage` and `TimeDateStamp` (a renamed copy).
    /// Not a stub module: its stubs run outside the hooked, loaded copy.
    ClonedStub,
    /// WoW64's 64-bit layer in `\Windows\System32\` (`wow64.dll`,
    /// `wow64win.dll`, `wow64cpu.dll`, `wow64base.dll`, `wow64con.dll`): what
    /// calls a WoW64 process's native stubs (rule 8).
    Wow64Layer,
}

impl ModuleKind {
    /// Ntdll and win32u are the modules whose stubs legitimately hold `syscall`.
    pub fn is_stub_module(self) -> bool {
        matches!(self, ModuleKind::Ntdll | ModuleKind::Win32u)
    }

    /// Classifies an NT path (case-insensitive), e.g.
    /// `\Device\HarddiskVolume3\Windows\System32\ntdll.dll`.
    pub fn from_path(path: &str) -> ModuleKind {
        let p = path.as_bytes();
        // `path` ends with `\<dir>\<file>` or is `<dir>\<file>`, compared
        // case-insensitively with `/` read as `\` (no allocation).
        let in_dir = |dir_file: &[u8]| {
            let same = |tail: &[u8], want: &[u8]| {
                tail.len() == want.len()
                    && tail.iter().zip(want).all(|(&a, &b)| {
                        let a = if a == b'/' {
                            b'\\'
                        } else {
                            a.to_ascii_lowercase()
                        };
                        a == b
                    })
            };
            let n = dir_file.len();
            let sep = |b: u8| b == b'\\' || b == b'/';
            (p.len() > n && sep(p[p.len() - n - 1]) && same(&p[p.len() - n..], dir_file))
                || same(p, dir_file)
        };
        if in_dir(b"system32\\ntdll.dll") {
            ModuleKind::Ntdll
        } else if in_dir(b"system32\\win32u.dll") {
            ModuleKind::Win32u
        } else if in_dir(b"syswow64\\ntdll.dll") {
            ModuleKind::NtdllWow64
        } else if in_dir(b"system32\\wow64.dll")
            || in_dir(b"system32\\wow64win.dll")
            || in_dir(b"system32\\wow64cpu.dll")
            || in_dir(b"system32\\wow64base.dll")
            || in_dir(b"system32\\wow64con.dll")
        {
            ModuleKind::Wow64Layer
        } else {
            ModuleKind::Other
        }
    }
}

/// A loaded image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub base: u64,
    pub size: u64,
    /// File name part of the path, as logged (e.g. `ntdll.dll`).
    pub name: Arc<str>,
    /// The NT path as logged.
    pub path: Arc<str>,
    pub kind: ModuleKind,
    pub time_date_stamp: u32,
    /// Index into the supplied system DLLs (`--system-dlls`) this module was
    /// matched to by name, image size and TimeDateStamp.
    pub system_dll: Option<usize>,
    /// Index into `--images` of the file with its name, image size and
    /// TimeDateStamp.
    pub image: Option<usize>,
}

impl Module {
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr - self.base < self.size
    }
}

/// The modules of one address space.
///
/// Lookups first try the ranges of the last four hits: a stack's return
/// addresses fall in a few modules (the stub DLL, its caller), so most
/// lookups skip the search. A cached range ends at the module's end or at
/// the next module's base, whichever comes first, so a hit gives exactly
/// what the search would; any change to the map clears the cache. The
/// search is a binary search over the image bases kept sorted in a vector
/// while the map is small (every real address space), else the tree.
#[derive(Debug, Default, Clone)]
pub struct ModuleMap {
    /// Image base to slot in `modules`.
    by_base: BTreeMap<u64, u32>,
    modules: Vec<Module>,
    /// Slots of removed modules, for reuse.
    free: Vec<u32>,
    /// While `sorted`: the image bases, ascending, and for each its
    /// (size, slot).
    bases: Vec<u64>,
    spans: Vec<(u64, u32)>,
    /// `bases`/`spans` mirror `by_base` (the map is not too big for them).
    sorted: bool,
    /// (start, length, slot) of the last four hits, most recent first
    /// (length 0: empty).
    hot: [Cell<(u64, u64, u32)>; 4],
}

/// Maps with more modules than this are searched in the tree: inserting
/// into the sorted vectors moves up to this many bases.
const SORTED_MAX: usize = 1024;

impl ModuleMap {
    /// The module containing `addr`, if any: the one with the greatest base
    /// at or below `addr`, if it extends over `addr`.
    #[inline]
    pub fn find(&self, addr: u64) -> Option<&Module> {
        let (start, len, slot) = self.hot[0].get();
        if addr.wrapping_sub(start) < len {
            return self.modules.get(slot as usize);
        }
        for h in &self.hot[1..] {
            let (start, len, slot) = h.get();
            if addr.wrapping_sub(start) < len {
                return self.modules.get(slot as usize);
            }
        }
        self.find_slow(addr)
    }

    fn find_slow(&self, addr: u64) -> Option<&Module> {
        let (base, slot, next) = if self.sorted {
            let i = self.bases.partition_point(|&b| b <= addr);
            let j = i.checked_sub(1)?;
            let base = self.bases[j];
            let (size, slot) = self.spans[j];
            if addr - base >= size {
                return None;
            }
            (base, slot, self.bases.get(i).copied().unwrap_or(u64::MAX))
        } else {
            let (&base, &slot) = self.by_base.range(..=addr).next_back()?;
            let size = self.modules.get(slot as usize)?.size;
            if addr - base >= size {
                return None;
            }
            let next = self
                .by_base
                .range((Bound::Excluded(base), Bound::Unbounded))
                .next()
                .map_or(u64::MAX, |(&b, _)| b);
            (base, slot, next)
        };
        let m = self.modules.get(slot as usize)?;
        let end = base.saturating_add(m.size).min(next);
        self.hot[3].set(self.hot[2].get());
        self.hot[2].set(self.hot[1].get());
        self.hot[1].set(self.hot[0].get());
        self.hot[0].set((base, end - base, slot));
        Some(m)
    }

    /// Adds (or replaces) the module at `m.base`.
    pub fn insert(&mut self, m: Module) {
        self.hot = Default::default();
        if let Some(&slot) = self.by_base.get(&m.base) {
            if self.sorted {
                if let Ok(i) = self.bases.binary_search(&m.base) {
                    self.spans[i].0 = m.size;
                }
            }
            self.modules[slot as usize] = m;
            return;
        }
        let (base, size) = (m.base, m.size);
        let slot = match self.free.pop() {
            Some(s) => {
                self.modules[s as usize] = m;
                s
            }
            None => {
                self.modules.push(m);
                (self.modules.len() - 1) as u32
            }
        };
        self.by_base.insert(base, slot);
        if self.by_base.len() > SORTED_MAX {
            self.sorted = false;
            self.bases = Vec::new();
            self.spans = Vec::new();
        } else if self.sorted || self.by_base.len() == 1 {
            let i = self.bases.partition_point(|&b| b < base);
            self.bases.insert(i, base);
            self.spans.insert(i, (size, slot));
            self.sorted = true;
        }
    }

    pub fn remove(&mut self, base: u64) -> Option<Module> {
        self.hot = Default::default();
        let slot = self.by_base.remove(&base)?;
        self.free.push(slot);
        if self.sorted {
            if let Ok(i) = self.bases.binary_search(&base) {
                self.bases.remove(i);
                self.spans.remove(i);
            }
        } else if self.by_base.len() <= SORTED_MAX / 2 {
            // Small again: back to the vectors.
            self.bases = self.by_base.keys().copied().collect();
            let modules = &self.modules;
            self.spans = self
                .by_base
                .values()
                .map(|&s| (modules[s as usize].size, s))
                .collect();
            self.sorted = true;
        }
        // The slot keeps a copy until reused; hand the module back.
        Some(self.modules[slot as usize].clone())
    }

    pub fn len(&self) -> usize {
        self.by_base.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_base.is_empty()
    }

    /// The modules by ascending base.
    pub fn iter(&self) -> impl Iterator<Item = &Module> {
        self.by_base
            .values()
            .filter_map(|&s| self.modules.get(s as usize))
    }
}

/// What is known about one process.
#[derive(Debug, Clone, Default)]
pub struct ProcessInfo {
    pub pid: u32,
    pub parent_id: u32,
    pub session_id: u32,
    pub user_sid: String,
    pub image_file_name: String,
    pub command_line: String,
    /// A SysWOW64 ntdll is (or was) loaded: 32-bit code runs in this process.
    pub wow64: bool,
    pub modules: ModuleMap,
    /// Raw timestamp of the End/Defunct event, if seen.
    pub ended_at: Option<u64>,
    /// Bumped when the pid is reused by a new process.
    pub generation: u32,
    /// Raw timestamp of its Start or rundown (DCStart) event: from then on
    /// its module map is built from what the trace shows (`None`: the
    /// process is known only from other events).
    pub known_since: Option<u64>,
    /// Its `\System32\ntdll.dll` was mapped (seen loading or in the rundown).
    pub ntdll: bool,
    /// Where its ntdlls' `KiUserExceptionDispatcher` lies (rule 8b).
    pub exception_dispatchers: crate::classify::exception::Dispatchers,
}

/// Counters of the state tracker.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StateStats {
    pub processes_seen: u64,
    pub processes_dropped: u64,
    pub images_loaded: u64,
    pub images_unloaded: u64,
    pub live_processes: u64,
    pub kernel_modules: u64,
}

/// Processes, threads and module maps.
#[derive(Debug)]
pub struct State {
    processes: HashMap<u32, ProcessInfo, FxBuildHasher>,
    threads: HashMap<u32, u32, FxBuildHasher>,
    kernel: ModuleMap,
    /// (drop after raw timestamp, pid, generation)
    ended: VecDeque<(u64, u32, u32)>,
    /// The first deadline in `ended` (`u64::MAX`: none), read per event.
    deadline: u64,
    next_generation: u32,
    pub stats: StateStats,
    /// Matches images to `--system-dlls` (name, size, TimeDateStamp).
    system_dlls: Option<Arc<SystemDlls>>,
    /// Matches images to `--images` (name, size, TimeDateStamp).
    images: Option<Arc<Images>>,
    /// The machine's ntdll and win32u: (base, size, TimeDateStamp) of the
    /// first System32 mapping seen in a user process. Windows maps a
    /// KnownDll at one base in every process until reboot.
    primary: [Option<(u64, u64, u32)>; 2],
}

impl Default for State {
    fn default() -> State {
        State {
            processes: HashMap::default(),
            threads: HashMap::default(),
            kernel: ModuleMap::default(),
            ended: VecDeque::new(),
            deadline: u64::MAX,
            next_generation: 0,
            stats: StateStats::default(),
            system_dlls: None,
            images: None,
            primary: [None; 2],
        }
    }
}

impl State {
    pub fn new() -> State {
        State::default()
    }

    /// The supplied system DLLs images are matched to.
    pub fn set_system_dlls(&mut self, s: Arc<SystemDlls>) {
        self.system_dlls = Some(s);
    }

    /// The `--images` files images are matched to.
    pub fn set_images(&mut self, i: Arc<Images>) {
        self.images = Some(i);
    }

    /// A native ntdll/win32u mapping that is not the machine's primary one
    /// (rule 3a), given the kind its path says.
    fn cloned(&mut self, kind: ModuleKind, name: &str, i: &Image) -> bool {
        let slot = match kind {
            ModuleKind::Ntdll => Some(0),
            ModuleKind::Win32u => Some(1),
            _ => None,
        };
        if let Some(k) = slot {
            let p = self.primary[k].get_or_insert((i.image_base, i.image_size, i.time_date_stamp));
            return p.0 != i.image_base;
        }
        if kind != ModuleKind::Other {
            return false;
        }
        // WoW64's own 32-bit ntdll/win32u live in SysWOW64.
        let wow = i.file_name.to_ascii_lowercase().contains("\\syswow64\\");
        (!wow && (name.eq_ignore_ascii_case("ntdll.dll") || name.eq_ignore_ascii_case("win32u.dll")))
            // (Windows 7's Image events log no TimeDateStamp: 0 proves nothing.)
            || (i.time_date_stamp != 0
                && self
                    .primary
                    .iter()
                    .flatten()
                    .any(|p| p.1 == i.image_size && p.2 == i.time_date_stamp))
    }

    pub fn process(&self, pid: u32) -> Option<&ProcessInfo> {
        self.processes.get(&pid)
    }

    pub fn processes(&self) -> impl Iterator<Item = &ProcessInfo> {
        self.processes.values()
    }

    /// The kernel module map (images loaded by pid 0: ntoskrnl, drivers).
    pub fn kernel_modules(&self) -> &ModuleMap {
        &self.kernel
    }

    /// The process a thread belongs to, if its start/rundown was seen.
    pub fn thread_process(&self, tid: u32) -> Option<u32> {
        self.threads.get(&tid).copied()
    }

    fn entry(&mut self, pid: u32) -> &mut ProcessInfo {
        let generation = &mut self.next_generation;
        let stats = &mut self.stats;
        self.processes.entry(pid).or_insert_with(|| {
            *generation += 1;
            stats.processes_seen += 1;
            ProcessInfo {
                pid,
                generation: *generation,
                ..ProcessInfo::default()
            }
        })
    }

    /// Process start/end/rundown. `linger` is how long (raw ticks) an ended
    /// process is kept for pending work.
    pub fn on_process(&mut self, p: &Process, ts: u64, linger: u64) {
        match p.op {
            Lifecycle::Start => {
                // A new process with this pid: forget the old one.
                if self.processes.remove(&p.process_id).is_some() {
                    self.stats.processes_dropped += 1;
                }
                let info = self.entry(p.process_id);
                fill(info, p);
                info.known_since = Some(ts);
            }
            Lifecycle::DcStart | Lifecycle::DcEnd => {
                let info = self.entry(p.process_id);
                if info.image_file_name.is_empty() || p.op == Lifecycle::DcStart {
                    fill(info, p);
                }
                if p.op == Lifecycle::DcStart && info.known_since.is_none() {
                    info.known_since = Some(ts);
                }
            }
            Lifecycle::End | Lifecycle::Defunct => {
                let info = self.entry(p.process_id);
                if info.image_file_name.is_empty() {
                    fill(info, p);
                }
                if info.ended_at.is_none() {
                    info.ended_at = Some(ts);
                    let g = info.generation;
                    self.ended
                        .push_back((ts.saturating_add(linger), p.process_id, g));
                    self.deadline = self.ended.front().map_or(u64::MAX, |e| e.0);
                }
            }
        }
        self.stats.live_processes = self.processes.len() as u64;
    }

    pub fn on_thread(&mut self, t: &Thread) {
        match t.op {
            Lifecycle::Start | Lifecycle::DcStart => {
                self.threads.insert(t.thread_id, t.process_id);
            }
            Lifecycle::End | Lifecycle::Defunct => {
                self.threads.remove(&t.thread_id);
            }
            Lifecycle::DcEnd => {}
        }
    }

    pub fn on_image(&mut self, i: &Image) {
        let kernel = i.process_id == 0;
        match i.op {
            Lifecycle::Start | Lifecycle::DcStart => {
                if i.image_size == 0 {
                    return;
                }
                let path: Arc<str> = Arc::from(i.file_name.as_str());
                let name_str = i
                    .file_name
                    .rsplit(['\\', '/'])
                    .next()
                    .unwrap_or(&i.file_name);
                let name: Arc<str> = Arc::from(name_str);
                let mut kind = if kernel {
                    ModuleKind::Other
                } else {
                    ModuleKind::from_path(&i.file_name)
                };
                if !kernel && self.cloned(kind, name_str, i) {
                    kind = ModuleKind::ClonedStub;
                }
                // In `live` (files on disk) kernel images get none: their
                // frames are never checked and ntoskrnl.exe is 11 MB.
                let image = self
                    .images
                    .as_ref()
                    .filter(|s| !(kernel && s.disk().is_some()))
                    .and_then(|s| {
                        s.find_module(&i.file_name, name_str, i.image_size, i.time_date_stamp)
                    });
                let system_dll = self
                    .system_dlls
                    .as_ref()
                    .and_then(|s| s.find(name_str, i.image_size, i.time_date_stamp));
                let m = Module {
                    base: i.image_base,
                    size: i.image_size,
                    name,
                    path,
                    kind,
                    time_date_stamp: i.time_date_stamp,
                    system_dll,
                    image,
                };
                let dispatcher = matches!(kind, ModuleKind::Ntdll | ModuleKind::NtdllWow64)
                    .then(|| {
                        crate::classify::exception::Dispatchers::span(
                            self.images.as_deref().zip(image),
                            self.system_dlls.as_deref().zip(system_dll),
                        )
                    })
                    .flatten();
                self.stats.images_loaded += 1;
                if kernel {
                    self.kernel.insert(m);
                    self.stats.kernel_modules = self.kernel.len() as u64;
                } else {
                    let info = self.entry(i.process_id);
                    if kind == ModuleKind::NtdllWow64 {
                        info.wow64 = true;
                    }
                    if kind == ModuleKind::Ntdll {
                        info.ntdll = true;
                    }
                    if matches!(kind, ModuleKind::Ntdll | ModuleKind::NtdllWow64) {
                        info.exception_dispatchers.on_ntdll(
                            kind,
                            i.image_base,
                            i.image_size,
                            dispatcher,
                        );
                    }
                    info.modules.insert(m);
                }
            }
            Lifecycle::End => {
                self.stats.images_unloaded += 1;
                if kernel {
                    self.kernel.remove(i.image_base);
                } else if let Some(info) = self.processes.get_mut(&i.process_id) {
                    if let Some(m) = info.modules.remove(i.image_base) {
                        info.exception_dispatchers.on_unload(m.base, m.size);
                    }
                }
            }
            // End-of-trace rundown: the image is still loaded.
            Lifecycle::DcEnd | Lifecycle::Defunct => {}
        }
    }

    /// When the next ended process is due to be dropped (`u64::MAX`: none).
    #[inline]
    pub fn next_deadline(&self) -> u64 {
        self.deadline
    }

    /// Drops processes whose end is older than their linger time, unless
    /// `keep(pid)` (pending work still needs them: they get another linger).
    pub fn expire(&mut self, now: u64, linger: u64, keep: impl Fn(u32) -> bool) {
        while let Some(&(deadline, pid, generation)) = self.ended.front() {
            if deadline > now {
                break;
            }
            self.ended.pop_front();
            let current = self
                .processes
                .get(&pid)
                .is_some_and(|p| p.generation == generation);
            if current && keep(pid) {
                self.ended
                    .push_back((now.saturating_add(linger.max(1)), pid, generation));
                continue;
            }
            if current {
                self.processes.remove(&pid);
                self.threads.retain(|_, p| *p != pid);
                self.stats.processes_dropped += 1;
            }
        }
        self.deadline = self.ended.front().map_or(u64::MAX, |e| e.0);
        self.stats.live_processes = self.processes.len() as u64;
    }
}

fn fill(info: &mut ProcessInfo, p: &Process) {
    info.parent_id = p.parent_id;
    info.session_id = p.session_id;
    if !p.user_sid.is_empty() {
        info.user_sid.clone_from(&p.user_sid);
    }
    if !p.image_file_name.is_empty() {
        info.image_file_name.clone_from(&p.image_file_name);
    }
    if !p.command_line.is_empty() {
        info.command_line.clone_from(&p.command_line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(op: Lifecycle, pid: u32, base: u64, size: u64, path: &str) -> Image {
        Image {
            op,
            image_base: base,
            image_size: size,
            process_id: pid,
            image_checksum: 0,
            time_date_stamp: 0,
            default_base: 0,
            file_name: path.to_string(),
        }
    }

    #[test]
    fn module_kinds_follow_the_path() {
        use ModuleKind::*;
        let k = ModuleKind::from_path;
        assert_eq!(
            k(r"\Device\HarddiskVolume3\Windows\System32\ntdll.dll"),
            Ntdll
        );
        assert_eq!(k(r"\SystemRoot\System32\NTDLL.DLL"), Ntdll);
        assert_eq!(k(r"C:\Windows\System32\win32u.dll"), Win32u);
        assert_eq!(
            k(r"\Device\HarddiskVolume3\Windows\SysWOW64\ntdll.dll"),
            NtdllWow64
        );
        assert_eq!(k(r"C:\Windows\SysWOW64\win32u.dll"), Other);
        assert_eq!(k(r"C:\Users\x\ntdll.dll"), Other);
        assert_eq!(k(r"C:\Windows\System32\kernel32.dll"), Other);
    }

    /// The allocation-free path test equals the lowercase-and-compare one.
    #[test]
    fn module_kinds_equal_the_lowercased_comparison() {
        fn reference(path: &str) -> ModuleKind {
            let lower = path.to_ascii_lowercase().replace('/', "\\");
            let in_dir = |dir: &str, file: &str| {
                lower.ends_with(&format!("\\{dir}\\{file}")) || lower == format!("{dir}\\{file}")
            };
            if in_dir("system32", "ntdll.dll") {
                ModuleKind::Ntdll
            } else if in_dir("system32", "win32u.dll") {
                ModuleKind::Win32u
            } else if in_dir("syswow64", "ntdll.dll") {
                ModuleKind::NtdllWow64
            } else {
                ModuleKind::Other
            }
        }
        let heads = [
            "",
            "\\",
            "/",
            "C:",
            "\\Device\\HarddiskVolume3\\Windows",
            "é",
            "x",
        ];
        let dirs = [
            "system32",
            "SysWOW64",
            "SYSTEM32",
            "system3",
            "ystem32",
            "Système32",
            "",
        ];
        let seps = ["\\", "/", "", "\\\\"];
        let files = [
            "ntdll.dll",
            "NTDLL.DLL",
            "win32u.dll",
            "Win32U.dll",
            "tdll.dll",
            "ntdll.dl",
            "",
        ];
        let mut n = 0;
        for h in heads {
            for s1 in seps {
                for d in dirs {
                    for s2 in seps {
                        for f in files {
                            let p = format!("{h}{s1}{d}{s2}{f}");
                            assert_eq!(ModuleKind::from_path(&p), reference(&p), "{p}");
                            n += 1;
                        }
                    }
                }
            }
        }
        assert!(n > 1000);
    }

    #[test]
    fn lookups_respect_bounds_and_unloads() {
        let mut s = State::new();
        let p = r"\Windows\System32\ntdll.dll";
        s.on_image(&image(Lifecycle::DcStart, 10, 0x7ff0_0000, 0x1000, p));
        s.on_image(&image(
            Lifecycle::Start,
            10,
            0x1000_0000,
            0x2000,
            r"\a\b.dll",
        ));
        let m = &s.process(10).unwrap().modules;
        assert_eq!(m.find(0x7ff0_0000).unwrap().kind, ModuleKind::Ntdll);
        assert_eq!(&*m.find(0x7ff0_0fff).unwrap().name, "ntdll.dll");
        assert!(m.find(0x7ff0_1000).is_none());
        assert!(m.find(0x0fff_ffff).is_none());
        assert_eq!(&*m.find(0x1000_1fff).unwrap().name, "b.dll");
        s.on_image(&image(Lifecycle::End, 10, 0x1000_0000, 0x2000, r"\a\b.dll"));
        assert!(s.process(10).unwrap().modules.find(0x1000_0010).is_none());
        s.on_image(&image(
            Lifecycle::Start,
            10,
            0x7700_0000,
            0x1000,
            r"\Windows\SysWOW64\ntdll.dll",
        ));
        assert!(s.process(10).unwrap().wow64);
        s.on_image(&image(
            Lifecycle::DcStart,
            0,
            0xffff_f800_0000_0000,
            0x10_0000,
            r"\SystemRoot\system32\ntoskrnl.exe",
        ));
        assert_eq!(
            &*s.kernel_modules().find(0xffff_f800_0000_1234).unwrap().name,
            "ntoskrnl.exe"
        );
    }

    #[test]
    fn ended_processes_are_dropped_after_linger_unless_reused() {
        let mut s = State::new();
        let mut p = Process {
            op: Lifecycle::Start,
            unique_process_key: 0,
            process_id: 7,
            parent_id: 1,
            session_id: 1,
            exit_status: 0,
            directory_table_base: 0,
            flags: None,
            user_sid: String::new(),
            image_file_name: "a.exe".into(),
            command_line: "a".into(),
            package_full_name: String::new(),
            application_id: String::new(),
        };
        assert_eq!(s.next_deadline(), u64::MAX);
        s.on_process(&p, 100, 50);
        assert_eq!(s.next_deadline(), u64::MAX);
        p.op = Lifecycle::End;
        s.on_process(&p, 200, 50);
        assert_eq!(s.next_deadline(), 250);
        s.expire(249, 50, |_| false);
        assert!(s.process(7).is_some());
        assert_eq!(s.next_deadline(), 250);
        s.expire(250, 50, |_| true);
        assert!(s.process(7).is_some(), "kept for pending work");
        assert_eq!(s.next_deadline(), 300);
        s.expire(300, 50, |_| false);
        assert!(s.process(7).is_none());
        assert_eq!(s.next_deadline(), u64::MAX);
        // Reuse: the old end must not drop the new process.
        p.op = Lifecycle::Start;
        s.on_process(&p, 300, 50);
        p.op = Lifecycle::End;
        s.on_process(&p, 310, 50);
        p.op = Lifecycle::Start;
        p.image_file_name = "b.exe".into();
        s.on_process(&p, 320, 50);
        s.expire(1000, 50, |_| false);
        assert_eq!(s.process(7).unwrap().image_file_name, "b.exe");
    }
}

#[cfg(test)]
mod module_map_tests {
    use super::*;

    /// [`Xorshift`] as a closure.
    fn xorshift(seed: u64) -> impl FnMut() -> u64 {
        let mut r = crate::testutil::Xorshift(seed);
        move || r.next()
    }

    /// A module of the given range (the rest does not matter to lookups).
    fn module(name: &Arc<str>, base: u64, size: u64) -> Module {
        Module {
            base,
            size,
            name: name.clone(),
            path: name.clone(),
            kind: ModuleKind::Other,
            time_date_stamp: 0,
            system_dll: None,
            image: None,
        }
    }

    /// The tree lookup by definition: greatest base at or below, if it
    /// extends over the address.
    fn reference(mods: &BTreeMap<u64, u64>, addr: u64) -> Option<u64> {
        let (&b, &size) = mods.range(..=addr).next_back()?;
        (addr - b < size).then_some(b)
    }

    /// Random loads (overlapping ones too), unloads and lookups, with the
    /// lookups repeated so that the hit cache answers most of them: every
    /// answer equals the reference lookup.
    #[test]
    fn cached_lookups_equal_tree_lookups() {
        let mut next = xorshift(0x2545_F491_4F6C_DD1D);
        let mut map = ModuleMap::default();
        let mut mods: BTreeMap<u64, u64> = BTreeMap::new();
        let name: Arc<str> = Arc::from("m.dll");
        let (mut found, mut total) = (0, 0);
        for _ in 0..100_000 {
            let r = next();
            match r % 16 {
                0 => {
                    let base = (next() % 64) * 0x1000;
                    let size = 1 + next() % 0x4000;
                    map.insert(module(&name, base, size));
                    mods.insert(base, size);
                }
                1 => {
                    let base = (next() % 64) * 0x1000;
                    assert_eq!(
                        map.remove(base).map(|m| m.base),
                        mods.remove(&base).map(|_| base)
                    );
                }
                _ => {
                    let addr = if r & 0x10 != 0 {
                        0x2_0000 + next() % 0x800
                    } else {
                        next() % 0x5_0000
                    };
                    for _ in 0..3 {
                        let got = map.find(addr).map(|m| m.base);
                        assert_eq!(got, reference(&mods, addr), "addr {addr:#x}");
                        total += 1;
                        found += usize::from(got.is_some());
                    }
                }
            }
            assert_eq!(map.len(), mods.len());
        }
        assert!(
            found > total / 4,
            "{found} of {total} lookups found a module"
        );
        let bases: Vec<u64> = map.iter().map(|m| m.base).collect();
        assert_eq!(bases, mods.keys().copied().collect::<Vec<_>>());
    }

    /// Maps past the size kept in sorted vectors are searched in the tree,
    /// and go back to the vectors when they shrink: the same answers.
    #[test]
    fn big_maps_answer_like_small_ones() {
        let mut next = xorshift(0x9E37_79B9_7F4A_7C15);
        let name: Arc<str> = Arc::from("m.dll");
        let mut map = ModuleMap::default();
        let mut mods: BTreeMap<u64, u64> = BTreeMap::new();
        let check = |map: &ModuleMap, mods: &BTreeMap<u64, u64>, next: &mut dyn FnMut() -> u64| {
            for _ in 0..2000 {
                let addr = next() % 0x300_0000;
                assert_eq!(map.find(addr).map(|m| m.base), reference(mods, addr));
            }
        };
        for round in 0..3 {
            while mods.len() < 1500 {
                let base = (next() % 0x3000) * 0x1000;
                let size = 1 + next() % 0x8000;
                map.insert(module(&name, base, size));
                mods.insert(base, size);
                if mods.len() % 250 == 0 {
                    check(&map, &mods, &mut next);
                }
            }
            assert!(!map.sorted, "round {round}");
            while mods.len() > 100 {
                let base = *mods
                    .keys()
                    .nth((next() % mods.len() as u64) as usize)
                    .unwrap();
                assert!(map.remove(base).is_some());
                mods.remove(&base);
                if mods.len() % 250 == 0 {
                    check(&map, &mods, &mut next);
                }
            }
            assert!(map.sorted, "round {round}");
            check(&map, &mods, &mut next);
        }
    }
}
