//! Writes `.etl` files laid out as the NT Kernel Logger writes them, so that
//! readers (ours, `dissect.etl`, TraceEvent, WPA) can be tested on traces
//! whose content is known exactly.
//!
//! File layout (learned from the real traces in the corpus and
//! [WMI_BUFFER_HEADER](https://www.geoffchappell.com/studies/windows/km/ntoskrnl/inc/api/ntwmi/wmi_buffer_header/index.htm)):
//! - a header buffer (buffer type 4, flag `FLUSH_MARKER`) whose only record
//!   is the `TRACE_LOGFILE_HEADER` (EventTrace group, opcode 0, SYSTEM header
//!   version 2);
//! - then per-processor buffers of `buffer_size` bytes (64 KB), each a
//!   72-byte header followed by records aligned to 8 bytes, the rest filled
//!   with `0xFF` (a reader stops at a `0xFFFFFFFF` marker);
//! - with compression, each data buffer's bytes after the header are XPRESS
//!   (Plain LZ77) compressed, `BufferSize` becomes the on-disk size and the
//!   flag `0x40` is set; `SavedOffset`/`Offset` keep the uncompressed fill.
//!
//! Memory is constant: one buffer per processor, written out when full.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::{self, Seek, SeekFrom, Write};

pub mod payload;
pub mod xpress;

/// Size of `WMI_BUFFER_HEADER` in a file.
pub const BUFFER_HEADER_SIZE: usize = 72;
/// `ETW_BUFFER_FLAG` values.
pub const BUFFER_FLAG_FLUSH_MARKER: u16 = 0x01;
pub const BUFFER_FLAG_EVENTS_LOST: u16 = 0x02;
pub const BUFFER_FLAG_PROC_INDEX: u16 = 0x20;
pub const BUFFER_FLAG_COMPRESSED: u16 = 0x40;
/// `ETW_BUFFER_TYPE` values.
pub const BUFFER_TYPE_GENERIC: u16 = 0;
pub const BUFFER_TYPE_HEADER: u16 = 4;

/// Which compact kernel header a record gets. The 32/64 variant follows the
/// trace's pointer size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HeaderClass {
    /// `SYSTEM32`/`SYSTEM64`: 32 bytes, with thread and process id and
    /// kernel/user time.
    System,
    /// `PERFINFO32`/`PERFINFO64`: 16 bytes, no thread or process id.
    PerfInfo,
}

impl HeaderClass {
    /// The `TRACE_HEADER_TYPE_*` value.
    pub fn header_type(self, pointer_size: u8) -> u8 {
        match (self, pointer_size) {
            (HeaderClass::System, 4) => 0x01,
            (HeaderClass::System, _) => 0x02,
            (HeaderClass::PerfInfo, 4) => 0x10,
            (HeaderClass::PerfInfo, _) => 0x11,
        }
    }

    pub fn header_len(self) -> usize {
        match self {
            HeaderClass::System => 32,
            HeaderClass::PerfInfo => 16,
        }
    }

    /// The header kind name used in statistics (`SYSTEM64`, `PERFINFO32`...).
    pub fn name(self, pointer_size: u8) -> &'static str {
        match (self, pointer_size) {
            (HeaderClass::System, 4) => "SYSTEM32",
            (HeaderClass::System, _) => "SYSTEM64",
            (HeaderClass::PerfInfo, 4) => "PERFINFO32",
            (HeaderClass::PerfInfo, _) => "PERFINFO64",
        }
    }
}

/// One kernel record to write.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub class: HeaderClass,
    pub group: u8,
    pub opcode: u8,
    pub version: u16,
    /// Ignored for PERFINFO headers.
    pub pid: u32,
    pub tid: u32,
    /// Raw QPC timestamp.
    pub timestamp: u64,
    pub payload: &'a [u8],
}

