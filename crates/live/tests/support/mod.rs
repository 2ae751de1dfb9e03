//! Set-up shared by `tests/flush_order.rs` and `benches/reorder.rs`: a
//! generated trace, its system DLLs, the per-processor flush delivery and
//! the record views `live`'s callback would build. Test-only code: included
//! by path, never part of the library.

#![allow(dead_code)] // each includer uses a different part

use std::io::Cursor;
use std::sync::Arc;

use sechost::event::{ReplayEvent, Trace};
use sechost::flush::{delivery_order, FlushModel};
use sentry_engine::{SystemDll, SystemDlls};
use sentry_etl::EtlFile;
use sentry_live::view::{ExtItem, RecordView};
use sentry_synth::{generate, Options};

/// A generated trace (its truth file written to `truth` if given) and the
/// trace's system DLLs, parsed as `--system-dlls` would.
pub fn generated(o: &Options, truth: Option<&mut Vec<u8>>) -> (EtlFile, Arc<SystemDlls>) {
    let (cur, summary) = generate(o, Cursor::new(Vec::new()), truth).unwrap();
    let dlls = Arc::new(SystemDlls {
        dlls: sentry_synth::pe::system_dlls(&summary.layout)
            .into_iter()
            .map(|(n, b)| SystemDll::parse(n, &b).unwrap())
            .collect(),
    });
    (EtlFile::from_bytes(cur.into_inner()).unwrap(), dlls)
}

/// The order a real-time consumer receives the trace's events in: 64 KB
/// per-processor buffers flushed when full or every 250 ms
/// (`etw_replay::flush`).
pub fn flush_order(trace: &Trace) -> Vec<u32> {
    delivery_order(
        &trace.events,
        FlushModel {
            buffer_bytes: 64 << 10,
            flush_ticks: trace.ticks_per_second / 4,
        },
    )
}

/// The record view `live`'s event callback builds from an event.
pub fn view(e: &ReplayEvent) -> RecordView<'_> {
    let mut v = RecordView {
        provider: e.provider,
        flags: e.flags,
        pid: e.pid,
        tid: e.tid,
        timestamp: e.timestamp,
        id: e.id,
        version: e.version,
        channel: e.channel,
        level: e.level,
        opcode: e.opcode,
        task: e.task,
        keyword: e.keyword,
        processor: e.processor,
        payload: &e.payload,
        ..Default::default()
    };
    for (t, d) in &e.extended {
        v.extended.push(ExtItem {
            ext_type: *t,
            data: d,
        });
    }
    v
}
