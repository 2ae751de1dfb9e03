//! Hostile and damaged PE files: parsing and every check answer without a
//! panic, and an address whose bytes are not there is "not done", never
//! "call-preceded" or "not preceded".

use std::path::PathBuf;

use proptest::prelude::*;
use sentry_images::{Image, Images, NotDone, Preceded};
use sentry_synth::evasion::CodeKind;
use sentry_synth::pe;
use sentry_synth::world::Layout;

/// kernel32.dll of the synthetic layout with a call before
/// `BaseThreadInitThunk + 0x14`.
fn kernel32(ps: u8) -> (Layout, Vec<u8>) {
    static FILES: std::sync::OnceLock<[Vec<u8>; 2]> = std::sync::OnceLock::new();
    let files = FILES.get_or_init(|| [make_kernel32(4), make_kernel32(8)]);
    (Layout::new(ps), files[usize::from(ps == 8)].clone())
}

fn make_kernel32(ps: u8) -> Vec<u8> {
    let l = Layout::new(ps);
    let mut code = sentry_synth::evasion::CodeMap::new();
    code.insert(
        l.kernel32.base + Layout::BASE_THREAD_INIT_THUNK,
        CodeKind::Return,
    );
    pe::images(&l, &code)
        .into_iter()
        .find(|(p, _)| p.ends_with("kernel32.dll"))
        .unwrap()
        .1
}

#[test]
fn the_intact_file_answers_and_truncations_say_not_done() {
    for ps in [8, 4] {
        let (_, f) = kernel32(ps);
        let rva = Layout::BASE_THREAD_INIT_THUNK as u32;
        let img = Image::parse(f.clone()).unwrap();
        assert!(matches!(img.check_return(rva).preceded, Preceded::Call(..)));
        // Not code (the export section), outside every section.
        let last = img.check_return(0xFFFF_FFF0);
        assert_eq!(last.preceded, Preceded::NotDone(NotDone::NoBytes));
        // The file cut before the call's bytes: not done, whatever is left.
        let text_end = 0x400 + rva as usize - 0x1000;
        for cut in [text_end - 3, text_end - 100, 0x400] {
            if let Ok(img) = Image::parse(f[..cut].to_vec()) {
                let c = img.check_return(rva);
                assert_eq!(
                    c.preceded,
                    Preceded::NotDone(NotDone::NoBytes),
                    "cut {cut:#x}"
                );
            }
        }
    }
}

#[test]
fn a_directory_is_indexed_by_identity_and_damage_is_reported() {
    let dir = std::env::temp_dir().join(format!("sentry-images-{}", std::process::id()));
    let sub = dir.join("SysWOW64");
    std::fs::create_dir_all(&sub).unwrap();
    let (l, f) = kernel32(8);
    std::fs::write(dir.join("KERNEL32.DLL"), &f).unwrap();
    std::fs::write(dir.join("readme.txt"), b"not a PE").unwrap();
    let mut bad = f.clone();
    bad[0x40..0x44].copy_from_slice(b"XXXX");
    std::fs::write(sub.join("broken.dll"), &bad).unwrap();
    let images = Images::load_dir(&dir).unwrap();
    assert_eq!(images.files.len(), 1);
    assert_eq!(images.skipped.len(), 1, "{:?}", images.skipped);
    let i = images
        .find("kernel32.dll", l.kernel32.size, l.kernel32.time_date_stamp)
        .unwrap();
    assert_eq!(
        images.find(
            "kernel32.dll",
            l.kernel32.size + 0x1000,
            l.kernel32.time_date_stamp
        ),
        None
    );
    assert_eq!(
        images.find_by_pe(l.kernel32.size, l.kernel32.time_date_stamp),
        &[i]
    );
    let img = images.image(i).unwrap();
    // The SHA-256 of the file as written (sha256sum of the same bytes).
    assert_eq!(img.sha256_hex().len(), 64);
    assert_ne!(
        img.sha256_hex(),
        Image::parse(kernel32(4).1).unwrap().sha256_hex()
    );
    // Replaced after indexing by another build: refused, not misread.
    let (_, other) = kernel32(4);
    let images = Images::load_dir(&dir).unwrap();
    std::fs::write(dir.join("KERNEL32.DLL"), &other).unwrap();
    assert!(images.image(0).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(Images::load_dir(&dir).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Random corruption of headers, section table and code never panics.
    #[test]
    fn corrupt_files_never_panic(
        ps in prop::sample::select(vec![4u8, 8]),
        edits in prop::collection::vec((0usize..0x1200, any::<u8>()), 1..24),
        cut in prop::option::of(0usize..0x30000),
        rva in any::<u32>(),
    ) {
        let (_, mut f) = kernel32(ps);
        for (at, b) in edits {
            if at < f.len() {
                f[at] = b;
            }
        }
        if let Some(c) = cut {
            f.truncate(c);
        }
        let images = Images::from_files(vec![(PathBuf::from("kernel32.dll"), f.clone())]);
        if let Ok(img) = Image::parse(f) {
            for r in [rva, Layout::BASE_THREAD_INIT_THUNK as u32, 0, u32::MAX] {
                let c = img.check_return(r);
                prop_assert!(c.leading.len() <= 16 && c.trailing.len() <= 16);
                let _ = img.export_near(r);
            }
        }
        for i in 0..images.files.len() {
            let _ = images.image(i);
        }
    }
}
