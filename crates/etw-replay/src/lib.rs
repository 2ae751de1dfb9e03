//! A replacement `sechost.dll` for Wine that plays the ETW controller and
//! real-time consumer side of Windows, so that the real `syscall-sentry.exe`
//! runs `live`, `record` and `stop` end to end through its own FFI.
//!
//! Wine's builtin `advapi32.dll` imports StartTraceW, ControlTraceW,
//! TraceSetInformation, OpenTraceW, ProcessTrace, CloseTrace and
//! EnableTraceEx2 from `sechost.dll` (import thunks, not forwarders), so this
//! DLL, built for `x86_64-pc-windows-gnu`, placed beside the executable and
//! selected with `WINEDLLOVERRIDES="sechost=n,b"`, receives those calls. It
//! replays a trace's events to the consumer's callback as Windows delivers
//! them (per-processor buffers in flush order: [`flush`]), keeps sessions in
//! a directory shared by all processes (duplicate name or GUID:
//! `ERROR_ALREADY_EXISTS`), validates what it is given, logs every call with
//! its arguments as a JSON line, and injects failures on request. All of it
//! is off unless `SENTRY_REPLAY_DIR` is set ([`config`]).
//!
//! The safe parts (trace loading, the flush model, block validation, the
//! session table) are plain modules tested on Linux; the exports are the
//! only `unsafe` code (`exports`, Windows only).

#![deny(unsafe_code)]

pub mod config;
pub mod event;
pub mod flush;
pub mod props;
pub mod sessions;

/// Only in the DLL (`--features exports`): a test executable that also
/// links the `windows` crate's import stubs would define the same names.
#[cfg(all(windows, feature = "exports"))]
#[allow(unsafe_code)]
mod exports;
#[cfg(all(windows, any(test, feature = "exports")))]
mod layout;
