//! The live sensor: an NT Kernel Logger (or private system-logger) session,
//! a real-time consumer whose callback only copies each `EVENT_RECORD` into a
//! preallocated lock-free ring, and an engine thread that turns ring records
//! into the same [`sentry_raw::RawEvent`]s the `.etl` reader yields.
//!
//! Everything that can be is platform-neutral and tested on Linux: the
//! `EVENT_TRACE_PROPERTIES` block ([`properties`]), the record view and its
//! conversion ([`view`]), the ring ([`ring`]), the stop/restart decisions
//! ([`supervisor`]) and the main loop that carries them out ([`driver`],
//! tested with a fake session), status lines ([`status`]) and call-site
//! evidence ([`evidence`]). The Windows layer (`win` module, compiled only on
//! Windows) is a thin shell of Win32 calls around them; it is the one place
//! in the workspace allowed to use `unsafe`.

#![deny(unsafe_code)]

pub mod audit;
pub mod driver;
pub mod error;
pub mod evidence;
pub mod properties;
pub mod reorder;
pub mod ring;
pub mod status;
pub mod supervisor;
pub mod view;

#[cfg(windows)]
pub mod win;

pub use audit::Source;
pub use error::LiveError;
pub use properties::{Buffers, Destination, SessionKind, SessionSpec};
pub use reorder::{Reorder, ReorderConfig, ReorderStats};
pub use ring::{ring, RingConsumer, RingProducer, RingStats};
pub use status::{LiveTotals, StatusLine};
pub use view::RecordView;
