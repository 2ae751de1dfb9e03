//! Every Win32 call of syscall-sentry, each wrapped in a safe function. This
//! module is the only place in the workspace where `unsafe` is allowed; each
//! block states why it is sound.
//!
//! APIs: [StartTraceW](https://learn.microsoft.com/windows/win32/api/evntrace/nf-evntrace-starttracew),
//! [ControlTraceW](https://learn.microsoft.com/windows/win32/api/evntrace/nf-evntrace-controltracew),
//! [TraceSetInformation](https://learn.microsoft.com/windows/win32/api/evntrace/nf-evntrace-tracesetinformation),
//! [EnableTraceEx2](https://learn.microsoft.com/windows/win32/api/evntrace/nf-evntrace-enabletraceex2),
//! [OpenTraceW](https://learn.microsoft.com/windows/win32/api/evntrace/nf-evntrace-opentracew),
//! [ProcessTrace](https://learn.microsoft.com/windows/win32/api/evntrace/nf-evntrace-processtrace),
//! [CloseTrace](https://learn.microsoft.com/windows/win32/api/evntrace/nf-evntrace-closetrace),
//! [SetConsoleCtrlHandler](https://learn.microsoft.com/windows/console/setconsolectrlhandler),
//! [EnumDeviceDrivers](https://learn.microsoft.com/windows/win32/api/psapi/nf-psapi-enumdevicedrivers),
//! [ReadProcessMemory](https://learn.microsoft.com/windows/win32/api/memoryapi/nf-memoryapi-readprocessmemory).

use std::ffi::c_void;
use std::mem::{offset_of, size_of};
use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sentry_raw::{Clock, Guid};
use windows::core::w;
use windows::core::{BOOL, GUID, PCWSTR, PWSTR};
use windows::Wdk::System::SystemServices::RtlGetVersion;
use windows::Win32::Foundation::{CloseHandle, GetLastError, HANDLE, LUID};
use windows::Win32::Security::{
    AdjustTokenPrivileges, LookupPrivilegeValueW, LUID_AND_ATTRIBUTES, SE_PRIVILEGE_ENABLED,
    TOKEN_ADJUST_PRIVILEGES, TOKEN_PRIVILEGES, TOKEN_QUERY,
};
use windows::Win32::System::Console::{
    SetConsoleCtrlHandler, CTRL_BREAK_EVENT, CTRL_CLOSE_EVENT, CTRL_C_EVENT, CTRL_LOGOFF_EVENT,
    CTRL_SHUTDOWN_EVENT,
};
use windows::Win32::System::Diagnostics::Debug::ReadProcessMemory;
use windows::Win32::System::Diagnostics::Etw::{
    CloseTrace, ControlTraceW, EnableTraceEx2, OpenTraceW, ProcessTrace, StartTraceW,
    TraceSetInformation, CLASSIC_EVENT_ID, CONTROLTRACE_HANDLE, ENABLE_TRACE_PARAMETERS,
    ENABLE_TRACE_PARAMETERS_VERSION_2, EVENT_RECORD, EVENT_TRACE_CONTROL_QUERY,
    EVENT_TRACE_CONTROL_STOP, EVENT_TRACE_LOGFILEW, EVENT_TRACE_PROPERTIES, PROCESSTRACE_HANDLE,
    PROCESS_TRACE_MODE_EVENT_RECORD, PROCESS_TRACE_MODE_RAW_TIMESTAMP,
    PROCESS_TRACE_MODE_REAL_TIME, TRACE_QUERY_INFO_CLASS, WNODE_HEADER,
};
use windows::Win32::System::Performance::{QueryPerformanceCounter, QueryPerformanceFrequency};
use windows::Win32::System::ProcessStatus::{EnumDeviceDrivers, GetDeviceDriverFileNameW};
use windows::Win32::System::SystemInformation::{
    ComputerNameDnsHostname, GetComputerNameExW, GetSystemDirectoryW,
    GetSystemTimePreciseAsFileTime, GetSystemWow64DirectoryW, OSVERSIONINFOW,
};
use windows::Win32::System::Threading::{
    GetActiveProcessorCount, GetCurrentProcess, OpenProcess, OpenProcessToken,
    ALL_PROCESSOR_GROUPS, PROCESS_QUERY_LIMITED_INFORMATION, PROCESS_VM_READ,
};

use crate::error::ERROR_MORE_DATA;
use crate::properties::{offsets, PropertiesBlock, CLASSIC_EVENT_ID_SIZE, PROPERTIES_SIZE};
use crate::ring::RingProducer;
use crate::supervisor::StopReason;
use crate::view::{processor_of, ExtItem, ExtItems, RecordView};

