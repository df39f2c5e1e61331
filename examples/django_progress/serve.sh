#!/usr/bin/env bash
# Runs the example on http://127.0.0.1:8000 (installing its packages first when needed).
# wsgate must run next to it: wsgate serve --config examples/django_progress/wsgate.toml
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="$("$here/install.sh")"
cd "$here"
exec "$python" manage.py runserver "${DJANGO_ADDR:-127.0.0.1:8000}" --noreload
