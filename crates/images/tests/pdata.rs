//! The x64 exception directory (`Image::function_start`): against real
//! binaries (Wine's x64 builds of kernelbase, kernel32 and ntdll, whose
//! `.pdata` is read here independently with the `object` crate), against
//! the synthetic DLLs `synth --images-out` writes (a cold range chained to
//! its function), and against damaged tables (loops, unsorted entries,
//! truncation): an answer, never a panic, never an endless chain.

use std::path::Path;

use object::pe::{ImageNtHeaders64, IMAGE_DIRECTORY_ENTRY_EXCEPTION};
use object::read::pe::PeFile;
use object::LittleEndian as LE;
use sentry_images::{FunctionStart, Image};
use sentry_synth::evasion::CodeMap;
use sentry_synth::proxy_call::{self as px};
use sentry_synth::world::Layout;

const WINE: &str = "/usr/lib/x86_64-linux-gnu/wine/x86_64-windows";

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

/// `(file offset of the table, entries)` of a PE32+ file, by `object`.
fn table(f: &[u8]) -> (usize, Vec<(u32, u32, u32)>) {
    let pe = PeFile::<ImageNtHeaders64>::parse(f).unwrap();
    let d = pe
        .data_directory(IMAGE_DIRECTORY_ENTRY_EXCEPTION)
        .expect("an exception directory");
    let (rva, size) = (d.virtual_address.get(LE), d.size.get(LE));
    let off = pe
        .section_table()
        .iter()
        .find_map(|s| {
            let va = s.virtual_address.get(LE);
            let (ptr, _) = s.pe_file_range();
            (rva >= va && rva < va + s.virtual_size.get(LE)).then(|| (ptr + rva - va) as usize)
        })
        .unwrap();
    let n = size as usize / 12;
    let entries = (0..n)
        .map(|i| {
            let o = off + 12 * i;
            (u32_at(f, o), u32_at(f, o + 4), u32_at(f, o + 8))
        })
        .collect();
    (off, entries)
}

/// Every range of a real DLL answers its own begin (mingw writes no chained
/// ranges: checked), and exported APIs begin functions.
#[cfg_attr(windows, ignore)]
#[test]
fn wine_dlls_function_starts_match_their_pdata() {
    let mut total = 0;
    for (dll, apis) in [
        (
            "kernelbase.dll",
            &["VirtualAlloc", "VirtualProtect", "LoadLibraryW", "SetEvent"][..],
        ),
        ("kernel32.dll", &["WinExec"][..]),
        ("ntdll.dll", &["TpAllocWork", "RtlUserThreadStart"][..]),
    ] {
        let path = Path::new(WINE).join(dll);
        let f = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (Wine's x64 DLLs are this test's real data: apt-get install wine64)",
                path.display()
            )
        });
        let img = Image::parse(f.clone()).unwrap();
        let (_, entries) = table(&f);
        assert_eq!(img.function_count(), entries.len(), "{dll}");
        for &(begin, end, unwind) in &entries {
            assert_eq!(unwind & 1, 0, "{dll}: indirect entry");
            let flags = img.bytes_at(unwind, 1).unwrap()[0] >> 3;
            assert_eq!(flags & 4, 0, "{dll}: chained entry");
            for rva in [begin, begin + (end - begin) / 2, end - 1] {
                assert_eq!(
                    img.function_start(rva),
                    FunctionStart::At(begin),
                    "{dll} {rva:#x}"
                );
            }
        }
        // Between or outside ranges: no function.
        let gaps = entries
            .windows(2)
            .filter(|w| w[0].1 < w[1].0)
            .map(|w| w[0].1)
            .take(50);
        for rva in gaps.chain([0, entries[0].0 - 1]) {
            assert_eq!(
                img.function_start(rva),
                FunctionStart::NotFound,
                "{dll} {rva:#x}"
            );
        }
        // The APIs a proxied call hands to the thread pool begin functions.
        for api in apis {
            let pe = PeFile::<ImageNtHeaders64>::parse(&*f).unwrap();
            let e = object::Object::exports(&pe)
                .unwrap()
                .into_iter()
                .find(|e| e.name() == api.as_bytes())
                .unwrap_or_else(|| panic!("{dll}!{api} not exported"));
            let rva = (e.address() - object::Object::relative_address_base(&pe)) as u32;
            assert_eq!(
                img.function_start(rva + 1),
                FunctionStart::At(rva),
                "{dll}!{api}"
            );
            assert_eq!(img.export_at(rva).map(|n| &**n), Some(*api));
        }
        total += entries.len();
    }
    assert!(total > 2000, "{total}");
}

fn synthetic_kernelbase() -> Vec<u8> {
    let l = Layout::new(8);
    sentry_synth::pe::images(&l, &CodeMap::new())
        .into_iter()
        .find(|(p, _)| p.ends_with("KernelBase.dll"))
        .unwrap()
        .1
}

