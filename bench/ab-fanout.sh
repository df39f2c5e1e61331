#!/usr/bin/env bash
# Before/after for the fan-out figure: wsgate binaries (and optionally the node peer) run
# alternately in one loop, each measurement under `flock /tmp/wsgate-bench.lock`, so a change is
# compared with the unchanged binary in the same conditions.
#
#   SERVERS="base=/tmp/fanout-base/wsgate new=target/release/wsgate" bench/ab-fanout.sh
#
# Settings (environment): SERVERS (name=binary ...; default: this tree's release build as "new"),
# CLIENT (the `wsgate bench` binary for every run; default: the first server's), REPS (3),
# NODE (1: add the node ws peer), CHRT (empty, or e.g. 50: server and client at SCHED_FIFO),
# NICE (empty, or e.g. -10: server and client at that nice level),
# ISOLATE (1: run everything in a CPU cgroup with the largest cpu.shares, so a compile elsewhere
# gets ~1 % of the box while server and client still share the rest as they would alone),
# FANOUT_SUBS (10000), FANOUT_MSGS (500), FANOUT_RATE (100), SIZE (64), OUT (results folder),
# SERVER_ENV (extra VAR=value for wsgate, e.g. "WSGATE_SERVER__WORKERS=1").
# Prints one line per run and the medians (tables: bench/ab_summary.py OUT).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=SCRIPTDIR/../scripts/lib.sh
source "$ROOT/scripts/lib.sh"
cd "$ROOT"
SERVERS="${SERVERS:-new=$ROOT/target/release/wsgate}"
REPS="${REPS:-3}"
NODE="${NODE:-1}"
SIZE="${SIZE:-64}"
FANOUT_SUBS="${FANOUT_SUBS:-10000}"
FANOUT_MSGS="${FANOUT_MSGS:-500}"
FANOUT_RATE="${FANOUT_RATE:-100}"
OUT="${OUT:-$ROOT/bench/results/fanout-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
read -r -a PAIRS <<<"$SERVERS"
CLIENT="${CLIENT:-${PAIRS[0]#*=}}"
BIN="$CLIENT"
PRIO=()
[ -n "${CHRT:-}" ] && PRIO=(chrt -f "$CHRT")
[ -n "${NICE:-}" ] && PRIO=(nice -n "$NICE")
echo "results in $OUT; client $CLIENT" >&2
if [ "$NODE" = 1 ]; then
  (cd bench/peers && { [ -d node_modules/ws ] || npm ci --no-audit --no-fund --silent; })
fi
isolate_cpu wsgate-ab

SERVER_PID=""
trap '[ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; true' EXIT

# wait_idle: up to 60 s for the machine to be under 15 % busy over a second, so a compile
# elsewhere does not land inside a measurement (the lock only keeps benchmarks apart).
wait_idle() {
  python3 - <<'PY'
import time
def snap():
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(v), v[3] + v[4]
for _ in range(60):
    t0, i0 = snap(); time.sleep(1); t1, i1 = snap()
    if t1 > t0 and 1 - (i1 - i0) / (t1 - t0) < 0.15:
        break
else:
    print("machine still busy after 60 s; measuring anyway")
PY
}

run_one() {
  wait_idle
  local name="$1" bin="$2" path publish
  PORT="$(free_port)"
  if [ "$bin" = node ]; then
    "${PRIO[@]}" node bench/peers/server.js fanout "$PORT" >"$OUT/node.$PORT.out" 2>>"$OUT/node.log" &
    SERVER_PID=$!
    for _ in $(seq 100); do grep -q "^PORT" "$OUT/node.$PORT.out" 2>/dev/null && break; sleep 0.05; done
    path=/
    publish="http://127.0.0.1:$PORT/publish"
  else
    # shellcheck disable=SC2086
    env ${SERVER_ENV:-} WSGATE_SERVER__MAX_CONNECTIONS=30000 WSGATE_LOG=warn \
      "${PRIO[@]}" "$bin" serve --listen "127.0.0.1:$PORT" 2>>"$OUT/wsgate.log" &
    SERVER_PID=$!
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break; sleep 0.05; done
    path=/room/fanout/
    publish="http://127.0.0.1:$PORT/api/groups/room:fanout/messages"
  fi
  "${PRIO[@]}" "$CLIENT" bench fanout --url "ws://127.0.0.1:$PORT$path" --publish-url "$publish" \
    --conns "$FANOUT_SUBS" --msgs "$FANOUT_MSGS" --rate "$FANOUT_RATE" --concurrency 200 \
    --size "$SIZE" --pid "$SERVER_PID" --progress 0 >"$OUT/$name.json" 2>>"$OUT/progress.log" || true
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  python3 "$ROOT/bench/ab_summary.py" --line "$OUT/$name.json"
}

for rep in $(seq "$REPS"); do
  for pair in "${PAIRS[@]}"; do
    exec 9>/tmp/wsgate-bench.lock
    flock 9
    run_one "fanout.${pair%%=*}.$rep" "${pair#*=}"
    flock -u 9
  done
  if [ "$NODE" = 1 ]; then
    exec 9>/tmp/wsgate-bench.lock
    flock 9
    run_one "fanout.node.$rep" node
    flock -u 9
  fi
done
python3 "$ROOT/bench/ab_summary.py" "$OUT" | tee "$OUT/summary.md"
