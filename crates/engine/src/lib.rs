//! The syscall provenance engine: rebuilds process/module state from kernel
//! events, takes every call that comes with a call stack, whatever its
//! source, and decides one verdict per call by the rules of
//! `docs/verdicts.md`.
//!
//! ```text
//! RawEvent ─ Engine::process ─┬─ state (processes, threads, modules)
//!                             └─ stack sources ─ one classifier ─ VerdictSink
//!      SysCallEnter + StackWalk (held pair, correlator)    (report::Report: JSON, ECS,
//!      Kernel-Audit-API-Calls event + its stack item        summary table, statistics)
//! ```
//!
//! Push-based, so `analyze` and `live` drive it the same way:
//!
//! ```no_run
//! use sentry_engine::report::{Report, ReportConfig};
//! use sentry_engine::{Engine, EngineConfig, Learning};
//!
//! fn analyze(path: &str) -> std::io::Result<()> {
//!     let file = sentry_etl::EtlFile::open(path).expect("an .etl file");
//!     let mut engine = Engine::new(EngineConfig {
//!         learning: Learning::Deferred,
//!         ..EngineConfig::default()
//!     });
//!     let mut report = Report::new(ReportConfig::default(), Box::new(std::io::stdout()));
//!     let mut events = file.events(sentry_etl::Order::Time);
//!     while let Some(ev) = events.next_event() {
//!         engine.process(&ev, &mut report); // in time order
//!     }
//!     let stats = engine.finish(&mut report); // flushes pending calls
//!     report.settle(&engine); // settles open rule-5 groups
//!     report.finish(&engine)?; // deduplicated alerts
//!     eprint!("{}", report.summary_table());
//!     eprintln!("{} calls", stats.syscalls);
//!     Ok(())
//! }
//! ```
//!
//! The engine's own notes (held pairs, stack caching, how the rules are
//! read) are in the documentation of [`Engine`].

#![forbid(unsafe_code)]

// The flow, in order: settings; the engine; state and address resolution;
// the stack sources and the correlator; the classifier; what sinks get.
pub mod allowlist;
mod builtin_allowlist;
pub mod classify;
mod completeness;
mod config;
pub mod correlate;
mod engine;
mod fxhash;
pub mod report;
mod resolve;
mod source;
pub mod state;
mod stats;
pub mod sysdlls;
mod verdict;

pub use allowlist::{Allowlist, DEFAULT_ALLOWLIST};
pub use builtin_allowlist::{
    builtin_name, BuiltinAllowlist, BuiltinStats, ChromiumSandboxStats, SignerLookup, BROWSERS,
    CHROMIUM_SANDBOX, INTERCEPTED_SERVICES,
};
pub use classify::{
    stack_truncated, wow64_bypassed, BytesChecked, FrameCheck, Outcome, Reason, ServiceTable,
    Verdict, MAX_STACK_FRAMES,
};
pub use completeness::{Completeness, LossGap, UnresolvedCounts};
pub use config::{EngineConfig, Learning, Pairing};
pub use correlate::{CorrelatorStats, Finish, Parent, ParentHook};
pub use engine::Engine;
pub use resolve::Resolver;
pub use sentry_images::Images;
pub use source::audit::{is_protected_process, AuditFacts, PROTECTED_PROCESSES};
pub use state::{Module, ModuleKind, ModuleMap, ProcessInfo, StateStats};
pub use stats::{DecodeErrorSample, EngineStats};
pub use sysdlls::{SystemDll, SystemDlls};
pub use verdict::{
    FnSink, NullSink, ServiceCheck, Settled, StackPair, SyscallVerdict, VerdictCounts, VerdictSink,
};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod testutil;
