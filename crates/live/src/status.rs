//! The periodic status line and the final live statistics.

use std::fmt;

use crate::properties::SessionCounters;
use crate::ring::RingStats;

/// Totals of one live run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LiveTotals {
    /// Events the engine received.
    pub events: u64,
    /// Records dropped in the callback because the ring was full.
    pub ring_drops: u64,
    /// `EventsLost` of the session (summed over restarts).
    pub events_lost: u64,
    /// `RealTimeBuffersLost` of the session (summed over restarts).
    pub real_time_buffers_lost: u64,
    /// `BuffersWritten` (record mode).
    pub buffers_written: u64,
    /// Times the session was stopped by someone else.
    pub external_stops: u32,
    pub restarts: u32,
    /// Extended items that did not fit a record view.
    pub truncated_extended: u64,
    /// Events that arrived after later ones had gone to the engine (the
    /// reordering stage's lag was too short for them).
    pub reorder_late: u64,
    /// Events the reordering stage let go early because its memory was full.
    pub reorder_overflow: u64,
}

impl LiveTotals {
    /// Adds the session counters from a query (they are per session start,
    /// so after a restart the old session's last values are added to `base`).
    pub fn with_session(base: &LiveTotals, c: &SessionCounters) -> LiveTotals {
        LiveTotals {
            events_lost: base.events_lost + u64::from(c.events_lost),
            real_time_buffers_lost: base.real_time_buffers_lost
                + u64::from(c.real_time_buffers_lost),
            buffers_written: base.buffers_written + u64::from(c.buffers_written),
            ..*base
        }
    }

    pub fn with_ring(self, r: &RingStats) -> LiveTotals {
        LiveTotals {
            ring_drops: r.dropped,
            truncated_extended: r.truncated_extended,
            ..self
        }
    }
}

/// One status line: rate since the previous line plus the loss counters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatusLine {
    pub elapsed_s: f64,
    pub events_per_s: f64,
    pub totals: LiveTotals,
}

/// Computes rates between successive samples.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusTracker {
    last_events: u64,
    last_elapsed_s: f64,
}

impl StatusTracker {
    pub fn sample(&mut self, elapsed_s: f64, totals: LiveTotals) -> StatusLine {
        let dt = elapsed_s - self.last_elapsed_s;
        let de = totals.events.saturating_sub(self.last_events);
        let events_per_s = if dt > 0.0 { de as f64 / dt } else { 0.0 };
        self.last_events = totals.events;
        self.last_elapsed_s = elapsed_s;
        StatusLine {
            elapsed_s,
            events_per_s,
            totals,
        }
    }
}

impl fmt::Display for StatusLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.totals;
        let s = self.elapsed_s as u64;
        write!(
            f,
            "[live {:02}:{:02}:{:02}] {:.0} events/s, {} events, ring drops {}, ETW EventsLost {}, RealTimeBuffersLost {}",
            s / 3600,
            s / 60 % 60,
            s % 60,
            self.events_per_s,
            t.events,
            t.ring_drops,
            t.events_lost,
            t.real_time_buffers_lost
        )?;
        if t.reorder_late + t.reorder_overflow > 0 {
            write!(
                f,
                ", out of order: late {}, reorder overflow {}",
                t.reorder_late, t.reorder_overflow
            )?;
        }
        if t.external_stops > 0 {
            write!(
                f,
                ", session stopped externally {}x (restarted {}x)",
                t.external_stops, t.restarts
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_between_samples() {
        let mut tr = StatusTracker::default();
        let mut t = LiveTotals {
            events: 50_000,
            ..Default::default()
        };
        let l = tr.sample(5.0, t);
        assert_eq!(l.events_per_s, 10_000.0);
        t.events = 80_000;
        t.ring_drops = 12;
        let l = tr.sample(10.0, t);
        assert_eq!(l.events_per_s, 6_000.0);
        assert_eq!(
            l.to_string(),
            "[live 00:00:10] 6000 events/s, 80000 events, ring drops 12, ETW EventsLost 0, RealTimeBuffersLost 0"
        );
    }

    #[test]
    fn session_counters_add_up_over_restarts() {
        let first = SessionCounters {
            events_lost: 3,
            real_time_buffers_lost: 1,
            ..Default::default()
        };
        let base = LiveTotals::with_session(&LiveTotals::default(), &first);
        let second = SessionCounters {
            events_lost: 4,
            ..Default::default()
        };
        let now = LiveTotals::with_session(&base, &second);
        assert_eq!((now.events_lost, now.real_time_buffers_lost), (7, 1));
    }
}
