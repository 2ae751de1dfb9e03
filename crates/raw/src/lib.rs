//! The raw event: the seam between where events come from (an `.etl` file
//! read by `sentry-etl`, or a live ETW session in `sentry-live`) and
//! everything downstream (typed decoders in `sentry-kernel`, the engine).
//!
//! Both producers must yield exactly the same [`RawEvent`] for the same
//! kernel event, so that `analyze` and `live` run the very same pipeline.
//! Nothing here parses payloads; it only names what an event is.

#![forbid(unsafe_code)]

mod guid;
mod logfile;

pub use guid::{Guid, GuidParseError};
pub use logfile::{filetime_to_rfc3339, Clock, LogfileHeader, LogfileHeaderError};

/// The on-disk (and in-buffer) header kind of a trace record.
///
/// See [`EVENT_TRACE_HEADER`](https://learn.microsoft.com/windows/win32/api/evntrace/ns-evntrace-event_trace_header)
/// and [`EVENT_HEADER`](https://learn.microsoft.com/windows/win32/api/evntcons/ns-evntcons-event_header).
/// Kernel (NT Kernel Logger) events use the compact `SYSTEM`/`COMPACT`/`PERFINFO`
/// kinds; classic MOF providers `FULL_HEADER`/`INSTANCE`; manifest and
/// TraceLogging providers `EVENT_HEADER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HeaderKind {
    System32,
    System64,
    Compact32,
    Compact64,
    PerfInfo32,
    PerfInfo64,
    FullHeader32,
    FullHeader64,
    Instance32,
    Instance64,
    EventHeader32,
    EventHeader64,
    /// A live session's `EVENT_RECORD`: the header kind the kernel used is not
    /// visible to a real-time consumer.
    Live,
}

impl HeaderKind {
    /// The name used in statistics and the corpus golden files (e.g. `PERFINFO64`).
    pub fn name(self) -> &'static str {
        match self {
            HeaderKind::System32 => "SYSTEM32",
            HeaderKind::System64 => "SYSTEM64",
            HeaderKind::Compact32 => "COMPACT32",
            HeaderKind::Compact64 => "COMPACT64",
            HeaderKind::PerfInfo32 => "PERFINFO32",
            HeaderKind::PerfInfo64 => "PERFINFO64",
            HeaderKind::FullHeader32 => "FULL_HEADER32",
            HeaderKind::FullHeader64 => "FULL_HEADER64",
            HeaderKind::Instance32 => "INSTANCE32",
            HeaderKind::Instance64 => "INSTANCE64",
            HeaderKind::EventHeader32 => "EVENT_HEADER32",
            HeaderKind::EventHeader64 => "EVENT_HEADER64",
            HeaderKind::Live => "LIVE",
        }
    }
}

impl std::fmt::Display for HeaderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which event this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventId {
    /// A kernel (system trace) event, identified by its hook id
    /// `group << 8 | opcode`. A live session sees the MOF class GUID instead;
    /// it maps it back to the group with [`KernelClass::group`].
    Kernel { group: u8, opcode: u8 },
    /// A classic (MOF) provider event with a `FULL_HEADER`/`INSTANCE` header:
    /// the event class GUID and the event type (opcode).
    Classic { guid: Guid, opcode: u8 },
    /// A manifest-based or TraceLogging event (`EVENT_HEADER`).
    Manifest {
        provider: Guid,
        id: u16,
        version: u8,
        channel: u8,
        level: u8,
        opcode: u8,
        task: u16,
        keyword: u64,
    },
}

impl EventId {
    /// The kernel MOF class for a kernel event. Hook `0x030A` (group
    /// Process, opcode 10) is Image Load and decodes as an Image event.
    pub fn kernel_class(&self) -> Option<KernelClass> {
        match *self {
            EventId::Kernel { group, opcode } => Some(KernelClass::from_hook(group, opcode)),
            _ => None,
        }
    }

    /// The opcode (event type) of any event.
    pub fn opcode(&self) -> u8 {
        match *self {
            EventId::Kernel { opcode, .. } => opcode,
            EventId::Classic { opcode, .. } => opcode,
            EventId::Manifest { opcode, .. } => opcode,
        }
    }
}

