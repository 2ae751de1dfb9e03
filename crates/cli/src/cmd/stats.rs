//! `syscall-sentry stats FILE [--json]`: what an `.etl` file holds.
//!
//! One pass in file order (the fast order: counts do not depend on it):
//! buffers, records, header kinds, kernel events per group/opcode with
//! their class names, provider events, lost events and buffers, the time
//! range in UTC, the logfile header, and what was skipped with the first
//! errors and their file offsets.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use sentry_etl::{buffer, EtlFile, Order};
use sentry_raw::{filetime_to_rfc3339, EventId};
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct Args {
    /// The .etl file.
    pub file: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Name of a kernel hook group (`EVENT_TRACE_GROUP_*` in the WDK's NTWMI.H).
pub fn group_name(group: u8) -> &'static str {
    const NAMES: [&str; 31] = [
        "EventTrace",
        "DiskIo",
        "PageFault",
        "Process",
        "FileIo",
        "Thread",
        "TcpIp",
        "Job",
        "UdpIp",
        "Registry",
        "DbgPrint",
        "SystemConfig",
        "Spare1",
        "Wnf",
        "Pool",
        "PerfInfo",
        "Heap",
        "Object",
        "Power",
        "Modbound",
        "Image",
        "Dpc",
        "CcCache",
        "CritSec",
        "StackWalk",
        "Ums",
        "Alpc",
        "SplitIo",
        "ThreadPool",
        "Hypervisor",
        "HypervisorX",
    ];
    NAMES.get(group as usize).copied().unwrap_or("Unknown")
}

/// Name of the kernel events syscall-sentry uses (MSNT_SystemTrace event
/// types); `None` for the others.
pub fn event_name(group: u8, opcode: u8) -> Option<&'static str> {
    Some(match (group, opcode) {
        (0x00, 0) => "Header",
        (0x00, 5) => "Extension",
        (0x00, 8) => "RundownComplete",
        (0x00, 32) => "EndExtension",
        (0x00, 80) => "PartitionInfoExtension",
        (0x03, 1) | (0x05, 1) => "Start",
        (0x03, 2) | (0x05, 2) => "End",
        (0x03, 3) | (0x05, 3) | (0x14, 3) => "DCStart",
        (0x03, 4) | (0x05, 4) | (0x14, 4) => "DCEnd",
        (0x03, 10) | (0x14, 10) => "ImageLoad",
        (0x03, 39) => "Defunct",
        (0x14, 2) => "Unload",
        (0x0F, 46) => "SampledProfile",
        (0x0F, 51) => "SysCallEnter",
        (0x0F, 52) => "SysCallExit",
        (0x18, 32) => "Stack",
        (0x18, 34) => "StackKeyCreate",
        (0x18, 35) => "StackKeyDelete",
        (0x18, 36) => "StackKeyRundown",
        (0x18, 37) => "StackKeyKernel",
        (0x18, 38) => "StackKeyUser",
        _ => return None,
    })
}

#[derive(Default)]
struct KernelCount {
    count: u64,
    headers: BTreeMap<&'static str, u64>,
}

