#!/usr/bin/env bash
# usage: plain.sh SERVERBIN CLIENTBIN OUTDIR [msgs] [extra server env]
set -u
SRV=$1; CLI=$2; OUT=$3; MSGS=${4:-500}
mkdir -p $OUT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p /sys/fs/cgroup/cpu/wsgate-ab; echo 262144 >/sys/fs/cgroup/cpu/wsgate-ab/cpu.shares; echo $$ >/sys/fs/cgroup/cpu/wsgate-ab/cgroup.procs
exec 9>/tmp/wsgate-bench.lock; flock 9
nice -n ${NICE:-0} env ${SRVENV:-} WSGATE_SERVER__MAX_CONNECTIONS=30000 WSGATE_LOG=warn $SRV serve --listen 127.0.0.1:$PORT 2>$OUT/srv.log &
SP=$!
for _ in $(seq 100); do curl -fs http://127.0.0.1:$PORT/healthz >/dev/null 2>&1 && break; sleep 0.05; done
nice -n ${NICE:-0} $CLI bench fanout --url ws://127.0.0.1:$PORT/room/fanout/ --publish-url http://127.0.0.1:$PORT/api/groups/room:fanout/messages --conns ${CONNS:-10000} --msgs $MSGS --rate ${RATE:-100} --concurrency 200 --pid $SP --progress 0 > $OUT/bench.json 2>$OUT/bench.err
kill $SP; wait $SP 2>/dev/null
python3 /work/wt-fanout/bench/ab_summary.py --line $OUT/bench.json
