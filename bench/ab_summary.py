#!/usr/bin/env python3
"""Summarises bench/ab-fanout.sh runs: one line per run (--line FILE) or, for a folder, the
median and range of each server's runs and each wsgate binary's ratio to node ws."""
import json
import statistics
import sys
from pathlib import Path


def fields(d):
    cpu = {k: v or 0.0 for k, v in d.get("cpu", {}).items()}
    lat = {k: v or 0 for k, v in d.get("latency_us", {}).items()}
    return {
        "dps": d.get("deliveries_per_s", 0.0),
        "p50": lat.get("p50", 0) / 1000,
        "p99": lat.get("p99", 0) / 1000,
        "srv": cpu.get("server_pct_of_core", 0.0),
        "cli": cpu.get("client_pct_of_core", 0.0),
        "busy": cpu.get("machine_busy_pct", 0.0),
        "lost": d.get("lost", -1),
        "rate": d.get("publish", {}).get("achieved_rate", 0.0),
        "ok": d.get("ok", False),
    }


def line(path):
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        return f"{Path(path).stem}: no result ({e})"
    f = fields(d)
    return (
        f"{Path(path).stem}: {f['dps']:,.0f}/s p50 {f['p50']:.1f} p99 {f['p99']:.1f} ms "
        f"srv {f['srv']:.0f}% cli {f['cli']:.0f}% busy {f['busy']:.0f}% lost {f['lost']} "
        f"rate {f['rate']} ok {f['ok']}"
    )


def summary(folder):
    runs = {}
    for p in sorted(Path(folder).glob("fanout.*.json")):
        server = p.stem.split(".")[1]
        try:
            runs.setdefault(server, []).append(fields(json.loads(p.read_text())))
        except ValueError:
            continue
    node = statistics.median(r["dps"] for r in runs["node"]) if "node" in runs else None
    keys = ["dps", "p50", "p99", "srv", "cli", "busy"]
    out = [
        "| server | runs | deliveries/s | vs node (median) | p50 ms | p99 ms | server % | client % | busy % | lost (sum) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for server, rs in runs.items():
        cells = []
        for k in keys:
            vals = [r[k] for r in rs]
            fmt = "{:,.0f}" if k == "dps" else "{:.1f}"
            cells.append(
                f"{fmt.format(statistics.median(vals))} ({fmt.format(min(vals))}–{fmt.format(max(vals))})"
            )
        ratio = f"{statistics.median(r['dps'] for r in rs) / node:.2f}x" if node else "–"
        lost = sum(r["lost"] for r in rs)
        out.append(f"| {server} | {len(rs)} | {cells[0]} | {ratio} | " + " | ".join(cells[1:]) + f" | {lost} |")
    return "\n".join(out)


if __name__ == "__main__":
    if sys.argv[1] == "--line":
        print(line(sys.argv[2]))
    else:
        print(summary(sys.argv[1]))
