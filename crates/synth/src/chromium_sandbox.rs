//! Chromium/Edge sandboxed processes and their interception thunks (the
//! `chromium-sandbox` scenario), modelled on Chromium's `sandbox/win/src`
//! (see the engine's `builtin_allowlist.rs` for the sources and lines):
//!
//! - A browser process (`chrome.exe`, `msedge.exe`) starts its children
//!   (renderers, GPU, utility: `--type=...`) from the same executable, which
//!   the broker requires at its own base, and writes into each child a
//!   private, executable thunk page: a 32-byte header (16 on x86), then one
//!   64-byte slot per intercepted service holding a byte copy of the
//!   service's ntdll stub.
//! - An intercepted call (`NtCreateFile`, `NtOpenFile`, `NtMapViewOfSection`
//!   for a DLL load, ...) jumps from the patched ntdll stub to the
//!   interceptor in the executable, which first calls the copy. On x64 the
//!   `syscall` is the copy's: `U` = slot + 0x14 in unbacked memory, `C` = the
//!   interceptor in `chrome.exe`, then the API layer (kernelbase, or ntdll's
//!   loader for section maps) and chrome.dll. Truth: `normal`, suppressed by
//!   `builtin:chromium-sandbox` (`"suppressed"` in the truth entry).
//! - A 32-bit Chrome on 64-bit Windows copies the WoW64 stub, whose
//!   `call edx` enters WoW64's transition: the `syscall` is the native
//!   ntdll stub's, and the copy is a 32-bit frame under `wow64cpu`. Truth:
//!   `normal`, nothing suppressed.
//! - Attacks in the same browsers: shellcode in a renderer making its own
//!   `syscall` (sometimes at a thunk-like offset, called by itself), and an
//!   exploit running in chrome.dll calling a thunk-shaped `syscall` of an
//!   intercepted service. Both `direct`/`unbacked`: the caller is not the
//!   browser's executable.

use std::io::{Seek, Write};

use crate::world::{self, ModKind, Module, ProcKind, SERVICES};
use crate::{site, tail, Call, Gen, Scenario, SynthError, Tech};

/// Technique of the benign thunk syscalls (x64): the engine suppresses them.
pub const THUNK_TECHNIQUE: &str = "chromium-sandbox-thunk";
/// What suppresses them (the truth entry's `suppressed`).
pub const SUPPRESSED_BY: &str = "builtin:chromium-sandbox";

/// The techniques of this module (`Tech::Chromium`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cr {
    /// An intercepted call in a 64-bit sandboxed child, through its thunk.
    Thunk,
    /// The same in a 32-bit child on WoW64.
    ThunkWow64,
    /// Shellcode in a renderer making its own `syscall`.
    Shellcode,
    /// An exploit in chrome.dll calling a thunk-shaped `syscall`.
    ExploitInDll,
}

impl Cr {
    /// Needs a WoW64 process (64-bit traces only).
    pub fn needs_wow64(self) -> bool {
        self == Cr::ThunkWow64
    }
}

/// The services the children call through thunks, with weights, in the
/// order of their thunk slots.
const THUNK_SERVICES: [(&str, u32); 8] = [
    ("NtCreateFile", 30),
    ("NtOpenFile", 15),
    ("NtQueryAttributesFile", 25),
    ("NtCreateSection", 5),
    ("NtOpenThreadToken", 5),
    ("NtSetInformationThread", 5),
    ("NtMapViewOfSection", 10),
    ("NtUnmapViewOfSection", 5),
];

/// The browsers: executable, its directory, main DLL, ELF DLL.
struct Browser {
    name: &'static str,
    dir: &'static str,
    dll: &'static str,
    elf: &'static str,
    exe_base: u64,
    dll_base: u64,
    elf_base: u64,
}

const VOL: &str = "\\Device\\HarddiskVolume3";

