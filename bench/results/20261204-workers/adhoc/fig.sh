#!/usr/bin/env bash
# usage: fig.sh FIG LABEL BIN WORKERS [env...]
set -u
FIG=$1; LABEL=$2; BIN=$3; W=$4; shift 4
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
B=/work/main/target/release/wsgate
if [ "$BIN" = node ]; then
  mode=$FIG; [ $FIG = handshake ] && mode=echo
  ${SPIN:-} node /work/main/bench/peers/server.js $mode $PORT >/tmp/ex/node.out 2>&1 & SP=$!; sleep 0.6
  R=/; E=/; PUB=http://127.0.0.1:$PORT/publish
else
  ${SPIN:-} env "$@" WSGATE_SERVER__MAX_CONNECTIONS=30000 WSGATE_SERVER__WORKERS=$W WSGATE_LOG=warn $BIN serve --listen 127.0.0.1:$PORT 2>/tmp/ex/ws.log & SP=$!; sleep 0.4
  R=/room/bench/; E=/ws/echo; PUB=http://127.0.0.1:$PORT/api/groups/room:bench/messages
fi
case $FIG in
 room) A="room --url ws://127.0.0.1:$PORT$R --conns 1000 --iterations ${ITERS:-3} --warmup-iterations 1 --timeout 30 --concurrency 200";;
 handshake) A="handshake --url ws://127.0.0.1:$PORT$E --total 20000 --concurrency 50 --duration 60";;
 fanout) A="fanout --url ws://127.0.0.1:$PORT$R --publish-url $PUB --conns ${SUBS:-10000} --msgs 500 --rate ${RATE:-100} --concurrency 200";;
esac
${CPIN:-} $B bench $A --size 64 --pid $SP --progress 0 2>/dev/null | tail -1 > /tmp/ex/$LABEL.json
kill $SP; wait $SP 2>/dev/null
python3 - "$LABEL" <<'PY'
import json,sys
n=sys.argv[1]; d=json.load(open(f"/tmp/ex/{n}.json")); c=d.get('cpu',{})
keys=[k for k in ('deliveries_per_s','handshakes_per_s','lost','ok') if k in d]
lat=d.get('latency_ms') or d.get('latency_us') or d.get('iteration_ms') or d.get('handshake_us') or {}
print(f"{n:14}", {k:d[k] for k in keys}, {k:lat.get(k) for k in ('p50','p99')}, f"srv {c.get('server_pct_of_core')} cli {c.get('client_pct_of_core')} busy {c.get('machine_busy_pct')}")
PY
