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

/// Many tiny compressed buffers, each on its own processor and each
/// expanding to a full 64 KB buffer with one pending event: time order
/// must hold one buffer per processor, so the memory budget decides.
#[test]
fn memory_budget_bounds_time_order() {
    let win8 = corpus_bytes("win8-x64-compressed-stackcache.etl");
    let header_buffer = &win8[..512];
    let template: [u8; 72] = win8[512..584].try_into().unwrap();
    // One PERFINFO64 SampledProfile record, a 0xFF, then a match repeating
    // it to 65464 bytes (65536 filled minus the header).
    let mut stream = 0x0000_7FFFu32.to_le_bytes().to_vec();
    stream.extend_from_slice(&[0x02, 0x00, 0x11, 0xC0, 16, 0, 0x2e, 0x0f]);
    stream.extend_from_slice(&2_000_000_000u64.to_le_bytes());
    stream.push(0xFF);
    stream.extend_from_slice(&7u16.to_le_bytes());
    stream.extend_from_slice(&[0x0f, 255]);
    stream.extend_from_slice(&65_444u16.to_le_bytes());
    let n = 300usize;
    let mut bytes = header_buffer.to_vec();
    for i in 0..n {
        let mut h = template;
        h[0..4].copy_from_slice(&(72 + stream.len() as u32).to_le_bytes());
        h[0x28..0x2a].copy_from_slice(&(i as u16).to_le_bytes());
        h[0x30..0x34].copy_from_slice(&65_536u32.to_le_bytes());
        h[0x34..0x36].copy_from_slice(&0x60u16.to_le_bytes());
        bytes.extend_from_slice(&h);
        bytes.extend_from_slice(&stream);
    }
    let file = EtlFile::from_bytes(bytes).unwrap();
    assert_eq!(file.buffers().len(), n + 1);
    // Unbounded, every buffer yields its event in both orders.
    assert_eq!(
        exercise_budget(&file, Order::File, usize::MAX).events,
        n as u64 + 1
    );
    assert_eq!(
        exercise_budget(&file, Order::Time, usize::MAX).events,
        n as u64 + 1
    );
    // With room for 100 buffers, time order reads 100 and skips the rest
    // with errors; file order (one buffer at a time) reads them all.
    let budget = 100 * 65_464;
    let d = exercise_budget(&file, Order::Time, budget);
    assert_eq!(d.events, 100 + 1, "{:?}", d.errors.first());
    assert_eq!(d.error_count, n as u64 - 100);
    assert!(matches!(
        d.errors[0].kind,
        sentry_etl::ErrorKind::MemoryBudget { need: 65_464 }
    ));
    assert_eq!(
        exercise_budget(&file, Order::File, budget).events,
        n as u64 + 1
    );
}

fn exercise_budget(file: &EtlFile, order: Order, budget: usize) -> Diagnostics {
    let mut r = file.events_with_budget(order, budget);
    while r.next_event().is_some() {}
    r.into_diagnostics()
}
