//! The Windows layer: session start/stop/query, the consumer thread, the
//! main loop that feeds the engine, and `record`/`stop`. Decisions are taken
//! by the platform-neutral modules ([`Supervisor`], [`StatusTracker`]); the
//! Win32 calls live in the private `ffi` module.

#[allow(unsafe_code)]
mod ffi;
#[allow(unsafe_code)]
mod modfiles;

pub use modfiles::{authenticode, dos_devices, Authenticode};

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use ffi::{
    clock_now, computer_name, enable_debug_privilege, kernel_modules, os_version, processor_count,
    read_process_memory, system_directory, syswow64_directory,
};

/// Tells a console-close handler waiting in the background that the outputs
/// are flushed and the process may end. Call after writing the final report.
pub fn outputs_flushed() {
    ffi::signal_done();
}

use crate::driver::{drive, DriveConfig, Platform};
pub use crate::driver::{LiveOutcome, LiveSink};
use crate::error::{LiveError, ERROR_ALREADY_EXISTS, ERROR_WMI_INSTANCE_NOT_FOUND};
use crate::properties::{
    group_mask_bytes, stack_tracing_bytes, ClassicEventId, PropertiesBlock, SessionCounters,
    SessionKind, SessionSpec,
};
use crate::reorder::ReorderConfig;
use crate::ring::RingProducer;
use crate::supervisor::StopReason;

/// `TRACE_INFO_CLASS` values (evntrace.h).
const TRACE_STACK_TRACING_INFO: i32 = 3;
const TRACE_SYSTEM_TRACE_ENABLE_FLAGS_INFO: i32 = 4;

/// A started session. Stops it on drop, whatever the exit path.
pub struct Session {
    name: String,
    stopped: bool,
}

