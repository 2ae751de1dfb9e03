//! Nested kernel-mode system calls: a driver, the I/O manager or win32k
//! calling `ZwXxx` while running in a *user* thread that is inside its own
//! system call (docs/verdicts.md, rule 2).
//!
//! What the dispatcher does (x64; read from two builds' disassembly of
//! `nt!KiSystemCall64`, in public decompilation dumps, not from a trace):
//! a kernel `ZwXxx` stub builds a machine frame whose return address is
//! `KiServiceLinkage` and jumps to `KiServiceInternal`, which sets
//! `PreviousMode` to kernel and jumps to `KiSystemServiceStart` (inside
//! `KiSystemCall64`: "DATA XREF: KiServiceInternal+5A"). From there user and
//! kernel callers share `KiSystemServiceRepeat` and `KiSystemServiceCopyEnd`,
//! whose `test PerfGlobalGroupMask+8, 40h` (the SYSCALL group) sends both to
//! `call PerfInfoLogSysCallEntry` before `call r10`/`call rax` runs the
//! service; only argument probing and the exit path look at the caller's
//! mode. So the NT Kernel Logger logs SysCallEnter for kernel `Zw` calls too
//! (InfinityHook and its successors skip them by testing
//! `ExGetPreviousMode() == KernelMode` in their logging hook).
//!
//! The StackWalk of a SysCallEnter is walked in `PerfInfoLogSysCallEntry`:
//! - a user call: `[logger frames…, D]` then the user part, where `D` is the
//!   dispatcher's return address after `call PerfInfoLogSysCallEntry`;
//! - a nested call: `[logger frames…, D, KiServiceLinkage or the driver,
//!   driver and nt frames…, the outer service routine, D']` then the
//!   thread's user part, whose `U` is the *outer* call's stub. `D'` is the
//!   outer call's return address after `call r10`/`call rax`, in the same
//!   dispatcher (0x20 bytes after `D` when the outer call was logged; 0x2dc
//!   and 0x785 bytes away in the two builds read when it was not).
//!
//! The test: the outermost kernel frame `L` and an earlier kernel frame `F`
//! lie within [`DISPATCHER_SPAN`] of each other with at least one frame
//! between them: two returns into one small function (the dispatcher, some
//! 0x700-0xd00 bytes) with other code between them. It needs no symbols, no
//! learned state (so `analyze` is deterministic in one pass and `live`
//! decides from the first call) and no ntoskrnl exports (`KiSystemCall64` is
//! not exported). A user call's kernel part holds one dispatcher frame, and
//! its logger frames (`PerfInfoLogSysCallEntry`, `EtwpLogKernelEvent`…) are
//! other functions; a Kernel-Audit-API-Calls event's (`EtwWrite`, `Ps*`, the
//! routine, the dispatcher) likewise. User code cannot write kernel frames,
//! so an implant cannot make its own call look nested.
//!
//! Seen in a real trace: the corpus's Windows 7 x64 trace has no
//! SysCallEnter, but 5 of the 1,271 kernel+user stacks the engine pairs
//! with a parent event (profile samples and image loads taken during a
//! nested call, in 3 processes, one through win32k) have this shape, the
//! dispatcher's `call r10` return (`nt+0x73313`) twice with the nested
//! call's frames between; the test finds those 5 and nothing else
//! (`tests/nested_corpus.rs`).
//!
//! Not verified: a real SysCallEnter trace with a nested call (no public
//! trace has the SYSCALL flag); 32-bit kernels (`KiFastCallEntry`/`KiSystemService`); where
//! the walk lands for the Zw stub's machine frame (`KiServiceLinkage` or the
//! driver: either is "a frame between").

/// Two kernel frames this close are taken as returns into the one system
/// service dispatcher. `KiSystemCall64` is 0x714 and 0xca5 bytes in the two
/// builds read; the farthest pair of its return addresses seen is 0x785.
pub const DISPATCHER_SPAN: u64 = 0x1000;

/// Whether the kernel part `kernel` (the frames before the first user
/// frame, innermost first) is that of a nested kernel-mode call: its
/// outermost frame and an earlier one, with frames between them, lie within
/// [`DISPATCHER_SPAN`].
#[inline]
pub fn is_nested(kernel: &[u64]) -> bool {
    // At least: D, one frame, D'.
    let Some((&last, rest)) = kernel.split_last() else {
        return false;
    };
    let Some((_, before)) = rest.split_last() else {
        return false;
    };
    before.iter().any(|&f| f.abs_diff(last) <= DISPATCHER_SPAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NT: u64 = 0xFFFF_F800_1000_0000;
    /// `PerfInfoLogSysCallEntry` and `EtwpLogKernelEvent` frames.
    const LOGGER: [u64; 2] = [NT + 0x20_f9a0, NT + 0x23_8b52];
    /// After `call PerfInfoLogSysCallEntry`, and after the logged path's
    /// `call r10` (0x20 further), as in the first build read.
    const D: u64 = NT + 0x16_5adf;
    const D_OUTER: u64 = NT + 0x16_5aff;
    const LINKAGE: u64 = NT + 0x16_6c10;
    const DRIVER: u64 = 0xFFFF_F800_2345_1234;
    const ROUTINE: u64 = NT + 0x5d_0c31;

    #[test]
    fn user_call_is_not_nested() {
        assert!(!is_nested(&[LOGGER[0], LOGGER[1], D]));
        assert!(!is_nested(&[D]));
        assert!(!is_nested(&[]));
    }

    #[test]
    fn nested_call_is_nested() {
        let k = [LOGGER[0], LOGGER[1], D, LINKAGE, DRIVER, ROUTINE, D_OUTER];
        assert!(is_nested(&k));
        // Outer call not logged (tracing started during it): its return
        // after the plain `call r10`, 0x785 bytes before `D`.
        let k = [LOGGER[0], D, DRIVER, ROUTINE, D - 0x785];
        assert!(is_nested(&k));
        // Nested twice: still one outermost dispatcher frame.
        let k = [D, DRIVER, ROUTINE, D_OUTER, DRIVER, ROUTINE, D_OUTER];
        assert!(is_nested(&k));
    }

    #[test]
    fn adjacent_or_distant_frames_are_not_nested() {
        // The routine right before the dispatcher (an audit event's kernel
        // part), even when close: no frame between.
        assert!(!is_nested(&[LOGGER[1], D - 0x300, D]));
        // A frame between, but the earlier frames are other functions.
        assert!(!is_nested(&[LOGGER[0], ROUTINE, DRIVER, D]));
        assert!(!is_nested(&[D, DRIVER, D + DISPATCHER_SPAN + 1]));
        assert!(is_nested(&[D, DRIVER, D + DISPATCHER_SPAN]));
    }
}
