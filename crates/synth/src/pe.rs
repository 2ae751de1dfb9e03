//! Minimal PE images of the synthetic machine's system DLLs, so that the
//! engine's `--system-dlls` path can be tested against a trace: `ntdll.dll`
//! and `win32u.dll` export their Nt/Zw stubs (with real x64 stub bytes),
//! `ntoskrnl.exe` and `win32k.sys` export the service routines.
//! `SizeOfImage`, `TimeDateStamp` and `CheckSum` equal what the trace's
//! Image events say.
//!
//! Layout: [PE Format](https://learn.microsoft.com/windows/win32/debug/pe-format):
//! DOS header, `PE\0\0`, COFF header, optional header (PE32+ for 64-bit
//! traces, PE32 for 32-bit ones) with 16 data directories, two sections:
//! `.text` (stubs, file-backed up to the last stub) and `.edata` at the end
//! of the image (export directory, address/name/ordinal tables, names).

use std::collections::HashMap;

use crate::evasion::{
    CodeKind, CodeMap, GadgetKind, KI_USER_APC_DISPATCHER, KI_USER_CALLBACK_DISPATCHER,
    KI_USER_EXCEPTION_DISPATCHER,
};
use crate::world::{Layout, ModKind, Module, SERVICES};

const FILE_ALIGN: u32 = 0x200;
const HEADERS_SIZE: u32 = 0x400;

/// The x64 stub: `mov r10,rcx; mov eax,SSN; test byte [7FFE0308h],1; jne
/// +3; syscall; ret; int 2Eh; ret; nop` (32 bytes, `syscall` at +0x12).
pub fn stub_bytes(ssn: u16) -> [u8; 32] {
    let s = ssn.to_le_bytes();
    [
        0x4C, 0x8B, 0xD1, 0xB8, s[0], s[1], 0x00, 0x00, 0xF6, 0x04, 0x25, 0x08, 0x03, 0xFE, 0x7F,
        0x01, 0x75, 0x03, 0x0F, 0x05, 0xC3, 0xCD, 0x2E, 0xC3, 0x0F, 0x1F, 0x84, 0x00, 0x00, 0x00,
        0x00, 0x00,
    ]
}

/// `(file name, bytes)` for ntdll.dll, win32u.dll, ntoskrnl.exe, win32k.sys.
pub fn system_dlls(l: &Layout) -> Vec<(&'static str, Vec<u8>)> {
    let mut nt_stubs = Vec::new();
    let mut w32_stubs = Vec::new();
    let mut nt_routines = Vec::new();
    let mut w32_routines = Vec::new();
    for s in SERVICES {
        let rva = |m: &Module| (l.stub(s) - m.base) as u32;
        if s.is_win32k() {
            w32_stubs.push((s.name.to_string(), rva(&l.win32u), s.ssn));
            w32_routines.push((s.name.to_string(), Layout::routine_rva(s) as u32, s.ssn));
        } else {
            nt_stubs.push((s.name.to_string(), rva(&l.ntdll), s.ssn));
            nt_stubs.push((format!("Zw{}", &s.name[2..]), rva(&l.ntdll), s.ssn));
            nt_routines.push((s.name.to_string(), Layout::routine_rva(s) as u32, s.ssn));
        }
    }
    nt_stubs.push((
        "RtlUserThreadStart".into(),
        (Layout::RTL_USER_THREAD_START - 0x21) as u32,
        0,
    ));
    vec![
        (
            "ntdll.dll",
            image(l, &l.ntdll, "ntdll.dll", &nt_stubs, true),
        ),
        (
            "win32u.dll",
            image(l, &l.win32u, "win32u.dll", &w32_stubs, true),
        ),
        (
            "ntoskrnl.exe",
            image(l, l.ntoskrnl(), "ntoskrnl.exe", &nt_routines, false),
        ),
        (
            "win32k.sys",
            image(l, l.win32k(), "win32k.sys", &w32_routines, false),
        ),
    ]
}

