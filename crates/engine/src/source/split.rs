//! Audit events whose stack is split: the event's item holds the kernel
//! part (non-zero `MatchId`), and the user part comes later in a
//! Microsoft-Windows-Kernel-EventTracing `StackTraceUserModeStackTrace`
//! event (id 18) on the same thread, when it returns to user mode (the
//! sources are in `sentry_kernel_audit_api::user_stack`'s documentation).
//!
//! The join follows PerfView's TraceEvent, the one consumer found that
//! does it: a user part completes every kernel part held on its thread
//! that was logged before it. `MatchId` is not the key (nobody was seen
//! using it, and whether event 18 carries the same one is not verified);
//! when both are non-zero and differ, the join is counted
//! (`audit_split_match_ids_differ`), so a real capture can tell.
//!
//! Bounded: at most [`MAX_KERNEL_PARTS`] kernel parts wait, each for the
//! correlation window (trace time, checked at each manifest event); the
//! oldest is evicted first. A kernel part whose user part never comes is
//! `no_stack` with `stack_split: user_part_missing`, never `kernel_origin`
//! (rule 2 is a claim about user frames the engine did not see), and
//! counted (`audit_split_unjoined`). A real-time session delivers each
//! processor's buffers in turn, so a user part may be read before its
//! kernel part: user parts are kept for the window too
//! ([`MAX_USER_PARTS`]), and a kernel part joins the first one of its
//! thread logged at or after it.

use std::collections::VecDeque;

use sentry_kernel_audit_api::CallStack;
use sentry_raw::RawEvent;

use crate::correlate::Finish;
use crate::source::audit::AuditFacts;
use crate::source::StackedCall;
use crate::verdict::VerdictSink;
use crate::Engine;

/// Kernel parts waiting for their user part at most.
pub(crate) const MAX_KERNEL_PARTS: usize = 4096;

/// User parts kept (for kernel parts read after them) at most.
pub(crate) const MAX_USER_PARTS: usize = 1024;

/// What an audit event's report says of a split stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackSplit {
    /// The kernel part (this event) and the user part (a later
    /// Kernel-EventTracing event on the thread) were joined: classified
    /// from the whole stack.
    Joined,
    /// The kernel part only: the user part did not come within the window
    /// (or the pending cap or the end of the input came first). `no_stack`.
    UserPartMissing,
    /// The split item holds user frames: classified from them (the other
    /// part was not needed).
    UserPartOnly,
}

impl StackSplit {
    /// The `stack_split` value of `--per-syscall` lines.
    pub fn as_str(self) -> &'static str {
        match self {
            StackSplit::Joined => "joined",
            StackSplit::UserPartMissing => "user_part_missing",
            StackSplit::UserPartOnly => "user_part_only",
        }
    }
}

struct KernelPart {
    call: StackedCall,
    facts: AuditFacts,
    match_id: u64,
    frames: Vec<u64>,
}

struct UserPart {
    ts: u64,
    pid: Option<u32>,
    tid: u32,
    match_id: u64,
    frames: Vec<u64>,
    used: bool,
}

/// Split audit stacks waiting for their other part.
#[derive(Default)]
pub(crate) struct SplitStacks {
    kernel: VecDeque<KernelPart>,
    user: VecDeque<UserPart>,
    /// Frame buffers given back, reused.
    spare: Vec<Vec<u64>>,
}

impl SplitStacks {
    /// Kernel parts waiting.
    pub(crate) fn pending(&self) -> usize {
        self.kernel.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.kernel.is_empty() && self.user.is_empty()
    }

    fn buffer(&mut self, frames: &[u64]) -> Vec<u64> {
        let mut b = self.spare.pop().unwrap_or_default();
        b.clear();
        b.extend_from_slice(frames);
        b
    }

    fn give_back(&mut self, b: Vec<u64>) {
        if self.spare.len() < 64 {
            self.spare.push(b);
        }
    }
}

