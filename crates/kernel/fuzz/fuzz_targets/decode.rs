//! Fuzzes `sentry_kernel::decode`: the first three input bytes choose the
//! event (hook, version, pointer size), the rest is the payload.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(ev) = sentry_kernel::fuzzing::event_from_fuzz_input(data) else {
        return;
    };
    if let Ok(Some(e)) = sentry_kernel::decode(&ev) {
        // Exercise the lazy parts too.
        let _ = e.name();
        let _ = format!("{e:?}");
    }
});
