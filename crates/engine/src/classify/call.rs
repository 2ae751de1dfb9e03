//! The one classifier of a call, whatever its source: resolve the
//! process, learn (online/learning passes), hint the sink, apply the rules,
//! leave rule 5 open in a deferred pass, apply the allowlist, tally, count,
//! hand the verdict to the sink. And, at the end of a deferred pass,
//! settling the counts of the decisions that waited for the learned table.

use crate::allowlist;
use crate::classify::{self, Context, Reason, Verdict};
use crate::correlate::Finish;
use crate::fxhash;
use crate::resolve::Resolver;
use crate::source::{self, audit::AuditFacts, StackedCall};
use crate::state::ModuleKind;
use crate::verdict::{ServiceCheck, SyscallVerdict, VerdictSink};
#[cfg(test)]
use crate::Allowlist;
use crate::{Engine, Learning};

/// Distinct (return site, routine, outcome) tallies kept at most.
const MAX_TALLIES: usize = 1 << 20;

/// [`Learning::Deferred`]: what was seen at each return site (stub module
/// kind and offset) with each `SysCallAddress` and outcome, with its count:
/// the observations the service table is built from at the end, and the
/// counts of the syscalls whose rule-5 decision waits for it. One flat map,
/// so a syscall costs one lookup and touches one bucket.
pub(crate) type SiteTallies = std::collections::HashMap<TallyKey, u64, fxhash::FxBuildHasher>;

/// One return site, one `SysCallAddress`, one outcome, in three words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TallyKey {
    offset: u64,
    address: u64,
    /// Module kind, then the open outcome ([`TallyKey::open`]).
    packed: u64,
}

impl TallyKey {
    /// `open`: `None` when decided without the table (both names known),
    /// else (verdict if the stub matches, its allowlist entry, the
    /// `stub_mismatch` alternative's entry). Entries are below
    /// [`crate::Allowlist::MAX_ENTRIES`], so each fits in 24 bits.
    fn new(
        kind: ModuleKind,
        offset: u64,
        address: u64,
        open: Option<(Verdict, Option<usize>, Option<usize>)>,
    ) -> TallyKey {
        let entry = |i: Option<usize>| i.map_or(0, |i| (i as u64 + 1) & 0xFF_FFFF);
        let open = open.map_or(0, |(v, e, m)| {
            1 | (v as u64) << 1 | entry(e) << 8 | entry(m) << 32
        });
        TallyKey {
            offset,
            address,
            packed: kind as u64 | open << 8,
        }
    }

    fn kind(&self) -> ModuleKind {
        const KINDS: [ModuleKind; 6] = [
            ModuleKind::Ntdll,
            ModuleKind::Win32u,
            ModuleKind::NtdllWow64,
            ModuleKind::Other,
            ModuleKind::ClonedStub,
            ModuleKind::Wow64Layer,
        ];
        KINDS[(self.packed & 7) as usize % KINDS.len()]
    }

    fn open(&self) -> Option<(Verdict, Option<usize>, Option<usize>)> {
        let o = self.packed >> 8;
        if o & 1 == 0 {
            return None;
        }
        let entry = |x: u64| (x & 0xFF_FFFF).checked_sub(1).map(|i| i as usize);
        Some((
            Verdict::ALL[((o >> 1) & 7) as usize % Verdict::ALL.len()],
            entry(o >> 8),
            entry(o >> 32),
        ))
    }
}

impl Engine {
    /// Classifies one syscall (its stack: kernel part then user part,
    /// innermost first; ignored without `has_stack`) and hands the verdict
    /// to `sink`.
    #[inline(always)]
    pub(crate) fn emit_syscall(
        &mut self,
        pair: StackedCall,
        stack_all: &[u64],
        finish: Finish,
        sink: &mut dyn VerdictSink,
    ) {
        self.emit_call(pair, stack_all, finish, sink, None)
    }

    /// [`Engine::emit_syscall`] for any source: `audit` is set for a
    /// Kernel-Audit-API-Calls event (its pid and tid are known even
    /// without a stack).
    #[inline(always)]
    pub(crate) fn emit_call(
        &mut self,
        pair: StackedCall,
        stack_all: &[u64],
        finish: Finish,
        sink: &mut dyn VerdictSink,
        audit: Option<&AuditFacts>,
    ) {
        self.emit_call_split(pair, stack_all, finish, sink, audit, None)
    }

