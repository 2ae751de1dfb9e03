//! Shared by the cargo-fuzz target, its replay test and the property test:
//! how fuzz input bytes become a [`RawEvent`], so that a crash input found by
//! the fuzzer replays as exactly the same event in `cargo test`.

use sentry_raw::{EventId, ExtendedData, HeaderKind, RawEvent};

/// Every (group, opcode) the decoder dispatches on, plus neighbours it must
/// ignore (EventTrace 5, Process 11, SampledProfile 46).
pub const HOOKS: [(u8, u8); 26] = [
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

/// The first three bytes choose the hook, version and pointer size (4, 8 or
/// an invalid one); the rest is the payload. `None` for shorter inputs.
pub fn event_from_fuzz_input(data: &[u8]) -> Option<RawEvent<'_>> {
    let [h, v, p, payload @ ..] = data else {
        return None;
    };
    let (group, opcode) = HOOKS[usize::from(*h) % HOOKS.len()];
    Some(RawEvent {
        header: HeaderKind::System64,
        id: EventId::Kernel { group, opcode },
        version: *v % 8,
        pid: None,
        tid: None,
        processor: 0,
        timestamp: 0,
        pointer_size: match p % 3 {
            0 => 4,
            1 => 8,
            _ => *p,
        },
        payload,
        extended: ExtendedData::default(),
        offset: 0,
    })
}