// The byte layout built by `properties` must be the one Windows reads.
const _: () = assert!(size_of::<EVENT_TRACE_PROPERTIES>() == PROPERTIES_SIZE);
const _: () = assert!(size_of::<CLASSIC_EVENT_ID>() == CLASSIC_EVENT_ID_SIZE);
const _: () = assert!(size_of::<WNODE_HEADER>() == 48);
const _: () = assert!(offset_of!(WNODE_HEADER, Guid) == offsets::WNODE_GUID);
const _: () = assert!(offset_of!(WNODE_HEADER, ClientContext) == offsets::WNODE_CLIENT_CONTEXT);
const _: () = assert!(offset_of!(WNODE_HEADER, Flags) == offsets::WNODE_FLAGS);
const _: () = assert!(offset_of!(EVENT_TRACE_PROPERTIES, BufferSize) == offsets::BUFFER_SIZE);
const _: () =
    assert!(offset_of!(EVENT_TRACE_PROPERTIES, MinimumBuffers) == offsets::MINIMUM_BUFFERS);
const _: () =
    assert!(offset_of!(EVENT_TRACE_PROPERTIES, MaximumBuffers) == offsets::MAXIMUM_BUFFERS);
const _: () =
    assert!(offset_of!(EVENT_TRACE_PROPERTIES, MaximumFileSize) == offsets::MAXIMUM_FILE_SIZE);
const _: () = assert!(offset_of!(EVENT_TRACE_PROPERTIES, LogFileMode) == offsets::LOG_FILE_MODE);
const _: () = assert!(offset_of!(EVENT_TRACE_PROPERTIES, FlushTimer) == offsets::FLUSH_TIMER);
const _: () = assert!(offset_of!(EVENT_TRACE_PROPERTIES, EnableFlags) == offsets::ENABLE_FLAGS);
const _: () =
    assert!(offset_of!(EVENT_TRACE_PROPERTIES, NumberOfBuffers) == offsets::NUMBER_OF_BUFFERS);
const _: () = assert!(offset_of!(EVENT_TRACE_PROPERTIES, EventsLost) == offsets::EVENTS_LOST);
const _: () =
    assert!(offset_of!(EVENT_TRACE_PROPERTIES, BuffersWritten) == offsets::BUFFERS_WRITTEN);
const _: () = assert!(
    offset_of!(EVENT_TRACE_PROPERTIES, RealTimeBuffersLost) == offsets::REAL_TIME_BUFFERS_LOST
);
const _: () =
    assert!(offset_of!(EVENT_TRACE_PROPERTIES, LoggerThreadId) == offsets::LOGGER_THREAD_ID);
const _: () =
    assert!(offset_of!(EVENT_TRACE_PROPERTIES, LogFileNameOffset) == offsets::LOG_FILE_NAME_OFFSET);
const _: () =
    assert!(offset_of!(EVENT_TRACE_PROPERTIES, LoggerNameOffset) == offsets::LOGGER_NAME_OFFSET);

/// `INVALID_PROCESSTRACE_HANDLE`: `(TRACEHANDLE)INVALID_HANDLE_VALUE`, all
/// ones in the 64-bit builds this project makes. A valid handle may have
/// any of its 64 bits set, so nothing else is compared.
const INVALID_PROCESSTRACE_HANDLE: u64 = u64::MAX;
const _: () = assert!(size_of::<usize>() == 8, "64-bit Windows only");

/// A NUL-terminated UTF-16 copy of `s`.
fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

/// An 8-byte aligned, writable copy of a byte block (ETW structures contain
/// 64-bit fields).
struct AlignedBlock(Vec<u64>);

impl AlignedBlock {
    fn new(bytes: &[u8]) -> AlignedBlock {
        AlignedBlock(
            bytes
                .chunks(8)
                .map(|c| {
                    let mut w = [0u8; 8];
                    w[..c.len()].copy_from_slice(c);
                    u64::from_le_bytes(w)
                })
                .collect(),
        )
    }

    fn as_mut_ptr<T>(&mut self) -> *mut T {
        self.0.as_mut_ptr().cast()
    }

    fn as_ptr(&self) -> *const c_void {
        self.0.as_ptr().cast()
    }

    fn byte_len(&self) -> usize {
        self.0.len() * 8
    }

    fn to_bytes(&self) -> Vec<u8> {
        self.0.iter().flat_map(|w| w.to_le_bytes()).collect()
    }
}