    /// [`Engine::emit_call`] with what the verdict says of a split stack
    /// of a SysCallEnter (`stack_split`: the user part never came; the
    /// pid and tid of its kernel part are kept).
    #[inline(always)]
    pub(crate) fn emit_call_split(
        &mut self,
        pair: StackedCall,
        stack_all: &[u64],
        finish: Finish,
        sink: &mut dyn VerdictSink,
        audit: Option<&AuditFacts>,
        stack_split: Option<source::split::StackSplit>,
    ) {
        let StackedCall {
            ts,
            parent_processor,
            address,
            has_stack,
            pid,
            tid,
        } = pair;
        let process = if has_stack {
            self.state.process(pid)
        } else {
            None
        };
        let resolver = Resolver::of(
            process,
            &self.state,
            self.kernel_boundary,
            self.system_dlls.as_deref(),
        );
        let stack = has_stack.then_some(stack_all);
        if matches!(self.learning, Learning::Online | Learning::Only) {
            if let Some(s) = stack {
                classify::learn_from(
                    process,
                    s,
                    self.kernel_boundary,
                    self.system_dlls.as_deref(),
                    address,
                    &mut self.services,
                );
            }
            if self.learning == Learning::Only {
                return;
            }
        }
        if let Some(s) = stack {
            // The sink's per-call-site state is a large random-access table:
            // start that lookup now, so it overlaps the classification.
            if let Some(&u) = s.iter().find(|&&a| a < self.kernel_boundary) {
                sink.prefetch(pid, u);
            }
        }
        let deferred = self.learning == Learning::Deferred;
        let ctx = Context {
            process,
            kernel: self.state.kernel_modules(),
            kernel_boundary: self.kernel_boundary,
            system_dlls: self.system_dlls.as_deref(),
            services: if deferred {
                &self.no_services
            } else {
                &self.services
            },
            images: self.images.as_deref(),
        };
        let outcome = classify::classify(&ctx, stack, address);
        if outcome.verdict == Verdict::KernelOrigin && outcome.user_index.is_some() {
            self.stats.nested_kernel_calls += 1;
        }
        self.stats.frames_checked += u64::from(outcome.bytes.checked);
        self.stats.frames_not_done += u64::from(outcome.bytes.not_done);
        classify::exception::count(&mut self.stats, &outcome);
        match outcome.proxy {
            classify::proxy::ProxyCheck::NoShape => {}
            classify::proxy::ProxyCheck::NotDone => self.stats.proxy_not_done += 1,
            _ => self.stats.proxy_checked += 1,
        }
        let u = outcome.user_index.map_or(0, |i| stack_all[i]);
        // Deferred learning: every return-site observation is counted (as
        // `learn_from` does), and a rule-5 decision that needs the learned
        // service waits for the whole input.
        let mut service_check = None;
        let mut observed = None;
        if deferred && outcome.at_return_site {
            if let Some(m) = outcome.user_module {
                let offset = source::audit::site_key(u - m.base, address);
                observed = Some((m.kind, offset));
                if !outcome.by_names {
                    service_check = Some(ServiceCheck {
                        kind: m.kind,
                        offset,
                        mismatch_suppressed: None,
                    });
                }
            }
        }
        let mut verdict = outcome.verdict;
        let mut reason = outcome.reason;
        let mut suppressed = None;
        if verdict.is_alert() {
            if let Some(r) = self.completeness.unresolved(&outcome, process, ts) {
                verdict = Verdict::Unresolved;
                reason = Some(r);
                self.stats.unresolved.add(r);
            } else if reason == Some(Reason::Unbacked) {
                // Built-in allowlist (docs/verdicts.md), before user entries.
                if let Some(i) = crate::builtin_allowlist::chromium_sandbox(
                    &self.builtin,
                    &mut self.stats.builtin.chromium_sandbox,
                    process,
                    &outcome,
                    self.state.kernel_modules(),
                    self.system_dlls.as_deref(),
                    self.kernel_boundary,
                    u,
                    address,
                ) {
                    suppressed = Some((verdict, reason, i));
                    verdict = Verdict::Normal;
                    reason = None;
                }
            }
        }
        if !self.allowlist.is_empty() {
            let mut facts = allowlist::AlertFacts {
                process: process.map_or("", |p| p.image_file_name.as_str()),
                module: outcome.user_module.map(|m| &*m.name),
                offset: outcome.user_module.map_or(u, |m| u - m.base),
                caller_module: outcome.caller_module.map(|m| &*m.name),
                identity: outcome.user_module.map(allowlist::Identity::of),
                caller_identity: outcome.caller_module.map(allowlist::Identity::of),
                sha256: match (
                    self.allowlist.uses_sha256(),
                    outcome.user_module,
                    &self.images,
                ) {
                    (true, Some(m), Some(imgs)) => m.image.and_then(|i| imgs.sha256_hex(i)),
                    _ => None,
                },
                // Filled in for alerts only (a signature check is costly).
                signer: None,
                verdict,
                reason,
            };
            if verdict.is_alert() || service_check.is_some() {
                if let (true, Some(m), Some(imgs)) = (
                    self.allowlist.uses_signer(),
                    outcome.user_module,
                    &self.images,
                ) {
                    facts.signer = m.image.and_then(|i| imgs.trusted_signer(i));
                }
            }
            if verdict.is_alert() {
                // An open rule-5 decision counts its suppression when it
                // settles (the other alternative may be the one reported).
                let hit = if service_check.is_some() {
                    self.allowlist.matching(&facts)
                } else {
                    self.allowlist.check(&facts)
                };
                if let Some(i) = hit {
                    suppressed = Some((verdict, reason, i));
                    verdict = Verdict::Normal;
                    reason = None;
                }
            }
            if let Some(c) = &mut service_check {
                facts.verdict = Verdict::Indirect;
                facts.reason = Some(Reason::StubMismatch);
                c.mismatch_suppressed = self.allowlist.matching(&facts);
            }
        }
        if let Some((kind, offset)) = observed {
            let open =
                service_check.map(|c| (verdict, suppressed.map(|s| s.2), c.mismatch_suppressed));
            let key = TallyKey::new(kind, offset, address, open);
            let full = self.tallies.len() >= MAX_TALLIES;
            match self.tallies.get_mut(&key) {
                Some(n) => *n += 1,
                None if !full => {
                    self.tallies.insert(key, 1);
                }
                None => {
                    // Hostile input (return sites x routines without end):
                    // bounded memory first. Not learned, decided as if the
                    // stub matched, and counted.
                    service_check = None;
                    self.stats.service_checks_settled_early += 1;
                    if let Some((_, _, i)) = suppressed {
                        self.allowlist.count(i, 1);
                    }
                }
            }
        }
        match service_check {
            Some(_) => self.stats.service_checks_deferred += 1,
            None => {
                if suppressed.is_some() {
                    self.stats.suppressed += 1;
                }
                self.stats.verdicts.add(verdict);
            }
        }
        let known = has_stack || audit.is_some() || stack_split.is_some();
        let target = audit
            .and_then(|a| a.target_pid)
            .and_then(|p| self.state.process(p));
        let v = SyscallVerdict {
            timestamp: ts,
            processor: parent_processor,
            service_address: address,
            pid: (known && pid != u32::MAX).then_some(pid),
            tid: (known && tid != u32::MAX).then_some(tid),
            verdict,
            reason,
            suppressed,
            stack: stack.unwrap_or(&[]),
            outcome: &outcome,
            process,
            finish,
            resolver,
            images: self.images.as_deref(),
            service_check,
            audit,
            target,
            stack_split,
        };
        sink.verdict(&v);
    }

