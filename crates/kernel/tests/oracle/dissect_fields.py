#!/usr/bin/env python3
"""Differential oracle: Process and Image fields of an .etl file, decoded by
dissect.etl (its own reader and its own copy of the kernel event schemas), as
JSON on stdout:

    {"process": [{"opcode", "version", "pid", "parent", "session",
                  "image", "command_line", "sid"}, ...],
     "image":   [{"opcode", "version", "pid", "base", "size", "file"}, ...],
     "undecoded": {"<group>/<opcode> v<version>": count}}

Kernel events only (SYSTEM/COMPACT/PERFINFO headers). Process: group 3,
opcodes 1-4 and 39. Image: group 0x14 opcodes 2, 3, 4, 10 and hook 0x030A.
Events dissect.etl cannot decode are counted under "undecoded", not guessed.

Usage: dissect_fields.py FILE.etl
"""

import json
import sys

try:
    from dissect.etl.etl import ETL
    from dissect.etl.headers.system import SystemSpecificHeader
except ImportError as e:  # the Rust test turns this into a failure message
    print(f"dissect.etl is not importable ({e}); run `pip install dissect.etl`", file=sys.stderr)
    sys.exit(3)

PROCESS_OPS = {1, 2, 3, 4, 39}
IMAGE_OPS = {2, 3, 4, 10}


def text(v):
    """dissect gives char[] as bytes and wchar[] as str."""
    if isinstance(v, (bytes, bytearray)):
        try:
            return bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            return bytes(v).decode("latin-1")
    return str(v)


def sid_string(sid_struct):
    s = sid_struct.sid
    authority = int.from_bytes(bytes(s.authority), "big")
    auth = str(authority) if authority < 2**32 else "0x%012X" % authority
    return "-".join(["S", str(s.revision), auth] + [str(x) for x in s.subAuthorities])


def main(path):
    out = {"process": [], "image": [], "undecoded": {}}
    with open(path, "rb") as fh:
        for rec in ETL(fh):
            h = rec.header
            if not isinstance(h, SystemSpecificHeader):
                continue
            g, op, ver = h.group, h.opcode, h.version
            is_process = g == 0x03 and op in PROCESS_OPS
            is_image = (g == 0x14 and op in IMAGE_OPS) or (g == 0x03 and op == 10)
            if not (is_process or is_image):
                continue
            try:
                s = rec.event._struct
                if s is None:
                    raise ValueError("no schema")
                if is_process:
                    out["process"].append({
                        "opcode": op,
                        "version": ver,
                        "pid": int(s.ProcessId),
                        "parent": int(s.ParentId),
                        "session": int(s.SessionId),
                        "image": text(s.ImageFileName),
                        "command_line": text(s.CommandLine),
                        "sid": sid_string(s.UserSID),
                    })
                else:
                    out["image"].append({
                        "opcode": op,
                        "version": ver,
                        "pid": int(s.ProcessId),
                        "base": int(s.ImageBase),
                        "size": int(s.ImageSize),
                        "file": text(s.FileName),
                    })
            except Exception:  # noqa: BLE001 - counted, reported by the test
                key = "%#04x/%d v%d" % (g, op, ver)
                out["undecoded"][key] = out["undecoded"].get(key, 0) + 1
    json.dump(out, sys.stdout, sort_keys=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
