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
. "$here/lib.sh"

port="$(free_port)"
[ -n "$port" ] || die "could not find a free loopback port."
start_server "$out/server.log" "$port" -- serve --listen "127.0.0.1:$port"
run_test "$here/run.mjs" "http://127.0.0.1:$port"
