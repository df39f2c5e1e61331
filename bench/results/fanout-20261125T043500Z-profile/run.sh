#!/usr/bin/env bash
# usage: run.sh SERVERBIN CLIENTBIN OUTDIR [msgs]
set -u
SRV=$1; CLI=$2; OUT=$3; MSGS=${4:-1500}
mkdir -p $OUT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p /sys/fs/cgroup/cpu/wsgate-ab; echo 262144 >/sys/fs/cgroup/cpu/wsgate-ab/cpu.shares; echo $$ >/sys/fs/cgroup/cpu/wsgate-ab/cgroup.procs
exec 9>/tmp/wsgate-bench.lock; flock 9
nice -n ${NICE:-0} env WSGATE_SERVER__MAX_CONNECTIONS=30000 WSGATE_LOG=warn $SRV serve --listen 127.0.0.1:$PORT 2>$OUT/srv.log &
SP=$!
for _ in $(seq 100); do curl -fs http://127.0.0.1:$PORT/healthz >/dev/null 2>&1 && break; sleep 0.05; done
nice -n ${NICE:-0} $CLI bench fanout --url ws://127.0.0.1:$PORT/room/fanout/ --publish-url http://127.0.0.1:$PORT/api/groups/room:fanout/messages --conns 10000 --msgs $MSGS --rate 100 --concurrency 200 --pid $SP --progress 0 > $OUT/bench.json 2>$OUT/bench.err &
BP=$!
# wait until publishing starts: connect phase ~3-4 s
sleep 6
perf record -a -g -e cpu-clock -F 999 -o $OUT/perf.data -- sleep 5 2>$OUT/perf.err
perf stat -a -e 'syscalls:sys_enter_writev,syscalls:sys_enter_read,syscalls:sys_enter_recvfrom,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex,context-switches,sched:sched_wakeup,irq_vectors:call_function_single_entry,irq_vectors:reschedule_entry' --per-thread -p $SP,$BP -- sleep 3 2>$OUT/stat.txt
wait $BP
kill $SP; wait $SP 2>/dev/null
echo SERVER=$SP CLIENT=$BP > $OUT/pids
python3 /work/wt-fanout/bench/ab_summary.py --line $OUT/bench.json
