//! Engine tests on hand-built kernel events: one test per rule of
//! docs/verdicts.md, in rule order.

use super::*;
use sentry_kernel::KernelEvent;
use sentry_kernel::{Frames, Image, Lifecycle, SysCallEnter};
use sentry_raw::{EventId, HeaderKind, RawEvent};

const NTDLL: u64 = 0x7FFB_0000_0000;
const WIN32U: u64 = 0x7FFA_0000_0000;
const K32: u64 = 0x7FF9_0000_0000;
const APP: u64 = 0x7FF6_0000_0000;
const SHELL: u64 = 0x0000_0200_0000;
const NTOS: u64 = 0xFFFF_F800_0000_0000;
const SVC_A: u64 = NTOS + 0x1000;
const SVC_B: u64 = NTOS + 0x2000;
const PID: u32 = 1234;

fn raw(ts: u64, processor: u16) -> RawEvent<'static> {
    RawEvent {
        header: HeaderKind::PerfInfo64,
        id: EventId::Kernel {
            group: 0x0f,
            opcode: 51,
        },
        version: 2,
        pid: None,
        tid: None,
        processor,
        timestamp: ts,
        pointer_size: 8,
        payload: &[],
        extended: Default::default(),
        offset: 0,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Got {
    ts: u64,
    pid: Option<u32>,
    tid: Option<u32>,
    verdict: Verdict,
    reason: Option<Reason>,
    call_site: Option<String>,
}

struct Harness {
    engine: Engine,
    got: Vec<Got>,
}

impl Harness {
    fn new(cfg: EngineConfig) -> Harness {
        let mut h = Harness {
            engine: Engine::new(cfg),
            got: Vec::new(),
        };
        h.process(PID, Lifecycle::DcStart, 1);
        h.image(
            PID,
            NTDLL,
            0x20_0000,
            r"\Device\HarddiskVolume3\Windows\System32\ntdll.dll",
        );
        h.image(
            PID,
            WIN32U,
            0x4_0000,
            r"\Device\HarddiskVolume3\Windows\System32\win32u.dll",
        );
        h.image(
            PID,
            K32,
            0x10_0000,
            r"\Device\HarddiskVolume3\Windows\System32\KernelBase.dll",
        );
        h.image(PID, APP, 0x1_0000, r"\Device\HarddiskVolume3\app\app.exe");
        h.image(0, NTOS, 0x100_0000, r"\SystemRoot\system32\ntoskrnl.exe");
        h
    }

    fn process(&mut self, pid: u32, op: Lifecycle, ts: u64) {
        let p = sentry_kernel::Process {
            op,
            unique_process_key: 0,
            process_id: pid,
            parent_id: 4,
            session_id: 1,
            exit_status: 0,
            directory_table_base: 0,
            flags: None,
            user_sid: String::new(),
            image_file_name: "app.exe".into(),
            command_line: String::new(),
            package_full_name: String::new(),
            application_id: String::new(),
        };
        self.engine
            .on_kernel_event(&raw(ts, 0), KernelEvent::Process(p));
    }

    fn image(&mut self, pid: u32, base: u64, size: u64, path: &str) {
        let i = Image {
            op: Lifecycle::DcStart,
            image_base: base,
            image_size: size,
            process_id: pid,
            image_checksum: 0,
            time_date_stamp: 0,
            default_base: 0,
            file_name: path.into(),
        };
        self.engine
            .on_kernel_event(&raw(1, 0), KernelEvent::Image(i));
    }

    fn syscall(&mut self, ts: u64, cpu: u16, svc: u64) {
        self.engine.on_kernel_event(
            &raw(ts, cpu),
            KernelEvent::SysCallEnter(SysCallEnter {
                sys_call_address: svc,
            }),
        );
        self.drain();
    }

    fn stack(&mut self, ts: u64, cpu: u16, pid: u32, tid: u32, frames: &[u64]) {
        let bytes: Vec<u8> = frames.iter().flat_map(|f| f.to_le_bytes()).collect();
        self.engine.on_kernel_event(
            &raw(ts + 1, cpu),
            KernelEvent::StackWalk(sentry_kernel::StackWalk {
                event_timestamp: ts,
                stack_process: pid,
                stack_thread: tid,
                frames: Frames::new(&bytes, 8),
            }),
        );
        self.drain();
    }

    fn drain(&mut self) {
        let got = &mut self.got;
        self.engine.drain(&mut FnSink(|v: &SyscallVerdict<'_>| {
            got.push(Got {
                ts: v.timestamp,
                pid: v.pid,
                tid: v.tid,
                verdict: v.verdict,
                reason: v.reason,
                call_site: v.first_user_frame().map(|a| v.resolver.describe(a)),
            })
        }));
    }

    fn finish(&mut self) -> EngineStats {
        let got = &mut self.got;
        self.engine.finish(&mut FnSink(|v: &SyscallVerdict<'_>| {
            got.push(Got {
                ts: v.timestamp,
                pid: v.pid,
                tid: v.tid,
                verdict: v.verdict,
                reason: v.reason,
                call_site: v.first_user_frame().map(|a| v.resolver.describe(a)),
            })
        }))
    }

    /// One syscall with a full stack; returns its verdict.
    fn one(&mut self, ts: u64, svc: u64, frames: &[u64]) -> (Verdict, Option<Reason>) {
        self.syscall(ts, 0, svc);
        self.stack(ts, 0, PID, 77, frames);
        let g = self.got.last().expect("verdict emitted at once");
        assert_eq!(g.ts, ts);
        (g.verdict, g.reason)
    }
}

