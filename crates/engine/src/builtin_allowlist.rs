//! Built-in allowlist: benign sources of rule-3 alerts that every host with
//! the software meets, recognised by the shape of their stack rather than
//! by a user entry. One recogniser today, `builtin:chromium-sandbox`.
//!
//! # Chromium/Edge sandbox interception thunks (x64)
//! What the kernel walks when a sandboxed Chrome or Edge child (renderer,
//! GPU, utility, ...) calls an intercepted NT service, from Chromium's
//! sources (`sandbox/win/src/`, read at the commits named):
//! - The broker (browser process) patches the child's ntdll stubs before the
//!   child runs (`interception.cc`, `InterceptionManager::PatchNtdll`,
//!   commit 03e13aa7). It reserves 64 KiB in the child (`VirtualAllocEx`,
//!   `MEM_RESERVE`), commits the pages it needs `PAGE_EXECUTE_READWRITE` at a
//!   random offset aligned to at least 128 bytes, and protects them
//!   `PAGE_EXECUTE_READ`: private memory, which no Image event describes.
//! - There it writes a `DllInterceptionData` (a 32-byte header on x64, then
//!   one 64-byte `ThunkData` per interception: `interception_internal.h`,
//!   commit 108c6ed8) and, in each thunk, a byte copy of the original stub
//!   (`service_resolver_64.cc`, `ServiceResolverThunk::IsFunctionAService`
//!   and `PerformPatch`, commit 1a5e19b5). The ntdll stub itself becomes
//!   `mov rax, interceptor; jmp rax` (`resolver_64.cc`).
//! - The interceptor (`TargetNtCreateFile64` and the others of
//!   `interceptors_64.cc`, commit 1e0016bf) takes the copy's address from
//!   `g_originals[id]` and first calls the copy (`filesystem_interception.cc`,
//!   `TargetNtCreateFile`: "Check if the process can open it first"); only
//!   on `STATUS_ACCESS_DENIED` does it ask the broker.
//! - The interceptors are linked into the executable: the sandbox is "a
//!   static library that must be linked to both the broker and the target
//!   executables" (`docs/design/sandbox.md`), the broker passes its own
//!   address of each interceptor (`ADD_NT_INTERCEPTION`, `interception.h`),
//!   and refuses a child whose main image is not at its own module's base
//!   (`target_process.cc`, `TargetProcess::Create`:
//!   `SBOX_ERROR_INVALID_TARGET_BASE_ADDRESS`).
//!
//! So the stack at the `syscall` is: `U` = the copy's return site in the
//! private thunk page (the copied Windows 10 1511+ stub has `syscall` at
//! +0x12, so `U` is thunk + 0x14: 0x34 modulo 64 from the page; 0x3e for
//! the Windows 8 / 10 1507 stub, `syscall` at +0x1c; 0x2a for Windows 7's,
//! at +0x08), `C` = the interceptor in `chrome.exe`/`msedge.exe` right after
//! its call to the copy, then whoever called the ntdll stub (kernelbase,
//! the loader in ntdll for `NtMapViewOfSection`, ...), since the patched
//! stub jumps and leaves no frame. Rule 3 calls that `direct`/`unbacked`.
//!
//! A 32-bit Chrome on 64-bit Windows (WoW64) copies the 32-bit stub, which
//! calls WoW64's transition (`service_resolver_32.cc`, `Wow64W10ResolverThunk`,
//! commit 09875653): the `syscall` is then the native ntdll stub's, called
//! by `wow64.dll`, and the rules find nothing to suppress. Native 32-bit
//! Windows (`sysenter` in `ntdll!KiFastSystemCall`) is not modelled by the
//! rules at all (docs/verdicts.md, "Address spaces").
//!
//! # What is required, and what an attacker can borrow
//! All of: verdict `direct`/`unbacked` (rule 3, native process); the
//! process image named `chrome.exe` or `msedge.exe`; `C` in an image of
//! that same name (the browser's own executable); `U` at a thunk return
//! site (`U` modulo 64 as above); the service, when its name is known
//! (`--system-dlls`: the routine's export at `SysCallAddress`), one the
//! sandbox intercepts; and, where a signer lookup is supplied (`live`), the
//! executable signed by the browser's publisher. Offline a name can be
//! borrowed: an implant named `chrome.exe` that spoofs its return address
//! into its own image and places its `syscall` at such an offset passes.
//! Injected shellcode in a real browser whose own code makes the call
//! (`C` unbacked or in chrome.dll) does not. Every suppression is counted
//! ([`BuiltinStats`]), listed with `--per-syscall`
//! (`allowlist: "builtin:chromium-sandbox"`), and `--no-builtin-allowlist`
//! turns it off.

