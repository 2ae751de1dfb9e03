//! Output: alerts as JSON lines (own layout or ECS), one line per syscall
//! (`--per-syscall`), the per-process summary table and statistics.
//!
//! Alerts are deduplicated by (process, call site, verdict, reason) with a
//! count and first/last time; evidence strings are built only when a key is
//! first seen, so the hot path formats nothing. ECS field reference:
//! [Elastic Common Schema](https://www.elastic.co/guide/en/ecs/current/ecs-field-reference.html).

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::sync::Arc;

use sentry_raw::{filetime_to_rfc3339, Clock, LogfileHeader};
use serde::Serialize;
use serde_json::{json, Value};

use crate::classify::{Reason, Verdict};
use crate::fxhash::FxBuildHasher;
use crate::source::audit::{is_protected_process, AuditFacts};
use crate::state::ProcessInfo;
use crate::sysdlls::SystemDlls;
use crate::{
    resolve::{describe_in, push_hex},
    Engine, EngineStats, Resolver, ServiceCheck, ServiceTable, SyscallVerdict, VerdictSink,
};
use sentry_images::Images;

mod callstack;
mod sites;
pub use callstack::{CallStackFacts, FinalUserModule, PeIdentity, ReturnEvidence};
use sites::{SiteTable, NAMED};

/// Alert line layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Json,
    Ecs,
}

/// Which syscalls are reported.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub pid: Option<u32>,
    /// Glob on the process image name.
    pub process: Option<String>,
    /// Raw timestamp bounds (inclusive).
    pub since: Option<u64>,
    pub until: Option<u64>,
}

impl Filter {
    fn accepts(&self, v: &SyscallVerdict<'_>) -> bool {
        if self.since.is_some_and(|s| v.timestamp < s)
            || self.until.is_some_and(|u| v.timestamp > u)
        {
            return false;
        }
        if let Some(p) = self.pid {
            if v.pid != Some(p) {
                return false;
            }
        }
        if let Some(g) = &self.process {
            let name = v.process.map_or("", |p| p.image_file_name.as_str());
            if v.pid.is_none() || !crate::allowlist::glob(g, name) {
                return false;
            }
        }
        true
    }
}

/// Report settings.
#[derive(Debug, Clone, Default)]
pub struct ReportConfig {
    pub format: Format,
    /// One JSON line per syscall instead of deduplicated alerts.
    pub per_syscall: bool,
    pub filter: Filter,
    /// Print an alert as soon as its key is first seen (live), besides the
    /// aggregated lines at the end.
    pub immediate: bool,
    /// Frames of the stack kept as evidence in an alert.
    pub max_stack_frames: usize,
    /// The input's name, written in every line (`file`; ECS
    /// `log.file.path`) so that lines of several files stay apart.
    pub file: Option<String>,
    /// ECS `host.name` (`--host`; the machine's name in `live`).
    pub host: Option<String>,
    /// Rows of the summary table (0: all).
    pub summary_rows: usize,
    /// Bytes of evidence kept for open rule-5 groups (0: 64 MiB). Past it
    /// the oldest is dropped; should a dropped group settle as an alert,
    /// `analyze` finds its evidence again in a second pass
    /// ([`Report::evidence_request`]): memory stays bounded, alerts exact.
    pub evidence_budget: usize,
}

/// Default [`ReportConfig::evidence_budget`].
pub const DEFAULT_EVIDENCE_BUDGET: usize = 64 << 20;

/// Dedup key of an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct AlertKey {
    pid: Option<u32>,
    call_site: u64,
    verdict: Verdict,
    reason: Option<Reason>,
}

/// Syscalls whose rule-5 decision is open ([`crate::Learning::Deferred`]),
/// grouped by everything that decides how they are reported once it is
/// settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PendingKey {
    pid: Option<u32>,
    /// Summary row (index into `Report::rows`).
    row: u32,
    call_site: u64,
    check: ServiceCheck,
    service_address: u64,
    verdict: Verdict,
    reason: Option<Reason>,
    suppressed: Option<(Verdict, Option<Reason>, usize)>,
}

/// A group of [`PendingKey`]: counts, times and the evidence of its first
/// syscall, built when the group is first seen (the process and its
/// modules may be gone by the end).
#[derive(Debug)]
struct PendingGroup {
    key: PendingKey,
    count: u64,
    first: u64,
    last: u64,
    /// Index into `Report::evidence` (creation order).
    evidence: u32,
}

/// An address resolved when it was seen (modules come and go): its module
/// as an interned name, or none (unbacked). Formatted only if its group
/// turns out to be an alert.
#[derive(Debug, Clone, Copy)]
struct FrameRef {
    addr: u64,
    /// `addr` minus the module's base.
    offset: u64,
    /// Index into `Report::names`; `u32::MAX`: no module.
    module: u32,
    /// Index into the supplied system DLLs; `u32::MAX`: none.
    system_dll: u32,
}

/// An open group's evidence, unformatted: most groups settle as normal
/// and are never printed, and formatting every first stack was most of
/// the cost of deferring. Boxed and compact: one per call site and process.
#[derive(Debug)]
struct Evidence {
    /// Index into `Report::processes`.
    process: u32,
    tid: Option<u32>,
    /// Emission order of its syscall.
    seq: u64,
    service_name: Option<Arc<str>>,
    stub_name: Option<Arc<str>>,
    call_site: Option<FrameRef>,
    caller: Option<FrameRef>,
    /// The routine, when no export name was known and a kernel module holds it.
    service: Option<FrameRef>,
    stack: Box<[FrameRef]>,
    /// What the Elastic-compatible call-stack facts need beyond `stack`
    /// (made into [`CallStackFacts`] when the alert is written).
    call_stack: Option<Box<callstack::Pending>>,
    /// An audit event's facts and its target's image name (from the state
    /// when the call was seen).
    audit: Option<Box<(AuditFacts, Option<String>)>>,
}

impl Evidence {
    /// Bytes it holds, for the budget.
    fn bytes(&self) -> usize {
        std::mem::size_of::<Evidence>()
            + std::mem::size_of_val(&*self.stack)
            + self
                .call_stack
                .as_ref()
                .map_or(0, |_| std::mem::size_of::<callstack::Pending>() + 64)
    }
}

/// The process facts of an alert, shared by the evidence of its groups.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProcessFacts {
    name: String,
    command_line: String,
    user_sid: String,
    parent_pid: Option<u32>,
    wow64: bool,
}

impl ProcessFacts {
    fn of(p: Option<&ProcessInfo>) -> ProcessFacts {
        ProcessFacts {
            name: p.map(|p| p.image_file_name.clone()).unwrap_or_default(),
            command_line: p.map(|p| p.command_line.clone()).unwrap_or_default(),
            user_sid: p.map(|p| p.user_sid.clone()).unwrap_or_default(),
            parent_pid: p.map(|p| p.parent_id),
            wow64: p.is_some_and(|p| p.wow64),
        }
    }

    fn same_as(&self, p: Option<&ProcessInfo>) -> bool {
        match p {
            None => self.name.is_empty() && self.parent_pid.is_none(),
            Some(p) => {
                self.parent_pid == Some(p.parent_id)
                    && self.wow64 == p.wow64
                    && self.name == p.image_file_name
                    && self.command_line == p.command_line
                    && self.user_sid == p.user_sid
            }
        }
    }
}

/// What is decided about an alert's syscalls, as opposed to its evidence
/// (what the first of them looked like).
#[derive(Debug)]
struct Decided {
    verdict: Verdict,
    reason: Option<Reason>,
    stub_service_address: Option<String>,
    count: u64,
    first: u64,
    last: u64,
}

impl Decided {
    fn apply(self, mut a: Alert) -> Alert {
        a.verdict = self.verdict.as_str();
        a.reason = self.reason.map(Reason::as_str);
        a.technique = technique(self.verdict, self.reason);
        let truncated = a.call_stack.as_ref().is_some_and(|c| c.truncated);
        a.behaviors = callstack::behaviors(self.verdict, self.reason, truncated);
        a.stub_service_address = self.stub_service_address;
        a.count = self.count;
        a.first_timestamp = self.first;
        a.last_timestamp = self.last;
        a
    }
}

/// A settled alert whose evidence was dropped (see
/// [`ReportConfig::evidence_budget`]).
#[derive(Debug)]
struct Missing {
    key: PendingKey,
    alert_key: AlertKey,
    decided: Decided,
}

