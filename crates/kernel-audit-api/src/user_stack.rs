//! The user part of a split stack: Microsoft-Windows-Kernel-EventTracing
//! event 18, `StackTraceUserModeStackTrace`.
//!
//! When Windows cannot walk the user stack while it logs a kernel-mode
//! event, the event's stack item holds the kernel frames only and a
//! non-zero `MatchId` ("the kernel-mode calls and user-mode calls are
//! captured in separate events if the environment prevents both from being
//! captured in the same event",
//! [EVENT_EXTENDED_ITEM_STACK_TRACE64](https://learn.microsoft.com/windows/win32/api/evntcons/ns-evntcons-event_extended_item_stack_trace64)).
//! Microsoft Learn does not say which event carries the user part. What the
//! sources read for this module say (2026-12-06):
//!
//! - The manifest of Microsoft-Windows-Kernel-EventTracing
//!   (`jdu2600/Windows10EtwEvents`, `manifest/Microsoft-Windows-Kernel-EventTracing.tsv`):
//!   event 18 version 0, `StackTraceUserModeStackTrace()`, no fields,
//!   opcode `UserModeStackTrace`, task `StackTrace`, level Informational,
//!   no keyword. The dump gives names, not the task and opcode numbers.
//! - PerfView's TraceEvent (`microsoft/perfview`,
//!   `src/TraceEvent/TraceLog.cs`, `ProcessExtendedData`): a stack item
//!   whose outermost frame is a kernel address (outside pids 0 and 4) is an
//!   incomplete stack, queued on its thread; an event of provider
//!   `{b675ec37-bdb6-4648-bc92-f3fdc74d3ca2}` (its `EventTracingProviderGuid`,
//!   the GUID other provider lists give Microsoft-Windows-Kernel-EventTracing)
//!   with id 18 and opcode 24 ("ETW_TASK_STACK_TRACE/ETW_OPCODE_USER_MODE_STACK_TRACE")
//!   carries, in its own stack item, the user frames, which are attached to
//!   *every* kernel part queued on the header's thread since the last one.
//!   TraceEvent does not use `MatchId` (`// TODO Debug.Assert(stackRecord->MatchId == 0)`).
//! - Its author on the mechanism (microsoft/perfview PR #581): the user
//!   part "is only fired when the thread exits the kernel" (the user stack
//!   cannot change before that), and the kernel is "not perfect about
//!   logging such user mode fragments": some kernel parts never get one.
//! - krabsetw issue #208 (jdu2600): the user-mode stack of such events
//!   "will be emitted as `Microsoft-Windows-Kernel-EventTracing` event 18 -
//!   `StackTraceUserModeStackTrace`".
//!
//! So the user part comes **after** the kernel part, on the **same
//! thread** (the header's tid), on whichever processor the thread returns
//! to user mode. **Not verified**: whether event 18's own stack item
//! carries the kernel part's `MatchId` (no consumer read for this uses it,
//! and no capture was available), and the task and opcode numbers on any
//! given build. This module recognises the event by provider and id only.

use sentry_raw::{EventId, Guid, RawEvent};

use crate::CallStack;

/// Microsoft-Windows-Kernel-EventTracing.
pub const EVENT_TRACING_PROVIDER: Guid = Guid::from_u128(0xb675ec37_bdb6_4648_bc92_f3fdc74d3ca2);

/// `StackTraceUserModeStackTrace`: the user part of a split stack.
pub const USER_MODE_STACK_TRACE: u16 = 18;

/// The opcode PerfView's TraceEvent matches with id 18
/// (`ETW_OPCODE_USER_MODE_STACK_TRACE`); writers use it, the reader does
/// not require it.
pub const USER_MODE_STACK_TRACE_OPCODE: u8 = 24;

/// Whether `ev` is a Kernel-EventTracing `StackTraceUserModeStackTrace`.
pub fn is_user_mode_stack_event(ev: &RawEvent<'_>) -> bool {
    matches!(ev.id, EventId::Manifest { provider, id, .. }
        if id == USER_MODE_STACK_TRACE && provider == EVENT_TRACING_PROVIDER)
}

/// The user part such an event carries (`None` for any other event, and
/// for one without a stack item).
pub fn user_mode_stack<'a>(ev: &RawEvent<'a>) -> Option<CallStack<'a>> {
    if is_user_mode_stack_event(ev) {
        CallStack::of(ev)
    } else {
        None
    }
}
