//! Throughput of trace generation (writer + scenario), into memory so the
//! disk is not measured: `cargo bench -p sentry-synth`.

use std::io::Cursor;

use sentry_synth::{generate, Options, Scenario};

fn main() {
    divan::main();
}

#[divan::bench(args = [false, true])]
fn mixed_20k_syscalls(bencher: divan::Bencher, compress: bool) {
    let o = Options {
        syscalls: 20_000,
        compress,
        ..Options::new(Scenario::Mixed)
    };
    let bytes = generate(&o, Cursor::new(Vec::new()), None::<Vec<u8>>)
        .unwrap()
        .1
        .stats
        .bytes;
    bencher
        .counter(divan::counter::BytesCount::new(bytes))
        .bench(|| {
            generate(
                &o,
                Cursor::new(Vec::with_capacity(8 << 20)),
                None::<Vec<u8>>,
            )
            .unwrap()
            .1
            .stats
            .records
        });
}
