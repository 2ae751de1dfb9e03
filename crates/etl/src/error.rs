//! Errors found while reading an `.etl` file, and the counters of what was
//! skipped because of them.

use std::collections::BTreeMap;
use std::fmt;

use crate::xpress::XpressError;

/// How many errors [`Diagnostics`] keeps in full; later ones are only counted.
pub const MAX_KEPT_ERRORS: usize = 100;

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// The file could not be opened or read.
    Io(String),
    /// The file is too short for a buffer header (72 bytes).
    TruncatedBufferHeader { available: u64 },
    /// `BufferSize` is smaller than the header or larger than any ETW buffer.
    BadBufferSize { size: u32 },
    /// The buffer extends past the end of the file.
    TruncatedBuffer { size: u32, available: u64 },
    /// The filled-bytes field does not fit the buffer.
    BadFilledBytes { filled: u32, size: u32 },
    /// XPRESS decompression failed.
    Decompress(XpressError),
    /// The first record is not a readable `TRACE_LOGFILE_HEADER`.
    NoLogfileHeader(String),
    /// A record's marker is not a trace header marker.
    BadMarker { marker: u32 },
    /// A record's size is smaller than its header or runs past the buffer.
    BadRecordSize { size: u32, header: u32, room: u32 },
    /// `EVENT_HEADER` extended data items that do not fit the record.
    BadExtendedData,
    /// Loading the buffer would exceed the reader's memory budget
    /// ([`crate::MAX_BUFFERED_BYTES`]).
    MemoryBudget { need: u64 },
    /// The buffer's processor is past the time-order reader's
    /// [`crate::MAX_PROCESSORS`] streams; its buffers are skipped in time order.
    TooManyProcessors { processor: u16 },
    /// An end-of-records marker (`0xFFFFFFFF`) with `left` bytes of records
    /// after it that are not the `0xFF` fill: the buffer's filled size says
    /// there is more (a damaged record header reads as the marker).
    EarlyEndMarker { left: u32 },
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Io(e) => write!(f, "I/O error: {e}"),
            ErrorKind::TruncatedBufferHeader { available } => {
                write!(
                    f,
                    "file ends inside a buffer header ({available} of 72 bytes)"
                )
            }
            ErrorKind::BadBufferSize { size } => write!(f, "invalid buffer size {size}"),
            ErrorKind::TruncatedBuffer { size, available } => write!(
                f,
                "buffer of {size} bytes is truncated to {available} bytes by the end of the file"
            ),
            ErrorKind::BadFilledBytes { filled, size } => {
                write!(f, "filled bytes {filled} do not fit a {size}-byte buffer")
            }
            ErrorKind::Decompress(e) => write!(f, "XPRESS decompression failed: {e}"),
            ErrorKind::NoLogfileHeader(why) => {
                write!(f, "no TRACE_LOGFILE_HEADER in the first record: {why}")
            }
            ErrorKind::BadMarker { marker } => write!(f, "invalid record marker {marker:#010x}"),
            ErrorKind::BadRecordSize { size, header, room } => write!(
                f,
                "record size {size} invalid (header needs {header}, {room} bytes left in buffer)"
            ),
            ErrorKind::MemoryBudget { need } => write!(
                f,
                "buffer needs {need} bytes, over the reader's memory budget"
            ),
            ErrorKind::EarlyEndMarker { left } => write!(
                f,
                "end-of-records marker with {left} bytes of the buffer's filled size after it"
            ),
            ErrorKind::TooManyProcessors { processor } => write!(
                f,
                "processor {processor} is past the {} processor streams of time order",
                crate::MAX_PROCESSORS
            ),
            ErrorKind::BadExtendedData => {
                write!(f, "EVENT_HEADER extended data items do not fit the record")
            }
        }
    }
}

/// An error with where it happened.
///
/// `offset` is a file offset. Inside an XPRESS-compressed buffer, where
/// records have no file offset of their own, it is the buffer's data start
/// plus the position in the decompressed data, and `buffer_offset` names the
/// buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtlError {
    pub offset: u64,
    /// File offset of the buffer the error is in, if any.
    pub buffer_offset: Option<u64>,
    pub kind: ErrorKind,
}

impl EtlError {
    pub(crate) fn new(offset: u64, kind: ErrorKind) -> EtlError {
        EtlError {
            offset,
            buffer_offset: None,
            kind,
        }
    }

    pub(crate) fn in_buffer(offset: u64, buffer: u64, kind: ErrorKind) -> EtlError {
        EtlError {
            offset,
            buffer_offset: Some(buffer),
            kind,
        }
    }
}

impl fmt::Display for EtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at offset {:#x}", self.offset)?;
        if let Some(b) = self.buffer_offset {
            write!(f, " (buffer at {b:#x})")?;
        }
        write!(f, ": {}", self.kind)
    }
}

impl std::error::Error for EtlError {}

/// What a pass over the file skipped, and why.
///
/// The buffer-level counts come from [`crate::EtlFile::open`] (the index
/// pass); the record-level counts from the iteration that produced this
/// value. Nothing is ever silently dropped: every skipped byte range shows
/// up here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics {
    /// Buffers found in the file (including the header buffer).
    pub buffers: u64,
    /// Of which XPRESS-compressed.
    pub compressed_buffers: u64,
    /// Buffers whose records could not be read at all (bad size,
    /// decompression failure before any record).
    pub skipped_buffers: u64,
    /// Records seen: events yielded plus messages and other kinds skipped.
    pub records: u64,
    /// Events yielded as [`sentry_raw::RawEvent`]s.
    pub events: u64,
    /// Kernel events the caller asked not to get ([`crate::EtlFile::events_skipping`]).
    pub skipped_events: u64,
    /// WPP/message records (`TRACE_HEADER_TYPE_MESSAGE`), counted and skipped.
    pub message_records: u64,
    /// Records of other header types (`TIMED`, `ERROR`, `WNODE_HEADER`, unknown),
    /// by header type byte, counted and skipped.
    pub other_records: BTreeMap<u8, u64>,
    /// Times the rest of a buffer was abandoned after a record-level error.
    pub abandoned_buffer_tails: u64,
    /// Bytes of records abandoned after errors.
    pub abandoned_bytes: u64,
    /// All errors, including those past [`MAX_KEPT_ERRORS`].
    pub error_count: u64,
    /// The first [`MAX_KEPT_ERRORS`] errors, in the order found.
    pub errors: Vec<EtlError>,
}

impl Diagnostics {
    pub(crate) fn error(&mut self, e: EtlError) {
        self.error_count += 1;
        if self.errors.len() < MAX_KEPT_ERRORS {
            self.errors.push(e);
        }
    }

    /// True when nothing was skipped for an error.
    pub fn is_clean(&self) -> bool {
        self.error_count == 0
    }
}
