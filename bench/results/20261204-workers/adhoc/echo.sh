#!/usr/bin/env bash
# usage: echo.sh LABEL BIN WORKERS [extra env...]; prints summary line
set -u
LABEL=$1; BIN=$2; W=$3; shift 3
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
if [ "$BIN" = node ]; then
  ${SPIN:-} node /work/main/bench/peers/server.js echo $PORT >/tmp/ex/node.out 2>&1 & SP=$!
  P=/; sleep 0.6
else
  ${SPIN:-} env "$@" WSGATE_SERVER__MAX_CONNECTIONS=30000 WSGATE_SERVER__WORKERS=$W WSGATE_LOG=warn $BIN serve --listen 127.0.0.1:$PORT 2>/tmp/ex/ws.log & SP=$!
  P=/ws/echo; sleep 0.4
fi
${CPIN:-} /work/main/target/release/wsgate bench echo --url ws://127.0.0.1:$PORT$P --conns ${CONNS:-100} --duration ${DUR:-5} --warmup 1 --size 64 --pid $SP --progress 0 ${CLIENT_ARGS:-} 2>/dev/null | tail -1 > /tmp/ex/$LABEL.json
kill $SP; wait $SP 2>/dev/null
python3 - "$LABEL" <<'PY'
import json,sys
d=json.load(open(f"/tmp/ex/{sys.argv[1]}.json"))
def g(*ks):
    x=d
    for k in ks:
        x=x.get(k,{}) if isinstance(x,dict) else {}
    return x
print(sys.argv[1], {k:v for k,v in d.items() if not isinstance(v,(dict,list))})
print("  ", d.get("latency_us") or d.get("rtt_us") or "", d.get("cpu",""))
PY
