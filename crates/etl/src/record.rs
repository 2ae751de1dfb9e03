//! Trace record headers inside a buffer.
//!
//! Every record starts with a 32-bit marker: bit 31 (`TRACE_HEADER_FLAG`) is
//! set; bit 30 (`TRACE_HEADER_EVENT_TRACE`) is set for all kinds but WPP
//! messages (`TRACE_MESSAGE`, bit 28); bits 16–23 are the header type. Records
//! are 8-byte aligned; a marker of `0xFFFFFFFF` ends a buffer early.
//!
//! Layouts (offsets of thread id, process id, timestamp, payload):
//! - `SYSTEM_TRACE_HEADER` (types 1/2, 0x20 bytes) and its compact form
//!   (3/4, 0x18 bytes): version u16, type, flags, size u16 @4, hook id u16 @6
//!   (opcode, group), tid @8, pid @0xC, timestamp @0x10.
//!   [Geoff Chappell](https://www.geoffchappell.com/studies/windows/km/ntoskrnl/api/etw/tracelog/system_trace_header.htm)
//! - `PERFINFO_TRACE_HEADER` (0x10/0x11, 0x10 bytes): size @4, hook @6,
//!   timestamp @8, no thread or process.
//!   [Geoff Chappell](https://www.geoffchappell.com/studies/windows/km/ntoskrnl/api/etw/tracelog/perfinfo_trace_header.htm)
//!
//!   For these three kinds the version's high bits announce extra items
//!   between header and payload, included in the size:
//!   `TRACE_HEADER_PEBS_INDEX_FLAG` (0x8000) an 8-byte PEBS index, and
//!   `TRACE_HEADER_PMC_COUNTERS_MASK` (0x0700) that many 8-byte PMC counters.
//! - [`EVENT_TRACE_HEADER`](https://learn.microsoft.com/windows/win32/api/evntrace/ns-evntrace-event_trace_header)
//!   (`FULL_HEADER`, 0x0A/0x14, 0x30 bytes): size u16 @0, class type
//!   (opcode) @4, level @5, version u16 @6, tid @8, pid @0xC, timestamp
//!   @0x10, class GUID @0x18.
//! - [`EVENT_INSTANCE_HEADER`](https://learn.microsoft.com/windows/win32/api/evntrace/ns-evntrace-event_instance_header)
//!   with a GUID (`INSTANCE`, 0x0B/0x15, 0x48 bytes): as above plus instance
//!   ids and parent GUID.
//! - [`EVENT_HEADER`](https://learn.microsoft.com/windows/win32/api/evntcons/ns-evntcons-event_header)
//!   (0x12/0x13, 0x50 bytes): size @0, flags @4, tid @8, pid @0xC,
//!   timestamp @0x10, provider @0x18, [`EVENT_DESCRIPTOR`](https://learn.microsoft.com/windows/win32/api/evntprov/ns-evntprov-event_descriptor)
//!   @0x28. With `EVENT_HEADER_FLAG_EXTENDED_INFO` (0x01) extended data
//!   items follow the header: each `Size` u16 (whole item, 8-aligned),
//!   `ExtType` u16, a u16 whose bit 0 says another item follows, `DataSize`
//!   u16, then the data. The user data follows the last item.

use sentry_raw::{EventId, Guid, HeaderKind};

use crate::error::ErrorKind;

pub const TYPE_SYSTEM32: u8 = 0x01;
pub const TYPE_SYSTEM64: u8 = 0x02;
pub const TYPE_COMPACT32: u8 = 0x03;
pub const TYPE_COMPACT64: u8 = 0x04;
pub const TYPE_FULL_HEADER32: u8 = 0x0A;
pub const TYPE_INSTANCE32: u8 = 0x0B;
pub const TYPE_TIMED: u8 = 0x0C;
pub const TYPE_ERROR: u8 = 0x0D;
pub const TYPE_WNODE_HEADER: u8 = 0x0E;
pub const TYPE_MESSAGE: u8 = 0x0F;
pub const TYPE_PERFINFO32: u8 = 0x10;
pub const TYPE_PERFINFO64: u8 = 0x11;
pub const TYPE_EVENT_HEADER32: u8 = 0x12;
pub const TYPE_EVENT_HEADER64: u8 = 0x13;
pub const TYPE_FULL_HEADER64: u8 = 0x14;
pub const TYPE_INSTANCE64: u8 = 0x15;

