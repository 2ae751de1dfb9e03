//! Which events carry the calls of a live or recording session (`--source`),
//! and the Kernel-Audit-API-Calls provider's enable request.
//!
//! - `syscalls`: the SystemTraceProvider's SysCallEnter with a stack walk on
//!   each (the `SYSCALL` flag), plus process, thread and image events.
//! - `audit`: process, thread and image events only (no `SYSCALL` flag, no
//!   stack walks), plus Microsoft-Windows-Kernel-Audit-API-Calls enabled on
//!   the same session with `EnableTraceEx2` at level 4 and
//!   `EVENT_ENABLE_PROPERTY_STACK_TRACE`, so that each event carries its
//!   stack (`docs/audit-api.md`).
//! - `both`: all of it.
//!
//! The audit provider needs a session that takes `EnableTraceEx2`: a private
//! system-logger session (`--session private`). The NT Kernel Logger takes
//! only the SystemTraceProvider's events.
//!
//! [EnableTraceEx2](https://learn.microsoft.com/windows/win32/api/evntrace/nf-evntrace-enabletraceex2),
//! [ENABLE_TRACE_PARAMETERS](https://learn.microsoft.com/windows/win32/api/evntrace/ns-evntrace-enable_trace_parameters).

use sentry_raw::Guid;

use crate::properties::{
    SessionKind, EVENT_TRACE_FLAG_IMAGE_LOAD, EVENT_TRACE_FLAG_PROCESS, EVENT_TRACE_FLAG_THREAD,
    SENTRY_ENABLE_FLAGS,
};

/// `--source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Source {
    #[default]
    Syscalls,
    Audit,
    Both,
}

impl Source {
    pub const ALL: [Source; 3] = [Source::Syscalls, Source::Audit, Source::Both];

    pub fn name(self) -> &'static str {
        match self {
            Source::Syscalls => "syscalls",
            Source::Audit => "audit",
            Source::Both => "both",
        }
    }

    pub fn from_name(s: &str) -> Option<Source> {
        Source::ALL.into_iter().find(|x| x.name() == s)
    }

    /// SysCallEnter events with stacks.
    pub fn syscalls(self) -> bool {
        matches!(self, Source::Syscalls | Source::Both)
    }

    /// The Kernel-Audit-API-Calls provider.
    pub fn audit(self) -> bool {
        matches!(self, Source::Audit | Source::Both)
    }

    /// The session's `EnableFlags`: process, thread and image events always
    /// (module state), the `SYSCALL` flag only for the syscall source.
    pub fn enable_flags(self) -> u32 {
        if self.syscalls() {
            SENTRY_ENABLE_FLAGS
        } else {
            EVENT_TRACE_FLAG_PROCESS | EVENT_TRACE_FLAG_THREAD | EVENT_TRACE_FLAG_IMAGE_LOAD
        }
    }

    /// Whether a session of `kind` can carry this source, with what to do if
    /// not.
    pub fn check(self, kind: &SessionKind) -> Result<(), String> {
        if self.audit() && matches!(kind, SessionKind::KernelLogger) {
            return Err(format!(
                "--source {}: the NT Kernel Logger takes no other provider; \
                 use --session private (a private system-logger session carries \
                 the kernel events and the Kernel-Audit-API-Calls provider)",
                self.name()
            ));
        }
        Ok(())
    }
}

/// `EVENT_CONTROL_CODE_ENABLE_PROVIDER` (evntrace.h).
pub const EVENT_CONTROL_CODE_ENABLE_PROVIDER: u32 = 1;
/// `EVENT_ENABLE_PROPERTY_STACK_TRACE` (evntrace.h): each event gets a
/// `STACK_TRACE64`/`32` extended item.
pub const EVENT_ENABLE_PROPERTY_STACK_TRACE: u32 = 0x0000_0004;
/// `ENABLE_TRACE_PARAMETERS_VERSION_2`.
pub const ENABLE_TRACE_PARAMETERS_VERSION_2: u32 = 2;
/// `TRACE_LEVEL_INFORMATION`: the level of every Audit-API event.
pub const TRACE_LEVEL_INFORMATION: u8 = 4;

/// One `EnableTraceEx2` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderEnable {
    pub provider: Guid,
    pub level: u8,
    pub match_any: u64,
    pub match_all: u64,
    pub enable_property: u32,
}

impl ProviderEnable {
    /// Microsoft-Windows-Kernel-Audit-API-Calls at level 4, every keyword
    /// (it defines none), with stacks.
    pub fn audit_api() -> ProviderEnable {
        ProviderEnable {
            provider: Guid::from_u128(0xe02a841c_75a3_4fa7_afc8_ae09cf9b7f23),
            level: TRACE_LEVEL_INFORMATION,
            match_any: 0,
            match_all: 0,
            enable_property: EVENT_ENABLE_PROPERTY_STACK_TRACE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_set_flags_and_need_a_private_session_for_audit() {
        assert_eq!(Source::Syscalls.enable_flags(), SENTRY_ENABLE_FLAGS);
        assert_eq!(Source::Both.enable_flags(), SENTRY_ENABLE_FLAGS);
        assert_eq!(Source::Audit.enable_flags(), 0x7);
        assert!(Source::Audit.check(&SessionKind::KernelLogger).is_err());
        assert!(Source::Syscalls.check(&SessionKind::KernelLogger).is_ok());
        for s in Source::ALL {
            assert_eq!(Source::from_name(s.name()), Some(s));
        }
    }

    /// The `StartTraceW` block of an audit session: a private system logger
    /// whose `EnableFlags` are process, thread and image load only.
    #[test]
    fn an_audit_session_block_asks_for_no_syscall_events() {
        use crate::properties::EVENT_TRACE_SYSTEM_LOGGER_MODE;
        use crate::properties::{offsets, Buffers, Destination, PropertiesBlock, SessionSpec};
        let spec = SessionSpec {
            kind: SessionKind::Private {
                name: "sentry-audit".into(),
            },
            destination: Destination::RealTime,
            buffers: Buffers::default(),
            source: Source::Audit,
        };
        let b = PropertiesBlock::for_start(&spec).bytes;
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        assert_eq!(u32_at(offsets::ENABLE_FLAGS), 0x7);
        assert_ne!(
            u32_at(offsets::LOG_FILE_MODE) & EVENT_TRACE_SYSTEM_LOGGER_MODE,
            0
        );
        let both = SessionSpec {
            source: Source::Both,
            ..spec
        };
        assert_eq!(both.enable_flags(), SENTRY_ENABLE_FLAGS);
    }

    #[test]
    fn the_audit_provider_is_enabled_at_level_4_with_stacks() {
        let e = ProviderEnable::audit_api();
        assert_eq!(
            e.provider.to_string(),
            "e02a841c-75a3-4fa7-afc8-ae09cf9b7f23"
        );
        assert_eq!((e.level, e.match_any, e.match_all), (4, 0, 0));
        assert_eq!(e.enable_property, EVENT_ENABLE_PROPERTY_STACK_TRACE);
    }
}
