//! Call-stack evasion beyond classic direct/indirect syscalls, and the
//! benign stacks that look like it (docs/verdicts.md, rules 3a and 8-10).
//!
//! Techniques, as their public write-ups describe the stack the kernel
//! walks at the `syscall`:
//! - **Cloned ntdll** (unhooking by a fresh copy): the stub executed is in a
//!   second mapping of `ntdll.dll` — the KnownDlls section mapped again (same
//!   System32 path, another base), a copy read from disk into another
//!   folder, or a renamed copy (same `SizeOfImage`/`TimeDateStamp`).
//! - **ROP frames** (SilentMoonwalk, Draugr, LoudSunRun and other call-stack
//!   spoofers): the stub is reached through a gadget in a system DLL, so a
//!   frame's return address points at `jmp [rbx]` (or `push rbx; ret`) that no
//!   `call` precedes; the frames around it are genuine. Only the module's
//!   bytes (`--images`) show it; without them the stack is clean.
//! - **Stack truncation** (ThreadStackSpoofer): the implant zeroes its own
//!   return address before sleeping, so the walk ends in its image instead of
//!   the thread start (`kernel32!BaseThreadInitThunk`, `ntdll!RtlUserThreadStart`).
//!   Flagged (`truncated_stack`), not an alert: real walks also stop early.
//! - **WoW64 bypass** (a Heaven's Gate variant): 32-bit code switches to
//!   64-bit mode and calls the native ntdll stub itself, so no `wow64.dll` /
//!   `wow64cpu.dll` frame sits between the stub and the 32-bit caller.
//!
//! Benign look-alikes: a second ntdll mapped (as a scanner does) but never
//! executed, exception handlers that call APIs (the frame after
//! `KiUserExceptionDispatcher` is the faulting instruction: no call before
//! it), window-procedure callbacks (the frame after
//! `KiUserCallbackDispatcher` is a win32u stub's return site: `syscall`
//! before it), and recursion deeper than the 192 frames a StackWalk event
//! holds (the thread start is cut off).
//!
//! The code bytes behind every return address the trace uses are recorded
//! ([`CodeMap`]) so that [`crate::pe::images`] can write the system DLLs
//! for `--images` with a `call` before every genuine return address and the
//! gadget or faulting bytes where the technique puts them.

use std::collections::HashMap;
use std::io::{Seek, Write};

use sentry_etl_writer::HeaderClass;

use crate::world::{self, Layout, ModKind, Module, ProcKind, SERVICES};
use crate::{site, tail, Call, Gen, Scenario, SynthError, Tech, MAX_FRAMES};

/// What the bytes at and before a return address are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeKind {
    /// A genuine return address: a `call` ends right before it.
    Return,
    /// A gadget no call precedes.
    Gadget(GadgetKind),
    /// A faulting instruction (the context an exception interrupted): no
    /// call before it.
    Fault,
    /// Bytes written elsewhere (a stub's return site: `syscall` before it).
    Keep,
}

/// The gadgets the ROP techniques use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GadgetKind {
    /// `jmp qword ptr [rbx]` (`FF 23`).
    JmpRbx,
    /// `push rbx; ret` (`53 C3`).
    PushRet,
}

/// Return address -> its bytes, for the system DLLs of the layout.
pub type CodeMap = HashMap<u64, CodeKind>;

/// The evasion techniques and look-alikes (`Tech::Evasion`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ev {
    ClonedKnownDlls,
    ClonedDisk,
    ClonedRenamed,
    RopJmp,
    RopPushRet,
    StackTruncation,
    Wow64Bypass,
    LookalikeDataMapping,
    LookalikeException,
    LookalikeCallback,
    LookalikeDeep,
}

impl Ev {
    /// Needs a WoW64 process (64-bit traces only).
    pub fn needs_wow64(self) -> bool {
        self == Ev::Wow64Bypass
    }
}

/// RVAs of the gadgets (in kernelbase) and of the exception-dispatch frames.
/// Genuine return addresses from [`site`] are `0xB` mod 16; these are `0x3`
/// and `0x7` mod 16 so that no benign frame ever lands on them.
pub const GADGET_JMP_RVA: u64 = 0x3_4a13;
pub const GADGET_PUSH_RVA: u64 = 0x3_4b23;
/// Faulting instruction in msvcrt (look-alike exception).
pub const FAULT_RVA: u64 = 0x2_1c47;
/// ntdll exports the look-alikes and the engine use.
pub const KI_USER_EXCEPTION_DISPATCHER: u64 = 0xA_1200;
pub const KI_USER_CALLBACK_DISPATCHER: u64 = 0xA_1300;
pub const KI_USER_APC_DISPATCHER: u64 = 0xA_1400;
/// Return address inside each dispatcher (after its `call`).
pub const DISPATCHER_RETURN: u64 = 0x2e;

