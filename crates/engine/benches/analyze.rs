//! End-to-end `analyze` throughput and memory on large generated traces.
//!
//! Writes a `mixed` synth trace of N syscalls to a temporary file, then runs
//! what `analyze` runs (open, read in time order, decode, one pass with
//! deferred rule-5 decisions into the alert report, settle and write) and
//! prints syscall+stack pairs/s end to end, next to reading alone and
//! reading plus decoding, and the peak RSS of the analysis, for N and 10 N;
//! then the peak RSS for N and 10 N syscalls of a fixed process population
//! (memory follows the processes, not the trace length).
//!
//! The end-to-end pass runs [`REPEATS`] times per trace; the best and the
//! median are printed (shared hosts are noisy: compare medians, and the
//! best as what the code can do when nothing else runs).
//!
//! `cargo bench -p sentry-engine --bench analyze` (N from
//! `SENTRY_BENCH_SYSCALLS`, default 200,000); with the release build's
//! profiles (`scripts/build-release`), as the README shows.

use std::fs::File;
use std::io::BufWriter;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use sentry_engine::report::{Report, ReportConfig};
use sentry_engine::{Engine, EngineConfig, Learning, NullSink};
use sentry_etl::{EtlFile, Order};
use sentry_synth::{generate, Options, Scenario};

/// End-to-end passes per trace.
const REPEATS: usize = 5;

/// What `analyze` has the reader step over: PerfInfo SysCallExit.
const SKIP: &[(u8, u8)] = &[(0x0F, 52)];

fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let l = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    l.split_whitespace().nth(1)?.parse().ok()
}

fn current_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    l.split_whitespace().nth(1)?.parse().ok()
}

fn reset_peak_rss() {
    // Linux: writing 5 to clear_refs resets VmHWM to the current RSS.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn make(path: &Path, syscalls: u64) {
    make_with(path, syscalls, true);
}

/// `churn`: short-lived processes come and go (see
/// `Options::process_churn`); without, the population is fixed.
fn make_with(path: &Path, syscalls: u64, churn: bool) {
    let mut o = Options::new(Scenario::Mixed);
    o.syscalls = syscalls;
    o.seed = 42;
    o.process_churn = churn;
    let f = BufWriter::with_capacity(1 << 20, File::create(path).unwrap());
    generate(&o, f, None::<std::io::Sink>).unwrap();
}

struct Run {
    pairs: u64,
    read_s: f64,
    decode_s: f64,
    analyze_s: f64,
    peak_kib: Option<u64>,
    /// Peak RSS of the classifying pass above the RSS before it.
    growth_kib: Option<u64>,
    /// The same for a read-only pass (the reader's own share).
    read_growth_kib: Option<u64>,
    alerts: usize,
    stats: sentry_engine::EngineStats,
}

fn run(path: &Path) -> Run {
    let file = EtlFile::open(path).unwrap();
    // Reading alone (the reader's share of the time and memory).
    reset_peak_rss();
    let rss_before = current_rss_kib();
    let t = Instant::now();
    let mut r = file.events(Order::Time);
    let mut n = 0u64;
    while let Some(ev) = r.next_event() {
        n = n.wrapping_add(ev.timestamp & 1);
    }
    std::hint::black_box(n);
    let read_s = t.elapsed().as_secs_f64();
    let read_peak = peak_rss_kib()
        .zip(rss_before)
        .map(|(p, b)| p.saturating_sub(b));
    // Reading and decoding (the decoders' share).
    let t = Instant::now();
    let mut r = file.events(Order::Time);
    let mut n = 0u64;
    while let Some(ev) = r.next_event() {
        if let Ok(Some(_)) = sentry_kernel::decode(&ev) {
            n += 1;
        }
    }
    std::hint::black_box(n);
    let decode_s = t.elapsed().as_secs_f64();

    reset_peak_rss();
    let rss_before = current_rss_kib();
    let t = Instant::now();
    // Everything `analyze` does, from opening the file on.
    let file = EtlFile::open(path).unwrap();
    let mut engine = Engine::new(EngineConfig {
        learning: Learning::Deferred,
        ..EngineConfig::default()
    });
    let mut report = Report::new(ReportConfig::default(), Box::new(std::io::sink()));
    // As `analyze`: SysCallExit stepped over by the reader.
    let mut r = file.events_skipping(Order::Time, SKIP);
    r.for_each(|ev| {
        engine.process(ev, &mut report);
        ControlFlow::Continue(())
    });
    let stats = engine.finish(&mut report);
    report.finish(&engine).unwrap();
    let analyze_s = t.elapsed().as_secs_f64();
    Run {
        pairs: stats.correlator.matched,
        read_s,
        decode_s,
        analyze_s,
        peak_kib: peak_rss_kib(),
        growth_kib: peak_rss_kib()
            .zip(rss_before)
            .map(|(p, b)| p.saturating_sub(b)),
        read_growth_kib: read_peak,
        alerts: report.alert_count(),
        stats,
    }
}

