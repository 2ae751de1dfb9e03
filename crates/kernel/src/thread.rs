//! Thread (group 0x05) lifecycle events:
//! [Thread_TypeGroup1](https://learn.microsoft.com/windows/win32/etw/thread-typegroup1).
//!
//! Versions 2–4 share the prefix ProcessId, TThreadId, StackBase, StackLimit,
//! UserStackBase, UserStackLimit, then `StartAddr` (V2) or `Affinity` (V3+),
//! Win32StartAddr, TebBase (all pointers), SubProcessTag (u32). V3 appends
//! four priority/flag bytes and V4 a ThreadName string: ignored. Verified on
//! the Windows 7 and 8 corpus traces (V3, 72 bytes with 8-byte pointers).

use crate::reader::{Fail, Reader};
use crate::{KernelEvent, Lifecycle, Thread};

pub(crate) fn thread(
    r: &mut Reader<'_>,
    op: Lifecycle,
    version: u8,
) -> Result<KernelEvent<'static>, Fail> {
    let process_id = r.u32("ProcessId")?;
    let thread_id = r.u32("TThreadId")?;
    let stack_base = r.ptr("StackBase")?;
    let stack_limit = r.ptr("StackLimit")?;
    let user_stack_base = r.ptr("UserStackBase")?;
    let user_stack_limit = r.ptr("UserStackLimit")?;
    // V3+ logs the affinity here instead of the start address; not kept.
    let start_or_affinity = r.ptr(if version == 2 {
        "StartAddr"
    } else {
        "Affinity"
    })?;
    let start_addr = if version == 2 { start_or_affinity } else { 0 };
    let win32_start_addr = r.ptr("Win32StartAddr")?;
    let teb_base = r.ptr("TebBase")?;
    r.u32("SubProcessTag")?;
    Ok(KernelEvent::Thread(Thread {
        op,
        process_id,
        thread_id,
        stack_base,
        stack_limit,
        user_stack_base,
        user_stack_limit,
        start_addr,
        win32_start_addr,
        teb_base,
    }))
}
