//! Proxied calls (docs/verdicts.md, rule 8c `proxy_call`) and the benign
//! stacks that look like them.
//!
//! The technique, as Elastic's rule "Windows API via a CallBack Function"
//! (elastic/protections-artifacts, `behavior/rules/windows/
//! defense_evasion_windows_api_via_a_callback_function.toml`) and its
//! write-up (<https://www.elastic.co/security-labs/doubling-down-etw-callstacks>)
//! describe it: the implant hands an API itself (`VirtualAlloc`,
//! `LoadLibraryW`, ...) to the thread pool as the callback (`TpAllocWork` +
//! `TpPostWork`, a timer-queue timer, an APC whose routine is the API), so
//! the API runs on a worker thread with no user frame between ntdll's
//! dispatcher and the API layer: `ntdll.dll|kernelbase.dll|ntdll.dll|
//! kernel32.dll|ntdll.dll`, final user module `Undetermined`.
//!
//! Benign look-alikes (all `normal`): a thread-pool callback in the
//! application's own code that calls an API (its frame sits between), a
//! system DLL's own callback (rpcrt4 between), kernelbase's `DllMain` run by
//! ntdll's loader (kernelbase directly under ntdll, but its entry point is
//! no export), an ordinary thread start, and an APC routine that is a
//! kernelbase internal (non-exported) wrapper calling an API.
//!
//! x64 only can be decided: the rule asks whether the outermost API-layer
//! frame lies in a function that *begins* at an export, which only the x64
//! exception directory (`.pdata`) bounds. The same stacks on x86 and in a
//! WoW64 process's 32-bit part are `normal` in the truth and counted by the
//! engine as checks not done. [`functions`] gives the synthetic kernelbase
//! and kernel32 their exports and, for PE32+, their `.pdata` entries
//! (including a cold part chained to `VirtualAlloc`), written by
//! [`crate::pe::images`].

use std::io::{Seek, Write};

use crate::evasion::{CodeKind, DISPATCHER_RETURN, KI_USER_APC_DISPATCHER};
use crate::world::{self, Layout, ModKind, ProcKind, SERVICES};
use crate::{site, tail, Call, Gen, Scenario, SynthError, Tech};

/// The proxied-call techniques and their look-alikes (`Tech::Proxy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Px {
    /// `TpAllocWork(VirtualAlloc)`: the work callback is the API.
    TpWork,
    /// `TpAllocWork(LoadLibraryW)`: two kernelbase frames (LoadLibraryW ->
    /// LoadLibraryExW), ntdll's loader below.
    TpWorkLoadLibrary,
    /// `CreateTimerQueueTimer(VirtualProtect)`.
    Timer,
    /// `QueueUserAPC(VirtualAlloc)`, delivered by `KiUserApcDispatcher`
    /// through `RtlDispatchAPC`; the return address is in VirtualAlloc's
    /// cold part (a `.pdata` range chained to the function).
    Apc,
    /// `TpAllocWork(WinExec)`: the API is a kernel32 export.
    TpWorkKernel32,
    /// [`Px::TpWork`] in a WoW64 process: 32-bit kernelbase under the
    /// 32-bit ntdll's thread pool (no `.pdata`: not decidable).
    TpWorkWow64,
    LookalikeUserCallback,
    LookalikeSystemCallback,
    LookalikeDllMain,
    LookalikeThreadStart,
    LookalikeApcWrapper,
}

impl Px {
    pub fn needs_wow64(self) -> bool {
        self == Px::TpWorkWow64
    }
}

/// A function of the synthetic kernelbase/kernel32: its export name (none
/// for internal functions), its range, and for a cold part the begin of the
/// function it continues (`UNW_FLAG_CHAININFO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fun {
    pub name: Option<&'static str>,
    pub begin: u32,
    pub end: u32,
    pub chained_to: Option<u32>,
}

