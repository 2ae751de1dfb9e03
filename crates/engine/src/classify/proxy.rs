//! Rule 8c (docs/verdicts.md): a proxied call, i.e. an exported API run
//! directly as a thread-pool, timer or APC callback, so that no user frame
//! lies between ntdll's callback dispatcher and the API layer (Elastic's
//! `proxy_call` behaviour; rule "Windows API via a CallBack Function" in
//! elastic/protections-artifacts, whose stacks are
//! `ntdll.dll|kernelbase.dll|ntdll.dll|kernel32.dll|ntdll.dll`).
//!
//! The stack, from `C` outward: frames in ntdll (the stub's own callers:
//! the loader under `LoadLibrary`, ...; in a WoW64 process also WoW64's
//! layer and the 32-bit ntdll, down to the 32-bit side), then a run of one
//! or more frames in the API layer (`kernelbase.dll`, `kernel32.dll` of
//! System32, or of SysWOW64 in a WoW64 process), then a frame `N` in the
//! ntdll of the same bitness that is not the stack's last. The run's
//! outermost frame `A` is where the API was entered from ntdll: the call is
//! proxied when `A` lies in a function that *begins* at an export of its
//! module (the API itself was the callback). That is decided from the x64
//! exception directory of the module's `--images` file
//! ([`sentry_images::Image::function_start`]); kernelbase's `DllMain`
//! (called by the loader), internal wrappers (an APC routine of kernelbase
//! that calls an API) and `kernel32!BaseThreadInitThunk` (the thread root,
//! excluded by name) are not exports there, or not proxies.
//!
//! Applied with `--images` only (as rule 9). Not done (counted, never
//! passed): no `--images` file matched for `A`'s module,
//! a PE32 module (x86 and WoW64's 32-bit side have no function table, and
//! the nearest export below an address is no function bound), an address
//! no table entry covers, or a chain that cannot be followed.

use sentry_images::{FunctionStart, Images};

use crate::state::{Module, ModuleKind, ModuleMap};

/// What rule 8c found: the frame `A` (index in the user part), and the
/// RVA where its function (an export) begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyFinding {
    pub api_index: usize,
    pub dispatcher_index: usize,
    pub function_rva: u32,
}

/// Rule 8c's answer for one stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyCheck {
    /// The stack does not have the shape (no API-layer run under ntdll).
    #[default]
    NoShape,
    /// The shape is there and `A`'s function was bounded: not an export
    /// (or the thread root).
    Passed,
    /// The shape is there but `A`'s function could not be bounded.
    NotDone,
    /// A proxied call.
    Found(ProxyFinding),
}

/// ASCII upper-case letters of 8 bytes made lower-case, all at once: a byte
/// in `A..=Z` (high bit clear) gets bit 5 set; every other byte is kept.
#[inline]
fn lower8(x: u64) -> u64 {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let low = x & !HIGH;
    // High bit set where the low 7 bits are >= 'A' (0x41), >= '[' (0x5B).
    let ge_a = low.wrapping_add(0x3f3f_3f3f_3f3f_3f3f);
    let gt_z = low.wrapping_add(0x2525_2525_2525_2525);
    x | ((ge_a & !gt_z & !x & HIGH) >> 2)
}

fn le8(b: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?))
}

/// `s` equals the lower-case ASCII `lit` ignoring ASCII case, for 8 to 16
/// bytes (two overlapping words: the per-frame check stays a few
/// instructions; `eq_ignore_ascii_case` was 4% of an `--images` run).
#[inline]
fn eq_lower(s: &[u8], lit: &[u8]) -> bool {
    let n = lit.len();
    debug_assert!((8..=16).contains(&n));
    s.len() == n
        && match (le8(s), le8(lit), le8(&s[n - 8..]), le8(&lit[n - 8..])) {
            (Some(a), Some(b), Some(c), Some(d)) => lower8(a) == b && lower8(c) == d,
            _ => false,
        }
}

