//! The call-stack evasion scenarios through the CLI, as a user runs them:
//! `synth` writes the trace, its truth and the traced host's DLLs
//! (`--images-out`), `analyze --per-syscall` classifies, with and without
//! `--images`, 64- and 32-bit. Every syscall's verdict and reason must equal
//! the truth (`without_images` where the bytes decide), so precision and
//! recall are 1.0 for every reason; the look-alikes raise no alert. The
//! per-reason table is printed (`--nocapture`).

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::Value;
use support::{label, run};

/// The flags of a truth entry or a `--per-syscall` line, as a label.
fn flags(v: &Value) -> String {
    v["flags"].as_array().map_or(String::new(), |f| {
        let f: Vec<&str> = f.iter().filter_map(Value::as_str).collect();
        format!("+{}", f.join("+"))
    })
}

/// (true positives, false positives, false negatives) per label.
type Tally = BTreeMap<String, (u64, u64, u64)>;

fn check(dir: &Path, scenario: &str, ps: u8, tally: &mut Tally) {
    let etl = dir.join(format!("{scenario}-{ps}.etl"));
    let img = dir.join(format!("{scenario}-{ps}-images"));
    let (etl_s, img_s) = (etl.to_str().unwrap(), img.to_str().unwrap());
    let ps_s = ps.to_string();
    run(&[
        "synth",
        "--scenario",
        scenario,
        "--pointer-size",
        &ps_s,
        "--syscalls",
        "2500",
        "--seed",
        "11",
        "-o",
        etl_s,
        "--images-out",
        img_s,
    ]);
    let truth: Value =
        serde_json::from_slice(&std::fs::read(etl.with_extension("truth.json")).unwrap()).unwrap();
    for with_images in [false, true] {
        let mut args = vec!["analyze", "-q", "--per-syscall", etl_s];
        if with_images {
            args.extend(["--images", img_s]);
        }
        let out = run(&args);
        let got: HashMap<u64, String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|v| v["timestamp"].is_u64())
            .map(|v| (v["timestamp"].as_u64().unwrap(), label(&v) + &flags(&v)))
            .collect();
        let entries = truth["syscalls"].as_array().unwrap();
        assert_eq!(got.len(), entries.len(), "{scenario} {ps}");
        for e in entries {
            let want = if with_images {
                e
            } else {
                e.get("without_images").unwrap_or(e)
            };
            let want = label(want) + &flags(e);
            let g = &got[&e["timestamp"].as_u64().unwrap()];
            let key =
                |l: &str| format!("{l} ({})", if with_images { "images" } else { "no images" });
            if *g == want {
                tally.entry(key(&want)).or_default().0 += 1;
            } else {
                tally.entry(key(g)).or_default().1 += 1;
                tally.entry(key(&want)).or_default().2 += 1;
                panic!("{scenario} {ps}-bit images={with_images}: {e} got {g}");
            }
        }
        if scenario == "evasion-lookalikes" {
            // Alerts mode too: nothing to report.
            let mut a = vec!["analyze", "-q", etl_s];
            if with_images {
                a.extend(["--images", img_s]);
            }
            let out = run(&a);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
}

// About 40 program starts: minutes under Wine (the Windows CI), seconds
// here; the logic is the same on both.
#[cfg_attr(windows, ignore)]
#[test]
fn every_evasion_scenario_has_precision_and_recall_one() {
    let dir = std::env::temp_dir().join(format!("sentry-evasion-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut tally = Tally::new();
    for s in [
        "cloned-ntdll",
        "rop-frames",
        "stack-truncation",
        "wow64-bypass",
        "evasion-lookalikes",
    ] {
        for ps in [8u8, 4] {
            if s == "wow64-bypass" && ps == 4 {
                continue;
            }
            check(&dir, s, ps, &mut tally);
        }
    }
    println!(
        "{:<48} {:>6} {:>9} {:>6}",
        "label", "n", "precision", "recall"
    );
    for (l, (tp, fp, fneg)) in &tally {
        let p = *tp as f64 / (tp + fp).max(1) as f64;
        let r = *tp as f64 / (tp + fneg).max(1) as f64;
        println!("{l:<48} {tp:>6} {p:>9.3} {r:>6.3}");
    }
    for reason in [
        "cloned_stub_module",
        "wow64_bypass",
        "not_call_preceded",
        "+truncated_stack",
    ] {
        let n: u64 = tally
            .iter()
            .filter(|(l, _)| l.contains(reason))
            .map(|(_, t)| t.0)
            .sum();
        assert!(n > 50, "{reason}: {n}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An allowlist entry by PE identity, taken from an alert's
/// `module_identity`, suppresses that module's alerts; the same name with
/// another timestamp (a file dropped under the name) suppresses nothing.
#[test]
fn allowlist_by_identity() {
    let dir = std::env::temp_dir().join(format!("sentry-identity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let etl = dir.join("c.etl");
    let etl_s = etl.to_str().unwrap();
    run(&[
        "synth",
        "--scenario",
        "cloned-ntdll",
        "--syscalls",
        "2000",
        "-o",
        etl_s,
    ]);
    let alerts = |extra: &[&str]| -> Vec<Value> {
        let mut a = vec!["analyze", "-q", etl_s];
        a.extend_from_slice(extra);
        String::from_utf8_lossy(&run(&a).stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let all = alerts(&[]);
    let renamed: Vec<&Value> = all
        .iter()
        .filter(|a| a["module"] == "wmiclnt.dll")
        .collect();
    assert!(!renamed.is_empty());
    let id = &renamed[0]["module_identity"];
    let (tds, size) = (
        id["time_date_stamp"].as_str().unwrap(),
        id["size_of_image"].as_str().unwrap(),
    );
    let list = |tds: &str| {
        let p = dir.join(format!("allow-{tds}.toml"));
        std::fs::write(
            &p,
            format!(
                "[[allow]]\nprocess = \"unhook.exe\"\nidentity = {{ name = \"wmiclnt.dll\", time_date_stamp = \"{tds}\", size_of_image = \"{size}\" }}\n"
            ),
        )
        .unwrap();
        p.display().to_string()
    };
    let good = list(tds);
    let left = alerts(&["--allowlist", &good]);
    assert_eq!(left.len(), all.len() - renamed.len());
    assert!(left.iter().all(|a| a["module"] != "wmiclnt.dll"));
    let other = list("0x1");
    assert_eq!(alerts(&["--allowlist", &other]).len(), all.len());
    std::fs::remove_dir_all(&dir).unwrap();
}