/// `StartTraceW` with a block built by [`PropertiesBlock::for_start`].
/// Returns the session handle or the Win32 error code.
pub fn start_trace(session_name: &str, block: &PropertiesBlock) -> Result<u64, u32> {
    let mut props = AlignedBlock::new(&block.bytes);
    let name = wide(session_name);
    let mut handle = CONTROLTRACE_HANDLE::default();
    // SAFETY: `props` is an 8-byte aligned, writable buffer whose first 120
    // bytes are an EVENT_TRACE_PROPERTIES (layout checked by the const
    // asserts above) and whose Wnode.BufferSize is the buffer's length, with
    // the name offsets inside it; `name` is NUL-terminated; both outlive the
    // call, which does not keep the pointers.
    let err = unsafe {
        StartTraceW(
            &mut handle,
            PCWSTR(name.as_ptr()),
            props.as_mut_ptr::<EVENT_TRACE_PROPERTIES>(),
        )
    };
    if err.0 == 0 {
        Ok(handle.Value)
    } else {
        Err(err.0)
    }
}

/// `ControlTraceW` by session name: a query, or a stop. Returns the block
/// Windows wrote back (counters readable with `SessionCounters::read`).
pub fn control_trace(session_name: &str, stop: bool) -> Result<Vec<u8>, u32> {
    let block = PropertiesBlock::for_control(session_name);
    let mut props = AlignedBlock::new(&block.bytes);
    let name = wide(session_name);
    let code = if stop {
        EVENT_TRACE_CONTROL_STOP
    } else {
        EVENT_TRACE_CONTROL_QUERY
    };
    // SAFETY: as in `start_trace`: an aligned, writable block of
    // Wnode.BufferSize bytes with room for both names at their offsets, and a
    // NUL-terminated name, both alive for the whole call.
    let err = unsafe {
        ControlTraceW(
            CONTROLTRACE_HANDLE::default(),
            PCWSTR(name.as_ptr()),
            props.as_mut_ptr::<EVENT_TRACE_PROPERTIES>(),
            code,
        )
    };
    if err.0 == 0 || err.0 == ERROR_MORE_DATA {
        Ok(props.to_bytes())
    } else {
        Err(err.0)
    }
}

/// `TraceSetInformation` on a session handle with a byte buffer
/// (`CLASSIC_EVENT_ID` array, `PERFINFO_GROUPMASK`).
pub fn set_information(session: u64, class: i32, bytes: &[u8]) -> Result<(), u32> {
    let info = AlignedBlock::new(bytes);
    let len = u32::try_from(bytes.len().min(info.byte_len())).map_err(|_| 87u32)?;
    // SAFETY: `info` holds `len` readable, 8-byte aligned bytes for the
    // duration of the call; Windows only reads them.
    let err = unsafe {
        TraceSetInformation(
            CONTROLTRACE_HANDLE { Value: session },
            TRACE_QUERY_INFO_CLASS(class),
            info.as_ptr(),
            len,
        )
    };
    if err.0 == 0 {
        Ok(())
    } else {
        Err(err.0)
    }
}

/// `EnableTraceEx2(EVENT_CONTROL_CODE_ENABLE_PROVIDER)` on a session
/// handle: the provider at `e.level` with `e.enable_property` (for the
/// Kernel-Audit-API-Calls source, `EVENT_ENABLE_PROPERTY_STACK_TRACE`).
pub fn enable_provider(session: u64, e: &crate::audit::ProviderEnable) -> Result<(), u32> {
    let g = e.provider;
    let provider = GUID {
        data1: g.data1,
        data2: g.data2,
        data3: g.data3,
        data4: g.data4,
    };
    let params = ENABLE_TRACE_PARAMETERS {
        Version: ENABLE_TRACE_PARAMETERS_VERSION_2,
        EnableProperty: e.enable_property,
        ..Default::default()
    };
    // SAFETY: `provider` and `params` live on this stack frame for the
    // whole call, are properly aligned and initialised (no filter
    // descriptors: `EnableFilterDesc` null, `FilterDescCount` 0); Windows
    // only reads them.
    let err = unsafe {
        EnableTraceEx2(
            CONTROLTRACE_HANDLE { Value: session },
            &provider,
            crate::audit::EVENT_CONTROL_CODE_ENABLE_PROVIDER,
            e.level,
            e.match_any,
            e.match_all,
            0,
            Some(&params),
        )
    };
    if err.0 == 0 {
        Ok(())
    } else {
        Err(err.0)
    }
}

/// What the callback reaches through `EVENT_RECORD.UserContext`.
struct CallbackContext {
    producer: RingProducer,
}

