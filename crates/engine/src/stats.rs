//! Counters of one engine, returned by [`crate::Engine::finish`] and
//! readable any time through [`crate::Engine::stats`].

use std::collections::BTreeMap;

use crate::completeness::{LossGap, UnresolvedCounts};
use crate::correlate::CorrelatorStats;
use crate::state::StateStats;
use crate::verdict::VerdictCounts;

/// A decode error kept for the statistics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DecodeErrorSample {
    pub offset: u64,
    pub message: String,
}

/// Engine statistics, returned by [`Engine::finish`](crate::Engine::finish) (and readable any time
/// through [`Engine::stats`](crate::Engine::stats)).
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
    /// Kernel-Audit-API-Calls events read (each of a system call is also
    /// counted in `syscalls` and gets a verdict).
    pub audit_events: u64,
    /// Audit events that stand for no system call (ids 1, 7, 8: written for
    /// drivers): counted, not classified.
    pub audit_not_syscall: u64,
    /// Audit events whose stack item has a non-zero `MatchId` (Windows
    /// logged the kernel and user parts in separate events).
    pub audit_split_stacks: u64,
    /// Of those, kernel parts joined with their user part (a
    /// Kernel-EventTracing `StackTraceUserModeStackTrace` event of the
    /// thread): classified from the whole stack.
    pub audit_split_joined: u64,
    /// Kernel parts whose user part never came (window, cap, end of
    /// input): `no_stack`, never `kernel_origin`.
    pub audit_split_unjoined: u64,
    /// Split items that hold user frames: classified from them.
    pub audit_split_user_only: u64,
    /// Joins where both `MatchId`s are non-zero and differ (the join is by
    /// thread; this tells whether `MatchId` agrees on a real capture).
    pub audit_split_match_ids_differ: u64,
    /// Kernel-EventTracing `StackTraceUserModeStackTrace` events read.
    pub audit_user_parts: u64,
    /// Of those, user parts that completed no audit event (they also
    /// follow other providers' kernel-mode events).
    pub audit_user_parts_unused: u64,
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
    /// [`Learning::Deferred`](crate::Learning::Deferred): syscalls whose rule-5 decision waited for
    /// the end of the input (settled in `verdicts` by [`Engine::finish`](crate::Engine::finish)).
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
    /// Rule 9 (`--images`): return addresses past `U` whose bytes were
    /// checked, and those whose check was not done (no file matched,
    /// unbacked, skipped by rule). Zero without `--images`.
    pub frames_checked: u64,
    pub frames_not_done: u64,
    /// Rule 8b (exception handler): syscalls whose stack was searched for
    /// `KiUserExceptionDispatcher` (every ntdll's exports known), those
    /// where it could not be (exports unknown: not done, never passed), and
    /// those whose stack held a dispatcher frame with a handler.
    pub exception_checks: u64,
    pub exception_checks_not_done: u64,
    pub exception_dispatch_stacks: u64,
    /// Built-in recognisers (`builtin:chromium-sandbox`): what each
    /// suppressed (also counted in `suppressed`) and what it checked.
    pub builtin: crate::builtin_allowlist::BuiltinStats,
    /// Rule 8c (`proxy_call`): stacks with the proxied-call shape whose
    /// API frame's function was bounded (checked), and those where it
    /// could not be (no `--images` file matched, x86/WoW64 32-bit modules
    /// without a function table): never counted as passed. Zero without
    /// `--images`.
    pub proxy_checked: u64,
    pub proxy_not_done: u64,
    /// `kernel_origin` calls with user frames: nested kernel-mode calls
    /// (`classify::nested`), made in a user thread inside its own call.
    pub nested_kernel_calls: u64,
    /// SysCallEnter of a user process (pid not 0 or 4) whose StackWalk gave
    /// the kernel part only (the user part never came: window, cap, end of
    /// input): `no_stack` with `stack_split: "user_part_missing"`.
    pub syscall_user_parts_missing: u64,
}
