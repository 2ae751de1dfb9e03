//! The neutral "record view": what the real-time callback copies out of an
//! [EVENT_RECORD](https://learn.microsoft.com/windows/win32/api/evntcons/ns-evntcons-event_record),
//! as plain fields and borrowed slices, and its conversion to the
//! [`RawEvent`] that the `.etl` reader yields for the same event.
//!
//! Only the `EVENT_RECORD -> RecordView` step is Windows code; everything
//! from here on runs (and is tested) everywhere.

use sentry_raw::{id_or_none, EventId, ExtendedData, Guid, HeaderKind, KernelClass, RawEvent};

/// `EVENT_HEADER_FLAG_EXTENDED_INFO`.
pub const EVENT_HEADER_FLAG_EXTENDED_INFO: u16 = 0x0001;
/// `EVENT_HEADER_FLAG_32_BIT_HEADER`: payload pointers are 4 bytes.
pub const EVENT_HEADER_FLAG_32_BIT_HEADER: u16 = 0x0020;
/// `EVENT_HEADER_FLAG_64_BIT_HEADER`: payload pointers are 8 bytes.
pub const EVENT_HEADER_FLAG_64_BIT_HEADER: u16 = 0x0040;
/// `EVENT_HEADER_FLAG_CLASSIC_HEADER`: a classic (MOF) event.
pub const EVENT_HEADER_FLAG_CLASSIC_HEADER: u16 = 0x0100;
/// `EVENT_HEADER_FLAG_PROCESSOR_INDEX`: `BufferContext.ProcessorIndex` holds
/// the processor; without it only `BufferContext.ProcessorNumber` does.
pub const EVENT_HEADER_FLAG_PROCESSOR_INDEX: u16 = 0x0200;

/// The processor of an event from the first two bytes of its
/// [ETW_BUFFER_CONTEXT](https://learn.microsoft.com/windows/win32/api/relogger/ns-relogger-etw_buffer_context)
/// (a union of `ProcessorIndex: u16` with `ProcessorNumber: u8, Alignment:
/// u8`), as `GetEventProcessorIndex` in `evntcons.h` reads it: the 16-bit
/// index when [`EVENT_HEADER_FLAG_PROCESSOR_INDEX`] is set, else the 8-bit
/// number (the `Alignment` byte is not part of it).
pub fn processor_of(flags: u16, buffer_context: [u8; 2]) -> u16 {
    if flags & EVENT_HEADER_FLAG_PROCESSOR_INDEX != 0 {
        u16::from_le_bytes(buffer_context)
    } else {
        u16::from(buffer_context[0])
    }
}

/// Extended data items a view can carry; more are counted as truncated.
pub const MAX_EXTENDED_ITEMS: usize = 8;

/// One [EVENT_HEADER_EXTENDED_DATA_ITEM](https://learn.microsoft.com/windows/win32/api/evntcons/ns-evntcons-event_header_extended_data_item).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExtItem<'a> {
    pub ext_type: u16,
    pub data: &'a [u8],
}

/// Up to [`MAX_EXTENDED_ITEMS`] extended items in a fixed array (the callback
/// must not allocate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExtItems<'a> {
    items: [ExtItem<'a>; MAX_EXTENDED_ITEMS],
    len: usize,
    /// Items that did not fit (or whose data exceeded a u16 size).
    pub truncated: u16,
}

impl<'a> ExtItems<'a> {
    pub fn push(&mut self, item: ExtItem<'a>) {
        if self.len < MAX_EXTENDED_ITEMS && item.data.len() <= usize::from(u16::MAX) - 8 {
            self.items[self.len] = item;
            self.len += 1;
        } else {
            self.truncated = self.truncated.saturating_add(1);
        }
    }

    pub fn as_slice(&self) -> &[ExtItem<'a>] {
        &self.items[..self.len]
    }

    /// Bytes of these items in the `.etl` buffer layout (see
    /// [`write_extended`]).
    pub fn encoded_len(&self) -> usize {
        self.as_slice()
            .iter()
            .map(|i| item_size(i.data.len()))
            .sum()
    }
}

/// Size of one extended item in the buffer layout: 8-byte header plus data,
/// padded to 8 bytes.
fn item_size(data_len: usize) -> usize {
    8 + data_len.div_ceil(8) * 8
}