/// Which groups' evidence a recovery pass must find
/// ([`Report::evidence_request`]).
#[derive(Debug, Clone, Default)]
pub struct EvidenceRequest(HashSet<PendingKey>);

impl EvidenceRequest {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Evidence found by a recovery pass, rendered ([`Report::take_recovered`]).
#[derive(Debug, Default)]
pub struct RecoveredEvidence(HashMap<PendingKey, Alert>);

/// An aggregated alert.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    pub pid: Option<u32>,
    pub process: String,
    pub command_line: String,
    pub user_sid: String,
    pub parent_pid: Option<u32>,
    pub wow64: bool,
    /// First thread seen.
    pub tid: Option<u32>,
    /// U as module+0xoffset (or a hex address when unbacked).
    pub call_site: String,
    pub module: Option<String>,
    pub caller: Option<String>,
    pub caller_module: Option<String>,
    pub service_address: String,
    pub service: Option<String>,
    pub stub: Option<String>,
    pub stub_service_address: Option<String>,
    pub count: u64,
    pub first_timestamp: u64,
    pub last_timestamp: u64,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    pub stack: Vec<String>,
    pub technique: &'static str,
    /// Elastic's `process.Ext.api.behaviors` values the verdict implies.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub behaviors: Vec<&'static str>,
    /// Elastic-compatible call-stack facts (summary, final user module, ...).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub call_stack: Option<CallStackFacts>,
    /// Events may be missing somewhere in the input (not where this
    /// alert's state came from: that would have made it `unresolved`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub trace_incomplete: bool,
    /// The input file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Kernel-Audit-API-Calls alerts (of the group's first event): the API,
    /// the target process, `DesiredAccess` named and in hex, the
    /// `ReturnCode`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_tid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_mask: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub return_code: Option<String>,
    /// Audit alerts: the ECS severity, raised when the target is a
    /// protected system process (`docs/verdicts.md`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<u32>,
    /// Emission order of the syscall the evidence comes from.
    #[serde(skip)]
    seq: u64,
}

impl Alert {
    /// Sets the audit fields from the evidence. The severity depends on the
    /// verdict, which settling may still change: this leaves 1 when it is
    /// to be raised (0 when not), and `alert_value` computes it.
    fn with_audit(mut self, audit: Option<&(AuditFacts, Option<String>)>) -> Alert {
        if let Some((a, target)) = audit {
            self.service = Some(a.api.name().to_string());
            self.api = Some(a.api.name());
            self.target_pid = a.target_pid;
            self.target_tid = a.target_tid;
            self.target = target.clone();
            self.access = a.access_names();
            self.access_mask = a.access.map(|m| format!("{:#x}", m.0));
            self.return_code = Some(a.return_code.to_string());
            let protected = target.as_deref().is_some_and(is_protected_process);
            self.severity = Some(u32::from(a.is_sensitive() && protected));
        }
        self
    }
}

/// The severity of an alert (ECS `event.severity`): 73 `direct`, 47
/// `indirect`; raised to 99 and 90 when an Audit-API call asks a protected
/// system process ([`crate::PROTECTED_PROCESSES`]) for rights that read or
/// take it over ([`AuditFacts::is_sensitive`]).
pub fn severity(verdict: Verdict, a: &AuditFacts, target: Option<&str>) -> u32 {
    let raised = a.is_sensitive() && target.is_some_and(is_protected_process);
    base_severity(verdict.as_str(), raised)
}

fn base_severity(verdict: &str, raised: bool) -> u32 {
    match (verdict == "direct", raised) {
        (true, false) => 73,
        (false, false) => 47,
        (true, true) => 99,
        (false, true) => 90,
    }
}

fn technique(verdict: Verdict, reason: Option<Reason>) -> &'static str {
    match (verdict, reason) {
        (Verdict::Direct, Some(Reason::HeavensGate)) => "heavens-gate",
        (Verdict::Direct, _) => "direct-syscall",
        (Verdict::Indirect, Some(Reason::ProxyCall)) => "proxy-call",
        (Verdict::Indirect, _) => "indirect-syscall",
        _ => "",
    }
}

#[derive(Debug, Default)]
struct ProcSummary {
    pid: Option<u32>,
    name: String,
    /// Syscalls counted in no call site of the row (without a user frame,
    /// or past the site caps); the others are in their sites' totals.
    siteless: u64,
    counts: [u64; Verdict::ALL.len()],
    suppressed: u64,
    /// Call sites of this row in `Report::sites`.
    site_count: usize,
    other_sites: u64,
}

/// A [`PendingKey`] without what its site already says (pid, row, call
/// site), packed; `None` from [`Disc::of`] when a field does not fit (then
/// the group is not kept in its site).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Disc {
    service_address: u64,
    offset: u32,
    /// Allowlist entry + 1 (0: none) of the `stub_mismatch` alternative.
    mismatch_suppressed: u16,
    /// Allowlist entry + 1 (0: none) that suppressed the verdict.
    suppressed: u16,
    kind: u8,
    verdict: u8,
    reason: u8,
    suppressed_verdict: u8,
    suppressed_reason: u8,
}

impl Disc {
    const NONE: Disc = Disc {
        service_address: 0,
        offset: 0,
        mismatch_suppressed: 0,
        suppressed: 0,
        kind: 0,
        verdict: 0,
        reason: 0,
        suppressed_verdict: 0,
        suppressed_reason: 0,
    };

    fn of(k: &PendingKey) -> Option<Disc> {
        Disc::of_parts(
            k.check,
            k.service_address,
            k.verdict,
            k.reason,
            k.suppressed,
        )
    }

    /// The disc of a syscall's group, from its parts (the per-syscall fast
    /// path builds no [`PendingKey`]).
    #[inline]
    fn of_parts(
        check: ServiceCheck,
        service_address: u64,
        verdict: Verdict,
        reason: Option<Reason>,
        suppressed: Option<(Verdict, Option<Reason>, usize)>,
    ) -> Option<Disc> {
        let entry = |i: Option<usize>| -> Option<u16> {
            match i {
                None => Some(0),
                Some(i) => u16::try_from(i).ok()?.checked_add(1),
            }
        };
        let code = |r: Option<Reason>| r.map_or(u8::MAX, |r| r as u8);
        Some(Disc {
            service_address,
            offset: u32::try_from(check.offset).ok()?,
            mismatch_suppressed: entry(check.mismatch_suppressed)?,
            suppressed: entry(suppressed.map(|s| s.2))?,
            kind: check.kind as u8,
            verdict: verdict as u8,
            reason: code(reason),
            suppressed_verdict: suppressed.map_or(u8::MAX, |s| s.0 as u8),
            suppressed_reason: suppressed.map_or(u8::MAX, |s| code(s.1)),
        })
    }
}

const MAX_SITES_PER_PROCESS: usize = 4096;
/// Call sites kept over all rows; later ones count as `other_sites`.
const MAX_SITES: usize = 1 << 20;
/// Summary rows kept; later processes share one `(other)` row (pid 0xFFFFFFFF).
const MAX_PROCESS_ROWS: usize = 100_000;
const OTHER_ROW: u32 = u32::MAX;
const MAX_ALERT_KEYS: usize = 100_000;
/// Open rule-5 groups kept with evidence; past it a syscall is reported
/// as if its stub matched (counted in [`Report::checks_settled_early`]).
const MAX_PENDING_GROUPS: usize = 1 << 17;

