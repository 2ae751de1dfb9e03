//! The selftest decision on verdict streams the real engine produced: each
//! fixture's technique is a `synth` scenario (a genuine .etl trace of that
//! technique among the background of a Windows 10 host), read back and run
//! through the engine as `live` runs it (online learning, the system DLLs'
//! exports for stub and service names as `live` loads this host's,
//! verdicts as they come, in trace order); the scenario's implant process stands for the
//! fixture, the truth file says which pid that is and how many calls it
//! made. Arrival times are trace times (10 MHz clock, in ms).
//!
//! Pass cases, then every kind of failure: technique missed, wrong reason,
//! alert on the benign fixture, events lost, timeout (verdicts late, none at
//! all, fixture hung), fixture refused.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use sentry_engine::{
    Allowlist, Engine, EngineConfig, FnSink, Learning, SyscallVerdict, SystemDll, SystemDlls,
};
use sentry_etl::{EtlFile, Order};
use sentry_raw::KernelClass;
use sentry_selftest::{table, Expect, Failure, Fixture, Label, Loss, Outcome, Selftest, FIXTURES};
use sentry_synth::{generate, Options, Scenario};
use serde_json::Value;

/// One verdict as the live sink sees it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    at_ms: u64,
    pid: Option<u32>,
    label: Label,
    /// Raw SysCallEnter timestamp, to look the syscall up in the truth.
    timestamp: u64,
}

struct Stream {
    verdicts: Vec<Seen>,
    truth: Value,
}

impl Stream {
    /// Truth entries of `technique` (prefix match): (pid, count).
    fn implant(&self, techniques: &[&str]) -> (u32, u64) {
        let mut by_pid: BTreeMap<u32, u64> = BTreeMap::new();
        for s in self.truth["syscalls"].as_array().unwrap() {
            let t = s["technique"].as_str().unwrap();
            if techniques.contains(&t) {
                *by_pid.entry(s["pid"].as_u64().unwrap() as u32).or_default() += 1;
            }
        }
        assert_eq!(by_pid.len(), 1, "one implant process for {techniques:?}");
        by_pid.into_iter().next().unwrap()
    }

    /// The pid with the most `normal` truth entries (a benign process).
    fn busiest_benign(&self) -> (u32, u64) {
        let mut by_pid: BTreeMap<u32, u64> = BTreeMap::new();
        for s in self.truth["syscalls"].as_array().unwrap() {
            if s["technique"] == "benign-ntdll" {
                *by_pid.entry(s["pid"].as_u64().unwrap() as u32).or_default() += 1;
            }
        }
        by_pid.into_iter().max_by_key(|&(_, n)| n).unwrap()
    }

    fn timestamps_of(&self, technique: &str) -> std::collections::HashSet<u64> {
        self.truth["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["technique"] == technique)
            .map(|s| s["timestamp"].as_u64().unwrap())
            .collect()
    }

    fn first_last(&self, pid: u32) -> (u64, u64) {
        let mut it = self
            .verdicts
            .iter()
            .filter(|v| v.pid == Some(pid))
            .map(|v| v.at_ms);
        let first = it.next().expect("verdicts for the pid");
        (first, it.next_back().unwrap_or(first))
    }
}

/// A trace of `scenario`, analysed as `live` does. `drop_stacks_of`: every
/// second StackWalk event of that pid is removed before the engine sees it
/// (what a session losing events does to a fixture's calls).
fn stream(scenario: Scenario, drop_stacks_of: Option<u32>, allowlist: Option<&str>) -> Stream {
    stream_with(scenario, drop_stacks_of, allowlist, false)
}

/// `gap`: the engine is told, as `live` tells it from the session's loss
/// counters, that events may be missing over the whole trace.
fn stream_with(
    scenario: Scenario,
    drop_stacks_of: Option<u32>,
    allowlist: Option<&str>,
    gap: bool,
) -> Stream {
    let mut o = Options::new(scenario);
    o.syscalls = 6000;
    o.seed = 16;
    let mut truth = Vec::new();
    let (etl, summary) = generate(&o, Cursor::new(Vec::new()), Some(&mut truth)).unwrap();
    let system_dlls = SystemDlls {
        dlls: sentry_synth::pe::system_dlls(&summary.layout)
            .into_iter()
            .map(|(n, b)| SystemDll::parse(n, &b).unwrap())
            .collect(),
    };
    let truth: Value = serde_json::from_slice(&truth).unwrap();
    let file = EtlFile::from_bytes(etl.into_inner()).unwrap();
    let mut engine = Engine::new(EngineConfig {
        learning: Learning::Online,
        system_dlls: Some(Arc::new(system_dlls)),
        allowlist: allowlist.map_or_else(Allowlist::default, |a| Allowlist::parse(a).unwrap()),
        ..EngineConfig::default()
    });
    let mut verdicts = Vec::new();
    let mut t0 = None;
    let mut dropped = 0u64;
    {
        let mut sink = FnSink(|v: &SyscallVerdict<'_>| {
            let t0 = *t0.get_or_insert(v.timestamp);
            verdicts.push(Seen {
                at_ms: v.timestamp.saturating_sub(t0) / 10_000,
                pid: v.pid,
                label: Label::new(v.verdict, v.reason),
                timestamp: v.timestamp,
            });
        });
        let mut r = file.events(Order::Time);
        let mut first = true;
        while let Some(ev) = r.next_event() {
            if gap && std::mem::take(&mut first) {
                engine.note_events_missing(ev.timestamp, u64::MAX, "session_loss");
            }
            if let Some(pid) = drop_stacks_of {
                let stack_of = ev.kernel_class() == Some(KernelClass::StackWalk)
                    && ev.payload.get(8..12) == Some(&pid.to_le_bytes()[..]);
                if stack_of {
                    dropped += 1;
                    if dropped % 2 == 0 {
                        continue;
                    }
                }
            }
            engine.process(&ev, &mut sink);
        }
        engine.finish(&mut sink);
    }
    Stream { verdicts, truth }
}