/// MOF classes of the NT Kernel Logger that syscall-sentry cares about, by
/// hook group. See
/// [MSNT_SystemTrace](https://learn.microsoft.com/windows/win32/etw/msnt-systemtrace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelClass {
    /// Group 0x00: `EventTrace` (the logfile header, rundown markers).
    EventTrace,
    /// Group 0x03: `Process` (except opcode 10, Image Load).
    Process,
    /// Group 0x05: `Thread`.
    Thread,
    /// Group 0x0F: `PerfInfo` (SysCallEnter 51, SysCallExit 52, SampledProfile 46).
    PerfInfo,
    /// Group 0x14, and hook 0x030A: `Image`.
    Image,
    /// Group 0x18: `StackWalk` (stacks 32, stack cache 34–38).
    StackWalk,
    /// Any other group.
    Other(u8),
}

impl KernelClass {
    pub const GROUP_EVENT_TRACE: u8 = 0x00;
    pub const GROUP_PROCESS: u8 = 0x03;
    pub const GROUP_THREAD: u8 = 0x05;
    pub const GROUP_PERFINFO: u8 = 0x0F;
    pub const GROUP_IMAGE: u8 = 0x14;
    pub const GROUP_STACKWALK: u8 = 0x18;

    pub fn from_hook(group: u8, opcode: u8) -> KernelClass {
        match (group, opcode) {
            (Self::GROUP_PROCESS, 10) => KernelClass::Image,
            (Self::GROUP_EVENT_TRACE, _) => KernelClass::EventTrace,
            (Self::GROUP_PROCESS, _) => KernelClass::Process,
            (Self::GROUP_THREAD, _) => KernelClass::Thread,
            (Self::GROUP_PERFINFO, _) => KernelClass::PerfInfo,
            (Self::GROUP_IMAGE, _) => KernelClass::Image,
            (Self::GROUP_STACKWALK, _) => KernelClass::StackWalk,
            (g, _) => KernelClass::Other(g),
        }
    }

    /// The hook group a live session should report for this class.
    pub fn group(self) -> u8 {
        match self {
            KernelClass::EventTrace => Self::GROUP_EVENT_TRACE,
            KernelClass::Process => Self::GROUP_PROCESS,
            KernelClass::Thread => Self::GROUP_THREAD,
            KernelClass::PerfInfo => Self::GROUP_PERFINFO,
            KernelClass::Image => Self::GROUP_IMAGE,
            KernelClass::StackWalk => Self::GROUP_STACKWALK,
            KernelClass::Other(g) => g,
        }
    }

    /// The class GUID a real-time consumer sees in `EVENT_HEADER.ProviderId`.
    pub fn guid(self) -> Option<Guid> {
        Some(match self {
            KernelClass::EventTrace => guids::EVENT_TRACE,
            KernelClass::Process => guids::PROCESS,
            KernelClass::Thread => guids::THREAD,
            KernelClass::PerfInfo => guids::PERF_INFO,
            KernelClass::Image => guids::IMAGE_LOAD,
            KernelClass::StackWalk => guids::STACK_WALK,
            KernelClass::Other(_) => return None,
        })
    }

    /// Every named class (all but [`KernelClass::Other`]).
    pub const KNOWN: [KernelClass; 6] = [
        KernelClass::EventTrace,
        KernelClass::Process,
        KernelClass::Thread,
        KernelClass::PerfInfo,
        KernelClass::Image,
        KernelClass::StackWalk,
    ];

    /// Maps a kernel MOF class GUID (as a live consumer sees it) to its class.
    pub fn from_guid(g: &Guid) -> Option<KernelClass> {
        Self::KNOWN
            .into_iter()
            .find(|c| c.guid().as_ref() == Some(g))
    }
}

