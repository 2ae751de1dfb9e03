//! `analyze` runs one pass ([`Learning::Deferred`]): rule-5 decisions wait
//! for the service table of the whole trace. These tests hold it to the
//! two-pass definition (learning pass, then classifying pass): the same
//! alert lines byte for byte, the same summary table, the same verdict and
//! suppression counts, on every synth scenario, with and without an
//! allowlist; and they show that deciding online instead would differ.

use std::io::Write;
use std::sync::{Arc, Mutex};

use sentry_engine::report::{Report, ReportConfig};
use sentry_engine::{
    Allowlist, Engine, EngineConfig, EngineStats, Learning, NullSink, SystemDll, SystemDlls,
};
use sentry_etl::{EtlFile, Order};
use sentry_synth::{generate, Options, Scenario};

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Output {
    alerts: String,
    summary: String,
    stats: EngineStats,
    hits: Vec<u64>,
}

fn trace(scenario: Scenario, seed: u64, syscalls: u64) -> Vec<u8> {
    trace_and_dlls(scenario, seed, syscalls).0
}

/// A trace and the system DLLs matching its layout.
fn trace_and_dlls(scenario: Scenario, seed: u64, syscalls: u64) -> (Vec<u8>, Arc<SystemDlls>) {
    let mut o = Options::new(scenario);
    o.seed = seed;
    o.syscalls = syscalls;
    let mut etl = Vec::new();
    let (_, summary) = generate(&o, std::io::Cursor::new(&mut etl), None::<std::io::Sink>).unwrap();
    let dlls = SystemDlls {
        dlls: sentry_synth::pe::system_dlls(&summary.layout)
            .into_iter()
            .map(|(n, b)| SystemDll::parse(n, &b).unwrap())
            .collect(),
    };
    (etl, Arc::new(dlls))
}

fn run(etl: &[u8], learning: Learning, allowlist: &Allowlist) -> Output {
    run_with(etl, learning, allowlist, None)
}

fn run_with(
    etl: &[u8],
    learning: Learning,
    allowlist: &Allowlist,
    system_dlls: Option<Arc<SystemDlls>>,
) -> Output {
    let file = EtlFile::from_bytes(etl.to_vec()).unwrap();
    let mut services = Default::default();
    if learning == Learning::Fixed {
        let mut learner = Engine::new(EngineConfig {
            learning: Learning::Only,
            system_dlls: system_dlls.clone(),
            ..EngineConfig::default()
        });
        let mut r = file.events(Order::Time);
        while let Some(ev) = r.next_event() {
            learner.process(&ev, &mut NullSink);
        }
        learner.finish(&mut NullSink);
        services = learner.into_services();
    }
    let mut engine = Engine::new(EngineConfig {
        learning,
        services,
        allowlist: allowlist.clone(),
        system_dlls,
        ..EngineConfig::default()
    });
    let buf = Shared::default();
    let mut report = Report::new(ReportConfig::default(), Box::new(buf.clone()));
    let mut r = file.events(Order::Time);
    while let Some(ev) = r.next_event() {
        engine.process(&ev, &mut report);
    }
    let stats = engine.finish(&mut report);
    report.finish(&engine).unwrap();
    assert_eq!(report.checks_settled_early(), 0);
    let alerts = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    Output {
        alerts,
        summary: report.summary_table(),
        stats,
        hits: engine.allowlist().hits.clone(),
    }
}

fn assert_same(name: &str, one: &Output, two: &Output) {
    assert_eq!(one.alerts, two.alerts, "{name}: alert lines differ");
    assert_eq!(one.summary, two.summary, "{name}: summary differs");
    assert_eq!(
        one.stats.verdicts, two.stats.verdicts,
        "{name}: verdict counts"
    );
    assert_eq!(
        one.stats.suppressed, two.stats.suppressed,
        "{name}: suppressed"
    );
    assert_eq!(one.hits, two.hits, "{name}: allowlist hits");
    assert_eq!(
        one.stats.learned_return_sites, two.stats.learned_return_sites,
        "{name}: learned sites"
    );
}

#[test]
fn one_pass_equals_two_passes_on_every_scenario() {
    let none = Allowlist::default();
    for s in Scenario::ALL {
        let etl = trace(s, 7, 4000);
        let one = run(&etl, Learning::Deferred, &none);
        let two = run(&etl, Learning::Fixed, &none);
        assert_same(s.name(), &one, &two);
        assert!(
            one.stats.service_checks_deferred > 0,
            "{}: nothing was deferred",
            s.name()
        );
        eprintln!(
            "{}: {} alert lines, {} deferred checks",
            s.name(),
            one.alerts.lines().count(),
            one.stats.service_checks_deferred
        );
    }
}