/// A [`VerdictSink`] that writes the reports.
pub struct Report {
    cfg: ReportConfig,
    out: Box<dyn Write>,
    clock: Option<Clock>,
    alerts: HashMap<AlertKey, Alert, FxBuildHasher>,
    alert_order: Vec<AlertKey>,
    pending: HashMap<PendingKey, u32, FxBuildHasher>,
    groups: Vec<PendingGroup>,
    /// By group creation; `None`: dropped to stay within the budget (or,
    /// in a recovery pass, not wanted).
    evidence: Vec<Option<Box<Evidence>>>,
    /// Process facts of the evidence, and the latest by pid.
    processes: Vec<ProcessFacts>,
    process_ids: HashMap<Option<u32>, u32, FxBuildHasher>,
    evidence_bytes: usize,
    /// Next evidence to drop when over budget (oldest first).
    evict_next: usize,
    evidence_dropped: u64,
    /// Recovery pass: only these groups keep evidence.
    wanted: Option<HashSet<PendingKey>>,
    settled: bool,
    /// Alerts settled without their evidence (dropped), until
    /// [`Report::fill_evidence`].
    missing: Vec<Missing>,
    /// Module names of the evidence frames, interned by the address of
    /// their shared string (kept alive here, so an address is never reused).
    names: Vec<Arc<str>>,
    /// Per interned module: path, system module, file hash (`--images`).
    name_info: Vec<callstack::ModuleInfo>,
    name_ids: HashMap<usize, u32, FxBuildHasher>,
    checks_settled_early: u64,
    alerts_dropped: u64,
    /// Summary rows, by first appearance; `row_index` finds one by pid (or
    /// `(other)`), `sites` holds their call sites keyed by (row pid, `U`):
    /// one lookup per syscall finds both its site and its row.
    rows: Vec<ProcSummary>,
    row_index: HashMap<Option<u32>, u32, FxBuildHasher>,
    sites: SiteTable,
    /// The last [`VerdictSink::prefetch`] hint (pid, `U`) and the slot it
    /// found: the verdict that follows uses it instead of a second lookup.
    hinted: Option<(u32, u64, Option<usize>)>,
    reported: u64,
    line: Vec<u8>,
    io_error: Option<io::Error>,
    header: Option<LogfileHeader>,
    /// Events may be missing somewhere in the input.
    trace_incomplete: bool,
}

/// MITRE ATT&CK technique for both verdicts: T1106 Native API.
pub const TECHNIQUE_ID: &str = "T1106";
pub const TECHNIQUE_NAME: &str = "Native API";

impl Report {
    pub fn new(mut cfg: ReportConfig, out: Box<dyn Write>) -> Report {
        if cfg.max_stack_frames == 0 {
            cfg.max_stack_frames = 32;
        }
        Report {
            cfg,
            out,
            clock: None,
            alerts: HashMap::default(),
            alert_order: Vec::new(),
            pending: HashMap::default(),
            groups: Vec::new(),
            evidence: Vec::new(),
            processes: Vec::new(),
            process_ids: HashMap::default(),
            evidence_bytes: 0,
            evict_next: 0,
            evidence_dropped: 0,
            wanted: None,
            settled: false,
            missing: Vec::new(),
            names: Vec::new(),
            name_info: Vec::new(),
            name_ids: HashMap::default(),
            checks_settled_early: 0,
            alerts_dropped: 0,
            rows: Vec::new(),
            row_index: HashMap::default(),
            sites: SiteTable::default(),
            hinted: None,
            reported: 0,
            line: Vec::with_capacity(512),
            io_error: None,
            header: None,
            trace_incomplete: false,
        }
    }

    /// Events may be missing somewhere in the input: alerts say so
    /// (`trace_incomplete`). [`Report::finish`] also takes it from the engine.
    pub fn set_trace_incomplete(&mut self, yes: bool) {
        self.trace_incomplete = yes;
    }

    /// The clock for UTC times (else raw timestamps only).
    pub fn set_clock(&mut self, c: Option<Clock>) {
        self.clock = c;
    }

    /// The logfile header, for `host.os` in ECS alerts printed before
    /// [`Report::finish`] (live sessions with `immediate`).
    pub fn set_header(&mut self, h: Option<LogfileHeader>) {
        self.header = h;
    }

    /// Alerts (unsuppressed direct/indirect keys) so far.
    pub fn alert_count(&self) -> usize {
        self.alerts.len()
    }

    /// Syscalls that passed the filter.
    pub fn reported(&self) -> u64 {
        self.reported
    }

    fn time(&self, raw: u64) -> Option<String> {
        self.clock.map(|c| filetime_to_rfc3339(c.to_filetime(raw)))
    }

    fn write_line(&mut self, v: &Value) {
        self.line.clear();
        if serde_json::to_writer(&mut self.line, v).is_ok() {
            self.line.push(b'\n');
            if let Err(e) = self.out.write_all(&self.line) {
                self.io_error.get_or_insert(e);
            }
        }
    }

    fn per_syscall_line(&mut self, v: &SyscallVerdict<'_>) {
        let r = &v.resolver;
        let mut o = json!({
            "timestamp": v.timestamp,
            "time": self.time(v.timestamp),
            "processor": v.processor,
            "pid": v.pid,
            "tid": v.tid,
            "process": v.process.map(|p| p.image_file_name.as_str()),
            "service_address": format!("{:#x}", v.service_address),
            "service": v.outcome.service_name.map(|s| s.to_string()),
            "verdict": v.verdict.as_str(),
            "reason": v.reason.map(Reason::as_str),
            "call_site": v.first_user_frame().map(|a| r.describe(a)),
            "caller": v.caller_frame().map(|a| r.describe(a)),
        });
        if crate::classify::stack_truncated(r.modules, v.stack, r.kernel_boundary) {
            o["flags"] = json!(["truncated_stack"]);
        }
        if let Some(a) = &v.audit {
            let target = v.target.map(|p| p.image_file_name.as_str());
            o["service"] = json!(a.api.name());
            o["source"] = json!("audit");
            o["api"] = json!(a.api.name());
            o["target_pid"] = json!(a.target_pid);
            o["target_tid"] = json!(a.target_tid);
            o["target"] = json!(target);
            o["access"] = json!(a.access_names());
            o["access_mask"] = json!(a.access.map(|m| format!("{:#x}", m.0)));
            o["return_code"] = json!(a.return_code.to_string());
            if let Some(sp) = a.stack_split {
                o["stack_split"] = json!(sp.as_str());
            }
            if v.verdict.is_alert() {
                o["severity"] = json!(severity(v.verdict, a, target));
            }
        }
        if let Some(sp) = v.stack_split {
            o["stack_split"] = json!(sp.as_str());
        }
        if let Some(f) = &self.cfg.file {
            o["file"] = json!(f);
        }
        if self.cfg.format == Format::Ecs {
            o = ecs_syscall(&o, &self.ecs_context(self.header.as_ref()));
        }
        if let Some((sv, sr, i)) = v.suppressed {
            // ECS: our own fields live under `syscall_sentry.`.
            let x = if self.cfg.format == Format::Ecs {
                &mut o["syscall_sentry"]
            } else {
                &mut o
            };
            x["suppressed"] = json!(true);
            x["suppressed_verdict"] = json!(sv.as_str());
            x["suppressed_reason"] = json!(sr.map(Reason::as_str));
            match crate::builtin_name(i) {
                Some(name) => x["allowlist"] = json!(name),
                None => x["allow_entry"] = json!(i),
            }
        }
        self.write_line(&o);
    }

    /// The alert of `v` when its key is first seen: its evidence, rendered
    /// at once (the same code renders the evidence of settled groups).
    fn new_alert(&mut self, v: &SyscallVerdict<'_>) -> Alert {
        let e = self.new_evidence(v);
        let a = self.render_evidence(&e, v.pid, v.service_address, v.resolver.system_dlls);
        Decided {
            verdict: v.verdict,
            reason: v.reason,
            stub_service_address: v.outcome.stub_service.map(|a| format!("{a:#x}")),
            count: 0,
            first: v.timestamp,
            last: v.timestamp,
        }
        .apply(a)
    }

    fn frame_ref(&mut self, r: &Resolver<'_>, images: Option<&Images>, addr: u64) -> FrameRef {
        let Some(m) = r.module_of(addr) else {
            return FrameRef {
                addr,
                offset: 0,
                module: u32::MAX,
                system_dll: u32::MAX,
            };
        };
        let key = Arc::as_ptr(&m.name) as *const u8 as usize;
        let module = match self.name_ids.get(&key) {
            Some(&i) => i,
            None => {
                let i = self.names.len() as u32;
                self.names.push(Arc::clone(&m.name));
                self.name_info.push(callstack::ModuleInfo::of(m, images));
                self.name_ids.insert(key, i);
                i
            }
        };
        FrameRef {
            addr,
            offset: addr.wrapping_sub(m.base),
            module,
            system_dll: m
                .system_dll
                .and_then(|i| u32::try_from(i).ok())
                .unwrap_or(u32::MAX),
        }
    }

    /// What [`Resolver::describe`] said when the frame was seen.
    fn render(&self, f: &FrameRef, system_dlls: Option<&SystemDlls>) -> String {
        match self.names.get(f.module as usize) {
            Some(name) => describe_in(
                name,
                f.addr.wrapping_sub(f.offset),
                (f.system_dll != u32::MAX).then_some(f.system_dll as usize),
                system_dlls,
                f.addr,
            ),
            None => {
                let mut s = String::with_capacity(18);
                push_hex(&mut s, f.addr);
                s
            }
        }
    }

