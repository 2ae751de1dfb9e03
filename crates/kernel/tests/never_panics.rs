//! Property: `decode` never panics and never reads past the payload, for
//! arbitrary bytes under every (class, opcode, version, pointer size) it
//! dispatches on, plus neighbours it must ignore; and the SysCallEnter and
//! StackWalk shortcuts give exactly what it gives.

use proptest::prelude::*;
use sentry_kernel::{decode, stack_walk, sys_call_enter, KernelEvent};
use sentry_raw::{EventId, ExtendedData, HeaderKind, RawEvent};

use sentry_kernel::fuzzing::HOOKS;

fn check(group: u8, opcode: u8, version: u8, ps: u8, payload: &[u8]) {
    let ev = RawEvent {
        header: HeaderKind::PerfInfo64,
        id: EventId::Kernel { group, opcode },
        version,
        pid: None,
        tid: None,
        processor: 0,
        timestamp: 0,
        pointer_size: ps,
        payload,
        extended: ExtendedData::default(),
        offset: 77,
    };
    // The engine's shortcuts for the syscall events agree with `decode`.
    let decoded = decode(&ev);
    match &decoded {
        Ok(Some(KernelEvent::SysCallEnter(e))) => assert_eq!(sys_call_enter(&ev), Some(*e)),
        _ => assert_eq!(sys_call_enter(&ev), None),
    }
    match &decoded {
        Ok(Some(KernelEvent::StackWalk(s))) => assert_eq!(stack_walk(&ev).as_ref(), Some(s)),
        _ => assert!(stack_walk(&ev).is_none()),
    }
    match decoded {
        Ok(Some(KernelEvent::StackWalk(s))) => {
            assert_eq!(16 + s.frames.len() * usize::from(ps), payload.len());
        }
        Ok(Some(KernelEvent::StackKeyDefinition(d))) => {
            assert_eq!((1 + d.frames.len()) * usize::from(ps), payload.len());
        }
        Ok(Some(e)) => {
            // Strings are bounded by the payload.
            let text = match &e {
                KernelEvent::Process(p) => {
                    p.image_file_name.len()
                        + p.command_line.len()
                        + p.package_full_name.len()
                        + p.application_id.len()
                }
                KernelEvent::Image(i) => i.file_name.len(),
                _ => 0,
            };
            // A UTF-16 unit becomes at most 3 UTF-8 bytes (2 bytes in); a
            // Latin-1 byte at most 2.
            assert!(text <= 2 * payload.len(), "{e:?}");
            assert!(!e.name().is_empty());
        }
        Ok(None) => {}
        Err(e) => assert_eq!(e.offset, 77),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn decode_never_panics(
        hook in prop::sample::select(HOOKS.as_slice()),
        version in prop::sample::select(&[0u8, 1, 2, 3, 4, 5, 9, 255][..]),
        ps in prop::sample::select(&[4u8, 8, 0, 5][..]),
        payload in prop::collection::vec(any::<u8>(), 0..400),
    ) {
        check(hook.0, hook.1, version, ps, &payload);
    }

    /// Mostly-zero payloads with a few set bytes reach deeper into the
    /// variable-length layouts (SIDs, strings) than uniform noise does.
    #[test]
    fn decode_never_panics_sparse(
        hook in prop::sample::select(HOOKS.as_slice()),
        version in 2u8..6,
        ps in prop::sample::select(&[4u8, 8][..]),
        len in 0usize..300,
        pokes in prop::collection::vec((any::<usize>(), any::<u8>()), 0..12),
    ) {
        let mut payload = vec![0u8; len];
        for (at, v) in pokes {
            if len > 0 {
                payload[at % len] = v;
            }
        }
        check(hook.0, hook.1, version, ps, &payload);
    }
}
