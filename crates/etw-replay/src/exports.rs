//! The `sechost.dll` exports Wine's advapi32 calls: the only `unsafe` code
//! of the harness. Each reads what Windows would read from the caller
//! (through raw pointers, checked for null and bounded by the sizes the
//! structures declare), hands it to the safe modules, writes back what
//! Windows would write, and logs the call with its arguments and status.
//!
//! Layouts (64-bit): `EVENT_RECORD` 112 bytes ([evntcons.h](https://learn.microsoft.com/windows/win32/api/evntcons/ns-evntcons-event_record)),
//! `EVENT_HEADER` 80, `EVENT_HEADER_EXTENDED_DATA_ITEM` 16,
//! `EVENT_TRACE_LOGFILEW` 448 (`LoggerName` at 8, `CurrentTime` 16,
//! `BuffersRead` 24, `ProcessTraceMode` 28, `EventRecordCallback` 424,
//! `Context` 440; [evntrace.h](https://learn.microsoft.com/windows/win32/api/evntrace/ns-evntrace-event_trace_logfilew));
//! the Windows tests compare them with the `windows` crate's.

use std::collections::HashMap;
use std::ffi::c_void;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sentry_raw::Guid;

use crate::config::{Config, ProcessorStyle};
use crate::event::{ReplayEvent, Trace, FLAG_PROCESSOR_INDEX};
use crate::flush::{delivery_order, FlushModel};
use crate::layout::{logfile, BufferContext, EventDescriptor, EventHeader, EventRecord, ExtItem};
use crate::props::{self, *};
use crate::sessions::{Session, Sessions};

const ERROR_SUCCESS: u32 = 0;
const ERROR_INTERNAL_ERROR: u32 = 1359;
const INVALID_PROCESSTRACE_HANDLE: u64 = u64::MAX;
const PROCESS_TRACE_MODE_REAL_TIME: u32 = 0x0000_0100;
const PROCESS_TRACE_MODE_EVENT_RECORD: u32 = 0x1000_0000;
const EVENT_TRACE_CONTROL_QUERY: u32 = 0;
const EVENT_TRACE_CONTROL_STOP: u32 = 1;
const TRACE_STACK_TRACING_INFO: i32 = 3;
const TRACE_SYSTEM_TRACE_ENABLE_FLAGS_INFO: i32 = 4;
/// Largest properties block accepted (a sanity bound, far above any real one).
const MAX_PROPERTIES_BYTES: u32 = 1 << 20;

type Callback = unsafe extern "system" fn(*mut EventRecord);

/// An open consumer handle.
struct OpenTrace {
    session: String,
    /// The caller's `EVENT_TRACE_LOGFILEW` (an address; read again by
    /// `ProcessTrace`, and updated while it runs, as Windows does).
    logfile: usize,
    closed: Arc<AtomicBool>,
}

/// The trace, loaded once per process, and the replay position (a
/// restarted consumer continues where the last one stopped).
struct Replay {
    trace: Trace,
    order: Vec<u32>,
    position: usize,
}

struct State {
    cfg: Config,
    sessions: Sessions,
    log: PathBuf,
    seq: u64,
    stop_fails_left: u32,
    traces: HashMap<u64, OpenTrace>,
    replay: Option<Replay>,
    /// Events delivered by this process so far (for the fault triggers).
    delivered: u64,
}

static STATE: OnceLock<Option<Mutex<State>>> = OnceLock::new();
static NEXT_TRACE: AtomicU64 = AtomicU64::new(1);

fn state() -> Option<&'static Mutex<State>> {
    STATE
        .get_or_init(|| match Config::from_env() {
            Ok(Some(cfg)) => {
                let _ = std::fs::create_dir_all(&cfg.dir);
                Some(Mutex::new(State {
                    sessions: Sessions::new(&cfg.dir),
                    log: cfg.dir.join("calls.jsonl"),
                    seq: 0,
                    stop_fails_left: cfg.faults.stop_fail,
                    traces: HashMap::new(),
                    replay: None,
                    delivered: 0,
                    cfg,
                }))
            }
            Ok(None) => None,
            Err(e) => {
                eprintln!("[etw-replay] {e}");
                None
            }
        })
        .as_ref()
}

