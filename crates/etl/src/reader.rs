//! The file, its buffer-header scan, and the two event orders.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::ControlFlow;
use std::path::Path;

use sentry_raw::{Clock, EventId, ExtendedData, HeaderKind, LogfileHeader, RawEvent};

use crate::buffer::{BufferHeader, BUFFER_HEADER_SIZE, MAX_BUFFER_SIZE};
use crate::error::{Diagnostics, ErrorKind, EtlError};
use crate::record::{self, EventMeta, PlainKind, Record};
use crate::source::Source;
use crate::xpress;

const HDR: u64 = BUFFER_HEADER_SIZE as u64;

/// One buffer of the file, as found by a scan of the buffer headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferInfo {
    /// File offset of the buffer header.
    pub offset: u64,
    pub header: BufferHeader,
    /// Bytes of the buffer present in the file (less than `buffer_size`
    /// only for a buffer cut by the end of the file).
    pub available: u32,
}

/// The order events are delivered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// As `ProcessTrace` delivers them: by timestamp across processors
    /// (a k-way merge of the per-processor buffer streams); ties keep file
    /// order. Memory: one buffer per processor.
    #[default]
    Time,
    /// Buffer by buffer in file order, records in buffer order. Faster, one
    /// buffer of memory; timestamps interleave across processors.
    File,
}

/// Most processor streams the time-order reader merges. Buffers of further
/// processors (only a corrupt or hostile file has them) are skipped in time
/// order with [`ErrorKind::TooManyProcessors`].
pub const MAX_PROCESSORS: usize = 4096;

/// An open `.etl` file: its logfile header, clock and processors.
///
/// Opening reads only the buffer headers (72 bytes each) and the first
/// buffer, and keeps no per-buffer state: memory is bounded by the
/// processors, not the file's length. Events are read by an
/// [`EventReader`], one buffer at a time.
pub struct EtlFile {
    source: Source,
    len: u64,
    header: LogfileHeader,
    clock: Clock,
    /// Step over a corrupt buffer header (see [`Scan`]).
    resync: Option<u64>,
    /// Each processor's first buffer, as a scan position, by processor.
    streams: Vec<(u16, Scan)>,
    index_diagnostics: Diagnostics,
    /// Buffers time order skips (processors past [`MAX_PROCESSORS`]).
    time_skips: Diagnostics,
    /// Largest filled size a buffer may declare: the logfile header's
    /// `BufferSize` when sane (every real buffer fits it).
    max_filled: u32,
}

/// Most bytes of buffer data one [`EventReader`] holds at once (one buffer
/// per processor in time order). A hostile file whose buffers would need
/// more gets errors for those buffers instead of exhausting memory.
pub const MAX_BUFFERED_BYTES: usize = 1 << 30;

impl std::fmt::Debug for EtlFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtlFile")
            .field("len", &self.len)
            .field("buffers", &self.index_diagnostics.buffers)
            .field("processors", &self.streams.len())
            .field("header", &self.header)
            .finish()
    }
}

impl EtlFile {
    /// Opens a file: indexes its buffers and reads the logfile header.
    ///
    /// Errors only when the file cannot be read or its first record is not
    /// a `TRACE_LOGFILE_HEADER`; damage further on is recorded in
    /// [`EtlFile::diagnostics`] and the readers' diagnostics.
    pub fn open(path: impl AsRef<Path>) -> Result<EtlFile, EtlError> {
        let file = File::open(path.as_ref()).map_err(|e| io_error(0, &e))?;
        let len = file.metadata().map_err(|e| io_error(0, &e))?.len();
        EtlFile::from_source(Source::File(file), len)
    }

    /// The same over bytes in memory (tests, fuzzing, a writer's output).
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Result<EtlFile, EtlError> {
        let bytes = bytes.into();
        let len = bytes.len() as u64;
        EtlFile::from_source(Source::Memory(bytes), len)
    }

    fn from_source(source: Source, len: u64) -> Result<EtlFile, EtlError> {
        let mut ix = Indexer::default();
        ix.step(&source, len)?;
        let Some(first) = ix.first else {
            return Err(ix.diag.errors.first().cloned().unwrap_or_else(|| {
                EtlError::new(0, ErrorKind::NoLogfileHeader("no buffer".into()))
            }));
        };
        let (header, raw) = first_logfile_header(&source, &first)?;
        // Set after the first step only; the same for every later scan, as
        // the first buffer (at offset 0) read with a valid size.
        if u64::from(header.buffer_size) >= HDR && header.buffer_size <= MAX_BUFFER_SIZE {
            ix.resync = Some(u64::from(header.buffer_size));
        }
        while ix.step(&source, len)? {}
        let clock = Clock::new(&header, raw);
        let max_filled = match header.buffer_size {
            s if u64::from(s) >= HDR && s <= MAX_BUFFER_SIZE => s,
            _ => MAX_BUFFER_SIZE,
        };
        Ok(EtlFile {
            source,
            len,
            header,
            clock,
            resync: ix.resync,
            streams: ix.streams.into_iter().collect(),
            index_diagnostics: ix.diag,
            time_skips: ix.time_skips,
            max_filled,
        })
    }

