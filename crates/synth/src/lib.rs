//! Labelled syscall scenarios written as genuine NT Kernel Logger `.etl`
//! traces, with their ground truth (`docs/verdicts.md`).
//!
//! A trace has the rundown of a running Windows 10 machine (Process,
//! Thread and Image DCStart for System, smss, csrss, services, svchost,
//! explorer..., kernel images for pid 0), then a stream of syscalls: each a
//! PerfInfo SysCallEnter (PERFINFO header: no pid/tid) with the service
//! routine address, StackWalk events carrying pid/tid and the stack
//! (innermost first: kernel frames, the Nt stub return site, its caller,
//! ... down to `RtlUserThreadStart`), and a SysCallExit. Benign traffic
//! always dominates so that an engine can learn each stub's service from
//! the trace. Memory is constant in the number of syscalls: events are
//! written as they are made and the truth file is streamed.
//!
//! Interpretations of the verdict rules made here (see also the report):
//! - The truth verdict is computed from the true layout, i.e. what the
//!   engine decides with `--system-dlls`; [`Summary::learnable`] checks the
//!   trace also teaches the same stub→service map without them (each
//!   return site's most frequent `SysCallAddress` is its own service).
//! - Degraded deliveries apply to benign syscalls only; their `technique`
//!   names the delivery (`split-stack`, `stack-before-event`,
//!   `missing-stack`, `truncated-stack`). A lost syscall (its SysCallEnter,
//!   StackWalk and SysCallExit dropped) is absent from the truth and counts
//!   3 in `events_lost`.
//! - `reason` is `null` unless the verdict is `direct` or `indirect`; a
//!   `direct`/`image` entry also names the module (`"module"`). The truth
//!   file adds `compressed`, `stack_cache` and per-`techniques` counts to
//!   the documented schema.
//! - Heaven's gate: U is 64-bit code outside the 64-bit ntdll/win32u of a
//!   WoW64 process, either in private memory or inside the 32-bit EXE;
//!   both are `direct`/`heavens_gate` (rule 3's WoW64 clause wins over
//!   `image`/`unbacked`). It needs a 64-bit trace.
//! - 32-bit traces (`pointer_size` 4) keep the x64 stub geometry of the
//!   rules (0x20 apart, return site +0x14) with x86 address ranges, and have
//!   no WoW64.
//!
//! Event forms follow the Windows 10 corpus trace: Process V4 (Start/End
//! SYSTEM headers, DCStart/DCEnd PERFINFO), Thread V3 (SYSTEM), Image V3
//! (Load as hook 0x030A and Unload with SYSTEM headers; DCStart/DCEnd
//! PERFINFO for user images, SYSTEM for kernel images), SysCallEnter/Exit,
//! StackWalk and stack-key events with PERFINFO headers, version 2. With
//! stack caching, as in the Windows 8 corpus traces, references (37 kernel,
//! 38 user) come first and keys are defined when they leave the bounded
//! cache (35) or at the end (36); no create (34) events.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Seek, Write};

use sentry_etl_writer::payload::{self, ImagePayload, ProcessPayload, ThreadPayload};
use sentry_etl_writer::{EtlWriter, HeaderClass, Record, TraceConfig, WriteStats};

pub mod chromium_sandbox;
pub mod evasion;
pub mod exception_handler;
pub mod nested;
pub mod pe;
pub mod proxy_call;
mod rng;
pub mod world;

pub use rng::Rng;
use world::{Layout, ModKind, Module, ProcKind, Process, Service, Thread, SERVICES};

/// The scenarios `synth --scenario` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Benign,
    DirectImage,
    DirectUnbacked,
    IndirectJumper,
    IndirectRandomized,
    HeavensGate,
    Degraded,
    Mixed,
    // Call-stack evasion and its look-alikes (`evasion`).
    ClonedNtdll,
    RopFrames,
    StackTruncation,
    Wow64Bypass,
    Lookalikes,
    /// Exception handlers in private memory calling APIs, and their benign
    /// look-alikes (`exception_handler`).
    ExceptionHandler,
    ExceptionLookalikes,
    /// Proxied calls (`proxy_call`): an API run as a thread-pool, timer or
    /// APC callback.
    ProxyCall,
    /// Benign stacks that look like proxied calls.
    ProxyLookalikes,
    /// A process-listing tool opening many processes and threads through
    /// kernelbase (`OpenProcess`/`OpenThread`): every audited call `normal`.
    AuditBenign,
    /// `NtOpenProcess` on lsass.exe with `PROCESS_VM_READ` by direct
    /// syscalls, from an EXE's own stubs (SysWhispers2) and from shellcode.
    AuditLsassDirect,
    /// `NtOpenProcess`/`NtOpenThread` through the ntdll stub's `syscall`
    /// from unbacked memory (SysWhispers3-style jumper).
    AuditIndirect,
    /// `NtSetContextThread` by a direct syscall from unbacked memory.
    AuditSetContext,
    /// All of the above, with WoW64 callers on 64-bit traces.
    AuditMixed,
    /// Chromium/Edge sandboxed children calling through their interception
    /// thunks (benign, suppressed by `builtin:chromium-sandbox`), a 32-bit
    /// Chrome on WoW64, and shellcode and an exploit in the same browsers
    /// (`chromium_sandbox`); 64-bit traces only.
    ChromiumSandbox,
}

/// Which events carry the syscalls of a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// PerfInfo SysCallEnter + StackWalk (+ SysCallExit) for every syscall.
    Syscalls,
    /// Microsoft-Windows-Kernel-Audit-API-Calls events with a stack item,
    /// for the audited syscalls only (NtOpenProcess, NtOpenThread,
    /// NtSetContextThread, NtTerminateProcess of another process). The same
    /// workload as [`Source::Syscalls`] for the same seed: the generator
    /// makes the same choices and leaves the other syscalls' events out.
    Audit,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Syscalls => "syscalls",
            Source::Audit => "audit",
        }
    }

    pub fn from_name(s: &str) -> Option<Source> {
        [Source::Syscalls, Source::Audit]
            .into_iter()
            .find(|x| x.name() == s)
    }
}

impl Scenario {
    pub const ALL: [Scenario; 8] = [
        Scenario::Benign,
        Scenario::DirectImage,
        Scenario::DirectUnbacked,
        Scenario::IndirectJumper,
        Scenario::IndirectRandomized,
        Scenario::HeavensGate,
        Scenario::Degraded,
        Scenario::Mixed,
    ];

    /// The call-stack evasion scenarios and their benign look-alikes
    /// (`evasion`); `wow64-bypass` needs a 64-bit trace.
    pub const EVASION: [Scenario; 7] = [
        Scenario::ClonedNtdll,
        Scenario::RopFrames,
        Scenario::StackTruncation,
        Scenario::Wow64Bypass,
        Scenario::Lookalikes,
        Scenario::ExceptionHandler,
        Scenario::ExceptionLookalikes,
    ];

    /// The proxied-call scenario and its look-alikes (`proxy_call`).
    pub const PROXY: [Scenario; 2] = [Scenario::ProxyCall, Scenario::ProxyLookalikes];

    /// The Audit-API scenarios (written with [`Source::Audit`] by default).
    pub const AUDIT: [Scenario; 5] = [
        Scenario::AuditBenign,
        Scenario::AuditLsassDirect,
        Scenario::AuditIndirect,
        Scenario::AuditSetContext,
        Scenario::AuditMixed,
    ];

    /// Chromium/Edge sandbox thunks and attacks in browsers (`chromium_sandbox`).
    pub const CHROMIUM: [Scenario; 1] = [Scenario::ChromiumSandbox];

    /// The source a scenario is written with unless told otherwise.
    pub fn default_source(self) -> Source {
        if Scenario::AUDIT.contains(&self) {
            Source::Audit
        } else {
            Source::Syscalls
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Benign => "benign",
            Scenario::DirectImage => "direct-image",
            Scenario::DirectUnbacked => "direct-unbacked",
            Scenario::IndirectJumper => "indirect-jumper",
            Scenario::IndirectRandomized => "indirect-randomized",
            Scenario::HeavensGate => "heavens-gate",
            Scenario::Degraded => "degraded",
            Scenario::Mixed => "mixed",
            Scenario::ClonedNtdll => "cloned-ntdll",
            Scenario::RopFrames => "rop-frames",
            Scenario::StackTruncation => "stack-truncation",
            Scenario::Wow64Bypass => "wow64-bypass",
            Scenario::Lookalikes => "evasion-lookalikes",
            Scenario::ExceptionHandler => "exception-handler",
            Scenario::ExceptionLookalikes => "exception-lookalikes",
            Scenario::ProxyCall => "proxy-call",
            Scenario::ProxyLookalikes => "proxy-lookalikes",
            Scenario::AuditBenign => "audit-benign",
            Scenario::AuditLsassDirect => "audit-lsass-direct",
            Scenario::AuditIndirect => "audit-indirect",
            Scenario::AuditSetContext => "audit-set-context",
            Scenario::AuditMixed => "audit-mixed",
            Scenario::ChromiumSandbox => "chromium-sandbox",
        }
    }

    pub fn from_name(s: &str) -> Option<Scenario> {
        Scenario::ALL
            .into_iter()
            .chain(Scenario::EVASION)
            .chain(Scenario::AUDIT)
            .chain(Scenario::CHROMIUM)
            .chain(Scenario::PROXY)
            .find(|x| x.name() == s)
    }
}

/// Options of one generated trace.
#[derive(Debug, Clone)]
pub struct Options {
    pub scenario: Scenario,
    pub seed: u64,
    /// SysCallEnter events generated (including lost ones).
    pub syscalls: u64,
    pub pointer_size: u8,
    pub processors: u16,
    pub compress: bool,
    pub stack_cache: bool,
    /// Short-lived processes start and exit every 4,000 syscalls (as on a
    /// real host). Off: the processes of the rundown and the scenario's
    /// own stay the same throughout, a fixed population whatever the
    /// length (for showing that memory follows the population, not the
    /// trace length).
    pub process_churn: bool,
    pub source: Source,
}

impl Options {
    pub fn new(scenario: Scenario) -> Options {
        Options {
            scenario,
            seed: 1,
            syscalls: 2000,
            pointer_size: 8,
            processors: 8,
            compress: false,
            stack_cache: false,
            process_churn: true,
            source: scenario.default_source(),
        }
    }
}

