#!/usr/bin/env python3
"""Checks for .ci/etw-replay (the Wine end-to-end harness).

  verdicts LIVE ANALYZE TRUTH   per-syscall lines of `live` equal `analyze`'s
                                (all fields but the wall-clock "time") and the
                                truth file (verdict, reason, pid/tid when a
                                stack exists)
  verdicts-images LIVE ANALYZE TRUTH
                                as verdicts, both runs with module bytes
                                (live from disk, analyze --images): the
                                truth's answer with them
  alerts LIVE ANALYZE           the final alert of each key equals analyze's
                                (fields that depend on the clock left out)
  lossy LIVE_ECS ANALYZE        `live --format ecs` after event loss: every
                                alert is one analyze raised on the intact
                                trace, carries trace_incomplete and host.name
  calls LOG CHECK...            assertions on the harness's call log
"""
import json
import sys


def lines(path):
    out = []
    with open(path, encoding="utf-8") as f:
        for n, l in enumerate(f, 1):
            l = l.strip()
            if l:
                try:
                    out.append(json.loads(l))
                except ValueError as e:
                    sys.exit(f"{path}:{n}: not JSON: {e}")
    return out


def per_syscall(path):
    rows = {}
    for v in lines(path):
        if "verdict" in v and "timestamp" in v and v.get("type") is None:
            v = dict(v)
            v.pop("time", None)
            v.pop("file", None)  # analyze names the file it read
            ts = v["timestamp"]
            if ts in rows:
                sys.exit(f"{path}: two verdicts for syscall {ts}")
            rows[ts] = v
    return rows


def verdicts(live, analyze, truth, with_images=False):
    a, b = per_syscall(live), per_syscall(analyze)
    if not b:
        sys.exit(f"{analyze}: no per-syscall lines")
    bad = [ts for ts in set(a) | set(b) if a.get(ts) != b.get(ts)]
    for ts in sorted(bad)[:5]:
        print(f"  syscall {ts}:\n    live    {a.get(ts)}\n    analyze {b.get(ts)}")
    if bad:
        sys.exit(f"{live}: {len(bad)} of {len(b)} per-syscall verdicts differ from analyze's")
    t = json.load(open(truth, encoding="utf-8"))["syscalls"]
    tbad = 0
    for s in t:
        got = a.get(s["timestamp"])
        # Neither run has --images: where the module bytes decide (rule 9),
        # the truth's answer without them is the expected one.
        e = s if with_images else (s.get("without_images") or s)
        if got is None or (got["verdict"], got["reason"]) != (e["verdict"], e["reason"]) or (
            s["verdict"] != "no_stack" and (got["pid"], got["tid"]) != (s["pid"], s["tid"])
        ):
            tbad += 1
            if tbad <= 5:
                print(f"  truth {s}\n  live  {got}")
    if tbad or len(t) != len(a):
        sys.exit(f"{live}: {tbad} verdicts differ from the truth ({len(a)} live, {len(t)} truth)")
    print(f"  {len(a)} per-syscall verdicts equal analyze's and the truth")


CLOCK = {"file", "log.file.path", "time", "first_seen", "last_seen", "@timestamp", "event.created", "event.start", "event.end"}


def alert_key(v):
    return (v.get("pid"), v.get("call_site"), v.get("verdict"), v.get("reason"))


def alerts(live, analyze):
    def final(path):
        out = {}
        for v in lines(path):
            if v.get("type") == "alert":
                out[alert_key(v)] = {k: x for k, x in v.items() if k not in CLOCK}
        return out

    a, b = final(live), final(analyze)
    if not b:
        sys.exit(f"{analyze}: no alerts")
    bad = [k for k in set(a) | set(b) if a.get(k) != b.get(k)]
    for k in bad[:5]:
        print(f"  {k}:\n    live    {a.get(k)}\n    analyze {b.get(k)}")
    if bad:
        sys.exit(f"{live}: {len(bad)} of {len(b)} alerts differ from analyze's")
    print(f"  {len(a)} alerts equal analyze's")


def lossy(live, analyze):
    theirs = {alert_key(v) for v in lines(analyze) if v.get("type") == "alert"}
    ours = [v for v in lines(live) if v.get("event", {}).get("kind") == "alert"]
    if not ours:
        sys.exit(f"{live}: no ECS alerts")
    for v in ours:
        x = v["syscall_sentry"]
        k = (v["process"].get("pid"), x.get("call_site"), x.get("verdict"), x.get("reason"))
        if k not in theirs:
            sys.exit(f"{live}: alert {k} is not one analyze raised on the intact trace")
        if not v.get("host", {}).get("name"):
            sys.exit(f"{live}: alert {k} without host.name")
    final = {}
    for v in ours:
        final[(v["process"].get("pid"), v["syscall_sentry"].get("call_site"))] = v
    bad = [k for k, v in final.items() if v["syscall_sentry"].get("trace_incomplete") is not True]
    if bad:
        sys.exit(f"{live}: {len(bad)} final alerts without trace_incomplete, e.g. {bad[0]}")
    print(f"  {len(ours)} alert lines ({len(final)} keys), all raised by analyze on the intact trace, "
          f"all with host.name {ours[0]['host']['name']!r}, final ones with trace_incomplete")


