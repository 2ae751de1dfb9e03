//! The verdict rules of docs/verdicts.md, applied to one syscall's stack.
//!
//! Nothing here allocates: the outcome refers to modules in the state and
//! names in the supplied system DLLs.

use std::collections::HashMap;
use std::sync::Arc;

use sentry_images::{Gadget, Images, Preceded};

mod call;
pub mod exception;
pub mod nested;
pub mod proxy;

pub(crate) use call::SiteTallies;

use crate::fxhash::FxBuildHasher;
use crate::state::{Module, ModuleKind, ModuleMap, ProcessInfo};
use crate::sysdlls::SystemDlls;

/// What the engine decides for one syscall (docs/verdicts.md, "Verdict strings").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Normal,
    Direct,
    Indirect,
    KernelOrigin,
    NoStack,
    Truncated,
    /// An alert of rules 3 or 7 whose evidence is state the engine could
    /// not see (docs/verdicts.md, "What the engine could not see"): never
    /// an alert, always counted, with its reason.
    Unresolved,
}

impl Verdict {
    pub const ALL: [Verdict; 7] = [
        Verdict::Normal,
        Verdict::Direct,
        Verdict::Indirect,
        Verdict::KernelOrigin,
        Verdict::NoStack,
        Verdict::Truncated,
        Verdict::Unresolved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Normal => "normal",
            Verdict::Direct => "direct",
            Verdict::Indirect => "indirect",
            Verdict::KernelOrigin => "kernel_origin",
            Verdict::NoStack => "no_stack",
            Verdict::Truncated => "truncated",
            Verdict::Unresolved => "unresolved",
        }
    }

    pub fn parse(s: &str) -> Option<Verdict> {
        Verdict::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Direct and indirect syscalls are alerts; the rest is context.
    pub fn is_alert(self) -> bool {
        matches!(self, Verdict::Direct | Verdict::Indirect)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why a syscall is `direct`, `indirect` or `unresolved`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    Image,
    Unbacked,
    HeavensGate,
    NotReturnSite,
    StubMismatch,
    UnbackedCaller,
    /// Rule 3a: `U` is in a second ntdll/win32u (unhooking by a clone).
    ClonedStubModule,
    /// Rule 8: a WoW64 process's native stub called with no WoW64 layer
    /// frame (`wow64*.dll`) before the next module (Heaven's Gate variant).
    Wow64Bypass,
    /// Rule 9 (`--images`): a frame past `U` has no `call` before it (ROP
    /// gadget, synthetic frame).
    NotCallPreceded,
    /// Rule 8b: the API was called by an exception handler in private
    /// memory, while ntdll dispatched the exception.
    ExceptionHandler,
    /// Rule 8c (`--images`, x64): an exported API ran as a thread-pool,
    /// timer or APC callback (no user frame between ntdll's dispatcher and
    /// the API layer).
    ProxyCall,
    /// Unresolved: no start or rundown of the process was seen.
    ProcessUnknown,
    /// Unresolved: the process's `\System32\ntdll.dll` mapping was not seen.
    ModulesIncomplete,
    /// Unresolved: events may be missing between the process's start (or
    /// rundown) and the syscall.
    EventsLost,
}

impl Reason {
    pub const ALL: [Reason; 14] = [
        Reason::Image,
        Reason::Unbacked,
        Reason::HeavensGate,
        Reason::NotReturnSite,
        Reason::StubMismatch,
        Reason::UnbackedCaller,
        Reason::ClonedStubModule,
        Reason::Wow64Bypass,
        Reason::NotCallPreceded,
        Reason::ExceptionHandler,
        Reason::ProxyCall,
        Reason::ProcessUnknown,
        Reason::ModulesIncomplete,
        Reason::EventsLost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Image => "image",
            Reason::Unbacked => "unbacked",
            Reason::HeavensGate => "heavens_gate",
            Reason::NotReturnSite => "not_return_site",
            Reason::StubMismatch => "stub_mismatch",
            Reason::UnbackedCaller => "unbacked_caller",
            Reason::ClonedStubModule => "cloned_stub_module",
            Reason::Wow64Bypass => "wow64_bypass",
            Reason::NotCallPreceded => "not_call_preceded",
            Reason::ExceptionHandler => "exception_handler",
            Reason::ProxyCall => "proxy_call",
            Reason::ProcessUnknown => "process_unknown",
            Reason::ModulesIncomplete => "modules_incomplete",
            Reason::EventsLost => "events_lost",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// Service identity learned from the trace: for each syscall return site
/// (stub module kind + offset), how often each `SysCallAddress` was seen.
/// The service of a site is the most frequent address (ties: the lowest).
#[derive(Debug, Clone, Default)]
pub struct ServiceTable {
    sites: HashMap<(ModuleKind, u64), Site, FxBuildHasher>,
}

/// The services seen at one return site, and the current answer (counts
/// only grow, so only the address just counted can take the lead).
#[derive(Debug, Clone, Default)]
struct Site {
    counts: Vec<(u64, u64)>,
    best: u64,
    best_count: u64,
}

impl ServiceTable {
    pub fn new() -> ServiceTable {
        ServiceTable::default()
    }

    /// Counts one observation of `service` at return site `offset` of a stub module.
    #[inline]
    pub fn record(&mut self, kind: ModuleKind, offset: u64, service: u64) {
        self.record_n(kind, offset, service, 1);
    }

    /// Counts `n` observations at once (tallies made elsewhere).
    #[inline]
    pub fn record_n(&mut self, kind: ModuleKind, offset: u64, service: u64, n: u64) {
        if n == 0 {
            return;
        }
        let site = self.sites.entry((kind, offset)).or_default();
        let n = match site.counts.iter_mut().find(|e| e.0 == service) {
            Some(e) => {
                e.1 += n;
                e.1
            }
            None => {
                site.counts.push((service, n));
                n
            }
        };
        if n > site.best_count || (n == site.best_count && service < site.best) {
            site.best = service;
            site.best_count = n;
        }
    }

    /// The learned service of a return site.
    #[inline]
    pub fn service_of(&self, kind: ModuleKind, offset: u64) -> Option<u64> {
        if self.sites.is_empty() {
            // No hashing for the empty table (deferred learning).
            return None;
        }
        self.sites.get(&(kind, offset)).map(|s| s.best)
    }

    pub fn len(&self) -> usize {
        self.sites.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }
}

/// Everything the rules need besides the stack.
pub struct Context<'a> {
    pub process: Option<&'a ProcessInfo>,
    pub kernel: &'a ModuleMap,
    pub kernel_boundary: u64,
    pub system_dlls: Option<&'a SystemDlls>,
    pub services: &'a ServiceTable,
    /// `--images`: the module bytes rule 9 reads.
    pub images: Option<&'a Images>,
}

/// Frames a StackWalk event holds at most (`StackWalk_Event`: `Stack1` ..
/// `Stack192`,
/// <https://learn.microsoft.com/windows/win32/etw/stackwalk-event>). A
/// stack this long was cut by the logger, not by the thread.
pub const MAX_STACK_FRAMES: usize = 192;

/// The frame rule 9 found: its index in the stack and what precedes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameCheck {
    pub index: usize,
    pub preceded: Preceded,
    pub gadget: Option<Gadget>,
}

/// How far rule 9 got, for the statistics (`not done` is never `passed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BytesChecked {
    /// Frames whose bytes were read and checked.
    pub checked: u16,
    /// Frames past `U` whose bytes were not available (no image matched,
    /// unbacked, outside code), or skipped by rule (wow64cpu, the frame an
    /// exception interrupted).
    pub not_done: u16,
}

