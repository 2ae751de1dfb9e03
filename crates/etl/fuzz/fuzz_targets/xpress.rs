//! The XPRESS decompressor alone: first two bytes pick the output limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let limit = usize::from(u16::from_le_bytes([data[0], data[1]])) * 4;
    let mut out = Vec::new();
    let _ = sentry_etl::xpress::decompress(&data[2..], &mut out, limit);
    assert!(out.len() <= limit);
});