/// Where the clones are mapped.
fn clone_base(l: &Layout, k: u64) -> u64 {
    if l.pointer_size == 8 {
        0x0000_0200_0000_0000 + k * 0x100_0000
    } else {
        0x1000_0000 + k * 0x40_0000
    }
}

/// Per-mille shares of the evasion scenarios (the rest is benign traffic).
pub(crate) fn plan(s: Scenario) -> Vec<(Tech, u32)> {
    use Ev::*;
    let e = |v: Ev, w: u32| (Tech::Evasion(v), w);
    match s {
        Scenario::ClonedNtdll => vec![
            e(ClonedKnownDlls, 20),
            e(ClonedDisk, 15),
            e(ClonedRenamed, 15),
        ],
        Scenario::RopFrames => vec![e(RopJmp, 35), e(RopPushRet, 15)],
        Scenario::StackTruncation => vec![e(StackTruncation, 50)],
        Scenario::Wow64Bypass => vec![e(Wow64Bypass, 50)],
        Scenario::Lookalikes => vec![
            e(LookalikeDataMapping, 40),
            e(LookalikeException, 40),
            e(LookalikeCallback, 40),
            e(LookalikeDeep, 20),
        ],
        _ => vec![],
    }
}

/// The evasion techniques' shares (per mille) in the mixed scenario: a
/// few of each attack, and the look-alikes at benign rates.
pub(crate) fn mixed() -> Vec<(Tech, u32)> {
    use Ev::*;
    let e = |v: Ev, w: u32| (Tech::Evasion(v), w);
    vec![
        e(ClonedKnownDlls, 3),
        e(ClonedRenamed, 2),
        e(RopJmp, 4),
        e(StackTruncation, 3),
        e(Wow64Bypass, 3),
        e(LookalikeException, 10),
        e(LookalikeCallback, 10),
    ]
}

impl<W: Write + Seek, T: Write> Gen<W, T> {
    /// Starts the processes the evasion techniques run in, and maps the
    /// clones (Image Load events after the process start).
    pub(crate) fn start_evasion(&mut self) -> Result<(), SynthError> {
        let evs: Vec<Ev> = self
            .attack
            .iter()
            .filter_map(|a| match a.0 {
                Tech::Evasion(e) => Some(e),
                _ => None,
            })
            .collect();
        let has = |f: &dyn Fn(Ev) -> bool| evs.iter().any(|&e| f(e));
        if has(&|e| matches!(e, Ev::ClonedKnownDlls | Ev::ClonedDisk | Ev::ClonedRenamed)) {
            self.launch(4520, "unhook.exe", ProcKind::Implant, 2)?;
            let pid = self.pid_of("unhook.exe");
            let n = self.l.ntdll.clone();
            let tmp = "\\Device\\HarddiskVolume3\\Users\\alice\\AppData\\Local\\Temp";
            let clones = [
                (0, n.path.clone()),
                (1, format!("{tmp}\\ntdll.dll")),
                (2, format!("{tmp}\\wmiclnt.dll")),
            ];
            for (k, path) in clones {
                let m = Module {
                    kind: ModKind::OtherDll,
                    base: clone_base(&self.l, k),
                    path,
                    ..n.clone()
                };
                self.load_image(pid, &m)?;
            }
        }
        if has(&|e| matches!(e, Ev::RopJmp | Ev::RopPushRet | Ev::StackTruncation)) {
            self.launch(5960, "beacon.exe", ProcKind::Implant, 3)?;
        }
        if has(&|e| e == Ev::Wow64Bypass) && self.ps() == 8 {
            self.launch(4520, "gate32.exe", ProcKind::Wow64Implant, 2)?;
        }
        if has(&|e| e == Ev::LookalikeDataMapping) {
            // A scanner maps a second ntdll (as an image, to read it) but
            // makes its syscalls through the loaded one.
            let pid = self.pid_of("MsMpEng.exe");
            let m = Module {
                kind: ModKind::OtherDll,
                base: clone_base(&self.l, 3),
                ..self.l.ntdll.clone()
            };
            self.load_image(pid, &m)?;
        }
        Ok(())
    }

