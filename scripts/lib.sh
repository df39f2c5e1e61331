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
    ${CLIENT_PIN:-} "$BIN" bench "$@" --size "$SIZE" --pid "$pid" --progress 2 >"$OUT/$name.json" 2>>"$OUT/progress.log" ||
        echo "   (exit $?: not clean, see $OUT/$name.json)" >&2
}

# With ISOLATE=1, moves this shell (and all it starts) into a CPU cgroup NAME with the largest
# share, so a compile elsewhere gets ~1 % of the box while server and client share the rest as
# they would alone (cgroup v1 or v2). Usage: isolate_cpu NAME
isolate_cpu() {
    [ "${ISOLATE:-0}" = 1 ] || return 0
    if [ -d /sys/fs/cgroup/cpu ] && [ ! -f /sys/fs/cgroup/cgroup.controllers ]; then
        mkdir -p "/sys/fs/cgroup/cpu/$1"
        echo 262144 >"/sys/fs/cgroup/cpu/$1/cpu.shares"
        echo $$ >"/sys/fs/cgroup/cpu/$1/cgroup.procs"
    else
        mkdir -p "/sys/fs/cgroup/$1"
        echo 10000 >"/sys/fs/cgroup/$1/cpu.weight"
        echo $$ >"/sys/fs/cgroup/$1/cgroup.procs"
    fi
}

# A self-signed certificate for localhost and 127.0.0.1, ECDSA P-256 (what most sites serve
# now), as DIR/cert.pem and DIR/key.pem; openssl's messages go to DIR/openssl.log. CA:FALSE:
# openssl's default marks it a CA, which rustls refuses as a server's certificate.
# Usage: self_signed_cert DIR
self_signed_cert() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -addext "basicConstraints=critical,CA:FALSE" -addext "extendedKeyUsage=serverAuth" \
        -keyout "$1/key.pem" -out "$1/cert.pem" 2>>"$1/openssl.log"
}

# Sets $OUT (bench/results/NAME-<UTC time> unless OUT is set; made and said on stderr) and $BIN
# (WSGATE_BIN, or a release build of this tree made now). Usage: bench_setup NAME
bench_setup() {
    OUT="${OUT:-$ROOT/bench/results/$1-$(date -u +%Y%m%dT%H%M%SZ)}"
    mkdir -p "$OUT"
    echo "results in $OUT" >&2
    if [ -z "${WSGATE_BIN:-}" ]; then
        cargo build --release --quiet
    fi
    BIN="${WSGATE_BIN:-$ROOT/target/release/wsgate}"
}

# A fresh wsgate ($BIN) on a free loopback port ($PORT; its pid in $SERVER_PID): ws:// plain,
# wss:// with $OUT/cert.pem and $OUT/key.pem (see self_signed_cert); EXTRA is more config text.
# Its log is $OUT/wsgate-SCHEME.log; a server that does not listen within 10 s stops the script.
# Usage: start_wsgate_scheme SCHEME MAX_CONNECTIONS [EXTRA]
start_wsgate_scheme() {
    local scheme=$1 conf="$OUT/$1.toml"
    PORT="$(free_port)"
    {
        printf '[server]\nlisten = "127.0.0.1:%s"\nmax_connections = %s\n' "$PORT" "$2"
        printf '%s' "${3:-}"
        if [ "$scheme" = wss ]; then
            printf '[server.tls]\ncert = "%s"\nkey = "%s"\n' "$OUT/cert.pem" "$OUT/key.pem"
        fi
    } >"$conf"
    WSGATE_LOG=warn "$BIN" serve --config "$conf" 2>>"$OUT/wsgate-$scheme.log" &
    SERVER_PID=$!
    if ! wait_for_tcp 127.0.0.1 "$PORT" 10 "$SERVER_PID"; then
        echo "wsgate ($scheme) did not start; see $OUT/wsgate-$scheme.log" >&2
        exit 1
    fi
}
