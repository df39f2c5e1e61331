#!/usr/bin/env bash
# The floor of a WebSocket relay on this box (issue 4's 8 µs question): the same echo figure as
# bench/run-proxy.sh echo (100 connections, 1 message of 64 bytes in flight each, a wsgate hub as
# the echo backend) through the simplest possible relays, interleaved with direct, the wsgate
# proxy and nginx. See bench/floor/README.md.
#
#   bench/floor/run.sh                 # everything; tables into bench/results/floor-<time>/tables.md
#   bench/floor/run.sh echo            # only some parts: echo inflight4 sqpoll syscalls syscalls4
#   bench/floor/run.sh profile         # perf record of relay_epoll and relay_uring (not default)
#
# Settings (environment): REPS (3), SECONDS_ (5, seconds measured per run), TARGETS (the list
# below), OUT. Each repetition (and the syscall pass) takes /tmp/wsgate-bench.lock by itself, so
# other people's measurements can run between them, never during them.
set -euo pipefail

FLOOR="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$FLOOR/../.." && pwd)"
# shellcheck source=SCRIPTDIR/../../scripts/lib.sh
source "$ROOT/scripts/lib.sh"
# shellcheck source=SCRIPTDIR/../proxies.sh
source "$ROOT/bench/proxies.sh"
cd "$ROOT"
REPS="${REPS:-3}"
SECS="${SECONDS_:-5}"
LOCK=/tmp/wsgate-bench.lock
PARTS=("$@")
[ ${#PARTS[@]} -eq 0 ] && PARTS=(echo inflight4 sqpoll syscalls syscalls4)
# uring-* are relay_uring's ring setups (see relay_uring.c); uring = uring-defer.
read -r -a TARGETS <<<"${TARGETS:-direct epoll uring-defer uring-coop uring-plain wsgate nginx}"

OUT="${OUT:-$ROOT/bench/results/floor-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
echo "results in $OUT" >&2
ulimit -n "$(ulimit -Hn)"

# liburing-dev (Debian: liburing 2.3) for relay_uring.
[ -e /usr/include/liburing.h ] || apt-get install -y --no-install-recommends liburing-dev >"$OUT/apt.log" 2>&1
command -v nginx >/dev/null || apt-get install -y --no-install-recommends nginx >>"$OUT/apt.log" 2>&1
service nginx stop >/dev/null 2>&1 || true
BUILD="$(mktemp -d)"
gcc -O2 -Wall -o "$BUILD/relay_epoll" "$FLOOR/relay_epoll.c"
gcc -O2 -Wall -o "$BUILD/relay_uring" "$FLOOR/relay_uring.c" -luring
cargo build --release --quiet
BIN="$ROOT/target/release/wsgate"
{ uname -r; gcc --version | head -1; nginx -v 2>&1; "$BIN" --version 2>/dev/null || true; } >"$OUT/versions.txt"

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$BUILD"
}
trap cleanup EXIT


stop() {
  for p in "$@"; do kill "$p" 2>/dev/null || true; done
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
}

# The echo backend: a fresh wsgate hub per run, defaults (2 workers), as in run-proxy.sh.
start_backend() {
  BACK="$(free_port)"
  WSGATE_SERVER__MAX_CONNECTIONS=19000 WSGATE_LOG=warn "$BIN" serve --listen "127.0.0.1:$BACK" 2>>"$OUT/backend.log" &
  BACK_PID=$!
  PIDS+=("$BACK_PID")
  wait_ws "$BACK"
}

# start_relay WHO: sets PORT, RELAY_PID (the process doing the relaying) and STOP_PID.
start_relay() {
  local who="$1" dir
  if [ "$who" = direct ]; then
    PORT="$BACK" RELAY_PID="$BACK_PID" STOP_PID=""
    return 0
  fi
  PORT="$(free_port)"
  case "$who" in
    epoll)
      "$BUILD/relay_epoll" "$PORT" "127.0.0.1:$BACK" 2>>"$OUT/relay.log" &
      RELAY_PID=$! ;;
    uring-*)
      "$BUILD/relay_uring" "$PORT" "127.0.0.1:$BACK" "${who#uring-}" 2>>"$OUT/relay.log" &
      RELAY_PID=$! ;;
    wsgate)
      dir="$OUT/wsgate.$PORT"
      mkdir -p "$dir"
      wsgate_proxy_conf "$dir" "$PORT" "$BACK"
      WSGATE_LOG=warn "$BIN" serve --config "$dir/wsgate.toml" 2>>"$OUT/wsgate-proxy.log" &
      RELAY_PID=$! ;;
    nginx)
      dir="$OUT/nginx.$PORT"
      mkdir -p "$dir"
      start_nginx "$dir" "$PORT" "$BACK"
      STOP_PID="$NGINX_MASTER"
      PIDS+=("$STOP_PID")
      RELAY_PID="$NGINX_WORKER"
      wait_ws "$PORT"
      return 0 ;;
    *) echo "unknown target $who" >&2; exit 2 ;;
  esac
  STOP_PID="$RELAY_PID"
  PIDS+=("$RELAY_PID")
  wait_ws "$PORT"
}

# cpu_ticks PID: "utime stime" (clock ticks, all threads) from /proc/PID/stat.
cpu_ticks() { awk '{ sub(/.*\) /, ""); print $12, $13 }' "/proc/$1/stat"; }

