#!/usr/bin/env python3
"""Turns a bench/run.sh results folder (one JSON file per run: FIGURE.SERVER.REP.json) into
Markdown tables with ratios and CPU figures, plus a met/missed line per issue-5 target.

    tables.py RESULTS_DIR                      print the tables
    tables.py --write BENCHMARKS.md RESULTS_DIR  replace the part between the results markers
"""
import glob
import json
import os
import statistics
import sys

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def load(d):
    runs = {}
    for path in sorted(glob.glob(os.path.join(d, "*.json"))):
        fig, who, rep = os.path.basename(path)[:-5].rsplit(".", 2)
        try:
            with open(path) as f:
                text = f.read().strip().splitlines()
            runs.setdefault(fig, {}).setdefault(who, []).append(json.loads(text[-1]))
        except (ValueError, IndexError):
            runs.setdefault(fig, {}).setdefault(who, []).append({"ok": False, "broken": True})
    return runs


def get(r, path, default=None):
    for k in path.split("."):
        if not isinstance(r, dict) or k not in r or r[k] is None:
            return default
        r = r[k]
    return r


def mean(runs, path):
    vals = [get(r, path) for r in runs if get(r, path) is not None]
    return statistics.mean(vals) if vals else None


def fmt(v, digits=0):
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "–"


def cpu_cols(r):
    return [fmt(get(r, "cpu.server_pct_of_core"), 1), fmt(get(r, "cpu.client_pct_of_core"), 1),
            fmt(get(r, "cpu.machine_busy_pct"), 1)]


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


CPU_HEAD = ["server CPU % of core", "client CPU % of core", "machine busy %"]


# (figure, JSON path, label, True when higher is better)
AB_FIGURES = [
    ("echo", "msgs_per_s", "echo messages/s", True),
    ("echo", "latency_us.p99", "echo RTT p99 µs", False),
    ("echo", "server_cpu_us_per_msg", "echo server CPU µs per message", False),
    ("room", "deliveries_per_s", "room deliveries/s", True),
    ("fanout", "deliveries_per_s", "fan-out deliveries/s", True),
    ("fanout", "latency_us.p99", "fan-out latency p99 µs", False),
    ("idle", "server_rss.bytes_per_conn", "idle RSS bytes per connection", False),
    ("idle", "server_cpu_us_per_conn_s", "idle CPU µs per connection-second", False),
    ("handshake", "handshakes_per_s", "handshakes/s", True),
    ("handshake", "server_cpu_us_per_handshake", "server CPU µs per handshake", False),
]


def before_after(runs):
    """Rows comparing wsgate-base with wsgate (means over reps) for every figure both ran."""
    out = []
    for fig, path, label, higher in AB_FIGURES:
        f = runs.get(fig, {})
        b, a = mean(f.get("wsgate-base", []), path), mean(f.get("wsgate", []), path)
        if b is None or a is None:
            continue
        r = a / b if b else None
        ok = r is not None and (r >= 0.95 if higher else r <= 1.05)
        out.append([label, fmt(b, 2), fmt(a, 2), f"{r:.3f}" if r else "–", "higher" if higher else "lower",
                    "yes" if ok else "**no**"])
    return out