/// One `EVENT_HEADER` record: a manifest provider's event, as a
/// user-provider session's file (or a system-logger session that also
/// carries providers, or a merged file) holds it.
///
/// Layout, as in the corpus's Windows 7 trace (`win7-x64-kernel-stacks.etl`,
/// a 472-byte EVENT_HEADER64 record: 0x50 header, one 344-byte
/// `STACK_TRACE64` item, 48 bytes of user data) and
/// [EVENT_HEADER](https://learn.microsoft.com/windows/win32/api/evntcons/ns-evntcons-event_header):
/// size u16 @0, header type @2 (0x12 `EVENT_HEADER32`, 0x13
/// `EVENT_HEADER64`), marker flags 0xC0 @3, `Flags` u16 @4
/// (`EVENT_HEADER_FLAG_EXTENDED_INFO` 0x01 when items follow; the 32/64-bit
/// flags are not stored: the header type says it), `EventProperty` u16 @6,
/// thread @8, process @0xC, timestamp @0x10, provider GUID @0x18,
/// [EVENT_DESCRIPTOR](https://learn.microsoft.com/windows/win32/api/evntprov/ns-evntprov-event_descriptor)
/// @0x28, `KernelTime`/`UserTime` @0x38, `ActivityId` @0x40. Then each
/// extended item: `Size` u16 (8-byte item header plus data, padded to 8),
/// `ExtType` u16, `Linkage` u16 (1: another item follows), `DataSize` u16,
/// the data, zero padding; then the user data.
#[derive(Debug, Clone, Copy)]
pub struct EventRecord<'a> {
    /// 4 (`EVENT_HEADER32`) or 8 (`EVENT_HEADER64`): the writer's pointer
    /// size, which for a kernel-mode provider is the kernel's.
    pub pointer_size: u8,
    pub provider: sentry_raw::Guid,
    pub id: u16,
    pub version: u8,
    pub channel: u8,
    pub level: u8,
    pub opcode: u8,
    pub task: u16,
    pub keyword: u64,
    pub pid: u32,
    pub tid: u32,
    /// Raw QPC timestamp.
    pub timestamp: u64,
    pub kernel_time: u32,
    pub user_time: u32,
    /// `(ExtType, data)` in order; see [`stack_trace_item`].
    pub extended: &'a [(u16, &'a [u8])],
    pub payload: &'a [u8],
}

impl EventRecord<'_> {
    /// The record's size, unaligned.
    pub fn size(&self) -> usize {
        let items: usize = self
            .extended
            .iter()
            .map(|(_, d)| (8 + d.len()).div_ceil(8) * 8)
            .sum();
        0x50 + items + self.payload.len()
    }

    /// The record's bytes (unaligned), as [`EtlWriter::write_event`]
    /// appends them.
    pub fn to_bytes(&self) -> Vec<u8> {
        let size = self.size();
        let mut d = Vec::with_capacity(size);
        self.append(&mut d, size);
        d
    }

    fn header_name(&self) -> &'static str {
        if self.pointer_size == 4 {
            "EVENT_HEADER32"
        } else {
            "EVENT_HEADER64"
        }
    }

    fn append(&self, d: &mut Vec<u8>, size: usize) {
        let htype: u32 = if self.pointer_size == 4 { 0x12 } else { 0x13 };
        let marker = 0xC000_0000u32 | htype << 16 | size as u32;
        d.extend_from_slice(&marker.to_le_bytes());
        let flags: u16 = u16::from(!self.extended.is_empty());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&0u16.to_le_bytes()); // EventProperty
        d.extend_from_slice(&self.tid.to_le_bytes());
        d.extend_from_slice(&self.pid.to_le_bytes());
        d.extend_from_slice(&self.timestamp.to_le_bytes());
        d.extend_from_slice(&self.provider.to_le_bytes());
        d.extend_from_slice(&self.id.to_le_bytes());
        d.extend_from_slice(&[self.version, self.channel, self.level, self.opcode]);
        d.extend_from_slice(&self.task.to_le_bytes());
        d.extend_from_slice(&self.keyword.to_le_bytes());
        d.extend_from_slice(&self.kernel_time.to_le_bytes());
        d.extend_from_slice(&self.user_time.to_le_bytes());
        d.extend_from_slice(&[0; 16]); // ActivityId
        for (i, (t, data)) in self.extended.iter().enumerate() {
            let item = (8 + data.len()).div_ceil(8) * 8;
            let more = u16::from(i + 1 < self.extended.len());
            d.extend_from_slice(&(item as u16).to_le_bytes());
            d.extend_from_slice(&t.to_le_bytes());
            d.extend_from_slice(&more.to_le_bytes());
            d.extend_from_slice(&(data.len() as u16).to_le_bytes());
            d.extend_from_slice(data);
            d.extend(std::iter::repeat_n(0u8, item - 8 - data.len()));
        }
        d.extend_from_slice(self.payload);
    }
}