fn lock() -> Option<std::sync::MutexGuard<'static, State>> {
    state().map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn guid_str(g: &Guid) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{}",
        g.data1,
        g.data2,
        g.data3,
        g.data4[0],
        g.data4[1],
        g.data4[2..]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// Appends one JSON line: the call, its fields (already JSON values), the
/// status.
fn log(st: &State, call: &str, fields: &[(&str, String)], status: u32) {
    let mut line = format!(
        "{{\"pid\":{},\"call\":{}",
        std::process::id(),
        json_str(call)
    );
    for (k, v) in fields {
        line.push_str(&format!(",{}:{v}", json_str(k)));
    }
    line.push_str(&format!(",\"status\":{status}}}\n"));
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(&st.log) {
        let _ = f.write_all(line.as_bytes());
    }
}

/// A NUL-terminated UTF-16 string (at most 32,768 units), or `None`.
///
/// # Safety
/// `p` is null or points to readable UTF-16 units up to a NUL.
unsafe fn wide(p: *const u16) -> Option<String> {
    if p.is_null() {
        return None;
    }
    let mut n = 0;
    // SAFETY: the caller guarantees readable units up to the NUL; the bound
    // stops a missing NUL from running away.
    while n < 32_768 && unsafe { *p.add(n) } != 0 {
        n += 1;
    }
    // SAFETY: the `n` units before the NUL were just read.
    Some(String::from_utf16_lossy(unsafe {
        std::slice::from_raw_parts(p, n)
    }))
}

/// The whole properties block (`Wnode.BufferSize` bytes).
///
/// # Safety
/// `p` is null or points to an `EVENT_TRACE_PROPERTIES` whose
/// `Wnode.BufferSize` bytes are readable.
unsafe fn read_block(p: *const u8) -> Result<Vec<u8>, u32> {
    if p.is_null() {
        return Err(ERROR_INVALID_PARAMETER);
    }
    // SAFETY: the first field of the block, readable per the contract.
    let size = unsafe { p.cast::<u32>().read_unaligned() };
    if (size as usize) < PROPERTIES_SIZE || size > MAX_PROPERTIES_BYTES {
        return Err(ERROR_BAD_LENGTH);
    }
    // SAFETY: `size` bytes are readable per the contract.
    Ok(unsafe { std::slice::from_raw_parts(p, size as usize) }.to_vec())
}

fn props_fields(p: &props::StartProps) -> Vec<(&'static str, String)> {
    vec![
        ("guid", json_str(&guid_str(&p.guid))),
        ("client_context", p.client_context.to_string()),
        ("buffer_kb", p.buffer_kb.to_string()),
        ("minimum_buffers", p.minimum_buffers.to_string()),
        ("maximum_buffers", p.maximum_buffers.to_string()),
        ("log_file_mode", p.log_file_mode.to_string()),
        ("flush_timer", p.flush_timer.to_string()),
        ("enable_flags", p.enable_flags.to_string()),
        (
            "log_file",
            p.log_file.as_deref().map_or("null".into(), json_str),
        ),
    ]
}

/// `StartTraceW`.
///
/// # Safety
/// As Windows requires: `handle` writable, `name` a NUL-terminated string,
/// `properties` a block of `Wnode.BufferSize` writable bytes.
#[no_mangle]
pub unsafe extern "system" fn StartTraceW(
    handle: *mut u64,
    name: *const u16,
    properties: *mut u8,
) -> u32 {
    let Some(mut st) = lock() else {
        return ERROR_CALL_NOT_IMPLEMENTED;
    };
    // SAFETY: per this function's contract.
    let name_s = unsafe { wide(name) }.unwrap_or_default();
    // SAFETY: per this function's contract.
    let parsed = unsafe { read_block(properties) }.and_then(|b| parse_start(&name_s, &b));
    let result = if handle.is_null() {
        Err(ERROR_INVALID_PARAMETER)
    } else {
        parsed.clone().and_then(|p| {
            st.seq += 1;
            st.sessions.start(&name_s, p, st.seq)
        })
    };
    let mut fields = vec![("name", json_str(&name_s))];
    if let Ok(p) = &parsed {
        fields.extend(props_fields(p));
    }
    let status = match result {
        Ok(s) => {
            // SAFETY: `handle` is non-null and writable per the contract;
            // Wnode.Guid (offset 24, 16 bytes) lies inside the block that
            // read_block checked.
            unsafe {
                handle.write_unaligned(s.handle);
                std::ptr::copy_nonoverlapping(
                    s.guid.to_le_bytes().as_ptr(),
                    properties.add(24),
                    16,
                );
            }
            fields.push(("handle", s.handle.to_string()));
            fields.push(("session_guid", json_str(&guid_str(&s.guid))));
            ERROR_SUCCESS
        }
        Err(code) => code,
    };
    log(&st, "StartTraceW", &fields, status);
    status
}