    /// The `TRACE_LOGFILE_HEADER` of the first record.
    pub fn header(&self) -> &LogfileHeader {
        &self.header
    }

    /// Raw timestamp to FILETIME conversion for this file.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Size of the file in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty file (never, for a file that opened).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffers, in file order, read by a fresh scan of the buffer
    /// headers: O(buffers) memory, for tests and tools that want a list;
    /// [`EtlFile::buffer_headers`] streams the same.
    pub fn buffers(&self) -> Vec<BufferInfo> {
        self.buffer_headers().collect()
    }

    /// The buffers, in file order, streamed by a scan of the buffer headers
    /// (one 72-byte read each, constant memory). Problems are not repeated
    /// here: they are in [`EtlFile::diagnostics`].
    pub fn buffer_headers(&self) -> Buffers<'_> {
        Buffers {
            file: self,
            scan: Scan::default(),
        }
    }

    /// Number of processor streams time order merges.
    pub fn processors(&self) -> usize {
        self.streams.len()
    }

    /// What the open pass over buffer headers found wrong (buffer-level
    /// problems).
    pub fn diagnostics(&self) -> &Diagnostics {
        &self.index_diagnostics
    }

    /// A reader over the events in the given order.
    pub fn events(&self, order: Order) -> EventReader<'_> {
        EventReader::new(self, order, MAX_BUFFERED_BYTES, Skip::default())
    }

    /// The same without the kernel events `(group, opcode)` listed (at most
    /// [`MAX_SKIPPED_HOOKS`]; more are ignored): they are stepped over where
    /// their header is read and never delivered, only counted
    /// ([`Diagnostics::skipped_events`]). For consumers that ignore an event
    /// a third of a trace consists of (SysCallExit for `analyze`).
    pub fn events_skipping(&self, order: Order, hooks: &[(u8, u8)]) -> EventReader<'_> {
        EventReader::new(self, order, MAX_BUFFERED_BYTES, Skip::new(hooks))
    }

    /// A reader holding at most `max_buffered_bytes` of buffer data (default
    /// [`MAX_BUFFERED_BYTES`]); buffers past it are skipped with
    /// [`ErrorKind::MemoryBudget`].
    pub fn events_with_budget(&self, order: Order, max_buffered_bytes: usize) -> EventReader<'_> {
        EventReader::new(self, order, max_buffered_bytes, Skip::default())
    }

    /// Calls `f` for every event in `order` until it returns `Break`;
    /// returns what was skipped.
    pub fn for_each_event<F>(&self, order: Order, mut f: F) -> Diagnostics
    where
        F: FnMut(&RawEvent<'_>) -> ControlFlow<()>,
    {
        let mut r = self.events(order);
        while let Some(ev) = r.next_event() {
            if f(&ev).is_break() {
                break;
            }
        }
        r.into_diagnostics()
    }

    /// Reads buffer `idx`'s records region (decompressed) into `data`,
    /// returning its length. `Err` carries what went wrong and how many
    /// bytes of (partial) records are usable anyway.
    fn load(
        &self,
        info: &BufferInfo,
        data: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
        budget: usize,
    ) -> Result<usize, (EtlError, usize)> {
        let limits = Limits {
            max_filled: self.max_filled,
            budget,
        };
        load_buffer(&self.source, info, data, scratch, limits)
    }
}

/// A position in the walk over buffer headers. The walk is deterministic
/// (where the next header is depends only on this state and the file), so
/// the open pass, file order and each processor's cursor in time order all
/// see the same buffers; a copy taken at a processor's first buffer lets
/// its cursor start there.
#[derive(Debug, Clone, Copy, Default)]
struct Scan {
    off: u64,
    /// A compressed buffer was seen: buffer sizes are no longer uniform, so
    /// a corrupt header cannot be stepped over.
    any_compressed: bool,
}

/// What one step of a [`Scan`] found.
enum Step {
    Buffer(BufferInfo),
    /// A header with an impossible size, stepped over by the uniform
    /// buffer size.
    Skipped {
        off: u64,
        size: u32,
    },
    /// The end of what can be read; `Some` when a bad header or a
    /// truncated one ends it.
    End(Option<EtlError>),
}

