//! Kernel-Audit-API-Calls scenarios through the engine, as `analyze` runs
//! it (one pass, deferred rule 5) and with the scenario's system DLLs:
//! every event's verdict, reason, pid, tid and target equal the truth
//! (precision and recall 1.0), 32- and 64-bit, plain and compressed.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Arc;

use sentry_engine::report::{Report, ReportConfig};
use sentry_engine::{Engine, EngineConfig, Learning, NullSink, SystemDll, SystemDlls};
use sentry_etl::{EtlFile, Order};
use sentry_synth::{generate, Options, Scenario};
use serde_json::Value;

type Row = (
    Option<u64>,
    Option<u64>,
    String,
    Option<String>,
    Option<u64>,
);

fn row(v: &Value, verdict: &str) -> Row {
    (
        v["pid"].as_u64(),
        v["tid"].as_u64(),
        v[verdict].as_str().unwrap().to_string(),
        v["reason"].as_str().map(String::from),
        v["target_pid"].as_u64(),
    )
}

/// An output both the report and the test hold.
#[derive(Clone, Default)]
struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `analyze --per-syscall`'s lines for an in-memory trace.
fn per_syscall(etl: &[u8], dlls: Option<Arc<SystemDlls>>) -> Vec<Value> {
    let file = EtlFile::from_bytes(etl.to_vec()).unwrap();
    // As `analyze --per-syscall`: a learning pass, then a classifying one.
    let mut learner = Engine::new(EngineConfig {
        learning: Learning::Only,
        system_dlls: dlls.clone(),
        ..EngineConfig::default()
    });
    let mut r = file.events(Order::Time);
    while let Some(ev) = r.next_event() {
        learner.process(&ev, &mut NullSink);
    }
    learner.finish(&mut NullSink);
    let mut engine = Engine::new(EngineConfig {
        learning: Learning::Fixed,
        services: learner.into_services(),
        system_dlls: dlls,
        ..EngineConfig::default()
    });
    let out = Shared::default();
    {
        let cfg = ReportConfig {
            per_syscall: true,
            ..ReportConfig::default()
        };
        let mut report = Report::new(cfg, Box::new(out.clone()));
        let mut r = file.events(Order::Time);
        while let Some(ev) = r.next_event() {
            engine.process(&ev, &mut report);
        }
        let stats = engine.finish(&mut report);
        assert_eq!(stats.decode_errors, 0, "{:?}", stats.decode_error_samples);
        assert_eq!(stats.audit_events, stats.syscalls);
        report.settle(&engine);
        report.finish(&engine).unwrap();
    }
    let bytes = out.0.lock().unwrap().clone();
    String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &Value| v.get("timestamp").is_some() && v.get("type").is_none())
        .collect()
}

#[test]
fn audit_scenarios_match_their_truth() {
    for s in Scenario::AUDIT {
        for (ps, compress) in [(8u8, false), (8, true), (4, false), (4, true)] {
            let mut o = Options::new(s);
            o.pointer_size = ps;
            o.compress = compress;
            o.syscalls = 4000;
            let mut truth = Vec::new();
            let (cur, summary) = generate(&o, Cursor::new(Vec::new()), Some(&mut truth)).unwrap();
            let etl = cur.into_inner();
            let t: Value = serde_json::from_slice(&truth).unwrap();
            let want: HashMap<u64, Row> = t["syscalls"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| (r["timestamp"].as_u64().unwrap(), row(r, "verdict")))
                .collect();
            let dlls = Some(Arc::new(SystemDlls {
                dlls: sentry_synth::pe::system_dlls(&summary.layout)
                    .into_iter()
                    .map(|(n, b)| SystemDll::parse(n, &b).unwrap())
                    .collect(),
            }));
            for d in [None, dlls] {
                let got = per_syscall(&etl, d.clone());
                let name = format!(
                    "{} ps{ps} compress {compress} dlls {}",
                    s.name(),
                    d.is_some()
                );
                assert_eq!(got.len(), want.len(), "{name}: recall/precision");
                for v in &got {
                    let ts = v["timestamp"].as_u64().unwrap();
                    assert_eq!(Some(&row(v, "verdict")), want.get(&ts), "{name}: {v}");
                    if v["target"].is_string() {
                        assert_eq!(
                            v["target"],
                            t["syscalls"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .find(|r| r["timestamp"] == ts)
                                .unwrap()["target"]
                        );
                    }
                }
            }
        }
    }
}