fn fixture(name: &str) -> Fixture {
    *FIXTURES.iter().find(|f| f.name == name).unwrap()
}

/// Runs one fixture over `s`: it starts just before its process's first
/// verdict and exits at `exit_at` (default: its last verdict), reporting
/// `calls` calls. Verdicts are fed in order; the session's loss counters
/// go from 0 to `loss`.
struct Case<'a> {
    s: &'a Stream,
    fixture: Fixture,
    pid: u32,
    calls: u64,
    exit_at: Option<u64>,
    wait: u64,
    loss: Loss,
    skip: Option<std::collections::HashSet<u64>>,
}

impl Case<'_> {
    fn run(&self) -> Outcome {
        let mut st = Selftest::new(&[self.fixture], self.wait);
        let (first, last) = self.s.first_last(self.pid);
        let start = first.saturating_sub(1);
        let exit_at = self.exit_at.unwrap_or(last);
        st.started(0, self.pid, start, Loss::default());
        let report = format!(
            "{{\"fixture\":\"{}\",\"pid\":{},\"arch\":\"x64\",\"calls\":{}}}",
            self.fixture.name, self.pid, self.calls
        );
        let mut exited = false;
        for v in &self.s.verdicts {
            if self.skip.as_ref().is_some_and(|k| k.contains(&v.timestamp)) {
                continue;
            }
            if !exited && v.at_ms > exit_at {
                st.exited(0, exit_at, Some(0), &report);
                exited = true;
            }
            if v.at_ms >= start {
                st.verdict(v.at_ms, v.pid, None, v.label.verdict, v.label.reason);
            }
        }
        if !exited {
            st.exited(0, exit_at, Some(0), &report);
        }
        let end = self.s.verdicts.last().unwrap().at_ms;
        assert!(st.settled(0, end.max(exit_at + self.wait)));
        st.outcome(self.loss)
    }
}

fn case<'a>(s: &'a Stream, name: &str, (pid, calls): (u32, u64)) -> Case<'a> {
    Case {
        s,
        fixture: fixture(name),
        pid,
        calls,
        exit_at: None,
        wait: 2_000,
        loss: Loss::default(),
        skip: None,
    }
}

fn only(o: &Outcome) -> &sentry_selftest::FixtureResult {
    assert_eq!(o.fixtures.len(), 1);
    &o.fixtures[0]
}

const SW3_JUMPERS: [&str; 3] = ["syswhispers3-jumper", "hellshall", "recycledgate"];

