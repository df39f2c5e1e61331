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
. "$here/lib.sh"
# The story's progress lines are Chinese: a CJK font (5 MB) makes the screenshots readable.
if [ ! -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    echo "run-django.sh: installing Debian's fonts-wqy-microhei (apt-get)..."
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends fonts-wqy-microhei >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends fonts-wqy-microhei >/dev/null; }
fi
python="$(examples/django_progress/install.sh)"
work="$(mktemp -d)"
wport="$(free_port)"
dport="$(free_port)"
[ "$wport" != "$dport" ] || dport="$(free_port)"
trap 'stop_server; rm -rf "$work"' EXIT

sed -e "s/127.0.0.1:8000/127.0.0.1:$dport/" -e "s/127.0.0.1:8080/127.0.0.1:$wport/" \
    examples/django_progress/wsgate.toml >"$work/wsgate.toml"
start_server "$out/django-wsgate.log" "$wport" -- serve --config "$work/wsgate.toml"
start_process Django "$out/django.log" "$dport" -- env -C examples/django_progress \
    WSGATE_API="http://127.0.0.1:$wport" WSGATE_WS="ws://127.0.0.1:$wport" \
    PROGRESS_DELAY=0.02 DJANGO_DEBUG=0 "$python" manage.py runserver "127.0.0.1:$dport" --noreload

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

run_test "$here/django.mjs" "http://127.0.0.1:$dport" "$work/fruit.xlsx" "$work/big.csv" "$rows"