/// `TRACE_HEADER_FLAG`: set in every record marker.
const MARKER_TRACE_HEADER: u32 = 0x8000_0000;
/// `TRACE_HEADER_EVENT_TRACE`: set for all but WPP messages.
const MARKER_EVENT_TRACE: u32 = 0x4000_0000;
/// `TRACE_MESSAGE`.
const MARKER_MESSAGE: u32 = 0x1000_0000;

const PEBS_INDEX_FLAG: u16 = 0x8000;
const PMC_COUNTERS_MASK: u16 = 0x0700;

/// `EVENT_HEADER_FLAG_EXTENDED_INFO`.
const EH_FLAG_EXTENDED_INFO: u16 = 0x0001;

/// The end-of-data marker.
pub const END_MARKER: u32 = 0xFFFF_FFFF;

/// A record whose header was read; ranges are relative to the record start.
#[derive(Debug, Clone, Copy)]
pub struct EventMeta {
    pub header: HeaderKind,
    pub id: EventId,
    pub version: u8,
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    pub timestamp: u64,
    pub pointer_size: u8,
    pub payload_start: u32,
    pub extended_start: u32,
    pub extended_end: u32,
}

/// What a record is.
#[derive(Debug, Clone, Copy)]
pub enum Record {
    Event(EventMeta),
    /// A WPP message, skipped.
    Message,
    /// Another header type (timed, error, WNODE, unknown), skipped.
    Other(u8),
}

/// A parsed record and its declared (unaligned) size.
#[derive(Debug, Clone, Copy)]
pub struct Parsed {
    pub size: u32,
    pub record: Record,
}

impl Parsed {
    /// Bytes to the next record (8-byte aligned).
    pub fn aligned_size(&self) -> usize {
        (self.size as usize + 7) & !7
    }
}

#[inline]
fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
#[inline]
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
#[inline]
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}
#[inline]
fn guid_at(b: &[u8], o: usize) -> Guid {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[o..o + 16]);
    Guid::from_le_bytes(a)
}

/// What the reader's hot path needs to know of a header type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlainKind {
    /// Smallest size a record of this type may declare: its fixed header
    /// size for a plain type, and `0x1_0000` (more than a 16-bit size can
    /// say) for every other type, so one comparison rejects both.
    pub min_size: u32,
    /// Fixed header size of a SYSTEM (0x20), COMPACT (0x18) or PERFINFO
    /// (0x10) header; 0 for every other type.
    pub fixed: u8,
    pub header: HeaderKind,
    pub pointer_size: u8,
}

/// [`PlainKind`] by header type byte: a table, so the hot path has no
/// branch on the type.
pub const PLAIN_KINDS: [PlainKind; 256] = {
    let none = PlainKind {
        min_size: 0x1_0000,
        fixed: 0,
        header: HeaderKind::Live,
        pointer_size: 0,
    };
    let mut t = [none; 256];
    let kinds = [
        (TYPE_SYSTEM32, HeaderKind::System32, 0x20, 4),
        (TYPE_SYSTEM64, HeaderKind::System64, 0x20, 8),
        (TYPE_COMPACT32, HeaderKind::Compact32, 0x18, 4),
        (TYPE_COMPACT64, HeaderKind::Compact64, 0x18, 8),
        (TYPE_PERFINFO32, HeaderKind::PerfInfo32, 0x10, 4),
        (TYPE_PERFINFO64, HeaderKind::PerfInfo64, 0x10, 8),
    ];
    let mut i = 0;
    while i < kinds.len() {
        let (htype, header, fixed, pointer_size) = kinds[i];
        t[htype as usize] = PlainKind {
            min_size: fixed as u32,
            fixed,
            header,
            pointer_size,
        };
        i += 1;
    }
    t
};

/// Bytes [`parse_plain`] looks at: every field of a SYSTEM, COMPACT or
/// PERFINFO header but the SYSTEM header's kernel/user times.
pub const PLAIN_HEAD: usize = 24;

