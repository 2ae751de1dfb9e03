//! Counts the events of an .etl file in one order and prints throughput.
//! Used by `benches/peers.sh` to time this reader next to the Python ones.
//!
//! `cargo run --release -p sentry-etl --example count -- FILE [file|time]`

use std::ops::ControlFlow;
use std::time::Instant;

use sentry_etl::{EtlFile, Order};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: count FILE [file|time]");
    let order = match args.next().as_deref() {
        Some("time") => Order::Time,
        _ => Order::File,
    };
    let start = Instant::now();
    let file = EtlFile::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut events = 0u64;
    let mut payload = 0u64;
    let diag = file.for_each_event(order, |ev| {
        events += 1;
        payload += ev.payload.len() as u64;
        ControlFlow::Continue(())
    });
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"events\":{events},\"records\":{},\"errors\":{},\"seconds\":{secs:.6},\"mb_per_s\":{:.1},\"events_per_s\":{:.0},\"payload_bytes\":{payload}}}",
        diag.records,
        diag.error_count,
        file.len() as f64 / 1e6 / secs,
        events as f64 / secs
    );
}
