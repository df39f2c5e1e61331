#!/usr/bin/env bash
# Profiles wsgate under one bench figure with `perf record` and prints the top symbols
# (self time) and `perf stat` counters for the server process.
#
#   bench/profile.sh echo|room|fanout|handshake [extra wsgate bench args...]
#
# Hardware counters (instructions, cycles) are not supported in this VM; task-clock and
# context switches are. Output: bench/results/profile-<figure>-<UTC time>/{perf.data,report.txt,stat.txt,bench.json}.
# Needs `perf` (Debian: linux-perf); check with `perf stat -e instructions true`.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
FIG="${1:?usage: bench/profile.sh echo|room|fanout|handshake [args]}"
shift
OUT="$ROOT/bench/results/profile-$FIG-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
cargo build --release --quiet
BIN="$ROOT/target/release/wsgate"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
WSGATE_SERVER__MAX_CONNECTIONS=30000 WSGATE_LOG=warn "$BIN" serve --listen "127.0.0.1:$PORT" 2>"$OUT/wsgate.log" &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break; sleep 0.05; done

case "$FIG" in
  echo) ARGS=(echo --url "ws://127.0.0.1:$PORT/ws/echo" --conns 100 --duration 6 --warmup 1) ;;
  room) ARGS=(room --url "ws://127.0.0.1:$PORT/room/bench/" --conns 1000 --iterations 30 --timeout 30 --concurrency 200) ;;
  fanout) ARGS=(fanout --url "ws://127.0.0.1:$PORT/room/fanout/" --publish-url "http://127.0.0.1:$PORT/api/groups/room:fanout/messages" --conns 10000 --msgs 1000 --rate 100 --concurrency 200) ;;
  handshake) ARGS=(handshake --url "ws://127.0.0.1:$PORT/ws/echo" --total 40000 --concurrency 50 --duration 8) ;;
  *) echo "unknown figure $FIG" >&2; exit 2 ;;
esac

"$BIN" bench "${ARGS[@]}" "$@" --pid "$PID" --progress 0 >"$OUT/bench.json" &
BENCH=$!
sleep "${PERF_DELAY:-2}"   # past the connect phase (fanout: use 5)
perf stat -p "$PID" -e task-clock,context-switches,cpu-migrations,instructions,cycles -- sleep 3 2>"$OUT/stat.txt" &
perf record -F 1999 -g -p "$PID" -o "$OUT/perf.data" -- sleep 3 2>/dev/null || true
wait $! || true
wait "$BENCH" || true
{
  echo "-- by binary"
  perf report -i "$OUT/perf.data" --no-children --sort dso -g none --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -6
  echo "-- top symbols (self)"
  perf report -i "$OUT/perf.data" --no-children --sort dso,symbol -g none --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -30
} >"$OUT/report.txt" || true
echo "== $OUT"
cat "$OUT/stat.txt"
cat "$OUT/report.txt"
