//! The technique fixtures, as built (fixtures/build.sh with mingw-w64):
//! each executable's code and data hold its technique's bytes, parsed
//! section by section with the `object` crate (an independent PE reader),
//! and each refuses to run under Wine (no genuine Windows ntdll stubs).
//!
//! Fixtures come from `SENTRY_FIXTURES_DIR` if set, else are built here
//! into the test's temporary dir. Without the mingw-w64 compilers or Wine
//! the affected checks are skipped with a message, unless
//! `SENTRY_REQUIRE_FIXTURES=1` / `SENTRY_REQUIRE_WINE=1` (set by
//! `.ci/windows-bundle`), which turn a skip into a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use object::{Architecture, Object, ObjectSection, SectionKind};
use sentry_selftest::{FixtureReport, FIXTURES};

/// A byte pattern; `None` matches any byte.
type Pattern = &'static [Option<u8>];

macro_rules! pat {
    (@ _) => { None };
    (@ $b:literal) => { Some($b) };
    ($($b:tt)*) => { &[$(pat!(@ $b)),*] };
}

/// `mov r10, rcx; mov eax, [rip+ssn]; syscall; ret` (Hell's Gate, number
/// read at run time).
const HELLS_GATE_STUB: Pattern = pat!(0x4c 0x8b 0xd1 0x8b 0x05 _ _ _ _ 0x0f 0x05 0xc3);
/// `mov r10, rcx; mov eax, N; syscall; ret`, the minimal stub, as the
/// direct-unbacked template (int3 padding after it; the Windows 7 stub
/// pattern every fixture compares with has the same first 11 bytes).
const MINIMAL_STUB: Pattern = pat!(0x4c 0x8b 0xd1 0xb8 _ _ _ _ 0x0f 0x05 0xc3 0xcc);
/// The jumper page: its caller and the stub ending in `jmp r11`.
const JUMPER_CALLER: Pattern =
    pat!(0x48 0x83 0xec 0x28 0xe8 0x17 0x00 0x00 0x00 0x48 0x83 0xc4 0x28 0xc3);
const JUMPER_STUB: Pattern =
    pat!(0x4c 0x8b 0xd1 0xb8 _ _ _ _ 0x49 0xbb _ _ _ _ _ _ _ _ 0x41 0xff 0xe3);
/// `mov r10, rcx; mov eax, [rip+ssn]; jmp [rip+gadget]` (RecycledGate).
const RECYCLED_STUB: Pattern = pat!(0x4c 0x8b 0xd1 0x8b 0x05 _ _ _ _ 0xff 0x25);
/// `push 0x33; call $+5; add [esp], 5; retf`, then 64-bit code up to `syscall`.
const GATE_IN: Pattern = pat!(0x6a 0x33 0xe8 0x00 0x00 0x00 0x00 0x83 0x04 0x24 0x05 0xcb
    0x89 0xe4 0x89 0xc9 0x4c 0x8b 0xd1 0x89 0xd0 0x0f 0x05);
/// `call $+5; mov dword [rsp+4], 0x23; add dword [rsp], 13; retf`.
const GATE_OUT: Pattern = pat!(0xe8 0x00 0x00 0x00 0x00 0xc7 0x44 0x24 0x04 0x23 0x00 0x00 0x00
    0x83 0x04 0x24 0x0d 0xcb);
/// The genuine Windows 10+ x64 ntdll stub each x64 fixture compares with.
const WIN10_STUB: Pattern = pat!(0x4c 0x8b 0xd1 0xb8 0x00 0x00 0x00 0x00 0xf6 0x04 0x25 0x08 0x03
    0xfe 0x7f 0x01 0x75 0x03 0x0f 0x05 0xc3 0xcd 0x2e 0xc3);
/// The WoW64 ntdll stub the 32-bit fixture compares with.
const WOW64_STUB: Pattern =
    pat!(0xb8 0x00 0x00 0x00 0x00 0xba 0x00 0x00 0x00 0x00 0xff 0xd2 0xc2 0x04 0x00);