impl Scan {
    /// Reads the header at `off` and moves past its buffer. `resync` is a
    /// uniform size to step over a corrupt buffer header with, once the
    /// logfile header says what it is and as long as no buffer was
    /// compressed (compressed buffers have sizes of their own).
    fn step(
        &mut self,
        source: &Source,
        len: u64,
        resync: Option<u64>,
        cache: Option<&mut HeaderCache>,
    ) -> Result<Step, EtlError> {
        let off = self.off;
        if off >= len {
            return Ok(Step::End(None));
        }
        let avail = len - off;
        if avail < HDR {
            return Ok(Step::End(Some(EtlError::new(
                off,
                ErrorKind::TruncatedBufferHeader { available: avail },
            ))));
        }
        let h = match cache {
            Some(c) => c.get(source, off)?,
            None => read_header(source, off)?,
        };
        if u64::from(h.buffer_size) < HDR || h.buffer_size > MAX_BUFFER_SIZE {
            let size = h.buffer_size;
            return Ok(match resync.filter(|_| !self.any_compressed) {
                Some(step) => {
                    self.off = (off / step + 1) * step;
                    Step::Skipped { off, size }
                }
                None => {
                    self.off = len;
                    Step::End(Some(EtlError::new(off, ErrorKind::BadBufferSize { size })))
                }
            });
        }
        if h.is_compressed() {
            self.any_compressed = true;
        }
        let available = u64::from(h.buffer_size).min(avail) as u32;
        self.off = off + u64::from(h.buffer_size);
        Ok(Step::Buffer(BufferInfo {
            offset: off,
            header: h,
            available,
        }))
    }
}

fn read_header(source: &Source, off: u64) -> Result<BufferHeader, EtlError> {
    let mut hdr = [0u8; BUFFER_HEADER_SIZE];
    source
        .read_exact_at(&mut hdr, off)
        .map_err(|e| io_error(off, &e))?;
    Ok(BufferHeader::parse(&hdr))
}

/// Recently read buffer headers, shared by the cursors of one time-order
/// reader: they walk the same headers at about the same place in the file,
/// so each header is mostly read from the file once instead of once per
/// processor. Direct-mapped by offset; a fixed 256 slots.
struct HeaderCache {
    slots: Vec<Option<(u64, BufferHeader)>>,
}

impl HeaderCache {
    const SLOTS: usize = 256;

    fn new() -> HeaderCache {
        HeaderCache {
            slots: vec![None; Self::SLOTS],
        }
    }

    fn get(&mut self, source: &Source, off: u64) -> Result<BufferHeader, EtlError> {
        // Buffers are 8-byte aligned and usually a power of two apart:
        // mix the bits so consecutive buffers land in different slots.
        let slot = ((off >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize % Self::SLOTS;
        if let Some((o, h)) = self.slots[slot] {
            if o == off {
                return Ok(h);
            }
        }
        let h = read_header(source, off)?;
        self.slots[slot] = Some((off, h));
        Ok(h)
    }
}

/// Streams the buffers of a file; see [`EtlFile::buffer_headers`].
pub struct Buffers<'f> {
    file: &'f EtlFile,
    scan: Scan,
}

impl Iterator for Buffers<'_> {
    type Item = BufferInfo;

    fn next(&mut self) -> Option<BufferInfo> {
        loop {
            match self
                .scan
                .step(&self.file.source, self.file.len, self.file.resync, None)
            {
                Ok(Step::Buffer(b)) => return Some(b),
                Ok(Step::Skipped { .. }) => {}
                Ok(Step::End(_)) | Err(_) => {
                    self.scan.off = self.file.len;
                    return None;
                }
            }
        }
    }
}

/// The open pass: walks buffer headers only, counting what it finds and
/// noting where each processor's stream starts (at most [`MAX_PROCESSORS`]).
#[derive(Default)]
struct Indexer {
    scan: Scan,
    resync: Option<u64>,
    first: Option<BufferInfo>,
    streams: BTreeMap<u16, Scan>,
    diag: Diagnostics,
    time_skips: Diagnostics,
}