/// The user-mode system DLLs of the layout as a copy of the host's
/// `System32` (and `SysWOW64`) for `analyze --images`: `(relative path,
/// bytes)`. Every return address the trace used ([`CodeMap`]) gets the bytes
/// its kind says: a `call` ending right before a genuine return address
/// (forms vary with the address, so every decoder path is exercised end to
/// end), the gadget or faulting bytes the techniques use, and nothing for
/// `wow64cpu.dll` (its frames are where 32-bit code re-enters 64-bit mode,
/// not calls). ntdll and win32u also hold their stubs and exports,
/// including the `KiUser*Dispatcher` entry points.
pub fn images(l: &Layout, code: &CodeMap) -> Vec<(String, Vec<u8>)> {
    let mut by_module: HashMap<usize, Vec<(u32, CodeKind)>> = HashMap::new();
    let mods = user_modules(l);
    for (&addr, &kind) in code {
        if let Some(i) = mods
            .iter()
            .position(|(_, m, _)| addr >= m.base && addr - m.base < m.size)
        {
            by_module
                .entry(i)
                .or_default()
                .push(((addr - mods[i].1.base) as u32, kind));
        }
    }
    let mut nt_exports = Vec::new();
    let mut w32_exports = Vec::new();
    for s in SERVICES {
        if s.is_win32k() {
            w32_exports.push((
                s.name.to_string(),
                (l.stub(s) - l.win32u.base) as u32,
                s.ssn,
            ));
        } else {
            let rva = (l.stub(s) - l.ntdll.base) as u32;
            nt_exports.push((s.name.to_string(), rva, s.ssn));
            nt_exports.push((format!("Zw{}", &s.name[2..]), rva, s.ssn));
        }
    }
    for (name, rva) in [
        ("RtlUserThreadStart", Layout::RTL_USER_THREAD_START - 0x21),
        ("KiUserExceptionDispatcher", KI_USER_EXCEPTION_DISPATCHER),
        ("KiUserCallbackDispatcher", KI_USER_CALLBACK_DISPATCHER),
        ("KiUserApcDispatcher", KI_USER_APC_DISPATCHER),
    ] {
        nt_exports.push((name.to_string(), rva as u32, 0));
    }
    // The 32-bit ntdll of WoW64 exports its dispatchers at the same RVAs.
    let nt32_exports: Vec<(String, u32, u16)> = nt_exports
        .iter()
        .filter(|e| e.0.starts_with("KiUser"))
        .cloned()
        .collect();
    let k32_exports = vec![(
        "BaseThreadInitThunk".to_string(),
        (Layout::BASE_THREAD_INIT_THUNK - 0x14) as u32,
        0,
    )];
    let mut out = Vec::new();
    for (i, (dir, m, pe64)) in mods.iter().enumerate() {
        let mut sites = by_module.remove(&i).unwrap_or_default();
        sites.sort_unstable_by_key(|s| s.0);
        let no_calls = m.kind == ModKind::Wow64Cpu;
        let patches = code_patches(&sites, *pe64, no_calls);
        let (exports, stubs): (&[(String, u32, u16)], bool) = match m.kind {
            ModKind::Ntdll => (&nt_exports, true),
            ModKind::Win32u => (&w32_exports, true),
            ModKind::Kernel32 => (&k32_exports, false),
            ModKind::Ntdll32 => (&nt32_exports, false),
            _ => (&[], false),
        };
        let name = m.file_name().to_string();
        let bytes = image_with(
            m,
            &name.to_ascii_lowercase(),
            exports,
            stubs,
            *pe64,
            &patches,
        );
        out.push((format!("{dir}/{name}"), bytes));
    }
    out
}

/// `(folder, module, PE32+)` of every user-mode system DLL of the layout.
fn user_modules(l: &Layout) -> Vec<(&'static str, &Module, bool)> {
    let pe64 = l.pointer_size == 8;
    let mut v = vec![
        ("System32", &l.ntdll, pe64),
        ("System32", &l.kernel32, pe64),
        ("System32", &l.kernelbase, pe64),
        ("System32", &l.win32u, pe64),
        ("System32", &l.user32, pe64),
        ("System32", &l.gdi32, pe64),
    ];
    v.extend(l.others.iter().map(|m| ("System32", m, pe64)));
    if let Some(w) = &l.wow64 {
        for m in w {
            let wow = matches!(
                m.kind,
                ModKind::Ntdll32 | ModKind::Kernel32Wow | ModKind::KernelBaseWow
            );
            v.push(if wow {
                ("SysWOW64", m, false)
            } else {
                ("System32", m, true)
            });
        }
    }
    v
}

