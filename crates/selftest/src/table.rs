//! The table `selftest` prints: one row per fixture (technique, expected
//! verdict and reason, what was seen, pass/fail and why), then the
//! session's loss counters and the overall result.

use crate::decide::{FixtureResult, Outcome};
use crate::fixture::Expect;

fn expected(r: &FixtureResult) -> String {
    // The count is the fixture's own; unknown when it did not report.
    let n = if r.calls > 0 {
        format!(" x{}", r.calls)
    } else {
        String::new()
    };
    match r.fixture.expect {
        Expect::Benign => format!("no alert (normal{n}+)"),
        Expect::Alert(v, reason) => format!("{}/{}{n}", v.as_str(), reason.as_str()),
    }
}

fn seen(r: &FixtureResult) -> String {
    let mut s = if r.seen.is_empty() {
        "nothing".to_string()
    } else {
        r.seen
            .iter()
            .map(|(k, n)| format!("{k} x{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if r.other_image > 0 {
        s.push_str(&format!(
            " ({} of a later process with its pid ignored)",
            r.other_image
        ));
    }
    s
}

fn result(r: &FixtureResult) -> String {
    match &r.failure {
        None => "PASS".into(),
        Some(f) => format!("FAIL: {f}"),
    }
}

/// The printed table.
pub fn render(o: &Outcome) -> String {
    let head = ["fixture", "pid", "technique", "expected", "seen", "result"];
    let rows: Vec<[String; 6]> = o
        .fixtures
        .iter()
        .map(|r| {
            [
                format!("{} ({})", r.fixture.name, r.fixture.arch),
                r.pid.map_or("-".into(), |p| p.to_string()),
                r.fixture.technique.to_string(),
                expected(r),
                seen(r),
                result(r),
            ]
        })
        .collect();
    let mut width = head.map(str::len);
    for row in &rows {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(&head.map(String::from));
    out.push_str(&line(&width.map(|w| "-".repeat(w))));
    for row in &rows {
        out.push_str(&line(row));
    }
    let passed = o.fixtures.iter().filter(|r| r.passed()).count();
    out.push_str(&format!("session loss: {}\n", o.loss));
    out.push_str(&format!(
        "selftest: {} ({passed} of {} fixtures passed)\n",
        if o.passed() { "PASS" } else { "FAIL" },
        o.fixtures.len()
    ));
    out
}
