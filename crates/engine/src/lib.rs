//! The syscall provenance engine: rebuilds process/module state from kernel
//! events, pairs each PerfInfo SysCallEnter with its StackWalk, and decides a
//! verdict per syscall by the rules of `docs/verdicts.md`.
//!
//! # API (push-based: `analyze` and `live` drive it the same way)
//!
//! ```ignore
//! use sentry_engine::{Engine, EngineConfig, report::{Report, ReportConfig}};
//! let mut engine = Engine::new(EngineConfig { learning: Learning::Deferred, ..Default::default() });
//! // Optional: engine.set_clock(clock) when the logfile header is known out
//! // of band (live sessions). Otherwise the engine picks the clock up from
//! // the EventTrace header event (group 0, opcode 0) in the stream.
//! let mut report = Report::new(ReportConfig::default(), Box::new(std::io::stdout()));
//! for raw in events {                 // sentry_raw::RawEvent, in time order
//!     engine.process(&raw, &mut report);  // decodes with sentry_kernel::decode
//! }
//! let stats = engine.finish(&mut report);  // flushes pending syscalls, settles counts
//! report.settle(&engine);                  // settles open rule-5 groups
//! if !report.evidence_request().is_empty() {
//!     // Evidence dropped to stay within ReportConfig::evidence_budget:
//!     // run the same input again into Report::recovery(cfg, request), then
//!     // report.fill_evidence(recovery.take_recovered(&engine_again)).
//! }
//! report.finish(&engine)?;                 // deduplicated alerts, flush
//! eprint!("{}", report.summary_table());   // per-process table
//! eprint!("{}", sentry_engine::report::stats_text(&stats, wall_secs, report.alert_count()));
//! ```
//!
//! For a live session: `Engine::set_header(header, raw)` (or `set_clock`)
//! once, `EngineConfig { learning: Learning::Online, .. }`, and
//! `ReportConfig { immediate: true, .. }` so that each new alert key is
//! printed when first seen (the aggregated lines follow at `finish`).
//! Call [`Engine::stats`] any time for counters; events must come in time
//! order (per-processor streams merged), as `ProcessTrace` delivers them.
//!
//! * Verdicts come out through a [`VerdictSink`] ([`report::Report`] is one;
//!   tests use closures wrapped in [`FnSink`]). A [`SyscallVerdict`] borrows the
//!   engine's state: format what you need inside the call.
//! * The engine never panics on hostile input; decode errors are counted in
//!   [`EngineStats`] with file offsets.
//! * Memory is bounded: the pending set holds at most `max_pending` entries
//!   (oldest evicted, counted) and ended processes are dropped once the
//!   correlation window has passed.
//! * Service identity (rule 5): with `system_dlls`, by export names; else
//!   from a [`ServiceTable`]. `analyze` runs one pass with
//!   [`Learning::Deferred`]: decisions that need the learned table wait for
//!   its end (settled by [`Engine::finish`] and [`report::Report::finish`]).
//!   With `--per-syscall` it runs a [`Learning::Only`] pass, takes
//!   [`Engine::into_services`], and hands the table to a classifying pass;
//!   `live` uses [`Learning::Online`].
//! * [`Pairing::AnyEvent`] pairs StackWalk events with every kind of parent
//!   (used on real traces, which carry no SysCallEnter); pairs come out
//!   through [`VerdictSink::stack_pair`].
//! * Output formatting (JSON lines, ECS, summary table, statistics) is in
//!   [`report`], shared by `analyze` and `live` (`Report::set_header` gives
//!   ECS `host.os` to alerts printed before `finish`).
//! * The common pair, a SysCallEnter whose very next event is its StackWalk
//!   with the user part, skips the correlator: the syscall is held for one
//!   event and classified from the StackWalk's frames in place. Anything
//!   else hands it to the correlator first; results and counters are the
//!   same either way (`tests/held_pairs.rs`; `EngineStats::held_pairs`
//!   counts the shortcut).
//! * Stack caching: Windows logs a key's frames when it deletes the key
//!   (opcode 35) or at rundown (36), after the references (37/38). A syscall
//!   waiting for a key is parked past the window (still under the cap) and
//!   its process is kept until it is resolved.
//!
//! # Interpretations of docs/verdicts.md
//! * Alerts are `direct` and `indirect`; `kernel_origin`, `no_stack` and
//!   `truncated` are counted and reported per syscall, never alerted.
//! * A stack is complete with its user part (or a kernel part of pid 0/4,
//!   which has no user mode); a kernel part alone waits for the window, then
//!   is `kernel_origin`.
//! * Stub modules are `ntdll.dll`/`win32u.dll` whose path ends in
//!   `\System32\<name>`; a SysWOW64 ntdll marks the process WoW64.
//! * Rule 5 compares export names (`Nt`=`Zw`) when both the stub and the
//!   routine are named by the supplied DLLs, else the learned service.
//! * Rule 7: only a user-mode caller can be unbacked.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use sentry_kernel::KernelEvent;
use sentry_raw::{Clock, EventId, KernelClass, LogfileHeader, RawEvent};

pub mod allowlist;
pub mod classify;
mod completeness;
pub mod correlate;
mod fxhash;
pub mod report;
pub mod state;
pub mod sysdlls;

pub use allowlist::{Allowlist, DEFAULT_ALLOWLIST};
pub use classify::{Outcome, Reason, ServiceTable, Verdict};
pub use completeness::{Completeness, LossGap, UnresolvedCounts};
pub use correlate::{CorrelatorStats, Finish, Parent, ParentHook};
pub use state::{Module, ModuleKind, ModuleMap, ProcessInfo, StateStats};
pub use sysdlls::{SystemDll, SystemDlls};

use classify::Context;
use correlate::Correlator;
use state::State;

