#!/usr/bin/env bash
# Times this reader next to the Python reference parsers on the same file,
# in the same run, and prints the ratios.
#
#   crates/etl/benches/peers.sh [FILE]     (default: the 26 MB Win7 trace)
#
# Ours: the `count` example (release, one thread), file order and time
# order. dissect.etl: iterates every record header (no payload decoding).
# etl-parser: parses the whole file through its observer API (it raises
# IndexError on the Win7 files and yields nothing on compressed ones: the
# script reports what it got before failing).
set -euo pipefail
cd "$(dirname "$0")/../../.."
file="${1:-../shared/corpus/win7-x64-kernel-stacks.etl}"
cargo build --release -q -p sentry-etl --example count
target="${CARGO_TARGET_DIR:-target}"
# Warm the page cache so every reader sees the same I/O.
cat "$file" > /dev/null
ours_file=$("$target/release/examples/count" "$file" file)
ours_time=$("$target/release/examples/count" "$file" time)
python3 - "$file" "$ours_file" "$ours_time" <<'PY'
import json, os, sys, time

path, ours_file, ours_time = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
size = os.path.getsize(path)

def report(name, secs, n, note=""):
    print(f"{name:<28} {secs:9.3f} s {size / 1e6 / secs:10.1f} MB/s {n / secs:12.0f} events/s  {n} events {note}")

print(f"file: {path} ({size / 1e6:.1f} MB)")
report("sentry-etl (file order)", ours_file["seconds"], ours_file["events"])
report("sentry-etl (time order)", ours_time["seconds"], ours_time["events"])

from dissect.etl import ETL
t = time.perf_counter()
n = 0
with open(path, "rb") as fh:
    for _ in ETL(fh):
        n += 1
d_secs = time.perf_counter() - t
report("dissect.etl 3.x", d_secs, n)

from etl.etl import IEtlFileObserver, build_from_stream

class Count(IEtlFileObserver):
    def __init__(self):
        self.n = 0
    def on_event_record(self, event): self.n += 1
    def on_trace_record(self, event): self.n += 1
    def on_perfinfo_trace(self, obj): self.n += 1
    def on_system_trace(self, obj): self.n += 1
    def on_win_trace(self, obj): self.n += 1

obs = Count()
note = ""
t = time.perf_counter()
try:
    with open(path, "rb") as fh:
        build_from_stream(fh.read()).parse(obs)
except Exception as e:  # it fails on some files; report what it read
    note = f"(stopped: {type(e).__name__})"
e_secs = time.perf_counter() - t
report("etl-parser", e_secs, obs.n, note)

print(f"ratio dissect.etl / sentry-etl (file order): {d_secs / ours_file['seconds']:.0f}x")
if obs.n > 0:
    print(f"ratio etl-parser / sentry-etl (file order):  {e_secs / ours_file['seconds']:.0f}x"
          f" (it read {obs.n} of {ours_file['events']} events)")
else:
    print(f"ratio etl-parser / sentry-etl: n/a (it read {obs.n} of {ours_file['events']} events)")
PY
