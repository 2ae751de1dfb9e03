//! Layout reference: the writer's payload encoders and the synth's header
//! choices against real NT Kernel Logger traces (the corpus).
//!
//! 1. Every Process, Thread, Image, StackWalk and stack-key event of the
//!    Windows 7, 8 and 10 corpus traces, decoded and re-encoded with the
//!    writer's encoders, gives back the real payload byte for byte (fields
//!    the decoders drop are taken from the real bytes at their documented
//!    offsets).
//! 2. Every (event, header kind, version) the synth writes occurs in the
//!    Windows 10 / 8 corpus traces (SysCallEnter/Exit, absent from every
//!    public trace, use SampledProfile's PERFINFO64 v2).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::PathBuf;

use sentry_etl::{EtlFile, Order};
use sentry_etl_writer::payload::{self, ImagePayload, ProcessPayload, ThreadPayload};
use sentry_kernel::{decode, KernelEvent, StackPart};
use sentry_raw::{EventId, HeaderKind};
use sentry_synth::{generate, Options, Scenario};

fn corpus(name: &str) -> EtlFile {
    let dir = std::env::var_os("SENTRY_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus")
        });
    let p = dir.join(format!("{name}.etl"));
    EtlFile::open(&p).unwrap_or_else(|e| panic!("corpus trace {p:?} (set SENTRY_CORPUS): {e}"))
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn ptr_at(b: &[u8], o: usize, ps: u8) -> u64 {
    if ps == 4 {
        u64::from(u32_at(b, o))
    } else {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }
}

/// Re-encodes a decoded event; `None` for kinds not covered.
fn reencode(k: &KernelEvent<'_>, raw: &[u8], version: u8, ps: u8) -> Option<Vec<u8>> {
    let p = usize::from(ps);
    let mut out = Vec::new();
    match k {
        KernelEvent::Process(d) => {
            if !(3..=4).contains(&version) {
                return None;
            }
            // UserSID starts after the fixed part; its pointer is not decoded.
            let sid_at = p + 16 + p + if version >= 4 { 4 } else { 0 };
            ProcessPayload {
                version,
                unique_process_key: d.unique_process_key,
                process_id: d.process_id,
                parent_id: d.parent_id,
                session_id: d.session_id,
                exit_status: d.exit_status,
                directory_table_base: d.directory_table_base,
                flags: d.flags.unwrap_or(0),
                user_sid: d.user_sid.clone(),
                sid_pointer: ptr_at(raw, sid_at, ps),
                sid_attributes: ptr_at(raw, sid_at + p, ps),
                image_file_name: d.image_file_name.clone(),
                command_line: d.command_line.clone(),
                package_full_name: d.package_full_name.clone(),
                application_id: d.application_id.clone(),
            }
            .encode(ps, &mut out);
        }
        KernelEvent::Thread(d) => {
            if version != 3 {
                return None;
            }
            let tail = 8 + 7 * p;
            ThreadPayload {
                process_id: d.process_id,
                thread_id: d.thread_id,
                stack_base: d.stack_base,
                stack_limit: d.stack_limit,
                user_stack_base: d.user_stack_base,
                user_stack_limit: d.user_stack_limit,
                affinity: ptr_at(raw, 8 + 4 * p, ps),
                win32_start_addr: d.win32_start_addr,
                teb_base: d.teb_base,
                sub_process_tag: u32_at(raw, tail),
                base_priority: raw[tail + 4],
                page_priority: raw[tail + 5],
                io_priority: raw[tail + 6],
                thread_flags: raw[tail + 7],
            }
            .encode(ps, &mut out);
        }
        KernelEvent::Image(d) => {
            if !(2..=3).contains(&version) {
                return None;
            }
            // Reserved1..4 must be zero for the encoder to match.
            ImagePayload {
                image_base: d.image_base,
                image_size: d.image_size,
                process_id: d.process_id,
                image_checksum: d.image_checksum,
                time_date_stamp: d.time_date_stamp,
                reserved0: u32_at(raw, 2 * p + 12),
                default_base: d.default_base,
                file_name: d.file_name.clone(),
            }
            .encode(ps, &mut out);
        }
        KernelEvent::StackWalk(s) => {
            let f: Vec<u64> = s.frames.iter().collect();
            payload::stack_walk(
                ps,
                s.event_timestamp,
                s.stack_process,
                s.stack_thread,
                &f,
                &mut out,
            );
        }
        KernelEvent::StackKeyReference(r) => {
            payload::stack_key_reference(
                ps,
                r.event_timestamp,
                r.stack_process,
                r.stack_thread,
                r.stack_key,
                &mut out,
            );
        }
        KernelEvent::StackKeyDefinition(d) => {
            let f: Vec<u64> = d.frames.iter().collect();
            payload::stack_key_definition(ps, d.stack_key, &f, &mut out);
        }
        _ => return None,
    }
    Some(out)
}

