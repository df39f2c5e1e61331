#!/usr/bin/env bash
# Runs the Autobahn|Testsuite compression cases (12.* and 13.*: permessage-deflate,
# RFC 7692) three ways at once: directly against wsgate's echo route,
# through wsgate's reverse proxy with its tunnels on io_uring (proxy.tunnel_io =
# "auto"), and through the proxy with tunnels on epoll. Each must pass with 0
# FAILED, 0 NON-STRICT and 0 UNIMPLEMENTED (UNIMPLEMENTED there means the
# extension was not agreed). Through the proxy the extension is negotiated end to
# end between the suite and the hub behind it, and the tunnel passes RSV1 frames
# untouched.
#
# The three runs are independent (each starts its own wsgate processes on free
# ports), so they run in parallel: the suite is one Python process per run, and
# that process (not wsgate) is what takes the time.
#
# By default a lean selection of 84 cases, to keep CI short: every case of each
# group 12.1-12.5 (five kinds of data) and 13.1-13.7 (the seven offer/accept
# shapes: context takeover on and off, window sizes 9 and 15, several offers)
# with messages of 16 bytes to 8 KiB (x.y.1 to x.y.6) and 8 KiB fragmented into
# 256-byte frames (x.y.11). Each case sends 1000 messages and checks every echo.
# AUTOBAHN_DEFLATE_FULL=1 runs all 216 cases (sizes up to 128 KiB, more
# fragmentations; about 13 minutes per run on an idle 2-core machine).
#
# usage: conformance/autobahn/run-deflate.sh
#
# Environment:
#   WSGATE_BIN              wsgate binary (default target/release/wsgate)
#   AUTOBAHN_DEFLATE_SERIAL 1: one run after the other instead of in parallel
#   AUTOBAHN_DEFLATE_FULL   1: all 216 cases instead of the lean 84
#   AUTOBAHN_TIMEOUT        seconds before one wstest is killed (default 900)
#   and everything run.sh reads, except the case selection, which is fixed here.
#
# Exit status: 0 when all three runs pass, 1 otherwise.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
readonly here root
out=$root/target/conformance/autobahn

say() { printf 'run-deflate.sh: %s\n' "$*" >&2; }

# Installed once here, so the parallel runs do not race to install it.
"$here/install.sh" >/dev/null

if [[ "${AUTOBAHN_DEFLATE_FULL:-}" == 1 ]]; then
    export AUTOBAHN_CASES="12.*,13.*" AUTOBAHN_EXPECT_CASES=216
else
    # Literal ids: wstest matches a pattern with '*' as a prefix, so "12.*.1" would take
    # 12.1.10-18 too.
    cases=()
    for group in 12.1 12.2 12.3 12.4 12.5 13.1 13.2 13.3 13.4 13.5 13.6 13.7; do
        for i in 1 2 3 4 5 6 11; do cases+=("$group.$i"); done
    done
    AUTOBAHN_CASES=$(IFS=,; echo "${cases[*]}")
    export AUTOBAHN_CASES AUTOBAHN_EXPECT_CASES=${#cases[@]}
fi
export AUTOBAHN_EXCLUDE=""
export AUTOBAHN_NO_UNIMPLEMENTED=1 AUTOBAHN_TIMEOUT="${AUTOBAHN_TIMEOUT:-900}"

names=(direct proxy-io_uring proxy-epoll)
run_one() {
    case "$1" in
        direct)
            AUTOBAHN_OUTDIR="$out/wsgate-deflate" "$here/run.sh" --agent wsgate-deflate ;;
        proxy-io_uring)
            AUTOBAHN_OUTDIR="$out/wsgate-proxy-deflate" "$here/run-proxy.sh" ;;
        proxy-epoll)
            WSGATE_PROXY__TUNNEL_IO=epoll AUTOBAHN_OUTDIR="$out/wsgate-proxy-epoll-deflate" \
                "$here/run-proxy.sh" ;;
    esac
}

mkdir -p "$out"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

started=$SECONDS
declare -A rc
if [[ "${AUTOBAHN_DEFLATE_SERIAL:-}" == 1 ]]; then
    for n in "${names[@]}"; do
        rc[$n]=0
        run_one "$n" >"$out/deflate-$n.log" 2>&1 || rc[$n]=$?
    done
else
    for n in "${names[@]}"; do
        run_one "$n" >"$out/deflate-$n.log" 2>&1 &
        pids+=($!)
    done
    for i in "${!names[@]}"; do
        rc[${names[$i]}]=0
        wait "${pids[$i]}" || rc[${names[$i]}]=$?
    done
    pids=()
fi

failed=0
for n in "${names[@]}"; do
    verdict=$(grep -h '^RESULT:' "$out/deflate-$n.log" 2>/dev/null | tail -1 || true)
    say "$n: ${verdict:-no summary} (exit ${rc[$n]}, log: $out/deflate-$n.log)"
    if ((rc[$n] != 0)); then
        failed=1
        tail -n 40 "$out/deflate-$n.log" | sed 's/^/    /' >&2
    fi
done
say "$AUTOBAHN_EXPECT_CASES cases of 12.* and 13.*, three runs, took $((SECONDS - started))s"
exit "$failed"
