//! `syscall-sentry dump FILE`: events as JSON lines, in time order (as
//! `ProcessTrace` delivers them) unless `--file-order`.
//!
//! One object per event: raw and UTC timestamp, processor, pid, tid, header
//! kind, id, version, payload length (and hex with `--payload`), file offset,
//! and `decoded` for the kernel events `sentry-kernel` decodes (or
//! `decode_error`).

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use sentry_etl::{EtlFile, Order};
use sentry_kernel::{KernelEvent, Lifecycle, StackKeyOp, StackPart};
use sentry_raw::{filetime_to_rfc3339, EventId, Guid, KernelClass, RawEvent};
use serde_json::{json, Map, Value};

use super::stats::{class_name, event_name, Progress};

#[derive(clap::Args)]
pub struct Args {
    /// The .etl file.
    pub file: PathBuf,
    /// Only kernel events of this class: EventTrace, Process, Thread,
    /// PerfInfo, Image (includes hook 0x030A), StackWalk.
    #[arg(long, value_name = "CLASS")]
    pub kernel_class: Option<String>,
    /// Only kernel events of this hook group (decimal or 0x hex).
    #[arg(long, value_parser = parse_u8)]
    pub group: Option<u8>,
    /// Only events with this opcode (decimal or 0x hex).
    #[arg(long, value_parser = parse_u8)]
    pub opcode: Option<u8>,
    /// Only events whose header pid, or decoded process id, is this.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Only events of this provider / class GUID.
    #[arg(long, value_name = "GUID")]
    pub provider: Option<Guid>,
    /// Stop after this many events printed.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Include the payload as hex.
    #[arg(long)]
    pub payload: bool,
    /// File order instead of time order (faster; timestamps interleave).
    #[arg(long)]
    pub file_order: bool,
}

fn parse_u8(s: &str) -> Result<u8, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u8::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("`{s}`: {e}"))
}

fn parse_class(s: &str) -> anyhow::Result<KernelClass> {
    KernelClass::KNOWN
        .into_iter()
        .find(|c| format!("{c:?}").eq_ignore_ascii_case(s))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "unknown kernel class `{s}` (EventTrace, Process, Thread, PerfInfo, Image, StackWalk)"
            )
        })
}

struct Filter {
    class: Option<KernelClass>,
    group: Option<u8>,
    opcode: Option<u8>,
    pid: Option<u32>,
    provider: Option<Guid>,
}

