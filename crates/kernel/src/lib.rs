//! Typed decoders for the NT Kernel Logger events syscall-sentry uses.
//!
//! Input is a [`RawEvent`] (from an `.etl` file or a live session); output a
//! [`KernelEvent`]. Layouts are those of Microsoft's MSNT_SystemTrace MOF
//! classes, in 32- and 64-bit pointer variants; newer versions decode the
//! known prefix and ignore extra tail bytes. Decoders are safe Rust over byte
//! slices and never panic on hostile input.

#![forbid(unsafe_code)]

use sentry_raw::RawEvent;

mod types;
pub use types::*;

/// Decodes a kernel event syscall-sentry understands.
///
/// `Ok(None)`: not a kernel event of interest (other groups, provider events).
/// `Err`: an event of interest whose payload does not fit its layout.
pub fn decode<'a>(ev: &RawEvent<'a>) -> Result<Option<KernelEvent<'a>>, DecodeError> {
    let _ = ev;
    Ok(None)
}
