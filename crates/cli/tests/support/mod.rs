//! What the CLI tests share: running the binary as a user does and reading
//! the JSON lines it writes. Test-only; each test crate uses a part.
#![allow(dead_code)]

use std::process::{Command, Output};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_syscall-sentry");

/// Runs the CLI; exit 0 (nothing found) or 1 (alerts) is success
/// (README, "Exit codes").
pub fn run(args: &[&str]) -> Output {
    run_expecting(args, &[0, 1])
}

/// As [`run`], also accepting exit 3: nothing found on a trace whose
/// session lost events (the degraded scenarios).
pub fn run_lossy(args: &[&str]) -> Output {
    run_expecting(args, &[0, 1, 3])
}

fn run_expecting(args: &[&str], ok: &[i32]) -> Output {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.code().is_some_and(|c| ok.contains(&c)),
        "{args:?} exited {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `verdict/reason`, or the verdict alone.
pub fn label(v: &Value) -> String {
    match v["reason"].as_str() {
        Some(r) => format!("{}/{r}", v["verdict"].as_str().unwrap()),
        None => v["verdict"].as_str().unwrap().to_string(),
    }
}

/// Standard output as JSON lines.
pub fn lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Alerts `analyze` prints for the bundled sample, `samples/mixed.etl`
/// (`tests/sample.rs` checks the sample is what `synth` writes).
pub const SAMPLE_ALERTS: usize = 59;