def main():
    args = sys.argv[1:]
    write = None
    if args and args[0] == "--write":
        write, args = args[1], args[2:]
    d = args[0]
    runs = load(d)
    parts, verdicts = [], []

    def pair(fig):
        f = runs.get(fig, {})
        return f.get("wsgate", []), f.get("node", [])

    def rows(fig, path, extra):
        w, n = pair(fig)
        base = mean(n, path)
        out = []
        for who, rs in (("wsgate", w), ("node ws", n)):
            for r in rs:
                out.append([who, fmt(get(r, path)), ratio(get(r, path), base) if who == "wsgate" else "1.00x"]
                           + extra(r) + cpu_cols(r) + [fmt(get(r, "ok"))])
        return out, mean(w, path), base

    if "echo" in runs:
        rs, w, n = rows("echo", "msgs_per_s", lambda r: [
            f'{fmt(get(r, "latency_us.p50"))} / {fmt(get(r, "latency_us.p99"))}',
            fmt(get(r, "server_cpu_us_per_msg"), 2),
            f'{fmt(get(r, "cpu.server_runqueue_wait_ms"), 1)} / {fmt(get(r, "cpu.client_runqueue_wait_ms"), 1)}'])
        parts.append("### echo, %s connections, 1 in flight, 64-byte messages\n\n" % fmt(get(pair("echo")[0][0], "conns") if pair("echo")[0] else None)
                     + table(["server", "messages/s", "ratio", "RTT p50 / p99 µs", "server CPU µs per message",
                              "server / client threads waiting for a CPU, ms"] + CPU_HEAD + ["clean"], rs))
        verdicts.append(("echo messages/s >= 1.8x node ws", w and n and w / n >= 1.8, ratio(w, n)))
        wp, np_ = pair("echo")
        p_w, p_n = mean(wp, "latency_us.p99"), mean(np_, "latency_us.p99")
        verdicts.append(("echo RTT p99 <= 0.5x node ws", p_w and p_n and p_w / p_n <= 0.5, ratio(p_w, p_n)))
    if "room" in runs:
        rs, w, n = rows("room", "deliveries_per_s", lambda r: [
            f'{fmt(get(r, "iteration_latency_us.p50", 0) / 1000, 1)} / {fmt(get(r, "iteration_latency_us.p99", 0) / 1000, 1)}',
            fmt(get(r, "iterations"))])
        parts.append("### room, 1000 members, every message to every member\n\n"
                     + table(["server", "deliveries/s", "ratio", "iteration p50 / p99 ms", "iterations"] + CPU_HEAD + ["clean"], rs))
        verdicts.append(("room deliveries/s >= 3.5x node ws", w and n and w / n >= 3.5, ratio(w, n)))
    if "fanout" in runs:
        rs, w, n = rows("fanout", "deliveries_per_s", lambda r: [
            fmt(get(r, "lost")), fmt(get(r, "duplicates")), fmt(get(r, "out_of_order")),
            f'{fmt(get(r, "latency_us.p50", 0) / 1000, 1)} / {fmt(get(r, "latency_us.p99", 0) / 1000, 1)}',
            fmt(get(r, "publish.achieved_rate"), 1)])
        parts.append("### fan-out to %s subscribers, HTTP publishes\n\n" % fmt(get(pair("fanout")[0][0], "subs") if pair("fanout")[0] else None)
                     + table(["server", "deliveries/s", "ratio", "lost", "duplicates", "out of order", "latency p50 / p99 ms", "publishes/s achieved"] + CPU_HEAD + ["clean"], rs))
        wr = pair("fanout")[0]
        lost = sum(get(r, "lost", 1) for r in wr) if wr else None
        p99 = max(get(r, "latency_us.p99", 10**9) for r in wr) / 1000 if wr else None
        verdicts.append(("fan-out deliveries/s >= 9x node ws", w and n and w / n >= 9, ratio(w, n)))
        verdicts.append(("fan-out 0 lost, p99 <= 100 ms", lost == 0 and p99 is not None and p99 <= 100,
                         f"lost {fmt(lost)}, p99 {fmt(p99, 1)} ms"))
    if "idle" in runs:
        w, n = pair("idle")
        out = []
        for who, rs in (("wsgate", w), ("node ws", n)):
            for r in rs:
                out.append([who, fmt(get(r, "connected")), fmt(get(r, "server_rss.bytes_per_conn")),
                            fmt(get(r, "server_rss.bytes_per_conn_end_of_hold")),
                            fmt(get(r, "server_cpu_us_per_conn_s"), 3), fmt(get(r, "hold.seconds"), 1),
                            fmt(get(r, "hold.server_pings")), fmt(get(r, "hold.closed_by_server")),
                            fmt(get(r, "connect.handshakes_per_s"))] + cpu_cols(r) + [fmt(get(r, "ok"))])
        parts.append("### idle connections held (pings every 25 s on both servers)\n\n"
                     + table(["server", "held", "RSS bytes per conn (settled)", "RSS bytes per conn (end of hold)",
                              "server CPU µs per conn-second", "hold s", "server pings", "closed by server",
                              "connect handshakes/s"] + CPU_HEAD + ["clean"], out))
        held = min((get(r, "connected", 0) for r in w), default=0)
        rss = mean(w, "server_rss.bytes_per_conn")
        cpu = mean(w, "server_cpu_us_per_conn_s")
        verdicts.append(("idle: 19,000 held, <= 2 KB RSS each", held >= 19000 and rss is not None and rss <= 2048,
                         f"{fmt(held)} held, {fmt(rss)} B each"))
        verdicts.append(("idle: <= 1 µs CPU per connection-second", cpu is not None and cpu <= 1.0,
                         f"{fmt(cpu, 3)} µs (hold {fmt(mean(w, 'hold.seconds'), 0)} s)"))
    if "handshake" in runs:
        rs, w, n = rows("handshake", "handshakes_per_s", lambda r: [
            f'{fmt(get(r, "handshake_latency_us.p50"))} / {fmt(get(r, "handshake_latency_us.p99"))}',
            fmt(get(r, "server_cpu_us_per_handshake"), 1), fmt(get(r, "clean_closes"))])
        parts.append("### handshakes (connect + upgrade + close), %s workers\n\n" % fmt(get(pair("handshake")[0][0], "concurrency") if pair("handshake")[0] else None)
                     + table(["server", "handshakes/s", "ratio", "handshake p50 / p99 µs", "server CPU µs per handshake", "clean closes"] + CPU_HEAD + ["clean"], rs))
        verdicts.append(("handshakes/s >= 2x node ws", w and n and w / n >= 2, ratio(w, n)))
    for prefix, title in (("workers", "### wsgate with 1 vs 2 workers (WSGATE_SERVER__WORKERS; client: 1 thread)"),
                          ("scaling", "### wsgate with 1 vs 2 workers, each worker capped at the same CPU share (cgroup; client: 2 threads)")):
        if not any(k.startswith(prefix + "-") for k in runs):
            continue
        out = []
        scale = {}
        for fig, path, label in ((prefix + "-echo", "msgs_per_s", "echo messages/s"),
                                 (prefix + "-room", "deliveries_per_s", "room deliveries/s")):
            f = runs.get(fig, {})
            for w in ("w1", "w2"):
                for r in f.get(w, []):
                    out.append([label, w[1:], fmt(get(r, path))] + cpu_cols(r) + [fmt(get(r, "ok"))])
            a, b = mean(f.get("w1", []), path), mean(f.get("w2", []), path)
            scale[label] = ratio(b, a)
            out.append([label, "2 vs 1", scale[label], "", "", "", ""])
        parts.append(title + "\n\n" + table(["figure", "workers", "value"] + CPU_HEAD + ["clean"], out))
        best = max((float(v[:-1]) for v in scale.values() if v != "–"), default=0)
        verdicts.append((f"2 workers vs 1 >= 1.7x ({prefix})", best >= 1.7, ", ".join(f"{k} {v}" for k, v in scale.items())))
    if any(k.startswith("runtime-") for k in runs):
        out = []
        for fig, path, label, lat in (("runtime-echo", "msgs_per_s", "echo messages/s (RTT p99 µs)", "latency_us.p99"),
                                      ("runtime-handshake", "handshakes_per_s", "handshakes/s", None),
                                      ("runtime-fanout", "deliveries_per_s", "fan-out deliveries/s (p99 ms)", "latency_us.p99")):
            f = runs.get(fig, {})
            for rt in ("work_stealing", "per_core"):
                for r in f.get(rt, []):
                    v = fmt(get(r, path))
                    if lat and get(r, lat) is not None:
                        l = get(r, lat) / (1000 if fig == "runtime-fanout" else 1)
                        v += f" ({fmt(l, 0)})"
                    out.append([label, rt, v] + cpu_cols(r) + [fmt(get(r, "ok"))])
        parts.append("### server.runtime: work stealing (default) against a runtime per worker, 2 workers\n\n"
                     + table(["figure", "runtime", "value"] + CPU_HEAD + ["clean"], out))
    ab = before_after(runs)
    if ab:
        parts.append("### before / after: wsgate-base (BASE_BIN) against this wsgate, same run\n\n"
                     + table(["figure", "wsgate-base", "wsgate", "after / before", "better is", "within 5 % or better"], ab))
    cross = [k for k in runs if k.startswith("wsload-")]
    if cross:
        out = []
        for k in sorted(cross):
            fig = k[len("wsload-"):]
            path = "msgs_per_s" if fig == "echo" else "deliveries_per_s"
            for who in ("wsgate", "node"):
                ours, theirs = mean(runs.get(fig, {}).get(who, []), path), mean(runs[k].get(who, []), path)
                out.append([fig, who, fmt(ours), fmt(theirs), ratio(ours, theirs),
                            fmt(mean(runs[k].get(who, []), "cpu.client_pct_of_core"), 1)])
        parts.append("### cross-check: the same settings with wsload\n\n"
                     + table(["figure", "server", "wsgate bench", "wsload", "bench / wsload", "wsload client CPU %"], out))
    vt = table(["target", "met", "measured"], [[t, "met" if ok else "**missed**", m] for t, ok, m in verdicts])
    text = "\n\n".join(parts + ["### targets\n\n" + vt]) + "\n"
    if write:
        with open(write) as f:
            doc = f.read()
        i, j = doc.index(BEGIN) + len(BEGIN), doc.index(END)
        note = f"\n\n_Tables generated by `bench/tables.py` from `{os.path.relpath(d, os.path.dirname(os.path.abspath(write)))}`._\n\n"
        with open(write, "w") as f:
            f.write(doc[:i] + note + text + "\n" + doc[j:])
    else:
        print(text)


if __name__ == "__main__":
    main()
