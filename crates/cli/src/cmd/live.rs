//! `syscall-sentry live`, `record` and `stop`: the NT Kernel Logger on this
//! Windows host. `live` feeds the same engine and report as `analyze`;
//! `record` writes the same session to an `.etl` file that `analyze`, xperf
//! and WPA read; `stop` ends a session left running.
//!
//! The session machinery is in `sentry-live`; this module parses options and
//! wires outputs. On other platforms the three subcommands exit with 2.

use std::path::PathBuf;
#[cfg(not(windows))]
use std::process::ExitCode;

use super::report_args::ReportArgs;

/// The message for non-Windows hosts.
#[cfg_attr(windows, allow(dead_code))]
pub const NEEDS_WINDOWS: &str = "live needs Windows; use `analyze` on an .etl file recorded with \
                                 `record`, xperf or WPR";

/// Which kernel session to use.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionChoice {
    /// The global "NT Kernel Logger" (one per machine).
    Kernel,
    /// A private system-logger session under --session-name (Windows 8+).
    Private,
}

/// Session options shared by `live` and `record`.
#[derive(clap::Args, Debug, Clone)]
pub struct SessionArgs {
    /// kernel: the global "NT Kernel Logger"; private: an own
    /// system-logger session (Windows 8+) that coexists with other tools.
    #[arg(long, value_enum, default_value = "kernel")]
    pub session: SessionChoice,
    /// Name of the private session.
    #[arg(long, default_value = "syscall-sentry")]
    pub session_name: String,
    /// If the session already exists, stop it and start ours.
    #[arg(long)]
    pub force: bool,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// ETW buffer size in KB.
    #[arg(long, default_value_t = sentry_live::properties::DEFAULT_BUFFER_KB)]
    pub buffer_kb: u32,
    /// Minimum ETW buffers (default: 2 per processor, at least 16; ETW
    /// needs at least 2 per processor).
    #[arg(long, value_name = "N")]
    pub min_buffers: Option<u32>,
    /// Maximum ETW buffers, for bursts (default: the minimum plus 4 per
    /// processor, at least 64 more; 512 MiB in all at most).
    #[arg(long, value_name = "N")]
    pub max_buffers: Option<u32>,
    /// Milliseconds between buffer flushes (default: 250 for live; none for
    /// record, whose buffers are written when full).
    #[arg(long, value_name = "MS")]
    pub flush_ms: Option<u32>,
    /// Also collect stacks of image loads.
    #[arg(long)]
    pub image_load_stacks: bool,
    /// Also collect stacks of process starts.
    #[arg(long)]
    pub process_start_stacks: bool,
    /// Seconds between status lines on stderr.
    #[arg(long, default_value_t = 5)]
    pub status_seconds: u64,
    /// Which events carry the calls: syscalls (SysCallEnter with a stack
    /// walk, every system call), audit (Microsoft-Windows-Kernel-Audit-API-Calls
    /// with their stacks: NtOpenProcess, NtOpenThread, NtSetContextThread...,
    /// far fewer events; needs --session private) or both. See
    /// docs/audit-api.md.
    #[arg(long, value_enum, default_value = "syscalls")]
    pub source: SourceChoice,
}

/// `--source` of `live` and `record`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceChoice {
    Syscalls,
    Audit,
    Both,
}