/// Writes `items` in the layout extended items have inside an `.etl` buffer
/// after an `EVENT_HEADER`, which is what [`ExtendedData`] holds: per item a
/// u16 item size (header + padded data), u16 `ExtType`, u16 whose bit 0
/// (`Linkage`) says another item follows, u16 `DataSize`, then the data padded
/// to 8 bytes. `put` receives consecutive pieces (so this can write straight
/// into a ring's two slices).
pub fn write_extended(items: &[ExtItem<'_>], mut put: impl FnMut(&[u8])) {
    const ZEROS: [u8; 8] = [0; 8];
    for (i, item) in items.iter().enumerate() {
        let size = item_size(item.data.len());
        let linkage = u16::from(i + 1 < items.len());
        let mut hdr = [0u8; 8];
        hdr[0..2].copy_from_slice(&(size as u16).to_le_bytes());
        hdr[2..4].copy_from_slice(&item.ext_type.to_le_bytes());
        hdr[4..6].copy_from_slice(&linkage.to_le_bytes());
        hdr[6..8].copy_from_slice(&(item.data.len() as u16).to_le_bytes());
        put(&hdr);
        put(item.data);
        put(&ZEROS[..size - 8 - item.data.len()]);
    }
}

/// What a real-time callback copies out of one `EVENT_RECORD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecordView<'a> {
    /// `EventHeader.ProviderId`: for kernel events the MOF class GUID.
    pub provider: Guid,
    /// `EventHeader.Flags`.
    pub flags: u16,
    pub pid: u32,
    pub tid: u32,
    /// `EventHeader.TimeStamp`, raw (QPC) with `PROCESS_TRACE_MODE_RAW_TIMESTAMP`.
    pub timestamp: u64,
    /// `EventHeader.EventDescriptor`.
    pub id: u16,
    pub version: u8,
    pub channel: u8,
    pub level: u8,
    pub opcode: u8,
    pub task: u16,
    pub keyword: u64,
    /// `BufferContext.ProcessorIndex`.
    pub processor: u16,
    pub payload: &'a [u8],
    pub extended: ExtItems<'a>,
}

impl RecordView<'_> {
    /// Payload pointer size from the header flags; a consumer on 64-bit
    /// Windows sees 64-bit events when neither flag is set.
    pub fn pointer_size(&self) -> u8 {
        if self.flags & EVENT_HEADER_FLAG_32_BIT_HEADER != 0 {
            4
        } else {
            8
        }
    }

    /// Which event this is, as the `.etl` reader names it: kernel MOF class
    /// GUIDs map back to the hook group (Image Load arrives as the Image
    /// class, type 10, i.e. group 0x14).
    pub fn event_id(&self) -> EventId {
        if let Some(class) = KernelClass::from_guid(&self.provider) {
            EventId::Kernel {
                group: class.group(),
                opcode: self.opcode,
            }
        } else if self.flags & EVENT_HEADER_FLAG_CLASSIC_HEADER != 0 {
            EventId::Classic {
                guid: self.provider,
                opcode: self.opcode,
            }
        } else {
            EventId::Manifest {
                provider: self.provider,
                id: self.id,
                version: self.version,
                channel: self.channel,
                level: self.level,
                opcode: self.opcode,
                task: self.task,
                keyword: self.keyword,
            }
        }
    }
}

/// Fields of a [`RawEvent`] that do not borrow: what travels through the ring
/// next to the payload and extended bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawFields {
    pub id: EventId,
    pub version: u8,
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    pub processor: u16,
    pub timestamp: u64,
    pub pointer_size: u8,
}

impl RawFields {
    pub fn from_view(v: &RecordView<'_>) -> RawFields {
        RawFields {
            id: v.event_id(),
            version: v.version,
            pid: id_or_none(v.pid),
            tid: id_or_none(v.tid),
            processor: v.processor,
            timestamp: v.timestamp,
            pointer_size: v.pointer_size(),
        }
    }

    pub fn with<'a>(&self, payload: &'a [u8], extended: &'a [u8]) -> RawEvent<'a> {
        RawEvent {
            header: HeaderKind::Live,
            id: self.id,
            version: self.version,
            pid: self.pid,
            tid: self.tid,
            processor: self.processor,
            timestamp: self.timestamp,
            pointer_size: self.pointer_size,
            payload,
            extended: ExtendedData(extended),
            offset: 0,
        }
    }
}