fn name(k: &KernelEvent<'_>) -> &'static str {
    match k {
        KernelEvent::Process(_) => "Process",
        KernelEvent::Thread(_) => "Thread",
        KernelEvent::Image(_) => "Image",
        KernelEvent::StackWalk(_) => "StackWalk",
        KernelEvent::StackKeyReference(r) if r.part == StackPart::Kernel => "StackKeyKernel",
        KernelEvent::StackKeyReference(_) => "StackKeyUser",
        KernelEvent::StackKeyDefinition(_) => "StackKeyDefinition",
        _ => "other",
    }
}

#[test]
fn encoders_reproduce_real_payloads_byte_for_byte() {
    let mut totals: BTreeMap<(&str, &str), (u64, u64)> = BTreeMap::new();
    for file in [
        "win10-x64-kernel-rundown",
        "win7-x64-kernel-stacks",
        "win8-x64-compressed-stackcache",
        "win8-wow64-compressed-stackcache",
    ] {
        let f = corpus(file);
        let mut r = f.events(Order::File);
        let mut mismatches = Vec::new();
        while let Some(ev) = r.next_event() {
            if !matches!(ev.id, EventId::Kernel { .. }) {
                continue;
            }
            let Ok(Some(k)) = decode(&ev) else { continue };
            let Some(mine) = reencode(&k, ev.payload, ev.version, ev.pointer_size) else {
                continue;
            };
            let e = totals.entry((file, name(&k))).or_default();
            e.0 += 1;
            if mine == ev.payload {
                e.1 += 1;
            } else if mismatches.len() < 5 {
                mismatches.push(format!(
                    "{} v{} at {:#x}:\n real {:02x?}\n mine {:02x?}",
                    name(&k),
                    ev.version,
                    ev.offset,
                    ev.payload,
                    mine
                ));
            }
        }
        for ((f, kind), (n, same)) in totals.iter().filter(|((f, _), _)| *f == file) {
            eprintln!("{f}: {kind}: {same} of {n} re-encode identically");
        }
        assert!(mismatches.is_empty(), "{file}:\n{}", mismatches.join("\n"));
    }
    // The corpus covers what the synth writes.
    let covered: BTreeSet<&str> = totals.keys().map(|k| k.1).collect();
    for k in [
        "Process",
        "Thread",
        "Image",
        "StackWalk",
        "StackKeyKernel",
        "StackKeyUser",
        "StackKeyDefinition",
    ] {
        assert!(covered.contains(k), "no {k} event in the corpus");
    }
}

/// (group, opcode, header kind, version) of every kernel event in a trace.
fn kinds(f: &EtlFile) -> BTreeSet<(u8, u8, HeaderKind, u8)> {
    let mut s = BTreeSet::new();
    let mut r = f.events(Order::File);
    while let Some(ev) = r.next_event() {
        if let EventId::Kernel { group, opcode } = ev.id {
            s.insert((group, opcode, ev.header, ev.version));
        }
    }
    s
}

#[test]
fn synth_uses_the_header_kinds_and_versions_of_real_traces() {
    let mut real = kinds(&corpus("win10-x64-kernel-rundown"));
    real.extend(kinds(&corpus("win8-x64-compressed-stackcache")));
    let o = Options {
        syscalls: 6000,
        stack_cache: false,
        ..Options::new(Scenario::Mixed)
    };
    let (etl, _) = generate(&o, Cursor::new(Vec::new()), None::<Vec<u8>>).unwrap();
    let mut mine = kinds(&EtlFile::from_bytes(etl.into_inner()).unwrap());
    let o = Options {
        stack_cache: true,
        ..o
    };
    let (etl, _) = generate(&o, Cursor::new(Vec::new()), None::<Vec<u8>>).unwrap();
    mine.extend(kinds(&EtlFile::from_bytes(etl.into_inner()).unwrap()));
    for &(g, op, h, v) in &mine {
        // No public trace has SysCallEnter/Exit; they are PerfInfo events
        // like SampledProfile (46).
        let (g2, op2) = if (g, op) == (0x0F, 51) || (g, op) == (0x0F, 52) {
            (0x0F, 46)
        } else {
            (g, op)
        };
        assert!(
            real.contains(&(g2, op2, h, v)),
            "synth writes group {g:#x} opcode {op} as {h} v{v}, no real trace does"
        );
    }
    for hook in [
        (0x03, 3),
        (0x03, 1),
        (0x05, 3),
        (0x05, 1),
        (0x03, 10),
        (0x14, 3),
        (0x18, 32),
        (0x18, 37),
        (0x18, 38),
        (0x0F, 51),
    ] {
        assert!(
            mine.iter().any(|k| (k.0, k.1) == hook),
            "synth never writes {hook:?}"
        );
    }
}
