//! Rule 8c's stack shape (docs/verdicts.md: an API-layer run right under
//! ntdll, not at the root) on the real stacks of /work/shared/corpus (no
//! SysCallEnter there: every StackWalk paired with any event is a real
//! stack the kernel walked). Only stacks whose innermost user frame is in
//! ntdll are looked at, as a syscall's would be. The shapes found are what
//! rule 8c would have to bound with `--images` on a real machine; none can
//! be an alert here (no module bytes), and their frames are printed so
//! that a reader sees which real code has the shape: 25 of 5,210 stacks,
//! all on WoW64's 32-bit side (x86 thread roots and a DllMain), where the
//! rule is not decided (no function table).

mod support;

use std::collections::BTreeMap;

use sentry_engine::classify::proxy::shape;
use sentry_engine::{ModuleKind, StackPair, SyscallVerdict, VerdictSink};

#[derive(Default)]
struct Seen {
    from_ntdll: u64,
    /// Shapes whose API frame is in a native (System32) module: the ones
    /// rule 8c would decide.
    native: u64,
    shapes: BTreeMap<String, u64>,
}

impl VerdictSink for Seen {
    fn verdict(&mut self, _v: &SyscallVerdict<'_>) {}
    fn stack_pair(&mut self, p: &StackPair<'_>) {
        let Some(ui) = p.stack.iter().position(|&a| a < p.resolver.kernel_boundary) else {
            return;
        };
        let Some(m) = p.resolver.modules else { return };
        let user = &p.stack[ui..];
        if !m.find(user[0]).is_some_and(|x| x.kind == ModuleKind::Ntdll) {
            return;
        }
        self.from_ntdll += 1;
        if let Some((a, n)) = shape(m, user) {
            let wow = m
                .find(user[a])
                .is_some_and(|x| x.path.to_ascii_lowercase().contains("\\syswow64\\"));
            if !wow {
                self.native += 1;
            }
            let name = |i: usize| {
                m.find(user[i]).map_or("?".to_string(), |x| {
                    format!("{}+{:#x}", x.name.to_ascii_lowercase(), user[i] - x.base)
                })
            };
            let all: Vec<String> = (0..user.len()).map(name).collect();
            *self
                .shapes
                .entry(format!("A {} N {}: {}", name(a), name(n), all.join(" ")))
                .or_default() += 1;
        }
    }
}

#[test]
fn proxied_call_shapes_on_real_stacks() {
    let mut stacks = 0;
    let mut shapes = 0;
    for name in [
        "win7-x64-kernel-stacks.etl",
        "win8-x64-compressed-stackcache.etl",
        "win8-wow64-compressed-stackcache.etl",
    ] {
        let mut seen = Seen::default();
        let Some(_) = support::replay_corpus(name, &mut seen) else {
            continue;
        };
        let n: u64 = seen.shapes.values().sum();
        eprintln!(
            "{name}: {} user stacks from ntdll, {n} with the proxied-call shape",
            seen.from_ntdll
        );
        for (k, v) in &seen.shapes {
            eprintln!("  {v:>5}  {k}");
        }
        // What the real shapes are: WoW64 threads whose 32-bit start
        // routine is in ntdll (the thread pool's workers): the 32-bit
        // kernel32!BaseThreadInitThunk followed by the two frames of the
        // 32-bit thread root, and kernel32's DllMain under the 32-bit
        // loader. No native one: none of these could be decided, so none
        // could be an alert even with the binaries.
        assert_eq!(seen.native, 0, "{name}");
        stacks += seen.from_ntdll;
        shapes += n;
    }
    eprintln!("total: {stacks} stacks from ntdll, {shapes} shapes");
    if stacks > 0 {
        assert!(
            shapes > 0,
            "the corpus has real shapes (WoW64 thread roots)"
        );
    }
}
