//! Reader throughput on the corpus: file-order iteration (the raw speed) and
//! the time-ordered k-way merge, over the 26 MB uncompressed Win7 trace and
//! the XPRESS-compressed Win8 trace. Divan prints MB/s (bytes of the file)
//! and events/s for each.
//!
//! `cargo bench -p sentry-etl --bench read`

use std::ops::ControlFlow;
use std::path::PathBuf;

use divan::counter::{BytesCount, ItemsCount};
use divan::Bencher;
use sentry_etl::{EtlFile, Order};

fn main() {
    divan::main();
}

const FILES: &[&str] = &[
    "win7-x64-kernel-stacks.etl",
    "win8-x64-compressed-stackcache.etl",
];

fn open(name: &str) -> EtlFile {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/corpus")
        .join(name);
    EtlFile::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn count(file: &EtlFile, order: Order) -> u64 {
    let mut n = 0u64;
    let mut bytes = 0usize;
    file.for_each_event(order, |ev| {
        n += 1;
        bytes += ev.payload.len();
        ControlFlow::Continue(())
    });
    divan::black_box(bytes);
    n
}

fn bench(b: Bencher, name: &str, order: Order) {
    let file = open(name);
    let events = count(&file, order);
    b.counter(BytesCount::new(file.len()))
        .counter(ItemsCount::new(events))
        .bench(|| count(&file, order));
}

#[divan::bench(args = FILES, sample_count = 20)]
fn file_order(b: Bencher, name: &str) {
    bench(b, name, Order::File);
}

#[divan::bench(args = FILES, sample_count = 20)]
fn time_order(b: Bencher, name: &str) {
    bench(b, name, Order::Time);
}

/// Opening: the index pass over buffer headers and the logfile header.
#[divan::bench(args = FILES, sample_count = 20)]
fn open_index(b: Bencher, name: &str) {
    let len = open(name).len();
    b.counter(BytesCount::new(len)).bench(|| open(name));
}
