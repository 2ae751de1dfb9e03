//! Where in trace time events may be missing from a file: buffers the
//! reader could not read (or read only in part), and buffers that are not
//! in the file at all (a cut or a hole: fewer buffers than the logfile
//! header's `BuffersWritten`).
//!
//! Each processor's buffers form one stream in time order, and a buffer's
//! `SequenceNumber` (`WMI_BUFFER_HEADER.SequenceNumber`) is the order in
//! which the session handed buffers out: every real trace in the corpus
//! numbers its buffers `0..BuffersWritten` with no hole, in an order that
//! differs from the file's (a buffer is written when full). So when buffer
//! `s` is missing, the events it held came after the last event of its
//! processor's buffers numbered below `s`; which processor it belonged to
//! is not known, so the gap starts at the earliest such point over every
//! processor the header lists (the start of the trace when one of them has
//! no buffer below `s`). Nothing bounds its end: gaps run to the end of the
//! trace. Conservative by design: the engine turns an alert into
//! `unresolved` when a gap could hide the state it rests on
//! (`docs/verdicts.md`), so a gap too wide costs verdicts, never adds an
//! accusation.
//!
//! Layout: [WMI_BUFFER_HEADER](https://www.geoffchappell.com/studies/windows/km/ntoskrnl/inc/api/ntwmi/wmi_buffer_header/index.htm)
//! (Geoff Chappell), `BuffersWritten` in
//! [TRACE_LOGFILE_HEADER](https://learn.microsoft.com/windows/win32/api/evntrace/ns-evntrace-trace_logfile_header).
//! Verified on the corpus (sequence numbers `0..BuffersWritten`, one file
//! excepted whose numbers run past `BuffersWritten`: then the holes are not
//! trusted and a missing buffer is a gap over the whole trace).

use crate::{Diagnostics, EtlFile};

/// Why events may be missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GapCause {
    /// Buffers counted in `BuffersWritten` are not in the file.
    BuffersMissing,
    /// A buffer (or the rest of one) could not be read.
    BufferDamaged,
}

impl GapCause {
    pub fn as_str(self) -> &'static str {
        match self {
            GapCause::BuffersMissing => "buffers_missing",
            GapCause::BufferDamaged => "buffer_damaged",
        }
    }
}

/// Events may be missing from raw timestamp `from` to `to` (inclusive;
/// `u64::MAX`: the end of the trace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gap {
    pub from: u64,
    pub to: u64,
    pub cause: GapCause,
}

/// Buffers kept in the log at most; past it a missing buffer is a gap over
/// the whole trace (24 bytes each: 24 MiB for a 64 GiB trace of 64 KiB
/// buffers).
const MAX_SPANS: usize = 1 << 20;

/// What a time-order reader saw of each buffer, kept to place gaps.
#[derive(Debug, Default)]
pub(crate) struct DamageLog {
    /// (sequence number, processor, the processor's last event timestamp
    /// before this buffer, 0 if none)
    spans: Vec<(i64, u16, u64)>,
    /// (processor, its last event timestamp) when its stream ended.
    ends: Vec<(u16, u64)>,
    /// The earliest point after which a damaged buffer lost events.
    lost_from: Option<u64>,
    overflow: bool,
}

impl DamageLog {
    /// A buffer of `processor` is loaded; `before`: its stream's last event.
    #[inline]
    pub(crate) fn buffer(&mut self, sequence: i64, processor: u16, before: u64) {
        if self.spans.len() < MAX_SPANS {
            self.spans.push((sequence, processor, before));
        } else {
            self.overflow = true;
        }
    }

    pub(crate) fn stream_end(&mut self, processor: u16, last: u64) {
        self.ends.push((processor, last));
    }

    /// Events of `processor` after `last` (its last event read) are lost.
    pub(crate) fn lost_after(&mut self, _processor: u16, last: u64) {
        self.lost_from = Some(self.lost_from.map_or(last, |l| l.min(last)));
    }

    /// The gaps, from what was read and the file's header and index.
    pub(crate) fn gaps(&self, file: &EtlFile, diag: &Diagnostics) -> Vec<Gap> {
        let mut gaps = Vec::new();
        let whole = |cause| Gap {
            from: 0,
            to: u64::MAX,
            cause,
        };
        if let Some(from) = self.lost_from {
            gaps.push(Gap {
                from,
                to: u64::MAX,
                cause: GapCause::BufferDamaged,
            });
        }
        // Damage the index found (bad buffer sizes, unreadable headers) has
        // no place in time.
        if file.diagnostics().error_count > 0
            || diag.skipped_buffers > 0 && self.lost_from.is_none()
        {
            gaps.push(whole(GapCause::BufferDamaged));
        }
        let written = u64::from(file.header().buffers_written);
        let found = file.diagnostics().buffers;
        if written > found {
            gaps.push(match self.missing_from(file, written) {
                Some(from) => Gap {
                    from,
                    to: u64::MAX,
                    cause: GapCause::BuffersMissing,
                },
                None => whole(GapCause::BuffersMissing),
            });
        }
        gaps.sort();
        gaps.dedup();
        gaps
    }

