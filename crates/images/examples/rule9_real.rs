//! Rule 9's byte checks against GNU objdump on real PE files (the CI step
//! `.ci/rule9-real` runs it over Wine's DLLs and the mingw fixtures):
//!
//!   cargo run --release -p sentry-images --example rule9_real -- FILE.dll...
//!
//! For each file: objdump disassembles the code sections; every call site
//! it decodes must be call-preceded by our check, every `syscall` /
//! `sysenter` / `int 0x2e` transition-preceded, and every gadget shape at
//! an instruction start named alike (tests/support/objdump.rs). Then every
//! offset of a code section where we name a gadget, at an instruction
//! boundary or not, is decoded by objdump on its own (a blob of 16-byte
//! windows, each followed by 16 `nop`s so that objdump's sweep is back in
//! step at the next window) and must be that shape. Prints one table row
//! per file; exits 1 on any disagreement, 2 if a file or objdump is
//! missing. objdump: `x86_64-w64-mingw32-objdump` / `i686-w64-mingw32-objdump`
//! (mingw-w64's binutils), or `$OBJDUMP`.

#![forbid(unsafe_code)]

#[path = "../tests/support/objdump.rs"]
mod objdump;

use sentry_images::{Bits, Image};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, ExitCode};

fn objdump_cmd(bits: Bits) -> String {
    std::env::var("OBJDUMP").unwrap_or_else(|_| {
        match bits {
            Bits::B64 => "x86_64-w64-mingw32-objdump",
            Bits::B32 => "i686-w64-mingw32-objdump",
        }
        .to_string()
    })
}

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e} (install binutils-mingw-w64, or set OBJDUMP)"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("{cmd}: {e}"))
}

/// Whether a gadget shape can start at `code[0]`: up to 4 prefix bytes,
/// then `FF` (jmp/call/push), `50`-`5F` or `8F` (push/pop) or `81`/`83`
/// (add). A
/// superset of every shape, ours or objdump's, so that both directions are
/// checked at every offset that matters.
fn may_start_gadget(code: &[u8]) -> bool {
    let is_prefix =
        |b: u8| matches!(b, 0x26 | 0x2E | 0x36 | 0x3E | 0x64..=0x67 | 0xF2 | 0xF3 | 0x40..=0x4F);
    code.iter()
        .take(5)
        .find(|&&b| !is_prefix(b))
        .is_some_and(|&b| matches!(b, 0xFF | 0x50..=0x5F | 0x8F | 0x81 | 0x83))
}

