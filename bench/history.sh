#!/usr/bin/env bash
# What groups that remember cost (issue 11), one wsgate binary, interleaved in one run:
#   fanout-on / fanout-off   fan-out to FANOUT_SUBS subscribers at FANOUT_RATE publishes/s, the
#                            group with history (and replay) on, then off: server CPU per delivery
#   idle-group / idle-group-off / idle-echo   IDLE_CONNS plain clients held in one group with
#                            history, replay and presence, then in the same group with neither,
#                            then on the echo route (no group): RSS per connection
#   stored                   STORED publications of STORED_SIZE bytes kept in history: RSS and the
#                            history gauge per stored publication
#   recover                  `wsgate bench recover`: RECOVER_CONNS wsgate.v1 clients each
#                            recovering RECOVER_MISSED messages after all dropped at once
#
#   bench/history.sh                     # all; tables into bench/results/history-<time>/tables.md
#   bench/history.sh fanout recover      # some
# Settings (environment): REPS (1), FANOUT_SUBS (10000), FANOUT_MSGS (500), FANOUT_RATE (100),
# IDLE_CONNS (10000), IDLE_HOLD (10), STORED (100000), STORED_SIZE (100), RECOVER_CONNS (5000),
# RECOVER_MISSED (20), SIZE (64), WSGATE_BIN (default: a release build of this tree), OUT.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=SCRIPTDIR/../scripts/lib.sh
source "$ROOT/scripts/lib.sh"
cd "$ROOT"
REPS="${REPS:-1}"
SIZE="${SIZE:-64}"
FANOUT_SUBS="${FANOUT_SUBS:-10000}"
FANOUT_MSGS="${FANOUT_MSGS:-500}"
FANOUT_RATE="${FANOUT_RATE:-100}"
IDLE_CONNS="${IDLE_CONNS:-10000}"
IDLE_HOLD="${IDLE_HOLD:-10}"
STORED="${STORED:-100000}"
STORED_SIZE="${STORED_SIZE:-100}"
RECOVER_CONNS="${RECOVER_CONNS:-5000}"
RECOVER_MISSED="${RECOVER_MISSED:-20}"
FIGURES=("$@")
[ ${#FIGURES[@]} -eq 0 ] && FIGURES=(fanout idle stored recover)

bench_setup history

SERVER_PID=""
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; true; }
trap cleanup EXIT

# start CONFIG_TEXT: wsgate with this config on a free port.
start() {
  PORT="$(free_port)"
  printf '[server]\nlisten = "127.0.0.1:%s"\nmax_connections = 30000\n%s\n' "$PORT" "$1" >"$OUT/wsgate.$PORT.toml"
  WSGATE_LOG=warn "$BIN" serve --config "$OUT/wsgate.$PORT.toml" 2>>"$OUT/wsgate.log" &
  SERVER_PID=$!
  wait_for_tcp 127.0.0.1 "$PORT" 10 "$SERVER_PID" || { echo "wsgate did not start; see $OUT/wsgate.log" >&2; exit 1; }
}

stop() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

ROUTE_ON='[[route]]
path = "/room/{room}/"
group = "room:{room}"
history = { size = 100, ttl = "5m" }
replay = { last = 100, within = "30s" }'
ROUTE_OFF='[[route]]
path = "/room/{room}/"
group = "room:{room}"'
ROUTE_STORED="[hub]
history_max_bytes = 1073741824
[[route]]
path = \"/room/{room}/\"
group = \"room:{room}\"
history = { size = $STORED, ttl = \"1h\" }"

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
history_bytes() {
  curl -fs "http://127.0.0.1:$PORT/metrics" | awk '$1 == "wsgate_hub_history_bytes" {print $2}'
}

for rep in $(seq "$REPS"); do
  for fig in "${FIGURES[@]}"; do
    case "$fig" in
      fanout)
        for mode in on off; do
          if [ "$mode" = on ]; then start "$ROUTE_ON"; else start "$ROUTE_OFF"; fi
          bench_json "fanout-$mode.wsgate.$rep" "$SERVER_PID" fanout --url "ws://127.0.0.1:$PORT/room/fanout/" \
            --publish-url "http://127.0.0.1:$PORT/api/groups/room:fanout/messages" \
            --conns "$FANOUT_SUBS" --msgs "$FANOUT_MSGS" --rate "$FANOUT_RATE" --concurrency 200
          stop
        done
        ;;
      idle)
        start "$ROUTE_ON"
        bench_json "idle-group.wsgate.$rep" "$SERVER_PID" idle --url "ws://127.0.0.1:$PORT/room/idle/" \
          --conns "$IDLE_CONNS" --hold "$IDLE_HOLD" --concurrency 200 --timeout 30
        stop
        start "$ROUTE_OFF"
        bench_json "idle-group-off.wsgate.$rep" "$SERVER_PID" idle --url "ws://127.0.0.1:$PORT/room/idle/" \
          --conns "$IDLE_CONNS" --hold "$IDLE_HOLD" --concurrency 200 --timeout 30
        stop
        start ""
        bench_json "idle-echo.wsgate.$rep" "$SERVER_PID" idle --url "ws://127.0.0.1:$PORT/ws/echo" \
          --conns "$IDLE_CONNS" --hold "$IDLE_HOLD" --concurrency 200 --timeout 30
        stop
        ;;
      stored)
        start "$ROUTE_STORED"
        before="$(rss_kib "$SERVER_PID")"
        # One subscriber is enough: the publications are kept whoever receives them.
        SIZE="$STORED_SIZE" bench_json "stored-publish.wsgate.$rep" "$SERVER_PID" fanout --url "ws://127.0.0.1:$PORT/room/stored/" \
          --publish-url "http://127.0.0.1:$PORT/api/groups/room:stored/messages" \
          --conns 1 --msgs "$STORED" --rate 1000000
        sleep 1
        after="$(rss_kib "$SERVER_PID")"
        gauge="$(history_bytes)"
        python3 -c "import json,sys; print(json.dumps({'stored': $STORED, 'payload_bytes': $STORED_SIZE, 'rss_bytes_per_stored': round(($after - $before) * 1024 / $STORED, 1), 'history_gauge_bytes_per_stored': round($gauge / $STORED, 1)}))" \
          >"$OUT/stored.wsgate.$rep.json"
        cat "$OUT/stored.wsgate.$rep.json" >&2
        stop
        ;;
      recover)
        start "$ROUTE_ON"
        bench_json "recover.wsgate.$rep" "$SERVER_PID" recover --url "ws://127.0.0.1:$PORT/room/recover/" \
          --publish-url "http://127.0.0.1:$PORT/api/groups/room:recover/messages" --group room:recover \
          --conns "$RECOVER_CONNS" --missed "$RECOVER_MISSED" --concurrency 200 --timeout 60
        stop
        ;;
      *) echo "unknown figure $fig (fanout idle stored recover)" >&2; exit 2 ;;
    esac
  done
