//! `live`'s pipeline fed the way a real-time consumer is fed: generated
//! traces (every scenario, 2 to 8 processors, x64 and x86) are cut into
//! per-processor buffers and delivered in flush order
//! (`etw_replay::flush`, the model the Wine harness also uses), through
//! record views, the ring, the reordering stage and the engine with live's
//! settings (online learning, the live correlation window). Its per-syscall
//! verdicts must equal `analyze`'s (learning pass then classifying pass, in
//! time order) and the truth file's, and its alerts `analyze`'s alerts
//! byte for byte. Without the reordering stage the same delivery gives
//! different verdicts (the check can fail).

mod support;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::rc::Rc;
use std::sync::Arc;

use sechost::event::Trace;
use sentry_engine::report::{Report, ReportConfig};
use sentry_engine::{
    Engine, EngineConfig, Learning, NullSink, SyscallVerdict, SystemDlls, VerdictSink,
};
use sentry_etl::{EtlFile, Order};
use sentry_live::reorder::{live_window_ms, Reorder, ReorderConfig, DEFAULT_LAG_MS};
use sentry_live::ring::ring;
use sentry_synth::{Options, Scenario};
use serde_json::Value;

/// A syscall's verdict as compared: processor, pid, tid, verdict/reason.
type Row = (u16, Option<u32>, Option<u32>, String);

#[derive(Clone, Default)]
struct Shared(Rc<RefCell<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The report plus every final verdict by timestamp.
struct Sink {
    report: Report,
    rows: BTreeMap<u64, Row>,
    record_rows: bool,
}

impl VerdictSink for Sink {
    fn verdict(&mut self, v: &SyscallVerdict<'_>) {
        self.report.verdict(v);
        if self.record_rows {
            let label = match v.reason {
                Some(r) => format!("{}/{}", v.verdict.as_str(), r.as_str()),
                None => v.verdict.as_str().to_string(),
            };
            let prev = self
                .rows
                .insert(v.timestamp, (v.processor, v.pid, v.tid, label));
            assert!(prev.is_none(), "two verdicts for syscall {}", v.timestamp);
        }
    }
}

fn sink(record_rows: bool) -> (Sink, Shared) {
    let out = Shared::default();
    (
        Sink {
            report: Report::new(ReportConfig::default(), Box::new(out.clone())),
            rows: BTreeMap::new(),
            record_rows,
        },
        out,
    )
}

fn new_engine(file: &EtlFile, cfg: EngineConfig, s: &mut Sink) -> Engine {
    let clock = file.clock();
    let mut e = Engine::new(cfg);
    e.set_header(file.header().clone(), clock.sync_raw);
    e.set_clock(clock);
    s.report.set_clock(Some(clock));
    s.report.set_header(Some(file.header().clone()));
    e
}

/// `analyze`: alerts from the one-pass default (deferred learning), rows
/// from `--per-syscall`'s two passes.
fn analyze(file: &EtlFile, dlls: &Arc<SystemDlls>) -> (BTreeMap<u64, Row>, Vec<u8>) {
    let base = EngineConfig {
        system_dlls: Some(Arc::clone(dlls)),
        ..EngineConfig::default()
    };
    let (mut s, out) = sink(false);
    let mut e = new_engine(
        file,
        EngineConfig {
            learning: Learning::Deferred,
            ..base.clone()
        },
        &mut s,
    );
    let mut r = file.events(Order::Time);
    while let Some(ev) = r.next_event() {
        e.process(&ev, &mut s);
    }
    e.finish(&mut s);
    s.report.finish(&e).unwrap();
    let alerts = out.0.borrow().clone();

    let mut learner = Engine::new(EngineConfig {
        learning: Learning::Only,
        ..base.clone()
    });
    let mut r = file.events(Order::Time);
    while let Some(ev) = r.next_event() {
        learner.process(&ev, &mut NullSink);
    }
    learner.finish(&mut NullSink);
    let (mut s, _) = sink(true);
    let mut e = new_engine(
        file,
        EngineConfig {
            services: learner.into_services(),
            ..base
        },
        &mut s,
    );
    let mut r = file.events(Order::Time);
    while let Some(ev) = r.next_event() {
        e.process(&ev, &mut s);
    }
    e.finish(&mut s);
    (s.rows, alerts)
}

/// What `live` does with events delivered in `order`: ring, reordering
/// stage (or none), engine with live's settings, report.
fn live(
    file: &EtlFile,
    trace: &Trace,
    order: &[u32],
    dlls: &Arc<SystemDlls>,
    reorder: bool,
) -> (BTreeMap<u64, Row>, Vec<u8>) {
    let tps = trace.ticks_per_second;
    let (mut s, out) = sink(true);
    let mut e = new_engine(
        file,
        EngineConfig {
            learning: Learning::Online,
            window_ms: live_window_ms(500, DEFAULT_LAG_MS),
            system_dlls: Some(Arc::clone(dlls)),
            ..EngineConfig::default()
        },
        &mut s,
    );
    let (mut p, mut c) = ring(1 << 20);
    let mut stage = Reorder::new(ReorderConfig::new(DEFAULT_LAG_MS, tps, 64 << 20, 0));
    for &i in order {
        assert!(p.push(&support::view(&trace.events[i as usize])));
        let rec = c.pop_record().unwrap();
        if reorder {
            let mut emit = |ev: &sentry_raw::RawEvent<'_>| e.process(ev, &mut s);
            stage.push(rec, &mut emit);
            stage.release(&mut emit);
        } else {
            e.process(&sentry_live::ring::decode_record(rec), &mut s);
        }
    }
    stage.release_all(&mut |ev| e.process(ev, &mut s));
    let st = stage.stats();
    assert_eq!((st.late, st.overflow), (0, 0), "{st:?}");
    e.finish(&mut s);
    s.report.finish(&e).unwrap();
    let alerts = out.0.borrow().clone();
    (s.rows, alerts)
}

fn truth_rows(truth: &Value) -> BTreeMap<u64, Row> {
    truth["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            // live has no `--images`: the truth's answer without them.
            let w = s.get("without_images").unwrap_or(s);
            let label = match w["reason"].as_str() {
                Some(r) => format!("{}/{r}", w["verdict"].as_str().unwrap()),
                None => w["verdict"].as_str().unwrap().to_string(),
            };
            (
                s["timestamp"].as_u64().unwrap(),
                (
                    s["processor"].as_u64().unwrap() as u16,
                    s["pid"].as_u64().map(|v| v as u32),
                    s["tid"].as_u64().map(|v| v as u32),
                    label,
                ),
            )
        })
        .collect()
}

