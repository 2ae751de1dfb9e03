//! What the engine could not see, and which verdicts that leaves open.
//!
//! A `direct` verdict says "the first user frame is in no system stub
//! module", and `indirect`/`unbacked_caller` says "the caller is in no
//! module": both are claims about a process's whole module map. They stand
//! only when the engine saw that map being built (the process's start or
//! rundown, and its `\System32\ntdll.dll`), and no events may be missing
//! between then and the syscall. Otherwise the syscall is `unresolved`
//! with the reason (docs/verdicts.md, "What the engine could not see").
//!
//! Where events may be missing comes from outside: a file reader's damage
//! ([`sentry_etl::damage`] for `.etl` files: unreadable or missing
//! buffers), and a live session's loss counters
//! ([`crate::Engine::note_events_missing`]). Counts without a place in time
//! (the logfile header's `EventsLost`/`BuffersLost`) mark the trace as
//! incomplete: alerts that stand say so (`trace_incomplete`).
//!
//! Nothing here runs per syscall but for alerts (a few per trace), so the
//! hot path is one branch on the verdict.

use crate::classify::{Outcome, Reason, Verdict};
use crate::state::ProcessInfo;

/// Gaps kept at most; past it the earliest start of the rest is kept in
/// one gap to the end (conservative: wider, never narrower).
const MAX_GAPS: usize = 1024;

/// Events may be missing between two raw timestamps (inclusive).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LossGap {
    pub from: u64,
    /// `u64::MAX`: to the end of the trace.
    pub to: u64,
    /// What says so: `buffers_missing`, `buffer_damaged`, `session_loss`.
    pub cause: String,
}

/// The engine's record of what it may have missed.
#[derive(Debug, Clone, Default)]
pub struct Completeness {
    gaps: Vec<LossGap>,
    /// Loss counted without a place in time (header counters).
    unplaced: bool,
}

impl Completeness {
    /// Events may be missing from `from` to `to` (raw timestamps).
    pub fn note_gap(&mut self, from: u64, to: u64, cause: &str) {
        let (from, to) = (from.min(to), from.max(to));
        if self.gaps.len() >= MAX_GAPS {
            let tail = self.gaps.pop().map_or(from, |g| g.from.min(from));
            self.gaps.push(LossGap {
                from: tail,
                to: u64::MAX,
                cause: "many".into(),
            });
            return;
        }
        self.gaps.push(LossGap {
            from,
            to,
            cause: cause.to_string(),
        });
    }

    /// Loss that has no place in time (e.g. `EventsLost` of the header).
    pub fn note_unplaced_loss(&mut self) {
        self.unplaced = true;
    }

    /// Events may be missing somewhere in the trace.
    pub fn incomplete(&self) -> bool {
        self.unplaced || !self.gaps.is_empty()
    }

    pub fn gaps(&self) -> &[LossGap] {
        &self.gaps
    }

    /// Whether events may be missing in `[from, to]`.
    fn lost_between(&self, from: u64, to: u64) -> bool {
        self.gaps.iter().any(|g| g.from <= to && g.to >= from)
    }

    /// The reason an alert outcome at `ts` in `process` rests on state the
    /// engine could not see, if it does. Only rules 3 (`direct`) and 7
    /// (`unbacked_caller`) claim something about the whole module map;
    /// `not_return_site` and `stub_mismatch` rest on the stub module found
    /// where the frame is.
    #[inline]
    pub fn unresolved(
        &self,
        outcome: &Outcome<'_>,
        process: Option<&ProcessInfo>,
        ts: u64,
    ) -> Option<Reason> {
        // Rule 8 also claims a frame is in no WoW64 module, rule 8b that
        // the exception handler is in no module.
        let needs_map = outcome.verdict == Verdict::Direct
            || matches!(
                outcome.reason,
                Some(Reason::UnbackedCaller | Reason::Wow64Bypass | Reason::ExceptionHandler)
            );
        if !needs_map {
            return None;
        }
        let Some(since) = process.and_then(|p| p.known_since) else {
            return Some(Reason::ProcessUnknown);
        };
        if !process.is_some_and(|p| p.ntdll) {
            return Some(Reason::ModulesIncomplete);
        }
        if self.lost_between(since, ts) {
            return Some(Reason::EventsLost);
        }
        None
    }
}

/// Syscalls left `unresolved`, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct UnresolvedCounts {
    pub process_unknown: u64,
    pub modules_incomplete: u64,
    pub events_lost: u64,
}

impl UnresolvedCounts {
    pub fn add(&mut self, r: Reason) {
        match r {
            Reason::ProcessUnknown => self.process_unknown += 1,
            Reason::ModulesIncomplete => self.modules_incomplete += 1,
            Reason::EventsLost => self.events_lost += 1,
            _ => {}
        }
    }

    pub fn total(&self) -> u64 {
        self.process_unknown + self.modules_incomplete + self.events_lost
    }
}
