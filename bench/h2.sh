#!/usr/bin/env bash
# WebSockets over HTTP/2 (RFC 8441) next to HTTP/1.1 on the same binary, in one run: idle memory
# per WebSocket (N idle sockets on a hub route, the server's RSS before and after, divided by N)
# and handshakes per second (connect, upgrade, close cycles by C workers: HTTP/1.1 opens a TCP
# connection per cycle, --h2 opens a stream on one shared HTTP/2 connection per cycle). Plain
# (ws:// and h2c) and TLS (wss:// and h2 by ALPN) by default. Every measurement gets a fresh
# server on a free loopback port; /metrics is read after each to prove which protocol it was.
#
#   bench/h2.sh                  # tables into bench/results/h2-<time>/tables.md
#   ISOLATE=1 bench/h2.sh        # in a CPU cgroup with the largest share (see bench/README.md)
#
# Settings (environment): N (5000) idle WebSockets, HOLD (5) seconds held, H2_CONNS (1) HTTP/2
# connections they share; HS_TOTAL (20000) handshake cycles, HS_CONC (50) workers; SCHEMES
# ("ws wss"), SIZE (64), THREADS (1: client threads), OUT, WSGATE_BIN (default: a release build
# of this tree). A smoke run: N=50 HOLD=0.5 HS_TOTAL=50 bench/h2.sh
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=SCRIPTDIR/../scripts/lib.sh
source "$ROOT/scripts/lib.sh"
cd "$ROOT"
N="${N:-5000}"
HOLD="${HOLD:-5}"
H2_CONNS="${H2_CONNS:-1}"
HS_TOTAL="${HS_TOTAL:-20000}"
HS_CONC="${HS_CONC:-50}"
SCHEMES="${SCHEMES:-ws wss}"
SIZE="${SIZE:-64}"
THREADS="${THREADS:-1}"
bench_setup h2
git -C "$ROOT" rev-parse --short HEAD >"$OUT/commit" 2>/dev/null || true
uptime >"$OUT/load-before" 2>/dev/null || true

isolate_cpu wsgate-h2

self_signed_cert "$OUT"

SERVER_PID=""
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; true; }
trap cleanup EXIT

# start_wsgate SCHEME: a fresh server on a free port. HTTP/2 streams per connection raised to
# the most wsgate accepts, so N idle sockets fit on H2_CONNS connections.
start_wsgate() {
  start_wsgate_scheme "$1" $((N + 1000)) $'[server.http2]\nmax_concurrent_streams = 10000\n'
}

# stop_wsgate NAME: keeps the server's /metrics (which protocol the sockets used), then stops it.
stop_wsgate() {
  local name=$1 scheme=http
  [ -f "$OUT/$name.json" ] && grep -q '"url":"wss' "$OUT/$name.json" && scheme=https
  curl -sk --max-time 5 "$scheme://127.0.0.1:$PORT/metrics" >"$OUT/$name.metrics" || true
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

for scheme in $SCHEMES; do
  trust=()
  [ "$scheme" = wss ] && trust=(--ca "$OUT/cert.pem")
  for proto in h1 h2; do
    extra=()
    [ "$proto" = h2 ] && extra=(--h2 --h2-conns "$H2_CONNS")
    start_wsgate "$scheme"
    bench_json "idle-$scheme-$proto" "$SERVER_PID" idle \
      --url "$scheme://localhost:$PORT/room/h2bench/" "${trust[@]}" "${extra[@]}" \
      --conns "$N" --hold "$HOLD" --threads "$THREADS" --timeout 30
    stop_wsgate "idle-$scheme-$proto"
    start_wsgate "$scheme"
    [ "$proto" = h2 ] && extra=(--h2)
    bench_json "handshake-$scheme-$proto" "$SERVER_PID" handshake \
      --url "$scheme://localhost:$PORT/ws/echo" "${trust[@]}" "${extra[@]}" \
      --total "$HS_TOTAL" --concurrency "$HS_CONC" --threads "$THREADS"
    stop_wsgate "handshake-$scheme-$proto"
  done
done
uptime >"$OUT/load-after" 2>/dev/null || true

python3 - "$OUT" "$SCHEMES" "$ROOT/bench" <<'PY' | tee "$OUT/tables.md"
import json, os, re, sys
out, schemes = sys.argv[1], sys.argv[2].split()
sys.path.insert(0, sys.argv[3])
from results_lib import get

def load(name):
    try:
        with open(os.path.join(out, name + ".json")) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return {}

def opened(name):
    """wsgate_ws_opened_total by http_version, from the server's /metrics after the run."""
    got = {}
    try:
        for line in open(os.path.join(out, name + ".metrics")):
            m = re.match(r'wsgate_ws_opened_total\{([^}]*)\} (\d+)', line)
            if m:
                v = re.search(r'http_version="([^"]*)"', m.group(1))
                got[v.group(1) if v else "?"] = got.get(v.group(1) if v else "?", 0) + int(m.group(2))
    except OSError:
        pass
    return " / ".join(f"{k}: {v:,}" for k, v in sorted(got.items())) or "-"

def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, (int, float)) and abs(v) >= 100:
        return f"{v:,.0f}"
    return str(v)

