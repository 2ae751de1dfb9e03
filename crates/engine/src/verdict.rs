//! What sinks receive: one [`SyscallVerdict`] per call whatever its source
//! (a SysCallEnter with its StackWalk, or an event with its own stack), the
//! [`VerdictSink`] trait and its small implementations, the counts per
//! verdict, and the rule-5 decision a [`crate::Learning::Deferred`] pass
//! leaves open ([`ServiceCheck`]).

use crate::classify::{Outcome, Reason, ServiceTable, Verdict};
use crate::correlate::{Finish, ParentHook};
use crate::resolve::Resolver;
use crate::source::audit::AuditFacts;
use crate::state::{ModuleKind, ProcessInfo};

/// A rule-5 decision left open by [`Learning::Deferred`](crate::Learning::Deferred): the syscall's
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
    /// `--images`, for evidence (bytes, module hashes).
    pub images: Option<&'a sentry_images::Images>,
    /// [`Learning::Deferred`](crate::Learning::Deferred) only: rule 5 is still open; `verdict`,
    /// `reason` and `suppressed` hold the outcome if the stub matches.
    pub service_check: Option<ServiceCheck>,
    /// A Kernel-Audit-API-Calls event: its API, target, access and return
    /// code (`service_address` is then the event id, see
    /// [`SyscallVerdict::audit_api`]).
    pub audit: Option<&'a AuditFacts>,
    /// The audit event's target process, from the state.
    pub target: Option<&'a ProcessInfo>,
    /// A SysCallEnter of a user process whose StackWalk gave the kernel
    /// part only: `no_stack` with `UserPartMissing` (an audit event's is in
    /// `audit`).
    pub stack_split: Option<crate::source::split::StackSplit>,
}

impl SyscallVerdict<'_> {
    /// The API of an audit event's call.
    pub fn audit_api(&self) -> Option<sentry_kernel_audit_api::AuditApi> {
        self.audit.map(|a| a.api)
    }

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

/// A stack paired with a non-syscall parent ([`Pairing::AnyEvent`](crate::Pairing::AnyEvent)).
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
    /// Only in [`Pairing::AnyEvent`](crate::Pairing::AnyEvent) mode.
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
