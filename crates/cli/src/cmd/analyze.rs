//! `syscall-sentry analyze`: runs the engine over `.etl` files.
//!
//! One pass per file in time order: the engine learns each syscall return
//! site's service over the whole file (docs/verdicts.md, "Service
//! identity") while it classifies, and the rule-5 decisions that need it
//! are settled at the end ([`Learning::Deferred`]). `--per-syscall` prints
//! each verdict as it comes, so it runs two passes instead: the first
//! learns, the second classifies. Both give the same verdicts.
//!
//! A damaged file (unreadable or missing buffers) is read again with the
//! places where events may be missing known from the start, so that no
//! alert rests on state the engine could not see (docs/verdicts.md, "What
//! the engine could not see"); damage is reported on stderr in every mode.
//! Exit codes: [`crate::exit`].

use std::fs::File;
use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use sentry_engine::report::{self, Filter, Format, Report, ReportConfig};
use sentry_engine::{
    Allowlist, Engine, EngineConfig, EngineStats, Images, Learning, NullSink, ServiceTable,
    SystemDlls, VerdictSink,
};
use sentry_etl::damage::Gap;
use sentry_etl::{Diagnostics, EtlFile, Order};
use sentry_raw::{Clock, KernelClass};

use super::progress::Progress;
use super::report_args::ReportArgs;
use crate::exit;

#[derive(clap::Args)]
pub struct Args {
    /// .etl files, each analysed on its own (`-`: standard input, spooled to
    /// a temporary file first).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Directory with ntdll.dll, win32u.dll, ntoskrnl.exe, win32k.sys of the
    /// traced machine: exact return sites and stub/service names.
    #[arg(long, value_name = "DIR")]
    pub system_dlls: Option<PathBuf>,
    /// A copy of the traced machine's binaries (its System32, SysWOW64, ...;
    /// sub-folders are searched): each module is matched by file name, image
    /// size and PE timestamp, and every return address past the stub is
    /// checked for a `call` right before it (rule 9). Without it that check
    /// is not done (never passed).
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Also write the engine statistics and the damage found in each file
    /// as JSON lines here.
    #[arg(long, value_name = "FILE")]
    pub stats_json: Option<PathBuf>,
    /// From this time: RFC 3339 (UTC or offset) or seconds from the trace start.
    #[arg(long)]
    pub since: Option<String>,
    /// Until this time: RFC 3339 or seconds from the trace start.
    #[arg(long)]
    pub until: Option<String>,
    /// Memory for the first stacks of syscalls whose verdict waits for the
    /// end of the file (MiB). Past it the oldest are dropped and, if any
    /// turns out to be an alert, found again by a second pass.
    #[arg(long, value_name = "MIB", default_value_t = 64.0)]
    pub evidence_budget: f64,
    /// ECS `host.name` of the traced machine (the trace does not name it).
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
    /// Rows of the per-process table: alerting processes always, then the
    /// busiest others up to this many (0: all).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub summary_rows: usize,
    #[command(flatten)]
    pub report: ReportArgs,
}

/// Reader errors printed on stderr per file (all are counted; the first
/// ones kept by the reader go to `--stats-json`).
const ERRORS_SHOWN: usize = 5;