/// Everything `stats` reports, gathered in one pass.
pub fn collect(file: &EtlFile) -> Value {
    let h = file.header();
    let clock = file.clock();
    let mut header_kinds: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut kernel: BTreeMap<(u8, u8), KernelCount> = BTreeMap::new();
    let mut providers: BTreeMap<String, u64> = BTreeMap::new();
    let mut first_ts = u64::MAX;
    let mut last_ts = 0u64;
    let progress = Progress::new(file.len(), false);
    let mut n = 0u64;
    let diag = file.for_each_event(Order::File, |ev| {
        n += 1;
        if n & 0xFFF == 0 {
            progress.set(ev.offset);
        }
        first_ts = first_ts.min(ev.timestamp);
        last_ts = last_ts.max(ev.timestamp);
        let kind = ev.header.name();
        *header_kinds.entry(kind).or_insert(0) += 1;
        match ev.id {
            EventId::Kernel { group, opcode } => {
                let k = kernel.entry((group, opcode)).or_default();
                k.count += 1;
                *k.headers.entry(kind).or_insert(0) += 1;
            }
            EventId::Classic { guid, opcode } => {
                *providers
                    .entry(format!("{guid} type={opcode} v={} [{kind}]", ev.version))
                    .or_insert(0) += 1;
            }
            EventId::Manifest {
                provider,
                id,
                version,
                opcode,
                ..
            } => {
                *providers
                    .entry(format!(
                        "{provider} id={id} v={version} op={opcode} [{kind}]"
                    ))
                    .or_insert(0) += 1;
            }
        }
        ControlFlow::Continue(())
    });
    progress.finish();

    let buffers_flagged = |flag: u16| {
        file.buffer_headers()
            .filter(|b| b.header.flags & flag != 0)
            .count()
    };
    let processors: std::collections::BTreeSet<u16> =
        file.buffer_headers().map(|b| b.header.processor).collect();

    let mut kernel_list: Vec<(&(u8, u8), &KernelCount)> = kernel.iter().collect();
    kernel_list.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
    let kernel_json: Vec<Value> = kernel_list
        .iter()
        .map(|((g, o), k)| {
            json!({
                "group": g,
                "opcode": o,
                "hook": format!("{:#06x}", (u16::from(*g) << 8) | u16::from(*o)),
                "class": class_name(*g, *o),
                "group_name": group_name(*g),
                "event": event_name(*g, *o),
                "count": k.count,
                "headers": k.headers,
            })
        })
        .collect();
    let mut provider_list: Vec<(&String, &u64)> = providers.iter().collect();
    provider_list.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let provider_json: Vec<Value> = provider_list
        .iter()
        .map(|(k, n)| json!({"event": k, "count": n}))
        .collect();

    let time_range = if first_ts <= last_ts {
        json!({
            "first_raw": first_ts,
            "last_raw": last_ts,
            "first_utc": filetime_to_rfc3339(clock.to_filetime(first_ts)),
            "last_utc": filetime_to_rfc3339(clock.to_filetime(last_ts)),
            "seconds": clock.nanos_between(first_ts, last_ts) as f64 / 1e9,
        })
    } else {
        Value::Null
    };

    json!({
        "file": Value::Null,
        "size": file.len(),
        "buffers": diag.buffers,
        "compressed_buffers": diag.compressed_buffers,
        "records": diag.records,
        "events": diag.events,
        "header_kinds": header_kinds,
        "kernel_events": kernel_json,
        "provider_events": provider_json,
        "lost": {
            "events_lost": h.events_lost,
            "buffers_lost": h.buffers_lost,
            "buffers_flagged_events_lost": buffers_flagged(buffer::FLAG_EVENTS_LOST),
            "buffers_flagged_buffer_lost": buffers_flagged(buffer::FLAG_BUFFER_LOST),
        },
        "time_range": time_range,
        "logfile_header": {
            "os_version": sentry_engine::report::os_version(h),
            "build": h.provider_version & 0xFFFF,
            "provider_version": h.provider_version,
            "pointer_size": h.pointer_size,
            "number_of_processors": h.number_of_processors,
            "processors_seen": processors.len(),
            "buffer_size": h.buffer_size,
            "buffers_written": h.buffers_written,
            "log_file_mode": format!("{:#x}", h.log_file_mode),
            "clock_type": h.clock_type,
            "perf_freq": h.perf_freq,
            "cpu_speed_mhz": h.cpu_speed_mhz,
            "start_utc": filetime_to_rfc3339(h.start_time),
            "end_utc": filetime_to_rfc3339(h.end_time),
            "logger_name": h.logger_name,
            "log_file_name": h.log_file_name,
        },
        "skipped": {
            "buffers": diag.skipped_buffers,
            "message_records": diag.message_records,
            "other_records": diag.other_records.iter().map(|(t, n)| (sentry_etl::record::header_type_name(*t).to_string() + &format!("({t:#04x})"), *n)).collect::<BTreeMap<String, u64>>(),
            "abandoned_buffer_tails": diag.abandoned_buffer_tails,
            "abandoned_bytes": diag.abandoned_bytes,
            "errors": diag.error_count,
            "first_errors": diag.errors.iter().map(|e| json!({
                "offset": e.offset,
                "buffer_offset": e.buffer_offset,
                "error": e.kind.to_string(),
            })).collect::<Vec<_>>(),
        },
    })
}

/// The MOF class an event decodes as (hook 0x030A is an Image event).
pub fn class_name(group: u8, opcode: u8) -> String {
    match sentry_raw::KernelClass::from_hook(group, opcode) {
        sentry_raw::KernelClass::Other(g) => group_name(g).to_string(),
        c => format!("{c:?}"),
    }
}