fn differences(a: &BTreeMap<u64, Row>, b: &BTreeMap<u64, Row>, no_ids: bool) -> usize {
    let strip = |r: &Row| {
        if no_ids && r.3 == "no_stack" {
            (r.0, None, None, r.3.clone())
        } else {
            r.clone()
        }
    };
    let mut n = a.len().abs_diff(b.len());
    for (ts, r) in a {
        if b.get(ts).map(strip) != Some(strip(r)) {
            n += 1;
        }
    }
    n
}

/// Runs one generated trace; returns the rows that differ without the
/// reordering stage.
fn check(scenario: Scenario, processors: u16, pointer_size: u8, syscalls: u64) -> usize {
    let mut o = Options::new(scenario);
    o.seed = 23 + u64::from(processors);
    o.processors = processors;
    o.pointer_size = pointer_size;
    o.syscalls = syscalls;
    let mut truth_buf = Vec::new();
    let (file, dlls) = support::generated(&o, Some(&mut truth_buf));
    let truth = truth_rows(&serde_json::from_slice(&truth_buf).unwrap());
    let trace = Trace::from_file(&file);
    let order = support::flush_order(&trace);
    let name = format!(
        "{} {processors} cpus {}",
        scenario.name(),
        if pointer_size == 4 { "x86" } else { "x64" }
    );
    let shuffled = order.windows(2).filter(|w| w[0] > w[1]).count();
    assert!(shuffled > 0, "{name}: delivery is not time order");

    let (want_rows, want_alerts) = analyze(&file, &dlls);
    let (rows, alerts) = live(&file, &trace, &order, &dlls, true);
    assert_eq!(
        differences(&want_rows, &rows, false),
        0,
        "{name}: per-syscall verdicts differ from analyze's"
    );
    assert_eq!(
        differences(&truth, &rows, true),
        0,
        "{name}: per-syscall verdicts differ from the truth"
    );
    assert!(
        alerts == want_alerts,
        "{name}: alerts differ from analyze's:\n{}\n---\n{}",
        String::from_utf8_lossy(&alerts),
        String::from_utf8_lossy(&want_alerts)
    );
    let (raw_rows, _) = live(&file, &trace, &order, &dlls, false);
    let d = differences(&want_rows, &raw_rows, false);
    eprintln!(
        "{name:<34} {} syscalls, {} events, {shuffled} out of order in delivery: equal; \
         without the reordering stage {d} verdicts differ",
        rows.len(),
        order.len()
    );
    d
}

#[test]
fn every_scenario_in_flush_order_equals_analyze_and_the_truth() {
    let mut without = 0;
    for (i, s) in Scenario::ALL.into_iter().enumerate() {
        let processors = [2u16, 4, 8][i % 3];
        without += check(s, processors, 8, 6_000);
        if s != Scenario::HeavensGate {
            without += check(s, [8u16, 2, 4][i % 3], 4, 3_000);
        }
    }
    assert!(
        without > 0,
        "delivery in flush order must matter without the stage"
    );
}