def calls(log, checks):
    c = lines(log)

    def of(name, **kw):
        return [x for x in c if x["call"] == name and all(x.get(k) == v for k, v in kw.items())]

    for check in checks:
        kind, _, arg = check.partition("=")
        if kind == "started":  # N successful StartTraceW
            ok = of("StartTraceW", status=0)
            if len(ok) != int(arg):
                sys.exit(f"{log}: {len(ok)} sessions started, expected {arg}")
        elif kind == "guids":  # N distinct session GUIDs among them
            guids = {x["session_guid"] for x in of("StartTraceW", status=0)}
            if len(guids) != int(arg):
                sys.exit(f"{log}: {len(guids)} session GUIDs, expected {arg}")
        elif kind == "start-status":  # some StartTraceW returned this
            if not of("StartTraceW", status=int(arg)):
                sys.exit(f"{log}: no StartTraceW returned {arg}")
        elif kind == "seconds-flush":  # Windows 7: FlushTimer N seconds, no ms flag
            for x in of("StartTraceW", status=0):
                if x["flush_timer"] != int(arg) or x["log_file_mode"] & 0x10:
                    sys.exit(f"{log}: flush {x['flush_timer']} mode {x['log_file_mode']:#x}, expected {arg} s without 0x10")
        elif kind == "no-start":
            if of("StartTraceW"):
                sys.exit(f"{log}: StartTraceW was called")
        elif kind == "stop-statuses":  # the STOP statuses, in order
            got = [x["status"] for x in c if x["call"] == "ControlTraceW" and x["code"] == "stop"]
            want = [int(s) for s in arg.split(",")]
            if got != want:
                sys.exit(f"{log}: STOP statuses {got}, expected {want}")
        elif kind == "close-once":  # every opened trace handle closed exactly once, OK
            for o in of("OpenTraceW", status=0):
                h = o["trace_handle"]
                if h <= 0xFFFFFFFF:
                    sys.exit(f"{log}: trace handle {h:#x} not above 32 bits")
                cl = [x for x in of("CloseTrace") if (x["pid"], x["trace_handle"]) == (o["pid"], h)]
                if len(cl) != 1 or cl[0]["status"] not in (0, 7007):
                    sys.exit(f"{log}: handle {h:#x} closed {[x['status'] for x in cl]}")
        elif kind == "session-setup":  # live's session: buffers, ms flush, stacks before flags
            s = of("StartTraceW", status=0)[0]
            cpus = int(arg)
            if s["minimum_buffers"] < 2 * cpus or s["log_file_mode"] & 0x10 == 0 or s["flush_timer"] != 250:
                sys.exit(f"{log}: session setup {s}")
            if s["enable_flags"] & 0x87 != 0x87:
                sys.exit(f"{log}: EnableFlags {s['enable_flags']:#x} in the block")
            tsi = [x for x in of("TraceSetInformation") if x["status"] == 0]
            order = [x["class"] for x in tsi if x["handle"] == s["handle"]]
            if order[:2] != [3, 4]:
                sys.exit(f"{log}: TraceSetInformation classes {order}, expected stacks (3) then flags (4)")
            stacks = tsi[0]["stacks"]
            if {"guid": "ce1dbfb4-137e-4da6-87b0-3f59aa102cbc", "type": 51} not in stacks:
                sys.exit(f"{log}: no SysCallEnter stacks in {stacks}")
        elif kind == "audit-setup":  # --source audit: kernel events without SYSCALL, the provider with stacks
            s = of("StartTraceW", status=0)[0]
            if s["enable_flags"] & 0x87 != 0x07:
                sys.exit(f"{log}: EnableFlags {s['enable_flags']:#x}: expected process, thread, image, no SYSCALL")
            en = [x for x in of("EnableTraceEx2", status=0) if x["handle"] == s["handle"]]
            want = {"provider": "e02a841c-75a3-4fa7-afc8-ae09cf9b7f23", "control_code": 1, "level": 4,
                    "match_any": 0, "match_all": 0, "params_version": 2}
            if len(en) != 1 or any(en[0].get(k) != v for k, v in want.items()):
                sys.exit(f"{log}: EnableTraceEx2 calls on the session {en}, expected one with {want}")
            if en[0]["enable_property"] & 0x4 == 0:
                sys.exit(f"{log}: EnableTraceEx2 without EVENT_ENABLE_PROPERTY_STACK_TRACE: {en[0]}")
            for x in of("TraceSetInformation", status=0):
                if x["class"] == 3 and {"guid": "ce1dbfb4-137e-4da6-87b0-3f59aa102cbc", "type": 51} in x["stacks"]:
                    sys.exit(f"{log}: SysCallEnter stacks asked for by the audit source: {x}")
        elif kind == "image-load-stacks":
            st = [x for x in of("TraceSetInformation", status=0) if x["class"] == 3][0]["stacks"]
            if {"guid": "3d6fa8d0-fe05-11d0-9dda-00c04fd7ba7c", "type": 10} not in st:
                sys.exit(f"{log}: no Process-class type-10 (Image Load) stacks in {st}")
        elif kind == "process-trace-ended":  # ProcessTrace end with this status and reason
            st, why = arg.split(":", 1)
            if not [x for x in of("ProcessTrace", phase="end") if x["status"] == int(st) and x["why"] == why]:
                sys.exit(f"{log}: no ProcessTrace ended {st} ({why})")
        else:
            sys.exit(f"unknown check {check}")
    print(f"  call log: {', '.join(checks)}: ok")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"verdicts": verdicts, "alerts": alerts, "lossy": lossy,
     "verdicts-images": lambda *a: verdicts(*a, with_images=True)}.get(cmd, lambda *a: calls(a[0], a[1:]))(*args)
