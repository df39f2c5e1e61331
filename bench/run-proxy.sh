#!/usr/bin/env bash
# The proxy figures of issues 4 and 5: one wsgate hub (echo route /ws/echo, defaults) reached
# directly, through a second wsgate in proxy mode, through nginx (the story's config) and through
# HAProxy, interleaved in one run. Every proxy runs one worker/thread. Loopback only, bounded.
#
#   bench/run-proxy.sh                      # all figures; tables into bench/results/proxy-<time>/tables.md
#   bench/run-proxy.sh echo handshake       # only some (echo idle handshake hold profile syscalls)
#
# Settings (environment): ECHO_CONNS (100), ECHO_SECONDS (5), IDLE_CONNS (5000, keep <= 9000: a
# proxy holds 2 fds per tunnel and open files are capped at 20,000), IDLE_HOLD (10), HS_TOTAL
# (20000), HS_WORKERS (50), LONG_CONNS (10), LONG_HOLD (70), HOLD_BACKEND_PING (0s), SIZE (64),
# OUT (results folder; reuse one to redo some figures), WSGATE_BIN (the wsgate to measure, not built; default: a release build of this tree),
# BASE_BIN (another wsgate binary, e.g. a
# build of main: adds the target wsgate-base, that binary as the proxy, for before/after in one
# run).
# `profile` (not in the default list unless PROFILE=1) records `perf record -e cpu-clock -g` of
# the wsgate proxy under the echo figure and keeps the top symbols.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=SCRIPTDIR/../scripts/lib.sh
source "$ROOT/scripts/lib.sh"
# shellcheck source=SCRIPTDIR/proxies.sh
source "$ROOT/bench/proxies.sh"
cd "$ROOT"
SIZE="${SIZE:-64}"
ECHO_CONNS="${ECHO_CONNS:-100}"
ECHO_SECONDS="${ECHO_SECONDS:-5}"
IDLE_CONNS="${IDLE_CONNS:-5000}"
IDLE_HOLD="${IDLE_HOLD:-10}"
HS_TOTAL="${HS_TOTAL:-20000}"
HS_WORKERS="${HS_WORKERS:-50}"
LONG_CONNS="${LONG_CONNS:-10}"
LONG_HOLD="${LONG_HOLD:-70}"
FIGURES=("$@")
if [ ${#FIGURES[@]} -eq 0 ]; then
  FIGURES=(echo idle handshake hold)
  [ "${PROFILE:-0}" = 1 ] && FIGURES+=(profile)
fi
# wsgate runs twice: with its default tunnels (io_uring here) and with proxy.tunnel_io = "epoll".
TARGETS=(direct wsgate-epoll wsgate nginx haproxy)
[ -n "${BASE_BIN:-}" ] && TARGETS=(direct wsgate-base wsgate-epoll wsgate nginx haproxy)

bench_setup proxy
ulimit -n "$(ulimit -Hn)"

# --- peers: Debian nginx and haproxy, installed once; their system services never left running.
if ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null; then
  echo "installing nginx and haproxy (Debian packages)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends nginx haproxy >"$OUT/apt.log" 2>&1 ||
    { apt-get update >>"$OUT/apt.log" 2>&1 && apt-get install -y --no-install-recommends nginx haproxy >>"$OUT/apt.log" 2>&1; }
fi
stop_system_services() {
  for s in nginx haproxy; do
    service "$s" stop >/dev/null 2>&1 || true
  done
}
stop_system_services
nginx -v 2>"$OUT/versions.txt"
haproxy -v | head -1 >>"$OUT/versions.txt"

"$BIN" --version >>"$OUT/versions.txt" 2>/dev/null || true

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT


# start_backend [PING]: the hub, defaults (2 workers here, 25 s pings), echo route /ws/echo.
# PING sets websocket.ping_interval ("0s": the backend never pings, like the story's app server).
# Sets BACK, BACK_PID.
start_backend() {
  BACK="$(free_port)"
  WSGATE_WEBSOCKET__PING_INTERVAL="${1:-25s}" WSGATE_SERVER__MAX_CONNECTIONS=19000 WSGATE_LOG=warn \
    "$BIN" serve --listen "127.0.0.1:$BACK" 2>>"$OUT/backend.log" &
  BACK_PID=$!
  PIDS+=("$BACK_PID")
  wait_ws "$BACK" /ws/echo
}

# start_proxy WHO: WHO in direct|wsgate|nginx|haproxy in front of $BACK on a free port.
# Sets PORT and PROXY_PID (the process doing the proxying: nginx's worker, not its master).
start_proxy() {
  local who="$1" dir
  if [ "$who" = direct ]; then
    PORT="$BACK"
    PROXY_PID="$BACK_PID"
    return 0
  fi
  PORT="$(free_port)"
  dir="$OUT/$who.$PORT"
  mkdir -p "$dir"
  case "$who" in
    wsgate | wsgate-base | wsgate-epoll)
      local bin="$BIN" io=auto
      [ "$who" = wsgate-base ] && bin="$BASE_BIN"
      [ "$who" = wsgate-epoll ] && io=epoll
      wsgate_proxy_conf "$dir" "$PORT" "$BACK"
      WSGATE_PROXY__TUNNEL_IO=$io WSGATE_LOG=warn "$bin" serve --config "$dir/wsgate.toml" 2>>"$OUT/$who-proxy.log" &
      PROXY_PID=$!
      PIDS+=("$PROXY_PID")
      ;;
    nginx)
      start_nginx "$dir" "$PORT" "$BACK"
      PIDS+=("$NGINX_MASTER")
      PROXY_PID="$NGINX_WORKER"
      ;;
    haproxy)
      cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 9500
