#!/usr/bin/env bash
# Installs the example's Python packages (Django, openpyxl, clients/python) into a private
# virtualenv; does nothing when it is already current. Prints the venv's python last.
#   venv: ${WSGATE_CACHE:-$HOME/.cache/wsgate}/django-venv
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${WSGATE_CACHE:-$HOME/.cache/wsgate}/django-venv"
stamp="$venv/.wsgate-stamp"
want="$(cat "$here/requirements.txt" "$repo/clients/python/pyproject.toml" "$repo/clients/python/wsgate_client/__init__.py" | sha256sum | cut -d' ' -f1)"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "$venv/bin/python"
    exit 0
fi
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
    || { echo "install.sh: Django 5.2 needs Python 3.10 or newer; python3 is $(python3 --version)" >&2; exit 1; }
echo "install.sh: installing Django, openpyxl and clients/python into $venv" >&2
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt" "$repo/clients/python" >&2
"$venv/bin/python" -c 'import django, openpyxl, wsgate_client' >&2
echo "$want" >"$stamp"
echo "$venv/bin/python"
