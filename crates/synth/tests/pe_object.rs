//! The system DLL images parse with the `object` crate (an independent PE
//! reader): exports resolve to the trace layout's stubs and routines, and
//! `SizeOfImage`/`TimeDateStamp` equal the Image events' values.

use object::read::pe::{PeFile32, PeFile64};
use object::LittleEndian as LE;
use object::Object;
use sentry_synth::pe::system_dlls;
use sentry_synth::world::{service_index, Layout, SERVICES};

fn exports(bytes: &[u8], ps: u8) -> (u32, u32, Vec<(String, u64)>) {
    fn collect<'a, O: Object<'a>>(f: &O) -> Vec<(String, u64)> {
        f.exports()
            .unwrap()
            .iter()
            .map(|e| (String::from_utf8(e.name().to_vec()).unwrap(), e.address()))
            .collect()
    }
    if ps == 8 {
        let f = PeFile64::parse(bytes).unwrap();
        let nt = f.nt_headers();
        assert!(f.section_by_name(".edata").is_some());
        (
            nt.optional_header.size_of_image.get(LE),
            nt.file_header.time_date_stamp.get(LE),
            collect(&f),
        )
    } else {
        let f = PeFile32::parse(bytes).unwrap();
        let nt = f.nt_headers();
        (
            nt.optional_header.size_of_image.get(LE),
            nt.file_header.time_date_stamp.get(LE),
            collect(&f),
        )
    }
}

#[test]
fn object_reads_the_exports() {
    for ps in [8u8, 4] {
        let l = Layout::new(ps);
        let dlls = system_dlls(&l);
        let mods = [&l.ntdll, &l.win32u, l.ntoskrnl(), l.win32k()];
        for ((name, bytes), m) in dlls.iter().zip(mods) {
            let (size, tds, ex) = exports(bytes, ps);
            assert_eq!(u64::from(size), m.size, "{name}");
            assert_eq!(tds, m.time_date_stamp, "{name}");
            for s in SERVICES {
                let want = match (*name, s.is_win32k()) {
                    ("ntdll.dll", false) | ("win32u.dll", true) => Some(l.stub(s)),
                    ("ntoskrnl.exe", false) | ("win32k.sys", true) => Some(l.routine(s)),
                    _ => None,
                };
                let got = ex.iter().find(|e| e.0 == s.name).map(|e| e.1);
                assert_eq!(got, want, "{name} {}", s.name);
            }
        }
        let s = &SERVICES[service_index("NtClose")];
        let (_, _, ex) = exports(&dlls[0].1, ps);
        assert_eq!(
            ex.iter().find(|e| e.0 == "ZwClose").map(|e| e.1),
            Some(l.stub(s))
        );
    }
}
