//! The common pair, a SysCallEnter whose very next event is its StackWalk
//! with the user part: the syscall is held for one event and classified
//! from the StackWalk's frames in place, without the correlator. Anything
//! else hands it to the correlator first ([`super::paired`]); results and
//! counters are the same either way (`tests/held_pairs.rs`;
//! `EngineStats::held_pairs` counts the shortcut).

use sentry_raw::RawEvent;

use crate::correlate::{self, Finish, Parent};
use crate::source::StackedCall;
use crate::verdict::VerdictSink;
use crate::Engine;

/// A SysCallEnter kept outside the correlator for one event.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Held {
    pub(crate) ts: u64,
    pub(crate) processor: u16,
    pub(crate) address: u64,
}

impl Engine {
    /// Gives the held syscall to the correlator.
    pub(crate) fn release_held(&mut self) {
        if let Some(h) = self.held.take() {
            self.corr
                .add_parent(h.ts, h.processor, Parent::SysCall { address: h.address });
        }
    }

    /// `ev` is the StackWalk of the held syscall `h` with the user part
    /// (so the correlator would complete `h` with it at once): processes
    /// `ev` and emits the syscall; `false` (nothing done) otherwise.
    #[inline]
    pub(crate) fn complete_held(
        &mut self,
        h: Held,
        ev: &RawEvent<'_>,
        sink: &mut dyn VerdictSink,
    ) -> bool {
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
        let pair = StackedCall {
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
}
