//! The correlator and module maps on real NT Kernel Logger traces from
//! /work/shared/corpus (see its README.md), in the generalised pairing mode
//! (StackWalk with any parent event): the corpus has no SysCallEnter.

mod support;

use std::collections::BTreeMap;

use sentry_engine::{Engine, EngineConfig, Pairing, StackPair, SyscallVerdict, VerdictSink};
use sentry_etl::{EtlFile, Order};
use support::corpus;

#[derive(Default)]
struct Pairs {
    pairs: u64,
    stack_events: u64,
    user_frames: u64,
    user_frames_resolved: u64,
    user_frames_in_ntdll: u64,
    kernel_frames: u64,
    kernel_frames_resolved: u64,
    by_hook: BTreeMap<String, u64>,
    stitched_threads: Vec<(u64, u32, usize)>,
    per_pid: BTreeMap<u32, (u64, u64, String)>,
}

impl VerdictSink for Pairs {
    fn verdict(&mut self, _v: &SyscallVerdict<'_>) {
        panic!("no SysCallEnter in the corpus");
    }
    fn stack_pair(&mut self, p: &StackPair<'_>) {
        self.pairs += 1;
        self.stack_events += u64::from(p.fragments);
        *self.by_hook.entry(p.parent.to_string()).or_default() += u64::from(p.fragments);
        if p.fragments > 1 {
            self.stitched_threads
                .push((p.timestamp, p.tid, p.stack.len()));
        }
        for &a in p.stack {
            if a >= p.resolver.kernel_boundary {
                self.kernel_frames += 1;
                if p.resolver.module_of(a).is_some() {
                    self.kernel_frames_resolved += 1;
                }
            } else {
                self.user_frames += 1;
                let e = self.per_pid.entry(p.pid).or_insert_with(|| {
                    let name = p.process.map(|x| x.image_file_name.clone());
                    (0, 0, name.unwrap_or_default())
                });
                e.0 += 1;
                if let Some(m) = p.resolver.module_of(a) {
                    e.1 += 1;
                    self.user_frames_resolved += 1;
                    if m.name.eq_ignore_ascii_case("ntdll.dll") {
                        self.user_frames_in_ntdll += 1;
                    }
                }
            }
        }
    }
}

fn run(name: &str) -> Option<(Pairs, sentry_engine::EngineStats)> {
    let path = corpus(name)?;
    let file = EtlFile::open(&path).expect("corpus file opens");
    let mut engine = Engine::new(EngineConfig {
        pairing: Pairing::AnyEvent,
        ..EngineConfig::default()
    });
    let mut sink = Pairs::default();
    let mut r = file.events(Order::Time);
    while let Some(ev) = r.next_event() {
        engine.process(&ev, &mut sink);
    }
    let stats = engine.finish(&mut sink);
    Some((sink, stats))
}

fn golden(name: &str) -> serde_json::Value {
    let p = corpus(name).expect("golden file");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// Per hook: stacks paired with that parent + stack events that had a
/// co-parent of that kind == the golden `parent_hook_of_matched_stacks`.
fn assert_golden_hooks(g: &serde_json::Value, p: &Pairs, s: &sentry_engine::EngineStats) {
    let golden: BTreeMap<String, u64> = g["stackwalk"]["parent_hook_of_matched_stacks"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect();
    let mut mine: BTreeMap<String, u64> = p.by_hook.clone();
    for (k, v) in &s.correlator.co_parents {
        *mine.entry(k.clone()).or_default() += v;
    }
    assert_eq!(mine, golden);
}

#[test]
fn win7_every_stackwalk_pairs_with_its_parent() {
    let Some((p, s)) = run("win7-x64-kernel-stacks.etl") else {
        eprintln!("corpus not found; skipped");
        return;
    };
    let g = golden("win7-x64-kernel-stacks.expected.json");
    assert_eq!(s.decode_errors, 0, "{:?}", s.decode_error_samples);
    // Every StackWalk event pairs (golden: 18,532), none is left over.
    assert_eq!(p.stack_events, g["stackwalk"]["events"].as_u64().unwrap());
    assert_eq!(p.stack_events, 18_532);
    assert_eq!(s.correlator.stack_without_syscall, 0);
    // The golden walker attributes a stack to every kind of event logged at
    // its timestamp; the correlator gives it one parent (same processor
    // first) and counts the other kinds at that timestamp as co-parents.
    // Together they reproduce the golden table exactly.
    assert_golden_hooks(&g, &p, &s);
    assert_eq!(p.by_hook.values().sum::<u64>(), 18_532);
    assert_eq!(s.correlator.co_parents.values().sum::<u64>(), 137);
    // Kernel and user parts logged as separate StackWalk events, stitched by
    // thread id: 18,532 events make 17,389 stacks.
    assert_eq!(s.correlator.fragments_stitched, 1_143);
    assert_eq!(p.pairs, 17_389);
    // The README's cross-processor example: a 1-frame kernel part on
    // processor 3 and a 26-frame user part of thread 2460 on processor 0.
    assert!(
        p.stitched_threads
            .iter()
            .any(|&(_, tid, n)| tid == 2460 && n == 27),
        "{:?}",
        p.stitched_threads
            .iter()
            .filter(|t| t.1 == 2460)
            .collect::<Vec<_>>()
    );
    // User frames resolve to modules loaded in that process at that time.
    // Unresolved ones are .NET JIT code (this is a CLR test trace).
    assert_eq!(p.user_frames, 99_405);
    assert_eq!(p.user_frames_resolved, 95_722);
    assert_eq!(p.user_frames_in_ntdll, 15_096);
    assert_eq!(
        (p.kernel_frames_resolved, p.kernel_frames),
        (28_781, 28_821)
    );
}

#[test]
fn win8_stack_cache_keys_resolve() {
    for name in [
        "win8-x64-compressed-stackcache",
        "win8-wow64-compressed-stackcache",
    ] {
        let Some((p, s)) = run(&format!("{name}.etl")) else {
            eprintln!("corpus not found; skipped");
            return;
        };
        let g = golden(&format!("{name}.expected.json"));
        let k = &g["kernel_events"];
        let count = |op: u32| {
            k[format!("group=0x18 opcode={op}")]["count"]
                .as_u64()
                .unwrap()
        };
        assert_eq!(s.decode_errors, 0);
        // Every stack event and key reference met its parent, and every key
        // reference was resolved (Windows defines keys when it deletes them
        // from the cache, opcode 35, or at rundown, 36: after the references).
        assert_eq!(p.stack_events, count(32) + count(37) + count(38), "{name}");
        assert_eq!(s.correlator.stack_without_syscall, 0);
        assert_eq!(s.correlator.keys_resolved, count(37) + count(38));
        assert_eq!(s.correlator.keys_unresolved, 0);
        // Resolved stacks land in modules: every user frame of MsMpEng (the
        // busiest process without JIT code) is inside a loaded image. The
        // unresolved frames overall are in the .NET test programs and
        // PerfView (JIT code) and a few in dwm/svchost.
        let msmpeng = p.per_pid.values().find(|v| v.2 == "MsMpEng.exe").unwrap();
        assert_eq!(msmpeng.0, msmpeng.1);
        let want = if name.contains("wow64") {
            (121_345, 210_274, 17_320)
        } else {
            (70_402, 153_898, 8_777)
        };
        assert_eq!(
            (
                p.user_frames_resolved,
                p.user_frames,
                p.user_frames_in_ntdll
            ),
            want
        );
        assert!(msmpeng.0 > 30_000, "{msmpeng:?}");
    }
}