fn count(hay: &[u8], p: Pattern) -> usize {
    hay.windows(p.len())
        .filter(|w| w.iter().zip(p).all(|(b, q)| q.is_none_or(|q| q == *b)))
        .count()
}

fn env_on(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

fn skip_or_fail(require: &str, why: &str) {
    assert!(!env_on(require), "{require}=1 but {why}");
    eprintln!("SKIPPED: {why} (set {require}=1 to make this a failure)");
}

/// The fixtures directory, building it once if needed; `None` if that
/// cannot be done here.
fn fixtures_dir() -> Option<PathBuf> {
    static DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    DIR.get_or_init(build_fixtures).clone()
}

fn build_fixtures() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("SENTRY_FIXTURES_DIR") {
        return Some(PathBuf::from(d));
    }
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/build.sh");
    let have = ["x86_64-w64-mingw32-gcc", "i686-w64-mingw32-gcc"]
        .iter()
        .all(|cc| {
            Command::new(cc)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    if !have {
        skip_or_fail(
            "SENTRY_REQUIRE_FIXTURES",
            "mingw-w64 not installed (gcc-mingw-w64-x86-64, gcc-mingw-w64-i686): fixtures not built",
        );
        return None;
    }
    let st = Command::new("bash")
        .arg(&script)
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success(), "{} failed", script.display());
    Some(out)
}

struct Sections {
    arch: Architecture,
    code: Vec<u8>,
    data: Vec<u8>,
    imports: Vec<String>,
}

fn sections(path: &Path) -> Sections {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let f = object::File::parse(&*bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(f.format(), object::BinaryFormat::Pe, "{}", path.display());
    let mut s = Sections {
        arch: f.architecture(),
        code: Vec::new(),
        data: Vec::new(),
        imports: f
            .imports()
            .unwrap()
            .iter()
            .map(|i| String::from_utf8_lossy(i.name()).into_owned())
            .collect(),
    };
    for sec in f.sections() {
        let d = sec.data().unwrap();
        match sec.kind() {
            SectionKind::Text => s.code.extend_from_slice(d),
            SectionKind::Data | SectionKind::ReadOnlyData => s.data.extend_from_slice(d),
            _ => {}
        }
        // Sections are concatenated: keep a pattern from spanning two.
        s.code.extend_from_slice(&[0xcc; 32]);
        s.data.extend_from_slice(&[0; 32]);
    }
    s
}

#[test]
fn each_fixture_holds_its_technique_bytes() {
    let Some(dir) = fixtures_dir() else { return };
    for fx in FIXTURES {
        let path = dir.join(fx.file_name());
        let s = sections(&path);
        let name = fx.name;
        let syscalls = count(&s.code, pat!(0x0f 0x05));
        let has_import = |f: &str| s.imports.iter().any(|i| i == f);
        if fx.arch == "x64" {
            assert_eq!(s.arch, Architecture::X86_64, "{name}");
            assert_eq!(
                count(&s.data, WIN10_STUB),
                1,
                "{name}: genuine-stub pattern in data"
            );
            assert_eq!(
                count(&s.code, WIN10_STUB),
                0,
                "{name}: pattern must not be code"
            );
        } else {
            assert_eq!(s.arch, Architecture::I386, "{name}");
            assert_eq!(
                count(&s.data, WOW64_STUB),
                1,
                "{name}: WoW64 stub pattern in data"
            );
            assert!(
                has_import("IsWow64Process") || has_import("GetProcAddress"),
                "{name}"
            );
        }
        match name {
            "benign" => {
                assert_eq!(syscalls, 0, "benign: no syscall instruction in code");
                assert!(has_import("CloseHandle"), "benign calls CloseHandle");
            }
            "direct-image" => {
                assert_eq!(count(&s.code, HELLS_GATE_STUB), 1, "{name}");
                assert_eq!(syscalls, 1, "{name}: the stub's syscall only");
            }
            "direct-unbacked" => {
                assert_eq!(syscalls, 0, "{name}: the stub is data until run time");
                assert_eq!(count(&s.data, MINIMAL_STUB), 1, "{name}: stub template");
                assert!(
                    has_import("VirtualAlloc") && has_import("VirtualProtect"),
                    "{name}"
                );
            }
            "indirect-jumper" => {
                assert_eq!(syscalls, 0, "{name}: jumps to ntdll's syscall");
                assert_eq!(count(&s.data, JUMPER_CALLER), 1, "{name}: caller template");
                assert_eq!(count(&s.data, JUMPER_STUB), 1, "{name}: jumper template");
                assert!(
                    has_import("VirtualAlloc") && has_import("VirtualProtect"),
                    "{name}"
                );
            }
            "indirect-mismatch" => {
                assert_eq!(syscalls, 0, "{name}: borrows another stub's syscall");
                assert_eq!(count(&s.code, RECYCLED_STUB), 1, "{name}");
            }
            "heavens-gate" => {
                assert_eq!(
                    count(&s.code, GATE_IN),
                    1,
                    "{name}: gate to 0x33 and syscall"
                );
                assert_eq!(count(&s.code, GATE_OUT), 1, "{name}: way back to 0x23");
                assert_eq!(syscalls, 1, "{name}: the gate's syscall only");
            }
            other => panic!("no byte check for fixture {other}"),
        }
    }
}

fn wine_works() -> bool {
    Command::new("wine")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Under Wine, every fixture prints a refusal and exits 3 before making a
/// raw system call. Wine's x64 ntdll stubs (measured: Wine 8.0) match the
/// first 21 bytes of Windows 10's but end `eb 01 c3 ff 14 25 ...` where
/// Windows has `cd 2e c3`.
#[test]
fn each_fixture_refuses_to_run_under_wine() {
    let Some(dir) = fixtures_dir() else { return };
    if !wine_works() {
        skip_or_fail(
            "SENTRY_REQUIRE_WINE",
            "wine not installed: refusal not checked",
        );
        return;
    }
    let prefix = Path::new(env!("CARGO_TARGET_TMPDIR")).join("wine-prefix");
    // One Wine process per fixture, all at once (a Wine start takes seconds).
    let runs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = FIXTURES
            .iter()
            .map(|fx| {
                let (exe, prefix) = (dir.join(fx.file_name()), &prefix);
                s.spawn(move || {
                    Command::new("wine")
                        .arg(exe)
                        .env("WINEPREFIX", prefix)
                        .env("WINEDEBUG", "-all")
                        .env("WINEDLLOVERRIDES", "mscoree,mshtml=")
                        .output()
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut not_started = Vec::new();
    for (fx, out) in FIXTURES.iter().zip(runs) {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let Some(r) = FixtureReport::from_stdout(&stdout) else {
            // A 32-bit program needs wine32, which a wine64-only install
            // lacks: the fixture never started, so it proves nothing.
            assert_eq!(fx.arch, "x86", "{}: no report; stdout {stdout:?}", fx.name);
            not_started.push(fx.name);
            continue;
        };
        assert_eq!(out.status.code(), Some(3), "{}: {stdout}", fx.name);
        assert_eq!(r.fixture, fx.name);
        let why = r
            .refused
            .unwrap_or_else(|| panic!("{}: not refused: {stdout}", fx.name));
        if fx.arch == "x64" {
            assert!(
                why.contains("not a genuine Windows x64 stub"),
                "{}: {why}",
                fx.name
            );
            assert!(
                stdout.contains("\"bytes\":\"4c 8b d1 b8"),
                "{}: {stdout}",
                fx.name
            );
        }
        assert!(
            r.calls.is_none(),
            "{}: reported calls after refusing",
            fx.name
        );
    }
    if !not_started.is_empty() {
        skip_or_fail(
            "SENTRY_REQUIRE_WINE32",
            &format!("this Wine cannot start 32-bit programs (wine32 missing): {not_started:?} not checked"),
        );
    }
}
