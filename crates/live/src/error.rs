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
/// `ERROR_CANCELLED`: `ProcessTrace` after `CloseTrace`.
pub const ERROR_CANCELLED: u32 = 1223;
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
            LiveError::Win32 { call, code } => write!(f, "{call} failed: Win32 error {code}"),
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
        assert_eq!(
            LiveError::from_code("OpenTraceW", "x", 87),
            LiveError::Win32 {
                call: "OpenTraceW",
                code: 87
            }
        );
    }
}
