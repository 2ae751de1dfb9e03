//! Throughput of `live`'s engine thread: records popped from the ring, put
//! back into time order by the reordering stage, and processed by the
//! engine (live's settings: online learning, the synth trace's system
//! DLLs), on one core. The events come from a generated `mixed` trace
//! (8 processors) delivered in per-processor flush order (64 KB buffers,
//! 250 ms flush timer: `etw_replay::flush`).
//!
//! Prints events/s, best and median of five passes, for: ring alone; ring
//! and reordering stage; ring, stage and engine (the figure the issue asks
//! for, target at least 2 M events/s); and ring and engine in time order
//! without the stage (what the stage costs).
//!
//! `cargo bench -p sentry-live --bench reorder` (syscalls from
//! `SENTRY_BENCH_SYSCALLS`, default 200,000).

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Instant;

use sechost::event::Trace;
use sentry_engine::{Engine, EngineConfig, Learning, NullSink};
use sentry_live::reorder::{live_window_ms, Reorder, ReorderConfig, DEFAULT_LAG_MS};
use sentry_live::ring::{decode_record, ring};
use sentry_live::view::RecordView;
use sentry_synth::{Options, Scenario};

const REPEATS: usize = 5;

fn report(name: &str, n: usize, mut pass: impl FnMut()) {
    let mut rates: Vec<f64> = (0..REPEATS)
        .map(|_| {
            let t = Instant::now();
            pass();
            n as f64 / t.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(|a, b| b.total_cmp(a));
    println!(
        "{name:<44} best {:>6.2} M events/s, median {:>6.2} M events/s",
        rates[0] / 1e6,
        rates[REPEATS / 2] / 1e6
    );
}

fn main() {
    let syscalls: u64 = std::env::var("SENTRY_BENCH_SYSCALLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let mut o = Options::new(Scenario::Mixed);
    o.syscalls = syscalls;
    o.seed = 5;
    o.processors = 8;
    let (file, dlls) = support::generated(&o, None);
    let trace = Trace::from_file(&file);
    let tps = trace.ticks_per_second;
    let order = support::flush_order(&trace);
    let flush_views: Vec<RecordView<'_>> = order
        .iter()
        .map(|&i| support::view(&trace.events[i as usize]))
        .collect();
    let time_views: Vec<RecordView<'_>> = trace.events.iter().map(support::view).collect();
    let n = flush_views.len();
    println!("mixed trace, {syscalls} syscalls, 8 processors: {n} events delivered in flush order");
    let engine = || {
        let mut e = Engine::new(EngineConfig {
            learning: Learning::Online,
            window_ms: live_window_ms(500, DEFAULT_LAG_MS),
            system_dlls: Some(Arc::clone(&dlls)),
            ..EngineConfig::default()
        });
        e.set_clock(file.clock());
        e
    };
    let stage = || Reorder::new(ReorderConfig::new(DEFAULT_LAG_MS, tps, 128 << 20, 8));
    let (mut p, mut c) = ring(32 << 20);

    report("ring", n, || {
        let mut sum = 0u64;
        for v in &flush_views {
            p.push(v);
            sum = sum.wrapping_add(c.pop_record().map_or(0, |r| r.len() as u64));
        }
        std::hint::black_box(sum);
    });
    report("ring -> reorder", n, || {
        let mut r = stage();
        let mut sum = 0u64;
        let mut emit = |ev: &sentry_raw::RawEvent<'_>| sum = sum.wrapping_add(ev.timestamp);
        for (i, v) in flush_views.iter().enumerate() {
            p.push(v);
            r.push(c.pop_record().unwrap(), &mut emit);
            if i % 64 == 63 {
                r.release(&mut emit);
            }
        }
        r.release_all(&mut emit);
        std::hint::black_box(sum);
    });
    report("ring -> reorder -> engine", n, || {
        let mut e = engine();
        let mut r = stage();
        let mut emit = |ev: &sentry_raw::RawEvent<'_>| e.process(ev, &mut NullSink);
        for (i, v) in flush_views.iter().enumerate() {
            p.push(v);
            r.push(c.pop_record().unwrap(), &mut emit);
            if i % 64 == 63 {
                r.release(&mut emit);
            }
        }
        r.release_all(&mut emit);
        e.finish(&mut NullSink);
    });
    report("ring -> engine (time order, no stage)", n, || {
        let mut e = engine();
        for v in &time_views {
            p.push(v);
            e.process(&decode_record(c.pop_record().unwrap()), &mut NullSink);
        }
        e.finish(&mut NullSink);
    });
}