impl Indexer {
    /// Indexes the buffer at the scan position; `Ok(false)` at the end of
    /// what can be read.
    fn step(&mut self, source: &Source, len: u64) -> Result<bool, EtlError> {
        let before = self.scan;
        let b = match self.scan.step(source, len, self.resync, None)? {
            Step::Buffer(b) => b,
            Step::Skipped { off, size } => {
                self.diag
                    .error(EtlError::new(off, ErrorKind::BadBufferSize { size }));
                self.diag.skipped_buffers += 1;
                return Ok(true);
            }
            Step::End(e) => {
                if let Some(e) = e {
                    if matches!(e.kind, ErrorKind::BadBufferSize { .. }) {
                        self.diag.skipped_buffers += 1;
                    }
                    self.diag.error(e);
                }
                return Ok(false);
            }
        };
        let h = &b.header;
        self.diag.buffers += 1;
        if h.is_compressed() {
            self.diag.compressed_buffers += 1;
        }
        if b.available < h.buffer_size {
            self.diag.error(EtlError::new(
                b.offset,
                ErrorKind::TruncatedBuffer {
                    size: h.buffer_size,
                    available: len - b.offset,
                },
            ));
        }
        if self.first.is_none() {
            self.first = Some(b);
        }
        if !self.streams.contains_key(&h.processor) {
            if self.streams.len() < MAX_PROCESSORS {
                self.streams.insert(h.processor, before);
            } else {
                self.time_skips.error(EtlError::new(
                    b.offset,
                    ErrorKind::TooManyProcessors {
                        processor: h.processor,
                    },
                ));
                self.time_skips.skipped_buffers += 1;
            }
        }
        Ok(true)
    }
}

fn io_error(offset: u64, e: &std::io::Error) -> EtlError {
    EtlError::new(offset, ErrorKind::Io(e.to_string()))
}

/// The logfile header and the raw timestamp of its record.
fn first_logfile_header(
    source: &Source,
    info: &BufferInfo,
) -> Result<(LogfileHeader, u64), EtlError> {
    let mut data = Vec::new();
    let mut scratch = Vec::new();
    let limits = Limits {
        max_filled: MAX_BUFFER_SIZE,
        budget: MAX_BUFFER_SIZE as usize,
    };
    let len = load_buffer(source, info, &mut data, &mut scratch, limits).map_err(|(e, _)| e)?;
    let base = info.offset + HDR;
    let no = |why: String| EtlError::in_buffer(base, info.offset, ErrorKind::NoLogfileHeader(why));
    let parsed = record::parse(&data[..len])
        .map_err(|k| no(k.to_string()))?
        .ok_or_else(|| no("the first buffer has no records".into()))?;
    let Record::Event(m) = parsed.record else {
        return Err(no("the first record is not an event".into()));
    };
    if m.id
        != (EventId::Kernel {
            group: 0,
            opcode: 0,
        })
    {
        return Err(no(format!("the first record is {:?}", m.id)));
    }
    let payload = &data[m.payload_start as usize..parsed.size as usize];
    let lh = LogfileHeader::parse(payload).map_err(|e| no(e.to_string()))?;
    Ok((lh, m.timestamp))
}

/// Bounds on what loading one buffer may allocate.
#[derive(Clone, Copy)]
struct Limits {
    /// Largest filled size a buffer may declare.
    max_filled: u32,
    /// Bytes `data` may grow to within the reader's memory budget.
    budget: usize,
}

/// See [`EtlFile::load`].
fn load_buffer(
    source: &Source,
    info: &BufferInfo,
    data: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    limits: Limits,
) -> Result<usize, (EtlError, usize)> {
    let h = &info.header;
    let base = info.offset + HDR;
    let err = |kind| EtlError::in_buffer(base, info.offset, kind);
    let io = |e: std::io::Error| (err(ErrorKind::Io(e.to_string())), 0);
    let stored = (info.available as usize).saturating_sub(BUFFER_HEADER_SIZE);
    if h.is_compressed() {
        let filled = h.filled_bytes;
        if filled > limits.max_filled {
            return Err((
                err(ErrorKind::BadFilledBytes {
                    filled,
                    size: limits.max_filled,
                }),
                0,
            ));
        }
        let want = (filled as usize).saturating_sub(BUFFER_HEADER_SIZE);
        if want > limits.budget {
            return Err((err(ErrorKind::MemoryBudget { need: want as u64 }), 0));
        }
        scratch.resize(stored, 0);
        source.read_exact_at(scratch, base).map_err(io)?;
        match xpress::decompress(scratch, data, want) {
            Ok(()) => Ok(data.len()),
            Err(e) => {
                let got = data.len();
                Err((err(ErrorKind::Decompress(e)), got))
            }
        }
    } else {
        let filled = h.filled_bytes;
        let (end, bad) = if filled == 0 {
            // No filled count: read to the end marker.
            (h.buffer_size, None)
        } else if filled < HDR as u32 || filled > h.buffer_size {
            (
                h.buffer_size,
                Some(err(ErrorKind::BadFilledBytes {
                    filled,
                    size: h.buffer_size,
                })),
            )
        } else {
            (filled, None)
        };
        let n = (end as usize - BUFFER_HEADER_SIZE).min(stored);
        if n > limits.budget {
            return Err((err(ErrorKind::MemoryBudget { need: n as u64 }), 0));
        }
        if data.len() < n {
            data.resize(n, 0);
        }
        source.read_exact_at(&mut data[..n], base).map_err(io)?;
        match bad {
            Some(e) => Err((e, n)),
            None => Ok(n),
        }
    }
}

