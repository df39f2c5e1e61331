# Shell helpers shared by the test and benchmark scripts; source it, do not run it.

# Prints a loopback port that was free a moment ago.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Waits until HOST:PORT accepts TCP, at most LIMIT seconds; fails early if the optional
# process PID exits. Usage: wait_for_tcp HOST PORT LIMIT [PID]
wait_for_tcp() {
    local host=$1 port=$2 limit=$3 pid=${4:-}
    local deadline=$((SECONDS + limit))
    while ((SECONDS < deadline)); do
        if python3 -c 'import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1).close()' \
            "$host" "$port" 2>/dev/null; then
            return 0
        fi
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        sleep 0.1
    done
    return 1
}

# One `wsgate bench` run ($BIN, with --size $SIZE) measuring the server PID; its JSON is kept as
# $OUT/NAME.json and its progress lines go to $OUT/progress.log. A run that is not clean is
# said, not fatal: the tables show it. Usage: bench_json NAME PID MODE ARGS...
bench_json() {
    local name=$1 pid=$2
    shift 2
    echo "== $name: wsgate bench $*" >&2
    "$BIN" bench "$@" --size "$SIZE" --pid "$pid" --progress 2 >"$OUT/$name.json" 2>>"$OUT/progress.log" ||
        echo "   (exit $?: not clean, see $OUT/$name.json)" >&2
}