names = {"ws": ("HTTP/1.1", "h2c"), "wss": ("HTTP/1.1 + TLS", "h2 (TLS)")}
rows = [
    ("idle: server RSS per WebSocket, settled (bytes)", "idle", "server_rss.bytes_per_conn"),
    ("idle: server RSS per WebSocket, end of hold (bytes)", "idle", "server_rss.bytes_per_conn_end_of_hold"),
    ("idle: WebSockets held", "idle", "connected"),
    ("idle: connect rate (WebSockets/s)", "idle", "connect.handshakes_per_s"),
    ("idle: server CPU per WebSocket-second (us)", "idle", "server_cpu_us_per_conn_s"),
    ("handshakes/s", "handshake", "handshakes_per_s"),
    ("handshake p50 (us)", "handshake", "handshake_latency_us.p50"),
    ("handshake p99 (us)", "handshake", "handshake_latency_us.p99"),
    ("server CPU per handshake (us)", "handshake", "server_cpu_us_per_handshake"),
    ("server CPU during handshakes (% of a core)", "handshake", "cpu.server_pct_of_core"),
    ("client CPU during handshakes (% of a core)", "handshake", "cpu.client_pct_of_core"),
    ("machine busy during handshakes (%)", "handshake", "cpu.machine_busy_pct"),
]
head, rule = "| |", "|---|"
for s in schemes:
    a, b = names.get(s, (s + " h1", s + " h2"))
    head += f" {a} | {b} | h2 / 1.1 |"
    rule += "---:|---:|---:|"
print(head)
print(rule)
for label, mode, path in rows:
    line = f"| {label} |"
    for s in schemes:
        a, b = get(load(f"{mode}-{s}-h1"), path), get(load(f"{mode}-{s}-h2"), path)
        ratio = f"{b / a:.2f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else "-"
        line += f" {fmt(a)} | {fmt(b)} | {ratio} |"
    print(line)
for mode in ("idle", "handshake"):
    line = f"| {mode}: WebSockets opened by HTTP version (server /metrics) |"
    for s in schemes:
        line += f" {opened(f'{mode}-{s}-h1')} | {opened(f'{mode}-{s}-h2')} | |"
    print(line)
line = "| HTTP/2 connections the client opened |"
for s in schemes:
    line += f" - | {fmt(get(load(f'idle-{s}-h2'), 'http2.opened'))} (idle), {fmt(get(load(f'handshake-{s}-h2'), 'http2.opened'))} (handshakes) | |"
print(line)
clean = all(load(f"{m}-{s}-{p}").get("ok") for m in ("idle", "handshake") for s in schemes for p in ("h1", "h2"))
print()
print("every run clean" if clean else "NOT every run was clean: see the JSON files")
PY
