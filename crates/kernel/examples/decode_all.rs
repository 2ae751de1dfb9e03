//! Reads an .etl file in time order and decodes every kernel event of
//! interest, touching every decoded field (so nothing is optimised away);
//! prints throughput as JSON. Used by `crates/kernel/benches/peers.sh` to
//! time full decoding next to dissect.etl.
//!
//! `cargo run --release -p sentry-kernel --example decode_all -- FILE`

use std::time::Instant;

use sentry_etl::{EtlFile, Order};
use sentry_kernel::{decode, KernelEvent};

/// Folds every field of a decoded event into `acc`.
fn touch(k: &KernelEvent<'_>, acc: &mut u64) {
    let mut add = |v: u64| *acc = acc.wrapping_mul(31).wrapping_add(v);
    match k {
        KernelEvent::SysCallEnter(s) => add(s.sys_call_address),
        KernelEvent::SysCallExit(s) => add(u64::from(s.sys_call_ntstatus)),
        KernelEvent::StackWalk(s) => {
            add(s.event_timestamp);
            add(u64::from(s.stack_process));
            add(u64::from(s.stack_thread));
            for f in s.frames.iter() {
                add(f);
            }
        }
        KernelEvent::StackKeyDefinition(d) => {
            add(d.stack_key);
            for f in d.frames.iter() {
                add(f);
            }
        }
        KernelEvent::StackKeyReference(r) => {
            add(r.event_timestamp);
            add(u64::from(r.stack_process) ^ u64::from(r.stack_thread));
            add(r.stack_key);
        }
        // Process, thread, image and header events: their Debug form
        // reaches every field (strings included).
        other => add(format!("{other:?}").len() as u64),
    }
}

fn main() {
    let path = std::env::args().nth(1).expect("usage: decode_all FILE");
    let start = Instant::now();
    let file = EtlFile::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (mut events, mut decoded, mut errors, mut acc) = (0u64, 0u64, 0u64, 0u64);
    let mut r = file.events(Order::Time);
    while let Some(ev) = r.next_event() {
        events += 1;
        match decode(&ev) {
            Ok(Some(k)) => {
                decoded += 1;
                touch(&k, &mut acc);
            }
            Ok(None) => {}
            Err(_) => errors += 1,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"events\":{events},\"decoded\":{decoded},\"decode_errors\":{errors},\"seconds\":{secs:.6},\"mb_per_s\":{:.1},\"events_per_s\":{:.0},\"checksum\":{acc}}}",
        file.len() as f64 / 1e6 / secs,
        events as f64 / secs
    );
}
