# Shared by the browser test scripts (sourced, not run): the install step, the wsgate binary,
# free ports, the servers started and stopped around the test, and the node test itself.
# Expects `here` and `repo` set and the repo as the working directory; `out` (the output folder)
# may be set before.

name="$(basename "$0")"
die() { echo "$name: $*" >&2; exit 1; }

"$here/install.sh"

bin="${WSGATE_BIN:-target/release/wsgate}"
[ -x "$bin" ] || die "the wsgate binary $bin does not exist or is not executable; build it first (cargo build --release) or set WSGATE_BIN."

out="${out:-$repo/target/test-output/browser}"
mkdir -p "$out"

free_port() {
    node -e 'const s = require("net").createServer(); s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });'
}

# Every process started here, and its log (the failure report shows the end of each).
pids=()
logs=()
stop_server() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do
        for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
}
trap stop_server EXIT
trap 'exit 130' INT TERM

# start_process WHAT LOG PORT -- COMMAND...: runs COMMAND (called WHAT in messages) logging to
# LOG, and waits (bounded: 15 s) until 127.0.0.1:PORT accepts connections.
start_process() {
    local what="$1" log="$2" port="$3" pid
    shift 4
    echo "$name: starting $* (127.0.0.1:$port, log: $log)"
    "$@" >"$log" 2>&1 &
    pid=$!
    pids+=("$pid")
    logs+=("$log")
    for _ in $(seq 1 150); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "--- log ($log):" >&2; cat "$log" >&2 || true
            die "$what exited before it listened on 127.0.0.1:$port."
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "--- log ($log):" >&2; cat "$log" >&2 || true
    die "$what did not listen on 127.0.0.1:$port within 15 s."
}

# start_server LOG PORT [ENV=VALUE ...] -- ARGS...: runs `$bin ARGS` (with the variables set)
# as start_process does.
start_server() {
    local log="$1" port="$2"
    shift 2
    local vars=()
    while [ "$1" != "--" ]; do vars+=("$1"); shift; done
    shift
    start_process wsgate "$log" "$port" -- env "${vars[@]}" "$bin" "$@"
}

# run_test ARGS...: runs `node ARGS` and exits with its status, showing the end of every log
# when it failed.
run_test() {
    local rc=0 log
    node "$@" || rc=$?
    if [ "$rc" -ne 0 ]; then
        for log in "${logs[@]}"; do
            echo "--- last lines of $log:"
            tail -n 30 "$log" || true
        done
    fi
    exit "$rc"
}
