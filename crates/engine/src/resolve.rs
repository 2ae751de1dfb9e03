//! Addresses as people read them: `module+0xoffset`, `module!Export+0xoffset`
//! inside a supplied system DLL, or bare hex when unbacked, as seen by one
//! process (user addresses) and the kernel.

use crate::state::{Module, ModuleMap, ProcessInfo, State};
use crate::sysdlls::SystemDlls;

/// Describes addresses as `module+0xoffset`, or `module!Export+0xoffset`
/// inside a supplied system DLL, or a bare hex address when unbacked.
#[derive(Clone, Copy)]
pub struct Resolver<'a> {
    pub modules: Option<&'a ModuleMap>,
    pub kernel: &'a ModuleMap,
    pub kernel_boundary: u64,
    pub system_dlls: Option<&'a SystemDlls>,
}

impl<'a> Resolver<'a> {
    /// Addresses as seen by `process` (user mode) and the kernel.
    pub(crate) fn of(
        process: Option<&'a ProcessInfo>,
        state: &'a State,
        kernel_boundary: u64,
        system_dlls: Option<&'a SystemDlls>,
    ) -> Resolver<'a> {
        Resolver {
            modules: process.map(|p| &p.modules),
            kernel: state.kernel_modules(),
            kernel_boundary,
            system_dlls,
        }
    }

    pub fn module_of(&self, addr: u64) -> Option<&'a Module> {
        if addr >= self.kernel_boundary {
            self.kernel.find(addr)
        } else {
            self.modules?.find(addr)
        }
    }

    pub fn describe(&self, addr: u64) -> String {
        match self.module_of(addr) {
            Some(m) => describe_in(&m.name, m.base, m.system_dll, self.system_dlls, addr),
            None => {
                let mut s = String::with_capacity(18);
                push_hex(&mut s, addr);
                s
            }
        }
    }
}

/// `addr` in the module `name` loaded at `base`: `name+0xoffset`, or
/// `name!Export+0xoffset` inside a supplied system DLL.
pub(crate) fn describe_in(
    name: &str,
    base: u64,
    system_dll: Option<usize>,
    system_dlls: Option<&SystemDlls>,
    addr: u64,
) -> String {
    let off = addr.wrapping_sub(base);
    if let (Some(i), Some(sys)) = (system_dll, system_dlls) {
        if let Some((export, d)) = sys
            .dlls
            .get(i)
            .and_then(|d| d.export_near(u32::try_from(off).ok()?))
        {
            return format!("{name}!{export}+{d:#x}");
        }
    }
    // Evidence is built for every new alert group: no `format!` here.
    let mut s = String::with_capacity(name.len() + 19);
    s.push_str(name);
    s.push('+');
    push_hex(&mut s, off);
    s
}

/// Appends `v` as `{:#x}` would.
pub(crate) fn push_hex(s: &mut String, v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    s.push_str("0x");
    let n = (64 - v.leading_zeros()).div_ceil(4).max(1);
    for i in (0..n).rev() {
        s.push(char::from(DIGITS[((v >> (4 * i)) & 0xF) as usize]));
    }
}

#[cfg(test)]
mod hex_tests {
    #[test]
    fn push_hex_matches_format() {
        for v in [0u64, 1, 0xf, 0x10, 0x9d1f4, 0xffff_f803_1234_5678, u64::MAX] {
            let mut s = String::new();
            super::push_hex(&mut s, v);
            assert_eq!(s, format!("{v:#x}"));
        }
    }
}