/// Call forms written before genuine return addresses: `(bytes, 64-bit)`.
/// Displacements avoid `E8`/`FF` bytes so that no other call decodes into
/// the following addresses.
const CALLS_64: &[&[u8]] = &[
    &[0xE8, 0x10, 0x32, 0x04, 0x00],                   // call rel32
    &[0xFF, 0x15, 0x22, 0x6A, 0x0B, 0x00],             // call [rip+disp32] (import)
    &[0xFF, 0xD0],                                     // call rax
    &[0x41, 0xFF, 0xD2],                               // call r10
    &[0xFF, 0x50, 0x18],                               // call [rax+18h] (vtable)
    &[0xFF, 0x54, 0x24, 0x28],                         // call [rsp+28h]
    &[0x48, 0xFF, 0x15, 0x5A, 0x31, 0x02, 0x00],       // rex.w call [rip+disp32]
    &[0x3E, 0xFF, 0xD3],                               // notrack call rbx
    &[0x41, 0xFF, 0x94, 0xC4, 0x30, 0x01, 0x00, 0x00], // call [r12+rax*8+130h]
];
const CALLS_32: &[&[u8]] = &[
    &[0xE8, 0x10, 0x32, 0x04, 0x00],
    &[0xFF, 0x15, 0x2C, 0x11, 0x01, 0x10], // call [abs32] (import)
    &[0xFF, 0xD6],                         // call esi
    &[0xFF, 0x50, 0x18],
    &[0xFF, 0x14, 0x85, 0x40, 0x12, 0x00, 0x10], // call [eax*4+abs32]
    &[0xFF, 0x55, 0x08],                         // call [ebp+8]
];

/// The bytes for sorted `(rva, kind)` sites. Genuine return addresses at
/// least 16 apart each get their own `call`; closer ones get the longest
/// form that fits after the previous site.
fn code_patches(sites: &[(u32, CodeKind)], pe64: bool, no_calls: bool) -> Vec<(u32, Vec<u8>)> {
    let calls = if pe64 { CALLS_64 } else { CALLS_32 };
    let mut out = Vec::new();
    let mut free_from = 0u32;
    for &(rva, kind) in sites {
        match kind {
            CodeKind::Return if !no_calls => {
                let room = rva.saturating_sub(free_from) as usize;
                let pick = calls[(rva as usize / 16) % calls.len()];
                let c = if pick.len() <= room {
                    Some(pick)
                } else {
                    calls
                        .iter()
                        .filter(|c| c.len() <= room)
                        .max_by_key(|c| c.len())
                        .copied()
                };
                if let Some(c) = c {
                    out.push((rva - c.len() as u32, c.to_vec()));
                }
                free_from = rva;
            }
            CodeKind::Gadget(g) => {
                // mov rbx,[rsp+30h] (no call can end at the gadget), then it.
                let mut b = vec![0x48, 0x8B, 0x5C, 0x24, 0x30];
                b.extend_from_slice(match g {
                    GadgetKind::JmpRbx => &[0xFF, 0x23],
                    GadgetKind::PushRet => &[0x53, 0xC3],
                });
                out.push((rva - 5, b));
                free_from = rva + 2;
            }
            CodeKind::Fault => {
                // mov eax,[rcx] (the access that faulted), after a `nop`.
                out.push((rva - 1, vec![0x90, 0x8B, 0x01]));
                free_from = rva + 2;
            }
            CodeKind::Return => {
                // wow64cpu: the code there, but no call before it.
                out.push((rva.saturating_sub(2), vec![0x90, 0x90]));
                free_from = rva;
            }
            CodeKind::Keep => free_from = rva,
        }
    }
    out
}

fn align(v: u32, a: u32) -> u32 {
    v.div_ceil(a) * a
}

/// One image; `exports` are `(name, rva, ssn)`; with `stubs` the stub bytes
/// are written at the export RVAs of names starting with `Nt`.
fn image(
    l: &Layout,
    m: &Module,
    dll_name: &str,
    exports: &[(String, u32, u16)],
    stubs: bool,
) -> Vec<u8> {
    image_with(m, dll_name, exports, stubs, l.pointer_size == 8, &[])
}