    fn module_name(&self, f: Option<&FrameRef>) -> Option<String> {
        f.and_then(|f| self.names.get(f.module as usize))
            .map(|n| n.to_string())
    }

    /// [`Report::new_alert`]'s evidence, unformatted.
    fn new_evidence(&mut self, v: &SyscallVerdict<'_>) -> Evidence {
        let r = v.resolver;
        let stack = v
            .stack
            .iter()
            .take(self.cfg.max_stack_frames)
            .map(|&a| self.frame_ref(&r, v.images, a))
            .collect();
        let call_site = v
            .first_user_frame()
            .map(|a| self.frame_ref(&r, v.images, a));
        let caller = v.caller_frame().map(|a| self.frame_ref(&r, v.images, a));
        let service = match v.outcome.service_name {
            Some(_) => None,
            None => r
                .kernel
                .find(v.service_address)
                .map(|_| self.frame_ref(&r, v.images, v.service_address)),
        };
        let process = match self.process_ids.get(&v.pid) {
            Some(&i) if self.processes[i as usize].same_as(v.process) => i,
            _ => {
                let i = self.processes.len() as u32;
                self.processes.push(ProcessFacts::of(v.process));
                self.process_ids.insert(v.pid, i);
                i
            }
        };
        Evidence {
            process,
            tid: v.tid,
            seq: self.reported,
            service_name: v.outcome.service_name.cloned(),
            stub_name: v.outcome.stub_name.cloned(),
            call_site,
            caller,
            service,
            stack,
            call_stack: callstack::pending(v).map(Box::new),
            audit: v
                .audit
                .map(|a| Box::new((*a, v.target.map(|p| p.image_file_name.to_string())))),
        }
    }

    /// The alert of settled evidence, as [`Report::new_alert`] would have
    /// made it when the syscall was seen; the caller sets what settling
    /// decided (verdict, counts, times).
    fn render_evidence(
        &self,
        e: &Evidence,
        pid: Option<u32>,
        service_address: u64,
        system_dlls: Option<&SystemDlls>,
    ) -> Alert {
        let p = self.processes.get(e.process as usize);
        Alert {
            verdict: "",
            reason: None,
            pid,
            process: p.map(|p| p.name.clone()).unwrap_or_default(),
            command_line: p.map(|p| p.command_line.clone()).unwrap_or_default(),
            user_sid: p.map(|p| p.user_sid.clone()).unwrap_or_default(),
            parent_pid: p.and_then(|p| p.parent_pid),
            wow64: p.is_some_and(|p| p.wow64),
            tid: e.tid,
            call_site: e
                .call_site
                .map(|f| self.render(&f, system_dlls))
                .unwrap_or_default(),
            module: self.module_name(e.call_site.as_ref()),
            caller: e.caller.map(|f| self.render(&f, system_dlls)),
            caller_module: self.module_name(e.caller.as_ref()),
            service_address: format!("{service_address:#x}"),
            service: match &e.service {
                Some(f) => Some(self.render(f, system_dlls)),
                None => e.service_name.as_ref().map(|s| s.to_string()),
            },
            stub: e.stub_name.as_ref().map(|s| s.to_string()),
            stub_service_address: None,
            count: 0,
            first_timestamp: 0,
            last_timestamp: 0,
            first_seen: None,
            last_seen: None,
            stack: e
                .stack
                .iter()
                .map(|f| self.render(f, system_dlls))
                .collect(),
            technique: "",
            behaviors: Vec::new(),
            call_stack: e
                .call_stack
                .as_deref()
                .map(|p| callstack::facts(p, &e.stack, &self.names, &self.name_info)),
            trace_incomplete: false,
            file: None,
            api: None,
            target_pid: None,
            target_tid: None,
            target: None,
            access: None,
            access_mask: None,
            return_code: None,
            severity: None,
            seq: e.seq,
        }
        .with_audit(e.audit.as_deref())
    }

    fn ecs_context<'a>(&'a self, header: Option<&'a LogfileHeader>) -> EcsContext<'a> {
        EcsContext {
            header,
            file: self.cfg.file.as_deref(),
            host: self.cfg.host.as_deref(),
        }
    }

    fn alert_value(&self, a: &Alert, header: Option<&LogfileHeader>) -> Value {
        let mut a = a.clone();
        a.first_seen = self.time(a.first_timestamp);
        a.last_seen = self.time(a.last_timestamp);
        a.trace_incomplete = self.trace_incomplete;
        a.file.clone_from(&self.cfg.file);
        a.severity = a.severity.map(|r| base_severity(a.verdict, r == 1));
        match self.cfg.format {
            Format::Json => {
                let mut v = serde_json::to_value(&a).unwrap_or(Value::Null);
                v["type"] = json!("alert");
                v
            }
            Format::Ecs => ecs(&a, &self.ecs_context(header)),
        }
    }

    /// The slot of the site (row pid, `U`): the last prefetch hint's
    /// answer when it was for this key, else a lookup.
    #[inline]
    fn site_of(&self, pid: Option<u32>, u: u64) -> Option<usize> {
        let pid = pid?;
        match self.hinted {
            Some((p, a, found)) if p == pid && a == u => found,
            _ => self.sites.find(pid, u),
        }
    }

    /// `v` counted in its row by a site: the row's name, and whether the
    /// site may skip looking at it from now on.
    fn count_at_site(&mut self, row: u32, slot: usize, v: &SyscallVerdict<'_>) {
        let r = &mut self.rows[row as usize];
        count_in_row(r, v);
        if !r.name.is_empty() {
            self.sites.slot_mut(slot).row |= NAMED;
        }
    }

    /// Adds `v` to its process row and call site; returns the row (index,
    /// pid key). The verdict counts of a syscall with an open rule-5
    /// decision are added when it settles, and when its site is its pid's
    /// own, [`Report::defer`] counts it there (in the group it joins).
    fn summarise(&mut self, v: &SyscallVerdict<'_>) -> (u32, Option<u32>) {
        let u = v.first_user_frame();
        let deferred = v.service_check.is_some();
        // Fast path: a known call site of the process knows its row.
        if let Some(i) = u.and_then(|u| self.site_of(v.pid, u)) {
            let row = self.sites.slot(i).row & !NAMED;
            if !deferred {
                self.sites.cold_mut(i).count += 1;
            }
            self.count_at_site(row, i, v);
            return (row, v.pid);
        }
        let key = if self.rows.len() >= MAX_PROCESS_ROWS && !self.row_index.contains_key(&v.pid) {
            Some(OTHER_ROW)
        } else {
            v.pid
        };
        let row = match self.row_index.get(&key) {
            Some(&r) => r,
            None => {
                let r = self.rows.len() as u32;
                self.rows.push(ProcSummary {
                    pid: key,
                    name: if key == Some(OTHER_ROW) {
                        "(other)".to_string()
                    } else {
                        v.process
                            .map(|p| p.image_file_name.clone())
                            .unwrap_or_default()
                    },
                    ..ProcSummary::default()
                });
                self.row_index.insert(key, r);
                r
            }
        };
        // Counted here unless `defer` counts it in the site.
        let here = u64::from(!(deferred && key == v.pid));
        let (Some(u), Some(pid)) = (u, key) else {
            let s = &mut self.rows[row as usize];
            count_in_row(s, v);
            s.siteless += 1;
            return (row, key);
        };
        if let Some(i) = self.site_of(key, u) {
            self.sites.cold_mut(i).count += here;
            self.count_at_site(row, i, v);
            return (row, key);
        }
        let s = &mut self.rows[row as usize];
        count_in_row(s, v);
        if s.site_count < MAX_SITES_PER_PROCESS && self.sites.len() < MAX_SITES {
            s.site_count += 1;
            let named = if s.name.is_empty() { 0 } else { NAMED };
            let i = self
                .sites
                .insert(pid, u, row | named, here, v.resolver.describe(u));
            // Slots found before may have moved.
            self.hinted = Some((pid, u, Some(i)));
        } else {
            s.other_sites += 1;
            s.siteless += 1;
        }
        (row, key)
    }

    /// Counts `v` in its site apart from the site's own group.
    fn count_apart(&mut self, site: Option<usize>) {
        if let Some(i) = site {
            self.sites.cold_mut(i).count += 1;
        }
    }

