//! The `EVENT_TRACE_PROPERTIES` block that `StartTraceW` and `ControlTraceW`
//! take, built as plain bytes so that its layout is tested on any platform.
//!
//! Layout: [EVENT_TRACE_PROPERTIES](https://learn.microsoft.com/windows/win32/api/evntrace/ns-evntrace-event_trace_properties)
//! starting with a [WNODE_HEADER](https://learn.microsoft.com/windows/win32/etw/wnode-header),
//! followed in the same allocation by the session name and the log file name
//! (UTF-16, NUL-terminated) at `LoggerNameOffset` / `LogFileNameOffset`;
//! `Wnode.BufferSize` is the size of the whole allocation. The offsets below
//! are those of the 64-bit structure (120 bytes); the Windows build asserts
//! they equal the `windows` crate's definition.

use sentry_raw::{guids, Guid};

/// `sizeof(EVENT_TRACE_PROPERTIES)` on 64-bit Windows.
pub const PROPERTIES_SIZE: usize = 120;

/// Byte offsets of the fields syscall-sentry sets or reads (64-bit layout).
pub mod offsets {
    pub const WNODE_BUFFER_SIZE: usize = 0;
    pub const WNODE_GUID: usize = 24;
    pub const WNODE_CLIENT_CONTEXT: usize = 40;
    pub const WNODE_FLAGS: usize = 44;
    pub const BUFFER_SIZE: usize = 48;
    pub const MINIMUM_BUFFERS: usize = 52;
    pub const MAXIMUM_BUFFERS: usize = 56;
    pub const MAXIMUM_FILE_SIZE: usize = 60;
    pub const LOG_FILE_MODE: usize = 64;
    pub const FLUSH_TIMER: usize = 68;
    pub const ENABLE_FLAGS: usize = 72;
    pub const NUMBER_OF_BUFFERS: usize = 80;
    pub const FREE_BUFFERS: usize = 84;
    pub const EVENTS_LOST: usize = 88;
    pub const BUFFERS_WRITTEN: usize = 92;
    pub const LOG_BUFFERS_LOST: usize = 96;
    pub const REAL_TIME_BUFFERS_LOST: usize = 100;
    pub const LOGGER_THREAD_ID: usize = 104;
    pub const LOG_FILE_NAME_OFFSET: usize = 112;
    pub const LOGGER_NAME_OFFSET: usize = 116;
}

/// `WNODE_FLAG_TRACED_GUID`: the block describes a trace session.
pub const WNODE_FLAG_TRACED_GUID: u32 = 0x0002_0000;
/// `EVENT_TRACE_FILE_MODE_SEQUENTIAL`.
pub const EVENT_TRACE_FILE_MODE_SEQUENTIAL: u32 = 0x0000_0001;
/// `EVENT_TRACE_REAL_TIME_MODE`.
pub const EVENT_TRACE_REAL_TIME_MODE: u32 = 0x0000_0100;
/// `EVENT_TRACE_SYSTEM_LOGGER_MODE` (Windows 8+): a private session that may
/// receive kernel events.
pub const EVENT_TRACE_SYSTEM_LOGGER_MODE: u32 = 0x0200_0000;
/// `EVENT_TRACE_USE_MS_FLUSH_TIMER`: `FlushTimer` is in milliseconds, not
/// seconds. Not in the public `evntrace.h` nor in Microsoft Learn's
/// [Logging Mode Constants](https://learn.microsoft.com/windows/win32/etw/logging-mode-constants)
/// (which lists no such mode), whose
/// [EVENT_TRACE_PROPERTIES.FlushTimer](https://learn.microsoft.com/windows/win32/api/evntrace/ns-evntrace-event_trace_properties)
/// is "how often, in seconds ... The minimum flush time is 1 second". It is
/// used only where [`Buffers::for_os`] trusts it (Windows 8 and later).
pub const EVENT_TRACE_USE_MS_FLUSH_TIMER: u32 = 0x0000_0010;