defaults
    mode http
    maxconn 9500
    timeout client 30s
    timeout server 30s
    timeout connect 5s
frontend fe
    bind 127.0.0.1:$PORT
    default_backend websocket
backend websocket
    server s1 127.0.0.1:$BACK
EOF
      haproxy -db -f "$dir/haproxy.cfg" 2>>"$OUT/haproxy.log" &
      PROXY_PID=$!
      PIDS+=("$PROXY_PID")
      ;;
  esac
  wait_ws "$PORT" /ws/echo
}

# profile_proxy PREFIX DELAY SECONDS BENCH-ARGS...: a fresh backend and wsgate proxy, the bench
# run through it (a literal \$PORT in the arguments is the proxy's port), and after DELAY s a
# `perf record` of the proxy for SECONDS s, kept as PREFIX-{dso,top,top-children,top-user,
# top-user-children}.txt.
profile_proxy() {
  local prefix="$1" delay="$2" secs="$3" data
  shift 3
  start_backend
  start_proxy wsgate
  local args=("${@//\$PORT/$PORT}")
  "$BIN" bench "${args[@]}" --size "$SIZE" --pid "$PROXY_PID" >"$OUT/profile-$1.wsgate.json" 2>/dev/null &
  local bp=$!
  sleep "$delay"
  data="$OUT/$prefix.data"
  perf record -q -e cpu-clock -g -p "$PROXY_PID" -o "$data" -- sleep "$secs" >/dev/null 2>&1 || true
  wait "$bp" || true
  report() {
    local name="$1" lines="$2"
    shift 2
    perf report -i "$data" --stdio "$@" 2>/dev/null | grep -E '^ +[0-9.]+%' | head -"$lines" >"$OUT/$prefix-$name.txt" || true
  }
  report dso 10 --no-children --sort dso
  report top 30 --no-children --sort symbol
  report top-children 40 --children --sort symbol
  report top-user 30 --no-children --sort symbol --dsos wsgate,libc.so.6
  report top-user-children 40 --children --sort symbol --dsos wsgate
  rm -f "$data"
  stop "$PROXY_PID" "$BACK_PID"
}

# stop PID...: TERM, wait.
stop() {
  for p in "$@"; do kill "$p" 2>/dev/null || true; done
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
}

stop_proxy() {
  local who="$1"
  case "$who" in
    direct) ;;
    nginx) stop "$NGINX_MASTER" ;;
    *) stop "$PROXY_PID" ;;
  esac
}

# bench NAME ARGS...: one wsgate bench run through the current proxy, JSON kept as NAME.json.
bench() {
  local name="$1"
  shift
  bench_json "$name" "$PROXY_PID" "$@"
}

