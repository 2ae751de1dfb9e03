//! Every synth scenario, analysed as `analyze` does (learning pass, then
//! classifying pass), compared with its ground truth syscall by syscall:
//! verdict and reason equal for all, pid/tid equal for all with a stack.
//! Prints precision and recall per verdict label.

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::sync::Arc;

use sentry_engine::{
    Engine, EngineConfig, FnSink, Learning, NullSink, SyscallVerdict, SystemDll, SystemDlls,
};
use sentry_etl::{EtlFile, Order};
use sentry_synth::{generate, Options, Scenario};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    pid: Option<u32>,
    tid: Option<u32>,
    label: String,
}

fn label(verdict: &str, reason: Option<&str>) -> String {
    match reason {
        Some(r) => format!("{verdict}/{r}"),
        None => verdict.to_string(),
    }
}

/// The two passes of `analyze` over an in-memory trace.
fn analyze(etl: &[u8], system_dlls: Option<Arc<SystemDlls>>) -> HashMap<u64, Row> {
    let file = EtlFile::from_bytes(etl.to_vec()).expect("synth trace opens");
    let base = EngineConfig {
        system_dlls,
        ..EngineConfig::default()
    };
    let mut learner = Engine::new(EngineConfig {
        learning: Learning::Only,
        ..base.clone()
    });
    let mut r = file.events(Order::Time);
    while let Some(ev) = r.next_event() {
        learner.process(&ev, &mut NullSink);
    }
    learner.finish(&mut NullSink);
    // With the system DLLs, service identity comes from their exports
    // alone: drop what the learning pass found, to prove it.
    let with_dlls = base.system_dlls.is_some();
    let learned = learner.into_services();
    let mut engine = Engine::new(EngineConfig {
        services: if with_dlls {
            Default::default()
        } else {
            learned
        },
        ..base
    });
    let mut got = HashMap::new();
    let mut sink = FnSink(|v: &SyscallVerdict<'_>| {
        let prev = got.insert(
            v.timestamp,
            Row {
                pid: v.pid,
                tid: v.tid,
                label: label(v.verdict.as_str(), v.reason.map(|r| r.as_str())),
            },
        );
        assert!(prev.is_none(), "two verdicts for syscall {}", v.timestamp);
    });
    let mut r = file.events(Order::Time);
    while let Some(ev) = r.next_event() {
        engine.process(&ev, &mut sink);
    }
    let stats = engine.finish(&mut sink);
    assert_eq!(stats.decode_errors, 0, "{:?}", stats.decode_error_samples);
    got
}

fn truth_rows(truth: &Value) -> HashMap<u64, Row> {
    truth["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            // These passes run without `--images`.
            let v = s.get("without_images").unwrap_or(s);
            (
                s["timestamp"].as_u64().unwrap(),
                Row {
                    pid: s["pid"].as_u64().map(|v| v as u32),
                    tid: s["tid"].as_u64().map(|v| v as u32),
                    label: label(v["verdict"].as_str().unwrap(), v["reason"].as_str()),
                },
            )
        })
        .collect()
}

/// Compares, prints precision/recall per label, returns the mismatches.
fn compare(name: &str, truth: &HashMap<u64, Row>, got: &HashMap<u64, Row>) -> Vec<String> {
    let mut bad = Vec::new();
    // label -> (true positives, predicted, actual)
    let mut pr: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
    for (ts, t) in truth {
        pr.entry(&t.label).or_default().2 += 1;
        let Some(g) = got.get(ts) else {
            bad.push(format!("{name}: syscall {ts} has no verdict (truth {t:?})"));
            continue;
        };
        pr.entry(&g.label).or_default().1 += 1;
        if g.label == t.label {
            pr.entry(&t.label).or_default().0 += 1;
        } else {
            bad.push(format!("{name}: syscall {ts}: truth {t:?}, engine {g:?}"));
        }
        if t.label != "no_stack" && (g.pid, g.tid) != (t.pid, t.tid) {
            bad.push(format!(
                "{name}: syscall {ts}: pid/tid truth {t:?}, engine {g:?}"
            ));
        }
    }
    for ts in got.keys() {
        if !truth.contains_key(ts) {
            bad.push(format!("{name}: verdict for unknown syscall {ts}"));
        }
    }
    for (l, (tp, pred, act)) in &pr {
        let p = if *pred == 0 {
            1.0
        } else {
            *tp as f64 / *pred as f64
        };
        let r = if *act == 0 {
            1.0
        } else {
            *tp as f64 / *act as f64
        };
        eprintln!("{name:<44} {l:<26} precision {p:.4} recall {r:.4} (n={act})");
    }
    bad
}

fn run(o: &Options, with_dlls: bool) -> Vec<String> {
    let mut truth_buf = Vec::new();
    let (cur, summary) = generate(o, Cursor::new(Vec::new()), Some(&mut truth_buf)).unwrap();
    let truth: Value = serde_json::from_slice(&truth_buf).unwrap();
    let dlls = with_dlls.then(|| {
        Arc::new(SystemDlls {
            dlls: sentry_synth::pe::system_dlls(&summary.layout)
                .into_iter()
                .map(|(n, b)| SystemDll::parse(n, &b).unwrap())
                .collect(),
        })
    });
    let got = analyze(cur.get_ref(), dlls);
    let name = format!(
        "{}{}{}{}{}",
        o.scenario.name(),
        if o.pointer_size == 4 { " x86" } else { "" },
        if o.compress { " compressed" } else { "" },
        if o.stack_cache { " stack-cache" } else { "" },
        if with_dlls { " system-dlls" } else { "" }
    );
    compare(&name, &truth_rows(&truth), &got)
}

fn check(variants: &[(Options, bool)]) {
    let mut bad = Vec::new();
    for (o, dlls) in variants {
        bad.extend(run(o, *dlls));
    }
    for b in bad.iter().take(30) {
        eprintln!("{b}");
    }
    assert!(bad.is_empty(), "{} mismatches", bad.len());
}

#[test]
fn every_scenario_matches_its_truth() {
    let v: Vec<_> = Scenario::ALL
        .into_iter()
        .map(|s| {
            let mut o = Options::new(s);
            o.seed = 7;
            (o, false)
        })
        .collect();
    check(&v);
}

#[test]
fn every_scenario_matches_with_system_dlls() {
    let v: Vec<_> = Scenario::ALL
        .into_iter()
        .map(|s| {
            let mut o = Options::new(s);
            o.seed = 11;
            (o, true)
        })
        .collect();
    check(&v);
}

#[test]
fn compressed_stack_cache_and_x86_variants_match() {
    let mut v = Vec::new();
    for s in [
        Scenario::Mixed,
        Scenario::Degraded,
        Scenario::IndirectRandomized,
    ] {
        let mut o = Options::new(s);
        o.seed = 3;
        o.compress = true;
        o.stack_cache = true;
        v.push((o.clone(), false));
        o.pointer_size = 4;
        o.compress = false;
        o.stack_cache = false;
        v.push((o.clone(), false));
        o.stack_cache = true;
        v.push((o, true));
    }
    check(&v);
}