/// State shared by the cursors of one reader.
/// Most kernel hooks [`EtlFile::events_skipping`] takes.
pub const MAX_SKIPPED_HOOKS: usize = 4;

/// Kernel hooks (`opcode | group << 8`, as a record header holds them at
/// offset 6) not to deliver.
#[derive(Clone, Copy, Default)]
struct Skip {
    hooks: [u16; MAX_SKIPPED_HOOKS],
    n: usize,
}

impl Skip {
    fn new(list: &[(u8, u8)]) -> Skip {
        let mut s = Skip::default();
        for &(group, opcode) in list.iter().take(MAX_SKIPPED_HOOKS) {
            s.hooks[s.n] = Skip::hook(group, opcode);
            s.n += 1;
        }
        s
    }

    #[inline(always)]
    fn hook(group: u8, opcode: u8) -> u16 {
        u16::from(opcode) | u16::from(group) << 8
    }

    #[inline(always)]
    fn has(&self, hook: u16) -> bool {
        self.hooks[..self.n].contains(&hook)
    }

    fn has_id(&self, id: EventId) -> bool {
        match id {
            EventId::Kernel { group, opcode } if self.n > 0 => self.has(Skip::hook(group, opcode)),
            _ => false,
        }
    }
}

struct Shared {
    diag: Diagnostics,
    skip: Skip,
    /// Compressed bytes of the buffer being decompressed.
    scratch: Vec<u8>,
    /// Bytes of buffer data the cursors hold (capacity of their `data`).
    held: usize,
    /// Most bytes they may hold.
    limit: usize,
    /// Time order only: headers the processor cursors share.
    headers: Option<HeaderCache>,
}

/// A cursor's current event when it is not a plain system record: what
/// [`RawEvent`] needs, ranges relative to the record.
#[derive(Clone, Copy)]
struct General {
    id: EventId,
    header: HeaderKind,
    version: u8,
    pointer_size: u8,
    pid: Option<u32>,
    tid: Option<u32>,
    payload_start: u32,
    extended: (u32, u32),
}

impl General {
    const NONE: General = General {
        id: EventId::Kernel {
            group: 0,
            opcode: 0,
        },
        header: HeaderKind::Live,
        version: 0,
        pointer_size: 0,
        pid: None,
        tid: None,
        payload_start: 0,
        extended: (0, 0),
    };
}

/// [`Cursor::kind`] of a current event that is not a plain system record.
const GENERAL: PlainKind = PlainKind {
    fixed: 0,
    header: HeaderKind::Live,
    pointer_size: 0,
};

/// One stream of buffers (all of them, or one processor's) and the position
/// of the next event in it. The stream is found by walking buffer headers
/// forward from `scan`, skipping other processors' buffers: no list of
/// buffers is kept.
struct Cursor {
    // The hot part: the loaded buffer and the current event.
    data: Vec<u8>,
    len: usize,
    /// Start of the current record (or of the next one to parse).
    pos: usize,
    /// End of the current record (`pos` + its declared size).
    end: usize,
    /// Start of the record after the current event.
    next: usize,
    /// There is a current event.
    has: bool,
    timestamp: u64,
    /// The current event's plain system kind; [`GENERAL`] when `general`
    /// holds it.
    kind: PlainKind,
    general: General,
    /// File offset of the loaded buffer (orders ties in time order).
    buf_offset: u64,
    processor: u16,
    // The cold part: where the stream goes on.
    scan: Scan,
    /// Only this processor's buffers (time order); all (file order).
    processor_filter: Option<u16>,
    started: bool,
    /// The loaded buffer's data is a partial decompression: a bad record at
    /// its end is expected and not reported again.
    partial: bool,
    done: bool,
}

impl Cursor {
    fn new(scan: Scan, processor_filter: Option<u16>) -> Cursor {
        Cursor {
            data: Vec::new(),
            len: 0,
            pos: 0,
            end: 0,
            next: 0,
            has: false,
            timestamp: 0,
            kind: GENERAL,
            general: General::NONE,
            buf_offset: 0,
            processor: 0,
            scan,
            processor_filter,
            started: false,
            partial: false,
            done: false,
        }
    }

