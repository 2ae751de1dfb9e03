//! Proxied calls (rule 8c, `proxy_call`) through the CLI, as a user runs
//! them: `synth` writes the trace, its truth and the traced host's DLLs
//! (`--images-out`), `analyze --per-syscall` classifies with and without
//! `--images`, x64 and x86. Every syscall's verdict and reason equals the
//! truth (`without_images` where the bytes decide), so precision and recall
//! of `proxy_call` are 1.0; the look-alikes raise no alert; with
//! `--images` the statistics say how many proxied-call shapes were checked
//! and how many could not be (x86/WoW64 32-bit modules without a function
//! table); without `--images` the rule is not applied, as rule 9,
//! and an alert carries the evidence and Elastic's fields.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::Value;
use support::{label, run};

/// `synth` of a scenario with its truth and `--images-out` files:
/// (trace, images folder).
fn synth(dir: &Path, scenario: &str, ps: u8, syscalls: u64) -> (String, String) {
    let etl = dir.join(format!("{scenario}-{ps}.etl"));
    let img = dir.join(format!("{scenario}-{ps}-images"));
    let (etl_s, img_s) = (etl.to_str().unwrap(), img.to_str().unwrap());
    run(&[
        "synth",
        "--scenario",
        scenario,
        "--pointer-size",
        &ps.to_string(),
        "--syscalls",
        &syscalls.to_string(),
        "--seed",
        "17",
        "-o",
        etl_s,
        "--images-out",
        img_s,
    ]);
    (etl_s.to_string(), img_s.to_string())
}

/// The first line of a `--stats-json` file.
fn stats(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(text.lines().next().unwrap()).unwrap()
}

/// (true positives, false positives, false negatives) per label.
type Tally = BTreeMap<String, (u64, u64, u64)>;

/// Rule 8c's counters of one analysis.
#[derive(Debug, Default, Clone, Copy)]
struct Shapes {
    checked: u64,
    not_done: u64,
}

