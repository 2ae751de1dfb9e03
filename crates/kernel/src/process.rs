//! Process (group 0x03) lifecycle events:
//! [Process_TypeGroup1](https://learn.microsoft.com/windows/win32/etw/process-typegroup1).
//!
//! | version | fields |
//! |---|---|
//! | 2 (XP–Vista) | UniqueProcessKey (ptr), ProcessId, ParentId, SessionId, ExitStatus, UserSID, ImageFileName, CommandLine |
//! | 3 (Win7) | as 2 with DirectoryTableBase (ptr) after ExitStatus |
//! | 4 (Win8+) | as 3 with Flags (u32) after DirectoryTableBase; PackageFullName, ApplicationId after CommandLine |
//! | 5 (Win10 Defunct) | as 4 plus ExitTime (u64): tail ignored |
//!
//! Verified on the corpus: every Process event of the Windows 7 (V3), 8 (V4)
//! and 10 (V4, Defunct V5) traces is consumed to its last byte by this
//! layout (V5 leaves exactly the 8-byte ExitTime).

use crate::reader::{Fail, Reader};
use crate::{KernelEvent, Lifecycle, Process};

pub(crate) fn process(
    r: &mut Reader<'_>,
    op: Lifecycle,
    version: u8,
) -> Result<KernelEvent<'static>, Fail> {
    let unique_process_key = r.ptr("UniqueProcessKey")?;
    let process_id = r.u32("ProcessId")?;
    let parent_id = r.u32("ParentId")?;
    let session_id = r.u32("SessionId")?;
    let exit_status = r.u32("ExitStatus")? as i32;
    let directory_table_base = if version >= 3 {
        r.ptr("DirectoryTableBase")?
    } else {
        0
    };
    let flags = if version >= 4 {
        Some(r.u32("Flags")?)
    } else {
        None
    };
    let user_sid = r.user_sid()?;
    let image_file_name = r.ansiz("ImageFileName", false)?;
    let v4 = version >= 4;
    let command_line = r.utf16z("CommandLine", !v4)?;
    let (package_full_name, application_id) = if v4 {
        (
            r.utf16z("PackageFullName", false)?,
            r.utf16z("ApplicationId", true)?,
        )
    } else {
        (String::new(), String::new())
    };
    Ok(KernelEvent::Process(Process {
        op,
        unique_process_key,
        process_id,
        parent_id,
        session_id,
        exit_status,
        directory_table_base,
        flags,
        user_sid,
        image_file_name,
        command_line,
        package_full_name,
        application_id,
    }))
}