/// A plain system record as the hot path reads it: its first 16 bytes as
/// two words (the other fields are bit ranges of them) and its timestamp.
#[derive(Debug, Clone, Copy)]
pub struct Plain {
    /// Bytes 0..8: version (low byte), header type, marker flags, size
    /// (bits 32..48), hook id (opcode bits 48..56, group 56..64).
    pub head: u64,
    /// Bytes 8..16: thread id (low half) and process id (high half) of a
    /// SYSTEM or COMPACT header; the timestamp of a PERFINFO header.
    pub ids: u64,
    pub timestamp: u64,
    pub kind: PlainKind,
}

impl Plain {
    /// Declared (unaligned) size; at least `kind.fixed`.
    #[inline(always)]
    pub fn size(&self) -> u32 {
        u32::from((self.head >> 32) as u16)
    }

    /// Bytes to the next record (8-byte aligned).
    #[inline(always)]
    pub fn aligned_size(&self) -> usize {
        (self.size() as usize + 7) & !7
    }

    /// The hook id as the header holds it at offset 6: `opcode | group << 8`.
    #[inline(always)]
    pub fn hook(&self) -> u16 {
        (self.head >> 48) as u16
    }

    #[inline(always)]
    pub fn id(&self) -> EventId {
        EventId::Kernel {
            group: (self.head >> 56) as u8,
            opcode: (self.head >> 48) as u8,
        }
    }

    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.head as u8
    }

    /// Process and thread ids (none in a PERFINFO header).
    #[inline(always)]
    pub fn pid_tid(&self) -> (Option<u32>, Option<u32>) {
        if self.kind.fixed == 0x10 {
            (None, None)
        } else {
            (
                sentry_raw::id_or_none((self.ids >> 32) as u32),
                sentry_raw::id_or_none(self.ids as u32),
            )
        }
    }
}

/// The first word of a record (its first 8 bytes, little-endian) has
/// `TRACE_HEADER_FLAG` and `TRACE_HEADER_EVENT_TRACE` set and announces no
/// PEBS index and no PMC counters: a plain record if its type is one.
#[inline(always)]
pub fn plain_marker(head: u64) -> bool {
    let flags = MARKER_TRACE_HEADER | MARKER_EVENT_TRACE;
    let items = u32::from(PEBS_INDEX_FLAG | PMC_COUNTERS_MASK);
    (head as u32) & (flags | items) == flags
}

/// The [`PlainKind`] of a record's header type (byte 2 of `head`).
#[inline(always)]
pub fn plain_kind(head: u64) -> PlainKind {
    PLAIN_KINDS[usize::from((head >> 16) as u8)]
}

/// The declared size of a SYSTEM/COMPACT/PERFINFO record (bytes 4..6).
#[inline(always)]
pub fn plain_size(head: u64) -> u32 {
    u32::from((head >> 32) as u16)
}

/// The little-endian word at `i` (0, 8 or 16) of a record's first
/// [`PLAIN_HEAD`] bytes.
#[inline(always)]
pub fn word(h: &[u8; PLAIN_HEAD], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&h[i..i + 8]);
    u64::from_le_bytes(a)
}

/// The common case, straight-line: a SYSTEM/COMPACT/PERFINFO header without
/// PEBS or PMC items whose size fits in `room` bytes. `h` is the record's
/// first [`PLAIN_HEAD`] bytes (a record with fewer left in its buffer takes
/// the general path). `None` for anything else (including the end marker
/// and every error), which [`parse`] then handles in full; for what this
/// accepts both produce the same record.
#[inline(always)]
pub fn parse_plain(h: &[u8; PLAIN_HEAD], room: usize) -> Option<Plain> {
    let head = word(h, 0);
    if !plain_marker(head) {
        return None;
    }
    let kind = plain_kind(head);
    let size = plain_size(head);
    if size < kind.min_size || size as usize > room {
        return None;
    }
    let ids = word(h, 8);
    // PERFINFO: the timestamp at 8; SYSTEM and COMPACT: at 0x10.
    let timestamp = if kind.fixed == 0x10 { ids } else { word(h, 16) };
    Some(Plain {
        head,
        ids,
        timestamp,
        kind,
    })
}

