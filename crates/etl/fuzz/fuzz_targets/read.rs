//! Whole-file reader over arbitrary bytes: buffer index, logfile header,
//! XPRESS buffers, every record kind, both orders.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sentry_etl::{EtlFile, Order};

fuzz_target!(|data: &[u8]| {
    let Ok(file) = EtlFile::from_bytes(data) else {
        return;
    };
    let mut counts = [0u64; 2];
    for (i, order) in [Order::File, Order::Time].into_iter().enumerate() {
        let mut r = file.events(order);
        while let Some(ev) = r.next_event() {
            counts[i] += 1;
            // Touch what consumers touch.
            std::hint::black_box((ev.payload.len(), ev.extended.items().count()));
        }
        let d = r.into_diagnostics();
        for e in &d.errors {
            if let Some(b) = e.buffer_offset {
                assert!(b < data.len() as u64);
            } else {
                assert!(e.offset <= data.len() as u64);
            }
        }
    }
    assert_eq!(counts[0], counts[1]);
});
