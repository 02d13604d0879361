#!/usr/bin/env bash
# One command: install everything the tests need, lint, type-check and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh dev
# Browser tests (tests/test_browser.py) drive Debian's Chromium through playwright (never
# `playwright install`: its CDN is not needed). Installed once, as root (CI).
if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
    else
        echo "chromium is missing (apt-get install chromium, as root): the browser tests skip" >&2
    fi
fi
# The Node examples' live client needs `ws` (examples/node/package-lock.json); npm ci runs
# again only when the lock file changed.
if command -v npm >/dev/null && ! cmp -s examples/node/package-lock.json \
        examples/node/node_modules/.installed-lock.json; then
    npm ci --prefix examples/node --no-audit --no-fund --loglevel=error
    cp examples/node/package-lock.json examples/node/node_modules/.installed-lock.json
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy   # files and options: [tool.mypy] in pyproject.toml
exec .venv/bin/python -m pytest "$@"
