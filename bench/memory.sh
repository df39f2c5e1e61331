#!/usr/bin/env bash
# What wsgate's memory does (issue 18): bytes per idle connection, connect/close churn on one
# server, and how fast memory comes back after a burst. The server's RSS is read from /proc; the
# clients are `wsgate bench` processes (the open-files limit is 20,000 per process, so the idle
# figure splits its clients over IDLE_CLIENTS processes).
#
#   idle    IDLE_CONNS raw clients held in one group of the default /room/{room}/ route (replay
#           on, as shipped): RSS per connection once all are up (+2 s) and at the end of the hold
#   churn   ROUNDS rounds of CHURN_CONNS connect + close on one server: RSS after each round (all
#           closed, +CHURN_SETTLE s); round ROUNDS against round 2
#   burst   a room of BURST_CONNS members (every message to every member, one iteration: each
#           client has ~BURST_CONNS frames queued at its peak), then RSS every second for RETURN_S
#           seconds after the last close, against the idle server's RSS before the burst
#   echo    `wsgate bench echo --conns 100` (to check an allocator change costs no throughput)
#
#   bench/memory.sh                      # all; tables into bench/results/memory-<time>/
#   bench/memory.sh churn burst          # some
#   LD_PRELOAD_SERVER=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 bench/memory.sh   # another
#       allocator under the same binary (the server only), for A/B runs; SERVER_ENV="K=V ..." adds
#       environment to the server (e.g. MALLOC_CONF=... or GLIBC_TUNABLES=...)
# Settings (environment): IDLE_CONNS (19000), IDLE_CLIENTS (2), IDLE_HOLD (20), ROUNDS (20),
# CHURN_CONNS (10000), CHURN_SETTLE (3), BURST_CONNS (5000), RETURN_S (30), PING_INTERVAL (25s),
# WSGATE_BIN (default: a release build
# of this tree), OUT, LABEL (a name for this run in the tables).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=SCRIPTDIR/../scripts/lib.sh
source "$ROOT/scripts/lib.sh"
cd "$ROOT"
IDLE_CONNS="${IDLE_CONNS:-19000}"
IDLE_CLIENTS="${IDLE_CLIENTS:-2}"
IDLE_HOLD="${IDLE_HOLD:-20}"
ROUNDS="${ROUNDS:-20}"
CHURN_CONNS="${CHURN_CONNS:-10000}"
BURST_CONNS="${BURST_CONNS:-5000}"
RETURN_S="${RETURN_S:-30}"
LABEL="${LABEL:-wsgate}"
# The clients read nothing until all are connected: on a machine so busy that connecting takes
# longer than ping_interval + pong_timeout, the first ones would be closed for not answering.
PING_INTERVAL="${PING_INTERVAL:-25s}"
CHURN_SETTLE="${CHURN_SETTLE:-3}"
FIGURES=("$@")
[ ${#FIGURES[@]} -eq 0 ] && FIGURES=(idle churn burst echo)

bench_setup memory

SERVER_PID=""
CLIENT_PIDS=()
cleanup() {
  for p in "${CLIENT_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null
  true
}
trap cleanup EXIT

start() {
  PORT="$(free_port)"
  printf '[server]\nlisten = "127.0.0.1:%s"\nmax_connections = 19500\n[websocket]\nping_interval = "%s"\n' \
    "$PORT" "$PING_INTERVAL" >"$OUT/wsgate.$PORT.toml"
  # shellcheck disable=SC2086
  env ${SERVER_ENV:-} ${LD_PRELOAD_SERVER:+LD_PRELOAD=$LD_PRELOAD_SERVER} WSGATE_LOG=warn \
    "$BIN" serve --config "$OUT/wsgate.$PORT.toml" 2>>"$OUT/wsgate.log" &
  SERVER_PID=$!
  wait_for_tcp 127.0.0.1 "$PORT" 10 "$SERVER_PID" || { echo "wsgate did not start; see $OUT/wsgate.log" >&2; exit 1; }
  sleep 1
}

stop() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

rss() { awk '/VmRSS/ {print $2 * 1024}' "/proc/$SERVER_PID/status"; }
# The heap and stacks only: RSS less the binary's own pages, which the first connections touch
# once (code, not memory per connection) and which differ between two builds.
anon() { awk '/RssAnon/ {print $2 * 1024}' "/proc/$SERVER_PID/status"; }
open_conns() {
  curl -fs "http://127.0.0.1:$PORT/metrics" | awk '$1 == "wsgate_ws_connections" {print $2}'
}
# Waits (at most $2 s) until the server holds $1 WebSockets.
wait_conns() {
  local want=$1 limit=$2 deadline=$((SECONDS + $2))
  while ((SECONDS < deadline)); do
    [ "$(open_conns)" = "$want" ] && return 0
    sleep 0.2
  done
  echo "   the server holds $(open_conns) connections, not $want, after ${limit}s" >&2
  return 1
}
bench() {
  local name=$1
  shift
  "$BIN" bench "$@" --progress 5 >"$OUT/$name.json" 2>>"$OUT/progress.log" ||
    echo "   (exit $?: not clean, see $OUT/$name.json)" >&2
}
emit() { echo "$1" | tee -a "$OUT/figures.jsonl" >&2; }

for fig in "${FIGURES[@]}"; do
  case "$fig" in
    idle)
      start
      before="$(rss)"
      anon_before="$(anon)"
      per=$((IDLE_CONNS / IDLE_CLIENTS))
      total=$((per * IDLE_CLIENTS))
      CLIENT_PIDS=()
      for i in $(seq "$IDLE_CLIENTS"); do
        bench "idle-client-$i" idle --url "ws://127.0.0.1:$PORT/room/idle/" --conns "$per" \
          --hold "$IDLE_HOLD" --concurrency 100 --timeout 60 &
        CLIENT_PIDS+=($!)
      done
      t0=$SECONDS
      wait_conns "$total" 180 || true
      sleep 2
      settled="$(rss)"
      anon_settled="$(anon)"
      sleep $((IDLE_HOLD - (SECONDS - t0) > 2 ? IDLE_HOLD - (SECONDS - t0) : 1))
      end="$(rss)"
      held="$(open_conns)"
      for p in "${CLIENT_PIDS[@]}"; do wait "$p" || true; done
      CLIENT_PIDS=()
      emit "{\"label\": \"$LABEL\", \"figure\": \"idle\", \"conns\": $held, \"rss_before\": $before, \"rss_settled\": $settled, \"rss_end\": $end, \"bytes_per_conn\": $(((settled - before) / total)), \"bytes_per_conn_end\": $(((end - before) / total)), \"anon_bytes_per_conn\": $(((anon_settled - anon_before) / total))}"
      stop
      ;;
    churn)
      start
      before="$(rss)"
      rounds=()
      for r in $(seq "$ROUNDS"); do
        bench "churn-$r" idle --url "ws://127.0.0.1:$PORT/room/churn/" --conns "$CHURN_CONNS" \
          --hold 0.5 --concurrency 200 --timeout 60
        wait_conns 0 30 || true
        # jemalloc returns freed pages over a second (dirty_decay_ms) from a background thread.
        sleep "$CHURN_SETTLE"
        rounds+=("$(rss)")
        echo "   round $r: RSS $((${rounds[-1]} / 1024)) KiB" >&2
      done
      list="$(IFS=,; echo "${rounds[*]}")"
      r2=${rounds[1]:-${rounds[0]}}
      last=${rounds[-1]}
      emit "{\"label\": \"$LABEL\", \"figure\": \"churn\", \"conns\": $CHURN_CONNS, \"rss_before\": $before, \"rss_after_round\": [$list], \"last_vs_round2\": $(python3 -c "print(round($last / $r2, 3))")}"
      stop
      ;;
    burst)
      start
      base="$(rss)"
      bench "burst-room" room --url "ws://127.0.0.1:$PORT/room/burst/" --conns "$BURST_CONNS" \
        --iterations 1 --warmup-iterations 0 --concurrency 200 --timeout 120 --size 64
      peak="$(awk '/VmHWM/ {print $2 * 1024}' "/proc/$SERVER_PID/status")"
      wait_conns 0 30 || true
      t0=$EPOCHREALTIME
      samples=()
      under=""
      for s in $(seq 0 "$RETURN_S"); do
        v="$(rss)"
        samples+=("$v")
        if [ -z "$under" ] && [ "$v" -lt $((2 * base)) ]; then
          under="$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b - a}')"
        fi
        [ "$s" -lt "$RETURN_S" ] && sleep 1
      done
      list="$(IFS=,; echo "${samples[*]}")"
      emit "{\"label\": \"$LABEL\", \"figure\": \"burst\", \"conns\": $BURST_CONNS, \"rss_idle_baseline\": $base, \"rss_peak\": $peak, \"rss_each_second_after_last_close\": [$list], \"seconds_to_under_2x_baseline\": ${under:-null}}"
      stop
      ;;
    echo)
      start
      "$BIN" bench echo --url "ws://127.0.0.1:$PORT/ws/echo" --conns 100 --duration 5 --warmup 1 \
        --pid "$SERVER_PID" --progress 0 >"$OUT/echo.json" 2>>"$OUT/progress.log" || true
      emit "$(python3 -c "
import json, sys
r = json.load(open('$OUT/echo.json'))
cpu = r.get('cpu', {})
print(json.dumps({'label': '$LABEL', 'figure': 'echo', 'msgs_per_s': r.get('msgs_per_s'),
  'server_pct_of_core': cpu.get('server_pct_of_core'), 'machine_busy_pct': cpu.get('machine_busy_pct'),
  'ok': r.get('ok')}))")"
      stop
      ;;
    *) echo "unknown figure $fig (idle churn burst echo)" >&2; exit 2 ;;
  esac
done
echo "figures in $OUT/figures.jsonl" >&2
