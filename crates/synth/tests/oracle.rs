//! Differential check with an independent reader: `dissect.etl` (Python)
//! must read every record the writer says it wrote, with the same counts
//! per kernel event and header kind, and the SysCallEnter events and stacks
//! must carry the truth's timestamps, processors, addresses, pids and tids.
//!
//! Fails (does not skip) when python3 or dissect.etl is missing: install
//! with `pip install dissect.etl` (scripts/test does).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::process::Command;

use sentry_synth::{generate, Options, Scenario};
use serde_json::Value;

fn dissect(path: &PathBuf) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/dissect_summary.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(path)
        .output()
        .expect("python3 must be installed for the dissect.etl oracle");
    assert!(
        out.status.success(),
        "dissect.etl oracle failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn check(o: &Options, name: &str) {
    let dir = std::env::temp_dir().join(format!("synth-oracle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.etl"));
    let mut truth = Vec::new();
    let (_, summary) = generate(
        o,
        BufWriter::new(File::create(&path).unwrap()),
        Some(&mut truth),
    )
    .unwrap();
    let d = dissect(&path);
    std::fs::remove_file(&path).ok();
    let s = &summary.stats;
    let ctx = format!("{name}: dissect says {}", {
        let mut v = d.clone();
        for k in ["enter", "stacks", "key_refs", "processes"] {
            v.as_object_mut().unwrap().remove(k);
        }
        v
    });
    assert_eq!(
        d["pointer_size"].as_u64(),
        Some(u64::from(o.pointer_size)),
        "{ctx}"
    );
    assert_eq!(
        d["processors"].as_u64(),
        Some(u64::from(o.processors)),
        "{ctx}"
    );
    assert_eq!(
        d["buffers_written"].as_u64(),
        Some(u64::from(s.buffers)),
        "{ctx}"
    );
    assert_eq!(
        d["compressed_buffers"].as_u64(),
        Some(u64::from(s.compressed_buffers)),
        "{ctx}"
    );
    assert_eq!(
        d["events_lost"].as_u64(),
        Some(u64::from(summary.events_lost)),
        "{ctx}"
    );
    assert_eq!(d["records"].as_u64(), Some(s.records), "{ctx}");
    let per_hook: BTreeMap<String, u64> = s
        .per_hook
        .iter()
        .map(|((g, o), n)| (format!("{g}/{o}"), *n))
        .collect();
    let got: BTreeMap<String, u64> = serde_json::from_value(d["per_hook"].clone()).unwrap();
    assert_eq!(got, per_hook, "{ctx}");
    let per_header: BTreeMap<String, u64> = s
        .per_header
        .iter()
        .map(|(k, n)| (k.to_string(), *n))
        .collect();
    let got: BTreeMap<String, u64> = serde_json::from_value(d["per_header"].clone()).unwrap();
    assert_eq!(got, per_header, "{ctx}");

    let t: Value = serde_json::from_slice(&truth).unwrap();
    let entries = t["syscalls"].as_array().unwrap();
    let enters = d["enter"].as_array().unwrap();
    assert_eq!(enters.len(), entries.len(), "{ctx}");
    // Per processor, raw timestamps only grow (dissect reads buffers in
    // file order, records in buffer order).
    let mut last: HashMap<u64, u64> = HashMap::new();
    let mut by_ts: HashMap<u64, (u64, u64)> = HashMap::new();
    for e in enters {
        let (ts, cpu, addr) = (
            e[0].as_u64().unwrap(),
            e[1].as_u64().unwrap(),
            e[2].as_u64().unwrap(),
        );
        let prev = last.insert(cpu, ts).unwrap_or(0);
        assert!(
            ts > prev,
            "{name}: processor {cpu} goes back in time at {ts}"
        );
        assert!(
            by_ts.insert(ts, (cpu, addr)).is_none(),
            "{name}: timestamp {ts} not unique"
        );
    }
    let mut stacks: HashMap<u64, Vec<(u64, u64)>> = HashMap::new();
    for s in d["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .chain(d["key_refs"].as_array().unwrap())
    {
        stacks
            .entry(s[0].as_u64().unwrap())
            .or_default()
            .push((s[1].as_u64().unwrap(), s[2].as_u64().unwrap()));
    }
    for e in entries {
        let ts = e["timestamp"].as_u64().unwrap();
        let (cpu, addr) = by_ts[&ts];
        assert_eq!(e["processor"].as_u64(), Some(cpu), "{name}: {e}");
        let a = e["service_address"].as_str().unwrap();
        assert_eq!(
            u64::from_str_radix(&a[2..], 16).unwrap(),
            addr,
            "{name}: {e}"
        );
        match (e["pid"].as_u64(), stacks.get(&ts)) {
            (None, None) => {}
            (Some(pid), Some(parts)) => {
                let tid = e["tid"].as_u64().unwrap();
                assert!(
                    parts.iter().all(|&p| p == (pid, tid)),
                    "{name}: {e} stacks {parts:?}"
                );
            }
            (p, s) => panic!("{name}: {e}: truth pid {p:?}, stacks {s:?}"),
        }
    }
}

fn opts(s: Scenario, ps: u8, compress: bool, stack_cache: bool) -> Options {
    Options {
        scenario: s,
        seed: 11,
        syscalls: 3000,
        pointer_size: ps,
        processors: 8,
        compress,
        stack_cache,
        process_churn: true,
        source: s.default_source(),
    }
}

#[test]
fn dissect_reads_mixed_64bit() {
    check(&opts(Scenario::Mixed, 8, false, false), "mixed64");
}

#[test]
fn dissect_reads_mixed_32bit() {
    check(&opts(Scenario::Mixed, 4, false, false), "mixed32");
}

#[test]
fn dissect_reads_compressed_and_stack_cached() {
    check(
        &opts(Scenario::Mixed, 8, true, true),
        "mixed64-xpress-cache",
    );
    check(
        &opts(Scenario::Degraded, 4, true, false),
        "degraded32-xpress",
    );
}

/// The Audit-API scenarios' EVENT_HEADER records as dissect.etl reads them:
/// the provider, id and level, one STACK_TRACE item per event (64-bit on a
/// 64-bit trace, 32-bit on a 32-bit one; match id 0) whose frames end in a
/// user part, and the header's pid/tid and the payload's target pid equal
/// the truth entry with that timestamp. A `stack_split` entry's item holds
/// the kernel frames only, with match id its timestamp, and one
/// Kernel-EventTracing event 18 (opcode 24, no payload) of the same thread,
/// later, holds the user frames with the same match id.
#[test]
fn dissect_reads_audit_events() {
    for (ps, compress) in [(8u8, false), (4, true)] {
        let mut o = opts(Scenario::AuditMixed, ps, compress, false);
        o.syscalls = 4000;
        let dir = std::env::temp_dir().join(format!("synth-oracle-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("audit-{ps}.etl"));
        let mut truth = Vec::new();
        let (_, summary) = generate(
            &o,
            BufWriter::new(File::create(&path).unwrap()),
            Some(&mut truth),
        )
        .unwrap();
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/dissect_events.py");
        let out = Command::new("python3")
            .arg(&script)
            .arg(&path)
            .output()
            .unwrap();
        std::fs::remove_file(&path).ok();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let events: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        let t: Value = serde_json::from_slice(&truth).unwrap();
        let rows: HashMap<u64, &Value> = t["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["timestamp"].as_u64().unwrap(), r))
            .collect();
        let hex = |g: sentry_raw::Guid| -> String {
            g.to_le_bytes().iter().map(|b| format!("{b:02x}")).collect()
        };
        let provider = hex(sentry_kernel_audit_api::PROVIDER);
        let tracing = hex(sentry_kernel_audit_api::EVENT_TRACING_PROVIDER);
        let (user_parts, events): (Vec<&Value>, Vec<&Value>) = events
            .iter()
            .partition(|e| e["provider"] == tracing.as_str());
        assert_eq!(events.len(), rows.len());
        assert_eq!(
            summary.stats.per_event.values().sum::<u64>(),
            (events.len() + user_parts.len()) as u64
        );
        let kstart = if ps == 8 {
            0xFFFF_8000_0000_0000u64
        } else {
            0x8000_0000
        };
        let split: Vec<&&Value> = rows.values().filter(|r| r["stack_split"] == true).collect();
        assert!(split.len() * 50 > rows.len(), "{} split", split.len());
        assert_eq!(user_parts.len(), split.len());
        let mut user_of = HashMap::new();
        for u in &user_parts {
            assert_eq!(
                (&u["id"], &u["opcode"], &u["level"]),
                (&18.into(), &24.into(), &4.into())
            );
            assert_eq!(u["user_data"], "", "no payload");
            let frames = u["stack"][1].as_array().unwrap();
            assert!(frames.iter().all(|f| f.as_u64().unwrap() < kstart), "{u}");
            user_of.insert(u["stack"][0].as_u64().unwrap(), *u);
        }
        for e in &events {
            let row = rows[&e["ts"].as_u64().unwrap()];
            if row["stack_split"] == true {
                let (match_id, frames) = (&e["stack"][0], e["stack"][1].as_array().unwrap());
                assert_eq!(match_id, &e["ts"], "{e}");
                assert!(frames.iter().all(|f| f.as_u64().unwrap() >= kstart), "{e}");
                let u = user_of[&match_id.as_u64().unwrap()];
                assert_eq!((&u["pid"], &u["tid"]), (&e["pid"], &e["tid"]));
                assert!(u["ts"].as_u64() > e["ts"].as_u64());
                continue;
            }
            assert_eq!(e["provider"], provider.as_str());
            assert_eq!(e["level"], 4);
            assert_eq!(e["pid"], row["pid"], "{e}");
            assert_eq!(e["tid"], row["tid"], "{e}");
            let items = e["items"].as_array().unwrap();
            assert_eq!(items.len(), 1, "{e}");
            assert_eq!(items[0][0], if ps == 8 { 6 } else { 5 });
            assert_eq!(items[0][1], 0, "last item: no linkage");
            let (match_id, frames) = (&e["stack"][0], e["stack"][1].as_array().unwrap());
            assert_eq!(match_id, 0);
            assert!(frames[0].as_u64().unwrap() >= kstart);
            assert!(frames.iter().any(|f| f.as_u64().unwrap() < kstart));
            let data = e["user_data"].as_str().unwrap();
            let first = u32::from_str_radix(data.get(..8).unwrap_or("00000000"), 16)
                .unwrap()
                .swap_bytes();
            match row["api"].as_str().unwrap() {
                "NtOpenProcess" | "NtOpenThread" => {
                    assert_eq!(Some(u64::from(first)), row["target_pid"].as_u64(), "{e}")
                }
                "NtSetContextThread" => assert_eq!(data.len(), 8, "ReturnCode only"),
                other => panic!("unexpected {other}"),
            }
        }
    }
}
