//! The 64-bit layouts of the structures the exports read and write:
//! `EVENT_RECORD` 112 bytes ([evntcons.h](https://learn.microsoft.com/windows/win32/api/evntcons/ns-evntcons-event_record)),
//! `EVENT_HEADER` 80, `EVENT_HEADER_EXTENDED_DATA_ITEM` 16, and the offsets
//! in `EVENT_TRACE_LOGFILEW` (448 bytes; [evntrace.h](https://learn.microsoft.com/windows/win32/api/evntrace/ns-evntrace-event_trace_logfilew)).
//! Written out here; the test compares them with the `windows` crate's.

// Without the exports (the Windows test build) only the layouts are used.
#![cfg_attr(not(feature = "exports"), allow(dead_code))]

use std::ffi::c_void;

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct EventDescriptor {
    pub id: u16,
    pub version: u8,
    pub channel: u8,
    pub level: u8,
    pub opcode: u8,
    pub task: u16,
    pub keyword: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct EventHeader {
    pub size: u16,
    pub header_type: u16,
    pub flags: u16,
    pub event_property: u16,
    pub thread_id: u32,
    pub process_id: u32,
    pub timestamp: i64,
    pub provider_id: [u8; 16],
    pub descriptor: EventDescriptor,
    pub processor_time: u64,
    pub activity_id: [u8; 16],
}

/// `ETW_BUFFER_CONTEXT`: `ProcessorNumber`, `Alignment` (or together the
/// 16-bit `ProcessorIndex`), `LoggerId`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct BufferContext {
    pub processor: [u8; 2],
    pub logger_id: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExtItem {
    pub reserved1: u16,
    pub ext_type: u16,
    pub linkage: u16,
    pub data_size: u16,
    pub data_ptr: u64,
}

#[repr(C)]
pub struct EventRecord {
    pub header: EventHeader,
    pub buffer_context: BufferContext,
    pub extended_data_count: u16,
    pub user_data_length: u16,
    pub extended_data: *mut ExtItem,
    pub user_data: *mut c_void,
    pub user_context: *mut c_void,
}

const _: () = assert!(std::mem::size_of::<EventHeader>() == 80);
const _: () = assert!(std::mem::size_of::<EventRecord>() == 112);
const _: () = assert!(std::mem::size_of::<ExtItem>() == 16);

/// Offsets in `EVENT_TRACE_LOGFILEW`.
pub mod logfile {
    pub const LOGGER_NAME: usize = 8;
    pub const CURRENT_TIME: usize = 16;
    pub const BUFFERS_READ: usize = 24;
    pub const PROCESS_TRACE_MODE: usize = 28;
    pub const EVENT_RECORD_CALLBACK: usize = 424;
    pub const CONTEXT: usize = 440;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};
    use windows::Win32::System::Diagnostics::Etw::{
        EVENT_HEADER, EVENT_HEADER_EXTENDED_DATA_ITEM, EVENT_RECORD, EVENT_TRACE_LOGFILEW,
    };

    #[test]
    fn layouts_match_the_windows_headers() {
        assert_eq!(size_of::<EVENT_RECORD>(), size_of::<EventRecord>());
        assert_eq!(size_of::<EVENT_HEADER>(), size_of::<EventHeader>());
        assert_eq!(
            size_of::<EVENT_HEADER_EXTENDED_DATA_ITEM>(),
            size_of::<ExtItem>()
        );
        assert_eq!(
            offset_of!(EVENT_RECORD, BufferContext),
            offset_of!(EventRecord, buffer_context)
        );
        assert_eq!(
            offset_of!(EVENT_RECORD, UserData),
            offset_of!(EventRecord, user_data)
        );
        assert_eq!(
            offset_of!(EVENT_RECORD, UserContext),
            offset_of!(EventRecord, user_context)
        );
        assert_eq!(
            offset_of!(EVENT_RECORD, ExtendedData),
            offset_of!(EventRecord, extended_data)
        );
        assert_eq!(
            offset_of!(EVENT_HEADER, TimeStamp),
            offset_of!(EventHeader, timestamp)
        );
        assert_eq!(
            offset_of!(EVENT_HEADER, EventDescriptor),
            offset_of!(EventHeader, descriptor)
        );
        assert_eq!(size_of::<EVENT_TRACE_LOGFILEW>(), 448);
        assert_eq!(
            offset_of!(EVENT_TRACE_LOGFILEW, LoggerName),
            logfile::LOGGER_NAME
        );
        assert_eq!(
            offset_of!(EVENT_TRACE_LOGFILEW, CurrentTime),
            logfile::CURRENT_TIME
        );
        assert_eq!(
            offset_of!(EVENT_TRACE_LOGFILEW, BuffersRead),
            logfile::BUFFERS_READ
        );
        assert_eq!(
            offset_of!(EVENT_TRACE_LOGFILEW, Anonymous1),
            logfile::PROCESS_TRACE_MODE
        );
        assert_eq!(
            offset_of!(EVENT_TRACE_LOGFILEW, Anonymous2),
            logfile::EVENT_RECORD_CALLBACK
        );
        assert_eq!(offset_of!(EVENT_TRACE_LOGFILEW, Context), logfile::CONTEXT);
    }
}