/// Kernel MOF class GUIDs, from Microsoft's MSNT_SystemTrace class pages.
pub mod guids {
    use super::Guid;
    /// [EventTraceEvent](https://learn.microsoft.com/windows/win32/etw/eventtraceevent)
    pub const EVENT_TRACE: Guid = Guid::from_u128(0x68fdd900_4a3e_11d1_84f4_0000f80464e3);
    /// [Process](https://learn.microsoft.com/windows/win32/etw/process)
    pub const PROCESS: Guid = Guid::from_u128(0x3d6fa8d0_fe05_11d0_9dda_00c04fd7ba7c);
    /// [Thread](https://learn.microsoft.com/windows/win32/etw/thread)
    pub const THREAD: Guid = Guid::from_u128(0x3d6fa8d1_fe05_11d0_9dda_00c04fd7ba7c);
    /// [PerfInfo](https://learn.microsoft.com/windows/win32/etw/perfinfo)
    pub const PERF_INFO: Guid = Guid::from_u128(0xce1dbfb4_137e_4da6_87b0_3f59aa102cbc);
    /// [Image](https://learn.microsoft.com/windows/win32/etw/image)
    pub const IMAGE_LOAD: Guid = Guid::from_u128(0x2cb15d1d_5fc1_11d2_abe1_00a0c911f518);
    /// [StackWalk](https://learn.microsoft.com/windows/win32/etw/stackwalk)
    pub const STACK_WALK: Guid = Guid::from_u128(0xdef2fe46_7bd6_4b80_bd94_f57fe20d0ce3);
    /// `SystemTraceControlGuid`, the NT Kernel Logger's control GUID.
    pub const SYSTEM_TRACE_CONTROL: Guid = Guid::from_u128(0x9e814aad_3204_11d2_9a82_006008a86939);
}

/// Extended data items of an `EVENT_HEADER` record (for example
/// `EVENT_HEADER_EXT_TYPE_STACK_TRACE64`), kept in the layout they have in an
/// `.etl` buffer. A live session copies `EVENT_HEADER_EXTENDED_DATA_ITEM`s
/// into this same layout. `sentry-etl` provides the iterator over items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExtendedData<'a>(pub &'a [u8]);

/// `EVENT_HEADER_EXTENDED_DATA_ITEM.ExtType` values, from
/// [evntcons.h](https://learn.microsoft.com/windows/win32/api/evntcons/ns-evntcons-event_header_extended_data_item).
pub mod ext_type {
    pub const RELATED_ACTIVITY_ID: u16 = 1;
    pub const SID: u16 = 2;
    pub const TS_ID: u16 = 3;
    pub const INSTANCE_INFO: u16 = 4;
    pub const STACK_TRACE32: u16 = 5;
    pub const STACK_TRACE64: u16 = 6;
    pub const PEBS_INDEX: u16 = 7;
    pub const PMC_COUNTERS: u16 = 8;
    pub const PSM_KEY: u16 = 9;
    pub const EVENT_KEY: u16 = 10;
    pub const EVENT_SCHEMA_TL: u16 = 11;
    pub const PROV_TRAITS: u16 = 12;
    pub const PROCESS_START_KEY: u16 = 13;
}

/// One extended data item: its `ExtType` and its `DataSize` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtendedItem<'a> {
    pub ext_type: u16,
    pub data: &'a [u8],
}

impl<'a> ExtendedItem<'a> {
    /// For `STACK_TRACE32`/`STACK_TRACE64` items
    /// ([EVENT_EXTENDED_ITEM_STACK_TRACE64](https://learn.microsoft.com/windows/win32/api/evntcons/ns-evntcons-event_extended_item_stack_trace64)):
    /// the `MatchId` and the return addresses, innermost first.
    pub fn stack_trace(&self) -> Option<(u64, impl Iterator<Item = u64> + 'a)> {
        let width = match self.ext_type {
            ext_type::STACK_TRACE32 => 4,
            ext_type::STACK_TRACE64 => 8,
            _ => return None,
        };
        let match_id = u64::from_le_bytes(self.data.get(..8)?.try_into().ok()?);
        let frames = self.data[8..].chunks_exact(width).map(move |c| {
            let mut a = [0u8; 8];
            a[..width].copy_from_slice(c);
            u64::from_le_bytes(a)
        });
        Some((match_id, frames))
    }
}

impl<'a> ExtendedData<'a> {
    /// The items, in order. Layout per item: u16 item size (8-byte header
    /// plus data padded to 8), u16 `ExtType`, u16 whose bit 0 (`Linkage`)
    /// says another item follows, u16 `DataSize`, then the data. Iteration
    /// stops at the last linked item or at the first item that does not fit.
    pub fn items(&self) -> ExtendedItems<'a> {
        ExtendedItems { rest: self.0 }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Iterator over [`ExtendedItem`]s; see [`ExtendedData::items`].
#[derive(Debug, Clone)]
pub struct ExtendedItems<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for ExtendedItems<'a> {
    type Item = ExtendedItem<'a>;