/// [`parse_plain`] as a [`Parsed`] record.
#[inline]
fn parse_system_plain(rest: &[u8]) -> Option<Parsed> {
    let p = parse_plain(rest.first_chunk()?, rest.len())?;
    let (pid, tid) = p.pid_tid();
    let fixed = u32::from(p.kind.fixed);
    Some(Parsed {
        size: p.size(),
        record: Record::Event(EventMeta {
            header: p.kind.header,
            id: p.id(),
            version: p.version(),
            pid,
            tid,
            timestamp: p.timestamp,
            pointer_size: p.kind.pointer_size,
            payload_start: fixed,
            extended_start: fixed,
            extended_end: fixed,
        }),
    })
}

/// `Ok(None)`: the end of the buffer's records (end marker, or fewer than
/// four bytes left). `rest` starts at the record and ends at the buffer's
/// filled bytes.
pub fn parse(rest: &[u8]) -> Result<Option<Parsed>, ErrorKind> {
    match parse_system_plain(rest) {
        Some(p) => Ok(Some(p)),
        None => parse_general(rest),
    }
}

/// Every record kind, errors included.
fn parse_general(rest: &[u8]) -> Result<Option<Parsed>, ErrorKind> {
    if rest.len() < 4 {
        return Ok(None);
    }
    let marker = u32_at(rest, 0);
    if marker == END_MARKER {
        return Ok(None);
    }
    if marker & MARKER_TRACE_HEADER == 0 {
        return Err(ErrorKind::BadMarker { marker });
    }
    let room = rest.len().min(u32::MAX as usize) as u32;
    let bad_size = |size: u32, header: u32| ErrorKind::BadRecordSize { size, header, room };

    if marker & MARKER_EVENT_TRACE == 0 {
        if marker & MARKER_MESSAGE != 0 {
            // MESSAGE_TRACE_HEADER: size in the low 16 bits of the marker.
            let size = marker & 0xFFFF;
            if size < 8 || size > room {
                return Err(bad_size(size, 8));
            }
            return Ok(Some(Parsed {
                size,
                record: Record::Message,
            }));
        }
        return Err(ErrorKind::BadMarker { marker });
    }

    let htype = (marker >> 16) as u8;
    match htype {
        TYPE_SYSTEM32 | TYPE_SYSTEM64 | TYPE_COMPACT32 | TYPE_COMPACT64 | TYPE_PERFINFO32
        | TYPE_PERFINFO64 => {
            if rest.len() < 8 {
                return Err(bad_size(0, 8));
            }
            let size = u32::from(u16_at(rest, 4));
            let (header, fixed) = match htype {
                TYPE_SYSTEM32 => (HeaderKind::System32, 0x20),
                TYPE_SYSTEM64 => (HeaderKind::System64, 0x20),
                TYPE_COMPACT32 => (HeaderKind::Compact32, 0x18),
                TYPE_COMPACT64 => (HeaderKind::Compact64, 0x18),
                TYPE_PERFINFO32 => (HeaderKind::PerfInfo32, 0x10),
                _ => (HeaderKind::PerfInfo64, 0x10),
            };
            let version = marker as u16;
            let mut hsize: u32 = fixed;
            if version & PEBS_INDEX_FLAG != 0 {
                hsize += 8;
            }
            hsize += 8 * u32::from((version & PMC_COUNTERS_MASK) >> 8);
            if size < hsize || size > room {
                return Err(bad_size(size, hsize));
            }
            let opcode = rest[6];
            let group = rest[7];
            let perfinfo = fixed == 0x10;
            let (pid, tid, timestamp) = if perfinfo {
                (None, None, u64_at(rest, 8))
            } else {
                (
                    sentry_raw::id_or_none(u32_at(rest, 0xC)),
                    sentry_raw::id_or_none(u32_at(rest, 8)),
                    u64_at(rest, 0x10),
                )
            };
            Ok(Some(Parsed {
                size,
                record: Record::Event(EventMeta {
                    header,
                    id: EventId::Kernel { group, opcode },
                    version: version as u8,
                    pid,
                    tid,
                    timestamp,
                    pointer_size: pointer_size_of(htype),
                    payload_start: hsize,
                    extended_start: hsize,
                    extended_end: hsize,
                }),
            }))
        }
        TYPE_FULL_HEADER32 | TYPE_FULL_HEADER64 | TYPE_INSTANCE32 | TYPE_INSTANCE64 => {
            let size = marker & 0xFFFF;
            let (header, hsize) = match htype {
                TYPE_FULL_HEADER32 => (HeaderKind::FullHeader32, 0x30),
                TYPE_FULL_HEADER64 => (HeaderKind::FullHeader64, 0x30),
                TYPE_INSTANCE32 => (HeaderKind::Instance32, 0x48),
                _ => (HeaderKind::Instance64, 0x48),
            };
            if size < hsize || size > room {
                return Err(bad_size(size, hsize));
            }
            Ok(Some(Parsed {
                size,
                record: Record::Event(EventMeta {
                    header,
                    id: EventId::Classic {
                        guid: guid_at(rest, 0x18),
                        opcode: rest[4],
                    },
                    version: rest[6],
                    pid: sentry_raw::id_or_none(u32_at(rest, 0xC)),
                    tid: sentry_raw::id_or_none(u32_at(rest, 8)),
                    timestamp: u64_at(rest, 0x10),
                    pointer_size: pointer_size_of(htype),
                    payload_start: hsize,
                    extended_start: hsize,
                    extended_end: hsize,
                }),
            }))
        }
        TYPE_EVENT_HEADER32 | TYPE_EVENT_HEADER64 => {
            let size = marker & 0xFFFF;
            let hsize = 0x50;
            if size < hsize || size > room {
                return Err(bad_size(size, hsize));
            }
            let rec = &rest[..size as usize];
            let flags = u16_at(rec, 4);
            let mut payload_start = hsize;
            if flags & EH_FLAG_EXTENDED_INFO != 0 {
                payload_start = extended_end(rec, hsize as usize)? as u32;
            }
            Ok(Some(Parsed {
                size,
                record: Record::Event(EventMeta {
                    header: if htype == TYPE_EVENT_HEADER32 {
                        HeaderKind::EventHeader32
                    } else {
                        HeaderKind::EventHeader64
                    },
                    id: EventId::Manifest {
                        provider: guid_at(rec, 0x18),
                        id: u16_at(rec, 0x28),
                        version: rec[0x2A],
                        channel: rec[0x2B],
                        level: rec[0x2C],
                        opcode: rec[0x2D],
                        task: u16_at(rec, 0x2E),
                        keyword: u64_at(rec, 0x30),
                    },
                    version: rec[0x2A],
                    pid: sentry_raw::id_or_none(u32_at(rec, 0xC)),
                    tid: sentry_raw::id_or_none(u32_at(rec, 8)),
                    timestamp: u64_at(rec, 0x10),
                    pointer_size: pointer_size_of(htype),
                    payload_start,
                    extended_start: hsize,
                    extended_end: payload_start,
                }),
            }))
        }
        other => {
            // TIMED, ERROR, WNODE_HEADER and unknown types: the size is the
            // low 16 bits of the marker, as for the other non-system kinds.
            let size = marker & 0xFFFF;
            if size < 8 || size > room {
                return Err(bad_size(size, 8));
            }
            Ok(Some(Parsed {
                size,
                record: Record::Other(other),
            }))
        }
    }
}

