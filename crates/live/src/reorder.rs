//! Puts real-time events back into time order before the engine sees them.
//!
//! A real-time consumer receives a session's events buffer by buffer as the
//! buffers are flushed, and each processor has its own buffers: a busy
//! processor's full buffer arrives at once, a quiet processor's buffer only
//! when the flush timer fires ("ProcessTrace ... might deliver events out of
//! order", [ProcessTrace](https://learn.microsoft.com/windows/win32/api/evntrace/nf-evntrace-processtrace),
//! Remarks; [EVENT_TRACE_PROPERTIES.FlushTimer](https://learn.microsoft.com/windows/win32/api/evntrace/ns-evntrace-event_trace_properties)).
//! Within one processor's stream events are in timestamp order; across
//! processors they interleave by flush. The engine assumes time order (its
//! clock is the largest timestamp seen, pending syscalls expire behind it),
//! so this stage sits between the ring and the engine:
//!
//! - one queue per processor (the ring's record bytes, copied as they are);
//! - the **watermark** is the oldest of the processors' latest timestamps,
//!   but never further back than `max_lag` behind the newest timestamp seen
//!   (a processor that has said nothing for longer than the lag does not hold
//!   the others back); everything at or below it is released, smallest
//!   timestamp first (ties: arrival order);
//! - `max_lag` must exceed the session's flush interval: then a buffer
//!   flushed by the timer still arrives before its events fall below the
//!   watermark. An event that arrives below what was already released is
//!   counted as **late** (released at once, out of order);
//! - memory is bounded by `max_bytes`: past it the oldest events are released
//!   ahead of the watermark and counted as **overflow** (possibly out of
//!   order, never dropped).
//!
//! Platform-neutral; the driver feeds it from the ring and releases it into
//! the engine.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use sentry_raw::RawEvent;

use crate::ring::{decode_record, record_len, record_processor, record_timestamp};

/// Distinct processor queues; records naming a processor at or above this
/// (only a corrupt record can) share the last queue.
pub const MAX_QUEUES: usize = 4096;

/// Settings of the stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReorderConfig {
    /// How far behind the newest timestamp the watermark may stay, in raw
    /// timestamp ticks. Longer than the flush interval.
    pub max_lag_ticks: u64,
    /// Most record bytes held; past it the oldest are released early.
    pub max_bytes: usize,
    /// Processors of the host. Until each has delivered an event (and for
    /// the first `max_lag` of the session) the watermark stays `max_lag`
    /// behind: a processor not heard from yet may still hold older events.
    /// 0: unknown, always `max_lag` behind.
    pub processors: usize,
}

impl ReorderConfig {
    /// `lag_ms` in the ticks of a clock running at `ticks_per_second`.
    pub fn new(
        lag_ms: u64,
        ticks_per_second: u64,
        max_bytes: usize,
        processors: usize,
    ) -> ReorderConfig {
        ReorderConfig {
            max_lag_ticks: (u128::from(lag_ms) * u128::from(ticks_per_second) / 1000)
                .min(u128::from(u64::MAX)) as u64,
            max_bytes,
            processors,
        }
    }
}

/// Default lag: four 250 ms flush intervals.
pub const DEFAULT_LAG_MS: u64 = 1000;
/// Default memory bound: 128 MiB (about a second of a busy 16-core host
/// with a stack walk on every syscall).
pub const DEFAULT_MAX_BYTES: usize = 128 << 20;

/// The lag for a flush interval when none is given: four intervals (1 s
/// with the 250 ms flush; 4 s on Windows 7, whose flush is 1 s).
pub fn default_lag_ms(flush_ms: u32) -> u64 {
    (u64::from(flush_ms) * 4).max(DEFAULT_LAG_MS)
}

/// The correlation window `live` gives the engine: at least twice the lag,
/// so that a syscall whose stack arrives late (but within the lag) is still
/// pending when the stack comes.
pub fn live_window_ms(window_ms: u64, lag_ms: u64) -> u64 {
    window_ms.max(lag_ms.saturating_mul(2))
}

/// Counters of the stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReorderStats {
    /// Events released (in order or not).
    pub released: u64,
    /// Events that arrived below what had already been released.
    pub late: u64,
    /// Events released ahead of the watermark because of `max_bytes`.
    pub overflow: u64,
    /// Most bytes held at once.
    pub peak_bytes: usize,
}

