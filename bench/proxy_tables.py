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

TARGETS = ["direct", "wsgate-base", "wsgate-epoll", "wsgate", "nginx", "haproxy"]
LABEL = {"direct": "direct (no proxy)", "wsgate-base": "wsgate proxy (BASE_BIN)",
         "wsgate-epoll": "wsgate proxy, tunnel_io = epoll", "wsgate": "wsgate proxy",
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


def ratio(v, ref):
    if v is None or not ref:
        return "–"
    return f"{v / ref:.2f}x"


def cpu_cols(r):
    return [fmt(get(r, "cpu.server_pct_of_core"), 0), fmt(get(r, "cpu.client_pct_of_core"), 0),
            fmt(get(r, "cpu.machine_busy_pct"), 0)]


def errs(r):
    if r is None:
        return "missing"
    return "yes" if r.get("ok") else "no"


def table(title, head, rows):
    out = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def rows_for(runs, cells):
    """One row per target that ran, in TARGETS order: its label, `cells(run)`, CPU and clean."""
    return [[LABEL[t]] + cells(runs[t]) + cpu_cols(runs[t]) + [errs(runs[t])] for t in TARGETS
            if runs[t] is not None]


def verdict_row(name, runs, path, limit, nd, unit, gap_unit, scale=1, at_least=False):
    """The targets-table row for wsgate's `path` against `limit` (a ceiling, or a floor with
    `at_least`), beside nginx and HAProxy; None when wsgate did not run."""
    v = get(runs["wsgate"], path)
    if v is None:
        return None

    def show(r):
        x = get(r, path)
        return "–" if x is None else f"{x / scale:,.{nd}f}{unit}"

    v /= scale
    if at_least:
        met, gap, rel = v >= limit, limit - v, 1 - v / limit
    else:
        met, gap, rel = v <= limit, v - limit, v / limit - 1
    return [name, show(runs["wsgate"]), show(runs["nginx"]), show(runs["haproxy"]),
            "met" if met else f"missed by {gap:,.{nd}f}{gap_unit} ({rel:.0%})"]


def main(d):
    out = []
    verdict = []
    cpuh = ["proxy CPU % of core", "client CPU %", "machine busy %", "clean"]

    echo = {t: load(d, f"echo.{t}") for t in TARGETS}
    if any(echo.values()):
        ng = get(echo["nginx"], "server_cpu_us_per_msg")
        ngm = get(echo["nginx"], "msgs_per_s")
        rows = rows_for(echo, lambda r: [
            fmt(get(r, "msgs_per_s")), ratio(get(r, "msgs_per_s"), ngm), fmt(get(r, "latency_us.p50"), 0),
            fmt(get(r, "latency_us.p99"), 0), fmt(get(r, "server_cpu_us_per_msg"), 2),
            ratio(get(r, "server_cpu_us_per_msg"), ng)])
        out.append(table("echo through the proxy, 100 connections, 1 in flight each, 64-byte messages",
                         ["path", "msgs/s", "vs nginx", "p50 µs", "p99 µs", "proxy CPU µs per round trip",
                          "vs nginx"] + cpuh, rows))
        verdict.append(verdict_row("proxy CPU per round trip <= 8 µs", echo, "server_cpu_us_per_msg", 8,
                                   2, " µs", " µs"))
        # The 8 µs is 0.8x of the 10.0 µs it measured for nginx; nginx's cost differs
        # between machines, so the same target relative to nginx in the same run is shown too.
        verdict.append(verdict_row("proxy CPU per round trip <= 0.8x nginx's (8 of its 10.0 µs)",
                                   {t: ({"r": get(r, "server_cpu_us_per_msg") / ng} if r and ng else None)
                                    for t, r in echo.items()}, "r", 0.8, 2, "x", "x"))

    idle = {t: load(d, f"idle.{t}") for t in TARGETS}
    if any(idle.values()):
        ng = get(idle["nginx"], "server_rss.bytes_per_conn")
        kb = lambda r, path: fmt(get(r, path) / 1024 if get(r, path) is not None else None, 2)  # noqa: E731
        rows = rows_for(idle, lambda r: [
            fmt(get(r, "connected"), 0), kb(r, "server_rss.bytes_per_conn"),
            kb(r, "server_rss.bytes_per_conn_end_of_hold"), ratio(get(r, "server_rss.bytes_per_conn"), ng),
            fmt(get(r, "connect.handshakes_per_s"), 0), fmt(get(r, "server_cpu_us_per_conn_s"), 3)])
        out.append(table("idle tunnels held (RSS of the proxy process; for direct, of the hub)",
                         ["path", "tunnels", "KB per tunnel (settled)", "KB per tunnel (end of hold)",
                          "vs nginx", "connects/s", "proxy CPU µs per tunnel-second"] + cpuh, rows))
        verdict.append(verdict_row("RSS per idle tunnel <= 4 KB", idle, "server_rss.bytes_per_conn", 4,
                                   2, " KB", " KB", scale=1024))

    hs = {t: load(d, f"handshake.{t}") for t in TARGETS}
    if any(hs.values()):
        ng = get(hs["nginx"], "handshakes_per_s")
        rows = rows_for(hs, lambda r: [
            fmt(get(r, "handshakes_per_s")), ratio(get(r, "handshakes_per_s"), ng),
            fmt(get(r, "handshake_latency_us.p50"), 0), fmt(get(r, "handshake_latency_us.p99"), 0),
            fmt(get(r, "server_cpu_us_per_handshake"), 1)])
        out.append(table("handshakes through the proxy (connect + upgrade + close), 50 workers",
                         ["path", "handshakes/s", "vs nginx", "p50 µs", "p99 µs", "proxy CPU µs per handshake"]
                         + cpuh, rows))
        verdict.append(verdict_row(">= 15,000 handshakes/s", hs, "handshakes_per_s", 15000, 0, "", "/s",
                                   at_least=True))

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

    verdict = [v for v in verdict if v is not None]
    if verdict:
        out.append(table("targets (wsgate proxy)", ["target", "wsgate", "nginx", "HAProxy", "verdict"], verdict))
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
