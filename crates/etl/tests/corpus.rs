//! Every corpus file against its golden facts (`NAME.expected.json`, from an
//! independent walker): buffer and record counts, header kinds, kernel and
//! provider event counts, logfile header fields, walk errors, and the
//! StackWalk pairing figures.

mod common;

use common::{corpus_files, facts, golden};
use sentry_etl::{EtlFile, Order};
use serde_json::json;

fn check_file(path: &std::path::Path) {
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let g = golden(path);
    let file = EtlFile::open(path).unwrap_or_else(|e| panic!("{name}: open: {e}"));
    assert_eq!(file.len(), g["size"].as_u64().unwrap(), "{name}: size");

    let f = facts(&file, Order::File);
    let d = &f.diagnostics;
    assert_eq!(json!(d.buffers), g["buffers"], "{name}: buffers");
    assert_eq!(
        json!(d.compressed_buffers),
        g["compressed_buffers"],
        "{name}: compressed_buffers"
    );
    assert_eq!(json!(d.records), g["records"], "{name}: records");
    assert_eq!(
        f.header_types_json(),
        g["header_types"],
        "{name}: header_types"
    );
    assert_eq!(f.kernel_json(), g["kernel_events"], "{name}: kernel_events");
    assert_eq!(
        f.providers_json(),
        g["provider_events"],
        "{name}: provider_events"
    );

    let h = file.header();
    let lh = json!({
        "BufferSize": h.buffer_size,
        "OSVersion": h.os_version_string(),
        "ProviderVersion(build)": h.provider_version,
        "NumberOfProcessors": h.number_of_processors,
        "PointerSize": h.pointer_size,
        "EventsLost": h.events_lost,
        "LogFileMode": format!("{:#x}", h.log_file_mode),
        "BuffersWritten": h.buffers_written,
    });
    assert_eq!(lh, g["logfile_header"], "{name}: logfile_header");

    let walk_errors = g["walk_errors"].as_array().expect("walk_errors").len() as u64;
    assert_eq!(
        d.error_count, walk_errors,
        "{name}: errors {:?} (golden walk_errors {})",
        d.errors, g["walk_errors"]
    );
    assert_eq!(
        d.records,
        d.events + d.message_records + d.other_records.values().sum::<u64>()
    );

    match (f.stackwalk_json(), g.get("stackwalk")) {
        (Some(mine), Some(theirs)) => assert_eq!(&mine, theirs, "{name}: stackwalk"),
        (None, None) => {}
        (mine, theirs) => panic!("{name}: stackwalk mine {mine:?} golden {theirs:?}"),
    }

    // Time order: the same events, timestamps never decreasing.
    let t = facts(&file, Order::Time);
    assert_eq!(
        t.diagnostics.events, d.events,
        "{name}: time-order event count"
    );
    assert_eq!(
        t.header_types, f.header_types,
        "{name}: time-order header types"
    );
    assert_eq!(t.kernel, f.kernel, "{name}: time-order kernel events");
    assert_eq!(t.providers, f.providers, "{name}: time-order providers");
    // Examples are the first stacks in file order; the rest must agree.
    let strip = |v: Option<serde_json::Value>| {
        v.map(|mut v| {
            v.as_object_mut().unwrap().remove("examples");
            v
        })
    };
    assert_eq!(
        strip(t.stackwalk_json()),
        strip(f.stackwalk_json()),
        "{name}: time-order stacks"
    );
    let backwards = t.timestamps.windows(2).filter(|w| w[1] < w[0]).count();
    assert_eq!(
        backwards, 0,
        "{name}: time order goes backwards {backwards} times"
    );
    let mut sorted = f.timestamps.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted, t.timestamps,
        "{name}: time order is the sorted file order"
    );
}

#[test]
fn every_corpus_file_matches_its_golden_facts() {
    let files = corpus_files();
    for path in &files {
        check_file(path);
    }
}

#[test]
fn in_memory_reader_matches_file_reader() {
    for path in corpus_files() {
        let bytes = std::fs::read(&path).unwrap();
        let from_file = EtlFile::open(&path).unwrap();
        let from_mem = EtlFile::from_bytes(&bytes[..]).unwrap();
        assert_eq!(from_file.header(), from_mem.header());
        assert_eq!(from_file.buffers(), from_mem.buffers());
        let mut a = from_file.events(Order::File);
        let mut b = from_mem.events(Order::File);
        loop {
            match (a.next_event(), b.next_event()) {
                (None, None) => break,
                (x, y) => assert_eq!(x, y, "{}", path.display()),
            }
        }
    }
}

