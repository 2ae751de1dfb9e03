//! When to stop, restart or finish a live session: a pure state machine fed
//! with what the Windows layer observes, so the decisions are tested on any
//! platform.
//!
//! Another tool (xperf -stop, WPR, `logman stop`, a second syscall-sentry
//! with `--force`) can stop the one global "NT Kernel Logger" under us. The
//! consumer then sees `ProcessTrace` return although nobody asked it to, or a
//! periodic `ControlTraceW(QUERY)` fails with `ERROR_WMI_INSTANCE_NOT_FOUND`.
//! That is reported as an alert (a sensor going blind is itself suspicious)
//! and the session is started again, within a restart budget so two tools do
//! not fight forever.
//!
//! `ProcessTrace` returning is an outside stop only if it returned success
//! *and* the session is gone. An error status, or success while the session
//! still exists, is a consumer failure: the session is stopped (never left
//! running with nobody reading it, the kernel walking a stack on every
//! syscall of the host) and `live` ends with the error.

use std::collections::VecDeque;

/// Why the user side asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Ctrl-C or Ctrl-Break.
    Interrupt,
    /// The console window is closing, or logoff/shutdown.
    ConsoleClose,
    /// `--duration` elapsed.
    Duration,
}

/// What the Windows layer observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    StopRequested(StopReason),
    /// `ProcessTrace` returned (the consumer thread ended) with `status`;
    /// `session_running`: a query afterwards still found the session.
    ConsumerEnded {
        status: u32,
        session_running: bool,
    },
    /// A periodic `ControlTraceW(QUERY)` failed; `session_missing` when the
    /// error says the session no longer exists.
    QueryFailed {
        session_missing: bool,
    },
    /// A restart succeeded (session started, consumer reopened).
    Restarted,
    /// A restart failed.
    RestartFailed,
}

/// What the Windows layer must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do.
    Continue,
    /// `ControlTraceW(STOP)` our session; `ProcessTrace` will then return.
    StopSession(StopReason),
    /// Our session was stopped by someone else: raise an alert, wait for the
    /// old consumer to end, start the session again and reopen the consumer.
    Restart { attempt: u32 },
    /// Our stop completed: close the trace, drain the ring, flush outputs.
    Finish(StopReason),
    /// Stopped by someone else and not restartable (budget exhausted or the
    /// restart failed): close, flush, exit with an error.
    GiveUp,
    /// The consumer failed (`ProcessTrace`'s status): stop our session,
    /// flush, exit with the error.
    Fail { status: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    Stopping(StopReason),
    Restarting,
    Done,
}

/// The decision state.
#[derive(Debug, Clone)]
pub struct Supervisor {
    phase: Phase,
    /// Restarts allowed within `window_s` seconds.
    max_restarts: usize,
    window_s: u64,
    recent: VecDeque<u64>,
    restarts: u32,
    external_stops: u32,
}

impl Default for Supervisor {
    fn default() -> Self {
        Supervisor::new(5, 60)
    }
}