    /// Loads buffers until one with records is in `data`, or none are left.
    fn load_next(&mut self, file: &EtlFile, sh: &mut Shared) -> bool {
        self.started = true;
        while let Some(info) = self.next_buffer(file, sh) {
            self.buf_offset = info.offset;
            self.processor = info.header.processor;
            self.pos = 0;
            self.partial = false;
            let before = self.data.capacity();
            let budget = sh.limit.saturating_sub(sh.held - before);
            let loaded = file.load(&info, &mut self.data, &mut sh.scratch, budget);
            sh.held = sh.held - before + self.data.capacity();
            match loaded {
                Ok(n) => self.len = n,
                Err((e, n)) => {
                    sh.diag.error(e);
                    self.len = n;
                    self.partial = true;
                    if n == 0 {
                        sh.diag.skipped_buffers += 1;
                        continue;
                    }
                }
            }
            return true;
        }
        self.done = true;
        self.len = 0;
        // Give the memory back: a finished stream holds nothing.
        sh.held -= self.data.capacity();
        self.data = Vec::new();
        false
    }

    /// The next buffer of this stream; problems with headers were counted
    /// by the open pass, except a read failing now.
    fn next_buffer(&mut self, file: &EtlFile, sh: &mut Shared) -> Option<BufferInfo> {
        loop {
            let cache = sh.headers.as_mut();
            match self.scan.step(&file.source, file.len, file.resync, cache) {
                Ok(Step::Buffer(b)) => {
                    if self
                        .processor_filter
                        .is_none_or(|p| p == b.header.processor)
                    {
                        return Some(b);
                    }
                }
                Ok(Step::Skipped { .. }) => {}
                Ok(Step::End(_)) => return None,
                Err(e) => {
                    sh.diag.error(e);
                    self.scan.off = file.len;
                    return None;
                }
            }
        }
    }

    /// Makes the record at `pos` (of declared `size`) the current event.
    #[inline(always)]
    fn set(&mut self, size: u32, timestamp: u64, kind: PlainKind) {
        self.end = self.pos + size as usize;
        self.next = self.pos + ((size as usize + 7) & !7);
        self.has = true;
        self.timestamp = timestamp;
        self.kind = kind;
    }

    /// The common case: a plain system record at `pos` becomes the current
    /// event; `false` for anything else (left to [`Cursor::fill`]).
    #[inline(always)]
    fn try_plain(&mut self, sh: &mut Shared) -> bool {
        loop {
            let Some(rest) = self.data.get(self.pos..self.len) else {
                return false;
            };
            let Some(p) = record::parse_plain(rest) else {
                return false;
            };
            sh.diag.records += 1;
            if sh.skip.n > 0 {
                if let Some(&[opcode, group]) = rest.get(6..8) {
                    if sh.skip.has(Skip::hook(group, opcode)) {
                        sh.diag.skipped_events += 1;
                        self.pos += (p.size as usize + 7) & !7;
                        continue;
                    }
                }
            }
            self.set(p.size, p.timestamp, p.kind);
            return true;
        }
    }

    /// [`Cursor::set`] for any event.
    fn set_general(&mut self, size: u32, m: &EventMeta) {
        self.set(size, m.timestamp, GENERAL);
        self.general = General {
            id: m.id,
            header: m.header,
            version: m.version,
            pointer_size: m.pointer_size,
            pid: m.pid,
            tid: m.tid,
            payload_start: m.payload_start,
            extended: (m.extended_start, m.extended_end),
        };
    }

    /// Makes `current` the next event at or after `pos`, loading buffers
    /// as needed; none at the end of the stream.
    #[inline(never)]
    fn fill(&mut self, file: &EtlFile, sh: &mut Shared) {
        if self.has || self.done {
            return;
        }
        if !self.started && !self.load_next(file, sh) {
            return;
        }
        loop {
            let rest = self.data.get(self.pos..self.len).unwrap_or(&[]);
            match record::parse(rest) {
                Ok(Some(p)) => {
                    sh.diag.records += 1;
                    match p.record {
                        Record::Event(m) if sh.skip.has_id(m.id) => {
                            sh.diag.skipped_events += 1;
                        }
                        Record::Event(m) => {
                            self.set_general(p.size, &m);
                            return;
                        }
                        Record::Message => sh.diag.message_records += 1,
                        Record::Other(t) => *sh.diag.other_records.entry(t).or_insert(0) += 1,
                    }
                    self.pos += p.aligned_size();
                }
                Ok(None) => {
                    if !self.load_next(file, sh) {
                        return;
                    }
                }
                Err(kind) => {
                    if !self.partial {
                        sh.diag.error(EtlError::in_buffer(
                            self.buf_offset + HDR + self.pos as u64,
                            self.buf_offset,
                            kind,
                        ));
                    }
                    sh.diag.abandoned_buffer_tails += 1;
                    sh.diag.abandoned_bytes += rest.len() as u64;
                    if !self.load_next(file, sh) {
                        return;
                    }
                }
            }
        }
    }