impl Session {
    /// Starts the session described by `spec`, with stacks on `stacks`.
    /// `force`: if a session of that name exists, stop it and start ours.
    pub fn start(
        spec: &SessionSpec,
        stacks: &[ClassicEventId],
        force: bool,
    ) -> Result<Session, LiveError> {
        let name = spec.kind.name().to_string();
        spec.kind.check().map_err(LiveError::Other)?;
        spec.source.check(&spec.kind).map_err(LiveError::Other)?;
        let block = PropertiesBlock::for_start(spec);
        let handle = match ffi::start_trace(&name, &block) {
            Ok(h) => h,
            Err(ERROR_ALREADY_EXISTS) if force => {
                match ffi::control_trace(&name, true) {
                    Ok(_) | Err(ERROR_WMI_INSTANCE_NOT_FOUND) => {}
                    Err(code) => return Err(LiveError::from_code("ControlTraceW", &name, code)),
                }
                // The stopped session may take a moment to go away.
                let mut attempt = 0;
                loop {
                    match ffi::start_trace(&name, &block) {
                        Ok(h) => break h,
                        Err(ERROR_ALREADY_EXISTS) if attempt < 20 => {
                            attempt += 1;
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        Err(code) => return Err(LiveError::from_code("StartTraceW", &name, code)),
                    }
                }
            }
            Err(code) => return Err(LiveError::from_code("StartTraceW", &name, code)),
        };
        // From here on the guard stops the session if configuring it fails.
        let session = Session {
            name,
            stopped: false,
        };
        // Stacks first, then (private sessions) the flags again, so that
        // syscalls logged once the flags apply get their stacks.
        if !stacks.is_empty() {
            ffi::set_information(
                handle,
                TRACE_STACK_TRACING_INFO,
                &stack_tracing_bytes(stacks),
            )
            .map_err(|code| {
                LiveError::from_code("TraceSetInformation(stacks)", &session.name, code)
            })?;
        }
        if let SessionKind::Private { .. } = spec.kind {
            ffi::set_information(
                handle,
                TRACE_SYSTEM_TRACE_ENABLE_FLAGS_INFO,
                &group_mask_bytes(spec.enable_flags()),
            )
            .map_err(|code| {
                LiveError::from_code("TraceSetInformation(flags)", &session.name, code)
            })?;
        }
        // The audit source: the provider on this same session, with stacks.
        if spec.source.audit() {
            ffi::enable_provider(handle, &crate::audit::ProviderEnable::audit_api()).map_err(
                |code| {
                    LiveError::from_code(
                        "EnableTraceEx2(Microsoft-Windows-Kernel-Audit-API-Calls)",
                        &session.name,
                        code,
                    )
                },
            )?;
        }
        Ok(session)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ControlTraceW(QUERY)`: the session's loss counters.
    pub fn query(&self) -> Result<SessionCounters, u32> {
        ffi::control_trace(&self.name, false).map(|b| SessionCounters::read(&b))
    }

    /// `ControlTraceW(STOP)`: returns the final counters. Only a stop that
    /// worked (or found the session gone) marks the session stopped; after
    /// any other error the caller may retry, and the guard tries again when
    /// dropped.
    pub fn stop(&mut self) -> Result<SessionCounters, LiveError> {
        match ffi::control_trace(&self.name, true) {
            Ok(b) => {
                self.stopped = true;
                Ok(SessionCounters::read(&b))
            }
            Err(code) => {
                if code == ERROR_WMI_INSTANCE_NOT_FOUND {
                    self.stopped = true;
                }
                Err(LiveError::from_code(
                    "ControlTraceW(STOP)",
                    &self.name,
                    code,
                ))
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = ffi::control_trace(&self.name, true);
        }
    }
}

/// Stops a session by name (`syscall-sentry stop`).
pub fn stop_session(name: &str) -> Result<SessionCounters, LiveError> {
    ffi::control_trace(name, true)
        .map(|b| SessionCounters::read(&b))
        .map_err(|code| LiveError::from_code("ControlTraceW(STOP)", name, code))
}

/// Queries a session by name.
pub fn query_session(name: &str) -> Result<SessionCounters, LiveError> {
    ffi::control_trace(name, false)
        .map(|b| SessionCounters::read(&b))
        .map_err(|code| LiveError::from_code("ControlTraceW(QUERY)", name, code))
}

/// The thread running `ProcessTrace`; it gives the ring producer back, with
/// `ProcessTrace`'s status, when it ends.
struct ConsumerThread {
    join: JoinHandle<(RingProducer, u32)>,
    closer: ffi::TraceCloser,
}

fn spawn_consumer(
    name: &str,
    producer: RingProducer,
) -> Result<ConsumerThread, (LiveError, Option<RingProducer>)> {
    let mut trace = ffi::open_real_time(name, producer)
        .map_err(|(code, p)| (LiveError::from_code("OpenTraceW", name, code), Some(p)))?;
    let closer = trace.closer();
    let join = std::thread::Builder::new()
        .name("etw-consumer".into())
        .spawn(move || {
            let status = trace.process();
            (trace.close(), status)
        })
        .map_err(|e| {
            (
                LiveError::Other(format!("cannot start consumer thread: {e}")),
                None,
            )
        })?;
    Ok(ConsumerThread { join, closer })
}

/// What `live` runs.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    pub spec: SessionSpec,
    pub stacks: Vec<ClassicEventId>,
    pub force: bool,
    pub duration: Option<Duration>,
    pub status_every: Duration,
    pub ring_bytes: usize,
    /// The reordering stage (lag longer than the flush interval).
    pub reorder: ReorderConfig,
    /// The lag in wall-clock time: no event for this long releases all.
    pub idle_release: Duration,
}

/// [`Platform`] over ETW: the session, and `ProcessTrace` threads.
struct EtwPlatform<'a> {
    opts: &'a LiveOptions,
    session: Option<Session>,
    /// `--force` applies to the first start only; a restart never stops
    /// someone else's session.
    first_start: bool,
}

impl Platform for EtwPlatform<'_> {
    type Consumer = ConsumerThread;

    fn session_name(&self) -> String {
        self.opts.spec.kind.name().to_string()
    }

    fn start(&mut self) -> Result<(), LiveError> {
        let force = self.opts.force && self.first_start;
        self.first_start = false;
        self.session = Some(Session::start(&self.opts.spec, &self.opts.stacks, force)?);
        Ok(())
    }

    fn stop(&mut self) -> Result<SessionCounters, LiveError> {
        match &mut self.session {
            Some(s) => s.stop(),
            None => Ok(SessionCounters::default()),
        }
    }

    fn query(&mut self) -> Result<SessionCounters, u32> {
        match &self.session {
            Some(s) => s.query(),
            None => Err(ERROR_WMI_INSTANCE_NOT_FOUND),
        }
    }

    fn forget(&mut self) {
        if let Some(mut s) = self.session.take() {
            s.stopped = true;
        }
    }

    fn spawn_consumer(&mut self, producer: RingProducer) -> Result<ConsumerThread, LiveError> {
        spawn_consumer(&self.session_name(), producer).map_err(|(e, _)| e)
    }

    fn consumer_finished(&self, c: &ConsumerThread) -> bool {
        c.join.is_finished()
    }

    fn join_consumer(&mut self, c: ConsumerThread) -> Result<(RingProducer, u32), LiveError> {
        c.join.join().map_err(|_| LiveError::ConsumerStuck)
    }

    fn unblock_consumer(&mut self, c: &ConsumerThread) {
        c.closer.close();
    }

    fn stop_request(&self) -> Option<StopReason> {
        ffi::stop_request()
    }
}

/// Runs a live session until Ctrl-C, console close or `duration`, feeding
/// every event to `sink` on this thread. The session is stopped on every
/// exit path (the [`Session`] guard).
pub fn run_live(opts: &LiveOptions, sink: &mut dyn LiveSink) -> Result<LiveOutcome, LiveError> {
    ffi::install_ctrl_handler().map_err(|code| LiveError::Win32 {
        call: "SetConsoleCtrlHandler",
        code,
    })?;
    let mut platform = EtwPlatform {
        opts,
        session: None,
        first_start: true,
    };
    let cfg = DriveConfig {
        duration: opts.duration,
        status_every: opts.status_every,
        ring_bytes: opts.ring_bytes,
        reorder: opts.reorder,
        idle_release: opts.idle_release,
        ..DriveConfig::default()
    };
    drive(&mut platform, &cfg, sink)
}

/// What `record` runs.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    /// With a `Destination::File`.
    pub spec: SessionSpec,
    pub stacks: Vec<ClassicEventId>,
    pub force: bool,
    pub duration: Option<Duration>,
    pub status_every: Duration,
}

/// How a recording ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecordOutcome {
    pub counters: SessionCounters,
    /// `None` when the session was stopped by someone else.
    pub stop_reason: Option<StopReason>,
    pub elapsed_s: f64,
}

/// Records the session into its `.etl` file until Ctrl-C, console close or
/// `duration`. `status` gets a line every `status_every`.
pub fn record(
    opts: &RecordOptions,
    status: &mut dyn FnMut(&str),
) -> Result<RecordOutcome, LiveError> {
    ffi::install_ctrl_handler().map_err(|code| LiveError::Win32 {
        call: "SetConsoleCtrlHandler",
        code,
    })?;
    let mut session = Session::start(&opts.spec, &opts.stacks, opts.force)?;
    let started = Instant::now();
    let mut next_status = started + opts.status_every;
    let mut last = SessionCounters::default();
    let reason = loop {
        std::thread::sleep(Duration::from_millis(50));
        if let Some(r) = ffi::stop_request() {
            break Some(r);
        }
        if opts.duration.is_some_and(|d| started.elapsed() >= d) {
            break Some(StopReason::Duration);
        }
        if Instant::now() >= next_status {
            next_status += opts.status_every;
            match session.query() {
                Ok(c) => {
                    last = c;
                    let s = started.elapsed().as_secs();
                    status(&format!(
                        "[record {:02}:{:02}:{:02}] buffers written {}, EventsLost {}, buffers lost {}",
                        s / 3600,
                        s / 60 % 60,
                        s % 60,
                        c.buffers_written,
                        c.events_lost,
                        c.log_buffers_lost
                    ));
                }
                Err(ERROR_WMI_INSTANCE_NOT_FOUND) => {
                    session.stopped = true;
                    break None;
                }
                Err(_) => {}
            }
        }
    };
    let counters = if reason.is_some() {
        session.stop()?
    } else {
        last
    };
    ffi::signal_done();
    Ok(RecordOutcome {
        counters,
        stop_reason: reason,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::properties::{stack_events, Buffers, Destination};

    /// Wine installs its own tools in System32; Windows has no winecfg.exe.
    fn under_wine() -> bool {
        system_directory().is_some_and(|d| d.join("winecfg.exe").is_file())
    }

    /// Starts, queries and stops a private session with a unique name.
    /// Elevated on real Windows: the whole round trip must succeed, and the
    /// session must be gone afterwards. Not elevated: the not-elevated error.
    /// Under Wine (ETW stubs: StartTraceW succeeds, TraceSetInformation is
    /// not implemented): StartTraceW went through and the failure of the next
    /// call surfaces as that call's error, after which the guard stops the
    /// session.
    #[test]
    fn private_session_round_trip() {
        let name = format!("sentry-live-test-{}", std::process::id());
        let spec = SessionSpec {
            kind: SessionKind::Private { name: name.clone() },
            destination: Destination::RealTime,
            buffers: Buffers::default(),
            source: Default::default(),
        };
        let result = Session::start(&spec, &stack_events(false, false), false);
        match result {
            Err(LiveError::NotElevated { call }) => assert_eq!(call, "StartTraceW"),
            Err(LiveError::Win32 { call, code: 120 }) if under_wine() => {
                assert_eq!(call, "TraceSetInformation(stacks)");
                eprintln!("after the guard's stop: {:?}", stop_session(&name));
            }
            Err(e) => panic!("{e}"),
            Ok(mut s) => {
                assert_eq!(s.name(), name);
                s.query().expect("query a running session");
                s.stop().expect("stop a running session");
                assert_eq!(
                    stop_session(&name),
                    Err(LiveError::NotFound { session: name })
                );
            }
        }
    }
}