/// Converts a view to the [`RawEvent`] the rest of the pipeline consumes.
/// `extended_buf` receives the extended items in the `.etl` layout.
pub fn to_raw<'a>(v: &RecordView<'a>, extended_buf: &'a mut Vec<u8>) -> RawEvent<'a> {
    extended_buf.clear();
    write_extended(v.extended.as_slice(), |p| extended_buf.extend_from_slice(p));
    RawFields::from_view(v).with(v.payload, extended_buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentry_raw::guids;

    fn view(provider: Guid, opcode: u8, flags: u16) -> RecordView<'static> {
        RecordView {
            provider,
            flags,
            pid: 0xFFFF_FFFF,
            tid: 0xFFFF_FFFF,
            timestamp: 0x1234_5678_9abc,
            version: 2,
            opcode,
            processor: 3,
            payload: &[1, 2, 3, 4, 5, 6, 7, 8],
            ..Default::default()
        }
    }

    #[test]
    fn kernel_guids_map_to_hook_groups() {
        let cases = [
            (guids::PERF_INFO, 51, 0x0F),
            (guids::STACK_WALK, 32, 0x18),
            (guids::PROCESS, 1, 0x03),
            (guids::THREAD, 3, 0x05),
            (guids::IMAGE_LOAD, 10, 0x14),
            (guids::EVENT_TRACE, 0, 0x00),
        ];
        for (g, op, group) in cases {
            let mut buf = Vec::new();
            let v = view(g, op, EVENT_HEADER_FLAG_CLASSIC_HEADER);
            let ev = to_raw(&v, &mut buf);
            assert_eq!(ev.id, EventId::Kernel { group, opcode: op }, "{g}");
        }
        // Image Load decodes as an Image event, like hook 0x030A from a file.
        let v = view(guids::IMAGE_LOAD, 10, 0);
        assert_eq!(
            v.event_id().kernel_class(),
            EventId::Kernel {
                group: 0x03,
                opcode: 10
            }
            .kernel_class()
        );
    }

    #[test]
    fn other_guids_are_classic_or_manifest() {
        let g = Guid::from_u128(0x1111_2222_3333_4444_5555_6666_7777_8888);
        let v = view(g, 7, EVENT_HEADER_FLAG_CLASSIC_HEADER);
        assert_eq!(v.event_id(), EventId::Classic { guid: g, opcode: 7 });
        let mut v = view(g, 7, EVENT_HEADER_FLAG_64_BIT_HEADER);
        v.id = 42;
        v.keyword = 0x8000;
        match v.event_id() {
            EventId::Manifest {
                provider,
                id,
                keyword,
                opcode,
                ..
            } => assert_eq!((provider, id, keyword, opcode), (g, 42, 0x8000, 7)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pointer_size_and_missing_ids() {
        let mut buf = Vec::new();
        let v = view(guids::PERF_INFO, 51, EVENT_HEADER_FLAG_32_BIT_HEADER);
        let ev = to_raw(&v, &mut buf);
        assert_eq!(ev.pointer_size, 4);
        assert_eq!((ev.pid, ev.tid), (None, None));
        assert_eq!(ev.header, HeaderKind::Live);
        assert_eq!(ev.processor, 3);
        assert_eq!(ev.timestamp, 0x1234_5678_9abc);
        assert_eq!(ev.version, 2);
        assert_eq!(ev.offset, 0);
        assert_eq!(ev.payload, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let mut v = view(guids::PROCESS, 1, EVENT_HEADER_FLAG_64_BIT_HEADER);
        v.pid = 4;
        v.tid = 0;
        let ev = to_raw(&v, &mut buf);
        assert_eq!(ev.pointer_size, 8);
        assert_eq!((ev.pid, ev.tid), (Some(4), Some(0)));
    }

    #[test]
    fn extended_items_use_the_etl_buffer_layout() {
        let stack = [0x11u8; 12];
        let sid = [0x22u8; 16];
        let mut v = view(guids::PERF_INFO, 51, EVENT_HEADER_FLAG_EXTENDED_INFO);
        v.extended.push(ExtItem {
            ext_type: 6,
            data: &stack,
        });
        v.extended.push(ExtItem {
            ext_type: 2,
            data: &sid,
        });
        let mut buf = Vec::new();
        let ev = to_raw(&v, &mut buf);
        let b = ev.extended.0;
        assert_eq!(b.len(), v.extended.encoded_len());
        assert_eq!(b.len(), (8 + 16) + (8 + 16));
        // Item 1: size 24, type 6, linkage 1 (another follows), data size 12.
        assert_eq!(&b[..8], &[24, 0, 6, 0, 1, 0, 12, 0]);
        assert_eq!(&b[8..20], &stack);
        assert_eq!(&b[20..24], &[0; 4]);
        // Item 2: size 24, type 2, linkage 0 (last), data size 16.
        assert_eq!(&b[24..32], &[24, 0, 2, 0, 0, 0, 16, 0]);
        assert_eq!(&b[32..48], &sid);
    }

    #[test]
    fn too_many_extended_items_are_counted() {
        let mut items = ExtItems::default();
        for _ in 0..MAX_EXTENDED_ITEMS + 2 {
            items.push(ExtItem {
                ext_type: 1,
                data: &[],
            });
        }
        assert_eq!(items.as_slice().len(), MAX_EXTENDED_ITEMS);
        assert_eq!(items.truncated, 2);
    }

    #[test]
    fn processor_index_needs_its_flag() {
        // Processor 3, Alignment byte 8: read blindly that is 0x803.
        assert_eq!(processor_of(0x0040, [3, 8]), 3);
        assert_eq!(
            processor_of(0x0040 | EVENT_HEADER_FLAG_PROCESSOR_INDEX, [3, 1]),
            0x103
        );
        assert_eq!(
            processor_of(EVENT_HEADER_FLAG_PROCESSOR_INDEX, [0x2c, 0x01]),
            300
        );
    }
}