#[test]
fn for_each_delivers_what_next_event_does() {
    for path in corpus_files() {
        let file = EtlFile::open(&path).unwrap();
        for order in [Order::File, Order::Time] {
            let mut expected = Vec::new();
            let mut r = file.events(order);
            while let Some(ev) = r.next_event() {
                expected.push(format!("{ev:?}"));
            }
            let mut got = Vec::new();
            let mut r = file.events(order);
            r.for_each(|ev| {
                got.push(format!("{ev:?}"));
                std::ops::ControlFlow::Continue(())
            });
            assert!(!got.is_empty(), "{}", path.display());
            assert_eq!(got, expected, "{} {order:?}", path.display());
            assert_eq!(r.diagnostics().events, expected.len() as u64);
            // `Break` stops at once; the reader goes on from there.
            let mut r = file.events(order);
            let mut n = 0;
            r.for_each(|_| {
                n += 1;
                if n == 3 {
                    std::ops::ControlFlow::Break(())
                } else {
                    std::ops::ControlFlow::Continue(())
                }
            });
            assert_eq!(n, 3.min(expected.len()));
            if let Some(next) = expected.get(3) {
                assert_eq!(&format!("{:?}", r.next_event().unwrap()), next);
            }
        }
    }
}

#[test]
fn processors_come_from_the_buffer_context() {
    // Win7: 8-bit processor at 0x28 (0x0803 is processor 3); Win10: 16-bit
    // index with the PROC_INDEX flag. Every processor index is below the
    // logfile header's processor count.
    for path in corpus_files() {
        let file = EtlFile::open(&path).unwrap();
        let n = file.header().number_of_processors;
        let mut seen = std::collections::BTreeSet::new();
        for b in file.buffers() {
            assert!(
                u32::from(b.header.processor) < n,
                "{}: processor {} of {n}",
                path.display(),
                b.header.processor
            );
            seen.insert(b.header.processor);
        }
        if path.ends_with("win7-x64-kernel-stacks.etl") {
            assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
            assert_eq!(file.buffers()[1].header.processor, 3);
        }
    }
}

#[test]
fn clock_agrees_with_dissect_etl() {
    // (file, raw timestamp, UTC to the microsecond) from dissect.etl 3.14,
    // which converts independently of this reader.
    let cases = [
        (
            "win10-x64-kernel-rundown.etl",
            13_764_840_754u64,
            "2020-09-14T22:49:57.211809",
        ),
        (
            "win10-x64-kernel-rundown.etl",
            13_765_001_557,
            "2020-09-14T22:49:57.227888",
        ),
        (
            "win10-x64-kernel-rundown.etl",
            13_890_262_142,
            "2020-09-14T22:50:09.753946",
        ),
        (
            "win8-x64-compressed-stackcache.etl",
            1_942_608_875,
            "2020-07-29T00:07:00.623615",
        ),
        (
            "win8-x64-compressed-stackcache.etl",
            2_048_290_647,
            "2020-07-29T00:07:11.191793",
        ),
    ];
    for (name, raw, utc) in cases {
        let file = EtlFile::open(common::corpus_dir().join(name)).unwrap();
        let mut seen = false;
        file.for_each_event(Order::File, |ev| {
            seen |= ev.timestamp == raw;
            std::ops::ControlFlow::Continue(())
        });
        assert!(seen, "{name}: no event at raw {raw}");
        // dissect scales with a float and truncates: allow one microsecond.
        let ft = file.clock().to_filetime(raw);
        let near = (-10..=10).any(|k| sentry_raw::filetime_to_rfc3339(ft + k)[..26] == *utc);
        assert!(
            near,
            "{name} raw {raw}: {} vs {utc}",
            sentry_raw::filetime_to_rfc3339(ft)
        );
    }
}

#[test]
fn extended_data_items_are_exposed() {
    use std::collections::BTreeMap;
    // Counts by ExtType, from a separate Python walk of the documented
    // layout (linkage bit 0 of the third u16).
    let expected: &[(&str, &[(u16, u64)])] = &[
        ("win7-x64-kernel-stacks.etl", &[(6, 93), (12, 46)]),
        ("win8-wow64-compressed-stackcache.etl", &[(1, 3), (6, 1070)]),
        ("win8-x64-compressed-stackcache.etl", &[(1, 3), (6, 655)]),
        ("truncated-last-buffer.etl", &[(11, 1), (12, 1)]),
        ("win11-user-session.etl", &[]),
    ];
    for (name, want) in expected {
        let file = EtlFile::open(common::corpus_dir().join(name)).unwrap();
        let mut got: BTreeMap<u16, u64> = BTreeMap::new();
        let mut frames = 0usize;
        file.for_each_event(Order::File, |ev| {
            for item in ev.extended.items() {
                *got.entry(item.ext_type).or_insert(0) += 1;
                if let Some((_, f)) = item.stack_trace() {
                    let n = f.count();
                    assert!(n > 0, "{name}: empty stack at {:#x}", ev.offset);
                    assert_eq!(item.data.len(), 8 + 8 * n);
                    frames += n;
                }
            }
            std::ops::ControlFlow::Continue(())
        });
        let want: BTreeMap<u16, u64> = want.iter().copied().collect();
        assert_eq!(got, want, "{name}");
        assert_eq!(frames > 0, want.contains_key(&6), "{name}");
    }
}