    /// A syscall whose rule-5 decision is open: grouped until
    /// [`Report::finish`] settles it.
    fn defer(
        &mut self,
        v: &SyscallVerdict<'_>,
        check: ServiceCheck,
        (row, row_key): (u32, Option<u32>),
    ) {
        let key = pending_key(v, check, row);
        let ts = v.timestamp;
        // A site keeps its group, and counts the syscall, only where the
        // site is the pid's own (not the shared `(other)` row).
        let site = match v.first_user_frame() {
            Some(u) if row_key == v.pid => self.site_of(v.pid, u),
            _ => None,
        };
        let disc = Disc::of(&key);
        if let Some(si) = site {
            let s = self.sites.slot_mut(si);
            if s.own != u32::MAX && disc == Some(s.own_disc) {
                s.own_count += 1;
                s.own_last = s.own_last.max(ts);
                let own = s.own as usize;
                if let Some(g) = self.groups.get_mut(own) {
                    g.first = g.first.min(ts);
                }
                return;
            }
        }
        if let Some(&gi) = self.pending.get(&key) {
            if let Some(g) = self.groups.get_mut(gi as usize) {
                g.count += 1;
                g.first = g.first.min(ts);
                g.last = g.last.max(ts);
            }
            self.count_apart(site);
            return;
        }
        if self.evidence.len() >= MAX_PENDING_GROUPS {
            self.count_apart(site);
            // Bounded memory over exactness: report it as if the stub
            // matched, and say so in the statistics.
            self.checks_settled_early += 1;
            if let Some(s) = self.rows.get_mut(row as usize) {
                s.counts[v.verdict.index()] += 1;
                if v.suppressed.is_some() {
                    s.suppressed += 1;
                }
            }
            self.add_alert(v);
            return;
        }
        let gi = self.groups.len() as u32;
        let mut g = PendingGroup {
            key,
            count: 1,
            first: ts,
            last: ts,
            evidence: self.evidence.len() as u32,
        };
        let evidence = match &self.wanted {
            Some(w) => w.contains(&key).then(|| Box::new(self.new_evidence(v))),
            None => Some(Box::new(self.new_evidence(v))),
        };
        if let Some(e) = &evidence {
            self.evidence_bytes += e.bytes();
        }
        self.evidence.push(evidence);
        self.keep_within_budget();
        match (site, disc) {
            (Some(si), Some(d)) if self.sites.slot(si).own == u32::MAX => {
                // Its count and latest time live in the site from now on.
                let s = self.sites.slot_mut(si);
                s.own = gi;
                s.own_disc = d;
                s.own_count = 1;
                s.own_last = ts;
                g.count = 0;
            }
            _ => self.count_apart(site),
        }
        self.pending.insert(key, gi);
        self.groups.push(g);
    }

    /// The groups, in creation (= emission) order, with the counters their
    /// sites kept.
    fn take_groups(&mut self) -> Vec<PendingGroup> {
        let mut groups = std::mem::take(&mut self.groups);
        self.sites.for_each_mut(|s, c| {
            if let Some(g) = groups.get_mut(s.own as usize) {
                // `first` is the group's own (kept there by `defer`).
                g.last = g.last.max(s.own_last);
                g.count += s.own_count;
            }
            // The site's total stays `count + own_count`.
            c.count += s.own_count;
            s.own = u32::MAX;
            s.own_count = 0;
        });
        self.pending.clear();
        groups
    }

    fn keep_within_budget(&mut self) {
        if self.wanted.is_some() {
            return;
        }
        let budget = match self.cfg.evidence_budget {
            0 => DEFAULT_EVIDENCE_BUDGET,
            b => b,
        };
        while self.evidence_bytes > budget && self.evict_next < self.evidence.len() {
            if let Some(e) = self.evidence[self.evict_next].take() {
                self.evidence_bytes -= e.bytes();
                self.evidence_dropped += 1;
            }
            self.evict_next += 1;
        }
    }

    /// Settles the open rule-5 groups (once; [`Report::finish`] does it if
    /// not done). Call after [`Engine::finish`]. Then, if
    /// [`Report::evidence_request`] is not empty, run a recovery pass.
    pub fn settle(&mut self, engine: &Engine) {
        if !self.settled {
            self.settled = true;
            self.settle_with(engine.services(), engine.system_dlls());
        }
    }

    /// The groups that settled as alerts without their evidence (dropped
    /// to stay within [`ReportConfig::evidence_budget`]).
    pub fn evidence_request(&self) -> EvidenceRequest {
        EvidenceRequest(self.missing.iter().map(|m| m.key).collect())
    }

    /// Evidence dropped to stay within the budget (groups).
    pub fn evidence_dropped(&self) -> u64 {
        self.evidence_dropped
    }

    /// A report for a recovery pass over the same input with the same
    /// engine settings and filter: it keeps the evidence of the requested
    /// groups only (the groups come out the same: the pass is deterministic).
    pub fn recovery(cfg: ReportConfig, request: EvidenceRequest) -> Report {
        let mut r = Report::new(cfg, Box::new(io::sink()));
        r.wanted = Some(request.0);
        r
    }

    /// The evidence a recovery pass found, rendered (after its
    /// [`Engine::finish`]).
    pub fn take_recovered(&mut self, engine: &Engine) -> RecoveredEvidence {
        let sys = engine.system_dlls();
        let mut out = HashMap::default();
        for g in self.take_groups() {
            if let Some(e) = self
                .evidence
                .get_mut(g.evidence as usize)
                .and_then(Option::take)
            {
                let a = self.render_evidence(&e, g.key.pid, g.key.service_address, sys);
                out.insert(g.key, a);
            }
        }
        RecoveredEvidence(out)
    }

    /// Completes the alerts whose evidence was dropped; returns how many
    /// are still without it (none when the recovery pass saw the same input).
    pub fn fill_evidence(&mut self, mut r: RecoveredEvidence) -> usize {
        let mut lost = 0;
        for m in std::mem::take(&mut self.missing) {
            let Some(a) = r.0.remove(&m.key) else {
                lost += 1;
                continue;
            };
            self.merge_alert(m.alert_key, m.decided.apply(a));
        }
        lost
    }

    /// Settles the open rule-5 groups with the final service table: their
    /// counts go to the process rows, their alerts join the others (the
    /// evidence of whichever syscall came first).
    fn settle_with(&mut self, services: &ServiceTable, system_dlls: Option<&SystemDlls>) {
        let groups = self.take_groups();
        let mut evidence = std::mem::take(&mut self.evidence);
        self.evidence_bytes = 0;
        for g in groups {
            let k = g.key;
            let s = k.check.settle(
                services,
                k.service_address,
                k.verdict,
                k.reason,
                k.suppressed,
            );
            if let Some(row) = self.rows.get_mut(k.row as usize) {
                row.counts[s.verdict.index()] += g.count;
                if s.suppressed.is_some() {
                    row.suppressed += g.count;
                }
            }
            if !s.verdict.is_alert() {
                continue;
            }
            let key = AlertKey {
                pid: k.pid,
                call_site: k.call_site,
                verdict: s.verdict,
                reason: s.reason,
            };
            let decided = Decided {
                verdict: s.verdict,
                reason: s.reason,
                stub_service_address: services
                    .service_of(k.check.kind, k.check.offset)
                    .map(|x| format!("{x:#x}")),
                count: g.count,
                first: g.first,
                last: g.last,
            };
            let Some(e) = evidence.get_mut(g.evidence as usize).and_then(Option::take) else {
                self.missing.push(Missing {
                    key: k,
                    alert_key: key,
                    decided,
                });
                continue;
            };
            let a = self.render_evidence(&e, k.pid, k.service_address, system_dlls);
            self.merge_alert(key, decided.apply(a));
        }
    }

    fn merge_alert(&mut self, key: AlertKey, a: Alert) {
        if let Some(old) = self.alerts.get_mut(&key) {
            let (count, first, last) = (
                old.count + a.count,
                old.first_timestamp.min(a.first_timestamp),
                old.last_timestamp.max(a.last_timestamp),
            );
            if a.seq < old.seq {
                *old = a;
            }
            old.count = count;
            old.first_timestamp = first;
            old.last_timestamp = last;
            return;
        }
        if self.alerts.len() >= MAX_ALERT_KEYS {
            self.alerts_dropped += 1;
            return;
        }
        self.alerts.insert(key, a);
        self.alert_order.push(key);
    }

    /// Syscalls reported as if their stub matched because the open rule-5
    /// groups were at their cap (see [`crate::Learning::Deferred`]).
    pub fn checks_settled_early(&self) -> u64 {
        self.checks_settled_early
    }