/// `ControlTraceW`: query and stop (by name, or by handle when the name is
/// null).
///
/// # Safety
/// `name` null or a NUL-terminated string; `properties` a block of
/// `Wnode.BufferSize` writable bytes.
#[no_mangle]
pub unsafe extern "system" fn ControlTraceW(
    handle: u64,
    name: *const u16,
    properties: *mut u8,
    code: u32,
) -> u32 {
    let Some(mut st) = lock() else {
        return ERROR_CALL_NOT_IMPLEMENTED;
    };
    // SAFETY: per this function's contract.
    let name_s = unsafe { wide(name) };
    // SAFETY: per this function's contract.
    let block = unsafe { read_block(properties) };
    let session = match &name_s {
        Some(n) => st.sessions.find(n),
        None => st.sessions.by_handle(handle),
    };
    let status = (|| {
        let mut b = block?;
        check_control(&b)?;
        let s = session.clone().ok_or(ERROR_WMI_INSTANCE_NOT_FOUND)?;
        match code {
            EVENT_TRACE_CONTROL_QUERY => {}
            EVENT_TRACE_CONTROL_STOP => {
                if st.stop_fails_left > 0 {
                    st.stop_fails_left -= 1;
                    return Err(ERROR_BUSY);
                }
                st.sessions.stop(&s.name)?;
            }
            _ => return Err(ERROR_INVALID_PARAMETER),
        }
        let p = &s.props;
        write_counters(
            &mut b,
            &props::Counters {
                buffer_kb: p.buffer_kb,
                minimum_buffers: p.minimum_buffers,
                maximum_buffers: p.maximum_buffers,
                log_file_mode: p.log_file_mode,
                flush_timer: p.flush_timer,
                enable_flags: s.group_mask.unwrap_or(p.enable_flags),
                number_of_buffers: p.minimum_buffers,
                events_lost: st.cfg.faults.events_lost,
                buffers_written: 0,
                real_time_buffers_lost: 0,
            },
        );
        // SAFETY: `b` has exactly the caller's Wnode.BufferSize bytes, all
        // writable per the contract.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), properties, b.len()) };
        Ok(())
    })()
    .err()
    .unwrap_or(ERROR_SUCCESS);
    let code_s = match code {
        EVENT_TRACE_CONTROL_QUERY => "\"query\"".to_string(),
        EVENT_TRACE_CONTROL_STOP => "\"stop\"".to_string(),
        c => c.to_string(),
    };
    log(
        &st,
        "ControlTraceW",
        &[
            ("handle", handle.to_string()),
            ("name", name_s.as_deref().map_or("null".into(), json_str)),
            ("code", code_s),
        ],
        status,
    );
    status
}

/// `StopTraceW`: `ControlTraceW(STOP)`.
///
/// # Safety
/// As [`ControlTraceW`].
#[no_mangle]
pub unsafe extern "system" fn StopTraceW(
    handle: u64,
    name: *const u16,
    properties: *mut u8,
) -> u32 {
    // SAFETY: same contract.
    unsafe { ControlTraceW(handle, name, properties, EVENT_TRACE_CONTROL_STOP) }
}

