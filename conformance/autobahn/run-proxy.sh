#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzing client (cases 1.* to 10.*) through wsgate's
# reverse proxy: one wsgate serves the echo route (the hub, with the conformance
# limits from wsgate.toml), a second wsgate proxies every path to it with only
# [[upstream]] + proxy_pass, and run.sh tests ws://<proxy>/ws/echo. It passes
# with 0 FAILED and 0 NON-STRICT, like the direct run: the tunnel must relay
# every frame untouched and impose no frame or message limit of its own.
#
# usage: conformance/autobahn/run-proxy.sh
#
# Environment: WSGATE_BIN (default target/release/wsgate), AUTOBAHN_OUTDIR
# (default target/conformance/autobahn/wsgate-proxy), and everything run.sh reads.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=SCRIPTDIR/../../scripts/lib.sh
source "$root/scripts/lib.sh"
readonly here root

say() { printf 'run-proxy.sh: %s\n' "$*" >&2; }
die() { printf 'run-proxy.sh: error: %s\n' "$*" >&2; exit 1; }

wsgate_bin=${WSGATE_BIN:-$root/target/release/wsgate}
outdir=${AUTOBAHN_OUTDIR:-$root/target/conformance/autobahn/wsgate-proxy}
[[ -x "$wsgate_bin" ]] || die "wsgate binary not found at $wsgate_bin; build it with 'cargo build --release' or set WSGATE_BIN"
mkdir -p "$outdir"

pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

hub_port=$(free_port)
say "starting the hub (echo backend) on 127.0.0.1:$hub_port (log: $outdir/hub.log)"
"$wsgate_bin" serve --config "$here/wsgate.toml" --listen "127.0.0.1:$hub_port" >"$outdir/hub.log" 2>&1 &
pids+=($!)
wait_for_tcp 127.0.0.1 "$hub_port" 20 "${pids[0]}" || die "the hub did not start; see $outdir/hub.log"

proxy_port=$(free_port)
cat >"$outdir/proxy.toml" <<TOML
# The proxy in front of the hub: the story's config, nothing WebSocket-specific.
# The proxy's own echo route is turned off (it yields to proxy prefixes anyway): no
# path of the proxy may be answered by its own hub, /ws/echo must cross the tunnel.
[websocket]
echo_path = ""

[[upstream]]
name = "hub"
servers = ["127.0.0.1:$hub_port"]

[[route]]
path_prefix = "/"
proxy_pass = "hub"
TOML
say "starting the proxy on 127.0.0.1:$proxy_port (config: $outdir/proxy.toml, log: $outdir/proxy.log)"
"$wsgate_bin" serve --config "$outdir/proxy.toml" --listen "127.0.0.1:$proxy_port" >"$outdir/proxy.log" 2>&1 &
pids+=($!)
wait_for_tcp 127.0.0.1 "$proxy_port" 20 "${pids[1]}" || die "the proxy did not start; see $outdir/proxy.log"

rc=0
AUTOBAHN_OUTDIR=$outdir "$here/run.sh" --url "ws://127.0.0.1:$proxy_port/ws/echo" --agent wsgate-proxy || rc=$?
for i in 0 1; do
    kill -0 "${pids[$i]}" 2>/dev/null || { say "a wsgate process exited during the run"; rc=1; }
done
exit "$rc"