    /// Writes the deduplicated alerts (unless `per_syscall`).
    pub fn write_alerts(&mut self, header: Option<&LogfileHeader>) {
        if self.cfg.per_syscall {
            return;
        }
        // By first time, so that the order does not depend on when an
        // alert's key was settled (one pass or two give the same lines).
        let mut keys = std::mem::take(&mut self.alert_order);
        let alerts = &self.alerts;
        keys.sort_by_key(|k| {
            let t = alerts.get(k).map_or(0, |a| a.first_timestamp);
            (t, k.pid, k.call_site, k.verdict, k.reason)
        });
        for k in &keys {
            if let Some(a) = self.alerts.get(k) {
                let v = self.alert_value(a, header);
                self.write_line(&v);
            }
        }
        self.alert_order = keys;
    }

    /// The per-process summary table.
    pub fn summary_table(&self) -> String {
        let mut sites: Vec<Vec<(u64, &String)>> = vec![Vec::new(); self.rows.len()];
        let mut syscalls: Vec<u64> = self.rows.iter().map(|r| r.siteless).collect();
        for (row, name, n) in self.sites.in_order() {
            if let Some(v) = sites.get_mut(row as usize) {
                v.push((n, name));
                syscalls[row as usize] += n;
            }
        }
        // Alerting processes first, then unresolved ones, then by volume.
        let alerts = |s: &ProcSummary| s.counts[1] + s.counts[2];
        let unresolved = |s: &ProcSummary| s.counts[Verdict::Unresolved.index()];
        let mut order: Vec<usize> = (0..self.rows.len()).collect();
        order.sort_by(|&i, &j| {
            let (a, b) = (&self.rows[i], &self.rows[j]);
            alerts(b)
                .cmp(&alerts(a))
                .then(unresolved(b).cmp(&unresolved(a)))
                .then(syscalls[j].cmp(&syscalls[i]))
                .then(a.pid.cmp(&b.pid))
        });
        // Every alerting process is listed, whatever the limit.
        let alerting = order.iter().filter(|&&i| alerts(&self.rows[i]) > 0).count();
        let shown = match self.cfg.summary_rows {
            0 => order.len(),
            n => n.max(alerting).min(order.len()),
        };
        let mut t = String::new();
        t.push_str(&format!(
            "{:>7} {:<24} {:>10} {:>10} {:>7} {:>8} {:>7} {:>8} {:>6} {:>6} {:>6}  top call sites\n",
            "pid",
            "process",
            "syscalls",
            "normal",
            "direct",
            "indirect",
            "kernel",
            "no_stack",
            "trunc",
            "unres",
            "suppr"
        ));
        for &i in &order[..shown] {
            let (s, syscalls, sites) = (&self.rows[i], syscalls[i], &mut sites[i]);
            sites.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
            let top: Vec<String> = sites
                .iter()
                .take(3)
                .map(|(n, d)| format!("{d} ({n})"))
                .collect();
            let c = &s.counts;
            t.push_str(&format!(
                "{:>7} {:<24} {:>10} {:>10} {:>7} {:>8} {:>7} {:>8} {:>6} {:>6} {:>6}  {}\n",
                s.pid.map_or("-".to_string(), |p| p.to_string()),
                if s.pid.is_none() {
                    "(no stack)"
                } else if s.name.is_empty() {
                    "(unknown)"
                } else {
                    &s.name
                },
                syscalls,
                c[Verdict::Normal.index()],
                c[Verdict::Direct.index()],
                c[Verdict::Indirect.index()],
                c[Verdict::KernelOrigin.index()],
                c[Verdict::NoStack.index()],
                c[Verdict::Truncated.index()],
                c[Verdict::Unresolved.index()],
                s.suppressed,
                top.join(", ")
            ));
        }
        if shown < order.len() {
            let rest = &order[shown..];
            let n: u64 = rest.iter().map(|&i| syscalls[i]).sum();
            t.push_str(&format!(
                "  ... and {} more processes ({n} syscalls, no alerts{}); --summary-rows 0 lists all\n",
                rest.len(),
                if rest.iter().any(|&i| unresolved(&self.rows[i]) > 0) {
                    ""
                } else {
                    ", none unresolved"
                }
            ));
        }
        t
    }

    /// Flushes the output; returns the first write error.
    pub fn flush(&mut self) -> io::Result<()> {
        if let Some(e) = self.io_error.take() {
            return Err(e);
        }
        self.out.flush()
    }

    /// End of input: writes the alerts, flushes.
    pub fn finish(&mut self, engine: &Engine) -> io::Result<()> {
        self.clock = engine.clock().copied().or(self.clock);
        self.trace_incomplete |= engine.completeness().incomplete();
        self.settle(engine);
        self.write_alerts(engine.header());
        self.flush()
    }

    /// Gives the output back (to reuse it for the next file).
    pub fn into_output(self) -> Box<dyn Write> {
        self.out
    }

    /// Alert keys dropped because the dedup table was full.
    pub fn alerts_dropped(&self) -> u64 {
        self.alerts_dropped
    }
}

impl VerdictSink for Report {
    #[inline]
    fn prefetch(&mut self, pid: u32, call_site: u64) {
        // The site's lookup now (its line is on its way while the engine
        // classifies), kept for the verdict.
        self.hinted = Some((pid, call_site, self.sites.find(pid, call_site)));
    }

    fn verdict(&mut self, v: &SyscallVerdict<'_>) {
        if !self.cfg.filter.accepts(v) {
            return;
        }
        self.reported += 1;
        if let (Some(check), Some(u)) = (v.service_check, v.first_user_frame()) {
            // Fast path: the call site is known, its own group is this
            // syscall's and it comes in time order, its row has its name:
            // one line.
            if let Some(i) = self.site_of(v.pid, u) {
                let site = self.sites.slot_mut(i);
                if site.own != u32::MAX
                    && site.row & NAMED != 0
                    && v.timestamp >= site.own_last
                    && Disc::of_parts(check, v.service_address, v.verdict, v.reason, v.suppressed)
                        == Some(site.own_disc)
                {
                    site.own_count += 1;
                    site.own_last = v.timestamp;
                    return;
                }
            }
        }
        let (row, row_key) = self.summarise(v);
        if let Some(check) = v.service_check {
            self.defer(v, check, (row, row_key));
            return;
        }
        if self.cfg.per_syscall {
            self.per_syscall_line(v);
        }
        self.add_alert(v);
    }
}

impl Report {
    fn add_alert(&mut self, v: &SyscallVerdict<'_>) {
        if !v.verdict.is_alert() {
            return;
        }
        let key = AlertKey {
            pid: v.pid,
            call_site: v.first_user_frame().unwrap_or(0),
            verdict: v.verdict,
            reason: v.reason,
        };
        if let Some(a) = self.alerts.get_mut(&key) {
            a.count += 1;
            a.first_timestamp = a.first_timestamp.min(v.timestamp);
            a.last_timestamp = a.last_timestamp.max(v.timestamp);
            return;
        }
        if self.alerts.len() >= MAX_ALERT_KEYS {
            self.alerts_dropped += 1;
            return;
        }
        let mut a = self.new_alert(v);
        a.count = 1;
        if self.cfg.immediate && !self.cfg.per_syscall {
            let val = self.alert_value(&a, self.header.as_ref());
            self.write_line(&val);
        }
        self.alerts.insert(key, a);
        self.alert_order.push(key);
    }
}

fn pending_key(v: &SyscallVerdict<'_>, check: ServiceCheck, row: u32) -> PendingKey {
    PendingKey {
        pid: v.pid,
        row,
        call_site: v.first_user_frame().unwrap_or(0),
        check,
        service_address: v.service_address,
        verdict: v.verdict,
        reason: v.reason,
        suppressed: v.suppressed,
    }
}

fn count_in_row(s: &mut ProcSummary, v: &SyscallVerdict<'_>) {
    if s.name.is_empty() && s.pid != Some(OTHER_ROW) {
        if let Some(p) = v.process {
            s.name.clone_from(&p.image_file_name);
        }
    }
    if v.service_check.is_none() {
        s.counts[v.verdict.index()] += 1;
        if v.suppressed.is_some() {
            s.suppressed += 1;
        }
    }
}

/// The ECS version the documents follow (`ecs.version`, required in every
/// event). Field names and types checked against ECS 9.4.0's published
/// `generated/csv/fields.csv` (elastic/ecs, tag v9.4.0) by the CLI's
/// `ecs_fields` test; fields of our own are under `syscall_sentry.`.
pub const ECS_VERSION: &str = "9.4.0";

