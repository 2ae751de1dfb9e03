//! The handoff from the ETW callback thread to the engine thread: a
//! preallocated single-producer single-consumer byte ring (`rtrb`, which
//! encapsulates the unsafe code; the producer side is wait-free).
//!
//! The callback only copies: a fixed 64-byte record header with the view's
//! plain fields, the payload, and the extended items in their `.etl` layout.
//! No allocation, no lock, no parsing; a record that does not fit is counted
//! as a drop. The consumer copies a whole record into its reusable scratch
//! buffer and hands out a [`RawEvent`] borrowing it (the GUID -> group
//! mapping happens there, off the callback thread).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sentry_raw::{Guid, RawEvent};

use crate::view::{write_extended, RawFields, RecordView};

/// Bytes of the fixed record header in the ring.
pub const RECORD_HEADER_LEN: usize = 64;

/// Default ring capacity: 32 MiB, about 200 000 stack-walk records.
pub const DEFAULT_RING_BYTES: usize = 32 << 20;

/// Counters the producer publishes (relaxed stores by the single producer,
/// read by the status line).
#[derive(Debug, Default)]
pub struct RingCounters {
    pushed: AtomicU64,
    dropped: AtomicU64,
    dropped_bytes: AtomicU64,
    truncated_extended: AtomicU64,
}

/// A snapshot of [`RingCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RingStats {
    /// Records handed to the ring.
    pub pushed: u64,
    /// Records dropped because the ring was full.
    pub dropped: u64,
    pub dropped_bytes: u64,
    /// Extended items that did not fit a view (see `MAX_EXTENDED_ITEMS`).
    pub truncated_extended: u64,
}

impl RingCounters {
    pub fn snapshot(&self) -> RingStats {
        RingStats {
            pushed: self.pushed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            dropped_bytes: self.dropped_bytes.load(Ordering::Relaxed),
            truncated_extended: self.truncated_extended.load(Ordering::Relaxed),
        }
    }
}

/// Creates a ring of `capacity` bytes (allocated here, once).
pub fn ring(capacity: usize) -> (RingProducer, RingConsumer) {
    let (p, c) = rtrb::RingBuffer::<u8>::new(capacity.max(RECORD_HEADER_LEN));
    let counters = Arc::new(RingCounters::default());
    (
        RingProducer {
            inner: p,
            counters: Arc::clone(&counters),
            local: RingStats::default(),
        },
        RingConsumer {
            inner: c,
            counters,
            scratch: Vec::new(),
        },
    )
}

/// The callback side.
pub struct RingProducer {
    inner: rtrb::Producer<u8>,
    counters: Arc<RingCounters>,
    /// The single producer's own tally, published with plain relaxed stores
    /// (no read-modify-write on the hot path).
    local: RingStats,
}

/// Copies consecutive pieces into the (possibly wrapped) two halves of a
/// ring chunk.
struct SplitWriter<'a> {
    first: &'a mut [u8],
    second: &'a mut [u8],
    pos: usize,
}

impl SplitWriter<'_> {
    fn put(&mut self, src: &[u8]) {
        let mut src = src;
        if self.pos < self.first.len() {
            let n = src.len().min(self.first.len() - self.pos);
            self.first[self.pos..self.pos + n].copy_from_slice(&src[..n]);
            self.pos += n;
            src = &src[n..];
        }
        if !src.is_empty() {
            let at = self.pos - self.first.len();
            self.second[at..at + src.len()].copy_from_slice(src);
            self.pos += src.len();
        }
    }
}

impl RingProducer {
    /// Copies one record into the ring. Returns `false` (and counts a drop)
    /// when the ring has no room for it.
    #[inline]
    pub fn push(&mut self, v: &RecordView<'_>) -> bool {
        let ext_len = v.extended.encoded_len();
        let total = RECORD_HEADER_LEN + v.payload.len() + ext_len;
        let Ok(mut chunk) = self.inner.write_chunk(total) else {
            self.local.dropped += 1;
            self.local.dropped_bytes += total as u64;
            self.counters
                .dropped
                .store(self.local.dropped, Ordering::Relaxed);
            self.counters
                .dropped_bytes
                .store(self.local.dropped_bytes, Ordering::Relaxed);
            return false;
        };
        let hdr = encode_header(v, total, ext_len);
        {
            let (first, second) = chunk.as_mut_slices();
            let mut w = SplitWriter {
                first,
                second,
                pos: 0,
            };
            w.put(&hdr);
            w.put(v.payload);
            if ext_len != 0 {
                write_extended(v.extended.as_slice(), |p| w.put(p));
            }
        }
        chunk.commit_all();
        self.local.pushed += 1;
        self.counters
            .pushed
            .store(self.local.pushed, Ordering::Relaxed);
        if v.extended.truncated != 0 {
            self.local.truncated_extended += u64::from(v.extended.truncated);
            self.counters
                .truncated_extended
                .store(self.local.truncated_extended, Ordering::Relaxed);
        }
        true
    }

