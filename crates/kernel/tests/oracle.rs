//! Differential test against dissect.etl (an independent reader with its own
//! copy of the kernel schemas): the Process, Image and Thread fields we
//! decode must equal, as multisets, what `tests/oracle/dissect_fields.py`
//! dumps. No dissect.etl bug affects these classes on these traces (its
//! known bugs are in EVENT_HEADER GUIDs and StackWalk payloads), so there is
//! no whitelist: any difference fails.
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
    key: u64,
    pid: u32,
    parent: u32,
    session: u32,
    exit_status: i64,
    dtb: Option<u64>,
    flags: Option<u32>,
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
    checksum: u32,
    time_date_stamp: u32,
    default_base: u64,
    file: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ThreadRow {
    opcode: u8,
    version: u8,
    pid: u32,
    tid: u32,
    stack_base: u64,
    stack_limit: u64,
    user_stack_base: u64,
    user_stack_limit: u64,
    win32_start: u64,
    teb: u64,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Rows {
    process: Vec<ProcessRow>,
    image: Vec<ImageRow>,
    thread: Vec<ThreadRow>,
}

impl Rows {
    fn sort(&mut self) {
        self.process.sort();
        self.image.sort();
        self.thread.sort();
    }
}

fn ours(name: &str) -> Rows {
    let file = open(name);
    let mut events = file.events(sentry_etl::Order::File);
    let mut rows = Rows::default();
    while let Some(ev) = events.next_event() {
        let EventId::Kernel { opcode, .. } = ev.id else {
            continue;
        };
        let version = ev.version;
        match decode(&ev).unwrap_or_else(|e| panic!("{name}: {e}")) {
            Some(KernelEvent::Process(p)) => rows.process.push(ProcessRow {
                opcode,
                version,
                key: p.unique_process_key,
                pid: p.process_id,
                parent: p.parent_id,
                session: p.session_id,
                exit_status: i64::from(p.exit_status),
                dtb: (version >= 3).then_some(p.directory_table_base),
                flags: p.flags,
                image: p.image_file_name,
                command_line: p.command_line,
                sid: p.user_sid,
            }),
            Some(KernelEvent::Image(i)) => rows.image.push(ImageRow {
                opcode,
                version,
                pid: i.process_id,
                base: i.image_base,
                size: i.image_size,
                checksum: i.image_checksum,
                time_date_stamp: i.time_date_stamp,
                default_base: i.default_base,
                file: i.file_name,
            }),
            Some(KernelEvent::Thread(t)) => rows.thread.push(ThreadRow {
                opcode,
                version,
                pid: t.process_id,
                tid: t.thread_id,
                stack_base: t.stack_base,
                stack_limit: t.stack_limit,
                user_stack_base: t.user_stack_base,
                user_stack_limit: t.user_stack_limit,
                win32_start: t.win32_start_addr,
                teb: t.teb_base,
            }),
            _ => {}
        }
    }
    rows.sort();
    rows
}

fn dissect(name: &str) -> Rows {
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
    let rows = |k: &str| v[k].as_array().unwrap_or_else(|| panic!("{k}")).iter();
    let mut out = Rows {
        process: rows("process")
            .map(|r| ProcessRow {
                opcode: u(r, "opcode") as u8,
                version: u(r, "version") as u8,
                key: u(r, "key"),
                pid: u(r, "pid") as u32,
                parent: u(r, "parent") as u32,
                session: u(r, "session") as u32,
                exit_status: r["exit_status"].as_i64().unwrap(),
                dtb: r["dtb"].as_u64(),
                flags: r["flags"].as_u64().map(|f| f as u32),
                image: s(r, "image"),
                command_line: s(r, "command_line"),
                sid: s(r, "sid"),
            })
            .collect(),
        image: rows("image")
            .map(|r| ImageRow {
                opcode: u(r, "opcode") as u8,
                version: u(r, "version") as u8,
                pid: u(r, "pid") as u32,
                base: u(r, "base"),
                size: u(r, "size"),
                checksum: u(r, "checksum") as u32,
                time_date_stamp: u(r, "time_date_stamp") as u32,
                default_base: u(r, "default_base"),
                file: s(r, "file"),
            })
            .collect(),
        thread: rows("thread")
            .map(|r| ThreadRow {
                opcode: u(r, "opcode") as u8,
                version: u(r, "version") as u8,
                pid: u(r, "pid") as u32,
                tid: u(r, "tid") as u32,
                stack_base: u(r, "stack_base"),
                stack_limit: u(r, "stack_limit"),
                user_stack_base: u(r, "user_stack_base"),
                user_stack_limit: u(r, "user_stack_limit"),
                win32_start: u(r, "win32_start"),
                teb: u(r, "teb"),
            })
            .collect(),
    };
    out.sort();
    out
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

/// Golden counts of the trace, checked so that both sides are complete.
fn compare(name: &str, processes: usize, images: usize, threads: usize) {
    let o = ours(name);
    let d = dissect(name);
    assert_eq!(
        (o.process.len(), o.image.len(), o.thread.len()),
        (processes, images, threads),
        "{name}: decoded counts vs golden"
    );
    let (a, b) = (&o.process, &d.process);
    assert!(
        a == b,
        "{name}: Process rows differ ({} vs {})\n{}",
        a.len(),
        b.len(),
        diff(a, b)
    );
    let (a, b) = (&o.image, &d.image);
    assert!(
        a == b,
        "{name}: Image rows differ ({} vs {})\n{}",
        a.len(),
        b.len(),
        diff(a, b)
    );
    let (a, b) = (&o.thread, &d.thread);
    assert!(
        a == b,
        "{name}: Thread rows differ ({} vs {})\n{}",
        a.len(),
        b.len(),
        diff(a, b)
    );
    // Non-trivial content: SIDs and NT paths were really parsed.
    assert!(o.process.iter().any(|p| p.sid == "S-1-5-18"), "{name}");
    assert!(
        o.process.iter().any(|p| p.command_line.contains(".exe")),
        "{name}"
    );
    assert!(o.image.iter().all(|i| i.file.starts_with('\\')), "{name}");
}

#[test]
fn win7_fields_equal_dissect_etl() {
    // Process V3, Image V2 (incl. hook 0x030A), Thread V3.
    compare("win7-x64-kernel-stacks", 96, 5604, 1310);
}

#[test]
fn win8_fields_equal_dissect_etl() {
    // Process V4 (PERFINFO-headed rundown), compressed buffers.
    compare("win8-x64-compressed-stackcache", 68, 3596, 1358);
}

#[test]
fn win10_fields_equal_dissect_etl() {
    // Process V4 and Defunct V5, Image V3; no Thread events.
    compare("win10-x64-kernel-rundown", 476, 15434, 0);
}