impl SourceChoice {
    fn source(self) -> sentry_live::Source {
        match self {
            SourceChoice::Syscalls => sentry_live::Source::Syscalls,
            SourceChoice::Audit => sentry_live::Source::Audit,
            SourceChoice::Both => sentry_live::Source::Both,
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub session: SessionArgs,
    /// Size of the callback -> engine ring in MiB.
    #[arg(long, default_value_t = 32)]
    pub ring_mb: usize,
    /// How long events are held to put them back into time order (ETW
    /// delivers each processor's buffers when they are flushed); must exceed
    /// the flush interval (default: 4 flush intervals, 1000 ms; 4000 on
    /// Windows 7, whose flush is 1 s).
    #[arg(long, value_name = "MS")]
    pub reorder_lag_ms: Option<u64>,
    /// Memory for events held for reordering, in MiB; past it the oldest go
    /// on early (counted as "reorder overflow").
    #[arg(long, value_name = "MIB", default_value_t = 128)]
    pub reorder_mb: usize,
    /// Directory with ntdll.dll, win32u.dll, ntoskrnl.exe, win32k*.sys to use
    /// instead of this host's System32 and SysWOW64.
    #[arg(long, value_name = "DIR")]
    pub system_dlls: Option<PathBuf>,
    /// Do not read the bytes before new direct-syscall call sites from the
    /// live process (ReadProcessMemory).
    #[arg(long)]
    pub no_read_memory: bool,
    /// ECS `host.name` of the alerts (default: this machine's DNS host name).
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
    /// Do not read the loaded modules' files from disk. By default live
    /// reads a module's file (the path its Image event names) when rule 9
    /// needs its bytes or an alert or allowlist its SHA-256 or signer, and
    /// uses it only if its SizeOfImage and TimeDateStamp are the loaded
    /// module's (as `analyze --images` matches a copied directory).
    #[arg(long)]
    pub no_module_bytes: bool,
    /// Memory for module files kept parsed, in MiB; past it the least
    /// recently used is dropped (and read again when needed).
    #[arg(long, value_name = "MIB", default_value_t = 128)]
    pub module_cache_mb: usize,
    #[command(flatten)]
    pub report: ReportArgs,
}

/// The warning for allowlist entries live can never match.
#[cfg_attr(not(windows), allow(dead_code))]
pub fn live_allowlist_warning(a: &sentry_engine::Allowlist, module_bytes: bool) -> Option<String> {
    a.never_matching_warning(
        module_bytes,
        module_bytes,
        "`sha256` and `signer` entries need the module files (leave out --no-module-bytes)",
    )
}

#[derive(clap::Args)]
pub struct RecordArgs {
    /// The .etl file to write.
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,
    #[command(flatten)]
    pub session: SessionArgs,
}

#[derive(clap::Args)]
pub struct StopArgs {
    /// kernel: "NT Kernel Logger"; private: --session-name.
    #[arg(long, value_enum, default_value = "kernel")]
    pub session: SessionChoice,
    /// Name of the private session to stop.
    #[arg(long, default_value = "syscall-sentry")]
    pub session_name: String,
}

/// The session to control.
fn session_kind(choice: SessionChoice, name: &str) -> sentry_live::SessionKind {
    match choice {
        SessionChoice::Kernel => sentry_live::SessionKind::KernelLogger,
        SessionChoice::Private => sentry_live::SessionKind::Private {
            name: name.to_string(),
        },
    }
}

impl SessionArgs {
    /// The session for a host with `processors` logical processors running
    /// Windows `os` (major, minor; see [`sentry_live::Buffers::for_os`]).
    fn spec(
        &self,
        destination: sentry_live::Destination,
        processors: u32,
        os: (u32, u32),
    ) -> anyhow::Result<sentry_live::SessionSpec> {
        let kind = session_kind(self.session, &self.session_name);
        kind.check().map_err(|e| anyhow::anyhow!(e))?;
        let flush_ms = self.flush_ms.unwrap_or(match destination {
            sentry_live::Destination::RealTime => sentry_live::properties::DEFAULT_FLUSH_MS,
            sentry_live::Destination::File(_) => 0,
        });
        let mut buffers =
            sentry_live::Buffers::for_processors(processors, self.buffer_kb, flush_ms);
        if let Some(m) = self.min_buffers {
            buffers.minimum = m;
        }
        if let Some(m) = self.max_buffers {
            buffers.maximum = m;
        }
        buffers.maximum = buffers.maximum.max(buffers.minimum);
        let source = self.source.source();
        source.check(&kind).map_err(|e| anyhow::anyhow!(e))?;
        let buffers = buffers.for_os(os.0, os.1);
        Ok(sentry_live::SessionSpec {
            kind,
            destination,
            buffers,
            source,
        })
    }

    /// Kernel events with stack walks: SysCallEnter only for the syscall
    /// source (audit events carry their own stacks).
    fn stacks(&self) -> Vec<sentry_live::properties::ClassicEventId> {
        let mut v = sentry_live::properties::stack_events(
            self.image_load_stacks,
            self.process_start_stacks,
        );
        if !self.source.source().syscalls() {
            v.retain(|e| *e != sentry_live::properties::SYSCALL_ENTER);
        }
        v
    }

    fn duration(&self) -> anyhow::Result<Option<std::time::Duration>> {
        self.duration
            .map(|s| {
                anyhow::ensure!(s.is_finite() && s > 0.0, "--duration must be > 0 seconds");
                std::time::Duration::try_from_secs_f64(s)
                    .map_err(|_| anyhow::anyhow!("--duration {s}: too large"))
            })
            .transpose()
    }
}

#[cfg_attr(not(windows), allow(dead_code))]
/// The JSON line for a sensor alert (session stopped by another program).
pub fn session_alert_json(a: &sentry_live::supervisor::SessionAlert) -> serde_json::Value {
    serde_json::json!({
        "type": "sensor_alert",
        "kind": "session_stopped_externally",
        "session": a.session,
        "elapsed_s": a.elapsed_s,
        "restarted": a.restarted,
        "attempt": a.attempt,
        "message": a.to_string(),
    })
}

#[cfg_attr(not(windows), allow(dead_code))]
/// The JSON line for the bytes before a new direct-syscall call site.
pub fn evidence_json(
    pid: u32,
    call_site: &str,
    e: &sentry_live::evidence::CallSiteEvidence,
) -> serde_json::Value {
    use sentry_live::evidence::StubShape;
    let (shape, number) = match e.shape {
        StubShape::Minimal { service_number } => ("minimal-stub", Some(service_number)),
        StubShape::NtdllLike { service_number } => ("ntdll-like-stub", Some(service_number)),
        StubShape::SyscallOnly => ("syscall-only", None),
        StubShape::NotSyscall => ("not-syscall", None),
    };
    serde_json::json!({
        "type": "call_site_evidence",
        "pid": pid,
        "call_site": call_site,
        "return_address": format!("{:#x}", e.return_address),
        "bytes_before": e.hex(),
        "shape": shape,
        "service_number": number.map(|n| format!("{n:#x}")),
    })
}

// Elsewhere the options are still checked (same errors as on Windows), then
// the command refuses.
#[cfg(not(windows))]
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    args.session.duration()?;
    let spec = args
        .session
        .spec(sentry_live::Destination::RealTime, 1, OS_OFF_WINDOWS)?;
    reorder_lag(&args, &spec)?;
    host_name(args.host.as_deref(), || None)?;
    let _ = (args.session.stacks(), args.ring_mb, args.module_cache_mb);
    let _ = live_allowlist_warning(&args.report.allowlist()?, !args.no_module_bytes);
    anyhow::bail!(NEEDS_WINDOWS)
}

#[cfg(not(windows))]
pub fn record(args: RecordArgs) -> anyhow::Result<ExitCode> {
    args.session.duration()?;
    args.session.spec(
        sentry_live::Destination::File(String::new()),
        1,
        OS_OFF_WINDOWS,
    )?;
    let _ = (args.out, args.session.stacks());
    anyhow::bail!(NEEDS_WINDOWS)
}

/// The end-of-run warning when the run lost events (session `EventsLost` /
/// `RealTimeBuffersLost`, ring drops, reorder overflow or late events),
/// shown on stderr even with `-q`, as `analyze` does for a damaged trace.
/// `unresolved`: syscalls left without an alert because of it.
#[cfg_attr(not(windows), allow(dead_code))]
pub fn loss_warning(t: &sentry_live::LiveTotals, unresolved: u64) -> Option<String> {
    let parts: Vec<String> = [
        (
            t.events_lost,
            "events the session could not log (EventsLost)",
        ),
        (
            t.real_time_buffers_lost,
            "buffers not delivered (RealTimeBuffersLost)",
        ),
        (
            t.ring_drops,
            "events dropped at the callback (ring full: --ring-mb)",
        ),
        (
            t.reorder_overflow,
            "events let go unordered (reorder memory full: --reorder-mb)",
        ),
        (
            t.reorder_late,
            "events later than the reorder lag (--reorder-lag-ms)",
        ),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    if parts.is_empty() {
        return None;
    }
    Some(format!(
        "events were lost: {} (flooding ETW is also a way to hide): syscalls and state may be \
         missing, alerts carry \"trace_incomplete\", {unresolved} syscalls left unresolved",
        parts.join(", ")
    ))
}

/// ECS `host.name`: `--host` if given (not empty), else the machine's name
/// (`None` when it cannot be read: the field is then left out).
fn host_name(
    arg: Option<&str>,
    machine: impl FnOnce() -> Option<String>,
) -> anyhow::Result<Option<String>> {
    match arg {
        Some(h) if h.trim().is_empty() => anyhow::bail!("--host: empty name"),
        Some(h) => Ok(Some(h.to_string())),
        None => Ok(machine().filter(|m| !m.trim().is_empty())),
    }
}

/// The reordering lag, checked against the session's flush interval.
fn reorder_lag(args: &Args, spec: &sentry_live::SessionSpec) -> anyhow::Result<u64> {
    let flush = spec.buffers.flush_ms;
    let lag = args
        .reorder_lag_ms
        .unwrap_or_else(|| sentry_live::reorder::default_lag_ms(flush));
    if flush == 0 || lag <= u64::from(flush) {
        let whole = if spec.buffers.ms_flush_timer {
            ""
        } else {
            ", in whole seconds on this Windows version"
        };
        anyhow::bail!(
            "--reorder-lag-ms {lag} must exceed the flush interval ({flush} ms{whole}): a quiet \
             processor's events arrive up to one flush interval late"
        );
    }
    Ok(lag)
}

/// Windows 10 for the checks off Windows.
#[cfg(not(windows))]
const OS_OFF_WINDOWS: (u32, u32) = (10, 0);

#[cfg(not(windows))]
pub fn stop(args: StopArgs) -> anyhow::Result<ExitCode> {
    let _ = session_kind(args.session, &args.session_name);
    anyhow::bail!(NEEDS_WINDOWS)
}

#[cfg(windows)]
pub use windows_impl::{record, run, stop};

#[cfg(windows)]
mod windows_impl {
    use std::cell::RefCell;
    use std::collections::HashSet;
    use std::io::Write;
    use std::process::ExitCode;
    use std::rc::Rc;
    use std::sync::Arc;
    use std::time::Instant;

    use anyhow::{bail, Context};
    use sentry_engine::report::{self, Filter, Report, ReportConfig};
    use sentry_engine::{
        Engine, EngineConfig, Learning, SyscallVerdict, SystemDlls, Verdict, VerdictSink,
    };
    use sentry_images::disk::{DeviceMap, DiskFiles, Signature, SignatureCheck};
    use sentry_images::Images;
    use sentry_live::evidence::{CallSiteEvidence, CALL_SITE_WINDOW};
    use sentry_live::supervisor::SessionAlert;
    use sentry_live::win::{self, LiveOptions, LiveSink, RecordOptions};
    use sentry_live::{Destination, LiveError, StatusLine};
    use sentry_raw::RawEvent;

    use super::{evidence_json, session_alert_json, session_kind, Args, RecordArgs, StopArgs};

    /// One output shared by the report and the live-only lines.
    #[derive(Clone)]
    struct SharedOut(Rc<RefCell<Box<dyn Write>>>);

    impl Write for SharedOut {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.borrow_mut().write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.0.borrow_mut().flush()
        }
    }

    impl SharedOut {
        fn line(&self, v: &serde_json::Value) {
            let mut w = self.0.borrow_mut();
            let _ = serde_json::to_writer(&mut *w, v);
            let _ = w.write_all(b"\n");
            let _ = w.flush();
        }
    }

    /// Most call sites whose bytes are read, per run.
    const MAX_EVIDENCE_SITES: usize = 4096;

    /// Report + call-site evidence.
    struct Verdicts {
        report: Report,
        out: SharedOut,
        read_memory: bool,
        seen_sites: HashSet<(u32, u64)>,
    }

    impl VerdictSink for Verdicts {
        fn verdict(&mut self, v: &SyscallVerdict<'_>) {
            self.report.verdict(v);
            if !self.read_memory || v.verdict != Verdict::Direct {
                return;
            }
            let (Some(pid), Some(u)) = (v.pid, v.first_user_frame()) else {
                return;
            };
            if self.seen_sites.len() >= MAX_EVIDENCE_SITES || !self.seen_sites.insert((pid, u)) {
                return;
            }
            let start = u.saturating_sub(CALL_SITE_WINDOW as u64);
            if let Some(bytes) = win::read_process_memory(pid, start, CALL_SITE_WINDOW) {
                let e = CallSiteEvidence::new(u, bytes);
                self.out
                    .line(&evidence_json(pid, &v.resolver.describe(u), &e));
            }
        }
    }

    struct Sink<'a> {
        engine: &'a mut Engine,
        verdicts: Verdicts,
        quiet: bool,
    }