/// The data of an
/// [EVENT_EXTENDED_ITEM_STACK_TRACE64](https://learn.microsoft.com/windows/win32/api/evntcons/ns-evntcons-event_extended_item_stack_trace64)
/// (`width` 8, `ExtType` 6) or `STACK_TRACE32` (`width` 4, `ExtType` 5):
/// `MatchId` (u64), then the addresses, innermost first. Returns the
/// `ExtType`.
pub fn stack_trace_item(width: u8, match_id: u64, frames: &[u64], out: &mut Vec<u8>) -> u16 {
    out.clear();
    out.extend_from_slice(&match_id.to_le_bytes());
    for &f in frames {
        if width == 4 {
            out.extend_from_slice(&(f as u32).to_le_bytes());
        } else {
            out.extend_from_slice(&f.to_le_bytes());
        }
    }
    if width == 4 {
        sentry_raw::ext_type::STACK_TRACE32
    } else {
        sentry_raw::ext_type::STACK_TRACE64
    }
}

/// Trace-wide settings; they end up in the `TRACE_LOGFILE_HEADER`.
#[derive(Debug, Clone)]
pub struct TraceConfig {
    /// 4 or 8.
    pub pointer_size: u8,
    pub processors: u16,
    pub buffer_size: u32,
    pub compress: bool,
    /// QPC ticks per second.
    pub perf_freq: u64,
    /// Raw QPC value at `start_time`; also the logfile header record's timestamp.
    pub start_qpc: u64,
    /// FILETIME of the start.
    pub start_time: i64,
    pub boot_time: i64,
    /// Major, minor, sub, subminor.
    pub os_version: [u8; 4],
    pub build: u32,
    pub cpu_speed_mhz: u32,
    pub logger_name: String,
    pub log_file_name: String,
    /// The controller process/thread in the header record.
    pub logger_pid: u32,
    pub logger_tid: u32,
}

impl TraceConfig {
    /// A Windows 10 (19041) kernel trace with 64 KB buffers and a 10 MHz QPC.
    pub fn windows10(pointer_size: u8, processors: u16) -> TraceConfig {
        TraceConfig {
            pointer_size,
            processors,
            buffer_size: 0x1_0000,
            compress: false,
            perf_freq: 10_000_000,
            start_qpc: 13_764_840_754,
            // 2024-03-05T01:30:11Z
            start_time: 133_540_758_110_000_000,
            boot_time: 133_540_744_340_000_000,
            os_version: [10, 0, 0, 0],
            build: 19041,
            cpu_speed_mhz: 2295,
            logger_name: "NT Kernel Logger".into(),
            log_file_name: "C:\\trace\\synthetic.etl".into(),
            logger_pid: 1112,
            logger_tid: 9904,
        }
    }
}

/// What was written, for tests and reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Buffers including the header buffer (= `BuffersWritten`).
    pub buffers: u32,
    pub compressed_buffers: u32,
    /// Records including the logfile header record.
    pub records: u64,
    /// Records per `(group, opcode)`.
    pub per_hook: BTreeMap<(u8, u8), u64>,
    /// Records per header kind name.
    pub per_header: BTreeMap<&'static str, u64>,
    /// `EVENT_HEADER` records per (provider, event id).
    pub per_event: BTreeMap<(sentry_raw::Guid, u16), u64>,
    pub bytes: u64,
    pub events_lost: u32,
    /// Raw timestamps of the first and last data record.
    pub first_timestamp: Option<u64>,
    pub last_timestamp: Option<u64>,
}

/// Why a record could not be written.
#[derive(Debug)]
pub enum WriteError {
    Io(io::Error),
    /// The record does not fit in one buffer (or in the 16-bit size field).
    TooLarge {
        size: usize,
    },
    /// No such processor.
    BadProcessor(u16),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Io(e) => write!(f, "write failed: {e}"),
            WriteError::TooLarge { size } => {
                write!(f, "record of {size} bytes does not fit a buffer")
            }
            WriteError::BadProcessor(p) => write!(f, "processor {p} is out of range"),
        }
    }
}

impl std::error::Error for WriteError {}

impl From<io::Error> for WriteError {
    fn from(e: io::Error) -> Self {
        WriteError::Io(e)
    }
}