/// `EVENT_TRACE_FLAG_PROCESS`.
pub const EVENT_TRACE_FLAG_PROCESS: u32 = 0x0000_0001;
/// `EVENT_TRACE_FLAG_THREAD`.
pub const EVENT_TRACE_FLAG_THREAD: u32 = 0x0000_0002;
/// `EVENT_TRACE_FLAG_IMAGE_LOAD`.
pub const EVENT_TRACE_FLAG_IMAGE_LOAD: u32 = 0x0000_0004;
/// `EVENT_TRACE_FLAG_SYSTEMCALL`.
pub const EVENT_TRACE_FLAG_SYSTEMCALL: u32 = 0x0000_0080;
/// What syscall-sentry asks the kernel for.
pub const SENTRY_ENABLE_FLAGS: u32 = EVENT_TRACE_FLAG_SYSTEMCALL
    | EVENT_TRACE_FLAG_PROCESS
    | EVENT_TRACE_FLAG_THREAD
    | EVENT_TRACE_FLAG_IMAGE_LOAD;

/// `WNODE_HEADER.ClientContext` 1: timestamps are raw QueryPerformanceCounter
/// ticks, the clock the StackWalk `EventTimeStamp` pairing relies on.
pub const CLIENT_CONTEXT_QPC: u32 = 1;

/// The name the kernel reserves for the one global kernel session.
pub const KERNEL_LOGGER_NAME: &str = "NT Kernel Logger";
/// The default name of a private system-logger session.
pub const PRIVATE_LOGGER_NAME: &str = "syscall-sentry";
/// The session GUID of a private session named `name`. `StartTraceW` refuses
/// a session whose name *or* GUID is taken (`ERROR_ALREADY_EXISTS`), so one
/// fixed GUID for every private session would stop a second one (`record`
/// while `live` runs, another `--session-name`) from starting. Derived from
/// the name (case-folded, as session names are case-insensitive): unique
/// per name, the same for every run, and `stop`/`--force` need only the
/// name. Two FNV-1a 64-bit hashes with different bases, marked as an RFC
/// 4122 variant with version nibble 8 ("custom").
pub fn private_session_guid(name: &str) -> Guid {
    let fnv = |basis: u64| {
        name.to_lowercase()
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .fold(basis, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            })
    };
    let hi = fnv(0xcbf2_9ce4_8422_2325);
    let lo = fnv(0x5e7c_a11e_5e17_4c0d);
    let v = (u128::from(hi) << 64) | u128::from(lo);
    let v = (v & !(0xF << 76)) | (0x8 << 76);
    let v = (v & !(0x3 << 62)) | (0x2 << 62);
    Guid::from_u128(v)
}

/// Room reserved for each name, in UTF-16 units including the NUL, so that
/// `ControlTraceW(QUERY)` can write back names up to this length.
pub const NAME_ROOM_CHARS: usize = 1024;

/// Longest session name: "limited to 1,024 characters"
/// ([StartTraceW](https://learn.microsoft.com/windows/win32/api/evntrace/nf-evntrace-starttracew));
/// counted here as UTF-16 units with the terminating NUL.
pub const MAX_SESSION_NAME_CHARS: usize = NAME_ROOM_CHARS - 1;

/// Which session to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionKind {
    /// The global "NT Kernel Logger" (control GUID `SystemTraceControlGuid`).
    KernelLogger,
    /// A private session in `EVENT_TRACE_SYSTEM_LOGGER_MODE` under its own
    /// name; kernel flags are set with `TraceSetInformation`.
    Private { name: String },
}

impl SessionKind {
    pub fn name(&self) -> &str {
        match self {
            SessionKind::KernelLogger => KERNEL_LOGGER_NAME,
            SessionKind::Private { name } => name,
        }
    }

    /// The GUID that goes into `Wnode.Guid`.
    pub fn guid(&self) -> Guid {
        match self {
            SessionKind::KernelLogger => guids::SYSTEM_TRACE_CONTROL,
            SessionKind::Private { name } => private_session_guid(name),
        }
    }

    /// Refuses names Windows would refuse, with the reason.
    pub fn check(&self) -> Result<(), String> {
        let n = self.name().encode_utf16().count();
        if n == 0 {
            return Err("--session-name: empty; give the session a name".into());
        }
        if n > MAX_SESSION_NAME_CHARS {
            return Err(format!(
                "--session-name: {n} characters; ETW session names are limited to \
                 {MAX_SESSION_NAME_CHARS} (StartTraceW), choose a shorter one"
            ));
        }
        Ok(())
    }
}