/// Which events are parents of StackWalk events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pairing {
    /// Only PerfInfo SysCallEnter (opcode 51): the detector.
    #[default]
    SysCallEnter,
    /// Every non-StackWalk event (correlator checks on real traces).
    AnyEvent,
}

/// How the service identity of return sites is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Learning {
    /// Use [`EngineConfig::services`] as given (analyze's second pass).
    #[default]
    Fixed,
    /// Learn while classifying (live).
    Online,
    /// Learn only: no verdicts are emitted (analyze's first pass).
    Only,
    /// One pass: learn over the whole input while classifying, and leave
    /// each rule-5 decision that depends on the learned service open
    /// ([`SyscallVerdict::service_check`]) until the input ends. Exactly the
    /// verdicts of a [`Learning::Only`] pass followed by a [`Learning::Fixed`]
    /// one: [`Engine::finish`] settles the counts, [`report::Report`] the
    /// alerts and the summary (`analyze`'s default).
    Deferred,
}

/// A rule-5 decision left open by [`Learning::Deferred`]: the syscall's
/// verdict is the one in [`SyscallVerdict`] when the service learned for
/// this return site (over the whole input) is its `SysCallAddress`, else
/// `indirect`/`stub_mismatch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServiceCheck {
    /// The return site: stub module kind and offset of `U` in it.
    pub kind: ModuleKind,
    pub offset: u64,
    /// Allowlist entry that suppresses the `stub_mismatch` alternative.
    pub mismatch_suppressed: Option<usize>,
}

impl ServiceCheck {
    /// True when the learned service of the site differs from `address`
    /// (the rule-5 test of `classify`, on the final table).
    pub fn mismatch(&self, services: &ServiceTable, address: u64) -> bool {
        services
            .service_of(self.kind, self.offset)
            .is_some_and(|s| s != address)
    }

    /// The final verdict, reason and suppression of a syscall whose
    /// decided-if-matching outcome is `(verdict, reason, suppressed)`.
    pub fn settle(
        &self,
        services: &ServiceTable,
        address: u64,
        verdict: Verdict,
        reason: Option<Reason>,
        suppressed: Option<(Verdict, Option<Reason>, usize)>,
    ) -> Settled {
        if self.mismatch(services, address) {
            match self.mismatch_suppressed {
                Some(i) => Settled {
                    verdict: Verdict::Normal,
                    reason: None,
                    suppressed: Some((Verdict::Indirect, Some(Reason::StubMismatch), i)),
                },
                None => Settled {
                    verdict: Verdict::Indirect,
                    reason: Some(Reason::StubMismatch),
                    suppressed: None,
                },
            }
        } else {
            Settled {
                verdict,
                reason,
                suppressed,
            }
        }
    }
}

/// A settled verdict (see [`ServiceCheck::settle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    pub verdict: Verdict,
    pub reason: Option<Reason>,
    pub suppressed: Option<(Verdict, Option<Reason>, usize)>,
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How long (trace time) a syscall waits for its stack parts.
    pub window_ms: u64,
    /// Hard cap on pending entries.
    pub max_pending: usize,
    pub pairing: Pairing,
    pub learning: Learning,
    /// Learned service identity (from a first pass).
    pub services: ServiceTable,
    pub system_dlls: Option<Arc<SystemDlls>>,
    pub allowlist: Allowlist,
    /// Classify a SysCallEnter with the StackWalk right after it without
    /// the correlator (see [`Engine::process`]). The results are the same
    /// either way; `false` exists to check that.
    pub hold_syscalls: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            window_ms: 500,
            max_pending: 1 << 16,
            pairing: Pairing::SysCallEnter,
            learning: Learning::Fixed,
            services: ServiceTable::new(),
            system_dlls: None,
            allowlist: Allowlist::default(),
            hold_syscalls: true,
        }
    }
}

/// Describes addresses as `module+0xoffset`, or `module!Export+0xoffset`
/// inside a supplied system DLL, or a bare hex address when unbacked.
#[derive(Clone, Copy)]
pub struct Resolver<'a> {
    pub modules: Option<&'a ModuleMap>,
    pub kernel: &'a ModuleMap,
    pub kernel_boundary: u64,
    pub system_dlls: Option<&'a SystemDlls>,
}

impl<'a> Resolver<'a> {
    /// Addresses as seen by `process` (user mode) and the kernel.
    fn of(
        process: Option<&'a ProcessInfo>,
        state: &'a State,
        kernel_boundary: u64,
        system_dlls: Option<&'a SystemDlls>,
    ) -> Resolver<'a> {
        Resolver {
            modules: process.map(|p| &p.modules),
            kernel: state.kernel_modules(),
            kernel_boundary,
            system_dlls,
        }
    }

    pub fn module_of(&self, addr: u64) -> Option<&'a Module> {
        if addr >= self.kernel_boundary {
            self.kernel.find(addr)
        } else {
            self.modules?.find(addr)
        }
    }

    pub fn describe(&self, addr: u64) -> String {
        match self.module_of(addr) {
            Some(m) => describe_in(&m.name, m.base, m.system_dll, self.system_dlls, addr),
            None => {
                let mut s = String::with_capacity(18);
                push_hex(&mut s, addr);
                s
            }
        }
    }
}

/// `addr` in the module `name` loaded at `base`: `name+0xoffset`, or
/// `name!Export+0xoffset` inside a supplied system DLL.
pub(crate) fn describe_in(
    name: &str,
    base: u64,
    system_dll: Option<usize>,
    system_dlls: Option<&SystemDlls>,
    addr: u64,
) -> String {
    let off = addr.wrapping_sub(base);
    if let (Some(i), Some(sys)) = (system_dll, system_dlls) {
        if let Some((export, d)) = sys
            .dlls
            .get(i)
            .and_then(|d| d.export_near(u32::try_from(off).ok()?))
        {
            return format!("{name}!{export}+{d:#x}");
        }
    }
    // Evidence is built for every new alert group: no `format!` here.
    let mut s = String::with_capacity(name.len() + 19);
    s.push_str(name);
    s.push('+');
    push_hex(&mut s, off);
    s
}

