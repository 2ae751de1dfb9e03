//! Pass or fail per fixture, from what the session delivered.
//!
//! Inputs, in any interleaving: a fixture started (pid, time, the loss
//! counters then), a verdict (pid, verdict, reason, arrival time), a fixture
//! exited (exit code, its JSON line). Time is milliseconds on any monotonic
//! clock the caller chooses. A fixture's verdicts count when they arrive
//! before its deadline: its exit plus the wait. The decision, in order:
//!
//! 1. the fixture did not run (launch error, refused, exit code, no or
//!    inconsistent report) or did not exit within its run time: fail, and
//!    nothing is said about the sensor;
//! 2. events were lost since the fixture started and it did not pass
//!    cleanly: fail as [`Failure::EventsLost`], not as a missed technique
//!    or a false alert, since the engine may not have seen what it needed;
//!    likewise a technique not caught while the engine called some of the
//!    process's syscalls `unresolved` ([`Failure::Unresolved`]);
//! 3. benign fixture: any alert from its process fails it;
//! 4. technique fixture: any alert of another kind fails it (wrong reason);
//!    `calls` alerts of the expected kind by the deadline pass it; enough
//!    only with late ones, or no verdict at all from its process by the
//!    deadline, is a timeout; otherwise the technique was missed.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use sentry_engine::{Reason, Verdict};

use crate::fixture::{same_image, Expect, Fixture, FixtureReport, EXIT_REFUSED};

/// Milliseconds on the caller's monotonic clock.
pub type Millis = u64;

/// A verdict with its reason, as `docs/verdicts.md` writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    pub verdict: Verdict,
    pub reason: Option<Reason>,
}

impl Label {
    pub fn new(verdict: Verdict, reason: Option<Reason>) -> Label {
        Label { verdict, reason }
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            Some(r) => write!(f, "{}/{}", self.verdict.as_str(), r.as_str()),
            None => f.write_str(self.verdict.as_str()),
        }
    }
}

/// The session's loss counters (totals since the session started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Loss {
    /// `EventsLost` of the ETW session.
    pub events_lost: u64,
    /// `RealTimeBuffersLost` of the ETW session.
    pub real_time_buffers_lost: u64,
    /// Records the callback dropped because syscall-sentry's ring was full.
    pub ring_drops: u64,
}

impl Loss {
    pub fn any(&self) -> bool {
        self.events_lost + self.real_time_buffers_lost + self.ring_drops > 0
    }

    /// What was lost after `earlier`.
    pub fn since(&self, earlier: &Loss) -> Loss {
        Loss {
            events_lost: self.events_lost.saturating_sub(earlier.events_lost),
            real_time_buffers_lost: self
                .real_time_buffers_lost
                .saturating_sub(earlier.real_time_buffers_lost),
            ring_drops: self.ring_drops.saturating_sub(earlier.ring_drops),
        }
    }
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "EventsLost {}, RealTimeBuffersLost {}, ring drops {}",
            self.events_lost, self.real_time_buffers_lost, self.ring_drops
        )
    }
}

/// Why a fixture failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The fixture could not start, failed, or printed no usable report.
    NotRun(String),
    /// The fixture found no genuine Windows ntdll stubs and made no raw call.
    Refused(String),
    /// The fixture did not exit within its run time (it was killed).
    Hung,
    /// The session lost events while the fixture ran, and it did not pass.
    EventsLost(Loss),
    /// Not caught, and the engine said it could not decide some of the
    /// process's syscalls (`unresolved`: process start, ntdll mapping or
    /// events not seen).
    Unresolved(Vec<(Label, u64)>),
    /// The benign fixture raised alerts.
    BenignAlert(Vec<(Label, u64)>),
    /// Alerts of another kind than the technique's.
    WrongReason(Vec<(Label, u64)>),
    /// The process's syscalls arrived but too few had the expected verdict.
    Missed { caught: u64, expected: u64 },
    /// Too few verdicts by the deadline: `on_time` of the expected kind
    /// before it, `late` after it, `any_on_time` verdicts at all before it.
    Timeout {
        on_time: u64,
        late: u64,
        expected: u64,
        any_on_time: u64,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NotRun(s) => write!(f, "fixture did not run: {s}"),
            Failure::Refused(s) => write!(f, "fixture refused: {s}"),
            Failure::Hung => f.write_str("fixture did not exit in time (killed)"),
            Failure::EventsLost(l) => write!(
                f,
                "events lost while it ran ({l}): inconclusive, not a detection failure"
            ),
            Failure::Unresolved(l) => write!(
                f,
                "the engine could not see enough to decide: {} (not a detection failure)",
                list(l)
            ),
            Failure::BenignAlert(l) => write!(f, "alerts on the benign fixture: {}", list(l)),
            Failure::WrongReason(l) => write!(f, "unexpected alerts: {}", list(l)),
            Failure::Missed { caught, expected } => {
                write!(f, "missed: {caught} of {expected} calls caught")
            }
            Failure::Timeout {
                on_time,
                late,
                expected,
                any_on_time,
            } => {
                if *any_on_time == 0 {
                    write!(f, "timeout: no verdict for its process by the deadline")
                } else {
                    write!(
                        f,
                        "timeout: {on_time} of {expected} by the deadline, {late} after it"
                    )
                }
            }
        }
    }
}

