//! Rule 9's byte checks on real compiled code, against GNU objdump's
//! disassembly of the same file, without external tools at test time:
//! `tests/data/callsites-{x64,x86}.dll` were built by mingw-w64 gcc -O2
//! from `tests/data/callsites.c`, and `*.objdump.txt` are objdump's
//! listings of them (`tests/data/regen.sh` rebuilds both). The same
//! comparison runs over Wine's DLLs and the selftest fixtures in CI
//! (`.ci/rule9-real`, `examples/rule9_real.rs`).

#[path = "support/objdump.rs"]
mod objdump;

use sentry_images::{CallForm, Gadget, Image};

struct Case {
    dll: &'static [u8],
    listing: &'static str,
    forms: &'static [CallForm],
}

const X64: Case = Case {
    dll: include_bytes!("data/callsites-x64.dll"),
    listing: include_str!("data/callsites-x64.objdump.txt"),
    forms: &[
        CallForm::Relative,
        CallForm::Register,
        CallForm::RipRelative,
        CallForm::Memory,
    ],
};

const X86: Case = Case {
    dll: include_bytes!("data/callsites-x86.dll"),
    listing: include_str!("data/callsites-x86.objdump.txt"),
    forms: &[CallForm::Relative, CallForm::Register, CallForm::Memory],
};

fn figures(c: &Case) -> objdump::Figures {
    let img = Image::parse(c.dll.to_vec()).expect("a PE image");
    let base = objdump::image_base(c.dll).expect("ImageBase");
    objdump::compare(&img, base, &objdump::parse(c.listing))
}

#[test]
fn every_real_call_site_is_call_preceded() {
    for (name, c) in [("x64", &X64), ("x86", &X86)] {
        let f = figures(c);
        assert!(f.mismatches.is_empty(), "{name}: {:#?}", f.mismatches);
        // The listing is of this file (every instruction's bytes were
        // compared) and every instruction was checked.
        assert_eq!(f.not_done, 0, "{name}");
        assert!(f.instructions > 200, "{name}: {}", f.instructions);
        // Recall over the real call sites: all 20 of each file, every form
        // the compiler emitted (imports, function pointers, struct members,
        // tables, direct calls).
        assert_eq!(f.calls, 20, "{name}");
        assert_eq!(f.calls_preceded, f.calls, "{name}");
        assert_eq!(f.calls_same_form, f.calls, "{name}");
        for form in c.forms {
            assert!(
                f.calls_by_form.get(form.as_str()).is_some_and(|&n| n > 0),
                "{name}: no {form:?} call in {:?}",
                f.calls_by_form
            );
        }
        // syscall (x64) or sysenter (x86), and int 2Eh.
        assert_eq!(f.transitions, 2, "{name}");
        assert_eq!(f.transitions_preceded, 2, "{name}");
        assert_eq!(f.transitions_exact, 2, "{name}");
        // Looking backwards is ambiguous: the end of an ordinary
        // instruction is sometimes also the end of bytes that decode as a
        // call (1 of 199 x64 boundaries, 2 of 217 x86 ones here). Such an
        // address passes rule 9: a missed gadget, never an accusation.
        assert!(f.ambiguity() < 0.02, "{name}: {}", f.ambiguity());
        // Gadget shapes at instruction starts: named as objdump decodes them.
        assert_eq!(f.gadget_mismatches(), 0, "{name}: {:?}", f.gadgets);
        for g in [
            Gadget::AddSpRet,
            Gadget::PopRet,
            Gadget::CallRegister,
            Gadget::CallMemory,
            Gadget::JmpRegister,
        ] {
            assert!(
                f.gadgets.get(g.as_str()).is_some_and(|n| n[0] > 0),
                "{name}: no {g:?} in {:?}",
                f.gadgets
            );
        }
    }
}

/// The comparison can fail: a listing that claims a call where the bytes
/// hold none, or bytes that are not the file's, is reported.
#[test]
fn the_comparison_reports_disagreements() {
    let text = X64.listing;
    // `lea eax,[rcx+rdx*1]` (8d 04 11) at the start of .text: no call ends
    // after it. objdump calling it a call must be a mismatch.
    let line = text
        .lines()
        .find(|l| l.contains("8d 04 11") && l.contains("lea"))
        .expect("the first instruction");
    let forged = text.replacen(
        line,
        &line.replace("lea    eax,[rcx+rdx*1]", "call   rax"),
        1,
    );
    let img = Image::parse(X64.dll.to_vec()).unwrap();
    let base = objdump::image_base(X64.dll).unwrap();
    let f = objdump::compare(&img, base, &objdump::parse(&forged));
    assert_eq!(f.calls, 21);
    assert_eq!(f.calls_preceded, 20);
    // ... and the gadget shape objdump's `call rax` would be.
    assert_eq!(f.mismatches.len(), 2, "{:?}", f.mismatches);
    assert!(
        f.mismatches[0].contains("after `call rax`"),
        "{:?}",
        f.mismatches
    );
    assert_eq!(f.gadget_mismatches(), 1);
    // Bytes changed in the listing: not this file's.
    let forged = text.replacen("8d 04 11", "8d 04 12", 1);
    let f = objdump::compare(&img, base, &objdump::parse(&forged));
    assert_eq!(f.not_done, 1);
    assert!(
        f.mismatches[0].contains("not the file's"),
        "{:?}",
        f.mismatches
    );
}

/// A REX prefix that objdump prints on a line of its own (the CPU ignores
/// it) belongs to the next instruction: `40 48 83 c4 28 c3` is
/// `add rsp, 0x28; ret` from its first byte (Wine's win32u.dll).
#[test]
fn a_lone_prefix_line_is_merged() {
    let text = "   0:\t40                   \trex\n   1:\t48 83 c4 28          \tadd    rsp,0x28\n   5:\tc3                   \tret\n";
    let l = objdump::parse(text);
    assert_eq!(l.runs.len(), 1);
    assert_eq!(l.runs[0].len(), 2);
    assert_eq!(l.runs[0][0].bytes, [0x40, 0x48, 0x83, 0xC4, 0x28]);
    assert_eq!(
        objdump::gadget(&l.runs[0][0], l.runs[0].get(1)),
        Some(Gadget::AddSpRet)
    );
}
