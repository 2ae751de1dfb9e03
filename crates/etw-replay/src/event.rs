//! What a real-time consumer receives for one event of a trace: the fields
//! of an [EVENT_RECORD](https://learn.microsoft.com/windows/win32/api/evntcons/ns-evntcons-event_record),
//! owned. Kernel events carry their MOF class GUID in `ProviderId` and the
//! event type in `Opcode` (hook 0x030A, Image Load, arrives as the Image
//! class), classic events their class GUID, manifest events their
//! descriptor; pointer size goes into the header flags.

use std::path::Path;

use sentry_etl::{EtlFile, Order};
use sentry_raw::{EventId, Guid, KernelClass, RawEvent};

/// `EVENT_HEADER_FLAG_EXTENDED_INFO`.
pub const FLAG_EXTENDED_INFO: u16 = 0x0001;
/// `EVENT_HEADER_FLAG_32_BIT_HEADER`.
pub const FLAG_32_BIT_HEADER: u16 = 0x0020;
/// `EVENT_HEADER_FLAG_64_BIT_HEADER`.
pub const FLAG_64_BIT_HEADER: u16 = 0x0040;
/// `EVENT_HEADER_FLAG_CLASSIC_HEADER`.
pub const FLAG_CLASSIC_HEADER: u16 = 0x0100;
/// `EVENT_HEADER_FLAG_PROCESSOR_INDEX`: `BufferContext.ProcessorIndex` is
/// valid (otherwise only `ProcessorNumber` is).
pub const FLAG_PROCESSOR_INDEX: u16 = 0x0200;

/// One event as delivered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplayEvent {
    pub provider: Guid,
    /// Header flags, without [`FLAG_PROCESSOR_INDEX`] (the delivery style
    /// adds it).
    pub flags: u16,
    pub pid: u32,
    pub tid: u32,
    pub timestamp: u64,
    pub id: u16,
    pub version: u8,
    pub channel: u8,
    pub level: u8,
    pub opcode: u8,
    pub task: u16,
    pub keyword: u64,
    pub processor: u16,
    pub payload: Vec<u8>,
    /// Extended items: (`ExtType`, data).
    pub extended: Vec<(u16, Vec<u8>)>,
}

/// Splits extended data in the `.etl` buffer layout (8-byte item headers,
/// `Linkage` bit) into items.
fn ext_items(bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut items = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let size = usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]));
        let ext_type = u16::from_le_bytes([bytes[at + 2], bytes[at + 3]]);
        let linkage = u16::from_le_bytes([bytes[at + 4], bytes[at + 5]]);
        let data_size = usize::from(u16::from_le_bytes([bytes[at + 6], bytes[at + 7]]));
        let Some(data) = bytes.get(at + 8..at + 8 + data_size) else {
            break;
        };
        items.push((ext_type, data.to_vec()));
        at += size.max(8);
        if linkage & 1 == 0 {
            break;
        }
    }
    items
}

impl ReplayEvent {
    /// The record a real-time consumer gets for `ev`; `None` for kernel
    /// groups without a class GUID (a real session would report them under
    /// a GUID this project does not know either).
    pub fn from_raw(ev: &RawEvent<'_>) -> Option<ReplayEvent> {
        let mut flags = if ev.pointer_size == 4 {
            FLAG_32_BIT_HEADER
        } else {
            FLAG_64_BIT_HEADER
        };
        let mut r = ReplayEvent {
            pid: ev.pid.unwrap_or(u32::MAX),
            tid: ev.tid.unwrap_or(u32::MAX),
            timestamp: ev.timestamp,
            version: ev.version,
            processor: ev.processor,
            payload: ev.payload.to_vec(),
            ..Default::default()
        };
        match ev.id {
            EventId::Kernel { group, opcode } => {
                r.provider = KernelClass::from_hook(group, opcode).guid()?;
                r.opcode = opcode;
                flags |= FLAG_CLASSIC_HEADER;
            }
            EventId::Classic { guid, opcode } => {
                r.provider = guid;
                r.opcode = opcode;
                flags |= FLAG_CLASSIC_HEADER;
            }
            EventId::Manifest {
                provider,
                id,
                version,
                channel,
                level,
                opcode,
                task,
                keyword,
            } => {
                r.provider = provider;
                r.id = id;
                r.version = version;
                r.channel = channel;
                r.level = level;
                r.opcode = opcode;
                r.task = task;
                r.keyword = keyword;
            }
        }
        if !ev.extended.0.is_empty() {
            r.extended = ext_items(ev.extended.0);
            flags |= FLAG_EXTENDED_INFO;
        }
        r.flags = flags;
        Some(r)
    }

    /// Bytes the event takes in a kernel buffer: a header (the 64-byte
    /// `EVENT_HEADER` for simplicity), payload and extended items, 8-aligned.
    pub fn buffered_size(&self) -> usize {
        let ext: usize = self.extended.iter().map(|(_, d)| 8 + d.len()).sum();
        (64 + self.payload.len() + ext).div_ceil(8) * 8
    }
}

/// A trace loaded for replay: its events in time order and its clock rate.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    pub events: Vec<ReplayEvent>,
    pub ticks_per_second: u64,
    /// Events without a real-time representation, left out.
    pub skipped: u64,
}

impl Trace {
    /// Reads `path` with the project's own reader, in time order.
    pub fn load(path: &Path) -> Result<Trace, String> {
        let file = EtlFile::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self::from_file(&file))
    }

    pub fn from_file(file: &EtlFile) -> Trace {
        let mut t = Trace {
            ticks_per_second: file.clock().ticks_per_second,
            ..Trace::default()
        };
        let mut r = file.events(Order::Time);
        while let Some(ev) = r.next_event() {
            match ReplayEvent::from_raw(&ev) {
                Some(e) => t.events.push(e),
                None => t.skipped += 1,
            }
        }
        t
    }
}
