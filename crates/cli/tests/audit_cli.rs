//! The Audit-API source through the command line: `synth` writes each
//! audit scenario (64- and 32-bit, plain and XPRESS-compressed), `analyze
//! --per-syscall` reads it, and every event's verdict, reason, pid, tid and
//! target equal the truth file (precision and recall 1.0); the exit code
//! says whether the truth holds alerts. Then one workload in both sources:
//! the audit capture finds the same NtOpenProcess/NtOpenThread techniques
//! with far fewer events.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const AUDIT_SCENARIOS: [&str; 5] = [
    "audit-benign",
    "audit-lsass-direct",
    "audit-indirect",
    "audit-set-context",
    "audit-mixed",
];

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_syscall-sentry"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sentry-audit-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn synth(scenario: &str, extra: &[&str], out: &Path) -> Value {
    let st = bin()
        .args(["synth", "--scenario", scenario, "--syscalls", "6000", "-o"])
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

/// `analyze --per-syscall` lines by timestamp, and the exit code.
fn analyze(etl: &Path, extra: &[&str]) -> (HashMap<u64, Value>, i32) {
    let out = etl.with_extension("jsonl");
    let st = bin()
        .args(["analyze", "--per-syscall", "--quiet", "--out"])
        .arg(&out)
        .arg(etl)
        .args(extra)
        .output()
        .unwrap();
    let code = st.status.code().unwrap();
    assert!(
        code == 0 || code == 1,
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let lines = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| (v["timestamp"].as_u64().unwrap(), v))
        .collect();
    (lines, code)
}

#[test]
fn every_audit_scenario_matches_its_truth_through_the_cli() {
    for s in AUDIT_SCENARIOS {
        for (ps, compress) in [("8", false), ("8", true), ("4", false), ("4", true)] {
            let name = format!("{s}-{ps}-{compress}");
            let etl = tmp(&format!("{name}.etl"));
            let mut extra = vec!["--pointer-size", ps];
            if compress {
                extra.push("--compress");
            }
            let truth = synth(s, &extra, &etl);
            let (got, code) = analyze(&etl, &[]);
            let rows = truth["syscalls"].as_array().unwrap();
            assert_eq!(got.len(), rows.len(), "{name}: one line per audit event");
            let mut alerts = 0;
            for t in rows {
                let g = &got[&t["timestamp"].as_u64().unwrap()];
                for k in [
                    "verdict",
                    "reason",
                    "pid",
                    "tid",
                    "api",
                    "target_pid",
                    "target_tid",
                    "target",
                    "access_mask",
                    "source",
                ] {
                    let want = if k == "access_mask" {
                        &t["access"]
                    } else {
                        &t[k]
                    };
                    assert_eq!(&g[k], want, "{name} {k}: truth {t} analyze {g}");
                }
                if matches!(t["verdict"].as_str(), Some("direct" | "indirect")) {
                    alerts += 1;
                }
            }
            assert_eq!(code, i32::from(alerts > 0), "{name}: exit code");
            std::fs::remove_file(&etl).ok();
        }
    }
}

/// Techniques found per (process, API, verdict, reason) for the opens;
/// the system call each line is about comes from the truth (a direct
/// syscall's line names no service: rule 3 decides before rule 5).
fn opens(lines: &HashMap<u64, Value>, truth: &Value) -> BTreeMap<String, u64> {
    let service: HashMap<u64, &str> = truth["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["timestamp"].as_u64().unwrap(),
                r["service"].as_str().unwrap(),
            )
        })
        .collect();
    let mut m = BTreeMap::new();
    for (ts, v) in lines {
        let service = service[ts];
        let verdict = v["verdict"].as_str().unwrap();
        if matches!(service, "NtOpenProcess" | "NtOpenThread")
            && matches!(verdict, "direct" | "indirect")
        {
            let k = format!("{} {service} {verdict} {}", v["process"], v["reason"]);
            *m.entry(k).or_insert(0) += 1;
        }
    }
    m
}

