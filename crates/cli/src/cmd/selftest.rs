//! `syscall-sentry selftest`: proof on this Windows host, in one command.
//! Starts the live session, runs the technique fixtures (fixtures/, one
//! harmless program per technique, built by CI), waits a bounded time for
//! their verdicts and prints a table: technique, expected verdict and
//! reason, what was seen, pass/fail, and the session's loss counters.
//! Exit 0 only when every fixture passed and the benign one raised nothing,
//! 1 otherwise, 2 on error. `--record DIR` also records the run into
//! `DIR/selftest.etl` (a second, private kernel session) and checks that
//! analysing that file gives the same verdicts, so the trace can be shared.
//!
//! The decisions are in `sentry-selftest` (tested on Linux); this module
//! wires the session, the fixture processes and the engine.

use std::path::{Path, PathBuf};
#[cfg(not(windows))]
use std::process::ExitCode;
use std::time::Duration;

use super::live::SessionChoice;

/// The message for non-Windows hosts.
#[cfg_attr(windows, allow(dead_code))]
pub const NEEDS_WINDOWS: &str = "selftest needs Windows and an elevated prompt: it starts a kernel \
                                 trace session and runs the technique fixtures; see docs/windows.md, \
                                 \"Verify on your host\"";

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Exit codes (selftest): 0 every fixture passed and the benign one raised \
nothing; 1 a fixture failed (the table says which and why); 2 could not run (not elevated, \
session in use, fixtures missing)."
)]
pub struct Args {
    /// Directory with the fixture executables (default: `fixtures` beside
    /// syscall-sentry.exe, else the directory of syscall-sentry.exe).
    #[arg(long, value_name = "DIR")]
    pub fixtures: Option<PathBuf>,
    /// Seconds to wait for a fixture's verdicts after it exits.
    #[arg(long, value_name = "SECONDS", default_value_t = 8)]
    pub wait: u64,
    /// Seconds a fixture may run before it is killed.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    pub run_timeout: u64,
    /// Also record the run into DIR/selftest.etl and check that `analyze`
    /// of that file gives the same verdicts.
    #[arg(long, value_name = "DIR")]
    pub record: Option<PathBuf>,
    /// kernel: the global "NT Kernel Logger"; private: an own system-logger
    /// session (Windows 8+).
    #[arg(long, value_enum, default_value = "kernel")]
    pub session: SessionChoice,
    /// If the session already exists, stop it and start ours.
    #[arg(long)]
    pub force: bool,
    /// Test harness only (.ci/windows-bundle under etw-replay): run no
    /// fixture; processes of the replayed trace stand in for them, one JSON
    /// line each: {"fixture": NAME, "pid": N, "calls": N, "image": FILE}.
    #[arg(long, value_name = "FILE", hide = true)]
    pub stand_in: Option<PathBuf>,
}

/// Name of the private session of the live part with `--session private`.
#[cfg_attr(not(windows), allow(dead_code))]
const LIVE_SESSION: &str = "syscall-sentry-selftest";
/// Name of the private session that records with `--record`.
#[cfg_attr(not(windows), allow(dead_code))]
const RECORD_SESSION: &str = "syscall-sentry-selftest-record";
/// Longest wait for the first event before the fixtures are started anyway
/// (they then fail as "no verdict", which is what happened).
#[cfg_attr(not(windows), allow(dead_code))]
const FIRST_EVENT_WAIT: Duration = Duration::from_secs(3);

impl Args {
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=600).contains(&self.wait),
            "--wait {}: give 1 to 600 seconds",
            self.wait
        );
        anyhow::ensure!(
            (1..=600).contains(&self.run_timeout),
            "--run-timeout {}: give 1 to 600 seconds",
            self.run_timeout
        );
        Ok(())
    }

    /// How long the session runs: until the first event at most, then the
    /// fixtures' run time and wait (they run at once), plus 2 s for the last
    /// buffers. The live API stops on a duration, so this is also the
    /// run's length (18 s with the defaults).
    #[cfg_attr(not(windows), allow(dead_code))]
    fn session_duration(&self) -> Duration {
        FIRST_EVENT_WAIT + Duration::from_secs(self.run_timeout + self.wait + 2)
    }
}

/// Where the fixtures are: `--fixtures`, else `fixtures/` beside the
/// executable, else the executable's own directory.
#[cfg_attr(not(windows), allow(dead_code))]
fn fixtures_dir(given: Option<&Path>, exe: Option<&Path>) -> Option<PathBuf> {
    if let Some(d) = given {
        return Some(d.to_path_buf());
    }
    let dir = exe?.parent()?;
    let beside = dir.join("fixtures");
    Some(if beside.is_dir() {
        beside
    } else {
        dir.to_path_buf()
    })
}