/// Everything `OpenTraceW` is given, at one fixed heap address until
/// `CloseTrace`: the `EVENT_TRACE_LOGFILEW` (Windows fills in its
/// `LogfileHeader` and updates `CurrentTime`, `BuffersRead`... while
/// `ProcessTrace` runs), the logger name it points to, and the callback's
/// context.
struct Consumer {
    logfile: EVENT_TRACE_LOGFILEW,
    name: Vec<u16>,
    ctx: CallbackContext,
}

/// Closes a trace handle exactly once, whichever thread asks first: the
/// consumer thread after `ProcessTrace` returns, or the main thread to
/// unblock a `ProcessTrace` that does not.
#[derive(Clone)]
pub struct TraceCloser {
    handle: u64,
    closed: Arc<AtomicBool>,
}

impl TraceCloser {
    /// `CloseTrace`, unless it was already called; returns its status
    /// (`None` when it had been).
    pub fn close(&self) -> Option<u32> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return None;
        }
        // SAFETY: CloseTrace validates the handle; it is called at most once
        // for this handle (the flag above).
        Some(unsafe { CloseTrace(PROCESSTRACE_HANDLE { Value: self.handle }) }.0)
    }
}

/// An opened real-time consumer. Owns [`Consumer`] until
/// [`OpenTrace::close`].
pub struct OpenTrace {
    closer: TraceCloser,
    inner: NonNull<Consumer>,
}

// SAFETY: the `Consumer` behind `inner` is used by the callback only while
// `ProcessTrace` runs on whichever thread owns this value, and is freed in
// `close`, which consumes it; moving the owner to another thread before that
// is sound (RingProducer is Send).
unsafe impl Send for OpenTrace {}

/// `OpenTraceW` on a real-time session: raw QPC timestamps, `EVENT_RECORD`
/// callback, `producer` as the callback's context. On failure the producer
/// is handed back with the error code.
pub fn open_real_time(
    session_name: &str,
    producer: RingProducer,
) -> Result<OpenTrace, (u32, RingProducer)> {
    let inner = NonNull::from(Box::leak(Box::new(Consumer {
        logfile: EVENT_TRACE_LOGFILEW::default(),
        name: wide(session_name),
        ctx: CallbackContext { producer },
    })));
    // SAFETY: `inner` was just leaked from a Box: valid, aligned, and not
    // shared with anyone yet.
    let c = unsafe { &mut *inner.as_ptr() };
    c.logfile.LoggerName = PWSTR(c.name.as_mut_ptr());
    c.logfile.Context = (&mut c.ctx as *mut CallbackContext).cast();
    c.logfile.Anonymous1.ProcessTraceMode = PROCESS_TRACE_MODE_REAL_TIME
        | PROCESS_TRACE_MODE_EVENT_RECORD
        | PROCESS_TRACE_MODE_RAW_TIMESTAMP;
    c.logfile.Anonymous2.EventRecordCallback = Some(on_event);
    // SAFETY: `c.logfile` is a fully initialised EVENT_TRACE_LOGFILEW at a
    // stable heap address; LoggerName points to the NUL-terminated `c.name`
    // and Context to `c.ctx`, all of which live in the same leaked Box until
    // `close` (or the error path below) reclaims it.
    let handle = unsafe { OpenTraceW(&mut c.logfile) }.Value;
    if handle == INVALID_PROCESSTRACE_HANDLE {
        // SAFETY: GetLastError has no preconditions.
        let code = unsafe { GetLastError() }.0;
        // SAFETY: OpenTraceW failed, so nothing holds `inner`: reclaim the
        // Box leaked above exactly once.
        let c = unsafe { Box::from_raw(inner.as_ptr()) };
        return Err((code, c.ctx.producer));
    }
    Ok(OpenTrace {
        closer: TraceCloser {
            handle,
            closed: Arc::new(AtomicBool::new(false)),
        },
        inner,
    })
}

impl OpenTrace {
    /// A handle closer for another thread.
    pub fn closer(&self) -> TraceCloser {
        self.closer.clone()
    }

    /// `ProcessTrace`: delivers events to the callback until the session
    /// stops or the trace is closed. Returns the Win32 status.
    pub fn process(&mut self) -> u32 {
        let handles = [PROCESSTRACE_HANDLE {
            Value: self.closer.handle,
        }];
        // SAFETY: the handle came from a successful OpenTraceW and is not
        // closed by this thread before this returns (close consumes `self`);
        // another thread may close it, which makes ProcessTrace return. The
        // logfile and context stay alive for as long as `self` exists.
        unsafe { ProcessTrace(&handles, None, None) }.0
    }

