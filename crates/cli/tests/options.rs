//! `analyze` as a new user meets it (issue 12): options that would disable
//! analysis are refused, filters that match nothing are said, several
//! files are reported apart, pipes and standard input work, a closed
//! output pipe is not an error, and the exit codes are the documented ones.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use support::SAMPLE_ALERTS;

const BIN: &str = env!("CARGO_BIN_EXE_syscall-sentry");

fn sample() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../samples/mixed.etl"
    ))
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn lines(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn options_that_disable_analysis_are_refused_with_the_reason() {
    let s = sample();
    let s = s.to_str().unwrap();
    for (args, says) in [
        (vec!["--window-ms", "0"], "--window-ms 0"),
        (vec!["--max-pending", "0"], "--max-pending 0"),
        (vec!["--evidence-budget", "0"], "--evidence-budget 0"),
        (vec!["--process", "[abc"], "not a wildcard"),
        (vec!["--since", "2", "--until", "1"], "later than --until"),
        (vec!["--format", "xml"], "--format xml"),
    ] {
        let mut a = vec!["analyze", "-q", s];
        a.extend(args.iter().copied());
        let o = run(&a);
        assert_eq!(code(&o), 2, "{args:?}");
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
        assert!(o.stdout.is_empty());
    }
}

#[test]
fn filters_that_match_nothing_are_named() {
    let s = sample();
    let s = s.to_str().unwrap();
    for (args, named) in [
        (vec!["--pid", "12345"], "--pid 12345"),
        (vec!["--process", "nosuch*.exe"], "--process nosuch*.exe"),
        (vec!["--since", "3600"], "--since 3600"),
    ] {
        let mut a = vec!["analyze", "-q", s];
        a.extend(args.iter().copied());
        let o = run(&a);
        let e = stderr(&o);
        assert!(e.contains(named) && e.contains("matched"), "{args:?}: {e}");
        assert_eq!(code(&o), 3, "{args:?}: nothing found is not clean here");
    }
    // A filter that matches: no such warning.
    let o = run(&["analyze", "-q", s, "--pid", "9040"]);
    assert_eq!(code(&o), 1);
    assert!(!stderr(&o).contains("matched"), "{}", stderr(&o));
}

#[test]
fn several_files_are_reported_apart_and_an_unreadable_one_does_not_stop_the_rest() {
    let s = sample();
    let s = s.to_str().unwrap();
    let o = run(&["analyze", "-q", "/nonexistent/x.etl", s]);
    assert_eq!(code(&o), 1, "alerts of the readable file");
    let e = stderr(&o);
    assert!(e.contains("/nonexistent/x.etl"), "{e}");
    let l = lines(&o);
    assert_eq!(l.len(), SAMPLE_ALERTS);
    assert!(l.iter().all(|a| a["file"] == s));
    // Two files: each alert names its own.
    let o = run(&["analyze", "-q", s, s]);
    assert_eq!(lines(&o).len(), 2 * SAMPLE_ALERTS);
    // ECS: log.file.path.
    let o = run(&["analyze", "-q", "--format", "ecs", s]);
    assert!(lines(&o).iter().all(|a| a["log"]["file"]["path"] == s));
    // Nothing readable: could not analyse.
    let o = run(&["analyze", "-q", "/nonexistent/x.etl", "/nonexistent/y.etl"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("y.etl"));
}

#[test]
fn standard_input_and_fifos_are_read() {
    let bytes = std::fs::read(sample()).unwrap();
    let mut child = Command::new(BIN)
        .args(["analyze", "-q", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let w = std::thread::spawn(move || stdin.write_all(&bytes));
    let o = child.wait_with_output().unwrap();
    w.join().unwrap().unwrap();
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert_eq!(lines(&o).len(), SAMPLE_ALERTS);
    assert!(lines(&o).iter().all(|a| a["file"] == "-"));

    #[cfg(unix)]
    {
        let dir = std::env::temp_dir().join(format!("sentry-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("trace.etl");
        let ok = Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(ok.success());
        let f2 = fifo.clone();
        let w = std::thread::spawn(move || std::fs::write(&f2, std::fs::read(sample()).unwrap()));
        let o = run(&["analyze", "-q", fifo.to_str().unwrap()]);
        w.join().unwrap().unwrap();
        assert_eq!(code(&o), 1, "{}", stderr(&o));
        assert_eq!(lines(&o).len(), SAMPLE_ALERTS);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_closed_output_pipe_is_not_an_error() {
    let mut child = Command::new(BIN)
        .args(["analyze", "-q", "--per-syscall"])
        .arg(sample())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is gone (as with `| head -1`).
    let o = child.wait_with_output().unwrap();
    assert!(first.starts_with('{'));
    assert_eq!(code(&o), 141);
    assert!(!stderr(&o).contains("Broken pipe"), "{}", stderr(&o));
}

#[test]
fn exit_codes_are_documented_and_kept() {
    let o = run(&["analyze", "--help"]);
    // clap wraps to the terminal's width.
    let help = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for c in [
        "0 nothing found",
        "1 alerts found",
        "2 could not analyse",
        "3 nothing found, but",
    ] {
        assert!(help.contains(c), "{c}: {help}");
    }
    let dir = std::env::temp_dir().join(format!("sentry-codes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    // benign: nothing found, whole input (0); degraded: lost events (3).
    for (scenario, want) in [("benign", 0), ("degraded", 3)] {
        let o = run(&[
            "synth",
            "--scenario",
            scenario,
            "--syscalls",
            "3000",
            "--no-truth",
            "-o",
            &p(scenario),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let o = run(&["analyze", "-q", &p(scenario)]);
        assert_eq!(code(&o), want, "{scenario}: {}", stderr(&o));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
