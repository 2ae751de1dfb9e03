//! Image (group 0x14, and hook 0x030A) load/unload events:
//! [Image_Load](https://learn.microsoft.com/windows/win32/etw/image-load).
//!
//! Versions 2 and 3: ImageBase, ImageSize (pointers), ProcessId,
//! ImageCheckSum, TimeDateStamp, Reserved0 (u32; V3 splits it into
//! SignatureLevel, SignatureType u8 and a u16), DefaultBase (pointer),
//! Reserved1–4 (u32), FileName (UTF-16, NUL-terminated NT path). Later
//! versions: the same prefix, tail ignored. Verified on the Windows 7/8 (V2)
//! and 10 (V3) corpus traces.

use crate::reader::{Fail, Reader};
use crate::{Image, KernelEvent, Lifecycle};

pub(crate) fn image(r: &mut Reader<'_>, op: Lifecycle) -> Result<KernelEvent<'static>, Fail> {
    let image_base = r.ptr("ImageBase")?;
    let image_size = r.ptr("ImageSize")?;
    let process_id = r.u32("ProcessId")?;
    let image_checksum = r.u32("ImageCheckSum")?;
    let time_date_stamp = r.u32("TimeDateStamp")?;
    r.u32("Reserved0")?;
    let default_base = r.ptr("DefaultBase")?;
    r.skip(16, "Reserved1-4")?;
    let file_name = r.utf16z("FileName", true)?;
    Ok(KernelEvent::Image(Image {
        op,
        image_base,
        image_size,
        process_id,
        image_checksum,
        time_date_stamp,
        default_base,
        file_name,
    }))
}