/// `kernelbase.dll` or `kernel32.dll` in System32 (`false`) or SysWOW64
/// (`true`); `None` for any other module.
fn api_layer(m: &Module) -> Option<bool> {
    let n = m.name.as_bytes();
    let api = match n.len() {
        12 => eq_lower(n, b"kernel32.dll"),
        14 => eq_lower(n, b"kernelbase.dll"),
        _ => false,
    };
    if !api {
        return None;
    }
    let p = m.path.as_bytes();
    let dir = p.get(p.len().checked_sub(n.len() + 10)?..p.len() - n.len())?;
    if eq_lower(dir, b"\\system32\\") {
        Some(false)
    } else if eq_lower(dir, b"\\syswow64\\") {
        Some(true)
    } else {
        None
    }
}

/// The shape: indices of `A` and `N` in `user` (`user[0]` is `U`, in the
/// native ntdll). Most stacks have no ntdll frame between the caller and
/// the thread root: that is seen by comparing addresses with `U`'s module,
/// without a lookup; the API-layer frames are looked up only when such a
/// frame exists. WoW64's 32-bit side goes to [`walk`].
pub fn shape(modules: &ModuleMap, user: &[u64]) -> Option<(usize, usize)> {
    let nt = modules.find(*user.first()?)?;
    if nt.kind != ModuleKind::Ntdll {
        // `U` in win32u: its frames are not skipped.
        return walk(modules, user);
    }
    let first = (1..user.len()).find(|&k| !nt.contains(user[k]))?;
    let m = modules.find(user[first])?;
    match api_layer(m) {
        Some(false) => {}
        Some(true) => return walk(modules, user),
        None if matches!(m.kind, ModuleKind::NtdllWow64 | ModuleKind::Wow64Layer) => {
            return walk(modules, user)
        }
        None => return None,
    }
    let n = (first + 1..user.len() - 1).find(|&k| nt.contains(user[k]))?;
    for &a in &user[first + 1..n] {
        if modules.find(a).and_then(api_layer) != Some(false) {
            return None;
        }
    }
    Some((n - 1, n))
}

/// [`shape`] frame by frame: one module lookup per frame, stopping at the
/// first frame that rules the shape out.
pub fn walk(modules: &ModuleMap, user: &[u64]) -> Option<(usize, usize)> {
    // `Some(wow)` once the API-layer run has begun.
    let mut run: Option<bool> = None;
    for (j, &a) in user.iter().enumerate().skip(1) {
        let m = modules.find(a)?;
        match (run, api_layer(m)) {
            // The stub's own callers in ntdll (and, for WoW64, the way
            // down to the 32-bit side).
            (None, None)
                if matches!(
                    m.kind,
                    ModuleKind::Ntdll | ModuleKind::NtdllWow64 | ModuleKind::Wow64Layer
                ) => {}
            (None, None) => return None,
            (None, Some(w)) => run = Some(w),
            (Some(w), Some(v)) if w == v => {}
            (Some(w), _) => {
                let want = if w {
                    ModuleKind::NtdllWow64
                } else {
                    ModuleKind::Ntdll
                };
                return (m.kind == want && j + 1 < user.len()).then_some((j - 1, j));
            }
        }
    }
    None
}