/// The traced Windows version, `major.minor`: `TRACE_LOGFILE_HEADER`'s
/// `VersionDetail` holds the OS's major and minor version, then the
/// logger's own sub-versions (`SubVersion`, `SubMinorVersion`), which are
/// not part of the OS version (they made Windows 10 read `10.0.1.5`). The
/// build is `ProviderVersion`. See
/// [TRACE_LOGFILE_HEADER](https://learn.microsoft.com/windows/win32/api/evntrace/ns-evntrace-trace_logfile_header).
pub fn os_version(h: &LogfileHeader) -> String {
    format!("{}.{}", h.os_version[0], h.os_version[1])
}

/// What every ECS document of one input shares.
struct EcsContext<'a> {
    header: Option<&'a LogfileHeader>,
    file: Option<&'a str>,
    host: Option<&'a str>,
}

impl EcsContext<'_> {
    fn host(&self) -> Value {
        let mut os = json!({"family": "windows", "type": "windows", "platform": "windows"});
        if let Some(h) = self.header {
            os["version"] = json!(os_version(h));
            os["kernel"] = json!(format!("{}.{}", os_version(h), h.provider_version));
        }
        let mut host = json!({ "os": os });
        if let Some(n) = self.host {
            host["name"] = json!(n);
        }
        host
    }
}

/// A stable id from the parts that make a line unique (FNV-1a, 64 bits):
/// the same input gives the same ids, so a re-shipped file deduplicates.
fn event_id(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0xFF]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// Drops what is unknown (null, empty strings, empty objects/arrays)
/// instead of writing it as a value.
fn prune(v: &mut Value) -> bool {
    match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => {
            a.retain_mut(prune);
            !a.is_empty()
        }
        Value::Object(o) => {
            o.retain(|_, x| prune(x));
            !o.is_empty()
        }
        _ => true,
    }
}

fn rule_of(verdict: &str, reason: Option<&str>) -> (String, String) {
    match reason {
        Some(r) => (
            format!("syscall-sentry.{verdict}.{r}"),
            format!("{verdict}_syscall.{r}"),
        ),
        None => (
            format!("syscall-sentry.{verdict}"),
            format!("{verdict}_syscall"),
        ),
    }
}

fn threat() -> Value {
    json!({
        "framework": "MITRE ATT&CK",
        "technique": {
            "id": [TECHNIQUE_ID],
            "name": [TECHNIQUE_NAME],
            "reference": ["https://attack.mitre.org/techniques/T1106/"],
        },
        "tactic": {"id": ["TA0002"], "name": ["Execution"]},
    })
}

/// ` NtOpenProcess of lsass.exe (pid 788) for PROCESS_VM_READ|…` for an
/// audit alert's message (empty otherwise; `api` `None` leaves the API out).
fn audit_what(
    api: Option<&str>,
    target: Option<&str>,
    target_pid: Option<u32>,
    access: Option<&str>,
) -> String {
    let mut s = String::new();
    if let Some(a) = api {
        s.push(' ');
        s.push_str(a);
    }
    if let Some(p) = target_pid {
        s.push_str(&match target {
            Some(t) => format!(" of {t} (pid {p})"),
            None => format!(" of pid {p}"),
        });
    }
    if let Some(a) = access {
        s.push_str(" for ");
        s.push_str(a);
    }
    s
}

/// The ECS document of an alert.
fn ecs(a: &Alert, cx: &EcsContext<'_>) -> Value {
    let (rule_id, rule_name) = rule_of(a.verdict, a.reason);
    let who = if a.process.is_empty() {
        format!("pid {}", a.pid.map_or("?".into(), |p| p.to_string()))
    } else {
        format!(
            "{} (pid {})",
            a.process,
            a.pid.map_or("?".into(), |p| p.to_string())
        )
    };
    let message = format!(
        "{} syscall{}{} by {who} from {}, {} time{}",
        if a.verdict == "direct" {
            "Direct"
        } else {
            "Indirect"
        },
        a.reason.map(|r| format!(" ({r})")).unwrap_or_default(),
        audit_what(
            a.api,
            a.target.as_deref(),
            a.target_pid,
            a.access.as_deref()
        ),
        a.call_site,
        a.count,
        if a.count == 1 { "" } else { "s" }
    );
    let pid = a.pid.map_or(String::new(), |p| p.to_string());
    let first = a.first_timestamp.to_string();
    let id = event_id(&[
        cx.file.unwrap_or(""),
        &pid,
        &a.call_site,
        a.verdict,
        a.reason.unwrap_or(""),
        &first,
    ]);
    let mut v = json!({
        "@timestamp": a.first_seen,
        "message": message,
        "ecs": {"version": ECS_VERSION},
        "event": {
            "kind": "alert",
            "id": id,
            "category": ["process"],
            "type": ["info"],
            "action": a.technique,
            "module": "syscall_sentry",
            "dataset": "syscall_sentry.alert",
            "provider": "syscall-sentry",
            "start": a.first_seen,
            "end": a.last_seen,
            "severity": a.severity.unwrap_or(base_severity(a.verdict, false)),
        },
        "process": {
            "pid": a.pid,
            "name": a.process,
            "command_line": a.command_line,
            "parent": {"pid": a.parent_pid},
            "thread": {"id": a.tid},
        },
        "user": {"id": a.user_sid},
        "rule": {
            "id": rule_id,
            "name": rule_name,
            "category": "syscall provenance",
            "ruleset": "syscall-sentry verdicts",
        },
        "threat": threat(),
        "host": cx.host(),
        "log": {"file": {"path": cx.file}},
        "syscall_sentry": {
            "verdict": a.verdict,
            "reason": a.reason,
            "count": a.count,
            "call_site": a.call_site,
            "module": a.module,
            "caller": a.caller,
            "caller_module": a.caller_module,
            "service_address": a.service_address,
            "service": a.service,
            "stub": a.stub,
            "stub_service_address": a.stub_service_address,
            "wow64": a.wow64,
            "first_timestamp": a.first_timestamp,
            "last_timestamp": a.last_timestamp,
            "stack": a.stack,
            "trace_incomplete": a.trace_incomplete,
        },
    });
    if let Some(f) = &a.call_stack {
        // An export name, never a module+offset rendering.
        let api = a.stub.as_deref().or(a
            .service
            .as_deref()
            .filter(|s| !s.contains('+') && !s.starts_with("0x")));
        let extra = callstack::ecs_process_fields(f, &a.behaviors, api, &a.stack);
        if let (Some(p), Value::Object(x)) = (v["process"].as_object_mut(), extra) {
            for (k, x) in x {
                match (p.get_mut(&k), x) {
                    // `process.thread` already holds `id`: add `Ext` to it.
                    (Some(Value::Object(have)), Value::Object(add)) => have.extend(add),
                    (_, x) => {
                        p.insert(k, x);
                    }
                }
            }
        }
    }
    if let Some(h) = a
        .call_stack
        .as_ref()
        .and_then(|c| c.exception_handler.as_ref())
    {
        v["syscall_sentry"]["exception_handler"] = json!(h);
    }
    if a.api.is_some() {
        // The other process of the call, laid out as Elastic Endpoint's
        // `Target.process`, under our namespace (ECS has no such field).
        let x = &mut v["syscall_sentry"];
        x["target"] = json!({"process": {
            "pid": a.target_pid, "name": a.target, "thread": {"id": a.target_tid},
        }});
        x["api"] = json!(a.api);
        x["access"] = json!(a.access);
        x["access_mask"] = json!(a.access_mask);
        x["return_code"] = json!(a.return_code);
    }
    prune(&mut v);
    v
}

