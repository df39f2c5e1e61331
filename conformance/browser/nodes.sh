#!/usr/bin/env bash
# Runs the two-node browser test: a redis-server and two `wsgate serve` nodes sharing it, each on
# a free loopback port, then `node nodes.mjs A B`; everything started here is stopped on exit.
# Env: WSGATE_BIN (default target/release/wsgate). Output: target/test-output/browser-nodes/
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

out="$repo/target/test-output/browser-nodes"
. "$here/lib.sh"
command -v redis-server >/dev/null 2>&1 || die "redis-server is missing; scripts/install-redis.sh installs it."
redis_port="$(free_port)"; port_a="$(free_port)"; port_b="$(free_port)"

start_process redis-server "$out/redis.log" "$redis_port" -- \
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$out"

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

start_server "$out/node-a.log" "$port_a" -- serve --config "$out/node.toml" --listen "127.0.0.1:$port_a"
start_server "$out/node-b.log" "$port_b" -- serve --config "$out/node.toml" --listen "127.0.0.1:$port_b"
run_test "$here/nodes.mjs" "http://127.0.0.1:$port_a" "http://127.0.0.1:$port_b"