fn list(l: &[(Label, u64)]) -> String {
    l.iter()
        .map(|(k, n)| format!("{k} x{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a fixture process ended.
#[derive(Debug, Clone)]
struct Exit {
    at: Millis,
    /// `None`: killed after the run time.
    code: Option<i32>,
    report: Option<FixtureReport>,
}

#[derive(Debug, Clone)]
struct Tracked {
    fixture: Fixture,
    pid: Option<u32>,
    started: Option<Millis>,
    loss_at_start: Loss,
    exit: Option<Exit>,
    launch_error: Option<String>,
    on_time: BTreeMap<Label, u64>,
    late: BTreeMap<Label, u64>,
    /// Verdicts of its pid from a process of another image (pid reused).
    other_image: u64,
    /// The image of a process standing in for the fixture (test harness).
    stand_in: Option<String>,
}

impl Tracked {
    fn deadline(&self, wait: Millis) -> Option<Millis> {
        self.exit.as_ref().map(|e| e.at.saturating_add(wait))
    }

    fn expected_calls(&self) -> u64 {
        self.exit
            .as_ref()
            .and_then(|e| e.report.as_ref())
            .and_then(|r| r.calls)
            .unwrap_or(0)
    }

    fn caught_on_time(&self) -> u64 {
        match self.fixture.expect {
            Expect::Benign => self
                .on_time
                .get(&Label::new(Verdict::Normal, None))
                .copied(),
            Expect::Alert(v, r) => self.on_time.get(&Label::new(v, Some(r))).copied(),
        }
        .unwrap_or(0)
    }
}

/// The result for one fixture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixtureResult {
    pub fixture: Fixture,
    pub pid: Option<u32>,
    /// Calls the fixture reported making.
    pub calls: u64,
    /// Verdicts of its process, by label (on time and late together).
    pub seen: Vec<(Label, u64)>,
    /// Loss counters' increase since it started.
    pub loss: Loss,
    /// Verdicts of its pid from a process of another image, ignored.
    pub other_image: u64,
    pub failure: Option<Failure>,
}

impl FixtureResult {
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub fixtures: Vec<FixtureResult>,
    /// The session's loss counters at the end.
    pub loss: Loss,
}

impl Outcome {
    /// Every fixture passed (the benign one raised nothing).
    pub fn passed(&self) -> bool {
        !self.fixtures.is_empty() && self.fixtures.iter().all(FixtureResult::passed)
    }
}

/// The running decision.
#[derive(Debug, Clone)]
pub struct Selftest {
    tracked: Vec<Tracked>,
    by_pid: HashMap<u32, usize>,
    wait: Millis,
}

impl Selftest {
    /// `wait`: how long after a fixture's exit its verdicts may still
    /// arrive.
    pub fn new(fixtures: &[Fixture], wait: Millis) -> Selftest {
        Selftest {
            tracked: fixtures
                .iter()
                .map(|&fixture| Tracked {
                    fixture,
                    pid: None,
                    started: None,
                    loss_at_start: Loss::default(),
                    exit: None,
                    launch_error: None,
                    on_time: BTreeMap::new(),
                    late: BTreeMap::new(),
                    other_image: 0,
                    stand_in: None,
                })
                .collect(),
            by_pid: HashMap::new(),
            wait,
        }
    }

    /// Fixture `i` started as `pid` at `now`; `loss` is the session's
    /// counters as last known.
    pub fn started(&mut self, i: usize, pid: u32, now: Millis, loss: Loss) {
        let t = &mut self.tracked[i];
        t.pid = Some(pid);
        t.started = Some(now);
        t.loss_at_start = loss;
        self.by_pid.insert(pid, i);
    }

    /// A process of image `image` stands in for fixture `i` (a replayed
    /// trace in a test harness, where the fixtures themselves cannot run).
    pub fn stand_in(&mut self, i: usize, image: &str) {
        self.tracked[i].stand_in = Some(image.to_string());
    }

    /// Fixture `i` could not be started.
    pub fn launch_failed(&mut self, i: usize, error: String) {
        self.tracked[i].launch_error = Some(error);
    }

    /// Fixture `i` ended at `now` with `code` (`None`: killed after its run
    /// time) and printed `stdout`.
    pub fn exited(&mut self, i: usize, now: Millis, code: Option<i32>, stdout: &str) {
        self.tracked[i].exit = Some(Exit {
            at: now,
            code,
            report: FixtureReport::from_stdout(stdout),
        });
    }

    /// One verdict from the engine, arrived at `now`. `image`: the image
    /// name the engine knows for the process, if any; a verdict whose image
    /// is not the fixture's belongs to another process that reused the pid
    /// and is ignored.
    pub fn verdict(
        &mut self,
        now: Millis,
        pid: Option<u32>,
        image: Option<&str>,
        verdict: Verdict,
        reason: Option<Reason>,
    ) {
        let Some(&i) = pid.and_then(|p| self.by_pid.get(&p)) else {
            return;
        };
        let wait = self.wait;
        let t = &mut self.tracked[i];
        let own = |m: &str| match &t.stand_in {
            Some(file) => same_image(file, m),
            None => t.fixture.is_image(m),
        };
        if image.is_some_and(|m| !own(m)) {
            t.other_image += 1;
            return;
        }
        let late = t.deadline(wait).is_some_and(|d| now > d);
        let map = if late { &mut t.late } else { &mut t.on_time };
        *map.entry(Label::new(verdict, reason)).or_default() += 1;
    }

    /// Fixture `i` needs nothing more: it did not start, or it ran and its
    /// deadline passed, or (technique fixtures) all its calls were caught.
    /// A fixture past its run time must be killed by the caller and
    /// reported through [`Selftest::exited`] with no exit code.
    pub fn settled(&self, i: usize, now: Millis) -> bool {
        let t = &self.tracked[i];
        if t.launch_error.is_some() {
            return true;
        }
        let Some(exit) = &t.exit else {
            return false;
        };
        if run_problem(t).is_some() {
            return true;
        }
        if now >= exit.at.saturating_add(self.wait) {
            return true;
        }
        matches!(t.fixture.expect, Expect::Alert(..)) && t.caught_on_time() >= t.expected_calls()
    }

    pub fn all_settled(&self, now: Millis) -> bool {
        (0..self.tracked.len()).all(|i| self.settled(i, now))
    }

    /// The decision for every fixture, with the session's final `loss`.
    pub fn outcome(&self, loss: Loss) -> Outcome {
        Outcome {
            fixtures: self.tracked.iter().map(|t| decide(t, &loss)).collect(),
            loss,
        }
    }
}

fn decide(t: &Tracked, loss: &Loss) -> FixtureResult {
    let mut seen: BTreeMap<Label, u64> = t.on_time.clone();
    for (k, n) in &t.late {
        *seen.entry(*k).or_default() += n;
    }
    let lost = loss.since(&t.loss_at_start);
    let calls = t.expected_calls();
    let result = |failure| FixtureResult {
        fixture: t.fixture,
        pid: t.pid,
        calls,
        seen: seen.iter().map(|(k, n)| (*k, *n)).collect(),
        loss: lost,
        other_image: t.other_image,
        failure,
    };
    if let Some(f) = run_problem(t) {
        return result(Some(f));
    }
    let alerts = |keep: &dyn Fn(&Label) -> bool| -> Vec<(Label, u64)> {
        seen.iter()
            .filter(|(k, _)| k.verdict.is_alert() && keep(k))
            .map(|(k, n)| (*k, *n))
            .collect()
    };
    let on_time_any: u64 = t.on_time.values().sum();
    let failure = match t.fixture.expect {
        Expect::Benign => {
            let raised = alerts(&|_| true);
            if !raised.is_empty() {
                Some(Failure::BenignAlert(raised))
            } else if t.caught_on_time() >= calls {
                None
            } else {
                Some(timeout_or_missed(t, calls, on_time_any))
            }
        }
        Expect::Alert(v, r) => {
            let want = Label::new(v, Some(r));
            let other = alerts(&|k| *k != want);
            if !other.is_empty() {
                Some(Failure::WrongReason(other))
            } else if t.caught_on_time() >= calls {
                None
            } else {
                Some(timeout_or_missed(t, calls, on_time_any))
            }
        }
    };
    // What the engine could not see is reported as such, never as a miss
    // or a false alert.
    let unresolved: Vec<(Label, u64)> = seen
        .iter()
        .filter(|(k, _)| k.verdict == Verdict::Unresolved)
        .map(|(k, n)| (*k, *n))
        .collect();
    let failure = match failure {
        Some(_) if lost.any() => Some(Failure::EventsLost(lost)),
        Some(Failure::Missed { .. } | Failure::Timeout { .. }) if !unresolved.is_empty() => {
            Some(Failure::Unresolved(unresolved))
        }
        f => f,
    };
    result(failure)
}

/// Why fixture `t` did not run as it should (rule 1), if it did not.
fn run_problem(t: &Tracked) -> Option<Failure> {
    if let Some(e) = &t.launch_error {
        return Some(Failure::NotRun(e.clone()));
    }
    let (Some(pid), Some(exit)) = (t.pid, &t.exit) else {
        return Some(Failure::NotRun("never started".into()));
    };
    let Some(code) = exit.code else {
        return Some(Failure::Hung);
    };
    match &exit.report {
        Some(r) if r.refused.is_some() || code == EXIT_REFUSED => {
            let why = r.refused.clone().unwrap_or_else(|| "exit code 3".into());
            Some(Failure::Refused(why))
        }
        _ if code != 0 => Some(Failure::NotRun(format!("exit code {code}"))),
        None => Some(Failure::NotRun("printed no JSON report".into())),
        Some(r) if r.pid != pid || r.fixture != t.fixture.name => Some(Failure::NotRun(format!(
            "report is of {} pid {}, started {} pid {pid}",
            r.fixture, r.pid, t.fixture.name
        ))),
        Some(r) if r.calls.unwrap_or(0) == 0 => Some(Failure::NotRun("reported no calls".into())),
        Some(_) => None,
    }
}

fn timeout_or_missed(t: &Tracked, calls: u64, on_time_any: u64) -> Failure {
    let on_time = t.caught_on_time();
    let want = match t.fixture.expect {
        Expect::Benign => Label::new(Verdict::Normal, None),
        Expect::Alert(v, r) => Label::new(v, Some(r)),
    };
    let late = t.late.get(&want).copied().unwrap_or(0);
    if on_time_any == 0 || on_time + late >= calls {
        Failure::Timeout {
            on_time,
            late,
            expected: calls,
            any_on_time: on_time_any,
        }
    } else {
        Failure::Missed {
            caught: on_time,
            expected: calls,
        }
    }
}

impl Selftest {
    /// The same fixtures, pids and exits, without any verdict: for deciding
    /// again on another verdict source (the recorded `.etl` of the run).
    pub fn without_verdicts(&self) -> Selftest {
        let mut s = self.clone();
        for t in &mut s.tracked {
            t.on_time.clear();
            t.late.clear();
        }
        s
    }
}

/// Where two outcomes of the same run disagree (the live verdicts and
/// `analyze` of the recorded trace): per fixture, pass/fail, the alerts
/// seen and their counts. Empty when they agree.
pub fn compare(live: &Outcome, recorded: &Outcome) -> Vec<String> {
    let alerts = |r: &FixtureResult| -> Vec<(Label, u64)> {
        r.seen
            .iter()
            .filter(|(k, _)| k.verdict.is_alert())
            .copied()
            .collect()
    };
    let mut diffs = Vec::new();
    if live.fixtures.len() != recorded.fixtures.len() {
        diffs.push(format!(
            "{} fixtures live, {} in the recording",
            live.fixtures.len(),
            recorded.fixtures.len()
        ));
    }
    for (a, b) in live.fixtures.iter().zip(&recorded.fixtures) {
        let name = a.fixture.name;
        if a.passed() != b.passed() {
            let say = |r: &FixtureResult| match &r.failure {
                None => "PASS".to_string(),
                Some(f) => format!("FAIL ({f})"),
            };
            diffs.push(format!("{name}: live {}, recorded {}", say(a), say(b)));
        }
        let (x, y) = (alerts(a), alerts(b));
        if x != y {
            diffs.push(format!(
                "{name}: alerts live [{}], recorded [{}]",
                list(&x),
                list(&y)
            ));
        }
    }
    diffs
}
