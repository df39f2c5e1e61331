#!/usr/bin/env bash
# Runs the two-node browser test: a redis-server and two `wsgate serve` nodes sharing it, each on
# a free loopback port, then `node nodes.mjs A B`; everything started here is stopped on exit.
# Env: WSGATE_BIN (default target/release/wsgate). Output: target/test-output/browser-nodes/
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

die() { echo "nodes.sh: $*" >&2; exit 1; }

"$here/install.sh"
command -v redis-server >/dev/null 2>&1 || die "redis-server is missing; scripts/install-redis.sh installs it."
bin="${WSGATE_BIN:-target/release/wsgate}"
[ -x "$bin" ] || die "the wsgate binary $bin does not exist; build it first (cargo build --release) or set WSGATE_BIN."

out="$repo/target/test-output/browser-nodes"
mkdir -p "$out"
free_port() {
    node -e 'const s = require("net").createServer(); s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });'
}
redis_port="$(free_port)"; port_a="$(free_port)"; port_b="$(free_port)"

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$out" >"$out/redis.log" 2>&1 &
pids+=($!)

cat >"$out/node.toml" <<TOML
[broker]
kind = "redis"
url = "redis://127.0.0.1:$redis_port"

[[route]]
path = "/room/{room}/"
group = "room:{room}"
history = { size = 100, ttl = "5m" }
presence = true
join_leave = true
TOML

wait_port() {
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    die "nothing listened on 127.0.0.1:$1 within 10 s (logs in $out)"
}
wait_port "$redis_port"
"$bin" serve --config "$out/node.toml" --listen "127.0.0.1:$port_a" >"$out/node-a.log" 2>&1 &
pids+=($!)
"$bin" serve --config "$out/node.toml" --listen "127.0.0.1:$port_b" >"$out/node-b.log" 2>&1 &
pids+=($!)
wait_port "$port_a"
wait_port "$port_b"

rc=0
node "$here/nodes.mjs" "http://127.0.0.1:$port_a" "http://127.0.0.1:$port_b" || rc=$?
if [ "$rc" -ne 0 ]; then
    for f in node-a node-b; do echo "--- $f.log"; tail -n 20 "$out/$f.log" || true; done
fi
exit "$rc"
