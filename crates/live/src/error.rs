//! Errors of the live layer, with the advice a user needs to act on them.
//! Win32 codes are mapped here (platform-neutral, tested everywhere).

use std::fmt;

/// `ERROR_ACCESS_DENIED`.
pub const ERROR_ACCESS_DENIED: u32 = 5;
/// `ERROR_BAD_LENGTH`.
pub const ERROR_BAD_LENGTH: u32 = 24;
/// `ERROR_INVALID_PARAMETER`.
pub const ERROR_INVALID_PARAMETER: u32 = 87;
/// `ERROR_ALREADY_EXISTS`.
pub const ERROR_ALREADY_EXISTS: u32 = 183;
/// `ERROR_MORE_DATA`: a query whose name room was too small (the counters are
/// still filled in).
pub const ERROR_MORE_DATA: u32 = 234;
/// `ERROR_NOT_SUPPORTED`: e.g. a system-logger session where there is none
/// (before Windows 8, or inside a Windows Server container).
pub const ERROR_NOT_SUPPORTED: u32 = 50;
/// `ERROR_BUSY`.
pub const ERROR_BUSY: u32 = 170;
/// `ERROR_CANCELLED`: `ProcessTrace`'s "the consumer canceled processing by
/// returning FALSE in their BufferCallback function"
/// ([ProcessTrace](https://learn.microsoft.com/windows/win32/api/evntrace/nf-evntrace-processtrace));
/// syscall-sentry sets no BufferCallback, so for it this is an error too.
pub const ERROR_CANCELLED: u32 = 1223;
/// `ERROR_NO_SYSTEM_RESOURCES`: too many sessions of this kind (at most 8
/// system-logger sessions, 64 sessions in all).
pub const ERROR_NO_SYSTEM_RESOURCES: u32 = 1450;
/// `ERROR_WMI_INSTANCE_NOT_FOUND`: no session by that name.
pub const ERROR_WMI_INSTANCE_NOT_FOUND: u32 = 4201;

/// A live-layer failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveError {
    /// `ERROR_ACCESS_DENIED` from a session call.
    NotElevated { call: &'static str },
    /// `ERROR_ALREADY_EXISTS` from `StartTraceW`.
    AlreadyRunning { session: String },
    /// No session by that name (`stop`, query).
    NotFound { session: String },
    /// Any other Win32 error.
    Win32 { call: &'static str, code: u32 },
    /// The session was stopped by someone else and could not be restarted.
    SessionLost { session: String, restarts: u32 },
    /// The consumer thread did not end after the session stopped.
    ConsumerStuck,
    /// `ProcessTrace` returned on its own with this status while the
    /// session was still ours to run (0: it returned success although the
    /// session still exists). The session was stopped.
    ConsumerFailed { session: String, code: u32 },
    /// Anything else (I/O on the outputs, the system directories).
    Other(String),
}

impl LiveError {
    /// Maps a Win32 error code returned by `call` on `session`.
    pub fn from_code(call: &'static str, session: &str, code: u32) -> LiveError {
        match code {
            ERROR_ACCESS_DENIED => LiveError::NotElevated { call },
            ERROR_ALREADY_EXISTS => LiveError::AlreadyRunning {
                session: session.to_string(),
            },
            ERROR_WMI_INSTANCE_NOT_FOUND => LiveError::NotFound {
                session: session.to_string(),
            },
            code => LiveError::Win32 { call, code },
        }
    }

    /// What to do about a bare Win32 code, when there is something to say.
    fn advice(call: &str, code: u32) -> Option<&'static str> {
        match code {
            ERROR_NO_SYSTEM_RESOURCES => Some(
                "too many trace sessions: Windows allows at most 8 system-logger sessions \
                 (--session private) and 64 sessions in all. List them with \
                 `logman query -ets` and stop one you do not need, or use --session kernel",
            ),
            ERROR_NOT_SUPPORTED if call.starts_with("StartTraceW") => Some(
                "this system does not support the requested session: --session private needs \
                 Windows 8 or later and is not available inside Windows Server containers; \
                 use --session kernel on the host",
            ),
            _ => None,
        }
    }

    fn stop_hint(session: &str) -> String {
        if session == crate::properties::KERNEL_LOGGER_NAME {
            "`syscall-sentry stop`".to_string()
        } else {
            format!("`syscall-sentry stop --session private --session-name \"{session}\"`")
        }
    }
}