#[test]
fn every_technique_fixture_passes_on_the_engines_verdicts() {
    let cases: [(&str, Scenario, &[&str]); 4] = [
        ("direct-image", Scenario::DirectImage, &["syswhispers2"]),
        (
            "direct-unbacked",
            Scenario::DirectUnbacked,
            &["shellcode-direct"],
        ),
        ("indirect-jumper", Scenario::IndirectJumper, &SW3_JUMPERS),
        (
            "heavens-gate",
            Scenario::HeavensGate,
            &["heavens-gate", "heavens-gate-image"],
        ),
    ];
    for (name, scenario, techniques) in cases {
        let s = stream(scenario, None, None);
        let (pid, calls) = s.implant(techniques);
        assert!(calls >= 16, "{name}: {calls} technique calls in the trace");
        let o = case(&s, name, (pid, calls)).run();
        let r = only(&o);
        assert_eq!(r.failure, None, "{name}: {}", table::render(&o));
        let Expect::Alert(v, reason) = r.fixture.expect else {
            panic!()
        };
        let got = r
            .seen
            .iter()
            .find(|(k, _)| *k == Label::new(v, Some(reason)))
            .unwrap()
            .1;
        assert_eq!(got, calls, "{name}: every technique call caught once");
        assert!(o.passed());
    }
}

#[test]
fn mismatch_fixture_passes_and_an_extra_reason_fails_it() {
    let s = stream(Scenario::IndirectRandomized, None, None);
    let pid_calls = s.implant(&["syswhispers3-randomized", "stub-gadget"]);
    let randomized = s.timestamps_of("syswhispers3-randomized").len() as u64;
    // The fixture makes only stub-mismatch calls: the scenario's stub-gadget
    // calls (same process) are left out of its stream.
    let mut c = case(&s, "indirect-mismatch", (pid_calls.0, randomized));
    c.skip = Some(s.timestamps_of("stub-gadget"));
    let o = c.run();
    assert_eq!(only(&o).failure, None, "{}", table::render(&o));
    // With them, the process also raised indirect/not_return_site: wrong reason.
    c.skip = None;
    let o = c.run();
    match &only(&o).failure {
        Some(Failure::WrongReason(l)) => {
            assert_eq!(l.len(), 1);
            assert_eq!(l[0].0.to_string(), "indirect/not_return_site");
            assert_eq!(l[0].1, s.timestamps_of("stub-gadget").len() as u64);
        }
        f => panic!("expected a wrong reason, got {f:?}"),
    }
    assert!(!o.passed());
}

#[test]
fn benign_fixture_passes_on_a_benign_process_and_fails_on_an_implant() {
    let s = stream(Scenario::Benign, None, None);
    let (pid, normal) = s.busiest_benign();
    assert!(normal >= 16);
    let o = case(&s, "benign", (pid, 16)).run();
    assert_eq!(only(&o).failure, None, "{}", table::render(&o));

    // The implant of direct-image also makes ordinary calls: as the benign
    // fixture, its alerts fail it.
    let s = stream(Scenario::DirectImage, None, None);
    let (pid, calls) = s.implant(&["syswhispers2"]);
    let o = case(&s, "benign", (pid, 16)).run();
    match &only(&o).failure {
        Some(Failure::BenignAlert(l)) => {
            assert_eq!(
                l,
                &vec![(
                    Label::new(
                        sentry_engine::Verdict::Direct,
                        Some(sentry_engine::Reason::Image)
                    ),
                    calls
                )]
            )
        }
        f => panic!("expected an alert on the benign fixture, got {f:?}"),
    }
}

#[test]
fn wrong_reason_when_the_technique_is_classified_otherwise() {
    // A direct syscall from the EXE where one from private memory is expected.
    let s = stream(Scenario::DirectImage, None, None);
    let o = case(&s, "direct-unbacked", s.implant(&["syswhispers2"])).run();
    match &only(&o).failure {
        Some(Failure::WrongReason(l)) => assert_eq!(l[0].0.to_string(), "direct/image"),
        f => panic!("expected a wrong reason, got {f:?}"),
    }
}

#[test]
fn missed_when_the_engine_calls_the_technique_normal() {
    // An allowlist entry for the implant's EXE turns its direct syscalls
    // into `normal` (suppressed): the process is seen, its technique is not.
    let allow = "[[allow]]\nprocess = \"invoice.exe\"\nmodule = \"invoice.exe\"\n";
    let s = stream(Scenario::DirectImage, None, Some(allow));
    let (pid, calls) = stream(Scenario::DirectImage, None, None).implant(&["syswhispers2"]);
    let o = case(&s, "direct-image", (pid, calls)).run();
    let r = only(&o);
    assert_eq!(
        r.failure,
        Some(Failure::Missed {
            caught: 0,
            expected: calls
        }),
        "{}",
        table::render(&o)
    );
    assert!(r
        .seen
        .iter()
        .any(|(k, n)| k.to_string() == "normal" && *n > calls));
}

