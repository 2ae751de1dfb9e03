//! Rule 8b (`exception_handler`, docs/verdicts.md): an API called by an
//! exception handler in private memory while ntdll dispatches the
//! exception.
//!
//! The kernel starts user-mode exception dispatch at
//! `ntdll!KiUserExceptionDispatcher`, on the faulting thread's stack, with
//! the faulting context below it; the dispatcher calls
//! `RtlDispatchException`, which calls the vectored handlers
//! (`RtlpCallVectoredHandlers`) and the frame-based handlers or their
//! language-specific routine (`RtlpExecuteHandlerForException`). So when a
//! handler makes a system call, the stack the kernel walks reads, innermost
//! first: the stub, the API layer, the handler `H`, ntdll's dispatch frames,
//! `KiUserExceptionDispatcher`, then the faulting code
//! ([Vectored Exception Handling](https://learn.microsoft.com/windows/win32/debug/vectored-exception-handling),
//! [x64 exception handling](https://learn.microsoft.com/cpp/build/exception-handling-x64)).
//! A published walk has exactly this shape above the handler (nccgroup,
//! DetectWindowsCopyOnWriteForAPI, `d-nonmodulecallstack/README.md`: an
//! unbacked VEH, two ntdll frames, `KiUserExceptionDispatcher`, the
//! faulting `memcpy`).
//! `H` in private memory is a handler registered from shellcode (VEH sleep
//! masks that flip page protection, hardware-breakpoint hooks): Elastic's
//! "VirtualProtect via Vectored Exception Handling" idea. The faulting
//! frame outward of the dispatcher is not judged (JIT code faults too), nor
//! any frame inward of `H` (a .NET catch funclet is unbacked JIT code
//! called by the runtime's personality routine, which is `H`).
//!
//! Which frames lie in the dispatcher comes from ntdll's export table
//! (`--images`, or `--system-dlls`), resolved once per ntdll mapping into
//! absolute ranges per process ([`Dispatchers`]); the per-syscall cost is
//! two range tests per user frame, and nothing without the exports (the
//! check is then counted as not done).

use sentry_images::Images;

use crate::state::{ModuleKind, ModuleMap, ProcessInfo};
use crate::sysdlls::SystemDlls;

/// Where `KiUserExceptionDispatcher` lies in one process: in its native
/// ntdll, and in the 32-bit `SysWOW64\ntdll.dll` of a WoW64 process (a
/// 32-bit thread's exceptions are dispatched there). Absolute `[start,
/// end)`; `None` when that ntdll is not mapped or its exports are unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dispatchers {
    native: Option<(u64, u64)>,
    wow64: Option<(u64, u64)>,
}

impl Dispatchers {
    /// The RVAs of `KiUserExceptionDispatcher` in the file an ntdll
    /// mapping was matched to (`--images` first, then `--system-dlls`).
    pub fn span(
        image: Option<(&Images, usize)>,
        system_dll: Option<(&SystemDlls, usize)>,
    ) -> Option<(u32, u32)> {
        image
            .and_then(|(imgs, i)| imgs.image(i).ok())
            .and_then(|img| img.exception_dispatcher())
            .or_else(|| {
                system_dll
                    .and_then(|(s, i)| s.dlls.get(i))
                    .and_then(|d| d.exception_dispatcher)
            })
    }

    /// An ntdll mapping (native or WoW64's) at `base`, with its
    /// dispatcher's RVAs ([`Dispatchers::span`]; `None`: exports unknown).
    pub fn on_ntdll(&mut self, kind: ModuleKind, base: u64, size: u64, span: Option<(u32, u32)>) {
        let abs = span.and_then(|(s, e)| {
            let end = u64::from(e).min(size);
            (u64::from(s) < end).then(|| (base + u64::from(s), base + end))
        });
        match kind {
            ModuleKind::Ntdll => self.native = abs,
            ModuleKind::NtdllWow64 => self.wow64 = abs,
            _ => {}
        }
    }