    pub fn counters(&self) -> Arc<RingCounters> {
        Arc::clone(&self.counters)
    }
}

fn encode_header(v: &RecordView<'_>, total: usize, ext_len: usize) -> [u8; RECORD_HEADER_LEN] {
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[0..4].copy_from_slice(&(total as u32).to_le_bytes());
    h[4..8].copy_from_slice(&(ext_len as u32).to_le_bytes());
    h[8..10].copy_from_slice(&(v.payload.len() as u16).to_le_bytes());
    h[10..12].copy_from_slice(&v.flags.to_le_bytes());
    h[12..16].copy_from_slice(&v.pid.to_le_bytes());
    h[16..20].copy_from_slice(&v.tid.to_le_bytes());
    h[20..22].copy_from_slice(&v.processor.to_le_bytes());
    h[22..24].copy_from_slice(&v.id.to_le_bytes());
    h[24..32].copy_from_slice(&v.timestamp.to_le_bytes());
    h[32..48].copy_from_slice(&v.provider.to_le_bytes());
    h[48] = v.version;
    h[49] = v.channel;
    h[50] = v.level;
    h[51] = v.opcode;
    h[52..54].copy_from_slice(&v.task.to_le_bytes());
    h[56..64].copy_from_slice(&v.keyword.to_le_bytes());
    h
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The engine side.
pub struct RingConsumer {
    inner: rtrb::Consumer<u8>,
    counters: Arc<RingCounters>,
    scratch: Vec<u8>,
}

impl RingConsumer {
    /// The next record as a [`RawEvent`] borrowing this consumer's scratch
    /// buffer, or `None` when the ring is empty.
    pub fn pop(&mut self) -> Option<RawEvent<'_>> {
        self.pop_record().map(decode)
    }

    /// The next record's bytes in the ring layout (for the reordering stage,
    /// which keeps them as they are), or `None` when the ring is empty.
    pub fn pop_record(&mut self) -> Option<&[u8]> {
        let total = {
            let peek = self.inner.read_chunk(4).ok()?;
            let (a, b) = peek.as_slices();
            let mut len = [0u8; 4];
            len[..a.len()].copy_from_slice(a);
            len[a.len()..].copy_from_slice(b);
            u32::from_le_bytes(len) as usize
            // Dropping the chunk without commit leaves it in the ring.
        };
        // The producer commits whole records, so the rest is there.
        let chunk = self.inner.read_chunk(total).ok()?;
        self.scratch.clear();
        let (a, b) = chunk.as_slices();
        self.scratch.extend_from_slice(a);
        self.scratch.extend_from_slice(b);
        chunk.commit_all();
        Some(&self.scratch)
    }

    /// Records waiting in the ring (in bytes).
    pub fn pending_bytes(&self) -> usize {
        self.inner.slots()
    }

    pub fn stats(&self) -> RingStats {
        self.counters.snapshot()
    }

    /// Whether the producer has been dropped (its thread ended).
    pub fn is_abandoned(&self) -> bool {
        self.inner.is_abandoned()
    }
}

/// A record's total length (its first field).
#[inline]
pub fn record_len(rec: &[u8]) -> usize {
    u32_at(rec, 0) as usize
}

/// A record's processor index.
#[inline]
pub fn record_processor(rec: &[u8]) -> u16 {
    u16_at(rec, 20)
}

/// A record's raw timestamp.
#[inline]
pub fn record_timestamp(rec: &[u8]) -> u64 {
    u64_at(rec, 24)
}

/// A whole record (as [`RingConsumer::pop_record`] gives it) as a [`RawEvent`].
#[inline]
pub fn decode_record(rec: &[u8]) -> RawEvent<'_> {
    decode(rec)
}