    impl LiveSink for Sink<'_> {
        fn event(&mut self, ev: &RawEvent<'_>) {
            self.engine.process(ev, &mut self.verdicts);
        }
        fn session_alert(&mut self, a: &SessionAlert) {
            eprintln!("syscall-sentry: ALERT: {a}");
            self.verdicts.out.line(&session_alert_json(a));
        }
        fn status(&mut self, line: &StatusLine) {
            if !self.quiet {
                eprintln!("{line}");
            }
            let _ = self.verdicts.report.flush();
        }
        fn events_missing(&mut self, from: u64, to: u64, cause: &str) {
            // Alerts whose module map the gap may have changed become
            // `unresolved` (docs/verdicts.md); those that stand from now on
            // say the trace is incomplete.
            self.engine.note_events_missing(from, to, cause);
            self.verdicts.report.set_trace_incomplete(true);
        }
    }

    fn system_dlls(args: &Args) -> anyhow::Result<Option<Arc<SystemDlls>>> {
        if let Some(d) = &args.system_dlls {
            return Ok(Some(Arc::new(
                SystemDlls::load_dir(d).map_err(|e| anyhow::anyhow!("--system-dlls {e}"))?,
            )));
        }
        // This host's own DLLs: 64-bit (System32) and WoW64 (SysWOW64).
        let mut all = SystemDlls::default();
        for dir in [win::system_directory(), win::syswow64_directory()]
            .into_iter()
            .flatten()
        {
            match SystemDlls::load_dir(&dir) {
                Ok(s) => all.dlls.extend(s.dlls),
                Err(e) => eprintln!("syscall-sentry: warning: {e}"),
            }
        }
        Ok((!all.dlls.is_empty()).then(|| Arc::new(all)))
    }

    /// `WinVerifyTrust` for `sentry_images::disk`.
    struct WinSignatures;

    impl SignatureCheck for WinSignatures {
        fn check(&self, file: &std::fs::File, path: &std::path::Path) -> Signature {
            let a = win::authenticode(file, path);
            Signature {
                subject: a.subject,
                trusted: a.trusted,
                status: a.status,
            }
        }
    }

    /// The built-in allowlist, given the module files' signer lookup (a
    /// `chrome.exe`/`msedge.exe` whose file is not signed by its vendor, as
    /// this host verifies it, gets no built-in suppression).
    fn builtin_with_signer(
        args: &Args,
        images: Option<&Arc<Images>>,
    ) -> sentry_engine::BuiltinAllowlist {
        let mut b = args.report.builtin();
        if let Some(i) = images.filter(|_| b.enabled) {
            let i = Arc::clone(i);
            b.signer = Some(Arc::new(move |p: &str| i.disk()?.signer_of_path(p)));
        }
        b
    }

    /// This host's module files as rule 9's bytes and the hashes/signers
    /// of allowlists (none with --no-module-bytes).
    fn module_files(args: &Args) -> Option<Arc<Images>> {
        if args.no_module_bytes {
            return None;
        }
        let root =
            win::system_directory().and_then(|s| s.parent().map(|p| p.display().to_string()));
        let map = DeviceMap::new(win::dos_devices(), root);
        let signer: Arc<dyn SignatureCheck> = Arc::new(WinSignatures);
        Some(Arc::new(Images::from_disk(DiskFiles::new(
            map,
            args.module_cache_mb.max(1) << 20,
            Some(signer),
        ))))
    }

    fn explain(e: LiveError) -> anyhow::Error {
        anyhow::anyhow!("{e}")
    }

    pub fn run(args: Args) -> anyhow::Result<ExitCode> {
        let format = args.report.format()?;
        let allowlist = args.report.allowlist()?;
        let duration = args.session.duration()?;
        let processors = win::processor_count();
        let spec = args
            .session
            .spec(Destination::RealTime, processors, win::os_version())?;
        let lag_ms = super::reorder_lag(&args, &spec)?;
        let host = super::host_name(args.host.as_deref(), win::computer_name)?;
        let system_dlls = system_dlls(&args)?;
        let images = module_files(&args);
        if let Some(w) = super::live_allowlist_warning(&allowlist, images.is_some()) {
            eprintln!("syscall-sentry: warning: {w}");
        }
        if let (Some(i), false) = (&images, args.report.quiet) {
            if let Some(d) = i.disk() {
                let drives: Vec<String> = d
                    .device_map()
                    .drives()
                    .iter()
                    .map(|(l, dev)| format!("{l} = {dev}"))
                    .collect();
                eprintln!(
                    "syscall-sentry: module files read from disk (drives: {})",
                    drives.join(", ")
                );
            }
        }
        // An elevated token holds SeDebugPrivilege disabled; reading other
        // processes' memory and the kernel's module bases need it enabled.
        if let Err(code) = win::enable_debug_privilege() {
            if !args.report.quiet {
                eprintln!(
                    "syscall-sentry: warning: SeDebugPrivilege could not be enabled (Win32 \
                     error {code}): kernel module bases and other users' call-site bytes may be \
                     unreadable"
                );
            }
        }
        let modules = win::kernel_modules();
        if !args.report.quiet {
            let visible = modules.iter().filter(|(b, _)| *b != 0).count();
            eprintln!(
                "syscall-sentry: {} system DLLs/kernel images loaded for names; {} kernel modules, {} with visible bases",
                system_dlls.as_ref().map_or(0, |s| s.dlls.len()),
                modules.len(),
                visible
            );
        }
        let out = args.report.alert_writer()?;
        let shared = SharedOut(Rc::new(RefCell::new(out)));
        let mut engine = Engine::new(EngineConfig {
            // Longer than the reordering lag, so a late stack still pairs.
            window_ms: sentry_live::reorder::live_window_ms(args.report.window_ms, lag_ms),
            max_pending: args.report.max_pending,
            learning: Learning::Online,
            system_dlls,
            allowlist,
            images: images.clone(),
            builtin: builtin_with_signer(&args, images.as_ref()),
            ..EngineConfig::default()
        });
        let clock = win::clock_now();
        if let Some(c) = clock {
            engine.set_clock(c);
        }
        let mut report = Report::new(
            ReportConfig {
                format,
                per_syscall: args.report.per_syscall,
                filter: Filter {
                    pid: args.report.pid,
                    process: args.report.process.clone(),
                    since: None,
                    until: None,
                },
                immediate: true,
                host,
                ..ReportConfig::default()
            },
            Box::new(shared.clone()),
        );
        report.set_clock(clock);
        // Raw timestamps are QPC ticks (ClientContext 1).
        let ticks_per_second = clock.map_or(10_000_000, |c| c.ticks_per_second);
        let opts = LiveOptions {
            spec,
            stacks: args.session.stacks(),
            force: args.session.force,
            duration,
            status_every: std::time::Duration::from_secs(args.session.status_seconds.max(1)),
            ring_bytes: args.ring_mb.max(1) << 20,
            reorder: sentry_live::ReorderConfig::new(
                lag_ms,
                ticks_per_second,
                args.reorder_mb.max(1) << 20,
                processors as usize,
            ),
            idle_release: std::time::Duration::from_millis(lag_ms),
        };
        let started = Instant::now();
        let mut sink = Sink {
            engine: &mut engine,
            verdicts: Verdicts {
                report,
                out: shared.clone(),
                read_memory: !args.no_read_memory,
                seen_sites: HashSet::new(),
            },
            quiet: args.report.quiet,
        };
        if !args.report.quiet {
            eprintln!(
                "syscall-sentry: live on \"{}\" (Ctrl-C to stop)",
                opts.spec.kind.name()
            );
        }
        let result = win::run_live(&opts, &mut sink);
        if let Err(e) = &result {
            if sink.engine.stats().events == 0 {
                // Nothing ran (not elevated, session exists, ...): just say why.
                win::outputs_flushed();
                return Err(anyhow::anyhow!("{e}"));
            }
        }
        let mut verdicts = sink.verdicts;
        // Flush whatever happened: pending syscalls, alerts, statistics.
        let stats = engine.finish(&mut verdicts);
        verdicts.report.finish(&engine).context("writing output")?;
        let alerts = verdicts.report.alert_count();
        // Always shown, even with --quiet: a run that lost events is not
        // "clean" when it found nothing.
        let loss = result
            .as_ref()
            .ok()
            .and_then(|o| super::loss_warning(&o.totals, stats.verdicts.unresolved));
        if let Some(w) = &loss {
            eprintln!("syscall-sentry: warning: {w}");
        }
        if !args.report.quiet {
            let mut t = verdicts.report.summary_table();
            t.push_str(&report::stats_text(
                &stats,
                started.elapsed().as_secs_f64(),
                alerts,
            ));
            if let Ok(o) = &result {
                let l = &o.totals;
                t.push_str(&format!(
                    "live: {} events, ring drops {}, ETW EventsLost {}, RealTimeBuffersLost {}, reorder late {}, reorder overflow {}, stopped externally {}x, restarts {}, stop: {:?}\n",
                    l.events,
                    l.ring_drops,
                    l.events_lost,
                    l.real_time_buffers_lost,
                    l.reorder_late,
                    l.reorder_overflow,
                    l.external_stops,
                    l.restarts,
                    o.stop_reason
                ));
            }
            if let Some(d) = images.as_ref().and_then(|i| i.disk()) {
                t.push_str(&d.summary());
                t.push('\n');
                for (path, sig) in d.signatures() {
                    t.push_str(&format!(
                        "signature: {path}: {} ({})\n",
                        sig.subject.as_deref().unwrap_or("no signer"),
                        sig.status
                    ));
                }
            }
            match &args.report.summary {
                Some(p) => std::fs::write(p, t).with_context(|| format!("{}", p.display()))?,
                None => eprint!("{t}"),
            }
        }
        shared.0.borrow_mut().flush()?;
        win::outputs_flushed();
        result.map_err(explain)?;
        Ok(crate::exit::of(alerts > 0, loss.is_some()))
    }

    pub fn record(args: RecordArgs) -> anyhow::Result<ExitCode> {
        let path =
            std::path::absolute(&args.out).with_context(|| format!("{}", args.out.display()))?;
        let opts = RecordOptions {
            spec: args.session.spec(
                Destination::File(path.to_string_lossy().into_owned()),
                win::processor_count(),
                win::os_version(),
            )?,
            stacks: args.session.stacks(),
            force: args.session.force,
            duration: args.session.duration()?,
            status_every: std::time::Duration::from_secs(args.session.status_seconds.max(1)),
        };
        eprintln!(
            "syscall-sentry: recording \"{}\" into {} (Ctrl-C to stop)",
            opts.spec.kind.name(),
            path.display()
        );
        let o = win::record(&opts, &mut |line| eprintln!("{line}")).map_err(explain)?;
        let c = &o.counters;
        eprintln!(
            "syscall-sentry: {} after {:.1} s: {} buffers written, EventsLost {}, buffers lost {}",
            path.display(),
            o.elapsed_s,
            c.buffers_written,
            c.events_lost,
            c.log_buffers_lost
        );
        win::outputs_flushed();
        if o.stop_reason.is_none() {
            bail!(
                "the session \"{}\" was stopped by another program; {} holds what was recorded until then",
                opts.spec.kind.name(),
                path.display()
            );
        }
        Ok(ExitCode::SUCCESS)
    }

    pub fn stop(args: StopArgs) -> anyhow::Result<ExitCode> {
        let kind = session_kind(args.session, &args.session_name);
        let c = win::stop_session(kind.name()).map_err(explain)?;
        eprintln!(
            "syscall-sentry: stopped \"{}\" (EventsLost {}, buffers written {})",
            kind.name(),
            c.events_lost,
            c.buffers_written
        );
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(subcommand)]
        c: C,
    }

    #[derive(clap::Subcommand)]
    enum C {
        Live(Box<Args>),
        Record(RecordArgs),
        Stop(StopArgs),
    }

    #[test]
    fn options_build_the_documented_session() {
        let t = T::try_parse_from(["x", "live", "--duration", "5", "--image-load-stacks"]).unwrap();
        let C::Live(a) = t.c else { panic!() };
        let spec = a
            .session
            .spec(sentry_live::Destination::RealTime, 8, (10, 0))
            .unwrap();
        assert_eq!(spec.kind, sentry_live::SessionKind::KernelLogger);
        assert_eq!(spec.buffers, sentry_live::Buffers::default());
        assert_eq!(spec.buffers.flush_ms, 250);
        assert_eq!(reorder_lag(&a, &spec).unwrap(), 1000);
        let spec32 = a
            .session
            .spec(sentry_live::Destination::RealTime, 32, (10, 0))
            .unwrap();
        assert_eq!(spec32.buffers.minimum, 64, "2 per processor");
        assert_eq!(a.session.stacks().len(), 2);
        assert_eq!(
            a.session.duration().unwrap(),
            Some(std::time::Duration::from_secs(5))
        );

        let t = T::try_parse_from([
            "x",
            "record",
            "-o",
            "t.etl",
            "--session",
            "private",
            "--session-name",
            "mine",
            "--buffer-kb",
            "256",
        ])
        .unwrap();
        let C::Record(r) = t.c else { panic!() };
        let spec = r
            .session
            .spec(sentry_live::Destination::File("t.etl".into()), 4, (10, 0))
            .unwrap();
        assert_eq!(spec.kind.name(), "mine");
        assert_eq!(spec.buffers.buffer_kb, 256);
        assert_eq!(spec.buffers.flush_ms, 0, "record: no flush timer");
        assert_eq!(spec.log_file_mode(), 0x0200_0001);

        // A lag not longer than the flush interval is refused.
        let t = T::try_parse_from([
            "x",
            "live",
            "--flush-ms",
            "1000",
            "--reorder-lag-ms",
            "1000",
        ])
        .unwrap();
        let C::Live(a) = t.c else { panic!() };
        let spec = a
            .session
            .spec(sentry_live::Destination::RealTime, 2, (10, 0))
            .unwrap();
        assert!(reorder_lag(&a, &spec)
            .unwrap_err()
            .to_string()
            .contains("must exceed"));
        // Session names over ETW's limit are refused before any call.
        let long = "n".repeat(1024);
        let t = T::try_parse_from(["x", "live", "--session", "private", "--session-name", &long])
            .unwrap();
        let C::Live(a) = t.c else { panic!() };
        let e = a
            .session
            .spec(sentry_live::Destination::RealTime, 2, (10, 0))
            .unwrap_err();
        assert!(e.to_string().contains("limited to 1023"), "{e}");

        assert!(T::try_parse_from(["x", "live", "--duration", "1e300"])
            .unwrap()
            .c
            .live_duration_err());
        assert!(T::try_parse_from(["x", "live", "--duration", "0"])
            .unwrap()
            .c
            .live_duration_err());
        let t = T::try_parse_from(["x", "stop"]).unwrap();
        assert!(matches!(t.c, C::Stop(_)));
    }

    impl C {
        fn live_duration_err(&self) -> bool {
            matches!(self, C::Live(a) if a.session.duration().is_err())
        }
    }

    #[test]
    fn windows_7_gets_a_1_s_flush_and_a_longer_lag() {
        let t = T::try_parse_from(["x", "live"]).unwrap();
        let C::Live(a) = t.c else { panic!() };
        let win7 = a
            .session
            .spec(sentry_live::Destination::RealTime, 4, (6, 1))
            .unwrap();
        assert_eq!(win7.buffers.flush_ms, 1000);
        assert_eq!(win7.log_file_mode() & 0x10, 0, "no ms flush timer flag");
        assert_eq!(reorder_lag(&a, &win7).unwrap(), 4000, "4 flush intervals");
        let win10 = a
            .session
            .spec(sentry_live::Destination::RealTime, 4, (10, 0))
            .unwrap();
        assert_eq!(reorder_lag(&a, &win10).unwrap(), 1000);
        // A lag given for a 250 ms flush is too short for Windows 7's 1 s.
        let t = T::try_parse_from(["x", "live", "--reorder-lag-ms", "800"]).unwrap();
        let C::Live(a) = t.c else { panic!() };
        assert_eq!(reorder_lag(&a, &win10).unwrap(), 800);
        let e = reorder_lag(&a, &win7).unwrap_err().to_string();
        assert!(
            e.contains("must exceed") && e.contains("whole seconds"),
            "{e}"
        );
    }

    #[test]
    fn loss_is_named_in_the_warning() {
        let mut t = sentry_live::LiveTotals::default();
        assert_eq!(loss_warning(&t, 0), None, "no loss, no warning");
        t.events = 1000;
        t.external_stops = 1;
        assert_eq!(loss_warning(&t, 0), None, "an outside stop is not loss");
        t.events_lost = 7;
        t.reorder_late = 3;
        let w = loss_warning(&t, 2).unwrap();
        assert!(
            w.contains("7 events the session could not log (EventsLost)"),
            "{w}"
        );
        assert!(w.contains("3 events later than the reorder lag"), "{w}");
        assert!(
            w.contains("trace_incomplete") && w.contains("2 syscalls left unresolved"),
            "{w}"
        );
        assert!(!w.contains("ring"), "{w}");
        for f in [
            |t: &mut sentry_live::LiveTotals| t.real_time_buffers_lost = 1,
            |t: &mut sentry_live::LiveTotals| t.ring_drops = 1,
            |t: &mut sentry_live::LiveTotals| t.reorder_overflow = 1,
        ] {
            let mut t = sentry_live::LiveTotals::default();
            f(&mut t);
            assert!(loss_warning(&t, 0).is_some());
        }
    }

    #[test]
    fn every_option_has_help_text() {
        use clap::CommandFactory;
        let mut missing = Vec::new();
        for sub in T::command().get_subcommands() {
            for a in sub.get_arguments() {
                if a.get_help().is_none() && a.get_id() != "help" {
                    missing.push(format!("{} --{}", sub.get_name(), a.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "options without help: {missing:?}");
    }

    #[test]
    fn host_name_is_the_override_or_the_machine() {
        let t = T::try_parse_from(["x", "live", "--host", "ws-17"]).unwrap();
        let C::Live(a) = t.c else { panic!() };
        assert_eq!(
            host_name(a.host.as_deref(), || Some("machine".into())).unwrap(),
            Some("ws-17".into())
        );
        assert_eq!(
            host_name(None, || Some("machine".into())).unwrap(),
            Some("machine".into())
        );
        assert_eq!(host_name(None, || None).unwrap(), None);
        assert_eq!(host_name(None, || Some(" ".into())).unwrap(), None);
        assert!(host_name(Some(""), || None)
            .unwrap_err()
            .to_string()
            .contains("empty"));
    }

    #[test]
    fn json_lines_for_live_only_facts() {
        let a = sentry_live::supervisor::SessionAlert {
            session: "NT Kernel Logger".into(),
            elapsed_s: 12,
            attempt: 1,
            restarted: true,
        };
        let v = session_alert_json(&a);
        assert_eq!(v["type"], "sensor_alert");
        assert_eq!(v["restarted"], true);
        let e = sentry_live::evidence::CallSiteEvidence::new(
            0x1000,
            vec![0x4c, 0x8b, 0xd1, 0xb8, 0x18, 0, 0, 0, 0x0f, 0x05],
        );
        let v = evidence_json(42, "0x1000", &e);
        assert_eq!(v["shape"], "minimal-stub");
        assert_eq!(v["service_number"], "0x18");
        assert_eq!(v["bytes_before"], "4c 8b d1 b8 18 00 00 00 0f 05");
    }

    #[cfg(not(windows))]
    #[test]
    fn non_windows_says_how_to_proceed() {
        let t = T::try_parse_from(["x", "stop"]).unwrap();
        let C::Stop(s) = t.c else { panic!() };
        let e = stop(s).unwrap_err().to_string();
        assert_eq!(e, NEEDS_WINDOWS);
        assert!(e.contains("live needs Windows"));
    }
}
