# Shared by the browser test scripts (sourced, not run): the install step, the wsgate binary,
# free ports, one server started and stopped around the test, and the node test itself.
# Expects `here` and `repo` set and the repo as the working directory.

name="$(basename "$0")"
die() { echo "$name: $*" >&2; exit 1; }

"$here/install.sh"

bin="${WSGATE_BIN:-target/release/wsgate}"
[ -x "$bin" ] || die "the wsgate binary $bin does not exist or is not executable; build it first (cargo build --release) or set WSGATE_BIN."

out="$repo/target/test-output/browser"
mkdir -p "$out"

free_port() {
    node -e 'const s = require("net").createServer(); s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });'
}

server_pid=""
server_log=""
stop_server() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
}
trap stop_server EXIT
trap 'exit 130' INT TERM

# start_server LOG PORT [ENV=VALUE ...] -- ARGS...: runs `$bin ARGS` (with the variables set)
# logging to LOG, and waits (bounded: 10 s) until 127.0.0.1:PORT accepts connections.
start_server() {
    server_log="$1"
    local port="$2"
    shift 2
    local vars=()
    while [ "$1" != "--" ]; do vars+=("$1"); shift; done
    shift
    echo "$name: starting $bin $* (127.0.0.1:$port, log: $server_log)"
    env "${vars[@]}" "$bin" "$@" >"$server_log" 2>&1 &
    server_pid=$!
    for _ in $(seq 1 100); do
        if ! kill -0 "$server_pid" 2>/dev/null; then
            echo "--- server log ($server_log):" >&2; cat "$server_log" >&2 || true
            die "wsgate exited before it listened on 127.0.0.1:$port."
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "--- server log ($server_log):" >&2; cat "$server_log" >&2 || true
    die "wsgate did not listen on 127.0.0.1:$port within 10 s."
}

# run_test ARGS...: runs `node ARGS` and exits with its status, showing the end of the server
# log when it failed.
run_test() {
    local rc=0
    node "$@" || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "--- last lines of the server log ($server_log):"
        tail -n 40 "$server_log" || true
    fi
    exit "$rc"
}
