//! The Audit-API scenarios: what the trace holds matches the truth (read
//! back with `sentry-etl` and decoded with `sentry-kernel-audit-api`), and
//! the two sources of one seed are the same workload.

use std::collections::HashMap;
use std::io::Cursor;

use sentry_etl::{EtlFile, Order};
use sentry_kernel_audit_api::{decode, CallStack};
use sentry_synth::{generate, Options, Scenario, Source};
use serde_json::Value;

fn run(o: &Options) -> (Vec<u8>, Value, u64) {
    let mut truth = Vec::new();
    let (cur, summary) = generate(o, Cursor::new(Vec::new()), Some(&mut truth)).unwrap();
    assert!(summary.learnable(), "{:?}", summary.unlearnable_sites);
    (
        cur.into_inner(),
        serde_json::from_slice(&truth).unwrap(),
        summary.stats.records,
    )
}

/// Each audit event decodes, and its header pid/tid, target, access and
/// return code, and its stack's first user frame's presence, equal the
/// truth entry with its timestamp; nothing else is in the truth. A split
/// entry's user part is in its own Kernel-EventTracing event.
#[test]
fn audit_events_carry_the_truth() {
    for s in Scenario::AUDIT {
        for (ps, compress) in [(8u8, false), (4, true)] {
            let mut o = Options::new(s);
            o.pointer_size = ps;
            o.compress = compress;
            o.syscalls = 6000;
            let (etl, truth, _) = run(&o);
            let rows: HashMap<u64, &Value> = truth["syscalls"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| (r["timestamp"].as_u64().unwrap(), r))
                .collect();
            assert!(rows.len() > 100, "{}: {} rows", s.name(), rows.len());
            let file = EtlFile::from_bytes(etl).unwrap();
            let kstart = if ps == 8 {
                0xFFFF_8000_0000_0000u64
            } else {
                0x8000_0000
            };
            let mut seen = 0;
            let mut split = HashMap::new();
            let mut r = file.events(Order::Time);
            while let Some(ev) = r.next_event() {
                if let sentry_raw::EventId::Kernel { group, .. } = ev.id {
                    assert!(!matches!(group, 0x0F | 0x18), "no syscall events");
                }
                let Some(a) = decode(&ev).unwrap() else {
                    continue;
                };
                let row = rows[&ev.timestamp];
                seen += 1;
                assert_eq!(row["source"], "audit");
                assert_eq!(row["api"], a.api_name());
                assert_eq!(row["service"], a.api_name());
                assert_eq!(row["pid"].as_u64(), ev.pid.map(u64::from));
                assert_eq!(row["tid"].as_u64(), ev.tid.map(u64::from));
                assert_eq!(row["target_pid"].as_u64(), a.target_pid.map(u64::from));
                assert_eq!(row["target_tid"].as_u64(), a.target_tid.map(u64::from));
                assert_eq!(
                    row["access"].as_str().map(String::from),
                    a.desired_access.map(|m| format!("{:#x}", m.0))
                );
                assert_eq!(row["return_code"], format!("{:#010x}", a.return_code.0));
                let stack = CallStack::of(&ev).expect("stack item");
                let frames: Vec<u64> = stack.frames().collect();
                assert!(frames[0] >= kstart, "kernel frames first");
                assert_eq!(stack.width, ps);
                if row["stack_split"] == true {
                    // The kernel part; the user part follows (below).
                    assert_eq!(stack.match_id, ev.timestamp);
                    assert!(frames.iter().all(|&f| f >= kstart));
                    split.insert(stack.match_id, (ev.timestamp, ev.tid));
                } else {
                    assert_eq!(stack.match_id, 0);
                    assert!(frames.iter().any(|&f| f < kstart), "a user part");
                }
            }
            assert_eq!(seen, rows.len(), "{}", s.name());
            // Each split event's user part: a Kernel-EventTracing event 18
            // of its thread, later, with its match id and user frames only.
            let mut r = file.events(Order::Time);
            let mut users = 0;
            while let Some(ev) = r.next_event() {
                let Some(u) = sentry_kernel_audit_api::user_mode_stack(&ev) else {
                    continue;
                };
                users += 1;
                let (t, tid) = split[&u.match_id];
                assert!(ev.timestamp > t);
                assert_eq!(ev.tid, tid);
                assert!(ev.payload.is_empty());
                assert!(u.frames().all(|f| f < kstart));
            }
            assert_eq!(users, split.len(), "{}", s.name());
        }
    }
}

/// One seed, both sources: every audited syscall of the syscall-source
/// truth is in the audit-source truth with the same time, pid, tid,
/// verdict, reason and technique, and the audit trace has far fewer
/// records.
#[test]
fn both_sources_are_one_workload() {
    for ps in [8u8, 4] {
        let mut o = Options::new(Scenario::AuditMixed);
        o.pointer_size = ps;
        o.syscalls = 20_000;
        o.source = Source::Syscalls;
        let (_, sys, sys_records) = run(&o);
        o.source = Source::Audit;
        let (_, aud, aud_records) = run(&o);
        let audited = ["NtOpenProcess", "NtOpenThread", "NtSetContextThread"];
        let key = |r: &Value| {
            (
                r["timestamp"].as_u64(),
                r["pid"].as_u64(),
                r["tid"].as_u64(),
                r["service"].as_str().map(String::from),
                r["verdict"].as_str().map(String::from),
                r["reason"].as_str().map(String::from),
                r["technique"].as_str().map(String::from),
            )
        };
        let want: Vec<_> = sys["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| audited.contains(&r["service"].as_str().unwrap()))
            .map(key)
            .collect();
        let got: Vec<_> = aud["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .map(key)
            .collect();
        assert_eq!(got, want);
        assert!(
            aud_records * 4 < sys_records,
            "audit {aud_records} records, syscalls {sys_records}"
        );
    }
}
