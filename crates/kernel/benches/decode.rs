//! Decode throughput on real events: every kernel event of interest of a
//! corpus trace, held in memory, decoded in a loop. Run with
//! `cargo bench -p sentry-kernel --bench decode`.

use divan::counter::ItemsCount;
use divan::Bencher;
use sentry_etl::{EtlFile, Order};
use sentry_kernel::{decode, event_name};
use sentry_raw::{EventId, ExtendedData, HeaderKind, RawEvent};

fn main() {
    divan::main();
}

struct Owned {
    id: EventId,
    version: u8,
    pointer_size: u8,
    payload: Vec<u8>,
}

/// The events of interest of one corpus trace, optionally one hook only.
fn load(name: &str, only: Option<(u8, u8)>) -> Vec<Owned> {
    let dir = std::env::var_os("SENTRY_CORPUS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus")
        });
    let file = EtlFile::open(dir.join(format!("{name}.etl"))).expect("corpus trace");
    let mut out = Vec::new();
    let mut r = file.events(Order::File);
    while let Some(ev) = r.next_event() {
        let EventId::Kernel { group, opcode } = ev.id else {
            continue;
        };
        let class = ev.kernel_class().unwrap();
        if event_name(class, opcode).is_some() && only.is_none_or(|h| h == (group, opcode)) {
            out.push(Owned {
                id: ev.id,
                version: ev.version,
                pointer_size: ev.pointer_size,
                payload: ev.payload.to_vec(),
            });
        }
    }
    out
}

fn run(bencher: Bencher, events: &[Owned]) {
    bencher.counter(ItemsCount::new(events.len())).bench(|| {
        let mut ok = 0usize;
        for o in events {
            let ev = RawEvent {
                header: HeaderKind::PerfInfo64,
                id: o.id,
                version: o.version,
                pid: None,
                tid: None,
                processor: 0,
                timestamp: 0,
                pointer_size: o.pointer_size,
                payload: &o.payload,
                extended: ExtendedData::default(),
                offset: 0,
            };
            ok += usize::from(matches!(decode(divan::black_box(&ev)), Ok(Some(_))));
        }
        assert_eq!(ok, events.len());
    });
}

/// 18,532 StackWalk events: the hot path next to SysCallEnter.
#[divan::bench(sample_count = 30)]
fn win7_stackwalk(bencher: Bencher) {
    run(bencher, &load("win7-x64-kernel-stacks", Some((0x18, 32))));
}

/// Every event of interest of the Win10 rundown: mostly Image events with
/// NT paths (string decoding, one allocation each).
#[divan::bench(sample_count = 30)]
fn win10_all_of_interest(bencher: Bencher) {
    run(bencher, &load("win10-x64-kernel-rundown", None));
}
