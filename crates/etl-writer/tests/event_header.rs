//! `EVENT_HEADER` records with extended data items: byte for byte as in a
//! file Windows wrote (the corpus's Windows 7 trace), and read back by
//! `sentry-etl` for both pointer sizes, both stack-item widths, with and
//! without compression.

use std::io::Cursor;
use std::path::PathBuf;

use sentry_etl::{EtlFile, Order};
use sentry_etl_writer::{stack_trace_item, EtlWriter, EventRecord, TraceConfig};
use sentry_raw::{ext_type, EventId, Guid};

fn corpus(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus");
    assert!(
        dir.is_dir(),
        "corpus directory {} is missing",
        dir.display()
    );
    dir.join(name)
}

/// Every EVENT_HEADER record with extended data in the (uncompressed)
/// Windows 7 trace, rebuilt from its decoded fields, equals the file's bytes.
#[test]
fn records_equal_the_ones_windows_wrote() {
    let path = corpus("win7-x64-kernel-stacks.etl");
    let bytes = std::fs::read(&path).unwrap();
    let file = EtlFile::open(&path).unwrap();
    let (mut checked, mut with_stack) = (0, 0);
    file.for_each_event(Order::File, |ev| {
        let EventId::Manifest {
            provider,
            id,
            version,
            channel,
            level,
            opcode,
            task,
            keyword,
        } = ev.id
        else {
            return std::ops::ControlFlow::Continue(());
        };
        if ev.extended.is_empty() {
            return std::ops::ControlFlow::Continue(());
        }
        let at = ev.offset as usize;
        let orig = &bytes[at..];
        let size = u16::from_le_bytes([orig[0], orig[1]]) as usize;
        let orig = &orig[..size];
        // Fields the reader does not expose: the CPU times, ActivityId.
        let kernel_time = u32::from_le_bytes(orig[0x38..0x3C].try_into().unwrap());
        let user_time = u32::from_le_bytes(orig[0x3C..0x40].try_into().unwrap());
        assert_eq!(&orig[0x40..0x50], &[0; 16], "ActivityId at {at:#x}");
        let items: Vec<(u16, &[u8])> = ev.extended.items().map(|i| (i.ext_type, i.data)).collect();
        with_stack += items
            .iter()
            .filter(|i| i.0 == ext_type::STACK_TRACE64)
            .count();
        let rec = EventRecord {
            pointer_size: ev.pointer_size,
            provider,
            id,
            version,
            channel,
            level,
            opcode,
            task,
            keyword,
            pid: ev.pid.unwrap_or(u32::MAX),
            tid: ev.tid.unwrap_or(u32::MAX),
            timestamp: ev.timestamp,
            kernel_time,
            user_time,
            extended: &items,
            payload: ev.payload,
        };
        assert_eq!(rec.to_bytes(), orig, "record at {at:#x}");
        checked += 1;
        std::ops::ControlFlow::Continue(())
    });
    // 93 STACK_TRACE64 and 46 PROV_TRAITS items (tests/corpus.rs of sentry-etl).
    assert_eq!(with_stack, 93);
    assert!(checked >= 93, "{checked}");
}

const PROVIDER: Guid = Guid::from_u128(0xe02a841c_75a3_4fa7_afc8_ae09cf9b7f23);

fn check(ps: u8, width: u8, compress: bool) {
    let mut cfg = TraceConfig::windows10(ps, 2);
    cfg.compress = compress;
    let t0 = cfg.start_qpc;
    let mut w = EtlWriter::new(Cursor::new(Vec::new()), cfg).unwrap();
    let mut item = Vec::new();
    let mut sent = Vec::new();
    for i in 0..500u64 {
        let frames: Vec<u64> = (0..1 + i % 40)
            .map(|k| 0x7ff0_0000_0000u64.wrapping_mul(u64::from(width == 8)) + 0x1000 * k + i)
            .collect();
        let match_id = if i % 7 == 0 { 0x1234_0000 + i } else { 0 };
        let t = stack_trace_item(width, match_id, &frames, &mut item);
        let payload = [
            (i as u32).to_le_bytes(),
            0x1410u32.to_le_bytes(),
            0u32.to_le_bytes(),
        ]
        .concat();
        let ext: [(u16, &[u8]); 2] = [(ext_type::TS_ID, &[1, 0, 0, 0][..]), (t, &item)];
        let rec = EventRecord {
            pointer_size: ps,
            provider: PROVIDER,
            id: 5,
            version: 0,
            channel: 0,
            level: 4,
            opcode: 0,
            task: 0,
            keyword: 0x8000_0000_0000_0000,
            pid: 1000 + i as u32,
            tid: 2000 + i as u32,
            timestamp: t0 + 10 * (i + 1),
            kernel_time: 0,
            user_time: 0,
            extended: &ext[usize::from(i % 2 == 0)..],
            payload: &payload,
        };
        w.write_event((i % 2) as u16, &rec).unwrap();
        sent.push((rec.timestamp, rec.pid, rec.tid, match_id, frames, payload));
    }
    let (out, stats) = w.finish().unwrap();
    assert_eq!(stats.per_event[&(PROVIDER, 5)], 500);
    let file = EtlFile::from_bytes(out.into_inner()).unwrap();
    let mut got = Vec::new();
    let diag = file.for_each_event(Order::Time, |ev| {
        if let EventId::Manifest {
            provider,
            id,
            level,
            keyword,
            ..
        } = ev.id
        {
            assert_eq!(
                (provider, id, level, keyword),
                (PROVIDER, 5, 4, 0x8000_0000_0000_0000)
            );
            let stack = ev
                .extended
                .items()
                .find_map(|i| {
                    i.stack_trace()
                        .map(|(m, f)| (i.ext_type, m, f.collect::<Vec<_>>()))
                })
                .unwrap();
            assert_eq!(ev.pointer_size, ps);
            got.push((
                ev.timestamp,
                ev.pid.unwrap(),
                ev.tid.unwrap(),
                stack,
                ev.payload.to_vec(),
            ));
        }
        std::ops::ControlFlow::Continue(())
    });
    assert_eq!(diag.errors.len(), 0, "{:?}", diag.errors);
    assert_eq!(got.len(), sent.len());
    let want_type = if width == 8 {
        ext_type::STACK_TRACE64
    } else {
        ext_type::STACK_TRACE32
    };
    for (g, s) in got.iter().zip(&sent) {
        let frames: Vec<u64> =
            s.4.iter()
                .map(|&f| if width == 4 { f & 0xFFFF_FFFF } else { f })
                .collect();
        assert_eq!((g.0, g.1, g.2), (s.0, s.1, s.2));
        assert_eq!(g.3, (want_type, s.3, frames));
        assert_eq!(g.4, s.5);
    }
}

#[test]
fn read_back_64bit_stack64() {
    check(8, 8, false);
}

#[test]
fn read_back_32bit_stack32_compressed() {
    check(4, 4, true);
}

#[test]
fn read_back_32bit_header_stack64() {
    // A 32-bit header with 64-bit stack items, as in the corpus's WoW64 trace.
    check(4, 8, false);
    check(8, 8, true);
}
