//! `TRACE_LOGFILE_HEADER`: the payload of the first record of every `.etl`
//! file (EventTrace group, opcode 0), and what a live consumer receives in
//! `EVENT_TRACE_LOGFILE.LogfileHeader`.
//!
//! Layout: [TRACE_LOGFILE_HEADER](https://learn.microsoft.com/windows/win32/api/evntrace/ns-evntrace-trace_logfile_header).
//! Its two string pointers (`LoggerName`, `LogFileName`) make the layout depend
//! on the pointer size of the machine that wrote it; `TIME_ZONE_INFORMATION`
//! is 172 bytes and the `LARGE_INTEGER`s after it are 8-byte aligned.

use std::fmt;

/// Size of `TIME_ZONE_INFORMATION`.
const TZI_SIZE: usize = 172;

/// The fields of `TRACE_LOGFILE_HEADER` syscall-sentry uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogfileHeader {
    pub buffer_size: u32,
    /// `Version`: major, minor, sub, subminor of the OS that wrote the trace.
    pub os_version: [u8; 4],
    /// `ProviderVersion`: the OS build number.
    pub provider_version: u32,
    pub number_of_processors: u32,
    /// `EndTime` (FILETIME).
    pub end_time: i64,
    pub timer_resolution: u32,
    pub maximum_file_size: u32,
    pub log_file_mode: u32,
    pub buffers_written: u32,
    pub start_buffers: u32,
    /// 4 or 8.
    pub pointer_size: u32,
    pub events_lost: u32,
    pub cpu_speed_mhz: u32,
    /// `BootTime` (FILETIME).
    pub boot_time: i64,
    /// `PerfFreq`: ticks per second of the QPC clock.
    pub perf_freq: i64,
    /// `StartTime` (FILETIME).
    pub start_time: i64,
    /// `ReservedFlags`: the clock type (1 QPC, 2 system time, 3 CPU cycles).
    pub clock_type: u32,
    pub buffers_lost: u32,
    /// Time zone bias in minutes (UTC = local + bias).
    pub time_zone_bias: i32,
    pub logger_name: String,
    pub log_file_name: String,
}

/// Why a `TRACE_LOGFILE_HEADER` could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogfileHeaderError {
    /// The payload is shorter than the fixed part of the structure.
    TooShort { len: usize, need: usize },
    /// `PointerSize` is neither 4 nor 8.
    BadPointerSize(u32),
}

impl fmt::Display for LogfileHeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogfileHeaderError::TooShort { len, need } => write!(
                f,
                "TRACE_LOGFILE_HEADER is {len} bytes, needs at least {need}"
            ),
            LogfileHeaderError::BadPointerSize(p) => {
                write!(
                    f,
                    "TRACE_LOGFILE_HEADER has pointer size {p}, expected 4 or 8"
                )
            }
        }
    }
}

impl std::error::Error for LogfileHeaderError {}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn i64_at(b: &[u8], o: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    i64::from_le_bytes(a)
}

/// Reads a NUL-terminated UTF-16LE string; returns it and the bytes consumed.
fn utf16z(b: &[u8]) -> (String, usize) {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    let used = (units.len() * 2 + 2).min(b.len());
    (String::from_utf16_lossy(&units), used)
}

impl LogfileHeader {
    /// Size of the fixed part for a pointer size (0x110 for 4, 0x118 for 8).
    pub fn fixed_size(pointer_size: u32) -> usize {
        Self::layout(pointer_size as usize).end
    }

    fn layout(ps: usize) -> Layout {
        let tzi = 56 + 2 * ps;
        let boot = (tzi + TZI_SIZE + 7) & !7;
        Layout {
            tzi,
            boot,
            end: boot + 32,
        }
    }

    /// Parses the payload. The pointer size is read from the structure itself
    /// (`PointerSize` sits before the pointer-sized fields).
    pub fn parse(b: &[u8]) -> Result<LogfileHeader, LogfileHeaderError> {
        if b.len() < 56 {
            return Err(LogfileHeaderError::TooShort {
                len: b.len(),
                need: 56,
            });
        }
        let pointer_size = u32_at(b, 44);
        if pointer_size != 4 && pointer_size != 8 {
            return Err(LogfileHeaderError::BadPointerSize(pointer_size));
        }
        let l = Self::layout(pointer_size as usize);
        if b.len() < l.end {
            return Err(LogfileHeaderError::TooShort {
                len: b.len(),
                need: l.end,
            });
        }
        let (logger_name, used) = utf16z(&b[l.end..]);
        let (log_file_name, _) = utf16z(&b[l.end + used..]);
        Ok(LogfileHeader {
            buffer_size: u32_at(b, 0),
            os_version: [b[4], b[5], b[6], b[7]],
            provider_version: u32_at(b, 8),
            number_of_processors: u32_at(b, 12),
            end_time: i64_at(b, 16),
            timer_resolution: u32_at(b, 24),
            maximum_file_size: u32_at(b, 28),
            log_file_mode: u32_at(b, 32),
            buffers_written: u32_at(b, 36),
            start_buffers: u32_at(b, 40),
            pointer_size,
            events_lost: u32_at(b, 48),
            cpu_speed_mhz: u32_at(b, 52),
            time_zone_bias: u32_at(b, l.tzi) as i32,
            boot_time: i64_at(b, l.boot),
            perf_freq: i64_at(b, l.boot + 8),
            start_time: i64_at(b, l.boot + 16),
            clock_type: u32_at(b, l.boot + 24),
            buffers_lost: u32_at(b, l.boot + 28),
            logger_name,
            log_file_name,
        })
    }

