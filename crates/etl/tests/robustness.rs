//! Hostile input: truncated and corrupted corpus files, and the inputs kept
//! from fuzzing, must never panic, hang or allocate without bound, and every
//! error must point inside the file.

mod common;

use std::path::PathBuf;

use common::corpus_dir;
use proptest::prelude::*;
use sentry_etl::{Diagnostics, EtlFile, Order};

/// Reads `bytes` in both orders; `None` if it does not open. Checks the
/// invariants every pass must keep.
fn exercise(bytes: &[u8]) -> Option<(u64, u64)> {
    let len = bytes.len() as u64;
    let file = match EtlFile::from_bytes(bytes) {
        Ok(f) => f,
        Err(e) => {
            assert!(e.offset <= len, "open error offset {e} past {len}");
            return None;
        }
    };
    let mut counts = [0u64; 2];
    // Offsets inside compressed buffers are virtual (data start plus the
    // position in the decompressed data).
    let any_compressed = file.buffers().iter().any(|b| b.header.is_compressed());
    for (i, order) in [Order::File, Order::Time].into_iter().enumerate() {
        let mut n = 0u64;
        let mut r = file.events(order);
        while let Some(ev) = r.next_event() {
            n += 1;
            assert!(ev.pointer_size == 4 || ev.pointer_size == 8);
            if !any_compressed {
                assert!(ev.offset < len, "event offset {:#x} past {len}", ev.offset);
            }
        }
        let d = r.into_diagnostics();
        check_diagnostics(&d, len);
        assert_eq!(d.events, n);
        counts[i] = n;
    }
    assert_eq!(counts[0], counts[1], "both orders yield the same events");
    Some((counts[0], counts[1]))
}

fn check_diagnostics(d: &Diagnostics, len: u64) {
    assert!(d.errors.len() as u64 <= d.error_count);
    assert!(d.errors.len() <= sentry_etl::error::MAX_KEPT_ERRORS);
    for e in &d.errors {
        match e.buffer_offset {
            Some(b) => assert!(b < len, "{e}: buffer offset past {len}"),
            None => assert!(e.offset <= len, "{e}: offset past {len}"),
        }
    }
    assert!(d.compressed_buffers <= d.buffers);
}

fn corpus_bytes(name: &str) -> Vec<u8> {
    std::fs::read(corpus_dir().join(name)).unwrap()
}

#[test]
fn truncation_at_every_offset_of_small_files() {
    for name in ["win10-ptr32-small.etl", "truncated-last-buffer.etl"] {
        let full = corpus_bytes(name);
        let (all, _) = exercise(&full).expect("full file opens");
        let mut prev = 0;
        for cut in 0..full.len() {
            let got = exercise(&full[..cut]).map_or(0, |c| c.0);
            assert!(got <= all, "{name} cut at {cut}: {got} > {all}");
            prev = prev.max(got);
        }
        assert!(prev > 0, "{name}: some prefix yields events");
    }
}

#[test]
fn truncation_of_larger_files_keeps_whole_buffers() {
    for name in [
        "win11-user-session.etl",
        "win8-x64-compressed-stackcache.etl",
        "win7-manifest-process.etl",
    ] {
        // The first 24 buffers (a clean cut at a buffer boundary) keep
        // this test quick in debug builds.
        let whole = corpus_bytes(name);
        let first = EtlFile::from_bytes(&whole[..]).unwrap();
        let end = first
            .buffers()
            .get(24)
            .map_or(whole.len(), |b| b.offset as usize);
        let full = whole[..end].to_vec();
        let file = EtlFile::from_bytes(&full[..]).unwrap();
        let offsets: Vec<u64> = file.buffers().iter().map(|b| b.offset).collect();
        let (all, _) = exercise(&full).unwrap();
        let step = (full.len() / 61).max(1);
        let mut last = 0;
        for cut in (0..full.len()).step_by(step) {
            let got = exercise(&full[..cut]).map_or(0, |c| c.0);
            assert!(got <= all);
            // Cutting further in never loses events from earlier buffers.
            if offsets.contains(&(cut as u64)) {
                assert!(got >= last, "{name} cut at buffer {cut}: {got} < {last}");
                last = got;
            }
        }
        // A cut exactly at a buffer boundary is clean and loses only later buffers.
        let mid = offsets[offsets.len() / 2] as usize;
        let f = EtlFile::from_bytes(&full[..mid]).unwrap();
        let d = f.for_each_event(Order::File, |_| std::ops::ControlFlow::Continue(()));
        assert!(d.is_clean(), "{name}: {:?}", d.errors);
        assert_eq!(d.buffers as usize, offsets.len() / 2);
    }
}

