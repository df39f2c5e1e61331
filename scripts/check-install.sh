#!/usr/bin/env bash
# Checks that `cargo install --path .` works: installs into a temporary root (reusing this
# tree's release build through CARGO_TARGET_DIR, so it costs no second compile), then runs the
# installed binary's --version and genconfig | check-config. Prints "install: 1 passed, 0 failed".
set -euo pipefail
cd "$(dirname "$0")/.."

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}" cargo install --quiet --locked --path . --root "$root"
bin="$root/bin/wsgate"
[ -x "$bin" ] || { echo "check-install: $bin was not installed" >&2; echo "install: 0 passed, 1 failed"; exit 1; }
"$bin" --version
"$bin" genconfig >"$root/wsgate.toml"
"$bin" check-config "$root/wsgate.toml"
echo "install: 1 passed, 0 failed"