/// What one file's analysis found.
#[derive(Debug, Default, Clone, Copy)]
struct FileResult {
    alerts: usize,
    /// Damaged or incomplete input, or nothing the trace could show.
    incomplete: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let format = args.report.format()?;
    args.report.validate()?;
    if args.host.as_deref().is_some_and(|h| h.trim().is_empty()) {
        bail!("--host: empty name");
    }
    if !(args.evidence_budget.is_finite() && args.evidence_budget > 0.0) {
        bail!(
            "--evidence-budget {}: give a positive number of MiB (the default is 64)",
            args.evidence_budget
        );
    }
    let system_dlls = match &args.system_dlls {
        Some(d) => Some(Arc::new(
            SystemDlls::load_dir(d).map_err(|e| anyhow::anyhow!("--system-dlls {e}"))?,
        )),
        None => None,
    };
    let images = match &args.images {
        Some(d) => {
            let i = Images::load_dir(d).map_err(|e| anyhow::anyhow!("--images {e}"))?;
            if !i.skipped.is_empty() && !args.report.quiet {
                eprintln!(
                    "warning: --images: {} file(s) skipped (first: {}: {})",
                    i.skipped.len(),
                    i.skipped[0].0.display(),
                    i.skipped[0].1
                );
            }
            Some(Arc::new(i))
        }
        None => None,
    };
    let allowlist = args.report.allowlist()?;
    // Shown even with -q: an entry the user relies on that cannot match.
    if let Some(w) = allowlist.never_matching_warning(
        images.is_some(),
        false,
        "`signer` entries match only in `live` (the module file's signature is verified on the host; a trace has no file to verify), `sha256` entries need --images",
    ) {
        eprintln!("warning: {w}");
    }
    let mut out = args.report.alert_writer()?;
    let mut summary_out: Option<Box<dyn Write>> = if args.report.quiet {
        None
    } else {
        Some(match &args.report.summary {
            Some(p) => {
                Box::new(File::create(p).with_context(|| format!("--summary {}", p.display()))?)
            }
            None => Box::new(std::io::stderr()),
        })
    };
    let mut stats_out = match &args.stats_json {
        Some(p) => Some(File::create(p).with_context(|| format!("--stats-json {}", p.display()))?),
        None => None,
    };
    let (mut alerts, mut incomplete, mut failed) = (0usize, false, 0usize);
    for path in &args.files {
        let input = match Input::open(path) {
            Ok(i) => i,
            Err(e) => {
                failed += 1;
                file_failed(path, &e, stats_out.as_mut())?;
                continue;
            }
        };
        let prepared = match prepare(&input, &args) {
            Ok(p) => p,
            Err(e) => {
                failed += 1;
                file_failed(path, &e, stats_out.as_mut())?;
                continue;
            }
        };
        let (o, r) = analyze_file(
            path,
            prepared,
            &args,
            format,
            system_dlls.clone(),
            images.clone(),
            allowlist.clone(),
            out,
            Side {
                summary: summary_out.as_mut(),
                stats_json: stats_out.as_mut(),
            },
        )?;
        out = o;
        alerts += r.alerts;
        incomplete |= r.incomplete;
    }
    out.flush().context("writing alerts")?;
    if failed == args.files.len() {
        bail!(
            "no file could be analysed ({} given; the errors are above)",
            args.files.len()
        );
    }
    Ok(exit::of(alerts > 0, incomplete || failed > 0))
}

/// One file that could not be analysed: said on stderr (always) and in
/// `--stats-json`; the other files are still analysed.
fn file_failed(path: &Path, e: &anyhow::Error, stats: Option<&mut File>) -> anyhow::Result<()> {
    eprintln!("syscall-sentry: error: {}: {e:#}", path.display());
    if let Some(f) = stats {
        let v = serde_json::json!({"file": path.display().to_string(), "error": format!("{e:#}")});
        writeln!(f, "{v}").context("--stats-json")?;
    }
    Ok(())
}

/// An input file: the path given, or standard input / a pipe spooled to a
/// temporary file (the reader needs to seek: it reads each processor's
/// buffers in time order), removed when dropped.
struct Input {
    path: PathBuf,
    spooled: bool,
}

impl Input {
    fn open(path: &Path) -> anyhow::Result<Input> {
        let stdin = path.as_os_str() == "-";
        if !stdin {
            let meta = std::fs::metadata(path).with_context(|| "cannot read it".to_string())?;
            if meta.is_file() {
                return Ok(Input {
                    path: path.to_path_buf(),
                    spooled: false,
                });
            }
            if meta.is_dir() {
                bail!("is a directory, not an .etl file");
            }
        }
        // A pipe, FIFO or device: copy it to a temporary file first.
        let tmp = spool_path();
        let mut dst = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .with_context(|| format!("cannot create {} to spool the input", tmp.display()))?;
        let copied = if stdin {
            std::io::copy(&mut std::io::stdin().lock(), &mut dst)
        } else {
            let mut src = File::open(path).context("cannot read it")?;
            std::io::copy(&mut src as &mut dyn Read, &mut dst)
        };
        let input = Input {
            path: tmp,
            spooled: true,
        };
        copied.with_context(|| {
            format!(
                "spooling the non-seekable input to {} (set TMPDIR to a place with room)",
                input.path.display()
            )
        })?;
        Ok(input)
    }
}

