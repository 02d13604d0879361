#!/usr/bin/env bash
# One command: install everything the tests need, lint, type-check and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh dev

# Debian packages some tests run for real: redis-server (the avatar-store tests,
# tools/redis_server.py) and chromium (tests/test_browser.py drives it through playwright;
# never `playwright install`). Installed once, when missing, as root (CI runs as root).
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The Node examples' live client needs `ws` and `jpeg-js` (examples/node/package-lock.json); npm ci runs
# again only when the lock file changed.
if ! cmp -s examples/node/package-lock.json examples/node/node_modules/.installed-lock.json; then
    npm ci --prefix examples/node --no-audit --no-fund --loglevel=error
    cp examples/node/package-lock.json examples/node/node_modules/.installed-lock.json
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy   # files and options: [tool.mypy] in pyproject.toml
exec .venv/bin/python -m pytest "$@"
