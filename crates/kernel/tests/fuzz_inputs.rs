//! Replays the fuzz target's inputs: the seeds (real payloads cut from the
//! corpus traces, which must decode) and any crash regressions (which must
//! not panic). Same input format as `fuzz/fuzz_targets/decode.rs`.

use std::path::Path;

use sentry_kernel::decode;
use sentry_raw::{EventId, ExtendedData, HeaderKind, KernelClass, RawEvent};

/// Must equal `HOOKS` in `fuzz/fuzz_targets/decode.rs`.
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

fn event(data: &[u8]) -> Option<RawEvent<'_>> {
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

fn inputs(dir: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(dir);
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir:?}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none_or(|x| x != "md"))
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    v.sort();
    v
}

#[test]
fn the_fuzz_target_hook_table_is_this_one() {
    let src = include_str!("../fuzz/fuzz_targets/decode.rs");
    for (g, o) in HOOKS {
        assert!(
            src.contains(&format!("({g:#04X}, {o}),").replace("0X", "0x")),
            "{g:#x}/{o}"
        );
    }
}

#[test]
fn real_payload_seeds_decode() {
    let seeds = inputs("seeds");
    assert!(seeds.len() >= 80, "{} seeds", seeds.len());
    let mut decoded = 0;
    for (name, data) in &seeds {
        let ev = event(data).expect("seed has a 3-byte prefix");
        let EventId::Kernel { group, opcode } = ev.id else {
            unreachable!()
        };
        let of_interest =
            sentry_kernel::event_name(KernelClass::from_hook(group, opcode), opcode).is_some();
        match decode(&ev) {
            Ok(Some(_)) if of_interest => decoded += 1,
            Ok(None) if !of_interest => {}
            other => panic!("{name}: {other:?}"),
        }
    }
    assert!(decoded >= 70, "{decoded}");
}

#[test]
fn crash_regressions_do_not_panic() {
    for (_, data) in inputs("regressions") {
        if let Some(ev) = event(&data) {
            let _ = decode(&ev);
        }
    }
}