/// What one generation produced.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Truth entries per verdict string.
    pub counts: BTreeMap<&'static str, u64>,
    /// Truth entries per technique.
    pub techniques: BTreeMap<&'static str, u64>,
    pub truth_syscalls: u64,
    pub events_lost: u32,
    pub stats: WriteStats,
    /// Return sites whose most frequent `SysCallAddress` in the trace is not
    /// their own service (must be empty for the truth to be learnable).
    pub unlearnable_sites: Vec<u64>,
    pub layout: Layout,
    /// The bytes behind the trace's return addresses, for
    /// [`pe::images`] (`--images`).
    pub code: evasion::CodeMap,
}

impl Summary {
    pub fn learnable(&self) -> bool {
        self.unlearnable_sites.is_empty()
    }
}

/// Why generation failed.
#[derive(Debug)]
pub enum SynthError {
    Io(io::Error),
    Write(sentry_etl_writer::WriteError),
    Unsupported(String),
}

impl std::fmt::Display for SynthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SynthError::Io(e) => write!(f, "{e}"),
            SynthError::Write(e) => write!(f, "{e}"),
            SynthError::Unsupported(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for SynthError {}

impl From<io::Error> for SynthError {
    fn from(e: io::Error) -> Self {
        SynthError::Io(e)
    }
}

impl From<sentry_etl_writer::WriteError> for SynthError {
    fn from(e: sentry_etl_writer::WriteError) -> Self {
        SynthError::Write(e)
    }
}

/// How a syscall's process reached the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tech {
    Ntdll,
    Win32u,
    Jit,
    Wow64,
    Wow64Win32u,
    KernelThread,
    Sw2Image,
    ShellcodeDirect,
    Jumper,
    Randomized,
    StubGadget,
    HeavensGate,
    Evasion(evasion::Ev),
    /// Exception handlers calling APIs (`exception_handler`).
    Exception(exception_handler::Xh),
    Chromium(chromium_sandbox::Cr),
    Proxy(proxy_call::Px),
    /// A process lister's OpenProcess/OpenThread through kernelbase.
    ProcList,
    /// The same from a WoW64 process (through wow64cpu and the 64-bit ntdll).
    Wow64ProcList,
    /// SysWhispers2 `NtOpenProcess` on lsass.exe from the EXE's own stubs.
    LsassImage,
    /// `NtOpenProcess` on lsass.exe from shellcode's own `syscall`.
    LsassShellcode,
    /// NtOpenProcess/NtOpenThread via the ntdll stub's `syscall`, called
    /// from unbacked memory.
    AuditJumper,
    /// `NtSetContextThread` from shellcode's own `syscall`.
    SetContextUnbacked,
    /// A driver's `Zw` call nested in a user thread's system call
    /// (`nested`).
    Nested,
}

/// How the syscall's stack reaches the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Single,
    Split,
    Before,
    Missing,
    Truncated,
    Lost,
    /// The kernel part only: the user part never arrives (`nested`).
    UserPartLost,
}

const BENIGN: [(Tech, u32); 7] = [
    (Tech::Ntdll, 600),
    (Tech::Win32u, 150),
    (Tech::Jit, 80),
    (Tech::Wow64, 100),
    (Tech::Wow64Win32u, 30),
    (Tech::KernelThread, 40),
    (Tech::Nested, 20),
];

/// Attack techniques and deliveries per scenario, in per-mille of syscalls.
type Plan = (Vec<(Tech, u32)>, Vec<(Delivery, u32)>);

fn plan(s: Scenario) -> Plan {
    use Delivery as D;
    use Tech as T;
    match s {
        Scenario::Benign => (vec![], vec![]),
        Scenario::DirectImage => (vec![(T::Sw2Image, 50)], vec![]),
        Scenario::DirectUnbacked => (vec![(T::ShellcodeDirect, 50)], vec![]),
        Scenario::IndirectJumper => (vec![(T::Jumper, 50)], vec![]),
        Scenario::IndirectRandomized => (vec![(T::Randomized, 40), (T::StubGadget, 10)], vec![]),
        Scenario::HeavensGate => (vec![(T::HeavensGate, 50)], vec![]),
        Scenario::Degraded => (
            vec![],
            vec![
                (D::Missing, 30),
                (D::Before, 40),
                (D::Split, 60),
                (D::Truncated, 30),
                (D::Lost, 10),
                (D::UserPartLost, 20),
            ],
        ),
        Scenario::ClonedNtdll
        | Scenario::RopFrames
        | Scenario::StackTruncation
        | Scenario::Wow64Bypass
        | Scenario::Lookalikes => (evasion::plan(s), vec![]),
        Scenario::ExceptionHandler | Scenario::ExceptionLookalikes => {
            (exception_handler::plan(s), vec![])
        }
        Scenario::ChromiumSandbox => (chromium_sandbox::plan(), vec![]),
        Scenario::ProxyCall | Scenario::ProxyLookalikes => (proxy_call::plan(s), vec![]),
        Scenario::AuditBenign => (vec![(T::ProcList, 150), (T::Wow64ProcList, 50)], vec![]),
        Scenario::AuditLsassDirect => (
            vec![
                (T::ProcList, 100),
                (T::LsassImage, 20),
                (T::LsassShellcode, 20),
            ],
            vec![],
        ),
        Scenario::AuditIndirect => (vec![(T::ProcList, 100), (T::AuditJumper, 40)], vec![]),
        Scenario::AuditSetContext => (
            vec![(T::ProcList, 100), (T::SetContextUnbacked, 40)],
            vec![],
        ),
        Scenario::AuditMixed => (
            vec![
                (T::ProcList, 100),
                (T::Wow64ProcList, 30),
                (T::LsassImage, 10),
                (T::LsassShellcode, 10),
                (T::AuditJumper, 15),
                (T::SetContextUnbacked, 10),
            ],
            vec![],
        ),
        Scenario::Mixed => (
            vec![
                (T::Sw2Image, 8),
                (T::ShellcodeDirect, 8),
                (T::Jumper, 10),
                (T::Randomized, 8),
                (T::StubGadget, 3),
                (T::HeavensGate, 8),
            ],
            vec![
                (D::Missing, 10),
                (D::Before, 15),
                (D::Split, 25),
                (D::Truncated, 10),
                (D::Lost, 5),
            ],
        ),
    }
}

/// Services attack code calls.
const ATTACK_SERVICES: [&str; 10] = [
    "NtAllocateVirtualMemory",
    "NtProtectVirtualMemory",
    "NtWriteVirtualMemory",
    "NtCreateThreadEx",
    "NtOpenProcess",
    "NtQueueApcThread",
    "NtMapViewOfSection",
    "NtReadVirtualMemory",
    "NtResumeThread",
    "NtCreateSection",
];

/// Stubs a randomized jumper borrows: frequently used by benign code, so
/// their learned service stays right.
const BORROWED_STUBS: [&str; 5] = [
    "NtClose",
    "NtWaitForSingleObject",
    "NtReadFile",
    "NtQueryValueKey",
    "NtAllocateVirtualMemory",
];

/// One syscall's labelled content.
struct Call {
    service: usize,
    verdict: &'static str,
    reason: Option<&'static str>,
    technique: &'static str,
    module: Option<String>,
    /// Verdict and reason without `--images` (when they differ).
    alt: Option<(&'static str, Option<&'static str>)>,
    /// Flags of the syscall (docs/verdicts.md, "Flags").
    flags: &'static [&'static str],
    /// `DesiredAccess` of an audited open, when the technique sets it.
    access: Option<u32>,
    /// The target process, when the technique sets it (lsass.exe).
    target: Option<u32>,
}

/// Bounded FIFO stack cache (Windows 8+ stack caching): frames -> key.
struct StackCache {
    map: HashMap<Vec<u64>, u64>,
    order: VecDeque<(u64, Vec<u64>)>,
    next_key: u64,
    capacity: usize,
}

const MAX_FRAMES: usize = 192;

struct Gen<W: Write + Seek, T: Write> {
    o: Options,
    l: Layout,
    w: EtlWriter<W>,
    truth: Option<T>,
    rng: Rng,
    clock: u64,
    procs: Vec<Process>,
    next_pid: u32,
    next_tid: u32,
    buf: Vec<u8>,
    cache: Option<StackCache>,
    counts: BTreeMap<&'static str, u64>,
    techniques: BTreeMap<&'static str, u64>,
    truth_n: u64,
    sites: HashMap<u64, HashMap<u64, u64>>,
    site_service: HashMap<u64, u64>,
    benign_w: Vec<u32>,
    attack: Vec<(Tech, u32)>,
    delivery: Vec<(Delivery, u32)>,
    ntdll_services: Vec<usize>,
    ntdll_w: Vec<u32>,
    w32k_services: Vec<usize>,
    w32k_w: Vec<u32>,
    jumper_variant: usize,
    kframes: Vec<u64>,
    uframes: Vec<u64>,
    code: evasion::CodeMap,
    /// The stack item being written (reused).
    item: Vec<u8>,
    /// The audit fields of the truth entry being written.
    audit_truth: Option<AuditTruth>,
}