/// Walks the extended data items starting at `start`; returns where the
/// user data starts.
fn extended_end(rec: &[u8], start: usize) -> Result<usize, ErrorKind> {
    let mut p = start;
    loop {
        if p + 8 > rec.len() {
            return Err(ErrorKind::BadExtendedData);
        }
        let size = u16_at(rec, p) as usize;
        let more = u16_at(rec, p + 4) & 1 != 0;
        let data_size = u16_at(rec, p + 6) as usize;
        if size < 8 || data_size > size - 8 || p + size > rec.len() {
            return Err(ErrorKind::BadExtendedData);
        }
        p += size;
        if !more {
            return Ok(p);
        }
    }
}

fn pointer_size_of(htype: u8) -> u8 {
    match htype {
        TYPE_SYSTEM32 | TYPE_COMPACT32 | TYPE_PERFINFO32 | TYPE_FULL_HEADER32 | TYPE_INSTANCE32
        | TYPE_EVENT_HEADER32 => 4,
        _ => 8,
    }
}

/// The golden-file name of a header type byte (for skipped kinds too).
pub fn header_type_name(htype: u8) -> &'static str {
    match htype {
        TYPE_SYSTEM32 => "SYSTEM32",
        TYPE_SYSTEM64 => "SYSTEM64",
        TYPE_COMPACT32 => "COMPACT32",
        TYPE_COMPACT64 => "COMPACT64",
        TYPE_FULL_HEADER32 => "FULL_HEADER32",
        TYPE_INSTANCE32 => "INSTANCE32",
        TYPE_TIMED => "TIMED",
        TYPE_ERROR => "ERROR",
        TYPE_WNODE_HEADER => "WNODE_HEADER",
        TYPE_MESSAGE => "MESSAGE",
        TYPE_PERFINFO32 => "PERFINFO32",
        TYPE_PERFINFO64 => "PERFINFO64",
        TYPE_EVENT_HEADER32 => "EVENT_HEADER32",
        TYPE_EVENT_HEADER64 => "EVENT_HEADER64",
        TYPE_FULL_HEADER64 => "FULL_HEADER64",
        TYPE_INSTANCE64 => "INSTANCE64",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The straight-line path and the general one agree on every input the
    /// former accepts (random headers of the six system kinds, random flag
    /// bits and sizes, short slices).
    #[test]
    fn plain_system_path_equals_general_path() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let kinds = [
            TYPE_SYSTEM32,
            TYPE_SYSTEM64,
            TYPE_COMPACT32,
            TYPE_COMPACT64,
            TYPE_PERFINFO32,
            TYPE_PERFINFO64,
            TYPE_EVENT_HEADER64,
        ];
        let (mut fast, mut total) = (0, 0);
        for _ in 0..200_000 {
            let len = (next() % 0x50) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len >= 6 {
                let r = next();
                let mut marker = 0xC000_0000u32 | u32::from(kinds[(r % 7) as usize]) << 16;
                if r & 0x100 != 0 {
                    marker |= (r >> 16) as u32 & 0xFFFF;
                }
                if r & 0x200 != 0 {
                    marker &= !0x4000_0000;
                }
                b[..4].copy_from_slice(&marker.to_le_bytes());
                b[4..6].copy_from_slice(&((r >> 32) as u16 % 0x60).to_le_bytes());
            }
            total += 1;
            if let Some(p) = parse_system_plain(&b) {
                fast += 1;
                let g = parse_general(&b)
                    .expect("general path accepts it")
                    .expect("a record");
                assert_eq!(format!("{p:?}"), format!("{g:?}"), "{b:02x?}");
            }
        }
        assert!(fast > total / 50, "fast path taken {fast} of {total}");
    }

    fn system64(version: u16, size: u16, extra: usize) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(&version.to_le_bytes());
        r.push(TYPE_SYSTEM64);
        r.push(0xC0);
        r.extend_from_slice(&size.to_le_bytes());
        r.extend_from_slice(&[0x33, 0x0F]); // opcode 51, group PerfInfo
        r.extend_from_slice(&7u32.to_le_bytes()); // tid
        r.extend_from_slice(&u32::MAX.to_le_bytes()); // pid: none
        r.extend_from_slice(&1234u64.to_le_bytes());
        r.extend_from_slice(&[0; 8]); // kernel/user time
        r.extend(std::iter::repeat_n(0xEE, extra));
        r.resize(size as usize, 0xAB);
        r
    }

    #[test]
    fn system_header_fields() {
        let r = system64(2, 40, 0);
        let p = parse(&r).unwrap().unwrap();
        assert_eq!(p.size, 40);
        let Record::Event(m) = p.record else { panic!() };
        assert_eq!(m.header, HeaderKind::System64);
        assert_eq!(
            m.id,
            EventId::Kernel {
                group: 0x0F,
                opcode: 51
            }
        );
        assert_eq!(
            (m.tid, m.pid, m.timestamp, m.version),
            (Some(7), None, 1234, 2)
        );
        assert_eq!(m.payload_start, 0x20);
        assert_eq!(m.pointer_size, 8);
    }

    #[test]
    fn pebs_and_pmc_items_are_skipped() {
        // PEBS index (8 bytes) and 3 PMC counters (24 bytes) sit between
        // the header and the payload, and count in the size.
        let version = 0x8000 | (3 << 8) | 2;
        let r = system64(version, 0x20 + 32 + 8, 32);
        let Record::Event(m) = parse(&r).unwrap().unwrap().record else {
            panic!()
        };
        assert_eq!(m.payload_start, 0x20 + 32);
        assert_eq!(m.version, 2);
        assert_eq!(&r[m.payload_start as usize..], &[0xAB; 8]);
        // A size too small for the announced items is an error.
        let r = system64(version, 0x20 + 16, 16);
        assert!(matches!(parse(&r), Err(ErrorKind::BadRecordSize { .. })));
    }

    #[test]
    fn perfinfo_has_no_ids() {
        let mut r = vec![2, 0, TYPE_PERFINFO64, 0xC0, 24, 0, 0x20, 0x18];
        r.extend_from_slice(&99u64.to_le_bytes());
        r.extend_from_slice(&[1; 8]);
        let Record::Event(m) = parse(&r).unwrap().unwrap().record else {
            panic!()
        };
        assert_eq!((m.pid, m.tid, m.timestamp), (None, None, 99));
        assert_eq!(
            m.id,
            EventId::Kernel {
                group: 0x18,
                opcode: 32
            }
        );
        assert_eq!(m.payload_start, 16);
    }

    #[test]
    fn messages_end_marker_and_garbage() {
        // WPP message: TRACE_HEADER_FLAG | TRACE_MESSAGE, size in the low 16 bits.
        let mut r = 0x9000_0010u32.to_le_bytes().to_vec();
        r.resize(16, 0);
        let p = parse(&r).unwrap().unwrap();
        assert!(matches!(p.record, Record::Message));
        assert_eq!(p.aligned_size(), 16);
        assert!(parse(&END_MARKER.to_le_bytes()).unwrap().is_none());
        assert!(parse(&[1, 2, 3]).unwrap().is_none());
        assert!(matches!(
            parse(&[0, 0, 0, 0x40, 0, 0, 0, 0]),
            Err(ErrorKind::BadMarker { .. })
        ));
        // Zero and oversized sizes.
        let r = system64(2, 0x20, 0);
        let mut z = r.clone();
        z[4] = 0;
        assert!(matches!(parse(&z), Err(ErrorKind::BadRecordSize { .. })));
        assert!(matches!(
            parse(&r[..0x1F]),
            Err(ErrorKind::BadRecordSize { .. })
        ));
        // Unknown header type: counted and skipped by its size.
        let mut u = vec![0x18, 0, 0x77, 0xC0];
        u.resize(0x18, 0);
        assert!(matches!(
            parse(&u).unwrap().unwrap().record,
            Record::Other(0x77)
        ));
    }

    #[test]
    fn event_header_extended_items_bound_the_payload() {
        let mut r = vec![0u8; 0x50];
        r[2] = TYPE_EVENT_HEADER32;
        r[3] = 0xC0;
        r[4] = 1; // EVENT_HEADER_FLAG_EXTENDED_INFO
                  // One STACK_TRACE32 item: match id and one frame (12 data bytes),
                  // padded to 24 bytes, no linkage.
        r.extend_from_slice(&[24, 0, 5, 0, 0, 0, 12, 0]);
        r.extend_from_slice(&[0; 16]);
        r.extend_from_slice(b"user");
        let size = r.len() as u16;
        r[0..2].copy_from_slice(&size.to_le_bytes());
        let Record::Event(m) = parse(&r).unwrap().unwrap().record else {
            panic!()
        };
        assert_eq!(
            (m.extended_start, m.extended_end, m.payload_start),
            (0x50, 0x68, 0x68)
        );
        assert_eq!(m.pointer_size, 4);
        // Linkage set but no room for another item.
        r[0x54] = 1;
        assert!(matches!(parse(&r), Err(ErrorKind::BadExtendedData)));
    }
}
