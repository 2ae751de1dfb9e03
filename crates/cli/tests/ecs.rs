//! Every field `analyze --format ecs` writes (alerts, and one document per
//! syscall with `--per-syscall`) is checked against ECS's published field
//! definitions: `tests/data/ecs-9.4.0-fields-subset.csv` is the subset of
//! elastic/ecs `generated/csv/fields.csv` at tag v9.4.0 that we use
//! (columns as published, rows filtered). Fields of our own live under
//! `syscall_sentry.` and must not collide with ECS names.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use support::SAMPLE_ALERTS;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_syscall-sentry");
const FIELDS: &str = include_str!("data/ecs-9.4.0-fields-subset.csv");

/// Field -> (type, is an array).
fn ecs_fields() -> (String, BTreeMap<String, (String, bool)>) {
    let mut lines = FIELDS.lines();
    let head: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(head[3], "Field");
    let mut version = String::new();
    let mut m = BTreeMap::new();
    for l in lines {
        let c: Vec<&str> = l.split(',').collect();
        version = c[0].to_string();
        m.insert(c[3].to_string(), (c[4].to_string(), c[6].contains("array")));
    }
    (version, m)
}

/// Leaf fields of a document as dotted names with their values.
fn leaves(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
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
        _ => out.push((prefix.to_string(), v.clone())),
    }
}

fn type_ok(ecs_type: &str, v: &Value) -> bool {
    match ecs_type {
        "keyword" | "wildcard" | "match_only_text" | "text" | "constant_keyword" => v.is_string(),
        "long" => v.is_i64() || v.is_u64(),
        "boolean" => v.is_boolean(),
        // RFC 3339 with a time zone.
        "date" => v
            .as_str()
            .is_some_and(|s| s.len() >= 20 && s.as_bytes()[10] == b'T' && s.ends_with('Z')),
        _ => false,
    }
}

fn documents(args: &[&str]) -> Vec<Value> {
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../../samples/mixed.etl");
    let out = Command::new(BIN)
        .args(["analyze", "-q", "--format", "ecs", "--host", "WS-0042"])
        .args(args)
        .arg(sample)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn every_emitted_field_is_an_ecs_field_of_its_type() {
    let (version, fields) = ecs_fields();
    let alerts = documents(&[]);
    let per_syscall = documents(&["--per-syscall"]);
    assert_eq!(alerts.len(), SAMPLE_ALERTS);
    assert_eq!(per_syscall.len(), 1988);
    let mut seen = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for d in alerts.iter().chain(&per_syscall) {
        assert_eq!(d["ecs"]["version"], version.as_str(), "{d}");
        assert_eq!(d["host"]["name"], "WS-0042");
        assert!(d["message"].as_str().is_some_and(|m| m.len() > 10), "{d}");
        assert!(
            ids.insert(d["event"]["id"].as_str().unwrap().to_string()),
            "event.id unique"
        );
        let mut l = Vec::new();
        leaves("", d, &mut l);
        for (name, v) in l {
            // Elastic Defend's call-stack fields, checked against the
            // endpoint package's definitions in tests/elastic_fields.rs.
            if name.starts_with("process.Ext.") || name.starts_with("process.thread.Ext.") {
                continue;
            }
            if name.starts_with("syscall_sentry.") {
                assert!(!fields.contains_key(&name));
                continue;
            }
            let (ty, array) = fields
                .get(&name)
                .unwrap_or_else(|| panic!("{name} is not an ECS {version} field: {d}"));
            // Unknown values are left out, never written as null or "".
            assert!(!v.is_null() && v != "", "{name} written empty: {d}");
            match &v {
                Value::Array(items) => {
                    assert!(*array, "{name}: an array, ECS says one value");
                    assert!(
                        items.iter().all(|x| type_ok(ty, x)),
                        "{name}: {v} is not {ty}"
                    );
                }
                _ => assert!(type_ok(ty, &v), "{name}: {v} is not {ty}"),
            }
            seen.insert(name);
        }
    }
    // The fields the issue asks for are there.
    for f in [
        "ecs.version",
        "message",
        "host.name",
        "event.id",
        "rule.id",
        "log.file.path",
    ] {
        assert!(seen.contains(f), "{f} never written");
    }
    // Alerts are alerts, the other syscalls events.
    assert!(alerts.iter().all(|d| d["event"]["kind"] == "alert"));
    assert!(per_syscall.iter().any(|d| d["event"]["kind"] == "event"));
}