#[test]
fn lost_events_are_reported_as_such_not_as_a_miss() {
    let clean = stream(Scenario::DirectUnbacked, None, None);
    let (pid, calls) = clean.implant(&["shellcode-direct"]);
    let s = stream(Scenario::DirectUnbacked, Some(pid), None);
    // Without loss counters, the missing stacks look like a miss ...
    let mut c = case(&s, "direct-unbacked", (pid, calls));
    let o = c.run();
    let caught = match &only(&o).failure {
        Some(Failure::Missed { caught, expected }) => {
            assert_eq!(*expected, calls);
            *caught
        }
        f => panic!("expected a miss without loss counters, got {f:?}"),
    };
    assert!(
        caught > 0 && caught < calls,
        "half the stacks dropped: {caught} of {calls}"
    );
    // ... with them (the session said it lost events), as lost events.
    c.loss = Loss {
        events_lost: calls - caught,
        ..Loss::default()
    };
    let o = c.run();
    assert!(
        matches!(&only(&o).failure, Some(Failure::EventsLost(l)) if l.events_lost == calls - caught)
    );
    let t = table::render(&o);
    assert!(
        t.contains("events lost while it ran") && t.contains("session loss: EventsLost"),
        "{t}"
    );
    // A fixture that passes despite loss elsewhere still passes.
    let mut c = case(&clean, "direct-unbacked", (pid, calls));
    c.loss = Loss {
        ring_drops: 5,
        ..Loss::default()
    };
    assert_eq!(only(&c.run()).failure, None);
}

#[test]
fn timeouts_late_verdicts_none_at_all_and_hung_fixtures() {
    let s = stream(Scenario::IndirectJumper, None, None);
    let (pid, calls) = s.implant(&SW3_JUMPERS);
    let (first, _) = s.first_last(pid);
    // The fixture "exits" right after its first verdict and the wait is
    // short: most verdicts arrive after the deadline.
    let mut c = case(&s, "indirect-jumper", (pid, calls));
    c.exit_at = Some(first);
    c.wait = 1;
    let o = c.run();
    match &only(&o).failure {
        Some(Failure::Timeout {
            on_time,
            late,
            expected,
            ..
        }) => {
            assert_eq!(*expected, calls);
            assert_eq!(on_time + late, calls);
            assert!(*late > 0);
        }
        f => panic!("expected a timeout, got {f:?}"),
    }

    // No verdict at all for the fixture's pid (session delivering nothing).
    let mut st = Selftest::new(&[fixture("heavens-gate")], 2_000);
    st.started(0, 4_000_000, 0, Loss::default());
    st.exited(
        0,
        100,
        Some(0),
        "{\"fixture\":\"heavens-gate\",\"pid\":4000000,\"calls\":16}",
    );
    for v in &s.verdicts {
        st.verdict(v.at_ms, v.pid, None, v.label.verdict, v.label.reason);
    }
    assert!(!st.settled(0, 2_099) && st.settled(0, 2_100));
    let o = st.outcome(Loss::default());
    assert!(matches!(
        &only(&o).failure,
        Some(Failure::Timeout { any_on_time: 0, .. })
    ));
    assert!(table::render(&o).contains("no verdict for its process by the deadline"));

    // A fixture that never exits is not settled until killed: hung.
    let mut st = Selftest::new(&[fixture("benign")], 2_000);
    st.started(0, 77, 0, Loss::default());
    assert!(!st.settled(0, 1_000_000));
    st.exited(0, 10_000, None, "");
    assert_eq!(
        only(&st.outcome(Loss::default())).failure,
        Some(Failure::Hung)
    );
}

#[test]
fn a_refusing_or_failing_fixture_says_nothing_about_the_sensor() {
    let mut st = Selftest::new(&FIXTURES[..3], 2_000);
    st.started(0, 10, 0, Loss::default());
    st.exited(0, 5, Some(3), "{\"fixture\":\"benign\",\"pid\":10,\"refused\":\"ntdll stub is not a genuine Windows x64 stub\"}");
    st.started(1, 11, 0, Loss::default());
    st.exited(
        1,
        5,
        Some(0),
        "{\"fixture\":\"direct-image\",\"pid\":99,\"calls\":16}",
    );
    st.launch_failed(2, "direct-unbacked.exe: not found".into());
    assert!(st.all_settled(5));
    let o = st.outcome(Loss::default());
    assert!(matches!(&o.fixtures[0].failure, Some(Failure::Refused(w)) if w.contains("genuine")));
    assert!(matches!(&o.fixtures[1].failure, Some(Failure::NotRun(w)) if w.contains("pid 99")));
    assert!(matches!(&o.fixtures[2].failure, Some(Failure::NotRun(w)) if w.contains("not found")));
    assert!(!o.passed());
}

