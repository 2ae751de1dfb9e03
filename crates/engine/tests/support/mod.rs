//! What the integration tests share that is not the library's.
#![allow(dead_code)] // each test crate uses a part

pub mod reference;

use std::path::PathBuf;

/// A file of the shared corpus of real traces ($SENTRY_CORPUS, the
/// checkout's `../shared/corpus`, or /work/shared/corpus), if present.
pub fn corpus(name: &str) -> Option<PathBuf> {
    [
        std::env::var("SENTRY_CORPUS").ok().map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus")),
        Some(PathBuf::from("/work/shared/corpus")),
    ]
    .into_iter()
    .flatten()
    .map(|d| d.join(name))
    .find(|p| p.exists())
}

/// A deterministic pseudo-random sequence (xorshift64): the same seed gives
/// the same cases on every run.
pub struct Xorshift(pub u64);

impl Xorshift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value below `n` (not 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Runs a corpus file through an engine that pairs stacks with any event
/// (the corpus has no SysCallEnter), in time order, into `sink`; the engine
/// is returned for its state. `None` (and a note) if the file is absent.
pub fn replay_corpus(
    name: &str,
    sink: &mut impl sentry_engine::VerdictSink,
) -> Option<sentry_engine::Engine> {
    use sentry_engine::{Engine, EngineConfig, Pairing};
    let Some(path) = corpus(name) else {
        eprintln!("corpus file {name} not found: skipped");
        return None;
    };
    let file = sentry_etl::EtlFile::open(&path).unwrap();
    let mut engine = Engine::new(EngineConfig {
        pairing: Pairing::AnyEvent,
        ..EngineConfig::default()
    });
    let mut r = file.events(sentry_etl::Order::Time);
    while let Some(ev) = r.next_event() {
        engine.process(&ev, sink);
    }
    engine.finish(sink);
    Some(engine)
}