    /// Moves past the current event to the next one.
    #[inline(always)]
    fn advance(&mut self, file: &EtlFile, sh: &mut Shared) {
        if self.has {
            self.has = false;
            self.pos = self.next;
            if self.try_plain(sh) {
                return;
            }
        }
        self.fill(file, sh);
    }

    /// The current event, a plain system record; call only when `has`.
    #[inline(always)]
    fn plain_event(&self) -> RawEvent<'_> {
        let rec = self.data.get(self.pos..self.end).unwrap_or(&[]);
        let fixed = self.kind.fixed;
        let (id, version, pid, tid) = record::plain_fields(rec, fixed);
        let payload = rec.get(usize::from(fixed)..).unwrap_or(&[]);
        RawEvent {
            header: self.kind.header,
            id,
            version,
            pid,
            tid,
            processor: self.processor,
            timestamp: self.timestamp,
            pointer_size: self.kind.pointer_size,
            payload,
            extended: ExtendedData(&payload[..0]),
            offset: self.buf_offset + HDR + self.pos as u64,
        }
    }

    /// The current event, any other; call only when `has`.
    #[inline(never)]
    fn general_event(&self) -> RawEvent<'_> {
        let rec = self.data.get(self.pos..self.end).unwrap_or(&[]);
        let g = &self.general;
        RawEvent {
            header: g.header,
            id: g.id,
            version: g.version,
            pid: g.pid,
            tid: g.tid,
            processor: self.processor,
            timestamp: self.timestamp,
            pointer_size: g.pointer_size,
            payload: rec.get(g.payload_start as usize..).unwrap_or(&[]),
            extended: ExtendedData(
                rec.get(g.extended.0 as usize..g.extended.1 as usize)
                    .unwrap_or(&[]),
            ),
            offset: self.buf_offset + HDR + self.pos as u64,
        }
    }
}

enum Mode {
    File { cursor: Cursor, started: bool },
    Time(Merge),
}

/// The time-order merge. Events are delivered by key (timestamp, file
/// offset of the buffer), smallest first, among the current events of the
/// processor cursors; keys of different cursors never tie (their buffers are
/// at different offsets), so any way of finding the smallest gives the same
/// order. With few processors a linear scan finds it faster than a heap.
///
/// Events come in runs from one processor: `last` is the cursor whose event
/// was delivered last and `limit` the smallest timestamp of the others;
/// while that cursor's next timestamp stays below the limit it is still the
/// smallest and no other key needs a look. Equal timestamps take the full
/// comparison.
struct Merge {
    cursors: Vec<Cursor>,
    /// Each cursor's current timestamp; `u64::MAX` also when done.
    ts: Vec<u64>,
    /// Each cursor's buffer offset; `u64::MAX` when done.
    off: Vec<u64>,
    last: Option<usize>,
    limit: u64,
}

impl Merge {
    #[inline(always)]
    fn set_key(&mut self, i: usize) {
        let c = &self.cursors[i];
        let (t, o) = if c.has {
            (c.timestamp, c.buf_offset)
        } else {
            (u64::MAX, u64::MAX)
        };
        if let (Some(ts), Some(off)) = (self.ts.get_mut(i), self.off.get_mut(i)) {
            *ts = t;
            *off = o;
        }
    }

    /// Makes `last` the cursor with the smallest key and `limit` the
    /// smallest timestamp of the others; `false` when all are done.
    #[inline(always)]
    fn select(&mut self) -> bool {
        let (mut best, mut bi, mut second) = (u64::MAX, 0, u64::MAX);
        for (i, &t) in self.ts.iter().enumerate() {
            second = second.min(best.max(t));
            bi = if t < best { i } else { bi };
            best = best.min(t);
        }
        if best < second {
            self.last = Some(bi);
            self.limit = second;
            true
        } else {
            self.select_tie()
        }
    }

