//! `WMI_BUFFER_HEADER`: the 72-byte header of every buffer in an `.etl` file.
//!
//! Not in the public SDK; layout from the WDK's NTWMI.H as described in
//! [Geoff Chappell's WMI_BUFFER_HEADER page](https://www.geoffchappell.com/studies/windows/km/ntoskrnl/inc/api/ntwmi/wmi_buffer_header/index.htm),
//! and checked against every file of the test corpus:
//!
//! | offset | field |
//! |---|---|
//! | 0x00 | `BufferSize`: bytes this buffer takes in the file (compressed size for compressed buffers) |
//! | 0x04 | `SavedOffset` |
//! | 0x08 | `CurrentOffset` |
//! | 0x0C | `ReferenceCount` |
//! | 0x10 | `TimeStamp` (FILETIME of the flush) |
//! | 0x18 | `SequenceNumber` |
//! | 0x20 | clock type / frequency |
//! | 0x28 | `ClientContext` ([`ETW_BUFFER_CONTEXT`](https://learn.microsoft.com/windows/win32/api/evntrace/ns-evntrace-etw_buffer_context)): processor |
//! | 0x2C | `State` |
//! | 0x30 | `Offset`: filled bytes including this header (uncompressed size) |
//! | 0x34 | `BufferFlag` |
//! | 0x36 | `BufferType` |
//! | 0x38 | reference time (16 bytes) |
//!
//! The processor: with `ETW_BUFFER_FLAG_PROC_INDEX` (0x20, Windows 10) a
//! 16-bit processor index at 0x28; without it (Windows 7/8) an 8-bit
//! processor number at 0x28 followed by an 8-bit alignment byte.

/// Size of `WMI_BUFFER_HEADER`; records start right after it.
pub const BUFFER_HEADER_SIZE: usize = 72;

/// `ETW_BUFFER_FLAG_FLUSH_MARKER`.
pub const FLAG_FLUSH_MARKER: u16 = 0x0001;
/// `ETW_BUFFER_FLAG_EVENTS_LOST`.
pub const FLAG_EVENTS_LOST: u16 = 0x0002;
/// `ETW_BUFFER_FLAG_BUFFER_LOST`.
pub const FLAG_BUFFER_LOST: u16 = 0x0004;
/// `ETW_BUFFER_FLAG_PROC_INDEX`: 0x28 holds a 16-bit processor index.
pub const FLAG_PROC_INDEX: u16 = 0x0020;
/// `ETW_BUFFER_FLAG_COMPRESSED`: the data after the header is plain LZ77 XPRESS.
pub const FLAG_COMPRESSED: u16 = 0x0040;

/// `ETW_BUFFER_TYPE_HEADER`: the first buffer, holding the logfile header.
pub const TYPE_HEADER: u16 = 4;

/// Largest buffer size accepted (ETW allows at most 16 MiB buffers); larger
/// declared sizes are corrupt and are not allocated.
pub const MAX_BUFFER_SIZE: u32 = 64 << 20;

/// The fields of `WMI_BUFFER_HEADER` the reader uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferHeader {
    /// Bytes the buffer takes in the file, header included.
    pub buffer_size: u32,
    pub saved_offset: u32,
    pub current_offset: u32,
    /// FILETIME of the flush.
    pub timestamp: i64,
    pub sequence_number: i64,
    pub processor: u16,
    pub logger_id: u16,
    /// Bytes of header plus records once decompressed.
    pub filled_bytes: u32,
    pub flags: u16,
    pub buffer_type: u16,
}

fn u16_at(b: &[u8; BUFFER_HEADER_SIZE], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8; BUFFER_HEADER_SIZE], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn i64_at(b: &[u8; BUFFER_HEADER_SIZE], o: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    i64::from_le_bytes(a)
}

impl BufferHeader {
    pub fn parse(b: &[u8; BUFFER_HEADER_SIZE]) -> BufferHeader {
        let flags = u16_at(b, 0x34);
        let processor = if flags & FLAG_PROC_INDEX != 0 {
            u16_at(b, 0x28)
        } else {
            u16::from(b[0x28])
        };
        BufferHeader {
            buffer_size: u32_at(b, 0),
            saved_offset: u32_at(b, 4),
            current_offset: u32_at(b, 8),
            timestamp: i64_at(b, 0x10),
            sequence_number: i64_at(b, 0x18),
            processor,
            logger_id: u16_at(b, 0x2a),
            filled_bytes: u32_at(b, 0x30),
            flags,
            buffer_type: u16_at(b, 0x36),
        }
    }

    pub fn is_compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }
}