/// Where events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Delivered to a real-time consumer (`live`).
    RealTime,
    /// Written to a sequential `.etl` file (`record`); the path as passed to
    /// Windows (absolute is best).
    File(String),
}

/// Buffer settings, in the units ETW takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffers {
    /// Buffer size in KB.
    pub buffer_kb: u32,
    pub minimum: u32,
    pub maximum: u32,
    /// Milliseconds between forced flushes (the real-time latency bound,
    /// which the reordering stage's lag must exceed); 0: no timer, buffers
    /// are written when full (`record`).
    pub flush_ms: u32,
    /// `FlushTimer` goes in milliseconds with `EVENT_TRACE_USE_MS_FLUSH_TIMER`
    /// (else in whole seconds, `flush_ms` being a multiple of 1000).
    pub ms_flush_timer: bool,
}

/// Default buffer size: 256 KB. A stack walk on every syscall is tens of
/// thousands of events a second per busy processor; 64 KB buffers fill
/// (and need a free buffer) 4 times as often.
pub const DEFAULT_BUFFER_KB: u32 = 256;
/// Default flush interval for real-time sessions.
pub const DEFAULT_FLUSH_MS: u32 = 250;
/// Most memory the default buffer counts may reach, in KB (512 MiB).
pub const MAX_DEFAULT_BUFFER_MEMORY_KB: u64 = 512 << 10;

impl Buffers {
    /// Buffer counts for a host with `processors` logical processors: ETW
    /// needs at least two buffers per processor
    /// ([EVENT_TRACE_PROPERTIES.MinimumBuffers](https://learn.microsoft.com/windows/win32/api/evntrace/ns-evntrace-event_trace_properties));
    /// minimum `max(2 × processors, 16)`, maximum that plus
    /// `max(4 × processors, 64)` for bursts, capped so that all buffers
    /// together stay within 512 MiB. With 256 KB buffers: 4 MiB minimum and
    /// 20 MiB maximum on up to 8 processors, 32 and 96 MiB on 64.
    pub fn for_processors(processors: u32, buffer_kb: u32, flush_ms: u32) -> Buffers {
        let n = processors.max(1);
        let kb = buffer_kb.max(1);
        let cap = (MAX_DEFAULT_BUFFER_MEMORY_KB / u64::from(kb)).clamp(2, u64::from(u32::MAX));
        let minimum = (2 * n).max(16);
        let maximum = minimum.saturating_add((4 * n).max(64));
        Buffers {
            buffer_kb: kb,
            minimum: (u64::from(minimum).min(cap)) as u32,
            maximum: (u64::from(maximum).min(cap)) as u32,
            flush_ms,
            ms_flush_timer: true,
        }
    }

    /// The flush settings for Windows `major.minor`. Windows 7 (6.1) and
    /// earlier are not trusted with `EVENT_TRACE_USE_MS_FLUSH_TIMER`: Microsoft
    /// documents `FlushTimer` in seconds only, and a 250 read as seconds
    /// would hold a quiet processor's events for four minutes. There the
    /// interval is rounded up to whole seconds (at least 1 s, the documented
    /// minimum) and written in seconds without the flag; `flush_ms` keeps
    /// the real interval, so the reordering lag is checked against it.
    /// Windows 8 (6.2) and later keep the millisecond timer.
    pub fn for_os(mut self, major: u32, minor: u32) -> Buffers {
        if (major, minor) < (6, 2) && self.flush_ms != 0 {
            self.flush_ms = self.flush_ms.div_ceil(1000).max(1).saturating_mul(1000);
            self.ms_flush_timer = false;
        }
        self
    }

    /// The `FlushTimer` value, in the unit the logging mode says.
    pub fn flush_timer(&self) -> u32 {
        if self.ms_flush_timer {
            self.flush_ms
        } else {
            self.flush_ms / 1000
        }
    }
}

impl Default for Buffers {
    /// For 8 processors, real time.
    fn default() -> Self {
        Buffers::for_processors(8, DEFAULT_BUFFER_KB, DEFAULT_FLUSH_MS)
    }
}