    /// The mapping at `base` (`size` bytes) went away.
    pub fn on_unload(&mut self, base: u64, size: u64) {
        for d in [&mut self.native, &mut self.wow64] {
            if d.is_some_and(|(s, _)| s >= base && s - base < size) {
                *d = None;
            }
        }
    }

    #[inline]
    fn contains(&self, a: u64) -> bool {
        let inside = |d: Option<(u64, u64)>| d.is_some_and(|(s, e)| a >= s && a < e);
        inside(self.native) || inside(self.wow64)
    }
}

/// How far rule 8b got for one syscall, for the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExceptionCheck {
    /// An earlier rule decided, or the stack has no caller.
    #[default]
    NotReached,
    /// Every ntdll of the process had its exports: the stack was searched
    /// for the dispatcher.
    Done,
    /// An ntdll of the process (or its mapping) is unknown: the check was
    /// not done, and is never counted as passed.
    NotDone,
}

/// The handler rule 8b found: indices in the whole stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandlerFrame {
    /// `H`: the first frame inward of the dispatch frames that is not in
    /// the dispatching ntdll.
    pub handler: u32,
    /// The frame in `KiUserExceptionDispatcher`.
    pub dispatcher: u32,
    /// `H` is in no module.
    pub unbacked: bool,
}

/// Rule 8b on the user frames `user` (`user[0]` is `U`): the handler the
/// dispatcher called, if the stack holds a dispatcher frame past `U`, and
/// whether the check could be done. Indices are in `user`. Without any
/// ntdll exports (no `--images`/`--system-dlls`: the common case) this is
/// one test.
#[inline(always)]
pub fn exception_handler(
    process: &ProcessInfo,
    modules: &ModuleMap,
    user: &[u64],
) -> (Option<HandlerFrame>, ExceptionCheck) {
    let d = &process.exception_dispatchers;
    if d.native.is_none() && d.wow64.is_none() {
        return (None, ExceptionCheck::NotDone);
    }
    search(process, modules, user)
}

#[inline(never)]
fn search(
    process: &ProcessInfo,
    modules: &ModuleMap,
    user: &[u64],
) -> (Option<HandlerFrame>, ExceptionCheck) {
    let d = &process.exception_dispatchers;
    let complete = process.ntdll && d.native.is_some() && (!process.wow64 || d.wow64.is_some());
    let check = if complete {
        ExceptionCheck::Done
    } else {
        ExceptionCheck::NotDone
    };
    let Some(j) = user
        .iter()
        .skip(1)
        .position(|&a| d.contains(a))
        .map(|j| j + 1)
    else {
        return (None, check);
    };
    (handler_of(modules, user, j), check)
}

/// Walks inward from the dispatcher frame `j`, over the frames in the same
/// ntdll (`RtlDispatchException`, `RtlpCallVectoredHandlers`,
/// `RtlpExecuteHandlerForException`, ...), to the first frame that is not:
/// the handler. `None` if every frame down to `U` is in that ntdll (the
/// dispatcher's own calls, e.g. `NtContinue`).
fn handler_of(modules: &ModuleMap, user: &[u64], j: usize) -> Option<HandlerFrame> {
    let disp = modules.find(user[j])?;
    if !matches!(disp.kind, ModuleKind::Ntdll | ModuleKind::NtdllWow64) {
        return None;
    }
    let base = disp.base;
    for k in (1..j).rev() {
        match modules.find(user[k]) {
            Some(m) if m.base == base => continue,
            m => {
                return Some(HandlerFrame {
                    handler: u32::try_from(k).ok()?,
                    dispatcher: u32::try_from(j).ok()?,
                    unbacked: m.is_none(),
                })
            }
        }
    }
    None
}