impl Drop for Input {
    fn drop(&mut self) {
        if self.spooled {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn spool_path() -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "syscall-sentry-input-{}-{}.etl",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Kernel events the engine ignores, stepped over by the reader: PerfInfo
/// SysCallExit (no address, pairs with nothing) is a third of a syscall
/// trace. Every pass skips the same, so passes see the same events.
const UNUSED_EVENTS: &[(u8, u8)] = &[(KernelClass::GROUP_PERFINFO, 52)];

/// What a pass gives back besides the engine.
struct Pass {
    engine: Engine,
    stats: EngineStats,
    diag: Diagnostics,
    /// Where events may be missing, as the reader found.
    gaps: Vec<Gap>,
}

/// One pass over `file` in time order (without [`UNUSED_EVENTS`]): a new
/// engine with `cfg`, the file's clock and the `gaps` known beforehand,
/// every event into `sink`, then finished. `progress`: the bar and the
/// bytes earlier passes covered.
fn run_pass(
    file: &EtlFile,
    cfg: EngineConfig,
    gaps: &[Gap],
    sink: &mut dyn VerdictSink,
    progress: Option<(&Progress, u64)>,
) -> Pass {
    let clock = file.clock();
    let mut engine = Engine::new(cfg);
    engine.set_header(file.header().clone(), clock.sync_raw);
    engine.set_clock(clock);
    for g in gaps {
        engine.note_events_missing(g.from, g.to, g.cause.as_str());
    }
    let mut reader = file.events_skipping(Order::Time, UNUSED_EVENTS);
    let mut n = 0u64;
    reader.for_each(|ev| {
        engine.process(ev, sink);
        n += 1;
        if n & 0xFFFF == 0 {
            if let Some((bar, done)) = progress {
                bar.set(done + ev.offset);
            }
        }
        ControlFlow::Continue(())
    });
    let (diag, found) = reader.into_diagnostics_and_gaps();
    let stats = engine.finish(sink);
    Pass {
        engine,
        stats,
        diag,
        gaps: found,
    }
}

/// Where the summary and the statistics go.
struct Side<'a> {
    summary: Option<&'a mut Box<dyn Write>>,
    stats_json: Option<&'a mut File>,
}

/// A file opened, with its filter: what can fail before any output.
struct Prepared {
    file: EtlFile,
    filter: Filter,
}

fn prepare(input: &Input, args: &Args) -> anyhow::Result<Prepared> {
    let file = EtlFile::open(&input.path).map_err(|e| {
        let mut m = e.to_string();
        if input.spooled {
            m.push_str(" (read from a pipe: is it a whole .etl file?)");
        }
        anyhow::anyhow!(m)
    })?;
    let clock = file.clock();
    let filter = Filter {
        pid: args.report.pid,
        process: args.report.process.clone(),
        since: args
            .since
            .as_deref()
            .map(|s| parse_time(s, &clock))
            .transpose()
            .context("--since")?,
        until: args
            .until
            .as_deref()
            .map(|s| parse_time(s, &clock))
            .transpose()
            .context("--until")?,
    };
    if let (Some(a), Some(b)) = (filter.since, filter.until) {
        if a > b {
            bail!(
                "--since {} is later than --until {}: nothing could match",
                args.since.as_deref().unwrap_or(""),
                args.until.as_deref().unwrap_or("")
            );
        }
    }
    Ok(Prepared { file, filter })
}

/// Runs the passes over one file; returns the output and what was found.
#[allow(clippy::too_many_arguments)]
fn analyze_file(
    path: &Path,
    prepared: Prepared,
    args: &Args,
    format: Format,
    system_dlls: Option<Arc<SystemDlls>>,
    images: Option<Arc<Images>>,
    allowlist: Allowlist,
    mut out: Box<dyn Write>,
    side: Side<'_>,
) -> anyhow::Result<(Box<dyn Write>, FileResult)> {
    let Side {
        summary,
        stats_json,
    } = side;
    let Prepared { file, filter } = prepared;
    let clock = file.clock();
    let name = path.display().to_string();
    // --per-syscall prints each verdict when it is decided: it needs the
    // learned services before classifying, hence a learning pass first.
    let two_pass = args.report.per_syscall;
    let passes: u64 = if two_pass { 2 } else { 1 };
    let progress = Progress::new(file.len() * passes, args.report.quiet);
    let started = Instant::now();
    let base = EngineConfig {
        window_ms: args.report.window_ms,
        max_pending: args.report.max_pending,
        system_dlls,
        images,
        builtin: args.report.builtin(),
        ..EngineConfig::default()
    };

    let mut services = ServiceTable::new();
    let mut gaps: Vec<Gap> = Vec::new();
    let mut extra_passes = 0u64;
    if two_pass {
        // Learn the service of each return site (and find the damage).
        let cfg = EngineConfig {
            learning: Learning::Only,
            ..base.clone()
        };
        let learned = run_pass(&file, cfg, &[], &mut NullSink, Some((&progress, 0)));
        gaps = learned.gaps;
        services = learned.engine.into_services();
    }

    // Classify (and, in one pass, learn).
    let cfg = EngineConfig {
        learning: if two_pass {
            Learning::Fixed
        } else {
            Learning::Deferred
        },
        services,
        allowlist: allowlist.clone(),
        ..base.clone()
    };
    let report_cfg = ReportConfig {
        format,
        per_syscall: args.report.per_syscall,
        filter,
        evidence_budget: evidence_budget_bytes(args.evidence_budget),
        file: Some(name.clone()),
        host: args.host.clone(),
        summary_rows: args.summary_rows,
        ..ReportConfig::default()
    };
    let done = file.len() * (passes - 1);
    let (mut report, pass) = loop {
        let mut report = Report::new(report_cfg.clone(), out);
        report.set_clock(Some(clock));
        report.set_header(Some(file.header().clone()));
        let pass = run_pass(
            &file,
            cfg.clone(),
            &gaps,
            &mut report,
            Some((&progress, done)),
        );
        if !two_pass && gaps.is_empty() && !pass.gaps.is_empty() {
            // Damage found while reading: nothing was written yet (alerts
            // are written at the end), so read again with the gaps known
            // from the start, and no alert rests on what they may hide.
            gaps = pass.gaps;
            extra_passes += 1;
            out = report.into_output();
            continue;
        }
        break (report, pass);
    };
    let Pass {
        engine,
        stats,
        diag,
        gaps: _,
    } = pass;
    report.settle(&engine);
    let request = report.evidence_request();
    if !request.is_empty() {
        // Alerts whose first stack was dropped to keep memory within the
        // evidence budget: a second pass (deterministic, same settings)
        // finds exactly those stacks again.
        extra_passes += 1;
        let cfg = EngineConfig {
            learning: Learning::Deferred,
            allowlist,
            ..base
        };
        let mut recovery = Report::recovery(report_cfg, request);
        recovery.set_clock(Some(clock));
        let again = run_pass(&file, cfg, &gaps, &mut recovery, None);
        let lost = report.fill_evidence(recovery.take_recovered(&again.engine));
        if lost > 0 {
            eprintln!(
                "syscall-sentry: warning: {name}: the evidence of {lost} alerts could not be found again (the file changed?)",
            );
        }
    }
    report.finish(&engine).context("writing alerts")?;
    progress.finish();
    let wall = started.elapsed().as_secs_f64();
    let alerts = report.alert_count();
    let damage = Damage::of(&file, &diag, &gaps);
    if let Some(f) = stats_json {
        let mut v = serde_json::to_value(&stats)?;
        v["file"] = serde_json::json!(name);
        v["alerts"] = serde_json::json!(alerts);
        v["wall_seconds"] = serde_json::json!(wall);
        v["reader_errors"] = serde_json::json!(diag.error_count);
        v["reader_error_samples"] = serde_json::json!(diag
            .errors
            .iter()
            .map(|e| serde_json::json!({"offset": e.offset, "message": e.to_string()}))
            .collect::<Vec<_>>());
        v["skipped_buffers"] = serde_json::json!(diag.skipped_buffers);
        v["abandoned_buffer_tails"] = serde_json::json!(diag.abandoned_buffer_tails);
        v["buffers_found"] = serde_json::json!(file.diagnostics().buffers);
        v["buffers_written"] = serde_json::json!(file.header().buffers_written);
        v["damaged"] = serde_json::json!(damage.damaged());
        v["events_skipped_by_reader"] = serde_json::json!(diag.skipped_events);
        v["passes"] = serde_json::json!(passes + extra_passes);
        v["evidence_dropped"] = serde_json::json!(report.evidence_dropped());
        v["service_checks_settled_early"] = serde_json::json!(report.checks_settled_early());
        v["syscalls_reported"] = serde_json::json!(report.reported());
        writeln!(f, "{v}").context("--stats-json")?;
    }
    // Always shown, even with --quiet: "nothing found" must not be read as
    // "clean" when the trace could not have shown something.
    let mut warnings = Vec::new();
    warnings.extend(damage.warning(&clock, stats.first_timestamp));
    warnings.extend(loss_warning(&stats));
    warnings.extend(unresolved_warning(&stats));
    warnings.extend(coverage_warning(&stats));
    warnings.extend(filter_warning(args, &report, &stats));
    for w in &warnings {
        eprintln!("syscall-sentry: warning: {name}: {w}");
    }
    let incomplete = damage.damaged()
        || stats.trace_incomplete
        || stats.verdicts.unresolved > 0
        || coverage_warning(&stats).is_some()
        || filter_warning(args, &report, &stats).is_some();
    if let Some(w) = summary {
        let mut t = format!("== {name} ==\n");
        t.push_str(&report.summary_table());
        t.push_str(&report::stats_text(&stats, wall / passes as f64, alerts));
        t.push_str(&format!(
            "reader: {} buffers ({} compressed, {} skipped), {} records, {} SysCallExit events not read (the engine needs none), {} errors\n",
            diag.buffers,
            diag.compressed_buffers,
            diag.skipped_buffers,
            diag.records,
            diag.skipped_events,
            diag.error_count
        ));
        for (i, h) in engine.allowlist().hits.iter().enumerate() {
            if *h > 0 {
                let e = &engine.allowlist().entries[i];
                t.push_str(&format!(
                    "allowlist entry {} ({}{}) suppressed {h}\n",
                    i + 1,
                    e.process,
                    e.comment
                        .as_deref()
                        .map(|c| format!(": {c}"))
                        .unwrap_or_default()
                ));
            }
        }
        if report.checks_settled_early() > 0 {
            t.push_str(&format!(
                "syscalls reported as if their stub matched (open rule-5 groups at their cap): {}\n",
                report.checks_settled_early()
            ));
        }
        if report.alerts_dropped() > 0 {
            t.push_str(&format!(
                "alert keys dropped (dedup table full): {}\n",
                report.alerts_dropped()
            ));
        }
        w.write_all(t.as_bytes()).context("--summary")?;
        w.flush().context("--summary")?;
    }
    Ok((report.into_output(), FileResult { alerts, incomplete }))
}

/// Damage a file showed: reader errors, skipped or missing buffers, and
/// where events may therefore be missing.
struct Damage<'a> {
    diag: &'a Diagnostics,
    gaps: &'a [Gap],
    written: u64,
    found: u64,
}

impl<'a> Damage<'a> {
    fn of(file: &EtlFile, diag: &'a Diagnostics, gaps: &'a [Gap]) -> Damage<'a> {
        Damage {
            diag,
            gaps,
            written: u64::from(file.header().buffers_written),
            found: file.diagnostics().buffers,
        }
    }

