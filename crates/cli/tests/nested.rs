//! Kernel-mode system calls nested in a user thread's own system call, and
//! user parts that never arrive, through the CLI (docs/verdicts.md rule 2
//! and "What the engine could not see"):
//!
//! - `synth` writes `benign` and `mixed` traces whose benign traffic holds
//!   nested calls (a driver's `Zw` call inside `NtCreateFile`, ...: the
//!   inner service's SysCallEnter with the outer call's user stack).
//!   `analyze --per-syscall` gives each `kernel_origin`, with and without
//!   `--system-dlls`, and no alert is about one; with `--system-dlls` the
//!   line names the stub at `U` and it is another service's, so rule 5
//!   would accuse each of them without the nested-call test.
//! - The `degraded` trace holds user calls whose StackWalk brought the
//!   kernel part only: `no_stack` with the pid and tid and
//!   `stack_split: "user_part_missing"` (JSON, and ECS under
//!   `syscall_sentry`), counted on stderr; never `kernel_origin`.

mod support;

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;
use support::{lines, run_lossy as run};

/// Writes `scenario`'s trace, its truth and its `--system-dlls` files.
fn generate(dir: &Path, scenario: &str) -> (String, String, Value) {
    let etl = dir.join(format!("{scenario}.etl"));
    let sys = dir.join(format!("{scenario}-sys"));
    let (etl_s, sys_s) = (etl.to_str().unwrap(), sys.to_str().unwrap());
    run(&[
        "synth",
        "--scenario",
        scenario,
        "--syscalls",
        "4000",
        "--seed",
        "23",
        "-o",
        etl_s,
        "--system-dlls-out",
        sys_s,
    ]);
    let truth: Value =
        serde_json::from_slice(&std::fs::read(etl.with_extension("truth.json")).unwrap()).unwrap();
    (etl_s.to_string(), sys_s.to_string(), truth)
}

fn by_timestamp(v: Vec<Value>) -> HashMap<u64, Value> {
    v.into_iter()
        .filter(|v| v["timestamp"].is_u64())
        .map(|v| (v["timestamp"].as_u64().unwrap(), v))
        .collect()
}

#[cfg_attr(windows, ignore)]
#[test]
fn nested_kernel_calls_are_kernel_origin_never_alerts() {
    let dir = std::env::temp_dir().join(format!("sentry-nested-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for scenario in ["benign", "mixed"] {
        let (etl, sys, truth) = generate(&dir, scenario);
        let nested: Vec<&Value> = truth["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["technique"] == "kernel-nested")
            .collect();
        assert!(nested.len() > 20, "{scenario}: {}", nested.len());
        for dlls in [false, true] {
            let mut args = vec!["analyze", "-q", "--per-syscall", &etl];
            if dlls {
                args.extend(["--system-dlls", &sys]);
            }
            let got = by_timestamp(lines(&run(&args)));
            let mut mismatched_stub = 0;
            for e in &nested {
                let g = &got[&e["timestamp"].as_u64().unwrap()];
                let ctx = format!("{scenario} dlls={dlls}: {e} got {g}");
                assert_eq!(g["verdict"], "kernel_origin", "{ctx}");
                assert_eq!(g["pid"], e["pid"], "{ctx}");
                assert_eq!(g["tid"], e["tid"], "{ctx}");
                assert_eq!(
                    g["service"].as_str(),
                    dlls.then_some(e["service"].as_str().unwrap()),
                    "{ctx}"
                );
                // The outer call's stub is at `U`: not the inner service's.
                if dlls {
                    let site = g["call_site"].as_str().unwrap();
                    let stub = site.split_once('!').unwrap().1.split_once('+').unwrap().0;
                    let service = e["service"].as_str().unwrap();
                    assert!(stub.starts_with("Nt") || stub.starts_with("Zw"), "{ctx}");
                    if stub[2..] != service[2..] {
                        mismatched_stub += 1;
                    }
                }
            }
            if dlls {
                // Every nesting pairs different services.
                assert_eq!(mismatched_stub, nested.len(), "{scenario}");
            }
            // Alerts mode: the benign trace raises none (each nested call
            // would be an `indirect`/`stub_mismatch` alert otherwise).
            let mut a = vec!["analyze", "-q", &etl];
            a.extend_from_slice(&args[4..]);
            let out = run(&a);
            if scenario == "benign" {
                assert_eq!(
                    out.status.code(),
                    Some(0),
                    "dlls={dlls}: {}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
        // The statistics (stderr, without -q) count them.
        let out = run(&["analyze", &etl]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!(
                "kernel-mode calls nested in a user thread's system call: {} (kernel_origin)",
                nested.len()
            )),
            "{stderr}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg_attr(windows, ignore)]
#[test]
fn a_lost_user_part_is_no_stack_with_its_thread() {
    let dir = std::env::temp_dir().join(format!("sentry-nested-lost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (etl, _, truth) = generate(&dir, "degraded");
    let lost: Vec<&Value> = truth["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["technique"] == "user-part-lost")
        .collect();
    assert!(lost.len() > 20, "{}", lost.len());
    let got = by_timestamp(lines(&run(&["analyze", "-q", "--per-syscall", &etl])));
    for e in &lost {
        let g = &got[&e["timestamp"].as_u64().unwrap()];
        assert_eq!(g["verdict"], "no_stack", "{e} got {g}");
        assert_eq!(g["stack_split"], "user_part_missing", "{g}");
        assert!(g["pid"].is_u64() && g["pid"] == e["pid"], "{e} got {g}");
        assert_eq!(g["tid"], e["tid"], "{g}");
    }
    // Other no_stack lines (no StackWalk at all) say nothing of a split.
    assert!(got
        .values()
        .filter(|g| g["verdict"] == "no_stack" && g["stack_split"].is_null())
        .all(|g| g["pid"].is_null()));
    let out = run(&["analyze", &etl]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("user parts never seen: {} (no_stack)", lost.len())),
        "{stderr}"
    );
    // ECS: under syscall_sentry.
    let ecs = lines(&run(&[
        "analyze",
        "-q",
        "--per-syscall",
        "--format",
        "ecs",
        &etl,
    ]));
    let n = ecs
        .iter()
        .filter(|d| d["syscall_sentry"]["stack_split"] == "user_part_missing")
        .count();
    assert_eq!(n, lost.len());
    std::fs::remove_dir_all(&dir).unwrap();
}