#[test]
fn the_whole_kit_passes_and_prints_its_table() {
    // All six fixtures in one run, each on its scenario's stream, one after
    // the other on one clock.
    let mut st = Selftest::new(&FIXTURES, 2_000);
    let mut clock = 0u64;
    let plan: [(Scenario, &[&str]); 6] = [
        (Scenario::Benign, &[]),
        (Scenario::DirectImage, &["syswhispers2"]),
        (Scenario::DirectUnbacked, &["shellcode-direct"]),
        (Scenario::IndirectJumper, &SW3_JUMPERS),
        (Scenario::IndirectRandomized, &["syswhispers3-randomized"]),
        (
            Scenario::HeavensGate,
            &["heavens-gate", "heavens-gate-image"],
        ),
    ];
    for (i, (scenario, techniques)) in plan.into_iter().enumerate() {
        let s = stream(scenario, None, None);
        let (pid, calls) = if techniques.is_empty() {
            (s.busiest_benign().0, 16)
        } else if scenario == Scenario::IndirectRandomized {
            let pid = s.implant(&["syswhispers3-randomized", "stub-gadget"]).0;
            (pid, s.timestamps_of("syswhispers3-randomized").len() as u64)
        } else {
            s.implant(techniques)
        };
        // Pids of different scenarios may repeat: offset them per fixture.
        let fake = pid + 1_000_000 * (i as u32 + 1);
        let skip = s.timestamps_of("stub-gadget");
        st.started(i, fake, clock, Loss::default());
        let (_, last) = s.first_last(pid);
        for v in s.verdicts.iter().filter(|v| !skip.contains(&v.timestamp)) {
            let pid = v
                .pid
                .map(|p| if p == pid { fake } else { p + 1_000_000 * 9 });
            st.verdict(clock + v.at_ms, pid, None, v.label.verdict, v.label.reason);
        }
        let report = format!(
            "{{\"fixture\":\"{}\",\"pid\":{fake},\"calls\":{calls}}}",
            FIXTURES[i].name
        );
        st.exited(i, clock + last, Some(0), &report);
        clock += last + 3_000;
    }
    assert!(st.all_settled(clock));
    let o = st.outcome(Loss::default());
    let t = table::render(&o);
    assert!(o.passed(), "{t}");
    println!("{t}");
    assert_eq!(t.lines().filter(|l| l.contains("PASS")).count(), 7, "{t}");
    assert!(
        t.ends_with("selftest: PASS (6 of 6 fixtures passed)\n"),
        "{t}"
    );
    assert!(t.contains("direct/heavens_gate x"), "{t}");
}

#[test]
fn live_and_recorded_outcomes_are_compared_per_fixture() {
    let s = stream(Scenario::DirectImage, None, None);
    let (pid, calls) = s.implant(&["syswhispers2"]);
    let live = case(&s, "direct-image", (pid, calls)).run();
    assert!(sentry_selftest::compare(&live, &live.clone()).is_empty());
    // The recording analysed with the implant's EXE allowlisted: no alert.
    let allow = "[[allow]]\nprocess = \"invoice.exe\"\nmodule = \"invoice.exe\"\n";
    let quiet = stream(Scenario::DirectImage, None, Some(allow));
    let recorded = case(&quiet, "direct-image", (pid, calls)).run();
    let d = sentry_selftest::compare(&live, &recorded);
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(
        d[0].starts_with("direct-image: live PASS, recorded FAIL (missed"),
        "{d:?}"
    );
    assert_eq!(
        d[1],
        format!("direct-image: alerts live [direct/image x{calls}], recorded []")
    );
}

