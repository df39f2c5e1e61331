#!/usr/bin/env bash
# permessage-deflate figures for BENCHMARKS.md, wsgate next to the node `ws` peer with
# perMessageDeflate on, in one run, each server started fresh on a free loopback port:
#
#   fanout  10,000 subscribers, FANOUT_MSGS published JSON messages of SIZE bytes: server CPU
#           per delivery and bytes on the wire per delivery, with and without compression
#           (clients offer permessage-deflate as browsers do: `wsgate bench --deflate`)
#   idle    IDLE_CONNS connections held: server RSS per connection, with and without it
#
#   bench/deflate.sh              # both; tables into bench/results/deflate-<time>/tables.md
#   bench/deflate.sh fanout       # one of them
#
# Settings (environment): SIZE (1024), FANOUT_SUBS (10000), FANOUT_MSGS (200), FANOUT_RATE (20),
# IDLE_CONNS (10000), IDLE_HOLD (20), PINGS (1; 0 turns pings off on both servers), OUT,
# WSGATE_BIN (default: a release build of this tree).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=SCRIPTDIR/../scripts/lib.sh
source "$ROOT/scripts/lib.sh"
cd "$ROOT"
SIZE="${SIZE:-1024}"
FANOUT_SUBS="${FANOUT_SUBS:-10000}"
FANOUT_MSGS="${FANOUT_MSGS:-200}"
FANOUT_RATE="${FANOUT_RATE:-20}"
IDLE_CONNS="${IDLE_CONNS:-10000}"
IDLE_HOLD="${IDLE_HOLD:-20}"
# Pings on both servers (25 s, as their defaults). PINGS=0 turns them off: on a machine so busy
# that the one-thread client cannot answer a Ping within 10 s, both servers would cut it (1011).
if [ "${PINGS:-1}" = 0 ]; then PING=0s PING_MS=0; else PING=25s PING_MS=25000; fi
FIGURES=("$@")
[ ${#FIGURES[@]} -eq 0 ] && FIGURES=(fanout idle)

bench_setup deflate
(cd bench/peers && { [ -d node_modules/ws ] || npm ci --no-audit --no-fund --silent; })
git -C "$ROOT" rev-parse --short HEAD >"$OUT/commit" 2>/dev/null || true

SERVER_PID=""
PORT=""
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; true; }
trap cleanup EXIT

start_wsgate() {
  PORT="$(free_port)"
  WSGATE_SERVER__MAX_CONNECTIONS=30000 WSGATE_LOG=warn WSGATE_WEBSOCKET__PING_INTERVAL="$PING" \
    "$BIN" serve --listen "127.0.0.1:$PORT" 2>>"$OUT/wsgate.log" &
  SERVER_PID=$!
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "wsgate did not start; see $OUT/wsgate.log" >&2
  exit 1
}

# start_node MODE DEFLATE: the node ws peer, perMessageDeflate on when DEFLATE is 1.
start_node() {
  PORT="$(free_port)"
  local ready="$OUT/node.$PORT.out"
  PING_MS="$PING_MS" DEFLATE="$2" node bench/peers/server.js "$1" "$PORT" >"$ready" 2>>"$OUT/node.log" &
  SERVER_PID=$!
  for _ in $(seq 100); do
    grep -q "^PORT" "$ready" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "node peer did not start; see $OUT/node.log" >&2
  exit 1
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

bench() {
  local name="$1"
  shift
  bench_json "$name" "$SERVER_PID" "$@"
}

# deflate flag for `wsgate bench`, by variant name.
flag() { [ "$1" = deflate ] && echo --deflate || true; }

for fig in "${FIGURES[@]}"; do
  case "$fig" in
    fanout)
      for v in plain deflate; do
        start_wsgate
        # shellcheck disable=SC2046
        bench "fanout.wsgate-$v" fanout --url "ws://127.0.0.1:$PORT/room/fanout/" \
          --publish-url "http://127.0.0.1:$PORT/api/groups/room:fanout/messages" \
          --conns "$FANOUT_SUBS" --msgs "$FANOUT_MSGS" --rate "$FANOUT_RATE" --concurrency 200 --timeout 60 $(flag $v)
        stop_server
        start_node fanout "$([ $v = deflate ] && echo 1 || echo 0)"
        # shellcheck disable=SC2046
        bench "fanout.node-$v" fanout --url "ws://127.0.0.1:$PORT/" \
          --publish-url "http://127.0.0.1:$PORT/publish" \
          --conns "$FANOUT_SUBS" --msgs "$FANOUT_MSGS" --rate "$FANOUT_RATE" --concurrency 200 --timeout 60 $(flag $v)
        stop_server
      done
      ;;
    idle)
      for v in plain deflate; do
        start_wsgate
        # shellcheck disable=SC2046
        bench "idle.wsgate-$v" idle --url "ws://127.0.0.1:$PORT/ws/echo" --conns "$IDLE_CONNS" \
          --hold "$IDLE_HOLD" --concurrency 200 --timeout 30 $(flag $v)
        stop_server
        start_node echo "$([ $v = deflate ] && echo 1 || echo 0)"
        # shellcheck disable=SC2046
        bench "idle.node-$v" idle --url "ws://127.0.0.1:$PORT/" --conns "$IDLE_CONNS" \
          --hold "$IDLE_HOLD" --concurrency 200 --timeout 30 $(flag $v)
        stop_server
      done
      ;;
    *) echo "unknown figure $fig (fanout idle)" >&2; exit 2 ;;
  esac