    fn damaged(&self) -> bool {
        self.diag.error_count > 0 || self.diag.skipped_buffers > 0 || !self.gaps.is_empty()
    }

    /// The stderr lines: counts, the first errors with their offsets and
    /// "and N more", and from when events may be missing.
    fn warning(&self, clock: &Clock, first: Option<u64>) -> Option<String> {
        if !self.damaged() {
            return None;
        }
        let d = self.diag;
        let mut parts = Vec::new();
        if d.error_count > 0 {
            parts.push(format!("{} reader errors", d.error_count));
        }
        if d.skipped_buffers > 0 {
            parts.push(format!("{} buffers skipped", d.skipped_buffers));
        }
        if d.abandoned_buffer_tails > 0 {
            parts.push(format!(
                "{} buffer tails abandoned ({} bytes)",
                d.abandoned_buffer_tails, d.abandoned_bytes
            ));
        }
        if self.written > self.found {
            parts.push(format!(
                "{} of {} buffers missing (the logfile header counts {} written: cut or copied in part?)",
                self.written - self.found,
                self.written,
                self.written
            ));
        }
        if parts.is_empty() {
            parts.push("buffers the index could not place".into());
        }
        let mut w = format!("input damaged: {}", parts.join(", "));
        if let Some(from) = self.gaps.iter().map(|g| g.from).min() {
            let start = first.unwrap_or(clock.sync_raw).min(from);
            let secs = (from - start) as f64 / clock.ticks_per_second.max(1) as f64;
            w.push_str(&format!(
                "; events may be missing from {secs:.3} s into the trace to its end: alerts that would rest on them are `unresolved`"
            ));
        }
        for e in d.errors.iter().take(ERRORS_SHOWN) {
            w.push_str(&format!("\n  reader error: {e}"));
        }
        let more = d.error_count.saturating_sub(ERRORS_SHOWN as u64);
        if more > 0 {
            w.push_str(&format!(
                "\n  ... and {more} more reader errors (--stats-json lists the first {})",
                d.errors.len()
            ));
        }
        Some(w)
    }
}