/// Everything `StartTraceW` needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSpec {
    pub kind: SessionKind,
    pub destination: Destination,
    pub buffers: Buffers,
    /// Which events carry the calls (`crate::audit`): the kernel flags and
    /// whether the Kernel-Audit-API-Calls provider is enabled.
    pub source: crate::audit::Source,
}

impl SessionSpec {
    pub fn log_file_mode(&self) -> u32 {
        let mut dest = match self.destination {
            Destination::RealTime => EVENT_TRACE_REAL_TIME_MODE,
            Destination::File(_) => EVENT_TRACE_FILE_MODE_SEQUENTIAL,
        };
        if self.buffers.flush_ms != 0 && self.buffers.ms_flush_timer {
            dest |= EVENT_TRACE_USE_MS_FLUSH_TIMER;
        }
        match self.kind {
            SessionKind::KernelLogger => dest,
            SessionKind::Private { .. } => dest | EVENT_TRACE_SYSTEM_LOGGER_MODE,
        }
    }

    /// `EnableFlags` in the block, for both kinds: the kernel logger takes
    /// them there, and so does a system logger ("use the EnableFlags member
    /// of EVENT_TRACE_PROPERTIES", [Configuring and Starting a SystemTraceProvider Session](https://learn.microsoft.com/windows/win32/etw/configuring-and-starting-a-systemtraceprovider-session));
    /// a private session also gets them through
    /// `TraceSetInformation(TraceSystemTraceEnableFlagsInfo)`, after its
    /// stacks are set.
    pub fn enable_flags(&self) -> u32 {
        self.source.enable_flags()
    }
}

/// A built block: the bytes to hand to Windows and where the names are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropertiesBlock {
    pub bytes: Vec<u8>,
    pub logger_name_offset: usize,
    /// 0 when there is no log file (real-time session, query, stop).
    pub log_file_name_offset: usize,
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .unwrap_or(0)
}

fn utf16z(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

fn put_utf16(b: &mut [u8], at: usize, units: &[u16]) {
    for (i, u) in units.iter().enumerate() {
        b[at + 2 * i..at + 2 * i + 2].copy_from_slice(&u.to_le_bytes());
    }
}

fn round_up8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

impl PropertiesBlock {
    /// The block for `StartTraceW`.
    pub fn for_start(spec: &SessionSpec) -> PropertiesBlock {
        let file = match &spec.destination {
            Destination::File(p) => Some(p.as_str()),
            Destination::RealTime => None,
        };
        let mut block = Self::layout(spec.kind.name(), file);
        let b = &mut block.bytes;
        b[offsets::WNODE_GUID..offsets::WNODE_GUID + 16]
            .copy_from_slice(&spec.kind.guid().to_le_bytes());
        put_u32(b, offsets::WNODE_CLIENT_CONTEXT, CLIENT_CONTEXT_QPC);
        put_u32(b, offsets::WNODE_FLAGS, WNODE_FLAG_TRACED_GUID);
        put_u32(b, offsets::BUFFER_SIZE, spec.buffers.buffer_kb);
        put_u32(b, offsets::MINIMUM_BUFFERS, spec.buffers.minimum);
        put_u32(b, offsets::MAXIMUM_BUFFERS, spec.buffers.maximum);
        put_u32(b, offsets::LOG_FILE_MODE, spec.log_file_mode());
        put_u32(b, offsets::FLUSH_TIMER, spec.buffers.flush_timer());
        put_u32(b, offsets::ENABLE_FLAGS, spec.enable_flags());
        block
    }

    /// The block for `ControlTraceW` (query, stop): zeroed, with the size
    /// and name room set so Windows can write the session's names back.
    pub fn for_control(session_name: &str) -> PropertiesBlock {
        let mut block = Self::layout(session_name, None);
        // Room for a log file name written back by a query.
        let extra = NAME_ROOM_CHARS * 2;
        let at = block.bytes.len();
        block.bytes.resize(at + extra, 0);
        put_u32(&mut block.bytes, offsets::LOG_FILE_NAME_OFFSET, at as u32);
        block.log_file_name_offset = at;
        let total = block.bytes.len() as u32;
        put_u32(&mut block.bytes, offsets::WNODE_BUFFER_SIZE, total);
        block
    }

    /// Structure, then the session name, then (optionally) the log file name;
    /// each name region is 8-byte aligned and at least `NAME_ROOM_CHARS` long.
    fn layout(session_name: &str, log_file: Option<&str>) -> PropertiesBlock {
        let name = utf16z(session_name);
        let name_room = round_up8(name.len().max(NAME_ROOM_CHARS) * 2);
        let logger_name_offset = PROPERTIES_SIZE;
        let mut total = logger_name_offset + name_room;
        let file = log_file.map(utf16z);
        let log_file_name_offset = match &file {
            Some(f) => {
                let at = total;
                total += round_up8(f.len().max(NAME_ROOM_CHARS) * 2);
                at
            }
            None => 0,
        };
        let mut bytes = vec![0u8; total];
        put_u32(&mut bytes, offsets::WNODE_BUFFER_SIZE, total as u32);
        put_u32(
            &mut bytes,
            offsets::LOGGER_NAME_OFFSET,
            logger_name_offset as u32,
        );
        put_u32(
            &mut bytes,
            offsets::LOG_FILE_NAME_OFFSET,
            log_file_name_offset as u32,
        );
        put_utf16(&mut bytes, logger_name_offset, &name);
        if let Some(f) = &file {
            put_utf16(&mut bytes, log_file_name_offset, f);
        }
        PropertiesBlock {
            bytes,
            logger_name_offset,
            log_file_name_offset,
        }
    }

    /// The UTF-16 string at `offset` up to its NUL (lossy).
    pub fn string_at(bytes: &[u8], offset: usize) -> String {
        if offset == 0 || offset >= bytes.len() {
            return String::new();
        }
        let units: Vec<u16> = bytes[offset..]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        String::from_utf16_lossy(&units)
    }
}

/// The counters `ControlTraceW(EVENT_TRACE_CONTROL_QUERY)` writes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionCounters {
    pub number_of_buffers: u32,
    pub free_buffers: u32,
    pub events_lost: u32,
    pub buffers_written: u32,
    pub log_buffers_lost: u32,
    pub real_time_buffers_lost: u32,
    pub log_file_mode: u32,
    pub enable_flags: u32,
}

