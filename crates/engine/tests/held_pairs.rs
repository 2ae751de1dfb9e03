//! The engine classifies a SysCallEnter with the StackWalk right after it
//! without the correlator ("held" pairs, the common case). These tests hold
//! that shortcut to the correlator path it replaces: on every synth
//! scenario, and with windows and pending caps small enough to make
//! entries expire and be evicted around held syscalls, the verdicts (every
//! field, in order) and every statistic are the same with and without it.

use sentry_engine::{
    Engine, EngineConfig, EngineStats, Finish, Learning, Reason, ServiceCheck, SyscallVerdict,
    Verdict, VerdictSink,
};
use sentry_etl::{EtlFile, Order};
use sentry_synth::{generate, Options, Scenario};

#[derive(Debug, PartialEq)]
struct Seen {
    timestamp: u64,
    processor: u16,
    service_address: u64,
    pid: Option<u32>,
    tid: Option<u32>,
    verdict: Verdict,
    reason: Option<Reason>,
    finish: Finish,
    stack: Vec<u64>,
    user_index: Option<usize>,
    service_check: Option<ServiceCheck>,
}

#[derive(Default)]
struct Record(Vec<Seen>);

impl VerdictSink for Record {
    fn verdict(&mut self, v: &SyscallVerdict<'_>) {
        self.0.push(Seen {
            timestamp: v.timestamp,
            processor: v.processor,
            service_address: v.service_address,
            pid: v.pid,
            tid: v.tid,
            verdict: v.verdict,
            reason: v.reason,
            finish: v.finish,
            stack: v.stack.to_vec(),
            user_index: v.outcome.user_index,
            service_check: v.service_check,
        });
    }
}

fn trace(scenario: Scenario, seed: u64, syscalls: u64) -> Vec<u8> {
    let mut o = Options::new(scenario);
    o.seed = seed;
    o.syscalls = syscalls;
    let mut etl = Vec::new();
    generate(&o, std::io::Cursor::new(&mut etl), None::<std::io::Sink>).unwrap();
    etl
}

fn run(etl: &[u8], hold: bool, window_ms: u64, max_pending: usize) -> (Vec<Seen>, EngineStats) {
    let file = EtlFile::from_bytes(etl.to_vec()).unwrap();
    let mut engine = Engine::new(EngineConfig {
        learning: Learning::Deferred,
        window_ms,
        max_pending,
        hold_syscalls: hold,
        ..EngineConfig::default()
    });
    engine.set_clock(file.clock());
    let mut sink = Record::default();
    let mut r = file.events(Order::Time);
    while let Some(ev) = r.next_event() {
        engine.process(&ev, &mut sink);
    }
    let stats = engine.finish(&mut sink);
    (sink.0, stats)
}

/// Everything but the count of held pairs, which is the difference.
fn comparable(s: &EngineStats) -> String {
    let mut v = serde_json::to_value(s).unwrap();
    v.as_object_mut().unwrap().remove("held_pairs");
    v.to_string()
}

fn same_with_and_without_holding(etl: &[u8], window_ms: u64, max_pending: usize) -> u64 {
    let (held, held_stats) = run(etl, true, window_ms, max_pending);
    let (plain, plain_stats) = run(etl, false, window_ms, max_pending);
    assert_eq!(held.len(), plain.len());
    for (i, (a, b)) in held.iter().zip(&plain).enumerate() {
        assert_eq!(
            a, b,
            "verdict {i} differs (window {window_ms} ms, cap {max_pending})"
        );
    }
    assert_eq!(comparable(&held_stats), comparable(&plain_stats));
    assert_eq!(plain_stats.held_pairs, 0);
    held_stats.held_pairs
}

#[test]
fn every_scenario_gives_the_same_verdicts_and_counters() {
    for scenario in Scenario::ALL {
        let etl = trace(scenario, 7, 4_000);
        let held = same_with_and_without_holding(&etl, 500, 1 << 16);
        let (_, stats) = run(&etl, true, 500, 1 << 16);
        // The shortcut is the common case, not a corner.
        assert!(
            held * 10 >= stats.syscalls * 7,
            "{scenario:?}: {held} of {} syscalls held",
            stats.syscalls
        );
    }
}

#[test]
fn expiry_and_eviction_around_held_syscalls_change_nothing() {
    let etl = trace(Scenario::Mixed, 11, 6_000);
    for (window_ms, max_pending) in [(0, 1 << 16), (1, 1 << 16), (500, 1), (500, 2), (0, 3)] {
        same_with_and_without_holding(&etl, window_ms, max_pending);
    }
}