    /// `CloseTrace` (unless another thread already did) and give the ring
    /// producer back. Call after `process` returned (or instead of it).
    pub fn close(self) -> RingProducer {
        self.closer.close();
        // SAFETY: ProcessTrace is not running (it returned, or was never
        // called, on the thread that owns `self`), and the handle is closed,
        // so nothing touches the logfile or the context any more; the Box
        // leaked in `open_real_time` is reclaimed exactly once since `self`
        // is consumed.
        let c = unsafe { Box::from_raw(self.inner.as_ptr()) };
        c.ctx.producer
    }
}

fn guid(g: &GUID) -> Guid {
    Guid {
        data1: g.data1,
        data2: g.data2,
        data3: g.data3,
        data4: g.data4,
    }
}

/// Copies the fields of an `EVENT_RECORD` into a view (no allocation).
fn view_of(rec: &EVENT_RECORD) -> RecordView<'_> {
    let h = &rec.EventHeader;
    let payload: &[u8] = if rec.UserData.is_null() || rec.UserDataLength == 0 {
        &[]
    } else {
        // SAFETY: ETW guarantees UserData points to UserDataLength readable
        // bytes for the duration of the callback; the slice does not outlive
        // `rec`.
        unsafe {
            std::slice::from_raw_parts(rec.UserData.cast::<u8>(), usize::from(rec.UserDataLength))
        }
    };
    let mut extended = ExtItems::default();
    if !rec.ExtendedData.is_null() && rec.ExtendedDataCount != 0 {
        // SAFETY: ExtendedData points to ExtendedDataCount items, valid for
        // the duration of the callback.
        let items = unsafe {
            std::slice::from_raw_parts(rec.ExtendedData, usize::from(rec.ExtendedDataCount))
        };
        for item in items {
            let data: &[u8] = if item.DataPtr == 0 || item.DataSize == 0 {
                &[]
            } else {
                // SAFETY: DataPtr points to DataSize readable bytes, valid
                // for the duration of the callback.
                unsafe {
                    std::slice::from_raw_parts(
                        item.DataPtr as usize as *const u8,
                        usize::from(item.DataSize),
                    )
                }
            };
            extended.push(ExtItem {
                ext_type: item.ExtType,
                data,
            });
        }
    }
    // SAFETY: both members of the ETW_BUFFER_CONTEXT union are plain integers
    // over the same two bytes; which one is valid depends on the header flag
    // (`processor_of`).
    let context = unsafe { rec.BufferContext.Anonymous.ProcessorIndex };
    let processor = processor_of(h.Flags, context.to_le_bytes());
    let d = &h.EventDescriptor;
    RecordView {
        provider: guid(&h.ProviderId),
        flags: h.Flags,
        pid: h.ProcessId,
        tid: h.ThreadId,
        timestamp: h.TimeStamp as u64,
        id: d.Id,
        version: d.Version,
        channel: d.Channel,
        level: d.Level,
        opcode: d.Opcode,
        task: d.Task,
        keyword: d.Keyword,
        processor,
        payload,
        extended,
    }
}

/// The real-time callback: copy into the ring, nothing else.
unsafe extern "system" fn on_event(record: *mut EVENT_RECORD) {
    // SAFETY: ETW passes a valid EVENT_RECORD for the duration of the call.
    let Some(rec) = (unsafe { record.as_ref() }) else {
        return;
    };
    // SAFETY: UserContext is the Context set in `open_real_time`: a live
    // CallbackContext used only by this (the ProcessTrace) thread.
    let Some(ctx) = (unsafe { rec.UserContext.cast::<CallbackContext>().as_mut() }) else {
        return;
    };
    let view = view_of(rec);
    ctx.producer.push(&view);
}

// --- Console control ----------------------------------------------------

/// 0: none; 1: Ctrl-C/Break; 2: console close, logoff, shutdown.
static STOP_REQUEST: AtomicU8 = AtomicU8::new(0);
/// Set by the main loop once the session is stopped and outputs flushed.
static MAIN_DONE: AtomicBool = AtomicBool::new(false);

extern "system" fn ctrl_handler(ctrl_type: u32) -> BOOL {
    match ctrl_type {
        CTRL_C_EVENT | CTRL_BREAK_EVENT => {
            STOP_REQUEST.store(1, Ordering::SeqCst);
            BOOL(1)
        }
        CTRL_CLOSE_EVENT | CTRL_LOGOFF_EVENT | CTRL_SHUTDOWN_EVENT => {
            STOP_REQUEST.store(2, Ordering::SeqCst);
            // Windows ends the process when this returns (or after ~5 s):
            // give the main loop time to stop the session and flush.
            let deadline = Instant::now() + Duration::from_millis(4500);
            while !MAIN_DONE.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            BOOL(1)
        }
        _ => BOOL(0),
    }
}