const fn f(name: &'static str, begin: u32, len: u32) -> Fun {
    Fun {
        name: Some(name),
        begin,
        end: begin + len,
        chained_to: None,
    }
}

const fn internal(begin: u32, len: u32) -> Fun {
    Fun {
        name: None,
        begin,
        end: begin + len,
        chained_to: None,
    }
}

// kernelbase: functions and the return addresses in them (after the call
// to the next function inward).
pub const VIRTUAL_ALLOC: u32 = 0x2_1000;
pub const VIRTUAL_ALLOC_RET: u32 = VIRTUAL_ALLOC + 0x5b;
pub const VIRTUAL_ALLOC_COLD: u32 = 0x2_5000;
pub const VIRTUAL_ALLOC_COLD_RET: u32 = VIRTUAL_ALLOC_COLD + 0x2b;
pub const VIRTUAL_PROTECT: u32 = 0x2_1400;
pub const VIRTUAL_PROTECT_RET: u32 = VIRTUAL_PROTECT + 0x4b;
pub const LOAD_LIBRARY_EX_W: u32 = 0x2_2000;
pub const LOAD_LIBRARY_EX_W_RET: u32 = LOAD_LIBRARY_EX_W + 0x1ab;
pub const LOAD_LIBRARY_W: u32 = 0x2_2600;
pub const LOAD_LIBRARY_W_RET: u32 = LOAD_LIBRARY_W + 0x1b;
pub const SET_EVENT: u32 = 0x2_3000;
pub const SET_EVENT_RET: u32 = SET_EVENT + 0x1b;
pub const SLEEP_EX: u32 = 0x2_3200;
pub const SLEEP_EX_RET: u32 = SLEEP_EX + 0xab;
pub const CREATE_PROCESS_INTERNAL_W: u32 = 0x2_3800;
pub const CREATE_PROCESS_INTERNAL_W_RET: u32 = CREATE_PROCESS_INTERNAL_W + 0x3cb;
/// kernelbase's entry point (`DllMain`): not exported.
pub const KERNELBASE_DLL_MAIN: u32 = 0x2_4000;
pub const KERNELBASE_DLL_MAIN_RET: u32 = KERNELBASE_DLL_MAIN + 0x13b;
/// An internal APC routine of kernelbase: not exported.
pub const APC_WRAPPER: u32 = 0x2_4800;
pub const APC_WRAPPER_RET: u32 = APC_WRAPPER + 0x3b;
// kernel32.
pub const WIN_EXEC: u32 = 0x2_2000;
pub const WIN_EXEC_RET: u32 = WIN_EXEC + 0x8b;
// ntdll internals (no exports): return addresses.
pub const TPP_WORK_CALLBACK: u64 = 0x2_8a6b;
pub const TPP_WORKER_THREAD: u64 = 0x3_4f2b;
pub const TPP_TIMER_CALLBACK: u64 = 0x2_9c1b;
pub const TPP_TIMER_EXPIRATION: u64 = 0x2_9e5b;
pub const RTL_DISPATCH_APC: u64 = 0x2_7d4b;
pub const LDR_LOAD_DLL: u64 = 0x1_f1cb;
pub const LDR_MAP_DLL: u64 = 0x2_03eb;
pub const LDR_CALL_INIT_ROUTINE: u64 = 0x1_c3ab;
pub const LDR_INITIALIZE_NODE: u64 = 0x1_c6fb;
pub const LDR_INITIALIZE_PROCESS: u64 = 0x6_b2db;
pub const LDR_INITIALIZE_THUNK: u64 = 0x6_a11b;

