#!/usr/bin/env bash
# Full decode, ours next to dissect.etl, on the same file in the same run.
#
#   crates/kernel/benches/peers.sh [FILE]   (default: the 26 MB Win7 trace)
#
# Ours: the `decode_all` example (release, one thread): read in time order
# and decode every kernel event of interest (SysCallEnter/Exit, StackWalk and
# stack keys, Process, Thread, Image, header), touching every field.
# dissect.etl: iterates every record, parses its payload with its manifests
# (`record.event`) and reads every header and payload field. It decodes more
# kinds of events than we do (every kernel class it has a manifest for) and
# none of some (no manifest, or a manifest it fails to compile: counted).
# DISSECT_MAX_RECORDS=N stops it after N records (rates stay per record).
set -euo pipefail
cd "$(dirname "$0")/../../.."
file="${1:-../shared/corpus/win7-x64-kernel-stacks.etl}"
cargo build --release -q -p sentry-kernel --example decode_all
target="${CARGO_TARGET_DIR:-target}"
cat "$file" > /dev/null
ours=$("$target/release/examples/decode_all" "$file")
python3 - "$file" "$ours" "${DISSECT_MAX_RECORDS:-0}" <<'PY'
import json, os, sys, time

path, ours, limit = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
size = os.path.getsize(path)
print(f"file: {path} ({size / 1e6:.1f} MB)")
print(f"sentry-kernel decode_all   {ours['seconds']:9.3f} s {ours['mb_per_s']:10.1f} MB/s "
      f"{ours['events_per_s']:12.0f} events/s  {ours['events']} events, "
      f"{ours['decoded']} decoded, {ours['decode_errors']} errors")

from dissect.etl import ETL
n = fields = no_manifest = failed = 0
end_offset = 0
t = time.perf_counter()
with open(path, "rb") as fh:
    for rec in ETL(fh):
        n += 1
        try:
            ev = rec.event
            fields += len(ev._header.additional_header_fields())
            s = ev._struct
            if s is None:
                no_manifest += 1
            else:
                for _ in s.__values__.values():
                    fields += 1
        except Exception:
            failed += 1
        if limit and n >= limit:
            break
secs = time.perf_counter() - t
# Bytes covered: the whole file, or the same share of it as records read.
share = 1.0 if not limit or n < limit else n / max(ours["events"], 1)
print(f"dissect.etl full decode    {secs:9.3f} s {size * share / 1e6 / secs:10.1f} MB/s "
      f"{n / secs:12.0f} events/s  {n} records, {fields} fields, "
      f"{no_manifest} without a manifest, {failed} failed")
ratio_events = (ours["events_per_s"]) / (n / secs)
ratio_bytes = ours["mb_per_s"] / (size * share / 1e6 / secs)
print(f"ratio sentry / dissect.etl (full decode): {ratio_events:.0f}x by events/s, {ratio_bytes:.0f}x by MB/s")
PY
