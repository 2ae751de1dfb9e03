//! `builtin:chromium-sandbox` on hand-built events: each requirement of the
//! recogniser (docs/verdicts.md, "Built-in allowlist") taken away once, and
//! the syscall must be rule 3's alert again; the named service and the
//! signer, where known, decide; everything is counted.

use std::sync::Arc;

use sentry_engine::{
    BuiltinAllowlist, Engine, EngineConfig, EngineStats, FnSink, Reason, SyscallVerdict, SystemDll,
    SystemDlls, Verdict,
};
use sentry_kernel::{Frames, Image, KernelEvent, Lifecycle, SysCallEnter};
use sentry_raw::{EventId, HeaderKind, RawEvent};
use sentry_synth::world::{self, Layout, SERVICES};

const PID: u32 = 7_104;
const EXE: u64 = 0x7ff7_1a2b_0000;
const DLL: u64 = 0x7ffa_a000_0000;
const PRIVATE: u64 = 0x0000_01d0_0000_0000;
/// A thunk page's header at a 128-aligned offset; slot 0's return site.
const THUNK: u64 = PRIVATE + 0x2_0080 + 32 + 0x14;

fn raw(ts: u64) -> RawEvent<'static> {
    RawEvent {
        header: HeaderKind::PerfInfo64,
        id: EventId::Kernel {
            group: 0x0f,
            opcode: 51,
        },
        version: 2,
        pid: None,
        tid: None,
        processor: 0,
        timestamp: ts,
        pointer_size: 8,
        payload: &[],
        extended: Default::default(),
        offset: 0,
    }
}

struct H {
    e: Engine,
    l: Layout,
    got: Vec<(Verdict, Option<Reason>, Option<usize>)>,
    ts: u64,
}

impl H {
    fn new(process: &str, builtin: BuiltinAllowlist, named: bool) -> H {
        let l = Layout::new(8);
        let system_dlls = named.then(|| {
            Arc::new(SystemDlls {
                dlls: sentry_synth::pe::system_dlls(&l)
                    .into_iter()
                    .map(|(n, b)| SystemDll::parse(n, &b).unwrap())
                    .collect(),
            })
        });
        let mut e = Engine::new(EngineConfig {
            builtin,
            system_dlls,
            ..EngineConfig::default()
        });
        e.on_kernel_event(
            &raw(1),
            KernelEvent::Process(sentry_kernel::Process {
                op: Lifecycle::DcStart,
                unique_process_key: 0,
                process_id: PID,
                parent_id: 7_100,
                session_id: 1,
                exit_status: 0,
                directory_table_base: 0,
                flags: None,
                user_sid: String::new(),
                image_file_name: process.into(),
                command_line: format!("{process} --type=renderer"),
                package_full_name: String::new(),
                application_id: String::new(),
            }),
        );
        let nt = l.ntoskrnl().clone();
        let mods = [
            (PID, &l.ntdll),
            (PID, &l.kernelbase),
            (PID, &l.kernel32),
            (0, &nt),
        ];
        let mut h = H {
            e,
            l: l.clone(),
            got: Vec::new(),
            ts: 100,
        };
        for (pid, m) in mods {
            h.image(pid, m.base, m.size, &m.path, m.time_date_stamp);
        }
        let app = "\\Device\\HarddiskVolume3\\Program Files\\Google\\Chrome\\Application";
        h.image(PID, EXE, 0x29_e000, &format!("{app}\\{process}"), 1);
        h.image(
            PID,
            DLL,
            0xc00_0000,
            &format!("{app}\\120.0.6099.130\\chrome.dll"),
            2,
        );
        h
    }

    fn image(&mut self, pid: u32, base: u64, size: u64, path: &str, tds: u32) {
        let i = Image {
            op: Lifecycle::DcStart,
            image_base: base,
            image_size: size,
            process_id: pid,
            image_checksum: 0,
            time_date_stamp: tds,
            default_base: 0,
            file_name: path.into(),
        };
        self.e.on_kernel_event(&raw(1), KernelEvent::Image(i));
    }