/// The session's own loss counters (logfile header).
fn loss_warning(stats: &EngineStats) -> Option<String> {
    let (e, b) = (
        stats.events_lost.unwrap_or(0),
        stats.buffers_lost.unwrap_or(0),
    );
    if e == 0 && b == 0 {
        return None;
    }
    Some(format!(
        "the recording session could not log {e} events and {b} buffers (logfile header EventsLost/BuffersLost: \
         its buffers were full; flooding ETW is also a way to hide): syscalls and state may be missing, \
         alerts carry \"trace_incomplete\""
    ))
}

/// Syscalls left `unresolved`.
fn unresolved_warning(stats: &EngineStats) -> Option<String> {
    let n = stats.verdicts.unresolved;
    if n == 0 {
        return None;
    }
    let u = &stats.unresolved;
    Some(format!(
        "{n} syscalls unresolved, not alerted: their verdict would rest on state the trace does not show \
         (process_unknown {}, modules_incomplete {}, events_lost {}); --per-syscall lists them",
        u.process_unknown, u.modules_incomplete, u.events_lost
    ))
}

/// A filter that matched nothing, named.
fn filter_warning(args: &Args, report: &Report, stats: &EngineStats) -> Option<String> {
    if report.reported() > 0 || stats.syscalls == 0 {
        return None;
    }
    let mut f = Vec::new();
    if let Some(p) = args.report.pid {
        f.push(format!("--pid {p}"));
    }
    if let Some(p) = &args.report.process {
        f.push(format!("--process {p}"));
    }
    if let Some(s) = &args.since {
        f.push(format!("--since {s}"));
    }
    if let Some(s) = &args.until {
        f.push(format!("--until {s}"));
    }
    if f.is_empty() {
        return None;
    }
    Some(format!(
        "no syscall of the trace's {} matched {}: nothing was analysed, which is not a clean result",
        stats.syscalls,
        f.join(" ")
    ))
}