/// The functions of kernelbase or kernel32 (any bitness); empty for other
/// modules.
pub fn functions(kind: ModKind) -> Vec<Fun> {
    match kind {
        ModKind::KernelBase | ModKind::KernelBaseWow => vec![
            f("VirtualAlloc", VIRTUAL_ALLOC, 0x180),
            Fun {
                name: None,
                begin: VIRTUAL_ALLOC_COLD,
                end: VIRTUAL_ALLOC_COLD + 0x80,
                chained_to: Some(VIRTUAL_ALLOC),
            },
            f("VirtualProtect", VIRTUAL_PROTECT, 0x120),
            f("LoadLibraryExW", LOAD_LIBRARY_EX_W, 0x400),
            f("LoadLibraryW", LOAD_LIBRARY_W, 0x40),
            f("SetEvent", SET_EVENT, 0x60),
            f("SleepEx", SLEEP_EX, 0x200),
            f("CreateProcessInternalW", CREATE_PROCESS_INTERNAL_W, 0x600),
            internal(KERNELBASE_DLL_MAIN, 0x500),
            internal(APC_WRAPPER, 0x100),
        ],
        ModKind::Kernel32 | ModKind::Kernel32Wow => vec![
            f(
                "BaseThreadInitThunk",
                (Layout::BASE_THREAD_INIT_THUNK - 0x14) as u32,
                0x60,
            ),
            f("WinExec", WIN_EXEC, 0x120),
        ],
        _ => vec![],
    }
}

/// Per-mille shares of the proxied-call scenarios.
pub(crate) fn plan(s: Scenario) -> Vec<(Tech, u32)> {
    use Px::*;
    let e = |v: Px, w: u32| (Tech::Proxy(v), w);
    match s {
        Scenario::ProxyCall => vec![
            e(TpWork, 15),
            e(TpWorkLoadLibrary, 10),
            e(Timer, 10),
            e(Apc, 10),
            e(TpWorkKernel32, 5),
            e(TpWorkWow64, 10),
        ],
        Scenario::ProxyLookalikes => vec![
            e(LookalikeUserCallback, 40),
            e(LookalikeSystemCallback, 30),
            e(LookalikeDllMain, 20),
            e(LookalikeThreadStart, 30),
            e(LookalikeApcWrapper, 30),
        ],
        _ => vec![],
    }
}

/// The shares (per mille) in the mixed scenario.
pub(crate) fn mixed() -> Vec<(Tech, u32)> {
    use Px::*;
    let e = |v: Px, w: u32| (Tech::Proxy(v), w);
    vec![
        e(TpWork, 3),
        e(Timer, 2),
        e(LookalikeUserCallback, 10),
        e(LookalikeSystemCallback, 5),
    ]
}

impl<W: Write + Seek, T: Write> Gen<W, T> {
    /// Starts the processes the proxied calls run in.
    pub(crate) fn start_proxy(&mut self) -> Result<(), SynthError> {
        let has = |g: &Self, f: &dyn Fn(Px) -> bool| {
            g.attack
                .iter()
                .any(|a| matches!(a.0, Tech::Proxy(p) if f(p)))
        };
        if has(self, &|p| {
            matches!(
                p,
                Px::TpWork | Px::TpWorkLoadLibrary | Px::Timer | Px::Apc | Px::TpWorkKernel32
            )
        }) {
            self.launch(4520, "tpinject.exe", ProcKind::Implant, 3)?;
        }
        if has(self, &|p| p == Px::TpWorkWow64) && self.ps() == 8 {
            self.launch(4520, "tpinject32.exe", ProcKind::Wow64Implant, 2)?;
        }
        Ok(())
    }