/// The rules' result with the evidence they looked at.
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    pub verdict: Verdict,
    pub reason: Option<Reason>,
    /// Index of the first user frame `U` in the stack.
    pub user_index: Option<usize>,
    pub user_module: Option<&'a Module>,
    pub caller_module: Option<&'a Module>,
    /// `U` is a syscall return site of a stub module.
    pub at_return_site: bool,
    /// The stub's name (from `--system-dlls`).
    pub stub_name: Option<&'a Arc<str>>,
    /// The service routine's name at `SysCallAddress` (from `--system-dlls`).
    pub service_name: Option<&'a Arc<str>>,
    /// The service the stub belongs to, when learned from the trace.
    pub stub_service: Option<u64>,
    /// Rule 5 was decided by export names (`--system-dlls`), not by the
    /// learned table.
    pub by_names: bool,
    /// Rule 9's finding.
    pub frame_check: Option<FrameCheck>,
    /// Rule 9's coverage (zero without `--images`).
    pub bytes: BytesChecked,
    /// Rule 8b's handler frame, when a dispatcher frame was found.
    pub handler: Option<exception::HandlerFrame>,
    /// Rule 8b's coverage.
    pub exception_check: exception::ExceptionCheck,
    /// Rule 8c's answer (`NoShape` when the rules stopped before it).
    pub proxy: proxy::ProxyCheck,
}