    /// [`Merge::select`] when the smallest timestamp is not unique (or all
    /// are `u64::MAX`): by the full key; the limit then admits no run.
    #[cold]
    #[inline(never)]
    fn select_tie(&mut self) -> bool {
        let key = |i: usize| (self.ts[i], self.off[i]);
        let Some(bi) = (0..self.ts.len()).min_by_key(|&i| key(i)) else {
            return false;
        };
        if key(bi) == (u64::MAX, u64::MAX) {
            self.last = None;
            return false;
        }
        self.last = Some(bi);
        // Equal to the best timestamp: the next event of this cursor goes
        // through a full selection again.
        self.limit = self.ts[bi];
        true
    }
}

/// Reads events one at a time. A lending iterator: each event borrows the
/// reader's buffer until the next call.
///
/// ```no_run
/// # use sentry_etl::{EtlFile, Order};
/// let file = EtlFile::open("trace.etl")?;
/// let mut events = file.events(Order::Time);
/// while let Some(ev) = events.next_event() {
///     println!("{} {:?}", ev.timestamp, ev.id);
/// }
/// eprintln!("{} errors", events.diagnostics().error_count);
/// # Ok::<(), sentry_etl::EtlError>(())
/// ```
pub struct EventReader<'f> {
    file: &'f EtlFile,
    shared: Shared,
    mode: Mode,
}

impl<'f> EventReader<'f> {
    fn new(file: &'f EtlFile, order: Order, limit: usize, skip: Skip) -> EventReader<'f> {
        let mut shared = Shared {
            diag: file.index_diagnostics.clone(),
            skip,
            scratch: Vec::new(),
            held: 0,
            limit,
            headers: (order == Order::Time).then(HeaderCache::new),
        };
        let mode = match order {
            Order::File => Mode::File {
                cursor: Cursor::new(Scan::default(), None),
                started: false,
            },
            Order::Time => {
                let skips = &file.time_skips;
                shared.diag.skipped_buffers += skips.skipped_buffers;
                for e in &skips.errors {
                    shared.diag.error(e.clone());
                }
                shared.diag.error_count += skips.error_count - skips.errors.len() as u64;
                let mut cursors: Vec<Cursor> = file
                    .streams
                    .iter()
                    .map(|&(p, scan)| Cursor::new(scan, Some(p)))
                    .collect();
                for c in &mut cursors {
                    c.fill(file, &mut shared);
                }
                let n = cursors.len();
                let mut m = Merge {
                    cursors,
                    ts: vec![u64::MAX; n],
                    off: vec![u64::MAX; n],
                    last: None,
                    limit: 0,
                };
                for i in 0..n {
                    m.set_key(i);
                }
                Mode::Time(m)
            }
        };
        EventReader { file, shared, mode }
    }

    /// The next event, or `None` at the end of the file.
    #[allow(clippy::should_implement_trait)]
    #[inline]
    pub fn next_event(&mut self) -> Option<RawEvent<'_>> {
        let file = self.file;
        let sh = &mut self.shared;
        let c: &Cursor = match &mut self.mode {
            Mode::File { cursor, started } => {
                if *started {
                    cursor.advance(file, sh);
                } else {
                    *started = true;
                    cursor.fill(file, sh);
                }
                if !cursor.has {
                    return None;
                }
                cursor
            }
            Mode::Time(m) => {
                let run = match m.last {
                    Some(i) => {
                        let c = &mut m.cursors[i];
                        c.advance(file, sh);
                        if c.has && c.timestamp < m.limit {
                            // Still the smallest.
                            Some(i)
                        } else {
                            m.set_key(i);
                            None
                        }
                    }
                    None => None,
                };
                let i = match run {
                    Some(i) => i,
                    None => {
                        if !m.select() {
                            return None;
                        }
                        m.last?
                    }
                };
                &m.cursors[i]
            }
        };
        sh.diag.events += 1;
        if c.kind.fixed == 0 {
            return Some(c.general_event());
        }
        Some(c.plain_event())
    }

    /// What was skipped so far (including the file's index diagnostics).
    pub fn diagnostics(&self) -> &Diagnostics {
        &self.shared.diag
    }

    pub fn into_diagnostics(self) -> Diagnostics {
        self.shared.diag
    }

    /// Processor streams (cursors) this reader holds: one in file order,
    /// one per processor in time order, whatever the number of buffers.
    pub fn streams(&self) -> usize {
        match &self.mode {
            Mode::File { .. } => 1,
            Mode::Time(m) => m.cursors.len(),
        }
    }

    /// Bytes of buffer data held now (at most one buffer per stream).
    pub fn held_bytes(&self) -> usize {
        self.shared.held
    }

    /// The file being read.
    pub fn file(&self) -> &'f EtlFile {
        self.file
    }
}
