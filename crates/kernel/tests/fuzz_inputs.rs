//! Replays the fuzz target's inputs: the seeds (real payloads cut from the
//! corpus traces, which must decode) and any crash regressions (which must
//! not panic). Same input format as `fuzz/fuzz_targets/decode.rs`.

use std::path::Path;

use sentry_kernel::decode;
use sentry_raw::{EventId, KernelClass};

use sentry_kernel::fuzzing::event_from_fuzz_input as event;

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
