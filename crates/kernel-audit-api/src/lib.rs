//! Microsoft-Windows-Kernel-Audit-API-Calls
//! (`{e02a841c-75a3-4fa7-afc8-ae09cf9b7f23}`): typed events and the call
//! stack each one carries.
//!
//! The kernel writes these events inside a handful of security-relevant
//! system calls, in the caller's thread. Enabled with
//! `EVENT_ENABLE_PROPERTY_STACK_TRACE`, each event carries its own call
//! stack as an `EVENT_HEADER_EXT_TYPE_STACK_TRACE64`/`32` extended item, so
//! the first user frame is the system call's return site: what the verdict
//! rules need, with no SysCallEnter/StackWalk correlation.
//!
//! ```no_run
//! # fn f(raw: &sentry_raw::RawEvent<'_>) {
//! use sentry_kernel_audit_api::{decode, CallStack};
//! if let Ok(Some(ev)) = decode(raw) {
//!     let stack = CallStack::of(raw);   // None without a stack item
//!     println!("{} {:?} {:?}", ev.api_name(), ev.target(), stack.map(|s| s.match_id));
//! }
//! # }
//! ```
//!
//! Sources (verified against each other on 2026-12-06):
//! - the provider's manifest as dumped from Windows 10 1803 (17134) in
//!   `repnz/etw-providers-docs`, `Manifests-Win10-17134/Microsoft-Windows-Kernel-Audit-API-Calls.xml`:
//!   events 1-8, all task 0, opcode 0, level 4 (`win:Informational`), no
//!   keywords; the templates' field names and `inType`s;
//! - `jdu2600/Windows10EtwEvents`, `manifest/Microsoft-Windows-Kernel-Audit-API-Calls.tsv`
//!   (a later Windows 11 dump): the same layouts, plus event 2 version 1
//!   (`TargetProcessStartKey` UInt64, `TargetProcessCreationTime` FILETIME);
//! - `jdu2600/API-To-ETW` (`README.md`, `ntoskrnl.exe.csv`, from Ghidra over
//!   ntoskrnl.exe): which kernel functions write each id, listed in
//!   [`AuditApi::system_calls`].
//!
//! Both dumps spell the thread-id field of event 6 `TargetThreatId`; it is
//! the target thread's id and is called `target_tid` here. The strings of
//! events 3, 7 and 8 are `win:UnicodeString`, which
//! [Microsoft's InputType reference](https://learn.microsoft.com/windows/win32/wes/eventmanifestschema-inputtype-complextype)
//! defines as a NUL-terminated UTF-16LE string (not a counted one).
//! Not verified: no capture of this provider from a real machine was
//! available; the layouts rest on the manifests above.

#![forbid(unsafe_code)]

mod access;
mod event;
mod stack;
mod user_stack;

pub use access::{AccessMask, ObjectKind, ReturnCode};
pub use event::{decode, AuditApi, AuditEvent, DecodeError, Utf16};
pub use stack::CallStack;
pub use user_stack::{
    is_user_mode_stack_event, user_mode_stack, EVENT_TRACING_PROVIDER, USER_MODE_STACK_TRACE,
    USER_MODE_STACK_TRACE_OPCODE,
};

use sentry_raw::Guid;

/// The provider's GUID.
pub const PROVIDER: Guid = Guid::from_u128(0xe02a841c_75a3_4fa7_afc8_ae09cf9b7f23);

/// The level every event of the provider is written at (`win:Informational`):
/// a session must enable the provider at this level or above.
pub const LEVEL: u8 = 4;