#[cfg(not(windows))]
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    args.check()?;
    anyhow::bail!(NEEDS_WINDOWS)
}

#[cfg(windows)]
pub use windows_impl::run;

#[cfg(windows)]
mod windows_impl {
    use std::io::Read;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, ExitCode, Stdio};
    use std::sync::mpsc::{channel, Receiver, Sender};
    use std::sync::Arc;
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    use anyhow::Context;
    use sentry_engine::{
        Engine, EngineConfig, Learning, NullSink, SyscallVerdict, SystemDlls, VerdictSink,
    };
    use sentry_live::supervisor::SessionAlert;
    use sentry_live::win::{self, LiveOptions, LiveSink, RecordOptions};
    use sentry_live::{Buffers, Destination, SessionKind, SessionSpec, StatusLine};
    use sentry_raw::RawEvent;
    use sentry_selftest::{compare, table, Loss, Selftest, FIXTURES};

    use super::{fixtures_dir, Args, FIRST_EVENT_WAIT, LIVE_SESSION, RECORD_SESSION};
    use crate::cmd::live::SessionChoice;

    /// What the fixture thread reports.
    enum Msg {
        Started {
            i: usize,
            pid: u32,
            at: u64,
        },
        LaunchFailed {
            i: usize,
            error: String,
        },
        Exited {
            i: usize,
            at: u64,
            code: Option<i32>,
            stdout: String,
        },
    }

    fn ms(start: Instant) -> u64 {
        start.elapsed().as_millis() as u64
    }

    /// Runs every fixture at once; kills any still running after
    /// `run_timeout`.
    fn run_fixtures(dir: PathBuf, start: Instant, run_timeout: Duration, tx: Sender<Msg>) {
        let mut running: Vec<(usize, Child, Instant)> = Vec::new();
        for (i, fx) in FIXTURES.iter().enumerate() {
            let path = dir.join(fx.file_name());
            match Command::new(&path)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
            {
                Ok(child) => {
                    let _ = tx.send(Msg::Started {
                        i,
                        pid: child.id(),
                        at: ms(start),
                    });
                    running.push((i, child, Instant::now()));
                }
                Err(e) => {
                    let _ = tx.send(Msg::LaunchFailed {
                        i,
                        error: format!("{}: {e}", path.display()),
                    });
                }
            }
        }
        while !running.is_empty() {
            std::thread::sleep(Duration::from_millis(20));
            running.retain_mut(|(i, child, began)| {
                let code = match child.try_wait() {
                    Ok(Some(status)) => Some(status.code()),
                    Ok(None) if began.elapsed() >= run_timeout => {
                        let _ = child.kill();
                        let _ = child.wait();
                        Some(None)
                    }
                    Ok(None) => None,
                    Err(_) => Some(None),
                };
                let Some(code) = code else { return true };
                let mut stdout = String::new();
                if let Some(mut out) = child.stdout.take() {
                    let _ = out.read_to_string(&mut stdout);
                }
                let _ = tx.send(Msg::Exited {
                    i: *i,
                    at: ms(start),
                    code,
                    stdout,
                });
                false
            });
        }
    }

    /// A process of a replayed trace in place of a fixture.
    struct StandIn {
        i: usize,
        pid: u32,
        image: String,
        line: String,
    }

    fn stand_ins(path: &Path) -> anyhow::Result<Vec<StandIn>> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--stand-in {}", path.display()))?;
        let mut v = Vec::new();
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let bad = || anyhow::anyhow!("--stand-in {} line {}: {line}", path.display(), n + 1);
            let j: serde_json::Value = serde_json::from_str(line).map_err(|_| bad())?;
            let i = FIXTURES
                .iter()
                .position(|f| j["fixture"].as_str() == Some(f.name))
                .ok_or_else(bad)?;
            v.push(StandIn {
                i,
                pid: j["pid"]
                    .as_u64()
                    .and_then(|p| u32::try_from(p).ok())
                    .ok_or_else(bad)?,
                image: j["image"].as_str().ok_or_else(bad)?.to_string(),
                line: line.to_string(),
            });
        }
        Ok(v)
    }

    /// The stand-ins "exit" a second after they were registered as started
    /// (by the sink, before the first event is analysed: a replay delivers
    /// the whole trace at once).
    fn run_stand_ins(list: Vec<StandIn>, start: Instant, tx: Sender<Msg>) {
        for (i, _) in FIXTURES.iter().enumerate() {
            if !list.iter().any(|s| s.i == i) {
                let _ = tx.send(Msg::LaunchFailed {
                    i,
                    error: "no stand-in given".into(),
                });
            }
        }
        std::thread::sleep(Duration::from_secs(1));
        for s in list {
            let _ = tx.send(Msg::Exited {
                i: s.i,
                at: ms(start),
                code: Some(0),
                stdout: s.line,
            });
        }
    }

    /// Verdicts into the decision, stamped with their arrival time.
    struct Decide<'a> {
        st: &'a mut Selftest,
        now: u64,
    }

    impl VerdictSink for Decide<'_> {
        fn verdict(&mut self, v: &SyscallVerdict<'_>) {
            let image = v.process.map(|p| p.image_file_name.as_str());
            self.st.verdict(self.now, v.pid, image, v.verdict, v.reason);
        }
    }

    struct Sink<'a> {
        engine: &'a mut Engine,
        st: Selftest,
        start: Instant,
        rx: Receiver<Msg>,
        tx: Option<Sender<Msg>>,
        fixtures: PathBuf,
        run_timeout: Duration,
        stand_ins: Option<Vec<StandIn>>,
        thread: Option<JoinHandle<()>>,
        loss: Loss,
    }

    impl Sink<'_> {
        /// Starts the fixtures once the session delivers (or after
        /// `FIRST_EVENT_WAIT` regardless), and takes in what they report.
        fn tick(&mut self, delivering: bool) {
            if self.thread.is_none() && (delivering || self.start.elapsed() >= FIRST_EVENT_WAIT) {
                if let Some(tx) = self.tx.take() {
                    let (dir, start, t) = (self.fixtures.clone(), self.start, self.run_timeout);
                    eprintln!(
                        "syscall-sentry: selftest: running {} fixtures",
                        FIXTURES.len()
                    );
                    self.thread = Some(match self.stand_ins.take() {
                        Some(list) => {
                            for s in &list {
                                self.st.started(s.i, s.pid, ms(start), self.loss);
                                self.st.stand_in(s.i, &s.image);
                            }
                            std::thread::spawn(move || run_stand_ins(list, start, tx))
                        }
                        None => std::thread::spawn(move || run_fixtures(dir, start, t, tx)),
                    });
                }
            }
            while let Ok(m) = self.rx.try_recv() {
                match m {
                    Msg::Started { i, pid, at } => self.st.started(i, pid, at, self.loss),
                    Msg::LaunchFailed { i, error } => self.st.launch_failed(i, error),
                    Msg::Exited {
                        i,
                        at,
                        code,
                        stdout,
                    } => self.st.exited(i, at, code, &stdout),
                }
            }
        }
    }

    impl LiveSink for Sink<'_> {
        fn event(&mut self, ev: &RawEvent<'_>) {
            self.tick(true);
            let mut d = Decide {
                st: &mut self.st,
                now: ms(self.start),
            };
            self.engine.process(ev, &mut d);
        }
        fn session_alert(&mut self, a: &SessionAlert) {
            eprintln!("syscall-sentry: ALERT: {a}");
        }
        fn status(&mut self, line: &StatusLine) {
            let t = &line.totals;
            self.loss = Loss {
                events_lost: t.events_lost,
                real_time_buffers_lost: t.real_time_buffers_lost,
                ring_drops: t.ring_drops,
            };
        }
        fn idle(&mut self) {
            self.tick(false);
        }
        fn events_missing(&mut self, from: u64, to: u64, cause: &str) {
            // The fixtures' alerts in the gap become `unresolved`, and the
            // decision says so rather than "missed".
            self.engine.note_events_missing(from, to, cause);
        }
    }

    /// This host's ntdll/win32u (System32 and SysWOW64) and kernel images,
    /// for exact stub and service names, as `live` loads them.
    fn system_dlls() -> Option<Arc<SystemDlls>> {
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
        (!all.dlls.is_empty()).then(|| Arc::new(all))
    }

    /// The session as `live` and `record` size it for this host: buffers
    /// per processor, a 250 ms flush for real time (whole seconds before
    /// Windows 8), none for a file. The syscall source: the fixtures' NtClose
    /// is not one of the calls Kernel-Audit-API-Calls logs.
    fn spec(kind: SessionKind, destination: Destination, processors: u32) -> SessionSpec {
        let (major, minor) = win::os_version();
        let flush_ms = match destination {
            Destination::RealTime => sentry_live::properties::DEFAULT_FLUSH_MS,
            Destination::File(_) => 0,
        };
        SessionSpec {
            kind,
            destination,
            buffers: Buffers::for_processors(
                processors,
                sentry_live::properties::DEFAULT_BUFFER_KB,
                flush_ms,
            )
            .for_os(major, minor),
            source: sentry_live::Source::Syscalls,
        }
    }

    /// The recorded file analysed as `analyze` does (a learning pass, then
    /// the classifying pass), its verdicts decided on with `st`.
    fn analyze_recording(
        path: &Path,
        system_dlls: Option<Arc<SystemDlls>>,
        st: &mut Selftest,
    ) -> anyhow::Result<()> {
        let file =
            sentry_etl::EtlFile::open(path).with_context(|| format!("{}", path.display()))?;
        let base = EngineConfig {
            system_dlls,
            ..EngineConfig::default()
        };
        let mut learner = Engine::new(EngineConfig {
            learning: Learning::Only,
            ..base.clone()
        });
        let mut r = file.events(sentry_etl::Order::Time);
        while let Some(ev) = r.next_event() {
            learner.process(&ev, &mut NullSink);
        }
        learner.finish(&mut NullSink);
        let mut engine = Engine::new(EngineConfig {
            services: learner.into_services(),
            ..base
        });
        // A file has no arrival times: every verdict is on time.
        let mut d = Decide { st, now: 0 };
        let mut r = file.events(sentry_etl::Order::Time);
        while let Some(ev) = r.next_event() {
            engine.process(&ev, &mut d);
        }
        engine.finish(&mut d);
        Ok(())
    }

    pub fn run(args: Args) -> anyhow::Result<ExitCode> {
        args.check()?;
        let exe = std::env::current_exe().ok();
        let dir = fixtures_dir(args.fixtures.as_deref(), exe.as_deref())
            .context("cannot find the fixtures: give --fixtures DIR")?;
        let stand_ins = args.stand_in.as_deref().map(stand_ins).transpose()?;
        let missing: Vec<String> = FIXTURES
            .iter()
            .map(|f| f.file_name())
            .filter(|f| stand_ins.is_none() && !dir.join(f).is_file())
            .collect();
        anyhow::ensure!(
            missing.is_empty(),
            "{}: fixtures not found: {} (unpack the whole release zip, or give --fixtures DIR)",
            dir.display(),
            missing.join(", ")
        );
        let duration = args.session_duration();
        let processors = win::processor_count();
        let lag_ms = sentry_live::reorder::DEFAULT_LAG_MS;
        let system_dlls = system_dlls();
        let stacks = sentry_live::properties::stack_events(false, false);

        // --record: a private system-logger session into the file, started
        // first so that it sees the fixtures from their start.
        let recording = match &args.record {
            Some(d) => {
                std::fs::create_dir_all(d).with_context(|| format!("--record {}", d.display()))?;
                let path = std::path::absolute(d.join("selftest.etl"))
                    .with_context(|| format!("--record {}", d.display()))?;
                let opts = RecordOptions {
                    spec: spec(
                        SessionKind::Private {
                            name: RECORD_SESSION.into(),
                        },
                        Destination::File(path.to_string_lossy().into_owned()),
                        processors,
                    ),
                    stacks: stacks.clone(),
                    force: true,
                    duration: Some(duration + Duration::from_secs(2)),
                    status_every: Duration::from_secs(5),
                };
                eprintln!(
                    "syscall-sentry: selftest: recording into {}",
                    path.display()
                );
                let h = std::thread::spawn(move || win::record(&opts, &mut |_| {}));
                std::thread::sleep(Duration::from_secs(1));
                Some((path, h))
            }
            None => None,
        };

        let mut engine = Engine::new(EngineConfig {
            // Longer than the reordering lag, so a late stack still pairs.
            window_ms: sentry_live::reorder::live_window_ms(
                EngineConfig::default().window_ms,
                lag_ms,
            ),
            learning: Learning::Online,
            system_dlls: system_dlls.clone(),
            ..EngineConfig::default()
        });
        let clock = win::clock_now();
        if let Some(c) = clock {
            engine.set_clock(c);
        }
        let wait_ms = args.wait * 1000;
        let (tx, rx) = channel();
        let start = Instant::now();
        let mut sink = Sink {
            engine: &mut engine,
            st: Selftest::new(&FIXTURES, wait_ms),
            start,
            rx,
            tx: Some(tx),
            fixtures: dir,
            run_timeout: Duration::from_secs(args.run_timeout),
            stand_ins,
            thread: None,
            loss: Loss::default(),
        };
        let kind = match args.session {
            SessionChoice::Kernel => SessionKind::KernelLogger,
            SessionChoice::Private => SessionKind::Private {
                name: LIVE_SESSION.into(),
            },
        };
        let opts = LiveOptions {
            spec: spec(kind, Destination::RealTime, processors),
            stacks,
            force: args.force,
            duration: Some(duration),
            status_every: Duration::from_secs(1),
            ring_bytes: 32 << 20,
            reorder: sentry_live::ReorderConfig::new(
                lag_ms,
                clock.map_or(10_000_000, |c| c.ticks_per_second),
                128 << 20,
                processors as usize,
            ),
            idle_release: Duration::from_millis(lag_ms),
        };
        eprintln!(
            "syscall-sentry: selftest: live on \"{}\" for {} s",
            opts.spec.kind.name(),
            duration.as_secs()
        );
        let result = win::run_live(&opts, &mut sink);
        if let Some(t) = sink.thread.take() {
            let _ = t.join();
        }
        sink.tick(false);
        let Sink { mut st, .. } = sink;
        let outcome = match result {
            Ok(o) => o,
            Err(e) => {
                // Let the recorder end on its own duration and stop its
                // session, rather than leave it running.
                if let Some((_, h)) = recording {
                    let _ = h.join();
                }
                win::outputs_flushed();
                anyhow::bail!("{e}");
            }
        };
        engine.finish(&mut Decide {
            st: &mut st,
            now: ms(start),
        });
        let l = &outcome.totals;
        let loss = Loss {
            events_lost: l.events_lost,
            real_time_buffers_lost: l.real_time_buffers_lost,
            ring_drops: l.ring_drops,
        };
        let live = st.outcome(loss);
        print!("{}", table::render(&live));
        let stats = engine.stats();
        println!(
            "engine: {} events, {} syscalls ({} no_stack, {} truncated); session stopped externally {}x",
            stats.events,
            stats.syscalls,
            stats.verdicts.no_stack,
            stats.verdicts.truncated,
            l.external_stops
        );
        let mut ok = live.passed();

        if let Some((path, h)) = recording {
            let rec = h
                .join()
                .map_err(|_| anyhow::anyhow!("the recording thread panicked"))?
                .map_err(|e| anyhow::anyhow!("--record: {e}"))?;
            println!(
                "record: {} ({} buffers, EventsLost {}, buffers lost {})",
                path.display(),
                rec.counters.buffers_written,
                rec.counters.events_lost,
                rec.counters.log_buffers_lost
            );
            let mut again = st.without_verdicts();
            analyze_recording(&path, system_dlls, &mut again)?;
            let recorded = again.outcome(Loss {
                events_lost: u64::from(rec.counters.events_lost),
                real_time_buffers_lost: 0,
                ring_drops: 0,
            });
            let diffs = compare(&live, &recorded);
            if diffs.is_empty() {
                println!(
                    "record: analyze of the recording gives the same verdicts for every fixture"
                );
            } else {
                ok = false;
                println!("record: analyze of the recording DISAGREES with live:");
                for d in diffs {
                    println!("  {d}");
                }
            }
        }
        win::outputs_flushed();
        Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: Args,
    }

    #[test]
    fn options_and_their_limits() {
        let t = T::try_parse_from(["x", "--record", "out", "--wait", "3"]).unwrap();
        assert_eq!(t.a.record.as_deref(), Some(Path::new("out")));
        t.a.check().unwrap();
        // 3 s until the first event at most, then run time + wait + 2 s.
        assert_eq!(t.a.session_duration(), Duration::from_secs(3 + 5 + 3 + 2));
        let t = T::try_parse_from(["x", "--wait", "0"]).unwrap();
        assert!(t.a.check().unwrap_err().to_string().contains("--wait 0"));
    }

    #[test]
    fn fixtures_are_looked_for_beside_the_executable() {
        let d = std::env::temp_dir().join(format!("selftest-fx-{}", std::process::id()));
        let exe = d.join("syscall-sentry.exe");
        std::fs::create_dir_all(&d).unwrap();
        assert_eq!(fixtures_dir(None, Some(&exe)), Some(d.clone()));
        std::fs::create_dir_all(d.join("fixtures")).unwrap();
        assert_eq!(fixtures_dir(None, Some(&exe)), Some(d.join("fixtures")));
        assert_eq!(
            fixtures_dir(Some(Path::new("x")), Some(&exe)),
            Some(PathBuf::from("x"))
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[cfg(not(windows))]
    #[test]
    fn non_windows_says_what_it_needs() {
        let t = T::try_parse_from(["x"]).unwrap();
        let e = run(t.a).unwrap_err().to_string();
        assert_eq!(e, NEEDS_WINDOWS);
    }
}