/// At every offset of the code sections where a gadget shape may start
/// (instruction boundary or not), our shape against objdump's decoding of
/// the bytes there. Returns (offsets checked, per shape [both, objdump
/// only, ours only], disagreements as text).
type Shapes = BTreeMap<&'static str, [u64; 3]>;
fn gadgets_anywhere(img: &Image, cmd: &str) -> Result<(u64, Shapes, Vec<String>), String> {
    const WIN: usize = 16;
    const SLOT: usize = 2 * WIN;
    let mut blob = Vec::new();
    let mut at = Vec::new();
    for (start, len) in img.code_ranges() {
        for rva in start..start + len {
            let w = img.bytes_at(rva, WIN).unwrap_or(&[]);
            let w_len = w.len();
            if may_start_gadget(w) {
                let mut w = w.to_vec();
                w.resize(SLOT, 0x90);
                blob.extend_from_slice(&w);
                at.push((rva, w_len, img.gadget(rva)));
            }
        }
    }
    let mut shapes = Shapes::new();
    if at.is_empty() {
        return Ok((0, shapes, Vec::new()));
    }
    let dir = std::env::temp_dir().join(format!("rule9-real-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join("windows.bin");
    std::fs::write(&path, &blob).map_err(|e| e.to_string())?;
    let m = objdump::machine(img.bits);
    let p = path.to_string_lossy().to_string();
    let text = run(
        cmd,
        &["-D", "-z", "-w", "-M", "intel", "-b", "binary", "-m", m, &p],
    );
    let _ = std::fs::remove_dir_all(&dir);
    // Only the windows' own bytes matter: the `nop` lines are skipped.
    let listing = objdump::parse_where(&text?, |va| (va as usize) % SLOT < WIN);
    let mut by_slot = HashMap::new();
    for run in &listing.runs {
        for (k, i) in run.iter().enumerate() {
            if i.va as usize % SLOT == 0 {
                by_slot.insert(i.va as usize / SLOT, (i, run.get(k + 1)));
            }
        }
    }
    let mut bad = Vec::new();
    for (n, &(rva, avail, ours)) in at.iter().enumerate() {
        let Some(&(i, next)) = by_slot.get(&n) else {
            bad.push(format!(
                "rva {rva:#x}: objdump's sweep did not start an instruction there"
            ));
            continue;
        };
        // Near a section's end the window is padded with `nop`s: what
        // objdump decodes from the padding is not in the image.
        let next = next.filter(|x| i.bytes.len() + x.bytes.len() <= avail);
        let theirs = objdump::gadget(i, next).filter(|_| i.bytes.len() <= avail);
        match (theirs, ours) {
            (None, None) => {}
            (Some(t), Some(o)) if t == o => shapes.entry(t.as_str()).or_default()[0] += 1,
            _ => {
                if let Some(t) = theirs {
                    shapes.entry(t.as_str()).or_default()[1] += 1;
                }
                if let Some(o) = ours {
                    shapes.entry(o.as_str()).or_default()[2] += 1;
                }
                bad.push(format!(
                    "rva {rva:#x}: ours {ours:?}, objdump `{} {}` ({theirs:?})",
                    i.mnemonic, i.operands
                ));
            }
        }
    }
    Ok((at.len() as u64, shapes, bad))
}

fn check(path: &Path) -> Result<bool, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let base =
        objdump::image_base(&bytes).ok_or_else(|| format!("{}: not a PE image", path.display()))?;
    let img = Image::parse(bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let cmd = objdump_cmd(img.bits);
    let p = path.to_string_lossy().to_string();
    let listing = objdump::parse(&run(&cmd, &["-d", "-w", "-M", "intel", &p])?);
    let f = objdump::compare(&img, base, &listing);
    let (offsets, shapes, gadget_bad) = gadgets_anywhere(&img, &cmd)?;
    let named: u64 = shapes.values().map(|g| g[0]).sum();
    let name = path
        .file_name()
        .map_or(p.clone(), |n| n.to_string_lossy().to_string());
    let parent = path
        .parent()
        .and_then(|d| d.file_name())
        .map_or(String::new(), |d| d.to_string_lossy().to_string());
    println!(
        "| {parent}/{name} | {} | {} | {}/{} ({} same form+length) | {}/{} ({} as such) | {} | {} ({:.3}%: {} call, {} transition) | {} at boundaries, {} mismatched | {named} of {offsets} offsets, {} mismatched | {} |",
        if img.bits == Bits::B64 { "x64" } else { "x86" },
        f.instructions,
        f.calls_preceded,
        f.calls,
        f.calls_same_form,
        f.transitions_preceded,
        f.transitions,
        f.transitions_exact,
        f.not_done,
        f.others,
        100.0 * f.ambiguity(),
        f.others_call,
        f.others_transition,
        f.gadgets.values().map(|g| g[0]).sum::<u64>(),
        f.gadget_mismatches(),
        gadget_bad.len(),
        f.bad,
    );
    if std::env::var_os("RULE9_VERBOSE").is_some() {
        eprintln!("{name}: calls by form {:?}; gadgets at boundaries (both, objdump only, ours only) {:?}; anywhere {shapes:?}", f.calls_by_form, f.gadgets);
    }
    let ok = f.calls_preceded == f.calls
        && f.transitions_preceded == f.transitions
        && f.not_done == 0
        && f.gadget_mismatches() == 0
        && gadget_bad.is_empty()
        && f.mismatches.is_empty();
    for m in f.mismatches.iter().chain(gadget_bad.iter().take(20)) {
        eprintln!("{name}: {m}");
    }
    Ok(ok)
}

fn main() -> ExitCode {
    let files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() {
        eprintln!("usage: rule9_real FILE.dll... (PE files to check against objdump)");
        return ExitCode::from(2);
    }
    println!("| file | bits | instructions | call sites call-preceded | transitions preceded | not done | other boundaries, found preceded (ambiguity) | gadget shapes at instruction starts | gadget shapes at any offset | objdump (bad) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut failed = false;
    for f in &files {
        match check(Path::new(f)) {
            Ok(true) => {}
            Ok(false) => failed = true,
            Err(e) => {
                eprintln!("rule9_real: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if failed {
        eprintln!("rule9_real: rule 9's checks disagree with objdump (above)");
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
