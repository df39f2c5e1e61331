#!/usr/bin/env bash
# TLS cost on the listener: handshakes per second and echo messages per second (with p99
# round trip) over wss:// next to ws://, in one run, on the same binary and config, the TLS
# server differing only by [server.tls] with a certificate made here (openssl, ECDSA P-256).
# Each server is started fresh on a free loopback port and measured alone.
#
#   bench/tls.sh                 # tables into bench/results/tls-<time>/tables.md
#
# Settings (environment): HS_TOTAL (20000) and HS_CONC (50): handshake cycles and workers;
# ECHO_CONNS (100), ECHO_INFLIGHT (1), ECHO_SECONDS (5), ECHO_WARMUP (1): the echo run;
# SIZE (64), THREADS (1: client threads), OUT, WSGATE_BIN (default: a release build of this
# tree). A smoke run: HS_TOTAL=50 ECHO_CONNS=2 ECHO_SECONDS=0.3 ECHO_WARMUP=0 bench/tls.sh
#
# The wss:// client checks the server's certificate against it (--ca) and resumes TLS sessions
# as browsers do, so the handshake figure is a mix of full and resumed handshakes, which is
# what a server in front of browsers sees.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=SCRIPTDIR/../scripts/lib.sh
source "$ROOT/scripts/lib.sh"
cd "$ROOT"
HS_TOTAL="${HS_TOTAL:-20000}"
HS_CONC="${HS_CONC:-50}"
ECHO_CONNS="${ECHO_CONNS:-100}"
ECHO_INFLIGHT="${ECHO_INFLIGHT:-1}"
ECHO_SECONDS="${ECHO_SECONDS:-5}"
ECHO_WARMUP="${ECHO_WARMUP:-1}"
SIZE="${SIZE:-64}"
THREADS="${THREADS:-1}"
bench_setup tls
git -C "$ROOT" rev-parse --short HEAD >"$OUT/commit" 2>/dev/null || true

self_signed_cert "$OUT"

SERVER_PID=""
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; true; }
trap cleanup EXIT

# start_wsgate SCHEME: a fresh server on a free port; ws:// plain, wss:// with the certificate.
start_wsgate() {
  start_wsgate_scheme "$1" 10000
}

stop_wsgate() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

for scheme in ws wss; do
  start_wsgate "$scheme"
  url="$scheme://localhost:$PORT/ws/echo"
  trust=()
  [ "$scheme" = wss ] && trust=(--ca "$OUT/cert.pem")
  bench_json "handshake-$scheme" "$SERVER_PID" handshake --url "$url" "${trust[@]}" \
    --total "$HS_TOTAL" --concurrency "$HS_CONC" --threads "$THREADS"
  bench_json "echo-$scheme" "$SERVER_PID" echo --url "$url" "${trust[@]}" \
    --conns "$ECHO_CONNS" --inflight "$ECHO_INFLIGHT" --duration "$ECHO_SECONDS" \
    --warmup "$ECHO_WARMUP" --threads "$THREADS"
  stop_wsgate
done

python3 - "$OUT" <<'PY' | tee "$OUT/tables.md"
import json, sys, os
out = sys.argv[1]
def load(name):
    try:
        with open(os.path.join(out, name + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}
def get(d, path):
    for k in path.split("."):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d
rows = [
    ("handshakes/s", "handshake", "handshakes_per_s", False),
    ("handshake p99 (us)", "handshake", "handshake_latency_us.p99", True),
    ("server CPU per handshake (us)", "handshake", "server_cpu_us_per_handshake", True),
    ("echo msg/s", "echo", "msgs_per_s", False),
    ("echo p50 round trip (us)", "echo", "latency_us.p50", True),
    ("echo p99 round trip (us)", "echo", "latency_us.p99", True),
    ("server CPU during echo (% of a core)", "echo", "cpu.server_pct_of_core", True),
]
print("| | ws:// | wss:// | wss / ws |")
print("|---|---:|---:|---:|")
for label, mode, path, _ in rows:
    if path is None:
        continue
    a, b = get(load(f"{mode}-ws"), path), get(load(f"{mode}-wss"), path)
    ratio = f"{b / a:.2f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else "-"
    fmt = lambda v: "-" if v is None else (f"{v:,.0f}" if isinstance(v, (int, float)) and abs(v) >= 100 else str(v))
    print(f"| {label} | {fmt(a)} | {fmt(b)} | {ratio} |")
clean = all(load(f"{m}-{s}").get("ok") for m in ("handshake", "echo") for s in ("ws", "wss"))
print()
print("every run clean" if clean else "NOT every run was clean: see the JSON files")
PY
