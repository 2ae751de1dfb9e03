//! Hand-built payloads for every layout, in 32- and 64-bit variants.

use sentry_raw::{EventId, ExtendedData, Guid, HeaderKind, LogfileHeader, RawEvent};

use super::*;

/// Builds a payload the way the kernel lays it out.
struct P {
    ps: u8,
    b: Vec<u8>,
}

impl P {
    fn new(ps: u8) -> P {
        P { ps, b: Vec::new() }
    }
    fn u8(mut self, v: u8) -> P {
        self.b.push(v);
        self
    }
    fn u32(mut self, v: u32) -> P {
        self.b.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> P {
        self.b.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn ptr(self, v: u64) -> P {
        if self.ps == 4 {
            self.u32(v as u32)
        } else {
            self.u64(v)
        }
    }
    fn bytes(mut self, v: &[u8]) -> P {
        self.b.extend_from_slice(v);
        self
    }
    fn ansiz(self, s: &str) -> P {
        self.bytes(s.as_bytes()).u8(0)
    }
    fn utf16z(mut self, s: &str) -> P {
        for u in s.encode_utf16().chain([0]) {
            self.b.extend_from_slice(&u.to_le_bytes());
        }
        self
    }
    /// TOKEN_USER (SID pointer, attributes, padding) + SID S-1-5-21-a-b-c-1001.
    fn user_sid(self) -> P {
        let ps = u64::from(self.ps);
        let mut p = self.ptr(0xFFFF_F8A0_0123_4560 & (u64::MAX >> (64 - 8 * ps)));
        p = p.ptr(0);
        p = p.bytes(&[1, 5, 0, 0, 0, 0, 0, 5]);
        for v in [21u32, 1, 2, 3, 1001] {
            p = p.u32(v);
        }
        p
    }
}

fn kernel(group: u8, opcode: u8, version: u8, ps: u8, payload: &[u8]) -> RawEvent<'_> {
    RawEvent {
        header: if ps == 4 {
            HeaderKind::System32
        } else {
            HeaderKind::System64
        },
        id: EventId::Kernel { group, opcode },
        version,
        pid: Some(4),
        tid: Some(8),
        processor: 0,
        timestamp: 1000,
        pointer_size: ps,
        payload,
        extended: ExtendedData::default(),
        offset: 0x1234,
    }
}

fn ok(ev: &RawEvent<'_>) -> KernelEvent<'static> {
    let e = decode(ev)
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("an event of interest");
    let class = ev.kernel_class().unwrap();
    assert_eq!(Some(e.name()), event_name(class, ev.id.opcode()));
    into_static(e)
}

/// Frames borrow the payload; tests that keep events copy them out.
fn into_static(e: KernelEvent<'_>) -> KernelEvent<'static> {
    match e {
        KernelEvent::SysCallEnter(x) => KernelEvent::SysCallEnter(x),
        KernelEvent::SysCallExit(x) => KernelEvent::SysCallExit(x),
        KernelEvent::Process(x) => KernelEvent::Process(x),
        KernelEvent::Thread(x) => KernelEvent::Thread(x),
        KernelEvent::Image(x) => KernelEvent::Image(x),
        KernelEvent::StackKeyReference(x) => KernelEvent::StackKeyReference(x),
        KernelEvent::EventTraceHeader(x) => KernelEvent::EventTraceHeader(x),
        KernelEvent::StackWalk(_) | KernelEvent::StackKeyDefinition(_) => {
            panic!("borrowing event; match it in place")
        }
    }
}

fn err(ev: &RawEvent<'_>) -> DecodeError {
    let e = decode(ev).expect_err("payload should not decode");
    assert_eq!(e.offset, 0x1234);
    e
}

/// Every strict prefix of a payload whose last field is fixed-size fails.
fn every_prefix_fails(group: u8, opcode: u8, version: u8, ps: u8, full: &[u8]) {
    for n in 0..full.len() {
        let ev = kernel(group, opcode, version, ps, &full[..n]);
        assert!(
            decode(&ev).is_err(),
            "{group:#x}/{opcode} v{version} ps{ps}: {n}-byte prefix decoded"
        );
    }
}

#[test]
fn sys_call_enter_both_pointer_sizes() {
    let p64 = P::new(8).ptr(0xFFFF_F800_0123_4567).b;
    let e = ok(&kernel(0x0F, 51, 2, 8, &p64));
    assert_eq!(
        e,
        KernelEvent::SysCallEnter(SysCallEnter {
            sys_call_address: 0xFFFF_F800_0123_4567
        })
    );
    let p32 = P::new(4).ptr(0x8123_4567).b;
    let e = ok(&kernel(0x0F, 51, 2, 4, &p32));
    assert_eq!(
        e,
        KernelEvent::SysCallEnter(SysCallEnter {
            sys_call_address: 0x8123_4567
        })
    );
    every_prefix_fails(0x0F, 51, 2, 8, &p64);
    every_prefix_fails(0x0F, 51, 2, 4, &p32);
    let e = err(&kernel(0x0F, 51, 2, 8, &p32));
    assert!(e.to_string().contains("SysCallAddress"), "{e}");
    assert!(e.to_string().contains("0x1234"), "{e}");
}

#[test]
fn sys_call_exit() {
    let p = P::new(8).u32(0xC000_0005).b;
    assert_eq!(
        ok(&kernel(0x0F, 52, 2, 8, &p)),
        KernelEvent::SysCallExit(SysCallExit {
            sys_call_ntstatus: 0xC000_0005
        })
    );
    every_prefix_fails(0x0F, 52, 2, 4, &p);
}

#[test]
fn other_perfinfo_and_groups_are_not_of_interest() {
    let p = [0u8; 64];
    for (g, o) in [
        (0x0F, 46),
        (0x18, 33),
        (0x03, 11),
        (0x05, 36),
        (0x14, 33),
        (0x0A, 10),
        (0x00, 5),
    ] {
        assert_eq!(decode(&kernel(g, o, 2, 8, &p)), Ok(None), "{g:#x}/{o}");
    }
    let mut ev = kernel(0x0F, 51, 2, 8, &p);
    ev.id = EventId::Classic {
        guid: Guid::default(),
        opcode: 51,
    };
    assert_eq!(decode(&ev), Ok(None));
}

#[test]
fn bad_pointer_size_is_an_error() {
    let p = [0u8; 64];
    let e = err(&kernel(0x0F, 51, 2, 6, &p));
    assert!(e.reason.contains("pointer size 6"), "{e}");
}

#[test]
fn stack_walk_both_pointer_sizes() {
    for ps in [4u8, 8] {
        let a = if ps == 8 {
            0xFFFF_F800_0268_F318
        } else {
            0x8268_F318
        };
        let p = P::new(ps)
            .u64(737_398_883_714)
            .u32(1876)
            .u32(3488)
            .ptr(a)
            .ptr(0x7FF6_1234 + 1)
            .ptr(0x10)
            .b;
        let ev = kernel(0x18, 32, 2, ps, &p);
        let Ok(Some(KernelEvent::StackWalk(s))) = decode(&ev) else {
            panic!("not a stack: {:?}", decode(&ev))
        };
        assert_eq!(s.event_timestamp, 737_398_883_714);
        assert_eq!((s.stack_process, s.stack_thread), (1876, 3488));
        assert_eq!(s.frames.pointer_size(), ps);
        assert_eq!(s.frames.iter().collect::<Vec<_>>(), [a, 0x7FF6_1235, 0x10]);
        // The fixed 16 bytes are required; a partial trailing frame is corrupt.
        every_prefix_fails(0x18, 32, 2, ps, &p[..16]);
        let e = err(&kernel(0x18, 32, 2, ps, &p[..p.len() - 1]));
        assert!(e.reason.contains("whole number"), "{e}");
    }
    // No frames at all is a valid (empty) stack.
    let p = P::new(8).u64(1).u32(2).u32(3).b;
    let Ok(Some(KernelEvent::StackWalk(s))) = decode(&kernel(0x18, 32, 2, 8, &p)) else {
        panic!()
    };
    assert!(s.frames.is_empty());
}

#[test]
fn stack_key_definitions_and_references() {
    for ps in [4u8, 8] {
        let key = if ps == 8 {
            0xFFFF_FA83_033E_DB10
        } else {
            0x833E_DB10
        };
        for (opcode, op) in [
            (34, StackKeyOp::Create),
            (35, StackKeyOp::Delete),
            (36, StackKeyOp::Rundown),
        ] {
            let p = P::new(ps).ptr(key).ptr(0x1000).ptr(0x2000).b;
            let Ok(Some(KernelEvent::StackKeyDefinition(d))) =
                decode(&kernel(0x18, opcode, 2, ps, &p))
            else {
                panic!("{opcode}")
            };
            assert_eq!((d.op, d.stack_key), (op, key));
            assert_eq!(d.frames.iter().collect::<Vec<_>>(), [0x1000, 0x2000]);
            every_prefix_fails(0x18, opcode, 2, ps, &p[..usize::from(ps)]);
            assert!(decode(&kernel(0x18, opcode, 2, ps, &p[..p.len() - 1])).is_err());
        }
        for (opcode, part) in [(37, StackPart::Kernel), (38, StackPart::User)] {
            let p = P::new(ps).u64(1_942_908_431).u32(3988).u32(3780).ptr(key).b;
            assert_eq!(p.len(), 16 + usize::from(ps));
            assert_eq!(
                ok(&kernel(0x18, opcode, 2, ps, &p)),
                KernelEvent::StackKeyReference(StackKeyReference {
                    part,
                    event_timestamp: 1_942_908_431,
                    stack_process: 3988,
                    stack_thread: 3780,
                    stack_key: key,
                })
            );
            every_prefix_fails(0x18, opcode, 2, ps, &p);
        }
    }
}

/// Process payload for a version, with optional tail bytes.
fn process_payload(ps: u8, version: u8, sid: bool, cmd: &str) -> Vec<u8> {
    let mut p = P::new(ps)
        .ptr(0xFFFF_FA80_0411_2233 & (u64::MAX >> (64 - 8 * u32::from(ps))))
        .u32(1234)
        .u32(567)
        .u32(1)
        .u32(0x103);
    if version >= 3 {
        p = p.ptr(0x1_2345_6000 & (u64::MAX >> (64 - 8 * u32::from(ps))));
    }
    if version >= 4 {
        p = p.u32(0x10);
    }
    p = if sid { p.user_sid() } else { p.u32(0) };
    p = p.ansiz("svchost.exe").utf16z(cmd);
    if version >= 4 {
        p = p.utf16z("Pkg_1.0_x64").utf16z("App");
    }
    if version >= 5 {
        p = p.u64(0x01D9_0000_0000_0000);
    }
    p.b
}

#[test]
fn process_every_version_both_pointer_sizes() {
    for ps in [4u8, 8] {
        let mask = u64::MAX >> (64 - 8 * u32::from(ps));
        for version in [2u8, 3, 4, 5] {
            for (opcode, op) in [
                (1, Lifecycle::Start),
                (2, Lifecycle::End),
                (3, Lifecycle::DcStart),
                (4, Lifecycle::DcEnd),
                (39, Lifecycle::Defunct),
            ] {
                let p = process_payload(ps, version, true, "svchost.exe -k netsvcs");
                let KernelEvent::Process(pr) = ok(&kernel(0x03, opcode, version, ps, &p)) else {
                    panic!()
                };
                let v4 = version >= 4;
                assert_eq!(
                    pr,
                    Process {
                        op,
                        unique_process_key: 0xFFFF_FA80_0411_2233 & mask,
                        process_id: 1234,
                        parent_id: 567,
                        session_id: 1,
                        exit_status: 0x103,
                        directory_table_base: if version >= 3 {
                            0x1_2345_6000 & mask
                        } else {
                            0
                        },
                        flags: v4.then_some(0x10),
                        user_sid: "S-1-5-21-1-2-3-1001".into(),
                        image_file_name: "svchost.exe".into(),
                        command_line: "svchost.exe -k netsvcs".into(),
                        package_full_name: if v4 {
                            "Pkg_1.0_x64".into()
                        } else {
                            String::new()
                        },
                        application_id: if v4 { "App".into() } else { String::new() },
                    },
                    "v{version} ps{ps}"
                );
            }
        }
    }
}

#[test]
fn process_without_sid() {
    let p = process_payload(8, 4, false, "");
    let KernelEvent::Process(pr) = ok(&kernel(0x03, 3, 4, 8, &p)) else {
        panic!()
    };
    assert_eq!(pr.user_sid, "");
    assert_eq!(pr.image_file_name, "svchost.exe");
    assert_eq!(pr.application_id, "App");
}

#[test]
fn process_truncation_and_terminators() {
    for ps in [4u8, 8] {
        for version in [2u8, 3, 4] {
            let p = process_payload(ps, version, true, "cmd");
            // Up to and including the image name, every cut is an error.
            let name_end = p.windows(12).position(|w| w == b"svchost.exe\0").unwrap() + 12;
            every_prefix_fails(0x03, 1, version, ps, &p[..name_end]);
            // The image name without its NUL can't be delimited.
            let e = err(&kernel(0x03, 1, version, ps, &p[..name_end - 1]));
            assert!(e.reason.contains("ImageFileName"), "{e}");
            assert!(e.reason.starts_with(&format!("version {version}:")), "{e}");
            assert_eq!(e.what, "Process/Start");
        }
        // V2/V3: the command line is last, a missing terminator is tolerated.
        let p = process_payload(ps, 3, true, "cmd");
        let KernelEvent::Process(pr) = ok(&kernel(0x03, 1, 3, ps, &p[..p.len() - 2])) else {
            panic!()
        };
        assert_eq!(pr.command_line, "cmd");
        // V4: CommandLine and PackageFullName must be terminated.
        let p = process_payload(ps, 4, true, "cmd");
        let cut = p.len() - "App".len() * 2 - 2 - 2;
        let e = err(&kernel(0x03, 1, 4, ps, &p[..cut]));
        assert!(e.reason.contains("PackageFullName"), "{e}");
    }
}

#[test]
fn process_hostile_sid() {
    let mut p = process_payload(8, 3, true, "x");
    // SubAuthorityCount sits right after TOKEN_USER: key 8 + 16 + DTB 8 + 16 + 1.
    let at = 8 + 16 + 8 + 16 + 1;
    assert_eq!(p[at], 5);
    for count in [16u8, 200, 255] {
        p[at] = count;
        let e = err(&kernel(0x03, 3, 3, 8, &p));
        assert!(e.reason.contains("sub-authorities"), "{e}");
    }
    // A count within the limit but past the payload's end.
    p[at] = 15;
    let e = err(&kernel(0x03, 3, 3, 8, &p[..at + 7 + 20]));
    assert!(e.reason.contains("SubAuthority"), "{e}");
}

#[test]
fn old_versions_are_errors() {
    let p = [0u8; 128];
    for (g, o) in [(0x03, 1), (0x05, 1), (0x14, 10), (0x03, 10)] {
        let e = err(&kernel(g, o, 1, 8, &p));
        assert!(e.reason.contains("not supported"), "{e}");
    }
}

fn thread_payload(ps: u8, version: u8) -> Vec<u8> {
    let mut p = P::new(ps)
        .u32(3988)
        .u32(3780)
        .ptr(0xA000)
        .ptr(0x9000)
        .ptr(0x7000)
        .ptr(0x6000)
        .ptr(if version == 2 { 0x7FFE_0000 } else { 0xFF })
        .ptr(0x7FFD_1234)
        .ptr(0x7EFD_D000)
        .u32(0);
    if version >= 3 {
        p = p.bytes(&[8, 5, 2, 0]);
    }
    if version >= 4 {
        p = p.utf16z("worker");
    }
    p.b
}

#[test]
fn thread_every_version_both_pointer_sizes() {
    for ps in [4u8, 8] {
        for version in [2u8, 3, 4] {
            let p = thread_payload(ps, version);
            assert_eq!(
                p.len(),
                12 + 7 * usize::from(ps)
                    + if version >= 3 { 4 } else { 0 }
                    + if version >= 4 { 14 } else { 0 }
            );
            for (opcode, op) in [
                (1, Lifecycle::Start),
                (2, Lifecycle::End),
                (3, Lifecycle::DcStart),
                (4, Lifecycle::DcEnd),
            ] {
                let e = ok(&kernel(0x05, opcode, version, ps, &p));
                assert_eq!(
                    e,
                    KernelEvent::Thread(Thread {
                        op,
                        process_id: 3988,
                        thread_id: 3780,
                        stack_base: 0xA000,
                        stack_limit: 0x9000,
                        user_stack_base: 0x7000,
                        user_stack_limit: 0x6000,
                        start_addr: if version == 2 { 0x7FFE_0000 } else { 0 },
                        win32_start_addr: 0x7FFD_1234,
                        teb_base: 0x7EFD_D000,
                    })
                );
            }
            let fixed = 12 + 7 * usize::from(ps);
            every_prefix_fails(0x05, 1, version, ps, &p[..fixed]);
        }
    }
}

fn image_payload(ps: u8, name: &str) -> Vec<u8> {
    P::new(ps)
        .ptr(0x7FF8_0000)
        .ptr(0x1B_0000)
        .u32(3676)
        .u32(0x001B_8C93)
        .u32(0x5010_88C7)
        .u32(0)
        .ptr(0x7FF8_0000)
        .bytes(&[0; 16])
        .utf16z(name)
        .b
}

#[test]
fn image_every_opcode_both_hooks_and_pointer_sizes() {
    let name = r"\Windows\System32\combase.dll";
    for ps in [4u8, 8] {
        let p = image_payload(ps, name);
        assert_eq!(p.len(), 32 + 3 * usize::from(ps) + 2 * name.len() + 2);
        for version in [2u8, 3] {
            for (group, opcode, op) in [
                (0x03, 10, Lifecycle::Start),
                (0x14, 10, Lifecycle::Start),
                (0x14, 2, Lifecycle::End),
                (0x14, 3, Lifecycle::DcStart),
                (0x14, 4, Lifecycle::DcEnd),
            ] {
                assert_eq!(
                    ok(&kernel(group, opcode, version, ps, &p)),
                    KernelEvent::Image(Image {
                        op,
                        image_base: 0x7FF8_0000,
                        image_size: 0x1B_0000,
                        process_id: 3676,
                        image_checksum: 0x001B_8C93,
                        time_date_stamp: 0x5010_88C7,
                        default_base: 0x7FF8_0000,
                        file_name: name.into(),
                    })
                );
            }
        }
        let fixed = 16 + 3 * usize::from(ps) + 16;
        every_prefix_fails(0x14, 3, 2, ps, &p[..fixed]);
        // FileName is last: no terminator, or a dangling odd byte, is tolerated.
        let KernelEvent::Image(i) = ok(&kernel(0x14, 3, 2, ps, &p[..p.len() - 3])) else {
            panic!()
        };
        assert_eq!(i.file_name, &name[..name.len() - 1]);
        // Tail bytes of a newer version are ignored.
        let mut longer = p.clone();
        longer.extend_from_slice(&[1, 2, 3, 4, 5]);
        let KernelEvent::Image(i) = ok(&kernel(0x14, 3, 4, ps, &longer)) else {
            panic!()
        };
        assert_eq!(i.file_name, name);
    }
}

#[test]
fn event_trace_header() {
    for ps in [4u32, 8] {
        let mut p = vec![0u8; LogfileHeader::fixed_size(ps)];
        p[0..4].copy_from_slice(&0x1_0000u32.to_le_bytes());
        p[44..48].copy_from_slice(&ps.to_le_bytes());
        let KernelEvent::EventTraceHeader(h) = ok(&kernel(0x00, 0, 2, 8, &p)) else {
            panic!()
        };
        assert_eq!(h.pointer_size, ps);
        assert_eq!(h.buffer_size, 0x1_0000);
        let e = err(&kernel(0x00, 0, 2, 8, &p[..60]));
        assert_eq!(e.what, "EventTrace/Header");
        assert!(e.reason.contains("needs at least"), "{e}");
    }
}

#[test]
fn names_cover_every_variant() {
    let mut names: Vec<&str> = (0..=255u8)
        .flat_map(|o| {
            KernelClass::KNOWN
                .into_iter()
                .chain([KernelClass::Other(0x0A)])
                .filter_map(move |c| event_name(c, o))
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 22, "{names:?}");
}
