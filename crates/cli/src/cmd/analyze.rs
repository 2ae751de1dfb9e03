//! `syscall-sentry analyze`: runs the engine over `.etl` files.
//!
//! One pass per file in time order: the engine learns each syscall return
//! site's service over the whole file (docs/verdicts.md, "Service
//! identity") while it classifies, and the rule-5 decisions that need it
//! are settled at the end ([`Learning::Deferred`]). `--per-syscall` prints
//! each verdict as it comes, so it runs two passes instead: the first
//! learns, the second classifies. Both give the same verdicts.
//! Exit code: 0 nothing found, 1 alerts found, 2 error.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use sentry_engine::report::{self, Filter, Format, Report, ReportConfig};
use sentry_engine::{
    Allowlist, Engine, EngineConfig, EngineStats, Learning, NullSink, ServiceTable, SystemDlls,
    VerdictSink,
};
use sentry_etl::{Diagnostics, EtlFile, Order};
use sentry_raw::{Clock, KernelClass};

use super::report_args::ReportArgs;

#[derive(clap::Args)]
pub struct Args {
    /// .etl files (each analysed on its own).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Directory with ntdll.dll, win32u.dll, ntoskrnl.exe, win32k.sys of the
    /// traced machine: exact return sites and stub/service names.
    #[arg(long, value_name = "DIR")]
    pub system_dlls: Option<PathBuf>,
    /// Also write the engine statistics of each file as JSON lines here.
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
    #[command(flatten)]
    pub report: ReportArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let format = args.report.format()?;
    let system_dlls = match &args.system_dlls {
        Some(d) => Some(Arc::new(
            SystemDlls::load_dir(d).map_err(|e| anyhow::anyhow!("--system-dlls {e}"))?,
        )),
        None => None,
    };
    let allowlist = args.report.allowlist()?;
    let mut out = args.report.alert_writer()?;
    let mut summary_out: Option<Box<dyn Write>> = if args.report.quiet {
        None
    } else {
        Some(match &args.report.summary {
            Some(p) => Box::new(File::create(p).with_context(|| format!("{}", p.display()))?),
            None => Box::new(std::io::stderr()),
        })
    };
    let mut stats_out = match &args.stats_json {
        Some(p) => Some(File::create(p).with_context(|| format!("{}", p.display()))?),
        None => None,
    };
    let mut alerts = 0usize;
    for path in &args.files {
        let (o, n) = analyze_file(
            path,
            &args,
            format,
            system_dlls.clone(),
            allowlist.clone(),
            out,
            Side {
                summary: summary_out.as_mut(),
                stats_json: stats_out.as_mut(),
            },
        )?;
        out = o;
        alerts += n;
    }
    out.flush()?;
    Ok(if alerts > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Kernel events the engine ignores, stepped over by the reader: PerfInfo
/// SysCallExit (no address, pairs with nothing) is a third of a syscall
/// trace. Every pass skips the same, so passes see the same events.
const UNUSED_EVENTS: &[(u8, u8)] = &[(KernelClass::GROUP_PERFINFO, 52)];

/// One pass over `file` in time order (without [`UNUSED_EVENTS`]): a new
/// engine with `cfg` and the file's clock, every event into `sink`, then
/// finished. `progress`: the bar and the bytes earlier passes covered.
fn run_pass(
    file: &EtlFile,
    cfg: EngineConfig,
    sink: &mut dyn VerdictSink,
    progress: Option<(&Progress, u64)>,
) -> (Engine, EngineStats, Diagnostics) {
    let clock = file.clock();
    let mut engine = Engine::new(cfg);
    engine.set_header(file.header().clone(), clock.sync_raw);
    engine.set_clock(clock);
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
    let diag = reader.into_diagnostics();
    let stats = engine.finish(sink);
    (engine, stats, diag)
}

/// Where the summary and the statistics go.
struct Side<'a> {
    summary: Option<&'a mut Box<dyn Write>>,
    stats_json: Option<&'a mut File>,
}

/// Runs both passes over one file; returns the output and its alert count.
fn analyze_file(
    path: &Path,
    args: &Args,
    format: Format,
    system_dlls: Option<Arc<SystemDlls>>,
    allowlist: Allowlist,
    out: Box<dyn Write>,
    side: Side<'_>,
) -> anyhow::Result<(Box<dyn Write>, usize)> {
    let Side {
        summary,
        stats_json,
    } = side;
    let file = EtlFile::open(path).with_context(|| format!("{}", path.display()))?;
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
    // --per-syscall prints each verdict when it is decided: it needs the
    // learned services before classifying, hence a learning pass first.
    let two_pass = args.report.per_syscall;
    let passes: u64 = if two_pass { 2 } else { 1 };
    let progress = Progress::new(file.len() * passes);
    let started = Instant::now();
    let base = EngineConfig {
        window_ms: args.report.window_ms,
        max_pending: args.report.max_pending,
        system_dlls,
        ..EngineConfig::default()
    };

    let mut services = ServiceTable::new();
    if two_pass {
        // Learn the service of each return site.
        let cfg = EngineConfig {
            learning: Learning::Only,
            ..base.clone()
        };
        let (learner, _, _) = run_pass(&file, cfg, &mut NullSink, Some((&progress, 0)));
        services = learner.into_services();
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
        ..ReportConfig::default()
    };
    let mut report = Report::new(report_cfg.clone(), out);
    report.set_clock(Some(clock));
    let done = file.len() * (passes - 1);
    let (engine, stats, diag) = run_pass(&file, cfg, &mut report, Some((&progress, done)));
    report.settle(&engine);
    let request = report.evidence_request();
    let mut recovery_pass = false;
    if !request.is_empty() {
        // Alerts whose first stack was dropped to keep memory within the
        // evidence budget: a second pass (deterministic, same settings)
        // finds exactly those stacks again.
        recovery_pass = true;
        let cfg = EngineConfig {
            learning: Learning::Deferred,
            allowlist,
            ..base
        };
        let mut recovery = Report::recovery(report_cfg, request);
        recovery.set_clock(Some(clock));
        let (again, _, _) = run_pass(&file, cfg, &mut recovery, None);
        let lost = report.fill_evidence(recovery.take_recovered(&again));
        if lost > 0 {
            eprintln!(
                "syscall-sentry: warning: {}: the evidence of {lost} alerts could not be found again (the file changed?)",
                path.display()
            );
        }
    }
    report.finish(&engine).context("writing output")?;
    progress.done();
    let wall = started.elapsed().as_secs_f64();
    let alerts = report.alert_count();
    if let Some(f) = stats_json {
        let mut v = serde_json::to_value(&stats)?;
        v["file"] = serde_json::json!(path.display().to_string());
        v["alerts"] = serde_json::json!(alerts);
        v["wall_seconds"] = serde_json::json!(wall);
        v["reader_errors"] = serde_json::json!(diag.error_count);
        v["events_skipped_by_reader"] = serde_json::json!(diag.skipped_events);
        v["passes"] = serde_json::json!(passes + u64::from(recovery_pass));
        v["evidence_dropped"] = serde_json::json!(report.evidence_dropped());
        v["service_checks_settled_early"] = serde_json::json!(report.checks_settled_early());
        writeln!(f, "{v}")?;
    }
    if let Some(w) = coverage_warning(&stats) {
        // Always shown, even with --quiet: "nothing found" must not be read
        // as "clean" when the trace could not have shown anything.
        eprintln!("syscall-sentry: warning: {}: {w}", path.display());
    }
    if let Some(w) = summary {
        let mut t = format!("== {} ==\n", path.display());
        t.push_str(&report.summary_table());
        t.push_str(&report::stats_text(&stats, wall / passes as f64, alerts));
        t.push_str(&format!(
            "reader: {} buffers ({} compressed, {} skipped), {} records, {} events not delivered (SysCallExit), {} errors\n",
            diag.buffers,
            diag.compressed_buffers,
            diag.skipped_buffers,
            diag.records,
            diag.skipped_events,
            diag.error_count
        ));
        for e in diag.errors.iter().take(10) {
            t.push_str(&format!("  reader error: {e}\n"));
        }
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
        w.write_all(t.as_bytes())?;
        w.flush()?;
    }
    Ok((report.into_output(), alerts))
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
             so it cannot show hidden syscalls ({HOW})"
        ));
    }
    let with_stack = stats.syscalls - stats.verdicts.no_stack;
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

/// A progress bar on stderr for large files, when stderr is a terminal.
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new(total: u64) -> Progress {
        if total < (256 << 20) || !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let pb = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({eta})",
        ) {
            pb.set_style(style);
        }
        Progress(Some(pb))
    }

    fn set(&self, pos: u64) {
        if let Some(pb) = &self.0 {
            pb.set_position(pos);
        }
    }

    fn done(&self) {
        if let Some(pb) = &self.0 {
            pb.finish_and_clear();
        }
    }
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
    }

    fn args(files: Vec<PathBuf>, out: PathBuf) -> Args {
        Args {
            files,
            system_dlls: None,
            since: None,
            until: None,
            evidence_budget: 64.0,
            stats_json: None,
            report: ReportArgs {
                allowlist: None,
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
                for k in ["verdict", "reason", "pid", "tid"] {
                    assert_eq!(g[k], t[k], "{} {k}: truth {t} engine {g}", s.name());
                }
                let v = t["verdict"].as_str().unwrap();
                if v == "direct" || v == "indirect" {
                    alerts += 1;
                }
            }
            // Exit code 1 exactly when the truth holds alerts.
            let want = if alerts > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
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
