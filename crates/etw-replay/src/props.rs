//! What `StartTraceW`, `ControlTraceW` and `TraceSetInformation` are given,
//! checked as Windows documents it and read from plain bytes (so the checks
//! run on Linux too). Layout: [EVENT_TRACE_PROPERTIES](https://learn.microsoft.com/windows/win32/api/evntrace/ns-evntrace-event_trace_properties)
//! (64-bit, 120 bytes, after a 48-byte [WNODE_HEADER](https://learn.microsoft.com/windows/win32/etw/wnode-header)),
//! names at `LoggerNameOffset`/`LogFileNameOffset` inside `Wnode.BufferSize`;
//! [CLASSIC_EVENT_ID](https://learn.microsoft.com/windows/win32/api/evntrace/ns-evntrace-classic_event_id)
//! arrays for `TraceStackTracingInfo`, a `PERFINFO_GROUPMASK` (eight 32-bit
//! masks) for `TraceSystemTraceEnableFlagsInfo`
//! ([TraceSetInformation](https://learn.microsoft.com/windows/win32/api/evntrace/nf-evntrace-tracesetinformation)).
//! The offsets are written out independently of `sentry-live`'s.

use sentry_raw::Guid;

pub const ERROR_INVALID_HANDLE: u32 = 6;
pub const ERROR_BAD_LENGTH: u32 = 24;
pub const ERROR_INVALID_PARAMETER: u32 = 87;
pub const ERROR_CALL_NOT_IMPLEMENTED: u32 = 120;
pub const ERROR_BAD_PATHNAME: u32 = 161;
pub const ERROR_BUSY: u32 = 170;
pub const ERROR_ALREADY_EXISTS: u32 = 183;
pub const ERROR_MORE_DATA: u32 = 234;
pub const ERROR_WMI_INSTANCE_NOT_FOUND: u32 = 4201;
pub const ERROR_CTX_CLOSE_PENDING: u32 = 7007;

pub const PROPERTIES_SIZE: usize = 120;
/// `WNODE_FLAG_TRACED_GUID`.
pub const WNODE_FLAG_TRACED_GUID: u32 = 0x0002_0000;
pub const EVENT_TRACE_FILE_MODE_SEQUENTIAL: u32 = 0x0000_0001;
pub const EVENT_TRACE_FILE_MODE_CIRCULAR: u32 = 0x0000_0002;
pub const EVENT_TRACE_USE_MS_FLUSH_TIMER: u32 = 0x0000_0010;
pub const EVENT_TRACE_REAL_TIME_MODE: u32 = 0x0000_0100;
pub const EVENT_TRACE_SYSTEM_LOGGER_MODE: u32 = 0x0200_0000;
/// Most entries a stack-tracing array may have.
pub const MAX_STACK_IDS: usize = 256;
/// Longest session name (characters, without the NUL).
pub const MAX_NAME_CHARS: usize = 1024;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The UTF-16 string at `offset`, which must end with a NUL inside `b`.
fn string_at(b: &[u8], offset: usize) -> Option<String> {
    let units: Vec<u16> = b
        .get(offset..)?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let end = units.iter().position(|&u| u == 0)?;
    Some(String::from_utf16_lossy(&units[..end]))
}

/// A checked `StartTraceW` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartProps {
    pub guid: Guid,
    pub client_context: u32,
    pub buffer_kb: u32,
    pub minimum_buffers: u32,
    pub maximum_buffers: u32,
    pub log_file_mode: u32,
    pub flush_timer: u32,
    pub enable_flags: u32,
    pub log_file: Option<String>,
}

impl StartProps {
    /// Milliseconds between flushes (0: no timer).
    pub fn flush_ms(&self) -> u64 {
        if self.log_file_mode & EVENT_TRACE_USE_MS_FLUSH_TIMER != 0 {
            u64::from(self.flush_timer)
        } else {
            u64::from(self.flush_timer) * 1000
        }
    }
}

/// Checks a session name.
pub fn check_name(name: &str) -> Result<(), u32> {
    let n = name.encode_utf16().count();
    if n == 0 || n > MAX_NAME_CHARS {
        return Err(ERROR_INVALID_PARAMETER);
    }
    Ok(())
}