const CHROME: Browser = Browser {
    name: "chrome.exe",
    dir: "Program Files\\Google\\Chrome\\Application",
    dll: "120.0.6099.130\\chrome.dll",
    elf: "120.0.6099.130\\chrome_elf.dll",
    exe_base: 0x7ff7_1a2b_0000,
    dll_base: 0x7ffa_a000_0000,
    elf_base: 0x7ffa_b000_0000,
};

const EDGE: Browser = Browser {
    name: "msedge.exe",
    dir: "Program Files (x86)\\Microsoft\\Edge\\Application",
    dll: "120.0.2210.91\\msedge.dll",
    elf: "120.0.2210.91\\msedge_elf.dll",
    exe_base: 0x7ff6_e340_0000,
    dll_base: 0x7ffa_8000_0000,
    elf_base: 0x7ffa_b100_0000,
};

/// A 32-bit Chrome (an old install in `Program Files (x86)`).
const CHROME32: Browser = Browser {
    name: "chrome.exe",
    dir: "Program Files (x86)\\Google\\Chrome\\Application",
    dll: "120.0.6099.130\\chrome.dll",
    elf: "120.0.6099.130\\chrome_elf.dll",
    exe_base: 0x0112_0000,
    dll_base: 0x6a00_0000,
    elf_base: 0x7300_0000,
};

/// The browser's pid (parent of its children), first child pid.
const CHROME_PID: u32 = 7_100;
const EDGE_PID: u32 = 8_200;
const CHROME32_PID: u32 = 8_600;

fn module(path: String, base: u64, size: u64, tds: u32) -> Module {
    Module {
        kind: ModKind::OtherDll,
        base,
        size,
        path,
        time_date_stamp: tds,
        checksum: (size as u32).wrapping_mul(0x9E37) ^ tds,
    }
}

impl Browser {
    fn exe(&self, wow: bool) -> Module {
        let size = if wow { 0x24_0000 } else { 0x29_e000 };
        Module {
            kind: ModKind::Exe,
            ..module(
                format!("{VOL}\\{}\\{}", self.dir, self.name),
                self.exe_base,
                size,
                0x6570_1c2a,
            )
        }
    }

    fn dlls(&self, wow: bool) -> [Module; 2] {
        let big = if wow { 0x0900_0000 } else { 0x0c00_0000 };
        [
            module(
                format!("{VOL}\\{}\\{}", self.dir, self.dll),
                self.dll_base,
                big,
                0x6570_1b9e,
            ),
            module(
                format!("{VOL}\\{}\\{}", self.dir, self.elf),
                self.elf_base,
                0x18_0000,
                0x6570_1a03,
            ),
        ]
    }
}

/// Per-mille shares of the `chromium-sandbox` scenario.
pub(crate) fn plan() -> Vec<(Tech, u32)> {
    vec![
        (Tech::Chromium(Cr::Thunk), 250),
        (Tech::Chromium(Cr::ThunkWow64), 60),
        (Tech::Chromium(Cr::Shellcode), 20),
        (Tech::Chromium(Cr::ExploitInDll), 15),
    ]
}

/// The mixed scenario's browser: a desktop's busiest application, whose
/// sandboxed children open files and map DLLs through their thunks
/// (benign only; the attacks are in `chromium-sandbox`).
pub(crate) fn mixed() -> Vec<(Tech, u32)> {
    vec![(Tech::Chromium(Cr::Thunk), 30)]
}

/// Whether a scenario needs a 64-bit trace for this module's techniques.
pub(crate) fn needs_64_bit(s: Scenario) -> bool {
    s == Scenario::ChromiumSandbox
}

impl<W: Write + Seek, T: Write> Gen<W, T> {
    /// Starts the browsers and their sandboxed children (x64 only: a
    /// 32-bit trace is native x86 Windows, which is not modelled).
    pub(crate) fn start_chromium(&mut self) -> Result<(), SynthError> {
        let crs: Vec<Cr> = self
            .attack
            .iter()
            .filter_map(|a| match a.0 {
                Tech::Chromium(c) => Some(c),
                _ => None,
            })
            .collect();
        if crs.is_empty() || self.ps() != 8 {
            return Ok(());
        }
        let children: &[&str] = &[
            "--type=renderer",
            "--type=renderer",
            "--type=renderer",
            "--type=gpu-process",
            "--type=utility --utility-sub-type=network.mojom.NetworkService",
        ];
        self.start_browser(&CHROME, CHROME_PID, false, children)?;
        self.start_browser(&EDGE, EDGE_PID, false, &children[..3])?;
        if crs.contains(&Cr::ThunkWow64) {
            self.start_browser(&CHROME32, CHROME32_PID, true, &children[..2])?;
        }
        Ok(())
    }