struct ProcBuffer {
    data: Vec<u8>,
    sequence: i64,
    last_timestamp: u64,
    /// Events were lost on this processor while this buffer was current.
    lost: bool,
}

/// Streams records into per-processor buffers and the file.
pub struct EtlWriter<W: Write + Seek> {
    out: W,
    cfg: TraceConfig,
    bufs: Vec<ProcBuffer>,
    next_sequence: i64,
    stats: WriteStats,
    header_buffer_size: u32,
    compressor: xpress::Compressor,
    scratch: Vec<u8>,
}

impl<W: Write + Seek> EtlWriter<W> {
    /// Starts a trace: writes a provisional header buffer (rewritten by
    /// [`EtlWriter::finish`] with the final counts).
    pub fn new(mut out: W, cfg: TraceConfig) -> Result<EtlWriter<W>, WriteError> {
        assert!(cfg.pointer_size == 4 || cfg.pointer_size == 8);
        assert!(cfg.processors > 0 && cfg.buffer_size as usize > BUFFER_HEADER_SIZE + 0x200);
        let bufs = (0..cfg.processors)
            .map(|_| ProcBuffer {
                data: Vec::with_capacity(cfg.buffer_size as usize),
                sequence: 0,
                last_timestamp: 0,
                lost: false,
            })
            .collect();
        // Compressed traces trim the header buffer (0x200 in the Windows 8
        // corpus traces); uncompressed ones keep the full buffer size.
        let header_buffer_size = if cfg.compress { 0x200 } else { cfg.buffer_size };
        let mut stats = WriteStats {
            buffers: 1,
            records: 1,
            bytes: u64::from(header_buffer_size),
            ..WriteStats::default()
        };
        *stats.per_hook.entry((0, 0)).or_default() += 1;
        *stats
            .per_header
            .entry(HeaderClass::System.name(cfg.pointer_size))
            .or_default() += 1;
        out.write_all(&header_buffer(&cfg, header_buffer_size, 0, 0, 0))?;
        Ok(EtlWriter {
            out,
            cfg,
            bufs,
            next_sequence: 1,
            stats,
            header_buffer_size,
            compressor: xpress::Compressor::new(),
            scratch: Vec::new(),
        })
    }

    pub fn config(&self) -> &TraceConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &WriteStats {
        &self.stats
    }

    /// Counts events the "kernel" dropped (reported in `EventsLost`).
    pub fn note_events_lost(&mut self, n: u32) {
        self.stats.events_lost = self.stats.events_lost.saturating_add(n);
    }

    /// Counts events dropped on `processor`, and flags that processor's
    /// current buffer `EVENTS_LOST`, as the kernel does.
    pub fn note_events_lost_on(&mut self, processor: u16, n: u32) {
        self.note_events_lost(n);
        if let Some(b) = self.bufs.get_mut(usize::from(processor)) {
            b.lost = true;
        }
    }

    /// Appends a record to `processor`'s buffer, writing the buffer out
    /// first if the record does not fit.
    pub fn write(&mut self, processor: u16, rec: &Record<'_>) -> Result<(), WriteError> {
        let size = rec.class.header_len() + rec.payload.len();
        let ps = self.cfg.pointer_size;
        let d = &mut self.reserve(processor, size)?.data;
        let marker =
            0xC000_0000u32 | (u32::from(rec.class.header_type(ps)) << 16) | u32::from(rec.version);
        d.extend_from_slice(&marker.to_le_bytes());
        d.extend_from_slice(&(size as u16).to_le_bytes());
        d.push(rec.opcode);
        d.push(rec.group);
        match rec.class {
            HeaderClass::System => {
                d.extend_from_slice(&rec.tid.to_le_bytes());
                d.extend_from_slice(&rec.pid.to_le_bytes());
                d.extend_from_slice(&rec.timestamp.to_le_bytes());
                d.extend_from_slice(&[0; 8]); // KernelTime, UserTime
            }
            HeaderClass::PerfInfo => d.extend_from_slice(&rec.timestamp.to_le_bytes()),
        }
        d.extend_from_slice(rec.payload);
        self.finish_record(processor, size, rec.timestamp);
        let s = &mut self.stats;
        *s.per_hook.entry((rec.group, rec.opcode)).or_default() += 1;
        *s.per_header.entry(rec.class.name(ps)).or_default() += 1;
        Ok(())
    }

