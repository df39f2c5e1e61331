#!/usr/bin/env bash
# What many nodes cost (issue 12): one wsgate binary, one redis-server started here on a free
# port, interleaved in one run:
#   fanout-memory   subscribers on one node with the memory broker, publishing over HTTP, for
#                   each of FANOUT_CASES: deliveries/s, publish->deliver p50/p99
#   fanout-redis    the same subscribers spread over two nodes sharing Redis, publishing to the
#                   first node: the same figures, plus the CPU of both nodes and of Redis
#   throughput      PUBLISH_REQS requests to POST /api/publish on node A, each to NGROUPS groups
#                   (one subscriber of each on node B): publications/s through Redis, Redis CPU
#                   per publication, and what a third node with no members got from Redis
#                   (CLIENT LIST's subscription counts, and the bytes each node's sockets to
#                   Redis received, from the kernel's tcp_info)
#
#   bench/redis.sh                     # all; tables into bench/results/redis-<time>/tables.md
#   bench/redis.sh fanout              # some
# Settings (environment): REPS (1), FANOUT_CASES ("1000x20 10000x20 10000x100": subscribers x
# publishes/s, one run each), FANOUT_SECONDS (5: of publishing per run),
# NGROUPS (1000), PUBLISH_REQS (200), SIZE (64), WSGATE_BIN (default: a release build of this
# tree), OUT.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=SCRIPTDIR/../scripts/lib.sh
source "$ROOT/scripts/lib.sh"
cd "$ROOT"
REPS="${REPS:-1}"
SIZE="${SIZE:-64}"
FANOUT_SECONDS="${FANOUT_SECONDS:-5}"
FANOUT_CASES="${FANOUT_CASES:-1000x20 10000x20 10000x100}"
NGROUPS="${NGROUPS:-1000}"
PUBLISH_REQS="${PUBLISH_REQS:-200}"
FIGURES=("$@")
[ ${#FIGURES[@]} -eq 0 ] && FIGURES=(fanout throughput)

bench_setup redis
scripts/install-redis.sh

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

REDIS_PORT="$(free_port)"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --logfile "$OUT/redis.log" --daemonize no &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
wait_for_tcp 127.0.0.1 "$REDIS_PORT" 10 "$REDIS_PID" || { echo "redis-server did not start; see $OUT/redis.log" >&2; exit 1; }
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }

# node NAME BROKER_TOML: starts wsgate; sets NODE_PORT and NODE_PID.
node() {
  NODE_PORT="$(free_port)"
  printf '[server]\nlisten = "127.0.0.1:%s"\nmax_connections = 30000\n%s\n' "$NODE_PORT" "$2" >"$OUT/$1.toml"
  WSGATE_LOG=warn "$BIN" serve --config "$OUT/$1.toml" 2>>"$OUT/$1.log" &
  NODE_PID=$!
  PIDS+=("$NODE_PID")
  wait_for_tcp 127.0.0.1 "$NODE_PORT" 10 "$NODE_PID" || { echo "wsgate $1 did not start; see $OUT/$1.log" >&2; exit 1; }
  curl -fs --retry 20 --retry-delay 0 --retry-all-errors "http://127.0.0.1:$NODE_PORT/readyz" >/dev/null
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
REDIS_BROKER="[broker]
kind = \"redis\"
url = \"redis://127.0.0.1:$REDIS_PORT\""
ROUTE='[[route]]
path = "/room/{room}/"
group = "room:{room}"'

# CPU seconds (user + system) a process has used so far.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }
# Busy and total jiffies of the whole machine.
machine() { awk '/^cpu / {print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat; }

for rep in $(seq "$REPS"); do
  for fig in "${FIGURES[@]}"; do
    case "$fig" in
      fanout)
        for case in $FANOUT_CASES; do
        subs=${case%x*} rate=${case#*x}
        msgs=$(python3 -c "print(max(1, round($rate * $FANOUT_SECONDS)))")
        node memory "$ROUTE"
        bench_json "fanout-memory.wsgate.$rep-$case" "$NODE_PID" fanout --url "ws://127.0.0.1:$NODE_PORT/room/fanout/" \
          --publish-url "http://127.0.0.1:$NODE_PORT/api/groups/room:fanout/messages" \
          --conns "$subs" --msgs "$msgs" --rate "$rate" --concurrency 200
        stop "$NODE_PID"
        rcli FLUSHALL >/dev/null
        node a "$REDIS_BROKER
$ROUTE"
        A_PORT=$NODE_PORT A_PID=$NODE_PID
        node b "$REDIS_BROKER
$ROUTE"
        B_PORT=$NODE_PORT B_PID=$NODE_PID
        a0=$(cpu_s "$A_PID") b0=$(cpu_s "$B_PID") r0=$(cpu_s "$REDIS_PID")
        bench_json "fanout-redis.wsgate.$rep-$case" "$A_PID" fanout --url "ws://127.0.0.1:$A_PORT/room/fanout/" \
          --also-url "ws://127.0.0.1:$B_PORT/room/fanout/" \
          --publish-url "http://127.0.0.1:$A_PORT/api/groups/room:fanout/messages" \
          --conns "$subs" --msgs "$msgs" --rate "$rate" --concurrency 200
        python3 -c "import json; print(json.dumps({'subs': $subs, 'rate': $rate, 'node_a_cpu_s': $(cpu_s "$A_PID") - $a0, 'node_b_cpu_s': $(cpu_s "$B_PID") - $b0, 'redis_cpu_s': $(cpu_s "$REDIS_PID") - $r0}))" \
          >"$OUT/fanout-redis-cpu.wsgate.$rep-$case.json"
        stop "$A_PID"
        stop "$B_PID"
        done
        ;;
      throughput)
        rcli FLUSHALL >/dev/null
        node a "$REDIS_BROKER
$ROUTE
[api]
max_groups_per_publish = $NGROUPS"
        A_PORT=$NODE_PORT A_PID=$NODE_PID
        node b "$REDIS_BROKER
$ROUTE"
        B_PORT=$NODE_PORT B_PID=$NODE_PID
        node c "$REDIS_BROKER
$ROUTE"
        C_PORT=$NODE_PORT C_PID=$NODE_PID
        # A member in a group of its own on node C makes C a subscriber of Redis for that one
        # group only, so CLIENT LIST tells C's subscriber connection apart.
        python3 "$ROOT/bench/redis_throughput.py" --subscribe "ws://127.0.0.1:$B_PORT" --groups "$NGROUPS" \
          --lone "ws://127.0.0.1:$C_PORT/room/lone/" \
          --publish "http://127.0.0.1:$A_PORT/api/publish" --requests "$PUBLISH_REQS" --size "$SIZE" \
          --redis-port "$REDIS_PORT" --pids "$A_PID,$B_PID,$C_PID,$REDIS_PID" \
          >"$OUT/throughput.wsgate.$rep.json" 2>>"$OUT/progress.log" ||
          echo "   (exit $?: not clean, see $OUT/throughput.wsgate.$rep.json)" >&2
        tail -1 "$OUT/throughput.wsgate.$rep.json" >&2
        stop "$A_PID"
        stop "$B_PID"
        stop "$C_PID"
        ;;
      *) echo "unknown figure $fig (fanout throughput)" >&2; exit 2 ;;
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
print("| figure | value | clean |\n|---|---|---|")
mem, red, cpu = runs("fanout-memory"), runs("fanout-redis"), runs("fanout-redis-cpu")
for name, rs in (("1 node, memory broker", mem), ("2 nodes + Redis", red)):
    for r in rs:
        print(f"| fan-out to {get(r,'subs'):,} at {get(r,'rate'):g}/s, {name}: deliveries/s, p50 / p99 ms, publish request p50 ms, publishes/s achieved, machine busy % | {get(r,'deliveries_per_s'):,.0f}, {get(r,'latency_us.p50')/1000:.2f} / {get(r,'latency_us.p99')/1000:.1f}, {get(r,'publish.request_latency_us.p50')/1000:.2f}, {get(r,'publish.achieved_rate'):.0f}, {get(r,'cpu.machine_busy_pct'):.0f} | {r.get('ok')} |")
for r in mem:
    print(f"| 1 node, {get(r,'subs'):,} at {get(r,'rate'):g}/s: server CPU s | {get(r,'cpu.server_cpu_s'):.2f} | |")
for c in cpu:
    print(f"| 2 nodes + Redis, {c['subs']:,} at {c['rate']:g}/s: CPU s node A (publishes), node B, Redis | {c['node_a_cpu_s']:.2f}, {c['node_b_cpu_s']:.2f}, {c['redis_cpu_s']:.2f} | |")
for subs, rate in sorted({(get(r, 'subs'), get(r, 'rate')) for r in mem}):
    m = [get(r, 'latency_us.p50') for r in mem if (get(r, 'subs'), get(r, 'rate')) == (subs, rate)]
    x = [get(r, 'latency_us.p50') for r in red if (get(r, 'subs'), get(r, 'rate')) == (subs, rate)]
    if m and x:
        print(f"| p50 added by the Redis path, {subs:,} at {rate:g}/s | {(statistics.mean(x) - statistics.mean(m))/1000:+.2f} ms (target <= 2 ms) | |")
for r in runs("throughput"):
    print(f"| {r['requests']} publishes to {r['groups']:,} groups each through Redis: publications/s | {r['publications_per_s']:,.0f} | {r.get('ok')} |")
    print(f"| Redis CPU per publication (us), node A CPU per publication (us) | {r['redis_cpu_us_per_pub']:.1f}, {r['node_a_cpu_us_per_pub']:.1f} | |")
    print(f"| deliveries on node B (one member per group) | {r['deliveries']:,} of {r['expected_deliveries']:,} | |")
    print(f"| node C (one member, in another group): Redis subscriptions, bytes it received from Redis during the run | {r['lone_node_subscriptions']}, {r['lone_node_bytes_during_run']:,} (node B, the members' node: {r['member_node_bytes_during_run']:,}) | |")
EOF