impl Outcome<'_> {
    fn new(verdict: Verdict) -> Self {
        Outcome {
            verdict,
            reason: None,
            user_index: None,
            user_module: None,
            caller_module: None,
            at_return_site: false,
            stub_name: None,
            service_name: None,
            stub_service: None,
            by_names: false,
            frame_check: None,
            bytes: BytesChecked::default(),
            handler: None,
            exception_check: exception::ExceptionCheck::NotReached,
            proxy: proxy::ProxyCheck::NoShape,
        }
    }
}

/// `Nt` and `Zw` name the same service.
fn same_service_name(a: &str, b: &str) -> bool {
    let strip = |s: &'_ str| -> (bool, String) {
        if let Some(r) = s.strip_prefix("Zw").or_else(|| s.strip_prefix("Nt")) {
            (true, r.to_string())
        } else {
            (false, s.to_string())
        }
    };
    let (pa, ra) = strip(a);
    let (pb, rb) = strip(b);
    if pa && pb {
        ra == rb
    } else {
        a == b
    }
}

/// Whether `U` (at `offset` in stub module `m`) is a return site, with the stub name if known.
#[inline]
fn return_site<'a>(
    system_dlls: Option<&'a SystemDlls>,
    m: &Module,
    offset: u64,
) -> (bool, Option<&'a Arc<str>>) {
    if let (Some(i), Some(sys)) = (m.system_dll, system_dlls) {
        if let Some(d) = sys.dlls.get(i) {
            let name = u32::try_from(offset)
                .ok()
                .and_then(|o| d.return_sites.get(&o));
            return (name.is_some(), name);
        }
    }
    (offset % 0x20 == 0x14, None)
}

/// Finds `U` and, if `learn` is given, records the service seen at its
/// return site. Used by the learning pass and by online learning.
pub fn learn_from(
    process: Option<&ProcessInfo>,
    stack: &[u64],
    kernel_boundary: u64,
    system_dlls: Option<&SystemDlls>,
    service_address: u64,
    table: &mut ServiceTable,
) {
    let Some(ui) = stack.iter().position(|&a| a < kernel_boundary) else {
        return;
    };
    // A nested kernel-mode call's `U` is the outer call's stub.
    if nested::is_nested(&stack[..ui]) {
        return;
    }
    let u = stack[ui];
    let Some(m) = process.and_then(|p| p.modules.find(u)) else {
        return;
    };
    if !m.kind.is_stub_module() {
        return;
    }
    let offset = u - m.base;
    if return_site(system_dlls, m, offset).0 {
        let key = crate::source::audit::site_key(offset, service_address);
        table.record(m.kind, key, service_address);
    }
}

