//! The live main loop, platform-neutral: drains the ring into the engine,
//! polls for stop requests, the consumer's end and the session's counters,
//! and carries out the [`Supervisor`]'s decisions (stop, restart, finish)
//! through a [`Platform`]. Windows implements `Platform` with ETW calls;
//! the tests below with a fake session, so the restart logic runs on Linux.

use std::time::{Duration, Instant};

use sentry_raw::RawEvent;

use crate::error::{LiveError, ERROR_WMI_INSTANCE_NOT_FOUND};
use crate::properties::SessionCounters;
use crate::reorder::{Reorder, ReorderConfig, DEFAULT_MAX_BYTES};
use crate::ring::{ring, RingConsumer, RingProducer};
use crate::status::{LiveTotals, StatusLine, StatusTracker};
use crate::supervisor::{Action, Observation, SessionAlert, StopReason, Supervisor};

/// Receives what a live run produces, on the engine (calling) thread.
pub trait LiveSink {
    fn event(&mut self, ev: &RawEvent<'_>);
    /// The session was stopped by someone else.
    fn session_alert(&mut self, alert: &SessionAlert);
    /// Every `status_every`.
    fn status(&mut self, line: &StatusLine);
    /// Called when the ring is empty (time to expire pending state).
    fn idle(&mut self) {}
    /// Events may be missing, or have reached the sink out of order, between
    /// raw timestamps `from` and `to`: `cause` is `session_loss` (the
    /// session's EventsLost/RealTimeBuffersLost grew), `ring_drop` (the
    /// callback found the ring full) or `reorder_overflow` / `reorder_late`
    /// (the reordering stage could not keep time order). Called before the
    /// events after `to` reach the sink.
    fn events_missing(&mut self, _from: u64, _to: u64, _cause: &str) {}
}

/// What the loop needs from the system.
pub trait Platform {
    /// A running consumer (on Windows: the `ProcessTrace` thread).
    type Consumer;
    fn session_name(&self) -> String;
    /// Starts the session (again, after an external stop).
    fn start(&mut self) -> Result<(), LiveError>;
    /// Stops our session; returns its final counters. After an error the
    /// session still counts as running (the loop tries again).
    fn stop(&mut self) -> Result<SessionCounters, LiveError>;
    /// Queries our session; `Err` is the Win32 code.
    fn query(&mut self) -> Result<SessionCounters, u32>;
    /// The session is gone (stopped by someone else): do not stop whatever
    /// may carry its name now.
    fn forget(&mut self);
    fn spawn_consumer(&mut self, producer: RingProducer) -> Result<Self::Consumer, LiveError>;
    fn consumer_finished(&self, c: &Self::Consumer) -> bool;
    /// Joins a finished consumer: the producer back, and `ProcessTrace`'s
    /// status.
    fn join_consumer(&mut self, c: Self::Consumer) -> Result<(RingProducer, u32), LiveError>;
    /// Makes a consumer that does not return on its own return.
    fn unblock_consumer(&mut self, c: &Self::Consumer);
    /// Ctrl-C, console close.
    fn stop_request(&self) -> Option<StopReason>;
}

/// Attempts at `ControlTraceW(STOP)` before giving up (the session guard
/// tries once more when it is dropped).
pub const STOP_ATTEMPTS: u32 = 5;
/// Time between STOP attempts.
pub const STOP_RETRY_EVERY: Duration = Duration::from_millis(200);

/// Loop settings.
#[derive(Debug, Clone, Copy)]
pub struct DriveConfig {
    pub duration: Option<Duration>,
    pub status_every: Duration,
    pub ring_bytes: usize,
    /// How long to wait for the consumer after a stop before unblocking it,
    /// and (twice that) before giving up on it.
    pub stop_grace: Duration,
    /// Sleep when the ring is empty.
    pub idle_sleep: Duration,
    /// The reordering stage between the ring and the sink.
    pub reorder: ReorderConfig,
    /// No event for this long: every buffer has been flushed, release all
    /// the stage holds (the lag, in wall-clock time).
    pub idle_release: Duration,
}

impl Default for DriveConfig {
    fn default() -> Self {
        DriveConfig {
            duration: None,
            status_every: Duration::from_secs(5),
            ring_bytes: crate::ring::DEFAULT_RING_BYTES,
            stop_grace: Duration::from_secs(10),
            idle_sleep: Duration::from_millis(2),
            // No lag: events go on as they arrive (the tests' fake session
            // delivers in time order); `live` sets the real one.
            reorder: ReorderConfig {
                max_lag_ticks: 0,
                max_bytes: DEFAULT_MAX_BYTES,
                processors: 0,
            },
            idle_release: Duration::from_millis(crate::reorder::DEFAULT_LAG_MS),
        }
    }
}

/// What [`LiveSink::events_missing`] has been told so far.
#[derive(Debug, Default)]
struct LossMarks {
    session_loss: u64,
    ring_drops: u64,
    overflow: u64,
    late: u64,
    /// The released timestamp at the last report.
    mark: u64,
}

impl LossMarks {
    fn report(&mut self, t: &LiveTotals, stage: &Reorder, sink: &mut dyn LiveSink) {
        let from = self.mark;
        let to = stage.newest();
        let session_loss = t.events_lost + t.real_time_buffers_lost;
        let mut any = false;
        for (now, seen, cause) in [
            (session_loss, &mut self.session_loss, "session_loss"),
            (t.ring_drops, &mut self.ring_drops, "ring_drop"),
            (t.reorder_overflow, &mut self.overflow, "reorder_overflow"),
            (t.reorder_late, &mut self.late, "reorder_late"),
        ] {
            if now > *seen {
                sink.events_missing(from, to, cause);
                *seen = now;
                any = true;
            }
        }
        if !any {
            self.mark = stage.released_up_to();
        }
    }
}

/// How a live run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveOutcome {
    pub totals: LiveTotals,
    pub stop_reason: StopReason,
}

