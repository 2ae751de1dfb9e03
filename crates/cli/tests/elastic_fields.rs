//! The Elastic-compatible call-stack fields of `analyze --format ecs`
//! against Elastic Defend's own field definitions: every field written
//! under `process.Ext` / `process.thread.Ext` must be defined, with its
//! type, in the vendored subset of the endpoint package
//! (`crates/engine/tests/data/elastic-endpoint-call-stack-fields.json`:
//! elastic/endpoint-package `package/endpoint/data_stream/api/fields/fields.yml`,
//! names and types, with the commit and package version), and every
//! behaviour value must be one Elastic documents. The values are checked
//! too: the ROP scenario's frame carries the gadget bytes Elastic's
//! trailing-bytes rules look for, and a renamed ntdll copy found in
//! `--images` carries its file's SHA-256.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_syscall-sentry");
const FIELDS: &str =
    include_str!("../../engine/tests/data/elastic-endpoint-call-stack-fields.json");

fn schema() -> (BTreeMap<String, String>, BTreeSet<String>) {
    let v: Value = serde_json::from_str(FIELDS).unwrap();
    assert_eq!(v["package_version"], "9.6.0-prerelease.0");
    let fields = v["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_string(),
                f["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let behaviors = v["behaviors_values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap().to_string())
        .collect();
    (fields, behaviors)
}

/// Checks `v` (the value of field `name`) and its sub-fields; returns the
/// names seen.
fn check(name: &str, v: &Value, fields: &BTreeMap<String, String>, seen: &mut BTreeSet<String>) {
    let sub = |k: &str| format!("{name}.{k}");
    let Some(ty) = fields.get(name) else {
        // A path to defined fields (`process.Ext.api`), not a field itself.
        let o = v
            .as_object()
            .unwrap_or_else(|| panic!("{name} is not an Elastic endpoint field"));
        for (k, x) in o {
            check(&sub(k), x, fields, seen);
        }
        return;
    };
    seen.insert(name.to_string());
    match (ty.as_str(), v) {
        ("keyword", Value::String(s)) => assert!(!s.is_empty() && s.len() <= 1024, "{name}"),
        ("keyword", Value::Array(a)) => assert!(a.iter().all(Value::is_string), "{name}"),
        ("boolean", Value::Bool(_)) => {}
        ("object" | "nested", Value::Object(o)) => {
            for (k, x) in o {
                check(&sub(k), x, fields, seen);
            }
        }
        // `call_stack` is an array of frame objects (`enabled: false`).
        ("object", Value::Array(a)) => {
            for x in a {
                let o = x.as_object().unwrap_or_else(|| panic!("{name}: {x}"));
                for (k, y) in o {
                    check(&sub(k), y, fields, seen);
                }
            }
        }
        _ => panic!("{name}: {v} is not of type {ty}"),
    }
}

fn ecs_alerts(args: &[&str]) -> Vec<Value> {
    let out = Command::new(BIN)
        .args(["analyze", "-q", "--format", "ecs"])
        .args(args)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn synth(dir: &Path, scenario: &str) -> (String, String) {
    let etl = dir.join(format!("{scenario}.etl"));
    let img = dir.join(format!("{scenario}-images"));
    let out = Command::new(BIN)
        .args(["synth", "--scenario", scenario, "--syscalls", "2000", "-o"])
        .arg(&etl)
        .arg("--images-out")
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success());
    (etl.display().to_string(), img.display().to_string())
}

#[test]
fn call_stack_fields_follow_the_endpoint_schema() {
    let (fields, behaviors) = schema();
    let dir = std::env::temp_dir().join(format!("sentry-elastic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../../samples/mixed.etl");
    let mut docs = ecs_alerts(&[sample]);
    let (rop, rop_img) = synth(&dir, "rop-frames");
    let rop_docs = ecs_alerts(&[&rop, "--images", &rop_img]);
    docs.extend(rop_docs.iter().cloned());
    // The renamed ntdll copy as the analyst found it on the host.
    let (cl, cl_img) = synth(&dir, "cloned-ntdll");
    let ntdll = Path::new(&cl_img).join("System32/ntdll.dll");
    std::fs::copy(&ntdll, Path::new(&cl_img).join("wmiclnt.dll")).unwrap();
    let cl_docs = ecs_alerts(&[&cl, "--images", &cl_img]);
    docs.extend(cl_docs.iter().cloned());
    // Proxied calls: the `proxy_call` behaviour, a frame named by its API.
    let (px, px_img) = synth(&dir, "proxy-call");
    let px_docs = ecs_alerts(&[&px, "--images", &px_img]);
    assert!(px_docs
        .iter()
        .any(|d| d["process"]["Ext"]["api"]["behaviors"][0] == "proxy_call"));
    docs.extend(px_docs);
    // Per-syscall documents carry the truncated_stack flag as a behaviour.
    let (tr, _) = synth(&dir, "stack-truncation");
    let out = Command::new(BIN)
        .args(["analyze", "-q", "--per-syscall", "--format", "ecs", &tr])
        .output()
        .unwrap();
    let per_syscall: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let flagged = per_syscall
        .iter()
        .filter(|d| d["process"]["Ext"]["api"]["behaviors"][0] == "truncated_stack")
        .count();
    assert!(flagged > 0);
    docs.extend(per_syscall);
    let mut seen = BTreeSet::new();
    for d in &docs {
        for (k, v) in d["process"].as_object().unwrap() {
            if k == "Ext" || k == "thread" && v.get("Ext").is_some() {
                let (name, v) = if k == "Ext" {
                    ("process.Ext".to_string(), v)
                } else {
                    ("process.thread.Ext".to_string(), &v["Ext"])
                };
                for (k2, x) in v.as_object().unwrap() {
                    check(&format!("{name}.{k2}"), x, &fields, &mut seen);
                }
            }
        }
        if let Some(b) = d["process"]["Ext"]["api"]["behaviors"].as_array() {
            for x in b {
                assert!(behaviors.contains(x.as_str().unwrap()), "{x}");
            }
        }
    }
    for f in [
        "process.thread.Ext.call_stack_summary",
        "process.thread.Ext.call_stack_contains_unbacked",
        "process.thread.Ext.call_stack_final_user_module.name",
        "process.thread.Ext.call_stack_final_user_module.path",
        "process.thread.Ext.call_stack_final_user_module.hash.sha256",
        "process.thread.Ext.call_stack.symbol_info",
        "process.thread.Ext.call_stack.callsite_leading_bytes",
        "process.thread.Ext.call_stack.callsite_trailing_bytes",
        "process.Ext.api.behaviors",
    ] {
        assert!(seen.contains(f), "{f} never written");
    }
    // ROP: Elastic's "API Call via Jump ROP Gadget" looks at the frame's
    // trailing bytes (jmp [rbx] = ff23, push rbx; ret = 53c3) and finds no
    // final user module ("Undetermined") behind a system-only summary.
    let rop_alerts: Vec<&Value> = rop_docs
        .iter()
        .filter(|d| d["syscall_sentry"]["reason"] == "not_call_preceded")
        .collect();
    assert!(!rop_alerts.is_empty());
    for d in rop_alerts {
        let t = &d["process"]["thread"]["Ext"];
        assert_eq!(d["process"]["Ext"]["api"]["behaviors"][0], "image_rop");
        assert_eq!(
            t["call_stack_summary"],
            "ntdll.dll|kernelbase.dll|kernel32.dll|ntdll.dll"
        );
        assert_eq!(t["call_stack_final_user_module"]["name"], "Undetermined");
        let frames = t["call_stack"].as_array().unwrap();
        let trailing: Vec<&str> = frames
            .iter()
            .filter_map(|f| f["callsite_trailing_bytes"].as_str())
            .collect();
        assert_eq!(trailing.len(), 1);
        assert!(
            trailing[0].starts_with("ff23") || trailing[0].starts_with("53c3"),
            "{d}"
        );
    }
    // The renamed clone: its module, path and the hash of the file.
    let bytes = std::fs::read(&ntdll).unwrap();
    let want = sha256_hex(&bytes);
    let renamed: Vec<&Value> = cl_docs
        .iter()
        .filter(|d| d["syscall_sentry"]["module"] == "wmiclnt.dll")
        .collect();
    assert!(!renamed.is_empty());
    for d in renamed {
        let m = &d["process"]["thread"]["Ext"]["call_stack_final_user_module"];
        assert_eq!(m["name"], "wmiclnt.dll");
        assert_eq!(m["hash"]["sha256"], want.as_str());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// FIPS 180-4 SHA-256, written out here so the check does not use the
/// implementation under test.
fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut m = data.to_vec();
    m.push(0x80);
    while m.len() % 64 != 56 {
        m.push(0);
    }
    m.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in m.chunks(64) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes(block[4 * i..4 * i + 4].try_into().unwrap());
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let s1 = v[4].rotate_right(6) ^ v[4].rotate_right(11) ^ v[4].rotate_right(25);
            let ch = (v[4] & v[5]) ^ (!v[4] & v[6]);
            let t1 = v[7]
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = v[0].rotate_right(2) ^ v[0].rotate_right(13) ^ v[0].rotate_right(22);
            let maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
            let t2 = s0.wrapping_add(maj);
            v = [
                t1.wrapping_add(t2),
                v[0],
                v[1],
                v[2],
                v[3].wrapping_add(t1),
                v[4],
                v[5],
                v[6],
            ];
        }
        for (a, b) in h.iter_mut().zip(v) {
            *a = a.wrapping_add(b);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

#[test]
fn sha256_reference_is_right() {
    // FIPS 180-2 appendix B.1 test vector.
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}