impl Engine {
    /// An audit event whose split item holds the kernel part only: joined
    /// with a user part of its thread already read, else held.
    pub(crate) fn hold_kernel_part(
        &mut self,
        call: StackedCall,
        facts: AuditFacts,
        match_id: u64,
        frames: &[u64],
        sink: &mut dyn VerdictSink,
    ) {
        let window = self.corr.window_ticks();
        let user = self
            .split
            .user
            .iter()
            .enumerate()
            .filter(|(_, u)| {
                u.tid == call.tid
                    && u.pid.is_none_or(|p| p == call.pid)
                    && u.ts >= call.ts
                    && u.ts - call.ts <= window
            })
            .min_by_key(|(_, u)| u.ts)
            .map(|(i, _)| i);
        let buf = self.split.buffer(frames);
        let k = KernelPart {
            call,
            facts,
            match_id,
            frames: buf,
        };
        if let Some(i) = user {
            let u = &mut self.split.user[i];
            u.used = true;
            let (user_frames, user_match) = (std::mem::take(&mut u.frames), u.match_id);
            self.emit_joined(k, &user_frames, user_match, sink);
            self.split.user[i].frames = user_frames;
            return;
        }
        if self.split.kernel.len() >= MAX_KERNEL_PARTS {
            if let Some(old) = self.split.kernel.pop_front() {
                self.emit_unjoined(old, Finish::Evicted, sink);
            }
        }
        self.split.kernel.push_back(k);
    }

    /// A Kernel-EventTracing user part: completes every kernel part held on
    /// its thread that was logged before it, and is kept for the window.
    pub(crate) fn on_user_part(
        &mut self,
        ev: &RawEvent<'_>,
        stack: CallStack<'_>,
        sink: &mut dyn VerdictSink,
    ) {
        self.stats.audit_user_parts += 1;
        let Some(tid) = ev.tid else {
            self.stats.audit_user_parts_unused += 1;
            return;
        };
        let mut frames = self.split.spare.pop().unwrap_or_default();
        stack.collect_into(&mut frames);
        let mut used = false;
        let mut i = 0;
        while i < self.split.kernel.len() {
            let k = &self.split.kernel[i];
            if k.call.tid == tid
                && ev.pid.is_none_or(|p| p == k.call.pid)
                && k.call.ts <= ev.timestamp
            {
                if let Some(k) = self.split.kernel.remove(i) {
                    self.emit_joined(k, &frames, stack.match_id, sink);
                    used = true;
                }
            } else {
                i += 1;
            }
        }
        if self.split.user.len() >= MAX_USER_PARTS {
            if let Some(old) = self.split.user.pop_front() {
                self.drop_user_part(old);
            }
        }
        self.split.user.push_back(UserPart {
            ts: ev.timestamp,
            pid: ev.pid,
            tid,
            match_id: stack.match_id,
            frames,
            used,
        });
    }

    /// Decides the kernel parts and drops the user parts older than the
    /// window at raw time `now`.
    pub(crate) fn expire_split(&mut self, now: u64, sink: &mut dyn VerdictSink) {
        let window = self.corr.window_ticks();
        while self
            .split
            .kernel
            .front()
            .is_some_and(|k| now.saturating_sub(k.call.ts) > window)
        {
            if let Some(k) = self.split.kernel.pop_front() {
                self.emit_unjoined(k, Finish::Expired, sink);
            }
        }
        while self
            .split
            .user
            .front()
            .is_some_and(|u| now.saturating_sub(u.ts) > window)
        {
            if let Some(u) = self.split.user.pop_front() {
                self.drop_user_part(u);
            }
        }
    }

    /// The end of the input: every kernel part still held is decided.
    pub(crate) fn flush_split(&mut self, sink: &mut dyn VerdictSink) {
        while let Some(k) = self.split.kernel.pop_front() {
            self.emit_unjoined(k, Finish::Flushed, sink);
        }
        while let Some(u) = self.split.user.pop_front() {
            self.drop_user_part(u);
        }
    }

    fn drop_user_part(&mut self, u: UserPart) {
        if !u.used {
            self.stats.audit_user_parts_unused += 1;
        }
        self.split.give_back(u.frames);
    }

    fn emit_joined(
        &mut self,
        mut k: KernelPart,
        user: &[u64],
        user_match_id: u64,
        sink: &mut dyn VerdictSink,
    ) {
        self.stats.audit_split_joined += 1;
        if k.match_id != 0 && user_match_id != 0 && k.match_id != user_match_id {
            self.stats.audit_split_match_ids_differ += 1;
        }
        k.frames.extend_from_slice(user);
        k.facts.stack_split = Some(StackSplit::Joined);
        let call = StackedCall {
            has_stack: true,
            ..k.call
        };
        self.emit_call(call, &k.frames, Finish::Complete, sink, Some(&k.facts));
        self.split.give_back(k.frames);
    }

    fn emit_unjoined(&mut self, mut k: KernelPart, finish: Finish, sink: &mut dyn VerdictSink) {
        self.stats.audit_split_unjoined += 1;
        k.facts.stack_split = Some(StackSplit::UserPartMissing);
        let call = StackedCall {
            has_stack: false,
            ..k.call
        };
        self.emit_call(call, &[], finish, sink, Some(&k.facts));
        self.split.give_back(k.frames);
    }
}
