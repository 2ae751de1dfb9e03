//! The x64 exception directory (`.pdata`): which function a code address
//! lies in, so that a return address can be tied to the function that made
//! the call (the proxied-call rule asks whether that function *begins* at
//! an exported API).
//!
//! Format, from [x64 exception handling](https://learn.microsoft.com/cpp/build/exception-handling-x64)
//! and [PE Format, "The .pdata Section"](https://learn.microsoft.com/windows/win32/debug/pe-format#the-pdata-section):
//! data directory 3 holds an array of `RUNTIME_FUNCTION` (`BeginAddress`,
//! `EndAddress`, `UnwindInfoAddress`: RVAs, 12 bytes) sorted by
//! `BeginAddress`. Every function that calls another (so every function a
//! return address can point into) has an entry; leaf functions may not. A
//! function split into several ranges (hot/cold parts) has one entry per
//! range: the `UNWIND_INFO` of a secondary range has `UNW_FLAG_CHAININFO`
//! (0x4) and, after its unwind codes (`CountOfCodes` rounded up to even,
//! two bytes each), the `RUNTIME_FUNCTION` of the range it continues. An
//! `UnwindInfoAddress` with bit 0 set (`RUNTIME_FUNCTION_INDIRECT` in the
//! SDK's and mingw-w64's `winnt.h`) points at another `RUNTIME_FUNCTION`
//! instead of unwind data. Both are followed, at most [`CHAIN_MAX`] steps,
//! to the primary entry, whose `BeginAddress` is where the function begins.
//!
//! Nothing is copied: the table is read in place from the file's bytes,
//! checked once (sorted, each range non-empty) when the image is parsed; a
//! table that fails the check is ignored (every answer is then "no table",
//! i.e. the check is not done). PE32 images have no such table.

use crate::{u32_at, Image};

/// Steps followed from a range to its primary function at most (a loop in
/// a hostile file ends here as [`FunctionStart::Unresolved`]).
pub const CHAIN_MAX: usize = 32;

/// Entries read at most: about 12 MiB of table, far above any system DLL
/// (Windows 11's ntdll has about 5,000, large application DLLs some
/// 200,000). Entries past it are ignored (their addresses get `NotFound`).
pub const MAX_FUNCTIONS: usize = 1 << 20;

const ENTRY: usize = 12;
const UNW_FLAG_CHAININFO: u8 = 0x4;
const RUNTIME_FUNCTION_INDIRECT: u32 = 0x1;

/// What the exception directory says of an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FunctionStart {
    /// The function holding the address begins at this RVA.
    At(u32),
    /// No entry covers the address (a leaf function, or not code).
    NotFound,
    /// An entry covers it, but its chain could not be followed (damaged,
    /// out of the file, or longer than [`CHAIN_MAX`]).
    Unresolved,
    /// The image has no (usable) table: PE32, or none in the file.
    NoTable,
}

/// The located table: where its entries start in the file, and how many.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Table {
    file: usize,
    count: usize,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    begin: u32,
    end: u32,
    unwind: u32,
}

fn entry_in(b: &[u8], at: usize) -> Option<Entry> {
    Some(Entry {
        begin: u32_at(b, at)?,
        end: u32_at(b, at.checked_add(4)?)?,
        unwind: u32_at(b, at.checked_add(8)?)?,
    })
}

impl Table {
    /// The table of the directory at `rva` (`size` bytes), if its entries
    /// are file-backed, sorted and non-empty ranges.
    pub(crate) fn locate(img: &Image, rva: u32, size: u32) -> Option<Table> {
        let s = img.section(rva)?;
        let file = s.file.checked_add((rva - s.rva) as usize)?;
        let in_section = (s.len - (rva - s.rva)) as usize;
        let bytes = (size as usize).min(in_section);
        let count = (bytes / ENTRY).min(MAX_FUNCTIONS);
        if count == 0 || file.checked_add(count * ENTRY)? > img.bytes.len() {
            return None;
        }
        let t = Table { file, count };
        let mut prev_end = 0u32;
        for i in 0..count {
            let e = t.entry(img, i)?;
            if e.begin >= e.end || e.begin < prev_end {
                return None;
            }
            prev_end = e.end;
        }
        Some(t)
    }

    pub(crate) fn len(&self) -> usize {
        self.count
    }

    fn entry(&self, img: &Image, i: usize) -> Option<Entry> {
        entry_in(&img.bytes, self.file + i * ENTRY)
    }

    /// The entry covering `rva`, resolved to its primary function.
    pub(crate) fn function_start(&self, img: &Image, rva: u32) -> FunctionStart {
        // Binary search: the first entry beginning after `rva`.
        let (mut lo, mut hi) = (0usize, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.entry(img, mid) {
                Some(e) if e.begin <= rva => lo = mid + 1,
                Some(_) => hi = mid,
                None => return FunctionStart::Unresolved,
            }
        }
        let Some(e) = lo.checked_sub(1).and_then(|i| self.entry(img, i)) else {
            return FunctionStart::NotFound;
        };
        if rva >= e.end {
            return FunctionStart::NotFound;
        }
        primary(img, e).map_or(FunctionStart::Unresolved, FunctionStart::At)
    }
}

/// Follows indirect entries and chained unwind info to the primary range.
fn primary(img: &Image, mut e: Entry) -> Option<u32> {
    for _ in 0..CHAIN_MAX {
        if e.unwind & RUNTIME_FUNCTION_INDIRECT != 0 {
            e = entry_in(
                img.bytes_at(e.unwind & !RUNTIME_FUNCTION_INDIRECT, ENTRY)?,
                0,
            )?;
            continue;
        }
        let h = img.bytes_at(e.unwind, 4)?;
        let (version, flags) = (*h.first()? & 0x7, *h.first()? >> 3);
        if !(1..=2).contains(&version) {
            return None;
        }
        if flags & UNW_FLAG_CHAININFO == 0 {
            return Some(e.begin);
        }
        let codes = (u32::from(*h.get(2)?) + 1) & !1;
        let at = e.unwind.checked_add(4 + 2 * codes)?;
        e = entry_in(img.bytes_at(at, ENTRY)?, 0)?;
    }
    None
}
