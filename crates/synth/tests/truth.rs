//! The truth is derivable from the trace: an independent, deliberately
//! naive implementation of docs/verdicts.md (no `--system-dlls`: return
//! sites by the 0x20/0x14 rule, services learned from the trace) run over
//! what `sentry-etl` reads and `sentry-kernel` decodes must reproduce every
//! truth entry (verdict, reason, pid, tid, processor, service address), for
//! every scenario, both pointer sizes, with compression and stack caching.

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;

use sentry_etl::{EtlFile, Order};
use sentry_kernel::{decode, KernelEvent, Lifecycle, StackPart};
use sentry_synth::{generate, Options, Scenario};
use serde_json::Value;

#[derive(Debug)]
struct Image {
    base: u64,
    end: u64,
    size: u64,
    tds: u32,
    path: String,
    from: u64,
    to: u64,
}

#[derive(Default)]
struct Parts {
    pid: Option<u32>,
    tid: Option<u32>,
    kernel: Vec<u64>,
    user: Vec<u64>,
}

struct Derived {
    processor: u16,
    address: u64,
    pid: Option<u32>,
    tid: Option<u32>,
    verdict: &'static str,
    reason: Option<&'static str>,
    module: Option<String>,
    truncated: bool,
}

fn is_stub_module(path: &str) -> bool {
    let p = path.to_ascii_lowercase();
    p.ends_with("\\windows\\system32\\ntdll.dll") || p.ends_with("\\windows\\system32\\win32u.dll")
}

