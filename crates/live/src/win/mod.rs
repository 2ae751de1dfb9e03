//! The Windows layer: session start/stop/query, the consumer thread, the
//! main loop that feeds the engine, and `record`/`stop`. Decisions are taken
//! by the platform-neutral modules ([`Supervisor`], [`StatusTracker`]); the
//! Win32 calls live in the private `ffi` module.

#[allow(unsafe_code)]
mod ffi;

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sentry_raw::RawEvent;

pub use ffi::{
    clock_now, kernel_modules, read_process_memory, system_directory, syswow64_directory,
};

/// Tells a console-close handler waiting in the background that the outputs
/// are flushed and the process may end. Call after writing the final report.
pub fn outputs_flushed() {
    ffi::signal_done();
}

use crate::error::{LiveError, ERROR_ALREADY_EXISTS, ERROR_WMI_INSTANCE_NOT_FOUND};
use crate::properties::{
    group_mask_bytes, stack_tracing_bytes, ClassicEventId, PropertiesBlock, SessionCounters,
    SessionKind, SessionSpec, SENTRY_ENABLE_FLAGS,
};
use crate::ring::{ring, RingConsumer, RingProducer};
use crate::status::{LiveTotals, StatusLine, StatusTracker};
use crate::supervisor::{Action, Observation, SessionAlert, StopReason, Supervisor};

/// `TRACE_INFO_CLASS` values (evntrace.h).
const TRACE_STACK_TRACING_INFO: i32 = 3;
const TRACE_SYSTEM_TRACE_ENABLE_FLAGS_INFO: i32 = 4;

