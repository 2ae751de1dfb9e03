//! Exit codes, from one place (documented in `--help` and the README).
//!
//! `analyze` answers two questions: were alerts found, and could the input
//! show everything. An alert stands on its own evidence, so alerts win; a
//! run without alerts on damaged or incomplete input is not "clean".

use std::process::ExitCode;

/// Nothing found, and the input was whole.
pub const NOTHING_FOUND: u8 = 0;
/// Alerts found (direct or indirect syscalls).
pub const ALERTS: u8 = 1;
/// Could not analyse: bad options, or no input could be read.
pub const ERROR: u8 = 2;
/// Nothing found, but the input was damaged or incomplete (reader errors,
/// missing buffers, events the session lost, unresolved syscalls, a trace
/// without SysCallEnter stacks, filters that matched no syscall, or one of
/// several files unreadable).
pub const INCOMPLETE: u8 = 3;
/// The reader of the output went away (`| head`): 128 + SIGPIPE, what a
/// shell reports for a program stopped by a closed pipe.
pub const BROKEN_PIPE: u8 = 141;

/// The `--help` text.
pub const HELP: &str = "Exit codes (analyze, live): 0 nothing found, input whole; 1 alerts found; \
2 could not analyse; 3 nothing found, but the input was damaged or incomplete, or live lost \
events (see the warnings on stderr); 141 the output pipe was closed.";

/// The code of a finished analysis.
pub fn of(alerts: bool, incomplete: bool) -> ExitCode {
    ExitCode::from(match (alerts, incomplete) {
        (true, _) => ALERTS,
        (false, true) => INCOMPLETE,
        (false, false) => NOTHING_FOUND,
    })
}

/// The error is a write to a closed pipe.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
