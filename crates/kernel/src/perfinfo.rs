//! PerfInfo (group 0x0F): the system-call events.
//!
//! Layouts: [SysCallEnter](https://learn.microsoft.com/windows/win32/etw/syscallenter)
//! (`SysCallAddress`, a pointer) and
//! [SysCallExit](https://learn.microsoft.com/windows/win32/etw/syscallexit)
//! (`SysCallNtStatus`, a u32). Both are logged with PERFINFO headers, which
//! carry no process or thread id.

use crate::reader::{Fail, Reader};
use crate::{KernelEvent, SysCallEnter, SysCallExit};

pub(crate) const SYSCALL_ENTER: u8 = 51;
pub(crate) const SYSCALL_EXIT: u8 = 52;

pub(crate) fn sys_call_enter(r: &mut Reader<'_>) -> Result<KernelEvent<'static>, Fail> {
    Ok(KernelEvent::SysCallEnter(SysCallEnter {
        sys_call_address: r.ptr("SysCallAddress")?,
    }))
}

pub(crate) fn sys_call_exit(r: &mut Reader<'_>) -> Result<KernelEvent<'static>, Fail> {
    Ok(KernelEvent::SysCallExit(SysCallExit {
        sys_call_ntstatus: r.u32("SysCallNtStatus")?,
    }))
}