    fn next(&mut self) -> Option<ExtendedItem<'a>> {
        let b = self.rest;
        let h = b.get(..8)?;
        let size = u16::from_le_bytes([h[0], h[1]]) as usize;
        let ext_type = u16::from_le_bytes([h[2], h[3]]);
        let more = u16::from_le_bytes([h[4], h[5]]) & 1 != 0;
        let data_size = u16::from_le_bytes([h[6], h[7]]) as usize;
        if size < 8 || data_size > size - 8 || size > b.len() {
            self.rest = &[];
            return None;
        }
        self.rest = if more { &b[size..] } else { &[] };
        Some(ExtendedItem {
            ext_type,
            data: &b[8..8 + data_size],
        })
    }
}

/// One trace event, borrowed from a buffer.
///
/// `pid`/`tid` are `None` where the header carries none (PERFINFO headers) or
/// carries the "none" value `0xFFFFFFFF`. The `timestamp` is the raw clock
/// value (QPC ticks for the kernel logger with `ClientContext` 1); convert
/// with [`Clock::to_filetime`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawEvent<'a> {
    pub header: HeaderKind,
    pub id: EventId,
    /// The event (class) version from the header.
    pub version: u8,
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    /// The processor that logged the event (the buffer's processor index).
    pub processor: u16,
    /// Raw timestamp, in the trace's clock.
    pub timestamp: u64,
    /// 4 or 8: the pointer size payload pointers are laid out with.
    pub pointer_size: u8,
    pub payload: &'a [u8],
    pub extended: ExtendedData<'a>,
    /// Offset of the record in the file (0 for live events): for error messages.
    pub offset: u64,
}

impl RawEvent<'_> {
    /// The kernel class, if this is a kernel event.
    pub fn kernel_class(&self) -> Option<KernelClass> {
        self.id.kernel_class()
    }
}

/// Normalises a header pid/tid: `0xFFFFFFFF` means "none".
pub fn id_or_none(v: u32) -> Option<u32> {
    (v != u32::MAX).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extended_items_follow_linkage() {
        // STACK_TRACE64 (match id 7, two frames) linked to a TS_ID item,
        // then bytes that must not be read as a third item.
        let mut b = Vec::new();
        b.extend_from_slice(&32u16.to_le_bytes());
        b.extend_from_slice(&ext_type::STACK_TRACE64.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&24u16.to_le_bytes());
        b.extend_from_slice(&7u64.to_le_bytes());
        b.extend_from_slice(&0xfffff800_00001000u64.to_le_bytes());
        b.extend_from_slice(&0x7ff6_0000_2000u64.to_le_bytes());
        b.extend_from_slice(&16u16.to_le_bytes());
        b.extend_from_slice(&ext_type::TS_ID.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&4u16.to_le_bytes());
        b.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
        b.extend_from_slice(&[0xff; 16]);
        let items: Vec<_> = ExtendedData(&b).items().collect();
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].ext_type, ext_type::TS_ID);
        assert_eq!(items[1].data, &[1, 0, 0, 0]);
        let (id, frames) = items[0].stack_trace().unwrap();
        assert_eq!(id, 7);
        assert_eq!(
            frames.collect::<Vec<_>>(),
            vec![0xfffff800_00001000, 0x7ff6_0000_2000]
        );
        assert!(items[1].stack_trace().is_none());
        // A size past the end stops iteration instead of panicking.
        b[0] = 0xf0;
        assert_eq!(ExtendedData(&b).items().count(), 0);
    }

    #[test]
    fn image_load_hook_is_image_class() {
        assert_eq!(KernelClass::from_hook(0x03, 10), KernelClass::Image);
        assert_eq!(KernelClass::from_hook(0x03, 1), KernelClass::Process);
        assert_eq!(KernelClass::from_hook(0x14, 10), KernelClass::Image);
        assert_eq!(KernelClass::from_hook(0x0b, 1), KernelClass::Other(0x0b));
    }

    #[test]
    fn guid_round_trips_through_class() {
        for c in KernelClass::KNOWN {
            assert_eq!(KernelClass::from_guid(&c.guid().unwrap()), Some(c));
        }
        assert_eq!(
            guids::PERF_INFO.to_string(),
            "ce1dbfb4-137e-4da6-87b0-3f59aa102cbc"
        );
    }
}
