#!/usr/bin/env bash
# Fuzzes the .etl reader for a bounded time. Seeds come from ../shared/corpus
# (small files whole, big files cut after their first buffers).
# Usage: crates/etl/fuzz/run.sh [seconds-for-read] [seconds-for-xpress]
# Needs cargo-fuzz; on a stable toolchain RUSTC_BOOTSTRAP=1 lets it use the
# nightly-only sanitizer flags.
set -euo pipefail
cd "$(dirname "$0")"
corpus=../../../../shared/corpus
mkdir -p seeds corpus/read corpus/xpress
cp "$corpus/win10-ptr32-small.etl" "$corpus/truncated-last-buffer.etl" seeds/
python3 - "$corpus" <<'PY'
import struct, sys
src = sys.argv[1]
for name in ["win8-x64-compressed-stackcache", "win11-user-session", "win7-manifest-process"]:
    d = open(f"{src}/{name}.etl", "rb").read()
    off = 0
    for _ in range(3):
        off += struct.unpack_from("<I", d, off)[0]
    open(f"seeds/{name}-3buf.etl", "wb").write(d[:off])
PY
export RUSTC_BOOTSTRAP=1
cargo fuzz run read corpus/read seeds -- -max_total_time="${1:-240}" -max_len=200000 -rss_limit_mb=2048
cargo fuzz run xpress corpus/xpress -- -max_total_time="${2:-60}" -rss_limit_mb=2048
