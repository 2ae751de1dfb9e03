//! `live`'s module files on disk ([`sentry_images::disk`]): a module is
//! read from the file its NT path names only when the file's headers carry
//! the loaded module's `SizeOfImage` and `TimeDateStamp`; the hash is the
//! file's (checked against `sha256sum`); the cache stays within its bound
//! and a file replaced while evicted is refused on the next read; a
//! signature is only ever the one of the file whose bytes were read.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use sentry_images::disk::{DeviceMap, DiskFiles, Signature, SignatureCheck, MAX_SLOTS};
use sentry_images::{Images, Preceded};
use sentry_synth::evasion::{CodeKind, CodeMap};
use sentry_synth::pe;
use sentry_synth::world::Layout;

const VOL: &str = "\\Device\\HarddiskVolume3";

/// A directory standing for volume 3, with the synthetic layout's
/// System32 (64-bit) written under `Windows\System32`.
fn volume(tag: &str) -> (PathBuf, Layout) {
    let dir = std::env::temp_dir().join(format!("sentry-disk-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let l = Layout::new(8);
    let mut code = CodeMap::new();
    code.insert(
        l.kernel32.base + Layout::BASE_THREAD_INIT_THUNK,
        CodeKind::Return,
    );
    for (rel, bytes) in pe::images(&l, &code) {
        let p = dir.join("Windows").join(&rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    (dir, l)
}

fn files(dir: &Path, max_bytes: usize, signer: Option<Arc<dyn SignatureCheck>>) -> DiskFiles {
    let map = DeviceMap::new(
        [(dir.to_string_lossy().into_owned(), VOL.to_string())],
        None,
    );
    DiskFiles::new(map, max_bytes, signer)
}

/// The file's SHA-256 as `sha256sum` gives it (under Wine, where no Linux
/// tool runs, of the file's bytes as read here).
fn sha256sum(p: &Path) -> String {
    #[cfg(not(windows))]
    {
        let out = std::process::Command::new("sha256sum")
            .arg(p)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()[..64].to_string()
    }
    #[cfg(windows)]
    {
        use sha2::Digest;
        sha2::Sha256::digest(std::fs::read(p).unwrap())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

fn nt(name: &str) -> String {
    format!("{VOL}\\Windows\\System32\\{name}")
}

#[test]
fn the_loaded_module_is_read_from_its_file_and_a_different_build_is_refused() {
    let (dir, l) = volume("identity");
    let images = Images::from_disk(files(&dir, 64 << 20, None));
    let k32 = nt("kernel32.dll");
    let i = images
        .find_module(
            &k32,
            "kernel32.dll",
            l.kernel32.size,
            l.kernel32.time_date_stamp,
        )
        .unwrap();
    // Registering again is the same slot; no file was read yet.
    assert_eq!(
        images.find_module(
            &k32.to_uppercase(),
            "KERNEL32.DLL",
            l.kernel32.size,
            l.kernel32.time_date_stamp
        ),
        Some(i)
    );
    let d = images.disk().unwrap();
    assert_eq!(d.stats.reads.load(Ordering::Relaxed), 0);
    // Rule 9's bytes: the call before BaseThreadInitThunk+0x14.
    let f = images
        .frame(i, Layout::BASE_THREAD_INIT_THUNK as u32)
        .unwrap();
    assert!(matches!(f.preceded, Preceded::Call(..)), "{f:?}");
    let file = dir.join("Windows/System32/kernel32.dll");
    assert_eq!(images.sha256_hex(i), Some(sha256sum(&file).as_str()));
    assert_eq!(d.stats.reads.load(Ordering::Relaxed), 1);

    // The event says another build (timestamp or size): not that file.
    for (size, tds) in [
        (l.kernel32.size, l.kernel32.time_date_stamp + 1),
        (l.kernel32.size + 0x1000, l.kernel32.time_date_stamp),
    ] {
        let j = images.find_module(&k32, "kernel32.dll", size, tds).unwrap();
        assert_ne!(i, j);
        let e = images.image(j).unwrap_err();
        assert!(e.contains("not the loaded module"), "{e}");
        assert_eq!(images.frame(j, Layout::BASE_THREAD_INIT_THUNK as u32), None);
        assert_eq!(images.sha256_hex(j), None);
    }
    assert_eq!(d.stats.mismatched.load(Ordering::Relaxed), 2);
    // A device with no drive, a file that is not there, a file that is not PE.
    // (no drive: not a module with a file at all)
    assert_eq!(
        images.find_module("\\Device\\HarddiskVolume9\\a.dll", "a.dll", 0x1000, 1),
        None
    );
    let m = images
        .find_module(&nt("missing.dll"), "missing.dll", 0x1000, 1)
        .unwrap();
    assert!(images.image(m).is_err());
    std::fs::write(dir.join("Windows/System32/notes.dll"), b"plain text").unwrap();
    let t = images
        .find_module(&nt("notes.dll"), "notes.dll", 0x1000, 1)
        .unwrap();
    assert!(images.image(t).unwrap_err().contains("not a PE file"));
    assert_eq!(d.stats.unmapped.load(Ordering::Relaxed), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_cache_keeps_its_bound_and_rereads_are_checked_again() {
    let (dir, l) = volume("cache");
    let sys = dir.join("Windows/System32");
    let len = |n: &str| std::fs::metadata(sys.join(n)).unwrap().len() as usize;
    let (k32, nt_len) = (len("kernel32.dll"), len("ntdll.dll"));
    // Room for the larger of the two only.
    let bound = k32.max(nt_len) + 16;
    let images = Images::from_disk(files(&dir, bound, None));
    let d = images.disk().unwrap();
    let a = images
        .find_module(
            &nt("kernel32.dll"),
            "kernel32.dll",
            l.kernel32.size,
            l.kernel32.time_date_stamp,
        )
        .unwrap();
    let b = images
        .find_module(
            &nt("ntdll.dll"),
            "ntdll.dll",
            l.ntdll.size,
            l.ntdll.time_date_stamp,
        )
        .unwrap();
    let ha = images.sha256_hex(a).unwrap().to_string();
    assert!(d.cached_bytes() <= bound);
    images.image(b).unwrap();
    assert!(d.cached_bytes() <= bound, "{} > {bound}", d.cached_bytes());
    assert_eq!(d.stats.evictions.load(Ordering::Relaxed), 1);
    // kernel32 replaced by another build while out of the cache: the next
    // read refuses it; the hash taken before stays that of the file read.
    let (_, other) = {
        let l4 = Layout::new(4);
        let mut code = CodeMap::new();
        code.insert(
            l4.kernel32.base + Layout::BASE_THREAD_INIT_THUNK,
            CodeKind::Return,
        );
        let f = pe::images(&l4, &code)
            .into_iter()
            .find(|(p, _)| p.ends_with("kernel32.dll"))
            .unwrap();
        (l4, f.1)
    };
    std::fs::write(sys.join("kernel32.dll"), &other).unwrap();
    assert!(images
        .image(a)
        .unwrap_err()
        .contains("not the loaded module"));
    assert_eq!(images.sha256_hex(a), Some(ha.as_str()));
    // A file larger than the whole cache is used but not kept.
    let small = Images::from_disk(files(&dir, 16, None));
    let n = small
        .find_module(
            &nt("ntdll.dll"),
            "ntdll.dll",
            l.ntdll.size,
            l.ntdll.time_date_stamp,
        )
        .unwrap();
    small.image(n).unwrap();
    assert_eq!(small.disk().unwrap().cached_bytes(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn modules_past_the_slot_bound_are_counted_not_tracked() {
    let d = files(Path::new("/nonexistent"), 1 << 20, None);
    for k in 0..MAX_SLOTS {
        assert!(d.register(&nt("a.dll"), 0x1000, k as u32).is_some());
    }
    assert_eq!(d.register(&nt("a.dll"), 0x1000, u32::MAX), None);
    // Known modules still answer.
    assert_eq!(d.register(&nt("a.dll"), 0x1000, 7), Some(7));
    assert_eq!(d.stats.untracked.load(Ordering::Relaxed), 1);
}

/// Answers what the platform would for a file with these first bytes,
/// and records that it was handed the file whose bytes were read.
struct Recorder(std::sync::Mutex<Vec<PathBuf>>);

impl SignatureCheck for Recorder {
    fn check(&self, file: &std::fs::File, path: &Path) -> Signature {
        use std::io::{Read, Seek};
        let mut f = file;
        let mut head = [0u8; 2];
        f.rewind().unwrap();
        f.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"MZ");
        self.0.lock().unwrap().push(path.to_path_buf());
        let trusted = path.ends_with("ntdll.dll");
        Signature {
            subject: Some("Microsoft Corporation".into()),
            trusted,
            status: if trusted {
                "trusted"
            } else {
                "untrusted root 0x800b0109"
            }
            .into(),
        }
    }
}

#[test]
fn a_signer_is_only_the_trusted_signer_of_the_file_read() {
    let (dir, l) = volume("signer");
    let rec = Arc::new(Recorder(Default::default()));
    let images = Images::from_disk(files(&dir, 64 << 20, Some(rec.clone())));
    let n = images
        .find_module(
            &nt("ntdll.dll"),
            "ntdll.dll",
            l.ntdll.size,
            l.ntdll.time_date_stamp,
        )
        .unwrap();
    let k = images
        .find_module(
            &nt("kernel32.dll"),
            "kernel32.dll",
            l.kernel32.size,
            l.kernel32.time_date_stamp,
        )
        .unwrap();
    assert_eq!(images.trusted_signer(n), Some("Microsoft Corporation"));
    // Checked once per module.
    assert_eq!(images.trusted_signer(n), Some("Microsoft Corporation"));
    assert_eq!(rec.0.lock().unwrap().len(), 1);
    // The subject is read but the chain is not trusted: no signer.
    assert_eq!(images.trusted_signer(k), None);
    let d = images.disk().unwrap();
    assert_eq!(d.signatures().len(), 2);
    // The built-in allowlist's lookup by path: a trusted subject, or a text
    // that matches no signer; nothing for a path never loaded.
    assert_eq!(
        d.signer_of_path(&nt("NTDLL.DLL")).as_deref(),
        Some("Microsoft Corporation")
    );
    let k32 = d.signer_of_path(&nt("kernel32.dll")).unwrap();
    assert!(
        k32.starts_with("(not a trusted signature: Microsoft Corporation"),
        "{k32}"
    );
    assert_eq!(d.signer_of_path(&nt("user32.dll")), None);
    // A module whose file is another build is never checked.
    let x = images
        .find_module(&nt("kernel32.dll"), "kernel32.dll", l.kernel32.size, 1)
        .unwrap();
    assert_eq!(images.trusted_signer(x), None);
    assert_eq!(rec.0.lock().unwrap().len(), 2);
    // Hashed first, then changed on disk (same identity, other bytes):
    // the signature is not taken from the changed file.
    let w = images
        .find_module(
            &nt("win32u.dll"),
            "win32u.dll",
            l.win32u.size,
            l.win32u.time_date_stamp,
        )
        .unwrap();
    images.sha256_hex(w).unwrap();
    let p = dir.join("Windows/System32/win32u.dll");
    let mut b = std::fs::read(&p).unwrap();
    let last = b.len() - 1;
    b[last] ^= 0xFF;
    std::fs::write(&p, b).unwrap();
    assert_eq!(images.trusted_signer(w), None);
    assert!(d
        .failure(w)
        .unwrap()
        .contains("changed since it was first read"));
    // Offline (`--images DIR`) there is never a signer.
    let offline = Images::load_dir(&dir.join("Windows/System32")).unwrap();
    let o = offline
        .find("ntdll.dll", l.ntdll.size, l.ntdll.time_date_stamp)
        .unwrap();
    assert_eq!(offline.trusted_signer(o), None);
    let _ = std::fs::remove_dir_all(&dir);
}
