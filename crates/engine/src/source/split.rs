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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{Reason, Verdict};
    use crate::verdict::{FnSink, SyscallVerdict};
    use crate::EngineConfig;
    use sentry_kernel::{Image, KernelEvent, Lifecycle};
    use sentry_kernel_audit_api::{AccessMask, AuditApi, AuditEvent};
    use sentry_raw::{EventId, Guid, HeaderKind};

    const NTDLL: u64 = 0x7FFB_0000_0000;
    const K32: u64 = 0x7FF9_0000_0000;
    const APP: u64 = 0x7FF6_0000_0000;
    const SHELL: u64 = 0x0000_0200_0000;
    const NTOS: u64 = 0xFFFF_F800_0000_0000;
    const PID: u32 = 1234;
    const TID: u32 = 77;
    /// The kernel part of an audited NtOpenProcess: the stack capture in
    /// ETW, PsOpenProcess, the routine, KiSystemServiceCopyEnd (apart as
    /// functions are: frames close together, with frames between, would be
    /// a nested call's: `classify::nested`).
    const KERNEL: [u64; 4] = [
        NTOS + 0x24_3a1e,
        NTOS + 0x6a_1e94,
        NTOS + 0x5d_0c31,
        NTOS + 0x40_b3b5,
    ];

    /// What a test reads of a verdict.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Got {
        ts: u64,
        pid: Option<u32>,
        tid: Option<u32>,
        verdict: Verdict,
        reason: Option<Reason>,
        split: Option<StackSplit>,
        finish: Finish,
        frames: usize,
    }

    struct T {
        engine: Engine,
        got: Vec<Got>,
    }

    fn kernel_raw(ts: u64) -> RawEvent<'static> {
        RawEvent {
            header: HeaderKind::PerfInfo64,
            id: EventId::Kernel {
                group: 0x03,
                opcode: 3,
            },
            version: 2,
            pid: None,
            tid: None,
            processor: 0,
            timestamp: ts,
            pointer_size: 8,
            payload: &[],
            extended: Default::default(),
            offset: 0,
        }
    }

    /// A STACK_TRACE64 extended item.
    fn item(match_id: u64, frames: &[u64]) -> Vec<u8> {
        let mut data = match_id.to_le_bytes().to_vec();
        for f in frames {
            data.extend_from_slice(&f.to_le_bytes());
        }
        let mut ext = Vec::new();
        ext.extend_from_slice(&((8 + data.len()) as u16).to_le_bytes());
        ext.extend_from_slice(&sentry_raw::ext_type::STACK_TRACE64.to_le_bytes());
        ext.extend_from_slice(&0u16.to_le_bytes());
        ext.extend_from_slice(&(data.len() as u16).to_le_bytes());
        ext.extend_from_slice(&data);
        ext
    }

    #[allow(clippy::too_many_arguments)]
    fn manifest<'a>(
        provider: Guid,
        id: u16,
        opcode: u8,
        ts: u64,
        pid: u32,
        tid: u32,
        payload: &'a [u8],
        ext: &'a [u8],
    ) -> RawEvent<'a> {
        RawEvent {
            header: HeaderKind::EventHeader64,
            id: EventId::Manifest {
                provider,
                id,
                version: 0,
                channel: 0,
                level: 4,
                opcode,
                task: 0,
                keyword: 0,
            },
            version: 0,
            pid: Some(pid),
            tid: Some(tid),
            processor: 1,
            timestamp: ts,
            pointer_size: 8,
            payload,
            extended: sentry_raw::ExtendedData(ext),
            offset: 0,
        }
    }

    impl T {
        fn new() -> T {
            let mut engine = Engine::new(EngineConfig::default());
            let p = sentry_kernel::Process {
                op: Lifecycle::DcStart,
                unique_process_key: 0,
                process_id: PID,
                parent_id: 4,
                session_id: 1,
                exit_status: 0,
                directory_table_base: 0,
                flags: None,
                user_sid: String::new(),
                image_file_name: "app.exe".into(),
                command_line: String::new(),
                package_full_name: String::new(),
                application_id: String::new(),
            };
            engine.on_kernel_event(&kernel_raw(1), KernelEvent::Process(p));
            for (pid, base, size, path) in [
                (
                    PID,
                    NTDLL,
                    0x20_0000,
                    r"\Device\HarddiskVolume3\Windows\System32\ntdll.dll",
                ),
                (
                    PID,
                    K32,
                    0x10_0000,
                    r"\Device\HarddiskVolume3\Windows\System32\KernelBase.dll",
                ),
                (PID, APP, 0x1_0000, r"\Device\HarddiskVolume3\app\app.exe"),
                (0, NTOS, 0x100_0000, r"\SystemRoot\system32\ntoskrnl.exe"),
            ] {
                let i = Image {
                    op: Lifecycle::DcStart,
                    image_base: base,
                    image_size: size,
                    process_id: pid,
                    image_checksum: 0,
                    time_date_stamp: 0,
                    default_base: 0,
                    file_name: path.into(),
                };
                engine.on_kernel_event(&kernel_raw(1), KernelEvent::Image(i));
            }
            T {
                engine,
                got: Vec::new(),
            }
        }

        fn feed(&mut self, ev: &RawEvent<'_>) {
            let got = &mut self.got;
            self.engine.process(
                ev,
                &mut FnSink(|v: &SyscallVerdict<'_>| got.push(Self::read(v))),
            );
        }

        fn read(v: &SyscallVerdict<'_>) -> Got {
            Got {
                ts: v.timestamp,
                pid: v.pid,
                tid: v.tid,
                verdict: v.verdict,
                reason: v.reason,
                split: v.audit.and_then(|a| a.stack_split),
                finish: v.finish,
                frames: v.stack.len(),
            }
        }

        /// An audited NtOpenProcess of pid 788 with this stack item.
        fn audit(&mut self, ts: u64, pid: u32, tid: u32, match_id: u64, frames: &[u64]) {
            let mut e = AuditEvent::new(AuditApi::OpenProcess, 0);
            e.target_pid = Some(788);
            e.desired_access = Some(AccessMask(0x0410));
            let mut payload = Vec::new();
            e.encode(8, &mut payload);
            let ext = item(match_id, frames);
            let ev = manifest(
                sentry_kernel_audit_api::PROVIDER,
                5,
                0,
                ts,
                pid,
                tid,
                &payload,
                &ext,
            );
            self.feed(&ev);
        }

        /// A Kernel-EventTracing StackTraceUserModeStackTrace (no payload).
        fn user_part(&mut self, ts: u64, pid: u32, tid: u32, match_id: u64, frames: &[u64]) {
            let ext = item(match_id, frames);
            let ev = manifest(
                sentry_kernel_audit_api::EVENT_TRACING_PROVIDER,
                sentry_kernel_audit_api::USER_MODE_STACK_TRACE,
                sentry_kernel_audit_api::USER_MODE_STACK_TRACE_OPCODE,
                ts,
                pid,
                tid,
                &[],
                &ext,
            );
            self.feed(&ev);
        }

        fn finish(&mut self) -> crate::EngineStats {
            let got = &mut self.got;
            self.engine.finish(&mut FnSink(|v: &SyscallVerdict<'_>| {
                got.push(Self::read(v))
            }))
        }
    }

    /// User parts: a normal call through ntdll and kernelbase; a direct
    /// syscall from app.exe; an indirect one whose stub's caller is
    /// shellcode.
    fn user_parts() -> [(Vec<u64>, Verdict, Option<Reason>); 3] {
        [
            (
                vec![NTDLL + 0x1014, K32 + 0x10, APP + 0x40],
                Verdict::Normal,
                None,
            ),
            (
                vec![APP + 0x120, APP + 0x40],
                Verdict::Direct,
                Some(Reason::Image),
            ),
            (
                vec![NTDLL + 0x1014, SHELL + 0x33],
                Verdict::Indirect,
                Some(Reason::UnbackedCaller),
            ),
        ]
    }

    /// A split event joined with the user part that follows on its thread
    /// gets the verdict of the same event unsplit, with the whole stack.
    #[test]
    fn joined_split_stacks_get_the_unsplit_verdicts() {
        for (user, verdict, reason) in user_parts() {
            let mut t = T::new();
            let whole: Vec<u64> = KERNEL.iter().chain(&user).copied().collect();
            t.audit(1000, PID, TID, 0, &whole);
            t.audit(2000, PID, TID, 0x5151, &KERNEL);
            assert_eq!(t.got.len(), 1, "the kernel part waits");
            // Another thread's user part is not it.
            t.user_part(2010, PID, TID + 1, 0x5151, &[APP + 0x500]);
            assert_eq!(t.got.len(), 1);
            t.user_part(2020, PID, TID, 0x5151, &user);
            let s = t.finish();
            assert_eq!(t.got.len(), 2, "{:?}", t.got);
            let (a, b) = (&t.got[0], &t.got[1]);
            assert_eq!((a.verdict, a.reason), (verdict, reason));
            assert_eq!((b.verdict, b.reason), (verdict, reason), "{b:?}");
            assert_eq!((b.ts, b.pid, b.tid), (2000, Some(PID), Some(TID)));
            assert_eq!(b.frames, whole.len());
            assert_eq!((a.split, b.split), (None, Some(StackSplit::Joined)));
            assert_eq!(b.finish, Finish::Complete);
            assert_eq!(
                (
                    s.audit_split_stacks,
                    s.audit_split_joined,
                    s.audit_split_unjoined
                ),
                (1, 1, 0)
            );
            assert_eq!((s.audit_user_parts, s.audit_user_parts_unused), (2, 1));
            assert_eq!(s.audit_split_match_ids_differ, 0);
            assert_eq!(s.syscalls, 2);
            assert_eq!(s.pending_now, 0);
        }
    }

    /// Every kernel part held on the thread takes the user part (the user
    /// stack cannot change in between: TraceEvent's rule); one logged after
    /// it does not. Differing match ids are counted, not refused.
    #[test]
    fn a_user_part_completes_every_earlier_kernel_part_of_its_thread() {
        let mut t = T::new();
        let user = [APP + 0x120, APP + 0x40];
        t.audit(1000, PID, TID, 1, &KERNEL);
        t.audit(1005, PID, TID, 2, &KERNEL);
        t.user_part(1010, PID, TID, 2, &user);
        assert_eq!(t.got.len(), 2);
        for g in &t.got {
            assert_eq!(
                (g.verdict, g.split),
                (Verdict::Direct, Some(StackSplit::Joined))
            );
        }
        let s = t.engine.stats();
        assert_eq!(
            (s.audit_split_joined, s.audit_split_match_ids_differ),
            (2, 1)
        );
    }

    /// Read in another order (a real-time session delivers each processor's
    /// buffers in turn): the user part first, then its kernel part.
    #[test]
    fn a_user_part_read_first_joins_the_kernel_part_logged_before_it() {
        let mut t = T::new();
        t.user_part(1010, PID, TID, 9, &[APP + 0x120, APP + 0x40]);
        // Logged after the user part: the next system call, not this one.
        t.audit(1020, PID, TID, 8, &KERNEL);
        assert!(t.got.is_empty());
        t.audit(1000, PID, TID, 9, &KERNEL);
        assert_eq!(t.got.len(), 1);
        assert_eq!(
            (t.got[0].ts, t.got[0].verdict, t.got[0].split),
            (1000, Verdict::Direct, Some(StackSplit::Joined))
        );
        let s = t.finish();
        assert_eq!((s.audit_split_joined, s.audit_split_unjoined), (1, 1));
        assert_eq!(t.got[1].ts, 1020);
        assert_eq!(t.got[1].verdict, Verdict::NoStack);
    }

    /// A kernel part whose user part never comes is `no_stack` (pid and
    /// tid known), never `kernel_origin`: after the window, at the end of
    /// the input, or evicted by the cap.
    #[test]
    fn a_kernel_part_without_its_user_part_is_no_stack_not_kernel_origin() {
        let mut t = T::new();
        let window = t.engine.corr.window_ticks();
        t.audit(1000, PID, TID, 3, &KERNEL);
        // Within the window nothing is decided.
        t.audit(1000 + window, PID, TID, 0, &[]);
        assert_eq!(t.got.len(), 1);
        assert_eq!(t.got[0].verdict, Verdict::NoStack);
        // Past it, the next manifest event decides it.
        t.user_part(1001 + window, PID, TID + 5, 0, &[APP + 0x40]);
        assert_eq!(t.got.len(), 2);
        let g = &t.got[1];
        assert_eq!(
            (g.ts, g.pid, g.tid, g.verdict, g.reason),
            (1000, Some(PID), Some(TID), Verdict::NoStack, None)
        );
        assert_eq!(
            (g.split, g.finish, g.frames),
            (Some(StackSplit::UserPartMissing), Finish::Expired, 0)
        );
        t.audit(5 * window, PID, TID, 4, &KERNEL);
        let s = t.finish();
        assert_eq!(t.got.len(), 3);
        assert_eq!(
            (t.got[2].verdict, t.got[2].finish),
            (Verdict::NoStack, Finish::Flushed)
        );
        assert_eq!(s.audit_split_unjoined, 2);
        assert_eq!(s.verdicts.kernel_origin, 0);
        assert_eq!(s.verdicts.no_stack, 3);
    }

    #[test]
    fn pending_kernel_parts_are_capped() {
        let mut t = T::new();
        for i in 0..=MAX_KERNEL_PARTS as u64 {
            t.audit(1000 + i, PID, TID, i + 1, &KERNEL);
        }
        assert_eq!(t.got.len(), 1);
        assert_eq!(
            (t.got[0].ts, t.got[0].verdict, t.got[0].finish),
            (1000, Verdict::NoStack, Finish::Evicted)
        );
        assert_eq!(t.engine.pending(), MAX_KERNEL_PARTS);
        t.user_part(1000 + MAX_KERNEL_PARTS as u64, PID, TID, 0, &[APP + 0x40]);
        assert_eq!(t.got.len(), MAX_KERNEL_PARTS + 1);
        assert_eq!(t.engine.pending(), 0);
    }

    /// A split item holding user frames is classified from them, and says
    /// so; a kernel part of the System process has no user part to wait
    /// for (`kernel_origin` is then a fact).
    #[test]
    fn user_frames_in_a_split_item_and_the_system_process_are_decided_at_once() {
        let mut t = T::new();
        t.audit(1000, PID, TID, 6, &[APP + 0x120, APP + 0x40]);
        t.audit(1100, 4, 8, 7, &KERNEL);
        assert_eq!(t.got.len(), 2);
        assert_eq!(
            (t.got[0].verdict, t.got[0].split),
            (Verdict::Direct, Some(StackSplit::UserPartOnly))
        );
        assert_eq!(t.got[1].verdict, Verdict::KernelOrigin);
        let s = t.finish();
        assert_eq!((s.audit_split_stacks, s.audit_split_user_only), (2, 1));
        assert_eq!(s.audit_split_unjoined, 0);
    }
}
