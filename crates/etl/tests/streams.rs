//! Time order keeps no per-buffer state: one cursor per processor walks the
//! buffer headers itself, so what a reader holds depends on the processors,
//! not on how many buffers the file has.

mod common;

use common::corpus_dir;
use sentry_etl::{EtlFile, EventReader, Order, MAX_PROCESSORS};

/// The Win8 corpus file's header buffer, then `n` uncompressed 88-byte
/// buffers, buffer `k` on processor `proc_of(k)`, each holding one
/// PERFINFO64 SampledProfile record (16 bytes) with timestamp `ts_of(k)`.
fn tiny_buffers(n: usize, proc_of: impl Fn(usize) -> u16, ts_of: impl Fn(usize) -> u64) -> Vec<u8> {
    let win8 = std::fs::read(corpus_dir().join("win8-x64-compressed-stackcache.etl")).unwrap();
    let template: [u8; 72] = win8[512..584].try_into().unwrap();
    let mut bytes = win8[..512].to_vec();
    for k in 0..n {
        let mut h = template;
        h[0..4].copy_from_slice(&88u32.to_le_bytes());
        h[0x28..0x2a].copy_from_slice(&proc_of(k).to_le_bytes());
        h[0x30..0x34].copy_from_slice(&88u32.to_le_bytes());
        // PROC_INDEX, not compressed.
        h[0x34..0x36].copy_from_slice(&0x20u16.to_le_bytes());
        bytes.extend_from_slice(&h);
        bytes.extend_from_slice(&[0x02, 0x00, 0x11, 0xC0, 16, 0, 0x2e, 0x0f]);
        bytes.extend_from_slice(&ts_of(k).to_le_bytes());
    }
    bytes
}

/// Drains a reader; returns (timestamp, offset) of each event and the most
/// buffer bytes it held at once.
fn drain(mut r: EventReader<'_>) -> (Vec<(u64, u64)>, usize) {
    let mut seen = Vec::new();
    let mut most = r.held_bytes();
    while let Some(ev) = r.next_event() {
        seen.push((ev.timestamp, ev.offset));
        most = most.max(r.held_bytes());
    }
    assert!(r.diagnostics().is_clean(), "{:?}", r.diagnostics().errors);
    (seen, most)
}

#[test]
fn time_order_memory_does_not_grow_with_buffers() {
    // Four processors, each with increasing timestamps, interleaved so the
    // merge must reorder across processors.
    let ts = |k: usize| 2_000_000_000 + (k / 4) as u64 * 10 + (3 - k % 4) as u64 * 7;
    let mut held = Vec::new();
    for n in [40usize, 40_000] {
        let file = EtlFile::from_bytes(tiny_buffers(n, |k| (k % 4) as u16, ts)).unwrap();
        assert_eq!(file.diagnostics().buffers, n as u64 + 1);
        assert_eq!(file.processors(), 4);
        let r = file.events(Order::Time);
        assert_eq!(r.streams(), 4);
        let (time, most) = drain(r);
        // Same events as file order, sorted by timestamp, ties in file order.
        let (mut file_order, _) = drain(file.events(Order::File));
        assert_eq!(file_order.len(), n + 1);
        file_order.sort();
        assert_eq!(time, file_order);
        assert!(time.windows(2).all(|w| w[0].0 <= w[1].0));
        held.push(most);
    }
    // One small buffer per processor at most, whatever the file's length.
    assert_eq!(held[0], held[1]);
    assert!(held[1] <= 4 * 512, "{held:?}");
}

#[test]
fn processors_past_the_cap_are_skipped_in_time_order_with_errors() {
    let extra = 3;
    let n = MAX_PROCESSORS + extra;
    let bytes = tiny_buffers(n, |k| k as u16, |k| 2_000_000_000 + k as u64);
    let file = EtlFile::from_bytes(bytes).unwrap();
    assert_eq!(file.processors(), MAX_PROCESSORS);
    assert!(file.diagnostics().is_clean());
    // File order reads everything.
    let (all, _) = drain(file.events(Order::File));
    assert_eq!(all.len(), n + 1);
    // Time order skips the buffers of processors past the cap, each an error
    // at its buffer's offset.
    let mut r = file.events(Order::Time);
    let mut events = 0;
    while r.next_event().is_some() {
        events += 1;
    }
    let d = r.into_diagnostics();
    assert_eq!(events, n + 1 - extra);
    assert_eq!(d.error_count, extra as u64);
    assert_eq!(d.skipped_buffers, extra as u64);
    let first_skipped = 512 + 88 * MAX_PROCESSORS as u64;
    let offsets: Vec<u64> = d.errors.iter().map(|e| e.offset).collect();
    assert_eq!(offsets, [0, 1, 2].map(|i| first_skipped + 88 * i));
    assert!(d.errors.iter().all(|e| matches!(
        e.kind,
        sentry_etl::ErrorKind::TooManyProcessors { processor } if usize::from(processor) >= MAX_PROCESSORS
    )));
}

/// `events_skipping` delivers exactly the other events, in the same order,
/// and counts the skipped ones: on every corpus file, in both orders, for
/// the commonest kernel hook of the file (plain and general records alike).
#[test]
fn skipping_hooks_removes_exactly_those_events() {
    use sentry_raw::EventId;
    let mut checked = 0;
    for entry in std::fs::read_dir(corpus_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("etl") {
            continue;
        }
        let Ok(file) = EtlFile::open(&path) else {
            continue;
        };
        // The commonest kernel hook, and a second one.
        let mut counts = std::collections::BTreeMap::<(u8, u8), u64>::new();
        file.for_each_event(Order::File, |ev| {
            if let EventId::Kernel { group, opcode } = ev.id {
                *counts.entry((group, opcode)).or_insert(0) += 1;
            }
            std::ops::ControlFlow::Continue(())
        });
        let mut by_count: Vec<_> = counts.into_iter().collect();
        by_count.sort_by_key(|&(h, n)| (std::cmp::Reverse(n), h));
        let hooks: Vec<(u8, u8)> = by_count.iter().take(2).map(|&(h, _)| h).collect();
        if hooks.is_empty() {
            continue;
        }
        for order in [Order::File, Order::Time] {
            let key = |ev: &sentry_raw::RawEvent<'_>| (ev.offset, ev.timestamp, ev.id);
            let mut want = Vec::new();
            let mut skipped = 0u64;
            let mut r = file.events(order);
            while let Some(ev) = r.next_event() {
                match ev.id {
                    EventId::Kernel { group, opcode } if hooks.contains(&(group, opcode)) => {
                        skipped += 1
                    }
                    _ => want.push(key(&ev)),
                }
            }
            let all = r.into_diagnostics();
            let mut got = Vec::new();
            let mut r = file.events_skipping(order, &hooks);
            while let Some(ev) = r.next_event() {
                got.push(key(&ev));
            }
            let d = r.into_diagnostics();
            assert!(skipped > 0);
            assert_eq!(got, want, "{} {order:?}", path.display());
            assert_eq!(d.skipped_events, skipped, "{}", path.display());
            assert_eq!(d.events + d.skipped_events, all.events);
            assert_eq!(d.records, all.records);
            assert_eq!(d.error_count, all.error_count);
            checked += 1;
        }
    }
    assert!(checked >= 8, "corpus files checked: {checked}");
}