/// Checks a `StartTraceW` block (`b` is `Wnode.BufferSize` bytes).
pub fn parse_start(name: &str, b: &[u8]) -> Result<StartProps, u32> {
    check_name(name)?;
    check_control(b)?;
    if u32_at(b, 44) & WNODE_FLAG_TRACED_GUID == 0 {
        return Err(ERROR_INVALID_PARAMETER);
    }
    let client_context = u32_at(b, 40);
    if client_context > 3 {
        return Err(ERROR_INVALID_PARAMETER);
    }
    // Room for the session name at LoggerNameOffset (ETW copies it there).
    let name_at = u32_at(b, 116) as usize;
    let name_bytes = (name.encode_utf16().count() + 1) * 2;
    if name_at < PROPERTIES_SIZE || name_at.saturating_add(name_bytes) > b.len() {
        return Err(ERROR_BAD_LENGTH);
    }
    let mode = u32_at(b, 64);
    let file_at = u32_at(b, 112) as usize;
    let log_file = if file_at == 0 {
        None
    } else {
        if file_at < PROPERTIES_SIZE || file_at >= b.len() {
            return Err(ERROR_BAD_LENGTH);
        }
        let f = string_at(b, file_at).ok_or(ERROR_BAD_LENGTH)?;
        // The name regions must not overlap.
        let (lo, lo_len, hi) = if name_at < file_at {
            (name_at, name_bytes, file_at)
        } else {
            (file_at, (f.encode_utf16().count() + 1) * 2, name_at)
        };
        if lo + lo_len > hi {
            return Err(ERROR_INVALID_PARAMETER);
        }
        Some(f)
    };
    let file_mode = mode & (EVENT_TRACE_FILE_MODE_SEQUENTIAL | EVENT_TRACE_FILE_MODE_CIRCULAR);
    if file_mode != 0 && log_file.as_deref().is_none_or(str::is_empty) {
        return Err(ERROR_BAD_PATHNAME);
    }
    if file_mode == 0 && mode & EVENT_TRACE_REAL_TIME_MODE == 0 {
        return Err(ERROR_INVALID_PARAMETER);
    }
    Ok(StartProps {
        guid: Guid::read(&b[24..40]).unwrap_or_default(),
        client_context,
        buffer_kb: u32_at(b, 48),
        minimum_buffers: u32_at(b, 52),
        maximum_buffers: u32_at(b, 56),
        log_file_mode: mode,
        flush_timer: u32_at(b, 68),
        enable_flags: u32_at(b, 72),
        log_file,
    })
}

/// Checks a `ControlTraceW` block: at least the structure, `Wnode.BufferSize`
/// its length.
pub fn check_control(b: &[u8]) -> Result<(), u32> {
    if b.len() < PROPERTIES_SIZE || u32_at(b, 0) as usize != b.len() {
        return Err(ERROR_BAD_LENGTH);
    }
    Ok(())
}

/// What a query or stop writes back: counters and settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    pub buffer_kb: u32,
    pub minimum_buffers: u32,
    pub maximum_buffers: u32,
    pub log_file_mode: u32,
    pub flush_timer: u32,
    pub enable_flags: u32,
    pub number_of_buffers: u32,
    pub events_lost: u32,
    pub buffers_written: u32,
    pub real_time_buffers_lost: u32,
}

/// Writes `c` into a checked control block.
pub fn write_counters(b: &mut [u8], c: &Counters) {
    let mut put = |at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    put(48, c.buffer_kb);
    put(52, c.minimum_buffers);
    put(56, c.maximum_buffers);
    put(64, c.log_file_mode);
    put(68, c.flush_timer);
    put(72, c.enable_flags);
    put(80, c.number_of_buffers);
    put(88, c.events_lost);
    put(92, c.buffers_written);
    put(100, c.real_time_buffers_lost);
}

/// Checks a `TraceStackTracingInfo` array: whole `CLASSIC_EVENT_ID`s (GUID,
/// type, 7 reserved zero bytes), 1 to 256 of them.
pub fn stack_ids(b: &[u8]) -> Result<Vec<(Guid, u8)>, u32> {
    if b.is_empty() || b.len() % 24 != 0 || b.len() / 24 > MAX_STACK_IDS {
        return Err(ERROR_BAD_LENGTH);
    }
    b.chunks_exact(24)
        .map(|c| {
            if c[17..24].iter().any(|&x| x != 0) {
                return Err(ERROR_INVALID_PARAMETER);
            }
            Ok((Guid::read(&c[..16]).unwrap_or_default(), c[16]))
        })
        .collect()
}