#[test]
fn corrupt_sizes_are_errors_with_offsets() {
    let full = corpus_bytes("win11-user-session.etl");
    let file = EtlFile::from_bytes(&full[..]).unwrap();
    let b2 = file.buffers()[2].offset as usize;
    let (all, _) = exercise(&full).unwrap();

    // A huge BufferSize in buffer 2: an error at its offset; the uniform
    // buffer size lets the index step over it.
    let mut m = full.clone();
    m[b2..b2 + 4].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
    let f = EtlFile::from_bytes(&m[..]).unwrap();
    let d = f.for_each_event(Order::File, |_| std::ops::ControlFlow::Continue(()));
    assert_eq!(d.errors[0].offset, b2 as u64);
    assert_eq!(d.skipped_buffers, 1);
    assert!(d.events < all && d.events > 0);

    // A zero-size first record in buffer 2: abandoned with its offset.
    let mut m = full.clone();
    m[b2 + 72..b2 + 74].copy_from_slice(&0u16.to_le_bytes());
    let f = EtlFile::from_bytes(&m[..]).unwrap();
    let d = f.for_each_event(Order::Time, |_| std::ops::ControlFlow::Continue(()));
    assert_eq!(d.error_count, 1, "{:?}", d.errors);
    assert_eq!(d.errors[0].offset, b2 as u64 + 72);
    assert_eq!(d.errors[0].buffer_offset, Some(b2 as u64));
    assert_eq!(d.abandoned_buffer_tails, 1);

    // Corrupt compressed data: a decompression error in that buffer, the
    // other buffers still read.
    let full = corpus_bytes("win8-x64-compressed-stackcache.etl");
    let file = EtlFile::from_bytes(&full[..]).unwrap();
    let b = file.buffers()[5];
    let mut m = full.clone();
    let at = b.offset as usize + 80;
    for x in &mut m[at..at + 64] {
        *x = 0xff;
    }
    let f = EtlFile::from_bytes(&m[..]).unwrap();
    let d = f.for_each_event(Order::Time, |_| std::ops::ControlFlow::Continue(()));
    assert!(d.error_count >= 1);
    assert_eq!(d.errors[0].buffer_offset, Some(b.offset));
    assert!(d.events > 170_000, "{}", d.events);
}

/// The header buffer and first 11 buffers of the Win8 compressed trace.
fn small_compressed() -> Vec<u8> {
    let whole = corpus_bytes("win8-x64-compressed-stackcache.etl");
    let file = EtlFile::from_bytes(&whole[..]).unwrap();
    let end = file.buffers()[12].offset as usize;
    whole[..end].to_vec()
}

fn regression_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions")
}

#[test]
fn fuzz_regressions_do_not_panic() {
    let mut n = 0;
    for entry in std::fs::read_dir(regression_dir()).expect("tests/fuzz-regressions") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        exercise(&bytes);
        n += 1;
    }
    assert!(n > 0, "no regression inputs");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Random byte flips anywhere in small files (header buffer, buffer
    /// headers, compressed streams, records).
    #[test]
    fn byte_flips_never_panic(
        which in 0usize..3,
        flips in proptest::collection::vec((any::<u32>(), any::<u8>()), 1..24),
    ) {
        let name = ["win10-ptr32-small.etl", "truncated-last-buffer.etl", "win11-user-session.etl"][which];
        let mut bytes = corpus_bytes(name);
        let len = bytes.len();
        for (pos, val) in flips {
            bytes[pos as usize % len] ^= val | 1;
        }
        exercise(&bytes);
    }

    /// Flips confined to buffer and record headers of a compressed file,
    /// where they hit sizes, flags and counts rather than payload bytes.
    #[test]
    fn header_flips_never_panic(
        buf in 0usize..12,
        field in 0usize..72,
        val in any::<u8>(),
    ) {
        let mut bytes = small_compressed();
        let file = EtlFile::from_bytes(&bytes[..]).unwrap();
        let b = file.buffers()[buf % file.buffers().len()].offset as usize;
        bytes[b + field] ^= val | 1;
        exercise(&bytes);
    }
}
