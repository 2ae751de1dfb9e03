//! Times the reader alone: opens FILE and iterates `next_event` in the given
//! order, reading every field of every event (sums, no decoding), REPEAT
//! times. Prints one JSON line per run (open and read timed separately) and
//! the best and median read times. `mem`: the file is read into memory
//! first and opened from there (no file reads while timing).
//!
//! `cargo run --release -p sentry-etl --example readspeed -- FILE [time|file] [REPEAT] [mem]`

use std::time::Instant;

use sentry_etl::{EtlFile, Order};
use sentry_raw::EventId;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: readspeed FILE [time|file] [REPEAT]");
    let order = match args.next().as_deref() {
        Some("file") => Order::File,
        _ => Order::Time,
    };
    let repeat: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    // `mem`: read the file into memory first (no file reads while timing).
    let mem = args.next().as_deref() == Some("mem");
    let bytes = mem.then(|| std::fs::read(&path).expect("read"));
    let mut reads = Vec::new();
    for run in 0..repeat.max(1) {
        let t0 = Instant::now();
        let file = match &bytes {
            Some(b) => EtlFile::from_bytes(b.clone()),
            None => EtlFile::open(&path),
        }
        .unwrap_or_else(|e| panic!("{path}: {e}"));
        let open = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut r = file.events(order);
        let (mut events, mut ts, mut payload, mut other) = (0u64, 0u64, 0u64, 0u64);
        while let Some(ev) = r.next_event() {
            events += 1;
            ts = ts.wrapping_add(ev.timestamp);
            payload += ev.payload.len() as u64;
            // Touch every field, as a decoder would.
            let id = match ev.id {
                EventId::Kernel { group, opcode } => u64::from(group) << 8 | u64::from(opcode),
                EventId::Classic { opcode, .. } => u64::from(opcode),
                EventId::Manifest { id, .. } => u64::from(id),
            };
            other = other
                .wrapping_add(id)
                .wrapping_add(ev.offset)
                .wrapping_add(u64::from(ev.pid.unwrap_or(0)))
                .wrapping_add(u64::from(ev.tid.unwrap_or(0)))
                .wrapping_add(u64::from(ev.processor))
                .wrapping_add(u64::from(ev.version) + u64::from(ev.pointer_size))
                .wrapping_add(ev.header as u64)
                .wrapping_add(ev.extended.0.len() as u64);
        }
        let secs = t1.elapsed().as_secs_f64();
        let d = r.diagnostics();
        println!(
            "{{\"run\":{run},\"order\":\"{order:?}\",\"events\":{events},\"records\":{},\"errors\":{},\"ts_sum\":{ts},\"payload\":{payload},\"fields\":{other},\"open_s\":{open:.6},\"read_s\":{secs:.6},\"events_per_s\":{:.0},\"mb_per_s\":{:.1}}}",
            d.records,
            d.error_count,
            events as f64 / secs,
            file.len() as f64 / 1e6 / secs,
        );
        reads.push((secs, events, file.len()));
    }
    reads.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (best, events, len) = reads[0];
    let median = reads[reads.len() / 2].0;
    println!(
        "best {:.1} ms ({:.2} M events/s, {:.0} MB/s), median {:.1} ms",
        best * 1e3,
        events as f64 / best / 1e6,
        len as f64 / 1e6 / best,
        median * 1e3
    );
}
