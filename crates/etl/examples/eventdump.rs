//! Prints a digest of everything the reader delivers, for comparing two
//! builds of the reader (A/B) on the same input: per file and order, the
//! number of events, a hash of every event (all fields, payload and
//! extended bytes included), the diagnostics at the end, and the
//! diagnostics' counters sampled every 4096 events (when errors are found
//! matters, not only how many).
//!
//! `cargo run --release -p sentry-etl --example eventdump -- FILE... [--mutate SEED COUNT]`
//!
//! With `--mutate`, each file is also read from memory COUNT times with
//! random damage (byte flips, zeroed and cut ranges, copied buffer headers),
//! deterministic from SEED.

use std::hash::{DefaultHasher, Hash, Hasher};

use sentry_etl::{EtlFile, Order};

fn digest(name: &str, file: Result<EtlFile, sentry_etl::EtlError>) {
    let file = match file {
        Ok(f) => f,
        Err(e) => {
            println!("{name}: open error {e:?}");
            return;
        }
    };
    for order in [Order::Time, Order::File] {
        let mut r = file.events(order);
        let mut h = DefaultHasher::new();
        let mut n = 0u64;
        while let Some(ev) = r.next_event() {
            (
                ev.header,
                ev.id,
                ev.version,
                ev.pid,
                ev.tid,
                ev.processor,
                ev.timestamp,
                ev.pointer_size,
                ev.payload,
                ev.extended.0,
                ev.offset,
            )
                .hash(&mut h);
            n += 1;
            if n % 4096 == 0 {
                let d = r.diagnostics();
                (
                    d.records,
                    d.error_count,
                    d.abandoned_bytes,
                    d.skipped_buffers,
                )
                    .hash(&mut h);
            }
        }
        // Asking again after the end changes nothing.
        assert!(r.next_event().is_none());
        let d = r.diagnostics();
        println!(
            "{name} {order:?}: {n} events, hash {:016x}, held {}, diag {d:?}",
            h.finish(),
            r.held_bytes()
        );
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(bytes: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for _ in 0..1 + rng.below(6) {
        let len = b.len();
        match rng.below(6) {
            0 => {
                for _ in 0..1 + rng.below(64) {
                    let i = rng.below(len);
                    b[i] ^= 1 << rng.below(8);
                }
            }
            1 => {
                let i = rng.below(len);
                let n = rng.below(256).min(len - i);
                b[i..i + n].fill(0);
            }
            2 => {
                let i = rng.below(len);
                let n = rng.below(64).min(len - i);
                b[i..i + n].fill(0xFF);
            }
            3 => b.truncate(len - rng.below(len / 4 + 1)),
            4 => {
                // Copy a record-sized chunk from elsewhere.
                let (s, d) = (rng.below(len), rng.below(len));
                let n = rng.below(80).min(len - s).min(len - d);
                let chunk = b[s..s + n].to_vec();
                b[d..d + n].copy_from_slice(&chunk);
            }
            _ => {
                // Rewrite a 16-bit field at an 8-aligned position.
                let i = rng.below(len / 8) * 8 + rng.below(4) * 2;
                if i + 2 <= len {
                    let v = rng.next() as u16;
                    b[i..i + 2].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
        if b.is_empty() {
            break;
        }
    }
    b
}

fn main() {
    let mut files = Vec::new();
    let mut mutate_spec = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--mutate" {
            let seed: u64 = args.next().and_then(|s| s.parse().ok()).expect("SEED");
            let count: usize = args.next().and_then(|s| s.parse().ok()).expect("COUNT");
            mutate_spec = Some((seed, count));
        } else {
            files.push(a);
        }
    }
    for path in &files {
        digest(path, EtlFile::open(path));
        if let Some((seed, count)) = mutate_spec {
            let bytes = std::fs::read(path).expect("read");
            let mut rng = Rng(seed | 1);
            for k in 0..count {
                let m = mutate(&bytes, &mut rng);
                if m.is_empty() {
                    continue;
                }
                digest(&format!("{path}#{k}"), EtlFile::from_bytes(m));
            }
        }
    }
}
