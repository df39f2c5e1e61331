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