    /// Appends an `EVENT_HEADER` record to `processor`'s buffer, writing
    /// the buffer out first if the record does not fit.
    pub fn write_event(&mut self, processor: u16, rec: &EventRecord<'_>) -> Result<(), WriteError> {
        let size = rec.size();
        let b = self.reserve(processor, size)?;
        rec.append(&mut b.data, size);
        self.finish_record(processor, size, rec.timestamp);
        let s = &mut self.stats;
        *s.per_event.entry((rec.provider, rec.id)).or_default() += 1;
        *s.per_header.entry(rec.header_name()).or_default() += 1;
        Ok(())
    }

    /// Makes room for a record of `size` bytes in `processor`'s buffer.
    fn reserve(&mut self, processor: u16, size: usize) -> Result<&mut ProcBuffer, WriteError> {
        let p = usize::from(processor);
        if p >= self.bufs.len() {
            return Err(WriteError::BadProcessor(processor));
        }
        let aligned = (size + 7) & !7;
        if size > 0xFFFF || aligned + BUFFER_HEADER_SIZE > self.cfg.buffer_size as usize {
            return Err(WriteError::TooLarge { size });
        }
        let cap = self.cfg.buffer_size as usize;
        if !self.bufs[p].data.is_empty() && self.bufs[p].data.len() + size > cap {
            self.flush_processor(processor, aligned)?;
        }
        if self.bufs[p].data.is_empty() {
            let seq = self.next_sequence;
            self.next_sequence += 1;
            let b = &mut self.bufs[p];
            b.sequence = seq;
            b.data.resize(BUFFER_HEADER_SIZE, 0);
        }
        Ok(&mut self.bufs[p])
    }

    /// Pads the record just appended and counts it.
    fn finish_record(&mut self, processor: u16, size: usize, timestamp: u64) {
        let cap = self.cfg.buffer_size as usize;
        let b = &mut self.bufs[usize::from(processor)];
        // Records are 8-byte aligned; the gap is not part of the record.
        let pad = ((size + 7) & !7) - size;
        if b.data.len() + pad <= cap {
            b.data.extend(std::iter::repeat_n(0u8, pad));
        }
        b.last_timestamp = timestamp;
        let s = &mut self.stats;
        s.records += 1;
        s.first_timestamp.get_or_insert(timestamp);
        s.last_timestamp = Some(s.last_timestamp.map_or(timestamp, |t| t.max(timestamp)));
    }

    /// FILETIME of a raw timestamp.
    fn filetime(&self, raw: u64) -> i64 {
        let d = raw as i128 - self.cfg.start_qpc as i128;
        let ft = self.cfg.start_time as i128 + d * 10_000_000 / self.cfg.perf_freq.max(1) as i128;
        ft.clamp(0, i64::MAX as i128) as i64
    }

    /// Writes out `processor`'s buffer. `overflow` is the size of the
    /// record that did not fit (real buffers show it in `CurrentOffset`).
    fn flush_processor(&mut self, processor: u16, overflow: usize) -> Result<(), WriteError> {
        let p = usize::from(processor);
        if self.bufs[p].data.is_empty() {
            return Ok(());
        }
        let cap = self.cfg.buffer_size as usize;
        let filled = self.bufs[p].data.len().min(cap);
        let ts = self.filetime(self.bufs[p].last_timestamp);
        let seq = self.bufs[p].sequence;
        let mut flags = BUFFER_FLAG_PROC_INDEX;
        if std::mem::take(&mut self.bufs[p].lost) {
            flags |= BUFFER_FLAG_EVENTS_LOST;
        }
        let mut data = std::mem::take(&mut self.bufs[p].data);
        data.truncate(filled);
        let mut on_disk_size = cap;
        let mut compressed = false;
        if self.cfg.compress {
            self.compressor
                .compress(&data[BUFFER_HEADER_SIZE..], &mut self.scratch);
            if self.scratch.len() + BUFFER_HEADER_SIZE < cap {
                compressed = true;
                flags |= BUFFER_FLAG_COMPRESSED;
                on_disk_size = self.scratch.len() + BUFFER_HEADER_SIZE;
            }
        }
        let hdr = BufferHeader {
            buffer_size: on_disk_size as u32,
            saved_offset: filled as u32,
            current_offset: (filled + overflow) as u32,
            timestamp: ts,
            sequence: seq,
            processor,
            state: 3,
            offset: filled as u32,
            flags,
            buffer_type: BUFFER_TYPE_GENERIC,
        };
        data[..BUFFER_HEADER_SIZE].copy_from_slice(&hdr.bytes());
        if compressed {
            self.out.write_all(&data[..BUFFER_HEADER_SIZE])?;
            self.out.write_all(&self.scratch)?;
            self.stats.compressed_buffers += 1;
        } else {
            data.resize(cap, 0xFF);
            self.out.write_all(&data)?;
        }
        self.stats.buffers += 1;
        self.stats.bytes += on_disk_size as u64;
        data.clear();
        self.bufs[p].data = data;
        Ok(())
    }

