//! Typed decoders for the NT Kernel Logger events syscall-sentry uses.
//!
//! Input is a [`RawEvent`] (from an `.etl` file or a live session); output a
//! [`KernelEvent`]. Layouts are those of Microsoft's MSNT_SystemTrace MOF
//! classes, in 32- and 64-bit pointer variants; newer versions decode the
//! known prefix and ignore extra tail bytes. Decoders are safe Rust over byte
//! slices and never panic on hostile input.

#![forbid(unsafe_code)]

use sentry_raw::{EventId, KernelClass, RawEvent};

mod eventtrace;
pub mod fuzzing;
mod image;
mod perfinfo;
mod process;
mod reader;
mod stackwalk;
mod thread;
mod types;
pub use types::*;

use reader::Reader;

/// Decodes a kernel event syscall-sentry understands.
///
/// `Ok(None)`: not a kernel event of interest (other groups, other opcodes,
/// provider events).
/// `Err`: an event of interest whose payload does not fit its layout (or
/// whose version predates the documented layouts, or whose pointer size is
/// neither 4 nor 8).
#[inline]
pub fn decode<'a>(ev: &RawEvent<'a>) -> Result<Option<KernelEvent<'a>>, DecodeError> {
    // Fast path for the three events of every syscall (SysCallEnter,
    // StackWalk, SysCallExit) when the payload fits its layout: fixed offsets,
    // no dispatch. Anything else (short payloads, odd pointer sizes) takes the
    // general path, which yields the same events and the named errors. Only
    // the fast path is inlined into callers.
    if let EventId::Kernel { group, opcode } = ev.id {
        if let Some(k) = fast_path(group, opcode, ev.pointer_size, ev.payload) {
            return Ok(Some(k));
        }
    }
    decode_general(ev)
}

/// [`decode`] without the fast path.
#[inline(never)]
fn decode_general<'a>(ev: &RawEvent<'a>) -> Result<Option<KernelEvent<'a>>, DecodeError> {
    let Some(class) = ev.kernel_class() else {
        return Ok(None);
    };
    let opcode = ev.id.opcode();
    let Some(what) = event_name(class, opcode) else {
        return Ok(None);
    };
    let err = |reason: String| DecodeError {
        offset: ev.offset,
        what,
        reason,
    };
    if class == KernelClass::EventTrace {
        return eventtrace::header(ev.payload).map(Some).map_err(err);
    }
    if ev.pointer_size != 4 && ev.pointer_size != 8 {
        return Err(err(format!(
            "pointer size {} (expected 4 or 8)",
            ev.pointer_size
        )));
    }
    let r = &mut Reader::new(ev.payload, ev.pointer_size);
    let v = ev.version;
    let decoded = match class {
        KernelClass::PerfInfo => match opcode {
            perfinfo::SYSCALL_ENTER => perfinfo::sys_call_enter(r),
            _ => perfinfo::sys_call_exit(r),
        },
        KernelClass::StackWalk => match opcode {
            stackwalk::STACK => stackwalk::stack(r),
            stackwalk::KEY_CREATE => stackwalk::key_definition(r, StackKeyOp::Create),
            stackwalk::KEY_DELETE => stackwalk::key_definition(r, StackKeyOp::Delete),
            stackwalk::KEY_RUNDOWN => stackwalk::key_definition(r, StackKeyOp::Rundown),
            stackwalk::KEY_KERNEL => stackwalk::key_reference(r, StackPart::Kernel),
            _ => stackwalk::key_reference(r, StackPart::User),
        },
        // The Process, Thread and Image layouts are documented from
        // version 2 (the MOF classes' first version) on.
        KernelClass::Process | KernelClass::Thread | KernelClass::Image if v < 2 => {
            Err(format!("version {v} is not supported (2 and later are)"))
        }
        KernelClass::Process => process::process(r, lifecycle(opcode), v),
        KernelClass::Thread => thread::thread(r, lifecycle(opcode), v),
        KernelClass::Image => image::image(r, lifecycle(opcode)),
        KernelClass::EventTrace | KernelClass::Other(_) => return Ok(None),
    };
    decoded
        .map(Some)
        .map_err(|reason| err(format!("version {v}: {reason}")))
}