/// The ECS document of one syscall (`--per-syscall --format ecs`), from
/// its own-layout line: an `alert` for direct/indirect, else an `event`.
fn ecs_syscall(o: &Value, cx: &EcsContext<'_>) -> Value {
    let verdict = o["verdict"].as_str().unwrap_or("");
    let reason = o["reason"].as_str();
    let alert = verdict == "direct" || verdict == "indirect";
    let (rule_id, rule_name) = rule_of(verdict, reason);
    let process = o["process"].as_str().unwrap_or("");
    let message = format!(
        "Syscall {} by {}{}: {verdict}{}",
        o["service"]
            .as_str()
            .unwrap_or_else(|| o["service_address"].as_str().unwrap_or("")),
        if process.is_empty() { "pid " } else { process },
        o["pid"]
            .as_u64()
            .map(|p| if process.is_empty() {
                p.to_string()
            } else {
                format!(" (pid {p})")
            })
            .unwrap_or_else(|| "an unknown process".into()),
        reason.map(|r| format!(" ({r})")).unwrap_or_default(),
    );
    // An audit event: its target and the access asked for.
    let mut message = message;
    if let Some(p) = o["target_pid"].as_u64() {
        match o["target"].as_str() {
            Some(t) => message.push_str(&format!("; target {t} (pid {p})")),
            None => message.push_str(&format!("; target pid {p}")),
        }
    }
    if let Some(a) = o["access"].as_str() {
        message.push_str(&format!(", access {a}"));
    }
    let ts = o["timestamp"].as_u64().unwrap_or(0).to_string();
    let mut v = json!({
        "@timestamp": o["time"],
        "message": message,
        "ecs": {"version": ECS_VERSION},
        "event": {
            "kind": if alert { "alert" } else { "event" },
            "id": event_id(&[cx.file.unwrap_or(""), &ts]),
            "category": ["process"],
            "type": ["info"],
            "action": if alert { technique(Verdict::parse(verdict).unwrap_or(Verdict::Normal), reason.and_then(Reason::parse)) } else { "syscall" },
            "module": "syscall_sentry",
            "dataset": "syscall_sentry.syscall",
            "provider": "syscall-sentry",
        },
        "process": {
            "pid": o["pid"],
            "name": process,
            "thread": {"id": o["tid"]},
        },
        "host": cx.host(),
        "log": {"file": {"path": cx.file}},
        "syscall_sentry": {
            "verdict": verdict,
            "reason": reason,
            "timestamp": o["timestamp"],
            "processor": o["processor"],
            "call_site": o["call_site"],
            "caller": o["caller"],
            "service_address": o["service_address"],
            "service": o["service"],
            "suppressed": o.get("suppressed"),
            "suppressed_verdict": o.get("suppressed_verdict"),
            "suppressed_reason": o.get("suppressed_reason"),
            "allow_entry": o.get("allow_entry"),
        },
    });
    // Elastic's behaviours the verdict and the flags imply.
    let truncated = o["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "truncated_stack"));
    let behaviors = callstack::behaviors(
        Verdict::parse(verdict).unwrap_or(Verdict::Normal),
        reason.and_then(Reason::parse),
        truncated,
    );
    if !behaviors.is_empty() {
        v["process"]["Ext"] = json!({"api": {"behaviors": behaviors}});
    }
    if o["source"] == "audit" {
        let x = &mut v["syscall_sentry"];
        x["target"] = json!({"process": {
            "pid": o["target_pid"], "name": o["target"], "thread": {"id": o["target_tid"]},
        }});
        for k in ["source", "api", "access", "access_mask", "return_code"] {
            x[k] = o[k].clone();
        }
        if !o["stack_split"].is_null() {
            x["stack_split"] = o["stack_split"].clone();
        }
        if alert {
            v["event"]["severity"] = o["severity"].clone();
        }
    } else if !o["stack_split"].is_null() {
        v["syscall_sentry"]["stack_split"] = o["stack_split"].clone();
    }
    if alert {
        v["rule"] = json!({
            "id": rule_id,
            "name": rule_name,
            "category": "syscall provenance",
            "ruleset": "syscall-sentry verdicts",
        });
        v["threat"] = threat();
    }
    prune(&mut v);
    v
}

/// Human-readable statistics (for stderr or the summary file).
pub fn stats_text(s: &EngineStats, wall_seconds: f64, alerts: usize) -> String {
    let mut t = String::new();
    let rate = if wall_seconds > 0.0 {
        s.events as f64 / wall_seconds
    } else {
        0.0
    };
    t.push_str(&format!(
        "events: {} ({:.0}/s, {:.2} s), kernel events decoded: {}, decode errors: {}\n",
        s.events, rate, wall_seconds, s.kernel_events_decoded, s.decode_errors
    ));
    for e in &s.decode_error_samples {
        t.push_str(&format!(
            "  decode error at {:#x}: {}\n",
            e.offset, e.message
        ));
    }
    t.push_str(&format!(
        "events the session could not log (logfile header EventsLost): {}, buffers it could not write (BuffersLost): {}\n",
        s.events_lost.map_or("unknown".into(), |v| v.to_string()),
        s.buffers_lost.map_or("unknown".into(), |v| v.to_string())
    ));
    let v = &s.verdicts;
    t.push_str(&format!(
        "syscalls: {}, normal {}, direct {}, indirect {}, kernel_origin {}, no_stack {}, truncated {}, unresolved {}, suppressed {}; alerts (deduplicated): {}\n",
        s.syscalls, v.normal, v.direct, v.indirect, v.kernel_origin, v.no_stack, v.truncated, v.unresolved, s.suppressed, alerts
    ));
    let c = &s.builtin.chromium_sandbox;
    if c.suppressed + c.rejected_service + c.rejected_signer > 0 {
        t.push_str(&format!(
            "builtin allowlist {}: suppressed {} (service named and intercepted {}, not named {}; signer matched {}, not known {}); kept as alerts: service not intercepted {}, other signer {}\n",
            crate::CHROMIUM_SANDBOX,
            c.suppressed,
            c.service_checked,
            c.service_not_checked,
            c.signer_checked,
            c.signer_not_checked,
            c.rejected_service,
            c.rejected_signer
        ));
    }
    if s.audit_events > 0 {
        t.push_str(&format!(
            "Kernel-Audit-API-Calls events: {} ({} of system calls, counted in syscalls; {} of drivers, not classified; {} with a split stack)\n",
            s.audit_events,
            s.audit_events - s.audit_not_syscall,
            s.audit_not_syscall,
            s.audit_split_stacks
        ));
        if s.audit_split_stacks > 0 || s.audit_user_parts > 0 {
            t.push_str(&format!(
                "split stacks: {} joined with their user part, {} without it (no_stack), {} classified from the user frames they hold; Kernel-EventTracing user parts: {} ({} unused)\n",
                s.audit_split_joined,
                s.audit_split_unjoined,
                s.audit_split_user_only,
                s.audit_user_parts,
                s.audit_user_parts_unused
            ));
        }
    }
    if s.nested_kernel_calls > 0 || s.syscall_user_parts_missing > 0 {
        t.push_str(&format!(
            "kernel-mode calls nested in a user thread's system call: {} (kernel_origin); user parts never seen: {} (no_stack)\n",
            s.nested_kernel_calls, s.syscall_user_parts_missing
        ));
    }
    if v.unresolved > 0 {
        let u = &s.unresolved;
        t.push_str(&format!(
            "unresolved: process_unknown {}, modules_incomplete {}, events_lost {}\n",
            u.process_unknown, u.modules_incomplete, u.events_lost
        ));
    }
    if s.frames_checked + s.frames_not_done > 0 {
        t.push_str(&format!(
            "return addresses (--images): checked {}, not done {} (no file, unbacked or skipped: never counted as passed)\n",
            s.frames_checked, s.frames_not_done
        ));
    }
    if s.exception_checks + s.exception_checks_not_done > 0 {
        t.push_str(&format!(
            "exception dispatch (rule 8b): checked {}, not done {} (no ntdll exports: give --images or --system-dlls; never counted as passed), stacks with a handler frame {}\n",
            s.exception_checks, s.exception_checks_not_done, s.exception_dispatch_stacks
        ));
    }
    if s.proxy_checked + s.proxy_not_done > 0 {
        t.push_str(&format!(
            "proxied-call shapes (rule 8c): checked {}, not done {} (no matched --images file or no x64 function table: never counted as passed)\n",
            s.proxy_checked, s.proxy_not_done
        ));
    }
    let c = &s.correlator;
    t.push_str(&format!(
        "correlator: matched {}, syscall without stack {}, stack without syscall {}, expired {}, fragments stitched {}, evicted {}, peak pending {}, keys resolved {}, keys unresolved {}\n",
        c.matched, c.syscall_without_stack, c.stack_without_syscall, c.expired, c.fragments_stitched, c.evicted, c.peak_pending, c.keys_resolved, c.keys_unresolved
    ));
    let st = &s.state;
    t.push_str(&format!(
        "state: processes seen {}, live {}, dropped {}, images loaded {}, unloaded {}, kernel modules {}, learned return sites {}\n",
        st.processes_seen, st.live_processes, st.processes_dropped, st.images_loaded, st.images_unloaded, st.kernel_modules, s.learned_return_sites
    ));
    t
}
