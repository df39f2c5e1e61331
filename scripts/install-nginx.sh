#!/usr/bin/env bash
# Installs nginx for the `wsgate doctor` test against a real nginx (tests/doctor_nginx.rs);
# safe to run again (does nothing when nginx is already there). The test runs nginx itself, in
# the foreground on a free loopback port, so the system service is stopped if apt started it.
set -euo pipefail

die() { echo "install-nginx.sh: $*" >&2; exit 1; }

command -v nginx >/dev/null 2>&1 && exit 0

command -v apt-get >/dev/null 2>&1 \
    || die "nginx is missing and apt-get is not available; install nginx with the system's package manager."
[ "$(id -u)" -eq 0 ] \
    || die "nginx is missing and installing it needs root (apt-get install nginx-light); run this script as root."

echo "install-nginx.sh: installing Debian's nginx-light (apt-get)..."
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends nginx-light >/dev/null 2>&1 || {
    apt-get update -q
    apt-get install -y -q --no-install-recommends nginx-light \
        || apt-get install -y -q --no-install-recommends nginx
}
command -v nginx >/dev/null 2>&1 || die "apt-get finished but nginx is still missing."
service nginx stop >/dev/null 2>&1 || true