/// What the truth file says of an Audit-API event besides the verdict.
struct AuditTruth {
    api: &'static str,
    target: Option<(u32, Option<u32>, &'static str)>,
    access: Option<u32>,
    return_code: u32,
    /// The stack item was split (`"stack_split": true`).
    split: bool,
}

/// The Audit-API event a syscall writes, if any (`NtTerminateProcess`
/// only for another process: the scenarios never terminate their own).
fn audit_api(service: &str) -> Option<sentry_kernel_audit_api::AuditApi> {
    use sentry_kernel_audit_api::AuditApi as A;
    Some(match service {
        "NtOpenProcess" => A::OpenProcess,
        "NtOpenThread" => A::OpenThread,
        "NtSetContextThread" => A::SetContextThread,
        "NtTerminateProcess" => A::TerminateProcess,
        _ => return None,
    })
}

/// Writes the trace to `etl` and the truth JSON to `truth` (if any).
pub fn generate<W: Write + Seek, T: Write>(
    o: &Options,
    etl: W,
    truth: Option<T>,
) -> Result<(W, Summary), SynthError> {
    if o.pointer_size != 4 && o.pointer_size != 8 {
        return Err(SynthError::Unsupported(
            "pointer size must be 4 or 8".into(),
        ));
    }
    if matches!(o.scenario, Scenario::HeavensGate | Scenario::Wow64Bypass) && o.pointer_size == 4 {
        return Err(SynthError::Unsupported(
            "heavens-gate needs a 64-bit trace (WoW64): use --pointer-size 8".into(),
        ));
    }
    if chromium_sandbox::needs_64_bit(o.scenario) && o.pointer_size == 4 {
        return Err(SynthError::Unsupported(
            "chromium-sandbox needs a 64-bit trace (x64 thunks, WoW64): use --pointer-size 8"
                .into(),
        ));
    }
    if o.processors == 0 || o.processors > 64 {
        return Err(SynthError::Unsupported("processors must be 1..=64".into()));
    }
    let mut cfg = TraceConfig::windows10(o.pointer_size, o.processors);
    cfg.compress = o.compress;
    cfg.log_file_name = format!("C:\\trace\\{}.etl", o.scenario.name());
    let w = EtlWriter::new(etl, cfg.clone())?;
    let l = Layout::new(o.pointer_size);
    let (mut attack, delivery) = plan(o.scenario);
    if o.scenario == Scenario::Mixed {
        attack.extend(evasion::mixed());
        attack.extend(exception_handler::mixed());
        attack.extend(chromium_sandbox::mixed());
        attack.extend(proxy_call::mixed());
    }
    let wow = o.pointer_size == 8;
    if !wow {
        attack.retain(|(t, _)| {
            !matches!(t, Tech::HeavensGate | Tech::Wow64ProcList)
                && !matches!(t, Tech::Evasion(e) if e.needs_wow64())
                && !matches!(t, Tech::Exception(x) if x.needs_wow64())
                && !matches!(t, Tech::Chromium(_))
                && !matches!(t, Tech::Proxy(p) if p.needs_wow64())
        });
    }
    let benign_w = BENIGN
        .iter()
        .map(|&(t, w)| {
            if !wow && matches!(t, Tech::Wow64 | Tech::Wow64Win32u) {
                0
            } else {
                w
            }
        })
        .collect();
    let (ntdll_services, w32k_services): (Vec<usize>, Vec<usize>) =
        (0..SERVICES.len()).partition(|&i| !SERVICES[i].is_win32k());
    let ntdll_w = ntdll_services.iter().map(|&i| SERVICES[i].weight).collect();
    let w32k_w = w32k_services.iter().map(|&i| SERVICES[i].weight).collect();
    let site_service = SERVICES
        .iter()
        .map(|s| (l.return_site(s), l.routine(s)))
        .collect();
    let mut g = Gen {
        o: o.clone(),
        l,
        w,
        truth,
        rng: Rng::new(o.seed),
        clock: cfg.start_qpc + 5_000,
        procs: Vec::new(),
        next_pid: 9_000,
        next_tid: 12_000,
        buf: Vec::with_capacity(2048),
        cache: o.stack_cache.then(|| StackCache {
            map: HashMap::new(),
            order: VecDeque::new(),
            next_key: if o.pointer_size == 8 {
                0xffff_fa83_0340_0000
            } else {
                0x8640_0000
            },
            capacity: 4096,
        }),
        counts: BTreeMap::new(),
        techniques: BTreeMap::new(),
        truth_n: 0,
        sites: HashMap::new(),
        site_service,
        benign_w,
        attack,
        delivery,
        ntdll_services,
        ntdll_w,
        w32k_services,
        w32k_w,
        jumper_variant: 0,
        kframes: Vec::with_capacity(16),
        uframes: Vec::with_capacity(MAX_FRAMES),
        code: evasion::CodeMap::new(),
        item: Vec::with_capacity(8 * (MAX_FRAMES + 8)),
        audit_truth: None,
    };
    g.truth_start()?;
    g.rundown_start()?;
    g.start_implants()?;
    for i in 0..o.syscalls {
        g.churn(i)?;
        g.syscall()?;
    }
    g.rundown_end()?;
    g.finish()
}

impl<W: Write + Seek, T: Write> Gen<W, T> {
    fn tick(&mut self, lo: u64, hi: u64) -> u64 {
        self.clock += self.rng.range(lo, hi);
        self.clock
    }

    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        cpu: u16,
        class: HeaderClass,
        group: u8,
        opcode: u8,
        version: u16,
        pid: u32,
        tid: u32,
        ts: u64,
    ) -> Result<(), SynthError> {
        // The Audit-API source has no SysCallEnter/Exit or StackWalk events.
        if self.o.source == Source::Audit && matches!(group, 0x0F | 0x18) {
            return Ok(());
        }
        let rec = Record {
            class,
            group,
            opcode,
            version,
            pid,
            tid,
            timestamp: ts,
            payload: &self.buf,
        };
        self.w.write(cpu, &rec)?;
        Ok(())
    }

    fn ps(&self) -> u8 {
        self.o.pointer_size
    }

    // ---------------------------------------------------------------- world

    fn new_process(
        &mut self,
        pid: u32,
        parent: u32,
        name: &'static str,
        kind: ProcKind,
        threads: usize,
    ) -> Process {
        let ps = self.ps();
        let wow = matches!(kind, ProcKind::Wow64 | ProcKind::Wow64Implant);
        let exe = (kind != ProcKind::System).then(|| {
            let (base, path) = if wow {
                (
                    0x0040_0000 + self.rng.range(0, 0x40) * 0x1_0000,
                    format!(
                        "\\Device\\HarddiskVolume3\\Program Files (x86)\\{}\\{}",
                        name.trim_end_matches(".exe"),
                        name
                    ),
                )
            } else if ps == 8 {
                (
                    0x7ff6_0000_0000 + self.rng.range(0x1000, 0xffff) * 0x1_0000,
                    exe_path(name),
                )
            } else {
                (
                    0x0040_0000 + self.rng.range(0, 0x300) * 0x1_0000,
                    exe_path(name),
                )
            };
            let size = 0x2_0000 + self.rng.range(0, 0x40) * 0x1000;
            Module {
                kind: ModKind::Exe,
                base,
                size,
                path,
                time_date_stamp: self.rng.next_u64() as u32,
                checksum: self.rng.next_u64() as u32 & 0xff_ffff,
            }
        });
        let private_base = if ps == 8 && !wow {
            0x0000_01d0_0000_0000 + self.rng.range(0, 0xfff) * 0x100_0000
        } else {
            0x0260_0000 + self.rng.range(0, 0x80) * 0x1_0000
        };
        let private = (private_base, 0x4_0000);
        let session = if matches!(
            name,
            "System"
                | "smss.exe"
                | "services.exe"
                | "lsass.exe"
                | "svchost.exe"
                | "wininit.exe"
                | "MsMpEng.exe"
                | "spoolsv.exe"
                | "SearchIndexer.exe"
        ) || pid == 4
        {
            0
        } else {
            1
        };
        let sid = match (kind, session) {
            (ProcKind::System, _) | (_, 0) => "S-1-5-18",
            _ => "S-1-5-21-3623811015-3361044348-30300820-1013",
        };
        let (key, dtb) = if ps == 8 {
            (
                0xffff_a804_e000_0000 + u64::from(pid) * 0x800,
                0x1_0000_0000 + u64::from(pid) * 0x10_0000,
            )
        } else {
            (
                0x8a00_0000 + u64::from(pid) * 0x100,
                0x1850_0000 + u64::from(pid) * 0x1000,
            )
        };
        let mut p = Process {
            pid,
            parent,
            session,
            name,
            command_line: if kind == ProcKind::System {
                String::new()
            } else {
                command_line(name)
            },
            sid,
            kind,
            key,
            dtb,
            exe,
            private,
            threads: Vec::new(),
        };
        for _ in 0..threads {
            let t = self.new_thread(&p);
            p.threads.push(t);
        }
        p
    }

    fn new_thread(&mut self, p: &Process) -> Thread {
        let tid = self.next_tid;
        self.next_tid += 4 * self.rng.range(1, 20) as u32;
        let ps = self.ps();
        let home_cpu = self.rng.below(usize::from(self.o.processors)) as u16;
        let (stack_base, teb) = if ps == 8 {
            (
                0xffff_f80c_0000_0000 + u64::from(tid) * 0x8000,
                0x0000_00a0_0000_0000 + u64::from(p.pid) * 0x100_0000 + u64::from(tid) * 0x2000,
            )
        } else {
            (
                0x9e00_0000 + u64::from(tid) * 0x3000,
                0x7ff0_0000 - u64::from(tid % 0x4000) * 0x1000,
            )
        };
        let start = match &p.exe {
            Some(e) => e.base + 0x1_4a0,
            None => self.l.ntoskrnl().base + 0x35_5a10,
        };
        Thread {
            tid,
            home_cpu,
            stack_base,
            teb,
            start,
        }
    }

    fn process_event(
        &mut self,
        p: &Process,
        opcode: u8,
        cpu: u16,
        hdr: Option<(u32, u32)>,
    ) -> Result<(), SynthError> {
        let ts = self.tick(20, 300);
        self.buf.clear();
        ProcessPayload {
            version: 4,
            unique_process_key: p.key,
            process_id: p.pid,
            parent_id: p.parent,
            session_id: if p.pid <= 4 { u32::MAX } else { p.session },
            exit_status: if opcode == 2 { 0 } else { 0x103 },
            directory_table_base: p.dtb,
            flags: if p.is_wow64() { 0x2 } else { 0 },
            user_sid: p.sid.to_string(),
            sid_pointer: p.key + 0x4a0,
            sid_attributes: 0,
            image_file_name: p.name.to_string(),
            command_line: p.command_line.clone(),
            package_full_name: String::new(),
            application_id: String::new(),
        }
        .encode(self.ps(), &mut self.buf);
        // Windows 10: Start/End with SYSTEM headers, rundown with PERFINFO.
        match hdr {
            Some((pid, tid)) => self.emit(cpu, HeaderClass::System, 0x03, opcode, 4, pid, tid, ts),
            None => self.emit(cpu, HeaderClass::PerfInfo, 0x03, opcode, 4, 0, 0, ts),
        }
    }

    fn thread_event(
        &mut self,
        p: &Process,
        t: &Thread,
        opcode: u8,
        cpu: u16,
        hdr: (u32, u32),
    ) -> Result<(), SynthError> {
        let ts = self.tick(10, 200);
        let ps = self.ps();
        self.buf.clear();
        let user = p.kind != ProcKind::System;
        ThreadPayload {
            process_id: p.pid,
            thread_id: t.tid,
            stack_base: t.stack_base,
            stack_limit: t.stack_base - 0x6000,
            user_stack_base: if user {
                t.teb.wrapping_sub(0x10_0000) & !0xffff
            } else {
                0
            },
            user_stack_limit: if user {
                (t.teb.wrapping_sub(0x10_0000) & !0xffff) - 0x3000
            } else {
                0
            },
            affinity: if ps == 8 {
                (1u64 << self.o.processors) - 1
            } else {
                (1u64 << self.o.processors.min(32)) - 1
            },
            win32_start_addr: t.start,
            teb_base: if user { t.teb } else { 0 },
            sub_process_tag: 0,
            base_priority: 8,
            page_priority: 5,
            io_priority: 2,
            thread_flags: 0,
        }
        .encode(ps, &mut self.buf);
        self.emit(cpu, HeaderClass::System, 0x05, opcode, 3, hdr.0, hdr.1, ts)
    }