    /// `Version` as `major.minor.sub.subminor`, as in the golden files.
    pub fn os_version_string(&self) -> String {
        let v = self.os_version;
        format!("{}.{}.{}.{}", v[0], v[1], v[2], v[3])
    }

    /// Ticks per second of the raw timestamps, by clock type.
    pub fn ticks_per_second(&self) -> u64 {
        match self.clock_type {
            2 => 10_000_000,
            3 if self.cpu_speed_mhz > 0 => u64::from(self.cpu_speed_mhz) * 1_000_000,
            _ if self.perf_freq > 0 => self.perf_freq as u64,
            _ => 10_000_000,
        }
    }
}

struct Layout {
    tzi: usize,
    boot: usize,
    end: usize,
}

/// Converts raw timestamps to FILETIME (100 ns since 1601, UTC) given one
/// known pair: the raw timestamp of the logfile header event and `StartTime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    pub sync_raw: u64,
    pub sync_filetime: i64,
    pub ticks_per_second: u64,
}

impl Clock {
    pub fn new(header: &LogfileHeader, header_event_raw: u64) -> Clock {
        Clock {
            sync_raw: header_event_raw,
            sync_filetime: header.start_time,
            ticks_per_second: header.ticks_per_second().max(1),
        }
    }

    /// FILETIME of a raw timestamp (saturating, never panics).
    pub fn to_filetime(&self, raw: u64) -> i64 {
        let delta = raw as i128 - self.sync_raw as i128;
        let ft = self.sync_filetime as i128 + delta * 10_000_000 / self.ticks_per_second as i128;
        ft.clamp(i64::MIN as i128, i64::MAX as i128) as i64
    }

    /// Nanoseconds between two raw timestamps (saturating).
    pub fn nanos_between(&self, from: u64, to: u64) -> i64 {
        let delta = to as i128 - from as i128;
        (delta * 1_000_000_000 / self.ticks_per_second as i128)
            .clamp(i64::MIN as i128, i64::MAX as i128) as i64
    }

    /// Raw ticks in a duration given in nanoseconds.
    pub fn ticks_in_nanos(&self, nanos: u64) -> u64 {
        (nanos as u128 * self.ticks_per_second as u128 / 1_000_000_000).min(u64::MAX as u128) as u64
    }
}

/// Formats a FILETIME as RFC 3339 UTC with 100 ns precision
/// (`2024-01-02T03:04:05.1234567Z`).
pub fn filetime_to_rfc3339(ft: i64) -> String {
    // 1601-01-01 to 1970-01-01 in 100 ns units.
    const EPOCH_DIFF: i64 = 116_444_736_000_000_000;
    let t = ft.saturating_sub(EPOCH_DIFF);
    let secs = t.div_euclid(10_000_000);
    let frac = t.rem_euclid(10_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:07}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_sizes_match_the_sdk() {
        assert_eq!(LogfileHeader::fixed_size(8), 0x118);
        assert_eq!(LogfileHeader::fixed_size(4), 0x110);
    }

    #[test]
    fn rfc3339() {
        // 2000-01-01T00:00:00Z
        assert_eq!(
            filetime_to_rfc3339(125_911_584_000_000_000),
            "2000-01-01T00:00:00.0000000Z"
        );
        assert_eq!(
            filetime_to_rfc3339(116_444_736_000_000_001),
            "1970-01-01T00:00:00.0000001Z"
        );
    }

    #[test]
    fn clock_converts_qpc() {
        let c = Clock {
            sync_raw: 1000,
            sync_filetime: 5_000_000,
            ticks_per_second: 10_000_000 / 4,
        };
        assert_eq!(c.to_filetime(1001), 5_000_004);
        assert_eq!(c.to_filetime(999), 4_999_996);
        assert_eq!(c.nanos_between(1000, 1001), 400);
        assert_eq!(c.ticks_in_nanos(400), 1);
    }

    #[test]
    fn rejects_short_and_bad_pointer_size() {
        assert!(LogfileHeader::parse(&[0u8; 10]).is_err());
        let mut b = vec![0u8; 0x118];
        b[44] = 3;
        assert_eq!(
            LogfileHeader::parse(&b),
            Err(LogfileHeaderError::BadPointerSize(3))
        );
        b[44] = 8;
        assert!(LogfileHeader::parse(&b).is_ok());
    }
}
