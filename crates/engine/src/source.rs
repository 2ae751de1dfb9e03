//! Where a call with a stack comes from. Every source hands the classifier
//! the same things: the system call's identity, pid, tid, timestamp and
//! frames (kernel part then user part, innermost first).
//!
//! - SysCallEnter + StackWalk (the NT Kernel Logger): the identity is the
//!   `SysCallAddress`, the stack is correlated by timestamp (the held pair
//!   and the correlator, in `lib.rs` and `correlate.rs`).
//! - [`audit`]: a Microsoft-Windows-Kernel-Audit-API-Calls event with its
//!   own stack item; the identity is the set of system calls its id stands
//!   for, encoded as an [`audit::identity`] that no kernel address equals.

pub(crate) mod audit;
mod held;
mod paired;
pub(crate) mod split;

pub(crate) use held::Held;

/// What every source hands the classifier ([`crate::Engine::emit_syscall`]):
/// the call's time, processor, identity (a `SysCallAddress` or an audit id),
/// whether it has a stack, and its process and thread.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StackedCall {
    pub(crate) ts: u64,
    pub(crate) parent_processor: u16,
    pub(crate) address: u64,
    pub(crate) has_stack: bool,
    pub(crate) pid: u32,
    pub(crate) tid: u32,
}
