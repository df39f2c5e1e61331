#!/usr/bin/env bash
# Runs the real-browser test of WebSockets over HTTP/2 (RFC 8441):
#   1. install.sh (Debian chromium + playwright-core, idempotent)
#   2. makes a test CA and a server certificate for 127.0.0.1 and localhost signed by it (openssl)
#   3. starts `wsgate serve` with [server.tls] on a free loopback port (ALPN "h2", "http/1.1")
#   4. node h2.mjs https://127.0.0.1:PORT SPKI_HASH: Chromium trusts the certificate through
#      --ignore-certificate-errors-spki-list, loads the demo page over h2, its WebSocket exchanges
#      messages, and /metrics and the access log prove the socket was an HTTP/2 stream
# Env: WSGATE_BIN (default target/release/wsgate, relative to the repo root).
# Output: target/test-output/browser/{h2-demo.png,h2-server.log,h2-pki/}
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

. "$here/lib.sh"

command -v openssl >/dev/null 2>&1 || die "openssl is not installed; it makes the test CA and certificate (apt-get install openssl)."

pki="$out/h2-pki"
rm -rf "$pki"
mkdir -p "$pki"
log="$out/h2-server.log"

# A test CA, and a server certificate it signs for 127.0.0.1 and localhost (ECDSA P-256; the
# leaf is CA:FALSE, which rustls requires of a server's certificate).
{
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=wsgate browser test CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" \
        -keyout "$pki/ca-key.pem" -out "$pki/ca.pem"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/CN=localhost" -keyout "$pki/key.pem" -out "$pki/server.csr"
    printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
        "extendedKeyUsage=serverAuth" "keyUsage=critical,digitalSignature" >"$pki/server.ext"
    openssl x509 -req -in "$pki/server.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca-key.pem" \
        -CAcreateserial -days 2 -extfile "$pki/server.ext" -out "$pki/leaf.pem"
    cat "$pki/leaf.pem" "$pki/ca.pem" >"$pki/cert.pem"
} >"$pki/openssl.log" 2>&1 || { cat "$pki/openssl.log" >&2; die "openssl could not make the test certificates."; }

# What Chromium's --ignore-certificate-errors-spki-list takes: base64 of the SHA-256 of the
# leaf's SubjectPublicKeyInfo.
spki="$(openssl x509 -in "$pki/leaf.pem" -pubkey -noout | openssl pkey -pubin -outform der \
    | openssl dgst -sha256 -binary | base64)"
[ -n "$spki" ] || die "could not hash the certificate's public key."

port="$(free_port)"
[ -n "$port" ] || die "could not find a free loopback port."

conf="$out/h2.toml"
cat >"$conf" <<EOF
[server]
listen = "127.0.0.1:$port"

[server.tls]
cert = "$pki/cert.pem"
key = "$pki/key.pem"
alpn = ["h2", "http/1.1"]
EOF

# The access lines (target wsgate::access, at info) carry each handshake's http_version.
start_server "$log" "$port" WSGATE_LOG=info -- serve --config "$conf"

# node's own requests (publish, /metrics) trust the test CA this way.
export NODE_EXTRA_CA_CERTS="$pki/ca.pem" WSGATE_SERVER_LOG="$log"
run_test "$here/h2.mjs" "https://127.0.0.1:$port" "$spki"