/// `TraceSetInformation`: stack tracing and kernel flags are checked and
/// recorded on the session; other classes are logged and accepted.
///
/// # Safety
/// `info` points to `len` readable bytes (or is null with `len` 0).
#[no_mangle]
pub unsafe extern "system" fn TraceSetInformation(
    handle: u64,
    class: i32,
    info: *const u8,
    len: u32,
) -> u32 {
    let Some(st) = lock() else {
        return ERROR_CALL_NOT_IMPLEMENTED;
    };
    let bytes = if info.is_null() || len == 0 {
        Vec::new()
    } else {
        // SAFETY: `len` readable bytes per the contract (bounded to 1 MiB).
        unsafe { std::slice::from_raw_parts(info, len.min(MAX_PROPERTIES_BYTES) as usize) }.to_vec()
    };
    let mut fields = vec![("handle", handle.to_string()), ("class", class.to_string())];
    let status = (|| {
        let mut s: Session = st.sessions.by_handle(handle).ok_or(ERROR_INVALID_HANDLE)?;
        match class {
            TRACE_STACK_TRACING_INFO => {
                let ids = stack_ids(&bytes)?;
                let list: Vec<String> = ids
                    .iter()
                    .map(|(g, t)| format!("{{\"guid\":{},\"type\":{t}}}", json_str(&guid_str(g))))
                    .collect();
                fields.push(("stacks", format!("[{}]", list.join(","))));
                s.stacks = ids;
            }
            TRACE_SYSTEM_TRACE_ENABLE_FLAGS_INFO => {
                let m = group_mask(&bytes)?;
                fields.push(("enable_flags", m.to_string()));
                s.group_mask = Some(m);
            }
            _ => fields.push(("bytes", bytes.len().to_string())),
        }
        st.sessions.update(&s);
        Ok(())
    })()
    .err()
    .unwrap_or(ERROR_SUCCESS);
    log(&st, "TraceSetInformation", &fields, status);
    status
}

/// `EnableTraceEx2`: logged with every argument (and the
/// `ENABLE_TRACE_PARAMETERS` header when given); succeeds on a running
/// session's handle.
///
/// # Safety
/// `provider` null or a GUID; `params` null or an `ENABLE_TRACE_PARAMETERS`.
#[no_mangle]
pub unsafe extern "system" fn EnableTraceEx2(
    handle: u64,
    provider: *const [u8; 16],
    control_code: u32,
    level: u8,
    match_any: u64,
    match_all: u64,
    timeout: u32,
    params: *const u8,
) -> u32 {
    let Some(st) = lock() else {
        return ERROR_CALL_NOT_IMPLEMENTED;
    };
    let provider_g = if provider.is_null() {
        None
    } else {
        // SAFETY: a readable GUID per the contract.
        Guid::read(unsafe { &*provider })
    };
    let mut fields = vec![
        ("handle", handle.to_string()),
        (
            "provider",
            provider_g.map_or("null".into(), |g| json_str(&guid_str(&g))),
        ),
        ("control_code", control_code.to_string()),
        ("level", level.to_string()),
        ("match_any", match_any.to_string()),
        ("match_all", match_all.to_string()),
        ("timeout", timeout.to_string()),
    ];
    if !params.is_null() {
        // ENABLE_TRACE_PARAMETERS: Version u32, EnableProperty u32,
        // ControlFlags u32, SourceId GUID, EnableFilterDesc ptr,
        // FilterDescCount u32 (at 40).
        // SAFETY: the structure's first 44 bytes are readable per the
        // contract.
        let p = unsafe { std::slice::from_raw_parts(params, 44) };
        let u = |at: usize| u32::from_le_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]]);
        fields.push(("params_version", u(0).to_string()));
        fields.push(("enable_property", u(4).to_string()));
        fields.push(("filter_desc_count", u(40).to_string()));
    }
    let status = if provider_g.is_none() {
        ERROR_INVALID_PARAMETER
    } else if st.sessions.by_handle(handle).is_none() {
        ERROR_INVALID_HANDLE
    } else {
        ERROR_SUCCESS
    };
    log(&st, "EnableTraceEx2", &fields, status);
    status
}