pub use super::progress::Progress;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let file = EtlFile::open(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let mut v = collect(&file);
    v["file"] = json!(args.file.display().to_string());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_text(&v);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_text(v: &Value) {
    let s = |p: &str| v.pointer(p).cloned().unwrap_or(Value::Null);
    let plain = |x: Value| match x {
        Value::String(s) => s,
        other => other.to_string(),
    };
    println!("file:        {}", plain(s("/file")));
    println!("size:        {} bytes", s("/size"));
    println!(
        "os:          Windows {} build {}, pointer size {}, {} processors ({} seen)",
        plain(s("/logfile_header/os_version")),
        s("/logfile_header/build"),
        s("/logfile_header/pointer_size"),
        s("/logfile_header/number_of_processors"),
        s("/logfile_header/processors_seen"),
    );
    println!(
        "logger:      {} (mode {}, clock type {}, buffer size {})",
        plain(s("/logfile_header/logger_name")),
        plain(s("/logfile_header/log_file_mode")),
        s("/logfile_header/clock_type"),
        s("/logfile_header/buffer_size"),
    );
    if v["time_range"].is_null() {
        println!("time range:  (no events)");
    } else {
        println!(
            "time range:  {} .. {} ({:.3} s)",
            plain(s("/time_range/first_utc")),
            plain(s("/time_range/last_utc")),
            s("/time_range/seconds").as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "buffers:     {} ({} compressed)",
        s("/buffers"),
        s("/compressed_buffers")
    );
    let (found, written) = (
        s("/buffers").as_u64().unwrap_or(0),
        s("/logfile_header/buffers_written").as_u64().unwrap_or(0),
    );
    if written > found {
        println!(
            "missing:     {} buffers (the logfile header counts {written} written: the file was cut or copied in part)",
            written - found
        );
    }
    println!("records:     {} ({} events)", s("/records"), s("/events"));
    println!(
        "lost:        {} events, {} buffers (header); {} buffers flagged events-lost",
        s("/lost/events_lost"),
        s("/lost/buffers_lost"),
        s("/lost/buffers_flagged_events_lost")
    );
    println!("header kinds:");
    if let Some(m) = v["header_kinds"].as_object() {
        for (k, n) in m {
            println!("  {k:<16} {n:>10}");
        }
    }
    println!("kernel events:");
    if let Some(a) = v["kernel_events"].as_array() {
        for k in a {
            let name = match k["event"].as_str() {
                Some(e) => format!("{}/{}", plain(k["group_name"].clone()), e),
                None => format!("{}/opcode {}", plain(k["group_name"].clone()), k["opcode"]),
            };
            let headers: Vec<String> = k["headers"]
                .as_object()
                .map(|m| m.iter().map(|(h, n)| format!("{h}:{n}")).collect())
                .unwrap_or_default();
            println!(
                "  {} {:<30} {:>10}  {}",
                plain(k["hook"].clone()),
                name,
                k["count"],
                headers.join(" ")
            );
        }
    }
    println!("provider events:");
    if let Some(a) = v["provider_events"].as_array() {
        for p in a {
            println!("  {:>10}  {}", p["count"], plain(p["event"].clone()));
        }
    }
    println!(
        "skipped:     {} buffers, {} message records, {} other records, {} buffer tails ({} bytes), {} errors",
        s("/skipped/buffers"),
        s("/skipped/message_records"),
        v["skipped"]["other_records"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum::<u64>())
            .unwrap_or(0),
        s("/skipped/abandoned_buffer_tails"),
        s("/skipped/abandoned_bytes"),
        s("/skipped/errors"),
    );
    if let Some(a) = v["skipped"]["first_errors"].as_array() {
        for e in a {
            println!(
                "  at {:#x}: {}",
                e["offset"].as_u64().unwrap_or(0),
                plain(e["error"].clone())
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(name: &str) -> std::path::PathBuf {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/corpus")
            .join(name);
        assert!(p.is_file(), "corpus file {} missing", p.display());
        p
    }

    #[test]
    fn stats_agree_with_the_golden_file() {
        for name in ["win10-ptr32-small", "win8-x64-compressed-stackcache"] {
            let etl = corpus(&format!("{name}.etl"));
            let golden: Value = serde_json::from_str(
                &std::fs::read_to_string(etl.with_extension("expected.json")).unwrap(),
            )
            .unwrap();
            let v = collect(&EtlFile::open(&etl).unwrap());
            for k in ["buffers", "compressed_buffers", "records"] {
                assert_eq!(v[k], golden[k], "{name} {k}");
            }
            assert_eq!(v["header_kinds"], golden["header_types"], "{name}");
            let kernel_total: u64 = v["kernel_events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["count"].as_u64().unwrap())
                .sum();
            let golden_total: u64 = golden["kernel_events"]
                .as_object()
                .unwrap()
                .values()
                .map(|k| k["count"].as_u64().unwrap())
                .sum();
            assert_eq!(kernel_total, golden_total, "{name}");
            assert_eq!(
                v["logfile_header"]["pointer_size"],
                golden["logfile_header"]["PointerSize"]
            );
            assert_eq!(v["skipped"]["errors"], 0);
        }
    }

    #[test]
    fn names() {
        assert_eq!(class_name(0x03, 10), "Image");
        assert_eq!(class_name(0x0b, 1), "SystemConfig");
        assert_eq!(event_name(0x0f, 51), Some("SysCallEnter"));
        assert_eq!(group_name(200), "Unknown");
    }
}