/// `--evidence-budget` MiB in bytes (at least one).
fn evidence_budget_bytes(mib: f64) -> usize {
    if mib.is_finite() && mib > 0.0 {
        ((mib * 1048576.0) as usize).max(1)
    } else {
        1
    }
}

/// Why a trace cannot (fully) show direct or indirect syscalls, if it cannot.
fn coverage_warning(stats: &sentry_engine::EngineStats) -> Option<String> {
    const HOW: &str = "record with `syscall-sentry record`, or `xperf -on \
                       PROC_THREAD+LOADER+SYSCALL -stackwalk SyscallEnter`";
    if stats.syscalls == 0 {
        return Some(format!(
            "no SysCallEnter events: this trace was recorded without the SYSCALL kernel flag, \
             so it cannot show hidden syscalls ({HOW}; or the Kernel-Audit-API-Calls \
             provider with its stacks: docs/audit-api.md)"
        ));
    }
    let with_stack = stats.syscalls - stats.verdicts.no_stack;
    if with_stack == 0 && stats.audit_events > 0 {
        return Some(format!(
            "none of the {} Kernel-Audit-API-Calls events has a stack: the provider was \
             enabled without EVENT_ENABLE_PROPERTY_STACK_TRACE, so no verdict is possible \
             (docs/audit-api.md)",
            stats.syscalls
        ));
    }
    if with_stack == 0 {
        return Some(format!(
            "none of the {} syscalls has a stack: stack walking on SysCallEnter was not \
             enabled, so no verdict is possible ({HOW})",
            stats.syscalls
        ));
    }
    None
}

/// Parses `--since/--until`: seconds from the trace start, or RFC 3339.
fn parse_time(s: &str, clock: &Clock) -> anyhow::Result<u64> {
    let tps = clock.ticks_per_second as f64;
    if let Ok(secs) = s.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            bail!("{s}: seconds must be >= 0");
        }
        return Ok(clock.sync_raw.saturating_add((secs * tps) as u64));
    }
    let ft = parse_rfc3339(s).with_context(|| format!("{s}: not seconds nor RFC 3339"))?;
    let delta =
        (ft - i128::from(clock.sync_filetime)) * i128::from(clock.ticks_per_second) / 10_000_000;
    Ok((i128::from(clock.sync_raw) + delta).clamp(0, i128::from(u64::MAX)) as u64)
}

