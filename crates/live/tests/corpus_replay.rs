//! Replays every real trace of the corpus through the live path: each event
//! the `.etl` reader yields is turned into the record view a real-time
//! consumer would see for it (kernel hook group -> MOF class GUID, pointer
//! size -> header flags, "no id" -> 0xFFFFFFFF, extended items unpacked),
//! pushed through the ring, popped, and compared with the original.
//!
//! Expected differences only: header kind `Live`, file offset 0, and Image
//! Load logged as hook 0x030A arriving as the Image class (group 0x14) —
//! which must decode to the very same typed kernel event.

use std::path::PathBuf;

use sentry_etl::{EtlFile, Order};
use sentry_live::ring::ring;
use sentry_live::view::{
    ExtItem, ExtItems, RecordView, EVENT_HEADER_FLAG_32_BIT_HEADER,
    EVENT_HEADER_FLAG_64_BIT_HEADER, EVENT_HEADER_FLAG_CLASSIC_HEADER,
    EVENT_HEADER_FLAG_EXTENDED_INFO,
};
use sentry_raw::{EventId, HeaderKind, KernelClass, RawEvent};

fn corpus_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus");
    assert!(dir.is_dir(), "corpus missing at {}", dir.display());
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "etl"))
        .collect();
    v.sort();
    assert!(v.len() >= 8, "expected the corpus' .etl files");
    v
}

/// Splits extended data in the `.etl` layout back into items.
fn ext_items(bytes: &[u8]) -> Option<ExtItems<'_>> {
    let mut items = ExtItems::default();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let size = usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]));
        let ext_type = u16::from_le_bytes([bytes[at + 2], bytes[at + 3]]);
        let linkage = u16::from_le_bytes([bytes[at + 4], bytes[at + 5]]);
        let data_size = usize::from(u16::from_le_bytes([bytes[at + 6], bytes[at + 7]]));
        let data = bytes.get(at + 8..at + 8 + data_size)?;
        items.push(ExtItem { ext_type, data });
        at += size.max(8);
        if linkage & 1 == 0 {
            break;
        }
    }
    Some(items)
}

/// The view a real-time consumer gets for `ev`, if it can be expressed.
fn live_view<'a>(ev: &RawEvent<'a>) -> Option<RecordView<'a>> {
    let mut flags = if ev.pointer_size == 4 {
        EVENT_HEADER_FLAG_32_BIT_HEADER
    } else {
        EVENT_HEADER_FLAG_64_BIT_HEADER
    };
    let mut v = RecordView {
        pid: ev.pid.unwrap_or(u32::MAX),
        tid: ev.tid.unwrap_or(u32::MAX),
        timestamp: ev.timestamp,
        version: ev.version,
        processor: ev.processor,
        payload: ev.payload,
        ..Default::default()
    };
    match ev.id {
        EventId::Kernel { group, opcode } => {
            v.provider = KernelClass::from_hook(group, opcode).guid()?;
            v.opcode = opcode;
            flags |= EVENT_HEADER_FLAG_CLASSIC_HEADER;
        }
        EventId::Classic { guid, opcode } => {
            // A classic event of a GUID that is also a kernel class would
            // come back as a kernel event: not representable.
            KernelClass::from_guid(&guid).is_none().then_some(())?;
            v.provider = guid;
            v.opcode = opcode;
            flags |= EVENT_HEADER_FLAG_CLASSIC_HEADER;
        }
        EventId::Manifest {
            provider,
            id,
            version,
            channel,
            level,
            opcode,
            task,
            keyword,
        } => {
            KernelClass::from_guid(&provider).is_none().then_some(())?;
            v.provider = provider;
            v.id = id;
            v.version = version;
            v.channel = channel;
            v.level = level;
            v.opcode = opcode;
            v.task = task;
            v.keyword = keyword;
        }
    }
    if !ev.extended.0.is_empty() {
        v.extended = ext_items(ev.extended.0)?;
        flags |= EVENT_HEADER_FLAG_EXTENDED_INFO;
    }
    v.flags = flags;
    Some(v)
}

#[test]
fn corpus_events_survive_the_live_path() {
    let (mut producer, mut consumer) = ring(1 << 20);
    let mut compared = 0u64;
    let mut kernel_decoded = 0u64;
    let mut with_extended = 0u64;
    let mut image_hook_remapped = 0u64;
    let mut not_representable = 0u64;
    for path in corpus_files() {
        let file = EtlFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut reader = file.events(Order::File);
        while let Some(ev) = reader.next_event() {
            let Some(view) = live_view(&ev) else {
                not_representable += 1;
                continue;
            };
            assert!(producer.push(&view), "ring has room for one record");
            let live = consumer.pop().expect("the record comes back");
            let mut expected = ev;
            expected.header = HeaderKind::Live;
            expected.offset = 0;
            if let EventId::Kernel { group, opcode } = ev.id {
                let g = KernelClass::from_hook(group, opcode).group();
                if g != group {
                    image_hook_remapped += 1;
                }
                expected.id = EventId::Kernel { group: g, opcode };
            }
            assert_eq!(
                live,
                expected,
                "{} at offset {:#x}",
                path.display(),
                ev.offset
            );
            with_extended += u64::from(!ev.extended.0.is_empty());
            // The typed decoder sees the same event either way.
            let from_file = sentry_kernel::decode(&ev).map_err(|e| e.reason);
            let from_live = sentry_kernel::decode(&live).map_err(|e| e.reason);
            assert_eq!(
                from_file,
                from_live,
                "{} at {:#x}",
                path.display(),
                ev.offset
            );
            kernel_decoded += u64::from(matches!(from_file, Ok(Some(_))));
            compared += 1;
        }
    }
    eprintln!(
        "compared {compared} events ({kernel_decoded} decoded kernel events, \
         {with_extended} with extended data, {image_hook_remapped} Image Load hooks \
         0x030A), {not_representable} from kernel groups without a class GUID"
    );
    assert!(compared > 10_000, "too few events compared: {compared}");
    assert!(kernel_decoded > 1_000);
    assert_eq!(consumer.stats().dropped, 0);
}