fn kframes() -> [u64; 2] {
    [NTOS + 0x500, NTOS + 0x600]
}

fn stack_of(user: &[u64]) -> Vec<u64> {
    let mut v = kframes().to_vec();
    v.extend_from_slice(user);
    v
}

#[test]
fn rule1_no_stack_within_window() {
    let mut h = Harness::new(EngineConfig::default());
    h.syscall(100, 0, SVC_A);
    let s = h.finish();
    assert_eq!(h.got.len(), 1);
    assert_eq!(h.got[0].verdict, Verdict::NoStack);
    assert_eq!(h.got[0].pid, None);
    assert_eq!(s.correlator.syscall_without_stack, 1);
}

#[test]
fn rule2_kernel_only_stack_is_kernel_origin() {
    let mut h = Harness::new(EngineConfig::default());
    h.syscall(100, 0, SVC_A);
    h.stack(100, 0, 4, 8, &kframes());
    assert_eq!(h.got[0].verdict, Verdict::KernelOrigin);
    assert_eq!(h.got[0].pid, Some(4));
}

#[test]
fn rule3_direct_from_image_unbacked_and_heavens_gate() {
    let mut h = Harness::new(EngineConfig::default());
    assert_eq!(
        h.one(100, SVC_A, &stack_of(&[APP + 0x1234, K32 + 0x10])),
        (Verdict::Direct, Some(Reason::Image))
    );
    assert_eq!(h.got[0].call_site.as_deref(), Some("app.exe+0x1234"));
    assert_eq!(
        h.one(200, SVC_A, &stack_of(&[SHELL + 0x10, APP + 0x10])),
        (Verdict::Direct, Some(Reason::Unbacked))
    );
    h.image(
        PID,
        0x7700_0000,
        0x1_0000,
        r"\Device\HarddiskVolume3\Windows\SysWOW64\ntdll.dll",
    );
    assert_eq!(
        h.one(300, SVC_A, &stack_of(&[0x7700_1000, 0x7700_2000])),
        (Verdict::Direct, Some(Reason::HeavensGate))
    );
    // A normal WoW64 syscall still goes through the 64-bit ntdll, called
    // by WoW64's 64-bit layer.
    h.image(
        PID,
        0x7ff8_0000_0000,
        0x1_0000,
        r"\Device\HarddiskVolume3\Windows\System32\wow64.dll",
    );
    assert_eq!(
        h.one(
            400,
            SVC_A,
            &stack_of(&[NTDLL + 0x1014, 0x7ff8_0000_1000, 0x7700_2000])
        ),
        (Verdict::Normal, None)
    );
    // 32-bit code calling the native stub itself (rule 8).
    assert_eq!(
        h.one(500, SVC_A, &stack_of(&[NTDLL + 0x1014, 0x7700_2000])),
        (Verdict::Indirect, Some(Reason::Wow64Bypass))
    );
}

#[test]
fn rule4_indirect_not_return_site() {
    let mut h = Harness::new(EngineConfig::default());
    assert_eq!(
        h.one(100, SVC_A, &stack_of(&[NTDLL + 0x1010, K32 + 0x10])),
        (Verdict::Indirect, Some(Reason::NotReturnSite))
    );
}

