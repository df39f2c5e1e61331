#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzing client (cases 1.* to 10.*) against wsgate's
# echo route, or against any WebSocket echo URL, and judges the result.
#
# usage: conformance/autobahn/run.sh [--url URL] [--agent NAME] [--outdir DIR]
#
#   (no --url)   starts "$WSGATE_BIN serve --config conformance/autobahn/wsgate.toml
#                --listen 127.0.0.1:<free port>" and tests ws://127.0.0.1:<port>/ws/echo
#   --url URL    tests URL instead and starts nothing (e.g. a proxy in front of an
#                echo backend); same as AUTOBAHN_URL. --through is an alias.
#   --agent NAME agent name in the reports (AUTOBAHN_AGENT, default "wsgate")
#   --outdir DIR where logs and reports go (AUTOBAHN_OUTDIR, default
#                target/conformance/autobahn/<agent> at the repo root)
#
# Other environment:
#   WSGATE_BIN             wsgate binary (default target/release/wsgate at the repo root)
#   WSGATE_CONFIG          config for that binary (default conformance/autobahn/wsgate.toml)
#   WSGATE_CACHE           where install.sh keeps wstest (default $HOME/.cache/wsgate)
#   AUTOBAHN_CASES         comma-separated case globs (default "1.*,...,10.*");
#                          when set, AUTOBAHN_EXPECT_CASES must be set too
#   AUTOBAHN_EXCLUDE       comma-separated globs to exclude (default "12.*,13.*";
#                          set and empty excludes nothing)
#   AUTOBAHN_EXPECT_CASES  number of cases the run must produce (default 301)
#   AUTOBAHN_NO_UNIMPLEMENTED  1: an UNIMPLEMENTED case fails the run (the compression
#                          cases, where it means permessage-deflate was not agreed)
#   AUTOBAHN_TIMEOUT       seconds before wstest is killed (default 600)
#   AUTOBAHN_START_TIMEOUT seconds to wait for the server to accept TCP (default 20)
#
# Exit status: 0 when the summary passes (0 FAILED, 0 NON-STRICT, expected case
# count), 1 when it does not or the run broke, 2 on a usage error.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=SCRIPTDIR/../../scripts/lib.sh
source "$root/scripts/lib.sh"
readonly here root

say() { printf 'run.sh: %s\n' "$*" >&2; }
die() { printf 'run.sh: error: %s\n' "$*" >&2; exit 1; }
usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
    exit 2
}

