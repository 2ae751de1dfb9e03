//! The technique fixtures (sources in `fixtures/src`, built by
//! `fixtures/build.sh`) and the verdict each must produce
//! (docs/verdicts.md). Each fixture makes `calls` NtClose system calls on an
//! invalid handle with its technique and prints one JSON line
//! ([`FixtureReport`]).

use sentry_engine::{Reason, Verdict};

/// What the engine must say about a fixture's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No alert at all from the process; at least `calls` normal syscalls.
    Benign,
    /// At least `calls` syscalls with this verdict and reason, and no alert
    /// of any other kind from the process.
    Alert(Verdict, Reason),
}

/// One fixture executable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fixture {
    /// Name printed by the fixture (`"fixture"`) and its file stem.
    pub name: &'static str,
    /// What it does, for the table.
    pub technique: &'static str,
    /// `x64` or `x86` (a 32-bit EXE, run under WoW64).
    pub arch: &'static str,
    pub expect: Expect,
}

impl Fixture {
    pub fn file_name(&self) -> String {
        format!("{}.exe", self.name)
    }

    /// `image` (a Process event's `ImageFileName`, or a path ending in it)
    /// names this fixture's executable. The kernel keeps 14 or 15
    /// characters of it (the `EPROCESS` field), so a longer file name
    /// arrives cut short.
    pub fn is_image(&self, image: &str) -> bool {
        same_image(&self.file_name(), image)
    }
}

/// `image` (a name as the kernel reports it, or a path ending in one)
/// names the executable `file`.
pub fn same_image(file: &str, image: &str) -> bool {
    let base = image.rsplit(['\\', '/']).next().unwrap_or(image);
    let file = file.to_ascii_lowercase();
    let base = base.to_ascii_lowercase();
    file == base || (base.len() >= 14 && file.starts_with(&base))
}

/// The fixtures, in the order `selftest` runs and prints them.
pub const FIXTURES: [Fixture; 6] = [
    Fixture {
        name: "benign",
        technique: "NtClose through CloseHandle (kernelbase -> ntdll)",
        arch: "x64",
        expect: Expect::Benign,
    },
    Fixture {
        name: "direct-image",
        technique: "syscall in the EXE, number read from ntdll (Hell's Gate, SysWhispers2)",
        arch: "x64",
        expect: Expect::Alert(Verdict::Direct, Reason::Image),
    },
    Fixture {
        name: "direct-unbacked",
        technique: "syscall stub written to a private page",
        arch: "x64",
        expect: Expect::Alert(Verdict::Direct, Reason::Unbacked),
    },
    Fixture {
        name: "indirect-jumper",
        technique: "jump to ntdll's own syscall from unbacked code (SysWhispers3 jumper)",
        arch: "x64",
        expect: Expect::Alert(Verdict::Indirect, Reason::UnbackedCaller),
    },
    Fixture {
        name: "indirect-mismatch",
        technique: "NtClose via NtQueryInformationProcess's syscall (RecycledGate)",
        arch: "x64",
        expect: Expect::Alert(Verdict::Indirect, Reason::StubMismatch),
    },
    Fixture {
        name: "heavens-gate",
        technique: "far jump to 64-bit mode and syscall from a 32-bit EXE",
        arch: "x86",
        expect: Expect::Alert(Verdict::Direct, Reason::HeavensGate),
    },
];

/// Exit code of a fixture that found no genuine Windows ntdll stub layout
/// and made no raw system call.
pub const EXIT_REFUSED: i32 = 3;

/// The JSON line a fixture prints.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct FixtureReport {
    pub fixture: String,
    pub pid: u32,
    /// Set when the fixture refused to run (not genuine Windows).
    #[serde(default)]
    pub refused: Option<String>,
    #[serde(default)]
    pub arch: Option<String>,
    #[serde(default)]
    pub technique: Option<String>,
    /// Service number used.
    #[serde(default)]
    pub ssn: Option<u32>,
    /// System calls made with the technique.
    #[serde(default)]
    pub calls: Option<u64>,
    /// NTSTATUS (or Win32 error for the benign one) of the last call.
    #[serde(default)]
    pub status: Option<String>,
}

impl FixtureReport {
    /// The first line of `stdout` that parses as a report.
    pub fn from_stdout(stdout: &str) -> Option<FixtureReport> {
        stdout
            .lines()
            .find_map(|l| serde_json::from_str::<FixtureReport>(l.trim()).ok())
    }
}