/// [`image`] with the bitness given and code `patches` (`(rva, bytes)`)
/// written into `.text` after the stubs.
fn image_with(
    m: &Module,
    dll_name: &str,
    exports: &[(String, u32, u16)],
    stubs: bool,
    pe64: bool,
    patches: &[(u32, Vec<u8>)],
) -> Vec<u8> {
    let size_of_image = m.size as u32;
    // .edata: the last 0x1000-aligned pages of the image.
    let mut sorted: Vec<&(String, u32, u16)> = exports.iter().collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let n = sorted.len() as u32;
    let names_len: u32 =
        sorted.iter().map(|e| e.0.len() as u32 + 1).sum::<u32>() + dll_name.len() as u32 + 1;
    let edata_len = 40 + 4 * n + 4 * n + 2 * n + names_len;
    let edata_vsize = align(edata_len, 0x1000);
    let edata_rva = size_of_image - edata_vsize;
    let text_rva = 0x1000u32;
    let text_vsize = edata_rva - text_rva;
    let text_end = if stubs {
        exports
            .iter()
            .map(|e| e.1 + 0x20)
            .max()
            .unwrap_or(text_rva)
            .max(text_rva + 0x10)
    } else {
        text_rva + 0x10
    }
    .max(
        patches
            .iter()
            .map(|p| p.0 + p.1.len() as u32)
            .max()
            .unwrap_or(0),
    );
    let text_raw = align(text_end - text_rva, FILE_ALIGN);
    let text_ptr = HEADERS_SIZE;
    let edata_raw = align(edata_len, FILE_ALIGN);
    let edata_ptr = text_ptr + text_raw;
    let mut f = vec![0u8; (edata_ptr + edata_raw) as usize];
    let put16 = |f: &mut Vec<u8>, o: usize, v: u16| f[o..o + 2].copy_from_slice(&v.to_le_bytes());
    let put32 = |f: &mut Vec<u8>, o: usize, v: u32| f[o..o + 4].copy_from_slice(&v.to_le_bytes());
    let put64 = |f: &mut Vec<u8>, o: usize, v: u64| f[o..o + 8].copy_from_slice(&v.to_le_bytes());
    // DOS header.
    f[0] = b'M';
    f[1] = b'Z';
    put32(&mut f, 0x3C, 0x40);
    // PE signature + COFF header.
    f[0x40..0x44].copy_from_slice(b"PE\0\0");
    let coff = 0x44;
    put16(&mut f, coff, if pe64 { 0x8664 } else { 0x014C });
    put16(&mut f, coff + 2, 2);
    put32(&mut f, coff + 4, m.time_date_stamp);
    let opt_size: u16 = if pe64 { 0xF0 } else { 0xE0 };
    put16(&mut f, coff + 16, opt_size);
    let dll = dll_name.ends_with(".dll");
    let chars = 0x0002 | if pe64 { 0x0020 } else { 0x0100 } | if dll { 0x2000 } else { 0 };
    put16(&mut f, coff + 18, chars);
    // Optional header.
    let o = coff + 20;
    put16(&mut f, o, if pe64 { 0x20B } else { 0x10B });
    f[o + 2] = 14; // linker version
    put32(&mut f, o + 4, text_raw); // SizeOfCode
    put32(&mut f, o + 8, edata_raw); // SizeOfInitializedData
    put32(&mut f, o + 16, 0); // AddressOfEntryPoint (none)
    put32(&mut f, o + 20, text_rva); // BaseOfCode
    let rest = if pe64 {
        put64(&mut f, o + 24, m.base);
        o + 32
    } else {
        put32(&mut f, o + 24, edata_rva); // BaseOfData
        put32(&mut f, o + 28, m.base as u32);
        o + 32
    };
    put32(&mut f, rest, 0x1000); // SectionAlignment
    put32(&mut f, rest + 4, FILE_ALIGN);
    put16(&mut f, rest + 8, 10); // OS version 10.0
    put16(&mut f, rest + 16, 10); // subsystem version 10.0
    put32(&mut f, rest + 24, size_of_image);
    put32(&mut f, rest + 28, HEADERS_SIZE);
    put32(&mut f, rest + 32, m.checksum);
    put16(&mut f, rest + 36, if dll { 3 } else { 1 }); // Windows CUI / native
    put16(&mut f, rest + 38, 0x4160); // DllCharacteristics: dynamic base, NX, high-entropy VA, guard CF
    let (stack_heap, dirs) = if pe64 {
        (rest + 40, rest + 40 + 32 + 8)
    } else {
        (rest + 40, rest + 40 + 16 + 8)
    };
    if pe64 {
        put64(&mut f, stack_heap, 0x4_0000);
        put64(&mut f, stack_heap + 8, 0x1000);
        put64(&mut f, stack_heap + 16, 0x10_0000);
        put64(&mut f, stack_heap + 24, 0x1000);
    } else {
        put32(&mut f, stack_heap, 0x4_0000);
        put32(&mut f, stack_heap + 4, 0x1000);
        put32(&mut f, stack_heap + 8, 0x10_0000);
        put32(&mut f, stack_heap + 12, 0x1000);
    }
    put32(&mut f, dirs - 4, 16); // NumberOfRvaAndSizes
    put32(&mut f, dirs, edata_rva); // export directory
    put32(&mut f, dirs + 4, edata_len);
    debug_assert_eq!(dirs + 16 * 8, o + usize::from(opt_size));
    // Section table.
    let sec = o + usize::from(opt_size);
    let section = |f: &mut Vec<u8>,
                   at: usize,
                   name: &[u8],
                   vsize: u32,
                   rva: u32,
                   raw: u32,
                   ptr: u32,
                   ch: u32| {
        f[at..at + name.len()].copy_from_slice(name);
        f[at + 8..at + 12].copy_from_slice(&vsize.to_le_bytes());
        f[at + 12..at + 16].copy_from_slice(&rva.to_le_bytes());
        f[at + 16..at + 20].copy_from_slice(&raw.to_le_bytes());
        f[at + 20..at + 24].copy_from_slice(&ptr.to_le_bytes());
        f[at + 36..at + 40].copy_from_slice(&ch.to_le_bytes());
    };
    section(
        &mut f,
        sec,
        b".text",
        text_vsize,
        text_rva,
        text_raw,
        text_ptr,
        0x6000_0020,
    );
    section(
        &mut f,
        sec + 40,
        b".edata",
        edata_vsize,
        edata_rva,
        edata_raw,
        edata_ptr,
        0x4000_0040,
    );
    // Stub bytes.
    if stubs {
        for (name, rva, ssn) in exports {
            if name.starts_with("Nt") {
                let at = (text_ptr + rva - text_rva) as usize;
                f[at..at + 32].copy_from_slice(&stub_bytes(*ssn));
            }
        }
    }
    for (rva, bytes) in patches {
        let at = (text_ptr + rva - text_rva) as usize;
        f[at..at + bytes.len()].copy_from_slice(bytes);
    }
    // Export directory.
    let e = edata_ptr as usize;
    let funcs = edata_rva + 40;
    let names = funcs + 4 * n;
    let ords = names + 4 * n;
    let mut str_rva = ords + 2 * n;
    let dll_name_rva = str_rva;
    put32(&mut f, e + 4, m.time_date_stamp);
    put32(&mut f, e + 12, dll_name_rva);
    put32(&mut f, e + 16, 1); // ordinal base
    put32(&mut f, e + 20, n);
    put32(&mut f, e + 24, n);
    put32(&mut f, e + 28, funcs);
    put32(&mut f, e + 32, names);
    put32(&mut f, e + 36, ords);
    let file_of = |rva: u32| (edata_ptr + rva - edata_rva) as usize;
    let at = file_of(str_rva);
    f[at..at + dll_name.len()].copy_from_slice(dll_name.as_bytes());
    str_rva += dll_name.len() as u32 + 1;
    for (i, (name, rva, _)) in sorted.iter().enumerate() {
        let i32_ = i as u32;
        put32(&mut f, file_of(funcs + 4 * i32_), *rva);
        put32(&mut f, file_of(names + 4 * i32_), str_rva);
        put16(&mut f, file_of(ords + 2 * i32_), i as u16);
        let at = file_of(str_rva);
        f[at..at + name.len()].copy_from_slice(name.as_bytes());
        str_rva += name.len() as u32 + 1;
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }

    /// Walks the export table with the PE format rules (not the writer's
    /// code): name -> RVA.
    fn exports(f: &[u8]) -> (u32, u32, Vec<(String, u32)>) {
        let pe = u32_at(f, 0x3C) as usize;
        assert_eq!(&f[pe..pe + 4], b"PE\0\0");
        let nsec = u16::from_le_bytes([f[pe + 6], f[pe + 7]]) as usize;
        let tds = u32_at(f, pe + 8);
        let opt = pe + 24;
        let opt_size = u16::from_le_bytes([f[pe + 20], f[pe + 21]]) as usize;
        let pe64 = u16::from_le_bytes([f[opt], f[opt + 1]]) == 0x20B;
        let size_of_image = u32_at(f, opt + 56);
        let dirs = opt + if pe64 { 112 } else { 96 };
        let exp_rva = u32_at(f, dirs);
        let secs = opt + opt_size;
        let to_off = |rva: u32| -> usize {
            for s in 0..nsec {
                let h = secs + 40 * s;
                let (vs, va, raw, ptr) = (
                    u32_at(f, h + 8),
                    u32_at(f, h + 12),
                    u32_at(f, h + 16),
                    u32_at(f, h + 20),
                );
                if rva >= va && rva < va + vs.max(raw) {
                    return (ptr + rva - va) as usize;
                }
            }
            panic!("rva {rva:#x} outside sections");
        };
        let d = to_off(exp_rva);
        let n = u32_at(f, d + 24) as usize;
        let (fa, na, oa) = (
            to_off(u32_at(f, d + 28)),
            to_off(u32_at(f, d + 32)),
            to_off(u32_at(f, d + 36)),
        );
        let mut v = Vec::new();
        for i in 0..n {
            let s = to_off(u32_at(f, na + 4 * i));
            let end = f[s..].iter().position(|&c| c == 0).unwrap();
            let ord = u16::from_le_bytes([f[oa + 2 * i], f[oa + 2 * i + 1]]) as usize;
            v.push((
                String::from_utf8(f[s..s + end].to_vec()).unwrap(),
                u32_at(f, fa + 4 * ord),
            ));
        }
        (size_of_image, tds, v)
    }

    #[test]
    fn exports_match_the_layout_for_both_pointer_sizes() {
        for ps in [8u8, 4] {
            let l = Layout::new(ps);
            let dlls = system_dlls(&l);
            let (size, tds, ex) = exports(&dlls[0].1);
            assert_eq!(u64::from(size), l.ntdll.size);
            assert_eq!(tds, l.ntdll.time_date_stamp);
            let names: Vec<&String> = ex.iter().map(|e| &e.0).collect();
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(names, sorted, "export names must be sorted");
            let s = &SERVICES[crate::world::service_index("NtAllocateVirtualMemory")];
            let rva = ex
                .iter()
                .find(|e| e.0 == "NtAllocateVirtualMemory")
                .unwrap()
                .1;
            assert_eq!(l.ntdll.base + u64::from(rva), l.stub(s));
            let zw = ex
                .iter()
                .find(|e| e.0 == "ZwAllocateVirtualMemory")
                .unwrap()
                .1;
            assert_eq!(zw, rva);
            // The stub bytes: syscall (0F 05) at +0x12.
            let f = &dlls[0].1;
            let off = 0x400 + rva as usize - 0x1000;
            assert_eq!(&f[off..off + 4], &[0x4C, 0x8B, 0xD1, 0xB8]);
            assert_eq!(u16::from_le_bytes([f[off + 4], f[off + 5]]), s.ssn);
            assert_eq!(&f[off + 0x12..off + 0x14], &[0x0F, 0x05]);
            // ntoskrnl: the routine names at the SysCallAddress RVAs.
            let (size, tds, ex) = exports(&dlls[2].1);
            assert_eq!(u64::from(size), l.ntoskrnl().size);
            assert_eq!(tds, l.ntoskrnl().time_date_stamp);
            let r = ex
                .iter()
                .find(|e| e.0 == "NtAllocateVirtualMemory")
                .unwrap()
                .1;
            assert_eq!(l.ntoskrnl().base + u64::from(r), l.routine(s));
            // win32u / win32k.
            let g = &SERVICES[crate::world::service_index("NtUserGetMessage")];
            let (_, _, ex) = exports(&dlls[1].1);
            let r = ex.iter().find(|e| e.0 == "NtUserGetMessage").unwrap().1;
            assert_eq!(l.win32u.base + u64::from(r), l.stub(g));
            let (_, _, ex) = exports(&dlls[3].1);
            let r = ex.iter().find(|e| e.0 == "NtUserGetMessage").unwrap().1;
            assert_eq!(l.win32k().base + u64::from(r), l.routine(g));
        }
    }
}
