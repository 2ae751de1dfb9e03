//! Stack extended items of EVENT_HEADER events in the corpus, by header
//! width: counts and `MatchId`s agree with dissect.etl, an independent
//! reader (walked with Python on 2026-12-06, following the documented
//! `Linkage` bit, which dissect itself ignores). 32-bit headers carry
//! 64-bit stack items in 64-bit traces: the item's width is the kernel's.

mod common;

use std::collections::BTreeMap;

use sentry_etl::{EtlFile, Order};
use sentry_raw::{ext_type, HeaderKind};

#[test]
fn stack_items_by_header_width_and_match_id() {
    // (file, [(header, STACK_TRACE64 items)]); every MatchId is 0.
    let expected: &[(&str, &[(HeaderKind, u64)])] = &[
        (
            "win8-wow64-compressed-stackcache.etl",
            &[
                (HeaderKind::EventHeader32, 15),
                (HeaderKind::EventHeader64, 1055),
            ],
        ),
        (
            "win8-x64-compressed-stackcache.etl",
            &[
                (HeaderKind::EventHeader32, 14),
                (HeaderKind::EventHeader64, 641),
            ],
        ),
        (
            "win7-x64-kernel-stacks.etl",
            &[
                (HeaderKind::EventHeader32, 2),
                (HeaderKind::EventHeader64, 91),
            ],
        ),
    ];
    for (name, want) in expected {
        let file = EtlFile::open(common::corpus_dir().join(name)).unwrap();
        let mut got: BTreeMap<HeaderKind, u64> = BTreeMap::new();
        let mut nonzero = 0;
        file.for_each_event(Order::File, |ev| {
            for item in ev.extended.items() {
                if let Some((match_id, frames)) = item.stack_trace() {
                    assert_eq!(item.ext_type, ext_type::STACK_TRACE64, "{name}");
                    assert!(frames.count() > 0);
                    *got.entry(ev.header).or_default() += 1;
                    nonzero += u64::from(match_id != 0);
                }
            }
            std::ops::ControlFlow::Continue(())
        });
        let want: BTreeMap<HeaderKind, u64> = want.iter().copied().collect();
        assert_eq!(got, want, "{name}");
        assert_eq!(nonzero, 0, "{name}: MatchId");
    }
}