    /// Where the events of the first missing buffer may start, when the
    /// sequence numbers can be trusted (distinct, all below `written`).
    fn missing_from(&self, file: &EtlFile, written: u64) -> Option<u64> {
        if self.overflow {
            return None;
        }
        let mut seqs: Vec<i64> = self.spans.iter().map(|s| s.0).collect();
        seqs.sort_unstable();
        let trusted = seqs.windows(2).all(|w| w[0] != w[1])
            && seqs.iter().all(|&s| s >= 0 && (s as u64) < written);
        if !trusted {
            return None;
        }
        // The first hole in 0..written.
        let first = seqs
            .iter()
            .enumerate()
            .find(|&(i, &s)| s as u64 != i as u64)
            .map_or(seqs.len() as i64, |(i, _)| i as i64);
        // Every processor the header lists must have a buffer below the
        // hole, else the missing one may be its first.
        let listed = u64::from(file.header().number_of_processors).max(1);
        let mut seen: Vec<u16> = self
            .spans
            .iter()
            .filter(|s| s.0 < first)
            .map(|s| s.1)
            .collect();
        seen.sort_unstable();
        seen.dedup();
        if (seen.len() as u64) < listed {
            return Some(0);
        }
        // Per processor: the last event before its first buffer above the
        // hole, or where its stream ended.
        let mut above: std::collections::HashMap<u16, (i64, u64)> = Default::default();
        for &(seq, p, before) in self.spans.iter().filter(|s| s.0 > first) {
            let e = above.entry(p).or_insert((seq, before));
            if seq < e.0 {
                *e = (seq, before);
            }
        }
        let mut from = u64::MAX;
        for &p in &seen {
            let last = match above.get(&p) {
                Some(&(_, before)) => before,
                None => self.ends.iter().find(|e| e.0 == p).map_or(0, |e| e.1),
            };
            from = from.min(last);
        }
        Some(if from == u64::MAX { 0 } else { from })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Order;
    use std::ops::ControlFlow;

    fn sample() -> Vec<u8> {
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../samples/mixed.etl"
        ))
        .unwrap()
    }

    /// Gaps and every event's (processor, timestamp) in time order.
    fn read(bytes: Vec<u8>) -> (Vec<Gap>, Vec<(u16, u64)>) {
        let f = EtlFile::from_bytes(bytes).unwrap();
        let mut r = f.events(Order::Time);
        let mut evs = Vec::new();
        r.for_each(|e| {
            evs.push((e.processor, e.timestamp));
            ControlFlow::Continue(())
        });
        (r.into_diagnostics_and_gaps().1, evs)
    }

    #[test]
    fn a_whole_file_has_no_gap() {
        assert!(read(sample()).0.is_empty());
    }

    /// Cut or holed files: every event of the whole file that the damaged
    /// one lacks lies inside a gap (the gaps cover what is missing).
    #[test]
    fn gaps_cover_every_missing_event() {
        let whole = sample();
        let (_, all) = read(whole.clone());
        let f = EtlFile::from_bytes(whole.clone()).unwrap();
        let bufs: Vec<(usize, usize)> = f
            .buffers()
            .iter()
            .map(|b| (b.offset as usize, b.header.buffer_size as usize))
            .collect();
        let mut damaged: Vec<(String, Vec<u8>)> = Vec::new();
        for cut in [whole.len() / 2, 458752, 524288, 655360, 600_000] {
            damaged.push((format!("cut {cut}"), whole[..cut].to_vec()));
        }
        for &(off, size) in &bufs[1..] {
            let mut v = whole[..off].to_vec();
            v.extend_from_slice(&whole[off + size..]);
            damaged.push((format!("buffer at {off} dropped"), v));
            // A record header inside the buffer made invalid.
            let mut v = whole.clone();
            v[off + 72 + 4096..off + 72 + 4104].fill(0xFF);
            damaged.push((format!("buffer at {off} corrupt"), v));
        }
        for (what, bytes) in damaged {
            let (gaps, got) = read(bytes);
            let got: std::collections::HashSet<_> = got.into_iter().collect();
            let missing: Vec<_> = all.iter().filter(|e| !got.contains(e)).collect();
            if missing.is_empty() {
                continue;
            }
            assert!(!gaps.is_empty(), "{what}: events missing, no gap");
            for (p, t) in missing {
                assert!(
                    gaps.iter().any(|g| g.from <= *t && *t <= g.to),
                    "{what}: event of processor {p} at {t} outside every gap {gaps:?}"
                );
            }
        }
    }
}