#[test]
fn rule5_stub_mismatch_by_learned_service() {
    let mut services = ServiceTable::new();
    services.record(ModuleKind::Ntdll, 0x1014, SVC_A);
    services.record(ModuleKind::Ntdll, 0x1014, SVC_A);
    services.record(ModuleKind::Ntdll, 0x1014, SVC_B);
    let mut h = Harness::new(EngineConfig {
        services,
        ..EngineConfig::default()
    });
    assert_eq!(
        h.one(100, SVC_B, &stack_of(&[NTDLL + 0x1014, K32 + 0x10])),
        (Verdict::Indirect, Some(Reason::StubMismatch))
    );
    assert_eq!(
        h.one(200, SVC_A, &stack_of(&[NTDLL + 0x1014, K32 + 0x10])),
        (Verdict::Normal, None)
    );
    // win32u is a separate table: the same offset there is unknown.
    assert_eq!(
        h.one(300, SVC_B, &stack_of(&[WIN32U + 0x1014, K32 + 0x10])),
        (Verdict::Normal, None)
    );
}

#[test]
fn rule6_truncated_and_rule7_unbacked_caller() {
    let mut h = Harness::new(EngineConfig::default());
    assert_eq!(
        h.one(100, SVC_A, &stack_of(&[NTDLL + 0x1014])),
        (Verdict::Truncated, None)
    );
    assert_eq!(
        h.one(200, SVC_A, &stack_of(&[NTDLL + 0x1014, SHELL + 0x40, APP])),
        (Verdict::Indirect, Some(Reason::UnbackedCaller))
    );
    // JIT host: backed caller, unbacked frames further out are fine.
    assert_eq!(
        h.one(300, SVC_A, &stack_of(&[NTDLL + 0x1014, K32 + 0x40, SHELL])),
        (Verdict::Normal, None)
    );
}

#[test]
fn online_learning_flags_a_recycled_stub() {
    let mut h = Harness::new(EngineConfig {
        learning: Learning::Online,
        ..EngineConfig::default()
    });
    for i in 0..5 {
        h.one(
            100 + i * 10,
            SVC_A,
            &stack_of(&[NTDLL + 0x1014, K32 + 0x40]),
        );
    }
    assert_eq!(
        h.one(1000, SVC_B, &stack_of(&[NTDLL + 0x1014, K32 + 0x40])),
        (Verdict::Indirect, Some(Reason::StubMismatch))
    );
}

#[test]
fn allowlist_suppresses_and_counts() {
    let allowlist =
        Allowlist::parse("[[allow]]\nprocess = \"app.exe\"\ncall_site = \"app.exe+0x1234\"\n")
            .unwrap();
    let mut h = Harness::new(EngineConfig {
        allowlist,
        ..EngineConfig::default()
    });
    h.engine.on_kernel_event(
        &raw(2, 0),
        KernelEvent::Process(sentry_kernel::Process {
            op: Lifecycle::DcStart,
            unique_process_key: 0,
            process_id: PID,
            parent_id: 1,
            session_id: 1,
            exit_status: 0,
            directory_table_base: 0,
            flags: None,
            user_sid: "S-1-5-18".into(),
            image_file_name: "app.exe".into(),
            command_line: "app.exe -x".into(),
            package_full_name: String::new(),
            application_id: String::new(),
        }),
    );
    assert_eq!(
        h.one(100, SVC_A, &stack_of(&[APP + 0x1234, K32])),
        (Verdict::Normal, None)
    );
    assert_eq!(
        h.one(200, SVC_A, &stack_of(&[APP + 0x1238, K32])),
        (Verdict::Direct, Some(Reason::Image))
    );
    let s = h.finish();
    assert_eq!(s.suppressed, 1);
    assert_eq!(h.engine.allowlist().hits, vec![1]);
}

#[test]
fn split_stack_on_two_processors_is_one_syscall() {
    let mut h = Harness::new(EngineConfig::default());
    h.syscall(100, 3, SVC_A);
    h.stack(100, 3, PID, 2460, &kframes());
    assert!(h.got.is_empty());
    h.stack(100, 0, PID, 2460, &[SHELL, APP]);
    assert_eq!(h.got.len(), 1);
    assert_eq!(h.got[0].verdict, Verdict::Direct);
    assert_eq!(h.got[0].tid, Some(2460));
    let s = h.finish();
    assert_eq!(s.correlator.fragments_stitched, 1);
    assert_eq!(s.correlator.stack_without_syscall, 0);
}

