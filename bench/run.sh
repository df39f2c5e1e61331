#!/usr/bin/env bash
# Runs every BENCHMARKS.md figure against wsgate and the node `ws` peer, interleaved in one run,
# each server started fresh on a free loopback port for each measurement, and writes the tables.
#
#   bench/run.sh                 # all figures; tables into bench/results/run-<time>/tables.md
#   bench/run.sh echo room       # only these figures (echo room fanout idle handshake workers scaling runtime)
#   WRITE=1 bench/run.sh         # also replace the results section of BENCHMARKS.md
#
# Settings (environment): REPS (1), ECHO_CONNS (100), ECHO_SECONDS (5), ROOM_CONNS (1000),
# ROOM_ITERS (3: node ws needs ~15 s per iteration), FANOUT_SUBS (10000), FANOUT_MSGS (500), FANOUT_RATE (100), IDLE_CONNS (19000),
# IDLE_HOLD (30; 60+ for a long hold), HS_TOTAL (20000), HS_WORKERS (50), SIZE (64),
# CORE_CAP (0.3: cores each worker may use in the `scaling` figure),
# OUT (results folder; reuse one to add figures to a run), WSLOAD (path to a built wsload for the cross-check; default ../shared/wsload/target/release/wsload
# or /tmp/wsload/target/release/wsload when present), WSGATE_BIN (the wsgate to measure, not built; default: a release build of this tree),
# PIN=1 (servers on core 0, every client on core 1 with taskset: each side has a core of its own,
# as when clients are on other machines; wsgate's default workers then count 1 core),
# BASE_BIN (another wsgate binary, e.g. the
# one before a change: echo, room, fan-out, idle and handshake also run against it as
# "wsgate-base", right before wsgate, and tables.md gains a before/after table).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=SCRIPTDIR/../scripts/lib.sh
source "$ROOT/scripts/lib.sh"
cd "$ROOT"
REPS="${REPS:-1}"
SIZE="${SIZE:-64}"
ECHO_CONNS="${ECHO_CONNS:-100}"
ECHO_SECONDS="${ECHO_SECONDS:-5}"
ROOM_CONNS="${ROOM_CONNS:-1000}"
ROOM_ITERS="${ROOM_ITERS:-3}"
FANOUT_SUBS="${FANOUT_SUBS:-10000}"
FANOUT_MSGS="${FANOUT_MSGS:-500}"
FANOUT_RATE="${FANOUT_RATE:-100}"
IDLE_CONNS="${IDLE_CONNS:-19000}"
IDLE_HOLD="${IDLE_HOLD:-30}"
HS_TOTAL="${HS_TOTAL:-20000}"
HS_WORKERS="${HS_WORKERS:-50}"
CORE_CAP="${CORE_CAP:-0.3}"
FIGURES=("$@")
[ ${#FIGURES[@]} -eq 0 ] && FIGURES=(echo room fanout idle handshake workers scaling)

if [ -z "${WSLOAD:-}" ]; then
  for w in "$ROOT/../shared/wsload/target/release/wsload" /tmp/wsload/target/release/wsload; do
    [ -x "$w" ] && WSLOAD="$w" && break
  done
fi
WSLOAD="${WSLOAD:-}"

bench_setup run
(cd bench/peers && { [ -d node_modules/ws ] || npm ci --no-audit --no-fund --silent; })

SERVER_PID=""
CGROUP=""
SERVER_PIN=""
if [ "${PIN:-0}" = 1 ]; then
  SERVER_PIN="taskset -c 0"
  CLIENT_PIN="taskset -c 1"
  export CLIENT_PIN
fi
PORT=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null
  sleep 0.2
  [ -n "$CGROUP" ] && rmdir "$CGROUP" 2>/dev/null
  true
}
trap cleanup EXIT


# start_wsgate [workers] [binary]: wsgate on a free port, ready when /healthz answers.
start_wsgate() {
  PORT="$(free_port)"
  WSGATE_SERVER__MAX_CONNECTIONS=30000 WSGATE_SERVER__WORKERS="${1:-0}" WSGATE_LOG=warn \
    $SERVER_PIN env ${RUNTIME:+WSGATE_SERVER__RUNTIME=$RUNTIME} "${2:-$BIN}" serve --listen "127.0.0.1:$PORT" 2>>"$OUT/wsgate.log" &
  SERVER_PID=$!
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "wsgate did not start; see $OUT/wsgate.log" >&2
  exit 1
}

# start_node MODE: the node ws peer on a free port, ready when it prints its port.
start_node() {
  PORT="$(free_port)"
  local ready="$OUT/node.$PORT.out"
  $SERVER_PIN node bench/peers/server.js "$1" "$PORT" >"$ready" 2>>"$OUT/node.log" &
  SERVER_PID=$!
  for _ in $(seq 100); do
    grep -q "^PORT" "$ready" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "node peer did not start; see $OUT/node.log" >&2
  exit 1
}

# cap_cpu PID CORES: lets process PID (all its threads) use at most CORES cores, through a CPU
# cgroup (v2 cpu.max, or v1 cfs quota) with a 10 ms period so the cap is smooth. On a 2-core
# box this is how "the client is not the bottleneck" can be made true: the server gets a fixed
# share per worker and the client the rest.
cap_cpu() {
  local pid="$1" quota
  quota="$(python3 -c "print(int($2 * 10000))")"
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    CGROUP=/sys/fs/cgroup/wsgate-bench
    mkdir -p "$CGROUP"
    echo "$quota 10000" >"$CGROUP/cpu.max"
  else
    CGROUP=/sys/fs/cgroup/cpu/wsgate-bench
    mkdir -p "$CGROUP"
    echo 10000 >"$CGROUP/cpu.cfs_period_us"
    echo "$quota" >"$CGROUP/cpu.cfs_quota_us"
  fi
  echo "$pid" >"$CGROUP/cgroup.procs"
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

# bench NAME ARGS...: one wsgate bench run against the running server, JSON kept as NAME.json.
bench() {
  local name="$1"
  shift
  bench_json "$name" "$SERVER_PID" "$@"
}

# wsload_run NAME ARGS...: the same settings with the independent load generator.
wsload_run() {
  [ -n "$WSLOAD" ] || return 0
  local name="$1"
  shift
  echo "== $name: wsload $*" >&2
  "$WSLOAD" "$@" --size "$SIZE" --pid "$SERVER_PID" --progress 0 2>>"$OUT/progress.log" | tail -1 >"$OUT/$name.json" || true
}

run_echo() {
  local who="$1" rep="$2" path="$3"
  bench "echo.$who.$rep" echo --url "ws://127.0.0.1:$PORT$path" --conns "$ECHO_CONNS" --duration "$ECHO_SECONDS" --warmup 1
  wsload_run "wsload-echo.$who.$rep" echo --url "ws://127.0.0.1:$PORT$path" --conns "$ECHO_CONNS" --duration "$ECHO_SECONDS" --warmup 1
}

run_room() {
  local who="$1" rep="$2" path="$3"
  bench "room.$who.$rep" room --url "ws://127.0.0.1:$PORT$path" --conns "$ROOM_CONNS" --iterations "$ROOM_ITERS" --warmup-iterations 1 --timeout 30 --concurrency 200
  # The cross-check runs against wsgate only: a node ws room iteration takes ~15 s.
  [ "$who" = wsgate ] || return 0
  wsload_run "wsload-room.$who.$rep" room --url "ws://127.0.0.1:$PORT$path" --conns "$ROOM_CONNS" --iterations "$ROOM_ITERS" --warmup-iterations 1 --timeout 30
}

# wsgates: the wsgate binaries of a figure, "name binary" per line (the base first).
wsgates() {
  [ -n "${BASE_BIN:-}" ] && echo "wsgate-base $BASE_BIN"
  echo "wsgate $BIN"
}

for rep in $(seq "$REPS"); do
  for fig in "${FIGURES[@]}"; do
    case "$fig" in
      echo)
        while read -r who bin; do
          start_wsgate 0 "$bin"; run_echo "$who" "$rep" /ws/echo; stop_server
        done < <(wsgates)
        start_node echo; run_echo node "$rep" /; stop_server
        ;;
      room)
        while read -r who bin; do
          start_wsgate 0 "$bin"; run_room "$who" "$rep" /room/bench/; stop_server
        done < <(wsgates)
        start_node room; run_room node "$rep" /; stop_server
        ;;
      fanout)
        while read -r who bin; do
          start_wsgate 0 "$bin"
          bench "fanout.$who.$rep" fanout --url "ws://127.0.0.1:$PORT/room/fanout/" \
            --publish-url "http://127.0.0.1:$PORT/api/groups/room:fanout/messages" \
            --conns "$FANOUT_SUBS" --msgs "$FANOUT_MSGS" --rate "$FANOUT_RATE" --concurrency 200
          [ "$who" = wsgate ] && wsload_run "wsload-fanout.wsgate.$rep" fanout --url "ws://127.0.0.1:$PORT/room/fanout2/" \
            --publish-url "http://127.0.0.1:$PORT/api/groups/room:fanout2/messages" \
            --subs "$FANOUT_SUBS" --msgs "$FANOUT_MSGS" --rate "$FANOUT_RATE"
          stop_server
        done < <(wsgates)
        start_node fanout
        bench "fanout.node.$rep" fanout --url "ws://127.0.0.1:$PORT/" \
          --publish-url "http://127.0.0.1:$PORT/publish" \
          --conns "$FANOUT_SUBS" --msgs "$FANOUT_MSGS" --rate "$FANOUT_RATE" --concurrency 200
        stop_server
        ;;
      idle)
        while read -r who bin; do
          start_wsgate 0 "$bin"
          bench "idle.$who.$rep" idle --url "ws://127.0.0.1:$PORT/ws/echo" --conns "$IDLE_CONNS" --hold "$IDLE_HOLD" --concurrency 200 --timeout 30
          stop_server
        done < <(wsgates)
        start_node echo
        bench "idle.node.$rep" idle --url "ws://127.0.0.1:$PORT/" --conns "$IDLE_CONNS" --hold "$IDLE_HOLD" --concurrency 200 --timeout 30
        stop_server
        ;;
      handshake)
        while read -r who bin; do
          start_wsgate 0 "$bin"
          bench "handshake.$who.$rep" handshake --url "ws://127.0.0.1:$PORT/ws/echo" --total "$HS_TOTAL" --concurrency "$HS_WORKERS" --duration 60
          stop_server
        done < <(wsgates)
        start_node echo
        bench "handshake.node.$rep" handshake --url "ws://127.0.0.1:$PORT/" --total "$HS_TOTAL" --concurrency "$HS_WORKERS" --duration 60
        stop_server
        ;;
      runtime)
        # server.runtime: tokio's work stealing (the default) against a runtime per worker.
        for rt in work_stealing per_core; do
          RUNTIME=$rt start_wsgate 0
          bench "runtime-echo.$rt.$rep" echo --url "ws://127.0.0.1:$PORT/ws/echo" --conns "$ECHO_CONNS" --duration "$ECHO_SECONDS" --warmup 1
          bench "runtime-handshake.$rt.$rep" handshake --url "ws://127.0.0.1:$PORT/ws/echo" --total "$HS_TOTAL" --concurrency "$HS_WORKERS" --duration 60
          bench "runtime-fanout.$rt.$rep" fanout --url "ws://127.0.0.1:$PORT/room/fanout/" \
            --publish-url "http://127.0.0.1:$PORT/api/groups/room:fanout/messages" \
            --conns "$FANOUT_SUBS" --msgs "$FANOUT_MSGS" --rate "$FANOUT_RATE" --concurrency 200
          stop_server
        done
        ;;
      workers)
        for w in 1 2; do
          start_wsgate "$w"
          bench "workers-echo.w$w.$rep" echo --url "ws://127.0.0.1:$PORT/ws/echo" --conns "$ECHO_CONNS" --duration "$ECHO_SECONDS" --warmup 1
          bench "workers-room.w$w.$rep" room --url "ws://127.0.0.1:$PORT/room/bench/" --conns "$ROOM_CONNS" --iterations 20 --warmup-iterations 1 --timeout 30 --concurrency 200
          stop_server
        done
        ;;
      scaling)
        # The same as `workers`, but with the server held to CORE_CAP cores per worker and a
        # 2-thread client, so the client has spare CPU and cannot be what limits 2 workers.
        for w in 1 2; do
          start_wsgate "$w"
          cap_cpu "$SERVER_PID" "$(python3 -c "print($w * $CORE_CAP)")"
          bench "scaling-echo.w$w.$rep" echo --url "ws://127.0.0.1:$PORT/ws/echo" --conns "$ECHO_CONNS" --duration "$ECHO_SECONDS" --warmup 1 --threads 2
          bench "scaling-room.w$w.$rep" room --url "ws://127.0.0.1:$PORT/room/bench/" --conns "$ROOM_CONNS" --iterations 10 --warmup-iterations 1 --timeout 30 --concurrency 200 --threads 2
          stop_server
        done
        ;;
      *) echo "unknown figure $fig (echo room fanout idle handshake workers scaling runtime)" >&2; exit 2 ;;
    esac
  done
done

python3 "$ROOT/bench/tables.py" "$OUT" >"$OUT/tables.md"
cat "$OUT/tables.md"
if [ "${WRITE:-0}" = 1 ]; then
  python3 "$ROOT/bench/tables.py" --write "$ROOT/BENCHMARKS.md" "$OUT"
  echo "BENCHMARKS.md results section replaced" >&2
fi