    /// [`Learning::Deferred`]: the service table is final; settles the
    /// counts of the syscalls whose rule-5 decision waited for it.
    pub(crate) fn settle_deferred(&mut self) {
        let tallies = std::mem::take(&mut self.tallies);
        for (t, &n) in &tallies {
            self.services.record_n(t.kind(), t.offset, t.address, n);
        }
        for (t, n) in tallies {
            let (kind, offset, address) = (t.kind(), t.offset, t.address);
            let Some((verdict, entry, mismatch_suppressed)) = t.open() else {
                continue;
            };
            let check = ServiceCheck {
                kind,
                offset,
                mismatch_suppressed,
            };
            // Only the suppression's presence matters for the counts.
            let suppressed = entry.map(|i| (verdict, None, i));
            let s = check.settle(&self.services, address, verdict, None, suppressed);
            self.stats.verdicts.add_n(s.verdict, n);
            if let Some((_, _, i)) = s.suppressed {
                self.stats.suppressed += n;
                self.allowlist.count(i, n);
            }
        }
    }
}

#[cfg(test)]
mod tally_key_tests {
    use super::*;

    /// Every field survives the packing, and different outcomes stay
    /// different keys.
    #[test]
    fn tally_key_round_trips() {
        let kinds = [
            ModuleKind::Ntdll,
            ModuleKind::Win32u,
            ModuleKind::NtdllWow64,
            ModuleKind::Other,
            ModuleKind::ClonedStub,
            ModuleKind::Wow64Layer,
        ];
        let entries = [None, Some(0), Some(7), Some(Allowlist::MAX_ENTRIES - 1)];
        let (mut outcomes, mut keys) = (Vec::new(), std::collections::HashSet::new());
        for kind in kinds {
            for v in Verdict::ALL {
                for e in entries {
                    for m in entries {
                        outcomes.push((kind, Some((v, e, m))));
                    }
                }
            }
            outcomes.push((kind, None));
        }
        for &(kind, open) in &outcomes {
            let k = TallyKey::new(kind, 0x1234, 0xffff_f800_0000_1000, open);
            assert_eq!(k.kind(), kind);
            assert_eq!(k.open(), open);
            assert_eq!((k.offset, k.address), (0x1234, 0xffff_f800_0000_1000));
            keys.insert(k);
        }
        assert_eq!(keys.len(), outcomes.len());
    }
}
