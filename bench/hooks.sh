#!/usr/bin/env bash
# Forwarded client messages through on_message to a trivial backend (bench/hook_backend.mjs,
# node http, keep-alive), side by side with wsgate's own echo route in the same run: messages/s,
# the p50/p99 round trip and the latency the backend hop adds, CPU of wsgate and of the backend,
# and how busy the machine was. Each figure runs against a fresh wsgate on a free port.
#
#   bench/hooks.sh                       # table on stdout, JSON in bench/results/hooks-<time>/
#
# Settings (environment): CONNS (50), INFLIGHT (1; messages each connection keeps in flight,
# at most hooks.max_in_flight = 64 here), SECONDS_ (5), WARMUP (1), SIZE (64),
# WSGATE_BIN (default: a release build of this tree).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
CONNS="${CONNS:-50}"
INFLIGHT="${INFLIGHT:-1}"
SECS="${SECONDS_:-5}"
WARMUP="${WARMUP:-1}"
SIZE="${SIZE:-64}"
if [ -z "${WSGATE_BIN:-}" ]; then cargo build --release --quiet; fi
BIN="${WSGATE_BIN:-$ROOT/target/release/wsgate}"
OUT="${OUT:-$ROOT/bench/results/hooks-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing listens on $1" >&2; exit 1; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

bport="$(free_port)"
node bench/hook_backend.mjs "$bport" 2>/dev/null &
bpid=$!; pids+=("$bpid")
wait_port "$bport"

# run NAME PATH: a fresh wsgate, the echo bench against PATH, the backend's CPU over the run.
run() {
  local name="$1" path="$2" port wpid b0 b1 t0 t1
  port="$(free_port)"
  cat >"$work/wsgate.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
[hooks]
max_in_flight = 64
[[route]]
path = "/fwd/{x}"
group = "fwd:{x}"
on_message = "forward"
presence = false
hooks = { on_connect = "http://127.0.0.1:$bport/connect", on_message = "http://127.0.0.1:$bport/message" }
TOML
  "$BIN" serve --config "$work/wsgate.toml" >"$OUT/$name-server.log" 2>&1 &
  wpid=$!
  wait_port "$port"
  s0="$(curl -s "http://127.0.0.1:$bport/stats")"
  b0="$(cpu_ticks "$bpid")"; t0="$(date +%s.%N)"
  "$BIN" bench echo --url "ws://127.0.0.1:$port$path" -n "$CONNS" --inflight "$INFLIGHT" \
    --duration "$SECS" --warmup "$WARMUP" --size "$SIZE" --pid "$wpid" >"$OUT/$name.json" || true
  b1="$(cpu_ticks "$bpid")"; t1="$(date +%s.%N)"
  s1="$(curl -s "http://127.0.0.1:$bport/stats")"
  python3 -c "import json,sys; d=json.load(open('$OUT/$name.json')); a=json.loads('$s0'); b=json.loads('$s1'); d['backend_cpu_pct_of_core_whole_run']=round(($b1-$b0)/$(getconf CLK_TCK)/($t1-$t0)*100,1); d['backend_connections']=b['connections']-a['connections']-1; d['backend_requests']=b['requests']-a['requests']-1; json.dump(d,open('$OUT/$name.json','w'))"
  kill "$wpid"; wait "$wpid" 2>/dev/null || true
}

run echo /ws/echo
run forward /fwd/bench
run echo-again /ws/echo
run forward-again /fwd/bench

python3 - "$OUT" "$CONNS" "$INFLIGHT" "$SIZE" <<'PY'
import json, sys
out, conns, inflight, size = sys.argv[1:]
rows = []
for name in ["echo", "forward", "echo-again", "forward-again"]:
    d = json.load(open(f"{out}/{name}.json"))
    lat = d["latency_us"]
    rows.append((name, d["msgs_per_s"], lat["p50"], lat["p99"], d["cpu"]["server_pct_of_core"],
                 d.get("server_cpu_us_per_msg"), d.get("backend_cpu_pct_of_core_whole_run"),
                 d["cpu"]["client_pct_of_core"], d["cpu"]["machine_busy_pct"], d["lost"] + d["corrupt"] + d["unexpected"],
                 f'{d["backend_requests"]} / {d["backend_connections"]}'))
print(f"{conns} connections x {inflight} in flight, {size} B messages")
print("| run | msgs/s | p50 µs | p99 µs | wsgate CPU % | wsgate µs/msg | backend CPU % | client CPU % | machine busy % | lost | backend requests / TCP connections |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(str(x) for x in r) + " |")
e = [r for r in rows if r[0].startswith("echo")]
f = [r for r in rows if r[0].startswith("forward")]
avg = lambda xs: sum(xs) / len(xs)
print(f"\nforwarded / echo msgs/s: {avg([r[1] for r in f]) / avg([r[1] for r in e]):.2f}x; "
      f"added p50 {avg([r[2] for r in f]) - avg([r[2] for r in e]):.0f} µs, added p99 {avg([r[3] for r in f]) - avg([r[3] for r in e]):.0f} µs")
PY