impl fmt::Display for LiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LiveError::NotElevated { call } => write!(
                f,
                "{call}: access denied (ERROR_ACCESS_DENIED). Kernel trace sessions need \
                 Administrator rights: run syscall-sentry from an elevated prompt \
                 (right-click the terminal, \"Run as administrator\")"
            ),
            LiveError::AlreadyRunning { session } => write!(
                f,
                "the trace session \"{session}\" is already running (ERROR_ALREADY_EXISTS), \
                 probably started by another tool (xperf, WPR, Process Monitor) or a previous \
                 syscall-sentry run. Only one \"NT Kernel Logger\" can exist. Add --force to stop \
                 it and start ours, run {} first, or use --session private (Windows 8+)",
                LiveError::stop_hint(session)
            ),
            LiveError::NotFound { session } => {
                write!(f, "no trace session named \"{session}\" is running")
            }
            LiveError::Win32 { call, code } => {
                write!(f, "{call} failed: Win32 error {code}")?;
                if let Some(a) = LiveError::advice(call, *code) {
                    write!(f, ": {a}")?;
                }
                Ok(())
            }
            LiveError::ConsumerFailed { session, code: 0 } => write!(
                f,
                "ProcessTrace returned although the trace session \"{session}\" was still \
                 running; the session was stopped. Run again; if it recurs, report it"
            ),
            LiveError::ConsumerFailed { session, code } => write!(
                f,
                "ProcessTrace failed with Win32 error {code} while reading \"{session}\"; \
                 the session was stopped (events from then on are missing). Run again"
            ),
            LiveError::SessionLost { session, restarts } => write!(
                f,
                "the trace session \"{session}\" was stopped by another program and could not be \
                 kept running ({restarts} restarts)"
            ),
            LiveError::ConsumerStuck => {
                write!(
                    f,
                    "the ETW consumer did not return after the session stopped"
                )
            }
            LiveError::Other(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for LiveError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_actionable_errors() {
        let e = LiveError::from_code("StartTraceW", "NT Kernel Logger", 5);
        assert_eq!(
            e,
            LiveError::NotElevated {
                call: "StartTraceW"
            }
        );
        assert!(e.to_string().contains("Run as administrator"));

        let e = LiveError::from_code("StartTraceW", "NT Kernel Logger", 183);
        let msg = e.to_string();
        assert!(msg.contains("\"NT Kernel Logger\" is already running"));
        assert!(msg.contains("--force"));
        assert!(msg.contains("`syscall-sentry stop`"));

        let e = LiveError::from_code("StartTraceW", "mine", 183);
        assert!(e.to_string().contains("--session-name \"mine\""));

        assert_eq!(
            LiveError::from_code("ControlTraceW", "x", 4201),
            LiveError::NotFound {
                session: "x".into()
            }
        );
        let e = LiveError::from_code("StartTraceW", "mine", 1450).to_string();
        assert!(e.contains("at most 8 system-logger sessions"), "{e}");
        let e = LiveError::from_code("StartTraceW", "mine", 50).to_string();
        assert!(e.contains("Windows Server containers"), "{e}");
        let e = LiveError::ConsumerFailed {
            session: "s".into(),
            code: 1359,
        };
        assert!(e.to_string().contains("Win32 error 1359"));
        assert!(e.to_string().contains("session was stopped"));
        assert_eq!(
            LiveError::from_code("OpenTraceW", "x", 87),
            LiveError::Win32 {
                call: "OpenTraceW",
                code: 87
            }
        );
    }
}
