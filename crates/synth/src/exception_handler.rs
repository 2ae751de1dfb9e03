//! Exception handlers that call APIs (docs/verdicts.md, rule 8b): the
//! technique and the benign stacks that look like it.
//!
//! When a hardware exception (access violation, guard page, single step,
//! breakpoint) is dispatched, the kernel resumes the thread at
//! `ntdll!KiUserExceptionDispatcher` on the faulting thread's stack, with
//! the faulting context below it; the dispatcher calls
//! `RtlDispatchException`, which calls the vectored handlers
//! (`RtlpCallVectoredHandlers`) and then the frame-based handlers
//! (`RtlpExecuteHandlerForException`). A system call made by a handler is
//! walked by the kernel as: stub, API layer, handler, ntdll's dispatch
//! frames, the dispatcher, the faulting code, the rest of the thread.
//!
//! - **Technique** (`veh-handler-unbacked`): a vectored handler registered
//!   from shellcode calls `VirtualProtect` while an exception is
//!   dispatched: VEH-based sleep masks flip their own pages between
//!   `PAGE_NOACCESS` and executable on each fault, hardware-breakpoint hooks
//!   run their detour from the handler (Elastic: "VirtualProtect via
//!   Vectored Exception Handling"). The handler and the faulting code are in
//!   private memory; every other frame is genuine. In a WoW64 process the
//!   same runs on the 32-bit side (`SysWOW64\ntdll.dll`'s dispatcher) and
//!   reaches the kernel through WoW64's layer. Only ntdll's exports tell the
//!   dispatcher frame, so without `--images` the stack is `normal`.
//! - **Look-alikes** (`normal`): a handler in a module (the existing
//!   `benign-exception-handler`), .NET (a `NullReferenceException`: an
//!   access violation in JIT code, dispatched to coreclr's personality
//!   routine, which runs the catch funclet, JIT code in private memory,
//!   that calls an API), an exception in JIT code handled by coreclr itself,
//!   and a handler in a WoW64 process's EXE calling through the 32-bit
//!   layer.
//!
//! LayeredSyscall is not modelled: at its `syscall` the dispatcher is no
//! longer on the stack (its handler returns `EXCEPTION_CONTINUE_EXECUTION`
//! with the stub's `syscall` as the new instruction pointer), and every
//! frame is genuine; docs/evasion.md says what that leaves us.

use std::io::{Seek, Write};

use crate::evasion::{CodeKind, Ev, DISPATCHER_RETURN, KI_USER_EXCEPTION_DISPATCHER};
use crate::world::{self, Layout, ProcKind, SERVICES};
use crate::{site, Call, Gen, Scenario, SynthError, Tech};

/// The technique and its look-alikes (`Tech::Exception`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Xh {
    /// A vectored handler in private memory calls an API (native process;
    /// the 32-bit one in a 32-bit trace).
    VehUnbacked,
    /// The same on the 32-bit side of a WoW64 process (64-bit traces).
    VehUnbackedWow64,
    /// .NET: coreclr's personality routine runs an unbacked catch funclet
    /// that calls an API.
    LookalikeDotnetFunclet,
    /// An access violation in JIT code, handled by coreclr, which calls an
    /// API itself.
    LookalikeJitFault,
    /// A handler in a WoW64 process's EXE calls an API through the 32-bit
    /// layer.
    LookalikeWow64Handler,
}

impl Xh {
    /// Needs a WoW64 process (64-bit traces only).
    pub fn needs_wow64(self) -> bool {
        matches!(self, Xh::VehUnbackedWow64 | Xh::LookalikeWow64Handler)
    }
}

/// RVAs of ntdll's dispatch frames (the same in the native and the 32-bit
/// ntdll of the layout): inside `RtlpCallVectoredHandlers`,
/// `RtlpExecuteHandlerForException`, `RtlDispatchException`, `RtlUnwindEx`.
const CALL_VECTORED_HANDLERS: u64 = 0x4_1a6b;
const EXECUTE_HANDLER: u64 = 0x4_1c3b;
const DISPATCH_EXCEPTION: u64 = 0x4_18fb;
const UNWIND_EX: u64 = 0x4_2d5b;

