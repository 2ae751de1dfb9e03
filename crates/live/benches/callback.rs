//! The real-time callback's hot path: a record view copied into the ring.
//! Target: under 50 ns per event. Run with
//! `cargo bench -p sentry-live --bench callback`.

use divan::counter::ItemsCount;
use std::cell::RefCell;

use divan::Bencher;
use sentry_live::ring::ring;
use sentry_live::view::{RecordView, EVENT_HEADER_FLAG_CLASSIC_HEADER};
use sentry_raw::guids;

const BATCH: usize = 1000;

fn main() {
    divan::main();
}

fn syscall_enter(payload: &[u8]) -> RecordView<'_> {
    RecordView {
        provider: guids::PERF_INFO,
        flags: EVENT_HEADER_FLAG_CLASSIC_HEADER,
        pid: u32::MAX,
        tid: u32::MAX,
        timestamp: 123_456_789,
        opcode: 51,
        version: 2,
        processor: 1,
        payload,
        ..Default::default()
    }
}

fn stack_walk(payload: &[u8]) -> RecordView<'_> {
    RecordView {
        provider: guids::STACK_WALK,
        flags: EVENT_HEADER_FLAG_CLASSIC_HEADER,
        pid: 1234,
        tid: 5678,
        timestamp: 123_456_789,
        opcode: 32,
        version: 2,
        processor: 1,
        payload,
        ..Default::default()
    }
}

/// Pushes batches into one long-lived (warm) ring, drained by the consumer
/// between samples, outside the timed region: the steady state of a live
/// session whose engine keeps up.
fn push_batch(bencher: Bencher, view: RecordView<'_>) {
    let pair = RefCell::new(ring(1 << 20));
    bencher
        .counter(ItemsCount::new(BATCH))
        .with_inputs(|| {
            let (_, c) = &mut *pair.borrow_mut();
            while c.pop().is_some() {}
        })
        .bench_local_values(|()| {
            let (p, _) = &mut *pair.borrow_mut();
            for _ in 0..BATCH {
                assert!(p.push(divan::black_box(&view)));
            }
        });
}

/// SysCallEnter: 8-byte payload (SysCallAddress).
#[divan::bench(sample_size = 1)]
fn push_syscall_enter(bencher: Bencher) {
    let payload = 0xffff_f806_1234_5678_u64.to_le_bytes();
    push_batch(bencher, syscall_enter(&payload));
}

/// StackWalk with 24 frames: 16 + 24 * 8 = 208-byte payload.
#[divan::bench(sample_size = 1)]
fn push_stack_walk_24_frames(bencher: Bencher) {
    let payload = [0x41u8; 16 + 24 * 8];
    push_batch(bencher, stack_walk(&payload));
}

/// Producer and consumer on one thread: push then pop to a RawEvent.
#[divan::bench]
fn push_then_pop_stack_walk(bencher: Bencher) {
    let payload = [0x41u8; 16 + 24 * 8];
    let view = stack_walk(&payload);
    let (mut p, mut c) = ring(1 << 20);
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        p.push(divan::black_box(&view));
        divan::black_box(c.pop().map(|e| e.timestamp))
    });
}
