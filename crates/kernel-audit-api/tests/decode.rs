//! Decoding against payloads laid out by hand from the manifests' templates
//! (not through `encode`), the encoder's inverse property, and hostile
//! input.

use proptest::prelude::*;
use sentry_kernel_audit_api::{decode, AuditApi, AuditEvent, CallStack, Utf16, PROVIDER};
use sentry_raw::{ext_type, EventId, ExtendedData, Guid, HeaderKind, RawEvent};

fn raw<'a>(id: u16, version: u8, ps: u8, payload: &'a [u8], ext: &'a [u8]) -> RawEvent<'a> {
    raw_from(PROVIDER, id, version, ps, payload, ext)
}

fn raw_from<'a>(
    provider: Guid,
    id: u16,
    version: u8,
    ps: u8,
    payload: &'a [u8],
    ext: &'a [u8],
) -> RawEvent<'a> {
    RawEvent {
        header: if ps == 4 {
            HeaderKind::EventHeader32
        } else {
            HeaderKind::EventHeader64
        },
        id: EventId::Manifest {
            provider,
            id,
            version,
            channel: 0,
            level: 4,
            opcode: 0,
            task: 0,
            keyword: 0,
        },
        version,
        pid: Some(4242),
        tid: Some(4343),
        processor: 0,
        timestamp: 1,
        pointer_size: ps,
        payload,
        extended: ExtendedData(ext),
        offset: 0x1234,
    }
}