/// Appends `v` as `{:#x}` would.
pub(crate) fn push_hex(s: &mut String, v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    s.push_str("0x");
    let n = (64 - v.leading_zeros()).div_ceil(4).max(1);
    for i in (0..n).rev() {
        s.push(char::from(DIGITS[((v >> (4 * i)) & 0xF) as usize]));
    }
}

/// One syscall and its verdict, borrowing the engine's state.
pub struct SyscallVerdict<'a> {
    /// Raw SysCallEnter timestamp.
    pub timestamp: u64,
    pub processor: u16,
    /// `SysCallAddress`: the kernel service routine.
    pub service_address: u64,
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    /// Final verdict (an allowlisted alert is `Normal`).
    pub verdict: Verdict,
    pub reason: Option<Reason>,
    /// Set when the allowlist suppressed an alert: (verdict, reason, entry index).
    pub suppressed: Option<(Verdict, Option<Reason>, usize)>,
    /// Kernel part then user part, innermost first (empty if no stack).
    pub stack: &'a [u64],
    pub outcome: &'a Outcome<'a>,
    pub process: Option<&'a ProcessInfo>,
    pub finish: Finish,
    pub resolver: Resolver<'a>,
    /// [`Learning::Deferred`] only: rule 5 is still open; `verdict`,
    /// `reason` and `suppressed` hold the outcome if the stub matches.
    pub service_check: Option<ServiceCheck>,
}

impl SyscallVerdict<'_> {
    /// The first user frame `U`.
    pub fn first_user_frame(&self) -> Option<u64> {
        self.outcome.user_index.map(|i| self.stack[i])
    }

    /// The caller frame `C`.
    pub fn caller_frame(&self) -> Option<u64> {
        self.outcome
            .user_index
            .and_then(|i| self.stack.get(i + 1).copied())
    }
}

/// A stack paired with a non-syscall parent ([`Pairing::AnyEvent`]).
pub struct StackPair<'a> {
    pub timestamp: u64,
    pub parent: ParentHook,
    pub pid: u32,
    pub tid: u32,
    pub stack: &'a [u64],
    /// StackWalk events merged into this stack.
    pub fragments: u32,
    pub process: Option<&'a ProcessInfo>,
    pub resolver: Resolver<'a>,
}

/// Receives verdicts.
pub trait VerdictSink {
    fn verdict(&mut self, v: &SyscallVerdict<'_>);
    /// A hint, before classification: the next verdict is likely of
    /// process `pid` at call site `call_site` (its first user frame).
    fn prefetch(&mut self, _pid: u32, _call_site: u64) {}
    /// Only in [`Pairing::AnyEvent`] mode.
    fn stack_pair(&mut self, _p: &StackPair<'_>) {}
}

/// Adapts a closure to a [`VerdictSink`].
pub struct FnSink<F>(pub F);

impl<F: FnMut(&SyscallVerdict<'_>)> VerdictSink for FnSink<F> {
    fn verdict(&mut self, v: &SyscallVerdict<'_>) {
        (self.0)(v)
    }
}

/// A sink that drops everything (learning pass).
pub struct NullSink;

impl VerdictSink for NullSink {
    fn verdict(&mut self, _v: &SyscallVerdict<'_>) {}
}

/// Counts per verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerdictCounts {
    pub normal: u64,
    pub direct: u64,
    pub indirect: u64,
    pub kernel_origin: u64,
    pub no_stack: u64,
    pub truncated: u64,
    pub unresolved: u64,
}

impl VerdictCounts {
    pub fn add(&mut self, v: Verdict) {
        *self.get_mut(v) += 1;
    }

    pub fn add_n(&mut self, v: Verdict, n: u64) {
        *self.get_mut(v) += n;
    }

    pub fn get(&self, v: Verdict) -> u64 {
        match v {
            Verdict::Normal => self.normal,
            Verdict::Direct => self.direct,
            Verdict::Indirect => self.indirect,
            Verdict::KernelOrigin => self.kernel_origin,
            Verdict::NoStack => self.no_stack,
            Verdict::Truncated => self.truncated,
            Verdict::Unresolved => self.unresolved,
        }
    }

    fn get_mut(&mut self, v: Verdict) -> &mut u64 {
        match v {
            Verdict::Normal => &mut self.normal,
            Verdict::Direct => &mut self.direct,
            Verdict::Indirect => &mut self.indirect,
            Verdict::KernelOrigin => &mut self.kernel_origin,
            Verdict::NoStack => &mut self.no_stack,
            Verdict::Truncated => &mut self.truncated,
            Verdict::Unresolved => &mut self.unresolved,
        }
    }

    pub fn alerts(&self) -> u64 {
        self.direct + self.indirect
    }
}

/// A decode error kept for the statistics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DecodeErrorSample {
    pub offset: u64,
    pub message: String,
}

/// Engine statistics, returned by [`Engine::finish`] (and readable any time
/// through [`Engine::stats`]).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EngineStats {
    pub events: u64,
    /// Syscalls classified straight from the StackWalk that came right
    /// after them, without the correlator (the common case).
    pub held_pairs: u64,
    pub kernel_events_decoded: u64,
    pub decode_errors: u64,
    /// The first decode errors, with file offsets.
    pub decode_error_samples: Vec<DecodeErrorSample>,
    pub syscalls: u64,
    pub verdicts: VerdictCounts,
    pub suppressed: u64,
    pub correlator: CorrelatorStats,
    pub state: StateStats,
    /// Generalised pairing: matched stacks by parent hook.
    pub parent_hooks: BTreeMap<String, u64>,
    /// `EventsLost` / `BuffersLost` from the logfile header.
    pub events_lost: Option<u32>,
    pub buffers_lost: Option<u32>,
    pub first_timestamp: Option<u64>,
    pub last_timestamp: Option<u64>,
    pub pending_now: u64,
    pub learned_return_sites: u64,
    /// [`Learning::Deferred`]: syscalls whose rule-5 decision waited for
    /// the end of the input (settled in `verdicts` by [`Engine::finish`]).
    pub service_checks_deferred: u64,
    /// Syscalls decided as if their stub matched because the tallies were
    /// full (only a hostile trace gets there).
    pub service_checks_settled_early: u64,
    /// `unresolved` syscalls by reason (counted when decided; one whose
    /// rule-5 decision was still open may have settled as `stub_mismatch`).
    pub unresolved: UnresolvedCounts,
    /// Where events may be missing (raw timestamps).
    pub loss_gaps: Vec<LossGap>,
    /// Events may be missing somewhere (gaps, or loss counters without a
    /// place in time): alerts carry `trace_incomplete`.
    pub trace_incomplete: bool,
}