/// Applies the rules in order. `stack` is `None` when no StackWalk paired.
pub fn classify<'a>(ctx: &Context<'a>, stack: Option<&[u64]>, service_address: u64) -> Outcome<'a> {
    // Rule 1.
    let Some(stack) = stack else {
        return Outcome::new(Verdict::NoStack);
    };
    // Rule 2.
    let Some(ui) = stack.iter().position(|&a| a < ctx.kernel_boundary) else {
        return Outcome::new(Verdict::KernelOrigin);
    };
    // Rule 2, nested: a kernel-mode call made in a user thread inside its
    // own system call (`nested`).
    // `U` is then the outer call's stub: kept for the report.
    if nested::is_nested(&stack[..ui]) {
        let mut out = Outcome::new(Verdict::KernelOrigin);
        out.user_index = Some(ui);
        out.service_name = service_name(ctx, service_address);
        return out;
    }
    let u = stack[ui];
    let modules = ctx.process.map(|p| &p.modules);
    let um = modules.and_then(|m| m.find(u));
    let mut out = Outcome::new(Verdict::Normal);
    out.user_index = Some(ui);
    out.user_module = um;
    let caller = stack.get(ui + 1).copied();
    out.caller_module = caller.and_then(|c| {
        if c >= ctx.kernel_boundary {
            ctx.kernel.find(c)
        } else {
            modules.and_then(|m| m.find(c))
        }
    });
    // Rule 3a.
    if um.is_some_and(|m| m.kind == ModuleKind::ClonedStub) {
        out.verdict = Verdict::Indirect;
        out.reason = Some(Reason::ClonedStubModule);
        return out;
    }
    // Rule 3.
    let m = match um {
        Some(m) if m.kind.is_stub_module() => m,
        _ => {
            out.verdict = Verdict::Direct;
            out.reason = Some(if ctx.process.is_some_and(|p| p.wow64) {
                Reason::HeavensGate
            } else if um.is_some() {
                Reason::Image
            } else {
                Reason::Unbacked
            });
            return out;
        }
    };
    let offset = u - m.base;
    // Rule 4.
    let (site, stub_name) = return_site(ctx.system_dlls, m, offset);
    out.at_return_site = site;
    out.stub_name = stub_name;
    if !site {
        out.verdict = Verdict::Indirect;
        out.reason = Some(Reason::NotReturnSite);
        return out;
    }
    // Rule 5: by names when both are known from the supplied DLLs, else by
    // the service learned for this return site. An audit event stands for
    // the system calls of its id.
    let audit = crate::source::audit::api_of(service_address);
    if audit.is_none() {
        out.service_name = service_name(ctx, service_address);
    }
    let mismatch = match (stub_name, audit, out.service_name) {
        (Some(a), Some(api), _) => {
            out.by_names = true;
            !api.system_calls().iter().any(|n| same_service_name(a, n))
        }
        (Some(a), None, Some(b)) => {
            out.by_names = true;
            !same_service_name(a, b)
        }
        _ => {
            let key = crate::source::audit::site_key(offset, service_address);
            out.stub_service = ctx.services.service_of(m.kind, key);
            out.stub_service.is_some_and(|s| s != service_address)
        }
    };
    if mismatch {
        out.verdict = Verdict::Indirect;
        out.reason = Some(Reason::StubMismatch);
        return out;
    }
    // Rule 6.
    let Some(c) = caller else {
        out.verdict = Verdict::Truncated;
        return out;
    };
    // Rule 7. Only a user-mode caller can be unbacked memory.
    if c < ctx.kernel_boundary && out.caller_module.is_none() {
        out.verdict = Verdict::Indirect;
        out.reason = Some(Reason::UnbackedCaller);
        return out;
    }
    let Some(modules) = modules else {
        return out;
    };
    let user = &stack[ui..];
    // Rule 8.
    if ctx.process.is_some_and(|p| p.wow64) && wow64_bypassed(modules, user) {
        out.verdict = Verdict::Indirect;
        out.reason = Some(Reason::Wow64Bypass);
        return out;
    }
    // Rule 8b.
    if let Some(p) = ctx.process {
        let (h, check) = exception::exception_handler(p, modules, user);
        out.exception_check = check;
        if let Some(mut h) = h {
            let ui = u32::try_from(ui).unwrap_or(u32::MAX);
            h.handler = h.handler.saturating_add(ui);
            h.dispatcher = h.dispatcher.saturating_add(ui);
            out.handler = Some(h);
            if h.unbacked {
                out.verdict = Verdict::Indirect;
                out.reason = Some(Reason::ExceptionHandler);
                return out;
            }
        }
    }
    // Rule 8c: a proxied call (after 8b, before 9: docs/verdicts.md).
    // Like rule 9 it needs module bytes: without `--images` it is not
    // applied (walking the frames past `C` for every syscall only to count
    // shapes cost 27% more instructions per syscall).
    if let Some(images) = ctx.images {
        out.proxy = proxy::check(images, modules, user);
    }
    if let proxy::ProxyCheck::Found(mut f) = out.proxy {
        f.api_index += ui;
        f.dispatcher_index += ui;
        out.proxy = proxy::ProxyCheck::Found(f);
        out.verdict = Verdict::Indirect;
        out.reason = Some(Reason::ProxyCall);
        return out;
    }
    // Rule 9.
    if let Some(images) = ctx.images {
        let (found, bytes) = first_not_call_preceded(images, modules, user);
        out.bytes = bytes;
        if let Some(mut f) = found {
            f.index += ui;
            out.frame_check = Some(f);
            out.verdict = Verdict::Indirect;
            out.reason = Some(Reason::NotCallPreceded);
            return out;
        }
    }
    out
}