/// `OpenTraceW`: a real-time consumer of a running session.
///
/// # Safety
/// `lf` null or an `EVENT_TRACE_LOGFILEW` that stays valid until
/// `CloseTrace` (as Windows requires).
#[no_mangle]
pub unsafe extern "system" fn OpenTraceW(lf: *mut u8) -> u64 {
    let Some(mut st) = lock() else {
        set_last_error(ERROR_CALL_NOT_IMPLEMENTED);
        return INVALID_PROCESSTRACE_HANDLE;
    };
    let (name, mode, callback) = if lf.is_null() {
        (None, 0, 0)
    } else {
        // SAFETY: a readable EVENT_TRACE_LOGFILEW per the contract; the
        // fields are at the documented 64-bit offsets.
        unsafe {
            (
                wide(
                    lf.add(logfile::LOGGER_NAME)
                        .cast::<*const u16>()
                        .read_unaligned(),
                ),
                lf.add(logfile::PROCESS_TRACE_MODE)
                    .cast::<u32>()
                    .read_unaligned(),
                lf.add(logfile::EVENT_RECORD_CALLBACK)
                    .cast::<usize>()
                    .read_unaligned(),
            )
        }
    };
    let status = if name.is_none()
        || mode & PROCESS_TRACE_MODE_REAL_TIME == 0
        || mode & PROCESS_TRACE_MODE_EVENT_RECORD == 0
        || callback == 0
    {
        ERROR_INVALID_PARAMETER
    } else if !st.sessions.exists(name.as_deref().unwrap_or("")) {
        ERROR_WMI_INSTANCE_NOT_FOUND
    } else {
        ERROR_SUCCESS
    };
    let handle = if status == ERROR_SUCCESS {
        // Above 32 bits, as real handles are on 64-bit Windows; the process
        // id in bits 16-39 keeps them apart in the call log.
        let h = 0x0000_7f00_0000_0000
            | ((u64::from(std::process::id()) & 0xFF_FFFF) << 16)
            | ((NEXT_TRACE.fetch_add(1, Ordering::SeqCst) & 0xFFF) << 4);
        st.traces.insert(
            h,
            OpenTrace {
                session: name.clone().unwrap_or_default(),
                logfile: lf as usize,
                closed: Arc::new(AtomicBool::new(false)),
            },
        );
        h
    } else {
        INVALID_PROCESSTRACE_HANDLE
    };
    log(
        &st,
        "OpenTraceW",
        &[
            ("name", name.as_deref().map_or("null".into(), json_str)),
            ("process_trace_mode", mode.to_string()),
            ("trace_handle", handle.to_string()),
        ],
        status,
    );
    if status != ERROR_SUCCESS {
        set_last_error(status);
    }
    handle
}

#[link(name = "kernel32")]
extern "system" {
    fn SetLastError(code: u32);
}

fn set_last_error(code: u32) {
    // SAFETY: SetLastError has no preconditions.
    unsafe { SetLastError(code) }
}

/// The records of one event: header, extended items, payload.
struct Built {
    record: EventRecord,
    items: Vec<ExtItem>,
}

fn build(e: &ReplayEvent, style: ProcessorStyle, n: u64, context: *mut c_void) -> Built {
    let with_index = match style {
        ProcessorStyle::Index => true,
        ProcessorStyle::Number => false,
        ProcessorStyle::Mixed => n % 2 == 0,
    };
    let (flags, processor) = if with_index {
        (e.flags | FLAG_PROCESSOR_INDEX, e.processor.to_le_bytes())
    } else {
        // ProcessorNumber, and an Alignment byte that is not zero: a reader
        // that ignores the flag sees 0x0800 added.
        (e.flags, [e.processor as u8, 0x08])
    };
    let items: Vec<ExtItem> = e
        .extended
        .iter()
        .enumerate()
        .map(|(i, (t, d))| ExtItem {
            reserved1: 0,
            ext_type: *t,
            linkage: u16::from(i + 1 < e.extended.len()),
            data_size: d.len() as u16,
            data_ptr: d.as_ptr() as u64,
        })
        .collect();
    Built {
        record: EventRecord {
            header: EventHeader {
                size: 80,
                flags,
                thread_id: e.tid,
                process_id: e.pid,
                timestamp: e.timestamp as i64,
                provider_id: e.provider.to_le_bytes(),
                descriptor: EventDescriptor {
                    id: e.id,
                    version: e.version,
                    channel: e.channel,
                    level: e.level,
                    opcode: e.opcode,
                    task: e.task,
                    keyword: e.keyword,
                },
                ..Default::default()
            },
            buffer_context: BufferContext {
                processor,
                logger_id: 0xFFFF,
            },
            extended_data_count: 0,
            user_data_length: e.payload.len().min(usize::from(u16::MAX)) as u16,
            extended_data: std::ptr::null_mut(),
            user_data: e.payload.as_ptr() as *mut c_void,
            user_context: context,
        },
        items,
    }
}