/// Installs the console control handler (idempotent) and clears old requests.
pub fn install_ctrl_handler() -> Result<(), u32> {
    STOP_REQUEST.store(0, Ordering::SeqCst);
    MAIN_DONE.store(false, Ordering::SeqCst);
    // SAFETY: registers a `'static` function that only touches atomics.
    unsafe { SetConsoleCtrlHandler(Some(ctrl_handler), true) }.map_err(|e| e.code().0 as u32)
}

/// The pending stop request, if any.
pub fn stop_request() -> Option<StopReason> {
    match STOP_REQUEST.load(Ordering::SeqCst) {
        1 => Some(StopReason::Interrupt),
        2 => Some(StopReason::ConsoleClose),
        _ => None,
    }
}

/// Tells a waiting console-close handler that everything is flushed.
pub fn signal_done() {
    MAIN_DONE.store(true, Ordering::SeqCst);
}

// --- Live-only enrichment ----------------------------------------------

/// Logical processors in all processor groups
/// ([GetActiveProcessorCount](https://learn.microsoft.com/windows/win32/api/winbase/nf-winbase-getactiveprocessorcount)).
pub fn processor_count() -> u32 {
    // SAFETY: no preconditions.
    unsafe { GetActiveProcessorCount(ALL_PROCESSOR_GROUPS) }
}

/// `ERROR_NOT_ALL_ASSIGNED`: AdjustTokenPrivileges succeeded but the token
/// does not hold the privilege.
const ERROR_NOT_ALL_ASSIGNED: u32 = 1300;

/// Enables SeDebugPrivilege in this process's token. An elevated token
/// holds it disabled, and `ReadProcessMemory` on other users' processes and
/// `EnumDeviceDrivers`' kernel bases need it enabled
/// ([AdjustTokenPrivileges](https://learn.microsoft.com/windows/win32/api/securitybaseapi/nf-securitybaseapi-adjusttokenprivileges)).
/// Returns the Win32 error when it cannot be enabled.
pub fn enable_debug_privilege() -> Result<(), u32> {
    let mut token = HANDLE::default();
    // SAFETY: GetCurrentProcess returns a pseudo handle; `token` is a valid
    // out pointer.
    unsafe {
        OpenProcessToken(
            GetCurrentProcess(),
            TOKEN_ADJUST_PRIVILEGES | TOKEN_QUERY,
            &mut token,
        )
    }
    .map_err(|e| e.code().0 as u32)?;
    let mut luid = LUID::default();
    // SAFETY: a NUL-terminated literal and a valid out pointer.
    let looked_up = unsafe { LookupPrivilegeValueW(None, w!("SeDebugPrivilege"), &mut luid) };
    let result = looked_up.map_err(|e| e.code().0 as u32).and_then(|()| {
        let tp = TOKEN_PRIVILEGES {
            PrivilegeCount: 1,
            Privileges: [LUID_AND_ATTRIBUTES {
                Luid: luid,
                Attributes: SE_PRIVILEGE_ENABLED,
            }],
        };
        // SAFETY: `token` was opened with TOKEN_ADJUST_PRIVILEGES; `tp` is a
        // complete one-entry TOKEN_PRIVILEGES alive during the call.
        unsafe { AdjustTokenPrivileges(token, false, Some(&tp), 0, None, None) }
            .map_err(|e| e.code().0 as u32)?;
        // SAFETY: no preconditions.
        match unsafe { GetLastError() }.0 {
            ERROR_NOT_ALL_ASSIGNED => Err(ERROR_NOT_ALL_ASSIGNED),
            _ => Ok(()),
        }
    });
    // SAFETY: `token` was opened above and is closed once.
    let _ = unsafe { CloseHandle(token) };
    result
}

/// The session clock, known out of band: a QPC reading (the raw timestamp
/// unit with `ClientContext` 1) next to the current UTC FILETIME.
pub fn clock_now() -> Option<Clock> {
    let mut freq = 0i64;
    let mut qpc = 0i64;
    // SAFETY: `freq` is a valid out pointer.
    unsafe { QueryPerformanceFrequency(&mut freq) }.ok()?;
    // SAFETY: no preconditions.
    let ft = unsafe { GetSystemTimePreciseAsFileTime() };
    // SAFETY: `qpc` is a valid out pointer.
    unsafe { QueryPerformanceCounter(&mut qpc) }.ok()?;
    (freq > 0 && qpc > 0).then(|| Clock {
        sync_raw: qpc as u64,
        sync_filetime: (i64::from(ft.dwHighDateTime) << 32) | i64::from(ft.dwLowDateTime),
        ticks_per_second: freq as u64,
    })
}