/// The `truncated_stack` flag (docs/verdicts.md, "Flags"): the stack has
/// two user frames or more, fewer than [`MAX_STACK_FRAMES`] frames in all, and its
/// walk ends in an image that is neither ntdll (native or WoW64's 32-bit
/// one: every thread starts at `RtlUserThreadStart` there) nor WoW64's
/// layer. A fact, not an accusation: real walks also stop early, e.g. in
/// .NET's mscoree.dll (0.5% of the Windows 7 corpus's multi-frame user
/// stacks).
pub fn stack_truncated(modules: Option<&ModuleMap>, stack: &[u64], kernel_boundary: u64) -> bool {
    if stack.len() >= MAX_STACK_FRAMES {
        return false;
    }
    let Some(ui) = stack.iter().position(|&a| a < kernel_boundary) else {
        return false;
    };
    modules.is_some_and(|m| truncated(m, &stack[ui..]))
}

/// Rule 8: past the native stub module, the first frame is in a module
/// that is not WoW64's layer. `user[0]` is `U`. An unbacked frame there is
/// no evidence either way (rule 7 judges an unbacked caller): in the
/// Windows 7 corpus trace, 9 of 986 WoW64 stacks through the native ntdll
/// have one, and 967 continue in wow64.dll.
pub fn wow64_bypassed(modules: &ModuleMap, user: &[u64]) -> bool {
    for &a in &user[1..] {
        match modules.find(a) {
            Some(m) if m.kind.is_stub_module() => continue,
            Some(m) => return m.kind != ModuleKind::Wow64Layer,
            None => return false,
        }
    }
    false
}

/// The last frame is in an image, not in ntdll (native or
/// WoW64's 32-bit one, where every thread starts) nor in the WoW64 layer
/// (where a 32-bit thread's 64-bit walk may end).
fn truncated(modules: &ModuleMap, user: &[u64]) -> bool {
    // A stub frame alone is rule 6's `truncated` verdict already.
    let [_, .., last] = *user else {
        return false;
    };
    match modules.find(last) {
        Some(m) => !matches!(
            m.kind,
            ModuleKind::Ntdll | ModuleKind::NtdllWow64 | ModuleKind::Wow64Layer
        ),
        // An unbacked end (JIT code the walk could not unwind through) is
        // not evidence of tampering.
        None => false,
    }
}