/// How long to wait for `ProcessTrace` to return after a stop before closing
/// the trace handle from the main thread, and then before giving up.
const STOP_GRACE: Duration = Duration::from_secs(10);

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
        if let SessionKind::Private { .. } = spec.kind {
            ffi::set_information(
                handle,
                TRACE_SYSTEM_TRACE_ENABLE_FLAGS_INFO,
                &group_mask_bytes(SENTRY_ENABLE_FLAGS),
            )
            .map_err(|code| {
                LiveError::from_code("TraceSetInformation(flags)", &session.name, code)
            })?;
        }
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
        Ok(session)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ControlTraceW(QUERY)`: the session's loss counters.
    pub fn query(&self) -> Result<SessionCounters, u32> {
        ffi::control_trace(&self.name, false).map(|b| SessionCounters::read(&b))
    }

    /// `ControlTraceW(STOP)`: returns the final counters.
    pub fn stop(&mut self) -> Result<SessionCounters, LiveError> {
        self.stopped = true;
        ffi::control_trace(&self.name, true)
            .map(|b| SessionCounters::read(&b))
            .map_err(|code| LiveError::from_code("ControlTraceW(STOP)", &self.name, code))
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

/// The thread running `ProcessTrace`; it gives the ring producer back when
/// it ends.
struct ConsumerThread {
    join: JoinHandle<RingProducer>,
    raw_handle: u64,
}

fn spawn_consumer(
    name: &str,
    producer: RingProducer,
) -> Result<ConsumerThread, (LiveError, Option<RingProducer>)> {
    let mut trace = ffi::open_real_time(name, producer)
        .map_err(|(code, p)| (LiveError::from_code("OpenTraceW", name, code), Some(p)))?;
    let raw_handle = trace.raw_handle();
    let join = std::thread::Builder::new()
        .name("etw-consumer".into())
        .spawn(move || {
            trace.process();
            trace.close().1
        })
        .map_err(|e| {
            (
                LiveError::Other(format!("cannot start consumer thread: {e}")),
                None,
            )
        })?;
    Ok(ConsumerThread { join, raw_handle })
}

/// Receives what a live run produces, on the engine (calling) thread.
pub trait LiveSink {
    fn event(&mut self, ev: &RawEvent<'_>);
    /// The session was stopped by someone else.
    fn session_alert(&mut self, alert: &SessionAlert);
    /// Every `status_every`.
    fn status(&mut self, line: &StatusLine);
    /// Called when the ring is empty (time to expire pending state).
    fn idle(&mut self) {}
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
}

/// How a live run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveOutcome {
    pub totals: LiveTotals,
    /// `None` when the session was lost (stopped by someone else, not
    /// restartable).
    pub stop_reason: Option<StopReason>,
}

/// Runs a live session until Ctrl-C, console close or `duration`, feeding
/// every event to `sink` on this thread.
pub fn run_live(opts: &LiveOptions, sink: &mut dyn LiveSink) -> Result<LiveOutcome, LiveError> {
    ffi::install_ctrl_handler().map_err(|code| LiveError::Win32 {
        call: "SetConsoleCtrlHandler",
        code,
    })?;
    let (producer, mut consumer) = ring(opts.ring_bytes);
    let mut session = Session::start(&opts.spec, &opts.stacks, opts.force)?;
    let name = session.name().to_string();
    let mut thread = Some(spawn_consumer(&name, producer).map_err(|(e, _)| e)?);

    let started = Instant::now();
    let mut sup = Supervisor::default();
    let mut tracker = StatusTracker::default();
    let mut next_status = started + opts.status_every;
    let mut base = LiveTotals::default();
    let mut last = SessionCounters::default();
    let mut events = 0u64;
    let mut stopping_since: Option<Instant> = None;
    let mut closed_from_main = false;
    let mut outcome_reason = None;
    // The producer, back from an ended consumer thread, and a restart that
    // waits for it.
    let mut spare: Option<RingProducer> = None;
    let mut pending_restart: Option<(u32, Instant)> = None;

    let totals = |base: &LiveTotals,
                  last: &SessionCounters,
                  consumer: &RingConsumer,
                  events: u64,
                  sup: &Supervisor| {
        let mut t = LiveTotals::with_session(base, last).with_ring(&consumer.stats());
        t.events = events;
        t.external_stops = sup.external_stops();
        t.restarts = sup.restarts();
        t
    };

    loop {
        // Drain a bounded batch so control checks stay timely.
        let mut n = 0;
        while n < 65_536 {
            let Some(ev) = consumer.pop() else { break };
            sink.event(&ev);
            n += 1;
        }
        events += n as u64;
        if n == 0 {
            sink.idle();
            std::thread::sleep(Duration::from_millis(2));
        }
        let now_s = started.elapsed().as_secs();

        let mut actions = Vec::new();
        if let Some(r) = ffi::stop_request() {
            actions.push(sup.on(Observation::StopRequested(r), now_s));
        }
        if opts.duration.is_some_and(|d| started.elapsed() >= d) {
            actions.push(sup.on(Observation::StopRequested(StopReason::Duration), now_s));
        }
        if thread.as_ref().is_some_and(|t| t.join.is_finished()) {
            if let Some(t) = thread.take() {
                spare = Some(t.join.join().map_err(|_| LiveError::ConsumerStuck)?);
                actions.push(sup.on(Observation::ConsumerEnded, now_s));
            }
        }
        if Instant::now() >= next_status {
            next_status += opts.status_every;
            match session.query() {
                Ok(c) => last = c,
                Err(code) => actions.push(sup.on(
                    Observation::QueryFailed {
                        session_missing: code == ERROR_WMI_INSTANCE_NOT_FOUND,
                    },
                    now_s,
                )),
            }
            let t = totals(&base, &last, &consumer, events, &sup);
            sink.status(&tracker.sample(started.elapsed().as_secs_f64(), t));
        }

        let mut finished = false;
        for action in actions {
            match action {
                Action::Continue => {}
                Action::StopSession(_) => {
                    // A stop wins over a restart still waiting.
                    pending_restart = None;
                    if let Ok(c) = session.stop() {
                        last = c;
                    }
                    stopping_since = Some(Instant::now());
                }
                // Restart once the old consumer has ended and given the
                // producer back (at once if ProcessTrace returned; after it
                // returns if a query noticed the session is gone).
                Action::Restart { attempt } => {
                    pending_restart = Some((attempt, Instant::now()));
                }
                Action::Finish(r) => {
                    outcome_reason = Some(r);
                    finished = true;
                }
                Action::GiveUp => finished = true,
            }
        }
        if let (Some((attempt, since)), false) = (pending_restart, finished) {
            if let Some(producer) = spare.take() {
                pending_restart = None;
                base = LiveTotals::with_session(&base, &last);
                last = SessionCounters::default();
                let result = restart(&opts.spec, &opts.stacks, &mut session, producer);
                let restarted = result.is_ok();
                if let Ok(t) = result {
                    thread = Some(t);
                    closed_from_main = false;
                }
                sink.session_alert(&SessionAlert {
                    session: name.clone(),
                    elapsed_s: now_s,
                    attempt,
                    restarted,
                });
                let obs = if restarted {
                    Observation::Restarted
                } else {
                    Observation::RestartFailed
                };
                if sup.on(obs, now_s) == Action::GiveUp {
                    finished = true;
                }
            } else if since.elapsed() > STOP_GRACE && !closed_from_main {
                // The session is gone but ProcessTrace has not returned.
                if let Some(t) = &thread {
                    ffi::close_trace_handle(t.raw_handle);
                }
                closed_from_main = true;
            }
        }
        if finished {
            break;
        }
        if let Some(since) = stopping_since {
            let waited = since.elapsed();
            if waited > STOP_GRACE && !closed_from_main {
                if let Some(t) = &thread {
                    ffi::close_trace_handle(t.raw_handle);
                }
                closed_from_main = true;
            } else if waited > STOP_GRACE * 2 {
                return Err(LiveError::ConsumerStuck);
            }
        }
    }
    // The producer is gone (thread joined): drain what is left.
    while let Some(ev) = consumer.pop() {
        sink.event(&ev);
        events += 1;
    }
    let t = totals(&base, &last, &consumer, events, &sup);
    match outcome_reason {
        Some(_) => Ok(LiveOutcome {
            totals: t,
            stop_reason: outcome_reason,
        }),
        None => Err(LiveError::SessionLost {
            session: name,
            restarts: sup.restarts(),
        }),
    }
}

/// Starts the session again after someone else stopped it, and a new
/// consumer on it.
fn restart(
    spec: &SessionSpec,
    stacks: &[ClassicEventId],
    session: &mut Session,
    producer: RingProducer,
) -> Result<ConsumerThread, LiveError> {
    // The old session is gone; do not stop whatever now has its name.
    session.stopped = true;
    *session = Session::start(spec, stacks, false)?;
    spawn_consumer(session.name(), producer).map_err(|(e, _)| e)
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
        };
        let result = Session::start(&spec, &stack_events(false, false), false);
        match result {
            Err(LiveError::NotElevated { call }) => assert_eq!(call, "StartTraceW"),
            Err(LiveError::Win32 { call, code: 120 }) if under_wine() => {
                assert_eq!(call, "TraceSetInformation(flags)");
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