fn directory(f: impl Fn(&mut [u16]) -> u32) -> Option<PathBuf> {
    let mut buf = vec![0u16; 520];
    let n = f(&mut buf) as usize;
    (n > 0 && n < buf.len()).then(|| PathBuf::from(String::from_utf16_lossy(&buf[..n])))
}

/// `C:\Windows\System32`.
pub fn system_directory() -> Option<PathBuf> {
    // SAFETY: the buffer and its length are passed together by the binding.
    directory(|b| unsafe { GetSystemDirectoryW(Some(b)) })
}

/// `C:\Windows\SysWOW64` (None on 32-bit-only systems).
pub fn syswow64_directory() -> Option<PathBuf> {
    // SAFETY: the buffer and its length are passed together by the binding.
    directory(|b| unsafe { GetSystemWow64DirectoryW(Some(b)) })
}

/// The Windows version (major, minor) from
/// [RtlGetVersion](https://learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-rtlgetversion),
/// which, unlike `GetVersionExW`, is not capped at 6.2 for programs without
/// a compatibility manifest. `(0, 0)` if it fails (treated as old: the
/// flush timer then goes in seconds, which every version reads correctly).
pub fn os_version() -> (u32, u32) {
    let mut v = OSVERSIONINFOW {
        dwOSVersionInfoSize: size_of::<OSVERSIONINFOW>() as u32,
        ..Default::default()
    };
    // SAFETY: `v` is a valid OSVERSIONINFOW with its size set, as required.
    let status = unsafe { RtlGetVersion(&mut v) };
    if status.is_ok() {
        (v.dwMajorVersion, v.dwMinorVersion)
    } else {
        (0, 0)
    }
}

/// This machine's DNS host name (ECS `host.name` of live alerts), from
/// [GetComputerNameExW](https://learn.microsoft.com/windows/win32/api/sysinfoapi/nf-sysinfoapi-getcomputernameexw)
/// with `ComputerNameDnsHostname`: on `ERROR_MORE_DATA` the size needed,
/// terminator included, comes back in the size argument.
pub fn computer_name() -> Option<String> {
    let mut size = 256u32;
    for _ in 0..2 {
        let mut buf = vec![0u16; size as usize];
        let mut n = size;
        // SAFETY: `buf` holds `n` u16s and stays alive for the call, which
        // writes at most `n` of them; `n` is a valid in/out pointer.
        let r = unsafe {
            GetComputerNameExW(
                ComputerNameDnsHostname,
                Some(PWSTR(buf.as_mut_ptr())),
                &mut n,
            )
        };
        if r.is_ok() {
            let name = String::from_utf16_lossy(&buf[..(n as usize).min(buf.len())]);
            return (!name.is_empty()).then_some(name);
        }
        if n <= size {
            return None;
        }
        size = n;
    }
    None
}

/// Loaded kernel modules: (image base, file name as the kernel reports it,
/// e.g. `\SystemRoot\system32\ntoskrnl.exe`). Bases read as 0 without the
/// privilege to see kernel addresses.
pub fn kernel_modules() -> Vec<(u64, String)> {
    let mut bases: Vec<*mut c_void> = vec![std::ptr::null_mut(); 1024];
    loop {
        let cb = (bases.len() * size_of::<*mut c_void>()) as u32;
        let mut needed = 0u32;
        // SAFETY: `bases` has room for `cb` bytes of pointers; `needed` is a
        // valid out pointer.
        if unsafe { EnumDeviceDrivers(bases.as_mut_ptr(), cb, &mut needed) }.is_err() {
            return Vec::new();
        }
        if needed as usize <= cb as usize {
            bases.truncate(needed as usize / size_of::<*mut c_void>());
            break;
        }
        bases.resize(
            needed as usize / size_of::<*mut c_void>() + 16,
            std::ptr::null_mut(),
        );
    }
    let mut out = Vec::with_capacity(bases.len());
    let mut name = vec![0u16; 520];
    for &base in &bases {
        // SAFETY: `base` is only used as a lookup key by psapi, never
        // dereferenced here; `name` is a writable buffer the binding sizes.
        let n = unsafe { GetDeviceDriverFileNameW(base, &mut name) } as usize;
        if n > 0 && n <= name.len() {
            out.push((base as usize as u64, String::from_utf16_lossy(&name[..n])));
        }
    }
    out
}

