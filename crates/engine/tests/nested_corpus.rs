//! `classify::nested` against real kernel stacks: the Windows 7 x64 trace
//! of /work/shared/corpus has no SysCallEnter, but its StackWalk events
//! (profile samples, image loads) taken while a thread ran a kernel-mode
//! `Zw` call nested in its own system call show the same shape a nested
//! SysCallEnter's stack has: the dispatcher's return address (`call r10`
//! in `KiSystemCall64`) twice, the inner call's and the outer call's, with
//! the driver/nt frames of the outer call between them, then the user part.
//!
//! Checked independently of the test's rule: a stack is nested exactly
//! when its outermost kernel frame occurs twice in its kernel part (on this
//! build the inner and outer calls return to the same place, as neither
//! was logged). A Python walk of `syscall-sentry dump` finds 6 such stacks
//! of the 1,274 with both parts, in 3 processes (one through win32k); the
//! engine pairs 1,271 of those with a parent event, 5 of them nested.

mod support;

use sentry_engine::classify::nested::is_nested;
use sentry_engine::{Engine, EngineConfig, Pairing, StackPair, SyscallVerdict, VerdictSink};
use sentry_etl::{EtlFile, Order};
use support::corpus;

#[derive(Default)]
struct Stacks {
    with_user: u64,
    nested: Vec<(u32, Vec<u64>)>,
    /// Outermost kernel frame repeated in the kernel part.
    repeated: u64,
}

impl VerdictSink for Stacks {
    fn verdict(&mut self, _v: &SyscallVerdict<'_>) {
        panic!("no SysCallEnter in the corpus");
    }
    fn stack_pair(&mut self, p: &StackPair<'_>) {
        let kb = p.resolver.kernel_boundary;
        let Some(ui) = p.stack.iter().position(|&a| a < kb) else {
            return;
        };
        let kernel = &p.stack[..ui];
        if kernel.is_empty() {
            return;
        }
        self.with_user += 1;
        let last = kernel[kernel.len() - 1];
        if kernel[..kernel.len() - 1].contains(&last) {
            self.repeated += 1;
        }
        if is_nested(kernel) {
            self.nested.push((p.pid, kernel.to_vec()));
        }
    }
}

#[test]
fn real_nested_kernel_calls_are_found_and_nothing_else() {
    let Some(path) = corpus("win7-x64-kernel-stacks.etl") else {
        eprintln!("corpus not found: skipped");
        return;
    };
    let file = EtlFile::open(&path).unwrap();
    let mut engine = Engine::new(EngineConfig {
        pairing: Pairing::AnyEvent,
        ..EngineConfig::default()
    });
    let mut sink = Stacks::default();
    let mut r = file.events(Order::Time);
    while let Some(ev) = r.next_event() {
        engine.process(&ev, &mut sink);
    }
    engine.finish(&mut sink);
    // 1,274 by (timestamp, thread) in the dump; the engine pairs 1,271 of
    // them with a parent event.
    assert_eq!(sink.with_user, 1271);
    assert_eq!(sink.repeated, 5);
    assert_eq!(sink.nested.len(), 5);
    let mut pids: Vec<u32> = sink.nested.iter().map(|n| n.0).collect();
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids, [1316, 1876, 3884]);
    for (_, k) in &sink.nested {
        let last = k[k.len() - 1];
        assert_eq!(k.iter().filter(|&&f| f == last).count(), 2, "{k:x?}");
    }
}
