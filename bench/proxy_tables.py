#!/usr/bin/env python3
"""Turns a bench/run-proxy.sh results folder into Markdown tables.

    proxy_tables.py RESULTS_DIR

Files: FIGURE.TARGET.json (FIGURE in echo idle handshake hold; TARGET in direct wsgate nginx
haproxy), hold.TARGET.progress (the per-second progress lines of the long idle hold).
"""
import json
import os
import re
import sys

TARGETS = ["direct", "wsgate-base", "wsgate", "nginx", "haproxy"]
LABEL = {"direct": "direct (no proxy)", "wsgate-base": "wsgate proxy (BASE_BIN)", "wsgate": "wsgate proxy",
         "nginx": "nginx", "haproxy": "HAProxy"}


def load(d, name):
    try:
        with open(os.path.join(d, name + ".json")) as f:
            lines = f.read().strip().splitlines()
        return json.loads(lines[-1])
    except (OSError, ValueError, IndexError):
        return None


def get(r, path):
    for k in path.split("."):
        if not isinstance(r, dict) or r.get(k) is None:
            return None
        r = r[k]
    return r


def fmt(v, nd=1):
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{nd}f}"


def ratio(v, ref, lower_is_better=False):
    if v is None or not ref:
        return "–"
    return f"{v / ref:.2f}x"


def cpu_cols(r):
    return [fmt(get(r, "cpu.server_pct_of_core"), 0), fmt(get(r, "cpu.client_pct_of_core"), 0),
            fmt(get(r, "cpu.machine_busy_pct"), 0)]


def errs(r):
    if r is None:
        return "missing"
    n = get(r, "errors.total") or 0
    if isinstance(r.get("errors"), dict):
        n = sum(v.get("count", 0) if isinstance(v, dict) else 0 for v in r["errors"].values()) or n
    return "yes" if r.get("ok") else "no"


