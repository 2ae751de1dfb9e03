//! EventTrace (group 0x00) opcode 0: the logfile header, a
//! [TRACE_LOGFILE_HEADER](https://learn.microsoft.com/windows/win32/api/evntrace/ns-evntrace-trace_logfile_header)
//! parsed by `sentry-raw` (its layout carries its own pointer size).

use sentry_raw::LogfileHeader;

use crate::reader::Fail;
use crate::KernelEvent;

pub(crate) const HEADER: u8 = 0;

pub(crate) fn header(payload: &[u8]) -> Result<KernelEvent<'static>, Fail> {
    LogfileHeader::parse(payload)
        .map(|h| KernelEvent::EventTraceHeader(Box::new(h)))
        .map_err(|e| e.to_string())
}
