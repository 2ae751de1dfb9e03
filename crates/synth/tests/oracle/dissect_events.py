"""List the EVENT_HEADER records of an .etl file with dissect.etl (an
independent reader) as JSON: timestamp, pid, tid, provider bytes, event id,
level, opcode, each extended item's header as dissect parses it, the stack item's
MatchId and frames, and the user data.

Used by crates/synth/tests/oracle.rs for the Audit-API scenarios. dissect's
`payload` of an EVENT_HEADER record starts with the extended items; the user
data follows the last one. Exits 3 if dissect.etl is missing.
"""
import json
import struct
import sys

try:
    from dissect.etl import ETL
except ImportError as e:  # pragma: no cover
    print(f"dissect.etl is not installed: {e}", file=sys.stderr)
    sys.exit(3)


def main(path):
    out = []
    with open(path, "rb") as fh:
        etl = ETL(fh)
        for buf in etl.buffers():
            for rec in buf:
                h = rec.header
                if h._marker.header_type not in (0x12, 0x13):
                    continue
                raw = bytes(h.payload)
                items = []
                skip = 0
                stack = None
                for it in h.header_extensions or []:
                    # dissect names the third u16 `Reserved1`: bit 0 is
                    # the documented Linkage.
                    ext_type, linkage = int(it.ext_type), it.reserved1 & 1
                    items.append([ext_type, linkage, it.data_size, it.size])
                    data = raw[skip + 8: skip + 8 + it.data_size]
                    if ext_type in (5, 6):
                        w = 8 if ext_type == 6 else 4
                        n = (len(data) - 8) // w
                        match_id = struct.unpack_from("<Q", data, 0)[0]
                        frames = list(struct.unpack_from(("<%dQ" if w == 8 else "<%dI") % n, data, 8))
                        stack = [match_id, frames]
                    skip += it.size
                    # dissect reads on past the last item (it ignores
                    # Linkage); the items end at the first without it.
                    if not linkage:
                        break
                d = h.header
                out.append({
                    "ts": h.time_delta,
                    "pid": h.process_id,
                    "tid": h.thread_id,
                    "provider": bytes(d.ProviderId).hex(),
                    "id": d.Id,
                    "level": d.Level,
                    "opcode": d.OpCode,
                    "items": items,
                    "stack": stack,
                    "user_data": raw[skip:].hex(),
                })
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
