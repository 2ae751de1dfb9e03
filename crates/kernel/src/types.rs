//! The typed kernel events. These types are the contract between the
//! decoders and the engine: change them only with both sides in view.

use std::fmt;

use sentry_raw::LogfileHeader;

/// A decoded kernel event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent<'a> {
    /// PerfInfo opcode 51.
    SysCallEnter(SysCallEnter),
    /// PerfInfo opcode 52.
    SysCallExit(SysCallExit),
    /// StackWalk opcode 32.
    StackWalk(StackWalk<'a>),
    /// StackWalk opcodes 34 (create), 35 (delete), 36 (rundown).
    StackKeyDefinition(StackKeyDefinition<'a>),
    /// StackWalk opcodes 37 (kernel key), 38 (user key).
    StackKeyReference(StackKeyReference),
    /// Process group: start 1, end 2, DCStart 3, DCEnd 4, defunct 39.
    Process(Process),
    /// Thread group: start 1, end 2, DCStart 3, DCEnd 4.
    Thread(Thread),
    /// Image: load 10 (hook 0x030A or 0x140A), unload 2, DCStart 3, DCEnd 4.
    Image(Image),
    /// EventTrace group opcode 0: the logfile header.
    EventTraceHeader(Box<LogfileHeader>),
}

/// [SysCallEnter](https://learn.microsoft.com/windows/win32/etw/syscallenter):
/// the address of the kernel service routine being entered. The record
/// carries no thread or process id: they come from the paired StackWalk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SysCallEnter {
    pub sys_call_address: u64,
}

/// [SysCallExit](https://learn.microsoft.com/windows/win32/etw/syscallexit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SysCallExit {
    pub sys_call_ntstatus: u32,
}

/// Return addresses, innermost first, laid out with the trace's pointer size.
/// Zero-copy over the payload.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Frames<'a> {
    bytes: &'a [u8],
    pointer_size: u8,
}

impl<'a> Frames<'a> {
    /// `bytes` is truncated to a whole number of pointers. `pointer_size` must
    /// be 4 or 8 (anything else is treated as 8).
    pub fn new(bytes: &'a [u8], pointer_size: u8) -> Frames<'a> {
        let ps = if pointer_size == 4 { 4 } else { 8 };
        let n = bytes.len() / ps;
        Frames {
            bytes: &bytes[..n * ps],
            pointer_size: ps as u8,
        }
    }

    /// Frames over `bytes` already known to be a whole number of pointers
    /// of `pointer_size` (4 or 8).
    #[inline]
    pub(crate) fn whole(bytes: &'a [u8], pointer_size: u8) -> Frames<'a> {
        debug_assert!(pointer_size == 4 || pointer_size == 8);
        debug_assert!(bytes.len() % usize::from(pointer_size) == 0);
        Frames {
            bytes,
            pointer_size,
        }
    }

    #[inline]
    pub fn len(&self) -> usize {
        // The pointer size is 4 or 8: a shift, not a division.
        if self.pointer_size == 4 {
            self.bytes.len() >> 2
        } else {
            self.bytes.len() >> 3
        }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    #[inline]
    pub fn pointer_size(&self) -> u8 {
        self.pointer_size
    }

    /// The raw little-endian addresses (a whole number of pointers), for
    /// consumers that convert in bulk.
    #[inline]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    #[inline]
    pub fn get(&self, i: usize) -> Option<u64> {
        if self.pointer_size == 4 {
            let b = self.bytes.get(i.checked_mul(4)?..)?.first_chunk::<4>()?;
            Some(u64::from(u32::from_le_bytes(*b)))
        } else {
            let b = self.bytes.get(i.checked_mul(8)?..)?.first_chunk::<8>()?;
            Some(u64::from_le_bytes(*b))
        }
    }

    /// The outermost (last) frame.
    #[inline]
    pub fn last(&self) -> Option<u64> {
        if self.pointer_size == 4 {
            let b = self.bytes.last_chunk::<4>()?;
            Some(u64::from(u32::from_le_bytes(*b)))
        } else {
            let b = self.bytes.last_chunk::<8>()?;
            Some(u64::from_le_bytes(*b))
        }
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = u64> + 'a {
        let ps = self.pointer_size as usize;
        self.bytes.chunks_exact(ps).map(move |b| {
            if ps == 4 {
                u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            } else {
                u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
            }
        })
    }
}

impl fmt::Debug for Frames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|a| format!("{a:#x}")))
            .finish()
    }
}