/// One pass of [`run`] alone: `open`, `read`, `decode`, `learn` (a
/// learning-only pass) or `analyze` (the one-pass analysis). Returns the
/// pairs.
fn one_pass(path: &Path, pass: &str) -> u64 {
    let file = EtlFile::open(path).unwrap();
    let mut r = if pass == "analyze" {
        file.events_skipping(Order::Time, SKIP)
    } else {
        file.events(Order::Time)
    };
    let mut n = 0u64;
    match pass {
        // Opening and the first buffers only: subtract from the others.
        "open" => 0,
        "read" => {
            while let Some(ev) = r.next_event() {
                n = n.wrapping_add(ev.timestamp & 1);
            }
            std::hint::black_box(n);
            0
        }
        "decode" => {
            while let Some(ev) = r.next_event() {
                if let Ok(Some(_)) = sentry_kernel::decode(&ev) {
                    n += 1;
                }
            }
            std::hint::black_box(n);
            0
        }
        "learn" => {
            let mut e = Engine::new(EngineConfig {
                learning: Learning::Only,
                ..EngineConfig::default()
            });
            while let Some(ev) = r.next_event() {
                e.process(&ev, &mut NullSink);
            }
            e.finish(&mut NullSink).correlator.matched
        }
        _ => {
            let mut e = Engine::new(EngineConfig {
                learning: Learning::Deferred,
                ..EngineConfig::default()
            });
            let mut report = Report::new(ReportConfig::default(), Box::new(std::io::sink()));
            r.for_each(|ev| {
                e.process(ev, &mut report);
                ControlFlow::Continue(())
            });
            let stats = e.finish(&mut report);
            report.finish(&e).unwrap();
            stats.correlator.matched
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `cargo bench` passes --bench; `cargo test --all-targets` does not:
    // then only a small smoke run.
    let bench = std::env::args().any(|a| a == "--bench");
    let n: u64 = std::env::var("SENTRY_BENCH_SYSCALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { 200_000 } else { 2_000 });
    if let Ok(f) = std::env::var("SENTRY_BENCH_FILE") {
        // Profile a trace (e.g. under perf or callgrind); a missing file is
        // generated first (N syscalls, seed 42).
        if !Path::new(&f).exists() {
            make(Path::new(&f), n);
        }
        if let Ok(pass) = std::env::var("SENTRY_BENCH_PASS") {
            // One pass only, for instruction counts per pass.
            let pairs = one_pass(Path::new(&f), &pass);
            println!("{f}: pass {pass}: pairs {pairs}");
            return;
        }
        let r = run(Path::new(&f));
        println!(
            "{f}: pairs {} read {:.3} s read+decode {:.3} s analyze {:.3} s ({:.2} M pairs/s)",
            r.pairs,
            r.read_s,
            r.decode_s,
            r.analyze_s,
            r.pairs as f64 / r.analyze_s / 1e6
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("sentry-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for size in [n, n * 10] {
        let path = dir.join(format!("mixed-{size}.etl"));
        let t = Instant::now();
        make(&path, size);
        let mb = std::fs::metadata(&path).unwrap().len() as f64 / 1e6;
        eprintln!(
            "generated {size} syscalls ({mb:.0} MB) in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let r = run(&path);
        let p = r.pairs as f64;
        let mut times = vec![r.analyze_s];
        for _ in 1..REPEATS {
            let t = Instant::now();
            assert_eq!(one_pass(&path, "analyze"), r.pairs);
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let (best, median) = (times[0], times[times.len() / 2]);
        println!(
            "syscalls {size}: pairs {} | read only {:.3} s ({:.2} M pairs/s) | read+decode {:.3} s ({:.2} M pairs/s) | analyze end to end, {REPEATS} runs: best {best:.3} s ({:.2} M pairs/s, {:.0} MB/s), median {median:.3} s ({:.2} M pairs/s) | peak RSS {} KiB | alerts {}",
            r.pairs,
            r.read_s,
            p / r.read_s / 1e6,
            r.decode_s,
            p / r.decode_s / 1e6,
            p / best / 1e6,
            mb / best,
            p / median / 1e6,
            r.peak_kib.map_or("?".into(), |k| k.to_string()),
            r.alerts
        );
        let (c, st) = (&r.stats.correlator, &r.stats.state);
        println!(
            "  peak pending {}, live processes {}, processes seen {}, images loaded {}; RSS growth: analyze +{} KiB, read-only pass +{} KiB",
            c.peak_pending,
            st.live_processes,
            st.processes_seen,
            st.images_loaded,
            r.growth_kib.map_or("?".into(), |k| k.to_string()),
            r.read_growth_kib.map_or("?".into(), |k| k.to_string())
        );
        let _ = std::fs::remove_file(&path);
    }
    // Memory against trace length with the population held fixed: the
    // churning traces above see 7x more processes at 10N (the summary keeps
    // a row per process seen), so here the processes stay the same and
    // only the length grows.
    for size in [n, n * 10] {
        let path = dir.join(format!("fixed-{size}.etl"));
        make_with(&path, size, false);
        let r = run(&path);
        println!(
            "fixed population, syscalls {size}: pairs {} | processes seen {}, live {} | analyze peak RSS {} KiB, growth +{} KiB",
            r.pairs,
            r.stats.state.processes_seen,
            r.stats.state.live_processes,
            r.peak_kib.map_or("?".into(), |k| k.to_string()),
            r.growth_kib.map_or("?".into(), |k| k.to_string()),
        );
        let _ = std::fs::remove_file(&path);
    }
    let _ = std::fs::remove_dir(&dir);
}