/// Why delivery stopped.
enum End {
    /// Everything delivered: wait for STOP or CloseTrace.
    Drained,
    Closed,
    Stopped,
    Fault(u32),
    ExternalStop,
}

/// `ProcessTrace`: delivers the trace's events (flush order) to the
/// callback of the (first) handle, then blocks until the session is stopped
/// (from any process) or the handle closed; returns early on an injected
/// fault.
///
/// # Safety
/// `handles` points to `count` handles from `OpenTraceW` whose logfiles are
/// still valid.
#[no_mangle]
pub unsafe extern "system" fn ProcessTrace(
    handles: *const u64,
    count: u32,
    _start: *const c_void,
    _end: *const c_void,
) -> u32 {
    let Some(mut st) = lock() else {
        return ERROR_CALL_NOT_IMPLEMENTED;
    };
    if handles.is_null() || count == 0 || count > 64 {
        log(
            &st,
            "ProcessTrace",
            &[("count", count.to_string())],
            ERROR_INVALID_PARAMETER,
        );
        return ERROR_INVALID_PARAMETER;
    }
    // SAFETY: `count` readable handles per the contract.
    let h = unsafe { *handles };
    let Some(t) = st.traces.get(&h) else {
        log(
            &st,
            "ProcessTrace",
            &[("trace_handle", h.to_string())],
            ERROR_INVALID_HANDLE,
        );
        return ERROR_INVALID_HANDLE;
    };
    let (session, lf, closed) = (
        t.session.clone(),
        t.logfile as *mut u8,
        Arc::clone(&t.closed),
    );
    // SAFETY: the caller's logfile is still valid (contract); callback and
    // context at their documented offsets, the callback non-null (checked
    // by OpenTraceW).
    let (callback, context) = unsafe {
        (
            std::mem::transmute::<usize, Callback>(
                lf.add(logfile::EVENT_RECORD_CALLBACK)
                    .cast::<usize>()
                    .read_unaligned(),
            ),
            lf.add(logfile::CONTEXT)
                .cast::<*mut c_void>()
                .read_unaligned(),
        )
    };
    let props = st.sessions.find(&session).map(|s| s.props);
    if st.replay.is_none() {
        if let (Some(path), Some(p)) = (st.cfg.trace.clone(), &props) {
            match Trace::load(&path) {
                Ok(trace) => {
                    let flush_ticks = (u128::from(p.flush_ms())
                        * u128::from(trace.ticks_per_second)
                        / 1000) as u64;
                    let order = delivery_order(
                        &trace.events,
                        FlushModel {
                            buffer_bytes: (p.buffer_kb.max(1) as usize) << 10,
                            flush_ticks,
                        },
                    );
                    st.replay = Some(Replay {
                        trace,
                        order,
                        position: 0,
                    });
                }
                Err(e) => eprintln!("[etw-replay] {e}"),
            }
        }
    }
    let start_delivered = st.delivered;
    let style = st.cfg.processor;
    let faults = st.cfg.faults;
    let mut replay = st.replay.take();
    log(
        &st,
        "ProcessTrace",
        &[
            ("trace_handle", h.to_string()),
            ("session", json_str(&session)),
            ("phase", json_str("start")),
            (
                "position",
                replay.as_ref().map_or(0, |r| r.position).to_string(),
            ),
        ],
        ERROR_SUCCESS,
    );
    // Deliver without holding the lock: the callback may take its time, and
    // ControlTraceW/CloseTrace from other threads must get through.
    drop(st);
    let sessions = Sessions::new(&lock_dir());
    let mut delivered = start_delivered;
    let mut end = End::Drained;
    if let Some(r) = replay.as_mut() {
        while r.position < r.order.len() {
            if let Some((n, code)) = faults.process_trace_error {
                if delivered == n {
                    end = End::Fault(code);
                    break;
                }
            }
            if faults.external_stop == Some(delivered) && delivered > start_delivered {
                let _ = sessions.stop(&session);
                end = End::ExternalStop;
                break;
            }
            if closed.load(Ordering::SeqCst) {
                end = End::Closed;
                break;
            }
            if delivered % 1024 == 0 && !sessions.exists(&session) {
                end = End::Stopped;
                break;
            }
            let e = &r.trace.events[r.order[r.position] as usize];
            let mut b = build(e, style, delivered, context);
            if !b.items.is_empty() {
                b.record.header.flags |= crate::event::FLAG_EXTENDED_INFO;
                b.record.extended_data_count = b.items.len() as u16;
                b.record.extended_data = b.items.as_mut_ptr();
            }
            // SAFETY: `b.record` and everything it points to (payload and
            // extended data in `r`, items in `b`) outlive the call; the
            // callback is the consumer's, with its own context.
            unsafe { callback(&mut b.record) };
            r.position += 1;
            delivered += 1;
            // SAFETY: the logfile is valid while ProcessTrace runs; Windows
            // updates BuffersRead and CurrentTime there as it goes.
            unsafe {
                lf.add(logfile::BUFFERS_READ)
                    .cast::<u32>()
                    .write_unaligned((delivered & 0xFFFF_FFFF) as u32);
                lf.add(logfile::CURRENT_TIME)
                    .cast::<i64>()
                    .write_unaligned(e.timestamp as i64);
            }
        }
    }
    if matches!(end, End::Drained) {
        loop {
            if closed.load(Ordering::SeqCst) {
                end = End::Closed;
                break;
            }
            if !sessions.exists(&session) {
                end = End::Stopped;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let (status, why) = match end {
        End::Fault(code) => (code, "injected error"),
        End::ExternalStop => (ERROR_SUCCESS, "stopped from outside (injected)"),
        End::Closed => (ERROR_SUCCESS, "handle closed"),
        End::Stopped => (ERROR_SUCCESS, "session stopped"),
        End::Drained => (ERROR_INTERNAL_ERROR, "unreachable"),
    };
    let Some(mut st) = lock() else {
        return status;
    };
    st.delivered = delivered;
    st.replay = replay;
    log(
        &st,
        "ProcessTrace",
        &[
            ("trace_handle", h.to_string()),
            ("session", json_str(&session)),
            ("phase", json_str("end")),
            ("delivered", (delivered - start_delivered).to_string()),
            ("why", json_str(why)),
        ],
        status,
    );
    status
}

fn lock_dir() -> PathBuf {
    lock().map(|s| s.cfg.dir.clone()).unwrap_or_default()
}

/// `CloseTrace`: once per handle; `ERROR_CTX_CLOSE_PENDING` while
/// `ProcessTrace` runs on it (which then returns), `ERROR_INVALID_HANDLE`
/// for an unknown or already closed handle.
#[no_mangle]
pub extern "system" fn CloseTrace(handle: u64) -> u32 {
    let Some(mut st) = lock() else {
        return ERROR_CALL_NOT_IMPLEMENTED;
    };
    let status = match st.traces.get(&handle) {
        Some(t) if !t.closed.swap(true, Ordering::SeqCst) => {
            // The consumer may still be delivering (then it ends itself).
            let running = Arc::strong_count(&t.closed) > 1;
            if !running {
                st.traces.remove(&handle);
            }
            if running {
                ERROR_CTX_CLOSE_PENDING
            } else {
                ERROR_SUCCESS
            }
        }
        _ => ERROR_INVALID_HANDLE,
    };
    log(
        &st,
        "CloseTrace",
        &[("trace_handle", handle.to_string())],
        status,
    );
    status
}

/// The other ETW functions Wine's advapi32 takes from sechost: logged,
/// not implemented.
macro_rules! not_implemented {
    ($($name:ident($($arg:ident: $t:ty),*);)*) => {$(
        /// Logged; `ERROR_CALL_NOT_IMPLEMENTED`.
        #[no_mangle]
        pub extern "system" fn $name($(_: $t),*) -> u32 {
            if let Some(st) = lock() {
                log(&st, stringify!($name), &[], ERROR_CALL_NOT_IMPLEMENTED);
            }
            ERROR_CALL_NOT_IMPLEMENTED
        }
    )*};
}

not_implemented! {
    StartTraceA(a: *mut u64, b: *const u8, c: *mut u8);
    ControlTraceA(a: u64, b: *const u8, c: *mut u8, d: u32);
    QueryAllTracesW(a: *mut *mut u8, b: u32, c: *mut u32);
    QueryAllTracesA(a: *mut *mut u8, b: u32, c: *mut u32);
}