fn le(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn wide(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .chain([0, 0])
        .collect()
}

#[test]
fn open_process_v0() {
    // TargetProcessId 0x2c8 (712), DesiredAccess 0x1410, ReturnCode 0.
    let p = le(&[
        &712u32.to_le_bytes(),
        &0x1410u32.to_le_bytes(),
        &0u32.to_le_bytes(),
    ]);
    let e = decode(&raw(5, 0, 8, &p, &[])).unwrap().unwrap();
    assert_eq!(e.api, AuditApi::OpenProcess);
    assert_eq!(e.target(), Some((712, None)));
    assert_eq!(e.desired_access.unwrap().0, 0x1410);
    assert_eq!(e.return_code.0, 0);
}

#[test]
fn open_thread_v0_both_pointer_sizes() {
    let p = le(&[
        &712u32.to_le_bytes(),
        &716u32.to_le_bytes(),
        &0x0010u32.to_le_bytes(),
        &0xC000_0022u32.to_le_bytes(),
    ]);
    for ps in [4, 8] {
        let e = decode(&raw(6, 0, ps, &p, &[])).unwrap().unwrap();
        assert_eq!(e.target(), Some((712, Some(716))));
        assert_eq!(e.desired_access.unwrap().0, 0x10);
        assert!(!e.return_code.is_success());
    }
}

#[test]
fn load_image_notify_pointer_follows_the_pointer_size() {
    let p64 = le(&[&0xffff_f806_1234_5678u64.to_le_bytes(), &0u32.to_le_bytes()]);
    let e = decode(&raw(1, 0, 8, &p64, &[])).unwrap().unwrap();
    assert_eq!(e.notify_routine, Some(0xffff_f806_1234_5678));
    let p32 = le(&[&0x8123_4567u32.to_le_bytes(), &5u32.to_le_bytes()]);
    let e = decode(&raw(1, 0, 4, &p32, &[])).unwrap().unwrap();
    assert_eq!(e.notify_routine, Some(0x8123_4567));
    assert_eq!(e.return_code.0, 5);
    // The 64-bit layout does not fit 8 bytes.
    assert!(decode(&raw(1, 0, 8, &p32, &[])).is_err());
}

#[test]
fn terminate_process_versions() {
    let v0 = le(&[&900u32.to_le_bytes(), &0u32.to_le_bytes()]);
    let e = decode(&raw(2, 0, 8, &v0, &[])).unwrap().unwrap();
    assert_eq!((e.target_pid, e.target_start_key), (Some(900), None));
    let v1 = le(&[
        &v0,
        &0x0000_0001_0000_0042u64.to_le_bytes(),
        &133_540_758_110_000_000i64.to_le_bytes(),
    ]);
    let e = decode(&raw(2, 1, 8, &v1, &[])).unwrap().unwrap();
    assert_eq!(e.target_start_key, Some(0x1_0000_0042));
    assert_eq!(e.target_creation_time, Some(133_540_758_110_000_000));
    // Version 1 announced but the v1 fields missing: an error naming them.
    let err = decode(&raw(2, 1, 8, &v0, &[])).unwrap_err();
    assert!(err.to_string().contains("TargetProcessStartKey"), "{err}");
    assert!(err.to_string().contains("0x1234"), "{err}");
    // A newer version decodes with the v1 layout, extra bytes ignored.
    let v3 = le(&[&v1, &[0xAA; 12]]);
    let e = decode(&raw(2, 3, 8, &v3, &[])).unwrap().unwrap();
    assert_eq!((e.version, e.target_start_key), (3, Some(0x1_0000_0042)));
}

#[test]
fn symbolic_link_strings_are_nul_terminated_utf16() {
    let p = le(&[
        &wide("\\??\\Global\\x"),
        &wide("\\Device\\HarddiskVolume3"),
        &0x000F_0001u32.to_le_bytes(),
        &0u32.to_le_bytes(),
    ]);
    let e = decode(&raw(3, 0, 8, &p, &[])).unwrap().unwrap();
    assert_eq!(e.link_source.unwrap().to_string_lossy(), "\\??\\Global\\x");
    assert_eq!(
        e.link_target.unwrap().to_string_lossy(),
        "\\Device\\HarddiskVolume3"
    );
    assert_eq!(e.desired_access.unwrap().0, 0x000F_0001);
}

#[test]
fn shutdown_notifications_and_set_context() {
    let p = le(&[&wide("\\Driver\\foo"), &0u32.to_le_bytes()]);
    for id in [7, 8] {
        let e = decode(&raw(id, 0, 8, &p, &[])).unwrap().unwrap();
        assert_eq!(e.driver_name.unwrap().to_string_lossy(), "\\Driver\\foo");
    }
    let rc = 0xC000_0008u32.to_le_bytes();
    let e = decode(&raw(4, 0, 4, &rc, &[])).unwrap().unwrap();
    assert_eq!(e.api, AuditApi::SetContextThread);
    assert_eq!(e.return_code.0, 0xC000_0008);
}

#[test]
fn other_providers_and_unknown_ids_are_not_decoded() {
    let p = [0u8; 16];
    assert!(decode(&raw(9, 0, 8, &p, &[])).unwrap().is_none());
    let other = Guid::from_u128(0x22fb2cd6_0e7b_422b_a0c7_2fad1fd0e716);
    assert!(decode(&raw_from(other, 5, 0, 8, &p, &[]))
        .unwrap()
        .is_none());
}

#[test]
fn short_payloads_name_the_missing_field_and_the_offset() {
    let err = decode(&raw(5, 0, 8, &[1, 0, 0, 0, 2, 0], &[])).unwrap_err();
    let s = err.to_string();
    assert!(s.contains("event 5 v0 at offset 0x1234"), "{s}");
    assert!(s.contains("DesiredAccess needs 4 bytes at offset 4"), "{s}");
}

/// One extended item as an `.etl` buffer holds it.
fn item(t: u16, data: &[u8], more: bool) -> Vec<u8> {
    let size = (8 + data.len()).div_ceil(8) * 8;
    let mut b = Vec::new();
    b.extend_from_slice(&(size as u16).to_le_bytes());
    b.extend_from_slice(&t.to_le_bytes());
    b.extend_from_slice(&u16::from(more).to_le_bytes());
    b.extend_from_slice(&(data.len() as u16).to_le_bytes());
    b.extend_from_slice(data);
    b.resize(size, 0);
    b
}

#[test]
fn stack_items_of_both_widths_with_match_id() {
    let mut d64 = 0u64.to_le_bytes().to_vec();
    for a in [0xffff_f800_0040_b3b5u64, 0x7ffa_1b2c_0014] {
        d64.extend_from_slice(&a.to_le_bytes());
    }
    // A SID item first, then the stack: the stack is found past it.
    let sid = item(ext_type::SID, &[1, 1, 0, 0, 0, 0, 0, 5, 18, 0, 0, 0], true);
    let st = item(ext_type::STACK_TRACE64, &d64, false);
    let ext = le(&[&sid, &st]);
    let p = [0u8; 12];
    let ev = raw(5, 0, 8, &p, &ext);
    let s = CallStack::of(&ev).unwrap();
    assert_eq!((s.match_id, s.width, s.len()), (0, 8, 2));
    assert_eq!(
        s.frames().collect::<Vec<_>>(),
        vec![0xffff_f800_0040_b3b5, 0x7ffa_1b2c_0014]
    );
    // 32-bit: three 4-byte addresses (item padded to 8), match id 7.
    let mut d32 = 7u64.to_le_bytes().to_vec();
    for a in [0x8240_b3b5u32, 0x77a1_0014, 0x0040_1234] {
        d32.extend_from_slice(&a.to_le_bytes());
    }
    let ext = item(ext_type::STACK_TRACE32, &d32, false);
    let ev = raw(5, 0, 4, &p, &ext);
    let s = CallStack::of(&ev).unwrap();
    assert_eq!((s.match_id, s.width), (7, 4));
    assert_eq!(
        s.frames().collect::<Vec<_>>(),
        vec![0x8240_b3b5, 0x77a1_0014, 0x0040_1234]
    );
    assert!(CallStack::of(&raw(5, 0, 8, &p, &[])).is_none());
}

fn any_event() -> impl Strategy<Value = (AuditApi, u8, [u32; 4], u64, u64, String, String)> {
    (
        0usize..8,
        0u8..3,
        any::<[u32; 4]>(),
        any::<u64>(),
        any::<u64>(),
        "[a-zA-Z0-9\\\\ é€😀]{0,20}",
        "[a-zA-Z0-9\\\\ ]{0,20}",
    )
        .prop_map(|(i, v, w, a, b, s, t)| (AuditApi::ALL[i], v, w, a, b, s, t))
}

proptest! {
    /// decode(encode(e)) == e for every id, version and pointer size, and
    /// bytes appended after the payload change nothing.
    #[test]
    fn encode_then_decode_is_identity(
        (api, version, w, a, b, s, t) in any_event(),
        ps in prop_oneof![Just(4u8), Just(8u8)],
        tail in proptest::collection::vec(any::<u8>(), 0..24),
    ) {
        let (ws, wt) = (wide(&s), wide(&t));
        let (ws, wt) = (&ws[..ws.len() - 2], &wt[..wt.len() - 2]);
        let mut e = AuditEvent::new(api, w[3]);
        e.version = version;
        match api {
            AuditApi::LoadImageNotifyRoutine => {
                e.notify_routine = Some(if ps == 4 { a & 0xFFFF_FFFF } else { a })
            }
            AuditApi::TerminateProcess => {
                e.target_pid = Some(w[0]);
                if version >= 1 {
                    e.target_start_key = Some(a);
                    e.target_creation_time = Some(b as i64);
                }
            }
            AuditApi::CreateSymbolicLinkObject => {
                e.link_source = Some(Utf16(ws));
                e.link_target = Some(Utf16(wt));
                e.desired_access = Some(sentry_kernel_audit_api::AccessMask(w[2]));
            }
            AuditApi::SetContextThread => {}
            AuditApi::OpenProcess => {
                e.target_pid = Some(w[0]);
                e.desired_access = Some(sentry_kernel_audit_api::AccessMask(w[2]));
            }
            AuditApi::OpenThread => {
                e.target_pid = Some(w[0]);
                e.target_tid = Some(w[1]);
                e.desired_access = Some(sentry_kernel_audit_api::AccessMask(w[2]));
            }
            AuditApi::LastChanceShutdownNotification | AuditApi::ShutdownNotification => {
                e.driver_name = Some(Utf16(ws));
            }
        }
        let mut p = Vec::new();
        e.encode(ps, &mut p);
        let got = decode(&raw(api.id(), version, ps, &p, &[])).unwrap().unwrap();
        prop_assert_eq!(got, e);
        p.extend_from_slice(&tail);
        let got = decode(&raw(api.id(), version, ps, &p, &[])).unwrap().unwrap();
        prop_assert_eq!(got, e);
        // Every strict prefix of a fixed-layout payload is an error.
        if !matches!(api, AuditApi::CreateSymbolicLinkObject | AuditApi::LastChanceShutdownNotification | AuditApi::ShutdownNotification) {
            let mut q = Vec::new();
            e.encode(ps, &mut q);
            for n in 0..q.len() {
                prop_assert!(decode(&raw(api.id(), version, ps, &q[..n], &[])).is_err());
            }
        }
    }

    /// Hostile payloads, extended data, versions and pointer sizes never panic.
    #[test]
    fn never_panics(
        id in 0u16..12,
        version in any::<u8>(),
        ps in any::<u8>(),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        ext in proptest::collection::vec(any::<u8>(), 0..96),
    ) {
        let ev = raw(id, version, ps, &payload, &ext);
        let _ = decode(&ev);
        if let Some(s) = CallStack::of(&ev) {
            prop_assert!(s.frames().count() == s.len());
            prop_assert!(s.width == 4 || s.width == 8);
        }
    }
}