#[test]
fn kernel_part_alone_waits_for_window_then_is_no_stack() {
    let mut h = Harness::new(EngineConfig {
        window_ms: 1,
        ..EngineConfig::default()
    });
    h.syscall(100, 0, SVC_A);
    h.stack(100, 0, PID, 7, &kframes());
    assert!(h.got.is_empty());
    // 1 ms at the default 10 MHz clock is 10,000 ticks.
    let mut e = raw(100 + 10_001, 0);
    e.id = EventId::Kernel {
        group: 0x0b,
        opcode: 1,
    };
    h.engine.process(&e, &mut NullSink);
    let got = &mut h.got;
    h.engine.drain(&mut FnSink(|v: &SyscallVerdict<'_>| {
        got.push(Got {
            ts: v.timestamp,
            pid: v.pid,
            tid: v.tid,
            verdict: v.verdict,
            reason: v.reason,
            call_site: None,
        })
    }));
    // Emitted through the NullSink during process(): check the counters.
    // A user process's thread: the user part was lost, not absent
    // (docs/verdicts.md rule 2): no_stack, counted, never kernel_origin.
    let s = h.finish();
    assert_eq!(s.verdicts.kernel_origin, 0);
    assert_eq!(s.verdicts.no_stack, 1);
    assert_eq!(s.syscall_user_parts_missing, 1);
    assert_eq!(s.correlator.expired, 1);
}