#[test]
fn the_audit_source_finds_the_same_opens_with_far_fewer_events() {
    let sys = tmp("both-syscalls.etl");
    let aud = tmp("both-audit.etl");
    // --system-dlls gives both sources exact service names.
    let dlls = tmp("both-dlls");
    let ts = synth(
        "audit-mixed",
        &[
            "--source",
            "syscalls",
            "--system-dlls-out",
            dlls.to_str().unwrap(),
        ],
        &sys,
    );
    let ta = synth("audit-mixed", &["--source", "audit"], &aud);
    let records = |p: &Path| -> u64 {
        let o = bin().args(["stats", "--json"]).arg(p).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v["records"].as_u64().unwrap()
    };
    let (n_sys, n_aud) = (records(&sys), records(&aud));
    let d = ["--system-dlls", dlls.to_str().unwrap()];
    let (a, _) = analyze(&sys, &d);
    let (b, _) = analyze(&aud, &d);
    let (oa, ob) = (opens(&a, &ts), opens(&b, &ta));
    assert!(!oa.is_empty());
    assert_eq!(
        oa, ob,
        "same NtOpenProcess/NtOpenThread techniques, same counts"
    );
    assert!(
        n_aud * 4 < n_sys,
        "records: audit {n_aud}, syscalls {n_sys}"
    );
    eprintln!("records: syscall source {n_sys}, audit source {n_aud}; open techniques {ob:?}");
    for p in [&sys, &aud] {
        std::fs::remove_file(p).ok();
    }
    std::fs::remove_dir_all(&dlls).ok();
}

/// ECS documents of audit events (alerts, and one per event with
/// `--per-syscall`) use only ECS 9.4.0 fields outside `syscall_sentry.`
/// (checked against the vendored subset of ECS's fields.csv that
/// `tests/ecs.rs` uses), carry the target under `syscall_sentry.target`, and
/// raise the severity of the lsass.exe opens.
#[test]
fn audit_ecs_documents_use_ecs_fields() {
    const FIELDS: &str = include_str!("data/ecs-9.4.0-fields-subset.csv");
    const ELASTIC_FIELDS: &str =
        include_str!("../../engine/tests/data/elastic-endpoint-call-stack-fields.json");
    let fields: std::collections::BTreeSet<&str> = FIELDS
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').nth(3))
        .collect();
    // Elastic Defend's call-stack fields (process.Ext, process.thread.Ext):
    // defined by the endpoint package, not ECS (tests/elastic_fields.rs
    // checks their types).
    let elastic: Value = serde_json::from_str(ELASTIC_FIELDS).unwrap();
    let elastic: std::collections::BTreeSet<&str> = elastic["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    fn leaves(prefix: &str, v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                for (k, x) in o {
                    let name = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(&name, x, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let etl = tmp("ecs-lsass.etl");
    synth("audit-lsass-direct", &[], &etl);
    let mut raised = 0;
    for extra in [&[][..], &["--per-syscall"][..]] {
        let o = bin()
            .args(["analyze", "-q", "--format", "ecs"])
            .args(extra)
            .arg(&etl)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            let d: Value = serde_json::from_str(l).unwrap();
            let mut names = Vec::new();
            leaves("", &d, &mut names);
            for n in &names {
                assert!(
                    n.starts_with("syscall_sentry.")
                        || fields.contains(n.as_str())
                        || elastic.contains(n.as_str()),
                    "{n} is neither an ECS nor an Elastic endpoint field: {d}"
                );
            }
            assert!(d["syscall_sentry"]["api"].is_string(), "{d}");
            if d["event"]["kind"] == "alert" {
                assert_eq!(d["syscall_sentry"]["api"], "NtOpenProcess", "{d}");
                assert_eq!(
                    d["syscall_sentry"]["target"]["process"]["name"],
                    "lsass.exe"
                );
                assert_eq!(d["event"]["severity"], 99, "{d}");
                raised += 1;
            }
        }
    }
    assert!(raised > 2);
    std::fs::remove_file(&etl).ok();
}
