//! Shared by the integration tests: where the corpus is, and the facts the
//! golden files hold, computed from this reader's events.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use sentry_etl::{Diagnostics, EtlFile, Order};
use sentry_raw::{EventId, RawEvent};
use serde_json::{json, Value};

/// `shared/corpus`, beside the repository. Panics (fails the test) when it
/// is missing: the corpus tests must never pass vacuously.
pub fn corpus_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus");
    assert!(
        dir.is_dir(),
        "corpus directory {} is missing: clone the repository with `shared` beside it",
        dir.display()
    );
    dir
}

/// Every `.etl` file of the corpus, sorted. Fails if there are none.
pub fn corpus_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("read corpus dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "etl"))
        .collect();
    v.sort();
    assert!(
        v.len() >= 8,
        "expected at least 8 corpus files, found {}",
        v.len()
    );
    v
}

pub fn golden(etl: &std::path::Path) -> Value {
    let p = etl.with_extension("expected.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).expect("golden json")
}

/// The hook name the golden files use for a stack's parent event.
fn parent_hook(ev: &RawEvent<'_>) -> String {
    match ev.id {
        EventId::Kernel { group, opcode } => format!("{group:02x}{opcode:02x}"),
        EventId::Classic { .. } => "ETH".into(),
        EventId::Manifest { .. } => "EVH".into(),
    }
}

struct Stack {
    event_timestamp: u64,
    pid: u32,
    tid: u32,
    frames: Vec<u64>,
}

/// The golden facts recomputed from one pass in `order`.
pub struct Facts {
    pub diagnostics: Diagnostics,
    pub header_types: BTreeMap<String, u64>,
    pub kernel: BTreeMap<String, (u64, BTreeMap<String, u64>)>,
    pub providers: BTreeMap<String, u64>,
    stacks: Vec<Stack>,
    /// Hooks of the non-StackWalk events at each raw timestamp.
    hooks_at: HashMap<u64, BTreeSet<String>>,
    pub timestamps: Vec<u64>,
}

pub fn facts(file: &EtlFile, order: Order) -> Facts {
    let mut header_types = BTreeMap::new();
    let mut kernel: BTreeMap<String, (u64, BTreeMap<String, u64>)> = BTreeMap::new();
    let mut providers = BTreeMap::new();
    let mut stacks = Vec::new();
    let mut hooks_at: HashMap<u64, BTreeSet<String>> = HashMap::new();
    let mut timestamps = Vec::new();
    let mut r = file.events(order);
    while let Some(ev) = r.next_event() {
        timestamps.push(ev.timestamp);
        let kind = ev.header.name().to_string();
        *header_types.entry(kind.clone()).or_insert(0) += 1;
        match ev.id {
            EventId::Kernel { group, opcode } => {
                let e = kernel
                    .entry(format!("group=0x{group:02x} opcode={opcode}"))
                    .or_default();
                e.0 += 1;
                *e.1.entry(kind.clone()).or_insert(0) += 1;
                if group == 0x18 && opcode == 32 {
                    let p = ev.payload;
                    let ps = ev.pointer_size as usize;
                    assert!(
                        p.len() >= 16,
                        "StackWalk payload too short at {:#x}",
                        ev.offset
                    );
                    let frames = p[16..]
                        .chunks_exact(ps)
                        .map(|c| {
                            let mut a = [0u8; 8];
                            a[..ps].copy_from_slice(c);
                            u64::from_le_bytes(a)
                        })
                        .collect();
                    stacks.push(Stack {
                        event_timestamp: u64::from_le_bytes(p[0..8].try_into().unwrap()),
                        pid: u32::from_le_bytes(p[8..12].try_into().unwrap()),
                        tid: u32::from_le_bytes(p[12..16].try_into().unwrap()),
                        frames,
                    });
                    continue;
                }
            }
            EventId::Classic { guid, opcode } => {
                *providers
                    .entry(format!("{guid} type={opcode} v={} [{kind}]", ev.version))
                    .or_insert(0) += 1;
            }
            EventId::Manifest {
                provider,
                id,
                version,
                opcode,
                ..
            } => {
                *providers
                    .entry(format!(
                        "{provider} id={id} v={version} op={opcode} [{kind}]"
                    ))
                    .or_insert(0) += 1;
            }
        }
        hooks_at
            .entry(ev.timestamp)
            .or_default()
            .insert(parent_hook(&ev));
    }
    Facts {
        diagnostics: r.into_diagnostics(),
        header_types,
        kernel,
        providers,
        stacks,
        hooks_at,
        timestamps,
    }
}

impl Facts {
    pub fn header_types_json(&self) -> Value {
        json!(self.header_types)
    }

    pub fn kernel_json(&self) -> Value {
        let m: serde_json::Map<String, Value> = self
            .kernel
            .iter()
            .map(|(k, (n, h))| (k.clone(), json!({"count": n, "headers": h})))
            .collect();
        Value::Object(m)
    }

    pub fn providers_json(&self) -> Value {
        json!(self.providers)
    }

    /// The golden `stackwalk` section. Pairing rule that reproduces the
    /// independent walker's numbers on all three stack files: for each
    /// StackWalk, the distinct hooks of all non-StackWalk events whose raw
    /// timestamp equals its `EventTimeStamp`, each counted once per stack
    /// (anywhere in the trace: the parent may sit on another processor).
    pub fn stackwalk_json(&self) -> Option<Value> {
        if self.stacks.is_empty() {
            return None;
        }
        let mut parents: BTreeMap<String, u64> = BTreeMap::new();
        let mut kernel_first = 0u64;
        for s in &self.stacks {
            if let Some(hooks) = self.hooks_at.get(&s.event_timestamp) {
                for h in hooks {
                    *parents.entry(h.clone()).or_insert(0) += 1;
                }
            }
            if s.frames
                .first()
                .is_some_and(|&f| f >= 0xFFFF_0000_0000_0000)
            {
                kernel_first += 1;
            }
        }
        let examples: Vec<Value> = self
            .stacks
            .iter()
            .take(2)
            .map(|s| {
                json!({
                    "ts": s.event_timestamp,
                    "pid": s.pid,
                    "tid": s.tid,
                    "frames": s.frames.iter().take(6).map(|f| format!("{f:#x}")).collect::<Vec<_>>(),
                    "n": s.frames.len(),
                })
            })
            .collect();
        Some(json!({
            "events": self.stacks.len(),
            "parent_hook_of_matched_stacks": parents,
            "first_frame_in_kernel": kernel_first,
            "examples": examples,
        }))
    }
}
