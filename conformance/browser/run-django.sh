#!/usr/bin/env bash
# The Django example end to end in headless Chromium:
#   1. install.sh (chromium + playwright-core), Debian's fonts-wqy-microhei (CJK glyphs for the
#      screenshots) and examples/django_progress/install.sh (Django, openpyxl and
#      clients/python into a private venv), all idempotent
#   2. wsgate serve with the example's wsgate.toml, on free loopback ports
#   3. the example's Django app (manage.py runserver), on a free loopback port
#   4. an XLSX (4 rows, by openpyxl) and a 3 MB CSV, then node django.mjs
# Env: WSGATE_BIN (default target/release/wsgate). Output: target/test-output/browser/django-*.png
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"
die() { echo "run-django.sh: $*" >&2; exit 1; }

"$here/install.sh"
# The story's progress lines are Chinese: a CJK font (5 MB) makes the screenshots readable.
if [ ! -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    echo "run-django.sh: installing Debian's fonts-wqy-microhei (apt-get)..."
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends fonts-wqy-microhei >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends fonts-wqy-microhei >/dev/null; }
fi
python="$(examples/django_progress/install.sh)"
bin="${WSGATE_BIN:-target/release/wsgate}"
[ -x "$bin" ] || die "the wsgate binary $bin does not exist; build it first (cargo build --release) or set WSGATE_BIN."

out="$repo/target/test-output/browser"
mkdir -p "$out"
work="$(mktemp -d)"
free_port() { "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wport="$(free_port)"
dport="$(free_port)"
[ "$wport" != "$dport" ] || dport="$(free_port)"

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do
        for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

sed -e "s/127.0.0.1:8000/127.0.0.1:$dport/" -e "s/127.0.0.1:8080/127.0.0.1:$wport/" \
    examples/django_progress/wsgate.toml >"$work/wsgate.toml"
"$bin" serve --config "$work/wsgate.toml" >"$out/django-wsgate.log" 2>&1 &
pids+=($!)
(cd examples/django_progress && WSGATE_API="http://127.0.0.1:$wport" WSGATE_WS="ws://127.0.0.1:$wport" \
    PROGRESS_DELAY=0.02 DJANGO_DEBUG=0 exec "$python" manage.py runserver "127.0.0.1:$dport" --noreload) \
    >"$out/django.log" 2>&1 &
pids+=($!)

wait_port() {
    for _ in $(seq 1 150); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "--- $2 log:" >&2; cat "$3" >&2 || true
    die "$2 did not listen on 127.0.0.1:$1 within 15 s"
}
wait_port "$wport" wsgate "$out/django-wsgate.log"
wait_port "$dport" Django "$out/django.log"

# The sheets: a small XLSX, and a CSV of 30 rows whose third column makes it 3 MB.
rows=30
"$python" - "$work" "$rows" <<'PY'
import sys, openpyxl
work, rows = sys.argv[1], int(sys.argv[2])
book = openpyxl.Workbook()
sheet = book.active
sheet.append(["name", "amount"])
for r in [("apples", 3), ("pears", 4.5), ("plums", 10), ("figs", 0.25)]:
    sheet.append(r)
book.save(f"{work}/fruit.xlsx")
with open(f"{work}/big.csv", "w", encoding="utf-8") as f:
    f.write("name,amount,notes\n")
    for i in range(1, rows + 1):
        f.write(f"item{i},{i},{'x' * 100_000}\n")
PY

rc=0
node "$here/django.mjs" "http://127.0.0.1:$dport" "$work/fruit.xlsx" "$work/big.csv" "$rows" || rc=$?
if [ "$rc" -ne 0 ]; then
    echo "--- last lines of the Django log:"; tail -n 30 "$out/django.log" || true
    echo "--- last lines of the wsgate log:"; tail -n 30 "$out/django-wsgate.log" || true
fi
exit "$rc"
