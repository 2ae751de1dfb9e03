//! The bundled sample (`samples/mixed.etl`, the README's first command) is
//! what `samples/README.md` says it is: `synth` regenerates it byte for
//! byte, truth included, and `analyze --per-syscall` agrees with that truth
//! on every syscall (the truth's `without_images` answer where module bytes
//! decide: the sample is analysed without `--images`).

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_syscall-sentry");

fn sample(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../samples")
        .join(name)
}

#[test]
fn sample_regenerates_byte_for_byte_and_analyze_agrees_with_its_truth() {
    let dir = std::env::temp_dir().join(format!("sentry-sample-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("mixed.etl");
    // The command samples/README.md gives.
    let st = Command::new(BIN)
        .args([
            "synth",
            "--scenario",
            "mixed",
            "--seed",
            "1",
            "--syscalls",
            "2000",
            "-o",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let regenerated = std::fs::read(&out).unwrap();
    let bundled = std::fs::read(sample("mixed.etl")).unwrap();
    assert!(
        regenerated == bundled,
        "samples/mixed.etl is stale: regenerate it with the command in samples/README.md"
    );
    let t_new = std::fs::read(dir.join("mixed.truth.json")).unwrap();
    let t_old = std::fs::read(sample("mixed.truth.json")).unwrap();
    assert!(t_new == t_old, "samples/mixed.truth.json is stale");

    let truth: serde_json::Value = serde_json::from_slice(&t_old).unwrap();
    let mut expect = std::collections::HashMap::new();
    for s in truth["syscalls"].as_array().unwrap() {
        let e = if s["without_images"].is_object() {
            &s["without_images"]
        } else {
            s
        };
        let v = (
            e["verdict"].as_str().unwrap().to_string(),
            e["reason"].as_str().map(String::from),
        );
        expect.insert(s["timestamp"].as_u64().unwrap(), v);
    }
    let run = Command::new(BIN)
        .args(["analyze", "-q", "--per-syscall"])
        .arg(sample("mixed.etl"))
        .output()
        .unwrap();
    // Alerts in the sample: exit 1.
    assert_eq!(
        run.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let mut seen = 0;
    for line in String::from_utf8(run.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let Some(ts) = v["timestamp"].as_u64() else {
            continue;
        };
        let Some(want) = expect.get(&ts) else {
            continue;
        };
        let got = (
            v["verdict"].as_str().unwrap().to_string(),
            v["reason"].as_str().map(String::from),
        );
        assert_eq!(&got, want, "syscall at {ts}");
        seen += 1;
    }
    assert_eq!(
        seen,
        expect.len(),
        "every syscall of the truth is reported once"
    );
    std::fs::remove_dir_all(&dir).ok();
}