/// Rule 8c over the user part of a stack.
pub fn check(images: &Images, modules: &ModuleMap, user: &[u64]) -> ProxyCheck {
    let Some((ai, ni)) = shape(modules, user) else {
        return ProxyCheck::NoShape;
    };
    let Some(m) = modules.find(user[ai]) else {
        return ProxyCheck::NotDone;
    };
    let Some(img) = m.image.and_then(|i| images.image(i).ok()) else {
        return ProxyCheck::NotDone;
    };
    let Ok(rva) = u32::try_from(user[ai] - m.base) else {
        return ProxyCheck::NotDone;
    };
    match img.function_start(rva) {
        FunctionStart::At(begin) => match img.export_at(begin) {
            Some(name) if &**name != "BaseThreadInitThunk" => ProxyCheck::Found(ProxyFinding {
                api_index: ai,
                dispatcher_index: ni,
                function_rva: begin,
            }),
            _ => ProxyCheck::Passed,
        },
        FunctionStart::NotFound | FunctionStart::Unresolved | FunctionStart::NoTable => {
            ProxyCheck::NotDone
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn module(name: &str, dir: &str, base: u64, kind: ModuleKind) -> Module {
        Module {
            base,
            size: 0x10_0000,
            name: Arc::from(name),
            path: Arc::from(format!("\\Device\\HarddiskVolume3\\Windows\\{dir}\\{name}")),
            kind,
            time_date_stamp: 0,
            system_dll: None,
            image: None,
        }
    }

    const NT: u64 = 0x7ff0_0000_0000;
    const KB: u64 = 0x7ff1_0000_0000;
    const K32: u64 = 0x7ff2_0000_0000;
    const APP: u64 = 0x7ff3_0000_0000;
    const NT32: u64 = 0x7700_0000;
    const KB32: u64 = 0x7600_0000;
    const WOW: u64 = 0x7ff4_0000_0000;

    fn map() -> ModuleMap {
        let mut m = ModuleMap::default();
        m.insert(module("ntdll.dll", "System32", NT, ModuleKind::Ntdll));
        m.insert(module("KernelBase.dll", "System32", KB, ModuleKind::Other));
        m.insert(module("kernel32.dll", "System32", K32, ModuleKind::Other));
        m.insert(module("app.dll", "Temp", APP, ModuleKind::Other));
        m.insert(module(
            "ntdll.dll",
            "SysWOW64",
            NT32,
            ModuleKind::NtdllWow64,
        ));
        m.insert(module(
            "kernelbase.dll",
            "SysWOW64",
            KB32,
            ModuleKind::Other,
        ));
        m.insert(module("wow64.dll", "System32", WOW, ModuleKind::Wow64Layer));
        m
    }

    #[test]
    fn the_shape_needs_a_run_under_ntdll_that_is_not_the_root() {
        let m = map();
        // Proxied: stub | kernelbase | ntdll (pool) | kernel32 | ntdll.
        let s = [NT + 0x14, KB + 0x10, NT + 0x200, K32 + 0x30, NT + 0x300];
        assert_eq!(shape(&m, &s), Some((1, 2)));
        // ntdll frames under the stub are skipped; a two-frame run.
        let s = [
            NT + 0x14,
            NT + 0x90,
            KB + 0x10,
            KB + 0x80,
            NT + 0x200,
            NT + 1,
        ];
        assert_eq!(shape(&m, &s), Some((3, 4)));
        // A user frame between: the callback was the application's.
        let s = [NT + 0x14, KB + 0x10, APP + 1, NT + 0x200, NT + 0x300];
        assert_eq!(shape(&m, &s), None);
        // The thread root: ntdll is the last frame.
        let s = [NT + 0x14, KB + 0x10, K32 + 0x30, NT + 0x300];
        assert_eq!(shape(&m, &s), None);
        // Unbacked after the run.
        let s = [NT + 0x14, KB + 0x10, 0x1000, NT + 0x300];
        assert_eq!(shape(&m, &s), None);
        // WoW64: the 32-bit kernelbase under the 32-bit ntdll.
        let s = [
            NT + 0x14,
            WOW + 5,
            NT32 + 0x40,
            KB32 + 9,
            NT32 + 0x50,
            NT32 + 0x60,
        ];
        assert_eq!(shape(&m, &s), Some((3, 4)));
        // ... but not under the native one (no such stack exists).
        let s = [
            NT + 0x14,
            WOW + 5,
            NT32 + 0x40,
            KB32 + 9,
            NT + 0x50,
            NT + 0x60,
        ];
        assert_eq!(shape(&m, &s), None);
        // Only ntdll: nothing to check (an Nt stub as the callback is
        // blind, docs/verdicts.md).
        let s = [NT + 0x14, NT + 0x200, NT + 0x300];
        assert_eq!(shape(&m, &s), None);
    }

    /// The address-compare path and the frame-by-frame walk agree on
    /// random stacks over every kind of module (native ntdll first, as a
    /// syscall's `U` is).
    #[test]
    fn shape_equals_the_walk() {
        let m = map();
        let bases = [NT, KB, K32, APP, NT32, KB32, WOW, 0x1000];
        let mut rng = crate::testutil::Xorshift(0x2545_F491_4F6C_DD1D);
        let mut found = 0;
        for _ in 0..200_000 {
            let len = 2 + (rng.next() % 8) as usize;
            let mut s = vec![NT + 0x14];
            for _ in 1..len {
                // Favour ntdll and the API layer so that shapes occur.
                let b = bases[match rng.next() % 12 {
                    0..=3 => 0,
                    4..=5 => 1,
                    6 => 2,
                    k => k as usize - 4,
                }];
                s.push(b + rng.next() % 0x1000);
            }
            let want = walk(&m, &s);
            assert_eq!(shape(&m, &s), want, "{s:x?}");
            found += usize::from(want.is_some());
        }
        assert!(found > 1000, "{found}");
    }

    #[test]
    fn without_a_matched_file_the_shape_is_not_done() {
        let m = map();
        let images = Images::default();
        let s = [NT + 0x14, KB + 0x10, NT + 0x200, K32 + 0x30, NT + 0x300];
        assert_eq!(check(&images, &m, &s), ProxyCheck::NotDone);
        let s = [NT + 0x14, KB + 0x10, APP + 1, NT + 0x300];
        assert_eq!(check(&images, &m, &s), ProxyCheck::NoShape);
    }

    /// The word-at-a-time comparison equals `eq_ignore_ascii_case` for
    /// every byte value in every position.
    #[test]
    fn lower8_lowers_ascii_letters_only() {
        for v in 0..=255u8 {
            for i in 0..8 {
                let mut b = [b'k'; 8];
                b[i] = v;
                let want: Vec<u8> = b.iter().map(u8::to_ascii_lowercase).collect();
                assert_eq!(
                    lower8(u64::from_le_bytes(b)).to_le_bytes().to_vec(),
                    want,
                    "{v:#x}"
                );
            }
        }
    }

    #[test]
    fn eq_lower_is_eq_ignore_ascii_case() {
        let lits: [&[u8]; 4] = [
            b"kernel32.dll",
            b"kernelbase.dll",
            b"\\system32\\",
            b"\\syswow64\\",
        ];
        let mut rng = crate::testutil::Xorshift(0x9E37_79B9_7F4A_7C15);
        for lit in lits {
            for i in 0..lit.len() {
                for v in 0..=255u8 {
                    let mut s = lit.to_vec();
                    s[i] = v;
                    assert_eq!(eq_lower(&s, lit), s.eq_ignore_ascii_case(lit), "{s:?}");
                }
            }
            for _ in 0..2000 {
                // Random case flips and random bytes.
                let s: Vec<u8> = lit
                    .iter()
                    .map(|&c| match rng.next() % 4 {
                        0 => c.to_ascii_uppercase(),
                        1 => rng.next() as u8,
                        _ => c,
                    })
                    .collect();
                assert_eq!(eq_lower(&s, lit), s.eq_ignore_ascii_case(lit), "{s:?}");
            }
            assert!(!eq_lower(&lit[1..], lit));
        }
    }

    #[test]
    fn api_layer_is_kernelbase_or_kernel32_in_a_windows_folder() {
        let k = |n: &str, d: &str| api_layer(&module(n, d, 0, ModuleKind::Other));
        assert_eq!(k("KERNELBASE.DLL", "system32"), Some(false));
        assert_eq!(k("kernel32.dll", "SysWOW64"), Some(true));
        assert_eq!(k("kernel32.dll", "Temp"), None);
        assert_eq!(k("kernel33.dll", "System32"), None);
        assert_eq!(k("ntdll.dll", "System32"), None);
    }
}
