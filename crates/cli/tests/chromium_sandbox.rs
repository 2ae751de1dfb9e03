//! `builtin:chromium-sandbox` through the CLI, as a user runs it: `synth`
//! writes the `chromium-sandbox` trace (Chrome and Edge children calling
//! through their sandbox thunks, a 32-bit Chrome on WoW64, shellcode and an
//! exploit in the same browsers), its truth, the traced host's DLLs; then
//! `analyze --per-syscall` with and without `--system-dlls`/`--images`.
//! Every syscall's verdict and reason must equal the truth (precision and
//! recall 1.0 per label), the suppressed syscalls must be exactly the
//! truth's `"suppressed": "builtin:chromium-sandbox"` ones, the statistics
//! must count them, and `--no-builtin-allowlist` must turn every one back
//! into its `direct`/`unbacked` alert.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;
use support::{label, lines, run_lossy as run};

const BUILTIN: &str = "builtin:chromium-sandbox";

struct Trace {
    etl: String,
    sys: String,
    img: String,
    truth: Value,
}

fn synth(dir: &Path, scenario: &str, syscalls: &str) -> Trace {
    let etl = dir.join(format!("{scenario}.etl"));
    let sys = dir.join(format!("{scenario}-sys"));
    let img = dir.join(format!("{scenario}-img"));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    run(&[
        "synth",
        "--scenario",
        scenario,
        "--syscalls",
        syscalls,
        "--seed",
        "5",
        "-o",
        &s(&etl),
        "--system-dlls-out",
        &s(&sys),
        "--images-out",
        &s(&img),
    ]);
    let truth =
        serde_json::from_slice(&std::fs::read(etl.with_extension("truth.json")).unwrap()).unwrap();
    Trace {
        etl: s(&etl),
        sys: s(&sys),
        img: s(&img),
        truth,
    }
}

/// Analyses with `extra` options; checks every label and the suppressed
/// set against the truth. Returns (label -> n, suppressed count).
fn check(t: &Trace, extra: &[&str], stats: &Path) -> (BTreeMap<String, u64>, u64) {
    let mut args = vec![
        "analyze",
        "-q",
        "--per-syscall",
        &t.etl,
        "--stats-json",
        stats.to_str().unwrap(),
    ];
    args.extend(extra);
    let got: BTreeMap<u64, Value> = lines(&run(&args))
        .into_iter()
        .filter(|v| v["timestamp"].is_u64())
        .map(|v| (v["timestamp"].as_u64().unwrap(), v))
        .collect();
    let entries = t.truth["syscalls"].as_array().unwrap();
    assert_eq!(got.len(), entries.len(), "{extra:?}");
    let mut labels = BTreeMap::new();
    let (mut want_sup, mut got_sup) = (BTreeSet::new(), BTreeSet::new());
    for e in entries {
        let ts = e["timestamp"].as_u64().unwrap();
        let g = &got[&ts];
        let want = label(
            e.get("without_images")
                .filter(|_| !extra.contains(&"--images"))
                .unwrap_or(e),
        );
        assert_eq!(label(g), want, "{extra:?}: {e} got {g}");
        *labels
            .entry(format!("{want} {}", e["technique"].as_str().unwrap()))
            .or_default() += 1;
        if e["suppressed"] == BUILTIN {
            want_sup.insert(ts);
        }
        if g["allowlist"] == BUILTIN {
            assert_eq!(g["suppressed"], true);
            assert_eq!(g["suppressed_verdict"], "direct");
            assert_eq!(g["suppressed_reason"], "unbacked");
            got_sup.insert(ts);
        }
    }
    assert_eq!(got_sup, want_sup, "{extra:?}: suppressed syscalls");
    let s: Value = serde_json::from_slice(&std::fs::read(stats).unwrap()).unwrap();
    let c = &s["builtin"]["chromium_sandbox"];
    let n = want_sup.len() as u64;
    assert_eq!(c["suppressed"], n, "{extra:?}: {c}");
    assert_eq!(s["suppressed"], n, "{extra:?}");
    let named = if extra.contains(&"--system-dlls") {
        n
    } else {
        0
    };
    assert_eq!(c["service_checked"], named, "{extra:?}: {c}");
    assert_eq!(c["service_not_checked"], n - named, "{extra:?}: {c}");
    assert_eq!(
        c["signer_not_checked"], n,
        "offline no signer is known: {c}"
    );
    assert_eq!(c["rejected_service"], 0);
    (labels, n)
}