/// One processor's records, back to back in the ring's layout, from `head`.
#[derive(Default)]
struct Queue {
    bytes: Vec<u8>,
    head: usize,
    /// Arrival sequence of each queued record (front = head), the tie-break.
    seqs: VecDeque<u64>,
    /// Latest timestamp pushed (the processor's stream is in time order).
    latest: u64,
    seen: bool,
}

/// The reordering stage.
pub struct Reorder {
    cfg: ReorderConfig,
    queues: Vec<Queue>,
    /// Queue heads: (timestamp, arrival sequence, queue); one per non-empty
    /// queue.
    heads: BinaryHeap<Reverse<(u64, u64, u32)>>,
    /// Queues seen so far (indices into `queues`), for the watermark.
    active: Vec<u32>,
    newest: u64,
    /// The first timestamp pushed (`None` before any).
    first: Option<u64>,
    /// The largest timestamp released so far.
    released_up_to: u64,
    any_released: bool,
    held_bytes: usize,
    seq: u64,
    stats: ReorderStats,
}

impl Reorder {
    pub fn new(cfg: ReorderConfig) -> Reorder {
        Reorder {
            cfg,
            queues: Vec::new(),
            heads: BinaryHeap::new(),
            active: Vec::new(),
            newest: 0,
            first: None,
            released_up_to: 0,
            any_released: false,
            held_bytes: 0,
            seq: 0,
            stats: ReorderStats::default(),
        }
    }

    pub fn config(&self) -> ReorderConfig {
        self.cfg
    }

    pub fn stats(&self) -> ReorderStats {
        self.stats
    }

    /// The newest timestamp pushed so far.
    pub fn newest(&self) -> u64 {
        self.newest
    }

    /// The largest timestamp released so far (0 before any).
    pub fn released_up_to(&self) -> u64 {
        self.released_up_to
    }

    /// Bytes held now.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Events held now.
    pub fn held(&self) -> usize {
        self.queues.iter().map(|q| q.seqs.len()).sum()
    }

