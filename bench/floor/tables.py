#!/usr/bin/env python3
"""Tables of bench/floor/run.sh results (markdown on stdout).

    bench/floor/tables.py DIR [DIR...]   # several folders: repetitions pooled; syscalls from the
                                         # last folder that has them
"""
import glob
import json
import os
import re
import statistics
import sys

DIRS = sys.argv[1:]
ORDER = ["direct", "epoll", "uring-defer", "uring-defer+fixed", "uring-coop", "uring-coop+fixed", "uring-plain", "uring-sqpoll", "wsgate", "nginx"]
LABEL = {
    "direct": "direct (no relay; CPU is the hub's)",
    "epoll": "relay_epoll",
    "uring-defer": "relay_uring, DEFER_TASKRUN",
    "uring-defer+fixed": "relay_uring, DEFER_TASKRUN, fixed files",
    "uring-coop": "relay_uring, COOP_TASKRUN",
    "uring-coop+fixed": "relay_uring, COOP_TASKRUN, fixed files",
    "uring-plain": "relay_uring, no flags",
    "uring-sqpoll": "relay_uring, SQPOLL (burns a core)",
    "wsgate": "wsgate proxy (1 worker)",
    "nginx": "nginx (1 worker)",
}


def syscalls(who, pre="sys"):
    for d in reversed(DIRS):
        if os.path.exists(os.path.join(d, f"{pre}.{who}.csv")):
            break
    try:
        c = {}
        for line in open(os.path.join(d, f"{pre}.{who}.csv")):
            f = line.strip().split(",")
            if len(f) > 2 and f[0].isdigit():
                c[f[2].split(":")[-1]] = float(f[0])
        j = json.load(open(os.path.join(d, f"{pre}.{who}.json")))
        n = j["msgs_per_s"] * j["cpu"]["window_s"]
        g = lambda *k: sum(c.get(x, 0) for x in k) / n
        return {
            "all": g("sys_enter"),
            "read": g("sys_enter_read", "sys_enter_recvfrom"),
            "write": g("sys_enter_write", "sys_enter_writev", "sys_enter_sendto"),
            "epoll_wait": g("sys_enter_epoll_wait"),
            "enter": g("sys_enter_io_uring_enter"),
            "rw": f"{g('sys_enter_read', 'sys_enter_recvfrom'):.2f} / {g('sys_enter_write', 'sys_enter_writev', 'sys_enter_sendto'):.2f}",
            "wait": g("sys_enter_epoll_wait") + g("sys_enter_io_uring_enter"),
            "cqe": g("io_uring_complete"),
            "poll": g("io_uring_poll_arm"),
            "async": g("io_uring_queue_async_work"),
            "cs": g("context-switches"),
        }
    except (OSError, KeyError, ValueError, ZeroDivisionError):
        return None


def table(part, title):
    runs = {}
    per_rep = {}  # (folder, repetition, who) -> µs per round trip
    for path in [p for d in DIRS for p in glob.glob(os.path.join(d, f"{part}.*.json"))]:
        m = re.match(rf"{part}\.(.+)\.(\d+)\.json$", os.path.basename(path))
        if not m:
            continue
        try:
            j = json.load(open(path))
        except ValueError:
            continue
        t = open(path[:-5] + ".ticks").read().split()
        u0, s0, u1, s1 = map(int, t)
        runs.setdefault(m.group(1), []).append((j, u1 - u0, s1 - s0))
        if j["msgs_per_s"]:
            per_rep[(os.path.dirname(path), m.group(2), m.group(1))] = (
                j["cpu"]["server_cpu_s"] / (j["msgs_per_s"] * j["cpu"]["window_s"]) * 1e6)
    if not runs:
        return
    nginx = None
    rows = []
    for who in ORDER:
        if who not in runs:
            continue
        rs = runs[who]
        mps = [j["msgs_per_s"] for j, _, _ in rs]
        us = [j["cpu"]["server_cpu_s"] / (j["msgs_per_s"] * j["cpu"]["window_s"]) * 1e6 for j, _, _ in rs if j["msgs_per_s"]]
        ut, st = sum(u for _, u, _ in rs), sum(s for _, _, s in rs)
        med = statistics.median(us) if us else float("nan")
        if who == "nginx":
            nginx = med
        rows.append((who, rs, mps, us, ut, st, med))
    print(f"### {title}\n")
    print("| relay | reps | msgs/s (median) | relay CPU µs per round trip: median (min–max) | vs 8 µs | vs nginx (median of same-repetition ratios) |"
          " syscalls per round trip: all (read / write) [epoll_wait or io_uring_enter] |"
          " user / sys % of relay CPU | relay CPU % of core | client CPU % | machine busy % | clean |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for who, rs, mps, us, ut, st, med in rows:
        sc = syscalls(who, "sys" if part == "echo" else "sys4")
        scs = f"{sc['all']:.2f} ({sc['rw']}) [{sc['wait']:.2f}]" if sc else "–"
        avg = lambda k: statistics.mean(j["cpu"][k] for j, _, _ in rs)
        vs_n = f"{med / nginx:.2f}x" if nginx and who != "direct" else "–"
        # The same, repetition by repetition (each repetition runs every path back to back, so
        # this ratio is less sensitive to how busy the machine was at the time).
        ratios = [v / per_rep[(f, r, "nginx")] for (f, r, w), v in per_rep.items() if w == who and (f, r, "nginx") in per_rep]
        if ratios and who not in ("direct", "nginx"):
            vs_n += f" ({statistics.median(ratios):.2f}x)"
        print(f"| {LABEL[who]} | {len(rs)} | {statistics.median(mps):,.0f} | {med:.2f} ({min(us):.2f}–{max(us):.2f}) | "
              f"{med - 8:+.2f} | {vs_n} | {scs} | {100 * ut / max(ut + st, 1):.0f} / {100 * st / max(ut + st, 1):.0f} | "
              f"{avg('server_pct_of_core'):.0f} | {avg('client_pct_of_core'):.0f} | {avg('machine_busy_pct'):.0f} | "
              f"{'yes' if all(j.get('ok') for j, _, _ in rs) else 'NO'} |")
    print()


print(f"_From {', '.join('`' + os.path.relpath(d) + '`' for d in DIRS)}._\n")
table("echo", "echo, 100 connections, 1 message of 64 bytes in flight each")
table("inflight4", "echo, 100 connections, 4 messages of 64 bytes in flight each (--inflight 4)")

for pre, title in [("sys", "1 in flight"), ("sys4", "4 in flight (--inflight 4)")]:
    rows = [(who, syscalls(who, pre)) for who in ORDER]
    rows = [(w, sc) for w, sc in rows if sc]
    if not rows:
        continue
    print(f"### syscalls per round trip (perf stat over a whole 3 s echo run, {title})\n")
    print("| relay | all syscalls | read/recv | write/send | epoll_wait | io_uring_enter | io_uring CQEs | recv/send parked on poll | io-wq punts | context switches |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for who, sc in rows:
        print(f"| {LABEL[who]} | {sc['all']:.2f} | {sc['read']:.2f} | {sc['write']:.2f} | {sc['epoll_wait']:.3f} | "
              f"{sc['enter']:.3f} | {sc['cqe']:.2f} | {sc['poll']:.2f} | {sc['async']:.3f} | {sc['cs']:.3f} |")
    print()