/// The syscall events decoded at fixed offsets; `None` sends the event to
/// the general path (which decides errors and the other events).
#[inline]
fn fast_path(group: u8, opcode: u8, ps: u8, p: &[u8]) -> Option<KernelEvent<'_>> {
    match (group, opcode) {
        (KernelClass::GROUP_PERFINFO, perfinfo::SYSCALL_ENTER) => {
            sys_call_enter_at(ps, p).map(KernelEvent::SysCallEnter)
        }
        (KernelClass::GROUP_PERFINFO, perfinfo::SYSCALL_EXIT) if ps == 4 || ps == 8 => {
            Some(KernelEvent::SysCallExit(SysCallExit {
                sys_call_ntstatus: u32::from_le_bytes(*p.first_chunk::<4>()?),
            }))
        }
        (KernelClass::GROUP_STACKWALK, stackwalk::STACK) => {
            stack_walk_at(ps, p).map(KernelEvent::StackWalk)
        }
        _ => None,
    }
}

/// `ev` decoded as a SysCallEnter, if it is one whose payload fits the
/// layout: what [`decode`] gives for it (which also names the errors),
/// without building a [`KernelEvent`]. For callers handling the syscall
/// events apart from the rest.
#[inline]
pub fn sys_call_enter(ev: &RawEvent<'_>) -> Option<SysCallEnter> {
    match ev.id {
        EventId::Kernel {
            group: KernelClass::GROUP_PERFINFO,
            opcode: perfinfo::SYSCALL_ENTER,
        } => sys_call_enter_at(ev.pointer_size, ev.payload),
        _ => None,
    }
}

/// `ev` decoded as a StackWalk stack event, if it is one whose payload fits
/// the layout: what [`decode`] gives for it, without building a
/// [`KernelEvent`] (see [`sys_call_enter`]).
#[inline]
pub fn stack_walk<'a>(ev: &RawEvent<'a>) -> Option<StackWalk<'a>> {
    match ev.id {
        EventId::Kernel {
            group: KernelClass::GROUP_STACKWALK,
            opcode: stackwalk::STACK,
        } => stack_walk_at(ev.pointer_size, ev.payload),
        _ => None,
    }
}

#[inline(always)]
fn sys_call_enter_at(ps: u8, p: &[u8]) -> Option<SysCallEnter> {
    let sys_call_address = match ps {
        8 => u64::from_le_bytes(*p.first_chunk::<8>()?),
        4 => u64::from(u32::from_le_bytes(*p.first_chunk::<4>()?)),
        _ => return None,
    };
    Some(SysCallEnter { sys_call_address })
}

#[inline(always)]
fn stack_walk_at(ps: u8, p: &[u8]) -> Option<StackWalk<'_>> {
    let (head, frames) = p.split_first_chunk::<16>()?;
    // A whole number of pointers (masks, not divisions).
    let whole = match ps {
        8 => frames.len() & 7 == 0,
        4 => frames.len() & 3 == 0,
        _ => false,
    };
    if !whole {
        return None;
    }
    let [t0, t1, t2, t3, t4, t5, t6, t7, p0, p1, p2, p3, h0, h1, h2, h3] = *head;
    Some(StackWalk {
        event_timestamp: u64::from_le_bytes([t0, t1, t2, t3, t4, t5, t6, t7]),
        stack_process: u32::from_le_bytes([p0, p1, p2, p3]),
        stack_thread: u32::from_le_bytes([h0, h1, h2, h3]),
        frames: Frames::whole(frames, ps),
    })
}

/// Lifecycle of a Process/Thread/Image opcode already known to be of
/// interest (see [`event_name`]).
fn lifecycle(opcode: u8) -> Lifecycle {
    match opcode {
        1 | 10 => Lifecycle::Start,
        2 => Lifecycle::End,
        3 => Lifecycle::DcStart,
        4 => Lifecycle::DcEnd,
        _ => Lifecycle::Defunct,
    }
}