    /// Writes out all partly filled buffers, rewrites the header buffer
    /// with `BuffersWritten`, `EndTime` and `EventsLost`, and returns the
    /// output and what was written.
    pub fn finish(mut self) -> Result<(W, WriteStats), WriteError> {
        for p in 0..self.cfg.processors {
            self.flush_processor(p, 0)?;
        }
        let end = self.filetime(self.stats.last_timestamp.unwrap_or(self.cfg.start_qpc));
        let hb = header_buffer(
            &self.cfg,
            self.header_buffer_size,
            self.stats.events_lost,
            self.stats.buffers,
            end,
        );
        self.out.seek(SeekFrom::Start(0))?;
        self.out.write_all(&hb)?;
        self.out.seek(SeekFrom::End(0))?;
        self.out.flush()?;
        Ok((self.out, self.stats))
    }
}

/// The header buffer with the current counts.
fn header_buffer(
    cfg: &TraceConfig,
    header_buffer_size: u32,
    events_lost: u32,
    buffers_written: u32,
    end_time: i64,
) -> Vec<u8> {
    let mut payload = Vec::with_capacity(0x200);
    logfile_header(cfg, &mut payload, events_lost, buffers_written, end_time);
    let size = HeaderClass::System.header_len() + payload.len();
    let mut rec = Vec::with_capacity(size + 8);
    let marker =
        0xC000_0000u32 | (u32::from(HeaderClass::System.header_type(cfg.pointer_size)) << 16) | 2;
    rec.extend_from_slice(&marker.to_le_bytes());
    rec.extend_from_slice(&(size as u16).to_le_bytes());
    rec.extend_from_slice(&[0, 0]); // opcode 0, group 0
    rec.extend_from_slice(&cfg.logger_tid.to_le_bytes());
    rec.extend_from_slice(&cfg.logger_pid.to_le_bytes());
    rec.extend_from_slice(&cfg.start_qpc.to_le_bytes());
    rec.extend_from_slice(&[0; 8]);
    rec.extend_from_slice(&payload);
    while rec.len() % 8 != 0 {
        rec.push(0);
    }
    let filled = BUFFER_HEADER_SIZE + rec.len();
    let hdr = BufferHeader {
        buffer_size: header_buffer_size,
        saved_offset: filled as u32,
        current_offset: 0,
        timestamp: 0,
        sequence: 0,
        processor: 0,
        state: 0,
        offset: filled as u32,
        flags: BUFFER_FLAG_FLUSH_MARKER,
        buffer_type: BUFFER_TYPE_HEADER,
    };
    let mut out = hdr.bytes().to_vec();
    out.extend_from_slice(&rec);
    out.resize(header_buffer_size as usize, 0xFF);
    out
}

