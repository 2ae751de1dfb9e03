//! The correlator against a reference implementation: random event
//! sequences must finalise exactly the same entries, in the same order,
//! with the same counters. The reference (`support/reference.rs`) is the
//! correlator as it was before its fast paths; it lives here, not in the
//! library, and uses only the public `Correlator` API's types.

mod support;

use sentry_engine::correlate::Correlator;
use sentry_engine::{Finish, Parent, ParentHook};
use sentry_kernel::{Frames, StackKeyDefinition, StackKeyOp, StackKeyReference, StackPart};
use support::reference;
use support::Xorshift;

fn fr(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|a| a.to_le_bytes()).collect()
}

const K: u64 = 0xFFFF_F800_0000_1000;
const U: u64 = 0x7FF0_0000_0014;

type Out = (
    Finish,
    u64,
    Option<Parent>,
    u16,
    Vec<u64>,
    Vec<u64>,
    (bool, bool, bool),
    (u32, u32, u16, u32),
);

/// Moves finalised entries into `out`: the same code for both
/// correlators (their entry types differ, their fields do not).
macro_rules! drain {
    ($c:expr, $out:expr) => {
        while let Some((s, f)) = $c.pop_ready() {
            let e = $c.entry(s);
            $out.push((
                f,
                e.ts,
                e.parent,
                e.parent_processor,
                e.kernel.clone(),
                e.user.clone(),
                (e.has_kernel, e.has_user, e.has_thread),
                (e.pid, e.tid, e.stack_processor, e.fragments),
            ));
            $c.release(s);
        }
    };
}

fn drain_new(c: &mut Correlator, out: &mut Vec<Out>) {
    drain!(c, out);
}

fn drain_ref(c: &mut reference::RefCorrelator, out: &mut Vec<Out>) {
    drain!(c, out);
}

/// Random event sequences (colliding timestamps, several processors and
/// threads, split parts, stacks before parents, stack keys defined
/// before and after their references, floods past the cap): the
/// correlator finalises exactly the entries, in exactly the order, with
/// exactly the counters of the reference implementation.
#[test]
fn same_results_as_the_reference_correlator() {
    for seed in 1..=300u64 {
        let mut rng = Xorshift(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let window = 1 + rng.below(200);
        let cap = 1 + rng.below(if seed % 3 == 0 { 8 } else { 80 }) as usize;
        let mut a = Correlator::new(window, cap);
        let mut b = reference::RefCorrelator::new(window, cap);
        let co = seed % 4 == 0;
        a.set_count_co_parents(co);
        b.set_count_co_parents(co);
        let (mut oa, mut ob) = (Vec::new(), Vec::new());
        let mut now = 1000u64;
        let mut recent: Vec<u64> = vec![now];
        let steps = 200 + rng.below(2000);
        for step in 0..steps {
            now += rng.below(if seed % 5 == 0 { 2 } else { 40 });
            // A timestamp: now, a recent parent's, or anything.
            let ts = match rng.below(10) {
                0..=4 => now,
                5..=8 => recent[rng.below(recent.len() as u64) as usize],
                _ => rng.below(now + 100),
            };
            if recent.len() > 24 {
                recent.remove(0);
            }
            recent.push(ts);
            let cpu = rng.below(3) as u16;
            let pid = [0u32, 4, 50, 60][rng.below(4) as usize];
            let tid = 7 + rng.below(3) as u32;
            let nk = rng.below(3) as usize;
            let nu = rng.below(3) as usize;
            let mut frames: Vec<u64> = (0..nk).map(|i| K + i as u64).collect();
            frames.extend((0..nu).map(|i| U + i as u64));
            let key = rng.below(6);
            match rng.below(20) {
                0..=6 => {
                    let p = if rng.below(4) == 0 {
                        Parent::Other(ParentHook::Kernel(rng.below(3) as u16))
                    } else {
                        Parent::SysCall {
                            address: rng.below(4),
                        }
                    };
                    a.add_parent(ts, cpu, p);
                    b.add_parent(ts, cpu, p);
                }
                7..=13 => {
                    let bytes = fr(&frames);
                    let f = Frames::new(&bytes, 8);
                    a.add_stack(ts, cpu, pid, tid, &f);
                    b.add_stack(ts, cpu, pid, tid, &f);
                }
                14 | 15 => {
                    let r = StackKeyReference {
                        part: if rng.below(2) == 0 {
                            StackPart::Kernel
                        } else {
                            StackPart::User
                        },
                        event_timestamp: ts,
                        stack_process: pid,
                        stack_thread: tid,
                        stack_key: key,
                    };
                    a.add_key_reference(&r, cpu);
                    b.add_key_reference(&r, cpu);
                }
                16 => {
                    let op = [StackKeyOp::Create, StackKeyOp::Delete, StackKeyOp::Rundown]
                        [rng.below(3) as usize];
                    let bytes = fr(&frames);
                    let d = StackKeyDefinition {
                        op,
                        stack_key: key,
                        frames: Frames::new(&bytes, 8),
                    };
                    a.define_key(&d);
                    b.define_key(&d);
                }
                _ => {
                    a.expire(now);
                    b.expire(now);
                }
            }
            if rng.below(3) != 0 {
                a.expire(now);
                b.expire(now);
            }
            drain_new(&mut a, &mut oa);
            drain_ref(&mut b, &mut ob);
            assert_eq!(oa, ob, "seed {seed} step {step}");
            assert_eq!(a.pending(), b.pending(), "seed {seed} step {step}");
            for p in [0, 4, 50, 60] {
                assert_eq!(a.waits_for_keys(p), b.waits_for_keys(p));
            }
            assert!(a.pending() <= cap);
        }
        a.flush();
        b.flush();
        drain_new(&mut a, &mut oa);
        drain_ref(&mut b, &mut ob);
        assert_eq!(oa, ob, "seed {seed} flush");
        assert_eq!(a.stats, b.stats, "seed {seed}");
        assert_eq!(a.pending(), 0);
    }
}
