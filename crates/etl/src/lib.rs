//! Reader for Event Trace Log (`.etl`) files, in safe Rust.
//!
//! An `.etl` file is a sequence of buffers (each a 72-byte
//! `WMI_BUFFER_HEADER`, see [`buffer`], then 8-byte aligned trace records,
//! possibly XPRESS-compressed, see [`xpress`]). The first record is the
//! `TRACE_LOGFILE_HEADER`. Each record becomes a [`sentry_raw::RawEvent`]
//! borrowed from the reader's buffer, the same type a live session yields.
//!
//! ```no_run
//! use sentry_etl::{EtlFile, Order};
//! use std::ops::ControlFlow;
//!
//! let file = EtlFile::open("trace.etl")?;
//! println!("{} processors, build {}", file.header().number_of_processors,
//!          file.header().provider_version);
//! // Lending reader: the event borrows the reader until the next call.
//! let mut events = file.events(Order::Time);
//! while let Some(ev) = events.next_event() {
//!     let _utc = file.clock().to_filetime(ev.timestamp);
//! }
//! // Or a closure; returns the diagnostics of the pass.
//! let diag = file.for_each_event(Order::File, |ev| {
//!     let _ = ev.payload;
//!     ControlFlow::Continue(())
//! });
//! for e in &diag.errors {
//!     eprintln!("skipped: {e}");
//! }
//! # Ok::<(), sentry_etl::EtlError>(())
//! ```
//!
//! Orders: [`Order::Time`] is what `ProcessTrace` delivers (by timestamp
//! across processors, a k-way merge of per-processor buffer streams,
//! memory = one buffer and one header cursor per processor, whatever the
//! file's length); [`Order::File`] is plain buffer
//! order, faster, for counting. Time order holds at most
//! [`MAX_BUFFERED_BYTES`] of buffer data (see [`EtlFile::events_with_budget`]).
//!
//! Event fields: `processor` is the buffer's (`ETW_BUFFER_CONTEXT`);
//! `pid`/`tid` are `None` for PERFINFO headers and for `0xFFFFFFFF`;
//! `pointer_size` follows the header kind (`…32` = 4, `…64` = 8);
//! `extended` holds an `EVENT_HEADER`'s extended data items (iterate with
//! [`sentry_raw::ExtendedData::items`]); `offset` is the record's file
//! offset, except inside an XPRESS-compressed buffer, where it is the
//! buffer's data start plus the position in the decompressed data.
//!
//! StackWalk pairing, as measured on the corpus: a StackWalk's
//! `EventTimeStamp` equals its parent event's raw timestamp; the parent is
//! usually in the same processor's buffer, but a user-mode part may be
//! logged on another processor, later in the file (the thread id in the
//! StackWalk payload ties them). Counting, for each StackWalk, the distinct
//! hooks of all other events with that raw timestamp reproduces the corpus
//! golden `parent_hook_of_matched_stacks` exactly (see `tests/common`).
//!
//! Hostile input never panics, hangs or allocates without bound: sizes are
//! checked against the buffer, buffers against [`buffer::MAX_BUFFER_SIZE`]
//! and the file, decompression against the declared size. A bad record
//! abandons the rest of its buffer; a bad buffer is skipped; each such
//! error is kept with its file offset in [`Diagnostics`] (the first
//! [`error::MAX_KEPT_ERRORS`]) and counted.

#![forbid(unsafe_code)]

pub mod buffer;
pub mod damage;
pub mod error;
mod reader;
pub mod record;
mod source;
pub mod xpress;

pub use buffer::BufferHeader;
pub use error::{Diagnostics, ErrorKind, EtlError};
pub use reader::{
    BufferInfo, Buffers, EtlFile, EventReader, Order, MAX_BUFFERED_BYTES, MAX_PROCESSORS,
    MAX_SKIPPED_HOOKS,
};
pub use sentry_raw::{Clock, LogfileHeader, RawEvent};