/// RFC 3339 (`2024-05-01T12:00:00.5Z`, `...+02:00`) to FILETIME.
fn parse_rfc3339(s: &str) -> anyhow::Result<i128> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> anyhow::Result<i64> {
        let t = s.get(r).context("too short")?;
        anyhow::ensure!(t.bytes().all(|c| c.is_ascii_digit()), "bad digits");
        Ok(t.parse()?)
    };
    anyhow::ensure!(b.len() >= 20, "too short");
    anyhow::ensure!(
        b[4] == b'-'
            && b[7] == b'-'
            && (b[10] == b'T' || b[10] == b't' || b[10] == b' ')
            && b[13] == b':'
            && b[16] == b':',
        "layout"
    );
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    anyhow::ensure!(
        (1..=12).contains(&mo) && (1..=31).contains(&d) && h < 24 && mi < 60 && sec < 61,
        "range"
    );
    let mut i = 19;
    let mut frac_100ns: i64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &s[start..i];
        anyhow::ensure!(!digits.is_empty(), "empty fraction");
        let mut d7: String = digits.chars().take(7).collect();
        while d7.len() < 7 {
            d7.push('0');
        }
        frac_100ns = d7.parse()?;
    }
    let offset_min: i64 = match b.get(i) {
        Some(b'Z') | Some(b'z') if i + 1 == b.len() => 0,
        Some(&c) if (c == b'+' || c == b'-') && i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let m = oh * 60 + om;
            if c == b'+' {
                m
            } else {
                -m
            }
        }
        _ => bail!("missing Z or offset"),
    };
    let days = days_from_civil(y, mo as u32, d as u32);
    let unix = days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    Ok(i128::from(unix) * 10_000_000 + i128::from(frac_100ns) + 116_444_736_000_000_000)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_when_the_trace_cannot_show_syscalls() {
        let mut stats = sentry_engine::EngineStats::default();
        let w = coverage_warning(&stats).unwrap();
        assert!(w.contains("no SysCallEnter events"), "{w}");
        stats.syscalls = 5;
        stats.verdicts.no_stack = 5;
        let w = coverage_warning(&stats).unwrap();
        assert!(w.contains("none of the 5 syscalls has a stack"), "{w}");
        stats.verdicts.no_stack = 4;
        stats.verdicts.normal = 1;
        assert_eq!(coverage_warning(&stats), None);
        // Audit events without their stack item: the enable property is missing.
        stats.verdicts.no_stack = 5;
        stats.verdicts.normal = 0;
        stats.audit_events = 5;
        let w = coverage_warning(&stats).unwrap();
        assert!(w.contains("EVENT_ENABLE_PROPERTY_STACK_TRACE"), "{w}");
    }

    fn args(files: Vec<PathBuf>, out: PathBuf) -> Args {
        Args {
            files,
            system_dlls: None,
            images: None,
            since: None,
            until: None,
            evidence_budget: 64.0,
            summary_rows: 20,
            host: None,
            stats_json: None,
            report: ReportArgs {
                allowlist: None,
                no_builtin_allowlist: false,
                format: "json".into(),
                per_syscall: true,
                out: Some(out),
                summary: None,
                quiet: true,
                pid: None,
                process: None,
                window_ms: 500,
                max_pending: 1 << 16,
            },
        }
    }

    /// `synth` files in a temp dir, `analyze --per-syscall` through `run`,
    /// compared with the truth file: verdict, reason, pid, tid per syscall.
    #[test]
    fn analyze_reproduces_synth_truth_through_files() {
        use sentry_synth::{generate, Options, Scenario};
        let dir = std::env::temp_dir().join(format!("sentry-analyze-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for s in Scenario::ALL {
            let mut o = Options::new(s);
            o.seed = 1;
            o.syscalls = 1500;
            let etl = dir.join(format!("{}.etl", s.name()));
            let truth = dir.join(format!("{}.truth.json", s.name()));
            generate(
                &o,
                File::create(&etl).unwrap(),
                Some(File::create(&truth).unwrap()),
            )
            .unwrap();
            let out = dir.join(format!("{}.jsonl", s.name()));
            let code = run(args(vec![etl], out.clone())).unwrap();
            let truth: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&truth).unwrap()).unwrap();
            let mut got = std::collections::HashMap::new();
            for l in std::fs::read_to_string(&out).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                got.insert(v["timestamp"].as_u64().unwrap(), v);
            }
            let rows = truth["syscalls"].as_array().unwrap();
            assert_eq!(got.len(), rows.len(), "{}", s.name());
            let mut alerts = 0;
            for t in rows {
                let g = &got[&t["timestamp"].as_u64().unwrap()];
                // No `--images` here: the truth's answer without them.
                let w = t.get("without_images").unwrap_or(t);
                for k in ["verdict", "reason"] {
                    assert_eq!(g[k], w[k], "{} {k}: truth {t} engine {g}", s.name());
                }
                for k in ["pid", "tid"] {
                    assert_eq!(g[k], t[k], "{} {k}: truth {t} engine {g}", s.name());
                }
                let v = w["verdict"].as_str().unwrap();
                if v == "direct" || v == "indirect" {
                    alerts += 1;
                }
            }
            // Exit code 1 exactly when the truth holds alerts; without
            // alerts, 3 when the session lost events (incomplete input).
            let want = if alerts > 0 {
                ExitCode::from(exit::ALERTS)
            } else if truth["events_lost"].as_u64().unwrap() > 0 {
                ExitCode::from(exit::INCOMPLETE)
            } else {
                ExitCode::from(exit::NOTHING_FOUND)
            };
            assert_eq!(code, want, "{}", s.name());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The default one pass, and the same with an evidence budget so small
    /// that a recovery pass must complete the alerts, write the same lines
    /// as `--per-syscall`'s two passes imply: every alert key of the
    /// per-syscall lines, with its count.
    #[test]
    fn one_pass_and_recovery_pass_agree_with_two_passes_through_files() {
        use sentry_synth::{generate, Options, Scenario};
        let dir = std::env::temp_dir().join(format!("sentry-onepass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut o = Options::new(Scenario::Mixed);
        o.seed = 9;
        o.syscalls = 6000;
        let etl = dir.join("mixed.etl");
        generate(&o, File::create(&etl).unwrap(), None::<std::io::Sink>).unwrap();
        let read_alerts = |p: &Path| -> Vec<(String, u64)> {
            let mut v: Vec<(String, u64)> = std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| {
                    let a: serde_json::Value = serde_json::from_str(l).unwrap();
                    let key = format!(
                        "{} {} {} {}",
                        a["pid"], a["call_site"], a["verdict"], a["reason"]
                    );
                    (key, a["count"].as_u64().unwrap())
                })
                .collect();
            v.sort();
            v
        };
        // Two passes, one line per syscall: count the alert keys.
        let per = dir.join("per.jsonl");
        run(args(vec![etl.clone()], per.clone())).unwrap();
        let mut want = std::collections::BTreeMap::<String, u64>::new();
        for l in std::fs::read_to_string(&per).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let verdict = v["verdict"].as_str().unwrap();
            if verdict == "direct" || verdict == "indirect" {
                let key = format!(
                    "{} {} {} {}",
                    v["pid"], v["call_site"], v["verdict"], v["reason"]
                );
                *want.entry(key).or_insert(0) += 1;
            }
        }
        let want: Vec<(String, u64)> = want.into_iter().collect();
        assert!(!want.is_empty());
        for budget in [64.0, 0.004] {
            let out = dir.join(format!("one-{budget}.jsonl"));
            let stats = dir.join(format!("stats-{budget}.json"));
            let mut a = args(vec![etl.clone()], out.clone());
            a.report.per_syscall = false;
            a.evidence_budget = budget;
            a.stats_json = Some(stats.clone());
            assert_eq!(run(a).unwrap(), ExitCode::from(1));
            assert_eq!(read_alerts(&out), want, "budget {budget} MiB");
            let st: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
            let passes = st["passes"].as_u64().unwrap();
            if budget < 1.0 {
                assert!(st["evidence_dropped"].as_u64().unwrap() > 0);
                assert_eq!(passes, 2, "a recovery pass was needed");
            } else {
                assert_eq!(passes, 1);
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rfc3339_parses_to_filetime() {
        // Same instant as sentry_raw's own test: 2000-01-01T00:00:00Z.
        assert_eq!(
            parse_rfc3339("2000-01-01T00:00:00Z").unwrap(),
            125_911_584_000_000_000
        );
        assert_eq!(
            parse_rfc3339("2000-01-01T02:00:00.5+02:00").unwrap(),
            125_911_584_005_000_000
        );
        assert_eq!(
            sentry_raw::filetime_to_rfc3339(
                parse_rfc3339("2026-11-24T02:16:19.1234567Z").unwrap() as i64
            ),
            "2026-11-24T02:16:19.1234567Z"
        );
        assert!(parse_rfc3339("2000-01-01 00:00:00").is_err());
        assert!(parse_rfc3339("2000-13-01T00:00:00Z").is_err());
    }

    #[test]
    fn seconds_from_start_use_the_clock() {
        let c = Clock {
            sync_raw: 1000,
            sync_filetime: 125_911_584_000_000_000,
            ticks_per_second: 1_000_000,
        };
        assert_eq!(parse_time("1.5", &c).unwrap(), 1_501_000);
        assert_eq!(parse_time("2000-01-01T00:00:01Z", &c).unwrap(), 1_001_000);
    }
}