# one NAME WHO [bench args...]: fresh backend + relay, one wsgate bench echo run, the JSON kept as
# NAME.json with the relay's user/sys ticks over the run in NAME.ticks.
one() {
  local name="$1" who="$2"
  shift 2
  start_backend
  start_relay "$who"
  local t0 t1
  t0="$(cpu_ticks "$RELAY_PID")"
  echo "== $name: $who" >&2
  "$BIN" bench echo --url "ws://127.0.0.1:$PORT/ws/echo" --conns 100 --duration "$SECS" --warmup 1 \
    --size 64 --pid "$RELAY_PID" "$@" >"$OUT/$name.json" 2>>"$OUT/progress.log" ||
    echo "   (exit $?: not clean, see $OUT/$name.json)" >&2
  t1="$(cpu_ticks "$RELAY_PID")"
  echo "$t0 $t1" >"$OUT/$name.ticks"
  [ -n "$STOP_PID" ] && stop "$STOP_PID"
  stop "$BACK_PID"
}

# syscalls WHO: perf stat of the relay's syscalls (and io_uring requests) for exactly the life of
# a 3 s echo run without warm-up, so the count divides by that run's echoed messages (the 100
# connects and upgrades add ~1,000 syscalls to ~100,000+ round trips: under 1 %).
# syscalls WHO [PREFIX [bench args...]]: files PREFIX.WHO.{csv,json} (PREFIX: sys).
syscalls() {
  local who="$1" pre="${2:-sys}"
  shift 2 || shift $#
  start_backend
  start_relay "$who"
  echo "== $pre.$who: perf stat" >&2
  perf stat -x, -o "$OUT/$pre.$who.csv" -p "$RELAY_PID" \
    -e 'raw_syscalls:sys_enter,syscalls:sys_enter_read,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_ctl,syscalls:sys_enter_io_uring_enter,io_uring:io_uring_complete,io_uring:io_uring_poll_arm,io_uring:io_uring_queue_async_work,context-switches' \
    -- "$BIN" bench echo --url "ws://127.0.0.1:$PORT/ws/echo" --conns 100 --duration 3 --warmup 0 \
    --size 64 --pid "$RELAY_PID" "$@" >"$OUT/$pre.$who.json" 2>/dev/null || true
  [ -n "$STOP_PID" ] && stop "$STOP_PID"
  stop "$BACK_PID"
}

exec 9>"$LOCK"
for part in "${PARTS[@]}"; do
  case "$part" in
    echo | inflight4)
      for r in $(seq "$REPS"); do
        flock 9
        for who in "${TARGETS[@]}"; do
          if [ "$part" = echo ]; then
            one "echo.$who.$r" "$who"
          else
            case "$who" in uring-coop | uring-plain) continue ;; esac
            one "inflight4.$who.$r" "$who" --inflight 4
          fi
        done
        flock -u 9
      done ;;
    sqpoll)
      # Reported only: the SQ thread spins for sq_thread_idle (1 s) after each submission, so it
      # holds a core; its CPU is in /proc/PID/stat (it is a thread of the relay).
      flock 9
      for r in $(seq "$REPS"); do one "echo.uring-sqpoll.$r" uring-sqpoll; done
      flock -u 9 ;;
    syscalls)
      flock 9
      for who in epoll uring-defer uring-coop uring-plain uring-sqpoll wsgate nginx; do syscalls "$who" sys; done
      flock -u 9 ;;
    syscalls4)
      # The same with 4 messages in flight per connection: how many messages each read carries.
      flock 9
      for who in epoll uring-defer wsgate nginx; do syscalls "$who" sys4 --inflight 4; done
      flock -u 9 ;;
    profile)
      # Not in the default list: where the relay's CPU goes (perf record, cpu-clock, 3 s inside a
      # 5 s echo run), top symbols self and with children.
      flock 9
      for who in epoll uring-defer; do
        start_backend
        start_relay "$who"
        "$BIN" bench echo --url "ws://127.0.0.1:$PORT/ws/echo" --conns 100 --duration 5 --warmup 1 \
          --size 64 --pid "$RELAY_PID" >"$OUT/profile.$who.json" 2>/dev/null &
        bp=$!
        sleep 2
        perf record -q -e cpu-clock -g -p "$RELAY_PID" -o "$OUT/perf.$who.data" -- sleep 3 >/dev/null 2>&1 || true
        wait "$bp" || true
        [ -n "$STOP_PID" ] && stop "$STOP_PID"
        stop "$BACK_PID"
        perf report -i "$OUT/perf.$who.data" --stdio --no-children --sort symbol 2>/dev/null |
          grep -E '^ +[0-9.]+%' | head -40 >"$OUT/perf-self.$who.txt" || true
        perf report -i "$OUT/perf.$who.data" --stdio --children --sort symbol 2>/dev/null |
          grep -E '^ +[0-9.]+%' | head -60 >"$OUT/perf-children.$who.txt" || true
        rm -f "$OUT/perf.$who.data"
      done
      flock -u 9 ;;
    *) echo "unknown part $part (echo inflight4 sqpoll syscalls syscalls4 profile)" >&2; exit 2 ;;
  esac
done

python3 "$FLOOR/tables.py" "$OUT" | tee "$OUT/tables.md"
