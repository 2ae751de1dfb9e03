//! How an [`crate::Engine`] is set up: which events are stack parents, how
//! the service identity of return sites is obtained, and the bounds.

use std::sync::Arc;

use crate::allowlist::Allowlist;
use crate::builtin_allowlist::BuiltinAllowlist;
use crate::classify::ServiceTable;
use crate::sysdlls::SystemDlls;
use sentry_images::Images;

/// Which events are parents of StackWalk events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pairing {
    /// Only PerfInfo SysCallEnter (opcode 51): the detector.
    #[default]
    SysCallEnter,
    /// Every non-StackWalk event (correlator checks on real traces).
    AnyEvent,
}

/// How the service identity of return sites is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Learning {
    /// Use [`EngineConfig::services`] as given (analyze's second pass).
    #[default]
    Fixed,
    /// Learn while classifying (live).
    Online,
    /// Learn only: no verdicts are emitted (analyze's first pass).
    Only,
    /// One pass: learn over the whole input while classifying, and leave
    /// each rule-5 decision that depends on the learned service open
    /// ([`SyscallVerdict::service_check`](crate::SyscallVerdict::service_check)) until the input ends. Exactly the
    /// verdicts of a [`Learning::Only`] pass followed by a [`Learning::Fixed`]
    /// one: [`Engine::finish`](crate::Engine::finish) settles the counts, [`crate::report::Report`] the
    /// alerts and the summary (`analyze`'s default).
    Deferred,
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How long (trace time) a syscall waits for its stack parts.
    pub window_ms: u64,
    /// Hard cap on pending entries.
    pub max_pending: usize,
    pub pairing: Pairing,
    pub learning: Learning,
    /// Learned service identity (from a first pass).
    pub services: ServiceTable,
    pub system_dlls: Option<Arc<SystemDlls>>,
    /// `--images`: module bytes for rule 9 (call-preceded return addresses).
    pub images: Option<Arc<Images>>,
    pub allowlist: Allowlist,
    /// Built-in recognisers of benign sources (`builtin:chromium-sandbox`);
    /// on unless `--no-builtin-allowlist`.
    pub builtin: BuiltinAllowlist,
    /// Classify a SysCallEnter with the StackWalk right after it without
    /// the correlator (see [`Engine::process`](crate::Engine::process)). The results are the same
    /// either way; `false` exists to check that.
    pub hold_syscalls: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            window_ms: 500,
            max_pending: 1 << 16,
            pairing: Pairing::SysCallEnter,
            learning: Learning::Fixed,
            services: ServiceTable::new(),
            system_dlls: None,
            images: None,
            allowlist: Allowlist::default(),
            builtin: BuiltinAllowlist::default(),
            hold_syscalls: true,
        }
    }
}
