#!/usr/bin/env bash
# One command: install everything the tests need, lint, type-check and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh dev
# The avatar-store tests run a real redis-server (Debian's package; tools/redis_server.py).
if ! command -v redis-server >/dev/null; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy   # files and options: [tool.mypy] in pyproject.toml
exec .venv/bin/python -m pytest "$@"
