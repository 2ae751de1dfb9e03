//! The file, its buffer-header scan, and the two event orders.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::ControlFlow;
use std::path::Path;

use sentry_raw::{Clock, EventId, ExtendedData, HeaderKind, LogfileHeader, RawEvent};

use crate::buffer::{BufferHeader, BUFFER_HEADER_SIZE, MAX_BUFFER_SIZE};
use crate::error::{Diagnostics, ErrorKind, EtlError};
use crate::record::{self, EventMeta, Record};
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
        r.for_each(&mut f);
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
        headers: Option<&mut HeaderCache>,
    ) -> Result<usize, (EtlError, usize)> {
        let limits = Limits {
            max_filled: self.max_filled,
            budget,
            len: self.len,
        };
        load_buffer(&self.source, info, data, scratch, limits, headers)
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
        let slot = Self::slot(off);
        if let Some((o, h)) = self.slots[slot] {
            if o == off {
                return Ok(h);
            }
        }
        let h = read_header(source, off)?;
        self.slots[slot] = Some((off, h));
        Ok(h)
    }

    fn slot(off: u64) -> usize {
        ((off >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize % Self::SLOTS
    }

    /// The header at `off`, read with something else.
    fn put(&mut self, off: u64, h: BufferHeader) {
        self.slots[Self::slot(off)] = Some((off, h));
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
        len: 0,
    };
    let len =
        load_buffer(source, info, &mut data, &mut scratch, limits, None).map_err(|(e, _)| e)?;
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
    /// The file's length.
    len: u64,
}

/// Most bytes between a buffer's records and its end read to reach the
/// next buffer's header in the same read.
const MAX_PEEK_GAP: usize = 4096;

/// See [`EtlFile::load`]. With `headers` (time order), an uncompressed
/// buffer is read on to the end of the next buffer's header when little
/// lies between (buffers are nearly full): that header goes into the cache
/// the processor cursors walk, which then mostly costs no read of its own.
fn load_buffer(
    source: &Source,
    info: &BufferInfo,
    data: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    limits: Limits,
    headers: Option<&mut HeaderCache>,
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
        let next = info.offset + u64::from(h.buffer_size);
        let gap = stored - n;
        let peek = headers.filter(|_| {
            stored + BUFFER_HEADER_SIZE == h.buffer_size as usize
                && gap <= MAX_PEEK_GAP
                && next + HDR <= limits.len
                && n + gap + BUFFER_HEADER_SIZE <= limits.budget
        });
        let total = if peek.is_some() {
            n + gap + BUFFER_HEADER_SIZE
        } else {
            n
        };
        if data.len() < total {
            data.resize(total, 0);
        }
        source.read_exact_at(&mut data[..total], base).map_err(io)?;
        if let (Some(cache), Some(hdr)) = (peek, data.get(n + gap..total)) {
            if let Ok(hdr) = <&[u8; BUFFER_HEADER_SIZE]>::try_from(hdr) {
                cache.put(next, BufferHeader::parse(hdr));
            }
        }
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
/// offset 6) not to deliver. The first apart, as a `u32` that is never a
/// hook when there is none: the common list of one is one comparison.
#[derive(Clone, Copy)]
struct Skip {
    first: u32,
    rest: [u16; MAX_SKIPPED_HOOKS - 1],
    n_rest: usize,
}

impl Default for Skip {
    fn default() -> Skip {
        Skip {
            first: Skip::NONE,
            rest: [0; MAX_SKIPPED_HOOKS - 1],
            n_rest: 0,
        }
    }
}

impl Skip {
    /// [`Skip::first`] of an empty list: no hook equals it.
    const NONE: u32 = 0x1_0000;

    fn new(list: &[(u8, u8)]) -> Skip {
        let mut s = Skip::default();
        let mut hooks = list
            .iter()
            .take(MAX_SKIPPED_HOOKS)
            .map(|&(group, opcode)| Skip::hook(group, opcode));
        if let Some(h) = hooks.next() {
            s.first = u32::from(h);
        }
        for (slot, h) in s.rest.iter_mut().zip(hooks) {
            *slot = h;
            s.n_rest += 1;
        }
        s
    }

    #[inline(always)]
    fn hook(group: u8, opcode: u8) -> u16 {
        u16::from(opcode) | u16::from(group) << 8
    }

    #[inline(always)]
    fn has(&self, hook: u16) -> bool {
        u32::from(hook) == self.first || (self.n_rest > 0 && self.has_rest(hook))
    }

    fn has_rest(&self, hook: u16) -> bool {
        self.rest.iter().take(self.n_rest).any(|&h| h == hook)
    }

    fn has_id(&self, id: EventId) -> bool {
        match id {
            EventId::Kernel { group, opcode } => self.has(Skip::hook(group, opcode)),
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
    /// Where events may be missing (see [`crate::damage`]).
    damage: crate::damage::DamageLog,
}

/// A cursor's event before it is current: nothing.
const NO_EVENT: RawEvent<'static> = RawEvent {
    header: HeaderKind::Live,
    id: EventId::Kernel {
        group: 0,
        opcode: 0,
    },
    version: 0,
    pid: None,
    tid: None,
    processor: 0,
    timestamp: 0,
    pointer_size: 0,
    payload: &[],
    extended: ExtendedData(&[]),
    offset: 0,
};

/// One stream of buffers (all of them, or one processor's) and the position
/// of the next event in it. The stream is found by walking buffer headers
/// forward from `scan`, skipping other processors' buffers: no list of
/// buffers is kept.
struct Cursor {
    // The hot part: the loaded buffer and the current event.
    data: Vec<u8>,
    /// Bytes of records in `data`.
    len: usize,
    /// Start of the current record (or of the next one to parse).
    pos: usize,
    /// Start of the record after the current event.
    next: usize,
    /// The current event but for its payload and extended data, which are
    /// these ranges of `data`; its processor is the loaded buffer's.
    /// Delivering an event is a copy of this and one slice.
    event: RawEvent<'static>,
    /// The current event's process id, raw (`u32::MAX`: none); `event.pid`
    /// stays `None`. Set apart so that the delivered event's pid (where an
    /// `Option<RawEvent>` keeps its `None`) is a fresh value, not a copy the
    /// compiler must test.
    pid: u32,
    payload: (usize, usize),
    extended: (usize, usize),
    /// There is a current event.
    has: bool,
    /// File offset of the loaded buffer's records (`buf_offset` + header).
    base: u64,
    /// File offset of the loaded buffer (orders ties in time order).
    buf_offset: u64,
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
            next: 0,
            event: NO_EVENT,
            pid: u32::MAX,
            payload: (0, 0),
            extended: (0, 0),
            has: false,
            base: HDR,
            buf_offset: 0,
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
            // The stream's last event so far: what came before this buffer.
            sh.damage.buffer(
                info.header.sequence_number,
                info.header.processor,
                self.event.timestamp,
            );
            self.buf_offset = info.offset;
            self.base = info.offset + HDR;
            self.event.processor = info.header.processor;
            self.pos = 0;
            self.partial = false;
            let before = self.data.capacity();
            let budget = sh.limit.saturating_sub(sh.held - before);
            let loaded = file.load(
                &info,
                &mut self.data,
                &mut sh.scratch,
                budget,
                sh.headers.as_mut(),
            );
            sh.held = sh.held - before + self.data.capacity();
            match loaded {
                Ok(n) => self.len = n,
                Err((e, n)) => {
                    sh.diag.error(e);
                    sh.damage
                        .lost_after(info.header.processor, self.event.timestamp);
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
        if let Some(p) = self.processor_filter {
            sh.damage.stream_end(p, self.event.timestamp);
        }
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
                    sh.damage
                        .lost_after(self.processor_filter.unwrap_or(0), self.event.timestamp);
                    self.scan.off = file.len;
                    return None;
                }
            }
        }
    }

    /// The common case: a plain system record at `pos` becomes the current
    /// event; `false` for anything else (left to [`Cursor::fill`]). The
    /// same checks as [`record::parse_plain`], written out so that nothing
    /// but the record's words passes between them.
    #[inline(always)]
    fn try_plain(&mut self, sh: &mut Shared) -> bool {
        loop {
            let pos = self.pos;
            let Some(rest) = self.data.get(pos..self.len) else {
                return false;
            };
            let Some(h) = rest.first_chunk() else {
                return false;
            };
            let head = record::word(h, 0);
            if !record::plain_marker(head) {
                return false;
            }
            let kind = record::plain_kind(head);
            let size = record::plain_size(head);
            if size < kind.min_size || size as usize > rest.len() {
                return false;
            }
            sh.diag.records += 1;
            let next = pos + ((size as usize + 7) & !7);
            let hook = (head >> 48) as u16;
            if sh.skip.has(hook) {
                sh.diag.skipped_events += 1;
                self.pos = next;
                continue;
            }
            let ids = record::word(h, 8);
            let perfinfo = kind.fixed == 0x10;
            // PERFINFO: the timestamp at 8, no ids; SYSTEM and COMPACT:
            // thread and process ids at 8, the timestamp at 0x10.
            let (pid, tid) = if perfinfo {
                (u32::MAX, None)
            } else {
                ((ids >> 32) as u32, sentry_raw::id_or_none(ids as u32))
            };
            let ev = &mut self.event;
            ev.header = kind.header;
            ev.id = EventId::Kernel {
                group: (head >> 56) as u8,
                opcode: (head >> 48) as u8,
            };
            ev.version = head as u8;
            ev.tid = tid;
            ev.timestamp = if perfinfo { ids } else { record::word(h, 16) };
            ev.pointer_size = kind.pointer_size;
            ev.offset = self.base + pos as u64;
            self.pid = pid;
            self.payload = (pos + usize::from(kind.fixed), pos + size as usize);
            self.extended = (0, 0);
            self.next = next;
            self.has = true;
            return true;
        }
    }

    /// Makes `m` (of declared `size`, at `pos`) the current event.
    fn set_general(&mut self, size: u32, m: &EventMeta) {
        let pos = self.pos;
        // Ranges of the record (empty where they do not fit it) as ranges
        // of the buffer.
        let within = |a: u32, b: u32| {
            if a <= b && b <= size {
                (pos + a as usize, pos + b as usize)
            } else {
                (0, 0)
            }
        };
        let ev = &mut self.event;
        ev.header = m.header;
        ev.id = m.id;
        ev.version = m.version;
        // `id_or_none` made it: never `Some(u32::MAX)`.
        self.pid = m.pid.unwrap_or(u32::MAX);
        ev.tid = m.tid;
        ev.timestamp = m.timestamp;
        ev.pointer_size = m.pointer_size;
        ev.offset = self.base + pos as u64;
        self.payload = within(m.payload_start, size);
        self.extended = within(m.extended_start, m.extended_end);
        self.next = pos + ((size as usize + 7) & !7);
        self.has = true;
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
                    // The marker ends the records; past it only fill may
                    // follow, up to the filled size.
                    if rest.len() > 4 && rest[4..].iter().any(|&b| b != 0xFF) && !self.partial {
                        let left = (rest.len() - 4).min(u32::MAX as usize) as u32;
                        sh.diag.error(EtlError::in_buffer(
                            self.base + self.pos as u64,
                            self.buf_offset,
                            ErrorKind::EarlyEndMarker { left },
                        ));
                        sh.diag.abandoned_buffer_tails += 1;
                        sh.diag.abandoned_bytes += u64::from(left);
                        sh.damage
                            .lost_after(self.event.processor, self.event.timestamp);
                    }
                    if !self.load_next(file, sh) {
                        return;
                    }
                }
                Err(kind) => {
                    if !self.partial {
                        sh.diag.error(EtlError::in_buffer(
                            self.base + self.pos as u64,
                            self.buf_offset,
                            kind,
                        ));
                        sh.damage
                            .lost_after(self.event.processor, self.event.timestamp);
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

    /// File order: makes the next event current (the first on the first
    /// call); `false` at the end.
    #[inline(always)]
    fn step(&mut self, started: &mut bool, file: &EtlFile, sh: &mut Shared) -> bool {
        if *started {
            self.advance(file, sh);
        } else {
            *started = true;
            self.fill(file, sh);
        }
        self.has
    }

    /// Moves past the current event to the next one.
    #[inline(always)]
    fn advance(&mut self, file: &EtlFile, sh: &mut Shared) {
        if self.has {
            self.pos = self.next;
            if self.try_plain(sh) {
                return;
            }
            self.has = false;
        }
        self.fill(file, sh);
    }

    /// The merge key of the current event: timestamp, then buffer offset;
    /// the largest when the stream is done.
    #[inline(always)]
    fn key(&self) -> u128 {
        if self.has {
            u128::from(self.event.timestamp) << 64 | u128::from(self.buf_offset)
        } else {
            u128::MAX
        }
    }

    /// The current event; call only when `has`.
    #[inline(always)]
    fn event(&self) -> RawEvent<'_> {
        let mut ev: RawEvent<'_> = self.event;
        ev.pid = sentry_raw::id_or_none(self.pid);
        ev.payload = match self.data.get(self.payload.0..self.payload.1) {
            Some(p) => p,
            None => empty(),
        };
        let (x0, x1) = self.extended;
        if x0 != x1 {
            ev.extended = ExtendedData(self.data.get(x0..x1).unwrap_or(&[]));
        }
        ev
    }
}

/// An empty slice, on the unlikely path.
#[cold]
fn empty<'a>() -> &'a [u8] {
    &[]
}

enum Mode {
    File { cursor: Cursor, started: bool },
    Time(Merge),
}

/// Slots of the time-order merge's arrays: one per cursor and one for the
/// sentinel after the last. Fixed, so that the hot path's constant indices
/// need no bounds checks.
const SLOTS: usize = MAX_PROCESSORS + 1;

/// The time-order merge. Events are delivered by key (timestamp, file
/// offset of the buffer, as one `u128`), smallest first, among the current
/// events of the processor cursors; keys of different cursors never tie
/// (their buffers are at different offsets), so any way of finding the
/// smallest gives the same order.
///
/// The cursors are kept sorted by key: the first is the current one, the
/// second's key is the limit. Events come in runs from one processor:
/// while the current cursor's next key stays below the limit it is still
/// the smallest and nothing moves. When it passes the limit, it moves down
/// the order to its new place, the others up by one: a few steps with a
/// handful of processors (fewer than a full scan or a tree's replay and
/// the new limit), at most one per processor.
struct Merge {
    cursors: Vec<Cursor>,
    /// `order[j]` is the cursor with the `j`-th smallest key, `keys[j]`;
    /// a stream that is done has key `u128::MAX`, and so has every slot
    /// past the last cursor (the sentinel that stops the move down).
    /// `keys[0]` is stale while its cursor's run goes on.
    order: Box<[u16; SLOTS]>,
    keys: Box<[u128; SLOTS]>,
    /// `order[0]`.
    cur: usize,
    /// `keys[1]`.
    limit: u128,
    /// `Fresh` until the first event, `Done` after the last.
    state: MergeState,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum MergeState {
    Fresh,
    Running,
    Done,
}

impl Merge {
    fn new(mut cursors: Vec<Cursor>) -> Merge {
        cursors.truncate(MAX_PROCESSORS);
        let mut by_key: Vec<(u128, usize)> = cursors.iter().map(Cursor::key).zip(0..).collect();
        by_key.sort_unstable();
        let mut m = Merge {
            cursors,
            order: Box::new([0; SLOTS]),
            keys: Box::new([u128::MAX; SLOTS]),
            cur: 0,
            limit: 0,
            state: MergeState::Fresh,
        };
        for (j, (k, i)) in by_key.into_iter().enumerate() {
            m.keys[j] = k;
            m.order[j] = i as u16;
        }
        m.crown();
        m
    }

    /// The current cursor's key changed to `k`, past the limit: moves it
    /// down to its place. `false` when every stream is done.
    #[inline(always)]
    fn reorder(&mut self, k: u128) -> bool {
        let i = self.cur as u16;
        let (keys, order) = (&mut self.keys[..], &mut self.order[..]);
        let mut j = 1;
        // The sentinel past the last cursor stops this (no key is above
        // it), before the end of the arrays.
        while let (Some(&kj), Some(&oj)) = (keys.get(j), order.get(j)) {
            if kj >= k {
                break;
            }
            keys[j - 1] = kj;
            order[j - 1] = oj;
            j += 1;
        }
        keys[j - 1] = k;
        order[j - 1] = i;
        self.crown()
    }

    /// Takes the first of the order as the current cursor and the second's
    /// key as the limit; `false` when every stream is done.
    #[inline(always)]
    fn crown(&mut self) -> bool {
        self.cur = usize::from(self.order[0]);
        self.limit = self.keys[1];
        if self.keys[0] == u128::MAX {
            self.state = MergeState::Done;
            return false;
        }
        true
    }

    /// The cursor holding the next event in time order, if any.
    #[inline(always)]
    fn next(&mut self, file: &EtlFile, sh: &mut Shared) -> Option<&Cursor> {
        if self.state != MergeState::Running {
            return self.next_cold();
        }
        let i = self.cur;
        let c = self.cursors.get_mut(i)?;
        c.advance(file, sh);
        let k = c.key();
        if k < self.limit {
            // Still the smallest.
            return self.cursors.get(i);
        }
        if !self.reorder(k) {
            return None;
        }
        self.cursors.get(self.cur)
    }

    #[cold]
    #[inline(never)]
    fn next_cold(&mut self) -> Option<&Cursor> {
        match self.state {
            MergeState::Fresh => {
                self.state = MergeState::Running;
                self.cursors.get(self.cur)
            }
            _ => None,
        }
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
            damage: crate::damage::DamageLog::default(),
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
                Mode::Time(Merge::new(cursors))
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
                if !cursor.step(started, file, sh) {
                    return None;
                }
                cursor
            }
            Mode::Time(m) => m.next(file, sh)?,
        };
        sh.diag.events += 1;
        Some(c.event())
    }

    /// Calls `f` with every remaining event until it returns `Break`: the
    /// same events as [`EventReader::next_event`], each built in place for
    /// the call (no `Option` to move it through).
    #[inline]
    pub fn for_each<F>(&mut self, mut f: F)
    where
        F: FnMut(&RawEvent<'_>) -> ControlFlow<()>,
    {
        let file = self.file;
        let sh = &mut self.shared;
        match &mut self.mode {
            Mode::File { cursor, started } => {
                while cursor.step(started, file, sh) {
                    sh.diag.events += 1;
                    if f(&cursor.event()).is_break() {
                        return;
                    }
                }
            }
            Mode::Time(m) => {
                while let Some(c) = m.next(file, sh) {
                    sh.diag.events += 1;
                    if f(&c.event()).is_break() {
                        return;
                    }
                }
            }
        }
    }

    /// What was skipped so far (including the file's index diagnostics).
    pub fn diagnostics(&self) -> &Diagnostics {
        &self.shared.diag
    }

    pub fn into_diagnostics(self) -> Diagnostics {
        self.shared.diag
    }

    /// What was skipped, and where in trace time events may be missing
    /// because of it (time order only; see [`crate::damage`]).
    pub fn into_diagnostics_and_gaps(self) -> (Diagnostics, Vec<crate::damage::Gap>) {
        let gaps = self.shared.damage.gaps(self.file, &self.shared.diag);
        (self.shared.diag, gaps)
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