/// Checks a `TraceSystemTraceEnableFlagsInfo` buffer: a whole
/// `PERFINFO_GROUPMASK`; returns its first mask (the `EVENT_TRACE_FLAG_*`).
pub fn group_mask(b: &[u8]) -> Result<u32, u32> {
    if b.len() != 32 {
        return Err(ERROR_BAD_LENGTH);
    }
    Ok(u32_at(b, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a u32 field of the property block.
    fn put(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn block(name: &str, file: Option<&str>) -> Vec<u8> {
        let mut b = vec![0u8; 120 + 2048 + 2048];
        let n = b.len() as u32;
        put(&mut b, 0, n);
        put(&mut b, 44, WNODE_FLAG_TRACED_GUID);
        put(&mut b, 40, 1);
        put(&mut b, 116, 120);
        for (i, u) in name.encode_utf16().enumerate() {
            b[120 + 2 * i..122 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
        let mode = match file {
            Some(f) => {
                put(&mut b, 112, 120 + 2048);
                for (i, u) in f.encode_utf16().enumerate() {
                    let at = 120 + 2048 + 2 * i;
                    b[at..at + 2].copy_from_slice(&u.to_le_bytes());
                }
                EVENT_TRACE_FILE_MODE_SEQUENTIAL
            }
            None => EVENT_TRACE_REAL_TIME_MODE | EVENT_TRACE_USE_MS_FLUSH_TIMER,
        };
        put(&mut b, 64, mode);
        put(&mut b, 68, 250);
        b
    }

    #[test]
    fn good_blocks_pass() {
        let p = parse_start("s", &block("s", None)).unwrap();
        assert_eq!(p.flush_ms(), 250);
        assert_eq!(p.log_file, None);
        let p = parse_start("s", &block("s", Some(r"C:\t.etl"))).unwrap();
        assert_eq!(p.log_file.as_deref(), Some(r"C:\t.etl"));
        assert_eq!(p.flush_ms(), 250_000, "seconds without the ms flag");
    }

    #[test]
    fn malformed_blocks_are_refused() {
        let good = block("s", None);
        assert_eq!(parse_start("s", &good[..100]), Err(ERROR_BAD_LENGTH));
        // (field offset, value written there, the refusal, what is wrong)
        let cases = [
            (0, 4000, ERROR_BAD_LENGTH, "BufferSize wrong"),
            (44, 0, ERROR_INVALID_PARAMETER, "no TRACED_GUID"),
            (
                116,
                good.len() as u32 - 2,
                ERROR_BAD_LENGTH,
                "name past the end",
            ),
            (112, 40, ERROR_BAD_LENGTH, "file name inside the struct"),
            (
                64,
                EVENT_TRACE_FILE_MODE_SEQUENTIAL,
                ERROR_BAD_PATHNAME,
                "file mode, no file",
            ),
            (40, 9, ERROR_INVALID_PARAMETER, "ClientContext"),
        ];
        for (at, value, refusal, what) in cases {
            let mut b = good.clone();
            put(&mut b, at, value);
            assert_eq!(parse_start("s", &b), Err(refusal), "{what}");
        }
        assert_eq!(parse_start("", &good), Err(ERROR_INVALID_PARAMETER));
        let long = "x".repeat(1025);
        assert_eq!(parse_start(&long, &good), Err(ERROR_INVALID_PARAMETER));
    }

    #[test]
    fn stack_id_arrays_and_group_masks_are_checked() {
        let mut one = vec![0u8; 24];
        one[16] = 51;
        assert_eq!(stack_ids(&one).unwrap()[0].1, 51);
        assert_eq!(stack_ids(&one[..20]), Err(ERROR_BAD_LENGTH));
        assert_eq!(stack_ids(&[]), Err(ERROR_BAD_LENGTH));
        assert_eq!(stack_ids(&vec![0u8; 24 * 257]), Err(ERROR_BAD_LENGTH));
        let mut bad = one.clone();
        bad[20] = 1;
        assert_eq!(
            stack_ids(&bad),
            Err(ERROR_INVALID_PARAMETER),
            "reserved bytes"
        );
        let mut m = [0u8; 32];
        m[0] = 0x87;
        assert_eq!(group_mask(&m), Ok(0x87));
        assert_eq!(group_mask(&m[..4]), Err(ERROR_BAD_LENGTH));
    }
}