/// Per-mille shares of the exception scenarios.
pub(crate) fn plan(s: Scenario) -> Vec<(Tech, u32)> {
    let x = |v: Xh, w: u32| (Tech::Exception(v), w);
    match s {
        Scenario::ExceptionHandler => vec![x(Xh::VehUnbacked, 35), x(Xh::VehUnbackedWow64, 15)],
        Scenario::ExceptionLookalikes => vec![
            (Tech::Evasion(Ev::LookalikeException), 40),
            x(Xh::LookalikeDotnetFunclet, 40),
            x(Xh::LookalikeJitFault, 40),
            x(Xh::LookalikeWow64Handler, 30),
        ],
        _ => vec![],
    }
}

/// Shares in the mixed scenario: the technique as rarely as the other
/// evasion attacks, the .NET look-alikes at benign rates.
pub(crate) fn mixed() -> Vec<(Tech, u32)> {
    let x = |v: Xh, w: u32| (Tech::Exception(v), w);
    vec![
        x(Xh::VehUnbacked, 3),
        x(Xh::VehUnbackedWow64, 2),
        x(Xh::LookalikeDotnetFunclet, 5),
        x(Xh::LookalikeJitFault, 5),
        x(Xh::LookalikeWow64Handler, 5),
    ]
}

impl<W: Write + Seek, T: Write> Gen<W, T> {
    /// Starts the implants of the technique.
    pub(crate) fn start_exception(&mut self) -> Result<(), SynthError> {
        let has = |x: Xh| self.attack.iter().any(|a| a.0 == Tech::Exception(x));
        let (native, wow) = (has(Xh::VehUnbacked), has(Xh::VehUnbackedWow64));
        if native {
            self.launch(4520, "rundll32.exe", ProcKind::Implant, 2)?;
        }
        if wow && self.ps() == 8 {
            self.launch(4520, "setup32.exe", ProcKind::Wow64Implant, 2)?;
        }
        Ok(())
    }

