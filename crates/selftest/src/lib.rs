//! `syscall-sentry selftest`, the platform-neutral part: the technique
//! fixtures and what each must produce ([`fixture`]), the decision per
//! fixture from the stream of verdicts, the fixtures' own reports and the
//! session's loss counters ([`decide`]), and the printed table ([`table`]).
//!
//! The flow on Windows (crates/cli `selftest`): start the live session,
//! launch every fixture, feed each [`sentry_engine::SyscallVerdict`] to
//! [`Selftest::verdict`] and each fixture's start and exit to
//! [`Selftest::started`] / [`Selftest::exited`], then [`Selftest::outcome`]
//! once every fixture has [`settled`](Selftest::settled). Everything here
//! is tested on Linux with verdicts the real engine produced from `synth`
//! traces of each technique.

#![forbid(unsafe_code)]

pub mod decide;
pub mod fixture;
pub mod table;

pub use decide::{compare, Failure, FixtureResult, Label, Loss, Outcome, Selftest};
pub use fixture::{Expect, Fixture, FixtureReport, FIXTURES};