#[cfg_attr(windows, ignore)]
#[test]
fn chromium_sandbox_thunks_are_suppressed_and_attacks_in_browsers_found() {
    let dir = std::env::temp_dir().join(format!("sentry-chromium-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let t = synth(&dir, "chromium-sandbox", "3000");
    let stats = dir.join("stats.json");
    let mut first = None;
    for extra in [
        vec![],
        vec!["--system-dlls", &t.sys],
        vec!["--images", &t.img],
        vec!["--system-dlls", &t.sys, "--images", &t.img],
    ] {
        let (labels, n) = check(&t, &extra, &stats);
        assert!(n > 300, "{n} thunk syscalls");
        first.get_or_insert(labels);
    }
    let labels = first.unwrap();
    for (l, n) in &labels {
        println!("{l:<60} {n:>6} precision 1.0 recall 1.0");
    }
    for want in [
        "normal chromium-sandbox-thunk",
        "normal chromium-sandbox-thunk-wow64",
        "direct/unbacked shellcode-in-browser",
        "direct/unbacked browser-exploit-syscall",
    ] {
        assert!(
            labels.get(want).is_some_and(|&n| n >= 10),
            "{want}: {labels:?}"
        );
    }

    // Alerts mode: only the attacks, none in the thunk pages.
    let attacks: u64 = t.truth["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["verdict"] == "direct")
        .count() as u64;
    let alerts = lines(&run(&["analyze", "-q", &t.etl]));
    let counted: u64 = alerts.iter().map(|a| a["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, attacks);
    for a in &alerts {
        assert!(
            a["caller_module"] != "chrome.exe" && a["caller_module"] != "msedge.exe",
            "{a}"
        );
    }

    // ECS: the suppression is in our own field set, not at the top level.
    let ecs = lines(&run(&[
        "analyze",
        "-q",
        "--per-syscall",
        "--format",
        "ecs",
        &t.etl,
    ]));
    let thunk_lines = ecs
        .iter()
        .filter(|v| v["syscall_sentry"]["allowlist"] == BUILTIN)
        .count() as u64;
    assert!(ecs
        .iter()
        .all(|v| v.get("suppressed").is_none() && v.get("allowlist").is_none()));

    // Off: every thunk syscall is rule 3's alert again.
    let out = run(&[
        "analyze",
        "-q",
        "--per-syscall",
        "--no-builtin-allowlist",
        &t.etl,
    ]);
    let thunks = t.truth["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["suppressed"] == BUILTIN)
        .count() as u64;
    let direct = lines(&out)
        .iter()
        .filter(|v| label(v) == "direct/unbacked")
        .count() as u64;
    assert_eq!(direct, attacks + thunks);
    assert_eq!(thunk_lines, thunks);
    assert!(lines(&out).iter().all(|v| v.get("allowlist").is_none()));
    std::fs::remove_dir_all(&dir).ok();
}

/// The mixed scenario carries a browser at a desktop's rate: its thunk
/// syscalls are suppressed, counted, and the other verdicts are unchanged.
#[cfg_attr(windows, ignore)]
#[test]
fn mixed_scenario_browser_is_suppressed_and_counted() {
    let dir = std::env::temp_dir().join(format!("sentry-chromium-mixed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let t = synth(&dir, "mixed", "4000");
    let stats = dir.join("stats.json");
    let (labels, n) = check(&t, &[], &stats);
    assert!(n > 50, "{n} thunk syscalls in mixed: {labels:?}");
    let (_, n2) = check(&t, &["--system-dlls", &t.sys], &stats);
    assert_eq!(n, n2);
    std::fs::remove_dir_all(&dir).ok();
}
