#!/usr/bin/env bash
# Runs the real-browser test of the wsgate demo page:
#   1. install.sh (Debian chromium + playwright-core, idempotent)
#   2. starts `wsgate serve` on a free loopback port (built-in defaults)
#   3. node run.mjs http://127.0.0.1:PORT
# Env: WSGATE_BIN (default target/release/wsgate, relative to the repo root).
# Output: target/test-output/browser/{demo.png,server.log}
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

die() { echo "run.sh: $*" >&2; exit 1; }

"$here/install.sh"

bin="${WSGATE_BIN:-target/release/wsgate}"
[ -x "$bin" ] || die "the wsgate binary $bin does not exist or is not executable; build it first (cargo build --release) or set WSGATE_BIN."

out="$repo/target/test-output/browser"
mkdir -p "$out"
log="$out/server.log"

port="$(node -e '
    const s = require("net").createServer();
    s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });
')"
[ -n "$port" ] || die "could not find a free loopback port."

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

echo "run.sh: starting $bin serve --listen 127.0.0.1:$port (log: $log)"
"$bin" serve --listen "127.0.0.1:$port" >"$log" 2>&1 &
server_pid=$!

# Wait (bounded: 10 s) until the port accepts connections.
up=""
for _ in $(seq 1 100); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "--- server log ($log):" >&2; cat "$log" >&2 || true
        die "wsgate exited before it listened on 127.0.0.1:$port."
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then up=1; break; fi
    sleep 0.1
done
if [ -z "$up" ]; then
    echo "--- server log ($log):" >&2; cat "$log" >&2 || true
    die "wsgate did not listen on 127.0.0.1:$port within 10 s."
fi

rc=0
node "$here/run.mjs" "http://127.0.0.1:$port" || rc=$?
if [ "$rc" -ne 0 ]; then
    echo "--- last lines of the server log ($log):"
    tail -n 40 "$log" || true
fi
exit "$rc"