use std::sync::Arc;

use crate::allowlist::Allowlist;
use crate::classify::{Outcome, Reason, Verdict};
use crate::state::{Module, ModuleMap, ProcessInfo};
use crate::sysdlls::SystemDlls;

/// The name a built-in suppression reports (`allowlist` in JSON lines).
pub const CHROMIUM_SANDBOX: &str = "builtin:chromium-sandbox";

/// Entry indices from here on are built-in recognisers, not user entries
/// (a user list holds fewer than [`Allowlist::MAX_ENTRIES`]).
pub const BUILTIN_ENTRY_BASE: usize = Allowlist::MAX_ENTRIES;

/// The entry index of the Chromium sandbox recogniser.
pub const CHROMIUM_SANDBOX_ENTRY: usize = BUILTIN_ENTRY_BASE;

/// The built-in name of a suppression's entry index, if it is built in.
pub fn builtin_name(entry: usize) -> Option<&'static str> {
    (entry == CHROMIUM_SANDBOX_ENTRY).then_some(CHROMIUM_SANDBOX)
}

/// Browsers whose executable hosts Chromium's sandbox interceptors, with
/// the Authenticode signer (subject CN) their release builds carry.
pub const BROWSERS: [(&str, &str); 2] = [
    ("chrome.exe", "Google LLC"),
    ("msedge.exe", "Microsoft Corporation"),
];

/// NT services Chromium's sandbox intercepts with service thunks on x64:
/// `interceptors_64.cc` (commit 1e0016bf: file system, process and thread,
/// tokens, sections), plus the registry and event interceptions of older
/// builds (the same file at an earlier commit: `TargetNtOpenKeyEx64`,
/// `TargetNtOpenEvent64`).
pub const INTERCEPTED_SERVICES: [&str; 20] = [
    "NtCreateFile",
    "NtOpenFile",
    "NtQueryAttributesFile",
    "NtQueryFullAttributesFile",
    "NtSetInformationFile",
    "NtMapViewOfSection",
    "NtUnmapViewOfSection",
    "NtCreateSection",
    "NtOpenProcess",
    "NtOpenThread",
    "NtOpenProcessToken",
    "NtOpenProcessTokenEx",
    "NtOpenThreadToken",
    "NtOpenThreadTokenEx",
    "NtSetInformationThread",
    "NtCreateKey",
    "NtOpenKey",
    "NtOpenKeyEx",
    "NtCreateEvent",
    "NtOpenEvent",
];

/// `U` modulo 64 at a thunk's return site, per copied stub layout
/// (Windows 10 1511+, Windows 8 / 10 1507, Windows 7).
pub const THUNK_RETURN_SITES: [u64; 3] = [0x34, 0x3e, 0x2a];

/// The signer of a module file (its NT path as the Image event logged it):
/// `Some(subject)` when it could be read, `None` when not known.
pub type SignerLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Which built-in recognisers run, and what they may consult.
#[derive(Clone)]
pub struct BuiltinAllowlist {
    /// Off with `--no-builtin-allowlist`.
    pub enabled: bool,
    /// The executable's Authenticode signer, where a host can tell it
    /// (`live`, with the module files on disk); without it the signer is
    /// counted as not checked.
    pub signer: Option<SignerLookup>,
}

impl Default for BuiltinAllowlist {
    fn default() -> Self {
        BuiltinAllowlist {
            enabled: true,
            signer: None,
        }
    }
}

impl BuiltinAllowlist {
    /// Nothing built in.
    pub fn disabled() -> Self {
        BuiltinAllowlist {
            enabled: false,
            signer: None,
        }
    }
}

impl std::fmt::Debug for BuiltinAllowlist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltinAllowlist")
            .field("enabled", &self.enabled)
            .field("signer", &self.signer.is_some())
            .finish()
    }
}

/// Counters of `builtin:chromium-sandbox` (statistics, `--stats-json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChromiumSandboxStats {
    /// Syscalls suppressed (each also in `suppressed`).
    pub suppressed: u64,
    /// Of those, the service was named and found in the intercepted set.
    pub service_checked: u64,
    /// Of those, the service had no name (no `--system-dlls`, or a routine
    /// the kernel does not export): not checked.
    pub service_not_checked: u64,
    /// Of those, the executable's signer was read and matched.
    pub signer_checked: u64,
    /// Of those, no signer was known (offline, or the lookup failed).
    pub signer_not_checked: u64,
    /// The thunk shape, but a named service the sandbox does not
    /// intercept: the alert stands.
    pub rejected_service: u64,
    /// The thunk shape, but another signer: the alert stands.
    pub rejected_signer: u64,
}