done

PYTHONPATH="$ROOT/bench" python3 - "$OUT" <<'EOF' | tee "$OUT/tables.md"
import statistics, sys
import results_lib
d = sys.argv[1]
def runs(prefix):
    return results_lib.runs(d, prefix)
get = results_lib.get
def mean(rs, f):
    v = [f(r) for r in rs if f(r) is not None]
    return statistics.mean(v) if v else None
def per_delivery(r):
    cpu, rate, win = get(r, "cpu.server_cpu_s"), get(r, "deliveries_per_s"), get(r, "cpu.window_s")
    return cpu * 1e9 / (rate * win) if cpu and rate and win else None
print("| figure | value | clean |\n|---|---|---|")
on, off = runs("fanout-on"), runs("fanout-off")
for name, rs in (("fan-out, history on", on), ("fan-out, history off", off)):
    for r in rs:
        print(f"| {name}: deliveries/s, server CPU ns per delivery, p99 ms | {get(r,'deliveries_per_s'):,.0f}, {per_delivery(r):.0f}, {get(r,'latency_us.p99')/1000:.1f} | {r.get('ok')} |")
a, b = mean(on, per_delivery), mean(off, per_delivery)
if a and b:
    print(f"| fan-out CPU per delivery, history on / off | {a / b:.3f}x (target <= 1.10x) | |")
for name in ("idle-group", "idle-group-off", "idle-echo"):
    for r in runs(name):
        print(f"| {name}: RSS bytes per connection | {get(r, 'server_rss.bytes_per_conn'):,.0f} | {r.get('ok')} |")
for r in runs("stored"):
    print(f"| stored {r['stored']:,} publications of {r['payload_bytes']} B: RSS bytes each, history gauge bytes each | {r['rss_bytes_per_stored']}, {r['history_gauge_bytes_per_stored']} (target <= payload + 64) | |")
for r in runs("recover"):
    print(f"| recover {r['conns']:,} clients x {r['missed']} missed: recoveries/s, time to recovered p50 / p99 ms | {r['recoveries_per_s']:,.0f}, {get(r,'time_to_recovered_us.p50')/1000:.1f} / {get(r,'time_to_recovered_us.p99')/1000:.1f} | {r.get('ok')} |")
EOF