/// Distinct (return site, routine, outcome) tallies kept at most.
const MAX_TALLIES: usize = 1 << 20;

/// [`Learning::Deferred`]: what was seen at each return site (stub module
/// kind and offset) with each `SysCallAddress` and outcome, with its count:
/// the observations the service table is built from at the end, and the
/// counts of the syscalls whose rule-5 decision waits for it. One flat map,
/// so a syscall costs one lookup and touches one bucket.
type SiteTallies = std::collections::HashMap<TallyKey, u64, fxhash::FxBuildHasher>;

/// One return site, one `SysCallAddress`, one outcome, in three words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct TallyKey {
    offset: u64,
    address: u64,
    /// Module kind, then the open outcome ([`TallyKey::open`]).
    packed: u64,
}

impl TallyKey {
    /// `open`: `None` when decided without the table (both names known),
    /// else (verdict if the stub matches, its allowlist entry, the
    /// `stub_mismatch` alternative's entry). Entries are below
    /// [`Allowlist::MAX_ENTRIES`], so each fits in 24 bits.
    fn new(
        kind: ModuleKind,
        offset: u64,
        address: u64,
        open: Option<(Verdict, Option<usize>, Option<usize>)>,
    ) -> TallyKey {
        let entry = |i: Option<usize>| i.map_or(0, |i| (i as u64 + 1) & 0xFF_FFFF);
        let open = open.map_or(0, |(v, e, m)| {
            1 | (v as u64) << 1 | entry(e) << 8 | entry(m) << 32
        });
        TallyKey {
            offset,
            address,
            packed: kind as u64 | open << 8,
        }
    }

    fn kind(&self) -> ModuleKind {
        const KINDS: [ModuleKind; 4] = [
            ModuleKind::Ntdll,
            ModuleKind::Win32u,
            ModuleKind::NtdllWow64,
            ModuleKind::Other,
        ];
        KINDS[(self.packed & 3) as usize]
    }

    fn open(&self) -> Option<(Verdict, Option<usize>, Option<usize>)> {
        let o = self.packed >> 8;
        if o & 1 == 0 {
            return None;
        }
        let entry = |x: u64| (x & 0xFF_FFFF).checked_sub(1).map(|i| i as usize);
        Some((
            Verdict::ALL[((o >> 1) & 7) as usize % Verdict::ALL.len()],
            entry(o >> 8),
            entry(o >> 32),
        ))
    }
}

const MAX_ERROR_SAMPLES: usize = 32;

/// What [`Engine::emit_syscall`] needs of a paired syscall besides its stack.
#[derive(Debug, Clone, Copy)]
struct Pair {
    ts: u64,
    parent_processor: u16,
    address: u64,
    has_stack: bool,
    pid: u32,
    tid: u32,
}

/// Which vector an emitted stack was taken from (it is given back).
#[derive(Debug, Clone, Copy)]
enum StackFrom {
    User,
    Kernel,
    Buffer,
}

/// A SysCallEnter kept outside the correlator for one event.
#[derive(Debug, Clone, Copy)]
struct Held {
    ts: u64,
    processor: u16,
    address: u64,
}

/// PerfInfo SysCallExit (opcode 52).
#[inline]
fn is_sys_call_exit(id: EventId) -> bool {
    matches!(
        id,
        EventId::Kernel {
            group: KernelClass::GROUP_PERFINFO,
            opcode: 52
        }
    )
}

/// Events a [`Learning::Only`] pass does not decode: nothing it learns
/// depends on them (threads only map tids to pids for reports). Their
/// decode counts and errors are then not in that pass's statistics, which
/// `analyze` discards.
#[inline]
fn skipped_when_learning(id: EventId) -> bool {
    matches!(
        id,
        EventId::Kernel {
            group: KernelClass::GROUP_THREAD,
            ..
        }
    )
}

