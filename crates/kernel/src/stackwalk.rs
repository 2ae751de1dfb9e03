//! StackWalk (group 0x18): stacks and the Windows 8+ stack cache.
//!
//! * [StackWalk_Event](https://learn.microsoft.com/windows/win32/etw/stackwalk-event)
//!   (opcode 32): `EventTimeStamp` u64, `StackProcess` u32, `StackThread` u32,
//!   then `Stack1..StackN` return addresses (pointers), innermost first.
//! * Key definitions (34 KeyCreate, 35 KeyDelete, 36 KeyRundown): `StackKey`
//!   (a pointer) then the frames. Microsoft documents no page for the stack
//!   cache events; the layout is the kernel's own event schema (as exposed
//!   by TDH), checked on the corpus.
//! * Key references (37 StackKeyKernel, 38 StackKeyUser): `EventTimeStamp`
//!   u64, `StackProcess` u32, `StackThread` u32, `StackKey` (a pointer).
//!
//! Measured on the Windows 8 corpus traces (64-bit kernel, including the
//! WoW64 one): keys are 8 bytes there, references are exactly 24 bytes, and
//! every payload is a whole number of pointers.

use crate::reader::{Fail, Reader};
use crate::{
    Frames, KernelEvent, StackKeyDefinition, StackKeyOp, StackKeyReference, StackPart, StackWalk,
};

pub(crate) const STACK: u8 = 32;
pub(crate) const KEY_CREATE: u8 = 34;
pub(crate) const KEY_DELETE: u8 = 35;
pub(crate) const KEY_RUNDOWN: u8 = 36;
pub(crate) const KEY_KERNEL: u8 = 37;
pub(crate) const KEY_USER: u8 = 38;

/// The remaining bytes as frames; a trailing partial pointer means the
/// payload is not this layout.
fn frames<'a>(r: &mut Reader<'a>) -> Result<Frames<'a>, Fail> {
    let ps = r.pointer_size();
    let rest = r.rest();
    if rest.len() % usize::from(ps) != 0 {
        return Err(format!(
            "{} bytes of frames are not a whole number of {ps}-byte pointers",
            rest.len()
        ));
    }
    Ok(Frames::new(rest, ps))
}

pub(crate) fn stack<'a>(r: &mut Reader<'a>) -> Result<KernelEvent<'a>, Fail> {
    let event_timestamp = r.u64("EventTimeStamp")?;
    let stack_process = r.u32("StackProcess")?;
    let stack_thread = r.u32("StackThread")?;
    Ok(KernelEvent::StackWalk(StackWalk {
        event_timestamp,
        stack_process,
        stack_thread,
        frames: frames(r)?,
    }))
}

pub(crate) fn key_definition<'a>(
    r: &mut Reader<'a>,
    op: StackKeyOp,
) -> Result<KernelEvent<'a>, Fail> {
    let stack_key = r.ptr("StackKey")?;
    Ok(KernelEvent::StackKeyDefinition(StackKeyDefinition {
        op,
        stack_key,
        frames: frames(r)?,
    }))
}

pub(crate) fn key_reference(
    r: &mut Reader<'_>,
    part: StackPart,
) -> Result<KernelEvent<'static>, Fail> {
    Ok(KernelEvent::StackKeyReference(StackKeyReference {
        part,
        event_timestamp: r.u64("EventTimeStamp")?,
        stack_process: r.u32("StackProcess")?,
        stack_thread: r.u32("StackThread")?,
        stack_key: r.ptr("StackKey")?,
    }))
}