#[test]
fn without_verdicts_keeps_the_fixtures_and_forgets_the_verdicts() {
    let s = stream(Scenario::DirectUnbacked, None, None);
    let (pid, calls) = s.implant(&["shellcode-direct"]);
    let mut st = Selftest::new(&[fixture("direct-unbacked")], 2_000);
    st.started(0, pid, 0, Loss::default());
    for v in &s.verdicts {
        st.verdict(0, v.pid, None, v.label.verdict, v.label.reason);
    }
    st.exited(
        0,
        1,
        Some(0),
        &format!("{{\"fixture\":\"direct-unbacked\",\"pid\":{pid},\"calls\":{calls}}}"),
    );
    assert!(st.outcome(Loss::default()).passed());
    let mut again = st.without_verdicts();
    let o = again.outcome(Loss::default());
    assert!(matches!(
        &only(&o).failure,
        Some(Failure::Timeout { any_on_time: 0, .. })
    ));
    for v in &s.verdicts {
        again.verdict(0, v.pid, None, v.label.verdict, v.label.reason);
    }
    assert_eq!(again.outcome(Loss::default()), st.outcome(Loss::default()));
}

#[test]
fn unresolved_verdicts_are_reported_as_such() {
    // The engine, told events may be missing (the session's loss counters
    // grew), calls the implant's direct syscalls unresolved/events_lost.
    let clean = stream(Scenario::DirectImage, None, None);
    let (pid, calls) = clean.implant(&["syswhispers2"]);
    let s = stream_with(Scenario::DirectImage, None, None, true);
    let mut c = case(&s, "direct-image", (pid, calls));
    let o = c.run();
    match &only(&o).failure {
        Some(Failure::Unresolved(l)) => {
            assert_eq!(l.len(), 1);
            assert_eq!(l[0].0.to_string(), "unresolved/events_lost");
            assert_eq!(l[0].1, calls);
        }
        f => panic!("expected unresolved, got {f:?}"),
    }
    // With the session's loss counters known, it is lost events.
    c.loss = Loss {
        events_lost: 1,
        ..Loss::default()
    };
    assert!(matches!(
        &only(&c.run()).failure,
        Some(Failure::EventsLost(_))
    ));
    // The benign fixture raises nothing either way.
    let (bpid, _) = s.busiest_benign();
    assert_eq!(only(&case(&s, "benign", (bpid, 16)).run()).failure, None);
}

#[test]
fn verdicts_of_a_later_process_with_the_fixtures_pid_are_ignored() {
    // The kernel keeps 14 characters of an image name.
    let f = fixture("indirect-mismatch");
    assert!(f.is_image("indirect-mismatch.exe") && f.is_image("INDIRECT-MISMA"));
    assert!(f.is_image("C:\\kit\\fixtures\\indirect-mismatch.exe"));
    assert!(!f.is_image("indirect") && !f.is_image("svchost.exe"));
    let s = stream(Scenario::DirectImage, None, None);
    let (pid, calls) = s.implant(&["syswhispers2"]);
    let report = format!("{{\"fixture\":\"direct-image\",\"pid\":{pid},\"calls\":{calls}}}");
    for (image, pass) in [("direct-image.exe", true), ("invoice.exe", false)] {
        let mut st = Selftest::new(&[fixture("direct-image")], 2_000);
        st.started(0, pid, 0, Loss::default());
        for v in &s.verdicts {
            st.verdict(0, v.pid, Some(image), v.label.verdict, v.label.reason);
        }
        st.exited(0, 1, Some(0), &report);
        let o = st.outcome(Loss::default());
        assert_eq!(o.passed(), pass, "{}", table::render(&o));
        if !pass {
            assert!(only(&o).other_image > calls);
            assert!(table::render(&o).contains("of a later process with its pid ignored"));
        }
    }
}

#[test]
fn a_stand_in_process_is_matched_by_its_own_image() {
    let s = stream(Scenario::DirectImage, None, None);
    let (pid, calls) = s.implant(&["syswhispers2"]);
    let report = format!("{{\"fixture\":\"direct-image\",\"pid\":{pid},\"calls\":{calls}}}");
    for (stand_in, pass) in [(Some("invoice.exe"), true), (None, false)] {
        let mut st = Selftest::new(&[fixture("direct-image")], 2_000);
        st.started(0, pid, 0, Loss::default());
        if let Some(image) = stand_in {
            st.stand_in(0, image);
        }
        for v in &s.verdicts {
            st.verdict(
                0,
                v.pid,
                Some("invoice.exe"),
                v.label.verdict,
                v.label.reason,
            );
        }
        st.exited(0, 1, Some(0), &report);
        assert_eq!(st.outcome(Loss::default()).passed(), pass);
    }
}