    /// Builds one syscall of `x` into `user` (the kernel part is built).
    pub(crate) fn build_exception(&mut self, x: Xh, user: &mut Vec<u64>) -> Option<(usize, Call)> {
        if x.needs_wow64() && self.ps() != 8 {
            return None;
        }
        let disp = KI_USER_EXCEPTION_DISPATCHER + DISPATCHER_RETURN;
        let mut alt = None;
        let (pi, service, verdict, reason, technique) = match x {
            Xh::VehUnbacked | Xh::VehUnbackedWow64 => {
                let wow = x == Xh::VehUnbackedWow64;
                let (kind, name) = if wow {
                    (ProcKind::Wow64Implant, "setup32.exe")
                } else {
                    (ProcKind::Implant, "rundll32.exe")
                };
                let pi = self.pick_proc(&[kind], Some(name))?;
                let s = if self.rng.chance(700) {
                    world::service_index("NtProtectVirtualMemory")
                } else {
                    self.attack_service()
                };
                let (l, p) = (&self.l, &self.procs[pi]);
                let shellcode = p.private.0;
                let handler = shellcode + 0x3_2a40 + (s as u64 % 4) * 0x1d0;
                let fault = shellcode + 0x1_4c17;
                user.push(l.return_site(&SERVICES[s]));
                let ntdll = if wow {
                    let [wow64, _, wow64cpu, ntdll32, _, kb32] = l.wow64.as_ref()?;
                    user.push(site(wow64, s as u64));
                    user.push(wow64.base + 0x7783);
                    user.push(wow64cpu.base + 0x1783);
                    user.push(wow64cpu.base + 0x1199);
                    user.push(ntdll32.base + 0x7_2e4c);
                    user.push(site(kb32, 0x31 + s as u64));
                    ntdll32.base
                } else {
                    user.push(site(&l.kernelbase, 0x31 + s as u64));
                    l.ntdll.base
                };
                // The handler, called by ntdll's dispatch of the fault its
                // own code raised (a page it made inaccessible).
                user.push(handler);
                user.push(ntdll + CALL_VECTORED_HANDLERS);
                user.push(ntdll + DISPATCH_EXCEPTION);
                user.push(ntdll + disp);
                user.push(fault);
                user.push(shellcode + 0x1_2f0);
                self.thread_start(wow, user);
                alt = Some(("normal", None));
                let t = if wow {
                    "veh-handler-unbacked-wow64"
                } else {
                    "veh-handler-unbacked"
                };
                (pi, s, "indirect", Some("exception_handler"), t)
            }
            Xh::LookalikeDotnetFunclet | Xh::LookalikeJitFault => {
                let pi = self.pick_proc(&[ProcKind::JitHost], None)?;
                let s = self.pick_service(false);
                let salt = s as u64 * 1000 + u64::from(self.procs[pi].pid) + 0x4e;
                let (l, p) = (&self.l, &self.procs[pi]);
                let jit = |k: u64| p.private.0 + 0x1_0000 + (salt * 97 + k * 0x2d1) % 0x2_0000;
                let ntdll = l.ntdll.base;
                user.push(l.return_site(&SERVICES[s]));
                user.push(site(&l.kernelbase, salt));
                if x == Xh::LookalikeDotnetFunclet {
                    // The catch funclet (JIT code), called by coreclr in
                    // the second pass (RtlUnwindEx), itself called by
                    // coreclr's personality routine in the first.
                    user.push(jit(1));
                    user.push(site(&l.clr, salt + 1));
                    user.push(site(&l.clr, salt + 2));
                    user.push(ntdll + UNWIND_EX);
                    user.push(site(&l.clr, salt + 3));
                } else {
                    user.push(site(&l.clr, salt + 4));
                }
                user.push(ntdll + EXECUTE_HANDLER);
                user.push(ntdll + DISPATCH_EXCEPTION);
                user.push(ntdll + disp);
                // The faulting JIT code (a null reference), its caller,
                // then the runtime and the thread start.
                user.push(jit(2));
                user.push(jit(3));
                user.push(site(&l.clr, salt + 5));
                self.thread_start(false, user);
                let t = if x == Xh::LookalikeDotnetFunclet {
                    "benign-dotnet-catch-funclet"
                } else {
                    "benign-jit-fault"
                };
                (pi, s, "normal", None, t)
            }
            Xh::LookalikeWow64Handler => {
                let pi = self.pick_proc(&[ProcKind::Wow64], None)?;
                let s = world::service_index("NtProtectVirtualMemory");
                let salt = u64::from(self.procs[pi].pid) + 0x77;
                let (l, p) = (&self.l, &self.procs[pi]);
                let [wow64, _, wow64cpu, ntdll32, _, kb32] = l.wow64.as_ref()?;
                let exe = p.exe.as_ref()?;
                user.push(l.return_site(&SERVICES[s]));
                user.push(site(wow64, salt));
                user.push(wow64.base + 0x7783);
                user.push(wow64cpu.base + 0x1783);
                user.push(wow64cpu.base + 0x1199);
                user.push(ntdll32.base + 0x7_2e4c);
                user.push(site(kb32, salt));
                user.push(site(exe, salt + 1));
                user.push(ntdll32.base + CALL_VECTORED_HANDLERS);
                user.push(ntdll32.base + DISPATCH_EXCEPTION);
                user.push(ntdll32.base + disp);
                let fault = site(exe, salt + 2) - 0xB + 0x7;
                user.push(fault);
                user.push(site(exe, salt + 3));
                self.code.insert(fault, CodeKind::Fault);
                self.thread_start(true, user);
                (pi, s, "normal", None, "benign-exception-handler-wow64")
            }
        };
        Some((
            pi,
            Call {
                service,
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

    /// The thread start frames: `kernel32!BaseThreadInitThunk` and
    /// `ntdll!RtlUserThreadStart` (the 32-bit ones for a WoW64 thread).
    fn thread_start(&self, wow: bool, user: &mut Vec<u64>) {
        let l = &self.l;
        match (&l.wow64, wow) {
            (Some([.., ntdll32, k32, _]), true) => {
                user.push(k32.base + 0x1_fa29);
                user.push(ntdll32.base + 0x6_e7bd);
                user.push(ntdll32.base + 0x6_e78d);
            }
            _ => {
                user.push(l.kernel32.base + Layout::BASE_THREAD_INIT_THUNK);
                user.push(l.ntdll.base + Layout::RTL_USER_THREAD_START);
            }
        }
    }
}