for fig in "${FIGURES[@]}"; do
  case "$fig" in
    echo | idle | handshake)
      for who in "${TARGETS[@]}"; do
        start_backend
        start_proxy "$who"
        url="ws://127.0.0.1:$PORT/ws/echo"
        case "$fig" in
          echo) bench "echo.$who" echo --url "$url" --conns "$ECHO_CONNS" --duration "$ECHO_SECONDS" --warmup 1 ;;
          idle) bench "idle.$who" idle --url "$url" --conns "$IDLE_CONNS" --hold "$IDLE_HOLD" --concurrency 200 --timeout 30 ;;
          handshake) bench "handshake.$who" handshake --url "$url" --total "$HS_TOTAL" --concurrency "$HS_WORKERS" --duration 60 ;;
        esac
        stop_proxy "$who"
        stop "$BACK_PID"
      done
      ;;
    hold)
      # All four at once against one backend that does not ping (as the story's app server: with
      # the hub's own 25 s pings flowing, no proxy ever sees a silent tunnel and none cuts it);
      # progress every second to time any cut. HOLD_BACKEND_PING=25s shows that case.
      start_backend "${HOLD_BACKEND_PING:-0s}"
      hold_pids=()
      for who in "${TARGETS[@]}"; do
        start_proxy "$who"
        echo "== hold.$who: wsgate bench idle --conns $LONG_CONNS --hold $LONG_HOLD (concurrently)" >&2
        "$BIN" bench idle --url "ws://127.0.0.1:$PORT/ws/echo" --conns "$LONG_CONNS" --hold "$LONG_HOLD" \
          --size "$SIZE" --pid "$PROXY_PID" --progress 1 >"$OUT/hold.$who.json" 2>"$OUT/hold.$who.progress" &
        hold_pids+=($!)
        eval "HOLD_PROXY_${who//-/_}=$PROXY_PID"
        [ "$who" = nginx ] && HOLD_NGINX_MASTER="$NGINX_MASTER"
      done
      for p in "${hold_pids[@]}"; do wait "$p" || true; done
      stop "$HOLD_PROXY_wsgate" ${HOLD_PROXY_wsgate_base:+"$HOLD_PROXY_wsgate_base"} "$HOLD_PROXY_haproxy" "$HOLD_NGINX_MASTER" "$BACK_PID"
      ;;
    profile)
      # perf of the wsgate proxy under the echo and the handshake figures (not part of the tables).
      profile_proxy perf 1.5 5 echo --url "ws://127.0.0.1:\$PORT/ws/echo" --conns "$ECHO_CONNS" --duration 8 --warmup 1
      profile_proxy perf-hs 1 4 handshake --url "ws://127.0.0.1:\$PORT/ws/echo" --total 60000 \
        --concurrency "$HS_WORKERS" --duration 8
      echo "== profile: top symbols in $OUT/perf-*.txt and perf-hs-*.txt" >&2
      ;;
    syscalls)
      # Syscalls per echoed round trip in each proxy (perf stat over 3 s of the echo figure).
      for who in wsgate nginx haproxy; do
        start_backend
        start_proxy "$who"
        "$BIN" bench echo --url "ws://127.0.0.1:$PORT/ws/echo" --conns "$ECHO_CONNS" --duration 5 --warmup 1 \
          --size "$SIZE" --pid "$PROXY_PID" >"$OUT/syscalls-echo.$who.json" 2>/dev/null &
        bp=$!
        sleep 2
        perf stat -x, -e 'raw_syscalls:sys_enter,syscalls:sys_enter_read,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_enter_readv,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_ctl' \
          -p "$PROXY_PID" -o "$OUT/syscalls.$who.csv" -- sleep 3 >/dev/null 2>&1 || true
        wait "$bp" || true
        stop_proxy "$who"
        stop "$BACK_PID"
      done
      python3 - "$OUT" <<'PY' | tee "$OUT/syscalls.md"
import json, sys, os
d = sys.argv[1]
print("| proxy | syscalls per round trip | read/recv | write/writev/send | epoll_wait | epoll_ctl |")
print("|---|---|---|---|---|---|")
for who in ["wsgate", "nginx", "haproxy"]:
    try:
        c = {}
        for line in open(os.path.join(d, f"syscalls.{who}.csv")):
            f = line.strip().split(",")
            if len(f) > 2 and f[0].replace(".", "").isdigit():
                c[f[2].split(":")[-1]] = float(f[0])
        mps = json.load(open(os.path.join(d, f"syscalls-echo.{who}.json")))["msgs_per_s"]
        n = mps * 3
        g = lambda *k: sum(c.get(x, 0) for x in k) / n
        print(f"| {who} | {g('sys_enter'):.2f} | {g('sys_enter_read','sys_enter_recvfrom','sys_enter_readv'):.2f} | "
              f"{g('sys_enter_write','sys_enter_writev','sys_enter_sendto'):.2f} | {g('sys_enter_epoll_wait'):.2f} | {g('sys_enter_epoll_ctl'):.2f} |")
    except Exception as e:
        print(f"| {who} | ({e}) | | | | |")
PY
      ;;
    *) echo "unknown figure $fig (echo idle handshake hold profile syscalls)" >&2; exit 2 ;;
  esac
done
stop_system_services

python3 "$ROOT/bench/proxy_tables.py" "$OUT" >"$OUT/tables.md"
cat "$OUT/tables.md"