    /// Takes one record in the ring's layout (see [`crate::ring`]).
    /// Releases the oldest early if `max_bytes` is exceeded.
    pub fn push(&mut self, record: &[u8], emit: &mut dyn FnMut(&RawEvent<'_>)) {
        let q = usize::from(record_processor(record)).min(MAX_QUEUES - 1);
        let ts = record_timestamp(record);
        if q >= self.queues.len() {
            self.queues.resize_with(q + 1, Queue::default);
        }
        let queue = &mut self.queues[q];
        if !queue.seen {
            queue.seen = true;
            self.active.push(q as u32);
        }
        queue.latest = queue.latest.max(ts);
        self.first.get_or_insert(ts);
        self.newest = self.newest.max(ts);
        if self.any_released && ts < self.released_up_to {
            self.stats.late += 1;
        }
        let was_empty = queue.seqs.is_empty();
        // Compact: move the unreleased tail to the front once the released
        // part is at least half the buffer (amortised O(1) per byte).
        if queue.head > 0 && queue.head >= queue.bytes.len() / 2 {
            queue.bytes.drain(..queue.head);
            queue.head = 0;
        }
        queue.bytes.extend_from_slice(record);
        self.seq += 1;
        queue.seqs.push_back(self.seq);
        if was_empty {
            self.heads.push(Reverse((ts, self.seq, q as u32)));
        }
        self.held_bytes += record.len();
        self.stats.peak_bytes = self.stats.peak_bytes.max(self.held_bytes);
        while self.held_bytes > self.cfg.max_bytes {
            if !self.release_one(u64::MAX, emit) {
                break;
            }
            self.stats.overflow += 1;
        }
    }

    /// The timestamp up to which events are released now.
    pub fn watermark(&self) -> u64 {
        let floor = self.newest.saturating_sub(self.cfg.max_lag_ticks);
        let starting = self
            .first
            .is_none_or(|f| self.newest < f.saturating_add(self.cfg.max_lag_ticks));
        if starting || self.active.len() < self.cfg.processors || self.cfg.processors == 0 {
            return floor;
        }
        self.active
            .iter()
            .map(|&q| self.queues[q as usize].latest.max(floor))
            .min()
            .unwrap_or(floor)
    }

    /// Releases, in timestamp order, every event at or below the watermark.
    pub fn release(&mut self, emit: &mut dyn FnMut(&RawEvent<'_>)) {
        let w = self.watermark();
        while self.release_one(w, emit) {}
    }

    /// Releases everything held, in timestamp order (end of the session, or
    /// no event for longer than the lag: every buffer has been flushed).
    pub fn release_all(&mut self, emit: &mut dyn FnMut(&RawEvent<'_>)) {
        while self.release_one(u64::MAX, emit) {}
    }

    /// Releases the oldest head if its timestamp is at most `limit`.
    #[inline]
    fn release_one(&mut self, limit: u64, emit: &mut dyn FnMut(&RawEvent<'_>)) -> bool {
        let Some(&Reverse((ts, _, q))) = self.heads.peek() else {
            return false;
        };
        if ts > limit {
            return false;
        }
        self.heads.pop();
        let queue = &mut self.queues[q as usize];
        let start = queue.head;
        let len = record_len(&queue.bytes[start..]);
        queue.head += len;
        queue.seqs.pop_front();
        if let Some(&next_seq) = queue.seqs.front() {
            let next_ts = record_timestamp(&queue.bytes[queue.head..]);
            self.heads.push(Reverse((next_ts, next_seq, q)));
        }
        self.held_bytes -= len;
        if !self.any_released || ts > self.released_up_to {
            self.released_up_to = ts;
        }
        self.any_released = true;
        self.stats.released += 1;
        emit(&decode_record(&queue.bytes[start..start + len]));
        if queue.seqs.is_empty() {
            queue.bytes.clear();
            queue.head = 0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::ring;
    use crate::view::RecordView;
    use sentry_raw::guids;

    /// Pushes events (processor, timestamp) through a ring into the stage,
    /// releasing after each, and returns the timestamps in release order.
    fn run(cfg: ReorderConfig, events: &[(u16, u64)]) -> (Vec<u64>, ReorderStats) {
        let (mut p, mut c) = ring(1 << 16);
        let mut r = Reorder::new(cfg);
        let mut out = Vec::new();
        for &(cpu, ts) in events {
            let payload = ts.to_le_bytes();
            assert!(p.push(&RecordView {
                provider: guids::PERF_INFO,
                opcode: 51,
                timestamp: ts,
                processor: cpu,
                payload: &payload,
                ..Default::default()
            }));
            let rec = c.pop_record().unwrap();
            let mut emit = |ev: &RawEvent<'_>| {
                assert_eq!(ev.payload, &ev.timestamp.to_le_bytes());
                out.push(ev.timestamp)
            };
            r.push(rec, &mut emit);
            r.release(&mut emit);
        }
        r.release_all(&mut |ev| out.push(ev.timestamp));
        assert_eq!(r.held(), 0);
        assert_eq!(r.held_bytes(), 0);
        (out, r.stats())
    }

    fn cfg(lag: u64, processors: usize) -> ReorderConfig {
        ReorderConfig {
            max_lag_ticks: lag,
            max_bytes: usize::MAX,
            processors,
        }
    }

    #[test]
    fn buffers_flushed_per_processor_come_out_in_time_order() {
        // cpu 0: 1,4,7; cpu 1: 2,5,8; cpu 2: 3,6,9 — delivered a processor's
        // whole buffer at a time, cpu 2 first.
        let ev = [
            (2, 3),
            (2, 6),
            (2, 9),
            (0, 1),
            (0, 4),
            (0, 7),
            (1, 2),
            (1, 5),
            (1, 8),
        ];
        let (out, s) = run(cfg(100, 3), &ev);
        assert_eq!(out, (1..=9).collect::<Vec<_>>());
        assert_eq!((s.late, s.overflow, s.released), (0, 0, 9));
    }

    #[test]
    fn the_watermark_waits_for_the_slowest_processor_within_the_lag() {
        let mut r = Reorder::new(cfg(50, 2));
        let (mut p, mut c) = ring(4096);
        let mut out = Vec::new();
        let mut feed = |r: &mut Reorder, cpu: u16, ts: u64, out: &mut Vec<u64>| {
            p.push(&RecordView {
                timestamp: ts,
                processor: cpu,
                ..Default::default()
            });
            r.push(c.pop_record().unwrap(), &mut |e| out.push(e.timestamp));
            r.release(&mut |e| out.push(e.timestamp));
        };
        feed(&mut r, 0, 10, &mut out);
        // The first lag of the session: nothing is certain yet.
        assert_eq!(r.watermark(), 0);
        feed(&mut r, 1, 20, &mut out);
        feed(&mut r, 1, 61, &mut out);
        // Both processors heard from, past the start: cpu 0 is the slowest
        // (latest 10) and holds the others back.
        assert_eq!(r.watermark(), 11, "61 - 50: the lag bounds the wait");
        assert_eq!(out, [10]);
        feed(&mut r, 0, 30, &mut out);
        assert_eq!(r.watermark(), 30, "cpu 0's latest");
        assert_eq!(out, [10, 20, 30]);
        // 100 on cpu 1: cpu 0 has said nothing for more than the lag, the
        // watermark moves to 100 - 50.
        feed(&mut r, 1, 100, &mut out);
        assert_eq!(r.watermark(), 50);
        assert_eq!(out, [10, 20, 30]);
        feed(&mut r, 0, 40, &mut out);
        assert_eq!(out, [10, 20, 30, 40]);
        feed(&mut r, 0, 90, &mut out);
        assert_eq!(out, [10, 20, 30, 40, 61, 90]);
        assert_eq!(r.stats().late, 0);
        // An 80 arriving now is below what was released: late, released at
        // once and counted.
        feed(&mut r, 0, 80, &mut out);
        assert_eq!(r.stats().late, 1);
        r.release_all(&mut |e| out.push(e.timestamp));
        assert_eq!(out, [10, 20, 30, 40, 61, 90, 80, 100]);
    }

    #[test]
    fn memory_bound_releases_the_oldest_early_and_counts_it() {
        // 64-byte header + 8-byte payload = 72 bytes a record; room for 3.
        let c = ReorderConfig {
            max_lag_ticks: 1_000,
            max_bytes: 3 * 72,
            processors: 2,
        };
        // Within the first lag nothing is released by the watermark.
        let ev = [(1, 1), (0, 2), (0, 3), (0, 4), (0, 5), (0, 6)];
        let (out, s) = run(c, &ev);
        assert_eq!(out, [1, 2, 3, 4, 5, 6]);
        assert_eq!(s.overflow, 3, "4, 5, 6 each pushed the oldest out early");
        assert!(s.peak_bytes <= 4 * 72);
    }

    #[test]
    fn ties_keep_arrival_order() {
        let (out, _) = run(cfg(10, 2), &[(1, 5), (0, 5), (1, 6), (0, 6)]);
        assert_eq!(out, [5, 5, 6, 6]);
    }

    #[test]
    fn a_random_flush_schedule_is_undone() {
        // 8 processors, events every tick on a random processor; buffers of
        // random size flushed when full or when older than the flush
        // interval (30 ticks), which is shorter than the lag (40).
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut bufs: Vec<Vec<(u16, u64)>> = vec![Vec::new(); 8];
        let mut first: Vec<u64> = vec![0; 8];
        let mut delivered = Vec::new();
        for ts in 1..20_000u64 {
            let cpu = rnd(8) as usize;
            if bufs[cpu].is_empty() {
                first[cpu] = ts;
            }
            bufs[cpu].push((cpu as u16, ts));
            let cap = 3 + rnd(20) as usize;
            for c in 0..8 {
                if !bufs[c].is_empty() && (bufs[c].len() >= cap || ts - first[c] >= 30) {
                    delivered.append(&mut bufs[c]);
                }
            }
        }
        for b in &mut bufs {
            delivered.append(b);
        }
        assert!(delivered.windows(2).any(|w| w[0].1 > w[1].1), "shuffled");
        let (out, s) = run(cfg(40, 8), &delivered);
        assert_eq!(out, (1..20_000).collect::<Vec<_>>());
        assert_eq!((s.late, s.overflow), (0, 0));
        // With a lag shorter than the flush interval the same schedule is
        // not fully repaired, and the stage says so.
        let (out, s) = run(cfg(10, 8), &delivered);
        assert_ne!(out, (1..20_000).collect::<Vec<_>>());
        assert!(s.late > 0);
    }
}
