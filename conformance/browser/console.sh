#!/usr/bin/env bash
# Runs the real-browser test of the admin console:
#   1. install.sh (Debian chromium + playwright-core, idempotent)
#   2. starts `wsgate serve` with an admin listener, both on free loopback ports
#   3. node console.mjs http://127.0.0.1:MAIN http://127.0.0.1:ADMIN
# Env: WSGATE_BIN (default target/release/wsgate, relative to the repo root).
# Output: target/test-output/browser/{console.png,console-server.log}
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

die() { echo "console.sh: $*" >&2; exit 1; }

"$here/install.sh"

bin="${WSGATE_BIN:-target/release/wsgate}"
[ -x "$bin" ] || die "the wsgate binary $bin does not exist or is not executable; build it first (cargo build --release) or set WSGATE_BIN."

out="$repo/target/test-output/browser"
mkdir -p "$out"
log="$out/console-server.log"

free_port() {
    node -e 'const s = require("net").createServer(); s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });'
}
port="$(free_port)"
admin="$(free_port)"
[ -n "$port" ] && [ -n "$admin" ] || die "could not find free loopback ports."
[ "$port" != "$admin" ] || admin="$(free_port)"

server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "console.sh: starting $bin serve on 127.0.0.1:$port, admin on 127.0.0.1:$admin (log: $log)"
WSGATE_ADMIN__LISTEN="127.0.0.1:$admin" "$bin" serve --listen "127.0.0.1:$port" >"$log" 2>&1 &
server_pid=$!

up=""
for _ in $(seq 1 100); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "--- server log ($log):" >&2; cat "$log" >&2 || true
        die "wsgate exited before it listened."
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$admin") 2>/dev/null; then up=1; break; fi
    sleep 0.1
done
[ -n "$up" ] || { cat "$log" >&2 || true; die "the admin listener did not open within 10 s."; }

rc=0
node "$here/console.mjs" "http://127.0.0.1:$port" "http://127.0.0.1:$admin" || rc=$?
if [ "$rc" -ne 0 ]; then
    echo "--- last lines of the server log ($log):"
    tail -n 40 "$log" || true
fi
exit "$rc"