impl Filter {
    /// Header-level test; the pid test is done after decoding.
    fn header_matches(&self, ev: &RawEvent<'_>) -> bool {
        if let Some(c) = self.class {
            if ev.kernel_class() != Some(c) {
                return false;
            }
        }
        if let Some(g) = self.group {
            if !matches!(ev.id, EventId::Kernel { group, .. } if group == g) {
                return false;
            }
        }
        if let Some(o) = self.opcode {
            if ev.id.opcode() != o {
                return false;
            }
        }
        if let Some(p) = self.provider {
            let id = match ev.id {
                EventId::Classic { guid, .. } => Some(guid),
                EventId::Manifest { provider, .. } => Some(provider),
                EventId::Kernel { .. } => ev.kernel_class().and_then(|c| c.guid()),
            };
            if id != Some(p) {
                return false;
            }
        }
        true
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let file = EtlFile::open(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let filter = Filter {
        class: args.kernel_class.as_deref().map(parse_class).transpose()?,
        group: args.group,
        opcode: args.opcode,
        pid: args.pid,
        provider: args.provider,
    };
    let clock = file.clock();
    let order = if args.file_order {
        Order::File
    } else {
        Order::Time
    };
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let progress = Progress::new(file.len(), false);
    let mut printed = 0u64;
    let mut seen = 0u64;
    let mut furthest = 0u64;
    let mut events = file.events(order);
    while let Some(ev) = events.next_event() {
        seen += 1;
        furthest = furthest.max(ev.offset);
        if seen & 0xFFF == 0 {
            progress.set(furthest);
        }
        if args.limit.is_some_and(|l| printed >= l) {
            break;
        }
        if !filter.header_matches(&ev) {
            continue;
        }
        let decoded = sentry_kernel::decode(&ev);
        if let Some(p) = filter.pid {
            let decoded_pid = match &decoded {
                Ok(Some(k)) => process_of(k),
                _ => None,
            };
            if ev.pid != Some(p) && decoded_pid != Some(p) {
                continue;
            }
        }
        let mut line = event_json(&ev, clock.to_filetime(ev.timestamp), args.payload);
        match decoded {
            Ok(Some(k)) => {
                line.insert("decoded".into(), kernel_json(&k));
            }
            Ok(None) => {}
            Err(e) => {
                line.insert("decode_error".into(), json!(e.to_string()));
            }
        }
        let write = serde_json::to_writer(&mut out, &Value::Object(line))
            .map_err(std::io::Error::from)
            .and_then(|()| out.write_all(b"\n"));
        if let Err(e) = write {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(e.into());
        }
        printed += 1;
    }
    progress.finish();
    let diag = events.into_diagnostics();
    match out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
        r => r?,
    }
    if diag.error_count > 0 {
        eprintln!(
            "syscall-sentry: {} read errors (skipped {} buffers, {} buffer tails); first: {}",
            diag.error_count,
            diag.skipped_buffers,
            diag.abandoned_buffer_tails,
            diag.errors
                .first()
                .map(|e| e.to_string())
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

/// The header part of a dump line.
pub fn event_json(ev: &RawEvent<'_>, filetime: i64, payload: bool) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("ts".into(), json!(ev.timestamp));
    m.insert("utc".into(), json!(filetime_to_rfc3339(filetime)));
    m.insert("processor".into(), json!(ev.processor));
    m.insert("pid".into(), json!(ev.pid));
    m.insert("tid".into(), json!(ev.tid));
    m.insert("header".into(), json!(ev.header.name()));
    let id = match ev.id {
        EventId::Kernel { group, opcode } => json!({
            "kind": "kernel",
            "group": group,
            "opcode": opcode,
            "hook": format!("{:#06x}", (u16::from(group) << 8) | u16::from(opcode)),
            "class": class_name(group, opcode),
            "event": event_name(group, opcode),
        }),
        EventId::Classic { guid, opcode } => json!({
            "kind": "classic",
            "guid": guid.to_string(),
            "opcode": opcode,
        }),
        EventId::Manifest {
            provider,
            id,
            version,
            channel,
            level,
            opcode,
            task,
            keyword,
        } => json!({
            "kind": "manifest",
            "provider": provider.to_string(),
            "id": id,
            "version": version,
            "channel": channel,
            "level": level,
            "opcode": opcode,
            "task": task,
            "keyword": format!("{keyword:#x}"),
        }),
    };
    m.insert("id".into(), id);
    m.insert("version".into(), json!(ev.version));
    m.insert("pointer_size".into(), json!(ev.pointer_size));
    m.insert("payload_len".into(), json!(ev.payload.len()));
    if payload {
        m.insert("payload".into(), json!(hex(ev.payload)));
    }
    if !ev.extended.is_empty() {
        let items: Vec<Value> = ev
            .extended
            .items()
            .map(|i| match i.stack_trace() {
                Some((match_id, frames)) => json!({
                    "ext_type": i.ext_type,
                    "match_id": match_id,
                    "frames": frames.map(|f| format!("{f:#x}")).collect::<Vec<_>>(),
                }),
                None => json!({"ext_type": i.ext_type, "data": hex(i.data)}),
            })
            .collect();
        m.insert("extended".into(), json!(items));
    }
    m.insert("offset".into(), json!(ev.offset));
    m
}

/// The process a decoded event is about, for `--pid`.
fn process_of(k: &KernelEvent<'_>) -> Option<u32> {
    match k {
        KernelEvent::StackWalk(s) => Some(s.stack_process),
        KernelEvent::StackKeyReference(s) => Some(s.stack_process),
        KernelEvent::Process(p) => Some(p.process_id),
        KernelEvent::Thread(t) => Some(t.process_id),
        KernelEvent::Image(i) => Some(i.process_id),
        _ => None,
    }
}

fn lifecycle(l: Lifecycle) -> &'static str {
    match l {
        Lifecycle::Start => "start",
        Lifecycle::End => "end",
        Lifecycle::DcStart => "dc_start",
        Lifecycle::DcEnd => "dc_end",
        Lifecycle::Defunct => "defunct",
    }
}

fn addr(a: u64) -> Value {
    json!(format!("{a:#x}"))
}

/// JSON of a decoded kernel event (by matching the enum, so the kernel
/// types need no serde).
pub fn kernel_json(k: &KernelEvent<'_>) -> Value {
    match k {
        KernelEvent::SysCallEnter(s) => json!({
            "type": "SysCallEnter",
            "sys_call_address": addr(s.sys_call_address),
        }),
        KernelEvent::SysCallExit(s) => json!({
            "type": "SysCallExit",
            "sys_call_ntstatus": format!("{:#010x}", s.sys_call_ntstatus),
        }),
        KernelEvent::StackWalk(s) => json!({
            "type": "StackWalk",
            "event_timestamp": s.event_timestamp,
            "stack_process": s.stack_process,
            "stack_thread": s.stack_thread,
            "frames": s.frames.iter().map(addr).collect::<Vec<_>>(),
        }),
        KernelEvent::StackKeyDefinition(s) => json!({
            "type": "StackKeyDefinition",
            "op": match s.op {
                StackKeyOp::Create => "create",
                StackKeyOp::Delete => "delete",
                StackKeyOp::Rundown => "rundown",
            },
            "stack_key": addr(s.stack_key),
            "frames": s.frames.iter().map(addr).collect::<Vec<_>>(),
        }),
        KernelEvent::StackKeyReference(s) => json!({
            "type": "StackKeyReference",
            "part": match s.part {
                StackPart::Kernel => "kernel",
                StackPart::User => "user",
            },
            "event_timestamp": s.event_timestamp,
            "stack_process": s.stack_process,
            "stack_thread": s.stack_thread,
            "stack_key": addr(s.stack_key),
        }),
        KernelEvent::Process(p) => json!({
            "type": "Process",
            "op": lifecycle(p.op),
            "unique_process_key": addr(p.unique_process_key),
            "process_id": p.process_id,
            "parent_id": p.parent_id,
            "session_id": p.session_id,
            "exit_status": p.exit_status,
            "directory_table_base": addr(p.directory_table_base),
            "flags": p.flags,
            "user_sid": p.user_sid,
            "image_file_name": p.image_file_name,
            "command_line": p.command_line,
            "package_full_name": p.package_full_name,
            "application_id": p.application_id,
        }),
        KernelEvent::Thread(t) => json!({
            "type": "Thread",
            "op": lifecycle(t.op),
            "process_id": t.process_id,
            "thread_id": t.thread_id,
            "stack_base": addr(t.stack_base),
            "stack_limit": addr(t.stack_limit),
            "user_stack_base": addr(t.user_stack_base),
            "user_stack_limit": addr(t.user_stack_limit),
            "start_addr": addr(t.start_addr),
            "win32_start_addr": addr(t.win32_start_addr),
            "teb_base": addr(t.teb_base),
        }),
        KernelEvent::Image(i) => json!({
            "type": "Image",
            "op": lifecycle(i.op),
            "image_base": addr(i.image_base),
            "image_size": addr(i.image_size),
            "process_id": i.process_id,
            "image_checksum": format!("{:#x}", i.image_checksum),
            "time_date_stamp": format!("{:#x}", i.time_date_stamp),
            "default_base": addr(i.default_base),
            "file_name": i.file_name,
        }),
        KernelEvent::EventTraceHeader(h) => json!({
            "type": "EventTraceHeader",
            "os_version": sentry_engine::report::os_version(h),
            "build": h.provider_version & 0xFFFF,
            "number_of_processors": h.number_of_processors,
            "pointer_size": h.pointer_size,
            "perf_freq": h.perf_freq,
            "clock_type": h.clock_type,
            "start_utc": filetime_to_rfc3339(h.start_time),
            "end_utc": filetime_to_rfc3339(h.end_time),
            "events_lost": h.events_lost,
            "buffers_lost": h.buffers_lost,
            "logger_name": h.logger_name,
            "log_file_name": h.log_file_name,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stackwalk_line_has_header_and_decoded_fields() {
        let etl = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/corpus/win7-x64-kernel-stacks.etl");
        let file = EtlFile::open(&etl).unwrap();
        let filter = Filter {
            class: Some(parse_class("stackwalk").unwrap()),
            group: None,
            opcode: Some(32),
            pid: None,
            provider: None,
        };
        let mut r = file.events(Order::File);
        let ev = loop {
            let ev = r.next_event().expect("a StackWalk event");
            if filter.header_matches(&ev) {
                break ev;
            }
        };
        let line = Value::Object(event_json(
            &ev,
            file.clock().to_filetime(ev.timestamp),
            true,
        ));
        assert_eq!(line["header"], "PERFINFO64");
        assert_eq!(line["id"]["hook"], "0x1820");
        assert_eq!(line["pid"], Value::Null);
        assert_eq!(line["payload_len"], 24);
        assert_eq!(line["payload"].as_str().unwrap().len(), 48);
        // The golden file's first example: EventTimeStamp 737398883714.
        assert_eq!(&line["payload"].as_str().unwrap()[..16], "820566b0ab000000");
        if let Ok(Some(k)) = sentry_kernel::decode(&ev) {
            let d = kernel_json(&k);
            assert_eq!(d["stack_process"], 1876);
            assert_eq!(d["frames"][0], "0xfffff8000268f318");
        }
        assert!(parse_class("nope").is_err());
        assert_eq!(parse_u8("0x18"), Ok(24));
    }
}