/// [StackWalk_Event](https://learn.microsoft.com/windows/win32/etw/stackwalk-event):
/// the stack of the event logged at `event_timestamp` (the parent's raw
/// timestamp) on thread `stack_thread` of process `stack_process`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackWalk<'a> {
    pub event_timestamp: u64,
    pub stack_process: u32,
    pub stack_thread: u32,
    pub frames: Frames<'a>,
}

/// Which stack-cache event defined a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackKeyOp {
    Create,
    Delete,
    Rundown,
}

/// StackWalk opcodes 34–36 (Windows 8+ stack caching): the frames behind a
/// stack key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackKeyDefinition<'a> {
    pub op: StackKeyOp,
    pub stack_key: u64,
    pub frames: Frames<'a>,
}

/// Whether a stack-key reference is for the kernel or the user part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackPart {
    Kernel,
    User,
}

/// StackWalk opcodes 37 (kernel) and 38 (user): the event at
/// `event_timestamp` has the stack stored under `stack_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackKeyReference {
    pub part: StackPart,
    pub event_timestamp: u64,
    pub stack_process: u32,
    pub stack_thread: u32,
    pub stack_key: u64,
}

/// Lifecycle opcode shared by Process, Thread and Image events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lifecycle {
    /// Start / Load.
    Start,
    /// End / Unload.
    End,
    /// Rundown of what was already there when tracing started.
    DcStart,
    /// Rundown at the end of the trace.
    DcEnd,
    /// Process defunct (opcode 39).
    Defunct,
}

/// [Process_TypeGroup1](https://learn.microsoft.com/windows/win32/etw/process-typegroup1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub op: Lifecycle,
    pub unique_process_key: u64,
    pub process_id: u32,
    pub parent_id: u32,
    pub session_id: u32,
    pub exit_status: i32,
    pub directory_table_base: u64,
    /// V4+ only.
    pub flags: Option<u32>,
    /// The user SID (without the TOKEN_USER prefix), `S-1-5-18` style; empty
    /// when absent.
    pub user_sid: String,
    /// ANSI image file name, e.g. `svchost.exe`.
    pub image_file_name: String,
    pub command_line: String,
    /// V4+ only (empty otherwise).
    pub package_full_name: String,
    pub application_id: String,
}

/// [Thread_TypeGroup1](https://learn.microsoft.com/windows/win32/etw/thread-typegroup1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thread {
    pub op: Lifecycle,
    pub process_id: u32,
    pub thread_id: u32,
    pub stack_base: u64,
    pub stack_limit: u64,
    pub user_stack_base: u64,
    pub user_stack_limit: u64,
    /// `StartAddr` (V2) / `Affinity` is not kept.
    pub start_addr: u64,
    pub win32_start_addr: u64,
    pub teb_base: u64,
}

/// [Image_Load](https://learn.microsoft.com/windows/win32/etw/image-load).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub op: Lifecycle,
    pub image_base: u64,
    pub image_size: u64,
    pub process_id: u32,
    pub image_checksum: u32,
    pub time_date_stamp: u32,
    pub default_base: u64,
    /// NT path, e.g. `\Device\HarddiskVolume3\Windows\System32\ntdll.dll`.
    pub file_name: String,
}

/// Why a payload did not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// File offset of the record (0 for live events).
    pub offset: u64,
    /// What was being decoded, e.g. `Process V3`.
    pub what: &'static str,
    pub reason: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot decode {} at file offset {:#x}: {}",
            self.what, self.offset, self.reason
        )
    }
}

impl std::error::Error for DecodeError {}
