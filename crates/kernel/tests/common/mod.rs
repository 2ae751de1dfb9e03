//! Shared helpers of the corpus tests.
#![allow(dead_code)]

use std::path::PathBuf;

use sentry_etl::EtlFile;

/// The corpus: `$SENTRY_CORPUS`, else `../shared/corpus` next to the repo.
/// A missing corpus fails the test (it is part of the test suite).
pub fn corpus_dir() -> PathBuf {
    let dir = std::env::var_os("SENTRY_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus")
        });
    assert!(
        dir.is_dir(),
        "corpus not found at {dir:?}: set SENTRY_CORPUS or clone the repo next to shared/"
    );
    dir
}

/// Names (without `.etl`) of the corpus traces, sorted.
pub fn corpus_files() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(corpus_dir())
        .expect("read corpus dir")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".etl").map(str::to_owned)
        })
        .collect();
    v.sort();
    v
}

pub fn open(name: &str) -> EtlFile {
    let path = corpus_dir().join(format!("{name}.etl"));
    EtlFile::open(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

pub fn golden(name: &str) -> serde_json::Value {
    let path = corpus_dir().join(format!("{name}.expected.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}
