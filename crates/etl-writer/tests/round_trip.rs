//! Round trip: what the writer writes, `sentry-etl` reads and
//! `sentry-kernel::decode` decodes, field by field, for both pointer sizes,
//! with and without compression. Writer, reader and decoders were written
//! independently from the documented layouts.

use std::io::Cursor;

use sentry_etl::{EtlFile, Order};
use sentry_etl_writer::payload::{self, ImagePayload, ProcessPayload, ThreadPayload};
use sentry_etl_writer::{EtlWriter, HeaderClass, Record, TraceConfig};
use sentry_kernel::{decode, KernelEvent, Lifecycle, StackKeyOp, StackPart};
use sentry_raw::{EventId, HeaderKind};

/// What was written, to compare with what is read back.
#[derive(Debug, Clone, PartialEq)]
enum Sent {
    Enter(u64),
    Exit(u32),
    Stack(u64, u32, u32, Vec<u64>),
    KeyRef(StackPart, u64, u32, u32, u64),
    KeyDef(StackKeyOp, u64, Vec<u64>),
    Process(Lifecycle, ProcessPayload),
    Thread(Lifecycle, ThreadPayload),
    Image(Lifecycle, ImagePayload),
}

struct Written {
    processor: u16,
    class: HeaderClass,
    group: u8,
    opcode: u8,
    pid: u32,
    tid: u32,
    timestamp: u64,
    sent: Sent,
}

fn mask(ps: u8, v: u64) -> u64 {
    if ps == 4 {
        v & 0xFFFF_FFFF
    } else {
        v
    }
}