/// Floods the engine (through `process`, real payloads decoded by
/// sentry-kernel) with syscalls that never get a stack and stacks that
/// never get a syscall: the pending set stays at its cap, every entry is
/// accounted for, and nothing is emitted twice.
#[test]
fn flood_without_partners_stays_within_the_cap() {
    let cap = 1000;
    let mut engine = Engine::new(EngineConfig {
        max_pending: cap,
        // A window longer than the whole flood: only the cap can bound it.
        window_ms: 10_000_000,
        ..EngineConfig::default()
    });
    let mut emitted = 0u64;
    let mut peak = 0;
    let enter = SVC_A.to_le_bytes();
    let mut stack = Vec::new();
    let n = 200_000u64;
    for i in 0..n {
        let ts = 1_000 + i * 10;
        let mut ev = raw(ts, (i % 4) as u16);
        if i % 2 == 0 {
            ev.payload = &enter;
        } else {
            stack.clear();
            stack.extend_from_slice(&(ts + 5).to_le_bytes()); // matches no syscall
            stack.extend_from_slice(&PID.to_le_bytes());
            stack.extend_from_slice(&77u32.to_le_bytes());
            stack.extend_from_slice(&(APP + 0x10).to_le_bytes());
            ev.id = EventId::Kernel {
                group: 0x18,
                opcode: 32,
            };
            ev.payload = &stack;
        }
        engine.process(&ev, &mut FnSink(|_v: &SyscallVerdict<'_>| emitted += 1));
        peak = peak.max(engine.pending());
        assert!(engine.pending() <= cap);
    }
    let s = engine.finish(&mut FnSink(|_v: &SyscallVerdict<'_>| emitted += 1));
    assert_eq!(peak, cap);
    assert_eq!(s.decode_errors, 0);
    assert_eq!(s.syscalls, n / 2);
    assert_eq!(emitted, n / 2, "every syscall gets exactly one verdict");
    assert_eq!(s.verdicts.no_stack, n / 2);
    assert_eq!(s.correlator.stack_without_syscall, n / 2);
    assert_eq!(s.correlator.evicted, n - cap as u64);
    assert_eq!(s.correlator.peak_pending, cap as u64);
}

#[derive(Clone, Default)]
struct SharedBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn lines(b: &SharedBuf) -> Vec<serde_json::Value> {
    let v = b.0.lock().unwrap();
    std::str::from_utf8(&v)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Runs three syscalls (two direct from the same call site, one normal)
/// through a Report.
fn report_run(cfg: report::ReportConfig) -> (Vec<serde_json::Value>, String) {
    let mut h = Harness::new(EngineConfig::default());
    let buf = SharedBuf::default();
    let mut rep = report::Report::new(cfg, Box::new(buf.clone()));
    let mut feed = |h: &mut Harness, ts: u64, user: &[u64]| {
        let frames = stack_of(user);
        h.engine.on_kernel_event(
            &raw(ts, 0),
            KernelEvent::SysCallEnter(SysCallEnter {
                sys_call_address: SVC_A,
            }),
        );
        let bytes: Vec<u8> = frames.iter().flat_map(|f| f.to_le_bytes()).collect();
        h.engine.on_kernel_event(
            &raw(ts + 1, 0),
            KernelEvent::StackWalk(sentry_kernel::StackWalk {
                event_timestamp: ts,
                stack_process: PID,
                stack_thread: 77,
                frames: Frames::new(&bytes, 8),
            }),
        );
        h.engine.drain(&mut rep);
    };
    feed(&mut h, 100, &[APP + 0x1234, K32]);
    feed(&mut h, 200, &[NTDLL + 0x1014, K32]);
    feed(&mut h, 300, &[APP + 0x1234, K32]);
    h.engine.finish(&mut rep);
    rep.finish(&h.engine).unwrap();
    let table = rep.summary_table();
    (lines(&buf), table)
}

#[test]
fn alerts_are_deduplicated_with_counts_and_evidence() {
    let (l, table) = report_run(report::ReportConfig::default());
    assert_eq!(l.len(), 1, "{l:?}");
    let a = &l[0];
    assert_eq!(a["type"], "alert");
    assert_eq!(a["verdict"], "direct");
    assert_eq!(a["reason"], "image");
    assert_eq!(a["count"], 2);
    assert_eq!(a["first_timestamp"], 100);
    assert_eq!(a["last_timestamp"], 300);
    assert_eq!(a["call_site"], "app.exe+0x1234");
    assert_eq!(a["caller"], "KernelBase.dll+0x0");
    assert_eq!(a["stack"][0], "ntoskrnl.exe+0x500");
    assert_eq!(a["technique"], "direct-syscall");
    assert!(table.contains("app.exe+0x1234 (2)"), "{table}");
}

#[test]
fn ecs_layout_carries_the_ecs_fields() {
    let (l, _) = report_run(report::ReportConfig {
        format: report::Format::Ecs,
        ..Default::default()
    });
    let a = &l[0];
    assert_eq!(a["event"]["kind"], "alert");
    assert_eq!(a["event"]["category"][0], "process");
    assert_eq!(a["event"]["action"], "direct-syscall");
    assert_eq!(a["process"]["pid"], PID);
    assert_eq!(a["process"]["thread"]["id"], 77);
    assert_eq!(a["rule"]["name"], "direct_syscall.image");
    assert_eq!(a["threat"]["technique"]["id"][0], "T1106");
    assert_eq!(a["threat"]["technique"]["name"][0], "Native API");
    assert_eq!(a["host"]["os"]["family"], "windows");
    assert_eq!(a["syscall_sentry"]["count"], 2);
}

#[test]
fn per_syscall_lines_respect_filters() {
    let cfg = |filter| report::ReportConfig {
        per_syscall: true,
        filter,
        ..Default::default()
    };
    let (l, _) = report_run(cfg(report::Filter::default()));
    assert_eq!(l.len(), 3);
    assert_eq!(l[1]["verdict"], "normal");
    assert_eq!(l[1]["call_site"], "ntdll.dll+0x1014");
    let (l, _) = report_run(cfg(report::Filter {
        since: Some(150),
        until: Some(250),
        ..Default::default()
    }));
    assert_eq!(l.len(), 1);
    assert_eq!(l[0]["timestamp"], 200);
    let (l, _) = report_run(cfg(report::Filter {
        pid: Some(PID + 1),
        ..Default::default()
    }));
    assert!(l.is_empty());
}

/// Hostile input: random payloads for every event kind the engine decodes,
/// colliding timestamps, random processors. Nothing may panic, the cap holds,
/// and every decoded SysCallEnter gets exactly one verdict.
#[test]
fn random_payloads_never_panic() {
    let mut rng = crate::testutil::Xorshift(0x9E37_79B9_7F4A_7C15);
    let mut rnd = move || rng.next();
    let kinds: [(u8, u8); 14] = [
        (0x0f, 51),
        (0x0f, 52),
        (0x18, 32),
        (0x18, 34),
        (0x18, 35),
        (0x18, 36),
        (0x18, 37),
        (0x18, 38),
        (0x03, 1),
        (0x03, 2),
        (0x03, 10),
        (0x05, 1),
        (0x14, 2),
        (0x00, 0),
    ];
    for pairing in [Pairing::SysCallEnter, Pairing::AnyEvent] {
        let mut engine = Engine::new(EngineConfig {
            max_pending: 64,
            pairing,
            learning: Learning::Online,
            ..EngineConfig::default()
        });
        let mut verdicts = 0u64;
        let mut payload = Vec::new();
        let mut ts = 1u64;
        for _ in 0..30_000 {
            let (group, opcode) = kinds[(rnd() % kinds.len() as u64) as usize];
            payload.clear();
            let len = (rnd() % 96) as usize;
            // Stack payloads that point back at recent timestamps pair more.
            if group == 0x18 && (opcode == 32 || opcode >= 37) && len >= 16 {
                payload.extend_from_slice(&(ts - rnd() % ts.min(50)).to_le_bytes());
                payload.extend_from_slice(&((rnd() % 3) as u32 + 4).to_le_bytes());
                payload.extend_from_slice(&((rnd() % 3) as u32).to_le_bytes());
            }
            while payload.len() < len {
                payload.push(rnd() as u8);
            }
            ts += rnd() % 3;
            let mut ev = raw(ts, (rnd() % 4) as u16);
            ev.id = EventId::Kernel { group, opcode };
            ev.version = (rnd() % 5) as u8;
            ev.pointer_size = if rnd() % 8 == 0 { 4 } else { 8 };
            ev.payload = &payload;
            engine.process(&ev, &mut FnSink(|_v: &SyscallVerdict<'_>| verdicts += 1));
            assert!(engine.pending() <= 64);
        }
        let s = engine.finish(&mut FnSink(|_v: &SyscallVerdict<'_>| verdicts += 1));
        if pairing == Pairing::SysCallEnter {
            assert_eq!(verdicts, s.syscalls);
        }
        assert!(
            s.decode_errors > 0,
            "the fuzz reached the decoders' error paths"
        );
    }
}

/// Windows defines a stack key only when it leaves the cache, possibly long
/// after the process ended: the process (and its modules) must still be
/// there when the parked syscall is finally classified.
#[test]
fn parked_syscall_outlives_its_process_end() {
    use sentry_kernel::{StackKeyDefinition, StackKeyOp, StackKeyReference, StackPart};
    let mut h = Harness::new(EngineConfig {
        window_ms: 1,
        ..EngineConfig::default()
    });
    let proc_ev = |op| {
        KernelEvent::Process(sentry_kernel::Process {
            op,
            unique_process_key: 0,
            process_id: PID,
            parent_id: 1,
            session_id: 1,
            exit_status: 0,
            directory_table_base: 0,
            flags: None,
            user_sid: String::new(),
            image_file_name: "app.exe".into(),
            command_line: String::new(),
            package_full_name: String::new(),
            application_id: String::new(),
        })
    };
    h.engine
        .on_kernel_event(&raw(2, 0), proc_ev(Lifecycle::DcStart));
    h.syscall(100, 0, SVC_A);
    let r = StackKeyReference {
        part: StackPart::User,
        event_timestamp: 100,
        stack_process: PID,
        stack_thread: 77,
        stack_key: 0xABC0,
    };
    h.engine
        .on_kernel_event(&raw(101, 0), KernelEvent::StackKeyReference(r));
    h.engine
        .on_kernel_event(&raw(200, 0), proc_ev(Lifecycle::End));
    // Ten seconds of other events (the window is 1 ms, the linger 2 ms).
    let mut other = raw(0, 1);
    other.id = EventId::Kernel {
        group: 0x0b,
        opcode: 1,
    };
    for i in 1..=100u64 {
        other.timestamp = 200 + i * 1_000_000;
        h.engine.process(&other, &mut NullSink);
    }
    assert_eq!(h.engine.pending(), 1, "parked, waiting for its key");
    assert!(
        h.engine.state().process(PID).is_some(),
        "kept for the parked syscall"
    );
    let frames: Vec<u8> = [NTDLL + 0x1014, K32 + 0x10]
        .iter()
        .flat_map(|f| f.to_le_bytes())
        .collect();
    h.engine.on_kernel_event(
        &raw(200_000_000, 0),
        KernelEvent::StackKeyDefinition(StackKeyDefinition {
            op: StackKeyOp::Delete,
            stack_key: 0xABC0,
            frames: Frames::new(&frames, 8),
        }),
    );
    h.drain();
    assert_eq!(h.got.len(), 1);
    assert_eq!((h.got[0].verdict, h.got[0].reason), (Verdict::Normal, None));
    assert_eq!(h.got[0].call_site.as_deref(), Some("ntdll.dll+0x1014"));
    // Now nothing holds it: it goes after one more linger.
    other.timestamp = 300_000_000;
    h.engine.process(&other, &mut NullSink);
    other.timestamp = 400_000_000;
    h.engine.process(&other, &mut NullSink);
    assert!(h.engine.state().process(PID).is_none());
}

/// What the engine could not see: a process without start or rundown, one
/// without its ntdll mapping, and events lost between a process's start
/// and its syscall turn alerts of rules 3 and 7 into `unresolved`; alerts
/// that rest only on the stub module stay, and so do alerts of processes
/// whose state was complete before the loss.
#[test]
fn unresolved_when_the_state_could_not_be_seen() {
    let direct = stack_of(&[SHELL + 0x10, APP + 0x10]);
    let jumper = stack_of(&[NTDLL + 0x14, SHELL + 0x20]);
    let gadget = stack_of(&[NTDLL + 0x18, K32 + 0x10]);

    // Unknown process: its images are known but not its start.
    let mut h = Harness::new(EngineConfig::default());
    h.image(999, NTDLL, 0x20_0000, r"\Windows\System32\ntdll.dll");
    h.syscall(100, 0, SVC_A);
    h.stack(100, 0, 999, 5, &direct);
    let g = h.got.last().unwrap();
    assert_eq!(
        (g.verdict, g.reason),
        (Verdict::Unresolved, Some(Reason::ProcessUnknown))
    );
    // A process started in the trace without its ntdll mapping seen.
    h.process(555, Lifecycle::Start, 150);
    h.image(555, APP, 0x1_0000, r"\app\app.exe");
    h.syscall(200, 0, SVC_A);
    h.stack(200, 0, 555, 6, &jumper);
    let g = h.got.last().unwrap();
    assert_eq!(
        (g.verdict, g.reason),
        (Verdict::Unresolved, Some(Reason::ModulesIncomplete))
    );

    // Loss between the image loads and the syscalls: the event-loss gap.
    assert_eq!(
        h.one(300, SVC_A, &direct),
        (Verdict::Direct, Some(Reason::Unbacked))
    );
    h.engine.note_events_missing(400, 450, "session_loss");
    assert_eq!(
        h.one(500, SVC_A, &direct),
        (Verdict::Unresolved, Some(Reason::EventsLost))
    );
    assert_eq!(
        h.one(600, SVC_A, &jumper),
        (Verdict::Unresolved, Some(Reason::EventsLost))
    );
    // Not a claim about the module map: stays.
    assert_eq!(
        h.one(700, SVC_A, &gadget),
        (Verdict::Indirect, Some(Reason::NotReturnSite))
    );
    // A process whose start and ntdll come after the gap is whole again.
    h.process(777, Lifecycle::Start, 800);
    h.image(777, NTDLL, 0x20_0000, r"\Windows\System32\ntdll.dll");
    h.syscall(900, 0, SVC_A);
    h.stack(900, 0, 777, 9, &direct);
    let g = h.got.last().unwrap();
    assert_eq!(
        (g.verdict, g.reason),
        (Verdict::Direct, Some(Reason::Unbacked))
    );
    let s = h.finish();
    assert_eq!(s.verdicts.unresolved, 4);
    assert_eq!(
        (
            s.unresolved.process_unknown,
            s.unresolved.modules_incomplete,
            s.unresolved.events_lost
        ),
        (1, 1, 2)
    );
    assert!(s.trace_incomplete);
    assert_eq!(s.loss_gaps.len(), 1);
}

/// The payload and extended data of a Kernel-Audit-API-Calls `OpenProcess`
/// event (id 5) of `target` for `PROCESS_VM_READ|PROCESS_QUERY_INFORMATION`,
/// with its stack item (`STACK_TRACE64`, match id 0).
fn audit_open_process(frames: &[u64], target: u32) -> (Vec<u8>, Vec<u8>) {
    let mut payload = Vec::new();
    let mut e =
        sentry_kernel_audit_api::AuditEvent::new(sentry_kernel_audit_api::AuditApi::OpenProcess, 0);
    e.target_pid = Some(target);
    e.desired_access = Some(sentry_kernel_audit_api::AccessMask(0x0410));
    e.encode(8, &mut payload);
    let mut data = 0u64.to_le_bytes().to_vec();
    for f in frames {
        data.extend_from_slice(&f.to_le_bytes());
    }
    let mut ext = Vec::new();
    ext.extend_from_slice(&((8 + data.len()) as u16).to_le_bytes());
    ext.extend_from_slice(&sentry_raw::ext_type::STACK_TRACE64.to_le_bytes());
    ext.extend_from_slice(&0u16.to_le_bytes());
    ext.extend_from_slice(&(data.len() as u16).to_le_bytes());
    ext.extend_from_slice(&data);
    (payload, ext)
}

fn audit_raw<'a>(ts: u64, tid: u32, payload: &'a [u8], ext: &'a [u8]) -> RawEvent<'a> {
    RawEvent {
        header: HeaderKind::EventHeader64,
        id: EventId::Manifest {
            provider: sentry_kernel_audit_api::PROVIDER,
            id: 5,
            version: 0,
            channel: 0,
            level: 4,
            opcode: 0,
            task: 0,
            keyword: 0,
        },
        version: 0,
        pid: Some(PID),
        tid: Some(tid),
        processor: 0,
        timestamp: ts,
        pointer_size: 8,
        payload,
        extended: sentry_raw::ExtendedData(ext),
        offset: 0,
    }
}

/// Both sources in one stream, learning the services from it: each
/// NtOpenProcess makes a SysCallEnter (routine `SVC_A`) and an audit event
/// (id 5) at the same return site. The audit observations outnumber the
/// syscall ones, yet neither source's learned service is the other's: the
/// syscalls stay `normal` (a shared key space would call them
/// `stub_mismatch`), and so do the audit events; the audit event's pid and
/// target come through.
#[test]
fn syscall_and_audit_sources_learn_apart_in_one_stream() {
    let site = NTDLL + 0x1014;
    let frames = stack_of(&[site, K32 + 0x10, APP + 0x40]);
    for learning in [Learning::Online, Learning::Deferred] {
        let mut h = Harness::new(EngineConfig {
            learning,
            ..EngineConfig::default()
        });
        let mut audit = Vec::new();
        for i in 0..6u64 {
            let ts = 1000 + i * 100;
            let (payload, ext) = audit_open_process(&frames, 788);
            let mut sink = FnSink(|v: &SyscallVerdict<'_>| {
                audit.push((
                    v.verdict,
                    v.reason,
                    v.pid,
                    v.tid,
                    v.audit.and_then(|a| a.target_pid),
                    v.service_check.is_some(),
                ))
            });
            h.engine
                .process(&audit_raw(ts + 50, 77, &payload, &ext), &mut sink);
            h.engine
                .process(&audit_raw(ts + 60, 77, &payload, &ext), &mut sink);
            if i % 2 == 0 {
                h.syscall(ts, 0, SVC_A);
                h.stack(ts, 0, PID, 77, &frames);
            }
        }
        h.finish();
        assert_eq!(audit.len(), 12);
        for a in &audit {
            assert_eq!(
                (a.0, a.1, a.2, a.3, a.4),
                (Verdict::Normal, None, Some(PID), Some(77), Some(788)),
                "{learning:?}"
            );
        }
        assert_eq!(h.got.len(), 3);
        if learning == Learning::Online {
            for g in &h.got {
                assert_eq!((g.verdict, g.reason), (Verdict::Normal, None), "{g:?}");
            }
        }
        let s = h.engine.stats();
        assert_eq!(s.audit_events, 12);
        assert_eq!(s.verdicts.normal, 15, "{learning:?}: {:?}", s.verdicts);
        assert_eq!(s.verdicts.indirect, 0);
    }
}

/// docs/verdicts.md rule 2: a driver's `Zw` call in a user thread inside
/// that thread's own system call. Its kernel part is [logger, D (after
/// `call PerfInfoLogSysCallEntry`), KiServiceLinkage, the driver, the outer
/// routine, D' (the outer call's dispatcher frame)], then the outer call's
/// user part: `kernel_origin`, never a stub mismatch, and not learned.
#[test]
fn nested_kernel_call_in_a_user_thread_is_kernel_origin_and_not_learned() {
    let mut h = Harness::new(EngineConfig {
        learning: Learning::Online,
        ..EngineConfig::default()
    });
    let nested = |user: &[u64]| {
        let mut v = vec![
            NTOS + 0x20_f9a0,
            NTOS + 0x16_5adf,
            NTOS + 0x16_6c10,
            0xFFFF_F800_2345_1234,
            NTOS + 0x5d_0c31,
            NTOS + 0x16_5aff,
        ];
        v.extend_from_slice(user);
        v
    };
    let outer = stack_of(&[NTDLL + 0x1014, K32 + 0x40]);
    for i in 0..3 {
        assert_eq!(h.one(100 + i * 10, SVC_A, &outer), (Verdict::Normal, None));
    }
    // More nested calls than outer ones: learned, they would make SVC_B
    // the stub's service and the outer calls mismatches.
    for i in 0..5 {
        assert_eq!(
            h.one(1000 + i * 10, SVC_B, &nested(&[NTDLL + 0x1014, K32 + 0x40])),
            (Verdict::KernelOrigin, None)
        );
        assert_eq!(h.got.last().and_then(|g| g.pid), Some(PID));
    }
    assert_eq!(h.one(2000, SVC_A, &outer), (Verdict::Normal, None));
    // A user call of SVC_B through SVC_A's stub is still a mismatch.
    assert_eq!(
        h.one(3000, SVC_B, &outer),
        (Verdict::Indirect, Some(Reason::StubMismatch))
    );
    let s = h.finish();
    assert_eq!(s.nested_kernel_calls, 5);
    assert_eq!(s.verdicts.kernel_origin, 5);
}
