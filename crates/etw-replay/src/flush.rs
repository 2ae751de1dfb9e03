//! The order in which a real-time consumer receives a session's events.
//!
//! ETW logs each event into the current buffer of the processor it runs on;
//! a buffer goes to the consumer when it is full, or when the session's
//! flush timer fires (then every non-empty buffer goes, processor by
//! processor). Within one processor's buffers events stay in time order;
//! across processors they interleave by flush, which is why
//! [ProcessTrace](https://learn.microsoft.com/windows/win32/api/evntrace/nf-evntrace-processtrace)
//! "might deliver events out of order"
//! ([EVENT_TRACE_PROPERTIES.FlushTimer](https://learn.microsoft.com/windows/win32/api/evntrace/ns-evntrace-event_trace_properties),
//! [Configuring and starting an event tracing session](https://learn.microsoft.com/windows/win32/etw/configuring-and-starting-an-event-tracing-session)).
//! This model replays exactly that on a trace's time-ordered events.

use crate::event::ReplayEvent;

/// Buffers and timer of the modelled session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushModel {
    /// Bytes of one buffer (`BufferSize` KB × 1024).
    pub buffer_bytes: usize,
    /// Flush interval in trace ticks (`FlushTimer`, in ms with
    /// `EVENT_TRACE_USE_MS_FLUSH_TIMER`, else seconds); 0: no timer (buffers
    /// go only when full, and at the end).
    pub flush_ticks: u64,
}

/// One delivered buffer: the processor and the indices of its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flushed {
    pub processor: u16,
    pub events: Vec<u32>,
}

/// The buffers of `events` (in time order) in the order they are flushed.
pub fn flush_order(events: &[ReplayEvent], m: FlushModel) -> Vec<Flushed> {
    let mut out = Vec::new();
    // Per processor: indices and bytes used.
    let mut bufs: Vec<(Vec<u32>, usize)> = Vec::new();
    let mut next_tick = events
        .first()
        .map_or(0, |e| e.timestamp.saturating_add(m.flush_ticks));
    let flush_all = |bufs: &mut Vec<(Vec<u32>, usize)>, out: &mut Vec<Flushed>| {
        for (cpu, (idx, used)) in bufs.iter_mut().enumerate() {
            if !idx.is_empty() {
                out.push(Flushed {
                    processor: cpu as u16,
                    events: std::mem::take(idx),
                });
                *used = 0;
            }
        }
    };
    for (i, e) in events.iter().enumerate() {
        if m.flush_ticks != 0 && e.timestamp >= next_tick {
            flush_all(&mut bufs, &mut out);
            while next_tick <= e.timestamp {
                next_tick = next_tick.saturating_add(m.flush_ticks);
                if next_tick == u64::MAX {
                    break;
                }
            }
        }
        let cpu = usize::from(e.processor);
        if cpu >= bufs.len() {
            bufs.resize_with(cpu + 1, Default::default);
        }
        let size = e.buffered_size();
        let (idx, used) = &mut bufs[cpu];
        if !idx.is_empty() && *used + size > m.buffer_bytes {
            out.push(Flushed {
                processor: cpu as u16,
                events: std::mem::take(idx),
            });
            *used = 0;
        }
        idx.push(i as u32);
        *used += size;
    }
    flush_all(&mut bufs, &mut out);
    out
}

/// The indices of `events` in delivery order.
pub fn delivery_order(events: &[ReplayEvent], m: FlushModel) -> Vec<u32> {
    flush_order(events, m)
        .into_iter()
        .flat_map(|f| f.events)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(cpu: u16, ts: u64) -> ReplayEvent {
        ReplayEvent {
            processor: cpu,
            timestamp: ts,
            ..Default::default()
        }
    }

    #[test]
    fn full_buffers_go_first_the_timer_sends_the_rest() {
        // Each event takes 64 bytes; a buffer holds two.
        let events = [
            ev(0, 1),
            ev(1, 2),
            ev(0, 3),
            ev(0, 4), // cpu 0 full: [1,3] goes
            ev(1, 5),
            ev(2, 11), // timer (every 10 from 1): [4], [2,5] go
            ev(2, 12),
        ];
        let m = FlushModel {
            buffer_bytes: 128,
            flush_ticks: 10,
        };
        let f = flush_order(&events, m);
        let got: Vec<(u16, Vec<u32>)> = f.into_iter().map(|f| (f.processor, f.events)).collect();
        assert_eq!(
            got,
            [
                (0, vec![0, 2]),
                (0, vec![3]),
                (1, vec![1, 4]),
                (2, vec![5, 6])
            ]
        );
        assert_eq!(delivery_order(&events, m), [0, 2, 3, 1, 4, 5, 6]);
    }

    #[test]
    fn every_event_is_delivered_once_and_each_processor_in_order() {
        let events: Vec<ReplayEvent> = (0..5000u64).map(|i| ev((i * 7 % 5) as u16, i)).collect();
        let order = delivery_order(
            &events,
            FlushModel {
                buffer_bytes: 64 * 9,
                flush_ticks: 333,
            },
        );
        let mut seen = order.clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..5000).collect::<Vec<u32>>());
        for cpu in 0..5u16 {
            let ts: Vec<u64> = order
                .iter()
                .map(|&i| &events[i as usize])
                .filter(|e| e.processor == cpu)
                .map(|e| e.timestamp)
                .collect();
            assert!(ts.windows(2).all(|w| w[0] < w[1]));
        }
        assert!(order.windows(2).any(|w| w[0] > w[1]), "not time order");
    }
}