/// [TRACE_LOGFILE_HEADER](https://learn.microsoft.com/windows/win32/api/evntrace/ns-evntrace-trace_logfile_header),
/// followed by the logger and file names.
fn logfile_header(
    c: &TraceConfig,
    out: &mut Vec<u8>,
    events_lost: u32,
    buffers_written: u32,
    end_time: i64,
) {
    let u32s = |out: &mut Vec<u8>, v: u32| out.extend_from_slice(&v.to_le_bytes());
    u32s(out, c.buffer_size);
    out.extend_from_slice(&c.os_version);
    u32s(out, c.build);
    u32s(out, u32::from(c.processors));
    out.extend_from_slice(&end_time.to_le_bytes());
    u32s(out, 156_250); // TimerResolution (15.625 ms)
    u32s(out, 0); // MaximumFileSize
    u32s(out, 0x0001_0001); // LogFileMode: FILE_MODE_SEQUENTIAL | SYSTEM_LOGGER_MODE-era value seen in Win7
    u32s(out, buffers_written);
    u32s(out, 1); // StartBuffers
    u32s(out, u32::from(c.pointer_size));
    u32s(out, events_lost);
    u32s(out, c.cpu_speed_mhz);
    payload::put_ptr(out, c.pointer_size, 0); // LoggerName (pointer, unused in files)
    payload::put_ptr(out, c.pointer_size, 0); // LogFileName
                                              // TIME_ZONE_INFORMATION (172 bytes): UTC.
    let tz_start = out.len();
    u32s(out, 0); // Bias
    let mut name = [0u8; 64];
    for (i, u) in "Coordinated Universal Time".encode_utf16().enumerate() {
        name[2 * i..2 * i + 2].copy_from_slice(&u.to_le_bytes());
    }
    out.extend_from_slice(&name);
    out.extend_from_slice(&[0; 16]); // StandardDate
    u32s(out, 0); // StandardBias
    out.extend_from_slice(&name);
    out.extend_from_slice(&[0; 16]); // DaylightDate
    u32s(out, 0); // DaylightBias
    debug_assert_eq!(out.len() - tz_start, 172);
    while out.len() % 8 != 0 {
        out.push(0);
    }
    out.extend_from_slice(&c.boot_time.to_le_bytes());
    out.extend_from_slice(&(c.perf_freq as i64).to_le_bytes());
    out.extend_from_slice(&c.start_time.to_le_bytes());
    u32s(out, 1); // ReservedFlags: clock type 1 = QPC
    u32s(out, 0); // BuffersLost
    payload::put_wstr(out, &c.logger_name);
    payload::put_wstr(out, &c.log_file_name);
}

/// `WMI_BUFFER_HEADER` as written to a file (Windows 10 layout: 16-bit
/// processor index at 0x28 with flag `PROC_INDEX`). The kernel-internal
/// pointers at 0x20 and 0x38 are written as zero.
struct BufferHeader {
    buffer_size: u32,
    saved_offset: u32,
    current_offset: u32,
    timestamp: i64,
    sequence: i64,
    processor: u16,
    state: u32,
    offset: u32,
    flags: u16,
    buffer_type: u16,
}