/// Counts rule 8b's coverage ([`crate::EngineStats::exception_checks`]).
#[inline]
pub(crate) fn count(stats: &mut crate::EngineStats, outcome: &super::Outcome<'_>) {
    match outcome.exception_check {
        ExceptionCheck::NotReached => {}
        ExceptionCheck::Done => stats.exception_checks += 1,
        ExceptionCheck::NotDone => stats.exception_checks_not_done += 1,
    }
    if outcome.handler.is_some() {
        stats.exception_dispatch_stacks += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Module;
    use std::sync::Arc;

    const NTDLL: u64 = 0x7ffb_2c4a_0000;
    const NTDLL32: u64 = 0x77b0_0000;
    const KB: u64 = 0x7ffb_29e9_0000;
    const CLR: u64 = 0x7ffa_f000_0000;
    const DISP: u64 = 0xA_1200;

    fn module(kind: ModuleKind, base: u64, size: u64, name: &str) -> Module {
        Module {
            base,
            size,
            name: Arc::from(name),
            path: Arc::from(name),
            kind,
            time_date_stamp: 0,
            system_dll: None,
            image: None,
        }
    }

    fn process(wow64: bool, exports: bool) -> ProcessInfo {
        let mut p = ProcessInfo {
            ntdll: true,
            wow64,
            ..ProcessInfo::default()
        };
        p.modules
            .insert(module(ModuleKind::Ntdll, NTDLL, 0x1f_8000, "ntdll.dll"));
        p.modules
            .insert(module(ModuleKind::Other, KB, 0x2c_7000, "kernelbase.dll"));
        p.modules
            .insert(module(ModuleKind::Other, CLR, 0x5e_0000, "coreclr.dll"));
        if wow64 {
            p.modules.insert(module(
                ModuleKind::NtdllWow64,
                NTDLL32,
                0x1a_3000,
                "ntdll.dll",
            ));
        }
        if exports {
            p.exception_dispatchers.native = Some((NTDLL + DISP, NTDLL + DISP + 0x100));
            if wow64 {
                p.exception_dispatchers.wow64 = Some((NTDLL32 + DISP, NTDLL32 + DISP + 0x100));
            }
        }
        p
    }

    /// stub, kernelbase, handler, RtlpCallVectoredHandlers,
    /// RtlDispatchException, KiUserExceptionDispatcher, faulting frame.
    fn stack(ntdll: u64, handler: u64) -> Vec<u64> {
        vec![
            NTDLL + 0x9_d014,
            KB + 0x3_1a2b,
            handler,
            ntdll + 0x4_1a6b,
            ntdll + 0x4_18fb,
            ntdll + DISP + 0x2e,
            0x0000_01d0_0002_2047,
            NTDLL + 0x7_1001,
        ]
    }

    #[test]
    fn unbacked_handler_is_found_past_the_dispatch_frames() {
        let p = process(false, true);
        let s = stack(NTDLL, 0x0000_01d0_0001_0040);
        let (h, c) = exception_handler(&p, &p.modules, &s);
        assert_eq!(c, ExceptionCheck::Done);
        assert_eq!(
            h,
            Some(HandlerFrame {
                handler: 2,
                dispatcher: 5,
                unbacked: true
            })
        );
    }

    #[test]
    fn backed_handler_and_no_dispatcher_are_not_unbacked() {
        let p = process(false, true);
        // A .NET personality routine in coreclr is `H`; the funclet inward
        // of it (unbacked JIT code) is not judged.
        let mut s = stack(NTDLL, CLR + 0x1_2345);
        s.insert(2, 0x0000_01d0_0003_0000);
        let (h, _) = exception_handler(&p, &p.modules, &s);
        assert!(h.is_some_and(|h| !h.unbacked && h.handler == 3));
        // No dispatcher frame: nothing, whatever the unbacked frames.
        let s = [NTDLL + 0x9_d014, 0x0000_01d0_0001_0040, NTDLL + 0x7_1001];
        assert_eq!(exception_handler(&p, &p.modules, &s).0, None);
        // The dispatcher calling a stub itself (NtContinue): no handler.
        let s = [NTDLL + 0x9_d014, NTDLL + DISP + 0x40, 0x0000_01d0_0002_2047];
        assert_eq!(exception_handler(&p, &p.modules, &s).0, None);
    }

    #[test]
    fn wow64_dispatcher_and_missing_exports() {
        let p = process(true, true);
        let mut s = stack(NTDLL32, 0x0040_1000);
        // 32-bit frames: the 32-bit stub and kernelbase before the handler.
        s[1] = NTDLL32 + 0x7_0a0c;
        let (h, c) = exception_handler(&p, &p.modules, &s);
        assert_eq!(c, ExceptionCheck::Done);
        // The 32-bit stub's frame is in the dispatching ntdll: skipped only
        // when it lies between the handler and the dispatcher, not here.
        assert_eq!(h.map(|h| (h.handler, h.unbacked)), Some((2, true)));
        // Without the SysWOW64 ntdll's exports the 32-bit side is unseen.
        let mut q = process(true, true);
        q.exception_dispatchers.wow64 = None;
        let (h, c) = exception_handler(&q, &q.modules, &s);
        assert_eq!((h, c), (None, ExceptionCheck::NotDone));
        let q = process(false, false);
        let s = stack(NTDLL, 0x0000_01d0_0001_0040);
        assert_eq!(
            exception_handler(&q, &q.modules, &s),
            (None, ExceptionCheck::NotDone)
        );
    }

    /// The dispatcher's RVAs come from the export table, the same from
    /// `--images` and `--system-dlls`, for the native and the 32-bit ntdll.
    #[test]
    fn span_from_either_source() {
        use sentry_synth::evasion::{KI_USER_CALLBACK_DISPATCHER, KI_USER_EXCEPTION_DISPATCHER};
        let l = sentry_synth::world::Layout::new(8);
        let files = sentry_synth::pe::images(&l, &Default::default());
        let want = Some((
            KI_USER_EXCEPTION_DISPATCHER as u32,
            KI_USER_CALLBACK_DISPATCHER as u32,
        ));
        for dir in ["System32", "SysWOW64"] {
            let (_, bytes) = files
                .iter()
                .find(|(p, _)| *p == format!("{dir}/ntdll.dll"))
                .unwrap();
            let sys = SystemDlls {
                dlls: vec![crate::SystemDll::parse("ntdll.dll", bytes).unwrap()],
            };
            assert_eq!(Dispatchers::span(None, Some((&sys, 0))), want, "{dir}");
            let imgs = Images::from_files(vec![(dir.into(), bytes.clone())]);
            assert_eq!(Dispatchers::span(Some((&imgs, 0)), None), want, "{dir}");
        }
        // The synthetic --system-dlls ntdll lists stubs only: no span.
        let sys = sentry_synth::pe::system_dlls(&l);
        let d = crate::SystemDll::parse("ntdll.dll", &sys[0].1).unwrap();
        assert_eq!(d.exception_dispatcher, None);
    }

    /// "H is in no module" is a claim about the whole module map: it
    /// stands only when the engine saw the map built (docs/verdicts.md).
    #[test]
    fn unseen_module_map_leaves_it_unresolved() {
        use crate::classify::{Outcome, Reason, Verdict};
        let mut o = Outcome::new(Verdict::Indirect);
        o.reason = Some(Reason::ExceptionHandler);
        let mut c = crate::Completeness::default();
        assert_eq!(c.unresolved(&o, None, 50), Some(Reason::ProcessUnknown));
        let mut p = process(false, true);
        p.known_since = Some(10);
        p.ntdll = false;
        assert_eq!(
            c.unresolved(&o, Some(&p), 50),
            Some(Reason::ModulesIncomplete)
        );
        p.ntdll = true;
        assert_eq!(c.unresolved(&o, Some(&p), 50), None);
        c.note_gap(20, 30, "buffers_missing");
        assert_eq!(c.unresolved(&o, Some(&p), 50), Some(Reason::EventsLost));
    }

    #[test]
    fn unload_forgets_the_dispatcher() {
        let mut d = Dispatchers {
            native: Some((NTDLL + DISP, NTDLL + DISP + 0x100)),
            wow64: Some((NTDLL32 + DISP, NTDLL32 + DISP + 0x100)),
        };
        d.on_unload(KB, 0x2c_7000);
        assert!(d.wow64.is_some());
        d.on_unload(NTDLL32, 0x1a_3000);
        assert_eq!(d.wow64, None);
        assert!(d.contains(NTDLL + DISP + 1));
        assert!(!d.contains(NTDLL + DISP + 0x100));
    }
}
