//! Differential test against dissect.etl (an independent reader with its own
//! copy of the kernel schemas): the Process and Image fields we decode must
//! equal, as multisets, what `tests/oracle/dissect_fields.py` dumps.
//!
//! dissect.etl is a required test dependency (`scripts/test` installs it):
//! when it is missing this test fails and says how to install it.

mod common;

use std::process::Command;

use sentry_kernel::{decode, KernelEvent};
use sentry_raw::EventId;
use serde_json::Value;

use common::{corpus_dir, open};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ProcessRow {
    opcode: u8,
    version: u8,
    pid: u32,
    parent: u32,
    session: u32,
    image: String,
    command_line: String,
    sid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ImageRow {
    opcode: u8,
    version: u8,
    pid: u32,
    base: u64,
    size: u64,
    file: String,
}

fn ours(name: &str) -> (Vec<ProcessRow>, Vec<ImageRow>) {
    let file = open(name);
    let mut events = file.events(sentry_etl::Order::File);
    let (mut procs, mut images) = (Vec::new(), Vec::new());
    while let Some(ev) = events.next_event() {
        let EventId::Kernel { opcode, .. } = ev.id else {
            continue;
        };
        match decode(&ev).unwrap_or_else(|e| panic!("{name}: {e}")) {
            Some(KernelEvent::Process(p)) => procs.push(ProcessRow {
                opcode,
                version: ev.version,
                pid: p.process_id,
                parent: p.parent_id,
                session: p.session_id,
                image: p.image_file_name,
                command_line: p.command_line,
                sid: p.user_sid,
            }),
            Some(KernelEvent::Image(i)) => images.push(ImageRow {
                opcode,
                version: ev.version,
                pid: i.process_id,
                base: i.image_base,
                size: i.image_size,
                file: i.file_name,
            }),
            _ => {}
        }
    }
    procs.sort();
    images.sort();
    (procs, images)
}

fn dissect(name: &str) -> (Vec<ProcessRow>, Vec<ImageRow>) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/oracle/dissect_fields.py"
    );
    let path = corpus_dir().join(format!("{name}.etl"));
    let out = Command::new("python3")
        .arg(script)
        .arg(&path)
        .output()
        .expect("python3 must be installed to run the dissect.etl oracle");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "dissect.etl oracle failed on {name} (if dissect.etl is missing, run \
         `pip install dissect.etl`):\n{stderr}"
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("oracle JSON");
    assert_eq!(
        v["undecoded"].as_object().map(|m| m.len()),
        Some(0),
        "{name}: dissect.etl could not decode some events: {}",
        v["undecoded"]
    );
    let u = |v: &Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k}: {v}"));
    let s = |v: &Value, k: &str| {
        v[k].as_str()
            .unwrap_or_else(|| panic!("{k}: {v}"))
            .to_owned()
    };
    let mut procs: Vec<ProcessRow> = v["process"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| ProcessRow {
            opcode: u(r, "opcode") as u8,
            version: u(r, "version") as u8,
            pid: u(r, "pid") as u32,
            parent: u(r, "parent") as u32,
            session: u(r, "session") as u32,
            image: s(r, "image"),
            command_line: s(r, "command_line"),
            sid: s(r, "sid"),
        })
        .collect();
    let mut images: Vec<ImageRow> = v["image"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| ImageRow {
            opcode: u(r, "opcode") as u8,
            version: u(r, "version") as u8,
            pid: u(r, "pid") as u32,
            base: u(r, "base"),
            size: u(r, "size"),
            file: s(r, "file"),
        })
        .collect();
    procs.sort();
    images.sort();
    (procs, images)
}

/// First differences of two sorted lists, for a readable failure.
fn diff<T: Ord + std::fmt::Debug>(a: &[T], b: &[T]) -> String {
    let only_a: Vec<_> = a
        .iter()
        .filter(|x| b.binary_search(x).is_err())
        .take(3)
        .collect();
    let only_b: Vec<_> = b
        .iter()
        .filter(|x| a.binary_search(x).is_err())
        .take(3)
        .collect();
    format!("ours only: {only_a:#?}\ndissect only: {only_b:#?}")
}

fn compare(name: &str, min_procs: usize, min_images: usize) {
    let (op, oi) = ours(name);
    let (dp, di) = dissect(name);
    assert!(
        op.len() >= min_procs && oi.len() >= min_images,
        "{name}: {} / {}",
        op.len(),
        oi.len()
    );
    assert!(
        op == dp,
        "{name}: Process rows differ ({} vs {})\n{}",
        op.len(),
        dp.len(),
        diff(&op, &dp)
    );
    assert!(
        oi == di,
        "{name}: Image rows differ ({} vs {})\n{}",
        oi.len(),
        di.len(),
        diff(&oi, &di)
    );
    // Non-trivial content: SIDs and NT paths were really parsed.
    assert!(op.iter().any(|p| p.sid == "S-1-5-18"), "{name}");
    assert!(oi.iter().all(|i| i.file.starts_with('\\')), "{name}");
}

#[test]
fn win7_process_and_image_fields_equal_dissect_etl() {
    // Golden counts: 96 Process, 5,604 Image events.
    compare("win7-x64-kernel-stacks", 96, 5604);
}

#[test]
fn win10_process_and_image_fields_equal_dissect_etl() {
    // Golden counts: 476 Process (incl. 9 Defunct V5), 15,434 Image events.
    compare("win10-x64-kernel-rundown", 476, 15434);
}