    fn pid_of(&self, name: &str) -> u32 {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .map_or(0, |p| p.pid)
    }

    fn load_image(&mut self, pid: u32, m: &Module) -> Result<(), SynthError> {
        let Some(p) = self.procs.iter().find(|p| p.pid == pid) else {
            return Ok(());
        };
        let t = p.threads[0].clone();
        self.image_event(pid, m, 10, t.home_cpu, HeaderClass::System, (pid, t.tid))
    }

    /// Records the bytes behind each frame after `U` (genuine return
    /// addresses unless a technique marked them).
    pub(crate) fn record_code(&mut self, user: &[u64]) {
        for &a in user.iter().skip(1) {
            self.code.entry(a).or_insert(CodeKind::Return);
        }
    }

    /// Builds one evasion syscall into `kernel`/`user` (kernel part already
    /// holds the syscall entry frames).
    pub(crate) fn build_evasion(&mut self, ev: Ev, user: &mut Vec<u64>) -> Option<(usize, Call)> {
        let ps8 = self.ps() == 8;
        let mut alt = None;
        let mut flags: &'static [&'static str] = &[];
        let (pi, service, verdict, reason, technique) = match ev {
            Ev::ClonedKnownDlls | Ev::ClonedDisk | Ev::ClonedRenamed => {
                let pi = self.pick_proc(&[ProcKind::Implant], Some("unhook.exe"))?;
                let s = self.attack_service();
                let k = match ev {
                    Ev::ClonedKnownDlls => 0,
                    Ev::ClonedDisk => 1,
                    _ => 2,
                };
                let (l, p) = (&self.l, &self.procs[pi]);
                let rva = l.return_site(&SERVICES[s]) - l.ntdll.base;
                user.push(clone_base(l, k) + rva);
                user.push(site(p.exe.as_ref()?, 0x600 + s as u64));
                tail(l, p, user, 1, 31);
                let t = match ev {
                    Ev::ClonedKnownDlls => "ntdll-clone-knowndlls",
                    Ev::ClonedDisk => "ntdll-clone-disk",
                    _ => "ntdll-clone-renamed",
                };
                (pi, s, "indirect", Some("cloned_stub_module"), t)
            }
            Ev::RopJmp | Ev::RopPushRet => {
                let pi = self.pick_proc(&[ProcKind::Implant], Some("beacon.exe"))?;
                let s = self.attack_service();
                let l = &self.l;
                let (rva, g, t) = if ev == Ev::RopJmp {
                    (GADGET_JMP_RVA, GadgetKind::JmpRbx, "rop-jmp-gadget")
                } else {
                    (GADGET_PUSH_RVA, GadgetKind::PushRet, "rop-push-ret-gadget")
                };
                let gadget = l.kernelbase.base + rva;
                // The genuine stub, "returning" into the gadget, then a
                // plausible API frame and the thread start.
                user.push(l.return_site(&SERVICES[s]));
                user.push(gadget);
                user.push(site(&l.kernelbase, 0x77 + s as u64));
                user.push(l.kernel32.base + Layout::BASE_THREAD_INIT_THUNK);
                user.push(l.ntdll.base + Layout::RTL_USER_THREAD_START);
                self.code.insert(gadget, CodeKind::Gadget(g));
                alt = Some(("normal", None));
                (pi, s, "indirect", Some("not_call_preceded"), t)
            }
            Ev::StackTruncation => {
                let pi = self.pick_proc(&[ProcKind::Implant], Some("beacon.exe"))?;
                let s = world::service_index(if self.rng.chance(500) {
                    "NtDelayExecution"
                } else {
                    "NtWaitForSingleObject"
                });
                let (l, p) = (&self.l, &self.procs[pi]);
                user.push(l.return_site(&SERVICES[s]));
                user.push(site(&l.kernelbase, 0x5100 + s as u64));
                // The sleep hook in the implant's image; its own return
                // address was zeroed, so the walk stops here.
                user.push(site(p.exe.as_ref()?, 0x5200));
                flags = &["truncated_stack"];
                (pi, s, "normal", None, "stack-truncation")
            }
            Ev::Wow64Bypass => {
                if !ps8 {
                    return None;
                }
                let pi = self.pick_proc(&[ProcKind::Wow64Implant], Some("gate32.exe"))?;
                let s = self.attack_service();
                let (l, p) = (&self.l, &self.procs[pi]);
                let w = l.wow64.as_ref()?;
                // The native stub, called by 32-bit code in the EXE that
                // switched to 64-bit mode itself.
                user.push(l.return_site(&SERVICES[s]));
                user.push(site(p.exe.as_ref()?, 0x700 + s as u64));
                user.push(site(p.exe.as_ref()?, 0x7ff));
                user.push(w[4].base + 0x1_fa29);
                user.push(w[3].base + 0x6_e7bd);
                user.push(w[3].base + 0x6_e78d);
                (pi, s, "indirect", Some("wow64_bypass"), "heavens-gate-stub")
            }
            Ev::LookalikeDataMapping => {
                let pi = self.pick_proc(&[ProcKind::Native], Some("MsMpEng.exe"))?;
                let s = self.pick_service(false);
                let salt = s as u64 * 1000 + 77;
                let (l, p) = (&self.l, &self.procs[pi]);
                user.push(l.return_site(&SERVICES[s]));
                user.push(site(&l.kernelbase, salt));
                tail(l, p, user, 3, salt);
                (pi, s, "normal", None, "benign-second-ntdll-mapped")
            }
            Ev::LookalikeException => {
                let pi = self.pick_proc(&[ProcKind::Gui, ProcKind::Native], None)?;
                let s = world::service_index("NtProtectVirtualMemory");
                let salt = u64::from(self.procs[pi].pid);
                let l = &self.l;
                let crt = l.others.first()?;
                // A handler calls VirtualProtect (a guard page, a JIT's
                // write watch) while the exception is dispatched.
                user.push(l.return_site(&SERVICES[s]));
                user.push(site(&l.kernelbase, salt + 0x31));
                user.push(site(crt, salt + 0x32));
                user.push(l.ntdll.base + 0x4_1a6b);
                user.push(l.ntdll.base + 0x4_18fb);
                user.push(l.ntdll.base + KI_USER_EXCEPTION_DISPATCHER + DISPATCHER_RETURN);
                let fault = crt.base + FAULT_RVA;
                user.push(fault);
                self.code.insert(fault, CodeKind::Fault);
                let (l, p) = (&self.l, &self.procs[pi]);
                tail(l, p, user, 2, salt);
                (pi, s, "normal", None, "benign-exception-handler")
            }
            Ev::LookalikeCallback => {
                let pi = self.pick_proc(&[ProcKind::Gui], None)?;
                let s = self.pick_service(true);
                let outer = world::service_index("NtUserGetMessage");
                let salt = s as u64 * 1000 + u64::from(self.procs[pi].pid);
                let (l, p) = (&self.l, &self.procs[pi]);
                let exe = p.exe.as_ref()?;
                // A window procedure, called back from inside GetMessage.
                user.push(l.return_site(&SERVICES[s]));
                user.push(site(&l.user32, salt));
                user.push(site(exe, salt + 1));
                user.push(site(&l.user32, salt + 2));
                user.push(l.ntdll.base + KI_USER_CALLBACK_DISPATCHER + DISPATCHER_RETURN);
                let interrupted = l.return_site(&SERVICES[outer]);
                user.push(interrupted);
                user.push(site(&l.user32, salt + 3));
                tail(l, p, user, 2, salt);
                self.code.insert(interrupted, CodeKind::Keep);
                (pi, s, "normal", None, "benign-window-callback")
            }
            Ev::LookalikeDeep => {
                let pi = self.pick_proc(&[ProcKind::Native, ProcKind::Gui], None)?;
                let s = self.pick_service(false);
                let salt = s as u64 * 1000 + u64::from(self.procs[pi].pid) + 9;
                let (l, p) = (&self.l, &self.procs[pi]);
                user.push(l.return_site(&SERVICES[s]));
                user.push(site(&l.kernelbase, salt));
                tail(l, p, user, 250, salt);
                (pi, s, "normal", None, "benign-deep-recursion")
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
                flags,
                access: None,
                target: None,
            },
        ))
    }
}

/// Frames kept by a StackWalk event (`StackWalk_Event`: `Stack1`..`Stack192`).
pub const MAX_STACK_FRAMES: usize = MAX_FRAMES;