/// Reads the trace and applies the verdict rules.
fn derive(etl: Vec<u8>) -> (BTreeMap<u64, Derived>, u32) {
    let file = EtlFile::from_bytes(etl).unwrap();
    let ps = file.header().pointer_size;
    let kstart = if ps == 8 {
        0xFFFF_8000_0000_0000u64
    } else {
        0x8000_0000
    };
    let mut images: HashMap<u32, Vec<Image>> = HashMap::new();
    let mut enters: BTreeMap<u64, (u16, u64)> = BTreeMap::new();
    let mut parts: HashMap<u64, Parts> = HashMap::new();
    let mut key_refs: Vec<(u64, StackPart, u32, u32, u64)> = Vec::new();
    let mut keys: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut r = file.events(Order::Time);
    while let Some(ev) = r.next_event() {
        let Some(k) = decode(&ev).unwrap_or_else(|e| panic!("{e}")) else {
            continue;
        };
        match k {
            KernelEvent::SysCallEnter(s) => {
                assert!(
                    enters
                        .insert(ev.timestamp, (ev.processor, s.sys_call_address))
                        .is_none(),
                    "unique timestamps"
                );
            }
            KernelEvent::StackWalk(s) => {
                let p = parts.entry(s.event_timestamp).or_default();
                p.pid = Some(s.stack_process);
                p.tid = Some(s.stack_thread);
                for f in s.frames.iter() {
                    if f >= kstart {
                        p.kernel.push(f)
                    } else {
                        p.user.push(f)
                    }
                }
            }
            KernelEvent::StackKeyReference(k) => key_refs.push((
                k.event_timestamp,
                k.part,
                k.stack_process,
                k.stack_thread,
                k.stack_key,
            )),
            KernelEvent::StackKeyDefinition(d) => {
                keys.insert(d.stack_key, d.frames.iter().collect());
            }
            KernelEvent::Image(i) => {
                let v = images.entry(i.process_id).or_default();
                match i.op {
                    Lifecycle::Start | Lifecycle::DcStart => v.push(Image {
                        base: i.image_base,
                        end: i.image_base + i.image_size,
                        size: i.image_size,
                        tds: i.time_date_stamp,
                        path: i.file_name.clone(),
                        from: ev.timestamp,
                        to: u64::MAX,
                    }),
                    Lifecycle::End => {
                        if let Some(m) = v
                            .iter_mut()
                            .rev()
                            .find(|m| m.base == i.image_base && m.to == u64::MAX)
                        {
                            m.to = ev.timestamp;
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    let diag = r.into_diagnostics();
    assert!(diag.is_clean(), "{:?}", diag.errors);
    for (ts, part, pid, tid, key) in key_refs {
        let frames = keys
            .get(&key)
            .unwrap_or_else(|| panic!("stack key {key:#x} never defined"));
        let p = parts.entry(ts).or_default();
        p.pid = Some(pid);
        p.tid = Some(tid);
        match part {
            StackPart::Kernel => p.kernel.extend_from_slice(frames),
            StackPart::User => p.user.extend_from_slice(frames),
        }
    }
    // Learn each return site's service: its most frequent SysCallAddress
    // (ties: the lowest address).
    let module_at = |pid: u32, ts: u64, a: u64| -> Option<&Image> {
        images
            .get(&pid)?
            .iter()
            .find(|m| a >= m.base && a < m.end && m.from <= ts && ts < m.to)
    };
    // The stub modules are the System32 ntdll/win32u at the base first
    // seen; another mapping named so, or with their size and timestamp, is
    // a clone (rule 3a).
    let mut primary: Vec<(u64, u64, u32)> = Vec::new();
    for v in images.values() {
        for m in v {
            if is_stub_module(&m.path) && !primary.iter().any(|p| p.1 == m.size && p.2 == m.tds) {
                primary.push((m.base, m.size, m.tds));
            }
        }
    }
    // (Rundown order: the first process's mapping is the primary one.)
    let first_base = |m: &Image| {
        let mut best: Option<(u64, u64)> = None;
        for v in images.values() {
            for x in v {
                if is_stub_module(&x.path) && x.size == m.size && x.tds == m.tds {
                    best = match best {
                        Some((f, b)) if f <= x.from => Some((f, b)),
                        _ => Some((x.from, x.base)),
                    };
                }
            }
        }
        best.map(|b| b.1)
    };
    let is_clone = |m: &Image| {
        let name = m
            .path
            .rsplit('\\')
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let wow = m
            .path
            .to_ascii_lowercase()
            .ends_with("\\syswow64\\ntdll.dll");
        let like = name == "ntdll.dll"
            || name == "win32u.dll"
            || primary.iter().any(|p| p.1 == m.size && p.2 == m.tds);
        like && !wow && !(is_stub_module(&m.path) && first_base(m) == Some(m.base))
    };
    // The dispatcher's logging frame: the most common outermost kernel
    // frame of the stacks with a user part (ties: the lowest). A stack
    // holding it with more kernel frames after it is a kernel-mode call
    // nested in the thread's own system call (rule 2).
    let mut last_kernel: BTreeMap<u64, u64> = BTreeMap::new();
    for ts in enters.keys() {
        if let Some(p) = parts.get(ts) {
            if let (Some(&k), false) = (p.kernel.last(), p.user.is_empty()) {
                *last_kernel.entry(k).or_default() += 1;
            }
        }
    }
    let dispatcher = last_kernel
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(a, _)| *a);
    let nested = |p: &Parts| {
        !p.user.is_empty()
            && p.kernel
                .iter()
                .position(|&k| Some(k) == dispatcher)
                .is_some_and(|i| i + 1 < p.kernel.len())
    };
    let mut seen: HashMap<u64, BTreeMap<u64, u64>> = HashMap::new();
    for (ts, (_, addr)) in &enters {
        if let Some(p) = parts.get(ts).filter(|p| !nested(p)) {
            if let (Some(&u), Some(pid)) = (p.user.first(), p.pid) {
                if module_at(pid, *ts, u).is_some_and(|m| is_stub_module(&m.path))
                    && u % 0x20 == 0x14
                {
                    *seen.entry(u).or_default().entry(*addr).or_default() += 1;
                }
            }
        }
    }
    let learned: HashMap<u64, u64> = seen
        .into_iter()
        .map(|(site, m)| {
            let best = m
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                .map(|(a, _)| *a)
                .unwrap();
            (site, best)
        })
        .collect();
    let mut out = BTreeMap::new();
    for (ts, (cpu, addr)) in enters {
        let mut d = Derived {
            processor: cpu,
            address: addr,
            pid: None,
            tid: None,
            verdict: "no_stack",
            reason: None,
            module: None,
            truncated: false,
        };
        if let Some(p) = parts.get(&ts) {
            d.pid = p.pid;
            d.tid = p.tid;
            let pid = p.pid.unwrap();
            let wow64 = images.get(&pid).is_some_and(|v| {
                v.iter()
                    .any(|m| m.path.to_ascii_lowercase().ends_with("\\wow64.dll"))
            });
            d.verdict = "normal";
            match p.user.first() {
                // A user process's thread: its user part was lost.
                None if pid != 0 && pid != 4 => d.verdict = "no_stack",
                None => d.verdict = "kernel_origin",
                Some(_) if nested(p) => d.verdict = "kernel_origin",
                Some(&u) => {
                    let um = module_at(pid, ts, u);
                    let name_of = |a: u64| {
                        module_at(pid, ts, a).map(|m| {
                            m.path
                                .rsplit('\\')
                                .next()
                                .unwrap_or("")
                                .to_ascii_lowercase()
                        })
                    };
                    // Rule 8: the first frame past the native stub module.
                    let past_stub = p.user[1..]
                        .iter()
                        .find(|&&a| name_of(a).as_deref() != Some("ntdll.dll"))
                        .map(|&a| name_of(a));
                    let bypass = wow64
                        && past_stub.is_some_and(|n| {
                            n.is_some()
                                && !matches!(
                                    n.as_deref(),
                                    Some("wow64.dll" | "wow64win.dll" | "wow64cpu.dll")
                                )
                        });
                    // Rule 10: the walk ends in an image that is not ntdll.
                    let last = *p.user.last().unwrap();
                    let cut = p.user.len() >= 2
                        && p.kernel.len() + p.user.len() < 192
                        && module_at(pid, ts, last).is_some()
                        && name_of(last).as_deref() != Some("ntdll.dll")
                        && !name_of(last).is_some_and(|n| n.starts_with("wow64"));
                    d.truncated = cut;
                    if um.is_some_and(&is_clone) {
                        d.verdict = "indirect";
                        d.reason = Some("cloned_stub_module");
                    } else if !um.is_some_and(|m| is_stub_module(&m.path)) {
                        d.verdict = "direct";
                        d.reason = Some(if wow64 {
                            "heavens_gate"
                        } else if let Some(m) = um {
                            d.module = m.path.rsplit('\\').next().map(str::to_string);
                            "image"
                        } else {
                            "unbacked"
                        });
                    } else if u % 0x20 != 0x14 {
                        d.verdict = "indirect";
                        d.reason = Some("not_return_site");
                    } else if learned.get(&u) != Some(&addr) {
                        d.verdict = "indirect";
                        d.reason = Some("stub_mismatch");
                    } else if p.user.len() < 2 {
                        d.verdict = "truncated";
                    } else if module_at(pid, ts, p.user[1]).is_none() {
                        d.verdict = "indirect";
                        d.reason = Some("unbacked_caller");
                    } else if bypass {
                        d.verdict = "indirect";
                        d.reason = Some("wow64_bypass");
                    }
                    // builtin:chromium-sandbox: `U` unbacked at a thunk
                    // return site, `C` in the browser's executable.
                    let browser = p
                        .user
                        .get(1)
                        .and_then(|&c| name_of(c))
                        .is_some_and(|n| n == "chrome.exe" || n == "msedge.exe");
                    if d.reason == Some("unbacked")
                        && browser
                        && matches!(u % 64, 0x34 | 0x3e | 0x2a)
                    {
                        d.verdict = "normal";
                        d.reason = None;
                    }
                }
            }
        }
        out.insert(ts, d);
    }
    (out, file.header().events_lost)
}

fn check(o: &Options) {
    let mut truth = Vec::new();
    let (etl, summary) = generate(o, Cursor::new(Vec::new()), Some(&mut truth)).unwrap();
    assert!(summary.learnable(), "{:?}", summary.unlearnable_sites);
    let t: Value = serde_json::from_slice(&truth).unwrap();
    assert_eq!(t["scenario"], o.scenario.name());
    assert_eq!(t["pointer_size"], u64::from(o.pointer_size));
    let (derived, lost) = derive(etl.into_inner());
    assert_eq!(t["events_lost"].as_u64().unwrap(), u64::from(lost));
    let entries = t["syscalls"].as_array().unwrap();
    assert_eq!(
        entries.len(),
        derived.len(),
        "one truth entry per SysCallEnter"
    );
    assert_eq!(entries.len() as u64, summary.truth_syscalls);
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for e in entries {
        let ts = e["timestamp"].as_u64().unwrap();
        let d = &derived[&ts];
        let ctx = format!("{:?} entry {e}", o.scenario);
        // This derivation has no module bytes: what the truth says for an
        // analysis without `--images`.
        let e_v = e.get("without_images").unwrap_or(e);
        assert_eq!(e_v["verdict"], d.verdict, "{ctx}");
        assert_eq!(e_v["reason"].as_str(), d.reason, "{ctx}");
        let flagged = e["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "truncated_stack"));
        assert_eq!(flagged, d.truncated, "{ctx}");
        assert_eq!(
            e["processor"].as_u64(),
            Some(u64::from(d.processor)),
            "{ctx}"
        );
        assert_eq!(e["pid"].as_u64(), d.pid.map(u64::from), "{ctx}");
        assert_eq!(e["tid"].as_u64(), d.tid.map(u64::from), "{ctx}");
        assert_eq!(
            e["service_address"]
                .as_str()
                .map(|s| u64::from_str_radix(&s[2..], 16).unwrap()),
            Some(d.address),
            "{ctx}"
        );
        assert_eq!(e["module"].as_str(), d.module.as_deref(), "{ctx}");
        *counts
            .entry(e["verdict"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    for (k, v) in &counts {
        assert_eq!(t["counts"][k].as_u64(), Some(*v), "count of {k}");
    }
    // Each scenario shows what it is about.
    let n = |k: &str| counts.get(k).copied().unwrap_or(0);
    let r = |k: &str| entries.iter().filter(|e| e["reason"] == k).count();
    let t_count = |k: &str| entries.iter().filter(|e| e["technique"] == k).count();
    assert!(
        n("normal") > entries.len() as u64 / 2,
        "benign traffic dominates"
    );
    match o.scenario {
        Scenario::Benign => {
            assert_eq!(n("normal") + n("kernel_origin"), entries.len() as u64);
            // Nested kernel-mode calls, whose `U` is another service's stub.
            assert!(t_count("kernel-nested") > 0);
        }
        Scenario::DirectImage => assert!(r("image") > 0),
        Scenario::DirectUnbacked => assert!(r("unbacked") > 0),
        Scenario::IndirectJumper => assert!(r("unbacked_caller") > 0),
        Scenario::IndirectRandomized => assert!(r("stub_mismatch") > 0 && r("not_return_site") > 0),
        Scenario::HeavensGate => assert!(r("heavens_gate") > 0),
        Scenario::Degraded => {
            assert!(n("no_stack") > 0 && n("truncated") > 0 && lost > 0);
            assert_eq!(n("direct") + n("indirect"), 0);
            // Kernel parts whose user part never came: no_stack, pid kept.
            assert!(entries
                .iter()
                .any(|e| e["technique"] == "user-part-lost" && e["pid"].is_u64()));
        }
        Scenario::ClonedNtdll => assert!(r("cloned_stub_module") > 0),
        Scenario::RopFrames => {
            assert!(r("not_call_preceded") > 0);
            assert!(entries.iter().all(|e| e["reason"] != "not_call_preceded"
                || e["without_images"]["verdict"] == "normal"));
        }
        Scenario::StackTruncation => {
            assert!(entries.iter().any(|e| e["flags"][0] == "truncated_stack"));
            assert_eq!(n("direct") + n("indirect"), 0);
        }
        Scenario::Wow64Bypass => assert!(r("wow64_bypass") > 0),
        Scenario::Lookalikes => {
            assert_eq!(n("direct") + n("indirect"), 0);
            for t in [
                "benign-second-ntdll-mapped",
                "benign-exception-handler",
                "benign-window-callback",
                "benign-deep-recursion",
            ] {
                assert!(t_count(t) > 0, "{t}");
            }
        }
        Scenario::ExceptionHandler => {
            assert!(r("exception_handler") > 0);
            // Only ntdll's exports show the dispatcher frame.
            assert!(entries
                .iter()
                .filter(|e| e["reason"] == "exception_handler")
                .all(|e| e["without_images"]["verdict"] == "normal"));
        }
        Scenario::ExceptionLookalikes => {
            assert_eq!(n("direct") + n("indirect"), 0);
            let mut want = vec![
                "benign-exception-handler",
                "benign-dotnet-catch-funclet",
                "benign-jit-fault",
            ];
            if o.pointer_size == 8 {
                want.push("benign-exception-handler-wow64");
            }
            for t in want {
                assert!(t_count(t) > 0, "{t}");
            }
        }
        Scenario::Mixed => {
            for reason in [
                "image",
                "unbacked",
                "unbacked_caller",
                "stub_mismatch",
                "not_return_site",
            ] {
                assert!(r(reason) > 0, "{reason}");
            }
            assert!(o.pointer_size == 4 || r("heavens_gate") > 0);
            assert!(n("no_stack") > 0 && n("truncated") > 0 && n("kernel_origin") > 0);
        }
        Scenario::ChromiumSandbox => {
            let sup = entries
                .iter()
                .filter(|e| e["suppressed"] == "builtin:chromium-sandbox")
                .count();
            assert!(sup > 0 && sup == t_count("chromium-sandbox-thunk"));
            assert!(t_count("chromium-sandbox-thunk-wow64") > 0);
            assert!(t_count("shellcode-in-browser") > 0 && t_count("browser-exploit-syscall") > 0);
            assert_eq!(n("indirect"), 0);
        }
        Scenario::ProxyCall => {
            assert!(o.pointer_size == 4 || r("proxy_call") > 0);
            assert!(
                entries
                    .iter()
                    .all(|e| e["reason"] != "proxy_call"
                        || e["without_images"]["verdict"] == "normal")
            );
        }
        Scenario::ProxyLookalikes => {
            assert_eq!(n("direct") + n("indirect"), 0);
            for t in [
                "benign-tp-user-callback",
                "benign-tp-system-callback",
                "benign-dllmain",
                "benign-thread-start",
                "benign-apc-wrapper",
            ] {
                assert!(t_count(t) > 0, "{t}");
            }
        }
        // Checked by tests/audit.rs.
        Scenario::AuditBenign
        | Scenario::AuditLsassDirect
        | Scenario::AuditIndirect
        | Scenario::AuditSetContext
        | Scenario::AuditMixed => {}
    }
}

fn opts(s: Scenario, ps: u8, compress: bool, stack_cache: bool, seed: u64) -> Options {
    Options {
        scenario: s,
        seed,
        syscalls: 4000,
        pointer_size: ps,
        processors: 8,
        compress,
        stack_cache,
        process_churn: true,
        source: s.default_source(),
    }
}

#[test]
fn every_scenario_64bit() {
    for s in Scenario::ALL {
        check(&opts(s, 8, false, false, 1));
    }
}

#[test]
fn every_scenario_32bit() {
    for s in Scenario::ALL
        .into_iter()
        .filter(|s| *s != Scenario::HeavensGate)
    {
        check(&opts(s, 4, false, false, 2));
    }
}

#[test]
fn every_evasion_scenario_both_pointer_sizes() {
    for s in Scenario::EVASION {
        check(&opts(s, 8, false, false, 3));
        if s != Scenario::Wow64Bypass {
            check(&opts(s, 4, true, true, 4));
        }
    }
}

#[test]
fn every_proxy_scenario_both_pointer_sizes() {
    for s in Scenario::PROXY {
        check(&opts(s, 8, false, false, 5));
        check(&opts(s, 4, true, true, 6));
    }
}

#[test]
fn compressed_with_stack_cache() {
    check(&opts(Scenario::Mixed, 8, true, true, 3));
    check(&opts(Scenario::Degraded, 8, true, true, 4));
    check(&opts(Scenario::Mixed, 4, true, true, 5));
}

#[test]
fn heavens_gate_needs_64bit() {
    let o = opts(Scenario::HeavensGate, 4, false, false, 1);
    assert!(generate(&o, Cursor::new(Vec::new()), None::<Vec<u8>>).is_err());
}

#[test]
fn chromium_sandbox_is_64bit_only() {
    check(&opts(Scenario::ChromiumSandbox, 8, false, false, 6));
    check(&opts(Scenario::ChromiumSandbox, 8, true, true, 7));
    let o = opts(Scenario::ChromiumSandbox, 4, false, false, 1);
    assert!(generate(&o, Cursor::new(Vec::new()), None::<Vec<u8>>).is_err());
}

#[test]
fn same_seed_same_bytes() {
    let o = opts(Scenario::Mixed, 8, true, true, 9);
    let a = generate(&o, Cursor::new(Vec::new()), None::<Vec<u8>>)
        .unwrap()
        .0
        .into_inner();
    let b = generate(&o, Cursor::new(Vec::new()), None::<Vec<u8>>)
        .unwrap()
        .0
        .into_inner();
    assert_eq!(a, b);
}

/// Process starts and ends past the rundown.
fn process_lifecycle_events(etl: Vec<u8>) -> (usize, usize) {
    let file = EtlFile::from_bytes(etl).unwrap();
    let mut r = file.events(Order::Time);
    let (mut starts, mut ends) = (0, 0);
    while let Some(ev) = r.next_event() {
        if let Ok(Some(KernelEvent::Process(p))) = decode(&ev) {
            match p.op {
                Lifecycle::Start => starts += 1,
                Lifecycle::End => ends += 1,
                _ => {}
            }
        }
    }
    (starts, ends)
}

#[test]
fn a_fixed_population_has_no_short_lived_processes_and_the_same_truth() {
    let churning = opts(Scenario::Mixed, 8, false, false, 5);
    let fixed = Options {
        process_churn: false,
        ..churning.clone()
    };
    let gen = |o: &Options| generate(o, Cursor::new(Vec::new()), None::<Vec<u8>>).unwrap();
    let (with, _) = process_lifecycle_events(gen(&churning).0.into_inner());
    let (without_starts, without_ends) = process_lifecycle_events(gen(&fixed).0.into_inner());
    // 4,000 syscalls: one short-lived process starts (at 1,000) and ends
    // (at 3,500) with churn; none without (implants start at the outset).
    assert!(with > without_starts, "{with} vs {without_starts}");
    assert_eq!(without_ends, 0);
    check(&fixed);
}
