"""Summarise an .etl file with dissect.etl (an independent reader) as JSON.

Used by crates/synth/tests/oracle.rs: the writer's own counts and the truth
file must agree with what dissect.etl reads. Exits 3 if dissect.etl is
missing so that the Rust test fails loudly instead of skipping.
"""
import json
import struct
import sys

try:
    from dissect.etl import ETL
except ImportError as e:  # pragma: no cover
    print(f"dissect.etl is not installed: {e}", file=sys.stderr)
    sys.exit(3)

KINDS = {0x01: "SYSTEM32", 0x02: "SYSTEM64", 0x10: "PERFINFO32", 0x11: "PERFINFO64"}


def main(path):
    with open(path, "rb") as fh:
        etl = ETL(fh)
        lh = etl.logfile_header
        ps = lh.pointer_size
        out = {
            "pointer_size": ps,
            "buffers_written": lh.buffers_written,
            "events_lost": lh.header.EventsLost,
            "processors": lh.header.NumberOfProcessors,
            "logger_name": lh.logger_name,
            "records": 0,
            "per_hook": {},
            "per_header": {},
            "enter": [],
            "stacks": [],
            "key_refs": [],
            "processes": [],
            "images": 0,
            "compressed_buffers": 0,
        }
        for buf in etl.buffers():
            if buf.header.BufferFlag & 0x40:
                out["compressed_buffers"] += 1
            proc = buf.header.ProcessorIndex
            for rec in buf:
                h = rec.header
                out["records"] += 1
                kind = KINDS.get(h._marker.header_type, hex(h._marker.header_type))
                out["per_header"][kind] = out["per_header"].get(kind, 0) + 1
                key = f"{h.group}/{h.opcode}"
                out["per_hook"][key] = out["per_hook"].get(key, 0) + 1
                p = bytes(h.payload)
                if (h.group, h.opcode) == (0x0F, 51):
                    addr = struct.unpack_from("<Q" if ps == 8 else "<I", p, 0)[0]
                    out["enter"].append([h.time_delta, proc, addr])
                elif (h.group, h.opcode) == (0x18, 32):
                    ts, pid, tid = struct.unpack_from("<QII", p, 0)
                    n = (len(p) - 16) // ps
                    frames = list(struct.unpack_from(("<%dQ" if ps == 8 else "<%dI") % n, p, 16))
                    out["stacks"].append([ts, pid, tid, proc, frames])
                elif (h.group, h.opcode) in ((0x18, 37), (0x18, 38)):
                    ts, pid, tid = struct.unpack_from("<QII", p, 0)
                    out["key_refs"].append([ts, pid, tid, h.opcode])
                elif h.group == 0x03 and h.opcode in (1, 3):
                    out["processes"].append(struct.unpack_from("<I", p, ps)[0])
                elif (h.group, h.opcode) in ((0x14, 3), (0x03, 10)):
                    out["images"] += 1
        json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
