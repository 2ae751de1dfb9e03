//! System DLLs supplied with `--system-dlls DIR`: the exports of `ntdll.dll`
//! and `win32u.dll` (stub names and exact syscall return sites) and of
//! `ntoskrnl.exe` / `win32k*.sys` (service routine names).
//!
//! A trace module is tied to one of these files by file name, `SizeOfImage`
//! and `TimeDateStamp` (both logged in Image events), so a DLL from another
//! build is never trusted. PE layout:
//! [PE Format](https://learn.microsoft.com/windows/win32/debug/pe-format).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use object::pe::{ImageNtHeaders32, ImageNtHeaders64};
use object::read::pe::{ImageNtHeaders, ImageOptionalHeader, PeFile};
use object::{LittleEndian as LE, Object, ObjectSection};

/// One supplied system DLL or kernel image.
#[derive(Debug, Clone)]
pub struct SystemDll {
    /// Lower-case file name, e.g. `ntdll.dll`.
    pub name: String,
    pub size_of_image: u32,
    pub time_date_stamp: u32,
    /// Return-site RVA (right after `syscall`) -> stub name, for `Nt*`/`Zw*`
    /// exports whose code holds a `syscall` (0F 05) in its first 0x20 bytes.
    pub return_sites: HashMap<u32, Arc<str>>,
    /// Export RVA -> name (an `Nt` name is preferred over a `Zw` alias).
    pub exports: BTreeMap<u32, Arc<str>>,
    /// RVAs `[start, end)` of `KiUserExceptionDispatcher`, if exported
    /// ([`sentry_images::export_span`]).
    pub exception_dispatcher: Option<(u32, u32)>,
}

/// All supplied DLLs.
#[derive(Debug, Clone, Default)]
pub struct SystemDlls {
    pub dlls: Vec<SystemDll>,
}

/// The files looked for in the directory.
pub const SYSTEM_DLL_NAMES: &[&str] = &[
    "ntdll.dll",
    "win32u.dll",
    "ntoskrnl.exe",
    "win32k.sys",
    "win32kbase.sys",
    "win32kfull.sys",
];

impl SystemDlls {
    /// Loads whichever of [`SYSTEM_DLL_NAMES`] exist in `dir` (case-insensitive).
    pub fn load_dir(dir: &Path) -> Result<SystemDlls, String> {
        let mut dlls = Vec::new();
        let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in rd.flatten() {
            let fname = entry.file_name().to_string_lossy().to_ascii_lowercase();
            if !SYSTEM_DLL_NAMES.contains(&fname.as_str()) {
                continue;
            }
            let path = entry.path();
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            dlls.push(
                SystemDll::parse(&fname, &bytes).map_err(|e| format!("{}: {e}", path.display()))?,
            );
        }
        if dlls.is_empty() {
            return Err(format!(
                "{}: none of {} found",
                dir.display(),
                SYSTEM_DLL_NAMES.join(", ")
            ));
        }
        Ok(SystemDlls { dlls })
    }

    /// The DLL matching a trace image by name, size and TimeDateStamp.
    pub fn find(&self, file_name: &str, image_size: u64, time_date_stamp: u32) -> Option<usize> {
        self.dlls.iter().position(|d| {
            d.name.eq_ignore_ascii_case(file_name)
                && u64::from(d.size_of_image) == image_size
                && d.time_date_stamp == time_date_stamp
        })
    }
}

impl SystemDll {
    /// Parses a PE32 or PE32+ image.
    pub fn parse(name: &str, bytes: &[u8]) -> Result<SystemDll, String> {
        match object::FileKind::parse(bytes).map_err(|e| e.to_string())? {
            object::FileKind::Pe64 => parse_pe::<ImageNtHeaders64>(name, bytes),
            object::FileKind::Pe32 => parse_pe::<ImageNtHeaders32>(name, bytes),
            k => Err(format!("not a PE image ({k:?})")),
        }
    }

    /// The export whose address is exactly `rva`.
    pub fn export_at(&self, rva: u32) -> Option<&Arc<str>> {
        self.exports.get(&rva)
    }

    /// The nearest export at or below `rva`, with the offset from it.
    pub fn export_near(&self, rva: u32) -> Option<(&Arc<str>, u32)> {
        let (&a, n) = self.exports.range(..=rva).next_back()?;
        Some((n, rva - a))
    }
}

fn parse_pe<H: ImageNtHeaders>(name: &str, bytes: &[u8]) -> Result<SystemDll, String> {
    let pe = PeFile::<H>::parse(bytes).map_err(|e| e.to_string())?;
    let nt = pe.nt_headers();
    let size_of_image = nt.optional_header().size_of_image();
    let time_date_stamp = nt.file_header().time_date_stamp.get(LE);
    let image_base = pe.relative_address_base();
    let mut exports: BTreeMap<u32, Arc<str>> = BTreeMap::new();
    let mut return_sites = HashMap::new();
    for e in pe.exports().map_err(|e| e.to_string())? {
        let Ok(n) = std::str::from_utf8(e.name()) else {
            continue;
        };
        let Some(rva) = e
            .address()
            .checked_sub(image_base)
            .and_then(|r| u32::try_from(r).ok())
        else {
            continue;
        };
        let n: Arc<str> = Arc::from(n);
        let better = match exports.get(&rva) {
            None => true,
            Some(old) => !old.starts_with("Nt") && n.starts_with("Nt"),
        };
        if better {
            exports.insert(rva, n.clone());
        }
        if n.starts_with("Nt") || n.starts_with("Zw") {
            if let Some(code) = code_at(&pe, e.address(), 0x20) {
                if let Some(pos) = code.windows(2).position(|w| w == [0x0f, 0x05]) {
                    let site = rva + pos as u32 + 2;
                    let entry = return_sites.entry(site).or_insert_with(|| n.clone());
                    if !entry.starts_with("Nt") && n.starts_with("Nt") {
                        *entry = n.clone();
                    }
                }
            }
        }
    }
    Ok(SystemDll {
        name: name.to_ascii_lowercase(),
        size_of_image,
        time_date_stamp,
        return_sites,
        exception_dispatcher: sentry_images::export_span(
            &exports,
            sentry_images::EXCEPTION_DISPATCHER,
        ),
        exports,
    })
}

fn code_at<'d, H: ImageNtHeaders>(pe: &PeFile<'d, H>, va: u64, len: u64) -> Option<&'d [u8]> {
    for s in pe.sections() {
        let start = s.address();
        if va >= start && va < start + s.size() {
            let avail = (start + s.size() - va).min(len);
            return s.data_range(va, avail).ok().flatten();
        }
    }
    None
}
