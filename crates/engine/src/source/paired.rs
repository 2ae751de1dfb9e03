//! A parent event and its StackWalk parts joined by the correlator
//! (`crate::correlate`): finalised entries become calls for the classifier
//! (SysCallEnter parents) or [`crate::StackPair`]s (other parents, in
//! [`crate::Pairing::AnyEvent`] mode).

use crate::correlate::{Finish, Parent};
use crate::resolve::Resolver;
use crate::source::split::StackSplit;
use crate::source::StackedCall;
use crate::verdict::{StackPair, VerdictSink};
use crate::Engine;

/// Which vector an emitted stack was taken from (it is given back).
#[derive(Debug, Clone, Copy)]
enum StackFrom {
    User,
    Kernel,
    Buffer,
}

impl Engine {
    /// Emits every finalised entry.
    #[inline]
    pub fn drain(&mut self, sink: &mut dyn VerdictSink) {
        // Most events finalise nothing: no call then.
        if self.corr.has_ready() {
            self.drain_ready(sink);
        }
    }

    #[inline(never)]
    pub(crate) fn drain_ready(&mut self, sink: &mut dyn VerdictSink) {
        while let Some((slot, finish)) = self.corr.pop_ready() {
            self.emit(slot, finish, sink);
            self.corr.release(slot);
        }
    }

    pub(crate) fn emit(&mut self, slot: u32, finish: Finish, sink: &mut dyn VerdictSink) {
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
                let pair = StackedCall {
                    ts,
                    parent_processor,
                    address,
                    has_stack,
                    pid,
                    tid,
                };
                if matches!(from, StackFrom::Kernel) && user_mode_expected(pid, finish) {
                    self.emit_user_part_missing(pair, finish, sink);
                } else {
                    self.emit_syscall(pair, &stack, finish, sink);
                }
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
}

/// Whether a SysCallEnter whose StackWalk gave the kernel part only was
/// finalised without a user part that should have come: its thread is in a
/// user process (the System and Idle processes have no user mode; the
/// correlator completes their kernel parts at once), so the part was lost
/// (window, pending cap, end of input). Rule 2 would be a claim about user
/// frames the engine did not see.
#[inline]
fn user_mode_expected(pid: u32, finish: Finish) -> bool {
    pid != 0 && pid != 4 && pid != u32::MAX && finish != Finish::Complete
}

impl Engine {
    /// A user-process SysCallEnter whose user part never came: `no_stack`
    /// with its pid and tid and `stack_split: "user_part_missing"`, as the
    /// audit source decides the same case (`source::split`), and counted.
    fn emit_user_part_missing(
        &mut self,
        pair: StackedCall,
        finish: Finish,
        sink: &mut dyn VerdictSink,
    ) {
        self.stats.syscall_user_parts_missing += 1;
        let call = StackedCall {
            has_stack: false,
            ..pair
        };
        self.emit_call_split(
            call,
            &[],
            finish,
            sink,
            None,
            Some(StackSplit::UserPartMissing),
        );
    }
}
