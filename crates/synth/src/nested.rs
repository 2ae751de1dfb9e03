//! Kernel-mode system calls nested in a user thread's own system call
//! (docs/verdicts.md rule 2; the engine's `classify::nested` has the
//! sources): during `NtCreateFile`, `NtDeviceIoControlFile`,
//! `NtCreateSection`, ... a filter driver, the I/O manager or the
//! configuration manager calls `ZwXxx`, which re-enters the system service
//! dispatcher with `PreviousMode` kernel, and the NT Kernel Logger logs a
//! SysCallEnter for it. Its StackWalk is the kernel part
//! `[PerfInfoLogSysCallEntry, KiSystemServiceCopyEnd (after the logging
//! call), KiServiceLinkage, driver/nt frames, the outer routine, the outer
//! call's dispatcher frame]` followed by the thread's user part: the outer
//! call's, whose `U` is the outer service's ntdll stub. Truth:
//! `kernel_origin` (kernel code made the call), never a stub mismatch.
//!
//! And, for the `degraded` scenario, a user call whose StackWalk brings the
//! kernel part only: the user part was lost. Truth: `no_stack` with the
//! pid and tid (the engine's `stack_split: "user_part_missing"`).

use crate::world::{self, Layout, SERVICES};
use crate::{site, tail, Call, Gen, ProcKind};

/// Technique of a nested kernel-mode call.
pub const TECHNIQUE: &str = "kernel-nested";
/// Technique of a user call whose user part never arrives.
pub const USER_PART_LOST: &str = "user-part-lost";

/// RVA of `KiServiceLinkage` (the machine frame a kernel `Zw` stub builds
/// returns there), near the dispatcher as in ntoskrnl.
const KI_SERVICE_LINKAGE: u64 = 0x40_c5d0;
/// The outer call's return address in the dispatcher, after the logged
/// path's `call rax` (0x22 after the return from the logging call, as in
/// one build read).
const OUTER_DISPATCH: u64 = Layout::KI_SYSTEM_SERVICE_COPY_END + 0x22;

/// (outer user call, the kernel-mode calls drivers make in it).
const NESTINGS: [(&str, &[&str]); 4] = [
    (
        "NtCreateFile",
        &[
            "NtQueryInformationFile",
            "NtQueryValueKey",
            "NtOpenKey",
            "NtClose",
            "NtReadFile",
        ],
    ),
    (
        "NtDeviceIoControlFile",
        &["NtQueryValueKey", "NtClose", "NtSetEvent"],
    ),
    (
        "NtCreateSection",
        &["NtQueryInformationFile", "NtReadFile", "NtClose"],
    ),
    ("NtOpenFile", &["NtQueryAttributesFile", "NtClose"]),
];

impl<W: std::io::Write + std::io::Seek, T: std::io::Write> Gen<W, T> {
    /// A nested kernel-mode call: `kernel` holds the logging frames on
    /// entry (`build` pushes them); the rest of the kernel part and the
    /// outer call's user part are added here.
    pub(crate) fn build_nested(
        &mut self,
        kernel: &mut Vec<u64>,
        user: &mut Vec<u64>,
    ) -> Option<(usize, Call)> {
        let pi = self.pick_proc(
            &[
                ProcKind::Native,
                ProcKind::Gui,
                ProcKind::JitHost,
                ProcKind::Implant,
            ],
            None,
        )?;
        let (outer, inner) = NESTINGS[self.rng.below(NESTINGS.len())];
        let outer = world::service_index(outer);
        let inner = world::service_index(inner[self.rng.below(inner.len())]);
        let drivers = self.rng.range(1, 4);
        let salt = outer as u64 * 1000 + u64::from(self.procs[pi].pid);
        let depth = self.depth(salt);
        let (l, p) = (&self.l, &self.procs[pi]);
        let nt = l.ntoskrnl().base;
        kernel.push(nt + KI_SERVICE_LINKAGE);
        for k in 0..drivers {
            let m = &l.kernel[5 + (salt + k) as usize % (l.kernel.len() - 5)];
            kernel.push(site(m, salt + k));
        }
        kernel.push(l.routine(&SERVICES[outer]) + 0x2c1);
        kernel.push(nt + OUTER_DISPATCH);
        // The outer call's user part, as a benign ntdll call's.
        user.push(l.return_site(&SERVICES[outer]));
        user.push(site(&l.kernelbase, salt));
        tail(l, p, user, depth, salt);
        Some((
            pi,
            Call {
                service: inner,
                verdict: "kernel_origin",
                reason: None,
                technique: TECHNIQUE,
                module: None,
                alt: None,
                flags: &[],
                access: None,
                target: None,
            },
        ))
    }
}