fn decode(rec: &[u8]) -> RawEvent<'_> {
    let h = &rec[..RECORD_HEADER_LEN];
    let ext_len = u32_at(h, 4) as usize;
    let payload_len = usize::from(u16_at(h, 8));
    let view = RecordView {
        flags: u16_at(h, 10),
        pid: u32_at(h, 12),
        tid: u32_at(h, 16),
        processor: u16_at(h, 20),
        id: u16_at(h, 22),
        timestamp: u64_at(h, 24),
        provider: Guid::read(&h[32..48]).unwrap_or_default(),
        version: h[48],
        channel: h[49],
        level: h[50],
        opcode: h[51],
        task: u16_at(h, 52),
        keyword: u64_at(h, 56),
        payload: &[],
        extended: Default::default(),
    };
    let payload = &rec[RECORD_HEADER_LEN..RECORD_HEADER_LEN + payload_len];
    let ext = &rec[RECORD_HEADER_LEN + payload_len..RECORD_HEADER_LEN + payload_len + ext_len];
    RawFields::from_view(&view).with(payload, ext)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{to_raw, ExtItem, EVENT_HEADER_FLAG_CLASSIC_HEADER};
    use sentry_raw::{guids, EventId};

    fn stack_view(i: u64, frames: &[u8]) -> RecordView<'_> {
        RecordView {
            provider: guids::STACK_WALK,
            flags: EVENT_HEADER_FLAG_CLASSIC_HEADER,
            pid: u32::MAX,
            tid: (i % 97) as u32,
            timestamp: i,
            opcode: 32,
            version: 2,
            processor: (i % 4) as u16,
            payload: frames,
            ..Default::default()
        }
    }

    #[test]
    fn round_trip_equals_direct_conversion() {
        let (mut p, mut c) = ring(4096);
        let sid = [9u8; 5];
        let mut v = stack_view(77, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        v.extended.push(ExtItem {
            ext_type: 2,
            data: &sid,
        });
        assert!(p.push(&v));
        let mut buf = Vec::new();
        let expected = to_raw(&v, &mut buf);
        assert_eq!(c.pop(), Some(expected));
        assert_eq!(c.pop(), None);
    }

    #[test]
    fn records_wrap_around_the_end() {
        // 300-byte ring, 64+50-byte records: every few pushes wrap.
        let (mut p, mut c) = ring(300);
        let payload: Vec<u8> = (0..50).collect();
        for i in 0..1000u64 {
            assert!(p.push(&stack_view(i, &payload)));
            let ev = c.pop().expect("one record");
            assert_eq!(ev.timestamp, i);
            assert_eq!(ev.payload, &payload[..]);
            assert_eq!(
                ev.id,
                EventId::Kernel {
                    group: 0x18,
                    opcode: 32
                }
            );
        }
    }

    #[test]
    fn full_ring_counts_exact_drops() {
        let payload = [0u8; 36]; // 64 + 36 = 100 bytes a record
        let (mut p, mut c) = ring(1000);
        let mut accepted = 0;
        for i in 0..25u64 {
            if p.push(&stack_view(i, &payload)) {
                accepted += 1;
            }
        }
        assert_eq!(accepted, 10);
        let s = c.stats();
        assert_eq!((s.pushed, s.dropped, s.dropped_bytes), (10, 15, 1500));
        // The kept records are the first ten, intact and in order.
        for i in 0..10u64 {
            assert_eq!(c.pop().unwrap().timestamp, i);
        }
        assert_eq!(c.pop(), None);
        // A record larger than the whole ring is a drop, not a hang.
        let big = vec![0u8; 2000];
        assert!(!p.push(&stack_view(99, &big)));
        assert_eq!(c.stats().dropped, 16);
    }

    #[test]
    fn concurrent_producer_and_consumer_lose_nothing_when_not_full() {
        const N: u64 = 200_000;
        let (mut p, mut c) = ring(1 << 16);
        let producer = std::thread::spawn(move || {
            let mut frames = [0u8; 64];
            for i in 0..N {
                let n = (i % 9) as usize * 8;
                frames[..8].copy_from_slice(&i.to_le_bytes());
                // Never overfill: wait for room (the real callback drops instead).
                while !p.push(&stack_view(i, &frames[..n.max(8)])) {
                    std::thread::yield_now();
                }
            }
            p.counters().snapshot()
        });
        let mut next = 0u64;
        while next < N {
            match c.pop() {
                Some(ev) => {
                    assert_eq!(ev.timestamp, next);
                    assert_eq!(ev.payload.len(), ((next % 9) as usize * 8).max(8));
                    assert_eq!(&ev.payload[..8], &next.to_le_bytes());
                    assert_eq!(ev.tid, Some((next % 97) as u32));
                    next += 1;
                }
                None => std::thread::yield_now(),
            }
        }
        let stats = producer.join().unwrap();
        assert_eq!(stats.pushed, N, "every record was accepted and arrived");
        assert_eq!(c.pop(), None);
        assert!(c.is_abandoned());
    }

    #[test]
    fn concurrent_drops_are_counted_exactly() {
        // The producer never waits; every record is either delivered or
        // counted as dropped, never both, never lost.
        const N: u64 = 100_000;
        let (mut p, mut c) = ring(4096);
        let producer = std::thread::spawn(move || {
            let payload = [7u8; 100];
            let mut ok = 0u64;
            for i in 0..N {
                ok += u64::from(p.push(&stack_view(i, &payload)));
            }
            (ok, p.counters().snapshot())
        });
        let mut received = Vec::new();
        loop {
            // Read `is_abandoned` before popping: once the producer is gone,
            // an empty pop means everything has been received.
            let abandoned = c.is_abandoned();
            match c.pop() {
                Some(ev) => received.push(ev.timestamp),
                None if abandoned => break,
                None => std::thread::yield_now(),
            }
        }
        let (ok, stats) = producer.join().unwrap();
        assert_eq!(received.len() as u64, ok);
        assert_eq!(stats.pushed, ok);
        assert_eq!(stats.dropped, N - ok);
        assert!(received.windows(2).all(|w| w[0] < w[1]), "in order");
    }
}