    /// The browser process, then its children from the same executable at
    /// the same base, each with the browser's DLLs.
    fn start_browser(
        &mut self,
        b: &Browser,
        pid: u32,
        wow: bool,
        children: &[&str],
    ) -> Result<(), SynthError> {
        let exe = b.exe(wow);
        let (parent_kind, child_kind) = if wow {
            (ProcKind::Wow64, ProcKind::Wow64)
        } else {
            (ProcKind::Gui, ProcKind::Native)
        };
        let cl = |args: &str| format!("\"C:\\{}\\{}\" {args}", b.dir, b.name);
        self.start_one(b, pid, 4520, parent_kind, cl(""), &exe, wow)?;
        for (k, args) in children.iter().enumerate() {
            let child = pid + 4 * (k as u32 + 1);
            self.start_one(b, child, pid, child_kind, cl(args), &exe, wow)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn start_one(
        &mut self,
        b: &Browser,
        pid: u32,
        parent: u32,
        kind: ProcKind,
        command_line: String,
        exe: &Module,
        wow: bool,
    ) -> Result<(), SynthError> {
        let mut p = self.new_process(pid, parent, b.name, kind, 3);
        p.exe = Some(exe.clone());
        p.command_line = command_line;
        self.start_logged(p, b.dlls(wow).into_iter().collect())
    }

    /// A sandboxed child (parent is a browser) of the given kind.
    fn pick_child(&mut self, wow: bool) -> Option<usize> {
        let is_child = |p: &crate::world::Process| {
            matches!(p.parent, CHROME_PID | EDGE_PID | CHROME32_PID) && p.is_wow64() == wow
        };
        let n = self.procs.iter().filter(|p| is_child(p)).count();
        if n == 0 {
            return None;
        }
        let k = self.rng.below(n);
        self.procs
            .iter()
            .enumerate()
            .filter(|(_, p)| is_child(p))
            .nth(k)
            .map(|(i, _)| i)
    }

    /// Builds one syscall of this module into `user`.
    pub(crate) fn build_chromium(&mut self, cr: Cr, user: &mut Vec<u64>) -> Option<(usize, Call)> {
        if self.ps() != 8 {
            return None;
        }
        let wow = cr.needs_wow64();
        let pi = self.pick_child(wow)?;
        let weights: Vec<u32> = THUNK_SERVICES.iter().map(|s| s.1).collect();
        let slot = self.rng.weighted(&weights) as u64;
        let attack = self.attack_service();
        let half = self.rng.chance(500);
        let (l, p) = (&self.l, &self.procs[pi]);
        let browser = match p.parent {
            EDGE_PID => &EDGE,
            CHROME32_PID => &CHROME32,
            _ => &CHROME,
        };
        let [dll, _elf] = browser.dlls(wow);
        let exe = p.exe.as_ref()?;
        let pid = u64::from(p.pid);
        // The thunk page: private, page-aligned; the header at a random
        // 128-byte-aligned offset in it (fixed per process).
        let block = p.private.0 + 0x2_0000 + (pid * 0x9E37 % 16) * 0x80;
        let service = world::service_index(THUNK_SERVICES[slot as usize].0);
        let salt = service as u64 * 1000 + pid;
        let (s, verdict, reason, technique) = match cr {
            Cr::Thunk => {
                user.push(block + 32 + 64 * slot + 0x14);
                // The interceptor (`TargetNtXxx`) after its call to the copy,
                // and now and then its `...64` wrapper.
                user.push(site(exe, 0x9000 + slot));
                if salt % 2 == 0 {
                    user.push(site(exe, 0x9100 + slot));
                }
                // The patched stub jumped: next is who called ntdll.
                if matches!(
                    THUNK_SERVICES[slot as usize].0,
                    "NtMapViewOfSection" | "NtUnmapViewOfSection" | "NtCreateSection"
                ) {
                    user.push(l.ntdll.base + 0x3_0000 + (salt * 0x1d3) % 0x6_0000 + 1);
                    user.push(l.ntdll.base + 0x3_1000 + (salt * 0x2b1) % 0x6_0000 + 1);
                }
                user.push(site(&l.kernelbase, salt));
                for k in 0..1 + salt % 3 {
                    user.push(site(&dll, salt + k));
                }
                tail(l, p, user, 2, salt);
                (service, "normal", None, THUNK_TECHNIQUE)
            }
            Cr::ThunkWow64 => {
                let [wow64, _, wow64cpu, ntdll32, k32, kb32] = l.wow64.as_ref()?;
                user.push(l.return_site(&SERVICES[service]));
                user.push(site(wow64, salt));
                user.push(wow64.base + 0x7783);
                user.push(wow64cpu.base + 0x1783);
                user.push(wow64cpu.base + 0x1199);
                // 32-bit side: the copied WoW64 stub's `call edx` returns at
                // +0x0c (16-byte header on x86), then the interceptor.
                user.push(block + 16 + 64 * slot + 0x0c);
                user.push(site(exe, 0x9000 + slot));
                user.push(site(kb32, salt));
                user.push(site(&dll, salt));
                user.push(k32.base + 0x1_fa29);
                user.push(ntdll32.base + 0x6_e7bd);
                user.push(ntdll32.base + 0x6_e78d);
                (service, "normal", None, "chromium-sandbox-thunk-wow64")
            }
            Cr::Shellcode => {
                // Its own `syscall`; half of the time at a thunk-like offset
                // (0x34 modulo 64), which is not enough.
                let u = if half {
                    p.private.0 + 0x3_0000 + 64 * (attack as u64 % 32) + 0x34
                } else {
                    p.private.0 + 0x3_0000 + u64::from(SERVICES[attack].ssn) * 0x18 + 0x12
                };
                user.push(u);
                user.push(p.private.0 + 0x3_2a1);
                user.push(p.private.0 + 0x3_10c4);
                user.push(site(&dll, salt));
                tail(l, p, user, 1, salt);
                (attack, "direct", Some("unbacked"), "shellcode-in-browser")
            }
            Cr::ExploitInDll => {
                // A thunk-shaped `syscall` of an intercepted service, called
                // by code in chrome.dll (a hijacked function pointer): the
                // caller is not the executable's interceptor.
                user.push(p.private.0 + 0x3_8000 + 32 + 64 * slot + 0x14);
                user.push(site(&dll, 0x7_7000 + slot));
                user.push(site(&dll, salt));
                tail(l, p, user, 2, salt);
                (
                    service,
                    "direct",
                    Some("unbacked"),
                    "browser-exploit-syscall",
                )
            }
        };
        Some((
            pi,
            Call {
                service: s,
                verdict,
                reason,
                technique,
                module: None,
                alt: None,
                flags: &[],
                access: None,
                target: None,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The thunk return sites the generator writes sit where the engine
    /// looks for them: 0x34 modulo 64 (a 128-aligned header of 32 bytes,
    /// 64-byte slots, `syscall` at +0x12 of the copied stub).
    #[test]
    fn thunk_return_sites_are_0x34_modulo_64() {
        for pid in [7_104u64, 7_108, 8_204, 123_456] {
            for slot in 0..THUNK_SERVICES.len() as u64 {
                let block = 0x0000_01d0_0000_0000 + 0x2_0000 + (pid * 0x9E37 % 16) * 0x80;
                assert_eq!((block + 32 + 64 * slot + 0x14) % 64, 0x34);
                assert!((block % 0x1000) + 32 + 64 * slot + 0x20 <= 0x1000);
            }
        }
    }
}