def table(title, head, rows):
    out = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def main(d):
    out = []
    verdict = []
    cpuh = ["proxy CPU % of core", "client CPU %", "machine busy %", "clean"]

    echo = {t: load(d, f"echo.{t}") for t in TARGETS}
    if any(echo.values()):
        ng = get(echo["nginx"], "server_cpu_us_per_msg")
        ngm = get(echo["nginx"], "msgs_per_s")
        rows = []
        for t in TARGETS:
            r = echo[t]
            if r is None:
                continue
            us = get(r, "server_cpu_us_per_msg")
            mps = get(r, "msgs_per_s")
            rows.append([LABEL[t], fmt(mps), ratio(mps, ngm), fmt(get(r, "latency_us.p50"), 0),
                         fmt(get(r, "latency_us.p99"), 0), fmt(us, 2), ratio(us, ng)] + cpu_cols(r) + [errs(r)])
        out.append(table("echo through the proxy, 100 connections, 1 in flight each, 64-byte messages",
                         ["path", "msgs/s", "vs nginx", "p50 µs", "p99 µs", "proxy CPU µs per round trip",
                          "vs nginx"] + cpuh, rows))
        us = get(echo["wsgate"], "server_cpu_us_per_msg")
        if us is not None:
            verdict.append(["proxy CPU per round trip <= 8 µs", f"{us:.2f} µs",
                            fmt(ng, 2) + " µs", fmt(get(echo['haproxy'], 'server_cpu_us_per_msg'), 2) + " µs",
                            "met" if us <= 8 else f"missed by {us - 8:.2f} µs ({us / 8 - 1:.0%})"])

    idle = {t: load(d, f"idle.{t}") for t in TARGETS}
    if any(idle.values()):
        ng = get(idle["nginx"], "server_rss.bytes_per_conn")
        rows = []
        for t in TARGETS:
            r = idle[t]
            if r is None:
                continue
            b = get(r, "server_rss.bytes_per_conn")
            be = get(r, "server_rss.bytes_per_conn_end_of_hold")
            rows.append([LABEL[t], fmt(get(r, "connected"), 0), fmt(b / 1024 if b is not None else None, 2),
                         fmt(be / 1024 if be is not None else None, 2), ratio(b, ng),
                         fmt(get(r, "connect.handshakes_per_s"), 0),
                         fmt(get(r, "server_cpu_us_per_conn_s"), 3)] + cpu_cols(r) + [errs(r)])
        out.append(table("idle tunnels held (RSS of the proxy process; for direct, of the hub)",
                         ["path", "tunnels", "KB per tunnel (settled)", "KB per tunnel (end of hold)",
                          "vs nginx", "connects/s", "proxy CPU µs per tunnel-second"] + cpuh, rows))
        b = get(idle["wsgate"], "server_rss.bytes_per_conn")
        if b is not None:
            kb = b / 1024
            h = get(idle["haproxy"], "server_rss.bytes_per_conn")
            verdict.append(["RSS per idle tunnel <= 4 KB", f"{kb:.2f} KB", fmt(ng / 1024 if ng else None, 2) + " KB",
                            fmt(h / 1024 if h else None, 2) + " KB",
                            "met" if kb <= 4 else f"missed by {kb - 4:.2f} KB ({kb / 4 - 1:.0%})"])

    hs = {t: load(d, f"handshake.{t}") for t in TARGETS}
    if any(hs.values()):
        ng = get(hs["nginx"], "handshakes_per_s")
        rows = []
        for t in TARGETS:
            r = hs[t]
            if r is None:
                continue
            v = get(r, "handshakes_per_s")
            rows.append([LABEL[t], fmt(v), ratio(v, ng), fmt(get(r, "handshake_latency_us.p50"), 0),
                         fmt(get(r, "handshake_latency_us.p99"), 0),
                         fmt(get(r, "server_cpu_us_per_handshake"), 1)] + cpu_cols(r) + [errs(r)])
        out.append(table("handshakes through the proxy (connect + upgrade + close), 50 workers",
                         ["path", "handshakes/s", "vs nginx", "p50 µs", "p99 µs", "proxy CPU µs per handshake"]
                         + cpuh, rows))
        v = get(hs["wsgate"], "handshakes_per_s")
        if v is not None:
            verdict.append([">= 15,000 handshakes/s", fmt(v), fmt(ng), fmt(get(hs['haproxy'], 'handshakes_per_s')),
                            "met" if v >= 15000 else f"missed by {15000 - v:,.0f}/s ({1 - v / 15000:.0%})"])

    hold = {t: load(d, f"hold.{t}") for t in TARGETS}
    if any(hold.values()):
        rows = []
        for t in TARGETS:
            r = hold[t]
            if r is None:
                continue
            cut = None
            try:
                with open(os.path.join(d, f"hold.{t}.progress")) as f:
                    for line in f:
                        m = re.search(r"\]\s+([0-9.]+)s .*closed by server (\d+)", line)
                        if m and int(m.group(2)) > 0:
                            cut = float(m.group(1))
                            break
            except OSError:
                pass
            closed = get(r, "hold.closed_by_server")
            kinds = r.get("hold", {}).get("close_kinds") or {}
            when = "never" if not closed else (f"~{cut:.0f} s after opening (±1 s)" if cut is not None else "yes")
            rows.append([LABEL[t], fmt(get(r, "connected"), 0), fmt(get(r, "hold.seconds"), 0),
                         fmt(closed, 0), when, ", ".join(f"{k}: {v}" for k, v in kinds.items()) or "–",
                         fmt(get(r, "hold.server_pings"), 0)])
            if t == "wsgate":
                verdict.append(["idle tunnel alive through a 70 s hold", "alive" if not closed else f"cut: {when}",
                                "cut" if get(hold.get("nginx"), "hold.closed_by_server") else "alive",
                                "cut" if get(hold.get("haproxy"), "hold.closed_by_server") else "alive",
                                "met" if not closed else "missed"])
        out.append(table("long idle hold, all paths at once",
                         ["path", "tunnels", "hold s", "cut by the proxy", "when", "how", "pings seen by client"],
                         rows))

    if verdict:
        out.append(table("targets (wsgate proxy)", ["target", "wsgate", "nginx", "HAProxy", "verdict"], verdict))
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
