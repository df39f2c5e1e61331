#!/usr/bin/env bash
# Installs redis-server and redis-cli (Debian's redis-server 7.x: RESP3 and sharded pub/sub) for
# the Redis broker tests; does nothing when both are there.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
    exit 0
fi
command -v apt-get >/dev/null 2>&1 || { echo "install-redis.sh: redis-server is missing and apt-get is not available" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "install-redis.sh: installing redis-server needs root (apt-get install redis-server redis-tools)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends redis-server redis-tools >/dev/null