impl SessionCounters {
    /// Reads the counters from a queried block.
    pub fn read(bytes: &[u8]) -> SessionCounters {
        SessionCounters {
            number_of_buffers: get_u32(bytes, offsets::NUMBER_OF_BUFFERS),
            free_buffers: get_u32(bytes, offsets::FREE_BUFFERS),
            events_lost: get_u32(bytes, offsets::EVENTS_LOST),
            buffers_written: get_u32(bytes, offsets::BUFFERS_WRITTEN),
            log_buffers_lost: get_u32(bytes, offsets::LOG_BUFFERS_LOST),
            real_time_buffers_lost: get_u32(bytes, offsets::REAL_TIME_BUFFERS_LOST),
            log_file_mode: get_u32(bytes, offsets::LOG_FILE_MODE),
            enable_flags: get_u32(bytes, offsets::ENABLE_FLAGS),
        }
    }
}

/// A [CLASSIC_EVENT_ID](https://learn.microsoft.com/windows/win32/api/evntrace/ns-evntrace-classic_event_id):
/// which kernel event gets a stack walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassicEventId {
    pub guid: Guid,
    pub event_type: u8,
}

/// `sizeof(CLASSIC_EVENT_ID)`: GUID, `Type`, 7 reserved bytes.
pub const CLASSIC_EVENT_ID_SIZE: usize = 24;

/// PerfInfo [SysCallEnter](https://learn.microsoft.com/windows/win32/etw/syscallenter)
/// is event type 51 (decimal) of the PerfInfo class.
pub const SYSCALL_ENTER: ClassicEventId = ClassicEventId {
    guid: guids::PERF_INFO,
    event_type: 51,
};
/// [Image Load](https://learn.microsoft.com/windows/win32/etw/image-load), type 10.
/// The kernel logs it as hook 0x030A, in the Process group (the corpus'
/// traces show it), so the stack request names the Process class GUID with
/// type 10; the Image class GUID with type 10 names a hook that is never
/// logged and gets no stack.
pub const IMAGE_LOAD: ClassicEventId = ClassicEventId {
    guid: guids::PROCESS,
    event_type: 10,
};
/// [Process Start](https://learn.microsoft.com/windows/win32/etw/process-typegroup1), type 1.
pub const PROCESS_START: ClassicEventId = ClassicEventId {
    guid: guids::PROCESS,
    event_type: 1,
};