    fn image_event(
        &mut self,
        pid: u32,
        m: &Module,
        opcode: u8,
        cpu: u16,
        class: HeaderClass,
        hdr: (u32, u32),
    ) -> Result<(), SynthError> {
        let ts = self.tick(10, 200);
        self.buf.clear();
        ImagePayload {
            image_base: m.base,
            image_size: m.size,
            process_id: pid,
            image_checksum: m.checksum,
            time_date_stamp: m.time_date_stamp,
            reserved0: if pid == 0 { 0x100 } else { 0x0c00 },
            default_base: if pid == 0 { 0 } else { m.base },
            file_name: m.path.clone(),
        }
        .encode(self.ps(), &mut self.buf);
        // Image Load is hook 0x030A; Unload/DCStart/DCEnd are group 0x14.
        let (group, op) = if opcode == 10 {
            (0x03, 10)
        } else {
            (0x14, opcode)
        };
        self.emit(cpu, class, group, op, 2, hdr.0, hdr.1, ts)
    }

    /// Rundown of what runs when the trace starts (Process, Thread, Image
    /// DCStart), as the kernel logger writes it on processor 0.
    fn rundown_start(&mut self) -> Result<(), SynthError> {
        let wow = self.ps() == 8;
        let table: Vec<(u32, u32, &'static str, ProcKind, usize)> = vec![
            (4, 0, "System", ProcKind::System, 6),
            (400, 4, "smss.exe", ProcKind::Native, 2),
            (560, 548, "csrss.exe", ProcKind::Native, 3),
            (636, 548, "wininit.exe", ProcKind::Native, 2),
            (704, 620, "winlogon.exe", ProcKind::Gui, 3),
            (772, 636, "services.exe", ProcKind::Native, 4),
            (788, 636, "lsass.exe", ProcKind::Native, 4),
            (904, 772, "svchost.exe", ProcKind::Native, 5),
            (968, 772, "svchost.exe", ProcKind::Native, 4),
            (1188, 772, "svchost.exe", ProcKind::Native, 6),
            (1312, 772, "spoolsv.exe", ProcKind::Native, 3),
            (2044, 772, "MsMpEng.exe", ProcKind::Native, 6),
            (2508, 772, "SearchIndexer.exe", ProcKind::Native, 4),
            (4520, 4488, "explorer.exe", ProcKind::Gui, 6),
            (5104, 4520, "notepad.exe", ProcKind::Gui, 2),
            (5960, 4520, "pwsh.exe", ProcKind::JitHost, 5),
            (
                6312,
                4520,
                "steam.exe",
                if wow { ProcKind::Wow64 } else { ProcKind::Gui },
                4,
            ),
            (
                6788,
                4520,
                "7zFM.exe",
                if wow {
                    ProcKind::Wow64
                } else {
                    ProcKind::Native
                },
                2,
            ),
        ];
        // Idle (pid 0) comes first in real rundowns; no threads or images.
        let idle = self.new_process(0, 0, "Idle", ProcKind::System, 0);
        self.process_event(&idle, 3, 0, None)?;
        let logger = (self.w.config().logger_pid, self.w.config().logger_tid);
        for (pid, parent, name, kind, threads) in table {
            let p = self.new_process(pid, parent, name, kind, threads);
            self.process_event(&p, 3, 0, None)?;
            for t in p.threads.clone() {
                self.thread_event(&p, &t, 3, 0, (0, 0))?;
            }
            if kind == ProcKind::System {
                for m in self.l.kernel.clone() {
                    self.image_event(0, &m, 3, 0, HeaderClass::System, logger)?;
                }
            }
            let mods: Vec<Module> = p.modules(&self.l).into_iter().cloned().collect();
            for m in &mods {
                self.image_event(p.pid, m, 3, 0, HeaderClass::PerfInfo, (0, 0))?;
            }
            self.procs.push(p);
        }
        Ok(())
    }

    /// Rundown at the end (DCEnd) of what still runs.
    fn rundown_end(&mut self) -> Result<(), SynthError> {
        self.tick(1000, 2000);
        let logger = (self.w.config().logger_pid, self.w.config().logger_tid);
        for p in std::mem::take(&mut self.procs) {
            self.process_event(&p, 4, 0, None)?;
            for t in &p.threads {
                self.thread_event(&p, t, 4, 0, (0, 0))?;
            }
            if p.kind == ProcKind::System {
                for m in self.l.kernel.clone() {
                    self.image_event(0, &m, 4, 0, HeaderClass::System, logger)?;
                }
            }
            let mods: Vec<Module> = p.modules(&self.l).into_iter().cloned().collect();
            for m in &mods {
                self.image_event(p.pid, m, 4, 0, HeaderClass::PerfInfo, (0, 0))?;
            }
        }
        Ok(())
    }

    /// Starts a process during the trace: Process Start (logged by the
    /// parent), Thread Start, Image Loads.
    fn launch(
        &mut self,
        parent: u32,
        name: &'static str,
        kind: ProcKind,
        threads: usize,
    ) -> Result<(), SynthError> {
        let pid = self.next_pid;
        self.next_pid += 4 * self.rng.range(1, 30) as u32;
        let p = self.new_process(pid, parent, name, kind, threads);
        self.start_logged(p, Vec::new())
    }

    /// Logs a new process's start as the trace shows it, on one processor:
    /// Process Start (by its parent's first thread), its Thread Starts, the
    /// Image Loads of its modules and of `extra`; then tracks it.
    pub(crate) fn start_logged(
        &mut self,
        p: world::Process,
        extra: Vec<Module>,
    ) -> Result<(), SynthError> {
        let (pid, parent) = (p.pid, p.parent);
        let cpu = self.rng.below(usize::from(self.o.processors)) as u16;
        let ptid = self
            .procs
            .iter()
            .find(|x| x.pid == parent)
            .and_then(|x| x.threads.first())
            .map_or(0, |t| t.tid);
        self.process_event(&p, 1, cpu, Some((parent, ptid)))?;
        let first = p.threads[0].tid;
        for t in p.threads.clone() {
            self.thread_event(&p, &t, 1, cpu, (pid, first))?;
        }
        let mut mods: Vec<Module> = p.modules(&self.l).into_iter().cloned().collect();
        mods.extend(extra);
        for m in &mods {
            self.image_event(pid, m, 10, cpu, HeaderClass::System, (pid, first))?;
        }
        self.procs.push(p);
        Ok(())
    }

    fn start_implants(&mut self) -> Result<(), SynthError> {
        let techs: Vec<Tech> = self.attack.iter().map(|a| a.0).collect();
        if techs.contains(&Tech::Sw2Image) {
            self.launch(4520, "invoice.exe", ProcKind::Implant, 2)?;
        }
        if techs.contains(&Tech::ShellcodeDirect) {
            self.launch(4520, "loader.exe", ProcKind::Implant, 2)?;
        }
        if techs
            .iter()
            .any(|t| matches!(t, Tech::Jumper | Tech::Randomized | Tech::StubGadget))
        {
            self.launch(5960, "svcupdate.exe", ProcKind::Implant, 3)?;
        }
        if techs.contains(&Tech::HeavensGate) {
            self.launch(4520, "setup32.exe", ProcKind::Wow64Implant, 2)?;
        }
        if techs.contains(&Tech::ProcList) {
            self.launch(4520, "procexp64.exe", ProcKind::Gui, 3)?;
        }
        if techs.contains(&Tech::LsassImage) {
            self.launch(4520, "dumper.exe", ProcKind::Implant, 2)?;
        }
        if techs
            .iter()
            .any(|t| matches!(t, Tech::LsassShellcode | Tech::SetContextUnbacked))
            && !techs.contains(&Tech::ShellcodeDirect)
        {
            self.launch(4520, "loader.exe", ProcKind::Implant, 2)?;
        }
        if techs.contains(&Tech::AuditJumper)
            && !techs
                .iter()
                .any(|t| matches!(t, Tech::Jumper | Tech::Randomized | Tech::StubGadget))
        {
            self.launch(5960, "svcupdate.exe", ProcKind::Implant, 3)?;
        }
        self.start_evasion()?;
        self.start_exception()?;
        self.start_chromium()?;
        self.start_proxy()
    }