url=${AUTOBAHN_URL:-}
agent=${AUTOBAHN_AGENT:-wsgate}
outdir=${AUTOBAHN_OUTDIR:-}
while (($#)); do
    case "$1" in
        --url | --through) (($# >= 2)) || usage; url=$2; shift 2 ;;
        --agent) (($# >= 2)) || usage; agent=$2; shift 2 ;;
        --outdir) (($# >= 2)) || usage; outdir=$2; shift 2 ;;
        -h | --help) usage ;;
        *) say "unknown argument: $1"; usage ;;
    esac
done

if [[ -n "${AUTOBAHN_CASES:-}" && -z "${AUTOBAHN_EXPECT_CASES:-}" ]]; then
    say "AUTOBAHN_CASES is set, so set AUTOBAHN_EXPECT_CASES to the number of cases it selects"
    exit 2
fi
cases=${AUTOBAHN_CASES:-1.*,2.*,3.*,4.*,5.*,6.*,7.*,8.*,9.*,10.*}
# Set but empty excludes nothing (the compression run, run-deflate.sh).
exclude=${AUTOBAHN_EXCLUDE-12.*,13.*}
expect=${AUTOBAHN_EXPECT_CASES:-301}
run_timeout=${AUTOBAHN_TIMEOUT:-600}
start_timeout=${AUTOBAHN_START_TIMEOUT:-20}
wsgate_bin=${WSGATE_BIN:-$root/target/release/wsgate}
wsgate_config=${WSGATE_CONFIG:-$here/wsgate.toml}

[[ "$agent" =~ ^[A-Za-z0-9._-]+$ ]] || { say "agent name must match [A-Za-z0-9._-]+: $agent"; exit 2; }
outdir=${outdir:-$root/target/conformance/autobahn/$agent}
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
readonly report_dir="$outdir/report"

wsgate_pid=
wstest_pid=
cleanup() {
    if [[ -n "$wstest_pid" ]]; then
        kill "$wstest_pid" 2>/dev/null || true
        wait "$wstest_pid" 2>/dev/null || true
    fi
    if [[ -n "$wsgate_pid" ]] && kill -0 "$wsgate_pid" 2>/dev/null; then
        kill "$wsgate_pid" 2>/dev/null || true
        # Give it the chance to drain; then make sure it is gone.
        for _ in $(seq 50); do kill -0 "$wsgate_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$wsgate_pid" 2>/dev/null || true
        wait "$wsgate_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Prints host and port of a ws:// or wss:// URL, one per line.
url_host_port() {
    python3 - "$1" <<'EOF'
import sys, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1])
if u.scheme not in ("ws", "wss") or not u.hostname:
    sys.exit("not a ws:// or wss:// URL: " + sys.argv[1])
print(u.hostname)
print(u.port or (443 if u.scheme == "wss" else 80))
EOF
}

show_log() { # file, lines
    [[ -s "$1" ]] || return 0
    say "last lines of $1:"
    tail -n "$2" "$1" | sed 's/^/    /' >&2
}

if [[ -z "$url" ]]; then
    [[ -x "$wsgate_bin" ]] || die "wsgate binary not found at $wsgate_bin; build it with \
'cargo build --release' or set WSGATE_BIN (or test another server with --url)"
    [[ -f "$wsgate_config" ]] || die "config not found: $wsgate_config"
fi

say "installing or checking wstest"
wstest=$("$here/install.sh")

if [[ -z "$url" ]]; then
    port=$(free_port)
    say "starting $wsgate_bin serve on 127.0.0.1:$port (log: $outdir/wsgate.log)"
    "$wsgate_bin" serve --config "$wsgate_config" --listen "127.0.0.1:$port" \
        >"$outdir/wsgate.log" 2>&1 &
    wsgate_pid=$!
    if ! wait_for_tcp 127.0.0.1 "$port" "$start_timeout" "$wsgate_pid"; then
        show_log "$outdir/wsgate.log" 30
        if kill -0 "$wsgate_pid" 2>/dev/null; then
            die "wsgate did not accept TCP on 127.0.0.1:$port within ${start_timeout}s"
        fi
        die "wsgate exited before accepting connections"
    fi
    url="ws://127.0.0.1:$port/ws/echo"
else
    hp=$(url_host_port "$url") || die "bad URL: $url"
    host=${hp%%$'\n'*}
    port=${hp##*$'\n'}
    wait_for_tcp "$host" "$port" "$start_timeout" \
        || die "$host:$port (from $url) does not accept TCP within ${start_timeout}s"
fi

# A fresh report dir, so a stale index.json can never be judged.
rm -rf "${report_dir:?}"
mkdir -p "$report_dir"
python3 - "$outdir/spec.json" "$report_dir" "$agent" "$url" "$cases" "$exclude" <<'EOF'
import json, sys
path, report_dir, agent, url, cases, exclude = sys.argv[1:]
globs = lambda s: [g.strip() for g in s.split(",") if g.strip()]
spec = {
    "outdir": report_dir,
    "servers": [{"agent": agent, "url": url}],
    "cases": globs(cases),
    "exclude-cases": globs(exclude),
    "exclude-agent-cases": {},
}
with open(path, "w") as f:
    json.dump(spec, f, indent=2)
    f.write("\n")
EOF

say "running wstest fuzzingclient against $url as agent '$agent', cases [$cases] minus [$exclude] \
(timeout ${run_timeout}s, log: $outdir/wstest.log)"
started=$SECONDS
rc=0
(cd "$outdir" && exec timeout "$run_timeout" "$wstest" -m fuzzingclient -s "$outdir/spec.json") \
    >"$outdir/wstest.log" 2>&1 &
wstest_pid=$!
# wstest hangs instead of exiting when the case globs select nothing; it says so
# in its log first, so stop it there rather than waiting for the timeout.
while kill -0 "$wstest_pid" 2>/dev/null; do
    if grep -q 'will run 0 test cases' "$outdir/wstest.log" 2>/dev/null; then
        kill "$wstest_pid" 2>/dev/null || true
        wait "$wstest_pid" 2>/dev/null || true
        wstest_pid=
        die "the case globs [$cases] minus [$exclude] select no case; fix AUTOBAHN_CASES/AUTOBAHN_EXCLUDE"
    fi
    sleep 0.5
done
wait "$wstest_pid" || rc=$?
wstest_pid=
say "wstest finished in $((SECONDS - started))s with status $rc"
if ((rc == 124)); then
    show_log "$outdir/wstest.log" 20
    say "wstest was killed after ${run_timeout}s (a hung case, or a case list that selects nothing)"
elif ((rc != 0)); then
    show_log "$outdir/wstest.log" 40
fi
if [[ -n "$wsgate_pid" ]] && ! kill -0 "$wsgate_pid" 2>/dev/null; then
    wsgate_rc=0
    wait "$wsgate_pid" || wsgate_rc=$?
    wsgate_pid=
    say "wsgate exited during the run with status $wsgate_rc"
    show_log "$outdir/wsgate.log" 30
fi

summary_rc=0
summary_flags=()
[[ "${AUTOBAHN_NO_UNIMPLEMENTED:-}" == 1 ]] && summary_flags+=(--no-unimplemented)
python3 "$here/summarize.py" "$report_dir" --agent "$agent" --expect "$expect" "${summary_flags[@]}" \
    | tee "$outdir/summary.txt" || summary_rc=$?
if [[ -f "$report_dir/index.html" ]]; then
    say "reports: $report_dir/index.html (summary: $outdir/summary.txt)"
fi
if ((rc != 0 || summary_rc != 0)); then
    exit 1
fi
