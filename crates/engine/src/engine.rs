//! The [`Engine`]: one event in, state updated, calls with a stack handed
//! to the classifier, verdicts out through a [`VerdictSink`]. Its notes
//! (sessions, sinks, bounds, rule 5, held pairs, stack caching, how the
//! rules are read) are on [`Engine`] itself.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use sentry_kernel::KernelEvent;
use sentry_raw::{Clock, EventId, KernelClass, LogfileHeader, RawEvent};

use crate::allowlist::Allowlist;
use crate::classify::{ServiceTable, SiteTallies};
use crate::completeness::Completeness;
use crate::config::{EngineConfig, Learning, Pairing};
use crate::correlate::{Correlator, Parent, ParentHook};
use crate::source::Held;
use crate::state::State;
use crate::stats::{DecodeErrorSample, EngineStats};
use crate::sysdlls::SystemDlls;
use crate::verdict::VerdictSink;
use sentry_images::Images;

const MAX_ERROR_SAMPLES: usize = 32;

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

/// For a live session: `Engine::set_header(header, raw)` (or `set_clock`)
/// once, `EngineConfig { learning: Learning::Online, .. }`, and
/// `ReportConfig { immediate: true, .. }` so that each new alert key is
/// printed when first seen (the aggregated lines follow at `finish`).
/// Call [`Engine::stats`] any time for counters; events must come in time
/// order (per-processor streams merged), as `ProcessTrace` delivers them.
///
/// * Verdicts come out through a [`VerdictSink`] ([`crate::report::Report`] is one;
///   tests use closures wrapped in [`crate::FnSink`]). A [`crate::SyscallVerdict`] borrows the
///   engine's state: format what you need inside the call.
/// * The engine never panics on hostile input; decode errors are counted in
///   [`crate::EngineStats`] with file offsets.
/// * Memory is bounded: the pending set holds at most `max_pending` entries
///   (oldest evicted, counted) and ended processes are dropped once the
///   correlation window has passed.
/// * Service identity (rule 5): with `system_dlls`, by export names; else
///   from a [`crate::ServiceTable`]. `analyze` runs one pass with
///   [`crate::Learning::Deferred`]: decisions that need the learned table wait for
///   its end (settled by [`Engine::finish`] and [`crate::report::Report::finish`]).
///   With `--per-syscall` it runs a [`crate::Learning::Only`] pass, takes
///   [`Engine::into_services`], and hands the table to a classifying pass;
///   `live` uses [`crate::Learning::Online`].
/// * [`crate::Pairing::AnyEvent`] pairs StackWalk events with every kind of parent
///   (used on real traces, which carry no SysCallEnter); pairs come out
///   through [`crate::VerdictSink::stack_pair`].
/// * What the engine could not see ([`crate::Completeness`]): an alert of rules 3
///   or 7 whose process's module map the trace does not show is
///   `unresolved` (docs/verdicts.md). A file reader's damage, or a live
///   session's `EventsLost`/`RealTimeBuffersLost` growing between two reads
///   (from the previous read's time to now), goes in through
///   [`Engine::note_events_missing`]; loss with no time through
///   [`Engine::note_loss_without_time`].
/// * Output formatting (JSON lines, ECS, summary table, statistics) is in
///   [`crate::report`], shared by `analyze` and `live` (`Report::set_header` gives
///   ECS `host.os` to alerts printed before `finish`).
/// * The common pair, a SysCallEnter whose very next event is its StackWalk
///   with the user part, skips the correlator: the syscall is held for one
///   event and classified from the StackWalk's frames in place. Anything
///   else hands it to the correlator first; results and counters are the
///   same either way (`tests/held_pairs.rs`; `EngineStats::held_pairs`
///   counts the shortcut).
/// * Stack caching: Windows logs a key's frames when it deletes the key
///   (opcode 35) or at rundown (36), after the references (37/38). A syscall
///   waiting for a key is parked past the window (still under the cap) and
///   its process is kept until it is resolved.
///
/// # Interpretations of docs/verdicts.md
/// * Alerts are `direct` and `indirect`; `kernel_origin`, `no_stack` and
///   `truncated` are counted and reported per syscall, never alerted.
/// * A stack is complete with its user part (or a kernel part of pid 0/4,
///   which has no user mode); a kernel part alone waits for the window, then
///   is `kernel_origin`.
/// * Stub modules are `ntdll.dll`/`win32u.dll` whose path ends in
///   `\System32\<name>`; a SysWOW64 ntdll marks the process WoW64.
/// * Rule 5 compares export names (`Nt`=`Zw`) when both the stub and the
///   routine are named by the supplied DLLs, else the learned service.
/// * Rule 7: only a user-mode caller can be unbacked.
pub struct Engine {
    pub(crate) pairing: Pairing,
    pub(crate) learning: Learning,
    pub(crate) window_ms: u64,
    pub(crate) state: State,
    pub(crate) corr: Correlator,
    pub(crate) services: ServiceTable,
    pub(crate) system_dlls: Option<Arc<SystemDlls>>,
    pub(crate) images: Option<Arc<Images>>,
    pub(crate) allowlist: Allowlist,
    pub(crate) builtin: crate::builtin_allowlist::BuiltinAllowlist,
    pub(crate) clock: Option<Clock>,
    pub(crate) header: Option<LogfileHeader>,
    pub(crate) kernel_boundary: u64,
    pub(crate) pointer_size: u8,
    pub(crate) stack_buf: Vec<u64>,
    pub(crate) now: u64,
    pub(crate) stats: EngineStats,
    pub(crate) parent_hooks: BTreeMap<ParentHook, u64>,
    pub(crate) tallies: SiteTallies,
    /// The last SysCallEnter, not yet given to the correlator: nearly
    /// always the next event is its whole stack, and the pair is then
    /// classified at once (see [`Engine::process`]).
    pub(crate) held: Option<Held>,
    pub(crate) hold_syscalls: bool,
    /// An always-empty table: classification consults it in
    /// [`Learning::Deferred`] mode, leaving rule 5 to the final one.
    pub(crate) no_services: ServiceTable,
    /// What the engine may have missed (see [`Completeness`]).
    pub(crate) completeness: Completeness,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Engine {
        let mut state = State::new();
        if let Some(sys) = &cfg.system_dlls {
            state.set_system_dlls(Arc::clone(sys));
        }
        if let Some(i) = &cfg.images {
            state.set_images(Arc::clone(i));
        }
        let mut e = Engine {
            pairing: cfg.pairing,
            learning: cfg.learning,
            window_ms: cfg.window_ms,
            state,
            corr: Correlator::new(0, cfg.max_pending),
            services: cfg.services,
            system_dlls: cfg.system_dlls,
            images: cfg.images,
            allowlist: cfg.allowlist,
            builtin: cfg.builtin,
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
        if let EventId::Manifest { .. } = ev.id {
            self.on_manifest_event(ev, sink);
            self.drain(sink);
            return;
        }
        match sentry_kernel::decode(ev) {
            Ok(Some(k)) => {
                self.stats.kernel_events_decoded += 1;
                self.on_kernel_event(ev, k);
            }
            Ok(None) => {}
            Err(e) => self.decode_error(e.offset, e.to_string()),
        }
        self.drain(sink);
    }

    #[cold]
    pub(crate) fn decode_error(&mut self, offset: u64, message: String) {
        self.stats.decode_errors += 1;
        if self.stats.decode_error_samples.len() < MAX_ERROR_SAMPLES {
            self.stats
                .decode_error_samples
                .push(DecodeErrorSample { offset, message });
        }
    }

    /// What every event does first: counts, the clock, expiry.
    #[inline]
    pub(crate) fn advance(&mut self, ev: &RawEvent<'_>) {
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

    /// Flushes every pending entry and returns the statistics.
    pub fn finish(&mut self, sink: &mut dyn VerdictSink) -> EngineStats {
        self.release_held();
        self.corr.flush();
        self.drain(sink);
        self.settle_deferred();
        self.stats()
    }
}