/// Counters of every built-in recogniser.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BuiltinStats {
    pub chromium_sandbox: ChromiumSandboxStats,
}

impl BuiltinStats {
    pub fn suppressed(&self) -> u64 {
        self.chromium_sandbox.suppressed
    }
}

/// The browser signer an executable of this name must carry.
fn browser(process: &str) -> Option<&'static str> {
    BROWSERS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(process))
        .map(|b| b.1)
}

/// The routine's name at `SysCallAddress`, when the kernel module holding it
/// was matched to a supplied image (as rule 5 names it).
fn service_name<'a>(
    kernel: &ModuleMap,
    system_dlls: Option<&'a SystemDlls>,
    address: u64,
) -> Option<&'a str> {
    let sys = system_dlls?;
    let m = kernel.find(address)?;
    let d = sys.dlls.get(m.system_dll?)?;
    d.export_at(u32::try_from(address - m.base).ok()?)
        .map(|s| &**s)
}

/// `Nt`/`Zw` name the same service.
fn intercepted(name: &str) -> bool {
    name.strip_prefix("Zw")
        .or_else(|| name.strip_prefix("Nt"))
        .is_some_and(|bare| INTERCEPTED_SERVICES.iter().any(|s| &s[2..] == bare))
}

/// Decides `builtin:chromium-sandbox` for one `direct`/`unbacked` syscall
/// (`u`: its first user frame), counting the result. `Some(entry)` when
/// suppressed. Out of line and given plain values (no `Context` to spill):
/// rule 3's alerts are rare, the per-syscall path only tests the verdict.
#[cold]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn chromium_sandbox(
    cfg: &BuiltinAllowlist,
    stats: &mut ChromiumSandboxStats,
    process: Option<&ProcessInfo>,
    outcome: &Outcome<'_>,
    kernel: &ModuleMap,
    system_dlls: Option<&SystemDlls>,
    kernel_boundary: u64,
    u: u64,
    service_address: u64,
) -> Option<usize> {
    if !cfg.enabled
        || outcome.verdict != Verdict::Direct
        || outcome.reason != Some(Reason::Unbacked)
    {
        return None;
    }
    let p = process?;
    let signer = browser(&p.image_file_name)?;
    let c: &Module = outcome.caller_module?;
    if !c.name.eq_ignore_ascii_case(&p.image_file_name)
        || !THUNK_RETURN_SITES.contains(&(u % 64))
        || kernel_boundary != 0xFFFF_8000_0000_0000
    {
        return None;
    }
    let service = service_name(kernel, system_dlls, service_address);
    if service.is_some_and(|s| !intercepted(s)) {
        stats.rejected_service += 1;
        return None;
    }
    let signed = cfg.signer.as_ref().and_then(|f| f(&c.path));
    if signed.as_deref().is_some_and(|s| s != signer) {
        stats.rejected_signer += 1;
        return None;
    }
    stats.suppressed += 1;
    if service.is_some() {
        stats.service_checked += 1;
    } else {
        stats.service_not_checked += 1;
    }
    if signed.is_some() {
        stats.signer_checked += 1;
    } else {
        stats.signer_not_checked += 1;
    }
    Some(CHROMIUM_SANDBOX_ENTRY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nt_and_zw_names_are_intercepted_alike() {
        assert!(intercepted("NtCreateFile"));
        assert!(intercepted("ZwCreateFile"));
        assert!(intercepted("NtOpenKeyEx"));
        assert!(!intercepted("NtAllocateVirtualMemory"));
        assert!(!intercepted("NtProtectVirtualMemory"));
        assert!(!intercepted("CreateFile"));
    }

    #[test]
    fn builtin_entries_are_beyond_any_user_list() {
        assert_eq!(builtin_name(CHROMIUM_SANDBOX_ENTRY), Some(CHROMIUM_SANDBOX));
        assert_eq!(builtin_name(Allowlist::MAX_ENTRIES - 1), None);
        assert_eq!(builtin_name(0), None);
        assert_eq!(browser("Chrome.EXE"), Some("Google LLC"));
        assert_eq!(browser("msedge.exe"), Some("Microsoft Corporation"));
        assert_eq!(browser("chrome_proxy.exe"), None);
    }
}