/// The name of a (class, opcode) this crate decodes, `None` for the rest.
/// This is the single list of events of interest.
pub fn event_name(class: KernelClass, opcode: u8) -> Option<&'static str> {
    Some(match (class, opcode) {
        (KernelClass::EventTrace, eventtrace::HEADER) => "EventTrace/Header",
        (KernelClass::PerfInfo, perfinfo::SYSCALL_ENTER) => "PerfInfo/SysCallEnter",
        (KernelClass::PerfInfo, perfinfo::SYSCALL_EXIT) => "PerfInfo/SysCallExit",
        (KernelClass::StackWalk, stackwalk::STACK) => "StackWalk/Stack",
        (KernelClass::StackWalk, stackwalk::KEY_CREATE) => "StackWalk/KeyCreate",
        (KernelClass::StackWalk, stackwalk::KEY_DELETE) => "StackWalk/KeyDelete",
        (KernelClass::StackWalk, stackwalk::KEY_RUNDOWN) => "StackWalk/KeyRundown",
        (KernelClass::StackWalk, stackwalk::KEY_KERNEL) => "StackWalk/StackKeyKernel",
        (KernelClass::StackWalk, stackwalk::KEY_USER) => "StackWalk/StackKeyUser",
        (KernelClass::Process, 1) => "Process/Start",
        (KernelClass::Process, 2) => "Process/End",
        (KernelClass::Process, 3) => "Process/DCStart",
        (KernelClass::Process, 4) => "Process/DCEnd",
        (KernelClass::Process, 39) => "Process/Defunct",
        (KernelClass::Thread, 1) => "Thread/Start",
        (KernelClass::Thread, 2) => "Thread/End",
        (KernelClass::Thread, 3) => "Thread/DCStart",
        (KernelClass::Thread, 4) => "Thread/DCEnd",
        (KernelClass::Image, 10) => "Image/Load",
        (KernelClass::Image, 2) => "Image/UnLoad",
        (KernelClass::Image, 3) => "Image/DCStart",
        (KernelClass::Image, 4) => "Image/DCEnd",
        _ => return None,
    })
}

impl KernelEvent<'_> {
    /// `Class/Event` name, as Microsoft's docs and TraceEvent spell them
    /// (e.g. `Process/DCStart`, `StackWalk/Stack`, `Image/Load`).
    pub fn name(&self) -> &'static str {
        const PROCESS: [&str; 5] = [
            "Process/Start",
            "Process/End",
            "Process/DCStart",
            "Process/DCEnd",
            "Process/Defunct",
        ];
        const THREAD: [&str; 5] = [
            "Thread/Start",
            "Thread/End",
            "Thread/DCStart",
            "Thread/DCEnd",
            "Thread/Defunct",
        ];
        const IMAGE: [&str; 5] = [
            "Image/Load",
            "Image/UnLoad",
            "Image/DCStart",
            "Image/DCEnd",
            "Image/Defunct",
        ];
        let by_op = |names: [&'static str; 5], op: Lifecycle| match op {
            Lifecycle::Start => names[0],
            Lifecycle::End => names[1],
            Lifecycle::DcStart => names[2],
            Lifecycle::DcEnd => names[3],
            Lifecycle::Defunct => names[4],
        };
        match self {
            KernelEvent::SysCallEnter(_) => "PerfInfo/SysCallEnter",
            KernelEvent::SysCallExit(_) => "PerfInfo/SysCallExit",
            KernelEvent::StackWalk(_) => "StackWalk/Stack",
            KernelEvent::StackKeyDefinition(d) => match d.op {
                StackKeyOp::Create => "StackWalk/KeyCreate",
                StackKeyOp::Delete => "StackWalk/KeyDelete",
                StackKeyOp::Rundown => "StackWalk/KeyRundown",
            },
            KernelEvent::StackKeyReference(r) => match r.part {
                StackPart::Kernel => "StackWalk/StackKeyKernel",
                StackPart::User => "StackWalk/StackKeyUser",
            },
            KernelEvent::Process(p) => by_op(PROCESS, p.op),
            KernelEvent::Thread(t) => by_op(THREAD, t.op),
            KernelEvent::Image(i) => by_op(IMAGE, i.op),
            KernelEvent::EventTraceHeader(_) => "EventTrace/Header",
        }
    }
}

#[cfg(test)]
mod tests;
