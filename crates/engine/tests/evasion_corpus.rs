//! The call-stack evasion rules on the real traces of /work/shared/corpus
//! (no SysCallEnter there: every StackWalk, paired with any event, is a
//! real stack the kernel walked). What they must not do on real machines:
//! - rule 3a: no real mapping is a clone (one System32 ntdll/win32u base
//!   per machine; WoW64's SysWOW64 copies are not clones);
//! - rule 8: no real WoW64 stack through the native ntdll continues in a
//!   module other than WoW64's layer;
//! - the `truncated_stack` flag: counted and printed (it is a flag, not an
//!   alert, because real walks end early: 19 of the Windows 7 trace's
//!   multi-frame user stacks end in .NET's mscoree.dll).

mod support;

use sentry_engine::{
    stack_truncated, wow64_bypassed, Engine, EngineConfig, ModuleKind, Pairing, StackPair,
    SyscallVerdict, VerdictSink,
};
use sentry_etl::{EtlFile, Order};
use support::corpus;

#[derive(Default)]
struct Seen {
    user_stacks: u64,
    truncated: u64,
    wow64_native: u64,
    bypassed: u64,
    clones: Vec<String>,
}

impl VerdictSink for Seen {
    fn verdict(&mut self, _v: &SyscallVerdict<'_>) {}
    fn stack_pair(&mut self, p: &StackPair<'_>) {
        let Some(ui) = p.stack.iter().position(|&a| a < p.resolver.kernel_boundary) else {
            return;
        };
        self.user_stacks += 1;
        let modules = p.resolver.modules;
        if stack_truncated(modules, p.stack, p.resolver.kernel_boundary) {
            self.truncated += 1;
        }
        let (Some(proc_), Some(m)) = (p.process, modules) else {
            return;
        };
        for x in m.iter() {
            if x.kind == ModuleKind::ClonedStub {
                self.clones.push(x.path.to_string());
            }
        }
        let user = &p.stack[ui..];
        if proc_.wow64 && m.find(user[0]).is_some_and(|x| x.kind == ModuleKind::Ntdll) {
            self.wow64_native += 1;
            if wow64_bypassed(m, user) {
                self.bypassed += 1;
            }
        }
    }
}

#[test]
fn evasion_rules_stay_quiet_on_real_stacks() {
    let mut total = Seen::default();
    for name in [
        "win7-x64-kernel-stacks.etl",
        "win8-x64-compressed-stackcache.etl",
        "win8-wow64-compressed-stackcache.etl",
        "win10-x64-kernel-rundown.etl",
    ] {
        let Some(path) = corpus(name) else {
            eprintln!("corpus file {name} not found: skipped");
            continue;
        };
        let file = EtlFile::open(&path).unwrap();
        let mut engine = Engine::new(EngineConfig {
            pairing: Pairing::AnyEvent,
            ..EngineConfig::default()
        });
        let mut seen = Seen::default();
        let mut r = file.events(Order::Time);
        while let Some(ev) = r.next_event() {
            engine.process(&ev, &mut seen);
        }
        engine.finish(&mut seen);
        let mut images = 0;
        for p in engine.state().processes() {
            for x in p.modules.iter() {
                images += 1;
                if x.kind == ModuleKind::ClonedStub {
                    seen.clones.push(x.path.to_string());
                }
            }
        }
        assert!(images > 0, "{name}: no module maps");
        eprintln!(
            "{name}: {} user stacks, {} flagged truncated_stack, {} WoW64 stacks through the native ntdll, {} bypassed",
            seen.user_stacks, seen.truncated, seen.wow64_native, seen.bypassed
        );
        assert!(seen.clones.is_empty(), "{name}: {:?}", seen.clones);
        assert_eq!(seen.bypassed, 0, "{name}");
        total.user_stacks += seen.user_stacks;
        total.truncated += seen.truncated;
        total.wow64_native += seen.wow64_native;
    }
    if total.user_stacks > 0 {
        // The corpus has real WoW64 stacks and real early-ending walks.
        assert!(total.wow64_native > 100, "{}", total.wow64_native);
        assert!(total.truncated > 0);
    }
}
