//! Allowlist entries that need a module's file (issue 15): `sha256` matches
//! with `analyze --images` (the file's hash, checked against `sha256sum`),
//! `signer` never matches offline and `analyze` says so on stderr, also
//! with `-q`, instead of dropping it silently. `live`'s options for the
//! module files are checked off Windows too.

#[cfg(not(windows))]
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_syscall-sentry");

#[cfg(not(windows))]
fn synth(dir: &Path) -> (String, String) {
    let etl = dir.join("rop.etl");
    let img = dir.join("images");
    let out = Command::new(BIN)
        .args([
            "synth",
            "--scenario",
            "rop-frames",
            "--syscalls",
            "2000",
            "-o",
        ])
        .arg(&etl)
        .arg("--images-out")
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success());
    (etl.display().to_string(), img.display().to_string())
}

/// (exit code, alert lines, stderr)
#[cfg(not(windows))]
fn analyze(args: &[&str], allow: &str, dir: &Path) -> (i32, usize, String) {
    let p = dir.join("allow.toml");
    std::fs::write(&p, allow).unwrap();
    let out = Command::new(BIN)
        .args(["analyze", "-q"])
        .args(args)
        .arg("--allowlist")
        .arg(&p)
        .output()
        .unwrap();
    let alerts = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"type\":\"alert\""))
        .count();
    (
        out.status.code().unwrap(),
        alerts,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// `sha256sum` is a Linux tool: not under Wine.
#[cfg(not(windows))]
#[test]
fn sha256_entries_match_the_file_and_signer_entries_are_reported_offline() {
    let dir = std::env::temp_dir().join(format!("sentry-modfiles-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (etl, img) = synth(&dir);
    let with = [etl.as_str(), "--images", img.as_str()];
    let (code, base, _) = analyze(&with, "", &dir);
    assert_eq!(code, 1);
    assert!(base > 0);
    // U of rop-frames' alerts is ntdll's stub return: its file's hash.
    let out = Command::new("sha256sum")
        .arg(Path::new(&img).join("System32/ntdll.dll"))
        .output()
        .unwrap();
    let sum = String::from_utf8_lossy(&out.stdout)[..64].to_string();
    let entry = format!("[[allow]]\nprocess = \"beacon.exe\"\nsha256 = \"{sum}\"\n");
    assert_eq!(analyze(&with, &entry, &dir).1, 0);
    // Without --images there is no file to hash (nor rule 9): said.
    let (_, _, err) = analyze(&[etl.as_str()], &entry, &dir);
    assert!(
        err.contains("allowlist entries that can never match here: 1 (sha256)"),
        "{err}"
    );
    // A signer entry: never matched offline, and reported even with -q.
    let signer = "[[allow]]\nprocess = \"beacon.exe\"\nsigner = \"Microsoft Corporation\"\n";
    let (_, n, err) = analyze(&with, signer, &dir);
    assert_eq!(n, base);
    assert!(
        err.contains("allowlist entries that can never match here: 1 (signer)")
            && err.contains("match only in `live`"),
        "{err}"
    );
    // Nothing to report when every entry can match.
    let (_, _, err) = analyze(&with, &entry, &dir);
    assert!(!err.contains("never match"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn live_help_names_the_module_file_options() {
    let out = Command::new(BIN).args(["live", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--no-module-bytes"), "{help}");
    assert!(help.contains("--module-cache-mb"), "{help}");
}