#[test]
fn one_pass_equals_two_passes_with_an_allowlist() {
    // One entry per alternative a deferred decision can take: the stub
    // mismatch itself, and the unbacked caller it may fall back to.
    let allow = Allowlist::parse(
        r#"
[[allow]]
process = "*.exe"
module = "ntdll.dll"
verdict = "indirect"
reason = "stub_mismatch"
[[allow]]
process = "svc*"
caller_module = "<unbacked>"
reason = "unbacked_caller"
"#,
    )
    .unwrap();
    for s in [
        Scenario::Mixed,
        Scenario::IndirectRandomized,
        Scenario::IndirectJumper,
    ] {
        let etl = trace(s, 3, 4000);
        let one = run(&etl, Learning::Deferred, &allow);
        let two = run(&etl, Learning::Fixed, &allow);
        assert_same(s.name(), &one, &two);
        eprintln!(
            "{}: suppressed {}, hits {:?}",
            s.name(),
            one.stats.suppressed,
            one.hits
        );
    }
    let etl = trace(Scenario::Mixed, 3, 4000);
    let one = run(&etl, Learning::Deferred, &allow);
    assert!(one.hits[0] > 0, "the stub_mismatch entry never matched");
}

/// Online learning decides rule 5 with the table so far: when an attacker's
/// call is the first one seen at a return site, it passes as normal. The
/// one-pass mode must not: on these traces online and two-pass results
/// differ, and one pass still equals two.
#[test]
fn deferral_matters_where_online_learning_is_wrong() {
    let none = Allowlist::default();
    let mut differing = 0;
    for seed in 1..=12 {
        let etl = trace(Scenario::IndirectRandomized, seed, 3000);
        let two = run(&etl, Learning::Fixed, &none);
        let one = run(&etl, Learning::Deferred, &none);
        assert_same(&format!("seed {seed}"), &one, &two);
        let online = run(&etl, Learning::Online, &none);
        if online.stats.verdicts != two.stats.verdicts {
            differing += 1;
        }
    }
    eprintln!("online learning differs from two passes on {differing} of 12 traces");
    assert!(differing > 0, "no trace shows a late rule-5 decision");
}

/// With the system DLLs most rule-5 decisions are by export names, the rest
/// still wait; evidence frames then name exports (`ntdll.dll!NtX+0x14`):
/// rendered at the end, they must read as they would have when seen.
#[test]
fn one_pass_equals_two_passes_with_system_dlls() {
    let none = Allowlist::default();
    for s in [
        Scenario::Mixed,
        Scenario::IndirectRandomized,
        Scenario::HeavensGate,
    ] {
        let (etl, dlls) = trace_and_dlls(s, 5, 4000);
        let one = run_with(&etl, Learning::Deferred, &none, Some(Arc::clone(&dlls)));
        let two = run_with(&etl, Learning::Fixed, &none, Some(dlls));
        assert_same(s.name(), &one, &two);
        assert!(
            one.alerts.contains("!Nt"),
            "{}: no export names in evidence",
            s.name()
        );
    }
}

/// Memory for the evidence of open groups is bounded: past the budget the
/// oldest is dropped, and the alerts that need it get it from a recovery
/// pass (as `analyze` runs it). Output equals two passes.
#[test]
fn dropped_evidence_is_recovered_exactly() {
    let none = Allowlist::default();
    for s in [Scenario::Mixed, Scenario::IndirectRandomized] {
        let etl = trace(s, 11, 6000);
        let two = run(&etl, Learning::Fixed, &none);
        let file = EtlFile::from_bytes(etl.clone()).unwrap();
        let cfg = ReportConfig {
            evidence_budget: 4096,
            ..ReportConfig::default()
        };
        let mut engine = Engine::new(EngineConfig {
            learning: Learning::Deferred,
            ..EngineConfig::default()
        });
        let buf = Shared::default();
        let mut report = Report::new(cfg.clone(), Box::new(buf.clone()));
        let mut r = file.events(Order::Time);
        while let Some(ev) = r.next_event() {
            engine.process(&ev, &mut report);
        }
        let stats = engine.finish(&mut report);
        report.settle(&engine);
        assert!(
            report.evidence_dropped() > 0,
            "{}: nothing dropped",
            s.name()
        );
        let request = report.evidence_request();
        assert!(
            !request.is_empty(),
            "{}: no alert lost its evidence",
            s.name()
        );
        eprintln!(
            "{}: {} evidence dropped, {} alerts recovered",
            s.name(),
            report.evidence_dropped(),
            request.len()
        );
        let mut again = Engine::new(EngineConfig {
            learning: Learning::Deferred,
            ..EngineConfig::default()
        });
        let mut recovery = Report::recovery(cfg, request);
        let mut r = file.events(Order::Time);
        while let Some(ev) = r.next_event() {
            again.process(&ev, &mut recovery);
        }
        again.finish(&mut recovery);
        assert_eq!(report.fill_evidence(recovery.take_recovered(&again)), 0);
        report.finish(&engine).unwrap();
        let one = Output {
            alerts: String::from_utf8(buf.0.lock().unwrap().clone()).unwrap(),
            summary: report.summary_table(),
            stats,
            hits: engine.allowlist().hits.clone(),
        };
        assert_same(s.name(), &one, &two);
    }
}