#[test]
fn a_chained_range_answers_its_primary_function() {
    let f = synthetic_kernelbase();
    let img = Image::parse(f.clone()).unwrap();
    assert_eq!(
        img.function_start(px::VIRTUAL_ALLOC_COLD_RET),
        FunctionStart::At(px::VIRTUAL_ALLOC)
    );
    assert_eq!(
        img.function_start(px::VIRTUAL_ALLOC_RET),
        FunctionStart::At(px::VIRTUAL_ALLOC)
    );
    assert_eq!(
        img.function_start(px::KERNELBASE_DLL_MAIN_RET),
        FunctionStart::At(px::KERNELBASE_DLL_MAIN)
    );
    assert!(img.export_at(px::KERNELBASE_DLL_MAIN).is_none());
    assert_eq!(img.function_start(0x1_0000), FunctionStart::NotFound);
    // PE32: no table.
    let l = Layout::new(4);
    let f32 = sentry_synth::pe::images(&l, &CodeMap::new())
        .into_iter()
        .find(|(p, _)| p.ends_with("KernelBase.dll"))
        .unwrap()
        .1;
    let img = Image::parse(f32).unwrap();
    assert_eq!(
        img.function_start(px::VIRTUAL_ALLOC_RET),
        FunctionStart::NoTable
    );
}

/// The cold range's entry index and the file offset of its unwind info.
fn cold(f: &[u8]) -> (usize, usize, Vec<(u32, u32, u32)>) {
    let (off, entries) = table(f);
    let i = entries
        .iter()
        .position(|e| e.0 == px::VIRTUAL_ALLOC_COLD)
        .unwrap();
    // The unwind info is in the same section as the table (synth writes
    // both into .edata): same RVA-to-file delta.
    let (table_rva, _) = {
        let pe = PeFile::<ImageNtHeaders64>::parse(f).unwrap();
        let d = pe.data_directory(IMAGE_DIRECTORY_ENTRY_EXCEPTION).unwrap();
        (d.virtual_address.get(LE), d.size.get(LE))
    };
    let unwind = off + (entries[i].2 - table_rva) as usize;
    (i, unwind, entries)
}

#[test]
fn an_indirect_entry_is_followed() {
    let mut f = synthetic_kernelbase();
    let (i, unwind, entries) = cold(&f);
    let (off, _) = table(&f);
    // Point the cold entry at VirtualAlloc's entry itself, bit 0 set.
    let j = entries
        .iter()
        .position(|e| e.0 == px::VIRTUAL_ALLOC)
        .unwrap();
    let table_rva = entries[i].2 - (unwind - off) as u32;
    let target = table_rva + 12 * j as u32;
    f[off + 12 * i + 8..off + 12 * i + 12].copy_from_slice(&(target | 1).to_le_bytes());
    let img = Image::parse(f).unwrap();
    assert_eq!(
        img.function_start(px::VIRTUAL_ALLOC_COLD_RET),
        FunctionStart::At(px::VIRTUAL_ALLOC)
    );
}

#[test]
fn damaged_tables_say_so() {
    let base = synthetic_kernelbase();
    // A chain that points at itself: unresolved, not a loop forever.
    let mut f = base.clone();
    let (i, unwind, entries) = cold(&f);
    let self_entry = entries[i];
    f[unwind + 4..unwind + 8].copy_from_slice(&self_entry.0.to_le_bytes());
    f[unwind + 8..unwind + 12].copy_from_slice(&self_entry.1.to_le_bytes());
    f[unwind + 12..unwind + 16].copy_from_slice(&self_entry.2.to_le_bytes());
    let img = Image::parse(f).unwrap();
    assert_eq!(
        img.function_start(px::VIRTUAL_ALLOC_COLD_RET),
        FunctionStart::Unresolved
    );
    // A bad unwind version: unresolved.
    let mut f = base.clone();
    f[unwind] = 0x20 | 7;
    let img = Image::parse(f).unwrap();
    assert_eq!(
        img.function_start(px::VIRTUAL_ALLOC_COLD_RET),
        FunctionStart::Unresolved
    );
    // Entries out of order: the table is not used.
    let mut f = base.clone();
    let (off, entries) = table(&f);
    let (a, b) = (entries[0], entries[1]);
    f[off..off + 4].copy_from_slice(&b.0.to_le_bytes());
    f[off + 4..off + 8].copy_from_slice(&b.1.to_le_bytes());
    f[off + 12..off + 16].copy_from_slice(&a.0.to_le_bytes());
    f[off + 16..off + 20].copy_from_slice(&a.1.to_le_bytes());
    let img = Image::parse(f).unwrap();
    assert_eq!(img.function_count(), 0);
    assert_eq!(
        img.function_start(px::VIRTUAL_ALLOC_RET),
        FunctionStart::NoTable
    );
    // Random damage anywhere in the table and unwind data, and files cut
    // short: an answer every time, no panic, no endless chain.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (off, entries) = table(&base);
    let span = 12 * entries.len() + 16 * entries.len();
    for round in 0..2000 {
        let mut f = base.clone();
        for _ in 0..1 + next() % 4 {
            let at = off + (next() as usize % span);
            if at < f.len() {
                f[at] = next() as u8;
            }
        }
        if round % 7 == 0 {
            let cut = off + (next() as usize % span);
            f.truncate(cut.min(f.len()));
        }
        let Ok(img) = Image::parse(f) else { continue };
        for _ in 0..20 {
            let rva = 0x2_0000 + (next() % 0x6000) as u32;
            // Terminates (chains are bounded) and does not panic; the
            // same question gets the same answer.
            assert_eq!(img.function_start(rva), img.function_start(rva));
        }
    }
}