    /// One syscall of `service` with user frames `user`.
    fn call(&mut self, service: &str, user: &[u64]) -> (Verdict, Option<Reason>, Option<usize>) {
        self.ts += 100;
        let svc = self.l.routine(&SERVICES[world::service_index(service)]);
        let nt = self.l.ntoskrnl().base;
        let frames: Vec<u8> = [nt + 0x3d_1e2c, nt + 0x40_b3b5]
            .iter()
            .chain(user)
            .flat_map(|f| f.to_le_bytes())
            .collect();
        self.e.on_kernel_event(
            &raw(self.ts),
            KernelEvent::SysCallEnter(SysCallEnter {
                sys_call_address: svc,
            }),
        );
        self.e.on_kernel_event(
            &raw(self.ts + 1),
            KernelEvent::StackWalk(sentry_kernel::StackWalk {
                event_timestamp: self.ts,
                stack_process: PID,
                stack_thread: 77,
                frames: Frames::new(&frames, 8),
            }),
        );
        let got = &mut self.got;
        self.e.drain(&mut FnSink(|v: &SyscallVerdict<'_>| {
            got.push((v.verdict, v.reason, v.suppressed.map(|s| s.2)))
        }));
        *self.got.last().unwrap()
    }

    /// The thunk stack: `U` in the thunk page, `C` in the executable, the
    /// API layer, chrome.dll, the thread start.
    fn thunk(&self, u: u64, c: u64) -> Vec<u64> {
        vec![
            u,
            c,
            self.l.kernelbase.base + 0x2_311b,
            DLL + 0x12_345b,
            self.l.kernel32.base + Layout::BASE_THREAD_INIT_THUNK,
            self.l.ntdll.base + Layout::RTL_USER_THREAD_START,
        ]
    }

    fn stats(&mut self) -> EngineStats {
        self.e.finish(&mut FnSink(|_: &SyscallVerdict<'_>| {}))
    }
}

const SUPPRESSED: (Verdict, Option<Reason>, Option<usize>) = (Verdict::Normal, None, Some(1 << 20));
const ALERT: (Verdict, Option<Reason>, Option<usize>) =
    (Verdict::Direct, Some(Reason::Unbacked), None);

#[test]
fn each_requirement_taken_away_leaves_the_alert() {
    for named in [false, true] {
        let mut h = H::new("chrome.exe", BuiltinAllowlist::default(), named);
        let ok = h.thunk(THUNK, EXE + 0x9_100b);
        assert_eq!(h.call("NtCreateFile", &ok), SUPPRESSED);
        // Other thunk layouts (Windows 8 / 10 1507, Windows 7 stubs).
        for site in [0x3e, 0x2a] {
            let s = h.thunk(THUNK - 0x34 + site, EXE + 0x9_100b);
            assert_eq!(h.call("NtOpenFile", &s), SUPPRESSED);
        }
        // Not at a thunk return site.
        let off = h.thunk(THUNK + 4, EXE + 0x9_100b);
        assert_eq!(h.call("NtCreateFile", &off), ALERT);
        // Caller unbacked (shellcode calling its own syscall).
        let sc = h.thunk(THUNK, PRIVATE + 0x3_2a1);
        assert_eq!(h.call("NtCreateFile", &sc), ALERT);
        // Caller in chrome.dll, not the executable.
        let dll = h.thunk(THUNK, DLL + 0x77_000b);
        assert_eq!(h.call("NtCreateFile", &dll), ALERT);
        // No caller at all.
        assert_eq!(h.call("NtCreateFile", &[THUNK]), ALERT);
        // A service the sandbox does not intercept: known only by name.
        let alloc = h.call("NtAllocateVirtualMemory", &ok);
        let s = h.stats();
        let c = &s.builtin.chromium_sandbox;
        if named {
            assert_eq!(alloc, ALERT);
            assert_eq!(
                (c.suppressed, c.service_checked, c.rejected_service),
                (3, 3, 1)
            );
        } else {
            assert_eq!(alloc, SUPPRESSED);
            assert_eq!(
                (c.suppressed, c.service_not_checked, c.rejected_service),
                (4, 4, 0)
            );
        }
        assert_eq!(s.suppressed, c.suppressed);
        assert_eq!(c.signer_not_checked, c.suppressed);
    }
}

#[test]
fn other_process_names_and_disabled_builtin_alert() {
    for name in ["chrome_proxy.exe", "notepad.exe"] {
        let mut h = H::new(name, BuiltinAllowlist::default(), true);
        let ok = h.thunk(THUNK, EXE + 0x9_100b);
        assert_eq!(h.call("NtCreateFile", &ok), ALERT, "{name}");
    }
    let mut h = H::new("msedge.exe", BuiltinAllowlist::default(), true);
    let ok = h.thunk(THUNK, EXE + 0x9_100b);
    assert_eq!(h.call("NtCreateFile", &ok), SUPPRESSED);
    let mut h = H::new("chrome.exe", BuiltinAllowlist::disabled(), true);
    assert_eq!(h.call("NtCreateFile", &ok), ALERT);
    assert_eq!(h.stats().builtin.chromium_sandbox.suppressed, 0);
}

#[test]
fn a_known_signer_must_be_the_browsers() {
    let lookup = |signer: Option<&'static str>| BuiltinAllowlist {
        enabled: true,
        signer: Some(Arc::new(move |path: &str| {
            assert!(path.ends_with("\\chrome.exe"), "{path}");
            signer.map(String::from)
        })),
    };
    let mut h = H::new("chrome.exe", lookup(Some("Google LLC")), true);
    let ok = h.thunk(THUNK, EXE + 0x9_100b);
    assert_eq!(h.call("NtCreateFile", &ok), SUPPRESSED);
    assert_eq!(h.stats().builtin.chromium_sandbox.signer_checked, 1);
    let mut h = H::new("chrome.exe", lookup(Some("Evil Corp")), true);
    assert_eq!(h.call("NtCreateFile", &ok), ALERT);
    assert_eq!(h.stats().builtin.chromium_sandbox.rejected_signer, 1);
    let mut h = H::new("chrome.exe", lookup(None), true);
    assert_eq!(h.call("NtCreateFile", &ok), SUPPRESSED);
    assert_eq!(h.stats().builtin.chromium_sandbox.signer_not_checked, 1);
}