done

python3 - "$OUT" >"$OUT/tables.md" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(name):
    p = os.path.join(out, name + ".json")
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
commit = open(os.path.join(out, "commit")).read().strip() if os.path.exists(os.path.join(out, "commit")) else "?"
print(f"Run {os.path.basename(out)}, commit {commit}\n")
rows = [("wsgate-plain", "wsgate, no compression"), ("wsgate-deflate", "wsgate, permessage-deflate"),
        ("node-plain", "node ws, perMessageDeflate off"), ("node-deflate", "node ws, perMessageDeflate on")]
if any(load(f"fanout.{k}") for k, _ in rows):
    print("| fan-out to subscribers | ok | deliveries | server CPU s | CPU per delivery | bytes on the wire per delivery | p50 / p99 latency | machine busy |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    per = {}
    for k, label in rows:
        d = load(f"fanout.{k}")
        if not d:
            continue
        cpu = d["cpu"]["server_cpu_s"]
        n = max(d["deliveries"], 1)
        per[k] = cpu / n * 1e9
        lat = d["latency_us"]
        print(f"| {label} ({d['subs']} subs, {d['msgs']} x {d['size']} B) | {d['ok']} | {d['deliveries']} | {cpu:.2f} | "
              f"{per[k]:.0f} ns | {d.get('wire_bytes_per_delivery', 0):.0f} B | {lat['p50']/1000:.1f} / {lat['p99']/1000:.1f} ms | "
              f"{d['cpu']['machine_busy_pct']:.0f}% |")
    if "wsgate-plain" in per and "wsgate-deflate" in per:
        print(f"\nwsgate CPU per delivery, compressed / plain: {per['wsgate-deflate'] / per['wsgate-plain']:.2f}x")
    if "node-plain" in per and "node-deflate" in per:
        print(f"node ws CPU per delivery, compressed / plain: {per['node-deflate'] / per['node-plain']:.2f}x")
    if "wsgate-deflate" in per and "node-deflate" in per:
        print(f"compressed, node ws / wsgate CPU per delivery: {per['node-deflate'] / per['wsgate-deflate']:.1f}x")
    print()
if any(load(f"idle.{k}") for k, _ in rows):
    print("| idle connections | ok | held | RSS per connection (settled) | at the end of the hold | machine busy |")
    print("|---|---|---:|---:|---:|---:|")
    for k, label in rows:
        d = load(f"idle.{k}")
        if not d:
            continue
        r = d["server_rss"]
        print(f"| {label} | {d['ok']} | {d['connected']} | {r['bytes_per_conn']/1024:.2f} KB | "
              f"{r['bytes_per_conn_end_of_hold']/1024:.2f} KB | {d['cpu']['machine_busy_pct']:.0f}% |")
PY
cat "$OUT/tables.md"