fn totals(
    base: &LiveTotals,
    last: &SessionCounters,
    consumer: &RingConsumer,
    stage: &Reorder,
    sup: &Supervisor,
) -> LiveTotals {
    let mut t = LiveTotals::with_session(base, last).with_ring(&consumer.stats());
    let r = stage.stats();
    t.events = r.released;
    t.reorder_late = r.late;
    t.reorder_overflow = r.overflow;
    t.external_stops = sup.external_stops();
    t.restarts = sup.restarts();
    t
}

/// Starts the session and a consumer, then runs until a stop request, the
/// duration, or the session is lost for good (then `SessionLost`). Every
/// event goes to `sink` on this thread.
pub fn drive<P: Platform>(
    platform: &mut P,
    cfg: &DriveConfig,
    sink: &mut dyn LiveSink,
) -> Result<LiveOutcome, LiveError> {
    let (producer, mut consumer) = ring(cfg.ring_bytes);
    platform.start()?;
    let name = platform.session_name();
    let mut thread = Some(platform.spawn_consumer(producer)?);

    let started = Instant::now();
    let mut sup = Supervisor::default();
    let mut tracker = StatusTracker::default();
    let mut next_status = started + cfg.status_every;
    let mut base = LiveTotals::default();
    let mut last = SessionCounters::default();
    let mut stage = Reorder::new(cfg.reorder);
    let mut last_event = Instant::now();
    // Loss and disorder counters as last reported to the sink, and the
    // released timestamp then (where a new gap starts).
    let mut reported = LossMarks::default();
    let mut stopping_since: Option<Instant> = None;
    let mut unblocked = false;
    let mut outcome_reason = None;
    // The producer, back from an ended consumer, and a restart waiting for it.
    let mut spare: Option<RingProducer> = None;
    let mut pending_restart: Option<(u32, Instant)> = None;
    // A STOP that failed: attempts so far, next attempt, last error.
    let mut stop_retry: Option<(u32, Instant, LiveError)> = None;
    let mut failure: Option<LiveError> = None;
    let try_stop = |platform: &mut P,
                    last: &mut SessionCounters,
                    retry: &mut Option<(u32, Instant, LiveError)>| {
        match platform.stop() {
            Ok(c) => {
                *last = c;
                *retry = None;
            }
            Err(e) => {
                let n = retry.as_ref().map_or(0, |r| r.0) + 1;
                *retry = Some((n, Instant::now() + STOP_RETRY_EVERY, e));
            }
        }
    };

    loop {
        // Drain a bounded batch so control checks stay timely; release
        // what the reordering stage can every 256 records.
        let mut n = 0u64;
        {
            let mut emit = |ev: &RawEvent<'_>| sink.event(ev);
            while n < 65_536 {
                let Some(rec) = consumer.pop_record() else {
                    break;
                };
                stage.push(rec, &mut emit);
                n += 1;
                if n % 256 == 0 {
                    stage.release(&mut emit);
                }
            }
            stage.release(&mut emit);
            if n > 0 {
                last_event = Instant::now();
            } else if stage.held() > 0 && last_event.elapsed() >= cfg.idle_release {
                stage.release_all(&mut emit);
            }
        }
        if n == 0 {
            sink.idle();
            std::thread::sleep(cfg.idle_sleep);
        }
        let now_s = started.elapsed().as_secs();
        // Ring drops and the stage's disorder, every round; the session's
        // counters when a query refreshed them (below).
        reported.report(&totals(&base, &last, &consumer, &stage, &sup), &stage, sink);

        let mut actions = Vec::new();
        if let Some(r) = platform.stop_request() {
            actions.push(sup.on(Observation::StopRequested(r), now_s));
        }
        if cfg.duration.is_some_and(|d| started.elapsed() >= d) {
            actions.push(sup.on(Observation::StopRequested(StopReason::Duration), now_s));
        }
        if thread
            .as_ref()
            .is_some_and(|t| platform.consumer_finished(t))
        {
            if let Some(t) = thread.take() {
                let (producer, status) = platform.join_consumer(t)?;
                spare = Some(producer);
                let session_running = match platform.query() {
                    Ok(_) => true,
                    Err(code) => code != ERROR_WMI_INSTANCE_NOT_FOUND,
                };
                actions.push(sup.on(
                    Observation::ConsumerEnded {
                        status,
                        session_running,
                    },
                    now_s,
                ));
            }
        }
        if Instant::now() >= next_status {
            next_status += cfg.status_every;
            match platform.query() {
                Ok(c) => {
                    last = c;
                    reported.report(&totals(&base, &last, &consumer, &stage, &sup), &stage, sink);
                }
                Err(code) => actions.push(sup.on(
                    Observation::QueryFailed {
                        session_missing: code == ERROR_WMI_INSTANCE_NOT_FOUND,
                    },
                    now_s,
                )),
            }
            let t = totals(&base, &last, &consumer, &stage, &sup);
            sink.status(&tracker.sample(started.elapsed().as_secs_f64(), t));
        }

        let mut finished = false;
        for action in actions {
            match action {
                Action::Continue => {}
                Action::StopSession(_) => {
                    // A stop wins over a restart still waiting.
                    pending_restart = None;
                    try_stop(platform, &mut last, &mut stop_retry);
                    stopping_since = Some(Instant::now());
                }
                Action::Fail { status } => {
                    // Never leave the session running unread.
                    try_stop(platform, &mut last, &mut stop_retry);
                    failure = Some(LiveError::ConsumerFailed {
                        session: name.clone(),
                        code: status,
                    });
                    finished = true;
                }
                // Restart once the old consumer has ended and given the
                // producer back (at once if it ended; later if a query
                // noticed the session is gone first).
                Action::Restart { attempt } => {
                    platform.forget();
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
                let result = platform
                    .start()
                    .and_then(|()| platform.spawn_consumer(producer));
                let restarted = result.is_ok();
                if let Ok(t) = result {
                    thread = Some(t);
                    unblocked = false;
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
            } else if since.elapsed() > cfg.stop_grace && !unblocked {
                // The session is gone but the consumer has not returned.
                if let Some(t) = &thread {
                    platform.unblock_consumer(t);
                }
                unblocked = true;
            }
        }
        // Retry a failed STOP a few times, spaced out.
        if let Some((n, at, _)) = &stop_retry {
            if *n < STOP_ATTEMPTS && Instant::now() >= *at {
                try_stop(platform, &mut last, &mut stop_retry);
            }
        }
        if finished {
            break;
        }
        if let Some(since) = stopping_since {
            let waited = since.elapsed();
            if waited > cfg.stop_grace && !unblocked {
                if let Some(t) = &thread {
                    platform.unblock_consumer(t);
                }
                unblocked = true;
            } else if waited > cfg.stop_grace * 2 {
                return Err(LiveError::ConsumerStuck);
            }
        }
    }
    // The consumer has ended: drain what is left, then everything held.
    {
        let mut emit = |ev: &RawEvent<'_>| sink.event(ev);
        while let Some(rec) = consumer.pop_record() {
            stage.push(rec, &mut emit);
        }
    }
    // The final counters (from the STOP) before the last events go.
    reported.report(&totals(&base, &last, &consumer, &stage, &sup), &stage, sink);
    stage.release_all(&mut |ev: &RawEvent<'_>| sink.event(ev));
    // A failed consumer ended the loop at once: finish the STOP retries.
    while let Some((n, at, _)) = &stop_retry {
        if *n >= STOP_ATTEMPTS {
            break;
        }
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        try_stop(platform, &mut last, &mut stop_retry);
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if let Some((_, _, e)) = stop_retry {
        return Err(e);
    }
    let t = totals(&base, &last, &consumer, &stage, &sup);
    match outcome_reason {
        Some(r) => Ok(LiveOutcome {
            totals: t,
            stop_reason: r,
        }),
        None => Err(LiveError::SessionLost {
            session: name,
            restarts: sup.restarts(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::RecordView;
    use sentry_raw::guids;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::thread::JoinHandle;

    /// A fake session: each consumer generation pushes its events, then
    /// either ends by itself (an external stop) or waits for `stop`.
    struct Fake {
        /// Per generation: (events to push, ends by itself afterwards).
        plan: Vec<(u64, bool)>,
        generation: usize,
        running: Arc<AtomicBool>,
        starts: u32,
        /// Fail starts from this count on (a restart that cannot succeed).
        fail_start_from: Option<u32>,
        stops: u32,
        forgotten: u32,
        next_ts: u64,
        /// STOPs that fail (ERROR_BUSY) before one succeeds.
        fail_stops: u32,
        /// A generation whose `ProcessTrace` returns this status by itself
        /// after its events, the session still running.
        fail_generation: Option<(usize, u32)>,
        /// Deliver blocks of 1000 events as 4 processors' buffers, highest
        /// processor first, instead of in time order.
        per_processor: bool,
    }

    impl Fake {
        fn new(plan: Vec<(u64, bool)>) -> Fake {
            Fake {
                plan,
                generation: 0,
                running: Arc::new(AtomicBool::new(false)),
                starts: 0,
                fail_start_from: None,
                stops: 0,
                forgotten: 0,
                next_ts: 1,
                fail_stops: 0,
                fail_generation: None,
                per_processor: false,
            }
        }
    }

    impl Platform for Fake {
        type Consumer = JoinHandle<(RingProducer, u32)>;

        fn session_name(&self) -> String {
            "fake".into()
        }
        fn start(&mut self) -> Result<(), LiveError> {
            self.starts += 1;
            if self.fail_start_from.is_some_and(|n| self.starts >= n) {
                return Err(LiveError::AlreadyRunning {
                    session: "fake".into(),
                });
            }
            self.running.store(true, Ordering::SeqCst);
            Ok(())
        }
        fn stop(&mut self) -> Result<SessionCounters, LiveError> {
            self.stops += 1;
            if self.fail_stops > 0 {
                self.fail_stops -= 1;
                return Err(LiveError::Win32 {
                    call: "ControlTraceW(STOP)",
                    code: crate::error::ERROR_BUSY,
                });
            }
            self.running.store(false, Ordering::SeqCst);
            Ok(SessionCounters {
                events_lost: 2,
                ..Default::default()
            })
        }
        fn query(&mut self) -> Result<SessionCounters, u32> {
            if self.running.load(Ordering::SeqCst) {
                Ok(SessionCounters::default())
            } else {
                Err(ERROR_WMI_INSTANCE_NOT_FOUND)
            }
        }
        fn forget(&mut self) {
            self.forgotten += 1;
        }
        fn spawn_consumer(&mut self, mut p: RingProducer) -> Result<Self::Consumer, LiveError> {
            let (n, ends) = self
                .plan
                .get(self.generation)
                .copied()
                .unwrap_or((0, false));
            let fails = self
                .fail_generation
                .and_then(|(g, code)| (g == self.generation).then_some(code));
            self.generation += 1;
            let first = self.next_ts;
            self.next_ts += n;
            let running = Arc::clone(&self.running);
            let per_processor = self.per_processor;
            Ok(std::thread::spawn(move || {
                let mut order: Vec<(u16, u64)> = (first..first + n).map(|ts| (0, ts)).collect();
                if per_processor {
                    order.clear();
                    let all: Vec<u64> = (first..first + n).collect();
                    for block in all.chunks(1000) {
                        for cpu in (0..4u16).rev() {
                            order.extend(
                                block
                                    .iter()
                                    .filter(|&&ts| ts % 4 == u64::from(cpu))
                                    .map(|&ts| (cpu, ts)),
                            );
                        }
                    }
                }
                for (cpu, ts) in order {
                    let payload = ts.to_le_bytes();
                    let v = RecordView {
                        provider: guids::PERF_INFO,
                        opcode: 51,
                        timestamp: ts,
                        processor: cpu,
                        payload: &payload,
                        ..Default::default()
                    };
                    while !p.push(&v) {
                        std::thread::yield_now();
                    }
                }
                if let Some(code) = fails {
                    return (p, code);
                }
                if ends {
                    // Someone else stopped the session.
                    running.store(false, Ordering::SeqCst);
                } else {
                    while running.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                (p, 0)
            }))
        }
        fn consumer_finished(&self, c: &Self::Consumer) -> bool {
            c.is_finished()
        }
        fn join_consumer(&mut self, c: Self::Consumer) -> Result<(RingProducer, u32), LiveError> {
            c.join().map_err(|_| LiveError::ConsumerStuck)
        }
        fn unblock_consumer(&mut self, _c: &Self::Consumer) {
            self.running.store(false, Ordering::SeqCst);
        }
        fn stop_request(&self) -> Option<StopReason> {
            None
        }
    }

    #[derive(Default)]
    struct Collect {
        timestamps: Vec<u64>,
        alerts: Vec<SessionAlert>,
        statuses: usize,
        missing: Vec<(u64, u64, String)>,
    }

    impl LiveSink for Collect {
        fn event(&mut self, ev: &RawEvent<'_>) {
            assert_eq!(ev.payload, &ev.timestamp.to_le_bytes());
            self.timestamps.push(ev.timestamp);
        }
        fn session_alert(&mut self, a: &SessionAlert) {
            self.alerts.push(a.clone());
        }
        fn status(&mut self, _line: &StatusLine) {
            self.statuses += 1;
        }
        fn events_missing(&mut self, from: u64, to: u64, cause: &str) {
            self.missing.push((from, to, cause.to_string()));
        }
    }

    fn cfg(duration_ms: u64) -> DriveConfig {
        DriveConfig {
            duration: Some(Duration::from_millis(duration_ms)),
            status_every: Duration::from_millis(20),
            ring_bytes: 1 << 16,
            stop_grace: Duration::from_secs(5),
            idle_sleep: Duration::from_millis(1),
            ..DriveConfig::default()
        }
    }

    #[test]
    fn duration_stop_delivers_every_event() {
        let mut fake = Fake::new(vec![(20_000, false)]);
        let mut sink = Collect::default();
        let out = drive(&mut fake, &cfg(300), &mut sink).unwrap();
        assert_eq!(out.stop_reason, StopReason::Duration);
        assert_eq!(sink.timestamps, (1..=20_000).collect::<Vec<_>>());
        assert_eq!(out.totals.events, 20_000);
        assert_eq!(
            out.totals.events_lost, 2,
            "final counters come from the stop"
        );
        assert_eq!((fake.starts, fake.stops, fake.forgotten), (1, 1, 0));
        assert!(sink.alerts.is_empty());
        assert!(sink.statuses >= 1);
    }

    #[test]
    fn per_processor_delivery_reaches_the_sink_in_time_order() {
        let run = |lag: u64| {
            let mut fake = Fake::new(vec![(20_000, false)]);
            fake.per_processor = true;
            let mut sink = Collect::default();
            let mut c = cfg(300);
            c.reorder = ReorderConfig {
                max_lag_ticks: lag,
                max_bytes: 1 << 20,
                processors: 4,
            };
            let out = drive(&mut fake, &c, &mut sink).unwrap();
            assert_eq!(out.totals.events, 20_000);
            sink.timestamps
        };
        let sorted: Vec<u64> = (1..=20_000).collect();
        // A lag longer than a block of buffers: time order.
        assert_eq!(run(2048), sorted);
        // Without a lag the sink sees the delivery order.
        let raw = run(0);
        assert_ne!(raw, sorted);
        let mut s = raw.clone();
        s.sort_unstable();
        assert_eq!(s, sorted, "nothing lost either way");
    }

    #[test]
    fn a_failing_consumer_stops_the_session_and_reports_the_error() {
        // ProcessTrace returns ERROR_INTERNAL_ERROR after 3000 events while
        // the session still runs: stop it, no restart, the error out.
        let mut fake = Fake::new(vec![(3_000, false), (1_000, false)]);
        fake.fail_generation = Some((0, 1359));
        let mut sink = Collect::default();
        let err = drive(&mut fake, &cfg(10_000), &mut sink).unwrap_err();
        assert_eq!(
            err,
            LiveError::ConsumerFailed {
                session: "fake".into(),
                code: 1359
            }
        );
        assert_eq!((fake.starts, fake.stops, fake.forgotten), (1, 1, 0));
        assert!(!fake.running.load(Ordering::SeqCst), "session stopped");
        assert_eq!(sink.timestamps.len(), 3_000, "events before the failure");
        assert!(sink.alerts.is_empty(), "not an outside stop");
    }

    #[test]
    fn session_loss_and_disorder_reach_the_sink() {
        // The fake's STOP reports EventsLost 2, queries report 0: the loss
        // is reported once, after the stop, up to the newest timestamp.
        let mut fake = Fake::new(vec![(2_000, false)]);
        fake.per_processor = true;
        let mut sink = Collect::default();
        let mut c = cfg(300);
        // Room for every event: the fake retries a full ring, which the
        // ring counts as drops (a slow host, e.g. under Wine).
        c.ring_bytes = 1 << 22;
        // A lag shorter than a block: some events come late.
        c.reorder = ReorderConfig {
            max_lag_ticks: 100,
            max_bytes: 1 << 20,
            processors: 4,
        };
        drive(&mut fake, &c, &mut sink).unwrap();
        assert!(
            sink.missing.iter().any(|(_, _, c)| c == "reorder_late"),
            "{:?}",
            sink.missing
        );
        assert!(sink.missing.iter().all(|(f, t, _)| f <= t));
        let loss: Vec<_> = sink
            .missing
            .iter()
            .filter(|m| m.2 == "session_loss")
            .collect();
        assert_eq!(loss.len(), 1, "the STOP's EventsLost, once");
        assert_eq!(loss[0].1, 2_000, "up to the newest event");
        // In time order only the session's loss is reported.
        let mut fake = Fake::new(vec![(2_000, false)]);
        let mut sink = Collect::default();
        let mut c = cfg(300);
        c.ring_bytes = 1 << 22;
        drive(&mut fake, &c, &mut sink).unwrap();
        assert_eq!(sink.missing.len(), 1, "{:?}", sink.missing);
        assert_eq!(sink.missing[0].2, "session_loss");
    }

    #[test]
    fn a_failed_stop_is_retried() {
        let mut fake = Fake::new(vec![(500, false)]);
        fake.fail_stops = 2;
        let mut sink = Collect::default();
        let out = drive(&mut fake, &cfg(200), &mut sink).unwrap();
        assert_eq!(out.stop_reason, StopReason::Duration);
        assert_eq!(fake.stops, 3, "two failures, then the stop");
        assert!(!fake.running.load(Ordering::SeqCst));
        assert_eq!(
            out.totals.events_lost, 2,
            "counters from the stop that worked"
        );
        // A STOP that never works: the loop gives up after STOP_ATTEMPTS
        // and says so (the session guard tries again on drop).
        let mut fake = Fake::new(vec![(500, false)]);
        fake.fail_stops = 100;
        let mut c = cfg(200);
        c.stop_grace = Duration::from_millis(300);
        let err = drive(&mut fake, &c, &mut Collect::default()).unwrap_err();
        assert_eq!(
            err,
            LiveError::Win32 {
                call: "ControlTraceW(STOP)",
                code: crate::error::ERROR_BUSY
            }
        );
        assert_eq!(fake.stops, STOP_ATTEMPTS);
    }

    #[test]
    fn external_stop_is_reported_and_the_session_restarted() {
        // Generation 1 is stopped by someone else after 5000 events; the
        // restarted generation 2 delivers 7000 more until the duration ends.
        let mut fake = Fake::new(vec![(5_000, true), (7_000, false)]);
        let mut sink = Collect::default();
        let out = drive(&mut fake, &cfg(1_500), &mut sink).unwrap();
        assert_eq!(out.stop_reason, StopReason::Duration);
        assert_eq!(sink.timestamps, (1..=12_000).collect::<Vec<_>>());
        assert_eq!(sink.alerts.len(), 1);
        assert!(sink.alerts[0].restarted);
        assert_eq!(sink.alerts[0].attempt, 1);
        assert_eq!((out.totals.external_stops, out.totals.restarts), (1, 1));
        assert_eq!((fake.starts, fake.stops, fake.forgotten), (2, 1, 1));
    }

    #[test]
    fn a_restart_that_fails_loses_the_session() {
        let mut fake = Fake::new(vec![(1_000, true)]);
        fake.fail_start_from = Some(2);
        let mut sink = Collect::default();
        let err = drive(&mut fake, &cfg(10_000), &mut sink).unwrap_err();
        assert_eq!(
            err,
            LiveError::SessionLost {
                session: "fake".into(),
                restarts: 1
            }
        );
        assert_eq!(
            sink.timestamps.len(),
            1_000,
            "events before the loss arrive"
        );
        assert_eq!(sink.alerts.len(), 1);
        assert!(!sink.alerts[0].restarted);
    }

    #[test]
    fn repeated_external_stops_hit_the_restart_budget() {
        // Every generation is stopped by someone else: 5 restarts a minute
        // are allowed, the 6th stop gives up.
        let mut fake = Fake::new(vec![(10, true); 10]);
        let mut sink = Collect::default();
        let err = drive(&mut fake, &cfg(60_000), &mut sink).unwrap_err();
        assert_eq!(
            err,
            LiveError::SessionLost {
                session: "fake".into(),
                restarts: 5
            }
        );
        assert_eq!(sink.alerts.len(), 5);
        assert_eq!(sink.timestamps.len(), 60);
        assert_eq!(fake.starts, 6);
    }
}