/// Rule 9: the first frame past `U` (`user[0]`) whose module's bytes show
/// no `call` (nor a kernel transition) right before it, with the frames
/// checked and not. Skipped: frames in `wow64cpu.dll` (where 32-bit code
/// re-enters 64-bit mode, by a jump), and the frame after
/// `KiUserExceptionDispatcher` (the faulting instruction) — or after any
/// ntdll frame when that ntdll's exports are not in `--images`.
fn first_not_call_preceded(
    images: &Images,
    modules: &ModuleMap,
    user: &[u64],
) -> (Option<FrameCheck>, BytesChecked) {
    let mut bytes = BytesChecked::default();
    let mut skip_next = false;
    for (j, &a) in user.iter().enumerate().skip(1) {
        let Some(m) = modules.find(a) else {
            bytes.not_done = bytes.not_done.saturating_add(1);
            skip_next = false;
            continue;
        };
        let skip = std::mem::take(&mut skip_next);
        let rva = u32::try_from(a - m.base).unwrap_or(u32::MAX);
        let facts = m.image.and_then(|i| images.frame(i, rva));
        if matches!(m.kind, ModuleKind::Ntdll | ModuleKind::NtdllWow64) {
            skip_next = facts.is_none_or(|f| f.exception_dispatcher);
        }
        let Some(facts) = facts else {
            bytes.not_done = bytes.not_done.saturating_add(1);
            continue;
        };
        if skip || m.kind == ModuleKind::Wow64Layer && m.name.eq_ignore_ascii_case("wow64cpu.dll") {
            bytes.not_done = bytes.not_done.saturating_add(1);
            continue;
        }
        match facts.preceded {
            Preceded::NotDone(_) => bytes.not_done = bytes.not_done.saturating_add(1),
            Preceded::Nothing => {
                bytes.checked = bytes.checked.saturating_add(1);
                let check = FrameCheck {
                    index: j,
                    preceded: Preceded::Nothing,
                    gadget: m
                        .image
                        .and_then(|i| images.image(i).ok())
                        .and_then(|img| img.gadget(rva)),
                };
                return (Some(check), bytes);
            }
            _ => bytes.checked = bytes.checked.saturating_add(1),
        }
    }
    (None, bytes)
}

/// The service routine's export name at `SysCallAddress`, when the kernel
/// module holding it was matched to a supplied image.
fn service_name<'a>(ctx: &Context<'a>, addr: u64) -> Option<&'a Arc<str>> {
    let sys = ctx.system_dlls?;
    let m = ctx.kernel.find(addr)?;
    let d = sys.dlls.get(m.system_dll?)?;
    d.export_at(u32::try_from(addr - m.base).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_service_is_most_frequent_then_lowest() {
        let mut t = ServiceTable::new();
        t.record(ModuleKind::Ntdll, 0x14, 0x300);
        t.record(ModuleKind::Ntdll, 0x14, 0x200);
        assert_eq!(t.service_of(ModuleKind::Ntdll, 0x14), Some(0x200));
        t.record(ModuleKind::Ntdll, 0x14, 0x300);
        assert_eq!(t.service_of(ModuleKind::Ntdll, 0x14), Some(0x300));
        assert_eq!(t.service_of(ModuleKind::Win32u, 0x14), None);
    }

    /// The kept answer equals the argmax over the counts (ties: lowest).
    #[test]
    fn learned_service_equals_the_argmax_of_the_counts() {
        let mut rng = crate::testutil::Xorshift(0x2545_F491_4F6C_DD1D);
        let mut t = ServiceTable::new();
        let mut counts: HashMap<u64, HashMap<u64, u64>> = HashMap::new();
        for _ in 0..20_000 {
            let x = rng.next();
            let (site, svc) = (x % 7, (x >> 8) % 5);
            t.record(ModuleKind::Ntdll, site, svc);
            *counts.entry(site).or_default().entry(svc).or_default() += 1;
            let want = counts[&site]
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                .map(|e| *e.0);
            assert_eq!(t.service_of(ModuleKind::Ntdll, site), want);
        }
    }

    #[test]
    fn nt_and_zw_are_one_service() {
        assert!(same_service_name("ZwClose", "NtClose"));
        assert!(same_service_name("NtClose", "NtClose"));
        assert!(!same_service_name("NtClose", "NtOpenFile"));
    }
}