/// A deterministic mix of every event kind syscall-sentry reads, enough to
/// fill several buffers per processor.
fn events(ps: u8, processors: u16, n: u64) -> Vec<Written> {
    let mut v = Vec::new();
    let mut ts = TraceConfig::windows10(ps, processors).start_qpc + 1_000;
    let kaddr = |i: u64| mask(ps, 0xFFFF_F803_1240_0000 + i * 0x1A30);
    for i in 0..n {
        let cpu = (i % u64::from(processors)) as u16;
        ts += 37 + i % 11;
        let k = i % 9;
        let (class, group, opcode, sent) = match k {
            0 | 5 => (HeaderClass::PerfInfo, 0x0F, 51, Sent::Enter(kaddr(i))),
            1 => {
                let frames: Vec<u64> = (0..(i % 192))
                    .map(|f| mask(ps, 0x7FFB_2C4A_0000 + f * 0x1111 + i))
                    .collect();
                (
                    HeaderClass::PerfInfo,
                    0x18,
                    32,
                    Sent::Stack(ts - 5, 4 + (i as u32 % 50) * 4, 100 + i as u32, frames),
                )
            }
            2 => (
                HeaderClass::PerfInfo,
                0x0F,
                52,
                Sent::Exit(if i % 2 == 0 { 0 } else { 0xC000_0022 }),
            ),
            3 => {
                let op = [
                    Lifecycle::Start,
                    Lifecycle::End,
                    Lifecycle::DcStart,
                    Lifecycle::DcEnd,
                ][(i / 9 % 4) as usize];
                let p = ProcessPayload {
                    version: if i % 2 == 0 { 4 } else { 3 },
                    unique_process_key: mask(ps, 0xFFFF_A804_E1D1_C080 + i),
                    process_id: i as u32 * 4,
                    parent_id: 772,
                    session_id: (i % 3) as u32,
                    exit_status: if op == Lifecycle::End {
                        -1073741510
                    } else {
                        0x103
                    },
                    directory_table_base: mask(ps, 0x4_AAC9_1000 + i * 0x1000),
                    flags: if i % 2 == 0 { (i % 4) as u32 } else { 0 },
                    user_sid: if i % 4 == 3 {
                        String::new()
                    } else {
                        format!("S-1-5-21-1-2-3-{}", 1000 + i)
                    },
                    sid_pointer: mask(ps, 0xFFFF_D383_D90D_29A0),
                    sid_attributes: 0,
                    image_file_name: format!("proc{i}.exe"),
                    command_line: format!("C:\\Program Files\\x\\proc{i}.exe --ümlaut {i}"),
                    package_full_name: if i % 2 == 0 {
                        format!("Pkg_{i}")
                    } else {
                        String::new()
                    },
                    application_id: if i % 2 == 0 {
                        "App".into()
                    } else {
                        String::new()
                    },
                };
                let opcode = match op {
                    Lifecycle::Start => 1,
                    Lifecycle::End => 2,
                    Lifecycle::DcStart => 3,
                    _ => 4,
                };
                (HeaderClass::System, 0x03, opcode, Sent::Process(op, p))
            }
            4 => {
                let t = ThreadPayload {
                    process_id: 904,
                    thread_id: 13_000 + i as u32,
                    stack_base: mask(ps, 0xFFFF_F80C_4561_0000 + i),
                    stack_limit: mask(ps, 0xFFFF_F80C_4560_A000 + i),
                    user_stack_base: mask(ps, 0xA0_0010_0000),
                    user_stack_limit: mask(ps, 0xA0_000F_D000),
                    affinity: 0xFF,
                    win32_start_addr: mask(ps, 0x7FF6_1234_14A0),
                    teb_base: mask(ps, 0xA0_0000_2000 + i),
                    sub_process_tag: 0,
                    base_priority: 8,
                    page_priority: 5,
                    io_priority: 2,
                    thread_flags: 0,
                };
                (
                    HeaderClass::System,
                    0x05,
                    if i % 2 == 0 { 1 } else { 3 },
                    Sent::Thread(
                        if i % 2 == 0 {
                            Lifecycle::Start
                        } else {
                            Lifecycle::DcStart
                        },
                        t,
                    ),
                )
            }
            6 => {
                let img = ImagePayload {
                    image_base: mask(ps, 0x7FFB_2C4A_0000 + i * 0x10000),
                    image_size: 0x1F_8000,
                    process_id: 904,
                    image_checksum: 0x1F_AB12,
                    time_date_stamp: 0x5E4B_9C1F,
                    reserved0: 0,
                    default_base: 0,
                    file_name: format!("\\Device\\HarddiskVolume3\\Windows\\System32\\lib{i}.dll"),
                };
                // Load is hook 0x030A; the others group 0x14.
                let (g, op, lc) = match i / 9 % 3 {
                    0 => (0x03, 10, Lifecycle::Start),
                    1 => (0x14, 3, Lifecycle::DcStart),
                    _ => (0x14, 2, Lifecycle::End),
                };
                (
                    if g == 0x03 {
                        HeaderClass::System
                    } else {
                        HeaderClass::PerfInfo
                    },
                    g,
                    op,
                    Sent::Image(lc, img),
                )
            }
            7 => {
                let part = if i % 2 == 0 {
                    StackPart::Kernel
                } else {
                    StackPart::User
                };
                (
                    HeaderClass::PerfInfo,
                    0x18,
                    if part == StackPart::Kernel { 37 } else { 38 },
                    Sent::KeyRef(
                        part,
                        ts - 3,
                        904,
                        13_000,
                        mask(ps, 0xFFFF_FA83_0340_0090 + i),
                    ),
                )
            }
            _ => {
                let op = [StackKeyOp::Create, StackKeyOp::Delete, StackKeyOp::Rundown]
                    [(i / 9 % 3) as usize];
                let frames: Vec<u64> = (0..1 + i % 30)
                    .map(|f| mask(ps, 0xFFFF_F803_1240_0000 + f * 8))
                    .collect();
                let opcode = match op {
                    StackKeyOp::Create => 34,
                    StackKeyOp::Delete => 35,
                    StackKeyOp::Rundown => 36,
                };
                (
                    HeaderClass::PerfInfo,
                    0x18,
                    opcode,
                    Sent::KeyDef(op, mask(ps, 0xFFFF_FA83_0340_0090 + i), frames),
                )
            }
        };
        v.push(Written {
            processor: cpu,
            class,
            group,
            opcode,
            pid: 904,
            tid: 13_000 + (i % 7) as u32,
            timestamp: ts,
            sent,
        });
    }
    v
}