impl Supervisor {
    pub fn new(max_restarts: usize, window_s: u64) -> Supervisor {
        Supervisor {
            phase: Phase::Running,
            max_restarts,
            window_s,
            recent: VecDeque::new(),
            restarts: 0,
            external_stops: 0,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Restarts performed so far.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// Times the session was found stopped by someone else.
    pub fn external_stops(&self) -> u32 {
        self.external_stops
    }

    /// Feeds one observation at time `now_s` (seconds since start).
    pub fn on(&mut self, obs: Observation, now_s: u64) -> Action {
        use Observation::*;
        match (self.phase, obs) {
            (Phase::Done, _) => Action::Continue,
            (Phase::Running, StopRequested(r)) | (Phase::Restarting, StopRequested(r)) => {
                self.phase = Phase::Stopping(r);
                Action::StopSession(r)
            }
            (Phase::Stopping(_), StopRequested(_)) => Action::Continue,
            (Phase::Stopping(r), ConsumerEnded { .. }) => {
                self.phase = Phase::Done;
                Action::Finish(r)
            }
            (
                Phase::Running,
                ConsumerEnded {
                    status: 0,
                    session_running: false,
                },
            )
            | (
                Phase::Running,
                QueryFailed {
                    session_missing: true,
                },
            ) => {
                self.external_stops += 1;
                self.try_restart(now_s)
            }
            (Phase::Running, ConsumerEnded { status, .. }) => {
                self.phase = Phase::Done;
                Action::Fail { status }
            }
            (_, QueryFailed { .. }) => Action::Continue,
            (Phase::Restarting, Restarted) => {
                self.phase = Phase::Running;
                Action::Continue
            }
            (Phase::Restarting, RestartFailed) => {
                self.phase = Phase::Done;
                Action::GiveUp
            }
            // The old consumer ending while we restart is expected.
            (Phase::Restarting, ConsumerEnded { .. }) => Action::Continue,
            (_, Restarted) | (_, RestartFailed) => Action::Continue,
        }
    }

    fn try_restart(&mut self, now_s: u64) -> Action {
        while self
            .recent
            .front()
            .is_some_and(|&t| now_s.saturating_sub(t) >= self.window_s)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.max_restarts {
            self.phase = Phase::Done;
            return Action::GiveUp;
        }
        self.recent.push_back(now_s);
        self.restarts += 1;
        self.phase = Phase::Restarting;
        Action::Restart {
            attempt: self.restarts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Observation::*;

    /// `ProcessTrace` returned success and the session is gone.
    const ENDED: Observation = ConsumerEnded {
        status: 0,
        session_running: false,
    };

    #[test]
    fn a_consumer_failure_is_not_an_outside_stop() {
        // An error status: stop the session and fail, no restart.
        let mut s = Supervisor::default();
        assert_eq!(
            s.on(
                ConsumerEnded {
                    status: 1359,
                    session_running: true
                },
                3
            ),
            Action::Fail { status: 1359 }
        );
        assert_eq!(s.phase(), Phase::Done);
        assert_eq!(s.external_stops(), 0);
        // Success while the session still exists: also a failure.
        let mut s = Supervisor::default();
        assert_eq!(
            s.on(
                ConsumerEnded {
                    status: 0,
                    session_running: true
                },
                3
            ),
            Action::Fail { status: 0 }
        );
        // An error even though the session is gone: still the error.
        let mut s = Supervisor::default();
        assert_eq!(
            s.on(
                ConsumerEnded {
                    status: 6,
                    session_running: false
                },
                3
            ),
            Action::Fail { status: 6 }
        );
    }

    #[test]
    fn user_stop_then_consumer_end_finishes() {
        let mut s = Supervisor::default();
        assert_eq!(
            s.on(StopRequested(StopReason::Interrupt), 3),
            Action::StopSession(StopReason::Interrupt)
        );
        // A second Ctrl-C while stopping does not stop twice.
        assert_eq!(
            s.on(StopRequested(StopReason::Interrupt), 3),
            Action::Continue
        );
        // A query failing because we stopped is not an external stop.
        assert_eq!(
            s.on(
                QueryFailed {
                    session_missing: true
                },
                3
            ),
            Action::Continue
        );
        assert_eq!(s.on(ENDED, 4), Action::Finish(StopReason::Interrupt));
        assert_eq!(s.phase(), Phase::Done);
        assert_eq!(s.external_stops(), 0);
        assert_eq!(s.on(ENDED, 5), Action::Continue);
    }

    #[test]
    fn external_stop_restarts_and_resumes() {
        let mut s = Supervisor::default();
        assert_eq!(s.on(ENDED, 10), Action::Restart { attempt: 1 });
        assert_eq!(s.phase(), Phase::Restarting);
        assert_eq!(s.on(Restarted, 10), Action::Continue);
        assert_eq!(s.phase(), Phase::Running);
        // Detected by a failed query this time.
        assert_eq!(
            s.on(
                QueryFailed {
                    session_missing: true
                },
                20
            ),
            Action::Restart { attempt: 2 }
        );
        // The old consumer ending during the restart is expected.
        assert_eq!(s.on(ENDED, 20), Action::Continue);
        assert_eq!(s.on(Restarted, 21), Action::Continue);
        assert_eq!(s.external_stops(), 2);
        assert_eq!(s.restarts(), 2);
        // Transient query errors change nothing.
        assert_eq!(
            s.on(
                QueryFailed {
                    session_missing: false
                },
                22
            ),
            Action::Continue
        );
        assert_eq!(s.phase(), Phase::Running);
    }

    #[test]
    fn restart_budget_stops_a_fight() {
        let mut s = Supervisor::new(3, 60);
        for (i, t) in [0u64, 10, 20].into_iter().enumerate() {
            assert_eq!(
                s.on(ENDED, t),
                Action::Restart {
                    attempt: i as u32 + 1
                }
            );
            s.on(Restarted, t);
        }
        // A fourth stop within 60 s of the first: give up.
        assert_eq!(s.on(ENDED, 30), Action::GiveUp);
        assert_eq!(s.phase(), Phase::Done);

        // Spread out over time, restarts keep being allowed.
        let mut s = Supervisor::new(3, 60);
        for k in 0..10u64 {
            assert!(matches!(s.on(ENDED, k * 30), Action::Restart { .. }));
            s.on(Restarted, k * 30);
        }
    }

    #[test]
    fn failed_restart_gives_up_and_stop_during_restart_stops() {
        let mut s = Supervisor::default();
        s.on(ENDED, 0);
        assert_eq!(s.on(RestartFailed, 0), Action::GiveUp);

        let mut s = Supervisor::default();
        s.on(ENDED, 0);
        assert_eq!(
            s.on(StopRequested(StopReason::Duration), 1),
            Action::StopSession(StopReason::Duration)
        );
        assert_eq!(s.on(ENDED, 1), Action::Finish(StopReason::Duration));
    }
}

/// An alert about the sensor itself: the session was stopped by someone
/// else while `live` was running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionAlert {
    pub session: String,
    /// Seconds since `live` started.
    pub elapsed_s: u64,
    /// Restart attempt number (1-based); 0 when no restart is attempted.
    pub attempt: u32,
    /// Whether the session runs again.
    pub restarted: bool,
}

impl std::fmt::Display for SessionAlert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "trace session \"{}\" was stopped by another program after {} s; ",
            self.session, self.elapsed_s
        )?;
        if self.restarted {
            write!(f, "restarted (attempt {})", self.attempt)
        } else {
            f.write_str("not restarted: events from then on are missing")
        }
    }
}