/// The engine. See the crate documentation.
pub struct Engine {
    pairing: Pairing,
    learning: Learning,
    window_ms: u64,
    state: State,
    corr: Correlator,
    services: ServiceTable,
    system_dlls: Option<Arc<SystemDlls>>,
    allowlist: Allowlist,
    clock: Option<Clock>,
    header: Option<LogfileHeader>,
    kernel_boundary: u64,
    pointer_size: u8,
    stack_buf: Vec<u64>,
    now: u64,
    stats: EngineStats,
    parent_hooks: BTreeMap<ParentHook, u64>,
    tallies: SiteTallies,
    /// The last SysCallEnter, not yet given to the correlator: nearly
    /// always the next event is its whole stack, and the pair is then
    /// classified at once (see [`Engine::process`]).
    held: Option<Held>,
    hold_syscalls: bool,
    /// An always-empty table: classification consults it in
    /// [`Learning::Deferred`] mode, leaving rule 5 to the final one.
    no_services: ServiceTable,
    /// What the engine may have missed (see [`Completeness`]).
    completeness: Completeness,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Engine {
        let mut state = State::new();
        if let Some(sys) = &cfg.system_dlls {
            state.set_system_dlls(Arc::clone(sys));
        }
        let mut e = Engine {
            pairing: cfg.pairing,
            learning: cfg.learning,
            window_ms: cfg.window_ms,
            state,
            corr: Correlator::new(0, cfg.max_pending),
            services: cfg.services,
            system_dlls: cfg.system_dlls,
            allowlist: cfg.allowlist,
            clock: None,
            header: None,
            kernel_boundary: 0xFFFF_8000_0000_0000,
            pointer_size: 8,
            stack_buf: Vec::with_capacity(256),
            now: 0,
            stats: EngineStats::default(),
            parent_hooks: BTreeMap::new(),
            tallies: SiteTallies::default(),
            held: None,
            hold_syscalls: cfg.hold_syscalls,
            no_services: ServiceTable::new(),
            completeness: Completeness::default(),
        };
        e.update_window();
        e.corr.set_count_co_parents(e.pairing == Pairing::AnyEvent);
        e
    }

    fn ticks_per_second(&self) -> u64 {
        self.clock.map_or(10_000_000, |c| c.ticks_per_second.max(1))
    }

    fn update_window(&mut self) {
        let t = (u128::from(self.window_ms) * u128::from(self.ticks_per_second()) / 1000)
            .min(u128::from(u64::MAX / 4)) as u64;
        self.corr.set_window_ticks(t);
    }