fn encode(ps: u8, s: &Sent, out: &mut Vec<u8>) -> u16 {
    out.clear();
    match s {
        Sent::Enter(a) => payload::sys_call_enter(ps, *a, out),
        Sent::Exit(st) => payload::sys_call_exit(*st, out),
        Sent::Stack(t, p, th, f) => payload::stack_walk(ps, *t, *p, *th, f, out),
        Sent::KeyRef(_, t, p, th, k) => payload::stack_key_reference(ps, *t, *p, *th, *k, out),
        Sent::KeyDef(_, k, f) => payload::stack_key_definition(ps, *k, f, out),
        Sent::Process(_, p) => {
            p.encode(ps, out);
            return u16::from(p.version);
        }
        Sent::Thread(_, t) => {
            t.encode(ps, out);
            return 3;
        }
        Sent::Image(_, i) => i.encode(ps, out),
    }
    2
}

fn check(ps: u8, compress: bool) {
    let processors = 4;
    let mut cfg = TraceConfig::windows10(ps, processors);
    cfg.compress = compress;
    let written = events(ps, processors, 30_000);
    let mut w = EtlWriter::new(Cursor::new(Vec::new()), cfg.clone()).unwrap();
    let mut buf = Vec::new();
    for e in &written {
        let version = encode(ps, &e.sent, &mut buf);
        let rec = Record {
            class: e.class,
            group: e.group,
            opcode: e.opcode,
            version,
            pid: e.pid,
            tid: e.tid,
            timestamp: e.timestamp,
            payload: &buf,
        };
        w.write(e.processor, &rec).unwrap();
    }
    w.note_events_lost(7);
    let (out, stats) = w.finish().unwrap();
    assert!(
        stats.buffers > 2 * u32::from(processors),
        "several buffers per processor"
    );
    if compress {
        assert!(stats.compressed_buffers + 1 >= stats.buffers - 1);
    }
    let file = EtlFile::from_bytes(out.into_inner()).unwrap();
    let h = file.header();
    assert_eq!(h.pointer_size, u32::from(ps));
    assert_eq!(h.number_of_processors, u32::from(processors));
    assert_eq!(h.events_lost, 7);
    assert_eq!(h.buffers_written, stats.buffers);
    assert_eq!(h.perf_freq as u64, cfg.perf_freq);
    // Time order: the reader's k-way merge must give back the writer's
    // order (timestamps are unique and increasing).
    let mut got = file.events(Order::Time);
    let mut i = 0;
    let mut header_seen = false;
    while let Some(ev) = got.next_event() {
        if ev.id
            == (EventId::Kernel {
                group: 0,
                opcode: 0,
            })
        {
            header_seen = true;
            assert!(matches!(
                decode(&ev),
                Ok(Some(KernelEvent::EventTraceHeader(_)))
            ));
            continue;
        }
        let e = &written[i];
        i += 1;
        assert_eq!(
            ev.id,
            EventId::Kernel {
                group: e.group,
                opcode: e.opcode
            },
            "event {i}"
        );
        assert_eq!(ev.timestamp, e.timestamp);
        assert_eq!(ev.processor, e.processor);
        assert_eq!(ev.pointer_size, ps);
        let kind = match (e.class, ps) {
            (HeaderClass::System, 4) => HeaderKind::System32,
            (HeaderClass::System, _) => HeaderKind::System64,
            (HeaderClass::PerfInfo, 4) => HeaderKind::PerfInfo32,
            (HeaderClass::PerfInfo, _) => HeaderKind::PerfInfo64,
        };
        assert_eq!(ev.header, kind);
        if e.class == HeaderClass::System {
            assert_eq!((ev.pid, ev.tid), (Some(e.pid), Some(e.tid)));
        } else {
            assert_eq!((ev.pid, ev.tid), (None, None));
        }
        let d = decode(&ev)
            .unwrap_or_else(|err| panic!("event {i}: {err}"))
            .expect("event of interest");
        match (&e.sent, d) {
            (Sent::Enter(a), KernelEvent::SysCallEnter(s)) => assert_eq!(s.sys_call_address, *a),
            (Sent::Exit(st), KernelEvent::SysCallExit(s)) => assert_eq!(s.sys_call_ntstatus, *st),
            (Sent::Stack(t, p, th, f), KernelEvent::StackWalk(s)) => {
                assert_eq!(
                    (s.event_timestamp, s.stack_process, s.stack_thread),
                    (*t, *p, *th)
                );
                assert_eq!(s.frames.iter().collect::<Vec<_>>(), *f);
            }
            (Sent::KeyRef(part, t, p, th, k), KernelEvent::StackKeyReference(r)) => {
                assert_eq!(
                    (
                        r.part,
                        r.event_timestamp,
                        r.stack_process,
                        r.stack_thread,
                        r.stack_key
                    ),
                    (*part, *t, *p, *th, *k)
                );
            }
            (Sent::KeyDef(op, k, f), KernelEvent::StackKeyDefinition(d)) => {
                assert_eq!((d.op, d.stack_key), (*op, *k));
                assert_eq!(d.frames.iter().collect::<Vec<_>>(), *f);
            }
            (Sent::Process(op, p), KernelEvent::Process(d)) => {
                assert_eq!(d.op, *op);
                assert_eq!(d.unique_process_key, p.unique_process_key);
                assert_eq!(
                    (d.process_id, d.parent_id, d.session_id, d.exit_status),
                    (p.process_id, p.parent_id, p.session_id, p.exit_status)
                );
                assert_eq!(d.directory_table_base, p.directory_table_base);
                assert_eq!(d.flags, (p.version >= 4).then_some(p.flags));
                assert_eq!(d.user_sid, p.user_sid);
                assert_eq!(d.image_file_name, p.image_file_name);
                assert_eq!(d.command_line, p.command_line);
                assert_eq!(d.package_full_name, p.package_full_name);
                assert_eq!(d.application_id, p.application_id);
            }
            (Sent::Thread(op, t), KernelEvent::Thread(d)) => {
                assert_eq!(d.op, *op);
                assert_eq!((d.process_id, d.thread_id), (t.process_id, t.thread_id));
                assert_eq!((d.stack_base, d.stack_limit), (t.stack_base, t.stack_limit));
                assert_eq!(
                    (d.user_stack_base, d.user_stack_limit),
                    (t.user_stack_base, t.user_stack_limit)
                );
                assert_eq!(
                    (d.win32_start_addr, d.teb_base),
                    (t.win32_start_addr, t.teb_base)
                );
            }
            (Sent::Image(op, m), KernelEvent::Image(d)) => {
                assert_eq!(d.op, *op);
                assert_eq!(
                    (d.image_base, d.image_size, d.process_id),
                    (m.image_base, m.image_size, m.process_id)
                );
                assert_eq!(
                    (d.image_checksum, d.time_date_stamp, d.default_base),
                    (m.image_checksum, m.time_date_stamp, m.default_base)
                );
                assert_eq!(d.file_name, m.file_name);
            }
            (s, d) => panic!("event {i}: wrote {s:?}, decoded {d:?}"),
        }
    }
    assert!(header_seen);
    assert_eq!(i, written.len(), "every written event is read back");
    let diag = got.into_diagnostics();
    assert!(diag.is_clean(), "{:?}", diag.errors);
    assert_eq!(diag.buffers, u64::from(stats.buffers));
    assert_eq!(diag.compressed_buffers, u64::from(stats.compressed_buffers));
}

#[test]
fn round_trip_64bit() {
    check(8, false);
}

#[test]
fn round_trip_32bit() {
    check(4, false);
}

#[test]
fn round_trip_64bit_compressed() {
    check(8, true);
}

#[test]
fn round_trip_32bit_compressed() {
    check(4, true);
}