fn check(dir: &Path, scenario: &str, ps: u8, tally: &mut Tally) -> [Shapes; 2] {
    let (etl_s, img_s) = synth(dir, scenario, ps, 3000);
    let (etl_s, img_s) = (etl_s.as_str(), img_s.as_str());
    let etl = Path::new(etl_s);
    let truth: Value =
        serde_json::from_slice(&std::fs::read(etl.with_extension("truth.json")).unwrap()).unwrap();
    let mut shapes = [Shapes::default(); 2];
    for (k, with_images) in [false, true].into_iter().enumerate() {
        let stats_path = dir.join(format!("{scenario}-{ps}-{with_images}.stats.json"));
        let mut args = vec![
            "analyze",
            "-q",
            "--per-syscall",
            etl_s,
            "--stats-json",
            stats_path.to_str().unwrap(),
        ];
        if with_images {
            args.extend(["--images", img_s]);
        }
        let out = run(&args);
        let got: HashMap<u64, String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|v| v["timestamp"].is_u64())
            .map(|v| (v["timestamp"].as_u64().unwrap(), label(&v)))
            .collect();
        let entries = truth["syscalls"].as_array().unwrap();
        assert_eq!(got.len(), entries.len(), "{scenario} {ps}");
        for e in entries {
            let want = if with_images {
                e
            } else {
                e.get("without_images").unwrap_or(e)
            };
            let want = label(want);
            let g = &got[&e["timestamp"].as_u64().unwrap()];
            let key = |l: &str| {
                format!(
                    "{l} ({}-bit, {})",
                    ps * 8,
                    if with_images { "images" } else { "no images" }
                )
            };
            if *g == want {
                tally.entry(key(&want)).or_default().0 += 1;
            } else {
                tally.entry(key(g)).or_default().1 += 1;
                tally.entry(key(&want)).or_default().2 += 1;
                panic!("{scenario} {ps}-bit images={with_images}: {e} got {g}");
            }
        }
        let s = stats(&stats_path);
        shapes[k] = Shapes {
            checked: s["proxy_checked"].as_u64().unwrap(),
            not_done: s["proxy_not_done"].as_u64().unwrap(),
        };
        if scenario == "proxy-lookalikes" {
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
    shapes
}

// About 30 program starts: minutes under Wine (the Windows CI), seconds
// here; the logic is the same on both.
#[cfg_attr(windows, ignore)]
#[test]
fn proxied_calls_have_precision_and_recall_one() {
    let dir = std::env::temp_dir().join(format!("sentry-proxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut tally = Tally::new();
    let mut shapes = BTreeMap::new();
    for s in ["proxy-call", "proxy-lookalikes"] {
        for ps in [8u8, 4] {
            shapes.insert((s, ps), check(&dir, s, ps, &mut tally));
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
    for ((s, ps), [without, with]) in &shapes {
        println!(
            "{s} {}-bit: shapes checked/not done without --images {}/{}, with {}/{}",
            ps * 8,
            without.checked,
            without.not_done,
            with.checked,
            with.not_done
        );
    }
    let n = |l: &str| tally.get(l).map_or(0, |t| t.0);
    assert!(n("indirect/proxy_call (64-bit, images)") > 50);
    // Without --images the rule is not applied (as rule 9); with it,
    // every shape is counted, checked or not done.
    for ((_, ps), [without, with]) in &shapes {
        assert_eq!((without.checked, without.not_done), (0, 0));
        assert!(with.checked + with.not_done > 100, "{with:?}");
        if *ps == 4 {
            // x86: no function table, nothing decided.
            assert_eq!(with.checked, 0);
        }
    }
    // x64: the look-alikes' shapes (kernelbase's DllMain under the loader,
    // its internal APC routine) were checked and passed, not skipped.
    let [_, with] = shapes[&("proxy-lookalikes", 8)];
    assert!(with.checked > 20 && with.not_done == 0, "{with:?}");
    // x64 proxied calls: all checked but WoW64's 32-bit one.
    let [_, with] = shapes[&("proxy-call", 8)];
    assert!(with.checked > 50 && with.not_done > 0, "{with:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An alert names the API that ran as the callback and carries Elastic's
/// fields as Elastic's rule "Windows API via a CallBack Function" reads
/// them (summary, final user module `Undetermined` for a pool worker,
/// behaviour).
#[cfg_attr(windows, ignore)]
#[test]
fn an_alert_carries_the_evidence_and_elastic_fields() {
    let dir = std::env::temp_dir().join(format!("sentry-proxy-ev-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (etl_s, img_s) = synth(&dir, "proxy-call", 8, 2000);
    let (etl_s, img_s) = (etl_s.as_str(), img_s.as_str());
    let lines = |format: &str| -> Vec<Value> {
        let out = run(&[
            "analyze", "-q", "--format", format, etl_s, "--images", img_s,
        ]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let alerts = lines("json");
    assert!(!alerts.is_empty());
    let mut apis = std::collections::BTreeSet::new();
    for a in &alerts {
        assert_eq!(a["reason"], "proxy_call", "{a}");
        assert_eq!(a["behaviors"], serde_json::json!(["proxy_call"]));
        assert_eq!(a["technique"], "proxy-call");
        // A pool worker's stack holds system modules only: Undetermined.
        // An APC runs on the thread that waited alertably: its own code
        // is the final user module.
        let summary = a["call_stack_summary"].as_str().unwrap();
        let want = if summary.contains("tpinject.exe") {
            "tpinject.exe"
        } else {
            "Undetermined"
        };
        assert_eq!(a["final_user_module"]["name"], want, "{a}");
        let pc = &a["proxy_call"];
        let frame = pc["frame"].as_u64().unwrap() as usize;
        assert_eq!(pc["dispatcher_frame"].as_u64().unwrap() as usize, frame + 1);
        let sym = pc["symbol_info"].as_str().unwrap();
        // The frame is in the module the symbol names.
        let module = sym.split('!').next().unwrap();
        assert!(a["stack"][frame]
            .as_str()
            .unwrap()
            .to_ascii_lowercase()
            .starts_with(module));
        assert!(a["stack"][frame + 1]
            .as_str()
            .unwrap()
            .starts_with("ntdll.dll+"));
        apis.insert(sym.split('+').next().unwrap().to_string());
    }
    // The cold part of VirtualAlloc (a chained .pdata range) is named by
    // its function too.
    for want in [
        "kernelbase.dll!VirtualAlloc",
        "kernelbase.dll!VirtualProtect",
        "kernelbase.dll!LoadLibraryW",
        "kernel32.dll!WinExec",
    ] {
        assert!(apis.contains(want), "{want} not in {apis:?}");
    }
    let summaries: std::collections::BTreeSet<&str> = alerts
        .iter()
        .filter_map(|a| a["call_stack_summary"].as_str())
        .collect();
    assert!(
        summaries.contains("ntdll.dll|kernelbase.dll|ntdll.dll|kernel32.dll|ntdll.dll"),
        "{summaries:?}"
    );
    for e in lines("ecs") {
        let p = &e["process"];
        assert_eq!(
            p["Ext"]["api"]["behaviors"],
            serde_json::json!(["proxy_call"])
        );
        assert_eq!(e["event"]["action"], "proxy-call");
        let t = &p["thread"]["Ext"];
        let own = t["call_stack_summary"]
            .as_str()
            .unwrap()
            .contains("tpinject.exe");
        assert_eq!(
            t["call_stack_final_user_module"]["name"],
            if own { "tpinject.exe" } else { "Undetermined" }
        );
        let frames = p["thread"]["Ext"]["call_stack"].as_array().unwrap();
        assert!(frames
            .iter()
            .any(|f| f["symbol_info"].as_str().unwrap().contains(".dll!")));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With `--images` but no file matching kernelbase and kernel32 (a copy
/// of System32 from another build), every shape is counted as not done and
/// none is treated as passed or accused.
#[cfg_attr(windows, ignore)]
#[test]
fn unmatched_modules_are_not_done() {
    let dir = std::env::temp_dir().join(format!("sentry-proxy-nm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (etl_s, img_s) = synth(&dir, "proxy-call", 8, 2000);
    let (etl_s, img_s) = (etl_s.as_str(), img_s.as_str());
    let stats_path = dir.join("s.json");
    for f in ["KernelBase.dll", "kernel32.dll"] {
        std::fs::remove_file(Path::new(img_s).join("System32").join(f)).unwrap();
    }
    let out = run(&[
        "analyze",
        "-q",
        "--per-syscall",
        etl_s,
        "--images",
        img_s,
        "--stats-json",
        stats_path.to_str().unwrap(),
    ]);
    let proxied = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"proxy_call\""))
        .count();
    assert_eq!(proxied, 0);
    let s = stats(&stats_path);
    assert_eq!(s["proxy_checked"], 0);
    assert!(s["proxy_not_done"].as_u64().unwrap() > 50, "{s}");
    std::fs::remove_dir_all(&dir).unwrap();
}