    /// Sets the clock (ticks/s for the window, UTC conversion for reports).
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = Some(clock);
        self.update_window();
    }

    /// Sets the logfile header (live sessions get it out of band).
    pub fn set_header(&mut self, header: LogfileHeader, header_event_raw: u64) {
        self.apply_header(header, header_event_raw);
    }

    fn apply_header(&mut self, h: LogfileHeader, raw: u64) {
        if self.clock.is_none() {
            self.clock = Some(Clock::new(&h, raw));
            self.update_window();
        }
        self.set_pointer_size(h.pointer_size as u8);
        self.stats.events_lost = Some(h.events_lost);
        self.stats.buffers_lost = Some(h.buffers_lost);
        if h.events_lost > 0 || h.buffers_lost > 0 {
            self.completeness.note_unplaced_loss();
        }
        self.header = Some(h);
    }

    fn set_pointer_size(&mut self, ps: u8) {
        if ps != self.pointer_size && (ps == 4 || ps == 8) {
            self.pointer_size = ps;
            self.kernel_boundary = if ps == 4 {
                0x8000_0000
            } else {
                0xFFFF_8000_0000_0000
            };
            self.corr.set_kernel_boundary(self.kernel_boundary);
        }
    }

    pub fn clock(&self) -> Option<&Clock> {
        self.clock.as_ref()
    }

    pub fn header(&self) -> Option<&LogfileHeader> {
        self.header.as_ref()
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Events may be missing from raw timestamp `from` to `to` (`u64::MAX`:
    /// to the end): a reader's damage, or a live session's loss counters
    /// growing between two reads. Call it before the syscalls it concerns
    /// are classified; an alert of a process whose module map such a gap
    /// may have changed becomes `unresolved`/`events_lost`. `cause` is
    /// reported as given (`buffers_missing`, `buffer_damaged`,
    /// `session_loss`).
    pub fn note_events_missing(&mut self, from: u64, to: u64, cause: &str) {
        self.completeness.note_gap(from, to, cause);
    }

    /// Events were lost at no known time (a session's counters without a
    /// time, a header's `EventsLost`): alerts say the trace is incomplete.
    pub fn note_loss_without_time(&mut self) {
        self.completeness.note_unplaced_loss();
    }

    /// What the engine may have missed.
    pub fn completeness(&self) -> &Completeness {
        &self.completeness
    }

    pub fn services(&self) -> &ServiceTable {
        &self.services
    }

    /// The learned service table (after a [`Learning::Only`] pass).
    pub fn into_services(self) -> ServiceTable {
        self.services
    }

    pub fn allowlist(&self) -> &Allowlist {
        &self.allowlist
    }

    pub fn system_dlls(&self) -> Option<&SystemDlls> {
        self.system_dlls.as_deref()
    }

    pub fn kernel_boundary(&self) -> u64 {
        self.kernel_boundary
    }

    /// Pending entries in the correlator now.
    pub fn pending(&self) -> usize {
        self.corr.pending() + usize::from(self.held.is_some())
    }

    /// Gives the held syscall to the correlator.
    fn release_held(&mut self) {
        if let Some(h) = self.held.take() {
            self.corr
                .add_parent(h.ts, h.processor, Parent::SysCall { address: h.address });
        }
    }

    /// Statistics so far.
    pub fn stats(&self) -> EngineStats {
        let mut s = self.stats.clone();
        s.correlator = self.corr.stats.clone();
        s.state = self.state.stats.clone();
        s.pending_now = self.pending() as u64;
        s.learned_return_sites = self.services.len() as u64;
        s.loss_gaps = self.completeness.gaps().to_vec();
        s.trace_incomplete = self.completeness.incomplete();
        s.parent_hooks = self
            .parent_hooks
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        s
    }

    /// Feeds one event (in time order).
    ///
    /// The common pair, a SysCallEnter whose next event is its StackWalk
    /// holding the user part, never enters the correlator: the syscall is
    /// held for one event ([`Correlator::hold_parent`] says when that is
    /// exact), then classified straight from the StackWalk. Any other next
    /// event first gives the held syscall to the correlator, as if it had
    /// been added when it came; the verdicts, their order and every counter
    /// are the same either way.
    pub fn process(&mut self, ev: &RawEvent<'_>, sink: &mut dyn VerdictSink) {
        if let Some(h) = self.held {
            if self.complete_held(h, ev, sink) {
                self.held = None;
                return;
            }
            self.release_held();
        }
        self.advance(ev);
        if self.pairing == Pairing::AnyEvent {
            let hook = match ev.id {
                EventId::Kernel { group, .. } if group == KernelClass::GROUP_STACKWALK => None,
                EventId::Kernel { group, opcode } => Some(ParentHook::Kernel(
                    u16::from(group) << 8 | u16::from(opcode),
                )),
                EventId::Classic { .. } => Some(ParentHook::Classic),
                EventId::Manifest { .. } => Some(ParentHook::Manifest),
            };
            if let Some(h) = hook {
                self.corr
                    .add_parent(ev.timestamp, ev.processor, Parent::Other(h));
            }
        }
        // SysCallExit carries no address and pairs with nothing: a third of
        // a syscall trace's events, not decoded (nor counted as decoded).
        if is_sys_call_exit(ev.id)
            || (self.learning == Learning::Only && skipped_when_learning(ev.id))
        {
            self.drain(sink);
            return;
        }
        if let Some(s) = sentry_kernel::sys_call_enter(ev) {
            self.stats.kernel_events_decoded += 1;
            if self.hold_syscalls
                && self.pairing == Pairing::SysCallEnter
                && self.corr.hold_parent(ev.timestamp)
            {
                self.stats.syscalls += 1;
                self.held = Some(Held {
                    ts: ev.timestamp,
                    processor: ev.processor,
                    address: s.sys_call_address,
                });
            } else {
                self.on_kernel_event(ev, KernelEvent::SysCallEnter(s));
            }
            self.drain(sink);
            return;
        }
        match sentry_kernel::decode(ev) {
            Ok(Some(k)) => {
                self.stats.kernel_events_decoded += 1;
                self.on_kernel_event(ev, k);
            }
            Ok(None) => {}
            Err(e) => {
                self.stats.decode_errors += 1;
                if self.stats.decode_error_samples.len() < MAX_ERROR_SAMPLES {
                    self.stats.decode_error_samples.push(DecodeErrorSample {
                        offset: e.offset,
                        message: e.to_string(),
                    });
                }
            }
        }
        self.drain(sink);
    }

    /// What every event does first: counts, the clock, expiry.
    #[inline]
    fn advance(&mut self, ev: &RawEvent<'_>) {
        self.stats.events += 1;
        if self.stats.first_timestamp.is_none() && ev.timestamp != 0 {
            self.stats.first_timestamp = Some(ev.timestamp);
        }
        if ev.pointer_size != self.pointer_size {
            self.set_pointer_size(ev.pointer_size);
        }
        if ev.timestamp > self.now {
            self.now = ev.timestamp;
            self.stats.last_timestamp = Some(ev.timestamp);
            self.corr.expire(self.now);
            if self.state.next_deadline() <= self.now {
                let linger = self.corr.window_ticks().saturating_mul(2);
                let corr = &self.corr;
                self.state
                    .expire(self.now, linger, |pid| corr.waits_for_keys(pid));
            }
        }
    }

    /// `ev` is the StackWalk of the held syscall `h` with the user part
    /// (so the correlator would complete `h` with it at once): processes
    /// `ev` and emits the syscall; `false` (nothing done) otherwise.
    #[inline]
    fn complete_held(&mut self, h: Held, ev: &RawEvent<'_>, sink: &mut dyn VerdictSink) -> bool {
        if ev.pointer_size != self.pointer_size
            // The held entry would expire at this event.
            || h.ts.saturating_add(self.corr.window_ticks()) < ev.timestamp.max(self.now)
        {
            return false;
        }
        let Some(sw) = sentry_kernel::stack_walk(ev) else {
            return false;
        };
        if sw.event_timestamp != h.ts || !self.corr.is_user_part(&sw.frames) {
            return false;
        }
        self.advance(ev);
        self.stats.kernel_events_decoded += 1;
        // What this event's expiry finalised goes first, as it would.
        self.drain(sink);
        self.corr.count_held_match();
        self.stats.held_pairs += 1;
        let pair = Pair {
            ts: h.ts,
            parent_processor: h.processor,
            address: h.address,
            has_stack: true,
            pid: sw.stack_process,
            tid: sw.stack_thread,
        };
        // Read in place from the event where the layout allows (no copy).
        if let Some(stack) = correlate::frames_in_place(&sw.frames) {
            self.emit_syscall(pair, stack, Finish::Complete, sink);
        } else {
            let mut stack = std::mem::take(&mut self.stack_buf);
            stack.clear();
            correlate::push_frames(&mut stack, &sw.frames);
            self.emit_syscall(pair, &stack, Finish::Complete, sink);
            self.stack_buf = stack;
        }
        true
    }

    /// Applies one decoded kernel event (exposed for tests and for callers
    /// that decode themselves); call [`Engine::drain`] afterwards.
    pub fn on_kernel_event(&mut self, ev: &RawEvent<'_>, k: KernelEvent<'_>) {
        self.release_held();
        match k {
            KernelEvent::SysCallEnter(s) => {
                self.stats.syscalls += 1;
                if self.pairing == Pairing::SysCallEnter {
                    self.corr.add_parent(
                        ev.timestamp,
                        ev.processor,
                        Parent::SysCall {
                            address: s.sys_call_address,
                        },
                    );
                }
            }
            KernelEvent::SysCallExit(_) => {}
            KernelEvent::StackWalk(sw) => {
                self.corr.add_stack(
                    sw.event_timestamp,
                    ev.processor,
                    sw.stack_process,
                    sw.stack_thread,
                    &sw.frames,
                );
            }
            KernelEvent::StackKeyDefinition(d) => self.corr.define_key(&d),
            KernelEvent::StackKeyReference(r) => self.corr.add_key_reference(&r, ev.processor),
            KernelEvent::Process(p) => {
                let linger = self.corr.window_ticks().saturating_mul(2);
                self.state.on_process(&p, ev.timestamp, linger);
            }
            KernelEvent::Thread(t) => self.state.on_thread(&t),
            KernelEvent::Image(i) => self.state.on_image(&i),
            KernelEvent::EventTraceHeader(h) => self.apply_header(*h, ev.timestamp),
        }
    }

    /// Emits every finalised entry.
    #[inline]
    pub fn drain(&mut self, sink: &mut dyn VerdictSink) {
        // Most events finalise nothing: no call then.
        if self.corr.has_ready() {
            self.drain_ready(sink);
        }
    }

    #[inline(never)]
    fn drain_ready(&mut self, sink: &mut dyn VerdictSink) {
        while let Some((slot, finish)) = self.corr.pop_ready() {
            self.emit(slot, finish, sink);
            self.corr.release(slot);
        }
    }

    fn emit(&mut self, slot: u32, finish: Finish, sink: &mut dyn VerdictSink) {
        let e = self.corr.entry(slot);
        let Some(parent) = e.parent else {
            return;
        };
        let has_stack = e.has_stack();
        let (ts, pid, tid, fragments) = (e.ts, e.pid, e.tid, e.fragments);
        let parent_processor = e.parent_processor;
        // The full stack: the kernel part then the user part, owned for the
        // call and given back. Most stacks come in one event (one part).
        let e = self.corr.entry_mut(slot);
        let (mut stack, from) = if e.kernel.is_empty() {
            (std::mem::take(&mut e.user), StackFrom::User)
        } else if e.user.is_empty() {
            (std::mem::take(&mut e.kernel), StackFrom::Kernel)
        } else {
            let mut b = std::mem::take(&mut self.stack_buf);
            b.clear();
            b.extend_from_slice(&e.kernel);
            b.extend_from_slice(&e.user);
            (b, StackFrom::Buffer)
        };
        match parent {
            Parent::SysCall { address } => {
                let pair = Pair {
                    ts,
                    parent_processor,
                    address,
                    has_stack,
                    pid,
                    tid,
                };
                self.emit_syscall(pair, &stack, finish, sink);
            }
            Parent::Other(hook) if has_stack => {
                let process = self.state.process(pid);
                let resolver = Resolver::of(
                    process,
                    &self.state,
                    self.kernel_boundary,
                    self.system_dlls.as_deref(),
                );
                *self.parent_hooks.entry(hook).or_insert(0) += u64::from(fragments);
                sink.stack_pair(&StackPair {
                    timestamp: ts,
                    parent: hook,
                    pid,
                    tid,
                    stack: &stack,
                    fragments,
                    process,
                    resolver,
                });
            }
            Parent::Other(_) => {}
        }
        let e = self.corr.entry_mut(slot);
        match from {
            StackFrom::User => e.user = stack,
            StackFrom::Kernel => e.kernel = stack,
            StackFrom::Buffer => {
                stack.clear();
                self.stack_buf = stack;
            }
        }
    }

    /// Classifies one syscall (its stack: kernel part then user part,
    /// innermost first; ignored without `has_stack`) and hands the verdict
    /// to `sink`.
    fn emit_syscall(
        &mut self,
        pair: Pair,
        stack_all: &[u64],
        finish: Finish,
        sink: &mut dyn VerdictSink,
    ) {
        let Pair {
            ts,
            parent_processor,
            address,
            has_stack,
            pid,
            tid,
        } = pair;
        let process = if has_stack {
            self.state.process(pid)
        } else {
            None
        };
        let resolver = Resolver::of(
            process,
            &self.state,
            self.kernel_boundary,
            self.system_dlls.as_deref(),
        );
        let stack = has_stack.then_some(stack_all);
        if matches!(self.learning, Learning::Online | Learning::Only) {
            if let Some(s) = stack {
                classify::learn_from(
                    process,
                    s,
                    self.kernel_boundary,
                    self.system_dlls.as_deref(),
                    address,
                    &mut self.services,
                );
            }
            if self.learning == Learning::Only {
                return;
            }
        }
        if let Some(s) = stack {
            // The sink's per-call-site state is a large random-access table:
            // start that lookup now, so it overlaps the classification.
            if let Some(&u) = s.iter().find(|&&a| a < self.kernel_boundary) {
                sink.prefetch(pid, u);
            }
        }
        let deferred = self.learning == Learning::Deferred;
        let ctx = Context {
            process,
            kernel: self.state.kernel_modules(),
            kernel_boundary: self.kernel_boundary,
            system_dlls: self.system_dlls.as_deref(),
            services: if deferred {
                &self.no_services
            } else {
                &self.services
            },
        };
        let outcome = classify::classify(&ctx, stack, address);
        let u = outcome.user_index.map_or(0, |i| stack_all[i]);
        // Deferred learning: every return-site observation is counted (as
        // `learn_from` does), and a rule-5 decision that needs the learned
        // service waits for the whole input.
        let mut service_check = None;
        let mut observed = None;
        if deferred && outcome.at_return_site {
            if let Some(m) = outcome.user_module {
                let offset = u - m.base;
                observed = Some((m.kind, offset));
                if outcome.stub_name.is_none() || outcome.service_name.is_none() {
                    service_check = Some(ServiceCheck {
                        kind: m.kind,
                        offset,
                        mismatch_suppressed: None,
                    });
                }
            }
        }
        let mut verdict = outcome.verdict;
        let mut reason = outcome.reason;
        if verdict.is_alert() {
            if let Some(r) = self.completeness.unresolved(&outcome, process, ts) {
                verdict = Verdict::Unresolved;
                reason = Some(r);
                self.stats.unresolved.add(r);
            }
        }
        let mut suppressed = None;
        if !self.allowlist.is_empty() {
            let mut facts = allowlist::AlertFacts {
                process: process.map_or("", |p| p.image_file_name.as_str()),
                module: outcome.user_module.map(|m| &*m.name),
                offset: outcome.user_module.map_or(u, |m| u - m.base),
                caller_module: outcome.caller_module.map(|m| &*m.name),
                verdict,
                reason,
            };
            if verdict.is_alert() {
                // An open rule-5 decision counts its suppression when it
                // settles (the other alternative may be the one reported).
                let hit = if service_check.is_some() {
                    self.allowlist.matching(&facts)
                } else {
                    self.allowlist.check(&facts)
                };
                if let Some(i) = hit {
                    suppressed = Some((verdict, reason, i));
                    verdict = Verdict::Normal;
                    reason = None;
                }
            }
            if let Some(c) = &mut service_check {
                facts.verdict = Verdict::Indirect;
                facts.reason = Some(Reason::StubMismatch);
                c.mismatch_suppressed = self.allowlist.matching(&facts);
            }
        }
        if let Some((kind, offset)) = observed {
            let open =
                service_check.map(|c| (verdict, suppressed.map(|s| s.2), c.mismatch_suppressed));
            let key = TallyKey::new(kind, offset, address, open);
            let full = self.tallies.len() >= MAX_TALLIES;
            match self.tallies.get_mut(&key) {
                Some(n) => *n += 1,
                None if !full => {
                    self.tallies.insert(key, 1);
                }
                None => {
                    // Hostile input (return sites x routines without end):
                    // bounded memory first. Not learned, decided as if the
                    // stub matched, and counted.
                    service_check = None;
                    self.stats.service_checks_settled_early += 1;
                    if let Some((_, _, i)) = suppressed {
                        self.allowlist.count(i, 1);
                    }
                }
            }
        }
        match service_check {
            Some(_) => self.stats.service_checks_deferred += 1,
            None => {
                if suppressed.is_some() {
                    self.stats.suppressed += 1;
                }
                self.stats.verdicts.add(verdict);
            }
        }
        let v = SyscallVerdict {
            timestamp: ts,
            processor: parent_processor,
            service_address: address,
            pid: has_stack.then_some(pid),
            tid: has_stack.then_some(tid),
            verdict,
            reason,
            suppressed,
            stack: stack.unwrap_or(&[]),
            outcome: &outcome,
            process,
            finish,
            resolver,
            service_check,
        };
        sink.verdict(&v);
    }

    /// Flushes every pending entry and returns the statistics.
    pub fn finish(&mut self, sink: &mut dyn VerdictSink) -> EngineStats {
        self.release_held();
        self.corr.flush();
        self.drain(sink);
        self.settle_deferred();
        self.stats()
    }

    /// [`Learning::Deferred`]: the service table is final; settles the
    /// counts of the syscalls whose rule-5 decision waited for it.
    fn settle_deferred(&mut self) {
        let tallies = std::mem::take(&mut self.tallies);
        for (t, &n) in &tallies {
            self.services.record_n(t.kind(), t.offset, t.address, n);
        }
        for (t, n) in tallies {
            let (kind, offset, address) = (t.kind(), t.offset, t.address);
            let Some((verdict, entry, mismatch_suppressed)) = t.open() else {
                continue;
            };
            let check = ServiceCheck {
                kind,
                offset,
                mismatch_suppressed,
            };
            // Only the suppression's presence matters for the counts.
            let suppressed = entry.map(|i| (verdict, None, i));
            let s = check.settle(&self.services, address, verdict, None, suppressed);
            self.stats.verdicts.add_n(s.verdict, n);
            if let Some((_, _, i)) = s.suppressed {
                self.stats.suppressed += n;
                self.allowlist.count(i, n);
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod testutil;

#[cfg(test)]
mod hex_tests {
    #[test]
    fn push_hex_matches_format() {
        for v in [0u64, 1, 0xf, 0x10, 0x9d1f4, 0xffff_f803_1234_5678, u64::MAX] {
            let mut s = String::new();
            super::push_hex(&mut s, v);
            assert_eq!(s, format!("{v:#x}"));
        }
    }
}

#[cfg(test)]
mod tally_key_tests {
    use super::*;

    /// Every field survives the packing, and different outcomes stay
    /// different keys.
    #[test]
    fn tally_key_round_trips() {
        let kinds = [
            ModuleKind::Ntdll,
            ModuleKind::Win32u,
            ModuleKind::NtdllWow64,
            ModuleKind::Other,
        ];
        let entries = [None, Some(0), Some(7), Some(Allowlist::MAX_ENTRIES - 1)];
        let (mut outcomes, mut keys) = (Vec::new(), std::collections::HashSet::new());
        for kind in kinds {
            for v in Verdict::ALL {
                for e in entries {
                    for m in entries {
                        outcomes.push((kind, Some((v, e, m))));
                    }
                }
            }
            outcomes.push((kind, None));
        }
        for &(kind, open) in &outcomes {
            let k = TallyKey::new(kind, 0x1234, 0xffff_f800_0000_1000, open);
            assert_eq!(k.kind(), kind);
            assert_eq!(k.open(), open);
            assert_eq!((k.offset, k.address), (0x1234, 0xffff_f800_0000_1000));
            keys.insert(k);
        }
        assert_eq!(keys.len(), outcomes.len());
    }
}
