//! Audit events whose stack is split (`docs/audit-api.md`, "The stack
//! item") through the command line. `synth --source audit` splits some
//! events' stacks: the item holds the kernel frames (non-zero `MatchId`)
//! and a Kernel-EventTracing `StackTraceUserModeStackTrace` event of the
//! thread holds the user frames. `analyze` joins them and gives each the
//! verdict of the same call unsplit: the truth's, and the syscall source's
//! for the same workload. With the user parts gone, the split events are
//! `no_stack` (`user_part_missing`), never `kernel_origin` or an alert.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_syscall-sentry"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sentry-audit-split-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn synth(scenario: &str, extra: &[&str], out: &Path) -> Value {
    let st = bin()
        .args(["synth", "--scenario", scenario, "--syscalls", "20000", "-o"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    serde_json::from_slice(&std::fs::read(out.with_extension("truth.json")).unwrap()).unwrap()
}

/// `analyze --per-syscall` lines by timestamp, and the summary (stderr).
fn analyze(etl: &Path, extra: &[&str]) -> (HashMap<u64, Value>, String) {
    let out = etl.with_extension("jsonl");
    let st = bin()
        .args(["analyze", "--per-syscall", "--out"])
        .arg(&out)
        .arg(etl)
        .args(extra)
        .output()
        .unwrap();
    let code = st.status.code().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&st.stdout),
        String::from_utf8_lossy(&st.stderr)
    );
    assert!(code == 0 || code == 1, "{text}");
    let lines = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| (v["timestamp"].as_u64().unwrap(), v))
        .collect();
    std::fs::remove_file(&out).ok();
    (lines, text)
}

fn split_rows(truth: &Value) -> Vec<&Value> {
    truth["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["stack_split"] == true)
        .collect()
}

#[test]
fn split_audit_stacks_get_the_verdicts_of_the_unsplit_calls() {
    // `mixed` splits normal calls too (its StackWalk split deliveries).
    for (scenario, ps) in [("audit-mixed", "8"), ("audit-mixed", "4"), ("mixed", "8")] {
        let aud = tmp(&format!("{scenario}-audit-{ps}.etl"));
        let sys = tmp(&format!("{scenario}-syscalls-{ps}.etl"));
        // --system-dlls: exact stub names, so that neither source depends
        // on what it could learn (an audit-only capture cannot learn a
        // SysWhispers3 randomized jumper's stub, docs/verdicts.md).
        let dlls = tmp(&format!("{scenario}-dlls-{ps}"));
        let d = dlls.to_str().unwrap();
        let truth = synth(
            scenario,
            &[
                "--source",
                "audit",
                "--pointer-size",
                ps,
                "--system-dlls-out",
                d,
            ],
            &aud,
        );
        let _ = synth(
            scenario,
            &["--source", "syscalls", "--pointer-size", ps],
            &sys,
        );
        let (a, summary) = analyze(&aud, &["--system-dlls", d]);
        let (s, _) = analyze(&sys, &["--system-dlls", d]);
        let rows = truth["syscalls"].as_array().unwrap();
        assert_eq!(a.len(), rows.len());
        let split = split_rows(&truth);
        let alerts = split
            .iter()
            .filter(|r| matches!(r["verdict"].as_str(), Some("direct" | "indirect")))
            .count();
        assert!(
            split.len() * 50 > rows.len() && alerts > 5,
            "{ps}: {} split, {alerts} alerts",
            split.len()
        );
        for t in rows {
            let ts = t["timestamp"].as_u64().unwrap();
            let g = &a[&ts];
            // Without --images, rule 9's answer is the truth's
            // `without_images` one.
            let w = t.get("without_images").unwrap_or(t);
            for k in ["verdict", "reason"] {
                assert_eq!(g[k], w[k], "{scenario} {ps} {k}: truth {t} analyze {g}");
            }
            for k in ["pid", "tid", "target_pid"] {
                assert_eq!(g[k], t[k], "{scenario} {ps} {k}: truth {t} analyze {g}");
            }
            if t["stack_split"] == true {
                assert_eq!(g["stack_split"], "joined", "{g}");
                // The same call in the syscall source, whose stack is whole.
                let u = &s[&ts];
                assert_eq!((&g["verdict"], &g["reason"]), (&u["verdict"], &u["reason"]));
                assert_eq!(g["call_site"], u["call_site"], "{g} {u}");
                assert_eq!(g["caller"], u["caller"], "{g} {u}");
            } else {
                assert!(g.get("stack_split").is_none(), "{g}");
            }
        }
        let want = format!(
            "split stacks: {} joined with their user part, 0 without it (no_stack)",
            split.len()
        );
        assert!(summary.contains(&want), "{summary}");
        eprintln!(
            "{scenario} {ps}: {} audit events, {} split ({alerts} alerts), all joined",
            rows.len(),
            split.len()
        );
        for p in [&aud, &sys] {
            std::fs::remove_file(p).ok();
            std::fs::remove_file(p.with_extension("truth.json")).ok();
        }
        std::fs::remove_dir_all(&dlls).ok();
    }
}

/// The user parts renamed away (their provider GUID's last byte changed,
/// in place: the file stays valid, the events become another provider's):
/// each split event is `no_stack` with `stack_split: user_part_missing`,
/// its pid and tid still reported; the others keep the truth's verdicts.
#[test]
fn split_audit_stacks_without_their_user_part_are_no_stack() {
    let aud = tmp("lost-user-parts.etl");
    let truth = synth("audit-mixed", &["--source", "audit"], &aud);
    let mut bytes = std::fs::read(&aud).unwrap();
    // {b675ec37-bdb6-4648-bc92-f3fdc74d3ca2} as it is stored.
    let guid = [
        0x37, 0xec, 0x75, 0xb6, 0xb6, 0xbd, 0x48, 0x46, 0xbc, 0x92, 0xf3, 0xfd, 0xc7, 0x4d, 0x3c,
        0xa2,
    ];
    let mut renamed = 0;
    let mut i = 0;
    while i + 16 <= bytes.len() {
        if bytes[i..i + 16] == guid {
            bytes[i + 15] ^= 0xFF;
            renamed += 1;
            i += 16;
        } else {
            i += 1;
        }
    }
    let split = split_rows(&truth);
    assert_eq!(renamed, split.len());
    std::fs::write(&aud, &bytes).unwrap();
    let (a, summary) = analyze(&aud, &[]);
    for t in truth["syscalls"].as_array().unwrap() {
        let g = &a[&t["timestamp"].as_u64().unwrap()];
        if t["stack_split"] == true {
            assert_eq!(g["verdict"], "no_stack", "{g}");
            assert_eq!(g["stack_split"], "user_part_missing", "{g}");
            assert_eq!((&g["pid"], &g["tid"]), (&t["pid"], &t["tid"]));
        } else {
            assert_eq!((&g["verdict"], &g["reason"]), (&t["verdict"], &t["reason"]));
        }
    }
    let want = format!(
        "split stacks: 0 joined with their user part, {} without it (no_stack)",
        split.len()
    );
    assert!(summary.contains(&want), "{summary}");
    std::fs::remove_file(&aud).ok();
    std::fs::remove_file(aud.with_extension("truth.json")).ok();
}