/// Which events get stacks: SysCallEnter always, image loads and process
/// starts on request.
pub fn stack_events(image_load: bool, process_start: bool) -> Vec<ClassicEventId> {
    let mut v = vec![SYSCALL_ENTER];
    if image_load {
        v.push(IMAGE_LOAD);
    }
    if process_start {
        v.push(PROCESS_START);
    }
    v
}

/// The `TraceSetInformation(TraceStackTracingInfo)` buffer: an array of
/// `CLASSIC_EVENT_ID`.
pub fn stack_tracing_bytes(ids: &[ClassicEventId]) -> Vec<u8> {
    let mut out = vec![0u8; ids.len() * CLASSIC_EVENT_ID_SIZE];
    for (i, id) in ids.iter().enumerate() {
        let at = i * CLASSIC_EVENT_ID_SIZE;
        out[at..at + 16].copy_from_slice(&id.guid.to_le_bytes());
        out[at + 16] = id.event_type;
    }
    out
}

/// The `TraceSetInformation(TraceSystemTraceEnableFlagsInfo)` buffer: a
/// `PERFINFO_GROUPMASK` (eight 32-bit masks) whose first mask holds the
/// `EVENT_TRACE_FLAG_*` bits.
pub fn group_mask_bytes(enable_flags: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[..4].copy_from_slice(&enable_flags.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: SessionKind, destination: Destination) -> SessionSpec {
        SessionSpec {
            kind,
            destination,
            buffers: Buffers::default(),
            source: Default::default(),
        }
    }

    #[test]
    fn kernel_logger_real_time_block() {
        let b = PropertiesBlock::for_start(&spec(SessionKind::KernelLogger, Destination::RealTime));
        let bytes = &b.bytes;
        // The name follows the 120-byte structure; the block is one allocation.
        assert_eq!(b.logger_name_offset, 120);
        assert_eq!(get_u32(bytes, 116), 120);
        assert_eq!(get_u32(bytes, 112), 0, "no log file in real-time mode");
        assert_eq!(get_u32(bytes, 0) as usize, bytes.len());
        assert_eq!(bytes.len() % 8, 0);
        assert!(bytes.len() >= 120 + NAME_ROOM_CHARS * 2);
        assert_eq!(PropertiesBlock::string_at(bytes, 120), "NT Kernel Logger");
        // SystemTraceControlGuid, bytes in Windows' mixed-endian order.
        assert_eq!(
            &bytes[24..40],
            &[
                0xad, 0x4a, 0x81, 0x9e, 0x04, 0x32, 0xd2, 0x11, 0x9a, 0x82, 0x00, 0x60, 0x08, 0xa8,
                0x69, 0x39
            ]
        );
        assert_eq!(get_u32(bytes, 40), 1, "ClientContext = QPC");
        assert_eq!(get_u32(bytes, 44), 0x0002_0000, "WNODE_FLAG_TRACED_GUID");
        assert_eq!(get_u32(bytes, 48), 256);
        assert_eq!(get_u32(bytes, 52), 16);
        assert_eq!(get_u32(bytes, 56), 80);
        assert_eq!(
            get_u32(bytes, 64),
            0x110,
            "EVENT_TRACE_REAL_TIME_MODE | EVENT_TRACE_USE_MS_FLUSH_TIMER"
        );
        assert_eq!(get_u32(bytes, 68), 250, "ms");
        assert_eq!(
            get_u32(bytes, 72),
            0x87,
            "SYSCALL|PROCESS|THREAD|IMAGE_LOAD"
        );
    }

    #[test]
    fn record_block_places_file_name_after_session_name() {
        let path = r"C:\traces\trace.etl";
        let b = PropertiesBlock::for_start(&spec(
            SessionKind::KernelLogger,
            Destination::File(path.into()),
        ));
        let bytes = &b.bytes;
        assert_eq!(
            get_u32(bytes, 64),
            0x11,
            "EVENT_TRACE_FILE_MODE_SEQUENTIAL | EVENT_TRACE_USE_MS_FLUSH_TIMER"
        );
        let lf = get_u32(bytes, 112) as usize;
        assert_eq!(lf, b.log_file_name_offset);
        assert_eq!(lf % 8, 0);
        assert!(lf >= 120 + "NT Kernel Logger".len() * 2 + 2);
        assert_eq!(PropertiesBlock::string_at(bytes, lf), path);
        assert_eq!(get_u32(bytes, 0) as usize, bytes.len());
        assert!(bytes.len() >= lf + (path.len() + 1) * 2);
    }

    #[test]
    fn private_session_uses_system_logger_mode_and_own_guid() {
        let kind = SessionKind::Private {
            name: "sentry-test".into(),
        };
        let b = PropertiesBlock::for_start(&spec(kind.clone(), Destination::RealTime));
        assert_eq!(get_u32(&b.bytes, 64), 0x0200_0110);
        assert_eq!(get_u32(&b.bytes, 72), 0x87, "EnableFlags in the block too");
        let g = Guid::read(&b.bytes[24..]).unwrap();
        assert_eq!(g, kind.guid());
        assert_ne!(g, Guid::default());
        assert_ne!(g, guids::SYSTEM_TRACE_CONTROL);
        assert_eq!(PropertiesBlock::string_at(&b.bytes, 120), "sentry-test");
        assert_eq!(group_mask_bytes(SENTRY_ENABLE_FLAGS)[..4], [0x87, 0, 0, 0]);
    }

    #[test]
    fn long_names_get_room() {
        let long = "x".repeat(3000);
        let b = PropertiesBlock::for_start(&spec(
            SessionKind::KernelLogger,
            Destination::File(long.clone()),
        ));
        assert_eq!(
            PropertiesBlock::string_at(&b.bytes, b.log_file_name_offset),
            long
        );
        assert_eq!(get_u32(&b.bytes, 0) as usize, b.bytes.len());
    }

    #[test]
    fn control_block_has_room_for_both_names() {
        let b = PropertiesBlock::for_control("NT Kernel Logger");
        assert_eq!(get_u32(&b.bytes, 0) as usize, b.bytes.len());
        assert_eq!(get_u32(&b.bytes, 116), 120);
        let lf = get_u32(&b.bytes, 112) as usize;
        assert!(lf >= 120 + NAME_ROOM_CHARS * 2);
        assert_eq!(b.bytes.len(), lf + NAME_ROOM_CHARS * 2);
        assert_eq!(get_u32(&b.bytes, 44), 0);
    }

    #[test]
    fn counters_read_from_documented_offsets() {
        let mut b = vec![0u8; 120];
        put_u32(&mut b, 88, 7);
        put_u32(&mut b, 100, 3);
        put_u32(&mut b, 92, 11);
        let c = SessionCounters::read(&b);
        assert_eq!(
            (c.events_lost, c.real_time_buffers_lost, c.buffers_written),
            (7, 3, 11)
        );
        // Short blocks read as zero rather than panic.
        assert_eq!(SessionCounters::read(&b[..10]), SessionCounters::default());
    }

    #[test]
    fn stack_tracing_is_perfinfo_type_51() {
        let bytes = stack_tracing_bytes(&stack_events(true, false));
        assert_eq!(bytes.len(), 48);
        // ce1dbfb4-137e-4da6-87b0-3f59aa102cbc, then Type 51 (0x33, not 0x51).
        assert_eq!(
            &bytes[..16],
            &[
                0xb4, 0xbf, 0x1d, 0xce, 0x7e, 0x13, 0xa6, 0x4d, 0x87, 0xb0, 0x3f, 0x59, 0xaa, 0x10,
                0x2c, 0xbc
            ]
        );
        assert_eq!(bytes[16], 51);
        assert_eq!(&bytes[17..24], &[0; 7]);
        // Image Load is hook 0x030A: the Process class GUID, type 10.
        assert_eq!(Guid::read(&bytes[24..]).unwrap(), guids::PROCESS);
        assert_eq!(bytes[40], 10);
    }

    #[test]
    fn private_session_guids_are_unique_per_name_and_stable() {
        let g = |n: &str| private_session_guid(n);
        assert_eq!(g("syscall-sentry"), g("syscall-sentry"));
        assert_eq!(
            g("syscall-sentry"),
            g("SYSCALL-Sentry"),
            "names are case-insensitive"
        );
        let names = [
            "syscall-sentry",
            "syscall-sentry-record",
            "a",
            "b",
            "sentry-1",
            "sentry-2",
        ];
        let mut all: Vec<Guid> = names.iter().map(|n| g(n)).collect();
        all.sort_by_key(|g| g.to_le_bytes());
        all.dedup();
        assert_eq!(all.len(), names.len());
        // RFC 4122 variant, version 8.
        let b = g("syscall-sentry").to_le_bytes();
        assert_eq!(b[7] >> 4, 8);
        assert_eq!(b[8] >> 6, 2);
    }

    #[test]
    fn session_names_over_the_limit_are_refused() {
        let ok = SessionKind::Private {
            name: "x".repeat(MAX_SESSION_NAME_CHARS),
        };
        assert!(ok.check().is_ok());
        let long = SessionKind::Private {
            name: "x".repeat(MAX_SESSION_NAME_CHARS + 1),
        };
        let e = long.check().unwrap_err();
        assert!(
            e.contains("1024 characters") && e.contains("limited to 1023"),
            "{e}"
        );
        assert!(SessionKind::Private {
            name: String::new()
        }
        .check()
        .is_err());
        assert!(SessionKind::KernelLogger.check().is_ok());
    }

    #[test]
    fn buffers_follow_the_processor_count() {
        let b = Buffers::for_processors(2, 256, 250);
        assert_eq!((b.minimum, b.maximum), (16, 80));
        let b = Buffers::for_processors(64, 256, 250);
        assert_eq!((b.minimum, b.maximum), (128, 384));
        assert!(b.minimum >= 2 * 64, "two buffers per processor at least");
        // 640 processors: 2 per processor would be 1280 buffers of 256 KB
        // (320 MiB); the maximum is capped at 512 MiB in all.
        let b = Buffers::for_processors(640, 256, 250);
        assert_eq!(b.minimum, 1280);
        assert_eq!(b.maximum, 2048);
        // A file session without a flush timer: no ms-timer flag.
        let s = SessionSpec {
            kind: SessionKind::KernelLogger,
            destination: Destination::File("t.etl".into()),
            buffers: Buffers::for_processors(4, 256, 0),
            source: Default::default(),
        };
        assert_eq!(s.log_file_mode(), EVENT_TRACE_FILE_MODE_SEQUENTIAL);
    }

    #[test]
    fn windows_7_flushes_in_whole_seconds_without_the_ms_flag() {
        let block = |b: Buffers| {
            let s = SessionSpec {
                kind: SessionKind::KernelLogger,
                destination: Destination::RealTime,
                buffers: b,
                source: Default::default(),
            };
            let p = PropertiesBlock::for_start(&s);
            (
                get_u32(&p.bytes, 64),
                get_u32(&p.bytes, 68),
                s.buffers.flush_ms,
            )
        };
        let live = Buffers::for_processors(8, 256, DEFAULT_FLUSH_MS);
        // Windows 8 (6.2), 8.1, 10/11: 250 ms with the flag.
        for (major, minor) in [(6, 2), (6, 3), (10, 0)] {
            assert_eq!(block(live.for_os(major, minor)), (0x110, 250, 250));
        }
        // Windows 7 (6.1), Vista (6.0): 1 s, written as 1 without the flag
        // (250 there would be 250 seconds).
        for (major, minor) in [(6, 1), (6, 0)] {
            assert_eq!(block(live.for_os(major, minor)), (0x100, 1, 1000));
        }
        // Rounded up to whole seconds.
        let b = Buffers::for_processors(8, 256, 1500).for_os(6, 1);
        assert_eq!(
            (b.flush_ms, b.flush_timer(), b.ms_flush_timer),
            (2000, 2, false)
        );
        // record without a timer stays without one.
        let b = Buffers::for_processors(8, 256, 0).for_os(6, 1);
        assert_eq!((b.flush_ms, b.flush_timer()), (0, 0));
    }
}
