#!/usr/bin/env bash
# Installs what the browser test needs; safe to run again (does nothing when
# everything is already there).
#   - Debian's chromium at /usr/bin/chromium (never a browser download by npm)
#   - playwright-core from package-lock.json into ./node_modules (npm ci)
#   - Debian's openssl (h2.sh makes its test CA and certificate with it)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

die() { echo "install.sh: $*" >&2; exit 1; }

CHROMIUM=/usr/bin/chromium

if [ ! -x "$CHROMIUM" ]; then
    command -v apt-get >/dev/null 2>&1 \
        || die "$CHROMIUM is missing and apt-get is not available to install Debian's chromium package."
    if [ "$(id -u)" -ne 0 ]; then
        die "$CHROMIUM is missing and installing it needs root (apt-get install chromium); run this script as root."
    fi
    echo "install.sh: installing Debian's chromium (apt-get)..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
    [ -x "$CHROMIUM" ] || die "apt-get finished but $CHROMIUM is still missing."
fi

if ! command -v openssl >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] \
        || die "openssl is missing and installing it needs apt-get as root (apt-get install openssl)."
    echo "install.sh: installing Debian's openssl (apt-get)..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends openssl
fi

command -v node >/dev/null 2>&1 || die "node is not installed (Node.js 20 or newer is needed)."
command -v npm >/dev/null 2>&1 || die "npm is not installed (it comes with Node.js)."
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 20 ] || die "node $(node --version) is too old; Node.js 20 or newer is needed."
[ -f package-lock.json ] || die "package-lock.json is missing in $here; it must be committed next to package.json."

# npm ci writes node_modules/.package-lock.json; when it matches the committed
# lock file and playwright-core is present, node_modules is current.
stamp=node_modules/.package-lock.json
if [ -f "$stamp" ] && [ -f node_modules/playwright-core/package.json ] \
   && node -e '
        const fs = require("fs");
        const want = JSON.parse(fs.readFileSync("package-lock.json", "utf8")).packages || {};
        const have = JSON.parse(fs.readFileSync(process.argv[1], "utf8")).packages || {};
        for (const [k, v] of Object.entries(want)) {
            if (k === "") continue;
            if (!have[k] || have[k].version !== v.version) process.exit(1);
        }
    ' "$stamp"; then
    :
else
    echo "install.sh: npm ci (playwright-core)..."
    # Never let any package try to download a browser.
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error \
        || die "npm ci failed in $here."
fi

[ -f node_modules/playwright-core/package.json ] || die "playwright-core is missing from node_modules after npm ci."
echo "install.sh: ok ($("$CHROMIUM" --version 2>/dev/null | head -n1), playwright-core $(node -p 'require("./node_modules/playwright-core/package.json").version'))"