    /// Background life: short-lived processes come and go, threads start.
    fn churn(&mut self, i: u64) -> Result<(), SynthError> {
        if self.o.process_churn && i % 4000 == 1000 {
            let transient = self
                .procs
                .iter()
                .filter(|p| p.pid >= 9_000 && p.kind == ProcKind::Native)
                .count();
            if transient < 4 {
                let names = [
                    "cmd.exe",
                    "conhost.exe",
                    "WerFault.exe",
                    "backgroundTaskHost.exe",
                ];
                let name = names[self.rng.below(names.len())];
                self.launch(4520, name, ProcKind::Native, 2)?;
            }
        }
        if self.o.process_churn && i % 4000 == 3500 {
            // The oldest transient benign process exits.
            if let Some(ix) = self
                .procs
                .iter()
                .position(|p| p.pid >= 9_000 && p.kind == ProcKind::Native)
            {
                let p = self.procs.remove(ix);
                let cpu = p.threads[0].home_cpu;
                let first = p.threads[0].tid;
                for t in &p.threads {
                    self.thread_event(&p, t, 2, cpu, (p.pid, t.tid))?;
                }
                // Every image is unloaded as the process goes away.
                let mods: Vec<Module> = p.modules(&self.l).into_iter().cloned().collect();
                for m in &mods {
                    self.image_event(p.pid, m, 2, cpu, HeaderClass::System, (p.pid, first))?;
                }
                self.process_event(&p, 2, cpu, Some((p.pid, first)))?;
            }
        }
        if i % 997 == 500 {
            // A new worker thread in a running user process.
            let cands: Vec<usize> = (0..self.procs.len())
                .filter(|&k| {
                    self.procs[k].kind != ProcKind::System && self.procs[k].threads.len() < 10
                })
                .collect();
            if !cands.is_empty() {
                let k = cands[self.rng.below(cands.len())];
                let p = self.procs[k].clone();
                let t = self.new_thread(&p);
                let creator = p.threads[0].tid;
                let cpu = t.home_cpu;
                self.thread_event(&p, &t, 1, cpu, (p.pid, creator))?;
                self.procs[k].threads.push(t);
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------- syscalls

    fn pick_proc(&mut self, kinds: &[ProcKind], name: Option<&str>) -> Option<usize> {
        let n = self
            .procs
            .iter()
            .filter(|p| kinds.contains(&p.kind) && name.is_none_or(|n| p.name == n))
            .count();
        if n == 0 {
            return None;
        }
        let k = self.rng.below(n);
        self.procs
            .iter()
            .enumerate()
            .filter(|(_, p)| kinds.contains(&p.kind) && name.is_none_or(|n| p.name == n))
            .nth(k)
            .map(|(i, _)| i)
    }

    fn pick_service(&mut self, win32k: bool) -> usize {
        if win32k {
            let i = self.rng.weighted(&self.w32k_w);
            self.w32k_services[i]
        } else {
            let i = self.rng.weighted(&self.ntdll_w);
            self.ntdll_services[i]
        }
    }

    fn attack_service(&mut self) -> usize {
        world::service_index(ATTACK_SERVICES[self.rng.below(ATTACK_SERVICES.len())])
    }

    /// Call-chain depth: fixed per call site (so stacks repeat, as real
    /// ones do and as stack caching expects), now and then a deep recursion.
    fn depth(&mut self, salt: u64) -> usize {
        if self.rng.chance(2) {
            self.rng.range(100, 200) as usize
        } else {
            1 + (salt.wrapping_mul(0x2545_F491) >> 7) as usize % 11
        }
    }

    /// Builds the labelled content of one syscall into `kernel`/`user`.
    fn build(
        &mut self,
        tech: Tech,
        kernel: &mut Vec<u64>,
        user: &mut Vec<u64>,
    ) -> Option<(usize, Call)> {
        kernel.clear();
        user.clear();
        let nt = self.l.ntoskrnl().base;
        kernel.push(nt + Layout::PERFINFO_LOG_SYSCALL_ENTRY);
        kernel.push(nt + Layout::KI_SYSTEM_SERVICE_COPY_END);
        let ps8 = self.ps() == 8;
        let mut module = None;
        let (mut access, mut target) = (None, None);
        let (pi, service, verdict, reason, technique) = match tech {
            Tech::Evasion(e) => {
                let r = self.build_evasion(e, user);
                user.truncate(MAX_FRAMES - kernel.len());
                return r;
            }
            Tech::Exception(x) => return self.build_exception(x, user),
            Tech::Chromium(c) => return self.build_chromium(c, user),
            Tech::Proxy(p) => {
                let r = self.build_proxy(p, user);
                user.truncate(MAX_FRAMES - kernel.len());
                return r;
            }
            Tech::Nested => return self.build_nested(kernel, user),
            Tech::Ntdll | Tech::Jit => {
                let pi = if tech == Tech::Jit {
                    self.pick_proc(&[ProcKind::JitHost], None)?
                } else {
                    self.pick_proc(
                        &[
                            ProcKind::Native,
                            ProcKind::Gui,
                            ProcKind::JitHost,
                            ProcKind::Implant,
                        ],
                        None,
                    )?
                };
                let s = self.pick_service(false);
                let salt = s as u64 * 1000 + u64::from(self.procs[pi].pid);
                let from_ntdll = self.rng.chance(150);
                let depth = self.depth(salt);
                let (l, p) = (&self.l, &self.procs[pi]);
                user.push(l.return_site(&SERVICES[s]));
                if from_ntdll {
                    // Called from inside ntdll (thread pool, loader).
                    user.push(l.ntdll.base + 0x3_0000 + (salt * 0x1d3) % 0x6_0000 + 1);
                } else {
                    user.push(site(&l.kernelbase, salt));
                }
                if tech == Tech::Jit {
                    user.push(site(&l.clr, salt));
                    for k in 0..1 + salt % 4 {
                        user.push(p.private.0 + 0x1_0000 + (salt * 97 + k * 0x2d1) % 0x2_0000);
                    }
                    user.push(site(&l.clr, salt + 1));
                }
                tail(l, p, user, depth, salt);
                let t = if tech == Tech::Jit {
                    "benign-jit"
                } else {
                    "benign-ntdll"
                };
                (pi, s, "normal", None, t)
            }
            Tech::Win32u => {
                let pi =
                    self.pick_proc(&[ProcKind::Gui, ProcKind::JitHost, ProcKind::Implant], None)?;
                let s = self.pick_service(true);
                let salt = s as u64 * 1000 + u64::from(self.procs[pi].pid);
                let depth = self.depth(salt);
                let (l, p) = (&self.l, &self.procs[pi]);
                user.push(l.return_site(&SERVICES[s]));
                let m = if SERVICES[s].name.starts_with("NtGdi") {
                    &l.gdi32
                } else {
                    &l.user32
                };
                user.push(site(m, salt));
                tail(l, p, user, depth, salt);
                (pi, s, "normal", None, "benign-win32u")
            }
            Tech::Wow64 | Tech::Wow64Win32u => {
                let pi = self.pick_proc(&[ProcKind::Wow64, ProcKind::Wow64Implant], None)?;
                let w32 = tech == Tech::Wow64Win32u;
                let s = self.pick_service(w32);
                let (l, p) = (&self.l, &self.procs[pi]);
                user.push(l.return_site(&SERVICES[s]));
                wow64_tail(l, p, user, w32, s as u64 * 1000 + u64::from(p.pid));
                (pi, s, "normal", None, "benign-wow64")
            }
            Tech::KernelThread => {
                let pi = self.pick_proc(&[ProcKind::System], None)?;
                let names = [
                    "NtClose",
                    "NtCreateFile",
                    "NtQueryValueKey",
                    "NtOpenKey",
                    "NtWaitForSingleObject",
                    "NtDeviceIoControlFile",
                ];
                let s = world::service_index(names[self.rng.below(names.len())]);
                // The kernel's Zw stub, driver frames, the system thread start.
                kernel.push(nt + 0x3f_c014 + u64::from(SERVICES[s].ssn) * 0x20);
                for _ in 0..self.rng.range(1, 4) {
                    let k = 5 + self.rng.below(self.l.kernel.len() - 5);
                    kernel.push(site(&self.l.kernel[k], self.clock));
                }
                kernel.push(nt + 0x35_5a17);
                kernel.push(nt + 0x40_3e36);
                (pi, s, "kernel_origin", None, "kernel-thread")
            }
            Tech::Sw2Image => {
                let pi = self.pick_proc(&[ProcKind::Implant], Some("invoice.exe"))?;
                let s = self.attack_service();
                let (l, p) = (&self.l, &self.procs[pi]);
                let e = p.exe.as_ref()?;
                // SysWhispers2 stubs compiled into the EXE's .text.
                user.push(e.base + 0x1_2000 + u64::from(SERVICES[s].ssn) * 0x40 + 0x2e);
                user.push(site(e, s as u64));
                user.push(site(e, 77));
                tail(l, p, user, 0, 0);
                module = Some(e.file_name().to_string());
                (pi, s, "direct", Some("image"), "syswhispers2")
            }
            Tech::ShellcodeDirect => {
                let pi = self.pick_proc(&[ProcKind::Implant], Some("loader.exe"))?;
                let s = self.attack_service();
                let (l, p) = (&self.l, &self.procs[pi]);
                user.push(p.private.0 + 0x1000 + u64::from(SERVICES[s].ssn) * 0x18 + 0x12);
                user.push(p.private.0 + 0x2_3a7);
                user.push(p.private.0 + 0x1_0c4);
                tail(l, p, user, 0, 0);
                (pi, s, "direct", Some("unbacked"), "shellcode-direct")
            }
            Tech::Jumper => {
                let pi = self.pick_proc(&[ProcKind::Implant], Some("svcupdate.exe"))?;
                let s = self.attack_service();
                let names = ["syswhispers3-jumper", "hellshall", "recycledgate"];
                self.jumper_variant = (self.jumper_variant + 1) % names.len();
                let (l, p) = (&self.l, &self.procs[pi]);
                user.push(l.return_site(&SERVICES[s]));
                user.push(p.private.0 + 0x8_4d2 + u64::from(SERVICES[s].ssn) * 0x40);
                user.push(p.private.0 + 0x1_2f0);
                tail(l, p, user, 0, 0);
                (
                    pi,
                    s,
                    "indirect",
                    Some("unbacked_caller"),
                    names[self.jumper_variant],
                )
            }
            Tech::Randomized => {
                let pi = self.pick_proc(&[ProcKind::Implant], Some("svcupdate.exe"))?;
                let s = self.attack_service();
                let mut t =
                    world::service_index(BORROWED_STUBS[self.rng.below(BORROWED_STUBS.len())]);
                if t == s {
                    t = world::service_index("NtClose");
                }
                let (l, p) = (&self.l, &self.procs[pi]);
                user.push(l.return_site(&SERVICES[t]));
                user.push(site(p.exe.as_ref()?, 4242 + s as u64));
                tail(l, p, user, 2, 9);
                (
                    pi,
                    s,
                    "indirect",
                    Some("stub_mismatch"),
                    "syswhispers3-randomized",
                )
            }
            Tech::StubGadget => {
                let pi = self.pick_proc(&[ProcKind::Implant], Some("svcupdate.exe"))?;
                let s = self.attack_service();
                let (l, p) = (&self.l, &self.procs[pi]);
                // Lands inside a stub, not after its `syscall`.
                user.push(l.stub(&SERVICES[s]) + 0x08);
                user.push(p.private.0 + 0x3_100);
                tail(l, p, user, 0, 0);
                (pi, s, "indirect", Some("not_return_site"), "stub-gadget")
            }
            Tech::ProcList | Tech::Wow64ProcList => {
                let wow = tech == Tech::Wow64ProcList;
                let pi = if wow {
                    self.pick_proc(&[ProcKind::Wow64], None)?
                } else {
                    self.pick_proc(&[ProcKind::Gui], Some("procexp64.exe"))?
                };
                let thread = self.rng.chance(300);
                let s = world::service_index(if thread {
                    "NtOpenThread"
                } else {
                    "NtOpenProcess"
                });
                // Command lines need PROCESS_VM_READ (Process Explorer asks
                // for it with PROCESS_QUERY_LIMITED_INFORMATION).
                let read = self.rng.chance(500);
                access = Some(match (thread, read) {
                    (true, _) => 0x0800,
                    (false, true) => 0x1010,
                    (false, false) => 0x1000,
                });
                let salt = s as u64 * 1000 + u64::from(self.procs[pi].pid);
                let depth = self.depth(salt);
                let (l, p) = (&self.l, &self.procs[pi]);
                user.push(l.return_site(&SERVICES[s]));
                if wow {
                    wow64_tail(l, p, user, false, salt);
                    (pi, s, "normal", None, "process-listing-wow64")
                } else {
                    user.push(site(&l.kernelbase, salt));
                    user.push(site(p.exe.as_ref()?, salt + 7));
                    tail(l, p, user, depth, salt);
                    (pi, s, "normal", None, "process-listing")
                }
            }
            Tech::LsassImage | Tech::LsassShellcode => {
                let image = tech == Tech::LsassImage;
                let name = if image { "dumper.exe" } else { "loader.exe" };
                let pi = self.pick_proc(&[ProcKind::Implant], Some(name))?;
                let s = world::service_index("NtOpenProcess");
                target = self
                    .procs
                    .iter()
                    .find(|p| p.name == "lsass.exe")
                    .map(|p| p.pid);
                let (l, p) = (&self.l, &self.procs[pi]);
                let ssn = u64::from(SERVICES[s].ssn);
                if image {
                    let e = p.exe.as_ref()?;
                    // PROCESS_VM_READ | PROCESS_QUERY_INFORMATION.
                    access = Some(0x0410);
                    user.push(e.base + 0x1_2000 + ssn * 0x40 + 0x2e);
                    user.push(site(e, s as u64));
                    user.push(site(e, 77));
                    tail(l, p, user, 0, 0);
                    module = Some(e.file_name().to_string());
                    (pi, s, "direct", Some("image"), "syswhispers2-lsass")
                } else {
                    access = Some(0x1F_FFFF);
                    user.push(p.private.0 + 0x1000 + ssn * 0x18 + 0x12);
                    user.push(p.private.0 + 0x2_3a7);
                    user.push(p.private.0 + 0x1_0c4);
                    tail(l, p, user, 0, 0);
                    (pi, s, "direct", Some("unbacked"), "shellcode-lsass")
                }
            }
            Tech::AuditJumper => {
                let pi = self.pick_proc(&[ProcKind::Implant], Some("svcupdate.exe"))?;
                let thread = self.rng.chance(300);
                let s = world::service_index(if thread {
                    "NtOpenThread"
                } else {
                    "NtOpenProcess"
                });
                if thread {
                    // THREAD_SUSPEND_RESUME | THREAD_GET_CONTEXT | THREAD_SET_CONTEXT.
                    access = Some(0x001A);
                } else {
                    access = Some(0x0410);
                    target = self
                        .procs
                        .iter()
                        .find(|p| p.name == "lsass.exe")
                        .map(|p| p.pid);
                }
                let (l, p) = (&self.l, &self.procs[pi]);
                user.push(l.return_site(&SERVICES[s]));
                user.push(p.private.0 + 0x8_4d2 + u64::from(SERVICES[s].ssn) * 0x40);
                user.push(p.private.0 + 0x1_2f0);
                tail(l, p, user, 0, 0);
                (
                    pi,
                    s,
                    "indirect",
                    Some("unbacked_caller"),
                    "syswhispers3-jumper",
                )
            }
            Tech::SetContextUnbacked => {
                let pi = self.pick_proc(&[ProcKind::Implant], Some("loader.exe"))?;
                let s = world::service_index("NtSetContextThread");
                let (l, p) = (&self.l, &self.procs[pi]);
                user.push(p.private.0 + 0x1000 + u64::from(SERVICES[s].ssn) * 0x18 + 0x12);
                user.push(p.private.0 + 0x2_5a1);
                user.push(p.private.0 + 0x1_0c4);
                tail(l, p, user, 0, 0);
                (pi, s, "direct", Some("unbacked"), "shellcode-set-context")
            }
            Tech::HeavensGate => {
                if !ps8 {
                    return None;
                }
                let pi = self.pick_proc(&[ProcKind::Wow64Implant], None)?;
                let s = self.attack_service();
                let in_exe = self.rng.chance(400);
                let (l, p) = (&self.l, &self.procs[pi]);
                let e = p.exe.as_ref()?;
                let w = l.wow64.as_ref()?;
                // 64-bit code reached by a far jump through segment 0x33:
                // shellcode in private memory below 4 GB, or x64 code
                // embedded in the 32-bit EXE; called from the 32-bit EXE.
                if in_exe {
                    user.push(e.base + 0x1_8000 + u64::from(SERVICES[s].ssn % 0x80) * 0x20 + 0x1d);
                } else {
                    user.push(p.private.0 + 0x2000 + u64::from(SERVICES[s].ssn) * 0x30 + 0x1d);
                }
                user.push(site(e, s as u64));
                user.push(w[4].base + 0x1_fa29);
                user.push(w[3].base + 0x6_e7bd);
                user.push(w[3].base + 0x6_e78d);
                let t = if in_exe {
                    "heavens-gate-image"
                } else {
                    "heavens-gate"
                };
                (pi, s, "direct", Some("heavens_gate"), t)
            }
        };
        user.truncate(MAX_FRAMES - kernel.len());
        Some((
            pi,
            Call {
                service,
                verdict,
                reason,
                technique,
                module,
                alt: None,
                flags: &[],
                access,
                target,
            },
        ))
    }

    fn syscall(&mut self) -> Result<(), SynthError> {
        let mut kernel = std::mem::take(&mut self.kframes);
        let mut user = std::mem::take(&mut self.uframes);
        let r = self.syscall_with(&mut kernel, &mut user);
        self.kframes = kernel;
        self.uframes = user;
        r
    }

    fn syscall_with(
        &mut self,
        kernel: &mut Vec<u64>,
        user: &mut Vec<u64>,
    ) -> Result<(), SynthError> {
        let ps = self.ps();
        // Technique: attack share first, else benign background.
        let mut tech = None;
        let roll = self.rng.range(0, 1000) as u32;
        let mut acc = 0;
        for &(t, w) in &self.attack {
            acc += w;
            if roll < acc {
                tech = Some(t);
                break;
            }
        }
        let tech = match tech {
            Some(t) => t,
            None => BENIGN[self.rng.weighted(&self.benign_w)].0,
        };
        let built = match self.build(tech, kernel, user) {
            Some(b) => Some(b),
            None => self.build(Tech::Ntdll, kernel, user),
        };
        let Some((pi, mut call)) = built else {
            return Ok(());
        };
        self.record_code(user);
        // The audit event carries its own stack: StackWalk deliveries
        // (missing, split, early) do not change its verdict.
        let intrinsic = (call.verdict, call.technique);
        let mut delivery = Delivery::Single;
        // A thunk call whose stack is cut to `U` alone would be rule 3's
        // alert (no caller to recognise): its delivery is kept whole.
        if call.verdict == "normal" && call.technique != chromium_sandbox::THUNK_TECHNIQUE {
            let roll = self.rng.range(0, 1000) as u32;
            let mut acc = 0;
            for &(d, w) in &self.delivery {
                acc += w;
                if roll < acc {
                    delivery = d;
                    break;
                }
            }
        }
        match delivery {
            Delivery::Truncated => {
                user.truncate(1);
                call.flags = &[];
                call.verdict = "truncated";
                call.technique = "truncated-stack";
            }
            Delivery::Missing => {
                call.flags = &[];
                call.verdict = "no_stack";
                call.technique = "missing-stack";
            }
            Delivery::UserPartLost => {
                call.flags = &[];
                call.verdict = "no_stack";
                call.technique = nested::USER_PART_LOST;
            }
            Delivery::Split => call.technique = "split-stack",
            Delivery::Before => call.technique = "stack-before-event",
            _ => {}
        }
        let ti = self.rng.below(self.procs[pi].threads.len());
        let pid = self.procs[pi].pid;
        let thread = &self.procs[pi].threads[ti];
        let tid = thread.tid;
        let home = thread.home_cpu;
        let cpus = u64::from(self.o.processors);
        let cpu = if self.rng.chance(800) {
            home
        } else {
            self.rng.range(0, cpus) as u16
        };
        let t = self.tick(40, 600);
        let svc: &Service = &SERVICES[call.service];
        let routine = self.l.routine(svc);

        let audit = self.o.source == Source::Audit;
        if audit {
            if delivery != Delivery::Truncated {
                (call.verdict, call.technique) = intrinsic;
            }
            if audit_api(svc.name).is_none() {
                // Not audited: only the random draws of the syscall source,
                // so that both sources make the same workload.
                self.draws(delivery);
                return Ok(());
            }
            let (pid, tid) = (pid, tid);
            // Split stacks (docs/audit-api.md): the StackWalk split draw,
            // and one alert in three (by time, no random draw), when there
            // is a user part.
            let split = !user.is_empty()
                && (delivery == Delivery::Split || (call.verdict != "normal" && t % 3 == 0));
            self.audit_event(cpu, t, pid, tid, &mut call, kernel, user, split)?;
            let u = user.first().copied();
            if split && delivery == Delivery::Split {
                // The draws of the syscall source's split delivery, used:
                // the user part on the processor and at the time its
                // StackWalk user part would have.
                self.tick(1, 40);
                self.tick(5, 300);
                self.rng.chance(30);
                let cpu2 = if self.rng.chance(500) {
                    cpu
                } else {
                    self.rng.range(0, cpus) as u16
                };
                let ts = self.tick(1, 30);
                self.user_mode_stack(cpu2, ts, pid, tid, t, user)?;
            } else {
                if split {
                    self.user_mode_stack(cpu, t + 1, pid, tid, t, user)?;
                }
                self.draws(delivery);
            }
            if let Some(u) = u {
                if self.site_service.contains_key(&u) {
                    *self.sites.entry(u).or_default().entry(routine).or_default() += 1;
                }
            }
            return self.truth_entry(t, cpu, pid, tid, &call, routine);
        }
        if delivery == Delivery::Lost {
            self.w.note_events_lost_on(cpu, 3);
            self.tick(20, 200);
            return Ok(());
        }
        // What the engine learns from: not a lost user part, nor the outer
        // call's stub under a nested kernel-mode call.
        if delivery != Delivery::Missing
            && delivery != Delivery::UserPartLost
            && call.technique != nested::TECHNIQUE
        {
            if let Some(&u) = user.first() {
                if self.site_service.contains_key(&u) {
                    *self.sites.entry(u).or_default().entry(routine).or_default() += 1;
                }
            }
        }
        if delivery == Delivery::Before {
            self.stacks(cpu, t, pid, tid, kernel, user, false)?;
        }
        self.buf.clear();
        payload::sys_call_enter(ps, routine, &mut self.buf);
        self.emit(cpu, HeaderClass::PerfInfo, 0x0F, 51, 2, 0, 0, t)?;
        match delivery {
            Delivery::Single | Delivery::Truncated => {
                self.tick(1, 40);
                self.stacks(cpu, t, pid, tid, kernel, user, false)?;
            }
            Delivery::Split | Delivery::UserPartLost => {
                self.tick(1, 40);
                self.stacks(cpu, t, pid, tid, kernel, user, true)?;
            }
            _ => {}
        }
        let te = self.tick(5, 300);
        self.buf.clear();
        let status = if self.rng.chance(30) { 0xC000_0034 } else { 0 };
        payload::sys_call_exit(status, &mut self.buf);
        self.emit(cpu, HeaderClass::PerfInfo, 0x0F, 52, 2, 0, 0, te)?;
        if delivery == Delivery::Split {
            // The user part is walked when the thread returns to user mode,
            // often on another processor.
            let cpu2 = if self.rng.chance(500) {
                cpu
            } else {
                self.rng.range(0, cpus) as u16
            };
            let ts = self.tick(1, 30);
            self.stack_part(cpu2, ts, t, pid, tid, user, false)?;
        }
        self.truth_entry(t, cpu, pid, tid, &call, routine)
    }

    /// The random draws [`Gen::syscall_with`] makes after the syscall's
    /// time for `delivery`, without writing: keeps the Audit-API source's
    /// workload that of the syscall source.
    fn draws(&mut self, delivery: Delivery) {
        match delivery {
            Delivery::Lost => {
                self.tick(20, 200);
                return;
            }
            Delivery::Single | Delivery::Truncated | Delivery::Split | Delivery::UserPartLost => {
                self.tick(1, 40);
            }
            _ => {}
        }
        self.tick(5, 300);
        self.rng.chance(30);
        if delivery == Delivery::Split {
            if !self.rng.chance(500) {
                self.rng.range(0, u64::from(self.o.processors));
            }
            self.tick(1, 30);
        }
    }

    /// Writes the Microsoft-Windows-Kernel-Audit-API-Calls event of an
    /// audited syscall at time `t`, with its stack item (the kernel frames
    /// from the stack capture down to `KiSystemServiceCopyEnd`, then the
    /// user frames), and fills in the call's target and access.
    /// With `split`, the item holds the kernel frames only, with `MatchId`
    /// `t`, and [`Gen::user_mode_stack`] writes the user part.
    #[allow(clippy::too_many_arguments)]
    fn audit_event(
        &mut self,
        cpu: u16,
        t: u64,
        pid: u32,
        tid: u32,
        call: &mut Call,
        kernel: &[u64],
        user: &[u64],
        split: bool,
    ) -> Result<(), SynthError> {
        use sentry_kernel_audit_api::{AccessMask, AuditApi, AuditEvent};
        let svc = SERVICES[call.service];
        let Some(api) = audit_api(svc.name) else {
            return Ok(());
        };
        let nt = self.l.ntoskrnl().base;
        let mut frames = vec![nt + Layout::ETW_STACK_CAPTURE, nt + Layout::ETW_WRITE];
        match api {
            AuditApi::OpenProcess => frames.push(nt + Layout::PS_OPEN_PROCESS),
            AuditApi::OpenThread => frames.push(nt + Layout::PS_OPEN_THREAD),
            _ => {}
        }
        frames.push(self.l.routine(&svc) + 0x1f3);
        frames.push(nt + Layout::KI_SYSTEM_SERVICE_COPY_END);
        // A kernel-thread caller's own kernel frames (none are audited today).
        frames.extend(kernel.iter().skip(2));
        if !split {
            frames.extend_from_slice(user);
        }
        // The target: the technique's, else one of the running processes
        // picked from the time (no random draw).
        let n = self.procs.len().max(1);
        let tp = match call.target {
            Some(p) => self.procs.iter().find(|x| x.pid == p),
            None => self.procs.get((t / 7) as usize % n),
        };
        let (target_pid, target_tid, target_name) = match tp {
            Some(p) => (
                p.pid,
                p.threads
                    .get((t / 11) as usize % p.threads.len().max(1))
                    .map(|x| x.tid),
                p.name,
            ),
            None => (4, None, "System"),
        };
        let mut e = AuditEvent::new(api, 0);
        match api {
            AuditApi::OpenProcess | AuditApi::OpenThread => {
                let access = call.access.unwrap_or(0x1000);
                e.target_pid = Some(target_pid);
                if api == AuditApi::OpenThread {
                    e.target_tid = Some(target_tid.unwrap_or(0));
                }
                e.desired_access = Some(AccessMask(access));
                // The System process refuses reading its memory.
                if target_pid == 4 && access & 0x10 != 0 {
                    e.return_code.0 = 0xC000_0022;
                }
                call.access = Some(access);
                call.target = Some(target_pid);
            }
            AuditApi::TerminateProcess => {
                e.target_pid = Some(target_pid);
                call.target = Some(target_pid);
            }
            _ => {}
        }
        self.audit_truth = Some(AuditTruth {
            api: api.name(),
            target: e.target_pid.map(|p| (p, e.target_tid, target_name)),
            access: e.desired_access.map(|a| a.0),
            return_code: e.return_code.0,
            split,
        });
        self.buf.clear();
        e.encode(self.ps(), &mut self.buf);
        let mut item = std::mem::take(&mut self.item);
        let width = self.ps();
        let match_id = if split { t } else { 0 };
        let ext_type = sentry_etl_writer::stack_trace_item(width, match_id, &frames, &mut item);
        let ext: [(u16, &[u8]); 1] = [(ext_type, &item)];
        let rec = sentry_etl_writer::EventRecord {
            pointer_size: self.ps(),
            provider: sentry_kernel_audit_api::PROVIDER,
            id: api.id(),
            version: 0,
            channel: 0,
            level: sentry_kernel_audit_api::LEVEL,
            opcode: 0,
            task: 0,
            keyword: 0,
            pid,
            tid,
            timestamp: t,
            kernel_time: 0,
            user_time: 0,
            extended: &ext,
            payload: &self.buf,
        };
        let r = self.w.write_event(cpu, &rec);
        self.item = item;
        r.map_err(SynthError::from)
    }

    /// Writes the user part of a split audit stack: a
    /// Microsoft-Windows-Kernel-EventTracing `StackTraceUserModeStackTrace`
    /// (id 18, opcode 24, no payload) of the thread at `ts`, whose stack
    /// item holds the user frames with the kernel part's `MatchId` (the
    /// audit event's time `t`). The task number is not known (the manifest
    /// dump names it `StackTrace` only): 0.
    #[allow(clippy::too_many_arguments)]
    fn user_mode_stack(
        &mut self,
        cpu: u16,
        ts: u64,
        pid: u32,
        tid: u32,
        t: u64,
        user: &[u64],
    ) -> Result<(), SynthError> {
        let mut item = std::mem::take(&mut self.item);
        let ext_type = sentry_etl_writer::stack_trace_item(self.ps(), t, user, &mut item);
        let ext: [(u16, &[u8]); 1] = [(ext_type, &item)];
        let rec = sentry_etl_writer::EventRecord {
            pointer_size: self.ps(),
            provider: sentry_kernel_audit_api::EVENT_TRACING_PROVIDER,
            id: sentry_kernel_audit_api::USER_MODE_STACK_TRACE,
            version: 0,
            channel: 0,
            level: 4,
            opcode: sentry_kernel_audit_api::USER_MODE_STACK_TRACE_OPCODE,
            task: 0,
            keyword: 0,
            pid,
            tid,
            timestamp: ts,
            kernel_time: 0,
            user_time: 0,
            extended: &ext,
            payload: &[],
        };
        let r = self.w.write_event(cpu, &rec);
        self.item = item;
        r.map_err(SynthError::from)
    }

    /// Writes the stack of a syscall at `call` time `t` (the header time is
    /// the current clock): one StackWalk with both parts, or (split) the
    /// kernel part only; with stack caching, key references instead.
    #[allow(clippy::too_many_arguments)]
    fn stacks(
        &mut self,
        cpu: u16,
        t: u64,
        pid: u32,
        tid: u32,
        kernel: &[u64],
        user: &[u64],
        split: bool,
    ) -> Result<(), SynthError> {
        let header_ts = self.clock;
        if self.cache.is_some() {
            self.stack_part(cpu, header_ts, t, pid, tid, kernel, true)?;
            if !split && !user.is_empty() {
                self.stack_part(cpu, header_ts, t, pid, tid, user, false)?;
            }
            return Ok(());
        }
        self.buf.clear();
        let ps = self.ps();
        let frames: &[u64] = if split { kernel } else { &[] };
        if split {
            payload::stack_walk(ps, t, pid, tid, frames, &mut self.buf);
        } else {
            payload::stack_walk(ps, t, pid, tid, kernel, &mut self.buf);
            for &f in user {
                payload::put_ptr(&mut self.buf, ps, f);
            }
        }
        self.emit(cpu, HeaderClass::PerfInfo, 0x18, 32, 2, 0, 0, header_ts)
    }

    /// One part of a stack: a StackWalk (32) or, with stack caching, a
    /// kernel (37) / user (38) key reference, defining keys as needed.
    #[allow(clippy::too_many_arguments)]
    fn stack_part(
        &mut self,
        cpu: u16,
        header_ts: u64,
        t: u64,
        pid: u32,
        tid: u32,
        frames: &[u64],
        kernel: bool,
    ) -> Result<(), SynthError> {
        let ps = self.ps();
        if self.cache.is_none() {
            self.buf.clear();
            payload::stack_walk(ps, t, pid, tid, frames, &mut self.buf);
            return self.emit(cpu, HeaderClass::PerfInfo, 0x18, 32, 2, 0, 0, header_ts);
        }
        let (key, evicted) = {
            let c = self.cache.as_mut().expect("checked");
            match c.map.get(frames) {
                Some(&k) => (k, None),
                None => {
                    let k = c.next_key;
                    c.next_key += if ps == 8 { 0x90 } else { 0x40 };
                    if ps == 4 && c.next_key >= 0x8fff_0000 {
                        c.next_key = 0x8640_0000;
                    }
                    c.map.insert(frames.to_vec(), k);
                    c.order.push_back((k, frames.to_vec()));
                    let ev = if c.order.len() > c.capacity {
                        c.order.pop_front().inspect(|(_, f)| {
                            c.map.remove(f);
                        })
                    } else {
                        None
                    };
                    (k, ev)
                }
            }
        };
        // A key leaving the cache is defined by a delete event (35), as
        // Windows 8+ writes it; references to it precede the definition.
        if let Some((k, f)) = evicted {
            self.buf.clear();
            payload::stack_key_definition(ps, k, &f, &mut self.buf);
            self.emit(cpu, HeaderClass::PerfInfo, 0x18, 35, 2, 0, 0, header_ts)?;
        }
        self.buf.clear();
        payload::stack_key_reference(ps, t, pid, tid, key, &mut self.buf);
        self.emit(
            cpu,
            HeaderClass::PerfInfo,
            0x18,
            if kernel { 37 } else { 38 },
            2,
            0,
            0,
            header_ts,
        )
    }

    // ---------------------------------------------------------------- truth

    fn truth_start(&mut self) -> Result<(), SynthError> {
        let o = &self.o;
        if let Some(t) = self.truth.as_mut() {
            write!(
                t,
                "{{\n\"scenario\": \"{}\", \"seed\": {}, \"pointer_size\": {}, \"processors\": {}, \"compressed\": {}, \"stack_cache\": {}, \"source\": \"{}\",\n\"syscalls\": [",
                o.scenario.name(),
                o.seed,
                o.pointer_size,
                o.processors,
                o.compress,
                o.stack_cache,
                o.source.name()
            )?;
        }
        Ok(())
    }

    fn truth_entry(
        &mut self,
        ts: u64,
        cpu: u16,
        pid: u32,
        tid: u32,
        call: &Call,
        routine: u64,
    ) -> Result<(), SynthError> {
        *self.counts.entry(call.verdict).or_default() += 1;
        *self.techniques.entry(call.technique).or_default() += 1;
        let first = self.truth_n == 0;
        self.truth_n += 1;
        let Some(t) = self.truth.as_mut() else {
            return Ok(());
        };
        let sep = if first { "\n" } else { ",\n" };
        let width = if self.o.pointer_size == 8 { 16 } else { 8 };
        let (p, th) = if call.verdict == "no_stack" && call.technique != nested::USER_PART_LOST {
            ("null".to_string(), "null".to_string())
        } else {
            (pid.to_string(), tid.to_string())
        };
        let reason = call
            .reason
            .map_or("null".to_string(), |r| format!("\"{r}\""));
        write!(
            t,
            "{sep}{{\"timestamp\": {ts}, \"processor\": {cpu}, \"pid\": {p}, \"tid\": {th}, \"service\": \"{}\", \"service_address\": \"{:#0w$x}\", \"verdict\": \"{}\", \"reason\": {reason}, \"technique\": \"{}\"",
            SERVICES[call.service].name,
            routine,
            call.verdict,
            call.technique,
            w = width + 2
        )?;
        if let Some(m) = &call.module {
            write!(t, ", \"module\": \"{m}\"")?;
        }
        if !call.flags.is_empty() {
            write!(t, ", \"flags\": [\"{}\"]", call.flags.join("\", \""))?;
        }
        if call.technique == chromium_sandbox::THUNK_TECHNIQUE {
            write!(
                t,
                ", \"suppressed\": \"{}\"",
                chromium_sandbox::SUPPRESSED_BY
            )?;
        }
        if let Some((v, r)) = call.alt {
            let r = r.map_or("null".to_string(), |r| format!("\"{r}\""));
            write!(
                t,
                ", \"without_images\": {{\"verdict\": \"{v}\", \"reason\": {r}}}"
            )?;
        }
        if let Some(a) = self.audit_truth.take() {
            let (tp, tt, tn) = match a.target {
                Some((p, th, n)) => (
                    p.to_string(),
                    th.map_or("null".into(), |x| x.to_string()),
                    format!("\"{n}\""),
                ),
                None => ("null".into(), "null".into(), "null".into()),
            };
            let access = a.access.map_or("null".into(), |x| format!("\"{x:#x}\""));
            write!(
                t,
                ", \"source\": \"audit\", \"api\": \"{}\", \"target_pid\": {tp}, \"target_tid\": {tt}, \"target\": {tn}, \"access\": {access}, \"return_code\": \"{:#010x}\"",
                a.api, a.return_code
            )?;
            if a.split {
                t.write_all(b", \"stack_split\": true")?;
            }
        }
        t.write_all(b"}")?;
        Ok(())
    }

    fn finish(mut self) -> Result<(W, Summary), SynthError> {
        // Stack-cache rundown (36): keys still cached at the end.
        if let Some(c) = self.cache.take() {
            let ps = self.ps();
            for (k, f) in c.order {
                let ts = self.tick(1, 5);
                self.buf.clear();
                payload::stack_key_definition(ps, k, &f, &mut self.buf);
                self.emit(0, HeaderClass::PerfInfo, 0x18, 36, 2, 0, 0, ts)?;
            }
        }
        let mut unlearnable: Vec<u64> = Vec::new();
        for (site, seen) in &self.sites {
            let best = seen
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                .map(|(r, _)| *r);
            if best != self.site_service.get(site).copied() {
                unlearnable.push(*site);
            }
        }
        unlearnable.sort_unstable();
        let events_lost = self.w.stats().events_lost;
        if let Some(mut t) = self.truth.take() {
            write!(t, "\n],\n\"counts\": {{")?;
            for (i, v) in [
                "normal",
                "direct",
                "indirect",
                "kernel_origin",
                "no_stack",
                "truncated",
            ]
            .iter()
            .enumerate()
            {
                let n = self.counts.get(v).copied().unwrap_or(0);
                write!(t, "{}\"{v}\": {n}", if i == 0 { "" } else { ", " })?;
            }
            write!(t, "}},\n\"techniques\": {{")?;
            for (i, (k, n)) in self.techniques.iter().enumerate() {
                write!(t, "{}\"{k}\": {n}", if i == 0 { "" } else { ", " })?;
            }
            writeln!(t, "}},\n\"events_lost\": {events_lost}\n}}")?;
            t.flush()?;
        }
        let (out, stats) = self.w.finish()?;
        Ok((
            out,
            Summary {
                counts: self.counts,
                techniques: self.techniques,
                truth_syscalls: self.truth_n,
                events_lost,
                stats,
                unlearnable_sites: unlearnable,
                layout: self.l,
                code: self.code,
            },
        ))
    }
}

/// An address inside `m` that is not a stub return site (for callers).
fn site(m: &Module, salt: u64) -> u64 {
    // On a 16-byte grid at 0xB (never a 0x14 return-site offset; 16 bytes
    // apart, so each gets its own `call` in the `--images` files).
    let span = m.size.saturating_sub(0x2000).max(0x100) / 16;
    let off = 0x1000 + (salt.wrapping_mul(0x9E37_79B9) ^ (salt >> 7)) % span * 16 + 0xB;
    m.base + off
}

/// Middle frames of an ordinary call chain, then the thread start frames.
fn tail(l: &Layout, p: &Process, v: &mut Vec<u64>, depth: usize, salt: u64) {
    let mut mods: [Option<&Module>; 16] = [None; 16];
    let mut n = 0;
    for m in p.modules(l) {
        if !matches!(m.kind, ModKind::Win32u | ModKind::Ntdll) && n < mods.len() {
            mods[n] = Some(m);
            n += 1;
        }
    }
    for k in 0..depth {
        if v.len() + 3 >= MAX_FRAMES || n == 0 {
            break;
        }
        if let Some(m) = mods[(salt as usize + k * 7) % n] {
            v.push(site(m, salt.wrapping_add(k as u64 * 131)));
        }
    }
    v.push(l.kernel32.base + Layout::BASE_THREAD_INIT_THUNK);
    v.push(l.ntdll.base + Layout::RTL_USER_THREAD_START);
}

/// A WoW64 syscall below the 64-bit stub: wow64/wow64win, wow64cpu, then
/// the 32-bit side (ntdll32 stub, kernelbase32, the EXE, thread start).
fn wow64_tail(l: &Layout, p: &Process, v: &mut Vec<u64>, from_win32k: bool, salt: u64) {
    let Some([wow64, wow64win, wow64cpu, ntdll32, k32, kb32]) = &l.wow64 else {
        return;
    };
    v.push(site(if from_win32k { wow64win } else { wow64 }, salt));
    v.push(wow64.base + 0x7783);
    v.push(wow64cpu.base + 0x1783);
    v.push(wow64cpu.base + 0x1199);
    if !from_win32k {
        v.push(ntdll32.base + 0x7_2e4c);
        v.push(site(kb32, salt));
    }
    if let Some(e) = &p.exe {
        v.push(site(e, salt ^ 0x55));
    }
    v.push(k32.base + 0x1_fa29);
    v.push(ntdll32.base + 0x6_e7bd);
    v.push(ntdll32.base + 0x6_e78d);
}

fn exe_path(name: &str) -> String {
    let dir = match name {
        "smss.exe"
        | "csrss.exe"
        | "wininit.exe"
        | "winlogon.exe"
        | "services.exe"
        | "lsass.exe"
        | "svchost.exe"
        | "spoolsv.exe"
        | "SearchIndexer.exe"
        | "notepad.exe"
        | "cmd.exe"
        | "conhost.exe"
        | "WerFault.exe"
        | "backgroundTaskHost.exe" => "Windows\\System32",
        "explorer.exe" => "Windows",
        "MsMpEng.exe" => "ProgramData\\Microsoft\\Windows Defender\\Platform\\4.18.2311.9-0",
        "pwsh.exe" => "Program Files\\PowerShell\\7",
        _ => "Users\\alice\\Downloads",
    };
    format!("\\Device\\HarddiskVolume3\\{dir}\\{name}")
}

fn command_line(name: &str) -> String {
    match name {
        "svchost.exe" => "C:\\Windows\\system32\\svchost.exe -k netsvcs -p".into(),
        "csrss.exe" => "%SystemRoot%\\system32\\csrss.exe ObjectDirectory=\\Windows SharedSection=1024,20480,768 Windows=On SubSystemType=Windows ServerDll=basesrv,1".into(),
        "smss.exe" => "\\SystemRoot\\System32\\smss.exe".into(),
        _ => format!("\"C:\\{}\"", exe_path(name).trim_start_matches("\\Device\\HarddiskVolume3\\")),
    }
}
