//! The `--images` files `pe::images` writes, read back by `sentry-images`
//! (the reader `analyze --images` uses): every return address the trace
//! used has the bytes its kind says, in both pointer sizes.

use std::io::Cursor;
use std::path::PathBuf;

use sentry_images::{Gadget, Images, Preceded, Transition};
use sentry_synth::evasion::{CodeKind, GadgetKind};
use sentry_synth::{generate, pe, Options, Scenario};

fn check(s: Scenario, ps: u8) -> (usize, usize) {
    let mut o = Options::new(s);
    o.pointer_size = ps;
    o.syscalls = 3000;
    let (_, summary) = generate(&o, Cursor::new(Vec::new()), None::<Vec<u8>>).unwrap();
    let files = pe::images(&summary.layout, &summary.code);
    let images = Images::from_files(
        files
            .into_iter()
            .map(|(p, b)| (PathBuf::from(p), b))
            .collect(),
    );
    assert!(images.skipped.is_empty(), "{:?}", images.skipped);
    let l = &summary.layout;
    let mut mods = vec![
        &l.ntdll,
        &l.kernel32,
        &l.kernelbase,
        &l.win32u,
        &l.user32,
        &l.gdi32,
    ];
    mods.extend(l.others.iter());
    if let Some(w) = &l.wow64 {
        mods.extend(w.iter());
    }
    let (mut checked, mut special) = (0, 0);
    for (&addr, &kind) in &summary.code {
        let Some(m) = mods
            .iter()
            .find(|m| addr >= m.base && addr - m.base < m.size)
        else {
            continue;
        };
        let i = images
            .find(m.file_name(), m.size, m.time_date_stamp)
            .unwrap_or_else(|| panic!("{} not matched by identity", m.path));
        let img = images.image(i).unwrap();
        let c = img.check_return((addr - m.base) as u32);
        let ctx = format!("{} +{:#x} {kind:?}: {c:?}", m.path, addr - m.base);
        let wow64cpu = m.file_name() == "wow64cpu.dll";
        match kind {
            CodeKind::Return if wow64cpu => assert_eq!(c.preceded, Preceded::Nothing, "{ctx}"),
            CodeKind::Return => assert!(matches!(c.preceded, Preceded::Call(..)), "{ctx}"),
            CodeKind::Gadget(g) => {
                special += 1;
                assert_eq!(c.preceded, Preceded::Nothing, "{ctx}");
                let want = match g {
                    GadgetKind::JmpRbx => Gadget::JmpMemory,
                    GadgetKind::PushRet => Gadget::PushRet,
                };
                assert_eq!(c.gadget, Some(want), "{ctx}");
            }
            CodeKind::Fault => {
                special += 1;
                assert_eq!(c.preceded, Preceded::Nothing, "{ctx}");
            }
            CodeKind::Keep => {
                special += 1;
                assert_eq!(
                    c.preceded,
                    Preceded::Transition(Transition::Syscall),
                    "{ctx}"
                );
            }
        }
        assert_eq!(c.leading.len(), 16, "{ctx}");
        checked += 1;
    }
    (checked, special)
}

#[test]
fn every_return_address_has_its_bytes() {
    for ps in [8, 4] {
        for s in [
            Scenario::RopFrames,
            Scenario::Lookalikes,
            Scenario::Mixed,
            Scenario::ProxyCall,
            Scenario::ProxyLookalikes,
        ] {
            let (checked, special) = check(s, ps);
            assert!(checked > 500, "{s:?} {ps}: {checked}");
            if s != Scenario::Mixed {
                assert!(special > 0, "{s:?} {ps}");
            }
        }
    }
}

#[test]
fn dispatcher_exports_are_named() {
    let l = sentry_synth::world::Layout::new(8);
    let files = pe::images(&l, &Default::default());
    let images = Images::from_files(
        files
            .into_iter()
            .map(|(p, b)| (PathBuf::from(p), b))
            .collect(),
    );
    let i = images
        .find("ntdll.dll", l.ntdll.size, l.ntdll.time_date_stamp)
        .unwrap();
    let img = images.image(i).unwrap();
    let (n, off) = img
        .export_near((sentry_synth::evasion::KI_USER_EXCEPTION_DISPATCHER + 0x2e) as u32)
        .unwrap();
    assert_eq!((&**n, off), ("KiUserExceptionDispatcher", 0x2e));
    // The 32-bit ntdll of WoW64 is a different identity with the same name.
    let w = &l.wow64.as_ref().unwrap()[3];
    let j = images.find("ntdll.dll", w.size, w.time_date_stamp).unwrap();
    assert_ne!(i, j);
    assert_eq!(images.image(j).unwrap().bits, sentry_images::Bits::B32);
}
