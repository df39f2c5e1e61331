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
. "$here/lib.sh"

port="$(free_port)"
admin="$(free_port)"
[ -n "$port" ] && [ -n "$admin" ] || die "could not find free loopback ports."
[ "$port" != "$admin" ] || admin="$(free_port)"
# Ready once the admin listener accepts (it opens after the main one).
start_server "$out/console-server.log" "$admin" "WSGATE_ADMIN__LISTEN=127.0.0.1:$admin" -- \
    serve --listen "127.0.0.1:$port"
run_test "$here/console.mjs" "http://127.0.0.1:$port" "http://127.0.0.1:$admin"
