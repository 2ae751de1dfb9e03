//! Fuzzes `sentry_kernel::decode`: the first three input bytes choose the
//! event (hook, version, pointer size), the rest is the payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sentry_raw::{EventId, ExtendedData, HeaderKind, RawEvent};

/// Every (group, opcode) the decoder dispatches on, plus neighbours.
const HOOKS: [(u8, u8); 26] = [
    (0x00, 0),
    (0x00, 5),
    (0x03, 1),
    (0x03, 2),
    (0x03, 3),
    (0x03, 4),
    (0x03, 10),
    (0x03, 39),
    (0x03, 11),
    (0x05, 1),
    (0x05, 2),
    (0x05, 3),
    (0x05, 4),
    (0x0F, 51),
    (0x0F, 52),
    (0x0F, 46),
    (0x14, 2),
    (0x14, 3),
    (0x14, 4),
    (0x14, 10),
    (0x18, 32),
    (0x18, 34),
    (0x18, 35),
    (0x18, 36),
    (0x18, 37),
    (0x18, 38),
];

fuzz_target!(|data: &[u8]| {
    let [h, v, p, payload @ ..] = data else {
        return;
    };
    let (group, opcode) = HOOKS[usize::from(*h) % HOOKS.len()];
    let pointer_size = match p % 3 {
        0 => 4,
        1 => 8,
        _ => *p,
    };
    let ev = RawEvent {
        header: HeaderKind::System64,
        id: EventId::Kernel { group, opcode },
        version: *v % 8,
        pid: None,
        tid: None,
        processor: 0,
        timestamp: 0,
        pointer_size,
        payload,
        extended: ExtendedData::default(),
        offset: 0,
    };
    if let Ok(Some(e)) = sentry_kernel::decode(&ev) {
        // Exercise the lazy parts too.
        let _ = e.name();
        let _ = format!("{e:?}");
    }
});
