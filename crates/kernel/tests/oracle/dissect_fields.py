#!/usr/bin/env python3
"""Differential oracle: Process and Image fields of an .etl file, decoded by
dissect.etl (its own reader and its own copy of the kernel event schemas), as
JSON on stdout:

    {"process": [{"opcode", "version", "key", "pid", "parent", "session",
                  "exit_status", "dtb", "flags", "image", "command_line",
                  "sid"}, ...],
     "image":   [{"opcode", "version", "pid", "base", "size", "checksum",
                  "time_date_stamp", "default_base", "file"}, ...],
     "thread":  [{"opcode", "version", "pid", "tid", "stack_base",
                  "stack_limit", "user_stack_base", "user_stack_limit",
                  "win32_start", "teb"}, ...],
     "undecoded": {"<group>/<opcode> v<version>": count}}

Kernel events only (SYSTEM/COMPACT/PERFINFO headers). Process: group 3,
opcodes 1-4 and 39. Image: group 0x14 opcodes 2, 3, 4, 10 and hook 0x030A.
Thread: group 5, opcodes 1-4. Fields a version lacks are null.
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
THREAD_OPS = {1, 2, 3, 4}
IMAGE_OPS = {2, 3, 4, 10}


def text(v):
    """dissect gives char[] as bytes and wchar[] as str."""
    if isinstance(v, (bytes, bytearray)):
        try:
            return bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            return bytes(v).decode("latin-1")
    return str(v)


def optional(struct, field):
    """A field only some versions have."""
    try:
        return int(getattr(struct, field))
    except AttributeError:
        return None


def sid_string(sid_struct):
    s = sid_struct.sid
    authority = int.from_bytes(bytes(s.authority), "big")
    auth = str(authority) if authority < 2**32 else "0x%012X" % authority
    return "-".join(["S", str(s.revision), auth] + [str(x) for x in s.subAuthorities])


def main(path):
    out = {"process": [], "image": [], "thread": [], "undecoded": {}}
    with open(path, "rb") as fh:
        for rec in ETL(fh):
            h = rec.header
            if not isinstance(h, SystemSpecificHeader):
                continue
            g, op, ver = h.group, h.opcode, h.version
            is_process = g == 0x03 and op in PROCESS_OPS
            is_image = (g == 0x14 and op in IMAGE_OPS) or (g == 0x03 and op == 10)
            is_thread = g == 0x05 and op in THREAD_OPS
            if not (is_process or is_image or is_thread):
                continue
            try:
                s = rec.event._struct
                if s is None:
                    raise ValueError("no schema")
                if is_process:
                    out["process"].append({
                        "opcode": op,
                        "version": ver,
                        "key": int(s.UniqueProcessKey),
                        "pid": int(s.ProcessId),
                        "parent": int(s.ParentId),
                        "session": int(s.SessionId),
                        "exit_status": int(s.ExitStatus),
                        "dtb": optional(s, "DirectoryTableBase"),
                        "flags": optional(s, "Flags"),
                        "image": text(s.ImageFileName),
                        "command_line": text(s.CommandLine),
                        "sid": sid_string(s.UserSID),
                    })
                elif is_image:
                    out["image"].append({
                        "opcode": op,
                        "version": ver,
                        "pid": int(s.ProcessId),
                        "base": int(s.ImageBase),
                        "size": int(s.ImageSize),
                        "checksum": int(s.ImageChecksum),
                        "time_date_stamp": int(s.TimeDateStamp),
                        "default_base": int(s.DefaultBase),
                        "file": text(s.FileName),
                    })
                else:
                    out["thread"].append({
                        "opcode": op,
                        "version": ver,
                        "pid": int(s.ProcessId),
                        "tid": int(s.TThreadId),
                        "stack_base": int(s.StackBase),
                        "stack_limit": int(s.StackLimit),
                        "user_stack_base": int(s.UserStackBase),
                        "user_stack_limit": int(s.UserStackLimit),
                        "win32_start": int(s.Win32StartAddr),
                        "teb": int(s.TebBase),
                    })
            except Exception:  # noqa: BLE001 - counted, reported by the test
                key = "%#04x/%d v%d" % (g, op, ver)
                out["undecoded"][key] = out["undecoded"].get(key, 0) + 1
    json.dump(out, sys.stdout, sort_keys=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