    /// Builds one proxied-call syscall (or look-alike) into `user`.
    pub(crate) fn build_proxy(&mut self, px: Px, user: &mut Vec<u64>) -> Option<(usize, Call)> {
        let x64 = self.ps() == 8;
        // Decidable (x64 `.pdata`) techniques alert with `--images` only.
        let proxied = |t: &'static str| {
            if x64 {
                ("indirect", Some("proxy_call"), t, Some(("normal", None)))
            } else {
                ("normal", None, t, None)
            }
        };
        let benign = |t: &'static str| ("normal", None, t, None);
        let attack = matches!(
            px,
            Px::TpWork | Px::TpWorkLoadLibrary | Px::Timer | Px::Apc | Px::TpWorkKernel32
        );
        let pi = match px {
            _ if attack => self.pick_proc(&[ProcKind::Implant], Some("tpinject.exe"))?,
            Px::TpWorkWow64 => {
                if !x64 {
                    return None;
                }
                self.pick_proc(&[ProcKind::Wow64Implant], Some("tpinject32.exe"))?
            }
            Px::LookalikeDllMain | Px::LookalikeThreadStart => {
                self.pick_proc(&[ProcKind::Native, ProcKind::Gui], None)?
            }
            _ => self.pick_proc(&[ProcKind::Native, ProcKind::Gui, ProcKind::JitHost], None)?,
        };
        let (l, p) = (&self.l, &self.procs[pi]);
        let (nt, kb, k32) = (l.ntdll.base, l.kernelbase.base, l.kernel32.base);
        let rs = |name: &str| l.return_site(&SERVICES[world::service_index(name)]);
        let pool = |v: &mut Vec<u64>, first: u64| {
            v.push(nt + first);
            v.push(nt + TPP_WORKER_THREAD);
            v.push(k32 + Layout::BASE_THREAD_INIT_THUNK);
            v.push(nt + Layout::RTL_USER_THREAD_START);
        };
        let salt = u64::from(p.pid);
        let mut interrupted = None;
        let (service, (verdict, reason, technique, alt)) = match px {
            Px::TpWork => {
                user.push(rs("NtAllocateVirtualMemory"));
                user.push(kb + u64::from(VIRTUAL_ALLOC_RET));
                pool(user, TPP_WORK_CALLBACK);
                ("NtAllocateVirtualMemory", proxied("proxy-tp-work"))
            }
            Px::TpWorkLoadLibrary => {
                user.push(rs("NtMapViewOfSection"));
                user.push(nt + LDR_MAP_DLL);
                user.push(nt + LDR_LOAD_DLL);
                user.push(kb + u64::from(LOAD_LIBRARY_EX_W_RET));
                user.push(kb + u64::from(LOAD_LIBRARY_W_RET));
                pool(user, TPP_WORK_CALLBACK);
                ("NtMapViewOfSection", proxied("proxy-tp-work-loadlibrary"))
            }
            Px::Timer => {
                user.push(rs("NtProtectVirtualMemory"));
                user.push(kb + u64::from(VIRTUAL_PROTECT_RET));
                user.push(nt + TPP_TIMER_CALLBACK);
                pool(user, TPP_TIMER_EXPIRATION);
                ("NtProtectVirtualMemory", proxied("proxy-timer"))
            }
            Px::Apc => {
                user.push(rs("NtAllocateVirtualMemory"));
                user.push(kb + u64::from(VIRTUAL_ALLOC_COLD_RET));
                user.push(nt + RTL_DISPATCH_APC);
                user.push(nt + KI_USER_APC_DISPATCHER + DISPATCHER_RETURN);
                let i = rs("NtDelayExecution");
                user.push(i);
                interrupted = Some(i);
                user.push(kb + u64::from(SLEEP_EX_RET));
                user.push(site(p.exe.as_ref()?, 0x5300));
                tail(l, p, user, 1, 41);
                ("NtAllocateVirtualMemory", proxied("proxy-apc"))
            }
            Px::TpWorkKernel32 => {
                user.push(rs("NtCreateThreadEx"));
                user.push(kb + u64::from(CREATE_PROCESS_INTERNAL_W_RET));
                user.push(k32 + u64::from(WIN_EXEC_RET));
                pool(user, TPP_WORK_CALLBACK);
                ("NtCreateThreadEx", proxied("proxy-tp-work-kernel32"))
            }
            Px::TpWorkWow64 => {
                let [wow64, _, wow64cpu, nt32, k32w, kbw] = l.wow64.as_ref()?;
                user.push(rs("NtAllocateVirtualMemory"));
                user.push(site(wow64, salt));
                user.push(wow64.base + 0x7783);
                user.push(wow64cpu.base + 0x1783);
                user.push(wow64cpu.base + 0x1199);
                user.push(nt32.base + 0x7_2e4c);
                user.push(kbw.base + u64::from(VIRTUAL_ALLOC_RET));
                user.push(nt32.base + TPP_WORK_CALLBACK);
                user.push(nt32.base + TPP_WORKER_THREAD);
                user.push(k32w.base + 0x1_fa29);
                user.push(nt32.base + 0x6_e7bd);
                user.push(nt32.base + 0x6_e78d);
                (
                    "NtAllocateVirtualMemory",
                    benign("proxy-tp-work-wow64-undecided"),
                )
            }
            Px::LookalikeUserCallback => {
                // The application's work callback calls VirtualAlloc.
                user.push(rs("NtAllocateVirtualMemory"));
                user.push(kb + u64::from(VIRTUAL_ALLOC_RET));
                user.push(site(p.exe.as_ref()?, 0x5400 + salt % 7));
                pool(user, TPP_WORK_CALLBACK);
                ("NtAllocateVirtualMemory", benign("benign-tp-user-callback"))
            }
            Px::LookalikeSystemCallback => {
                // RPC's own thread-pool callback waits on an event.
                let rpcrt4 = l.others.get(1)?;
                user.push(rs("NtWaitForSingleObject"));
                user.push(site(&l.kernelbase, 0x5500));
                user.push(site(rpcrt4, 0x5501));
                user.push(site(rpcrt4, 0x5502));
                pool(user, TPP_WORK_CALLBACK);
                ("NtWaitForSingleObject", benign("benign-tp-system-callback"))
            }
            Px::LookalikeDllMain => {
                // kernelbase's entry point, called by the loader at start.
                user.push(rs("NtQueryInformationProcess"));
                user.push(kb + u64::from(KERNELBASE_DLL_MAIN_RET));
                user.push(nt + LDR_CALL_INIT_ROUTINE);
                user.push(nt + LDR_INITIALIZE_NODE);
                user.push(nt + LDR_INITIALIZE_PROCESS);
                user.push(nt + LDR_INITIALIZE_THUNK);
                ("NtQueryInformationProcess", benign("benign-dllmain"))
            }
            Px::LookalikeThreadStart => {
                user.push(rs("NtWaitForSingleObject"));
                user.push(site(&l.kernelbase, 0x5600));
                user.push(site(p.exe.as_ref()?, 0x5601));
                user.push(k32 + Layout::BASE_THREAD_INIT_THUNK);
                user.push(nt + Layout::RTL_USER_THREAD_START);
                ("NtWaitForSingleObject", benign("benign-thread-start"))
            }
            Px::LookalikeApcWrapper => {
                // kernelbase's own APC routine signals an event.
                user.push(rs("NtSetEvent"));
                user.push(kb + u64::from(SET_EVENT_RET));
                user.push(kb + u64::from(APC_WRAPPER_RET));
                user.push(nt + KI_USER_APC_DISPATCHER + DISPATCHER_RETURN);
                let i = rs("NtDelayExecution");
                user.push(i);
                interrupted = Some(i);
                user.push(kb + u64::from(SLEEP_EX_RET));
                user.push(site(p.exe.as_ref()?, 0x5700));
                tail(l, p, user, 1, 43);
                ("NtSetEvent", benign("benign-apc-wrapper"))
            }
        };
        if let Some(i) = interrupted {
            // The APC interrupted a wait: `syscall` precedes that frame.
            self.code.insert(i, CodeKind::Keep);
        }
        Some((
            pi,
            Call {
                service: world::service_index(service),
                verdict,
                reason,
                technique,
                module: None,
                alt,
                flags: &[],
                access: None,
                target: None,
            },
        ))
    }
}