impl BufferHeader {
    fn bytes(&self) -> [u8; BUFFER_HEADER_SIZE] {
        let mut b = [0u8; BUFFER_HEADER_SIZE];
        b[0..4].copy_from_slice(&self.buffer_size.to_le_bytes());
        b[4..8].copy_from_slice(&self.saved_offset.to_le_bytes());
        b[8..12].copy_from_slice(&self.current_offset.to_le_bytes());
        // 0x0C ReferenceCount = 0
        b[0x10..0x18].copy_from_slice(&self.timestamp.to_le_bytes());
        b[0x18..0x20].copy_from_slice(&self.sequence.to_le_bytes());
        // 0x20 ClockType/Frequency or list pointer = 0
        b[0x28..0x2A].copy_from_slice(&self.processor.to_le_bytes());
        // 0x2A LoggerId = 0 (as in the Windows 10 corpus trace)
        b[0x2C..0x30].copy_from_slice(&self.state.to_le_bytes());
        b[0x30..0x34].copy_from_slice(&self.offset.to_le_bytes());
        b[0x34..0x36].copy_from_slice(&self.flags.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&self.buffer_type.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentry_raw::LogfileHeader;

    fn rec(ts: u64, payload: &[u8]) -> Record<'_> {
        Record {
            class: HeaderClass::PerfInfo,
            group: 0x0F,
            opcode: 51,
            version: 2,
            pid: 0,
            tid: 0,
            timestamp: ts,
            payload,
        }
    }

    #[test]
    fn header_buffer_parses_with_the_raw_logfile_header() {
        for ps in [4u8, 8] {
            let cfg = TraceConfig::windows10(ps, 2);
            let mut w = EtlWriter::new(io::Cursor::new(Vec::new()), cfg.clone()).unwrap();
            w.write(1, &rec(cfg.start_qpc + 10, &[1, 2, 3, 4, 5, 6, 7, 8]))
                .unwrap();
            w.note_events_lost_on(1, 3);
            let (out, stats) = w.finish().unwrap();
            let f = out.into_inner();
            assert_eq!(stats.buffers, 2);
            assert_eq!(f.len(), 2 * 0x1_0000);
            // Header record at 72: SYSTEM header, payload at 72 + 32.
            let marker = u32::from_le_bytes(f[72..76].try_into().unwrap());
            assert_eq!(
                marker >> 16,
                0xC000 | u32::from(if ps == 4 { 1u8 } else { 2 })
            );
            let size = u16::from_le_bytes([f[76], f[77]]) as usize;
            let h = LogfileHeader::parse(&f[72 + 32..72 + size]).unwrap();
            assert_eq!(h.pointer_size, u32::from(ps));
            assert_eq!(h.buffers_written, 2);
            assert_eq!(h.events_lost, 3);
            assert_eq!(h.number_of_processors, 2);
            assert_eq!(h.perf_freq, 10_000_000);
            assert_eq!(h.clock_type, 1);
            assert_eq!(h.logger_name, "NT Kernel Logger");
            assert_eq!(h.log_file_name, cfg.log_file_name);
            assert_eq!(h.start_time, cfg.start_time);
            assert_eq!(h.end_time, cfg.start_time + 10);
            // Data buffer: processor 1, one 24-byte record, 0xFF after.
            let b = &f[0x1_0000..];
            assert_eq!(u16::from_le_bytes([b[0x28], b[0x29]]), 1);
            // PROC_INDEX | EVENTS_LOST
            assert_eq!(u16::from_le_bytes([b[0x34], b[0x35]]), 0x22);
            assert_eq!(
                u32::from_le_bytes(b[0x30..0x34].try_into().unwrap()),
                72 + 24
            );
            assert_eq!(&b[72 + 24..72 + 28], &[0xFF; 4]);
        }
    }

    #[test]
    fn buffers_fill_and_roll_over() {
        let cfg = TraceConfig::windows10(8, 1);
        let mut w = EtlWriter::new(io::Cursor::new(Vec::new()), cfg).unwrap();
        let payload = [7u8; 100]; // 116 bytes -> 120 aligned
        let per_buffer = (0x1_0000 - 72) / 120;
        for i in 0..(per_buffer as u64 + 1) {
            w.write(0, &rec(i, &payload)).unwrap();
        }
        let (_, stats) = w.finish().unwrap();
        assert_eq!(stats.buffers, 3);
        assert_eq!(stats.records, per_buffer as u64 + 2);
    }

    #[test]
    fn rejects_oversized_records_and_bad_processors() {
        let cfg = TraceConfig::windows10(8, 1);
        let mut w = EtlWriter::new(io::Cursor::new(Vec::new()), cfg).unwrap();
        let big = vec![0u8; 0x1_0000];
        assert!(matches!(
            w.write(0, &rec(1, &big)),
            Err(WriteError::TooLarge { .. })
        ));
        assert!(matches!(
            w.write(5, &rec(1, &[])),
            Err(WriteError::BadProcessor(5))
        ));
    }

    #[test]
    fn compressed_buffers_decompress_to_the_records() {
        let mut cfg = TraceConfig::windows10(8, 1);
        cfg.compress = true;
        let mut w = EtlWriter::new(io::Cursor::new(Vec::new()), cfg).unwrap();
        for i in 0..100u64 {
            w.write(
                0,
                &rec(1000 + i, &(0xfffff80312345678u64 + i % 3).to_le_bytes()),
            )
            .unwrap();
        }
        let (out, stats) = w.finish().unwrap();
        let f = out.into_inner();
        assert_eq!(stats.compressed_buffers, 1);
        let b = &f[0x200..];
        let size = u32::from_le_bytes(b[0..4].try_into().unwrap()) as usize;
        let filled = u32::from_le_bytes(b[0x30..0x34].try_into().unwrap()) as usize;
        assert_eq!(u16::from_le_bytes([b[0x34], b[0x35]]), 0x60);
        assert_eq!(f.len(), 0x200 + size);
        let d = xpress::decompress(&b[72..size], 0x1_0000).unwrap();
        assert_eq!(d.len(), filled - 72);
        assert_eq!(d.len(), 100 * 24);
        assert_eq!(u64::from_le_bytes(d[8..16].try_into().unwrap()), 1000);
    }
}