/// Up to `len` bytes of process `pid` at `address`, if the process is alive
/// and readable.
pub fn read_process_memory(pid: u32, address: u64, len: usize) -> Option<Vec<u8>> {
    // SAFETY: OpenProcess has no memory-safety preconditions.
    let process: HANDLE = unsafe {
        OpenProcess(
            PROCESS_VM_READ | PROCESS_QUERY_LIMITED_INFORMATION,
            false,
            pid,
        )
    }
    .ok()?;
    let mut buf = vec![0u8; len];
    let mut read = 0usize;
    // SAFETY: `buf` is writable for `len` bytes and `read` is a valid out
    // pointer; the remote address is only read by the kernel, which checks it.
    let ok = unsafe {
        ReadProcessMemory(
            process,
            address as usize as *const c_void,
            buf.as_mut_ptr().cast(),
            len,
            Some(&mut read),
        )
    }
    .is_ok();
    // SAFETY: `process` is a handle we opened above and close once.
    let _ = unsafe { CloseHandle(process) };
    (ok && read > 0).then(|| {
        buf.truncate(read);
        buf
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentry_raw::{guids, EventId};
    use windows::Win32::System::Diagnostics::Etw::EVENT_HEADER_EXTENDED_DATA_ITEM;

    fn record(payload: &mut [u8], flags: u16) -> EVENT_RECORD {
        let mut rec = EVENT_RECORD::default();
        rec.EventHeader.ProviderId = GUID::from_u128(0xce1dbfb4_137e_4da6_87b0_3f59aa102cbc);
        rec.EventHeader.Flags = flags;
        rec.EventHeader.ProcessId = u32::MAX;
        rec.EventHeader.ThreadId = u32::MAX;
        rec.EventHeader.TimeStamp = 0x0102_0304_0506;
        rec.EventHeader.EventDescriptor.Opcode = 51;
        rec.EventHeader.EventDescriptor.Version = 2;
        rec.BufferContext.Anonymous.ProcessorIndex = 5;
        rec.UserData = payload.as_mut_ptr().cast();
        rec.UserDataLength = payload.len() as u16;
        rec
    }

    #[test]
    fn view_of_event_record() {
        let mut payload = 0xffff_f806_0000_1234u64.to_le_bytes();
        let rec = record(&mut payload, 0x0040 | 0x0100);
        let v = view_of(&rec);
        assert_eq!(v.provider, guids::PERF_INFO);
        assert_eq!(
            v.event_id(),
            EventId::Kernel {
                group: 0x0F,
                opcode: 51
            }
        );
        assert_eq!(v.processor, 5);
        assert_eq!(v.timestamp, 0x0102_0304_0506);
        assert_eq!(v.pointer_size(), 8);
        assert_eq!(v.payload, &0xffff_f806_0000_1234u64.to_le_bytes());
    }

    #[test]
    fn view_of_extended_items_and_empty_payload() {
        let data = [1u8, 2, 3];
        let mut items = [EVENT_HEADER_EXTENDED_DATA_ITEM {
            ExtType: 2,
            DataSize: 3,
            DataPtr: data.as_ptr() as usize as u64,
            ..Default::default()
        }];
        let mut rec = record(&mut [], 0x0001);
        rec.UserData = std::ptr::null_mut();
        rec.ExtendedDataCount = 1;
        rec.ExtendedData = items.as_mut_ptr();
        let v = view_of(&rec);
        assert!(v.payload.is_empty());
        assert_eq!(v.extended.as_slice().len(), 1);
        assert_eq!(v.extended.as_slice()[0].data, &data);
    }

    #[test]
    fn callback_pushes_into_the_ring() {
        let (producer, mut consumer) = crate::ring::ring(4096);
        let mut ctx = CallbackContext { producer };
        let mut payload = [7u8; 8];
        let mut rec = record(&mut payload, 0x0040);
        rec.UserContext = (&mut ctx as *mut CallbackContext).cast();
        // SAFETY: `rec` is a valid EVENT_RECORD whose pointers (payload,
        // context) outlive the call.
        unsafe { on_event(&mut rec) };
        let ev = consumer.pop().expect("one event");
        assert_eq!(ev.payload, &[7u8; 8]);
        assert_eq!(ev.processor, 5);
        assert_eq!(ev.pid, None);
    }

    #[test]
    fn aligned_block_round_trips() {
        let bytes: Vec<u8> = (0..=20).collect();
        let b = AlignedBlock::new(&bytes);
        assert_eq!(b.byte_len(), 24);
        assert_eq!(&b.to_bytes()[..21], &bytes[..]);
    }
}
