//! Kernel-Audit-API-Calls events as a source of calls with a stack.
//!
//! The kernel writes the event inside the system call, in the caller's
//! thread, and (with `EVENT_ENABLE_PROPERTY_STACK_TRACE`) the stack item
//! holds the kernel frames then the user frames: the first user frame is
//! the system call's return site, as for a SysCallEnter's StackWalk. The
//! header carries the pid and tid, so nothing is correlated.
//!
//! Rule 5 needs the service the call stands for. A SysCallEnter gives its
//! routine address; an audit event gives its id, which stands for one or
//! two system calls ([`AuditApi::system_calls`]). The engine passes the id
//! on as the identity `id` (1-8): never a kernel address, so it cannot be
//! mistaken for a `SysCallAddress`. With `--system-dlls` the stub's export
//! name must be one of the id's system calls; without, the learned table
//! is consulted in a key space of its own ([`site_key`]), so that the
//! return sites' learned `SysCallAddress`es and audit ids never mix.

use sentry_kernel_audit_api::{AccessMask, AuditApi, AuditEvent, ReturnCode};
use sentry_raw::RawEvent;

use crate::correlate::Finish;
use crate::source::split::StackSplit;
use crate::source::StackedCall;
use crate::verdict::VerdictSink;
use crate::Engine;

/// Identities below this are audit event ids, not routine addresses.
const IDENTITY_LIMIT: u64 = 0x1_0000;

/// Learned-table offsets of audit observations carry this bit (offsets in
/// a stub module are far below it).
pub(crate) const AUDIT_SITE: u64 = 1 << 62;

/// The identity an audit event's call is classified with.
pub(crate) fn identity(api: AuditApi) -> u64 {
    u64::from(api.id())
}

/// The audit API of an identity, if it is one.
pub fn api_of(identity: u64) -> Option<AuditApi> {
    if identity < IDENTITY_LIMIT {
        AuditApi::from_id(identity as u16)
    } else {
        None
    }
}

/// The learned-table key offset of a return site seen with `identity`.
#[inline]
pub(crate) fn site_key(offset: u64, identity: u64) -> u64 {
    if identity < IDENTITY_LIMIT {
        offset | AUDIT_SITE
    } else {
        offset
    }
}

/// What an audit event says besides its stack: reports print it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditFacts {
    pub api: AuditApi,
    pub target_pid: Option<u32>,
    pub target_tid: Option<u32>,
    pub access: Option<AccessMask>,
    pub return_code: ReturnCode,
    /// Set when the event's stack item was split (non-zero `MatchId`):
    /// what became of it ([`StackSplit`]).
    pub stack_split: Option<StackSplit>,
}

impl AuditFacts {
    pub fn of(e: &AuditEvent<'_>) -> AuditFacts {
        AuditFacts {
            api: e.api,
            target_pid: e.target_pid,
            target_tid: e.target_tid,
            access: e.desired_access,
            return_code: e.return_code,
            stack_split: None,
        }
    }

    /// `DesiredAccess` named for the object the API opens.
    pub fn access_names(&self) -> Option<String> {
        let a = self.access?;
        Some(match self.api.object() {
            Some(o) => a.names(o),
            None => format!("{:#x}", a.0),
        })
    }

    /// Whether the call asks for rights that read or take over the target
    /// (or is a thread-context change or a termination, which do by
    /// themselves).
    pub fn is_sensitive(&self) -> bool {
        match (self.api.object(), self.access) {
            (Some(o), Some(a)) => a.is_sensitive(o),
            _ => matches!(
                self.api,
                AuditApi::SetContextThread | AuditApi::TerminateProcess
            ),
        }
    }
}

/// Image names of the system processes whose handles an attacker wants:
/// lsass.exe (credentials) and the other processes Windows runs as
/// protected or critical (smss, csrss, wininit, services, winlogon).
pub const PROTECTED_PROCESSES: [&str; 6] = [
    "lsass.exe",
    "csrss.exe",
    "smss.exe",
    "wininit.exe",
    "services.exe",
    "winlogon.exe",
];

/// True for an image name in [`PROTECTED_PROCESSES`] (case-insensitive).
pub fn is_protected_process(image: &str) -> bool {
    PROTECTED_PROCESSES
        .iter()
        .any(|p| p.eq_ignore_ascii_case(image))
}

impl Engine {
    /// A manifest event: a Kernel-Audit-API-Calls event is a complete call
    /// with its own stack (`source::audit`), unless its stack is split: then
    /// a Kernel-EventTracing event carries the user part (`source::split`).
    /// Others are not used.
    #[inline(never)]
    pub(crate) fn on_manifest_event(&mut self, ev: &RawEvent<'_>, sink: &mut dyn VerdictSink) {
        if !self.split.is_empty() {
            self.expire_split(ev.timestamp, sink);
        }
        if let Some(user) = sentry_kernel_audit_api::user_mode_stack(ev) {
            return self.on_user_part(ev, user, sink);
        }
        let a = match sentry_kernel_audit_api::decode(ev) {
            Ok(Some(a)) => a,
            Ok(None) => return,
            Err(e) => return self.decode_error(e.offset, e.to_string()),
        };
        self.stats.audit_events += 1;
        if a.api.system_calls().is_empty() {
            self.stats.audit_not_syscall += 1;
            return;
        }
        self.stats.syscalls += 1;
        let stack = sentry_kernel_audit_api::CallStack::of(ev);
        let mut frames = std::mem::take(&mut self.stack_buf);
        frames.clear();
        let mut facts = AuditFacts::of(&a);
        let pair = StackedCall {
            ts: ev.timestamp,
            parent_processor: ev.processor,
            address: identity(a.api),
            has_stack: stack.is_some_and(|s| !s.is_empty()),
            pid: ev.pid.unwrap_or(u32::MAX),
            tid: ev.tid.unwrap_or(u32::MAX),
        };
        if let Some(s) = &stack {
            s.collect_into(&mut frames);
            if s.match_id != 0 && !frames.is_empty() {
                self.stats.audit_split_stacks += 1;
                if frames.iter().any(|&f| f < self.kernel_boundary) {
                    // The user part is here: what the rules read.
                    self.stats.audit_split_user_only += 1;
                    facts.stack_split = Some(StackSplit::UserPartOnly);
                } else if !matches!(pair.pid, 0 | 4) && ev.tid.is_some() {
                    // The kernel part: the user part comes later, on the
                    // thread (the System and Idle processes have none).
                    self.hold_kernel_part(pair, facts, s.match_id, &frames, sink);
                    self.stack_buf = frames;
                    return;
                }
            }
        }
        self.emit_call(pair, &frames, Finish::Complete, sink, Some(&facts));
        self.stack_buf = frames;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_never_kernel_addresses_and_keys_do_not_mix() {
        for a in AuditApi::ALL {
            assert_eq!(api_of(identity(a)), Some(a));
            assert!(identity(a) < 0x8000_0000);
        }
        assert_eq!(api_of(0xffff_f803_1240_0000), None);
        assert_eq!(api_of(0x8240_1000), None);
        assert_eq!(site_key(0x3cd4, 5), 0x3cd4 | AUDIT_SITE);
        assert_eq!(site_key(0x3cd4, 0xffff_f803_1240_0000), 0x3cd4);
        assert!(is_protected_process("LSASS.EXE"));
        assert!(!is_protected_process("procexp64.exe"));
    }
}
